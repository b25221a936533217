"""Tests for Istio's standard request metrics (meshnode.metrics IstioRequests,
meshnode.istiolabels): workers' request figures, in the shape their health beats carry
(DataPlane.request_figures()), become istio_requests_total and
istio_request_duration_milliseconds with Istio's whole label set, one series per label
set for the node whatever the number of workers; the Mesh's telemetry.metricNames picks
the names exported.

Why: Istio's Grafana dashboards, Kiali and Flagger select by these names and labels
(issue 13), and sum over series: a series per worker would be correct for sums but
not what an Envoy sidecar exports, and per-worker labels Istio has none of.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastpath.engine import latency_bounds_us, size_bounds
from meshnode.config.load import parse_text
from meshnode.config.snapshot import compile_snapshot
from meshnode.health import HealthBook
from meshnode.metrics import NodeCollector

TD = "cluster.local"
FRONTEND = f"spiffe://{TD}/ns/demo/sa/frontend"
BACKEND = f"spiffe://{TD}/ns/demo/sa/backend"
STRANGER = f"spiffe://{TD}/ns/elsewhere/sa/nobody"

CONFIG = """
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app.kubernetes.io/name: backend}
  ports: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {name: frontend-v1, namespace: demo}
spec:
  address: 127.0.0.1
  ports: {http: 18081}
  labels: {app: frontend, version: v1}
  serviceAccount: frontend
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {name: backend-v1, namespace: demo}
spec:
  address: 127.0.0.2
  ports: {http: 18082}
  labels: {app.kubernetes.io/name: backend, app.kubernetes.io/version: v1}
  serviceAccount: backend
  node: node-b
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {name: backend-v2, namespace: demo}
spec:
  address: 127.0.0.3
  ports: {http: 18082}
  labels: {app: backend, app.kubernetes.io/name: backend, version: v2}
  serviceAccount: backend
  node: node-b
