"""Frame counters every bus endpoint keeps, exported by telemetry.

Plain integers, because each counter is owned by one thread of one process; the owner
reports ``snapshot()`` in its health message once a second.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """Frames in, frames out and frames dropped (by reason) at one endpoint."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: Counter[str] = Counter()

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def snapshot(self) -> dict[str, object]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out,
                "dropped": dict(self.dropped)}

    def merge(self, other: "Counters") -> None:
        """Add another endpoint's counts into these (one process, several sockets)."""
        self.frames_in += other.frames_in
        self.frames_out += other.frames_out
        self.dropped.update(other.dropped)
