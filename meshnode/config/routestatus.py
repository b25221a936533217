"""An HTTPRoute's status, as Gateway API reports it (RouteParentStatus), computed from the stored config.

Nobody stores a status: `meshnode get` computes it from the resources in force, so it
always says what the current snapshot does with the route. Per parentRef:

- Accepted: True (reason Accepted), or False with NoMatchingParent (the Service, or the
  port or sectionName the parentRef names, does not exist) or NotAllowedByListeners (the
  ports are declared TCP: no HTTP route applies to an opaque port);
- ResolvedRefs: True, or False with the reason of the first backendRef or ExtensionRef
  filter that does not resolve (InvalidKind, BackendNotFound, UnsupportedProtocol) and a
  message naming each. The share of requests such a backendRef would have had is
  answered 500; so is every request of a rule whose filter does not resolve.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .filters import FaultInjections, faults_of, resolve_filter
from .httproute import CONTROLLER_NAME
from .load import to_dict
from .authzstatus import authorization_status, peer_status
from .model import AuthorizationPolicy, HTTPRoute, PeerAuthentication, RateLimitPolicy, Resource, XBackendTrafficPolicy
from .ratelimitcompile import rate_limit_status
from .retrybudgets import policy_status
from .routeparse import parent_ref_dict
from .routes import Services, attach, resolve, services_of


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def _resolved_refs(route: HTTPRoute, services: Services, faults: FaultInjections) -> dict[str, str]:
    failed: list[tuple[str, Any]] = [
        (f"spec.rules[{i}].backendRefs[{j}]", resolve(ref, route.namespace, services))
        for i, rule in enumerate(route.spec.rules) for j, ref in enumerate(rule.backend_refs)]
    failed += [(f"spec.rules[{i}].filters[{k}].requestMirror.backendRef",
                resolve(f.mirror.backend, route.namespace, services))
               for i, rule in enumerate(route.spec.rules) for k, f in enumerate(rule.filters) if f.mirror]
    failed = [(at, r) for at, r in failed if r.service is None]
    failed += [(f"spec.rules[{i}].filters[{j}].extensionRef", r)
               for i, rule in enumerate(route.spec.rules) for j, f in enumerate(rule.filters)
               if f.extension_ref is not None
               and (r := resolve_filter(f.extension_ref, route.namespace, faults)).fault is None]
    if not failed:
        return _condition("ResolvedRefs", True, "ResolvedRefs", "every backendRef resolves to a Service port")
    return _condition("ResolvedRefs", False, failed[0][1].reason,
                      "; ".join(f"{at}: {r.message}" for at, r in failed))


def route_status(route: HTTPRoute, resources: Sequence[Resource]) -> dict[str, Any]:
    """status.parents of `route` under the config `resources`."""
    services = services_of(resources)
    refs = _resolved_refs(route, services, faults_of(resources))
    parents = []
    for ref in route.spec.parent_refs:
        attachment = attach(route, ref, services)
        accepted = _condition("Accepted", attachment.reason == "Accepted", attachment.reason,
                              attachment.message)
        parents.append({"parentRef": parent_ref_dict(ref), "controllerName": CONTROLLER_NAME,
                        "conditions": [accepted, refs]})
    return {"parents": parents}


def with_status(resource: Resource, resources: Sequence[Resource]) -> dict[str, Any]:
    """to_dict of `resource`, with the status of an HTTPRoute, an XBackendTrafficPolicy,
    an AuthorizationPolicy, a PeerAuthentication or a RateLimitPolicy under the config
    `resources`."""
    out = to_dict(resource)
    if isinstance(resource, HTTPRoute):
        out["status"] = route_status(resource, resources)
    elif isinstance(resource, XBackendTrafficPolicy):
        out["status"] = policy_status(resource, resources)
    elif isinstance(resource, AuthorizationPolicy):
        out["status"] = authorization_status(resource, resources)
    elif isinstance(resource, PeerAuthentication):
        out["status"] = peer_status(resource, resources)
    elif isinstance(resource, RateLimitPolicy):
        out["status"] = rate_limit_status(resource, resources)
    return out
