"""What a node says about its data plane, for the data-plane integration tests:
the workers' last health beats (/stats) and the Prometheus samples (/metrics)."""

from __future__ import annotations

import json
import time
from typing import Any

from identityharness import metric_samples
from mnharness import Node, http_get, wait_for


def worker_reports(node: Node) -> dict[str, dict[str, Any]]:
    status, body = http_get(f"{node.admin_url}/stats")
    if status != 200:
        return {}
    view = json.loads(body)
    return {name: view[name] for name in node.worker_names if name in view}


def metric_total(node: Node, name: str, **labels: str) -> float:
    """Sum over the node's processes of the samples of ``name`` that carry ``labels``."""
    return sum(value for sample_labels, value in metric_samples(node.metrics_url, name)
               if all(sample_labels.get(k) == v for k, v in labels.items()))


def settle(node: Node) -> None:
    """Until every worker has beaten since now, so /stats and /metrics count everything
    that happened before this call (a beat is a copy of the engine's counters)."""
    since = time.monotonic() + 0.1  # a beat made just before now may arrive just after

    def fresh() -> bool:
        asked = time.monotonic()  # telemetry computes age_s at or after this
        reports = worker_reports(node)
        return len(reports) == node.workers and all(
            isinstance(r.get("age_s"), (int, float)) and asked - r["age_s"] > since
            for r in reports.values())

    wait_for(fresh, 10.0, "a health beat from every worker")


def cert_of(report: dict[str, Any], identity: str) -> dict[str, Any]:
    """What a worker's beat says of its certificate for `identity`."""
    return (report.get("certs") or {}).get(identity) or {}


def certs_issued(node: Node, identity: str) -> bool:
    """Every worker of the node holds a certificate for `identity`."""
    reports = worker_reports(node)
    return len(reports) == node.workers and all(cert_of(r, identity).get("issued")
                                                for r in reports.values())
