"""Tests for meshnode.tracing_export: spans from per-request records POSTed to a real
loopback collector (an HTTP server in the test) as OTLP/HTTP JSON and Zipkin v2 JSON;
batches bounded; a collector down or slow costs spans, counted, never an offer's wait."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from meshnode.accesslog import split_spans
from meshnode.tracing_export import SpanExporter, Spans, service_namer, span_of

pytestmark = pytest.mark.timeout(30)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"
WORKLOADS = [{"workload": "demo/frontend-1", "identity": FRONTEND, "labels": {"app": "frontend"}},
             {"workload": "demo/backend-1", "identity": BACKEND, "labels": {}}]


class Collector:
    """A loopback HTTP server keeping every POST's JSON body; `delay_s` before answering."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.bodies: list[Any] = []
        self.posted = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay_s)
                outer.bodies.append(body)
                outer.posted.set()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def record(span: str, parent: str | None, inbound: bool, sampled: bool = True,
           code: int = 200) -> dict[str, Any]:
    """A record as a worker's access records carry a request's span."""
    return {"start_time": "2025-01-02T03:04:05.678Z", "duration": 12, "method": "GET",
            "path": "/api?q=1", "authority": "backend", "response_code": code,
            "upstream_host": "127.0.0.1:9080", "upstream_cluster": "inbound|||demo/backend:http",
            "reporter": "destination" if inbound else "source",
            "downstream_peer_uri_san": FRONTEND if inbound else None,
            "downstream_local_uri_san": BACKEND if inbound else None,
            "upstream_peer_uri_san": None if inbound else BACKEND,
            "upstream_local_uri_san": None if inbound else FRONTEND,
            "request_id": "b1b9c0a2-1111-4222-8333-444455556666",
            "trace_id": TRACE, "span_id": span, "parent_span_id": parent, "trace_sampled": sampled}


def exporter(kind: str, url: str, **kw: Any) -> SpanExporter:
    e = SpanExporter(kind, url, service_namer("APP_LABEL_AND_NAMESPACE", WORKLOADS),
                     **{"batch_spans": 10, "flush_interval_s": 0.05, **kw})
    e.start()
    return e


def wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_otlp_json_two_sides_of_one_trace(collector: Collector) -> None:
    e = exporter("otlpHttp", collector.url)
    e.offer(record("a" * 16, None, inbound=False))
    e.offer(record("b" * 16, "a" * 16, inbound=True, code=503))
    e.offer(record("c" * 16, None, inbound=False, sampled=False))   # no span: not sampled
    wait(lambda: e.exported == 2, "two spans exported")
    e.stop()
    spans = {}
    for body in collector.bodies:
        for rs in body["resourceSpans"]:
            [service] = [a["value"]["stringValue"] for a in rs["resource"]["attributes"]
                         if a["key"] == "service.name"]
            for s in rs["scopeSpans"][0]["spans"]:
                spans[s["spanId"]] = (service, s)
    client_service, client = spans["a" * 16]
    server_service, server = spans["b" * 16]
    assert (client_service, server_service) == ("frontend.demo", "backend-1.demo")
    assert client["traceId"] == server["traceId"] == TRACE
    assert "parentSpanId" not in client and server["parentSpanId"] == "a" * 16
    assert (client["kind"], server["kind"]) == (3, 2)               # CLIENT, SERVER
    start = 1735787045678 * 1_000_000
    assert (server["startTimeUnixNano"], server["endTimeUnixNano"]) == (
        str(start), str(start + 12_000_000))
    attrs = {a["key"]: a["value"] for a in server["attributes"]}
    assert attrs["http.method"] == {"stringValue": "GET"}
    assert attrs["http.status_code"] == {"intValue": "503"}
    assert attrs["peer.principal"] == {"stringValue": FRONTEND}
    assert attrs["upstream_host"] == {"stringValue": "127.0.0.1:9080"}
    assert server["status"] == {"code": 2} and "status" not in client
    assert server["name"] == "backend/api"


