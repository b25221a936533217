"""A DestinationRule's trafficPolicy.connectionPool: its model, its parsing, and what the
engine is given (fastpath RouteTable.set_connection_pool), split among a node's workers.

Istio's fields and defaults (networking/v1alpha3/destination_rule.proto,
ConnectionPoolSettings): tcp.maxConnections (2^32-1: no limit), tcp.connectTimeout (10s;
meshnode: the Mesh's connect timeout, whose default is Istio's), http.http1MaxPendingRequests
(2^32-1) and http.maxRequestsPerConnection (0: no limit). In proto3 an int32 field of 0 is
an unset one, so 0 means the default, as in Istio. fastpath/pool.pxi says what each does;
every other field of ConnectionPoolSettings is refused by name (NOT_IMPLEMENTED_*).

The engine counts per worker process: a node's limits are split among its workers
(meshnode.poolshare.worker_share), so that the node as a whole keeps to the number the rule gives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..poolshare import UNLIMITED
from .validate import _Doc, _duration, _int, _known_fields, _opt, join

IMPLEMENTED = ("tcp", "http")
NOT_IMPLEMENTED: tuple[str, ...] = ()
IMPLEMENTED_TCP = ("maxConnections", "connectTimeout")
NOT_IMPLEMENTED_TCP = ("tcpKeepalive", "maxConnectionDuration", "idleTimeout")
IMPLEMENTED_HTTP = ("http1MaxPendingRequests", "maxRequestsPerConnection")
NOT_IMPLEMENTED_HTTP = ("http2MaxRequests", "maxRetries", "idleTimeout", "h2UpgradePolicy",
                        "useClientProtocol", "maxConcurrentStreams")

_INT32_MAX = 2**31 - 1          # the fields are int32 in Istio's proto
_connect_timeout = _duration(0.001, 86400.0)    # Istio: at least 1ms (a day: the engine's most)


@dataclass(frozen=True)
class ConnectionPool:
    """connectionPool with Istio's defaults filled in (UNLIMITED: no limit)."""

    max_connections: int = UNLIMITED
    connect_timeout_s: float | None = None    # None: the Mesh's connect timeout
    max_pending_requests: int = UNLIMITED
    max_requests_per_connection: int = 0      # 0: no limit
    written: tuple[tuple[str, Any], ...] = ()  # the fields as given, for `get`

    def engine(self) -> dict[str, Any]:
        """RouteTable.set_connection_pool()'s arguments for the node as a whole (the
        snapshot carries them; each worker takes its share: poolshare.worker_share)."""
        return {"max_connections": 0 if self.max_connections == UNLIMITED else self.max_connections,
                "max_pending_requests": self.max_pending_requests,
                "max_requests_per_connection": self.max_requests_per_connection,
                "connect_timeout_s": self.connect_timeout_s or 0.0}

    def to_dict(self) -> dict[str, Any]:
        return {key: dict(value) for key, value in self.written}


def _limit(d: _Doc, value: object, path: str) -> int | None:
    """An int32 limit; 0 (proto3's unset) is the default: no limit."""
    n = _int(d, value, path, 0, _INT32_MAX)
    return None if n is None else (n or UNLIMITED)


def _per_connection(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 0, _INT32_MAX)


def parse_connection_pool(d: _Doc, value: object, path: str) -> ConnectionPool | None:
    fields = _known_fields(d, value, path, IMPLEMENTED, NOT_IMPLEMENTED)
    if fields is None:
        return None
    before = len(d.problems)
    default = ConnectionPool()
    tcp = _known_fields(d, fields["tcp"], join(path, "tcp"), IMPLEMENTED_TCP,
                        NOT_IMPLEMENTED_TCP) if "tcp" in fields else {}
    http = _known_fields(d, fields["http"], join(path, "http"), IMPLEMENTED_HTTP,
                         NOT_IMPLEMENTED_HTTP) if "http" in fields else {}
    if tcp is None or http is None:
        return None
    most = _opt(d, tcp, join(path, "tcp"), "maxConnections", _limit, default.max_connections)
    timeout = _opt(d, tcp, join(path, "tcp"), "connectTimeout", _connect_timeout, None)
    pending = _opt(d, http, join(path, "http"), "http1MaxPendingRequests", _limit,
                   default.max_pending_requests)
    per_conn = _opt(d, http, join(path, "http"), "maxRequestsPerConnection", _per_connection,
                    default.max_requests_per_connection)
    if len(d.problems) != before:
        return None
    assert None not in (most, pending, per_conn)
    written = tuple((key, tuple(part.items())) for key, part in (("tcp", tcp), ("http", http))
                    if key in fields)
    return ConnectionPool(most, timeout, pending, per_conn, written)  # type: ignore[arg-type]
