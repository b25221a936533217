"""Traces on a real node (Mesh spec.tracing; fastpath tracing.pxi, meshnode.tracing_export):
a request sampled at 100 % becomes two spans of one trace at the collector the Mesh
names, the app's node's SERVER span under the caller's node's CLIENT span; a caller's
traceparent is joined; Zipkin v2 JSON when the Mesh says so; a collector that is down
costs spans, counted on /metrics, never a request.

The access log samples nothing here: spans reach telemetry on records the engine keeps
for them alone, which access.log must not show. One node (one worker) serves every
case; calls go through its outbound listener, over mutual TLS to its own inbound port,
to the tests.integration.httpapps server. The collector is an HTTP server in the test.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from httpapps import HTTPApp
from mnharness import Node, free_port_base, http_get, kill_leftovers, wait_for
from test_dataplane_http import HOST, service_yaml, workload_yaml

from meshnode.ports import Ports

pytestmark = pytest.mark.timeout(60)

BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
MESH = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec:
  telemetry: {{accessLogSampling: 0}}
  tracing:
    sampling: 100
    collector: {{{kind}: "{url}"}}
    batchSize: 8
    flushInterval: 50ms
"""


class SpanCollector:
    """A loopback collector keeping each POST's path and JSON body."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                posts.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def otlp_spans(self, trace_id: str) -> dict[int, tuple[str, dict[str, Any]]]:
        """The OTLP spans of a trace by kind (2 SERVER, 3 CLIENT), each with its service."""
        out = {}
        for path, body in list(self.posts):
            for rs in body["resourceSpans"] if path == "/v1/traces" else ():
                service = rs["resource"]["attributes"][0]["value"]["stringValue"]
                for span in rs["scopeSpans"][0]["spans"]:
                    if span["traceId"] == trace_id:
                        out[span["kind"]] = (service, span)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Traced:
    def __init__(self, node: Node, config: Path, app: HTTPApp, collector: SpanCollector) -> None:
        self.node, self.config, self.app, self.collector = node, config, app, collector
        self.port = Ports(node.port_base).outbound
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, path: str, **headers: str) -> str:
        """One request through both sides; the traceparent the app received."""
        r = self.session.get(f"http://127.0.0.1:{self.port}{path}",
                             headers={"Host": HOST, **headers}, timeout=20)
        assert r.status_code == 200, r.text
        return [s for s in self.app.seen if s.target == path][-1].headers["traceparent"]

    def collect(self, kind: str, url: str) -> None:
        (self.config / "mesh.yaml").write_text(MESH.format(kind=kind, url=url))
        self.node.apply(self.config / "mesh.yaml")     # (returns once the worker ACKed)

    def both_spans(self, trace_id: str) -> dict[int, tuple[str, dict[str, Any]]]:
        return wait_for(lambda: (lambda got: got if len(got) == 2 else None)(
            self.collector.otlp_spans(trace_id)), 10.0, f"both spans of {trace_id}")

    def metric(self, name: str) -> float:
        status, body = http_get(self.node.metrics_url)
        assert status == 200
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith(name))


@pytest.fixture(scope="module")
def traced() -> Iterator[Traced]:
    rd = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    config = Path(tempfile.mkdtemp(prefix="mn-res-", dir="/tmp"))
    app = HTTPApp()
    collector = SpanCollector()
    node = Node(rd, free_port_base(), workers=1)
    (config / "backend.yaml").write_text(service_yaml() + "---\n" + workload_yaml(app.port))
    (config / "mesh.yaml").write_text(MESH.format(kind="otlpHttp", url=collector.base + "/v1/traces"))
    try:
        result = node.up("--config", str(config))
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        it = Traced(node, config, app, collector)
        wait_for(lambda: _served(it) and it.metric("meshnode_trace_spans_exported_total") > 0,
                 15.0, "the node serving and exporting spans")
        yield it
    finally:
        node.down()
        leftovers = kill_leftovers(rd)
        app.stop()
        collector.close()
        shutil.rmtree(rd, ignore_errors=True)
        shutil.rmtree(config, ignore_errors=True)
        assert not leftovers


def _served(it: Traced) -> bool:
    try:
        it.call("/warm")
    except (requests.RequestException, AssertionError):
        return False
    return True


def test_a_sampled_request_is_a_client_and_a_server_span_of_one_trace(traced: Traced) -> None:
    trace_id, app_parent, flags = traced.call("/items/1").split("-")[1:]
    spans = traced.both_spans(trace_id)
    (server_service, server), (client_service, client) = spans[2], spans[3]
    assert flags == "01" and "parentSpanId" not in client       # the caller's node began it
    assert server["parentSpanId"] == client["spanId"] and server["spanId"] == app_parent
    assert server_service == client_service == "backend.demo"   # (one local workload calls)
    assert server["name"] == client["name"] == f"{HOST}/items/1"
    for span in (client, server):
        attrs = {a["key"]: a["value"] for a in span["attributes"]}
        assert attrs["http.method"] == {"stringValue": "GET"}
        assert attrs["http.status_code"] == {"intValue": "200"}
        assert attrs["peer.principal"] == {"stringValue": BACKEND}
        assert int(span["startTimeUnixNano"]) < int(span["endTimeUnixNano"])
    # Both sides name the one x-request-id the caller's node made.
    assert ({a["value"]["stringValue"] for s in (client, server) for a in s["attributes"]
             if a["key"] == "guid:x-request-id"}
            == {[s for s in traced.app.seen if s.target == "/items/1"][0].headers["x-request-id"]})
    access_log = traced.node.runtime_dir / "logs" / "access.log"
    assert "/items/1" not in access_log.read_text()              # accessLogSampling 0


def test_a_callers_traceparent_is_joined(traced: Traced) -> None:
    traced.call("/items/2", traceparent=f"00-{TRACE}-{PARENT}-01")
    spans = traced.both_spans(TRACE)
    assert spans[3][1]["parentSpanId"] == PARENT and spans[2][1]["parentSpanId"] == spans[3][1]["spanId"]


def test_zipkin_v2_json_when_the_mesh_names_a_zipkin_collector(traced: Traced) -> None:
    traced.collect("zipkin", traced.collector.base + "/api/v2/spans")

    called: set[str] = set()

    def zipkin() -> dict[str, dict[str, Any]] | None:
        """A call's two spans in Zipkin's form (calls go on until telemetry has the change)."""
        called.add(traced.call("/items/z").split("-")[1])
        by_trace: dict[str, dict[str, dict[str, Any]]] = {}
        for path, body in list(traced.collector.posts):
            for span in body if path == "/api/v2/spans" else ():
                by_trace.setdefault(span["traceId"], {})[span["kind"]] = span
        return next((by_trace[t] for t in called if len(by_trace.get(t, {})) == 2), None)

    spans = wait_for(zipkin, 10.0, "both spans of a call in Zipkin's form")
    assert spans["SERVER"]["parentId"] == spans["CLIENT"]["id"]
    assert spans["SERVER"]["localEndpoint"] == {"serviceName": "backend.demo"}


def test_a_collector_down_costs_spans_counted_never_a_request(traced: Traced) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/v1/traces"  # (nothing listens)
    traced.collect("otlpHttp", down)
    before = traced.metric('meshnode_trace_spans_dropped_total{node')
    wait_for(lambda: traced.call("/items/down") and
             traced.metric('meshnode_trace_spans_dropped_total{node') >= before + 2, 10.0,
             "spans dropped for the collector down, while every request is answered")
    assert 'reason="export_failed"' in http_get(traced.node.metrics_url)[1].decode()
