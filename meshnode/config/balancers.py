"""Which balancer each service port gets: the DestinationRules compiled for the snapshot.

A service port's balancer is its DestinationRule's portLevelSettings entry's
loadBalancer, else the rule's trafficPolicy.loadBalancer, else meshnode's default
(peak-EWMA P2C): Istio's order. A rule for a Service that does not exist is inert, as in
Istio, and takes effect when the Service comes.

Several rules for one host: Istio merges them, the oldest rule's trafficPolicy winning
over later ones'. The store keeps no creation time for this kind yet, so meshnode
cannot tell which is oldest: a second rule with a trafficPolicy for a host is refused,
naming the first (rule_problems), until it can.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from .destinationrule import DEFAULT_BALANCER
from .errors import Problem
from .model import DestinationRule, Resource, Service


def rules_by_service(resources: Iterable[Resource]) -> dict[str, DestinationRule]:
    """"namespace/name" -> the rule with a trafficPolicy for that Service (the first by
    namespace and name, when rule_problems was not asked)."""
    out: dict[str, DestinationRule] = {}
    rules = sorted((r for r in resources if isinstance(r, DestinationRule)),
                   key=lambda r: (r.namespace, r.name))
    for rule in rules:
        if rule.spec.has_policy:
            out.setdefault(rule.spec.service, rule)
    return out


def rule_problems(resources: Sequence[Resource]) -> list[Problem]:
    """A second rule with a trafficPolicy for a host one already governs."""
    problems: list[Problem] = []
    first: dict[str, DestinationRule] = {}
    for rule in resources:
        if not isinstance(rule, DestinationRule) or not rule.spec.has_policy:
            continue
        if rule.spec.service not in first:
            first[rule.spec.service] = rule
            continue
        other = first[rule.spec.service]
        where = f" ({other.source})" if other.source else ""
        problems.append(Problem(
            rule.source, rule.label, "spec.trafficPolicy",
            f"{other.label}{where} has a trafficPolicy for {rule.spec.service} already: "
            "Istio would merge the rules, the oldest's trafficPolicy winning; meshnode "
            "does not keep rules' creation times yet: give the Service one rule"))
    return problems


def balancer_for(service: Service, port: int, rules: dict[str, DestinationRule]) -> str:
    """The engine balancer (fastpath RouteTable.add_service) for `service`'s port `port`."""
    rule = rules.get(f"{service.namespace}/{service.name}")
    return rule.spec.balancer(port) if rule is not None else DEFAULT_BALANCER
