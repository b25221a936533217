"""Durations as users write them ("24h", "1h30m", "500ms") and as we store them (float seconds).

The grammar is Go's time.ParseDuration (what Istio and Kubernetes users know), without
the sign: one or more <decimal><unit> pairs, units h, m, s, ms, us (or µs), ns; "0" alone
is allowed. Sums are exact decimals, rounded once to float, so format_duration and
parse_duration round-trip exactly.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal

_UNITS: dict[str, Decimal] = {
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
    "us": Decimal("0.000001"),
    "µs": Decimal("0.000001"),
    "ns": Decimal("0.000000001"),
}
# Longer unit names first so "ms" is not read as "m" followed by garbage.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+")


class DurationError(ValueError):
    """Text that is not a duration."""


def parse_duration(text: object) -> float:
    """Return the seconds in `text` ("24h" -> 86400.0); raise DurationError if it is not a duration."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise DurationError(
            f"must be a duration string such as '24h', '10s' or '1h30m', got {text!r}"
        )
    if text == "0":
        return 0.0
    if not _WHOLE.fullmatch(text):
        raise DurationError(
            f"{text!r} is not a duration: use numbers with units h, m, s, ms, us, ns "
            "such as '24h', '10s', '500ms' or '1h30m'"
        )
    total = sum((Decimal(num) * _UNITS[unit] for num, unit in _PART.findall(text)), Decimal(0))
    return float(total)


def format_duration(seconds: float) -> str:
    """Return the shortest usual spelling of `seconds` that parse_duration reads back exactly."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    exact = Decimal(repr(float(seconds)))
    if exact == exact.to_integral_value():
        whole = int(exact)
        if whole == 0:
            return "0s"
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
        return "".join(f"{n}{unit}" for n, unit in parts if n)
    millis = exact * 1000
    if millis == millis.to_integral_value():
        return f"{int(millis)}ms"
    return f"{exact:f}s"
