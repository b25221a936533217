"""DestinationRule connectionPool through a running node with two proxy workers, from
Istio's YAML unchanged: each worker takes its share of maxConnections, requests within
it are served, maxRequestsPerConnection closes each upstream after its requests, and the
overflow counter is in /metrics by reason."""

from __future__ import annotations

import pytest

from dataplanekit import metric_samples, settle, worker_reports
from test_dataplane_http import Mesh, app_says, get, mesh, start_app  # noqa: F401

pytestmark = pytest.mark.timeout(120)

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 2
        connectTimeout: 2s
      http:
        http1MaxPendingRequests: 4
        maxRequestsPerConnection: 1
"""


def test_connection_pool_limits_each_worker_and_retires_upstreams(mesh: Mesh) -> None:  # noqa: F811
    node = mesh.node
    assert node.workers == 2
    node.wait_version(node.apply(mesh.write("pool.yaml", RULE)))
    for i in range(20):
        response = get(mesh.port, f"/pool/{i}")
        assert (response.status_code, response.content) == (200, app_says(f"/pool/{i}"))
    settle(node)
    reports = worker_reports(node)
    assert len(reports) == 2
    spent = 0
    for name, report in reports.items():
        limited = {svc: u for svc, u in report["upstreams"].items() if u["limited"]}
        assert limited, (name, report["upstreams"])
        # maxConnections 2 over two workers: one each, never more.
        assert all(u["connections"] <= 1 and u["pending"] == 0 for u in limited.values()), limited
        spent += report["dataplane"]["pool_spent"]
    # maxRequestsPerConnection 1: no upstream carried a second request.
    assert spent >= 19, spent
    reasons = {labels.get("reason") for labels, _ in
               metric_samples(node.metrics_url, "meshnode_pool_overflows_total")}
    assert {"max_connections", "max_pending_requests"} <= reasons
