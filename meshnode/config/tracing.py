"""The Mesh's tracing settings (spec.tracing): how many new traces are sampled, where
spans go (an OTLP/HTTP JSON or a Zipkin v2 JSON collector), what service a span names,
and how spans are batched and bounded on their way there.

Propagation (x-request-id, traceparent and B3 passed on with each side's span) is always
on, as Envoy's; spans are exported only when a collector is named. The defaults are
Istio's (ProxyConfig tracing.sampling 1 %, tracingServiceName APP_LABEL_AND_NAMESPACE) and
the OpenTelemetry SDK's batch span processor's (512 a batch, every 5 s, 2048 queued).
"""
from __future__ import annotations

from dataclasses import dataclass

COLLECTOR_KINDS = ("otlpHttp", "zipkin")
"""spec.tracing.collector's keys: OTLP/HTTP with JSON bodies (an OpenTelemetry
collector's /v1/traces), or Zipkin's v2 JSON API (/api/v2/spans)."""

SERVICE_NAMES = ("APP_LABEL_AND_NAMESPACE", "CANONICAL_NAME_ONLY", "CANONICAL_NAME_AND_NAMESPACE")
"""Istio's ProxyConfig.tracingServiceName conventions: "app.namespace" (the workload's
app label, else its name), the canonical service name alone, or with its namespace."""

MAX_BATCH_SPANS = 65536
MAX_QUEUED_SPANS = 1048576


@dataclass(frozen=True)
class TracingSpec:
    sampling_percent: float = 1.0       # of new traces (0..100, 0.01 steps)
    collector_kind: str | None = None   # one of COLLECTOR_KINDS; None: spans not exported
    collector_url: str | None = None
    service_name: str = SERVICE_NAMES[0]
    batch_spans: int = 512              # spans a POST carries at most
    flush_interval_s: float = 5.0       # the longest a span waits for its batch
    max_queued_spans: int = 2048        # more waiting are dropped and counted

    def snapshot(self) -> dict[str, object]:
        """What a node's processes read (meshnode.tracing_export, dataplane)."""
        return {"sampling": self.sampling_percent, "collector_kind": self.collector_kind,
                "collector_url": self.collector_url, "service_name": self.service_name,
                "batch_spans": self.batch_spans, "flush_interval_s": self.flush_interval_s,
                "max_queued_spans": self.max_queued_spans}
