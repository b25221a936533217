"""Gateway API XBackendTrafficPolicy (GEP-3388, experimental channel): a Service's retry budget.

A Direct policy attached to Services of its own namespace (spec.targetRefs, group ""
kind Service): spec.retryConstraint bounds the retries toward that Service, from every
route and every caller of the node, to `budget.percent` of its requests over
`budget.interval`, with at least `minRetryRate.count` retries per `minRetryRate.interval`
(Linkerd's retry budget, which meshnode's data plane keeps per Service and worker):

    apiVersion: gateway.networking.x-k8s.io/v1alpha1
    kind: XBackendTrafficPolicy
    metadata: {name: api-budget, namespace: shop}
    spec:
      targetRefs: [{group: "", kind: Service, name: api}]
      retryConstraint:
        budget: {percent: 20, interval: 10s}
        minRetryRate: {count: 10, interval: 1s}

What is left out takes the CRD's defaults (20, 10s; 10 per 1s). Of two policies setting
one Service's retryConstraint, the oldest (creationTimestamp, then namespace/name, as
Gateway API's policy attachment orders conflicts, GEP-713) wins; the other is Conflicted
for it. Objects here are already validated (backendtrafficpolicyparse.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .durations import parse_duration

GROUP = "gateway.networking.x-k8s.io"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "XBackendTrafficPolicy"

# The CRD's fields by where they stand, known but not carried: refused by name.
NOT_IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": ("sessionPersistence",),
    "retryConstraint": (),
    "budget": (),
    "minRetryRate": (),
}

IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": ("targetRefs", "retryConstraint"),
    "retryConstraint": ("budget", "minRetryRate"),
    "budget": ("percent", "interval"),
    "minRetryRate": ("count", "interval"),
}

# The CRD's defaults and bounds (BudgetDetails, RequestRate).
DEFAULT_PERCENT = 20
DEFAULT_INTERVAL = "10s"
DEFAULT_MIN_COUNT = 10
DEFAULT_MIN_INTERVAL = "1s"
MIN_BUDGET_INTERVAL_S, MAX_BUDGET_INTERVAL_S = 1.0, 3600.0   # "between 1s and 1h"
MAX_MIN_INTERVAL_S = 3600.0                                    # "not 0s, at most 1h"
MAX_MIN_COUNT = 1_000_000
MAX_TARGET_REFS = 16


@dataclass(frozen=True)
class TargetRef:
    """A LocalPolicyTargetReference: a Service of the policy's namespace."""

    group: str                      # ""
    kind: str                       # "Service"
    name: str


@dataclass(frozen=True)
class RetryConstraint:
    """retryConstraint as written: a field left out (None) takes the CRD's default."""

    budget_given: bool = False      # `budget:` written (for the round trip)
    percent: int | None = None
    interval: str | None = None
    min_rate_given: bool = False    # `minRetryRate:` written
    min_count: int | None = None
    min_interval: str | None = None

    def engine(self) -> dict[str, float | int]:
        """RouteTable.set_retry_budget's options: the values in force, defaults filled."""
        return {"percent": DEFAULT_PERCENT if self.percent is None else self.percent,
                "interval_s": parse_duration(self.interval or DEFAULT_INTERVAL),
                "min_retries": DEFAULT_MIN_COUNT if self.min_count is None else self.min_count,
                "min_retry_interval_s": parse_duration(self.min_interval or DEFAULT_MIN_INTERVAL)}


@dataclass(frozen=True)
class BackendTrafficPolicySpec:
    target_refs: tuple[TargetRef, ...]
    retry_constraint: RetryConstraint | None = None   # None: sets no budget
