"""What a node says about its data plane, for the data-plane integration tests:
the workers' last health beats (/stats) and the Prometheus samples (/metrics)."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from httpapps import BACKEND_HOST, HTTPApp, backend_config
from identityharness import metric_samples
from mnharness import Node, free_port_base, http_get, kill_leftovers, wait_for


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


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path, headers={"Host": BACKEND_HOST})
    response = conn.getresponse()
    response.read()
    return response.status


def send(port: int, path: str, count: int, parallel: int = 1) -> list[int]:
    """`count` GETs of `path` to demo/backend through the node's HTTP listener `port`,
    on `parallel` kept-alive connections; their status codes."""
    def run(n: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            return [_get(conn, path) for _ in range(n)]
        finally:
            conn.close()
    shares = [count // parallel + (i < count % parallel) for i in range(parallel)]
    with ThreadPoolExecutor(parallel) as pool:
        return [code for codes in pool.map(run, shares) for code in codes]


def _serving(port: int) -> bool:
    try:
        return send(port, "/ready-probe", 4) == [200] * 4
    except OSError:
        return False


@contextmanager
def backend_node(*up_args: str) -> Iterator[Node]:
    """One node (one worker) fronting an HTTPApp as Service demo/backend, serving; then
    stopped, its app too, and checked gone (for a module's fixture)."""
    work = Path(tempfile.mkdtemp(prefix="mn-bn-", dir="/tmp"))
    app = HTTPApp()
    node = Node(work / "node", free_port_base(), workers=1)
    try:
        (work / "config").mkdir()
        (work / "config" / "backend.yaml").write_text(backend_config(app.port))
        node.runtime_dir.mkdir()
        result = node.up("--config", str(work / "config"), *up_args)
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        wait_for(lambda: certs_issued(node, "spiffe://cluster.local/ns/demo/sa/backend"),
                 20.0, "the worker to hold the backend's certificate")
        wait_for(lambda: _serving(node.port_base + 1), 20.0, "GETs through the node")
        yield node
    finally:
        node.down()
        leftovers = kill_leftovers(node.runtime_dir)
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
        assert not leftovers, f"processes survived `meshnode down`: {leftovers}"
