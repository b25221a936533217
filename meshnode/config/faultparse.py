"""Reading and writing FaultInjection documents (the model: fault.py).

Checks Istio's own rules for HTTPFaultInjection (pilot's validation: a delay, an abort
or both; fixedDelay at least 1ms in whole milliseconds; httpStatus 200..599; a
percentage 0, or 0.0001..100) and names each Istio field meshnode does not carry
(fault.NOT_IMPLEMENTED).
"""
from __future__ import annotations

import math
from typing import Any

from fastpath.engine import FAULT_STATUSES_WITHOUT_CONTENT

from .durations import DurationError, parse_duration
from .errors import Problem
from .fault import (API_VERSION, IMPLEMENTED, MAX_DELAY_S, MIN_DELAY_S, MIN_PERCENTAGE, NOT_IMPLEMENTED,
                    Abort, Delay, FaultInjectionSpec)
from .model import FaultInjection
from .validate import _MISSING, _Doc, _describe, _fields, _int, _known_fields, _metadata, document_label, join


def _known(d: _Doc, value: object, path: str, level: str,
           required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    return _known_fields(d, value, path, IMPLEMENTED[level], NOT_IMPLEMENTED[level], required)


def _percentage(d: _Doc, value: object, path: str) -> float | None:
    """Istio's Percent: {value: double}; a value left out is 0."""
    fields = _fields(d, value, path, ("value",))
    if fields is None:
        return None
    number = fields.get("value", 0.0)
    where = join(path, "value")
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        d.fail(where, f"must be a number from 0 to 100, got {_describe(number)}")
        return None
    if not 0 <= number <= 100 or 0 < number < MIN_PERCENTAGE:
        d.fail(where, f"percentage {number} is neither 0 nor from {MIN_PERCENTAGE} to 100")
        return None
    return float(number)


def _fixed_delay(d: _Doc, value: object, path: str) -> str | None:
    try:
        seconds = parse_duration(value)
    except DurationError as exc:
        d.fail(path, str(exc))
        return None
    if not MIN_DELAY_S <= seconds <= MAX_DELAY_S:
        d.fail(path, f"{value!r}: a fixed delay is from 1ms to 24h")
        return None
    if not math.isclose(seconds * 1000, round(seconds * 1000), abs_tol=1e-6):
        d.fail(path, f"{value!r}: a fixed delay is in whole milliseconds")
        return None
    return str(value)


def _delay(d: _Doc, value: object, path: str) -> Delay | None:
    fields = _known(d, value, path, "delay", required=("fixedDelay",))
    if fields is None or "fixedDelay" not in fields:
        return None
    fixed = _fixed_delay(d, fields["fixedDelay"], join(path, "fixedDelay"))
    percentage = _percentage(d, fields["percentage"], join(path, "percentage")) \
        if "percentage" in fields else None
    if fixed is None or ("percentage" in fields and percentage is None):
        return None
    return Delay(fixed, percentage)


def _abort(d: _Doc, value: object, path: str) -> Abort | None:
    fields = _known(d, value, path, "abort", required=("httpStatus",))
    if fields is None or "httpStatus" not in fields:
        return None
    status = _int(d, fields["httpStatus"], join(path, "httpStatus"), 200, 599)
    if status in FAULT_STATUSES_WITHOUT_CONTENT:
        d.fail(join(path, "httpStatus"), f"an abort with {status} (an answer without content) is "
                                         "not implemented: the node's answers carry a text body")
        status = None
    percentage = _percentage(d, fields["percentage"], join(path, "percentage")) \
        if "percentage" in fields else None
    if status is None or ("percentage" in fields and percentage is None):
        return None
    return Abort(status, percentage)


def _spec(d: _Doc, value: object) -> FaultInjectionSpec | None:
    if value is _MISSING:
        d.fail("spec", "required")
        return None
    spec = _known(d, value, "spec", "spec")
    if spec is None:
        return None
    if "delay" not in spec and "abort" not in spec:
        d.fail("spec", "a fault injection has a delay, an abort or both")
        return None
    delay = _delay(d, spec["delay"], "spec.delay") if "delay" in spec else None
    abort = _abort(d, spec["abort"], "spec.abort") if "abort" in spec else None
    if ("delay" in spec and delay is None) or ("abort" in spec and abort is None):
        return None
    return FaultInjectionSpec(delay, abort)


def parse_fault_injection(doc: dict[str, Any], file: str, index: int
                          ) -> tuple[FaultInjection | None, list[Problem]]:
    """A FaultInjection document (kind already known), or what is wrong with it."""
    d = _Doc(file, document_label(doc, index))
    top = _fields(d, doc, "", ("apiVersion", "kind", "metadata", "spec"),
                  required=("apiVersion", "kind", "metadata", "spec"))
    if top is None:
        return None, d.problems
    if "apiVersion" in top and top["apiVersion"] != API_VERSION:
        d.fail("apiVersion", f"must be {API_VERSION!r}, got {_describe(top['apiVersion'])}")
    metadata = _metadata(d, top["metadata"], False) if "metadata" in top else None
    spec = _spec(d, top.get("spec", _MISSING))
    if d.problems or metadata is None or spec is None:
        return None, d.problems
    return FaultInjection(metadata=metadata, spec=spec, source=file), []


def _percent_dict(percentage: float | None) -> dict[str, Any]:
    return {} if percentage is None else {"percentage": {"value": percentage}}


def fault_to_dict(fault: FaultInjection) -> dict[str, Any]:
    """The object as written (values as given); parse_fault_injection reads it back equal."""
    meta = fault.metadata
    metadata: dict[str, Any] = {"name": fault.name, "namespace": fault.namespace}
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    spec: dict[str, Any] = {}
    if fault.spec.delay is not None:
        spec["delay"] = {"fixedDelay": fault.spec.delay.fixed_delay,
                         **_percent_dict(fault.spec.delay.percentage)}
    if fault.spec.abort is not None:
        spec["abort"] = {"httpStatus": fault.spec.abort.http_status,
                         **_percent_dict(fault.spec.abort.percentage)}
    return {"apiVersion": API_VERSION, "kind": fault.KIND, "metadata": metadata, "spec": spec}
