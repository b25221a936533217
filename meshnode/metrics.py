"""Every Prometheus metric meshnode exports, defined in one place (STYLE: ``meshnode_``
prefix, unit suffixes, bounded label sets: ``process`` is one of the node's processes,
``reason`` one of the bus's fixed drop reasons).

Values come from the processes' health beats, which carry cumulative counts; a custom
collector turns the latest beat of each process into samples at scrape time, so a
process that restarts simply starts its counters again (Prometheus handles resets).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                   HistogramMetricFamily, Metric)

from fastpath.engine import latency_bounds_us, size_bounds
from prometheus_client.registry import Collector

from .config.model import METRIC_NAMES
from .health import HealthBook
from .istiolabels import LABELS as ISTIO_LABELS
from .istiolabels import Peers


# Engine counters (fastpath.engine Engine.stats()) by side, as Istio's TCP metrics.
_SIDES = ("outbound", "inbound")
_TCP = {"connections_opened": ("meshnode_tcp_connections_opened",
                               "TCP connections accepted by the data plane"),
        "connections_closed": ("meshnode_tcp_connections_closed",
                               "TCP connections the data plane closed"),
        "bytes_received": ("meshnode_tcp_received_bytes",
                           "Bytes received from the accepted side of a connection"),
        "bytes_sent": ("meshnode_tcp_sent_bytes",
                       "Bytes sent to the accepted side of a connection"),
        "tls_handshakes": ("meshnode_tls_handshakes", "Completed mutual-TLS handshakes"),
        "tls_resumed": ("meshnode_tls_resumed_handshakes", "Handshakes that resumed a session")}
# Engine counters (Engine.stats() keys) exported as a counter family of their own with
# the labels node and process: one line each, (engine key, family name, help). The
# requests they count are in meshnode_requests_total too, by route and code; these say
# why, whatever the label values (Envoy's upstream_rq_* and Linkerd's route counters).
_COUNTS = (
    ("upstream_failovers", "meshnode_upstream_failovers",
     "Outbound upstream setups that failed on one endpoint and went on to the service's next"),
    ("endpoint_ejections", "meshnode_endpoint_ejections",
     "Times an endpoint was passed over by load balancing after a failed setup"),
    ("outlier_ejections", "meshnode_outlier_ejections",
     "Endpoints outlier detection ejected for the node (counted by the worker that did)"),
    ("outlier_ejections_overflow", "meshnode_outlier_ejections_overflow",
     "Ejections outlier detection held back: maxEjectionPercent of the endpoints were out"),
    ("outlier_none_healthy", "meshnode_outlier_none_healthy",
     "Requests answered 503 (opaque connections closed): outlier detection had ejected every "
     "endpoint of their service"),
    ("route_matched", "meshnode_route_matched_requests",
     "Requests an HTTPRoute rule matched"),
    ("route_no_match", "meshnode_route_unmatched_requests",
     "Requests to a service with HTTPRoutes that no rule matched (answered 404)"),
    ("route_no_backend", "meshnode_route_no_backend_requests",
     "Requests whose rule had no valid backend for them (answered 500)"),
    ("route_timeouts", "meshnode_route_timeouts",
     "Requests whose HTTPRoute timeout expired before the answer's head (answered 504)"),
    ("route_retries", "meshnode_route_retries",
     "Tries an HTTPRoute rule's retry made again"),
    ("route_retries_over_budget", "meshnode_route_retries_over_budget",
     "Failed tries a retry would have followed, passed on: their Service's retry budget was spent"),
    ("http_rebalanced", "meshnode_rebalanced_requests",
     "Requests on a kept-alive connection the balancer moved to a cheaper endpoint"),
    ("http_mirrored", "meshnode_mirrored_requests",
     "RequestMirror copies sent whole to their mirror backend"),
    ("http_mirror_dropped", "meshnode_mirror_dropped_requests",
     "RequestMirror copies given up before they were sent whole"),
    ("faults_delayed", "meshnode_faults_delayed",
     "Requests a route's FaultInjection held for its delay"),
    ("faults_aborted", "meshnode_faults_aborted",
     "Requests a route's FaultInjection answered itself, no backend contacted"),
    ("route_filter_unresolved", "meshnode_route_filter_unresolved",
     "Requests answered 500: their rule's ExtensionRef filter names nothing the node has"),
    ("plaintext_accepted", "meshnode_plaintext_accepted_connections",
     "Inbound plaintext connections a PERMISSIVE or DISABLE PeerAuthentication took, "
     "routed by their first request's Host"),
    ("plaintext_refused", "meshnode_plaintext_refused_connections",
     "Inbound plaintext connections reset: for a STRICT port, for no port, or not HTTP; "
     "and plaintext connections a push making their port STRICT closed"),
    ("authz_revoked_tcp", "meshnode_authz_revoked_connections",
     "Open opaque TCP connections a pushed AuthorizationPolicy denied, closed as it took "
     "effect (also counted, by policy, in meshnode_authz_decisions_total)"),
    ("overload_shed", "meshnode_overload_shed_requests",
     "Requests answered 503 at once (response flag OM): the node's requests in flight were "
     "at the Mesh's spec.overload.maxRequestsInFlight"),
    ("overload_source_shed", "meshnode_overload_source_shed_requests",
     "Requests answered 503 at once (response flag OM): their calling workload's address's "
     "requests in flight were at spec.overload.maxRequestsPerSource"),
    ("slow_heads_cut", "meshnode_slow_request_heads_cut",
     "Request heads that came slower than spec.overload.slowClients allows (answered 408, "
     "or the connection closed behind pipelined requests)"),
    ("slow_bodies_cut", "meshnode_slow_request_bodies_cut",
     "Request bodies that came slower than spec.overload.slowClients allows (the connection "
     "closed)"),
    ("stats_overflow", "meshnode_request_figures_overflow",
     "Answers and opaque TCP connections counted without their labels: the engine's label "
     "sets were used up"),
)
# connectionPool's refusals (fastpath pool.pxi) -> the `reason` label of
# meshnode_pool_overflows_total (Envoy's upstream_cx_overflow and upstream_rq_pending_overflow).
_POOL_OVERFLOWS = {"pool_overflow_connections": "max_connections",
                   "pool_overflow_pending": "max_pending_requests"}
# Per-side failure counters -> the `reason` label of meshnode_dataplane_failures_total.
_SIDE_FAILURES = ("connect_failures", "connect_timeouts", "idle_timeouts", "aborted",
                  "rejected_limit", "accept_failures", "tls_failures_verify",
                  "tls_failures_other", "tls_handshake_timeouts")
_NODE_FAILURES = ("no_endpoint", "identity_mismatch", "tls_unknown_sni", "http_no_route",
                  "http_bad_request", "http_unavailable", "http_head_timeouts",
                  "http_bad_response", "callers_refused", "caller_lookup_failures",
                  "rejected_handshakes", "rejected_source_conns", "rejected_source_handshakes",
                  "caller_addr_malformed")
# Those of the inbound side (the rest are the outbound side's).
_INBOUND_FAILURES = frozenset({"tls_unknown_sni", "rejected_handshakes", "rejected_source_conns",
                               "rejected_source_handshakes", "caller_addr_malformed"})
# Istio's default request-duration buckets (ms). The engine keeps finer log-linear
# microsecond buckets (fastpath.engine.latency_bounds_us); each exported bucket counts
# the engine buckets that lie wholly below its bound.
_DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                        30000, 60000)
_ENGINE_UPPER_US = latency_bounds_us()
# Istio's request and response size buckets (bytes): Envoy's default histogram buckets,
# which Istio sets no others for. The engine counts on the same bounds (whole bytes:
# its first bound is 0), one engine bucket per exported one.
_SIZE_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                 300000, 600000, 1800000, 3600000)
_ENGINE_SIZE_BUCKETS = len(size_bounds()) + 1
# Istio's TCP families: the figure's opaque pairs' counts ("tcp" in a request figure),
# by their key there, (family name, help).
_TCP_ISTIO = {"sent": ("istio_tcp_sent_bytes", "Bytes sent to the accepted side of opaque TCP "
                       "connections (Istio's standard metric: the response's direction)"),
              "received": ("istio_tcp_received_bytes", "Bytes received from the accepted side "
                           "of opaque TCP connections (Istio's standard metric)"),
              "opened": ("istio_tcp_connections_opened", "Opaque TCP connections that began "
                         "relaying, their peer known (Istio's standard metric)"),
              "closed": ("istio_tcp_connections_closed", "Opaque TCP connections closed "
                         "(Istio's standard metric)")}
# Labels of the request metrics, after node and process (Istio's names; `route` is the
# HTTPRoute "namespace/name" whose rule sent the request, "unknown" when none did and on
# the serving side, which cannot tell; destination_version the serving workload's
# `version` label, as Istio's; connection_security_policy, as Istio's, "mutual_tls" or
# "none" (plaintext a PERMISSIVE or DISABLE PeerAuthentication took) where the
# destination reports, "unknown" where the source does). Each value set is bounded by
# the engine's tables.
REQUEST_LABELS = ("reporter", "source_principal", "destination_service",
                   "destination_principal", "destination_version", "route",
                   "connection_security_policy")
_ENGINE_LOWER_US = [0, *_ENGINE_UPPER_US[:-1]]
# RateLimitPolicy's counts (fastpath Engine.rate_limits()) -> the `result` label of
# meshnode_ratelimit_decisions_total: let through, answered 429, opaque pair closed.
_RATE_RESULTS = {"allowed": "allowed", "limited": "limited", "refused": "refused"}


class NodeCollector(Collector):
    """Samples from the node's health book at scrape time; `snapshot` gives the config
    the node runs (None before the first), which names the request metrics' peers and
    says which names they are exported under (Mesh spec.telemetry.metricNames)."""

    def __init__(self, book: HealthBook, node: str,
                 snapshot: Callable[[], Mapping[str, Any] | None] = lambda: None) -> None:
        self._book, self._node, self._snapshot = book, node, snapshot

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        snapshot = self._snapshot()
        names = (snapshot or {}).get("mesh", {}).get("metric_names", METRIC_NAMES)
        istio = IstioRequests(Peers(snapshot))
        up = GaugeMetricFamily("meshnode_process_up",
                               "1 if the process reported healthy within the readiness window",
                               labels=["node", "process"])
        seen = GaugeMetricFamily("meshnode_process_last_seen_seconds",
                                 "Seconds since the process's last health report",
                                 labels=["node", "process"])
        frames = CounterMetricFamily("meshnode_bus_frames",
                                     "Bus frames handled by the process, by direction",
                                     labels=["node", "process", "direction"])
        dropped = CounterMetricFamily("meshnode_bus_dropped_frames",
                                      "Bus frames the process dropped, by reason",
                                      labels=["node", "process", "reason"])
        access_dropped = CounterMetricFamily(
            "meshnode_accesslog_dropped", "Access log records lost, by reason: a worker's "
            "ring_full (its shipper behind), no_head (requests awaiting answers past the "
            "engine's heads), send_hwm (the bus behind); telemetry's bus (lost between them)",
            labels=["node", "process", "reason"])
        spans_exported = CounterMetricFamily(
            "meshnode_trace_spans_exported", "Spans the node's telemetry sent to the "
            "collector Mesh spec.tracing names", labels=["node"])
        spans_dropped = CounterMetricFamily(
            "meshnode_trace_spans_dropped", "Spans the node's telemetry lost, by reason: "
            "queue_full (the collector behind: maxQueuedSpans waiting), export_failed (a "
            "batch the collector refused or did not answer in time)", labels=["node", "reason"])
        version = GaugeMetricFamily("meshnode_config_version",
                                    "Config snapshot version the process runs (workers) "
                                    "or holds (control)", labels=["node", "process"])
        issued = CounterMetricFamily("meshnode_ca_certs_issued",
                                     "Workload certificates the node's ca signed", labels=["node"])
        refused = CounterMetricFamily("meshnode_ca_csr_refused",
                                      "CSRs the node's ca refused, by reason",
                                      labels=["node", "reason"])
        ca_expiry = GaugeMetricFamily("meshnode_ca_cert_expiry_timestamp_seconds",
                                      "Expiry (Unix time) of the ca's root and node issuer",
                                      labels=["node", "role"])
        expiry = GaugeMetricFamily("meshnode_cert_expiry_timestamp_seconds",
                                   "Expiry (Unix time) of each workload certificate a worker "
                                   "holds; alert long before it is reached",
                                   labels=["node", "process", "identity"])
        renew_failed = CounterMetricFamily("meshnode_cert_renewal_failures",
                                           "Certificate renewals that failed (ca away, refused)",
                                           labels=["node", "process"])
        bundle = GaugeMetricFamily("meshnode_trust_bundle_generation",
                                   "Generation of the trust bundle the process runs",
                                   labels=["node", "process"])
        tcp = {key: CounterMetricFamily(name, text, labels=["node", "process", "direction"])
               for key, (name, text) in _TCP.items()}
        failures = CounterMetricFamily("meshnode_dataplane_failures",
                                       "Connections the data plane refused or cut, by reason",
                                       labels=["node", "process", "direction", "reason"])
        counts = {key: CounterMetricFamily(name, text, labels=["node", "process"])
                  for key, name, text in _COUNTS}
        overflows = CounterMetricFamily(
            "meshnode_pool_overflows", "Connections closed and requests answered 503 by a "
            "DestinationRule connectionPool, by the limit met", labels=["node", "process", "reason"])
        active = GaugeMetricFamily("meshnode_tcp_connections_active",
                                   "TCP connections open in the data plane",
                                   labels=["node", "process", "direction"])
        in_flight = GaugeMetricFamily(
            "meshnode_requests_in_flight", "HTTP requests the worker admitted and has not "
            "answered yet (its share of the node's count that spec.overload caps)",
            labels=["node", "process"])
        requests = CounterMetricFamily(
            "meshnode_requests", "HTTP requests answered through the data plane (Istio's labels; "
            "response_flags OM: answered 503 at once by overload defence, else -)",
            labels=["node", "process", *REQUEST_LABELS, "response_code", "response_class",
                    "response_flags"])
        authz = CounterMetricFamily(
            "meshnode_authz_decisions", "AuthorizationPolicy decisions at the destination, by "
            "the policy that made them (\"\": none did) and its action, and AUDIT matches",
            labels=["node", "process", "action", "policy", "result"])
        duration = HistogramMetricFamily(
            "meshnode_request_duration_milliseconds",
            "Time from a request's head to its response's end, as the reporter saw it",
            labels=["node", "process", *REQUEST_LABELS])
        rate = {"decisions": CounterMetricFamily(
                    "meshnode_ratelimit_decisions", "Requests and new opaque connections a "
                    "RateLimitPolicy limit decided on, by result (allowed; limited: answered 429; "
                    "refused: an opaque connection closed)",
                    labels=["node", "process", "policy", "limit", "result"]),
                "overflow": CounterMetricFamily(
                    "meshnode_ratelimit_overflow", "Decisions made on a per-caller limit's "
                    "shared overflow bucket: more callers than its maxKeys",
                    labels=["node", "process", "policy", "limit"]),
                "no_slot": CounterMetricFamily(
                    "meshnode_ratelimit_unlimited", "Requests let through unlimited: the node's "
                    "rate-limit region had no bucket for them", labels=["node", "process", "policy", "limit"])}
        rollout_weight = GaugeMetricFamily(
            "meshnode_rollout_weight", "The canary's share of its target Service's traffic, in %, "
            "as its Rollout's route sends it", labels=["node", "rollout", "phase"])
        rollout_status = GaugeMetricFamily(
            "meshnode_rollout_status", "A Rollout's state as Flagger's flagger_canary_status: "
            "0 running, 1 succeeded (promoted), 2 failed (rolled back)", labels=["node", "rollout"])
        for name in self._book.names():
            report = self._book.get(name)
            labels = [self._node, name]
            up.add_metric(labels, 1.0 if self._book.healthy(name, now) else 0.0)
            if report is None:
                continue
            seen.add_metric(labels, now - report.seen)
            bus: dict[str, Any] = report.body.get("bus") or {}
            for direction in ("in", "out"):
                value = bus.get(f"frames_{direction}")
                if isinstance(value, int):
                    frames.add_metric([*labels, direction], value)
            for reason, value in (bus.get("dropped") or {}).items():
                if isinstance(value, int):
                    dropped.add_metric([*labels, str(reason)], value)
            for reason, value in (report.body.get("accesslog_dropped") or {}).items():
                if isinstance(value, int):
                    access_dropped.add_metric([*labels, str(reason)], value)
            self._spans(report.body.get("trace_spans"), spans_exported, spans_dropped)
            config_version = report.body.get("config_version")
            if isinstance(config_version, int):
                version.add_metric(labels, config_version)
            self._identity(report.body, labels, issued, refused, ca_expiry, expiry,
                           renew_failed, bundle)
            self._dataplane(report.body.get("dataplane"), labels, tcp, counts, failures,
                            active)
            self._overflows(report.body.get("dataplane"), labels, overflows)
            overload = report.body.get("overload")
            if isinstance(overload, dict) and isinstance(overload.get("engine"), int):
                in_flight.add_metric(labels, overload["engine"])
            self._requests(report.body.get("requests"), labels, requests, duration)
            istio.add(report.body.get("requests"))
            self._rate_limits(report.body.get("rate_limits"), labels, rate)
            self._authz(report.body.get("authz"), labels, authz)
            self._rollouts(report.body.get("rollouts"), rollout_weight, rollout_status)
        yield from (rollout_weight, rollout_status, up, seen, frames, dropped, access_dropped,
                    spans_exported, spans_dropped, version, issued, refused, ca_expiry, expiry,
                    renew_failed, bundle, *tcp.values(), *counts.values(), overflows, failures,
                    active, in_flight, *rate.values(), authz)
        if "meshnode" in names:
            yield from (requests, duration)
        if "istio" in names:
            yield from istio.families()

    def _spans(self, counts: object, exported: CounterMetricFamily,
               dropped: CounterMetricFamily) -> None:
        """Telemetry's span exporter (meshnode.tracing_export.Spans.counts)."""
        if not isinstance(counts, dict):
            return
        if isinstance(counts.get("exported"), int):
            exported.add_metric([self._node], counts["exported"])
        for reason, value in (counts.get("dropped") or {}).items():
            if isinstance(value, int):
                dropped.add_metric([self._node, str(reason)], value)

    @staticmethod
    def _rate_limits(entries: object, labels: list[str], rate: dict[str, Metric]) -> None:
        """A worker's RateLimitPolicy counts (DataPlane.health()["rate_limits"]), by
        policy ("namespace/name") and limit (its name or index): the engine counts each
        limit under "namespace/name/limit", at most 64 of them ("" past that)."""
        if not isinstance(entries, list):
            return
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            policy, _, limit = str(entry.get("policy", "")).rpartition("/")
            names = [*labels, policy or "unknown", limit or "unknown"]
            for key, result in _RATE_RESULTS.items():
                if isinstance(entry.get(key), int):
                    rate["decisions"].add_metric([*names, result], entry[key])
            for key in ("overflow", "no_slot"):
                if isinstance(entry.get(key), int):
                    rate[key].add_metric(names, entry[key])

    def _rollouts(self, entries: object, weight: Metric, status: Metric) -> None:
        """Control's rollouts (meshnode.rollout Controller.health())."""
        for entry in (entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict) and isinstance(entry.get("weight"), int) \
                    and isinstance(entry.get("status"), int):
                rollout = str(entry.get("rollout", "unknown"))
                weight.add_metric([self._node, rollout, str(entry.get("phase", ""))], entry["weight"])
                status.add_metric([self._node, rollout], entry["status"])

    @staticmethod
    def _overflows(stats: object, labels: list[str], overflows: Metric) -> None:
        if not isinstance(stats, dict):
            return
        for key, reason in _POOL_OVERFLOWS.items():
            value = stats.get(key)
            if isinstance(value, int):
                overflows.add_metric([*labels, reason], value)

    @staticmethod
    def _authz(figures: object, labels: list[str], authz: Metric) -> None:
        """A worker's Engine.authz_stats(): per (policy, action), its counts by result
        (the label set is bounded by the policies that apply to the node's workloads)."""
        if not isinstance(figures, list):
            return
        for fig in figures:
            if not isinstance(fig, dict):
                continue
            for result in ("allowed", "denied", "audited"):
                value = fig.get(result)
                if isinstance(value, int) and value:
                    authz.add_metric([*labels, str(fig.get("action", "")),
                                      str(fig.get("policy", "")), result], value)

    @staticmethod
    def _requests(figures: object, labels: list[str], requests: Metric, duration: Metric) -> None:
        """HTTP answers per reporter, principals and destination service (the worker's
        DataPlane.request_figures()), by code, and their durations (of every code)."""
        codes: dict[tuple[str, ...], int] = {}
        latency: dict[tuple[str, ...], list[int]] = {}
        for fig in _figures(figures):
            key = tuple(str(fig.get(label, "unknown")) for label in REQUEST_LABELS)
            # Several engine records can share one label set.
            for code, flags, n in answers(fig):
                codes[(*key, code, flags)] = codes.get((*key, code, flags), 0) + n
            for counts in latencies(fig).values():
                _add(latency.setdefault(key, [0] * len(_ENGINE_UPPER_US)), counts)
        for (*key, code, flags), n in sorted(codes.items()):
            requests.add_metric([*labels, *key, code, _code_class(code), flags], n)
        for key, counts in sorted(latency.items()):
            if any(counts):
                duration.add_metric([*labels, *key], *_histogram(counts))

    @staticmethod
    def _dataplane(stats: object, labels: list[str], tcp: dict[str, Metric],
                   counts: dict[str, Metric], failures: Metric, active: Metric) -> None:
        if not isinstance(stats, dict):
            return
        for key, family in counts.items():
            value = stats.get(key)
            if isinstance(value, int):
                family.add_metric(labels, value)
        for side in _SIDES:
            for key, family in tcp.items():
                value = stats.get(f"{side}_{key}")
                if isinstance(value, int):
                    family.add_metric([*labels, side], value)
            for reason in _SIDE_FAILURES:
                value = stats.get(f"{side}_{reason}")
                if isinstance(value, int):
                    failures.add_metric([*labels, side, reason], value)
            value = stats.get(f"{side}_connections_active")
            if isinstance(value, int):
                active.add_metric([*labels, side], value)
        for reason in _NODE_FAILURES:
            value = stats.get(reason)
            if isinstance(value, int):
                failures.add_metric([*labels, "inbound" if reason in _INBOUND_FAILURES
                                     else "outbound", reason], value)

    def _identity(self, body: dict[str, Any], labels: list[str], issued: Metric,
                  refused: Metric, ca_expiry: Metric, expiry: Metric, renew_failed: Metric,
                  bundle: Metric) -> None:
        """Certificate samples from a ca's or a worker's beat (identity.authority/creds)."""
        if isinstance(body.get("certs_issued"), int):
            issued.add_metric([self._node], body["certs_issued"])
            for reason, count in (body.get("csr_refused") or {}).items():
                refused.add_metric([self._node, str(reason)], count)
            for role in ("root", "issuer"):
                value = body.get(f"{role}_not_after")
                if isinstance(value, (int, float)):
                    ca_expiry.add_metric([self._node, role], value)
        for identity, cert in (body.get("certs") or {}).items():
            if isinstance(cert, dict) and isinstance(cert.get("not_after"), (int, float)):
                expiry.add_metric([*labels, str(identity)], cert["not_after"])
        if isinstance(body.get("cert_renewal_failures"), int):
            renew_failed.add_metric(labels, body["cert_renewal_failures"])
        if isinstance(body.get("bundle_generation"), int):
            bundle.add_metric(labels, body["bundle_generation"])


