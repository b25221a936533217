"""RateLimitPolicy (meshnode.io/v1alpha1): its fields (Envoy's token bucket, a plain rate,
keys per target or per caller, direction), refusals naming the field, the snapshot's
rate_limits it compiles to, where a worker's table puts each (meshnode.ratelimits: the
inbound routes, the services, the route's rules), the status of its targets, and the
store's apply/get/delete round trip."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from fastpath.engine import RouteTable
from meshnode import ratelimits, routes
from meshnode.config import ConfigError, Store, compile_snapshot, parse_text, to_dict, with_status

from routekit import SERVICES, backend, resources_with, route, store_with

pytestmark = pytest.mark.timeout(60)


def policy(body: str, name: str = "limits", namespace: str = "shop",
           targets: str = '[{group: "", kind: Service, name: api}]') -> str:
    return (f"apiVersion: meshnode.io/v1alpha1\nkind: RateLimitPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  targetRefs: {targets}\n"
            + textwrap.indent(textwrap.dedent(body).rstrip("\n") + "\n", "  "))


EXAMPLE = policy("""\
    limits:
    - name: per-caller
      key: SourcePrincipal
      maxKeys: 100
      tokenBucket: {maxTokens: 20, tokensPerFill: 10, fillInterval: 1s}
    - rate: {requests: 6000, unit: Minute}
    """)
ROUTE = route("search", rules=[{"name": "find", "matches": [{"path": {"type": "PathPrefix", "value": "/find"}}],
                                "backendRefs": [backend("api-v2")]},
                               {"backendRefs": [backend()]}])
ROUTE_TARGET = '[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: search, sectionName: find}]'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_text(text, "p.yaml")
    return [str(p) for p in err.value.problems]


def limits_of(*texts: str) -> list[dict]:
    return compile_snapshot(resources_with(*texts), "node-a", 1)["rate_limits"]


def test_the_example_compiles_to_one_entry_per_limit_and_target() -> None:
    per_caller, whole = limits_of(EXAMPLE)
    assert per_caller == {
        "policy": "shop/limits", "limit": "per-caller", "id": "shop/limits/per-caller",
        "key": "shop/limits/per-caller/Service/shop/api", "direction": "inbound",
        "service": "shop/api", "route": None, "rule": None,
        "tokens": 10, "interval_s": 1.0, "burst": 20, "by": "principal", "max_keys": 100}
    # A plain rate is a bucket of `requests` refilled over its unit (Envoy Gateway's).
    assert whole == {**per_caller, "limit": "1", "id": "shop/limits/1",
                     "key": "shop/limits/1/Service/shop/api", "tokens": 6000, "interval_s": 60.0,
                     "burst": 6000, "by": "none", "max_keys": 1024}


@pytest.mark.parametrize("limit, bucket", [
    ("tokenBucket: {maxTokens: 5, fillInterval: 250ms}", (1, 0.25, 5)),      # tokensPerFill 1
    ("rate: {requests: 3, unit: Second}", (3, 1.0, 3)),
    ("rate: {requests: 100, unit: Hour}", (100, 3600.0, 100)),
    ("rate: {requests: 1, unit: Day}", (1, 86400.0, 1)),
    # Envoy's bucket holds maxTokens at most: a bigger fill is cut to it (one a second).
    ("tokenBucket: {maxTokens: 1, tokensPerFill: 10, fillInterval: 1s}", (1, 1.0, 1)),
])
def test_each_way_of_writing_a_bucket(limit: str, bucket: tuple) -> None:
    [entry] = limits_of(policy(f"limits: [{{{limit}}}]"))
    assert (entry["tokens"], entry["interval_s"], entry["burst"]) == bucket


def test_keys_direction_and_an_http_routes_rule() -> None:
    text = policy("direction: Outbound\nlimits: [{key: SourceIP, rate: {requests: 1, unit: Second}}]",
                  targets=ROUTE_TARGET)
    [entry] = limits_of(ROUTE, text)
    assert (entry["direction"], entry["service"], entry["route"], entry["rule"], entry["by"]) == (
        "outbound", None, "shop/search", "find", "source_ip")
    assert entry["key"] == "shop/limits/0/HTTPRoute/shop/search/find"


@pytest.mark.parametrize("body, field, says", [
    ("limits: []", "spec.limits", "at least 1 item"),
    ("limits: [{}]", "spec.limits[0]", "exactly one of tokenBucket"),
    ("limits: [{rate: {requests: 1, unit: Second}, tokenBucket: {maxTokens: 1, fillInterval: 1s}}]",
     "spec.limits[0]", "exactly one of tokenBucket"),
    ("limits: [{tokenBucket: {fillInterval: 1s}}]", "spec.limits[0].tokenBucket.maxTokens", "required"),
    ("limits: [{tokenBucket: {maxTokens: 0, fillInterval: 1s}}]", "spec.limits[0].tokenBucket.maxTokens",
     "between 1 and 1000000000"),
    ("limits: [{tokenBucket: {maxTokens: 1, tokensPerFill: 0, fillInterval: 1s}}]",
     "spec.limits[0].tokenBucket.tokensPerFill", "between 1 and"),
    ("limits: [{tokenBucket: {maxTokens: 1, fillInterval: 25h}}]", "spec.limits[0].tokenBucket.fillInterval",
     "from 1ms to 24h"),
    # An emptied bucket must fill again in a time the engine's int64 nanoseconds hold.
    ("limits: [{tokenBucket: {maxTokens: 1000000000, fillInterval: 24h}}]",
     "spec.limits[0].tokenBucket.maxTokens", "years to fill again at this rate: at most 100"),
    ("limits: [{tokenBucket: {maxTokens: 1, fillInterval: 1}}]", "spec.limits[0].tokenBucket.fillInterval",
     "must be a string"),
    ("limits: [{tokenBucket: {maxTokens: 1, fillInterval: 1s, fillRate: 2}}]",
     "spec.limits[0].tokenBucket.fillRate", "unknown field"),
    ("limits: [{rate: {requests: 1, unit: Week}}]", "spec.limits[0].rate.unit",
     "one of Second, Minute, Hour, Day"),
    ("limits: [{rate: {requests: 1}}]", "spec.limits[0].rate.unit", "required"),
    ("limits: [{key: Header, rate: {requests: 1, unit: Second}}]", "spec.limits[0].key",
     "one of Service, Route, SourcePrincipal, SourceIP"),
    ("limits: [{key: Route, rate: {requests: 1, unit: Second}}]", "spec.limits[0].key",
     "a bucket per HTTPRoute target, but the policy targets Service"),
    ("limits: [{maxKeys: 5, rate: {requests: 1, unit: Second}}]", "spec.limits[0].maxKeys",
     "only with key SourcePrincipal or SourceIP"),
    ("limits: [{key: SourceIP, maxKeys: 70000, rate: {requests: 1, unit: Second}}]",
     "spec.limits[0].maxKeys", "between 1 and 65536"),
    ("limits: [{name: a, rate: {requests: 1, unit: Second}}, {name: a, rate: {requests: 2, unit: Second}}]",
     "spec.limits[1].name", "a second limit named 'a'"),
    ("limits: [{descriptors: [], rate: {requests: 1, unit: Second}}]", "spec.limits[0].descriptors",
     "unknown field"),
    ("direction: Both\nlimits: [{rate: {requests: 1, unit: Second}}]", "spec.direction",
     "one of Inbound, Outbound"),
    ("stage: 1\nlimits: [{rate: {requests: 1, unit: Second}}]", "spec.stage", "unknown field"),
])
def test_bad_values_are_refused_naming_the_field(body: str, field: str, says: str) -> None:
    found = problems(policy(body))
    assert any(p.startswith(f"p.yaml: RateLimitPolicy shop/limits: {field}: ") and says in p
               for p in found), found


@pytest.mark.parametrize("targets, field, says", [
    ("[]", "spec.targetRefs", "at least 1 item"),
    ('[{kind: Service, name: api}]', "spec.targetRefs[0].group", "required"),
    ('[{group: "", kind: Pod, name: api}]', "spec.targetRefs[0]", "is not implemented"),
    ('[{group: "", kind: Service, name: api, sectionName: http}]', "spec.targetRefs[0].sectionName",
     "a Service target takes no sectionName"),
    ('[{group: "", kind: Service, name: api}, {group: "", kind: Service, name: api}]',
     "spec.targetRefs[1].name", "a second targetRef to Service 'api'"),
    (ROUTE_TARGET, "spec.direction", "set direction: Outbound"),
])
def test_target_refs_are_checked(targets: str, field: str, says: str) -> None:
    found = problems(policy("limits: [{rate: {requests: 1, unit: Second}}]", targets=targets))
    assert any(f": {field}: " in p and says in p for p in found), found


def test_the_document_is_checked() -> None:
    [version] = problems(EXAMPLE.replace("meshnode.io/v1alpha1", "meshnode.io/v1"))
    assert "apiVersion: must be 'meshnode.io/v1alpha1' for kind RateLimitPolicy" in version
    missing = problems(policy("other: 1").replace("  targetRefs:", "  refs:"))
    assert any("spec.refs: unknown field" in p for p in missing), missing
    assert any("spec.limits: required" in p for p in missing), missing
    assert limits_of(EXAMPLE + "status: {ancestors: []}\n")     # a status is ignored


def test_targets_that_do_not_resolve_compile_to_nothing_and_say_so(tmp_path: Path) -> None:
    gone = '[{group: "", kind: Service, name: gone}, {group: "", kind: Service, name: api}]'
    text = policy("limits: [{rate: {requests: 1, unit: Second}}]", targets=gone)
    assert [e["service"] for e in limits_of(text)] == ["shop/api"]
    store = store_with(tmp_path, text, ROUTE, policy(
        "direction: Outbound\nlimits: [{rate: {requests: 1, unit: Second}}]", name="on-route",
        targets='[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: search, sectionName: nope}]'))
    [p] = store.get("RateLimitPolicy", "limits", "shop")
    missing, found = with_status(p, store.resources())["status"]["ancestors"]
    assert missing["conditions"][0]["reason"] == "TargetNotFound"
    assert "Service shop/gone does not exist" in missing["conditions"][0]["message"]
    assert found["ancestorRef"] == {"group": "", "kind": "Service", "name": "api", "namespace": "shop"}
    assert found["conditions"][0]["reason"] == "Accepted"
    [p] = store.get("rlp", "on-route", "shop")
    [cond] = with_status(p, store.resources())["status"]["ancestors"][0]["conditions"]
    assert (cond["reason"], cond["message"]) == ("TargetNotFound",
                                                 "HTTPRoute shop/search has no rule named 'nope'")


def test_the_store_applies_gets_and_deletes_policies(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    version = store.apply(parse_text(SERVICES + "---\n" + EXAMPLE, "p.yaml"), "cli")
    reopened = Store(tmp_path / "state")
    for kind in ("ratelimitpolicies", "rlp", "RateLimitPolicy"):
        [got] = reopened.get(kind, namespace="shop")
    written = to_dict(got)
    assert written["metadata"].pop("creationTimestamp")
    assert written == yaml.safe_load(EXAMPLE)
    assert parse_text(yaml.safe_dump(to_dict(got)), "again.yaml") == [got]
    assert reopened.delete("rlp", "limits", "shop") == version + 1
    assert reopened.get("RateLimitPolicy") == []


def test_a_worker_puts_each_limit_where_its_direction_says() -> None:
    """meshnode.ratelimits: inbound on a Service needs an inbound route here; outbound on
    a Service, its ports' services; outbound on a route, that route's rules, with their
    backends' services."""
    snapshot = compile_snapshot(resources_with(EXAMPLE, ROUTE, policy(
        "direction: Outbound\nlimits: [{rate: {requests: 1, unit: Second}}]", name="out"),
        policy("direction: Outbound\nlimits: [{rate: {requests: 1, unit: Second}}]", name="on-route",
               targets=ROUTE_TARGET)), "node-a", 1)
    table = RouteTable()
    ids = ["spiffe://cluster.local/ns/shop/sa/api"]
    api = table.add_service("shop/api:http", "http.api.shop.svc", ids, [])
    v2 = table.add_service("shop/api-v2:http", "http.api-v2.shop.svc", ids, [])
    added: dict = {}
    routes.install(table, snapshot["http_routes"], {("shop/api", 80): api, ("shop/api-v2", 80): v2}, added)
    assert [(r.name, r.backends) for r in added["shop/search"]] == [("find", (v2,)), (None, (api,))]
    find = added["shop/search"][0].index
    services = {"shop/api": [api], "shop/api-v2": [v2]}
    by_id = {e["id"]: e for e in snapshot["rate_limits"]}
    where = {i: ratelimits.placement(e, {}, services, added) for i, e in by_id.items()}
    assert where == {"shop/limits/per-caller": None, "shop/limits/1": None,     # no inbound route here
                     "shop/out/0": {"services": [api]},
                     "shop/on-route/0": {"services": [v2], "rules": [find]}}
    assert ratelimits.placement(by_id["shop/limits/1"], {"shop/api": ["http.api.shop.svc"]}, services,
                                added) == {"inbound": ["http.api.shop.svc"]}
    assert ratelimits.install(table, snapshot["rate_limits"], {}, services, added) == 2
