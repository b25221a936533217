"""Which XBackendTrafficPolicy sets each Service's retry budget, and each policy's status.

Policies are Direct (GEP-713): each targetRef names a Service of the policy's namespace.
Of the policies that set a retryConstraint for one Service, the oldest (creationTimestamp,
then name: Gateway API's conflict order) wins; the others are Conflicted for that
Service. Nobody stores a status: `meshnode get` computes it from the resources in force,
one PolicyAncestorStatus per targetRef (the ancestor is the Service itself, as a mesh
has no Gateway), with the Accepted condition:

- True, Accepted: the policy's budget governs retries toward the Service (or, without
  a retryConstraint, it sets nothing and conflicts with nothing);
- False, TargetNotFound: no such Service;
- False, Conflicted: an older policy sets that Service's budget.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .httproute import CONTROLLER_NAME
from .model import Resource, Service, XBackendTrafficPolicy

ServiceKey = tuple[str, str]   # (namespace, name)


def _age(policy: XBackendTrafficPolicy) -> tuple[str, str]:
    # An unstamped policy ("": not stored yet) sorts as the newest.
    return (policy.created or "\uffff", policy.name)


def budget_policies(resources: Iterable[Resource]) -> dict[ServiceKey, XBackendTrafficPolicy]:
    """The policy whose retryConstraint governs each Service that one targets (whether
    the Service exists or not)."""
    winners: dict[ServiceKey, XBackendTrafficPolicy] = {}
    policies = sorted((r for r in resources
                       if isinstance(r, XBackendTrafficPolicy) and r.spec.retry_constraint is not None),
                      key=_age)
    for policy in policies:
        for ref in policy.spec.target_refs:
            winners.setdefault((policy.namespace, ref.name), policy)
    return winners


def retry_budgets(resources: Iterable[Resource]) -> dict[ServiceKey, dict[str, float | int]]:
    """RouteTable.set_retry_budget's options for each Service a policy governs."""
    return {key: policy.spec.retry_constraint.engine()  # type: ignore[union-attr]
            for key, policy in budget_policies(resources).items()}


def _accepted(ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": "Accepted", "status": "True" if ok else "False", "reason": reason,
            "message": message}


def policy_status(policy: XBackendTrafficPolicy, resources: Sequence[Resource]) -> dict[str, Any]:
    """status.ancestors of `policy` under the config `resources`."""
    services = {(r.namespace, r.name) for r in resources if isinstance(r, Service)}
    winners = budget_policies(resources)
    ancestors = []
    for ref in policy.spec.target_refs:
        key = (policy.namespace, ref.name)
        winner = winners.get(key)
        if key not in services:
            condition = _accepted(False, "TargetNotFound",
                                  f"Service {policy.namespace}/{ref.name} does not exist")
        elif policy.spec.retry_constraint is not None and winner is not None and winner.key != policy.key:
            condition = _accepted(False, "Conflicted",
                                  f"{winner.label}, older, sets the retry budget of "
                                  f"Service {policy.namespace}/{ref.name}")
        elif policy.spec.retry_constraint is None:
            condition = _accepted(True, "Accepted", "no retryConstraint: the Service keeps "
                                                    "the default retry budget unless another policy sets one")
        else:
            condition = _accepted(True, "Accepted", "the retry budget of retries toward "
                                                    f"Service {policy.namespace}/{ref.name}")
        ancestors.append({"ancestorRef": {"group": "", "kind": "Service", "name": ref.name,
                                          "namespace": policy.namespace},
                          "controllerName": CONTROLLER_NAME, "conditions": [condition]})
    return {"ancestors": ancestors}
