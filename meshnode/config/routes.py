"""Route sets: the HTTPRoutes of a config compiled into what the data plane matches (snapshot["http_routes"]).

A route set governs requests to one port of one Service from one group of callers:

    {"service": "NS/NAME", "port": 8080, "consumer_namespace": None | "ns",
     "entries": [{"path": {"type", "value"}, "method": "GET" | None,
                  "headers": [{"type", "name", "value"}], "query": [...], "rule": 0}, ...],
     "rules": [{"route": "NS/NAME", "index": 0, "name": "rule" | None,
                "backends": [{"service": "NS/NAME" | None, "port": 8080 | None, "weight": 90,
                              ("request_headers": ..., "response_headers": ...: a ref's own
                               filters, only when it has some)}],
                "request_headers": {"set": [[n, v]], "add": [[n, v]], "remove": [n]} | None,
                "response_headers": ... | None,
                "redirect": {"status", "scheme", "hostname", "port", "path", "prefix"} | None,
                "rewrite": {"hostname", "path", "prefix"} | None,
                "timeout_s": float | None, "backend_timeout_s": float | None,
                "mirrors": [{"service": "NS/NAME", "port": 8080, "numerator": 1,
                             "denominator": 100}],
                "retry": {"codes": [500], "attempts": 3, "backoff_s": 0.1} | None,
                "fault": None | {"delay_s", "delay_percent", "abort_status", "abort_percent",
                                 "unresolved"} (filters.py)}, ...]}

The data plane takes the first entry whose match holds (none: 404); an entry's rule
picks a backend by weight (none: 500, and an unresolved one's share is 500 too), or
answers with its redirect. A backend's header modifiers apply after the rule's when it is
chosen. A redirect's port is settled here (routefilters.py, redirect_spec).

Who a set governs (GAMMA, GEP-1294 "Namespace boundaries" and "Multiple routes for a
Service"): a route in its parent Service's namespace is a producer route, and the
producer set serves every caller; a route in another namespace is a consumer route, and
the set of a namespace's consumer routes serves callers in that namespace instead of the
producer set. Routes merge only within their group. A parentRef with a port governs that
port; without one, every port of the Service but those declared TCP (GEP-1294 "Ports").

Precedence (HTTPRouteRule.matches in apis/v1/httproute_types.go), across every rule of
every route in a set, continuing on ties: an Exact path; a PathPrefix with more
characters; a method; more header matches; more query parameter matches; then the
oldest route (creationTimestamp); then "namespace/name" alphabetically; then the rule's
and the match's order in the route. A RegularExpression path's rank is the
implementation's to choose: meshnode ranks it after every Exact and PathPrefix path,
longer patterns first, as Istio does.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .filters import FaultInjections, faults_of, rule_fault
from .httproute import CORE_GROUPS, BackendRef, HeaderModifier, ParentRef, RouteFilter, RouteMatch, RouteRule, ValueMatch
from .model import HTTPRoute, Resource, Service, ServicePort
from .retryparse import retry_snapshot
from .routefilters import redirect_spec, rewrite_spec

_PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}

Services = dict[tuple[str, str], Service]


def services_of(resources: Iterable[Resource]) -> Services:
    """The Services of a config by (namespace, name)."""
    return {(r.namespace, r.name): r for r in resources if isinstance(r, Service)}


def _ports_text(ports: Iterable[ServicePort]) -> str:
    return ", ".join(f"{p.port} ({p.name})" for p in ports) or "none"


@dataclass(frozen=True)
class Attachment:
    """How one parentRef of a route attaches: the ports it governs, or why none.

    `reason` is the Accepted condition's: Accepted, NoMatchingParent (no such Service,
    or no port as the parentRef names it), or NotAllowedByListeners (only TCP ports).
    """

    service: str  # "ns/name"
    ports: tuple[int, ...]
    consumer_namespace: str | None  # None: a producer route
    reason: str
    message: str


def attach(route: HTTPRoute, ref: ParentRef, services: Services) -> Attachment:
    namespace = ref.namespace or route.namespace
    label = f"{namespace}/{ref.name}"
    consumer = None if namespace == route.namespace else route.namespace
    service = services.get((namespace, ref.name))
    if service is None:
        return Attachment(label, (), consumer, "NoMatchingParent", f"Service {label} does not exist")
    chosen = [p for p in service.spec.ports
              if (ref.port is None or p.port == ref.port)
              and (ref.section_name is None or p.name == ref.section_name)]
    if not chosen:
        parts = (f"{ref.port}" if ref.port else "", f"named {ref.section_name!r}" if ref.section_name else "")
        wanted = " ".join(part for part in parts if part)
        return Attachment(label, (), consumer, "NoMatchingParent",
                          f"Service {label} has no port {wanted} (its ports: "
                          f"{_ports_text(service.spec.ports)})")
    http = tuple(p.port for p in chosen if p.protocol != "TCP")
    if not http:
        return Attachment(label, (), consumer, "NotAllowedByListeners",
                          f"port {_ports_text(chosen)} of Service {label} is declared protocol TCP: "
                          "an HTTPRoute does not apply to an opaque port")
    ports = ", ".join(map(str, http))
    if consumer is None:
        message = (f"producer route: governs requests to Service {label} port {ports} from every "
                   "namespace that has no consumer routes of its own for it")
    else:
        message = (f"consumer route: governs requests from namespace {consumer} to Service {label} "
                   f"port {ports}, in place of the Service's producer routes")
    return Attachment(label, http, consumer, "Accepted", message)


@dataclass(frozen=True)
class Resolution:
    """Where a backendRef leads: a Service, or why not (the ResolvedRefs condition's
    reason: InvalidKind, BackendNotFound or UnsupportedProtocol)."""

    service: str | None  # "ns/name" when it resolves
    reason: str
    message: str


def resolve(ref: BackendRef, namespace: str, services: Services) -> Resolution:
    """Resolve a backendRef of a route in `namespace`.

    A reference to another namespace needs no ReferenceGrant in a mesh (GEP-1294
    "Namespace boundaries"): a mesh route only changes where requests to its parent go,
    and its callers may reach that namespace's Services anyway, so meshnode never
    reports RefNotPermitted and has no ReferenceGrant kind.
    """
    if ref.group not in CORE_GROUPS or ref.kind != "Service":
        return Resolution(None, "InvalidKind", f"kind {ref.kind!r} of group {ref.group!r} is not "
                                               "supported: a backend is a Service (group \"\")")
    label = f"{ref.namespace or namespace}/{ref.name}"
    service = services.get((ref.namespace or namespace, ref.name))
    if service is None:
        return Resolution(None, "BackendNotFound", f"Service {label} does not exist")
    port = next((p for p in service.spec.ports if p.port == ref.port), None)
    if port is None:
        return Resolution(None, "BackendNotFound", f"Service {label} has no port {ref.port} (its "
                                                   f"ports: {_ports_text(service.spec.ports)})")
    if port.protocol == "TCP":
        return Resolution(None, "UnsupportedProtocol", f"port {ref.port} of Service {label} is "
                                                       "declared protocol TCP: it takes no HTTP requests")
    return Resolution(label, "ResolvedRefs", "")


def _route_order(route: HTTPRoute) -> tuple[str, str, str]:
    # Every stored route's creationTimestamp has one fixed-width UTC form, so the text
    # sorts as the time does.
    return (route.created, route.namespace, route.name)


def effective_headers(match: RouteMatch) -> list[ValueMatch]:
    """A match's header conditions as the spec counts them: names compared without case,
    only the first of equal names (HTTPHeaderMatch.name)."""
    seen: set[str] = set()
    kept = []
    for header in match.headers:
        if header.name.lower() not in seen:
            seen.add(header.name.lower())
            kept.append(header)
    return kept


def _precedence(match: RouteMatch) -> tuple[int, int, bool, int, int]:
    return (_PATH_RANK[match.path.type], -len(match.path.value), match.method is None,
            -len(effective_headers(match)), -len(match.query_params))


def _entry(match: RouteMatch, rule: int) -> dict[str, Any]:
    return {"path": {"type": match.path.type, "value": match.path.value},
            "method": match.method,
            "headers": [{"type": h.type, "name": h.name.lower(), "value": h.value}
                        for h in effective_headers(match)],
            "query": [{"type": q.type, "name": q.name, "value": q.value} for q in match.query_params],
            "rule": rule}


def _modifier(filters: tuple[RouteFilter, ...], kind: str) -> dict[str, Any] | None:
    """A rule's (or a backendRef's) header filter of `kind`; names as written (the data
    plane compares them without case)."""
    mod: HeaderModifier | None = next((f.headers for f in filters if f.type == kind), None)
    if mod is None:
        return None
    return {"set": [[n, v] for n, v in mod.set], "add": [[n, v] for n, v in mod.add],
            "remove": list(mod.remove)}


def _rule(route: HTTPRoute, index: int, rule: RouteRule, services: Services, port: int,
          faults: FaultInjections) -> dict[str, Any]:
    backends = []
    for ref in rule.backend_refs:
        if ref.weight == 0:
            continue  # sends nothing (BackendRef.weight)
        service = resolve(ref, route.namespace, services).service
        backend: dict[str, Any] = {"service": service, "port": ref.port if service else None,
                                   "weight": ref.weight}
        if ref.filters:
            backend["request_headers"] = _modifier(ref.filters, "RequestHeaderModifier")
            backend["response_headers"] = _modifier(ref.filters, "ResponseHeaderModifier")
        backends.append(backend)
    timeouts = rule.timeouts
    return {"route": f"{route.namespace}/{route.name}", "index": index, "name": rule.name,
            "backends": backends,
            "request_headers": _modifier(rule.filters, "RequestHeaderModifier"),
            "response_headers": _modifier(rule.filters, "ResponseHeaderModifier"),
            "redirect": redirect_spec(rule, port), "rewrite": rewrite_spec(rule),
            "timeout_s": timeouts.request_s if timeouts else None,
            "backend_timeout_s": timeouts.backend_request_s if timeouts else None,
            "mirrors": _mirrors(route, rule, services),
            "retry": retry_snapshot(rule.retry),
            "fault": rule_fault(rule, route.namespace, faults)}


def _mirrors(route: HTTPRoute, rule: RouteRule, services: Services) -> list[dict[str, Any]]:
    """A rule's RequestMirror filters; one whose backendRef does not resolve is left out
    (nothing is mirrored there; its route's status says why)."""
    out = []
    for f in rule.filters:
        if f.mirror is not None:
            service = resolve(f.mirror.backend, route.namespace, services).service
            if service is not None:
                out.append({"service": service, "port": f.mirror.backend.port,
                            "numerator": f.mirror.numerator, "denominator": f.mirror.denominator})
    return out


def _route_set(service: str, port: int, consumer: str | None, members: list[HTTPRoute],
               services: Services, faults: FaultInjections) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    ranked: list[tuple[tuple[int, int, bool, int, int], int, int, int, dict[str, Any]]] = []
    for position, route in enumerate(members):  # oldest first, then by namespace/name
        for i, rule in enumerate(route.spec.rules):
            at = len(rules)
            rules.append(_rule(route, i, rule, services, port, faults))
            for j, match in enumerate(rule.matches or (RouteMatch(),)):
                ranked.append((_precedence(match), position, i, j, _entry(match, at)))
    ranked.sort(key=lambda item: item[:4])
    return {"service": service, "port": port, "consumer_namespace": consumer,
            "entries": [item[4] for item in ranked], "rules": rules}


def compile_routes(resources: Iterable[Resource]) -> list[dict[str, Any]]:
    """snapshot["http_routes"]: one route set per (Service, port, caller group) that any
    accepted route attaches to, sorted by service, port, then producer before consumers."""
    resources = list(resources)
    services = services_of(resources)
    routes = sorted((r for r in resources if isinstance(r, HTTPRoute)), key=_route_order)
    sets: dict[tuple[str, int, str | None], list[HTTPRoute]] = {}
    for route in routes:
        for ref in route.spec.parent_refs:
            attachment = attach(route, ref, services)
            for port in attachment.ports:
                sets.setdefault((attachment.service, port, attachment.consumer_namespace), []).append(route)
    ordered = sorted(sets.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] is not None, kv[0][2] or ""))
    faults = faults_of(resources)
    return [_route_set(service, port, consumer, members, services, faults)
            for (service, port, consumer), members in ordered]
