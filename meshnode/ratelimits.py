"""A snapshot's RateLimitPolicy limits (``snapshot["rate_limits"]``, compiled by control:
meshnode.config.ratelimitcompile) into a worker's RouteTable, each where its direction
puts it (fastpath/ratelimit.pxi enforces them):

- inbound, on a Service: the inbound routes this node serves for the Service's ports (a
  node that serves none of it has nothing to limit);
- outbound, on a Service: the table's services for its ports (every caller here);
- outbound, on an HTTPRoute: the table's rules of that route (the one its sectionName
  names, else all), over every route set the route is in, one bucket for them all.

The buckets are keyed by the entry's `key`, so every worker of the node (they share one
region: meshnode.sharedstate) and every table after a push find the same ones: a new
snapshot does not refill a bucket, and a connection open across the push is not touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastpath.engine import RouteTable

from .routes import RuleAdded


def placement(entry: dict[str, Any], inbound: dict[str, list[str]], services: dict[str, list[int]],
           rules: dict[str, list[RuleAdded]]) -> dict[str, Any] | None:
    """add_rate_limit's inbound / services / rules for `entry` on this table; None: it
    has nothing here to limit."""
    if entry["direction"] == "inbound":
        snis = inbound.get(entry["service"] or "", [])
        return {"inbound": snis} if snis else None
    if entry["service"] is not None:
        ports = services.get(entry["service"], [])
        return {"services": ports} if ports else None
    taken = [r for r in rules.get(entry["route"], ()) if entry["rule"] in (None, r.name)]
    backends = sorted({b for r in taken for b in r.backends})
    if not backends:
        return None
    return {"services": backends, "rules": [r.index for r in taken]}


def install(table: RouteTable, entries: Iterable[dict[str, Any]], inbound: dict[str, list[str]],
            services: dict[str, list[int]], rules: dict[str, list[RuleAdded]]) -> int:
    """Add each limit that has something to limit on this table; returns how many.

    `inbound`: "namespace/name" -> the SNIs of the inbound routes added for its ports;
    `services`: "namespace/name" -> the table's services of its ports; `rules`: the
    rules routes.install() added, by route."""
    added = 0
    for entry in entries:
        where = placement(entry, inbound, services, rules)
        if where is None:
            continue
        table.add_rate_limit(entry["id"], int(entry["tokens"]), float(entry["interval_s"]),
                             int(entry["burst"]), by=entry["by"], max_keys=int(entry["max_keys"]),
                             key=entry["key"], **where)
        added += 1
    return added
