"""Tests for the request figures' route and destination version (fastpath/stats.pxi):
each answer is counted under the HTTPRoute whose rule sent it and the version label of
the workload that answered, on the calling side, and under the serving workload's
version on the serving side; the label values kept are bounded, and the answers beyond
them are counted as overflow, never under another route.

The two engines, apps and certificates of test_engine_routes (the app's node serves
backend-v1 and backend-v2, each endpoint labelled with its version).
"""

from __future__ import annotations

from collections import Counter

import pytest

from test_engine_routes import Mesh, mesh, mesh_pki, request, send

__all__ = ["mesh", "mesh_pki"]  # the fixtures these tests use, from test_engine_routes

pytestmark = pytest.mark.timeout(60)


def answers(m: Mesh, serving: bool = False) -> Counter[tuple[str, str, str, int]]:
    """(service, route, version, status) -> answers, as the calling node's engine counted
    them (`serving`: the app's node's)."""
    engine = (m.in_node if serving else m.out_node).engine
    out: Counter[tuple[str, str, str, int]] = Counter()
    for rec in engine.request_stats():
        if rec["direction"] == ("inbound" if serving else "outbound"):
            for code, n in rec["codes"].items():
                out[(rec["service"], rec["route"], rec["version"], code)] += n
    return out


def test_a_split_is_counted_by_route_and_by_the_version_that_answered(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/canary#0", [(ix["v1"], 1), (ix["v2"], 1)]))
    mesh.out_node.install(t)
    conn = mesh.http()
    served = Counter(request(conn, "/")[2]["version"] for _ in range(40))
    assert set(served) == {"v1", "v2"}, served     # a 50/50 split: both, 40 times over
    assert answers(mesh) == {
        (f"demo/backend-{v}:http", "demo/canary", v, 200): n for v, n in served.items()}
    # The serving side cannot tell the route; it knows its own workload's version.
    assert answers(mesh, serving=True) == {
        (f"demo/backend-{v}:http", "", v, 200): n for v, n in served.items()}


def test_rules_taking_turns_on_one_connection_are_counted_each_under_its_route(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/reads#0", [(ix["v1"], 1)]), method="GET")
    t.add_route_match(s, t.add_route_rule("demo/writes#0", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    conn = mesh.http()
    for i in range(12):
        assert request(conn, "/", method="GET" if i % 3 else "PUT", body=b"x")[0] == 200
    assert answers(mesh) == {("demo/backend-v1:http", "demo/reads", "v1", 200): 8,
                             ("demo/backend-v1:http", "demo/writes", "v1", 200): 4}


def test_without_a_route_answers_have_none_and_an_unlabelled_endpoint_no_version(
        mesh: Mesh) -> None:
    t, _ = mesh.outbound()
    mesh.out_node.install(t)
    assert send(mesh, "/")[0] == 200
    assert answers(mesh) == {("demo/backend:http", "", "", 200): 1}


def test_the_engine_answers_are_counted_under_the_route_that_gave_them(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/timed#0", [(ix["v2"], 1)], timeout_s=0.3),
                      path=("PathPrefix", "/slow"))
    t.add_route_match(s, t.add_route_rule("demo/broken#0", [(-1, 1)]),
                      path=("PathPrefix", "/broken"))
    t.add_route_match(s, t.add_route_rule("demo/rest#0", [(ix["v1"], 1)]),
                      path=("Exact", "/"))
    mesh.out_node.install(t)
    assert send(mesh, "/slow/1500")[0] == 504
    assert send(mesh, "/broken")[0] == 500
    assert send(mesh, "/nowhere")[0] == 404
    conn = mesh.http()
    assert request(conn, "/")[0] == 200
    assert request(conn, "/nowhere")[0] == 404     # after an answer under demo/rest
    assert answers(mesh) == {
        # The upstream was verified before the timeout: its version is known.
        ("demo/backend-v2:http", "demo/timed", "v2", 504): 1,
        # No upstream: no version; an invalid backendRef's share, under its route.
        ("demo/backend:http", "demo/broken", "", 500): 1,
        ("demo/backend:http", "", "", 404): 2,
        ("demo/backend-v1:http", "demo/rest", "v1", 200): 1,
    }
    stats = mesh.out_node.engine.stats()
    assert (stats["route_timeouts"], stats["route_no_backend"], stats["route_no_match"]) == (1, 1, 2)


def test_routes_past_the_label_values_kept_are_counted_as_overflow(mesh: Mesh) -> None:
    """The engine keeps a bounded set of route and version values (ENGINE_TAGS): the
    answers of routes beyond it are counted in stats_overflow, none under another key.
    (Each rule has no backend: the engine's own 500s, no app in the way.)"""
    routes = 300
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    for i in range(routes):
        t.add_route_match(s, t.add_route_rule(f"demo/r{i}#0", [(-1, 1)]),
                          path=("Exact", f"/r{i}"))
    mesh.out_node.install(t)
    for i in range(routes):
        assert send(mesh, f"/r{i}")[0] == 500
    kept = answers(mesh)
    assert all(n == 1 and key[2:] == ("", 500) for key, n in kept.items()), kept
    names = [route for _, route, _, _ in kept]
    assert names == [f"demo/r{i}" for i in range(len(names))], names   # the first ones
    stats = mesh.out_node.engine.stats()
    assert 0 < stats["stats_overflow"] and len(names) + stats["stats_overflow"] == routes
    assert stats["http_responses_5xx"] == routes
