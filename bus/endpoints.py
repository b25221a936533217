"""Where a node's bus sockets live: ipc files in a private dir of the runtime dir.

The dir is mode 0700 because anyone who can connect to the bus can reconfigure the
node; ipc paths are limited by sun_path (108 bytes on Linux), so a too-deep runtime
dir is refused here with a clear message instead of failing inside ZeroMQ.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import RuntimeDirError

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107


@dataclass(frozen=True)
class Endpoints:
    """The three broker addresses of one node."""

    dir: Path

    @property
    def events_in(self) -> str:
        """XSUB side: publishers connect here."""
        return f"ipc://{self.dir}/events-in.sock"

    @property
    def events_out(self) -> str:
        """XPUB side: subscribers connect here."""
        return f"ipc://{self.dir}/events-out.sock"

    @property
    def requests(self) -> str:
        """ROUTER: request clients and servers connect here."""
        return f"ipc://{self.dir}/requests.sock"

    @classmethod
    def for_runtime_dir(cls, runtime_dir: str | os.PathLike[str]) -> "Endpoints":
        return cls(Path(runtime_dir).resolve() / "bus")


def prepare(endpoints: Endpoints) -> None:
    """Create the socket dir with mode 0700 (or tighten it), and check path lengths."""
    # sun_path counts bytes: a non-ASCII dir is longer than its character count.
    longest = max(len(os.fsencode(a)) - len("ipc://") for a in
                  (endpoints.events_in, endpoints.events_out, endpoints.requests))
    if longest > _SUN_PATH_MAX:
        raise RuntimeDirError(
            f"runtime dir {endpoints.dir.parent} is too deep for ipc sockets "
            f"({longest} > {_SUN_PATH_MAX} bytes); choose a shorter path")
    try:
        endpoints.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(endpoints.dir, 0o700)
    except OSError as exc:
        raise RuntimeDirError(f"cannot prepare bus dir {endpoints.dir}: {exc}") from exc
    mode = stat.S_IMODE(endpoints.dir.stat().st_mode)
    if mode != 0o700:
        raise RuntimeDirError(f"bus dir {endpoints.dir} has mode {mode:o}, want 700")
