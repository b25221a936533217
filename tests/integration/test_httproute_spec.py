"""What the Gateway API spec and GAMMA define for HTTPRoute that the conformance suite
does not test, through a real meshnode node (issue 11, "How it is checked").

- Precedence across the rules of several routes (apis/v1/httproute_types.go,
  HTTPRouteRule.Matches): an Exact path, then the longest PathPrefix, then a method
  match, then the most header matches, then the most query matches; on a tie the
  oldest route, then the first by "{namespace}/{name}".
- PathPrefix matches whole path elements, case-sensitively, a trailing "/" ignored
  (HTTPPathMatch).
- A backendRef that does not resolve gets its share of requests a 500 (HTTPRouteRule
  .BackendRefs).
- GAMMA (GEP-1294): a consumer route governs its own namespace's callers, in place of
  the producer routes; a route may send to a Service of any namespace without a
  ReferenceGrant; a parentRef port the Service lacks attaches nothing.
- `meshnode get httproute NAME -o yaml` reports RouteParentStatus conditions.

The manifests here are this file's own, on the conformance backends (meshkit).
"""

from __future__ import annotations

import time

import pytest

from conformance import Expect, check, check_weights, served_by
from meshkit import (CONSUMER_NS, INFRA_NS, MESH_NS, ConformanceMesh, Exchange,
                     conformance_mesh, gw)
from mnharness import wait_for

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)


