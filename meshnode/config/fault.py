"""meshnode's FaultInjection kind: Istio's HTTPFaultInjection fields, named by an HTTPRoute filter.

The Gateway API has no fault filter; its way to an implementation's own behaviour is a
filter of type ExtensionRef naming an object of the implementation's kind, in the
route's namespace. meshnode's is `meshnode.io/v1alpha1` FaultInjection, whose spec is
the `fault` of an Istio VirtualService route (istio networking v1alpha3/v1
HTTPFaultInjection) as Istio users write it:

    spec:
      delay: {fixedDelay: 5s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}

A request a rule takes is delayed with the delay's chance, then (drawn independently)
answered httpStatus without reaching a backend with the abort's chance. A percentage
left out is Istio's default: no request gets that fault. What Istio defines and
meshnode does not carry is refused by name (NOT_IMPLEMENTED). Objects here are already
validated (faultparse.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from fastpath.engine import FAULT_DELAY_MAX_S

from .durations import parse_duration

GROUP = "meshnode.io"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "FaultInjection"

# Istio's fields by where they stand, known but not carried: refused by name.
NOT_IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": (),
    # exponentialDelay is hidden from Istio's docs and refused by its validation;
    # `percent` is the integer field Istio deprecated for `percentage`.
    "delay": ("exponentialDelay", "percent"),
    # Aborts of gRPC and HTTP/2 streams: the data plane frames HTTP/1.1 only.
    "abort": ("grpcStatus", "http2Error"),
}

IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": ("delay", "abort"),
    "delay": ("fixedDelay", "percentage"),
    "abort": ("httpStatus", "percentage"),
}

MIN_DELAY_S = 0.001
"""Istio: fixedDelay "MUST be >=1ms", in whole milliseconds."""
MAX_DELAY_S = FAULT_DELAY_MAX_S
"""The longest delay the data plane holds a request: a longer one would be NACKed."""
MIN_PERCENTAGE = 0.0001
"""Istio's finest chance above 0 (parts per million, as Envoy takes it)."""


@dataclass(frozen=True)
class Delay:
    fixed_delay: str                # as written ("5s", "250ms")
    percentage: float | None = None  # 0..100; None: not given (no request is delayed)

    @property
    def fixed_delay_s(self) -> float:
        return parse_duration(self.fixed_delay)


@dataclass(frozen=True)
class Abort:
    http_status: int                # 200..599
    percentage: float | None = None  # 0..100; None: not given (no request is aborted)


@dataclass(frozen=True)
class FaultInjectionSpec:
    """At least one of the two (Istio: "a fault rule MUST HAVE delay or abort or both")."""

    delay: Delay | None = None
    abort: Abort | None = None