def test_zipkin_v2_json(collector: Collector) -> None:
    e = exporter("zipkin", collector.url)
    e.offer(record("b" * 16, "a" * 16, inbound=True))
    wait(lambda: e.exported == 1, "a span exported")
    e.stop()
    [[span]] = collector.bodies
    assert span["traceId"] == TRACE and span["id"] == "b" * 16 and span["parentId"] == "a" * 16
    assert span["kind"] == "SERVER" and span["localEndpoint"] == {"serviceName": "backend-1.demo"}
    assert (span["timestamp"], span["duration"]) == (1735787045678000, 12000)
    assert span["tags"]["http.status_code"] == "200" and span["tags"]["http.method"] == "GET"


def test_a_batch_carries_at_most_batch_spans(collector: Collector) -> None:
    e = exporter("zipkin", collector.url, batch_spans=3, flush_interval_s=5.0)
    for i in range(7):
        e.offer(record(f"{i + 1:016x}", None, inbound=True))
    wait(lambda: e.exported == 6, "two full batches, before the interval")
    e.stop()                                        # the last one goes at the stop
    assert sorted(len(b) for b in collector.bodies) == [1, 3, 3]
    assert e.exported == 7 and e.dropped == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_collector_down_costs_spans_counted_never_a_wait() -> None:
    e = exporter("otlpHttp", f"http://127.0.0.1:{free_port()}/v1/traces", batch_spans=2)
    began = time.monotonic()
    for i in range(4):
        assert e.offer(record(f"{i + 1:016x}", None, inbound=False))
    assert time.monotonic() - began < 0.1
    wait(lambda: e.export_failed == 4, "the batches dropped")
    e.stop()
    assert e.exported == 0 and e.posts_failed == 2


def test_a_slow_collector_fills_the_queue_offers_drop_and_return_at_once() -> None:
    slow = Collector(delay_s=1.0)
    try:
        e = exporter("zipkin", slow.url, batch_spans=1, max_queued_spans=3, post_timeout_s=0.3)
        e.offer(record("1" * 16, None, inbound=True))
        wait(lambda: len(e._queue) == 0, "the first span taken for its POST")
        began = time.monotonic()
        kept = [e.offer(record(f"{i + 2:016x}", None, inbound=True)) for i in range(5)]
        assert time.monotonic() - began < 0.1
        assert kept == [True, True, True, False, False] and e.queue_full == 2
        e.stop()
        assert e.posts_failed >= 1                  # (timed out: its batch dropped too)
        assert e.dropped + e.exported == 6         # every span offered is accounted for
    finally:
        slow.close()


class RawCollector:
    """A loopback TCP server answering every POST with `answer` as it is, then with a
    byte each `trickle_s` for up to `trickle_for_s` (a collector the URL names that is
    not one, or is one gone wrong)."""

    def __init__(self, answer: bytes, trickle_s: float = 0.0, trickle_for_s: float = 0.0) -> None:
        self.answer, self.trickle_s, self.trickle_for_s = answer, trickle_s, trickle_for_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1/traces"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(65536)
            head, body = got.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            try:
                conn.sendall(self.answer)
                until = time.monotonic() + self.trickle_for_s
                while time.monotonic() < until:
                    time.sleep(self.trickle_s)
                    conn.sendall(b"x")
            except OSError:
                pass                        # the exporter went away

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("answer, trickle, exported", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", False, 0),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", True, 2),
], ids=["not-http", "endless-body"])
def test_a_collector_that_answers_wrong_costs_its_batch_not_the_exporter(
        answer: bytes, trickle: bool, exported: int) -> None:
    """An answer that is not HTTP raised out of the exporter's thread (http.client's
    BadStatusLine is no OSError): it ended, and no span left again. A 200 whose body
    never ends (a byte within each read's timeout) held the thread reading it, and
    telemetry's stop behind it: the status is the collector's word, the body is not read."""
    wrong = RawCollector(answer, trickle_s=0.1, trickle_for_s=10.0 if trickle else 0.0)
    try:
        e = exporter("otlpHttp", wrong.url, batch_spans=1, post_timeout_s=1.0)
        for i in range(2):
            e.offer(record(f"{i + 1:016x}", None, inbound=False))
        wait(lambda: e.exported + e.export_failed == 2, "both batches answered")
        began = time.monotonic()
        e.stop()
        assert time.monotonic() - began < 1.0
        assert (e.exported, e.export_failed, e.posts_failed) == (exported, 2 - exported,
                                                                 2 - exported)
    finally:
        wrong.close()


