"""A DestinationRule's trafficPolicy.outlierDetection: its model, its parsing, and what the
engine is given (fastpath RouteTable.set_outlier).

Istio's fields and defaults (networking/v1alpha3/destination_rule.proto, OutlierDetection):
consecutive5xxErrors (5; 0 turns that detector off), consecutiveGatewayErrors (0: off),
interval (10s, at least 1ms: the ejection sweep), baseEjectionTime (30s, at least 1ms),
maxEjectionPercent (10) and minHealthPercent (0). The detectors are Envoy's
(fastpath/outlier.pxi says how each counts), ejections are the node's: its workers
share them. splitExternalLocalOriginErrors, consecutiveLocalOriginFailures and the
deprecated consecutiveErrors are refused by name (NOT_IMPLEMENTED).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .validate import _Doc, _duration, _int, _known_fields, _opt

IMPLEMENTED = ("consecutive5xxErrors", "consecutiveGatewayErrors", "interval",
               "baseEjectionTime", "maxEjectionPercent", "minHealthPercent")
NOT_IMPLEMENTED = ("splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures",
                   "consecutiveErrors")

_UINT32_MAX = 2**32 - 1
_DAY_S = 86400.0
_interval = _duration(0.001, _DAY_S)        # Istio: MUST BE >= 1ms (a day: the engine's most)


@dataclass(frozen=True)
class OutlierDetection:
    """outlierDetection with Istio's defaults filled in."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    written: tuple[tuple[str, Any], ...] = ()   # the fields as given, for `get`

    def engine(self) -> dict[str, Any]:
        """RouteTable.set_outlier()'s arguments (the snapshot carries them as they are)."""
        return {"consecutive_5xx": self.consecutive_5xx,
                "consecutive_gateway": self.consecutive_gateway,
                "interval_s": self.interval_s, "base_ejection_s": self.base_ejection_s,
                "max_ejection_percent": self.max_ejection_percent,
                "min_health_percent": self.min_health_percent}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.written)


def _count(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 0, _UINT32_MAX)


def _percent(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 0, 100)


def parse_outlier_detection(d: _Doc, value: object, path: str) -> OutlierDetection | None:
    fields = _known_fields(d, value, path, IMPLEMENTED, NOT_IMPLEMENTED)
    if fields is None:
        return None
    before = len(d.problems)
    default = OutlierDetection()
    c5 = _opt(d, fields, path, "consecutive5xxErrors", _count, default.consecutive_5xx)
    cg = _opt(d, fields, path, "consecutiveGatewayErrors", _count, default.consecutive_gateway)
    interval = _opt(d, fields, path, "interval", _interval, default.interval_s)
    base = _opt(d, fields, path, "baseEjectionTime", _interval, default.base_ejection_s)
    most = _opt(d, fields, path, "maxEjectionPercent", _percent, default.max_ejection_percent)
    if most == 0:
        # Istio passes maxEjectionPercent to Envoy only when above 0: 0 leaves Envoy's 10.
        most = default.max_ejection_percent
    least = _opt(d, fields, path, "minHealthPercent", _percent, default.min_health_percent)
    if len(d.problems) != before:
        return None
    assert None not in (c5, cg, interval, base, most, least)
    return OutlierDetection(c5, cg, interval, base, most, least,  # type: ignore[arg-type]
                            tuple(fields.items()))

