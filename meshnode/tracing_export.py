"""Spans out of a node: built from the workers' per-request records (a sampled request's
trace, span and parent ids ride its access record), batched and POSTed to the collector
Mesh spec.tracing names, as OTLP/HTTP JSON or Zipkin v2 JSON, from a thread of their own.
Telemetry holds one exporter at a time (Spans), built from its snapshot.

Nothing here runs on a request's path: telemetry offers each record it reads, and
offer() never waits. The queue is bounded (spec.tracing.maxQueuedSpans): a slow or
gone collector costs spans, dropped and counted (meshnode_trace_spans_dropped_total),
never a worker's time nor telemetry's memory. A batch the collector refuses or does not
answer in time is dropped whole and counted likewise: spans are not retried (a
collector that is down for long would only see them late and in a burst).

A record reaches telemetry when the access log drew it or when its span is sampled and
a collector is named (the engine's span_only records, fastpath accesslog.pxi): spans
do not depend on the access log's sampling or filter.
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from . import logs
from .config.tracing import SERVICE_NAMES

# OTLP's Span.SpanKind (opentelemetry-proto trace.proto) and Status.StatusCode.
_OTLP_SERVER = 2
_OTLP_CLIENT = 3
_OTLP_ERROR = 2

POST_TIMEOUT_S = 5.0
"""The longest one POST to the collector may take before its batch is dropped."""


def span_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """A record's span in one neutral shape, or None when it has none or its trace is
    not sampled. Times: the record's own nanoseconds when it has them (start_unix_nano,
    duration_ns), else its access-log fields (start_time to the millisecond,
    duration in ms). Inbound (reporter "destination") is Istio's SERVER span, outbound
    its CLIENT span."""
    if not record.get("trace_sampled") or not record.get("trace_id") or not record.get("span_id"):
        return None
    start = record.get("start_unix_nano")
    if start is None:
        start = int(datetime.fromisoformat(record["start_time"].replace("Z", "+00:00"))
                    .timestamp() * 1000) * 1_000_000
    duration = record.get("duration_ns")
    if duration is None:
        duration = int(record.get("duration") or 0) * 1_000_000
    inbound = record.get("reporter") == "destination"
    path = (record.get("path") or "/").split("?", 1)[0]
    return {
        "trace_id": record["trace_id"], "span_id": record["span_id"],
        "parent_span_id": record.get("parent_span_id"),
        "server": inbound,
        # Envoy's default operation name: the authority and the path.
        "name": f"{record.get('authority') or ''}{path}",
        "start_ns": int(start), "end_ns": int(start) + int(duration),
        "method": record.get("method"), "status": int(record.get("response_code") or 0),
        "upstream": record.get("upstream_host"), "cluster": record.get("upstream_cluster"),
        "peer": record.get("downstream_peer_uri_san" if inbound else "upstream_peer_uri_san"),
        "local": record.get("downstream_local_uri_san" if inbound else "upstream_local_uri_san"),
        "request_id": record.get("request_id"),
    }


def service_namer(convention: str, workloads: Iterable[dict[str, Any]]) -> Callable[[str | None], str]:
    """The service a span's side names (Istio's tracingServiceName `convention`), from
    its own identity and the snapshot's workloads ({"workload": "ns/name", "identity",
    "labels"}); "unknown" for an identity no workload has."""
    if convention not in SERVICE_NAMES:
        raise ValueError(f"service name convention must be one of {SERVICE_NAMES}, not {convention!r}")
    names: dict[str, str] = {}
    for w in workloads:
        namespace, name = w["workload"].split("/", 1)
        labels = w.get("labels") or {}
        app = labels.get("app", name)
        canonical = labels.get("service.istio.io/canonical-name",
                               labels.get("app.kubernetes.io/name", app))
        names.setdefault(w["identity"], {"APP_LABEL_AND_NAMESPACE": f"{app}.{namespace}",
                                         "CANONICAL_NAME_ONLY": canonical,
                                         "CANONICAL_NAME_AND_NAMESPACE": f"{canonical}.{namespace}",
                                         }[convention])
    return lambda identity: names.get(identity or "", "unknown")


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    """What a span says besides its ids and times (OpenTelemetry's HTTP names)."""
    out = {"http.method": span["method"], "http.status_code": span["status"],
           "upstream_cluster": span["cluster"], "upstream_host": span["upstream"],
           "peer.principal": span["peer"], "guid:x-request-id": span["request_id"]}
    return {k: v for k, v in out.items() if v not in (None, "")}


def _otlp_value(v: Any) -> dict[str, Any]:
    return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}