class IstioRequests:
    """Istio's standard metrics for the node: istio_requests_total,
    istio_request_duration_milliseconds, istio_request_bytes, istio_response_bytes and
    the istio_tcp_* of opaque connections (as Istio's TCP stats filter, which sits on
    tcp_proxy only, counts none of HTTP's); every worker's figures summed per label set
    (one series per label set, none per worker, as an Envoy sidecar exports them), with
    Istio's whole label set (Peers)."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers
        self._codes: dict[tuple[str, ...], int] = {}
        self._latency: dict[tuple[str, ...], list[int]] = {}
        # "request_bytes" / "response_bytes" -> label set -> [engine bucket counts, sum].
        self._sizes: dict[str, dict[tuple[str, ...], list[Any]]] = {
            "request_bytes": {}, "response_bytes": {}}
        self._tcp: dict[tuple[str, ...], dict[str, int]] = {}

    def add(self, figures: object) -> None:
        """One worker's DataPlane.request_figures()."""
        for fig in _figures(figures):
            key = self._peers.labels(fig)
            for code, flags, n in answers(fig):
                self._codes[(*key, code, flags)] = self._codes.get((*key, code, flags), 0) + n
            for code, counts in latencies(fig).items():
                # Only answers the engine timed are here, and it times none it answered
                # itself: their flags are "-". Code "0" holds a record's codes past the
                # engine's few timed apart.
                label = (*key, code if code != "0" else "unknown", "-")
                _add(self._latency.setdefault(label, [0] * len(_ENGINE_UPPER_US)), counts)
            for which, by_label in self._sizes.items():
                # The same answers as the duration's: timed ones, flags "-".
                for code, (counts, total) in _sizes(fig, which).items():
                    into = by_label.setdefault((*key, code if code != "0" else "unknown", "-"),
                                               [[0] * _ENGINE_SIZE_BUCKETS, 0])
                    _add(into[0], counts)
                    into[1] += total
            tcp = fig.get("tcp")
            if isinstance(tcp, dict) and tcp:
                into_tcp = self._tcp.setdefault((*self._peers.labels(fig, protocol="tcp"), "-"),
                                                dict.fromkeys(_TCP_ISTIO, 0))
                for name in _TCP_ISTIO:
                    if isinstance(tcp.get(name), int):
                        into_tcp[name] += tcp[name]

    def families(self) -> tuple[Metric, ...]:
        requests = CounterMetricFamily(
            "istio_requests", "Requests answered, as Istio's standard metric (response_flags "
            "OM: answered 503 at once by overload defence, else -)",
            labels=[*ISTIO_LABELS, "response_code", "response_flags"])
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds", "Time from a request's head to its "
            "response's end, as the reporter saw it (Istio's standard metric)",
            labels=[*ISTIO_LABELS, "response_code", "response_flags"])
        for key, n in sorted(self._codes.items()):
            requests.add_metric(list(key), n)
        for key, counts in sorted(self._latency.items()):
            if any(counts):
                duration.add_metric(list(key), *_histogram(counts))
        sizes = {which: HistogramMetricFamily(
            f"istio_{which}", f"{text} as Istio's standard metric counts it: head and body, "
            "the bytes Envoy's downstream meter sees", labels=[*ISTIO_LABELS, "response_code",
                                                             "response_flags"])
            for which, text in (("request_bytes", "Size of requests as received from the client"),
                                ("response_bytes", "Size of answers as sent to the client"))}
        for which, by_label in self._sizes.items():
            for key, (counts, total) in sorted(by_label.items()):
                sizes[which].add_metric(list(key), _size_buckets(counts), total)
        tcp = {name: CounterMetricFamily(family, text, labels=[*ISTIO_LABELS, "response_flags"])
               for name, (family, text) in _TCP_ISTIO.items()}
        for key, counts in sorted(self._tcp.items()):
            for name, family in tcp.items():
                family.add_metric(list(key), counts[name])
        return requests, duration, *sizes.values(), *tcp.values()


