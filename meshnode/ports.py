"""The node's port map (DESIGN §8), moved as a block by ``--port-base``.

Istio's numbers are kept as offsets from 15000 so that habits carry over, and so that
two nodes on one machine differ only in their base.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BASE = 15000


@dataclass(frozen=True)
class Ports:
    base: int = DEFAULT_BASE

    def __post_init__(self) -> None:
        if not 1024 <= self.base <= 65535 - 100:
            raise ValueError(f"port base {self.base} must be within 1024..65435")

    @property
    def admin(self) -> int:
        return self.base

    @property
    def outbound(self) -> int:
        return self.base + 1

    @property
    def inbound(self) -> int:
        return self.base + 6

    @property
    def control_plane(self) -> int:
        return self.base + 10

    @property
    def metrics(self) -> int:
        return self.base + 90
