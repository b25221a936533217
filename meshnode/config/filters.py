"""What an HTTPRoute rule's ExtensionRef filter names: a FaultInjection of the route's namespace, or why not.

The Gateway API (HTTPRouteFilter): a filter whose reference cannot be resolved is not
skipped; the requests it would have processed get an error answer (meshnode's: 500),
and the route's ResolvedRefs condition is False, with reason InvalidKind for a group
or kind the implementation has no filter of, BackendNotFound for an object that does
not exist. Resolved against the config in force, so a FaultInjection applied, changed
or deleted later changes what the route does without the route being applied again.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .fault import GROUP, KIND
from .httproute import ExtensionRef, RouteRule
from .model import FaultInjection, Resource

FaultInjections = dict[tuple[str, str], FaultInjection]


def faults_of(resources: Iterable[Resource]) -> FaultInjections:
    """The FaultInjections of a config by (namespace, name)."""
    return {(r.namespace, r.name): r for r in resources if isinstance(r, FaultInjection)}


@dataclass(frozen=True)
class FilterResolution:
    fault: FaultInjection | None  # when it resolves
    reason: str  # ResolvedRefs, or the condition's reason: InvalidKind, BackendNotFound
    message: str


def resolve_filter(ref: ExtensionRef, namespace: str, faults: FaultInjections) -> FilterResolution:
    """Resolve an ExtensionRef of a route in `namespace` (a LocalObjectReference)."""
    if ref.group != GROUP or ref.kind != KIND:
        return FilterResolution(None, "InvalidKind", f"kind {ref.kind!r} of group {ref.group!r} is not a "
                                                     f"filter meshnode has: an ExtensionRef names a {KIND} "
                                                     f"(group {GROUP})")
    found = faults.get((namespace, ref.name))
    if found is None:
        return FilterResolution(None, "BackendNotFound", f"{KIND} {namespace}/{ref.name} does not exist")
    return FilterResolution(found, "ResolvedRefs", "")


def rule_fault(rule: RouteRule, namespace: str, faults: FaultInjections) -> dict[str, Any] | None:
    """A rule's "fault" in snapshot["http_routes"] (routes.py): None without an
    ExtensionRef; {"unresolved": True} when it names nothing (every request 500); else
    the chances and values the data plane draws (fastpath RouteTable.add_route_fault)."""
    ref = next((f.extension_ref for f in rule.filters if f.extension_ref is not None), None)
    if ref is None:
        return None
    found = resolve_filter(ref, namespace, faults).fault
    if found is None:
        return {"unresolved": True}
    delay, abort = found.spec.delay, found.spec.abort
    return {"delay_s": delay.fixed_delay_s if delay else 0.0,
            "delay_percent": (delay.percentage or 0.0) if delay else 0.0,
            "abort_status": abort.http_status if abort else 0,
            "abort_percent": (abort.percentage or 0.0) if abort else 0.0,
            "unresolved": False}
