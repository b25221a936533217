"""An HTTPRoute rule's `retry` (Gateway API GEP-1731, HTTPRouteRetry) checked as the
spec's OpenAPI schema checks it, and written back as it was given.

The schema: `codes` a set (no code twice) of integers 400..599, `attempts` an integer of
at least 1, `backoff` a GEP-2257 duration; meshnode also keeps `backoff` within the
longest wait its data plane keeps (as it does timeouts), and takes no other field.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .durations import parse_duration
from .httproute import Retry
from .validate import _Doc, _fields, _int, _opt, join

MIN_CODE, MAX_CODE = 400, 599          # HTTPRouteRetryStatusCode's Minimum and Maximum
MAX_ATTEMPTS = 2**31 - 1               # an int in the schema; the data plane counts in 32 bits
MAX_BACKOFF_S = 86400.0                # RouteTable.add_route_rule's bound


def parse_retry(d: _Doc, value: object, path: str,
                duration: Callable[[_Doc, object, str], str | None]) -> Retry | None:
    """`duration`: the GEP-2257 check routes use for their timeouts."""
    fields = _fields(d, value, path, ("codes", "attempts", "backoff"))
    if fields is None:
        return None
    codes = _opt(d, fields, path, "codes", _codes, ())
    attempts = _opt(d, fields, path, "attempts", lambda d, v, p: _int(d, v, p, 1, MAX_ATTEMPTS), None)
    backoff = _opt(d, fields, path, "backoff", duration, None)
    if backoff is not None and parse_duration(backoff) > MAX_BACKOFF_S:
        d.fail(join(path, "backoff"), f"{backoff!r} is longer than the longest backoff meshnode keeps, 24h")
        return None
    if codes is None or ("attempts" in fields and attempts is None) or ("backoff" in fields and backoff is None):
        return None
    return Retry(codes, attempts, backoff)


def _codes(d: _Doc, value: object, path: str) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        d.fail(path, "must be a list of HTTP status codes")
        return None
    codes = [_int(d, code, f"{path}[{i}]", MIN_CODE, MAX_CODE) for i, code in enumerate(value)]
    if any(code is None for code in codes):
        return None
    seen: dict[int, int] = {}
    for i, code in enumerate(codes):
        if code in seen:                # listType=set
            d.fail(f"{path}[{i}]", f"duplicate code {code} (also {path}[{seen[code]}]): codes are a set")
            return None
        seen[code] = i  # type: ignore[index]
    return tuple(codes)  # type: ignore[arg-type]


def retry_dict(retry: Retry) -> dict[str, Any]:
    """The retry as the user wrote it (fields left out stay out)."""
    out: dict[str, Any] = {}
    if retry.codes:
        out["codes"] = list(retry.codes)
    if retry.attempts is not None:
        out["attempts"] = retry.attempts
    if retry.backoff is not None:
        out["backoff"] = retry.backoff
    return out


def retry_snapshot(retry: Retry | None) -> dict[str, Any] | None:
    """What a worker installs (RouteTable.add_route_rule's `retry`): the rule's attempts,
    codes and backoff, left out where the user left them out (the data plane's defaults
    apply: one retry, 25 ms, and its fixed retry budget)."""
    if retry is None:
        return None
    out: dict[str, Any] = {"codes": list(retry.codes)}
    if retry.attempts is not None:
        out["attempts"] = retry.attempts
    if retry.backoff_s is not None:
        out["backoff_s"] = retry.backoff_s
    return out
