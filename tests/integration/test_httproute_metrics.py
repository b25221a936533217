"""What a node's Prometheus endpoint says of HTTPRoute traffic, scraped from /metrics of a
real node and read with the Prometheus text parser: requests by the route that sent
them and the version that answered them (a canary dashboard's query), and the route
counters (a route's timeout expiring).

Why: per-request metrics gain `route` and `destination_version` (issue 11), so that a
user watching a canary sees each version's share and errors, as Istio's
destination_version and Linkerd's route metrics show them. The manifests are the
Gateway API suite's, applied unchanged (meshkit, conformance).
"""

from __future__ import annotations

import pytest

from conformance import Expect, check, sample, served_by
from dataplanekit import metric_total, settle
from meshkit import DATA, INFRA_NS, MESH_MANIFESTS, MESH_NS, ConformanceMesh, conformance_mesh, gw

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)

REQUESTS = "meshnode_requests_total"


def test_a_canary_split_shows_requests_by_route_and_destination_version(
        gw: ConformanceMesh) -> None:
    """MeshHTTPRouteWeight's route (Service echo: 70 to echo-v1, 30 to echo-v2): the
    calling side counts each answer under the route and the version label of the pod
    that gave it; the serving side under its own version, with no route (it cannot
    tell which sent it)."""
    gw.apply(MESH_MANIFESTS / "httproute-weight.yaml")
    route = f"{MESH_NS}/mesh-weighted-backends"
    case = Expect(host="echo", path="/canary")
    caller = gw.caller(MESH_NS)
    check(gw, caller, [case])      # in force on every worker (the route answers)
    settle(gw.node)
    before = {v: metric_total(gw.node, REQUESTS, reporter="source", route=route,
                              destination_version=v, response_code="200") for v in ("v1", "v2")}
    served = sample(gw, caller, case, 60, served_by)
    assert set(served) == {"echo-v1", "echo-v2"}, served
    settle(gw.node)
    for version in ("v1", "v2"):
        counted = metric_total(gw.node, REQUESTS, reporter="source", route=route,
                               destination_version=version, response_code="200")
        assert counted - before[version] == served[f"echo-{version}"], (version, served)
        assert metric_total(gw.node, REQUESTS, reporter="destination", route="unknown",
                            destination_version=version,
                            destination_service=f"echo-{version}.{MESH_NS}.svc") >= \
            served[f"echo-{version}"]
    # A Service's requests no route governs: no route, and the version that served them.
    check(gw, caller, [Expect(host="echo-v2", path="/plain", backend="echo-v2")])
    settle(gw.node)
    assert metric_total(gw.node, REQUESTS, reporter="source", route="unknown",
                        destination_version="v2",
                        destination_service=f"echo-v2.{MESH_NS}.svc") >= 1


def test_a_route_timeout_shows_in_the_timeouts_counter_and_under_its_route(
        gw: ConformanceMesh) -> None:
    """HTTPRouteTimeoutRequest's route: a backend that takes 1s against 500ms is answered
    504, counted in meshnode_route_timeouts_total and as a 504 of the route."""
    gw.apply(DATA / "core" / "httproute-timeout-request.yaml")
    route = f"{INFRA_NS}/request-timeout"
    host = f"infra-backend-v1.{INFRA_NS}:8080"
    settle(gw.node)
    timeouts = metric_total(gw.node, "meshnode_route_timeouts_total")
    late = metric_total(gw.node, REQUESTS, route=route, response_code="504")
    got = gw.send(gw.caller(MESH_NS), host, "/request-timeout?delay=1s")
    assert got.status == 504, got.describe()
    settle(gw.node)
    assert metric_total(gw.node, "meshnode_route_timeouts_total") - timeouts == 1
    # The route's backend pod has no version label: "unknown", as Istio's.
    assert metric_total(gw.node, REQUESTS, reporter="source", route=route, response_code="504",
                        destination_version="unknown") - late == 1
    assert metric_total(gw.node, "meshnode_route_matched_requests_total") >= 1
