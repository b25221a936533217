"""A proxy worker's share of a DestinationRule connectionPool's node-wide limits.

Why a module of its own: the engine counts upstream connections per worker process, so
each worker takes its part of maxConnections and http1MaxPendingRequests. The worker
needs only this arithmetic; importing it from meshnode.config would load the whole
config package (YAML, validation) into every worker, several MB of its memory.
"""
from __future__ import annotations

from typing import Any

UNLIMITED = 2**32 - 1
"""Istio's default for maxConnections and http1MaxPendingRequests: no limit."""


def _share(total: int, worker: int, workers: int) -> int:
    """Worker `worker`'s part of `total` among `workers`: the quotient, one more for the
    first `total % workers` workers (the parts add up to `total`), and at least 1 (a
    limit below the worker count: each worker may still make one)."""
    part = total // workers + (1 if worker < total % workers else 0)
    return max(part, 1)


def worker_share(policy: dict[str, Any], worker: int, workers: int) -> dict[str, Any]:
    """One worker's set_connection_pool() arguments from the node's (engine()): the
    connection and pending limits divided among the node's workers, since each counts
    only its own (a shared count would cost an atomic per connection across processes).
    A limit given as no limit stays so; the per-connection limit and the timeout apply
    to each connection as they are."""
    out = dict(policy)
    workers = max(workers, 1)
    worker = min(max(worker, 0), workers - 1)
    if out.get("max_connections"):
        out["max_connections"] = _share(int(out["max_connections"]), worker, workers)
    pending = int(out.get("max_pending_requests", UNLIMITED))
    if pending != UNLIMITED:
        out["max_pending_requests"] = _share(pending, worker, workers) if pending else 0
    return out
