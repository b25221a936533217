"""RateLimitPolicies into what a node's workers enforce (snapshot["rate_limits"]), and each
policy's status.

One entry per limit and target that resolves (a Service or HTTPRoute of the policy's
namespace; an HTTPRoute's rule named by sectionName):

    {"policy": "NS/NAME", "limit": "per-caller" | "0" (its name, else its index),
     "id": "NS/NAME/LIMIT" (the RateLimit-Policy field's and the metrics' name),
     "key": "NS/NAME/LIMIT/KIND/TARGET[/SECTION]" (its buckets' key: the same on every
             worker; a new target or limit starts full),
     "direction": "inbound" | "outbound",
     "service": "NS/NAME" | None, "route": "NS/NAME" | None, "rule": "SECTION" | None,
     "tokens": 10, "interval_s": 1.0, "burst": 20,
     "by": "none" | "principal" | "source_ip", "max_keys": 1024}

Sorted by policy, limit, then target, so equal resources give an equal snapshot.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .httproute import CONTROLLER_NAME
from .model import HTTPRoute, RateLimitPolicy, Resource, Service
from .ratelimit import DEFAULT_MAX_KEYS, RateTargetRef


def _missing(policy: RateLimitPolicy, ref: RateTargetRef, services: set[tuple[str, str]],
             routes: dict[tuple[str, str], HTTPRoute]) -> str | None:
    """Why `ref` names nothing (None: it resolves)."""
    where = f"{policy.namespace}/{ref.name}"
    if not ref.is_route:
        return None if (policy.namespace, ref.name) in services else f"Service {where} does not exist"
    route = routes.get((policy.namespace, ref.name))
    if route is None:
        return f"HTTPRoute {where} does not exist"
    if ref.section_name is not None and ref.section_name not in {r.name for r in route.spec.rules}:
        return f"HTTPRoute {where} has no rule named {ref.section_name!r}"
    return None


def _targets(resources: Sequence[Resource]) -> tuple[set[tuple[str, str]], dict[tuple[str, str], HTTPRoute]]:
    return ({(r.namespace, r.name) for r in resources if isinstance(r, Service)},
            {(r.namespace, r.name): r for r in resources if isinstance(r, HTTPRoute)})


def rate_limits(resources: Iterable[Resource]) -> list[dict[str, Any]]:
    """snapshot["rate_limits"] (module docstring)."""
    resources = list(resources)
    services, routes = _targets(resources)
    policies = sorted((r for r in resources if isinstance(r, RateLimitPolicy)),
                      key=lambda p: (p.namespace, p.name))
    out = []
    for policy in policies:
        name = f"{policy.namespace}/{policy.name}"
        for i, limit in enumerate(policy.spec.limits):
            label = limit.name or str(i)
            for ref in policy.spec.target_refs:
                if _missing(policy, ref, services, routes) is not None:
                    continue
                target = f"{policy.namespace}/{ref.name}"
                out.append({
                    "policy": name, "limit": label, "id": f"{name}/{label}",
                    "key": "/".join((name, label, ref.kind, target, *filter(None, (ref.section_name,)))),
                    "direction": "outbound" if policy.spec.outbound else "inbound",
                    "service": None if ref.is_route else target,
                    "route": target if ref.is_route else None,
                    "rule": ref.section_name,
                    **limit.bucket(), "by": limit.by(),
                    "max_keys": limit.max_keys or DEFAULT_MAX_KEYS,
                })
    return out


def rate_limit_status(policy: RateLimitPolicy, resources: Sequence[Resource]) -> dict[str, Any]:
    """status.ancestors of `policy` under the config `resources` (GEP-713): each target
    Accepted, or TargetNotFound saying what is missing."""
    services, routes = _targets(resources)
    ancestors = []
    for ref in policy.spec.target_refs:
        why = _missing(policy, ref, services, routes)
        where = "the caller's node" if policy.spec.outbound else "the destination's node"
        condition = {"type": "Accepted", "status": "True" if why is None else "False",
                     "reason": "Accepted" if why is None else "TargetNotFound",
                     "message": why or f"{len(policy.spec.limits)} limit(s) enforced at {where}"}
        ancestor = {"group": ref.group, "kind": ref.kind, "name": ref.name, "namespace": policy.namespace,
                    **({"sectionName": ref.section_name} if ref.section_name else {})}
        ancestors.append({"ancestorRef": ancestor, "controllerName": CONTROLLER_NAME,
                          "conditions": [condition]})
    return {"ancestors": ancestors}
