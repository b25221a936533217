"""A rollout's analysis: the canary's request figures over a window, and the checks on them.

The figures are the workers' own (DataPlane.request_figures(), in every health beat,
cumulative per worker): control subscribes to the beats and keeps, per canary, a running
total of what the calling side counted for the rollout's route and the canary's Service
(reporter "source", route "namespace/rollout-NAME", destination_service the canary's):
answers by code and their latency buckets. Nothing is done per request in Python: a
beat is folded in once a second per worker. A worker that restarted begins its counts
again (another pid, or a count below the last one, is a new start); one first seen adds nothing until its
next beat, as control cannot know what it counted before (after control's own restart).

The checks are Flagger's builtins on that window: request-success-rate, the share of
answers that are not 5xx in percent (its query's response_code!~"5.*"), and
request-duration, the 99th percentile in milliseconds (histogram_quantile(0.99, ...)
over the engine's finer buckets). A window with fewer answers than minRequests fails the
check, as Flagger fails one whose query finds no values: a canary no one calls has shown
nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from fastpath.engine import latency_bounds_us

from .config.durations import parse_duration
from .config.rollout import DURATION, SUCCESS_RATE, Analysis, MetricCheck

_UPPER_US = latency_bounds_us()
_LOWER_US = [0, *_UPPER_US[:-1]]
QUANTILE = 0.99


@dataclass
class Totals:
    """Answers, of them 5xx, and latency counts per engine bucket."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(_UPPER_US))

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n

    def counted_after(self, before: Totals) -> bool:
        """Whether these counts can have grown from `before`: none is lower (a lower
        one is a worker that began again, as Prometheus tells a counter's reset)."""
        return (self.requests >= before.requests and self.errors >= before.errors
                and all(a >= b for a, b in zip(self.buckets, before.buckets)))

    def since(self, before: Totals) -> Totals:
        """What was counted after `before` (an earlier total of the same counts)."""
        return Totals(self.requests - before.requests, self.errors - before.errors,
                      [a - b for a, b in zip(self.buckets, before.buckets)])

    def copy(self) -> Totals:
        return Totals(self.requests, self.errors, list(self.buckets))

    @property
    def success_rate(self) -> float:
        return 100.0 * (self.requests - self.errors) / self.requests

    @property
    def p99_ms(self) -> float:
        """The 99th percentile of the timed answers, interpolated in its bucket as
        Prometheus' histogram_quantile does."""
        total = sum(self.buckets)
        if not total:
            return 0.0
        rank, seen = QUANTILE * total, 0
        for n, low, high in zip(self.buckets, _LOWER_US, _UPPER_US):
            if n and seen + n >= rank:
                return (low + (high - low) * (rank - seen) / n) / 1000
            seen += n
        return _UPPER_US[-1] / 1000


def figure_totals(fig: Mapping[str, Any]) -> Totals:
    """One figure's answers and latency (DataPlane.request_figures()' shape)."""
    out = Totals()
    for code, n in (fig.get("codes") or {}).items():
        if isinstance(n, int):
            out.requests += n
            out.errors += n if str(code).startswith("5") else 0
    latency = fig.get("latency")
    for sparse in (latency.values() if isinstance(latency, dict) else ()):
        for index, n in (sparse.items() if isinstance(sparse, dict) else ()):
            if str(index).isdigit() and int(index) < len(out.buckets) and isinstance(n, int):
                out.buckets[int(index)] += n
    return out


CanaryKey = tuple[str, str]
"""(route "namespace/name", destination Service "name.namespace"): a canary's traffic."""


def canary_key(namespace: str, route: str, service: str) -> CanaryKey:
    return f"{namespace}/{route}", f"{service}.{namespace}"


def _key_of(fig: Mapping[str, Any]) -> CanaryKey | None:
    if fig.get("reporter") != "source":
        return None
    # destination_service is the FQDN (name.namespace.svc...): its first two labels.
    service = ".".join(str(fig.get("destination_service", "")).split(".")[:2])
    return str(fig.get("route", "")), service


