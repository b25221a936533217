"""A rollout's analysis (meshnode.rolloutanalysis) on the workers' beat figures as
DataPlane.request_figures() gives them: the canary's figures picked out of a beat, running
totals across beats and a worker's restart, windows, and Flagger's builtin checks (the
success rate, the p99, and "no values found" when too few requests came)."""

from __future__ import annotations

from typing import Any

import pytest

from fastpath.engine import latency_bounds_us
from meshnode.config.rollout import Analysis, MetricCheck
from meshnode.rolloutanalysis import CanaryFigures, Window, analyse, canary_key

pytestmark = pytest.mark.timeout(30)

BOUNDS_US = latency_bounds_us()
KEY = canary_key("demo", "rollout-backend", "backend-v2")


def bucket(ms: float) -> str:
    """The engine bucket an answer of `ms` is counted in."""
    return str(next(i for i, upper in enumerate(BOUNDS_US) if upper >= ms * 1000))


def figure(codes: dict[str, int], ms: float, service: str = "backend-v2",
           route: str = "demo/rollout-backend", reporter: str = "source") -> dict[str, Any]:
    """One record of a beat's "requests", as DataPlane.request_figures() writes it."""
    return {"reporter": reporter, "source_principal": "spiffe://cluster.local/ns/demo/sa/frontend",
            "destination_principal": "spiffe://cluster.local/ns/demo/sa/backend",
            "destination_service": f"{service}.demo.svc.cluster.local", "route": route,
            "destination_version": "v2", "connection_security_policy": "unknown",
            "codes": codes, "response_flags": {},
            "latency": {code: {bucket(ms): n} for code, n in codes.items()}}


def fed(beats: list[tuple[Any, ...]]) -> CanaryFigures:
    """Figures fed `beats` in order: (worker, records) of pid 1, or (worker, pid, records)."""
    figures = CanaryFigures()
    figures.keys = {KEY}
    for beat in beats:
        worker, *pid, records = beat
        figures.feed(worker, pid[0] if pid else 1, records)
    return figures


def test_only_the_canarys_calling_side_counts_and_beats_add_up_across_a_restart() -> None:
    others = [figure({"200": 50}, 1, service="backend-v1"),
              figure({"200": 50}, 1, reporter="destination"),
              figure({"200": 50}, 1, route="unknown")]
    figures = fed([
        ("proxy-0", [figure({"200": 10}, 2), *others]),   # first seen: the baseline
        ("proxy-0", [figure({"200": 30, "503": 2}, 2), *others]),
        ("proxy-1", [figure({"200": 5}, 2)]),
        ("proxy-1", [figure({"200": 9}, 2)]),
        ("proxy-0", [figure({"200": 4}, 2)]),              # restarted: counts begin again
    ])
    total = figures.total(KEY)
    assert (total.requests, total.errors) == (20 + 2 + 4 + 4, 2)


def test_a_worker_restarted_between_two_beats_counts_afresh_whatever_its_counts() -> None:
    """A new worker can count more in its first second than the one it replaced did in
    its life: its pid tells it (its counts could not), and a count lower than before
    tells a pid reused."""
    figures = fed([
        ("proxy-0", 10, [figure({"200": 1}, 2)]),
        ("proxy-0", 10, [figure({"200": 100}, 2)]),
        ("proxy-0", 11, [figure({"200": 150}, 300)]),      # restarted: another pid
        ("proxy-0", 11, [figure({"200": 160}, 300)]),
        ("proxy-0", 11, [figure({"200": 170}, 2)]),        # its pid again, counts lower
    ])
    total = figures.total(KEY)
    assert total.requests == 99 + 150 + 10 + 170
    assert all(n >= 0 for n in total.buckets)
    assert total.buckets[int(bucket(300))] == 160


def test_the_checks_pass_a_good_canary_and_fail_errors_latency_and_silence() -> None:
    analysis = Analysis(interval="1s", min_requests=10, metrics=(
        MetricCheck("request-success-rate", min=99), MetricCheck("request-duration", max=100)))
    figures = fed([("proxy-0", [])])
    window = Window(keep_s=5)
    window.sample(-1.0, figures.total(KEY))  # the rollout's start: nothing counted yet

    def at(now: float, records: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        figures.feed("proxy-0", 1, records)
        window.sample(now, figures.total(KEY))
        return [(c.name, c.ok) for c in analyse(analysis, window, now)]

    assert at(0.0, [figure({"200": 100}, 5)]) == [("request-count", True),
                                                  ("request-success-rate", True),
                                                  ("request-duration", True)]
    assert at(1.0, [figure({"200": 190, "500": 10}, 5)])[1] == ("request-success-rate", False)
    slow = at(2.0, [figure({"200": 290, "500": 10}, 5), figure({"200": 100}, 300, route="x")])
    assert slow[2] == ("request-duration", True)  # another route's slow answers are not the canary's
    assert at(3.0, [figure({"200": 290, "500": 10}, 5), figure({"200": 100}, 300)])[2] == \
        ("request-duration", False)
    silent = analyse(analysis, window, 4.5)
    assert [c.ok for c in silent] == [False, False, False]
    assert "no values found" in silent[0].message and "no values found" in silent[1].message


def test_the_p99_is_read_within_its_bucket() -> None:
    figures = fed([("proxy-0", []), ("proxy-0", [figure({"200": 99}, 10), figure({"200": 1}, 900)])])
    window = Window(keep_s=5)
    window.sample(0.0, figures.total(KEY).since(figures.total(KEY)))
    window.sample(1.0, figures.total(KEY))
    p99 = window.last(1.0, 1.0).p99_ms
    assert 5 <= p99 <= 12, p99   # 99 of 100 answers took about 10 ms
