"""Tests for the golden-metrics model (meshnode.golden): the latency percentiles are
PromQL's histogram_quantile over the engine's buckets, checked against Prometheus's own
engine (promtool), and a window's figures are the workers' figures now minus those of
the reading a window ago, per side, service, workload and edge.

Why: `meshnode stat` and the dashboard must say what a Prometheus user's
histogram_quantile(…rate(…)) says of the same traffic (issue 13), and a row must count
each request once though both sides of a node may have counted it.
"""

from __future__ import annotations

import math
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastpath.engine import latency_bounds_us
from meshnode.config.load import parse_text
from meshnode.config.snapshot import compile_snapshot
from meshnode.golden import History, histogram_quantile, rows
from meshnode.health import HealthBook
from systemtools import tool

TD = "cluster.local"
FRONTEND = f"spiffe://{TD}/ns/demo/sa/frontend"
BACKEND = f"spiffe://{TD}/ns/demo/sa/backend"
UPPER_US = [*latency_bounds_us()[:-1], math.inf]

CONFIG = """
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {name: idle, namespace: demo}
spec:
  selector: {app: idle}
  ports: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {name: frontend-v1, namespace: demo}
spec:
  address: 127.0.0.2
  ports: {http: 18081}
  labels: {app: frontend}
  serviceAccount: frontend
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {name: backend-v1, namespace: demo}
spec:
  address: 127.0.0.1
  ports: {http: 18082}
  labels: {app: backend}
  serviceAccount: backend
"""
SNAPSHOT = compile_snapshot(parse_text(CONFIG, "mesh.yaml"), "node-a", 1)


def test_quantiles_interpolate_within_the_bucket_the_rank_falls_in() -> None:
    upper = [1.0, 2.0, 4.0, math.inf]
    assert histogram_quantile(0.5, [10, 10, 0, 0], upper) == 1.0
    assert histogram_quantile(0.95, [10, 10, 0, 0], upper) == pytest.approx(1.9)
    assert histogram_quantile(0.75, [0, 0, 4, 0], upper) == 3.5   # from the bucket's start
    assert histogram_quantile(0.25, [4, 0, 0, 0], upper) == 0.25  # the first starts at 0
    # A rank in the +Inf bucket is the highest finite bound, as Prometheus answers.
    assert histogram_quantile(0.99, [1, 0, 0, 9], upper) == 4.0
    assert histogram_quantile(0.5, [0, 0, 0, 0], upper) is None


