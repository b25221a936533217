"""DestinationRule outlierDetection through a running node with two proxy workers: a
workload on a dead node is ejected once for the whole node (the workers share the
ejection through the node's state file), shown per endpoint in /stats and counted in
/metrics; requests keep reaching the live app."""

from __future__ import annotations

import pytest

from dataplanekit import metric_total, settle, worker_reports
from test_dataplane_http import (Mesh, app_says, dead_node_workload, get, mesh,  # noqa: F401
                                 start_app)

pytestmark = pytest.mark.timeout(120)

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 100ms
      baseEjectionTime: 60s
      maxEjectionPercent: 100
"""


def test_a_dead_endpoint_is_ejected_once_for_the_node(mesh: Mesh) -> None:  # noqa: F811
    node = mesh.node
    assert node.workers == 2
    gone, dead_port = dead_node_workload(mesh)
    node.wait_version(node.apply(mesh.write("gone.yaml", gone + "---\n" + RULE)))
    settle(node)
    before = metric_total(node, "meshnode_upstream_failovers_total")
    # Fresh connections, spread over both workers by the kernel (SO_REUSEPORT): the
    # first that meets the dead endpoint ejects it for both.
    for i in range(40):
        response = get(mesh.port, f"/outlier/{i}")
        assert (response.status_code, response.content) == (200, app_says(f"/outlier/{i}"))
    settle(node)
    reports = worker_reports(node)
    served = {name: r["dataplane"]["http_routed"] for name, r in reports.items()}
    assert all(n > 0 for n in served.values()), served     # both workers took requests
    for name, report in reports.items():
        [entry] = [e for e in report["outliers"] if e["port"] == dead_port]
        assert entry["ejected"] and entry["ejections"] == 1, (name, entry)
    # Learned once for the node: one failed setup, one ejection, whichever worker.
    assert metric_total(node, "meshnode_upstream_failovers_total") - before == 1
    assert metric_total(node, "meshnode_outlier_ejections_total") == 1
