"""Reading and writing Istio DestinationRule documents (the model: destinationrule.py).

Checks Istio's schema for the fields meshnode implements, names each field it does not
implement yet (destinationrule.NOT_IMPLEMENTED) as such, and resolves `host` to a Service
as Istio does: relative to the rule's namespace. A host in another namespace (a rule
that would govern only its own namespace's callers, Istio's client-side lookup) and
wildcard hosts are refused by name too.
"""
from __future__ import annotations

from typing import Any

from .destinationrule import (API_VERSIONS, BALANCERS, IMPLEMENTED, NOT_IMPLEMENTED, REFUSED_SIMPLE,
                              DestinationRuleSpec, PortPolicy)
from .destinationrulehash import ConsistentHash, parse_consistent_hash, parse_subsets
from .destinationruleoutlier import parse_outlier_detection
from .destinationrulepool import parse_connection_pool
from .errors import Problem
from ..clusterdomain import CLUSTER_DOMAIN
from .model import DestinationRule, key_label
from .routeparse import _metadata, metadata_dict
from .validate import _MISSING, _DNS_LABEL, _Doc, _describe, _fields, _known_fields, _port, _string, join

def _known(d: _Doc, value: object, path: str, level: str,
           required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The fields of a mapping at `level`: unknown ones and not implemented ones refused."""
    return _known_fields(d, value, path, IMPLEMENTED[level], NOT_IMPLEMENTED[level], required)


def _host(d: _Doc, value: object, path: str, namespace: str) -> str | None:
    """The "namespace/name" of the Service `host` names, as Istio resolves it."""
    text = _string(d, value, path)
    if text is None:
        return None
    if "*" in text:
        d.fail(path, f"{text!r}: wildcard hosts are not implemented yet; name one Service")
        return None
    labels = text.split(".")
    if labels[2:] in ([], ["svc"], ["svc", *CLUSTER_DOMAIN.split(".")]) and all(
            _DNS_LABEL.fullmatch(label) for label in labels[:2]):
        name, ns = labels[0], labels[1] if len(labels) > 1 else namespace
        if ns != namespace:
            d.fail(path, f"{text!r} is a Service of namespace {ns!r}: a rule in another "
                         f"namespace than its Service's (it would govern only callers in "
                         f"{namespace!r}) is not implemented yet; put it in {ns!r}")
            return None
        return f"{ns}/{name}"
    d.fail(path, f"{text!r} does not name a Service: use name, name.namespace, "
                 f"name.namespace.svc or name.namespace.svc.{CLUSTER_DOMAIN}")
    return None


def _load_balancer(d: _Doc, value: object, path: str
                   ) -> tuple[str | None, ConsistentHash | None]:
    """loadBalancer: simple or consistentHash (Istio's oneof), each None when not given."""
    lb = _known(d, value, path, "loadBalancer")
    if lb is not None and "simple" in lb and "consistentHash" in lb:
        d.fail(join(path, "consistentHash"), "give simple or consistentHash, not both")
        return None, None
    if lb is not None and "consistentHash" in lb:
        return None, parse_consistent_hash(d, lb["consistentHash"], join(path, "consistentHash"))
    return _simple(d, lb, path), None


def _simple(d: _Doc, lb: dict[str, Any] | None, path: str) -> str | None:
    if lb is None or "simple" not in lb:
        return None
    simple, where = lb["simple"], join(path, "simple")
    if simple in REFUSED_SIMPLE:
        d.fail(where, f"{simple}: {REFUSED_SIMPLE[simple]}")
    elif simple not in BALANCERS or not isinstance(simple, str):
        d.fail(where, f"must be one of {', '.join(BALANCERS)}, got {_describe(simple)}")
    else:
        return simple
    return None


def _port_policies(d: _Doc, value: object, path: str) -> tuple[PortPolicy, ...]:
    if not isinstance(value, list):
        d.fail(path, f"must be a list, got {_describe(value)}")
        return ()
    out: list[PortPolicy] = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        entry = _known(d, item, where, "portLevelSettings", required=("port",))
        if entry is None or "port" not in entry:
            continue
        selector = _fields(d, entry["port"], join(where, "port"), ("number",), required=("number",))
        number = _port(d, selector["number"], join(where, "port.number")) if selector and \
            "number" in selector else None
        if number is None:
            continue
        if any(p.port == number for p in out):
            d.fail(join(where, "port.number"), f"port {number} has settings already")
            continue
        simple, hashed = _load_balancer(d, entry["loadBalancer"], join(where, "loadBalancer")) \
            if "loadBalancer" in entry else (None, None)
        out.append(PortPolicy(number, simple, hashed))
    return tuple(out)


def _spec(d: _Doc, value: object, namespace: str, api_version: str) -> DestinationRuleSpec | None:
    if value is _MISSING:
        d.fail("spec", "required")
        return None
    spec = _known(d, value, "spec", "spec", required=("host",))
    if spec is None or "host" not in spec:
        return None
    service = _host(d, spec["host"], "spec.host", namespace)
    simple, hashed, ports, outlier, pool = None, None, (), None, None
    subsets = parse_subsets(d, spec["subsets"], "spec.subsets") if "subsets" in spec else ()
    policy = spec.get("trafficPolicy")
    if policy is not None:
        fields = _known(d, policy, "spec.trafficPolicy", "trafficPolicy")
        if fields is not None and "loadBalancer" in fields:
            simple, hashed = _load_balancer(d, fields["loadBalancer"],
                                            "spec.trafficPolicy.loadBalancer")
        if fields is not None and "outlierDetection" in fields:
            outlier = parse_outlier_detection(d, fields["outlierDetection"],
                                              "spec.trafficPolicy.outlierDetection")
        if fields is not None and "connectionPool" in fields:
            pool = parse_connection_pool(d, fields["connectionPool"],
                                         "spec.trafficPolicy.connectionPool")
        if fields is not None and "portLevelSettings" in fields:
            ports = _port_policies(d, fields["portLevelSettings"],
                                   "spec.trafficPolicy.portLevelSettings")
    if d.problems or service is None:
        return None
    return DestinationRuleSpec(spec["host"], service, api_version, policy is not None, simple,
                               ports, hashed, subsets, outlier, pool)


def parse_destination_rule(doc: dict[str, Any], file: str, index: int
                           ) -> tuple[DestinationRule | None, list[Problem]]:
    """A DestinationRule document (kind already known), or what is wrong with it."""
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    if not isinstance(namespace, str) or not namespace:
        namespace = "default"
    label = (key_label((DestinationRule.KIND, namespace, name)) if isinstance(name, str) and name
             else f"document #{index}")
    d = _Doc(file, label)
    top = _fields(d, doc, "", ("apiVersion", "kind", "metadata", "spec"),
                  required=("apiVersion", "kind", "metadata", "spec"))
    if top is None:
        return None, d.problems
    api_version = top.get("apiVersion")
    if "apiVersion" in top and api_version not in API_VERSIONS:
        d.fail("apiVersion", f"must be one of {', '.join(API_VERSIONS)}, got {_describe(api_version)}")
    # (metadata as an HTTPRoute's: a creationTimestamp is read, and replaced by the store's)
    metadata, created = _metadata(d, top["metadata"]) if "metadata" in top else (None, "")
    spec = _spec(d, top["spec"], metadata.namespace, api_version) \
        if "spec" in top and metadata is not None else None
    if d.problems or metadata is None or spec is None:
        return None, d.problems
    return DestinationRule(metadata=metadata, spec=spec, created=created, source=file), []


def _lb_dict(simple: str | None, hashed: ConsistentHash | None = None) -> dict[str, Any]:
    if hashed is not None:
        return {"loadBalancer": {"consistentHash": hashed.written}}
    return {"loadBalancer": {"simple": simple}} if simple is not None else {}


def rule_to_dict(rule: DestinationRule) -> dict[str, Any]:
    """The rule as Istio writes it, in the apiVersion it was applied in; parsed back equal."""
    metadata = metadata_dict(rule.metadata, rule.created)
    spec: dict[str, Any] = {"host": rule.spec.host}
    if rule.spec.has_policy:
        policy = _lb_dict(rule.spec.simple, rule.spec.hash)
        if rule.spec.ports:
            policy["portLevelSettings"] = [{"port": {"number": p.port}, **_lb_dict(p.simple, p.hash)}
                                           for p in rule.spec.ports]
        if rule.spec.outlier is not None:
            policy["outlierDetection"] = rule.spec.outlier.to_dict()
        if rule.spec.pool is not None:
            policy["connectionPool"] = rule.spec.pool.to_dict()
        spec["trafficPolicy"] = policy
    if rule.spec.subsets:
        spec["subsets"] = [s.to_dict() for s in rule.spec.subsets]
    return {"apiVersion": rule.spec.api_version, "kind": rule.KIND, "metadata": metadata,
            "spec": spec}