def test_quantiles_are_what_prometheus_histogram_quantile_gives(tmp_path: Path) -> None:
    """Random histograms over the engine's buckets, as cumulative `le` series, evaluated
    by Prometheus's own PromQL engine (promtool's rule tests compare exactly)."""
    promtool = tool("promtool", "prometheus")
    rng = random.Random(13)
    series, checks = [], []
    for case in range(6):
        counts = [0] * len(UPPER_US)
        for _ in range(rng.randint(1, 400)):
            us = rng.lognormvariate(7, 2)      # about 1 ms, with a long tail
            counts[next(i for i, upper in enumerate(UPPER_US) if us < upper)] += 1
        cumulative = 0
        for n, upper in zip(counts, UPPER_US):
            cumulative += n
            le = "+Inf" if math.isinf(upper) else repr(float(upper))
            series.append({"series": f'h_bucket{{case="{case}",le="{le}"}}', "values": str(cumulative)})
        for q in (0.5, 0.95, 0.99):
            checks.append({"expr": f'histogram_quantile({q}, h_bucket{{case="{case}"}})',
                           "eval_time": "0m",
                           "exp_samples": [{"labels": f'{{case="{case}"}}',
                                            "value": histogram_quantile(q, counts, UPPER_US)}]})
    spec = tmp_path / "quantiles.yml"
    spec.write_text(yaml.safe_dump({"tests": [{"interval": "1m", "input_series": series,
                                               "promql_expr_test": checks}]}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def _bucket(us: int) -> str:
    return str(next(i for i, upper in enumerate(UPPER_US) if us < upper))


def _figure(reporter: str, codes: dict[str, int], latency_us: int = 3_000) -> dict[str, Any]:
    """frontend-v1 -> backend, as one side's worker counts it (request_figures())."""
    return {"reporter": reporter, "source_principal": FRONTEND,
            "destination_service": "backend.demo.svc", "destination_principal": BACKEND,
            "route": "unknown", "destination_version": "unknown",
            "connection_security_policy": "unknown" if reporter == "source" else "mutual_tls",
            "codes": codes, "response_flags": {},
            "latency": {"200": {_bucket(latency_us): sum(codes.values())}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _beat(book: HealthBook, worker: str, pid: int, figures: list[dict[str, Any]],
          connections: int = 0) -> None:
    book.record(worker, {"process": worker, "pid": pid, "state": "ok", "requests": figures,
                         "upstreams": {"demo/backend:http": {"connections": connections,
                                                             "pending": 0, "limited": False}}})


def test_a_window_is_the_figures_added_since_the_reading_that_long_ago() -> None:
    book, clock = HealthBook(["proxy-0"]), Clock()
    history = History(book, clock=clock)
    _beat(book, "proxy-0", 7, [_figure("source", {"200": 50})])
    history.sample()                       # t=1000: 50 already counted, before the window
    for t, ok, failed in ((1010, 80, 0), (1020, 140, 10)):
        clock.now = t
        _beat(book, "proxy-0", 7, [_figure("source", {"200": ok, "503": failed})], connections=3)
        history.sample()
    clock.now = 1030
    window = history.window(20)            # since the reading at t=1010
    [edge] = rows(window, SNAPSHOT, "edge")
    assert (edge["source"], edge["name"], edge["reporter"]) == ("frontend-v1", "backend", "source")
    assert edge["requests"] == 70 and edge["success_rate"] == pytest.approx(60 / 70)
    assert edge["rps"] == pytest.approx(70 / 20)
    assert 2.0 <= edge["latency_ms_p50"] <= 3.5
    services = {r["name"]: r for r in rows(window, SNAPSHOT, "service")}
    assert services["backend"]["tcp_connections"] == 3 and services["backend"]["meshed"] == "1/1"
    # A configured service without traffic has a row with nothing to tell.
    assert services["idle"]["requests"] == 0 and services["idle"]["success_rate"] is None
    # A window longer than the ring reaches back to its first reading.
    assert rows(history.window(300), SNAPSHOT, "edge")[0]["requests"] == 150 - 50


def test_a_restarted_worker_counts_from_zero_again() -> None:
    book, clock = HealthBook(["proxy-0"]), Clock()
    history = History(book, clock=clock)
    _beat(book, "proxy-0", 7, [_figure("source", {"200": 500})])
    history.sample()
    clock.now += 10
    _beat(book, "proxy-0", 8, [_figure("source", {"200": 20})])  # a new pid: its counts are new
    assert rows(history.window(10), SNAPSHOT, "edge")[0]["requests"] == 20


def test_rows_count_a_request_once_from_the_side_that_sees_it_best() -> None:
    book, clock = HealthBook(["proxy-0", "proxy-1"]), Clock()
    history = History(book, clock=clock)
    history.sample()
    clock.now += 10
    # Both sides are on this node: the caller's worker and the server's each count it;
    # the server's side counted 5xx the caller's did not see yet (no matter: one side).
    _beat(book, "proxy-0", 1, [_figure("source", {"200": 30})])
    _beat(book, "proxy-1", 2, [_figure("destination", {"200": 20, "500": 10})])
    [service] = [r for r in rows(history.window(10), SNAPSHOT, "service") if r["name"] == "backend"]
    assert (service["reporter"], service["requests"]) == ("destination", 30)
    assert service["success_rate"] == pytest.approx(2 / 3)
    [edge] = rows(history.window(10), SNAPSHOT, "edge")
    assert (edge["reporter"], edge["success_rate"]) == ("source", 1.0)
    workloads = {r["name"]: r for r in rows(history.window(10), SNAPSHOT, "workload")}
    assert workloads["backend-v1"]["requests"] == 30
    assert workloads["frontend-v1"]["requests"] == 0   # it only calls
