"""Tests for fastpath.engine's retry budgets (budget.pxi; Gateway API GEP-3388
XBackendTrafficPolicy retryConstraint): one budget per destination service, fed by every
request toward it whatever its rule, drawn on by every rule's retries toward it; over it
the failed answer goes to the client and route_retries_over_budget counts it.

The mesh and the flaky app of test_engine_retry, serving both versions here: it fails the
first `n` tries of a target with `code`, later tries get 200.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import fastpath.engine as fe
from test_engine_http import RawApp
from test_engine_retry import FAST, FlakyApp, get
from test_engine_routes import BACKEND_ID, Mesh, mesh, mesh_pki, server_ctx  # noqa: F401

pytestmark = pytest.mark.timeout(60)

RETRY = {"attempts": 1, "codes": [500], **FAST}


@pytest.fixture
def app(mesh: Mesh) -> Iterator[FlakyApp]:  # noqa: F811
    """One flaky app behind the app's node for both v1 and v2."""
    a = FlakyApp()
    a.raw = RawApp(a.serve)
    t = fe.RouteTable()
    t.set_inbound(mesh.in_sock.fileno())
    for v in ("v1", "v2"):
        t.add_inbound_route(f"http.backend-{v}.demo.svc", server_ctx(mesh.pki), "127.0.0.1",
                            a.raw.port, service=f"demo/backend-{v}:http", identity=BACKEND_ID,
                            protocol="HTTP")
    mesh.in_node.install(t)
    yield a
    a.raw.close()


def routed(m: Mesh, budget: dict[str, Any] | None, *, other_budget: dict[str, Any] | None = None,
           ) -> tuple[fe.RouteTable, dict[str, int]]:
    """A table where requests to "backend" take one of three rules: /ok... to v1 without
    retries, /fail... to v1 with RETRY, /v2... to v2 with RETRY. `budget`: v1's
    set_retry_budget() options (None: the defaults); `other_budget`: v2's."""
    t, ix = m.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/plain", [(ix["v1"], 1)]),
                      path=("PathPrefix", "/ok"))
    t.add_route_match(s, t.add_route_rule("demo/retried", [(ix["v1"], 1)], retry=RETRY),
                      path=("PathPrefix", "/fail"))
    t.add_route_match(s, t.add_route_rule("demo/other", [(ix["v2"], 1)], retry=RETRY),
                      path=("PathPrefix", "/v2"))
    if budget is not None:
        t.set_retry_budget([ix["v1"]], **budget)
    if other_budget is not None:
        t.set_retry_budget([ix["v2"]], **other_budget)
    return t, ix


def install(m: Mesh, budget: dict[str, Any] | None, **kw: Any) -> None:
    m.out_node.install(routed(m, budget, **kw)[0])


# A budget that lets nothing through by share, and one retry an hour by the floor.
TIGHT = {"percent": 0, "min_retries": 1, "min_retry_interval_s": 3600}


