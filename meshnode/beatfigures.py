"""The request figures a proxy worker's health beat carries: their shape, checked where a
beat comes in.

DataPlane.request_figures() writes them; control (a rollout's canary totals) and
telemetry (metrics, golden windows) read them on their bus loop. A beat is a bus frame
like any other: one of another shape (a stray publisher, a worker of another version)
is dropped and counted where it arrives (DESIGN §6), so that what reads the figures can
take their shape as given; an exception there would end the process.
"""

from __future__ import annotations

from typing import Any

# Histograms by status code: {code: {bucket index: count}}.
_BY_CODE = ("latency",)
# Size histograms by status code: {code: {"counts": {bucket index: count}, "sum": bytes}}.
_SIZES = ("request_bytes", "response_bytes")
# Plain counts: {name: count}.
_COUNTS = ("codes", "response_flags", "tcp")


def well_formed(requests: object) -> bool:
    """Whether a beat's "requests" is a list of figures of DataPlane.request_figures()'
    shape: each a map whose counts are whole numbers, keyed by text, wherever it has any."""
    return isinstance(requests, list) and all(_figure(fig) for fig in requests)


def _figure(fig: object) -> bool:
    if not isinstance(fig, dict):
        return False
    return (all(_counts(fig.get(name, {})) for name in _COUNTS)
            and all(_nested(fig.get(name, {}), _counts) for name in _BY_CODE)
            and all(_nested(fig.get(name, {}), _size) for name in _SIZES))


def _counts(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and type(n) is int
                                           for k, n in value.items())


def _nested(value: object, inner: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and inner(v)
                                           for k, v in value.items())


def _size(value: object) -> bool:
    return (isinstance(value, dict) and _counts(value.get("counts", {}))
            and type(value.get("sum", 0)) is int)