"""


# Istio's labels of _sent()'s figure, but for request_protocol and the answer's.
SENT_LABELS = {
    "reporter": "source",
    "source_workload": "frontend-v1", "source_workload_namespace": "demo",
    "source_principal": FRONTEND, "source_app": "frontend", "source_version": "v1",
    # Two workloads share backend's service account: the one that answered is the
    # one with the version the engine saw; its app from app.kubernetes.io/name.
    "destination_workload": "backend-v1", "destination_workload_namespace": "demo",
    "destination_principal": BACKEND, "destination_app": "backend",
    "destination_version": "v1",
    "destination_service": "backend.demo.svc.cluster.local",
    "destination_service_name": "backend", "destination_service_namespace": "demo",
    "connection_security_policy": "unknown"}


def _bucket(us: int) -> str:
    """The engine latency bucket (a request figure's sparse key) that holds `us`."""
    return str(next(i for i, upper in enumerate(latency_bounds_us()) if us < upper))


def _sent(codes: dict[str, int], latency: dict[str, dict[str, int]], version: str = "v1",
          shed: int = 0) -> dict[str, Any]:
    """A figure of frontend's requests to backend, as the calling worker reports it."""
    return {"reporter": "source", "source_principal": FRONTEND,
            "destination_service": "backend.demo.svc", "destination_principal": BACKEND,
            "route": "demo/split", "destination_version": version,
            "connection_security_policy": "unknown", "codes": codes,
            "response_flags": {"OM": shed} if shed else {}, "latency": latency}


def _scrape(beats: dict[str, list[dict[str, Any]]], mesh: str = "",
            node: str = "node-a") -> dict[str, list[Any]]:
    """Samples by name from a collector over one beat per worker, with the snapshot of
    CONFIG (and `mesh`, a Mesh resource) for `node`."""
    book = HealthBook(list(beats))
    for name, figures in beats.items():
        book.record(name, {"state": "ok", "requests": figures})
    snapshot = compile_snapshot(parse_text(CONFIG + mesh, "mesh.yaml"), node, 1)
    registry = CollectorRegistry()
    registry.register(NodeCollector(book, node, lambda: snapshot))
    text = generate_latest(registry).decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def test_workers_figures_are_summed_into_one_series_per_istio_label_set() -> None:
    fast, slow = _bucket(3_000), _bucket(40_000)
    samples = _scrape({
        "proxy-1": [_sent({"200": 3, "503": 2}, {"200": {fast: 3}}, shed=2)],
        "proxy-2": [_sent({"200": 4}, {"200": {fast: 1, slow: 3}})]})
    requests = {(s.labels["response_code"], s.labels["response_flags"]): s
                for s in samples["istio_requests_total"]}
    assert {k: s.value for k, s in requests.items()} == {("200", "-"): 7.0, ("503", "OM"): 2.0}
    assert requests["200", "-"].labels == {**SENT_LABELS, "request_protocol": "http",
                                           "response_code": "200", "response_flags": "-"}
    assert not any("node" in s.labels or "process" in s.labels or "route" in s.labels
                   for s in samples["istio_requests_total"])
    buckets = {s.labels["le"]: s.value for s in samples["istio_request_duration_milliseconds_bucket"]
               if s.labels["response_code"] == "200"}
    assert (buckets["5"], buckets["50"], buckets["+Inf"]) == (4.0, 7.0, 7.0)
    count = samples["istio_request_duration_milliseconds_count"]
    assert [(s.labels["response_code"], s.value) for s in count] == [("200", 7.0)]


def test_the_duration_histogram_carries_each_response_code() -> None:
    fast, slow = _bucket(2_000), _bucket(700_000)
    samples = _scrape({"proxy-1": [
        _sent({"200": 5, "504": 1, "299": 1}, {"200": {fast: 5}, "504": {slow: 1}, "0": {fast: 1}})]})
    counts = {s.labels["response_code"]: s.value
              for s in samples["istio_request_duration_milliseconds_count"]}
    # "0": the codes past the engine's few timed apart, under no code it could name.
    assert counts == {"200": 5.0, "504": 1.0, "unknown": 1.0}
    slow_buckets = {s.labels["le"]: s.value
                    for s in samples["istio_request_duration_milliseconds_bucket"]
                    if s.labels["response_code"] == "504"}
    assert (slow_buckets["500"], slow_buckets["1000"]) == (0.0, 1.0)


def test_the_serving_side_names_its_local_workload_and_an_unknown_caller_as_istio() -> None:
    got = {"reporter": "destination", "source_principal": STRANGER,
           "destination_service": "backend.demo.svc", "destination_principal": BACKEND,
           "route": "unknown", "destination_version": "v2",
           "connection_security_policy": "mutual_tls", "codes": {"200": 1},
           "response_flags": {}, "latency": {}}
    nowhere = {**got, "source_principal": "unknown", "destination_service": "unknown",
               "destination_principal": "unknown", "destination_version": "unknown",
               "codes": {"404": 1}}
    samples = _scrape({"proxy-1": [got, nowhere]}, node="node-b")
    by_code = {s.labels["response_code"]: s.labels for s in samples["istio_requests_total"]}
    assert {k: v for k, v in by_code["200"].items() if k.startswith("source_")} == {
        "source_workload": "unknown", "source_workload_namespace": "elsewhere",
        "source_principal": STRANGER, "source_app": "unknown", "source_version": "unknown"}
    assert (by_code["200"]["destination_workload"], by_code["200"]["destination_app"],
            by_code["200"]["connection_security_policy"]) == ("backend-v2", "backend", "mutual_tls")
    assert {by_code["404"][k] for k in (
        "source_workload", "source_workload_namespace", "destination_workload",
        "destination_workload_namespace", "destination_service", "destination_service_name",
        "destination_service_namespace", "destination_app", "destination_version")} == {"unknown"}
    assert "istio_request_duration_milliseconds_count" not in samples   # nothing timed


def _size(*sizes: int) -> dict[str, Any]:
    """A beat's histogram of these sizes (DataPlane.request_figures()' shape: sparse
    counts per engine size bucket, and the sum)."""
    counts: dict[str, int] = {}
    for n in sizes:
        index = str(next((i for i, b in enumerate(size_bounds()) if n <= b), len(size_bounds())))
        counts[index] = counts.get(index, 0) + 1
    return {"counts": counts, "sum": sum(sizes)}


def test_sizes_are_summed_per_label_set_and_code_on_istios_buckets() -> None:
    one = {**_sent({"200": 2, "404": 1}, {}), "request_bytes": {"200": _size(80, 3000),
                                                               "404": _size(70)},
           "response_bytes": {"200": _size(200, 40_000), "404": _size(150)}}
    two = {**_sent({"200": 1}, {}), "request_bytes": {"200": _size(90)},
           "response_bytes": {"200": _size(4_000_000)}}
    samples = _scrape({"proxy-1": [one], "proxy-2": [two]})
    count = {(s.labels["response_code"], s.labels["response_flags"]): s.value
             for s in samples["istio_request_bytes_count"]}
    assert count == {("200", "-"): 3.0, ("404", "-"): 1.0}
    assert {s.labels["response_code"]: s.value for s in samples["istio_request_bytes_sum"]} == {
        "200": 3170.0, "404": 70.0}
    resp = {s.labels["le"]: s.value for s in samples["istio_response_bytes_bucket"]
            if s.labels["response_code"] == "200"}
    # Envoy's default buckets; 4 MB is past the last bound.
    assert list(resp)[:3] == ["0.5", "1", "5"] and len(resp) == 20
    assert (resp["250"], resp["60000"], resp["3600000"], resp["+Inf"]) == (1.0, 2.0, 2.0, 3.0)
    (labels,) = {tuple(sorted(s.labels.items())) for s in samples["istio_response_bytes_count"]
                 if s.labels["response_code"] == "404"}
    assert dict(labels)["destination_workload"] == "backend-v1"
    assert dict(labels)["request_protocol"] == "http"


def test_opaque_connections_are_istios_tcp_metrics_with_its_labels() -> None:
    tcp = {**_sent({}, {}), "tcp": {"opened": 3, "closed": 2, "received": 500, "sent": 7000}}
    samples = _scrape({"proxy-1": [tcp], "proxy-2": [{**tcp, "tcp": {
        "opened": 1, "closed": 1, "received": 5, "sent": 6}}]})
    values = {name: [(s.labels, s.value) for s in samples[name]] for name in (
        "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total")}
    assert {name: [v for _, v in got] for name, got in values.items()} == {
        "istio_tcp_connections_opened_total": [4.0], "istio_tcp_connections_closed_total": [3.0],
        "istio_tcp_received_bytes_total": [505.0], "istio_tcp_sent_bytes_total": [7006.0]}
    (labels, _), = values["istio_tcp_sent_bytes_total"]
    assert labels == {**SENT_LABELS, "request_protocol": "tcp", "response_flags": "-"}
    assert "istio_requests_total" not in samples                # no request was counted


MESH = """
---
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {name: default}
spec:
  telemetry: {metricNames: [%s]}
"""


def test_the_mesh_picks_the_names_request_metrics_are_exported_under() -> None:
    beats = {"proxy-1": [_sent({"200": 1}, {"200": {_bucket(1_000): 1}})]}
    both = _scrape(beats)
    assert {"istio_requests_total", "meshnode_requests_total",
            "istio_request_duration_milliseconds_count",
            "meshnode_request_duration_milliseconds_count"} <= set(both)
    istio = _scrape(beats, MESH % "istio")
    assert "istio_requests_total" in istio and "meshnode_requests_total" not in istio
    assert "meshnode_request_duration_milliseconds_count" not in istio
    own = _scrape(beats, MESH % "meshnode")
    assert "meshnode_requests_total" in own and "istio_requests_total" not in own
    assert "meshnode_process_up" in own and "meshnode_process_up" in istio  # no Istio name


def test_the_meshnode_duration_sums_every_code_per_worker() -> None:
    samples = _scrape({"proxy-1": [_sent({"200": 2, "500": 1},
                                         {"200": {_bucket(1_000): 2}, "500": {_bucket(1_000): 1}})]})
    count = samples["meshnode_request_duration_milliseconds_count"]
    assert [(s.labels["process"], s.value) for s in count] == [("proxy-1", 3.0)]
