"""The node's shared data-plane state: files its proxy workers map together.

Why: some decisions are the node's, not a worker's. Outlier detection (DestinationRule
outlierDetection) ejects an endpoint for the node: were the counts and ejections each
worker's own, a dead endpoint would be learned N times over (each worker sending it its
own failing requests) and ejected at N different moments. A RateLimitPolicy's limit is
the node's: 100 requests a second must stay 100 whatever `--workers` is; so is the
Mesh's cap on requests in flight (spec.overload). So every worker maps one fixed-layout
file per feature MAP_SHARED and hands the mapping to its engine (fastpath
Engine.share_state, Engine.share_rate_limits, Engine.share_overload), whose slots,
buckets and counts are updated with atomics (fastpath/outlier.pxi, fastpath/ratelimit.pxi,
fastpath/overload.pxi), as HAProxy's stick tables or nginx's shared zones keep state for
several processes.

`meshnode up` writes them afresh (mode 0600, in the runtime dir, itself 0700) before it
starts the workers, so neither ejections, spent buckets nor counts outlive the node. A
worker that finds no usable file keeps its own state (outlier detection, rate limits,
the cap on requests in flight per worker) and says so in its log.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastpath import engine as fe

from .files import open_private, write_atomic


@dataclass(frozen=True)
class Region:
    """One shared file: where it lives in the runtime dir, and how the engine sizes and
    formats it for `slots` entries (a power of two)."""

    relative_path: Path
    slots: int
    size: Callable[[int], int]
    format: Callable[[bytearray, int], None]


OUTLIER = Region(Path("state") / "outlier.shm", 4096,  # endpoints and services, node-wide
                 fe.shared_state_bytes, fe.shared_state_format)
RATE_LIMITS = Region(Path("state") / "ratelimit.shm", 16384,  # token buckets, node-wide
                     fe.rate_region_bytes, fe.rate_region_format)
# Requests in flight, node-wide: a slot per worker, whatever `slots` says.
OVERLOAD = Region(Path("state") / "overload.shm", 1,
                  lambda slots: fe.overload_region_bytes(),
                  lambda data, slots: fe.overload_region_format(data))


class SharedStateError(Exception):
    """The file is missing, the wrong size or format, or readable by others."""


def path_in(runtime_dir: str | os.PathLike[str], region: Region = OUTLIER) -> Path:
    return Path(runtime_dir) / region.relative_path


def make(runtime_dir: str | os.PathLike[str], region: Region = OUTLIER) -> Path:
    """Write an empty `region` in `runtime_dir`, replacing any older one (a worker of an
    older start that still maps it keeps the old file, never a half-written one)."""
    path = path_in(runtime_dir, region)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    data = bytearray(region.size(region.slots))
    region.format(data, region.slots)
    write_atomic(path, bytes(data))
    return path


def attach(runtime_dir: str | os.PathLike[str], region: Region = OUTLIER) -> mmap.mmap:
    """The node's `region`, mapped MAP_SHARED (for the engine, which checks its header);
    SharedStateError says why there is none to use."""
    path = path_in(runtime_dir, region)
    fd = open_private(path, os.O_RDWR, SharedStateError)
    try:
        size = os.fstat(fd).st_size
        if size < 64:
            raise SharedStateError(f"{path}: {size} bytes: not a shared region")
        return mmap.mmap(fd, size, mmap.MAP_SHARED)
    finally:
        os.close(fd)