def test_span_of_needs_a_sampled_trace() -> None:
    assert span_of({"response_code": 200}) is None
    assert span_of(record("a" * 16, None, inbound=True, sampled=False)) is None
    assert span_of({**record("a" * 16, None, inbound=True), "start_unix_nano": 5,
                    "duration_ns": 7})["end_ns"] == 12


def snapshot(url: str | None, kind: str = "otlpHttp") -> dict[str, Any]:
    """What telemetry's Spans read of a node's snapshot (config/tracing.py's fields)."""
    return {"workloads": WORKLOADS, "mesh": {"tracing": {
        "sampling": 100.0, "collector_kind": kind if url else None, "collector_url": url,
        "service_name": "APP_LABEL_AND_NAMESPACE", "batch_spans": 1, "flush_interval_s": 0.05,
        "max_queued_spans": 8}}}


def test_telemetrys_exporter_follows_the_snapshot_and_its_counts_carry_over(
        collector: Collector) -> None:
    spans = Spans(logging.getLogger("test"))
    spans.offer([record("a" * 16, None, inbound=True)])        # no snapshot yet: nowhere
    spans.configure(snapshot(collector.url))
    spans.offer([record("b" * 16, None, inbound=True), record("c" * 16, None, inbound=True,
                                                              sampled=False)])
    wait(lambda: spans.counts()["exported"] == 1, "the sampled span exported")
    down = f"http://127.0.0.1:{free_port()}/v1/traces"
    spans.configure(snapshot(down))                             # rebuilt: another collector
    spans.configure(snapshot(down))                             # (unchanged: kept)
    spans.offer([record("d" * 16, None, inbound=True)])
    wait(lambda: spans.counts()["dropped"]["export_failed"] == 1, "the span to nowhere dropped")
    spans.configure(snapshot(None))                             # no collector: none
    spans.offer([record("e" * 16, None, inbound=True)])
    final = {"exported": 1, "dropped": {"queue_full": 0, "export_failed": 1}}
    # The replaced exporters end; their counts stay in the totals.
    wait(lambda: spans.counts() == final and not spans._ending, "the replaced exporters ended")
    assert [s["spanId"] for b in collector.bodies for rs in b["resourceSpans"]
            for s in rs["scopeSpans"][0]["spans"]] == ["b" * 16]
    spans.close()


def test_a_shippers_batch_carries_the_exporters_records_apart() -> None:
    """meshnode.accesslog.split_spans on the engine's lines: a span's record parsed for
    telemetry; its line kept for the access log unless only the span (or a tap) wanted it."""
    def line(path: str, *extra: str) -> bytes:
        return ('{"path":"%s"%s}\n' % (path, "".join("," + e for e in extra))).encode()
    span = '"trace_sampled":true,"duration_ns":7'
    lines, count, spans = split_spans(
        line("/logged") + line("/both", span) + line("/span", span, '"span_only":true')
        + line("/tap", span, '"tap_only":true', '"span_only":true'))
    assert [s["path"] for s in spans] == ["/both", "/span", "/tap"]
    assert [json.loads(x)["path"] for x in lines.splitlines()] == ["/logged", "/both", "/tap"]
    assert count == 3                                   # (the taps' split drops "/tap" then)
