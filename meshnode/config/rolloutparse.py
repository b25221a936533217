"""Reading and writing Rollout documents (the model: rollout.py), and their checks against
the rest of the config.

Checks: targetRef a Service (kind Service; apiVersion v1 if written), service.port a
port, stable and canary Service names (canary neither stable nor the target); analysis
interval 100ms..24h, threshold 1..1000, maxWeight and stepWeight 1..100, stepWeights
1..100 rising (not with stepWeight; maxWeight, if written, its last), minRequests
0..1e9; metrics only Flagger's builtins request-success-rate (%) and request-duration
(ms), each once, with a thresholdRange of min and/or max; webhooks of the types
pre-rollout, rollout, confirm-promotion and post-rollout, an http(s) URL, a timeout of
1ms..1h. Flagger's fields meshnode does not implement are refused by name (NOT_IMPLEMENTED),
so is every unknown field.

Against the config (rollout_problems): the three Services exist in the rollout's
namespace with service.port; one Rollout per target Service; and no HTTPRoute but the
rollout's own has the target Service for a parent (it would take the target's requests
its rules match away from the rollout, unseen by the analysis).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .errors import Problem
from .model import HTTPRoute, Resource, Rollout, Service
from .rollout import (API_VERSION, DEFAULT_MAX_WEIGHT, DURATION, KIND, METRICS, OWNER_LABEL,
                      WEBHOOK_TYPES, Analysis, MetricCheck, RolloutSpec, Webhook, route_name)
from .routeparse import _items, _object_name, _unrepeated, metadata_dict, parse_policy
from .validate import (_Doc, _annotations, _bool, _describe, _duration, _fields, _int, _opt, _port, _string,
                       join)

NOT_IMPLEMENTED: dict[str, dict[str, str]] = {
    "spec": {
        "suspend": "pause and resume a rollout with `meshnode rollout pause|resume NAME`",
        "progressDeadlineSeconds": "meshnode deploys nothing, so nothing can miss a deadline",
        "autoscalerRef": "meshnode scales no workloads",
        "ingressRef": "meshnode has no ingress; the rollout routes the mesh's own traffic",
        "upstreamRef": "meshnode has no ingress; the rollout routes the mesh's own traffic",
        "routeRef": "the rollout writes an HTTPRoute of its own (rollout-NAME)",
        "provider": "meshnode is the provider",
        "metricsServer": "the analysis reads the node's own figures",
        "revertOnDeletion": "deleting a Rollout deletes its route: the target Service's own "
                            "endpoints take its traffic again",
    },
    "spec.service": {key: "the rollout routes the target Service as it is; it generates no "
                          "Service" for key in (
        "name", "portName", "targetPort", "portDiscovery", "appProtocol", "timeout",
        "retries", "headers", "gateways", "gatewayRefs", "hosts", "trafficPolicy", "match",
        "rewrite", "corsPolicy", "apex", "primary", "canary", "backends", "delegation",
        "mirror")},
    "backend": {
        "subset": "DestinationRule subsets route nothing in meshnode (HTTPRoute backendRefs "
                  "name Services): give each version a Service of its own",
    },
    "spec.analysis": {
        "iterations": "Blue/Green and A/B rollouts are not implemented: only canary weights",
        "match": "A/B rollouts (matching requests by header or cookie) are not implemented",
        "mirror": "traffic mirroring during the analysis is not implemented",
        "mirrorWeight": "traffic mirroring during the analysis is not implemented",
        "sessionAffinity": "session affinity during the analysis is not implemented",
        "stepWeightPromotion": "promotion by steps is not implemented: promotion sends all "
                               "the traffic to the canary at once",
        "primaryReadyThreshold": "meshnode deploys nothing whose readiness it could wait for",
        "canaryReadyThreshold": "meshnode deploys nothing whose readiness it could wait for",
        "alerts": "alert providers are not implemented: watch the rollout.NAME bus topic "
                  "or meshnode_rollout_status",
    },
    "metric": {
        "templateRef": "MetricTemplates are not implemented: meshnode computes "
                       "request-success-rate and request-duration from its own figures",
        "templateVariables": "MetricTemplates are not implemented",
        "query": "custom queries are not implemented: meshnode computes request-success-rate "
                 "and request-duration from its own figures",
        "threshold": "write thresholdRange (Flagger's threshold is deprecated)",
    },
    "webhook": {
        "muteAlert": "alert providers are not implemented",
        "retries": "webhook retries are not implemented: a failed call is a failed check",
        "disableTLS": "TLS verification cannot be turned off",
    },
}
"""Flagger Canary fields meshnode refuses by name, with why, by where they are."""
REFUSED_WEBHOOK_TYPES = {
    "confirm-rollout": "meshnode deploys nothing whose start it could hold back: apply the "
                       "Rollout when it should start",
    "confirm-traffic-increase": "not implemented: use confirm-promotion, or pause the rollout",
    "rollback": "not implemented: abort a rollout with `meshnode rollout abort NAME`",
    "event": "not implemented: watch the rollout.NAME bus topic",
}

MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 86400.0
MAX_THRESHOLD = 1000
MAX_STEPS = 100
MAX_MIN_REQUESTS = 1_000_000_000
MAX_WEBHOOKS = 16
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.001, 3600.0


def _fields_refusing(d: _Doc, value: object, path: str, allowed: Sequence[str], where: str,
                     required: Sequence[str] = ()) -> dict[str, Any] | None:
    """_fields, with NOT_IMPLEMENTED[where]'s fields known and each refused by name."""
    refused = NOT_IMPLEMENTED[where]
    fields = _fields(d, value, path, (*allowed, *refused), required)
    if fields is None:
        return None
    for key in refused.keys() & fields.keys():
        d.fail(join(path, key), f"{key} is not implemented: {refused[key]}")
    return fields


