"""The node's shared outlier-detection state: one file its proxy workers map together.

Why: outlier detection (DestinationRule outlierDetection) ejects an endpoint for the
node. Each proxy worker is a process with its own engine; were the counts and ejections
each worker's own, a dead endpoint would be learned N times over (each worker sending
it its own failing requests) and ejected at N different moments. So every worker maps
one fixed-layout file MAP_SHARED and hands the mapping to its engine
(fastpath Engine.share_state): slots keyed by (service, endpoint address), updated with
atomics (fastpath/outlier.pxi), as HAProxy's stick tables or nginx's shared zones keep
state for several processes.

`meshnode up` writes it afresh (mode 0600, in the runtime dir, itself 0700) before it
starts the workers, so ejections do not outlive the node. A worker that finds no usable
file keeps its own state (outlier detection per worker) and says so in its log.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from fastpath import engine as fe

from .files import open_private, write_atomic

RELATIVE_PATH = Path("state") / "outlier.shm"
SLOTS = 4096  # endpoints, and services, that detect outliers, node-wide (a power of two)


class SharedStateError(Exception):
    """The file is missing, the wrong size or format, or readable by others."""


def path_in(runtime_dir: str | os.PathLike[str]) -> Path:
    return Path(runtime_dir) / RELATIVE_PATH


def make(runtime_dir: str | os.PathLike[str], slots: int = SLOTS) -> Path:
    """Write an empty region in `runtime_dir`, replacing any older one (a worker of an
    older start that still maps it keeps the old file, never a half-written one)."""
    path = path_in(runtime_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    region = bytearray(fe.shared_state_bytes(slots))
    fe.shared_state_format(region, slots)
    write_atomic(path, bytes(region))
    return path


def attach(runtime_dir: str | os.PathLike[str]) -> mmap.mmap:
    """The node's region, mapped MAP_SHARED (for Engine.share_state, which checks its
    header); SharedStateError says why there is none to use."""
    path = path_in(runtime_dir)
    fd = open_private(path, os.O_RDWR, SharedStateError)
    try:
        size = os.fstat(fd).st_size
        if size < 64:
            raise SharedStateError(f"{path}: {size} bytes: not a shared region")
        return mmap.mmap(fd, size, mmap.MAP_SHARED)
    finally:
        os.close(fd)
