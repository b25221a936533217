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
import stat
from pathlib import Path

from fastpath import engine as fe

RELATIVE_PATH = Path("state") / "outlier.shm"
SLOTS = 4096  # endpoints of all services, node-wide (a power of two)


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
    size = fe.shared_state_bytes(slots)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED) as region:
            fe.shared_state_format(region, slots)
            region.flush()
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def attach(runtime_dir: str | os.PathLike[str]) -> mmap.mmap:
    """The node's region, mapped MAP_SHARED (for Engine.share_state, which checks its
    header); SharedStateError says why there is none to use."""
    path = path_in(runtime_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as exc:
        raise SharedStateError(f"{path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SharedStateError(f"{path}: mode {stat.S_IMODE(info.st_mode):o} lets others "
                                   "read it; it must be 0600")
        if info.st_size < 64:
            raise SharedStateError(f"{path}: {info.st_size} bytes: not a shared region")
        return mmap.mmap(fd, info.st_size, mmap.MAP_SHARED)
    finally:
        os.close(fd)