def _duration_text(low_s: float, high_s: float) -> Callable[[_Doc, object, str], str | None]:
    """A duration within [low_s, high_s], kept as written (GEP-2257: never rewritten)."""
    seconds = _duration(low_s, high_s)

    def check(d: _Doc, value: object, path: str) -> str | None:
        return value if seconds(d, value, path) is not None else None  # type: ignore[return-value]
    return check


def _percent(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 1, 100)


def _number(d: _Doc, value: object, path: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        d.fail(path, f"must be a number, at least 0, got {_describe(value)}")
        return None
    return float(value)


def _backend(d: _Doc, value: object, path: str) -> str | None:
    before = len(d.problems)
    fields = _fields_refusing(d, value, path, ("name",), "backend", required=("name",))
    if fields is None or "name" not in fields or len(d.problems) > before:
        return None
    return _object_name(d, fields["name"], join(path, "name"))


def _target(d: _Doc, value: object, path: str) -> str | None:
    fields = _fields(d, value, path, ("apiVersion", "kind", "name"), required=("kind", "name"))
    if fields is None or not {"kind", "name"} <= fields.keys():
        return None
    if fields.get("apiVersion", "v1") != "v1":
        d.fail(join(path, "apiVersion"), f"a Service's is v1, got {_describe(fields['apiVersion'])}")
        return None
    if fields["kind"] != "Service":
        d.fail(join(path, "kind"), f"must be Service (meshnode rolls out a Service's traffic; it "
                                   f"deploys nothing), got {_describe(fields['kind'])}")
        return None
    return _object_name(d, fields["name"], join(path, "name"))


def _metric(d: _Doc, value: object, path: str) -> MetricCheck | None:
    fields = _fields_refusing(d, value, path, ("name", "thresholdRange", "interval"), "metric",
                              required=("name", "thresholdRange"))
    if fields is None or not {"name", "thresholdRange"} <= fields.keys():
        return None
    name = _string(d, fields["name"], join(path, "name"))
    if name is not None and name not in METRICS:
        d.fail(join(path, "name"), f"{name!r} is not implemented: meshnode computes the builtin "
                                   f"{' and '.join(METRICS)} from its own figures")
        return None
    at = join(path, "thresholdRange")
    limits = _fields(d, fields["thresholdRange"], at, ("min", "max"))
    interval = _opt(d, fields, path, "interval", _duration_text(MIN_INTERVAL_S, MAX_INTERVAL_S), None)
    if limits is None or name is None or ("interval" in fields and interval is None):
        return None
    low = _opt(d, limits, at, "min", _number, None)
    high = _opt(d, limits, at, "max", _number, None)
    if not limits:
        d.fail(at, "needs min, max or both")
        return None
    if low is not None and high is not None and low > high:
        d.fail(at, f"min {low:g} is above max {high:g}")
        return None
    if name != DURATION and ((low or 0) > 100 or (high or 0) > 100):
        d.fail(at, "a success rate is a percentage: 0 to 100")
        return None
    return MetricCheck(name, low, high, interval)


def _http_url(url: str) -> bool:
    """An http(s) URL with a host, and a port from 1 to 65535 if it names one (urlsplit's
    port raises on one that is not a number in range; http.client would at each call)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok


def _webhook(d: _Doc, value: object, path: str) -> Webhook | None:
    fields = _fields_refusing(d, value, path, ("name", "type", "url", "timeout", "metadata"),
                              "webhook", required=("name", "type", "url"))
    if fields is None or not {"name", "type", "url"} <= fields.keys():
        return None
    name = _object_name(d, fields["name"], join(path, "name"))
    kind = _string(d, fields["type"], join(path, "type"))
    if kind in REFUSED_WEBHOOK_TYPES:
        d.fail(join(path, "type"), f"{kind} is {REFUSED_WEBHOOK_TYPES[kind]}")
        kind = None
    elif kind is not None and kind not in WEBHOOK_TYPES:
        d.fail(join(path, "type"), f"must be one of {', '.join(WEBHOOK_TYPES)}, got {kind!r}")
        kind = None
    url = _string(d, fields["url"], join(path, "url"))
    if url is not None and not _http_url(url):
        d.fail(join(path, "url"), f"{url!r} is not an http:// or https:// URL")
        url = None
    timeout = _opt(d, fields, path, "timeout", _duration_text(MIN_TIMEOUT_S, MAX_TIMEOUT_S), None)
    metadata = _opt(d, fields, path, "metadata", _annotations, {})
    if None in (name, kind, url, metadata) or ("timeout" in fields and timeout is None):
        return None
    if timeout is None:
        return Webhook(name, kind, url, metadata=metadata)  # type: ignore[arg-type]
    return Webhook(name, kind, url, timeout, metadata)  # type: ignore[arg-type]


def _step_weights(d: _Doc, value: object, path: str) -> tuple[int, ...] | None:
    weights = _items(d, value, path, MAX_STEPS, _percent, min_items=1)
    if weights is not None and any(b <= a for a, b in zip(weights, weights[1:])):
        d.fail(path, f"must rise step by step, got {list(weights)}")
        return None
    return weights


_ANALYSIS_FIELDS = ("interval", "threshold", "maxWeight", "stepWeight", "stepWeights", "minRequests",
                    "metrics", "webhooks")


def _analysis(d: _Doc, value: object, path: str) -> Analysis | None:
    fields = _fields_refusing(d, value, path, _ANALYSIS_FIELDS, "spec.analysis")
    if fields is None:
        return None
    base = Analysis()
    before = len(d.problems)
    interval = _opt(d, fields, path, "interval", _duration_text(MIN_INTERVAL_S, MAX_INTERVAL_S),
                    base.interval)
    threshold = _opt(d, fields, path, "threshold", lambda d, v, p: _int(d, v, p, 1, MAX_THRESHOLD),
                     base.threshold)
    max_weight = _opt(d, fields, path, "maxWeight", _percent, base.max_weight)
    step = _opt(d, fields, path, "stepWeight", _percent, base.step_weight)
    steps = _opt(d, fields, path, "stepWeights", _step_weights, ())
    least = _opt(d, fields, path, "minRequests", lambda d, v, p: _int(d, v, p, 0, MAX_MIN_REQUESTS),
                 base.min_requests)
    metrics = _opt(d, fields, path, "metrics", lambda d, v, p: _items(d, v, p, len(METRICS), _metric), ())
    hooks = _opt(d, fields, path, "webhooks", lambda d, v, p: _items(d, v, p, MAX_WEBHOOKS, _webhook), ())
    if len(d.problems) > before:
        return None
    if metrics and not _unrepeated(d, metrics, join(path, "metrics"), "name", lambda m: m.name,
                                   lambda name: f"a second {name} check"):
        return None
    if hooks and not _unrepeated(d, hooks, join(path, "webhooks"), "name", lambda h: h.name,
                                 lambda name: f"a second webhook named {name!r}"):
        return None
    if steps and "stepWeight" in fields:
        d.fail(join(path, "stepWeights"), "takes the place of stepWeight: write one of them")
        return None
    if steps and "maxWeight" in fields and max_weight != steps[-1]:
        d.fail(join(path, "maxWeight"), f"{max_weight}: with stepWeights the last step, "
                                        f"{steps[-1]}, is the maxWeight")
        return None
    if step > max_weight:  # type: ignore[operator]
        d.fail(join(path, "stepWeight"), f"{step} is above maxWeight ({max_weight})")
        return None
    written = tuple(key for key in _ANALYSIS_FIELDS if key in fields)
    return Analysis(interval, threshold, steps[-1] if steps else max_weight, step, steps,  # type: ignore[arg-type]
                    least, metrics, hooks, written)  # type: ignore[arg-type]


def _spec(d: _Doc, value: object) -> RolloutSpec | None:
    spec = _fields_refusing(d, value, "spec", ("targetRef", "service", "stable", "canary", "analysis",
                                               "skipAnalysis"), "spec",
                            required=("targetRef", "service", "stable", "canary"))
    if spec is None or not {"targetRef", "service", "stable", "canary"} <= spec.keys():
        return None
    target = _target(d, spec["targetRef"], "spec.targetRef")
    service = _fields_refusing(d, spec["service"], "spec.service", ("port",), "spec.service",
                               required=("port",))
    port = _port(d, service["port"], "spec.service.port") if service and "port" in service else None
    stable = _backend(d, spec["stable"], "spec.stable")
    canary = _backend(d, spec["canary"], "spec.canary")
    analysis = _opt(d, spec, "spec", "analysis", _analysis, Analysis())
    skip = _opt(d, spec, "spec", "skipAnalysis", _bool, False)
    if d.problems or None in (target, port, stable, canary, analysis, skip):
        return None
    if canary in (stable, target):
        d.fail("spec.canary.name", f"{canary!r} is the {'stable' if canary == stable else 'target'} "
                                   "Service: the canary is a Service of its own")
        return None
    return RolloutSpec(target, port, stable, canary, analysis, skip)  # type: ignore[arg-type]


def parse_rollout(doc: dict[str, Any], file: str, index: int) -> tuple[Rollout | None, list[Problem]]:
    """A Rollout document (kind already known), or what is wrong with it."""
    return parse_policy(doc, file, index, Rollout, API_VERSION, _spec)


def _analysis_dict(a: Analysis) -> dict[str, Any]:
    out: dict[str, Any] = {"interval": a.interval, "threshold": a.threshold}
    if a.step_weights:
        out["stepWeights"] = list(a.step_weights)
        if "maxWeight" in a.written:
            out["maxWeight"] = a.max_weight
    else:
        out["maxWeight"] = a.max_weight
        out["stepWeight"] = a.step_weight
    out["minRequests"] = a.min_requests
    if a.metrics:
        out["metrics"] = [{"name": m.name,
                           "thresholdRange": {k: v for k, v in (("min", m.min), ("max", m.max))
                                              if v is not None},
                           **({"interval": m.interval} if m.interval else {})} for m in a.metrics]
    if a.webhooks:
        out["webhooks"] = [{"name": h.name, "type": h.type, "url": h.url, "timeout": h.timeout,
                            **({"metadata": dict(h.metadata)} if h.metadata else {})}
                           for h in a.webhooks]
    return out


def rollout_to_dict(rollout: Rollout) -> dict[str, Any]:
    """The Rollout with its defaults filled in; parsed back equal."""
    spec = rollout.spec
    body: dict[str, Any] = {
        "targetRef": {"apiVersion": "v1", "kind": "Service", "name": spec.target},
        "service": {"port": spec.port},
        "stable": {"name": spec.stable},
        "canary": {"name": spec.canary},
        "analysis": _analysis_dict(spec.analysis),
    }
    if spec.skip_analysis:
        body["skipAnalysis"] = True
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": metadata_dict(rollout.metadata, rollout.created), "spec": body}


def _service_problem(rollout: Rollout, services: dict[tuple[str, str], Service], name: str,
                     field: str) -> Problem | None:
    service = services.get((rollout.namespace, name))
    ports = [p.port for p in service.spec.ports] if service else []
    if rollout.spec.port in ports:
        return None
    why = (f"Service {rollout.namespace}/{name} does not exist" if service is None else
           f"Service {rollout.namespace}/{name} has no port {rollout.spec.port} (it has "
           f"{', '.join(map(str, ports))})")
    return Problem(rollout.source, rollout.label, field, why)


def owned_by(route: HTTPRoute) -> str | None:
    """The rollout ("namespace/name") whose controller wrote `route`, if one did."""
    owner = route.metadata.labels.get(OWNER_LABEL)
    if owner is None or route.name != route_name(owner):
        return None
    return f"{route.namespace}/{owner}"


def rollout_problems(resources: Sequence[Resource]) -> list[Problem]:
    """What is wrong with the config's Rollouts given the rest of it (module docstring)."""
    rollouts = [r for r in resources if isinstance(r, Rollout)]
    if not rollouts:
        return []
    services = {(s.namespace, s.name): s for s in resources if isinstance(s, Service)}
    problems: list[Problem] = []
    targets: dict[tuple[str, str], Rollout] = {}
    for rollout in rollouts:
        spec = rollout.spec
        for name, field in ((spec.target, "spec.targetRef.name"), (spec.stable, "spec.stable.name"),
                            (spec.canary, "spec.canary.name")):
            problem = _service_problem(rollout, services, name, field)
            if problem is not None:
                problems.append(problem)
        key = (rollout.namespace, spec.target)
        if key in targets:
            problems.append(Problem(rollout.source, rollout.label, "spec.targetRef.name",
                                    f"Service {key[0]}/{key[1]} is already the target of "
                                    f"{targets[key].label}"))
        targets.setdefault(key, rollout)
    for route in (r for r in resources if isinstance(r, HTTPRoute)):
        owner = owned_by(route)
        for ref in route.spec.parent_refs:
            rollout = targets.get((ref.namespace or route.namespace, ref.name))
            if rollout is not None and owner != f"{rollout.namespace}/{rollout.name}":
                problems.append(Problem(
                    route.source, route.label, "spec.parentRefs",
                    f"Service {rollout.namespace}/{ref.name} is rolled out by {rollout.label}, "
                    f"whose HTTPRoute {rollout.namespace}/{route_name(rollout.name)} routes it: "
                    "another route would take requests away from its analysis (delete the "
                    "Rollout first, or route another Service)"))
    return problems
