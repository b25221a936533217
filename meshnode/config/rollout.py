"""Rollout (meshnode.io/v1alpha1): a canary's progressive rollout, in Flagger Canary's shape.

    apiVersion: meshnode.io/v1alpha1
    kind: Rollout
    metadata: {name: backend, namespace: demo}
    spec:
      targetRef: {kind: Service, name: backend}   # the Service whose traffic moves
      service: {port: 8080}                       # its port the rollout routes
      stable: {name: backend-v1}                  # the Service that serves it now
      canary: {name: backend-v2}                  # the Service that takes over
      analysis:
        interval: 1m          # a check, and at most one step, per interval
        threshold: 5          # failed checks before the rollback
        maxWeight: 50         # the canary's weight when it is promoted
        stepWeight: 10        # or stepWeights: [1, 5, 10, 50]
        minRequests: 20       # meshnode's: fewer canary requests in an interval fail it
        metrics:
        - name: request-success-rate    # non-5xx share of the canary's answers, in %
          thresholdRange: {min: 99}
          interval: 1m
        - name: request-duration        # the canary's p99, in ms
          thresholdRange: {max: 500}
          interval: 30s
        webhooks:
        - {name: smoke, type: pre-rollout, url: "http://127.0.0.1:9000/", timeout: 5s}

The controller (meshnode.rollout) routes the target's traffic with an HTTPRoute of its
own (ROUTE_PREFIX + the rollout's name), moving weight from `stable` to `canary` step
by step. Flagger's analysis fields that meshnode does not implement (A/B `match`,
`iterations`, mirroring, session affinity, promotion by steps, alerts, the readiness
thresholds of Deployments it has none of) are refused by name (rolloutparse.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

API_VERSION = "meshnode.io/v1alpha1"
KIND = "Rollout"

ROUTE_PREFIX = "rollout-"
"""The controller's HTTPRoute for a rollout is named ROUTE_PREFIX + its name, in its namespace."""
OWNER_LABEL = "meshnode.io/rollout"
"""The label on that HTTPRoute naming its rollout: a route with it is the controller's."""

SUCCESS_RATE = "request-success-rate"
DURATION = "request-duration"
METRICS = (SUCCESS_RATE, DURATION)
"""Flagger's two builtin metrics, computed from the node's own figures."""

WEBHOOK_TYPES = ("pre-rollout", "rollout", "confirm-promotion", "post-rollout")

DEFAULT_INTERVAL = "1m"
DEFAULT_THRESHOLD = 5       # Flagger's examples' value; its CRD has no default
DEFAULT_MAX_WEIGHT = 50     # Flagger's default maxWeight
DEFAULT_STEP_WEIGHT = 10    # Flagger's default stepWeight
DEFAULT_MIN_REQUESTS = 1    # Flagger: "no values found" (no traffic) fails a check
DEFAULT_WEBHOOK_TIMEOUT = "10s"


def route_name(rollout: str) -> str:
    return ROUTE_PREFIX + rollout


@dataclass(frozen=True)
class MetricCheck:
    """analysis.metrics[]: a builtin metric over `interval` (None: the analysis's),
    within [min, max] (None: unbounded)."""

    name: str
    min: float | None = None
    max: float | None = None
    interval: str | None = None


@dataclass(frozen=True)
class Webhook:
    """analysis.webhooks[]: POSTed Flagger's payload (name, namespace, phase, checksum,
    metadata) as JSON; a 2xx answer within `timeout` passes."""

    name: str
    type: str
    url: str
    timeout: str = DEFAULT_WEBHOOK_TIMEOUT
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Analysis:
    interval: str = DEFAULT_INTERVAL
    threshold: int = DEFAULT_THRESHOLD
    max_weight: int = DEFAULT_MAX_WEIGHT
    step_weight: int = DEFAULT_STEP_WEIGHT
    step_weights: tuple[int, ...] = ()   # when given, the weights in order (Flagger's)
    min_requests: int = DEFAULT_MIN_REQUESTS
    metrics: tuple[MetricCheck, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    # Which fields the document wrote, so `get -o yaml` shows it as written.
    written: tuple[str, ...] = field(default=(), compare=False)

    def weights(self) -> tuple[int, ...]:
        """The canary's weight at each step, the last its maxWeight."""
        if self.step_weights:
            return self.step_weights
        steps = list(range(self.step_weight, self.max_weight, self.step_weight))
        return (*steps, self.max_weight)

    @property
    def promote_weight(self) -> int:
        return self.weights()[-1]


@dataclass(frozen=True)
class RolloutSpec:
    target: str          # the Service whose traffic moves (the route's parent)
    port: int            # its port
    stable: str          # the Service serving it before
    canary: str          # the Service taking it over
    analysis: Analysis = Analysis()
    skip_analysis: bool = False   # Flagger's skipAnalysis: promote at once, no checks
