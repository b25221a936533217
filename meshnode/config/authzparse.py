"""Reading and writing Istio AuthorizationPolicy documents (the model: authz.py).

The checks are Istio's (pkg/config/validation ValidateAuthorizationPolicy and
pkg/config/security): one of selector, targetRef and targetRefs; a wildcard-free
selector; a DENY policy needs rules; `from`, `to` and their source and operation are
not empty; no empty value; IP blocks and `source.ip`/`remote.ip`/`destination.ip`
values an address or a CIDR; ports 1-65535; serviceAccounts "sa" or "ns/sa" (16 at
most, no `*`) and not beside principals or namespaces; trustDomains without '/'; path
templates `{*}` and `{**}` as whole segments, `{**}` last, other segments RFC 3986
pchars; `when` keys Istio knows, each with values or notValues. meshnode adds one rule
Istio leaves to Envoy: a `*` stands only alone, first or last (Envoy would match
"a*b" literally, which nobody means).

Refused by name (DESIGN §5: never ignored): what needs a request's JWT
(requestPrincipals, notRequestPrincipals, `request.auth.*` keys), what needs an
external authorizer (action CUSTOM, provider), Envoy metadata keys
(`experimental.envoy.filters.*`), the `istio.io/dry-run` annotation, targets other
than a Service, and one source naming the caller's identity twice over (two of
principals, serviceAccounts and trustDomains with values: authzprogram.py keeps one
list of principal patterns per source).
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from .authz import (ACTIONS, API_VERSIONS, MAX_RULES, MAX_SERVICE_ACCOUNTS, MAX_TARGET_REFS, NEEDS_JWT,
                    OPERATION_FIELDS, SOURCE_FIELDS, AuthorizationPolicySpec, Condition, Rule, TargetRef)
from .errors import Problem
from .model import AuthorizationPolicy, Metadata
from .routeparse import _group, _items, _kind, _metadata, _object_name, metadata_dict
from .validate import _Doc, _describe, _fields, _labels, _string, document_label, join

DRY_RUN = "istio.io/dry-run"

# Istio's `when` keys (pkg/config/security), by what meshnode does with them.
KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal", "source.serviceAccount",
        "source.trustDomain", "destination.ip", "destination.port", "connection.sni")
HEADER_KEY = "request.headers"
JWT_KEY = "request.auth."
ENVOY_KEY = "experimental.envoy.filters."
# Keys Istio refuses, with its reason.
RETIRED_KEYS = {"destination.namespace": "replaced by the metadata.namespace",
                "destination.name": "deprecated: only supported in v1alpha1",
                "destination.user": "deprecated: only supported in v1alpha1"}
RETIRED_PREFIX = ("destination.labels", "replaced by the workload selector")

TEMPLATE_ONE, TEMPLATE_ANY = "{*}", "{**}"
_PCHARS = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")   # Istio's validLiteral (RFC 3986 pchar)

# Kinds Istio allows a policy to target, which meshnode has no such thing for.
_OTHER_TARGETS = {("networking.istio.io", "ServiceEntry"), ("gateway.networking.k8s.io", "Gateway"),
                  ("gateway.networking.k8s.io", "GatewayClass")}

Check = Callable[[_Doc, str, str], bool]


def _wildcard_ok(d: _Doc, text: str, path: str) -> bool:
    if text != "*" and "*" in text[1:-1] or text.count("*") > 1:
        d.fail(path, f"{text!r}: '*' stands only alone, first or last (a prefix or suffix match)")
        return False
    return True


def _address(d: _Doc, text: str, path: str) -> bool:
    """An IP address or a CIDR block (Istio's ValidateIPs; host bits may be set)."""
    try:
        ipaddress.ip_network(text, strict=False) if "/" in text else ipaddress.ip_address(text)
    except ValueError:
        d.fail(path, f"{text!r} is neither an IP address nor a CIDR block such as 10.0.0.0/8")
        return False
    return True


def _port(d: _Doc, text: str, path: str) -> bool:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        d.fail(path, f"{text!r} is not a port: give a number from 1 to 65535, as a string")
        return False
    return True


def _service_account(d: _Doc, text: str, path: str) -> bool:
    """Istio's CheckServiceAccount: "name" (the policy's namespace) or "namespace/name"."""
    parts = text.split("/")
    if "*" in text or len(parts) > 2 or not all(parts) or len(text) > 320:
        d.fail(path, f"{text!r} is not a service account: give 'name' or 'namespace/name' "
                     "(no '*', at most 320 characters)")
        return False
    return True


def _trust_domain(d: _Doc, text: str, path: str) -> bool:
    if "/" in text:
        d.fail(path, f"{text!r}: a trust domain has no '/'")
        return False
    return _wildcard_ok(d, text, path)


def _path(d: _Doc, text: str, path: str) -> bool:
    """Istio's CheckValidPathTemplate, and the wildcard rule for a path without a template."""
    if TEMPLATE_ONE not in text and TEMPLATE_ANY not in text:
        if "{" in text or "}" in text:
            d.fail(path, f"{text!r}: '{{' and '}}' only in the templates {TEMPLATE_ONE} and {TEMPLATE_ANY}")
            return False
        return _wildcard_ok(d, text, path)
    seen_any = False
    for segment in text.strip("/").split("/"):
        if segment in (TEMPLATE_ONE, TEMPLATE_ANY) and seen_any:
            d.fail(path, f"{text!r}: {TEMPLATE_ANY} must be the last template of a path")
            return False
        if segment in (TEMPLATE_ONE, TEMPLATE_ANY):
            seen_any = segment == TEMPLATE_ANY
            continue
        if "{" in segment or "}" in segment or not _PCHARS.fullmatch(segment):
            d.fail(path, f"{text!r}: segment {segment!r} is neither a template ({TEMPLATE_ONE}, "
                         f"{TEMPLATE_ANY}) nor made of RFC 3986 path characters")
            return False
    return True


def _values(d: _Doc, value: object, path: str, check: Check,
            max_items: int | None = None) -> tuple[str, ...] | None:
    """A list of non-empty strings, each checked; () for an empty list."""
    if not isinstance(value, list):
        d.fail(path, f"must be a list of strings, got {_describe(value)}")
        return None
    if max_items is not None and len(value) > max_items:
        d.fail(path, f"must have at most {max_items} values, got {len(value)}")
        return None
    ok = True
    for i, item in enumerate(value):
        at = f"{path}[{i}]"
        if not isinstance(item, str):
            hint = " (quote it)" if isinstance(item, (int, float)) and not isinstance(item, bool) else ""
            d.fail(at, f"must be a string{hint}, got {_describe(item)}")
            ok = False
        elif not item:
            d.fail(at, "must not be empty")
            ok = False
        else:
            ok = check(d, item, at) and ok
    return tuple(value) if ok else None


_FIELD_CHECKS: dict[str, Check] = {
    "principals": _wildcard_ok, "namespaces": _wildcard_ok,
    "serviceAccounts": _service_account, "trustDomains": _trust_domain,
    "ipBlocks": _address, "remoteIpBlocks": _address,
    "hosts": _wildcard_ok, "methods": _wildcard_ok, "paths": _path, "ports": _port,
}


def _field_check(name: str) -> Check:
    """The check of a source or operation field, its `not` form as its own."""
    base = name[3].lower() + name[4:] if name.startswith("not") else name
    return _FIELD_CHECKS[base]


def _lists(d: _Doc, value: object, path: str, fields: tuple[str, ...],
           refused: dict[str, str]) -> dict[str, tuple[str, ...]] | None:
    """A source or an operation: its non-empty value lists, by field name."""
    found = _fields(d, value, path, (*fields, *refused))
    if found is None:
        return None
    out: dict[str, tuple[str, ...]] = {}
    ok = True
    for name, item in found.items():
        if name in refused:
            d.fail(join(path, name), refused[name])
            ok = False
            continue
        limit = MAX_SERVICE_ACCOUNTS if name.endswith(("serviceAccounts", "ServiceAccounts")) else None
        values = _values(d, item, join(path, name), _field_check(name), limit)
        ok = ok and values is not None
        if values:
            out[name] = values
    if ok and not out:
        d.fail(path, "must not be empty: name at least one field with values")
        return None
    return out if ok else None


_JWT_REASON = ("needs a request's JWT (Istio's RequestAuthentication), which meshnode does not "
               "implement; match the caller by principals, serviceAccounts or namespaces")


def _source(d: _Doc, value: object, path: str) -> dict[str, tuple[str, ...]] | None:
    holder = _fields(d, value, path, ("source",), required=("source",))
    if holder is None or "source" not in holder:
        return None
    where = join(path, "source")
    source = _lists(d, holder["source"], where, SOURCE_FIELDS, {k: f"{k} {_JWT_REASON}" for k in NEEDS_JWT})
    if source is None:
        return None
    accounts = [k for k in ("serviceAccounts", "notServiceAccounts") if k in source]
    named = [k for k in ("principals", "notPrincipals", "namespaces", "notNamespaces") if k in source]
    if accounts and named:
        d.fail(join(where, accounts[0]), f"cannot be set with {' or '.join(named)} (Istio's rule)")
        return None
    identities = [k for k in ("principals", "serviceAccounts", "trustDomains") if k in source]
    if len(identities) > 1:
        d.fail(join(where, identities[1]), f"{identities[1]} beside {identities[0]} in one source is not "
                                           "implemented yet: name the caller's identity by one of them")
        return None
    return source


def _operation(d: _Doc, value: object, path: str) -> dict[str, tuple[str, ...]] | None:
    holder = _fields(d, value, path, ("operation",), required=("operation",))
    if holder is None or "operation" not in holder:
        return None
    return _lists(d, holder["operation"], join(path, "operation"), OPERATION_FIELDS, {})


def _key_problem(key: str) -> str | None:
    """Why Istio (or meshnode) takes no `when` key `key`; None when it is taken."""
    if key in KEYS:
        return None
    if key.startswith(HEADER_KEY):
        name = key[len(HEADER_KEY):]
        if len(name) > 2 and name[0] == "[" and name[-1] == "]" and "]" not in name[1:-1]:
            return None
        return f"bad key {key!r}: write request.headers[NAME]"
    if key.startswith(JWT_KEY):
        return f"{key} {_JWT_REASON}"
    if key.startswith(ENVOY_KEY):
        return f"{key}: Envoy filter metadata is not implemented (meshnode has no Envoy)"
    if key in RETIRED_KEYS:
        return f"attribute {key} is {RETIRED_KEYS[key]}"
    if key.startswith(RETIRED_PREFIX[0]):
        return f"attribute {key} is {RETIRED_PREFIX[1]}"
    return f"unknown attribute {key!r}; known: {HEADER_KEY}[NAME], {', '.join(KEYS)}"


_KEY_CHECKS: dict[str, Check] = {
    "source.ip": _address, "remote.ip": _address, "destination.ip": _address,
    "destination.port": _port, "source.serviceAccount": _service_account,
    "source.trustDomain": _trust_domain,
}


def _condition(d: _Doc, value: object, path: str) -> Condition | None:
    fields = _fields(d, value, path, ("key", "values", "notValues"), required=("key",))
    if fields is None or "key" not in fields:
        return None
    key = _string(d, fields["key"], join(path, "key"))
    if key is None:
        return None
    problem = _key_problem(key) if key else "must not be empty"
    if problem is not None:
        d.fail(join(path, "key"), problem)
        return None
    check = _KEY_CHECKS.get(key, _wildcard_ok)
    values = _values(d, fields["values"], join(path, "values"), check) if "values" in fields else ()
    not_values = _values(d, fields["notValues"], join(path, "notValues"), check) \
        if "notValues" in fields else ()
    if values is None or not_values is None:
        return None
    if not values and not not_values:
        d.fail(path, f"give values or notValues (at least one) for key {key}")
        return None
    return Condition(key, values or None, not_values or None)


def _optional_list(d: _Doc, rule: dict[str, Any], path: str, field: str,
                   check: Callable[[_Doc, Any, str], Any]) -> tuple[Any, ...] | None | bool:
    """A rule's `from`, `to` or `when`: None when left out, False when wrong."""
    if field not in rule:
        return None
    items = _items(d, rule[field], join(path, field), MAX_RULES, check, min_items=int(field != "when"))
    return False if items is None else items


def _rule(d: _Doc, value: object, path: str) -> Rule | None:
    if value is None:
        d.fail(path, "a rule must not be null (write {} for a rule that matches everything)")
        return None
    rule = _fields(d, value, path, ("from", "to", "when"))
    if rule is None:
        return None
    sources = _optional_list(d, rule, path, "from", _source)
    operations = _optional_list(d, rule, path, "to", _operation)
    when = _optional_list(d, rule, path, "when", _condition)
    if sources is False or operations is False or when is False:
        return None
    return Rule(sources, operations, when)  # type: ignore[arg-type]


def _target_ref(d: _Doc, value: object, path: str) -> TargetRef | None:
    """A PolicyTargetReference (Istio's validatePolicyTargetReference): a Service of the
    policy's namespace; Istio's other targets are named as not implemented."""
    fields = _fields(d, value, path, ("group", "kind", "name", "namespace"), required=("kind", "name"))
    if fields is None or "kind" not in fields or "name" not in fields:
        return None
    group = _group(d, fields.get("group", ""), join(path, "group"))
    kind = _kind(d, fields["kind"], join(path, "kind"))
    name = _object_name(d, fields["name"], join(path, "name"))
    if fields.get("namespace"):
        d.fail(join(path, "namespace"), "must not be set: cross namespace referencing is not supported")
        return None
    if group is None or kind is None or name is None:
        return None
    if (group, kind) in _OTHER_TARGETS:
        d.fail(join(path, "kind"), f"a target of kind {kind} is not implemented: meshnode's "
                                   "policies target Services (group \"\", kind Service)")
        return None
    if (group, kind) != ("", "Service"):
        d.fail(join(path, "kind"), f"a targetRef must be to a Service (group \"\"), a ServiceEntry, "
                                   f"a Gateway or a GatewayClass, not {group or 'core'}/{kind}")
        return None
    return TargetRef(group, kind, name)


def _selector(d: _Doc, value: object, path: str) -> dict[str, str] | None:
    fields = _fields(d, value, path, ("matchLabels",))
    if fields is None:
        return None
    labels = _labels(d, fields["matchLabels"], join(path, "matchLabels")) if "matchLabels" in fields else {}
    return labels


def _targets(d: _Doc, spec: dict[str, Any]) -> tuple[tuple[TargetRef, ...], bool] | None:
    if "targetRef" in spec:
        ref = _target_ref(d, spec["targetRef"], "spec.targetRef")
        return None if ref is None else ((ref,), True)
    if "targetRefs" in spec:
        refs = _items(d, spec["targetRefs"], "spec.targetRefs", MAX_TARGET_REFS, _target_ref)
        return None if refs is None else (refs, False)
    return (), False


def _spec(d: _Doc, value: object) -> AuthorizationPolicySpec | None:
    spec = _fields(d, value, "spec", ("selector", "targetRef", "targetRefs", "action", "rules", "provider"))
    if spec is None:
        return None
    scopes = [k for k in ("selector", "targetRef", "targetRefs") if k in spec]
    if len(scopes) > 1:
        d.fail(f"spec.{scopes[1]}", f"only one of selector, targetRef and targetRefs can be set "
                                    f"(also spec.{scopes[0]})")
        return None
    action = spec.get("action")
    if action == "CUSTOM":
        d.fail("spec.action", "CUSTOM (an external authorizer) is not implemented; use ALLOW, DENY or AUDIT")
    elif "action" in spec and action not in ACTIONS:
        d.fail("spec.action", f"must be one of {', '.join(ACTIONS)}, got {_describe(action)}")
    if "provider" in spec:
        d.fail("spec.provider", "provider (an external authorizer for action CUSTOM) is not implemented")
    selector = _selector(d, spec["selector"], "spec.selector") if "selector" in spec else None
    targets = _targets(d, spec)
    rules = _items(d, spec["rules"], "spec.rules", MAX_RULES, _rule) if "rules" in spec else None
    if action == "DENY" and not spec.get("rules"):
        d.fail("spec.rules", "a DENY policy without rules never matches: add a rule ({} matches "
                             "every request)")
    if d.problems or targets is None or ("selector" in spec and selector is None) \
            or ("rules" in spec and rules is None):
        return None
    return AuthorizationPolicySpec(selector, targets[0], targets[1], action, rules)


def read_document(doc: dict[str, Any], file: str, index: int, kind: str
                  ) -> tuple[_Doc, dict[str, Any] | None, Metadata | None, str]:
    """The parts of a security.istio.io document of `kind`: its problems so far, its
    top-level fields (None: not a mapping), its metadata and creationTimestamp."""
    d = _Doc(file, document_label(doc, index))
    # `status` is the controller's: a document's own is ignored, as the API server does.
    top = _fields(d, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"),
                  required=("apiVersion", "kind", "metadata"))
    if top is None:
        return d, None, None, ""
    if "apiVersion" in top and top["apiVersion"] not in API_VERSIONS:
        d.fail("apiVersion", f"must be {' or '.join(map(repr, API_VERSIONS))} for kind {kind}, "
                             f"got {_describe(top['apiVersion'])}")
    metadata, created = _metadata(d, top["metadata"]) if "metadata" in top else (None, "")
    return d, top, metadata, created


def parse_authorization_policy(doc: dict[str, Any], file: str, index: int
                               ) -> tuple[AuthorizationPolicy | None, list[Problem]]:
    """An AuthorizationPolicy document (kind already known), or what is wrong with it."""
    d, top, metadata, created = read_document(doc, file, index, "AuthorizationPolicy")
    if top is None:
        return None, d.problems
    if metadata is not None and metadata.annotations.get(DRY_RUN, "").lower() == "true":
        d.fail(f'metadata.annotations["{DRY_RUN}"]', "dry-run policies are not implemented "
                                                     "(use action AUDIT to count without enforcing)")
    # No spec is Istio's `spec: {}`: an ALLOW policy without rules, which denies all.
    spec = _spec(d, top["spec"]) if "spec" in top else AuthorizationPolicySpec()
    if d.problems or metadata is None or spec is None:
        return None, d.problems
    return AuthorizationPolicy(metadata=metadata, spec=spec, created=created, source=file), []


def _rule_dict(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.sources is not None:
        out["from"] = [{"source": {k: list(v) for k, v in s.items()}} for s in rule.sources]
    if rule.operations is not None:
        out["to"] = [{"operation": {k: list(v) for k, v in o.items()}} for o in rule.operations]
    if rule.when is not None:
        out["when"] = [{"key": c.key, **({"values": list(c.values)} if c.values else {}),
                        **({"notValues": list(c.not_values)} if c.not_values else {})} for c in rule.when]
    return out


def policy_to_dict(policy: AuthorizationPolicy) -> dict[str, Any]:
    """The policy as written (fields left out stay out); parsed back equal."""
    spec: dict[str, Any] = {}
    s = policy.spec
    if s.selector is not None:
        spec["selector"] = {"matchLabels": dict(s.selector)} if s.selector else {}
    refs = [{"group": t.group, "kind": t.kind, "name": t.name} for t in s.target_refs]
    if s.single_target_ref:
        spec["targetRef"] = refs[0]
    elif refs:
        spec["targetRefs"] = refs
    if s.action is not None:
        spec["action"] = s.action
    if s.rules is not None:
        spec["rules"] = [_rule_dict(rule) for rule in s.rules]
    return {"apiVersion": API_VERSIONS[0], "kind": policy.KIND,
            "metadata": metadata_dict(policy.metadata, policy.created), "spec": spec}
