"""Golden metrics over a recent window, per service, workload and edge, from the node's own figures.

Success rate (answers that are not 5xx), requests per second, p50/p95/p99 latency and
open TCP connections: Linkerd's `viz stat` columns. The workers' health beats carry
cumulative request figures (DataPlane.request_figures()); a rate needs two readings, so
telemetry keeps a short ring of them (History, one a second) and a window is the
difference between the figures now and those of the reading that window ago. A worker
that restarted (another pid) counts from zero again, as Prometheus' rate() takes a
counter reset.

Which side's figures: a request between two workloads of one node is counted by both
sides (reporter "source" and "destination"), so each row takes one side, the
destination's for a service or workload (it sees every caller, from any node, as
Linkerd's inbound stats do) and the caller's for an edge (it sees the calls that never
got an answer from the far side), and the other side's only where this node has none of
the first (a service served by another node; a caller on another node).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from bus.errors import RemoteError
from fastpath.engine import latency_bounds_us

from .health import HealthBook
from .istiolabels import LABELS, UNKNOWN, Peers
from .metrics import REQUEST_LABELS, answers, latencies

# The engine's latency buckets: bucket i holds [upper[i-1], upper[i]) µs, the first from
# 0 and the last everything above its lower bound (latency_bounds_us()), which makes it
# Prometheus's +Inf bucket.
_UPPER_US: tuple[float, ...] = (*latency_bounds_us()[:-1], math.inf)
QUANTILES = (0.5, 0.95, 0.99)
# Readings kept: five minutes at one a second (a window longer than the ring reaches
# back is cut to what it holds, and says so).
HISTORY_S = 300.0
SAMPLE_INTERVAL_S = 1.0
# Linkerd's default window for its stat and dashboard.
DEFAULT_WINDOW_S = 60.0
_LABEL = {name: i for i, name in enumerate(LABELS)}


def histogram_quantile(q: float, counts: Sequence[int],
                       upper: Sequence[float] = _UPPER_US) -> float | None:
    """The q-quantile of per-bucket `counts` (not cumulative) whose buckets end at
    `upper` (ascending, the last math.inf), as PromQL's histogram_quantile computes it
    (promql/quantile.go bucketQuantile): the bucket where the rank q·total falls, and
    within it a linear interpolation between its bounds, the first bucket starting at 0;
    a rank in the +Inf bucket is the highest finite bound. None without observations."""
    if len(counts) != len(upper) or len(upper) < 2 or not math.isinf(upper[-1]):
        raise ValueError("counts and upper bounds must pair up, the last bound +Inf")
    total = sum(counts)
    if total == 0 or math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            break
        below += n
    if i == len(counts) - 1:
        return float(upper[-2])
    start = 0.0 if i == 0 else float(upper[i - 1])
    # Prometheus's order of operations, so both give the same float.
    return start + (float(upper[i]) - start) * ((rank - below) / counts[i])


@dataclass
class Traffic:
    """Requests of one row over a window: answers, those that were 5xx, and their
    latency by engine bucket (the answers the engine timed; it times none it answered
    itself), sparse: the ring holds minutes of these."""

    requests: int = 0
    failures: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, other: "Traffic") -> None:
        self.requests += other.requests
        self.failures += other.failures
        for i, n in other.latency.items():
            self.latency[i] = self.latency.get(i, 0) + n

    def minus(self, older: "Traffic") -> "Traffic":
        """What was added since `older` (the same worker's earlier reading)."""
        return Traffic(max(self.requests - older.requests, 0),
                       max(self.failures - older.failures, 0),
                       {i: n - older.latency.get(i, 0) for i, n in self.latency.items()
                        if n > older.latency.get(i, 0)})

    def golden(self, seconds: float) -> dict[str, Any]:
        """The row's figures; None where there is nothing to tell (no answer timed)."""
        counts = [0] * len(_UPPER_US)
        for i, n in self.latency.items():
            counts[i] = n
        return {"requests": self.requests,
                "success_rate": (1 - self.failures / self.requests) if self.requests else None,
                "rps": self.requests / seconds if seconds > 0 else None,
                **{f"latency_ms_p{round(q * 100)}": _ms(histogram_quantile(q, counts))
                   for q in QUANTILES}}


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _traffic(fig: Mapping[str, Any]) -> Traffic:
    """One figure's answers as Traffic (every code's latency together)."""
    out = Traffic()
    for code, _, n in answers(fig):
        out.requests += n
        out.failures += n if code.startswith("5") and len(code) == 3 else 0
    for counts in latencies(fig).values():
        for i, n in enumerate(counts):
            if n:
                out.latency[i] = out.latency.get(i, 0) + n
    return out


@dataclass(frozen=True)
class Reading:
    """One worker's figures as its latest beat said: its pid (a new one counts from
    zero), request figures summed per label set, and upstream connections per engine
    service ("ns/name:port")."""

    pid: object
    figures: dict[tuple[str, ...], Traffic]
    connections: dict[str, int]


def read_worker(body: Mapping[str, Any]) -> Reading:
    figures: dict[tuple[str, ...], Traffic] = {}
    for fig in body.get("requests") or ():
        if isinstance(fig, dict):
            key = tuple(str(fig.get(label, UNKNOWN)) for label in REQUEST_LABELS)
            figures.setdefault(key, Traffic()).add(_traffic(fig))
    upstreams = body.get("upstreams")
    connections = {str(name): entry["connections"]
                   for name, entry in (upstreams.items() if isinstance(upstreams, dict) else ())
                   if isinstance(entry, dict) and type(entry.get("connections")) is int}
    return Reading(body.get("pid"), figures, connections)


@dataclass(frozen=True)
class Sample:
    """Every worker's reading at one moment (monotonic seconds)."""

    at: float
    workers: dict[str, Reading]


class History:
    """A ring of samples of the workers' figures (the bus loop adds, HTTP threads and
    the bus server read): a window's figures are now's minus the sample a window ago."""

    def __init__(self, book: HealthBook, keep_s: float = HISTORY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._book, self._clock = book, clock
        self._ring: deque[Sample] = deque(maxlen=int(keep_s / SAMPLE_INTERVAL_S) + 1)
        self._lock = threading.Lock()

    def now(self) -> Sample:
        """The workers' latest figures (a process whose beat has request figures is a
        worker)."""
        workers = {}
        for name in self._book.names():
            report = self._book.get(name)
            if report is not None and "requests" in report.body:
                workers[name] = read_worker(report.body)
        return Sample(self._clock(), workers)

    def sample(self) -> None:
        """Take a reading into the ring (once a second, from the bus loop)."""
        sample = self.now()
        with self._lock:
            self._ring.append(sample)

    def window(self, seconds: float) -> "Window":
        """The figures of the last `seconds` (or of as much as the ring holds)."""
        now = self.now()
        with self._lock:
            ring = list(self._ring)
        since = next((s for s in reversed(ring) if s.at <= now.at - seconds),
                     ring[0] if ring else now)
        return Window.between(since, now)


@dataclass(frozen=True)
class Window:
    """Request figures added between two samples, per label set (summed over workers),
    and the upstream connections open at the later one, per engine service."""

    seconds: float
    figures: dict[tuple[str, ...], Traffic]
    connections: dict[str, int]

    @classmethod
    def between(cls, old: Sample, new: Sample) -> "Window":
        figures: dict[tuple[str, ...], Traffic] = {}
        connections: dict[str, int] = {}
        for name, reading in new.workers.items():
            before = old.workers.get(name)
            for key, traffic in reading.figures.items():
                earlier = (before.figures.get(key) if before is not None
                           and before.pid == reading.pid else None)
                figures.setdefault(key, Traffic()).add(
                    traffic.minus(earlier) if earlier is not None else traffic)
            for service, n in reading.connections.items():
                connections[service] = connections.get(service, 0) + n
        return cls(new.at - old.at, figures, connections)


# The rows a view has, and the side each prefers (see the module's docstring).
KINDS = {"service": "destination", "workload": "destination", "edge": "source"}
# What `meshnode stat` accepts for each (Linkerd's and kubectl's names; a meshnode
# Workload takes the place of a Kubernetes Deployment in Istio's destination_workload).
KIND_NAMES = {"svc": "service", "service": "service", "services": "service",
              "deploy": "workload", "deployment": "workload", "deployments": "workload",
              "workload": "workload", "workloads": "workload", "wl": "workload",
              "edge": "edge", "edges": "edge"}


def _row_key(kind: str, labels: tuple[str, ...]) -> tuple[str, ...] | None:
    """The row a figure counts for: (namespace, name) of its service or workload, or
    (source namespace, source workload, service namespace, service name) of its edge;
    None when the figure cannot say."""
    def ref(namespace: str, name: str) -> tuple[str, str] | None:
        ns, nm = labels[_LABEL[namespace]], labels[_LABEL[name]]
        return None if UNKNOWN in (ns, nm) else (ns, nm)
    service = ref("destination_service_namespace", "destination_service_name")
    if kind == "service":
        return service
    if kind == "workload":
        return ref("destination_workload_namespace", "destination_workload")
    source = ref("source_workload_namespace", "source_workload")
    return (*source, *service) if source and service else None


def rows(window: Window, snapshot: Mapping[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    """The golden rows of `kind` ("service", "workload", "edge"): every one the config
    names (services and workloads, with or without traffic) and every one the window's
    traffic names, sorted by namespace and name."""
    peers = Peers(snapshot)
    sides: dict[tuple[str, ...], dict[str, Traffic]] = {}
    for key, traffic in window.figures.items():
        labels = peers.labels(dict(zip(REQUEST_LABELS, key)))
        row = _row_key(kind, labels)
        if row is not None:
            sides.setdefault(row, {}).setdefault(labels[_LABEL["reporter"]], Traffic()).add(traffic)
    known = _configured(snapshot, kind)
    out = []
    for key in sorted(set(known) | set(sides)):
        by_side = sides.get(key, {})
        side = KINDS[kind] if by_side.get(KINDS[kind], Traffic()).requests else next(
            (s for s, t in sorted(by_side.items()) if t.requests), None)
        traffic = by_side.get(side, Traffic()) if side else Traffic()
        out.append({**_names(kind, key), "meshed": known.get(key, "0/0"), "reporter": side,
                    **traffic.golden(window.seconds),
                    "tcp_connections": _connections(window, kind, key)})
    return out


def _names(kind: str, key: tuple[str, ...]) -> dict[str, str]:
    if kind == "edge":
        return {"source_namespace": key[0], "source": key[1],
                "namespace": key[2], "name": key[3]}
    return {"namespace": key[0], "name": key[1]}


def _configured(snapshot: Mapping[str, Any] | None, kind: str) -> dict[tuple[str, ...], str]:
    """The config's services (their endpoints, all meshed: a Workload is always behind
    a node) or workloads, with Linkerd's MESHED column ("meshed/all")."""
    snapshot = snapshot or {}
    if kind == "service":
        return {(s["namespace"], s["name"]): f"{len(s.get('endpoints') or ())}/"
                f"{len(s.get('endpoints') or ())}" for s in snapshot.get("services") or ()}
    if kind == "workload":
        return {tuple(str(w["workload"]).split("/", 1)): "1/1"
                for w in snapshot.get("workloads") or ()}
    return {}


def _connections(window: Window, kind: str, key: tuple[str, ...]) -> int | None:
    """Open connections from this node to a service's endpoints (its engine services
    are "ns/name:port"); the engine counts none per workload or per caller."""
    if kind != "service":
        return None
    prefix = f"{key[0]}/{key[1]}:"
    return sum(n for name, n in window.connections.items() if name.startswith(prefix))


def select(found: Iterable[dict[str, Any]], name: str | None,
           namespace: str | None) -> list[dict[str, Any]]:
    """The rows of one namespace, or of one name (an edge by its service's)."""
    return [r for r in found if (namespace is None or r["namespace"] == namespace)
            and (name is None or r["name"] == name)]


def stat_request(history: History, snapshot: Mapping[str, Any] | None,
                 body: object) -> dict[str, Any]:
    """The answer to a `stat` bus request {"kind", "name", "namespace", "window_s"}:
    the window it covers (shorter than asked while the ring is young) and its rows."""
    body = body if isinstance(body, dict) else {}
    kind = KIND_NAMES.get(str(body.get("kind", "")))
    if kind is None:
        raise RemoteError(f"no such kind {body.get('kind')!r}: one of {', '.join(KIND_NAMES)}",
                          kind="usage")
    seconds = body.get("window_s", DEFAULT_WINDOW_S)
    if not isinstance(seconds, (int, float)) or not 0 < seconds <= HISTORY_S:
        raise RemoteError(f"window must be over 0 and at most {HISTORY_S:g}s", kind="usage")
    window = history.window(float(seconds))
    return {"kind": kind, "window_s": round(window.seconds, 3),
            "rows": select(rows(window, snapshot, kind), body.get("name"),
                           body.get("namespace"))}