def test_a_tight_budget_stops_retries_after_the_floors(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """No share of requests may be retried, two retries in the floor's hour: the third
    failing request gets its first answer, and so does the fourth."""
    install(mesh, {"percent": 0, "min_retries": 2, "min_retry_interval_s": 3600})
    got = [get(mesh, f"/fail?code=500&n=1&i={i}") for i in range(4)]
    assert got == [(200, b"try 2 ok")] * 2 + [(500, b"try 1 failed")] * 2
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 2 and stats["route_retries_over_budget"] == 2


def test_a_loose_budget_lets_every_retry_through(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    install(mesh, {"percent": 100, "min_retries": 1000, "interval_s": 60})
    got = [get(mesh, f"/fail?code=500&n=1&i={i}") for i in range(20)]
    assert got == [(200, b"try 2 ok")] * 20
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 20 and stats["route_retries_over_budget"] == 0


def test_the_share_counts_every_request_to_the_service(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """50 %, no floor: the requests of a rule that never retries feed v1's budget too
    (GEP-3388: the budget spans the service's routes). After two of them, the first two
    failing requests are retried (1 retry of 3 requests, 2 of 4), the third is not
    (3 of 5 would be over half)."""
    install(mesh, {"percent": 50, "min_retries": 0})
    assert [get(mesh, f"/ok/{i}")[0] for i in range(2)] == [200, 200]
    got = [get(mesh, f"/fail?code=500&n=1&i={i}")[0] for i in range(3)]
    assert got == [200, 200, 500]
    assert mesh.out_node.stats()["route_retries_over_budget"] == 1


def test_no_share_and_no_floor_no_retry(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    install(mesh, {"percent": 0, "min_retries": 0})
    assert [get(mesh, f"/ok/{i}")[0] for i in range(5)] == [200] * 5
    assert get(mesh, "/fail?code=500&n=1") == (500, b"try 1 failed")
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 0 and stats["route_retries_over_budget"] == 1


def test_each_service_has_its_own_budget(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """v1's spent budget does not stop retries toward v2, which has the defaults
    (Linkerd's and Gateway API's: 20 % and 10 retries a second)."""
    install(mesh, TIGHT)
    assert get(mesh, "/fail?code=500&n=1&i=0") == (200, b"try 2 ok")
    assert get(mesh, "/fail?code=500&n=1&i=1") == (500, b"try 1 failed")
    assert get(mesh, "/v2?code=500&n=1") == (200, b"try 2 ok")
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 2 and stats["route_retries_over_budget"] == 1


def test_the_ports_of_one_service_share_its_budget(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """v1 and v2 named in one set_retry_budget() (as a Service's ports are): the retry
    made toward v1 spends what v2's would have had."""
    t, ix = routed(mesh, None)
    t.set_retry_budget([ix["v1"], ix["v2"]], **TIGHT)
    mesh.out_node.install(t)
    assert get(mesh, "/fail?code=500&n=1") == (200, b"try 2 ok")
    assert get(mesh, "/v2?code=500&n=1") == (500, b"try 1 failed")
    assert mesh.out_node.stats()["route_retries_over_budget"] == 1


def test_a_config_push_keeps_a_spent_budget_spent(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """A new table with the same service and budget takes the old one's counts: applying
    some other resource does not reopen it. Changed settings start afresh."""
    install(mesh, TIGHT)
    assert get(mesh, "/fail?code=500&n=1&i=0") == (200, b"try 2 ok")
    install(mesh, TIGHT)
    assert get(mesh, "/fail?code=500&n=1&i=1") == (500, b"try 1 failed")
    install(mesh, {**TIGHT, "min_retries": 2})
    assert get(mesh, "/fail?code=500&n=1&i=2") == (200, b"try 2 ok")
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 2 and stats["route_retries_over_budget"] == 1


def test_budget_arguments_are_checked(mesh: Mesh) -> None:  # noqa: F811
    t, ix = mesh.outbound()
    for bad in ({"percent": 101}, {"percent": -1}, {"interval_s": 0.5}, {"interval_s": 3601},
                {"min_retries": -1}, {"min_retries": 1000001}, {"min_retry_interval_s": 0},
                {"min_retry_interval_s": 3601}):
        with pytest.raises(ValueError):
            t.set_retry_budget([ix["v1"]], **bad)
    for bad_indexes in ([], [99], [ix["v1"], ix["v1"]]):
        with pytest.raises(ValueError):
            t.set_retry_budget(bad_indexes)
    t.set_retry_budget([ix["v1"]])
    with pytest.raises(ValueError, match="already has one"):
        t.set_retry_budget([ix["v2"], ix["v1"]])
    with pytest.raises(ValueError, match="unknown budget_percent"):
        t.add_route_rule("demo/r#0", [(ix["v1"], 1)], retry={"budget_percent": 20})