def otlp_body(spans: list[dict[str, Any]], service_of: Callable[[str | None], str]) -> dict[str, Any]:
    """OTLP/HTTP JSON (ExportTraceServiceRequest): a resourceSpans per service, ids in
    hex, times as decimal strings (proto3 JSON's 64-bit integers)."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        out = {"traceId": s["trace_id"], "spanId": s["span_id"], "name": s["name"],
               "kind": _OTLP_SERVER if s["server"] else _OTLP_CLIENT,
               "startTimeUnixNano": str(s["start_ns"]), "endTimeUnixNano": str(s["end_ns"]),
               "attributes": [{"key": k, "value": _otlp_value(v)}
                              for k, v in _attributes(s).items()]}
        if s["parent_span_id"]:
            out["parentSpanId"] = s["parent_span_id"]
        if s["status"] >= 500 or s["status"] == 0:
            out["status"] = {"code": _OTLP_ERROR}
        by_service.setdefault(service_of(s["local"]), []).append(out)
    return {"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": name}}]},
         "scopeSpans": [{"scope": {"name": "meshnode"}, "spans": group}]}
        for name, group in by_service.items()]}


def zipkin_body(spans: list[dict[str, Any]], service_of: Callable[[str | None], str]) -> list[dict[str, Any]]:
    """Zipkin's v2 JSON (POST /api/v2/spans): times in microseconds, tags as strings."""
    out = []
    for s in spans:
        z = {"traceId": s["trace_id"], "id": s["span_id"], "name": s["name"],
             "kind": "SERVER" if s["server"] else "CLIENT",
             "timestamp": s["start_ns"] // 1000,
             "duration": max(1, (s["end_ns"] - s["start_ns"]) // 1000),
             "localEndpoint": {"serviceName": service_of(s["local"])},
             "tags": {k: str(v) for k, v in _attributes(s).items()}}
        if s["parent_span_id"]:
            z["parentId"] = s["parent_span_id"]
        out.append(z)
    return out


class SpanExporter:
    """Batches the spans of the records offered and POSTs them to `url` ("otlpHttp" or
    "zipkin" `kind`), at `batch_spans` a POST, at least every `flush_interval_s` while
    any wait; at most `max_queued_spans` wait. Counters (read any time): exported,
    queue_full and export_failed (spans dropped, by reason), posts_failed."""

    def __init__(self, kind: str, url: str, service_of: Callable[[str | None], str], *,
                 batch_spans: int = 512, flush_interval_s: float = 5.0,
                 max_queued_spans: int = 2048, post_timeout_s: float = POST_TIMEOUT_S) -> None:
        if kind not in ("otlpHttp", "zipkin"):
            raise ValueError(f"collector kind must be otlpHttp or zipkin, not {kind!r}")
        self.kind, self.url, self.service_of = kind, url, service_of
        self.batch_spans, self.flush_interval_s = batch_spans, flush_interval_s
        self.max_queued_spans, self.post_timeout_s = max_queued_spans, post_timeout_s
        self.exported = self.queue_full = self.export_failed = self.posts_failed = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Send what waits (one last try each batch), then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def offer(self, record: dict[str, Any]) -> bool:
        """Queue the record's span, if it has a sampled one; False when it was dropped
        for a full queue. Never waits on the collector."""
        span = span_of(record)
        if span is None:
            return True
        with self._wake:
            if len(self._queue) >= self.max_queued_spans:
                self.queue_full += 1
                return False
            self._queue.append(span)
            if len(self._queue) >= self.batch_spans:
                self._wake.notify()
        return True

    def _take(self) -> list[dict[str, Any]] | None:
        """The next batch: full, or what waited when the interval passed (None: stopped
        with nothing left)."""
        with self._wake:
            deadline = time.monotonic() + self.flush_interval_s
            while len(self._queue) < self.batch_spans and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            n = min(len(self._queue), self.batch_spans)
            if n == 0 and self._stopping:
                return None
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._post(batch)

    def _post(self, batch: list[dict[str, Any]]) -> None:
        body = (otlp_body(batch, self.service_of) if self.kind == "otlpHttp"
                else zipkin_body(batch, self.service_of))
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            # Its status is the collector's word (urlopen raises on all but 2xx); the
            # body is not read: one that is huge, or trickles within each read's
            # timeout, would hold this thread (and telemetry's stop) as long as it lasts.
            urllib.request.urlopen(req, timeout=self.post_timeout_s).close()
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            # Down, refused (an HTTPError is a URLError), slow past the timeout, or no
            # HTTP server: what it answered did not parse (BadStatusLine, LineTooLong).
            self.posts_failed += 1
            self.export_failed += len(batch)
            return
        self.exported += len(batch)

    @property
    def dropped(self) -> int:
        return self.queue_full + self.export_failed

    @property
    def finished(self) -> bool:
        """Its thread ended (stopped, all it held sent or dropped): counts are final."""
        return self._thread.ident is not None and not self._thread.is_alive()


_COUNTS = ("exported", "queue_full", "export_failed")


class Spans:
    """Telemetry's exporter: the one the snapshot's Mesh spec.tracing names (none
    without a collector), rebuilt when those settings or the workloads that name its
    services change, offered every record telemetry reads. Counts carry over
    rebuilds: an exporter replaced ends on a thread of its own (its last batches may
    wait on a collector's timeout; the bus loop must not)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._exporter: SpanExporter | None = None
        self._settings: str | None = None
        self._ending: list[SpanExporter] = []
        self._ended = dict.fromkeys(_COUNTS, 0)

    def configure(self, snapshot: dict[str, Any]) -> None:
        tracing = (snapshot.get("mesh") or {}).get("tracing") or {}
        workloads = snapshot.get("workloads") or []
        settings = json.dumps([tracing, workloads], sort_keys=True)
        if settings == self._settings:
            return
        self._settings = settings
        if self._exporter is not None:
            self._ending.append(self._exporter)
            threading.Thread(target=self._exporter.stop, name="span-export-end", daemon=True).start()
            self._exporter = None
        if tracing.get("collector_kind"):
            self._exporter = SpanExporter(
                tracing["collector_kind"], tracing["collector_url"],
                service_namer(tracing.get("service_name", SERVICE_NAMES[0]), workloads),
                batch_spans=tracing["batch_spans"], flush_interval_s=tracing["flush_interval_s"],
                max_queued_spans=tracing["max_queued_spans"])
            self._exporter.start()
        logs.event(self._log, "tracing.configured", collector=tracing.get("collector_url"),
                   kind=tracing.get("collector_kind"))

    def offer(self, records: list[dict[str, Any]]) -> None:
        if self._exporter is not None:
            for record in records:
                self._exporter.offer(record)

    def counts(self) -> dict[str, Any]:
        """Spans exported and dropped by reason since telemetry began."""
        for e in [e for e in self._ending if e.finished]:
            self._ending.remove(e)
            for k in _COUNTS:
                self._ended[k] += getattr(e, k)
        live = [*self._ending, *([self._exporter] if self._exporter else [])]
        total = {k: self._ended[k] + sum(getattr(e, k) for e in live) for k in _COUNTS}
        return {"exported": total["exported"],
                "dropped": {"queue_full": total["queue_full"],
                            "export_failed": total["export_failed"]}}

    def close(self) -> None:
        """Send what waits (telemetry is ending)."""
        if self._exporter is not None:
            self._exporter.stop()
