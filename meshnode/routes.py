"""A snapshot's HTTPRoutes (``snapshot["http_routes"]``, compiled by control from Gateway
API HTTPRoute resources) into a worker's RouteTable: route sets, their rules and their
matches, in the precedence order control gave them (fastpath/routes.pxi matches them).

Backends are named as control names them, ("namespace/name", port); one the table has no
service for (a Service without endpoints, or a ref that did not resolve) is an invalid
backend there, and the share of requests it would get is answered 500, as the Gateway
API asks for a backendRef that cannot be used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from fastpath.engine import RouteTable


class RuleAdded(NamedTuple):
    """A route rule as the table has it: its name (None: none), its index, and the
    indexes of the services its valid backends are."""

    name: str | None
    index: int
    backends: tuple[int, ...]


def _match_args(entry: dict[str, Any]) -> dict[str, Any]:
    path = entry.get("path")
    return {
        "path": (path["type"], path["value"]) if path else None,
        "method": entry.get("method"),
        "headers": [(h["type"], h["name"], h["value"]) for h in entry.get("headers") or ()],
        "query": [(q["type"], q["name"], q["value"]) for q in entry.get("query") or ()],
    }


def _url(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rule's redirect or rewrite as RouteTable.add_route_rule() takes it."""
    if spec is None:
        return None
    path = spec.get("path")
    return {**spec, "path": (path["type"], path["value"]) if path else None}


def _fault_args(fault: dict[str, Any]) -> dict[str, Any]:
    """A rule's FaultInjection (or unresolved ExtensionRef filter: every request 500)."""
    if fault.get("unresolved"):
        return {"unresolved": True}
    return {"delay_s": float(fault["delay_s"]), "delay_percent": float(fault["delay_percent"]),
            "abort_status": int(fault["abort_status"]), "abort_percent": float(fault["abort_percent"])}


def _rule_name(rule: dict[str, Any]) -> str:
    return f"{rule['route']}#{rule.get('name') or rule['index']}"


def install(table: RouteTable, route_sets: Iterable[dict[str, Any]],
            services: dict[tuple[str, int], int],
            added_rules: dict[str, list[RuleAdded]] | None = None) -> int:
    """Add every route set whose parent service port the table has; returns how many.

    `services`: ("namespace/name", port) -> the table's index of that service port;
    `added_rules`, when given, gets each rule added under its route's "namespace/name"
    (what a RateLimitPolicy on the route limits: meshnode.ratelimits)."""
    added = 0
    for route_set in route_sets:
        parent = services.get((route_set["service"], int(route_set["port"])))
        if parent is None:
            continue            # its Service has no endpoints here: nothing to route
        set_index = table.add_route_set(parent, route_set.get("consumer_namespace"))
        rules = []
        for rule in route_set["rules"]:
            backends = []
            for backend in rule["backends"]:
                ref = backend.get("service")
                index = -1
                if ref is not None and backend.get("port") is not None:
                    index = services.get((ref, int(backend["port"])), -1)
                backends.append((index, int(backend["weight"]), backend.get("request_headers"),
                                 backend.get("response_headers")))
            # timeouts.request spans a request's tries, backendRequest bounds each
            # (0: none); `retry`: the rule's retry, the data plane's budget.
            rules.append(table.add_route_rule(_rule_name(rule), backends,
                                              rule.get("request_headers"),
                                              rule.get("response_headers"),
                                              float(rule.get("timeout_s") or 0.0),
                                              redirect=_url(rule.get("redirect")),
                                              rewrite=_url(rule.get("rewrite")),
                                              backend_timeout_s=float(
                                                  rule.get("backend_timeout_s") or 0.0),
                                              retry=rule.get("retry")))
            for mirror in rule.get("mirrors") or ():
                # A mirror Service with no endpoints here: nothing to copy to.
                index = services.get((mirror["service"], int(mirror["port"])))
                if index is not None:
                    table.add_route_mirror(rules[-1], index, int(mirror["numerator"]),
                                           int(mirror["denominator"]))
            if rule.get("fault"):
                table.add_route_fault(rules[-1], **_fault_args(rule["fault"]))
            if added_rules is not None:
                added_rules.setdefault(rule["route"], []).append(RuleAdded(
                    rule.get("name"), rules[-1], tuple(b[0] for b in backends if b[0] >= 0)))
        for entry in route_set["entries"]:
            table.add_route_match(set_index, rules[entry["rule"]], **_match_args(entry))
        added += 1
    return added
