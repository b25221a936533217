"""The Gateway API mesh conformance tests (conformance/tests/mesh/ of
kubernetes-sigs/gateway-api) through a real meshnode node.

Why: meshnode takes the upstream HTTPRoute YAML unchanged (DESIGN §5, issue 11), and the
conformance suite is the reference for what each field must do. Each test applies the
upstream manifest as it is (the verbatim copy in tests/meshnode/config/data/gateway-api/,
which the config tests apply too), sends the Go test's requests from the workload the Go
test execs its client in (the echo-v1 pod of gateway-conformance-mesh, or of
gateway-conformance-mesh-consumer for consumer routes) and asserts what the Go test
asserts, with its tolerances (conformance.py). The backends are the suite's echo pods
(data/gateway-api/base.yaml, meshkit). Cases that only Kubernetes can express are
skipped, naming the upstream test.

test_no_routes_route_by_host proves the harness on what a node does without any
HTTPRoute.
"""

from __future__ import annotations

import pytest

from conformance import ADD_BEFORE, SET_BEFORE, Expect, Redirect, check, check_weights
from dataplanekit import metric_total, settle
from meshkit import (CONSUMER_NS, MESH_MANIFESTS, MESH_NS, ConformanceMesh, conformance_mesh,
                     gw)

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)

MESH = MESH_MANIFESTS
NO_CLUSTER_IP = ("meshnode has no cluster IPs and captures nothing: a request reaches a node "
                 "by its Host (or absolute URI) at the outbound listener, never by the address "
                 "it was sent to")


