"""Which balancer each service port gets: the DestinationRules compiled for the snapshot.

A service port's balancer is its DestinationRule's portLevelSettings entry's
loadBalancer, else the rule's trafficPolicy.loadBalancer, else meshnode's default
(peak-EWMA P2C): Istio's order. A rule for a Service that does not exist is inert, as in
Istio, and takes effect when the Service comes.

Several rules for one host: Istio merges them, and of their top-level trafficPolicy the
oldest rule's wins (creationTimestamp, then namespace and name, as Istio orders
configs); the later ones' are dropped. Istio merges their subsets too; subsets route
nothing here (destinationrulehash.py), so a later rule's change nothing either.

A port whose loadBalancer is consistentHash gets the engine's "ring-hash" or "maglev"
balancer, and its hash policy (hash_for) goes into the snapshot beside it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .destinationrule import DEFAULT_BALANCER
from .model import DestinationRule, Resource, Service


def _age(rule: DestinationRule) -> tuple[bool, str, str, str]:
    # Not stored yet (no creation time): after every stored one, as it would be once applied.
    return (not rule.created, rule.created, rule.namespace, rule.name)


def rules_by_service(resources: Iterable[Resource]) -> dict[str, DestinationRule]:
    """"namespace/name" -> the rule whose trafficPolicy governs that Service: the oldest
    with one."""
    out: dict[str, DestinationRule] = {}
    rules = sorted((r for r in resources if isinstance(r, DestinationRule)), key=_age)
    for rule in rules:
        if rule.spec.has_policy:
            out.setdefault(rule.spec.service, rule)
    return out


def hash_for(service: Service, port: int, rules: dict[str, DestinationRule]
             ) -> dict[str, Any] | None:
    """RouteTable.set_hash()'s arguments for `service`'s port `port`; None: it does not hash."""
    rule = rules.get(f"{service.namespace}/{service.name}")
    policy = rule.spec.hash_policy(port) if rule is not None else None
    return policy.engine() if policy is not None else None     # (None: no key either)


def outlier_for(service: Service, rules: dict[str, DestinationRule]) -> dict[str, Any] | None:
    """RouteTable.set_outlier()'s arguments for each port of `service`; None: its rule
    (the oldest with a trafficPolicy) detects no outliers."""
    rule = rules.get(f"{service.namespace}/{service.name}")
    outlier = rule.spec.outlier if rule is not None else None
    return outlier.engine() if outlier is not None else None


def pool_for(service: Service, rules: dict[str, DestinationRule]) -> dict[str, Any] | None:
    """RouteTable.set_connection_pool()'s arguments (the node's, before a worker takes
    its share) for each port of `service`; None: its rule sets no connectionPool."""
    rule = rules.get(f"{service.namespace}/{service.name}")
    pool = rule.spec.pool if rule is not None else None
    return pool.engine() if pool is not None else None


def balancer_for(service: Service, port: int, rules: dict[str, DestinationRule]) -> str:
    """The engine balancer (fastpath RouteTable.add_service) for `service`'s port `port`."""
    rule = rules.get(f"{service.namespace}/{service.name}")
    return rule.spec.balancer(port) if rule is not None else DEFAULT_BALANCER
