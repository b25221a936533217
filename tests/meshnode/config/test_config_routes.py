"""Route sets in the snapshot: their exact shape, the spec's precedence, producer and consumer routes,
ports, and what becomes of backends that do not resolve."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from meshnode.config import compile_routes, compile_snapshot, parse_text
from routekit import SERVICES, backend, parent, resources_with, route, store_with
from routepick import backends, pick, route_set

pytestmark = pytest.mark.timeout(60)


def test_a_route_set_has_exactly_the_contracts_shape() -> None:
    text = route("api", hostnames=["api.shop"], rules=[
        {"name": "canary",
         "matches": [{"path": {"type": "Exact", "value": "/v2"}, "method": "POST",
                      "headers": [{"name": "X-Canary", "value": "1"}]},
                     {"path": {"value": "/v2"}, "queryParams": [{"type": "RegularExpression", "name": "q",
                                                                 "value": "a.*"}]}],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "canary"}]}},
                     {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["Server"]}}],
         "backendRefs": [backend("api-v2", weight=90), backend(weight=10), backend("gone", weight=5),
                         backend(port=5432, weight=0)],
         "timeouts": {"request": "10s", "backendRequest": "0s"},
         "retry": {"codes": [503], "backoff": "50ms"}},
        {"backendRefs": [backend()]},
    ])
    snapshot = compile_snapshot(resources_with(text), "n1", 3)
    assert snapshot["http_routes"] == [{
        "service": "shop/api", "port": 80, "consumer_namespace": None,
        "entries": [
            {"path": {"type": "Exact", "value": "/v2"}, "method": "POST",
             "headers": [{"type": "Exact", "name": "x-canary", "value": "1"}], "query": [], "rule": 0},
            {"path": {"type": "PathPrefix", "value": "/v2"}, "method": None, "headers": [],
             "query": [{"type": "RegularExpression", "name": "q", "value": "a.*"}], "rule": 0},
            {"path": {"type": "PathPrefix", "value": "/"}, "method": None, "headers": [], "query": [], "rule": 1},
        ],
        "rules": [
            {"route": "shop/api", "index": 0, "name": "canary",
             "backends": [{"service": "shop/api-v2", "port": 80, "weight": 90},
                          {"service": "shop/api", "port": 80, "weight": 10},
                          {"service": None, "port": None, "weight": 5}],
             "request_headers": {"set": [["X-Route", "canary"]], "add": [], "remove": []},
             "response_headers": {"set": [], "add": [], "remove": ["Server"]},
             "redirect": None, "rewrite": None, "timeout_s": 10.0, "backend_timeout_s": None,
             "mirrors": [], "retry": {"codes": [503], "backoff_s": 0.05}, "fault": None},
            {"route": "shop/api", "index": 1, "name": None,
             "backends": [{"service": "shop/api", "port": 80, "weight": 1}],
             "request_headers": None, "response_headers": None, "redirect": None, "rewrite": None,
             "timeout_s": None, "backend_timeout_s": None, "mirrors": [], "retry": None,
             "fault": None},
        ],
    }]
    assert json.loads(json.dumps(snapshot)) == snapshot  # plain data, as it travels


def test_no_route_no_route_set() -> None:
    assert compile_snapshot(parse_text(SERVICES, "s.yaml"), "n1", 1)["http_routes"] == []
    # A route whose parent does not exist attaches to nothing.
    assert compile_routes(resources_with(route("x", parents=[parent("nothing")]))) == []


def test_precedence_follows_the_spec_across_rules() -> None:
    def only(match: dict) -> dict:
        return {"matches": [match], "backendRefs": [backend()]}
    rules = [
        only({"path": {"type": "RegularExpression", "value": "/.*"}}),              # 0
        only({"path": {"type": "RegularExpression", "value": "/v[0-9]+/items"}}),   # 1
        only({"path": {"value": "/"}}),                                             # 2
        only({"queryParams": [{"name": "q", "value": "1"}]}),                       # 3
        only({"headers": [{"name": "h", "value": "1"}]}),                           # 4
        only({"headers": [{"name": "h", "value": "1"}],
              "queryParams": [{"name": "q", "value": "1"}, {"name": "r", "value": "1"}]}),  # 5
        only({"method": "GET"}),                                                    # 6
        only({"path": {"value": "/a"}}),                                            # 7
        only({"path": {"value": "/a/b/c"}}),                                        # 8
        only({"path": {"type": "Exact", "value": "/z"}}),                           # 9
        only({"path": {"type": "Exact", "value": "/a/b/c/d"}}),                     # 10
    ]
    [chosen] = compile_routes(resources_with(route("api", rules)))
    # Exact first; then longer prefixes; a method; more headers; more query parameters;
    # regular expressions last, longer first.
    assert [e["rule"] for e in chosen["entries"]] == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert backends(pick(chosen, "/a/b/c/d")) == ["shop/api"]
    rule = pick(chosen, "/a/b/cd?q=1&r=1", headers={"H": "1"})
    assert rule is not None and rule["index"] == 7  # "/a/b/c" is segment-wise: /a/b/cd is under /a only


def test_ties_go_to_the_oldest_route_then_by_name_then_rule_and_match_order(tmp_path: Path) -> None:
    same = [{"matches": [{"path": {"value": "/x"}}, {"path": {"value": "/y"}}], "backendRefs": [backend()]},
            {"matches": [{"path": {"value": "/x"}}], "backendRefs": [backend()]}]
    store = store_with(tmp_path, route("zeta", same),
                       route("beta", same) + "---\n" + route("alpha", same))  # one apply: one time

    def order() -> list[tuple[str, int, str]]:
        [chosen] = compile_routes(store.resources())
        return [(chosen["rules"][e["rule"]]["route"], chosen["rules"][e["rule"]]["index"], e["path"]["value"])
                for e in chosen["entries"]]

    assert order() == [(r, i, p) for r in ("shop/zeta", "shop/alpha", "shop/beta")
                       for i, p in ((0, "/x"), (0, "/y"), (1, "/x"))]
    # A changed route keeps its creation time, so its place; re-created, it is the newest.
    store.apply(parse_text(route("zeta", same[:1]), "z.yaml"), "z.yaml")
    assert [r for r, _, _ in order()][:2] == ["shop/zeta", "shop/zeta"]
    store.delete("HTTPRoute", "zeta", "shop")
    store.apply(parse_text(route("zeta", same), "z.yaml"), "z.yaml")
    assert [r for r, _, _ in order()][::3] == ["shop/alpha", "shop/beta", "shop/zeta"]


def test_header_names_differing_in_case_count_once() -> None:
    # HTTPHeaderMatch.name: "only the first entry with an equivalent name MUST be considered".
    text = route("api", [{"matches": [{"headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}],
                          "backendRefs": [backend("api-v2")]},
                         {"matches": [{"headers": [{"name": "x-b", "value": "1"}],
                                       "queryParams": [{"name": "q", "value": "1"}]}],
                          "backendRefs": [backend()]}])
    [chosen] = compile_routes(resources_with(text))
    assert chosen["entries"][1]["headers"] == [{"type": "Exact", "name": "x-a", "value": "1"}]
    assert [e["rule"] for e in chosen["entries"]] == [1, 0]  # one header each; the query decides
    assert backends(pick(chosen, "/", headers={"x-a": "1"})) == ["shop/api-v2"]


def test_consumer_routes_replace_the_producer_routes_for_their_namespace_only() -> None:
    producer = route("api", [{"backendRefs": [backend()]}], parents=[parent()])  # ports 80 and 8080
    producer2 = route("api-extra", [{"matches": [{"path": {"value": "/extra"}}], "backendRefs": [backend()]}])
    web = route("api-for-web", [{"backendRefs": [backend("api-v2", namespace="shop")]}], namespace="web",
                parents=[parent(namespace="shop", port=80)])
    batch = route("api-for-batch", [{"matches": [{"path": {"value": "/jobs"}}],
                                     "backendRefs": [backend("api-v2", namespace="shop")]}],
                  namespace="batch", parents=[parent(namespace="shop", port=80)])
    sets = compile_routes(resources_with(producer, producer2, web, batch))
    assert [(s["service"], s["port"], s["consumer_namespace"]) for s in sets] == [
        ("shop/api", 80, None), ("shop/api", 80, "batch"), ("shop/api", 80, "web"), ("shop/api", 8080, None)]
    # Producer routes merge into one set; consumer routes do not merge with them.
    mine = route_set(sets, "shop/api", 80, "anywhere")
    assert mine is not None and {r["route"] for r in mine["rules"]} == {"shop/api", "shop/api-extra"}
    web_set = route_set(sets, "shop/api", 80, "web")
    assert web_set is not None and backends(pick(web_set, "/extra")) == ["shop/api-v2"]
    # batch's own set has no rule for "/": 404 for batch's callers, in place of the producer's.
    assert backends(pick(route_set(sets, "shop/api", 80, "batch"), "/")) == 404  # type: ignore[arg-type]
    assert backends(pick(route_set(sets, "shop/api", 80, "shop"), "/")) == ["shop/api"]  # type: ignore[arg-type]
    # The consumer routes named port 80: on 8080 every caller has the producer set.
    assert route_set(sets, "shop/api", 8080, "web")["consumer_namespace"] is None  # type: ignore[index]


def test_ports_a_parent_governs() -> None:
    def sets_of(*parents: dict) -> list[tuple[str, int]]:
        text = route("api", [{"backendRefs": [backend()]}], parents=list(parents))
        return [(s["service"], s["port"]) for s in compile_routes(resources_with(text))]

    # Without a port: every port but those declared TCP.
    assert sets_of(parent()) == [("shop/api", 80), ("shop/api", 8080)]
    assert sets_of(parent(port=8080)) == [("shop/api", 8080)]
    assert sets_of(parent(sectionName="admin")) == [("shop/api", 8080)]
    assert sets_of(parent(sectionName="admin", port=80)) == []  # both must hold
    assert sets_of(parent(port=5432)) == []  # TCP: no HTTP route applies
    assert sets_of(parent(port=81)) == []
    assert sets_of(parent("cache", namespace="infra"), parent("api-v2")) == [("infra/cache", 80),
                                                                             ("shop/api-v2", 80)]


def test_backends_by_weight_and_unresolved_ones() -> None:
    text = route("api", [
        {"matches": [{"path": {"value": "/a"}}],
         "backendRefs": [backend(weight=3), backend("cache", namespace="infra", weight=1),
                         backend(port=81, weight=2), backend(port=5432, weight=2), backend("nothing", weight=2),
                         {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "api", "weight": 2},
                         backend("api-v2", weight=0)]},
        {"matches": [{"path": {"value": "/b"}}], "backendRefs": [backend(weight=0), backend("api-v2", weight=0)]},
        {"matches": [{"path": {"value": "/c"}}]},
    ])
    [chosen] = compile_routes(resources_with(text))
    assert pick(chosen, "/a")["backends"] == [  # type: ignore[index]
        {"service": "shop/api", "port": 80, "weight": 3},
        {"service": "infra/cache", "port": 80, "weight": 1},  # another namespace: no ReferenceGrant in a mesh
        {"service": None, "port": None, "weight": 2},  # no port 81
        {"service": None, "port": None, "weight": 2},  # port 5432 is TCP
        {"service": None, "port": None, "weight": 2},  # no such Service
        {"service": None, "port": None, "weight": 2},  # not a Service
    ]
    assert pick(chosen, "/b")["backends"] == []  # type: ignore[index]  # weights all 0: every request 500
    assert pick(chosen, "/c")["backends"] == []  # type: ignore[index]  # no backendRefs: 500


def test_compilation_does_not_depend_on_input_order() -> None:
    texts = [route(f"r{i}", [{"matches": [{"path": {"value": f"/{i % 3}"}}], "backendRefs": [backend()]}])
             for i in range(8)]
    resources = resources_with(*texts)
    expected = compile_routes(resources)
    for seed in range(5):
        shuffled = list(resources)
        random.Random(seed).shuffle(shuffled)
        assert compile_routes(shuffled) == expected