def identity(namespace: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/default"


def test_no_routes_route_by_host(gw: ConformanceMesh) -> None:
    """MeshBasic (no configuration: a mesh client reaches a mesh server), and the harness
    itself: each Service name reaches its own pods, the echo pods report what they got,
    and the node presents each caller as its own namespace's workload (what GAMMA
    consumer routes are chosen by)."""
    producer, consumer = gw.caller(MESH_NS), gw.caller(CONSUMER_NS)
    check(gw, producer, [
        Expect(host="echo"),  # MeshBasic
        Expect(host="echo-v1", path="/harness?x=1", backend="echo-v1", namespace=MESH_NS),
        Expect(host="echo-v2", method="POST", path="/p", backend="echo-v2", namespace=MESH_NS),
        Expect(host="echo-v1:8080", backend="echo-v1"),
        Expect(host=f"echo-v2.{MESH_NS}.svc:80", backend="echo-v2"),
        Expect(host="infra-backend-v3.gateway-conformance-infra:8080",
               backend="infra-backend-v3", namespace="gateway-conformance-infra"),
        Expect(host="echo-v1", path="/set", backend_sets={"X-Echo": "a", "Other": "b"},
               headers={"Version": "one"}, got_headers={"Version": "one"},
               response_headers={"X-Echo": "a", "Other": "b"}),
        Expect(host="nosuch", status=(404,)),
    ])
    # The echo Service selects both versions' pods; a node hands what it receives for a
    # service port to the first of its local pods (meshnode.dataplane), so here that is
    # echo-v1's; the serving side counts them as Service echo's, not echo-v1's.
    before = served_services(gw)
    check(gw, producer, [Expect(host="echo", backend="echo-v1")] * 5)
    after = served_services(gw)
    assert after[f"echo.{MESH_NS}.svc"] - before[f"echo.{MESH_NS}.svc"] >= 15, after
    assert after[f"echo-v1.{MESH_NS}.svc"] == before[f"echo-v1.{MESH_NS}.svc"], after
    for caller, namespace in ((producer, MESH_NS), (consumer, CONSUMER_NS)):
        got = gw.send(caller, f"echo-v1.{MESH_NS}", "/who")
        echo = got.echo
        assert got.status == 200 and echo is not None, got.describe()
        xfcc = ",".join(echo["headers"].get("x-forwarded-client-cert", []))
        assert xfcc.endswith(f"URI={identity(namespace)}"), xfcc


def test_mesh_http_route_simple_same_namespace(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteSimpleSameNamespace: a route on Service echo port 80 in the service's
    namespace sends every request to echo-v1 (without it, echo also serves from v2)."""
    gw.apply(MESH / "httproute-simple-same-namespace.yaml")
    case = Expect(host="echo", backend="echo-v1", namespace=MESH_NS)
    before = served_services(gw)
    check(gw, gw.caller(MESH_NS), [case] * 10)
    # This node hands Service echo's requests to echo-v1's pod with or without the route
    # (see test_no_routes_route_by_host); what the route changes is the Service that
    # serves them, as the serving side counts it (Istio's destination_service).
    after = served_services(gw)
    assert after[f"echo-v1.{MESH_NS}.svc"] - before[f"echo-v1.{MESH_NS}.svc"] >= 30, after
    assert after[f"echo.{MESH_NS}.svc"] == before[f"echo.{MESH_NS}.svc"], after


def served_services(gw: ConformanceMesh) -> dict[str, float]:
    """Requests answered so far per destination service of the mesh namespace, as the
    node's serving side counts them (meshnode_requests_total, reporter "destination")."""
    settle(gw.node)
    return {f"{name}.{MESH_NS}.svc": metric_total(
                gw.node, "meshnode_requests_total", reporter="destination",
                destination_service=f"{name}.{MESH_NS}.svc")
            for name in ("echo", "echo-v1", "echo-v2")}


def test_mesh_traffic_split(gw: ConformanceMesh) -> None:
    """MeshTrafficSplit: Exact /v1 to echo-v1, Exact /v2 to echo-v2, on Service echo."""
    gw.apply(MESH / "mesh-split.yaml")
    check(gw, gw.caller(MESH_NS), [
        Expect(host="echo", path="/v1", backend="echo-v1"),
        Expect(host="echo", path="/v2", backend="echo-v2"),
        Expect(host="echo", path="/v1", backend="echo-v1"),
        Expect(host="echo", path="/v2", backend="echo-v2"),
    ])


def test_mesh_http_route_matching(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteMatching: path prefixes and header matches ORed in a rule; PathPrefix
    /v2 matches /v2, /v2/ and /v2/example but not /v2example or /foo/v2/example."""
    gw.apply(MESH / "httproute-matching.yaml")
    ns = MESH_NS
    check(gw, gw.caller(MESH_NS), [
        Expect(path="/", backend="echo-v1", namespace=ns),
        Expect(path="/example", backend="echo-v1", namespace=ns),
        Expect(path="/", headers={"Version": "one"}, backend="echo-v1", namespace=ns),
        Expect(path="/v2", backend="echo-v2", namespace=ns),
        Expect(path="/v2/example", backend="echo-v2", namespace=ns),
        Expect(path="/", headers={"Version": "two"}, backend="echo-v2", namespace=ns),
        Expect(path="/v2/", backend="echo-v2", namespace=ns),
        Expect(path="/v2example", backend="echo-v1", namespace=ns),
        Expect(path="/foo/v2/example", backend="echo-v1", namespace=ns),
    ])


def test_mesh_http_route_query_param_matching(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteQueryParamMatching: exact query matches, alone and ANDed with path and
    header matches, ORed across matches; 404 when no rule matches; PathPrefix /path5 wins
    over a query match (precedence)."""
    gw.apply(MESH / "httproute-query-param-matching.yaml")
    ns = MESH_NS
    check(gw, gw.caller(MESH_NS), [
        Expect(path="/?animal=whale", backend="echo-v1", namespace=ns),
        Expect(path="/?animal=dolphin", backend="echo-v2", namespace=ns),
        Expect(path="/?animal=whale&otherparam=irrelevant", backend="echo-v1", namespace=ns),
        Expect(path="/?animal=dolphin&color=yellow", backend="echo-v2", namespace=ns),
        Expect(path="/?color=blue", status=(404,)),
        Expect(path="/?animal=dog", status=(404,)),
        Expect(path="/?animal=whaledolphin", status=(404,)),
        Expect(path="/", status=(404,)),
        Expect(path="/path1?animal=whale", backend="echo-v1", namespace=ns),
        Expect(path="/?animal=whale", headers={"version": "one"}, backend="echo-v2",
               namespace=ns),
        Expect(path="/path3?animal=shark", backend="echo-v1", namespace=ns),
        Expect(path="/path4?animal=kraken", headers={"version": "three"}, backend="echo-v1",
               namespace=ns),
        Expect(path="/?animal=shark", status=(404,)),
        Expect(path="/path4?animal=kraken", status=(404,)),
        Expect(path="/path5?animal=hydra", backend="echo-v1", namespace=ns),
    ])


def test_mesh_http_route_weight(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteWeight: backendRefs echo-v1 weight 70 and echo-v2 weight 30; 500
    requests split within ±5 % of 0.7/0.3 (weight.TestWeightedDistributionBatch)."""
    gw.apply(MESH / "httproute-weight.yaml")
    case = Expect(host="echo", path="/", namespace=MESH_NS)
    caller = gw.caller(MESH_NS)
    check(gw, caller, [case])
    check_weights(gw, caller, case, {"echo-v1": 0.7, "echo-v2": 0.3})


def header_modifier_cases() -> list[Expect]:
    """MeshHTTPRouteRequestHeaderModifier's cases (shared with its backend twin)."""
    ns, v1 = MESH_NS, "echo-v1"
    return [
        Expect(path="/set", headers={"Some-Other-Header": "val"},
               got_headers={"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"},
               backend=v1, namespace=ns),
        Expect(path="/set", headers=SET_BEFORE,
               got_headers={"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"},
               backend=v1, namespace=ns),
        Expect(path="/add", headers={"Some-Other-Header": "val"},
               got_headers={"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"},
               backend=v1, namespace=ns),
        Expect(path="/add", headers=ADD_BEFORE,
               got_headers={"Some-Other-Header": "val",
                            "X-Header-Add": "some-other-value,add-appends-values"},
               backend=v1, namespace=ns),
        Expect(path="/remove", headers={"X-Header-Remove": "val"},
               got_absent=("X-Header-Remove",), backend=v1, namespace=ns),
        Expect(path="/multiple",
               headers={"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                        "X-Header-Remove-2": "remove-val-2",
                        "Another-Header": "another-header-val"},
               got_headers={"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                            "X-Header-Add-1": "header-add-1",
                            "X-Header-Add-2": "add-val-2,header-add-2",
                            "X-Header-Add-3": "header-add-3",
                            "Another-Header": "another-header-val"},
               got_absent=("X-Header-Remove-1", "X-Header-Remove-2"), backend=v1, namespace=ns),
        Expect(path="/case-insensitivity",
               headers={"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                        "x-header-remove": "original-val-remove",
                        "Another-Header": "another-header-val"},
               got_headers={"X-Header-Set": "header-set",
                            "X-Header-Add": "original-val-add,header-add",
                            "Another-Header": "another-header-val"},
               got_absent=("x-header-remove", "X-Header-Remove"), backend=v1, namespace=ns),
    ]


def test_mesh_http_route_request_header_modifier(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteRequestHeaderModifier: set overwrites, add appends, remove removes,
    several at once, header names case-insensitive."""
    gw.apply(MESH / "httproute-request-header-modifier.yaml")
    check(gw, gw.caller(MESH_NS), header_modifier_cases())


def test_mesh_http_route_backend_request_header_modifier(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteBackendRequestHeaderModifier: the same modifiers as filters of the
    backendRef instead of the rule; the same cases."""
    gw.apply(MESH / "httproute-request-header-modifier-backend.yaml")
    check(gw, gw.caller(MESH_NS), header_modifier_cases())


def redirect(sent: str, status: int, **location: str) -> Expect:
    """A request for ``sent`` answered ``status`` with the Location parts named."""
    return Expect(host="echo", path=sent, status=(status,), redirect=Redirect(**location),
                  namespace=MESH_NS)


HOST, PORT = "example.org", "8083"
# The redirect tests: upstream test -> (its manifest, its cases).
REDIRECTS = {
    # A RequestRedirect with only a statusCode answers it, Location keeping the path.
    "MeshHTTPRoute303Redirect": ("httproute-303-redirect.yaml", [
        redirect("/redirect", 303, path="/redirect")]),
    "MeshHTTPRoute307Redirect": ("httproute-307-redirect.yaml", [
        redirect("/temporary", 307, path="/temporary")]),
    "MeshHTTPRoute308Redirect": ("httproute-308-redirect.yaml", [
        redirect("/permanent", 308, path="/permanent")]),
    # hostname example.org, 302 by default, 301 when set.
    "MeshHTTPRouteRedirectHostAndStatus": ("httproute-redirect-host-and-status.yaml", [
        redirect("/hostname-redirect", 302, host=HOST),
        redirect("/host-and-status", 301, host=HOST)]),
    # ReplacePrefixMatch and ReplaceFullPath, with a hostname or a statusCode beside.
    "MeshHTTPRouteRedirectPath": ("httproute-redirect-path.yaml", [
        redirect("/original-prefix/lemon", 302, path="/replacement-prefix/lemon"),
        redirect("/full/path/original", 302, path="/full-path-replacement"),
        redirect("/path-and-host", 302, host=HOST, path="/replacement-prefix"),
        redirect("/path-and-status", 301, path="/replacement-prefix"),
        redirect("/full-path-and-host", 302, host=HOST, path="/replacement-full"),
        redirect("/full-path-and-status", 301, path="/replacement-full")]),
    # port 8083, with a hostname or a statusCode.
    "MeshHTTPRouteRedirectPort": ("httproute-redirect-port.yaml", [
        redirect("/port", 302, port=PORT),
        redirect("/port-and-host", 302, host=HOST, port=PORT),
        redirect("/port-and-status", 301, port=PORT),
        redirect("/port-and-host-and-status", 302, port=PORT, host=HOST)]),
    # scheme https (and so port 443 or none), with a hostname or a statusCode.
    "MeshHTTPRouteSchemeRedirect": ("httproute-redirect-scheme.yaml", [
        redirect("/scheme", 302, scheme="https"),
        redirect("/scheme-and-host", 302, host=HOST, scheme="https"),
        redirect("/scheme-and-status", 301, scheme="https"),
        redirect("/scheme-and-host-and-status", 302, scheme="https", host=HOST)]),
}


@pytest.mark.parametrize("upstream", list(REDIRECTS))
def test_mesh_http_route_redirects(gw: ConformanceMesh, upstream: str) -> None:
    """MeshHTTPRoute303Redirect, MeshHTTPRoute307Redirect, MeshHTTPRoute308Redirect,
    MeshHTTPRouteRedirectHostAndStatus, MeshHTTPRouteRedirectPath, MeshHTTPRouteRedirectPort,
    MeshHTTPRouteSchemeRedirect (the parameter): the node answers with the redirect, its
    status and its Location's scheme, host, port and path, as each Go test expects."""
    manifest, cases = REDIRECTS[upstream]
    gw.apply(MESH / manifest)
    check(gw, gw.caller(MESH_NS), cases)


def test_mesh_http_route_rewrite_path(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteRewritePath: URLRewrite ReplacePrefixMatch (segment-wise, "/" strips the
    prefix) and ReplaceFullPath, alone and with a RequestHeaderModifier."""
    gw.apply(MESH / "httproute-rewrite-path.yaml")
    ns, v1 = MESH_NS, "echo-v1"
    modify = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
              "X-Header-Set": "set-val"}
    modified = {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2",
                "X-Header-Set": "set-overwrites-values"}
    check(gw, gw.caller(MESH_NS), [
        Expect(path="/prefix/one/two", got_path="/one/two", backend=v1, namespace=ns),
        Expect(path="/strip-prefix/three", got_path="/three", backend=v1, namespace=ns),
        Expect(path="/strip-prefix", got_path="/", backend=v1, namespace=ns),
        Expect(path="/full/one/two", got_path="/one", backend=v1, namespace=ns),
        Expect(path="/full/rewrite-path-and-modify-headers/test", headers=modify,
               got_path="/test", got_headers=modified, got_absent=("X-Header-Remove",),
               backend=v1, namespace=ns),
        Expect(path="/prefix/rewrite-path-and-modify-headers/one", headers=modify,
               got_path="/prefix/one", got_headers=modified, got_absent=("X-Header-Remove",),
               backend=v1, namespace=ns),
    ])


def test_mesh_http_route_named_rule(gw: ConformanceMesh) -> None:
    """MeshHTTPRouteNamedRule: a rule's name changes nothing of its routing."""
    gw.apply(MESH / "httproute-named-rule.yaml")
    check(gw, gw.caller(MESH_NS), [
        Expect(path="/named", backend="echo-v1", namespace=MESH_NS),
        Expect(path="/unnamed", backend="echo-v2", namespace=MESH_NS),
    ])


def test_mesh_consumer_route(gw: ConformanceMesh) -> None:
    """MeshConsumerRoute: a route in gateway-conformance-mesh-consumer on Service echo-v1
    of gateway-conformance-mesh sets X-Header-Set on answers to callers of its own
    namespace only."""
    gw.apply(MESH / "mesh-consumer-route.yaml")
    host = f"echo-v1.{MESH_NS}"
    check(gw, gw.caller(CONSUMER_NS), [
        Expect(host=host, backend="echo-v1", response_headers={"X-Header-Set": "set"}),
    ])
    check(gw, gw.caller(MESH_NS), [
        Expect(host=host, backend="echo-v1", response_absent=("X-Header-Set",)),
    ])


def test_mesh_frontend(gw: ConformanceMesh) -> None:
    """MeshFrontend, "Send to service": a route on Service echo-v2 applies to requests
    for echo-v2 (and not to those for another Service)."""
    gw.apply(MESH / "mesh-frontend.yaml")
    check(gw, gw.caller(MESH_NS), [
        Expect(host="echo-v2", backend="echo-v2", response_headers={"X-Header-Set": "set"}),
        Expect(host="echo-v1", backend="echo-v1", response_absent=("X-Header-Set",)),
    ])


@pytest.mark.skip(reason=f"MeshFrontend \"Send to pod IP\": {NO_CLUSTER_IP}; a request to a "
                         "workload's own address never passes a node")
def test_mesh_frontend_to_pod_ip() -> None:
    """MeshFrontend, "Send to pod IP": routes must not apply to a pod addressed directly."""


@pytest.mark.skip(reason=f"MeshFrontendHostname (parentRef matches the Service IP, not the "
                         f"Host): {NO_CLUSTER_IP}")
def test_mesh_frontend_hostname() -> None:
    """MeshFrontendHostname: a request to echo-v2's cluster IP with Host echo-v1 follows
    echo-v2's routes."""


def test_mesh_ports(gw: ConformanceMesh) -> None:
    """MeshPorts: a parentRef with port 80 governs that port only (8080 untouched); one
    without a port governs every port of the Service."""
    gw.apply(MESH / "mesh-ports.yaml")
    check(gw, gw.caller(MESH_NS), [
        Expect(host="echo-v1", backend="echo-v1", response_headers={"X-Header-Set": "v1"}),
        Expect(host="echo-v1:8080", backend="echo-v1", response_absent=("X-Header-Set",)),
        Expect(host="echo-v2", backend="echo-v2", response_headers={"X-Header-Set": "v2"}),
        Expect(host="echo-v2:8080", backend="echo-v2", response_headers={"X-Header-Set": "v2"}),
    ])


@pytest.mark.skip(reason="MeshGRPCRouteWeight, MeshGRPCRouteRequestHeaderModifier: GRPCRoute "
                         "is another kind than HTTPRoute, and gRPC needs HTTP/2, which the "
                         "node does not carry yet (DESIGN §3)")
def test_mesh_grpc_route() -> None:
    """The mesh profile's GRPCRoute tests."""