class CanaryFigures:
    """Running totals of the canaries' traffic, folded from the workers' health beats."""

    def __init__(self) -> None:
        self.keys: set[CanaryKey] = set()       # what to keep: the rollouts' canaries
        self._last: dict[str, tuple[object, dict[CanaryKey, Totals]]] = {}
        self._totals: dict[CanaryKey, Totals] = {}

    def feed(self, worker: str, pid: object, figures: object) -> None:
        """One worker's beat: its pid and its "requests". Another pid than the last
        beat's, or a count lower than before, is a worker that began again: all it
        counts now is new."""
        now: dict[CanaryKey, Totals] = {}
        for fig in (figures if isinstance(figures, list) else ()):
            key = _key_of(fig) if isinstance(fig, dict) else None
            if key in self.keys:
                now.setdefault(key, Totals()).add(figure_totals(fig))  # type: ignore[index]
        last_pid, last = self._last.get(worker, (None, None))
        self._last[worker] = (pid, now)
        if last is None:
            return
        for key, totals in now.items():
            before = last.get(key) if pid == last_pid else None
            grown = totals.since(before) if before and totals.counted_after(before) else totals
            self._totals.setdefault(key, Totals()).add(grown)

    def total(self, key: CanaryKey) -> Totals:
        return self._totals.get(key, Totals()).copy()


class Window:
    """A canary's running totals sampled over time, to read what came in the last N seconds."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._samples: deque[tuple[float, Totals]] = deque()

    def sample(self, now: float, totals: Totals) -> None:
        self._samples.append((now, totals))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.keep_s:
            self._samples.popleft()

    def last(self, seconds: float, now: float) -> Totals:
        """What was counted in the last `seconds` (or since the oldest sample)."""
        if not self._samples:
            return Totals()
        start = self._samples[0][1]
        for at, totals in self._samples:
            if at > now - seconds:
                break
            start = totals
        return self._samples[-1][1].since(start)


@dataclass(frozen=True)
class Check:
    """One check's outcome: what it measured and whether it passed."""

    name: str
    ok: bool
    value: float | None      # None: no values found
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "value": self.value, "message": self.message}


def _bounds(metric: MetricCheck) -> str:
    return " ".join(p for p in (f"min {metric.min:g}" if metric.min is not None else "",
                                f"max {metric.max:g}" if metric.max is not None else "") if p)


def check_metric(metric: MetricCheck, window: Totals, seconds: float) -> Check:
    """One of Flagger's builtin metrics over a window of the canary's figures."""
    if window.requests <= 0:
        return Check(metric.name, False, None, f"no values found for {metric.name} in the "
                                               f"last {seconds:g}s: the canary was not called")
    value = window.success_rate if metric.name == SUCCESS_RATE else window.p99_ms
    unit = "%" if metric.name == SUCCESS_RATE else "ms"
    ok = ((metric.min is None or value >= metric.min) and (metric.max is None or value <= metric.max))
    word = "within" if ok else "outside"
    what = "p99" if metric.name == DURATION else "success rate"
    return Check(metric.name, ok, round(value, 3),
                 f"{what} {value:.2f}{unit} over {window.requests} requests in {seconds:g}s, "
                 f"{word} {_bounds(metric)}")


def check_requests(analysis: Analysis, window: Totals, seconds: float) -> Check:
    """minRequests in the analysis interval (fewer: no values found)."""
    ok = window.requests >= analysis.min_requests and window.requests > 0
    return Check("request-count", ok, float(window.requests),
                 f"{window.requests} canary requests in {seconds:g}s"
                 + ("" if ok else f", fewer than minRequests {max(analysis.min_requests, 1)}: "
                                  "no values found"))


def longest_window_s(analysis: Analysis) -> float:
    """How far back a rollout's checks look: its interval or a metric's, the longest."""
    return max(parse_duration(m.interval or analysis.interval)
               for m in (*analysis.metrics, MetricCheck("", interval=analysis.interval)))


def analyse(analysis: Analysis, window: Window, now: float) -> list[Check]:
    """Every check of one interval: the request count over the interval, then each
    metric over its own interval (the analysis's when it names none)."""
    interval_s = parse_duration(analysis.interval)
    checks = [check_requests(analysis, window.last(interval_s, now), interval_s)]
    for metric in analysis.metrics:
        seconds = parse_duration(metric.interval or analysis.interval)
        checks.append(check_metric(metric, window.last(seconds, now), seconds))
    return checks