def _figures(figures: object) -> Iterator[dict[str, Any]]:
    """The well-formed figures of a health beat's "requests" (others are skipped)."""
    if isinstance(figures, list):
        yield from (fig for fig in figures if isinstance(fig, dict))


def answers(fig: Mapping[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(code, response flags, count) of a figure's answers. Overload's 503s are told
    apart by Envoy's response flag, as Istio's metrics do."""
    shed = (fig.get("response_flags") or {}).get("OM", 0)
    for code, n in (fig.get("codes") or {}).items():
        if not isinstance(n, int):
            continue
        flagged = min(n, shed) if str(code) == "503" and isinstance(shed, int) else 0
        for flags, count in (("-", n - flagged), ("OM", flagged)):
            if count:
                yield str(code), flags, count


def latencies(fig: Mapping[str, Any]) -> dict[str, list[int]]:
    """A figure's sparse latency buckets, by status, as full engine bucket lists."""
    out: dict[str, list[int]] = {}
    by_code = fig.get("latency")
    for code, sparse in (by_code.items() if isinstance(by_code, dict) else ()):
        if isinstance(sparse, dict):
            _add(out.setdefault(str(code), [0] * len(_ENGINE_UPPER_US)),
                 _dense(sparse, len(_ENGINE_UPPER_US)))
    return out


def _sizes(fig: Mapping[str, Any], which: str) -> dict[str, tuple[list[int], int]]:
    """A figure's request_bytes or response_bytes: by status, (full engine bucket
    counts, sum of bytes)."""
    out: dict[str, tuple[list[int], int]] = {}
    by_code = fig.get(which)
    for code, h in (by_code.items() if isinstance(by_code, dict) else ()):
        if isinstance(h, dict) and isinstance(h.get("counts"), dict):
            total = h.get("sum")
            out[str(code)] = (_dense(h["counts"], _ENGINE_SIZE_BUCKETS),
                              total if isinstance(total, int) else 0)
    return out


def _dense(sparse: Mapping[Any, Any], n: int) -> list[int]:
    """Sparse bucket counts ({"index": count}) as a list of n (bad entries skipped)."""
    counts = [0] * n
    for index, value in sparse.items():
        if str(index).isdigit() and int(index) < n and isinstance(value, int):
            counts[int(index)] += value
    return counts


def _size_buckets(counts: list[int]) -> list[tuple[str, int]]:
    """Engine size buckets as Istio's cumulative ones (one engine bucket per bound)."""
    buckets, below = [], 0
    for bound, n in zip(_SIZE_BUCKETS, counts):
        below += n
        buckets.append((str(bound), below))
    buckets.append(("+Inf", sum(counts)))
    return buckets


def _add(into: list[int], counts: list[int]) -> None:
    for i, n in enumerate(counts):
        into[i] += n


def _code_class(code: str) -> str:
    return f"{code[0]}xx" if code[:1] in "12345" and len(code) == 3 else "unknown"


def _histogram(counts: list[int]) -> tuple[list[tuple[str, int]], float]:
    """Engine latency buckets as Istio's (_DURATION_BUCKETS_MS) and an estimated sum."""
    buckets = []
    for bound_ms in _DURATION_BUCKETS_MS:
        below = sum(n for n, upper in zip(counts, _ENGINE_UPPER_US) if upper <= bound_ms * 1000)
        buckets.append((str(bound_ms), below))
    buckets.append(("+Inf", sum(counts)))
    # The engine keeps no exact sum; the buckets' lower bounds give a close lower estimate.
    return buckets, sum(n * lower for n, lower in zip(counts, _ENGINE_LOWER_US)) / 1000
