"""The node's health book: the latest health beat of every process, kept by telemetry.

A process is healthy when its last beat said ``state: ok`` and arrived within
READY_WINDOW_S; the node is ready when every expected process is healthy. The window
is three beats, so one late beat on a busy machine does not flap readiness. A proxy
worker that has not carried out the config it was given (it NACKed it: a listener that
cannot bind, a route table that does not compile) beats ``state: nacked`` with the
reason in ``config_problem``, which readiness() passes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

READY_WINDOW_S = 3.0


@dataclass(frozen=True)
class Report:
    body: dict[str, Any]
    seen: float  # monotonic time of arrival


class HealthBook:
    """Thread-safe: the bus loop writes, the HTTP threads read."""

    def __init__(self, expected: list[str]) -> None:
        self.expected = list(expected)
        self._reports: dict[str, Report] = {}
        self._lock = threading.Lock()

    def record(self, name: str, body: dict[str, Any], now: float | None = None) -> None:
        with self._lock:
            self._reports[name] = Report(body, time.monotonic() if now is None else now)

    def get(self, name: str) -> Report | None:
        with self._lock:
            return self._reports.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(set(self.expected) | set(self._reports))

    def healthy(self, name: str, now: float | None = None) -> bool:
        report = self.get(name)
        now = time.monotonic() if now is None else now
        return (report is not None and report.body.get("state") == "ok"
                and now - report.seen <= READY_WINDOW_S)

    def not_ready(self, now: float | None = None) -> list[str]:
        """Expected processes that are not healthy now (empty: the node is ready)."""
        return [name for name in self.expected if not self.healthy(name, now)]

    def readiness(self, now: float | None = None) -> dict[str, Any]:
        """/ready's body: ready or not, which processes are not, and the config problems
        those report (a NACK's reason)."""
        missing = self.not_ready(now)
        if not missing:
            return {"ready": True}
        problems = {}
        for name in missing:
            report = self.get(name)
            if report is not None and report.body.get("config_problem"):
                problems[name] = str(report.body["config_problem"])
        return {"ready": False, "not_ready": missing, "problems": problems}

    def view(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Every process's last report, with its age and verdict, for status and /stats."""
        now = time.monotonic() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for name in self.names():
            report = self.get(name)
            entry: dict[str, Any] = {"healthy": self.healthy(name, now),
                                     "expected": name in self.expected}
            if report is not None:
                entry.update(report.body)
                entry["age_s"] = round(now - report.seen, 3)
            out[name] = entry
        return out