def route(name: str, rules: str, namespace: str = MESH_NS, parent: str = "echo",
          parent_port: str = "\n    port: 80", parent_ns: str = "") -> str:
    """An HTTPRoute on one Service (a GAMMA parentRef); ``rules`` is its rules' YAML."""
    ns_line = f"\n    namespace: {parent_ns}" if parent_ns else ""
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: {namespace}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: {parent}{ns_line}{parent_port}
  rules:
{rules}"""


def to(backend: str, port: int = 80, namespace: str = "") -> str:
    """The backendRefs of a rule: one Service port."""
    ns_line = f"\n      namespace: {namespace}" if namespace else ""
    return f"    backendRefs:\n    - name: {backend}{ns_line}\n      port: {port}\n"


def only_to(backend: str, port: int = 80, namespace: str = "") -> str:
    """A rule without matches (so the default, PathPrefix "/") sending to one Service port."""
    return "  - " + to(backend, port, namespace).lstrip()


# Each pair of rules below puts the rule that must lose in the OLDER route, so that an
# order by route age alone (or by rule order) fails every case but the last.
OLDER_RULES = (
    "  - matches: [{path: {type: PathPrefix, value: /exact}}]\n" + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /long}}]\n" + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /pm}, method: GET}]\n" + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /m},"
      " headers: [{name: h1, value: '1'}, {name: h2, value: '1'}]}]\n" + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: h1, value: '1'}]}]\n"
    + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /hq},"
      " queryParams: [{name: q1, value: '1'}, {name: q2, value: '1'}]}]\n" + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /q},"
      " queryParams: [{name: q1, value: '1'}]}]\n"
    + to("echo-v2")
    + "  - matches: [{path: {type: PathPrefix, value: /o}}]\n" + to("echo-v1")
)
NEWER_RULES = (
    "  - matches: [{path: {type: Exact, value: /exact}}]\n" + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /long/er}}]\n" + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /pm/x}}]\n" + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /m}, method: GET}]\n" + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /h},"
      " headers: [{name: h1, value: '1'}, {name: h2, value: '1'}]}]\n" + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /hq}, headers: [{name: h1, value: '1'}]}]\n"
    + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /q},"
      " queryParams: [{name: q1, value: '1'}, {name: q2, value: '1'}]}]\n" + to("echo-v1")
    + "  - matches: [{path: {type: PathPrefix, value: /o}}]\n" + to("echo-v2")
)


def test_precedence_across_the_rules_of_two_routes(gw: ConformanceMesh) -> None:
    """Exact > longest prefix > method > most headers > most query params > oldest route,
    across two routes on one Service; the older one is named later alphabetically, so
    the last case tells age from name."""
    gw.apply(gw.write("older.yaml", route("precedence-z-older", OLDER_RULES)))
    # creationTimestamp has whole seconds (RFC 3339, as Kubernetes writes it): the newer
    # route is created in a later second than the older one.
    created = int(time.time())
    wait_for(lambda: int(time.time()) > created, 2.0, "the next second")
    gw.apply(gw.write("newer.yaml", route("precedence-a-newer", NEWER_RULES)))
    both = {"h1": "1", "h2": "1"}
    check(gw, gw.caller(MESH_NS), [
        Expect(path="/exact", backend="echo-v1"),  # Exact over a PathPrefix of equal length
        Expect(path="/exact/x", backend="echo-v2"),
        Expect(path="/long/er/x", backend="echo-v1"),  # the longer prefix
        Expect(path="/long/x", backend="echo-v2"),
        Expect(path="/pm/x/y", backend="echo-v1"),  # a longer prefix over a method match
        Expect(path="/m", headers=both, backend="echo-v1"),  # method over two headers
        Expect(path="/m", method="POST", headers=both, backend="echo-v2"),
        Expect(path="/h", headers=both, backend="echo-v1"),  # two headers over one
        Expect(path="/h", headers={"h1": "1"}, backend="echo-v2"),
        # a header match over two query matches
        Expect(path="/hq?q1=1&q2=1", headers={"h1": "1"}, backend="echo-v1"),
        Expect(path="/hq?q1=1&q2=1", backend="echo-v2"),
        Expect(path="/q?q1=1&q2=1", backend="echo-v1"),  # two query params over one
        Expect(path="/q?q1=1", backend="echo-v2"),
        Expect(path="/o", backend="echo-v1"),  # a tie: the oldest route
        Expect(path="/nothing/matches", status=(404,)),
    ])


def test_a_tie_between_routes_created_together_goes_to_the_first_name(
        gw: ConformanceMesh) -> None:
    """Equal matches in two routes with one creation time: "{namespace}/{name}" decides.
    The routes come in one `apply` (one config version, so one creation time), the
    alphabetically later one first in the file."""
    gw.apply(gw.write("tie.yaml", route("tie-b", "  - matches: [{path: {type: PathPrefix, "
                                        "value: /tie}}]\n" + to("echo-v2"))
                      + "---\n" + route("tie-a", "  - matches: [{path: {type: PathPrefix, "
                                                  "value: /tie}}]\n" + to("echo-v1"))))
    check(gw, gw.caller(MESH_NS), [Expect(path="/tie", backend="echo-v1")] * 3)


def test_path_prefix_matches_whole_segments(gw: ConformanceMesh) -> None:
    """HTTPPathMatch PathPrefix: element by element ("/v2" matches "/v2", "/v2/", "/v2/x",
    never "/v2example"), case-sensitive, a trailing "/" of the prefix ignored; Exact is
    exact; the query is no part of the path."""
    gw.apply(gw.write("prefix.yaml", route("segments", (
        "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n" + to("echo-v2")
        + "  - matches: [{path: {type: PathPrefix, value: /v3/}}]\n" + to("echo-v2")
        + "  - matches: [{path: {type: Exact, value: /exact}}]\n" + to("echo-v2")
        + "  - matches: [{path: {type: PathPrefix, value: /}}]\n" + to("echo-v1")))))
    served = {"echo-v2": ["/v2", "/v2/", "/v2/x/y", "/v2?x=1", "/v3", "/v3/z", "/exact",
                          "/exact?y=2"],
              "echo-v1": ["/v2example", "/V2", "/v3x", "/exact/", "/Exact"]}
    check(gw, gw.caller(MESH_NS), [Expect(path=path, backend=backend)
                                   for backend, paths in served.items() for path in paths])


def answered(got: Exchange) -> str:
    return served_by(got) if got.status == 200 else f"status {got.status}"


def test_unresolved_backends_get_their_share_of_requests_a_500(gw: ConformanceMesh) -> None:
    """HTTPRouteRule.BackendRefs: with one of two equal-weight refs invalid, half the
    requests get a 500 (within the weight tests' ±5 % of 500); a rule whose only ref
    names no Service, or a port the Service lacks, answers every request 500."""
    gw.apply(gw.write("half.yaml", route("half-missing", (
        "  - matches: [{path: {type: PathPrefix, value: /half}}]\n"
        "    backendRefs:\n    - {name: echo-v1, port: 80}\n    - {name: nosuch, port: 80}\n"
        "  - matches: [{path: {type: PathPrefix, value: /missing}}]\n" + to("nosuch")
        + "  - matches: [{path: {type: PathPrefix, value: /no-port}}]\n" + to("echo-v2", 81)))))
    assert gw.condition(MESH_NS, "half-missing", "ResolvedRefs")[:2] == ("False", "BackendNotFound")
    caller = gw.caller(MESH_NS)
    check(gw, caller, [Expect(path="/missing", status=(500,)),
                       Expect(path="/no-port", status=(500,))])
    check_weights(gw, caller, Expect(path="/half"), {"echo-v1": 0.5, "status 500": 0.5},
                  label=answered)


def answer_says(route_role: str) -> str:
    """A rule's filters: X-Route: ``route_role`` on every answer."""
    return ("    filters:\n    - type: ResponseHeaderModifier\n"
            f"      responseHeaderModifier: {{set: [{{name: X-Route, value: {route_role}}}]}}\n")


PRODUCER_RULES = "  - " + answer_says("producer").lstrip() + to("echo-v1")
CONSUMER_RULES = ("  - matches: [{path: {type: PathPrefix, value: /consumer}}]\n"
                  + answer_says("consumer") + to("echo-v2", namespace=MESH_NS))


def test_a_consumer_route_governs_its_namespace_in_place_of_the_producer_route(
        gw: ConformanceMesh) -> None:
    """GEP-1294: requests from a namespace with consumer routes use those routes (and none
    of the producer's: a path only the producer route matches is a 404 there); requests
    from any other namespace use the producer routes."""
    gw.apply(gw.write("producer.yaml", route("producer", PRODUCER_RULES, parent="echo-v1")),
             gw.write("consumer.yaml", route("consumer", CONSUMER_RULES, namespace=CONSUMER_NS,
                                             parent="echo-v1", parent_ns=MESH_NS)))
    host = f"echo-v1.{MESH_NS}"
    producer = {"X-Route": "producer"}
    check(gw, gw.caller(CONSUMER_NS), [
        Expect(host=host, path="/consumer/x", backend="echo-v2",
               response_headers={"X-Route": "consumer"}),
        Expect(host=host, path="/other", status=(404,)),
    ])
    for caller in (gw.caller(MESH_NS), gw.caller(INFRA_NS, "infra-backend-v1")):
        check(gw, caller, [
            Expect(host=host, path="/consumer/x", backend="echo-v1", response_headers=producer),
            Expect(host=host, path="/other", backend="echo-v1", response_headers=producer),
        ])


def test_a_backend_in_another_namespace_needs_no_reference_grant(gw: ConformanceMesh) -> None:
    """GEP-1294: "Routes of either type can send traffic to backendRefs in any namespace
    ... without a ReferenceGrant"."""
    gw.apply(gw.write("cross.yaml", route("cross-namespace", only_to("echo-v2", namespace=MESH_NS),
                                          namespace=INFRA_NS, parent="infra-backend-v1",
                                          parent_port="\n    port: 8080")))
    assert gw.condition(INFRA_NS, "cross-namespace", "ResolvedRefs")[:2] == ("True", "ResolvedRefs")
    check(gw, gw.caller(MESH_NS), [
        Expect(host=f"infra-backend-v1.{INFRA_NS}:8080", backend="echo-v2", namespace=MESH_NS),
    ])


def test_get_shows_accepted_and_resolved_refs_with_reasons(gw: ConformanceMesh) -> None:
    """RouteParentStatus per parentRef: a route on an existing Service port is Accepted with
    all refs resolved; one on a port the Service lacks is not Accepted (NoMatchingParent)
    and governs nothing."""
    gw.apply(gw.write("status.yaml", route("attached", only_to("echo-v2"), parent="echo-v1")
                      + "---\n"
                      + route("wrong-port", only_to("echo-v2"), parent="echo-v1",
                              parent_port="\n    port: 81")))
    doc = gw.get_route(MESH_NS, "attached")
    assert (doc["apiVersion"], doc["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    [parent] = doc["status"]["parents"]
    ref = parent["parentRef"]
    assert (ref["kind"], ref["name"]) == ("Service", "echo-v1"), parent
    assert gw.condition(MESH_NS, "attached", "Accepted")[:2] == ("True", "Accepted")
    assert gw.condition(MESH_NS, "attached", "ResolvedRefs")[:2] == ("True", "ResolvedRefs")
    status, reason, message = gw.condition(MESH_NS, "wrong-port", "Accepted")
    assert (status, reason) == ("False", "NoMatchingParent"), message
    assert "81" in message, message
    check(gw, gw.caller(MESH_NS), [
        Expect(host="echo-v1", backend="echo-v2"),  # "attached" is in force on port 80
        Expect(host="echo-v1:8080", backend="echo-v1"),  # nothing attached to 8080
    ])
