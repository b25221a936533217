"""A worker's descriptor limit: raised to the hard limit at start, and the engine's connection slots sized from it.

Every connection pair holds up to two descriptors (the accepted socket and the one the
engine opened for it). With the soft limit most systems start a process with (1024)
and the engine's 4096 slots, descriptors ran out long before slots did: accept4() then
failed for both sides alike, whatever budget each had. So a worker raises its soft
limit to the hard one, as nginx's worker_rlimit_nofile and Envoy's deployments do, and
gives the engine as many slots as the descriptors left after a reserve can carry.
"""

from __future__ import annotations

import os
import resource

# Engine(max_connections=) bounds (fastpath consts ENGINE_MAX_CONNECTIONS; the floor
# keeps a worker under a tiny limit serving at all).
MIN_SLOTS = 16
MAX_SLOTS = 1048576
# Descriptors kept out of the slots' reach: listeners, the bus, logs, the engine's
# spare, and idle pooled upstreams (they hold a descriptor but no slot).
RESERVE_MIN = 256
RESERVE_FRACTION = 8            # at least 1/8 of the limit
# The buffer pool reserves two buffers per slot (address space: pages are touched only
# while a buffer holds bytes); at most this fraction of the host's memory, so the
# reservation never fails where the kernel refuses to overcommit that much.
POOL_RAM_FRACTION = 4
# Linux's default fs.nr_open: the most a process may raise RLIMIT_NOFILE to.
NR_OPEN_DEFAULT = 1048576


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return NR_OPEN_DEFAULT


def raise_nofile() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit (an unlimited
    hard limit: to fs.nr_open, the kernel's ceiling); returns (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass                # stays as it was: the slots are sized from that
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft, (_nr_open() if now == resource.RLIM_INFINITY else now)


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def engine_slots(nofile: int, buffer_bytes: int, ram_bytes: int | None = None) -> int:
    """Connection slots for an engine in a process allowed `nofile` descriptors, whose
    buffers are `buffer_bytes` each: two descriptors a slot after the reserve, and the
    pool's reservation within a quarter of the host's memory."""
    reserve = max(RESERVE_MIN, nofile // RESERVE_FRACTION)
    slots = (nofile - reserve) // 2
    ram = _ram_bytes() if ram_bytes is None else ram_bytes
    if ram > 0:
        slots = min(slots, ram // POOL_RAM_FRACTION // (2 * buffer_bytes))
    return max(MIN_SLOTS, min(MAX_SLOTS, slots))
