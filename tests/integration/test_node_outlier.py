"""DestinationRule outlierDetection through a running node with two proxy workers: a
workload on a dead node is ejected once for the whole node (the workers share the
ejection through the node's state file), shown per endpoint in /stats and counted in
/metrics; requests keep reaching the live app."""

from __future__ import annotations

import socket

import pytest

from dataplanekit import metric_total, settle, worker_reports
from test_dataplane_http import (WORKLOAD_YAML, Mesh, app_says, get, mesh,  # noqa: F401
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nobody listens there
    dead_node = ("apiVersion: meshnode.io/v1alpha1\nkind: Node\nmetadata: {name: gone}\n"
                 f"spec: {{address: 127.0.0.1, inboundPort: {dead_port}}}\n")
    workload = WORKLOAD_YAML.format(app_port=mesh.app.port, extra_labels="", alt="")
    workload = workload.replace("backend-v1", "backend-gone").replace(
        "  serviceAccount: backend\n", "  serviceAccount: backend\n  node: gone\n")
    node.wait_version(node.apply(mesh.write("gone.yaml", "---\n".join(
        (dead_node, workload, RULE)))))
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
