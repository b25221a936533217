"""Istio's DestinationRule as meshnode takes it: the spec model, and which fields are taken.

A user's DestinationRule YAML applies unchanged (networking.istio.io v1, v1beta1 or
v1alpha3). meshnode implements its load balancing (trafficPolicy.loadBalancer simple
or consistentHash, for the whole service and per port), its outlier detection
(trafficPolicy.outlierDetection, destinationruleoutlier.py), its connection pool limits
(trafficPolicy.connectionPool, destinationrulepool.py) and its subsets
(destinationrulehash.py says what they do here); every other field Istio defines is refused by name
(NOT_IMPLEMENTED) rather than accepted and ignored, so a rule never seems to do what it
does not. The list shrinks as the data plane learns each field. Objects here are already
validated (destinationruleparse.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # (it checks its fields with validate, which needs this module's model)
    from .destinationrulehash import ConsistentHash, Subset
    from .destinationruleoutlier import OutlierDetection
    from .destinationrulepool import ConnectionPool

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
    "spec": ("exportTo", "workloadSelector"),
    "trafficPolicy": ("tls", "tunnel", "proxyProtocol", "retryBudget"),
    "loadBalancer": ("localityLbSetting", "warmupDurationSecs", "warmup"),
    "portLevelSettings": ("connectionPool", "outlierDetection", "tls"),
}

IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "spec": ("host", "trafficPolicy", "subsets"),
    "trafficPolicy": ("loadBalancer", "portLevelSettings", "outlierDetection", "connectionPool"),
    "loadBalancer": ("simple", "consistentHash"),
    "portLevelSettings": ("port", "loadBalancer"),
}


@dataclass(frozen=True)
class PortPolicy:
    """trafficPolicy.portLevelSettings[]: a service port's own load balancing."""

    port: int
    simple: str | None = None       # loadBalancer.simple as written; None: not given
    hash: ConsistentHash | None = None  # loadBalancer.consistentHash; None: not given


@dataclass(frozen=True)
class DestinationRuleSpec:
    host: str                       # as written
    service: str                    # the Service it names, in the rule's namespace
    api_version: str = API_VERSIONS[0]
    has_policy: bool = False        # a trafficPolicy is given (several rules: the oldest's)
    simple: str | None = None       # trafficPolicy.loadBalancer.simple; None: not given
    ports: tuple[PortPolicy, ...] = ()
    hash: ConsistentHash | None = None  # trafficPolicy.loadBalancer.consistentHash
    subsets: tuple[Subset, ...] = ()
    outlier: OutlierDetection | None = None  # trafficPolicy.outlierDetection (every port)
    pool: ConnectionPool | None = None  # trafficPolicy.connectionPool (each port its own)

    def _load_balancer(self, port: int) -> tuple[str | None, ConsistentHash | None]:
        """Service port `port`'s loadBalancer (simple, consistentHash): its
        portLevelSettings entry's when it has one, else the rule's."""
        for policy in self.ports:
            if policy.port == port and (policy.simple is not None or policy.hash is not None):
                return policy.simple, policy.hash
        return self.simple, self.hash

    def balancer(self, port: int) -> str:
        """The engine balancer for service port `port` (default: DEFAULT_BALANCER)."""
        simple, hashed = self._load_balancer(port)
        if hashed is not None:
            return hashed.table
        return BALANCERS[simple] if simple is not None else DEFAULT_BALANCER

    def hash_policy(self, port: int) -> ConsistentHash | None:
        """Service port `port`'s consistentHash, if its balancer hashes."""
        return self._load_balancer(port)[1]
