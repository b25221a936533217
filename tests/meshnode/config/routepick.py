"""A reference reading of the route-set contract (snapshot["http_routes"]): which rule takes a request.

Plain Python, for the tests: the route set of the caller's group, then the first entry
whose match holds. The data plane's compiled matcher is held to the same reading.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

RouteSet = dict[str, Any]


def route_set(sets: list[RouteSet], service: str, port: int, caller_namespace: str) -> RouteSet | None:
    """The set governing a caller in `caller_namespace`: its namespace's consumer set,
    else the producer set; None: no route attaches (the service's default behaviour)."""
    mine = [s for s in sets if (s["service"], s["port"]) == (service, port)]
    for wanted in (caller_namespace, None):
        for candidate in mine:
            if candidate["consumer_namespace"] == wanted:
                return candidate
    return None


def _value_holds(kind: str, want: str, got: str | None) -> bool:
    if got is None:
        return False
    return got == want if kind == "Exact" else re.fullmatch(want, got) is not None


def _path_holds(match: dict[str, str], path: str) -> bool:
    kind, value = match["type"], match["value"]
    if kind == "Exact":
        return path == value
    if kind == "RegularExpression":
        return re.fullmatch(value, path) is not None
    # PathPrefix: whole segments, a trailing '/' on either side ignored.
    prefix = value.rstrip("/")
    return not prefix or path.rstrip("/") == prefix or path.startswith(prefix + "/")


def entry_holds(entry: dict[str, Any], method: str, target: str, headers: dict[str, str]) -> bool:
    parts = urlsplit(target)
    lowered = {k.lower(): v for k, v in headers.items()}
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name, value)  # the first value of a repeated name
    return (_path_holds(entry["path"], parts.path or "/")
            and entry["method"] in (None, method)
            and all(_value_holds(h["type"], h["value"], lowered.get(h["name"])) for h in entry["headers"])
            and all(_value_holds(q["type"], q["value"], query.get(q["name"])) for q in entry["query"]))


def pick(chosen: RouteSet, target: str, method: str = "GET",
         headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The rule that takes the request, or None (404)."""
    for entry in chosen["entries"]:
        if entry_holds(entry, method, target, headers or {}):
            return chosen["rules"][entry["rule"]]  # type: ignore[no-any-return]
    return None


def backends(rule: dict[str, Any] | None) -> list[str | None] | int:
    """The services a rule sends to (None for an unresolved one), or 404."""
    if rule is None:
        return 404
    return [b["service"] for b in rule["backends"]]
