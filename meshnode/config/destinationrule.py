"""Istio's DestinationRule as meshnode takes it: the spec model, and which fields are taken.

A user's DestinationRule YAML applies unchanged (networking.istio.io v1, v1beta1 or
v1alpha3). meshnode implements its load balancing (trafficPolicy.loadBalancer.simple,
for the whole service and per port); every other field Istio defines is refused by name
(NOT_IMPLEMENTED) rather than accepted and ignored, so a rule never seems to do what it
does not. The list shrinks as the data plane learns each field. Objects here are already
validated (destinationruleparse.py).
"""
from __future__ import annotations

from dataclasses import dataclass

API_GROUP = "networking.istio.io"
API_VERSIONS = (f"{API_GROUP}/v1", f"{API_GROUP}/v1beta1", f"{API_GROUP}/v1alpha3")
"""The versions Istio serves the kind in, all with the same schema."""

BALANCERS = {
    "UNSPECIFIED": "p2c-ewma",      # Istio leaves the choice to the mesh: meshnode's default
    "ROUND_ROBIN": "round-robin",
    "RANDOM": "random",
    "LEAST_REQUEST": "least-request",
    "LEAST_CONN": "least-request",  # Istio's deprecated name of LEAST_REQUEST
}
"""loadBalancer.simple -> the engine's balancer (fastpath RouteTable.add_service)."""

DEFAULT_BALANCER = "p2c-ewma"
"""A service port no DestinationRule balances: peak-EWMA P2C, as Linkerd balances."""

REFUSED_SIMPLE = {
    "PASSTHROUGH": "sends to the address the caller asked for, which a mesh Service "
                   "here never is; not implemented",
}

# Istio's fields by where they stand, known but not implemented yet: refused by name.
NOT_IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": ("subsets", "exportTo", "workloadSelector"),
    "trafficPolicy": ("connectionPool", "outlierDetection", "tls", "tunnel", "proxyProtocol",
                      "retryBudget"),
    "loadBalancer": ("consistentHash", "localityLbSetting", "warmupDurationSecs", "warmup"),
    "portLevelSettings": ("connectionPool", "outlierDetection", "tls"),
}

IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": ("host", "trafficPolicy"),
    "trafficPolicy": ("loadBalancer", "portLevelSettings"),
    "loadBalancer": ("simple",),
    "portLevelSettings": ("port", "loadBalancer"),
}


@dataclass(frozen=True)
class PortPolicy:
    """trafficPolicy.portLevelSettings[]: a service port's own load balancing."""

    port: int
    simple: str | None = None       # loadBalancer.simple as written; None: not given


@dataclass(frozen=True)
class DestinationRuleSpec:
    host: str                       # as written
    service: str                    # the Service it names, in the rule's namespace
    api_version: str = API_VERSIONS[0]
    has_policy: bool = False        # a trafficPolicy is given (several rules: the oldest's)
    simple: str | None = None       # trafficPolicy.loadBalancer.simple; None: not given
    ports: tuple[PortPolicy, ...] = ()

    def balancer(self, port: int) -> str:
        """The engine balancer for service port `port`: its portLevelSettings entry's
        loadBalancer when it has one, else the rule's, else the default."""
        for policy in self.ports:
            if policy.port == port and policy.simple is not None:
                return BALANCERS[policy.simple]
        return BALANCERS[self.simple] if self.simple is not None else DEFAULT_BALANCER
