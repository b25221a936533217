"""HTTPRoute documents: checked against the Gateway API v1 spec, built into the model, and written back.

Every field of the v1 HTTPRoute is either implemented or refused by name. The checks are
the spec's own: its OpenAPI limits (MaxItems, MaxLength, patterns, enums), its CEL rules
(path values, the timeouts' order, unrepeated filters, distinct parentRefs) and its
listMapKey uniqueness, each reported as a Problem naming file, resource and field, as
validate.py does for the other kinds. What the data plane does not carry yet is listed
in NOT_IMPLEMENTED, the one place that shrinks as it gains each.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from fastpath.engine import ROUTE_GROW_MAX
from fastpath.regex import Regex

from .durations import parse_duration
from .errors import Problem
from .httproute import (API_VERSIONS, CORE_GROUPS, GROUP, BackendRef, ExtensionRef, HeaderModifier,
                        HTTPRouteSpec, Mirror, ParentRef, PathMatch, RouteFilter, RouteMatch, RouteRule,
                        Timeouts, ValueMatch)
from .model import HTTPRoute, Metadata
from .retryparse import parse_retry, retry_dict
from .routefilters import check_rule, filter_dict, parse_redirect, parse_rewrite
from .validate import (_annotations, _choice, _describe, _dns_label, _Doc, _fields, _int, _labels, _opt,
                       _port, _string, document_label, join)

T = TypeVar("T")

NOT_IMPLEMENTED: dict[str, tuple[str, ...]] = {
    # Filter types (spec.rules[].filters[].type): the data plane has no step for them yet.
    "filter types": ("CORS", "ExternalAuth"),
    # Fields of a rule (spec.rules[]).
    "rule fields": ("sessionPersistence",),
    # Fields of a backendRef (spec.rules[].backendRefs[]).
    "backendRef fields": (),
    # Filter types of a backendRef's own filters (its header modifiers are implemented).
    "backendRef filter types": ("URLRewrite", "RequestRedirect", "RequestMirror", "ExtensionRef",
                                "CORS", "ExternalAuth"),
    # Match types of a path, header or query parameter (all three are implemented).
    "match types": (),
}
"""What meshnode refuses by name until the data plane carries it (DESIGN §5: refused,
never ignored). Take a name out when its parsing and its snapshot keys arrive."""

# The spec's limits (kubebuilder:validation) and enums.
MAX_PARENT_REFS = 32
MAX_HOSTNAMES = 16
MAX_RULES = 16
MAX_MATCHES_PER_RULE = 64
MAX_MATCHES = 128  # across all rules of a route (CEL)
MAX_FILTERS = 16
MAX_BACKEND_REFS = 16
MAX_MATCH_CONDITIONS = 16  # headers, and query params, of one match
MAX_HEADER_ACTIONS = 16  # set, add and remove each
MAX_WEIGHT = 1_000_000
MAX_PATH = 1024
MAX_HEADER_VALUE = 4096
MAX_QUERY_VALUE = 1024
MAX_NAME = 253
# The data plane's own bounds (fastpath RouteTable.add_route_rule), which a valid route
# must keep: a route it cannot install would be NACKed by every worker, the node's whole
# config with it. The longest timeout; what a rule's set and add may add to a head.
MAX_TIMEOUT_S = 86400.0
MAX_HEADER_GROWTH = ROUTE_GROW_MAX
# RequestMirror filters per rule: the spec lets the filter repeat (v1.1); the data plane
# feeds at most this many copies of one request (fastpath ENGINE_MIRRORS_MAX).
MAX_MIRRORS = 4
PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
FILTER_FIELDS = {  # a filter's type -> the field that carries its settings
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
    "ExtensionRef": "extensionRef",
}

# Headers a header filter may not touch (the data plane refuses them too:
# fastpath/routes_table.pxi): they frame the message or manage the connection (RFC 9112
# §6, RFC 9110 §7.6.1), so the node alone writes them; a route that set Content-Length or
# Transfer-Encoding would let one request be read as two. On a request: Host is its
# authority (URLRewrite's hostname changes it, not a header filter), Expect drives the
# 100-continue exchange the node frames, and x-forwarded-client-cert is the inbound
# node's to vouch for.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                              "proxy-connection", "te", "trailer", "upgrade"})
_REQUEST_ONLY_HEADERS = frozenset({"host", "expect", "x-forwarded-client-cert"})
# Either way: x-meshnode-failure is the nodes' word that an app failed a request (an app's
# node adds it to the 502 it answers then, and the caller's node retries that as a
# connection error): a route that wrote it could turn any answer into one.
_NODE_HEADERS = frozenset({"x-meshnode-failure"})

_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_HOSTNAME = re.compile(r"(?:\*\.)?" + _SUBDOMAIN.pattern)
_KIND = re.compile(r"[a-zA-Z](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")  # RFC 9110 token
# RFC 9110 §5.5 field-value, visible US-ASCII only: what a request can carry (no control
# characters, no whitespace at either end). The spec's experimental channel says the same
# with single spaces; HTTP allows runs of them.
_FIELD_VALUE = re.compile(r"[!-~]+(?:[ \t]+[!-~]+)*")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")
_GATEWAY_DURATION = re.compile(r"(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}")  # GEP-2257
_TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def _regex_problem(pattern: str) -> str | None:
    """What is wrong with a RegularExpression match's pattern, or None if it compiles.

    The one place patterns are judged, by the data plane's own RE2-syntax compiler
    (fastpath.regex: linear time, bounded size), so control accepts exactly what
    every worker can install.
    """
    try:
        Regex(pattern)
    except ValueError as exc:
        return f"{pattern!r} is not a regular expression meshnode takes (RE2 syntax): {exc}"
    return None


def _not_yet(d: _Doc, path: str, what: str) -> None:
    d.fail(path, f"{what} is not implemented yet")


def _items(d: _Doc, value: object, path: str, max_items: int,
           check: Callable[[_Doc, Any, str], T | None], min_items: int = 0) -> tuple[T, ...] | None:
    """A list of at most `max_items`, each checked; None if it or any item is wrong."""
    if not isinstance(value, list):
        d.fail(path, f"must be a list, got {_describe(value)}")
        return None
    if len(value) > max_items:
        d.fail(path, f"must have at most {max_items} items, got {len(value)}")
        return None
    if len(value) < min_items:
        d.fail(path, f"must have at least {min_items} item{'s' if min_items > 1 else ''}")
        return None
    items = [check(d, item, f"{path}[{i}]") for i, item in enumerate(value)]
    return None if any(item is None for item in items) else tuple(items)  # type: ignore[misc]


def _unrepeated(d: _Doc, items: Sequence[T], path: str, field: str, key: Callable[[T], str | None],
                what: Callable[[str], str]) -> bool:
    """Refuse the second of two items with one key (listMapKey lists, filters that
    "cannot be repeated", unique rule names); a None key is not compared."""
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        name = key(item)
        if name is not None and name in first:
            d.fail(f"{path}[{i}].{field}", f"{what(name)} (also {path}[{first[name]}])")
            return False
        if name is not None:
            first[name] = i
    return True


def _patterned(pattern: re.Pattern[str], what: str, max_len: int = MAX_NAME,
               empty_ok: bool = False) -> Callable[[_Doc, object, str], str | None]:
    def check(d: _Doc, value: object, path: str) -> str | None:
        text = _string(d, value, path)
        if text is None:
            return None
        if (text or not empty_ok) and (len(text) > max_len or not pattern.fullmatch(text)):
            d.fail(path, f"{text!r} is not {what}")
            return None
        return text
    return check


_subdomain = _patterned(_SUBDOMAIN, "a DNS subdomain: lowercase letters, digits, '-' and '.', "
                                    "at most 253, starting and ending with a letter or digit")
_group = _patterned(_SUBDOMAIN, "an API group: \"\" (the core group) or a DNS subdomain", empty_ok=True)
_kind = _patterned(_KIND, "a kind: letters, digits and '-', at most 63, starting with a letter", 63)
_header_name = _patterned(_HEADER_NAME, "a header name: at most 256 letters, digits and "
                                        "!#$%&'*+-.^_`|~ (an RFC 9110 token)", 256)


def _object_name(d: _Doc, value: object, path: str) -> str | None:
    text = _string(d, value, path)
    if text is not None and not 1 <= len(text) <= MAX_NAME:
        d.fail(path, f"must be 1 to {MAX_NAME} characters, got {len(text)}")
        return None
    return text


def _sized(max_len: int, pattern: re.Pattern[str] | None = None,
           what: str = "") -> Callable[[_Doc, object, str], str | None]:
    """A string of 1..max_len characters, matching `pattern` if given."""
    def check(d: _Doc, value: object, path: str) -> str | None:
        text = _string(d, value, path)
        if text is None:
            return None
        if not 1 <= len(text) <= max_len:
            d.fail(path, f"must be 1 to {max_len} characters, got {len(text)}")
            return None
        if pattern is not None and not pattern.fullmatch(text):
            d.fail(path, f"{text!r} is not {what}")
            return None
        return text
    return check


_header_value = _sized(MAX_HEADER_VALUE, _FIELD_VALUE,
                       "a header value: visible US-ASCII characters, with spaces or tabs only "
                       "between them (RFC 9110 §5.5)")
# A query value as matched: anything but control characters (no request carries them).
_query_value = _sized(MAX_QUERY_VALUE, re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]+"),
                      "a query parameter value: no control characters")


def _timestamp(d: _Doc, value: object, path: str) -> str | None:
    """metadata.creationTimestamp as RFC 3339 (YAML may have read it as a datetime)."""
    when: datetime | None = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            when = None
    if when is None:
        d.fail(path, f"must be an RFC 3339 time such as '2025-01-31T12:00:00Z', got {_describe(value)}")
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime(_TIMESTAMP)


def format_timestamp(seconds: float) -> str:
    """A creationTimestamp for a time.time() value (UTC, microseconds, so that routes
    created one after another keep their order)."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(_TIMESTAMP)


def parse_route(doc: dict[str, Any], file: str, index: int) -> tuple[HTTPRoute | None, list[Problem]]:
    """Build the HTTPRoute a document describes, or list what is wrong with it."""
    d = _Doc(file, document_label(doc, index))
    # `status` is the controller's to write: a document's own is ignored, as the API
    # server ignores it on create (so `meshnode get -o yaml` output applies again).
    top = _fields(d, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"),
                  required=("apiVersion", "kind", "metadata", "spec"))
    if top is None:
        return None, d.problems
    if "apiVersion" in top and top["apiVersion"] not in API_VERSIONS:
        d.fail("apiVersion", f"must be {API_VERSIONS[0]!r} (or {API_VERSIONS[1]!r}) for kind "
                             f"HTTPRoute, got {_describe(top['apiVersion'])}")
    metadata, created = _metadata(d, top["metadata"]) if "metadata" in top else (None, "")
    spec = _spec(d, top["spec"], metadata.namespace if metadata else "default") if "spec" in top else None
    if d.problems or metadata is None or spec is None:
        return None, d.problems
    return HTTPRoute(metadata=metadata, spec=spec, created=created, source=file), []


P = TypeVar("P")


def parse_policy(doc: dict[str, Any], file: str, index: int, cls: Callable[..., P], api_version: str,
                 spec: Callable[[_Doc, object], Any]) -> tuple[P | None, list[Problem]]:
    """A policy document of kind `cls` (a spec required, as a policy CRD's; `spec` reads
    it), or what is wrong with it. Its metadata and creationTimestamp are read as an
    HTTPRoute's (the store replaces the latter)."""
    d = _Doc(file, document_label(doc, index))
    # `status` is the controller's to write: a document's own is ignored, as the API
    # server ignores it (so `meshnode get -o yaml` output applies again).
    top = _fields(d, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"),
                  required=("apiVersion", "kind", "metadata", "spec"))
    if top is None:
        return None, d.problems
    if "apiVersion" in top and top["apiVersion"] != api_version:
        d.fail("apiVersion", f"must be {api_version!r} for kind {cls.KIND}, "  # type: ignore[attr-defined]
                             f"got {_describe(top['apiVersion'])}")
    metadata, created = _metadata(d, top["metadata"]) if "metadata" in top else (None, "")
    parsed = spec(d, top["spec"]) if "spec" in top else None
    if d.problems or metadata is None or parsed is None:
        return None, d.problems
    return cls(metadata=metadata, spec=parsed, created=created, source=file), []


def _metadata(d: _Doc, value: object) -> tuple[Metadata | None, str]:
    # creationTimestamp is read (the store keeps it this way) but a user's is replaced
    # by the store's, as the API server does (Store.apply).
    meta = _fields(d, value, "metadata", ("name", "namespace", "labels", "annotations",
                                          "creationTimestamp"), required=("name",))
    if meta is None:
        return None, ""
    name = _opt(d, meta, "metadata", "name", _subdomain, None)
    namespace = _opt(d, meta, "metadata", "namespace", _dns_label, "default")
    labels = _opt(d, meta, "metadata", "labels", _labels, {})
    annotations = _opt(d, meta, "metadata", "annotations", _annotations, {})
    created = _opt(d, meta, "metadata", "creationTimestamp", _timestamp, "")
    if None in (name, namespace, labels, annotations, created):
        return None, ""
    return Metadata(name, namespace, labels, annotations), created  # type: ignore[arg-type]


def metadata_dict(meta: Metadata, created: str) -> dict[str, Any]:
    """The metadata _metadata reads back: name, namespace, the store's creationTimestamp,
    and labels and annotations when there are any."""
    out: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace}
    out.update((key, value) for key, value in (
        ("creationTimestamp", created), ("labels", dict(meta.labels)),
        ("annotations", dict(meta.annotations))) if value)
    return out


def _spec(d: _Doc, value: object, namespace: str) -> HTTPRouteSpec | None:
    spec = _fields(d, value, "spec", ("parentRefs", "hostnames", "rules", "useDefaultGateways"))
    if spec is None:
        return None
    if "useDefaultGateways" in spec:
        d.fail("spec.useDefaultGateways", "meshnode has no Gateways: a mesh route attaches to "
                                          "Services through parentRefs")
    parents = _opt(d, spec, "spec", "parentRefs",
                   lambda d, v, p: _items(d, v, p, MAX_PARENT_REFS, _parent_ref), ())
    if parents:
        _distinct_parents(d, parents, namespace)
    hostnames = _opt(d, spec, "spec", "hostnames",
                     lambda d, v, p: _items(d, v, p, MAX_HOSTNAMES, _hostname), ())
    rules = _opt(d, spec, "spec", "rules", _rules, (RouteRule(),))
    if parents is None or hostnames is None or rules is None:
        return None
    return HTTPRouteSpec(parents, hostnames, rules)


def _parent_ref(d: _Doc, value: object, path: str) -> ParentRef | None:
    fields = _fields(d, value, path, ("group", "kind", "namespace", "name", "sectionName", "port"),
                     required=("name",))
    if fields is None:
        return None
    # The spec's defaults are a Gateway's; a Service parent names its group and kind.
    group = _opt(d, fields, path, "group", _group, GROUP)
    kind = _opt(d, fields, path, "kind", _kind, "Gateway")
    namespace = _opt(d, fields, path, "namespace", _dns_label, None)
    name = _opt(d, fields, path, "name", _object_name, None)
    section = _opt(d, fields, path, "sectionName", _subdomain, None)
    port = _opt(d, fields, path, "port", _port, None)
    if kind == "Gateway" and group == GROUP:
        d.fail(join(path, "kind"), "a Gateway parent is not supported: meshnode has no Gateways; "
                                   "a mesh route's parent is a Service (kind: Service, group: \"\")"
                                   + ("" if "kind" in fields else " (kind defaults to Gateway)"))
        return None
    if kind is not None and kind != "Service":
        d.fail(join(path, "kind"), f"parent kind {kind!r} is not supported: a mesh route's parent "
                                   "is a Service (kind: Service, group: \"\")")
        return None
    if group is not None and group not in CORE_GROUPS:
        d.fail(join(path, "group"), f"a Service is in the core group: write group: \"\" (or core), "
                                    f"got {group!r}" + ("" if "group" in fields else
                                                        f" (group defaults to {GROUP})"))
        return None
    if None in (group, kind, name) or ("namespace" in fields and namespace is None) \
            or ("sectionName" in fields and section is None) or ("port" in fields and port is None):
        return None
    return ParentRef(name, group, kind, namespace, section, port)  # type: ignore[arg-type]


def _distinct_parents(d: _Doc, parents: Sequence[ParentRef], namespace: str) -> None:
    """The spec's CEL rule: references to one parent each set the same optional fields
    (sectionName, port) and differ in them."""
    first: dict[tuple[str, str], int] = {}
    seen: dict[tuple[str, str, str | None, int | None], int] = {}
    for i, ref in enumerate(parents):
        target = (ref.namespace or namespace, ref.name)
        at = f"spec.parentRefs[{i}]"
        if target in first:
            j = first[target]
            other = parents[j]
            if (ref.section_name is None) != (other.section_name is None) \
                    or (ref.port is None) != (other.port is None):
                d.fail(at, f"Service {target[0]}/{target[1]} is also spec.parentRefs[{j}]: references "
                           "to one parent must all set sectionName or none, and port or none")
                continue
        first.setdefault(target, i)
        key = (*target, ref.section_name, ref.port)
        if key in seen:
            d.fail(at, f"same parent as spec.parentRefs[{seen[key]}]: references to one Service "
                       "must differ in sectionName or port")
        seen.setdefault(key, i)


_hostname_text = _patterned(_HOSTNAME, "a hostname: lowercase DNS labels joined by '.', optionally after '*.'")


def _hostname(d: _Doc, value: object, path: str) -> str | None:
    text = _hostname_text(d, value, path)
    if text is None:
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text
    d.fail(path, f"{text!r} is an IP address: hostnames are names")
    return None


def _rules(d: _Doc, value: object, path: str) -> tuple[RouteRule, ...] | None:
    if isinstance(value, list) and not value:
        d.fail(path, "must have at least 1 rule (leave rules out for the default: one rule "
                     "matching every request, with no backends)")
        return None
    rules = _items(d, value, path, MAX_RULES, _rule)
    if rules is None:
        return None
    total = sum(len(rule.matches) for rule in rules)
    if total > MAX_MATCHES:
        d.fail(path, f"has {total} matches in all: a route may have at most {MAX_MATCHES}")
        return None
    unique = _unrepeated(d, rules, path, "name", lambda rule: rule.name,
                         lambda name: f"duplicate rule name {name!r}: a rule's name is unique within "
                                      "its route")
    return rules if unique else None


def _rule(d: _Doc, value: object, path: str) -> RouteRule | None:
    not_yet = NOT_IMPLEMENTED["rule fields"]
    fields = _fields(d, value, path, ("name", "matches", "filters", "backendRefs", "timeouts", "retry",
                                      *not_yet))
    if fields is None:
        return None
    for key in not_yet:
        if key in fields:
            _not_yet(d, join(path, key), key)
    name = _opt(d, fields, path, "name", _subdomain, None)
    matches = _opt(d, fields, path, "matches",
                   lambda d, v, p: _items(d, v, p, MAX_MATCHES_PER_RULE, _match), (RouteMatch(),))
    filters = _opt(d, fields, path, "filters", _filters, ())
    backends = _opt(d, fields, path, "backendRefs",
                    lambda d, v, p: _items(d, v, p, MAX_BACKEND_REFS, _backend_ref), ())
    timeouts = _opt(d, fields, path, "timeouts", _timeouts, None)
    retry = _opt(d, fields, path, "retry", lambda d, v, p: parse_retry(d, v, p, _gateway_duration), None)
    if None in (matches, filters, backends) or ("name" in fields and name is None) \
            or ("timeouts" in fields and timeouts is None) or ("retry" in fields and retry is None) \
            or any(k in fields for k in not_yet):
        return None
    if not check_rule(d, path, matches, filters, backends, MAX_HEADER_GROWTH):  # type: ignore[arg-type]
        return None
    return RouteRule(name, matches, filters, backends, timeouts, retry)  # type: ignore[arg-type]


def _match(d: _Doc, value: object, path: str) -> RouteMatch | None:
    fields = _fields(d, value, path, ("path", "headers", "queryParams", "method"))
    if fields is None:
        return None
    path_match = _opt(d, fields, path, "path", _path_match, PathMatch())
    headers = _opt(d, fields, path, "headers",
                   _value_matches(_header_value, MAX_HEADER_VALUE, headers=True), ())
    query = _opt(d, fields, path, "queryParams",
                 _value_matches(_query_value, MAX_QUERY_VALUE, headers=False), ())
    method = _opt(d, fields, path, "method", _choice(METHODS), None)
    if None in (path_match, headers, query) or ("method" in fields and method is None):
        return None
    return RouteMatch(path_match, headers, query, method)  # type: ignore[arg-type]


def _path_match(d: _Doc, value: object, path: str) -> PathMatch | None:
    fields = _fields(d, value, path, ("type", "value"))
    if fields is None:
        return None
    kind = _opt(d, fields, path, "type", _choice(PATH_TYPES), "PathPrefix")
    text = _opt(d, fields, path, "value", _string, "/")
    if kind in NOT_IMPLEMENTED["match types"]:
        _not_yet(d, join(path, "type"), f"a {kind} match")
        return None
    if kind is None or text is None:
        return None
    problem = _path_problem(kind, text)
    if problem:
        d.fail(join(path, "value"), problem)
        return None
    return PathMatch(kind, text)


def _path_problem(kind: str, value: str) -> str | None:
    """The spec's checks of a path match's value (HTTPPathMatch's CEL rules)."""
    if len(value) > MAX_PATH:
        return f"must be at most {MAX_PATH} characters, got {len(value)}"
    if kind == "RegularExpression":
        return _regex_problem(value)
    if not value.startswith("/"):
        return f"{value!r} must be an absolute path, starting with '/'"
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            return f"{value!r} must not contain {bad!r}"
    for bad in ("/..", "/."):
        if value.endswith(bad):
            return f"{value!r} must not end with {bad!r}"
    if not _PATH_CHARS.fullmatch(value):
        return (f"{value!r} has a character a path may not hold: use letters, digits, "
                "-/._~!$&'()*+,;=:@ and %XX escapes")
    return None


def _value_matches(check_exact: Callable[[_Doc, object, str], str | None], max_len: int,
                   headers: bool) -> Callable[[_Doc, object, str], tuple[ValueMatch, ...] | None]:
    """headers or queryParams of a match: a list keyed by name (listMapKey), so a name
    written twice is refused. Header names differing in case only are allowed, and all
    but the first are ignored when matching, as the spec says (routes.py)."""
    def one(d: _Doc, value: object, path: str) -> ValueMatch | None:
        fields = _fields(d, value, path, ("type", "name", "value"), required=("name", "value"))
        if fields is None:
            return None
        kind = _opt(d, fields, path, "type", _choice(VALUE_TYPES), "Exact")
        if kind in NOT_IMPLEMENTED["match types"]:
            _not_yet(d, join(path, "type"), f"a {kind} match")
            return None
        name = _opt(d, fields, path, "name", _header_name, None)
        check_value = _sized(max_len) if kind == "RegularExpression" else check_exact
        text = _opt(d, fields, path, "value", check_value, None)
        if kind == "RegularExpression" and text is not None:
            problem = _regex_problem(text)
            if problem:
                d.fail(join(path, "value"), problem)
                return None
        if None in (kind, name, text):
            return None
        return ValueMatch(name, text, kind)  # type: ignore[arg-type]

    def check(d: _Doc, value: object, path: str) -> tuple[ValueMatch, ...] | None:
        items = _items(d, value, path, MAX_MATCH_CONDITIONS, one)
        what = "header" if headers else "query parameter"
        if items is None or not _unrepeated(d, items, path, "name", lambda item: item.name,
                                            lambda name: f"duplicate {what} name {name!r}"):
            return None
        return items
    return check


def _filters(d: _Doc, value: object, path: str, refused: str = "filter types") -> tuple[RouteFilter, ...] | None:
    """A rule's filters, or a backendRef's (`refused`: the NOT_IMPLEMENTED list that says
    which types it may not have yet)."""
    filters = _items(d, value, path, MAX_FILTERS, lambda d, v, p: _filter(d, v, p, refused))
    # RequestMirror and ExtensionRef may be repeated (HTTPRouteRule.filters); one rule
    # running two ExtensionRefs is not implemented yet.
    if filters is None or not _unrepeated(
            d, filters, path, "type", lambda item: None if item.type == "RequestMirror" else item.type,
            lambda kind: "a second ExtensionRef filter in one rule is not implemented yet"
            if kind == "ExtensionRef" else f"{kind} filter cannot be repeated"):
        return None
    mirrors = [i for i, item in enumerate(filters) if item.type == "RequestMirror"]
    if len(mirrors) > MAX_MIRRORS:
        d.fail(f"{path}[{mirrors[MAX_MIRRORS]}].type",
               f"at most {MAX_MIRRORS} RequestMirror filters per rule (a request's copies are fed "
               "its body as it passes, each with a buffer of its own)")
        return None
    return filters


def _filter(d: _Doc, value: object, path: str, refused: str) -> RouteFilter | None:
    fields = _fields(d, value, path, ("type", *FILTER_FIELDS.values()), required=("type",))
    if fields is None:
        return None
    kind = _opt(d, fields, path, "type", _choice(tuple(FILTER_FIELDS)), None)
    if kind is None:
        return None
    if kind in NOT_IMPLEMENTED[refused]:
        _not_yet(d, join(path, "type"), kind if refused == "filter types" else f"{kind} on a backendRef")
        return None
    member = FILTER_FIELDS[kind]
    ok = True
    for key in fields:
        if key not in ("type", member):
            d.fail(join(path, key), f"must be absent when type is {kind} (it goes with type "
                                    f"{next(t for t, f in FILTER_FIELDS.items() if f == key)})")
            ok = False
    if member not in fields:
        d.fail(join(path, member), f"required when type is {kind}")
        return None
    if kind == "RequestMirror":
        mirror = _mirror(d, fields[member], join(path, member))
        return RouteFilter(kind, mirror=mirror) if ok and mirror is not None else None
    if kind in ("RequestRedirect", "URLRewrite"):
        parse = parse_redirect if kind == "RequestRedirect" else parse_rewrite
        parsed = parse(d, fields[member], join(path, member))
        return parsed if ok else None
    if kind == "ExtensionRef":
        ref = _extension_ref(d, fields[member], join(path, member))
        return RouteFilter(kind, extension_ref=ref) if ok and ref is not None else None
    headers = _header_modifier(d, fields[member], join(path, member),
                               request=kind == "RequestHeaderModifier")
    return RouteFilter(kind, headers=headers) if ok and headers is not None else None


def _mirror(d: _Doc, value: object, path: str) -> Mirror | None:
    """HTTPRequestMirrorFilter: backendRef (a BackendObjectReference: no weight, no
    filters), and at most one of percent (0..100) and fraction (numerator <= denominator,
    denominator >= 1, 100 unless given)."""
    fields = _fields(d, value, path, ("backendRef", "percent", "fraction"), required=("backendRef",))
    if fields is None:
        return None
    at = join(path, "backendRef")
    ref_fields = _fields(d, fields["backendRef"], at, ("group", "kind", "name", "namespace", "port"),
                         required=("name",))
    ref = _backend_ref(d, fields["backendRef"], at) if ref_fields is not None else None
    if "percent" in fields and "fraction" in fields:
        d.fail(path, "percent and fraction are exclusive: give one of them")
        return None
    if "percent" in fields:
        percent = _int(d, fields["percent"], join(path, "percent"), 0, 100)
        return None if ref is None or percent is None else Mirror(ref, percent, 100, "percent")
    if "fraction" in fields:
        at = join(path, "fraction")
        part = _fields(d, fields["fraction"], at, ("numerator", "denominator"), required=("numerator",))
        if part is None:
            return None
        numerator = _opt(d, part, at, "numerator", lambda d, v, p: _int(d, v, p, 0, 2**31 - 1), None)
        denominator = _opt(d, part, at, "denominator", lambda d, v, p: _int(d, v, p, 1, 2**31 - 1), 100)
        if numerator is None or denominator is None or ref is None:
            return None
        if numerator > denominator:
            d.fail(at, f"numerator ({numerator}) must be less than or equal to denominator ({denominator})")
            return None
        return Mirror(ref, numerator, denominator, "fraction")
    return None if ref is None else Mirror(ref)


def _extension_ref(d: _Doc, value: object, path: str) -> ExtensionRef | None:
    """LocalObjectReference: group ("" is the core group), kind and name, all required;
    what it names is resolved against the config in force (filters.py), not here."""
    fields = _fields(d, value, path, ("group", "kind", "name"), required=("group", "kind", "name"))
    if fields is None:
        return None
    group = _opt(d, fields, path, "group", _group, None)
    kind = _opt(d, fields, path, "kind", _kind, None)
    name = _opt(d, fields, path, "name", _object_name, None)
    if None in (group, kind, name):
        return None
    return ExtensionRef(group, kind, name)  # type: ignore[arg-type]


def _header_modifier(d: _Doc, value: object, path: str, request: bool) -> HeaderModifier | None:
    fields = _fields(d, value, path, ("set", "add", "remove"))
    if fields is None:
        return None
    set_ = _opt(d, fields, path, "set", _header_list, ())
    add = _opt(d, fields, path, "add", _header_list, ())
    remove = _opt(d, fields, path, "remove",
                  lambda d, v, p: _items(d, v, p, MAX_HEADER_ACTIONS, _header_name), ())
    if set_ is None or add is None or remove is None:
        return None
    # One action per header name, names compared without case (HTTPHeaderFilter).
    managed = _FRAMING_HEADERS | _NODE_HEADERS | (_REQUEST_ONLY_HEADERS if request else frozenset())
    acted: dict[str, str] = {}
    actions = [(f"{path}.set[{i}].name", name) for i, (name, _) in enumerate(set_)]
    actions += [(f"{path}.add[{i}].name", name) for i, (name, _) in enumerate(add)]
    actions += [(f"{path}.remove[{i}]", name) for i, name in enumerate(remove)]
    ok = True
    for at, name in actions:
        lowered = name.lower()
        if lowered in managed:
            d.fail(at, f"{name!r} is the node's to write (it frames the message, manages the "
                       "connection, names the authority or carries a node's word): a header "
                       "filter may not change it")
            ok = False
        elif lowered in acted:
            d.fail(at, f"header {name!r} already has an action ({acted[lowered]}): a filter takes "
                       "one action per header name, names compared without case")
            ok = False
        acted.setdefault(lowered, at)
    growth = sum(len(name) + len(text) + 4 for name, text in (*set_, *add))  # "name: value\r\n"
    if growth > MAX_HEADER_GROWTH:
        d.fail(path, f"its set and add would add up to {growth} bytes to a "
                     f"{'request' if request else 'response'} head: at most {MAX_HEADER_GROWTH} "
                     "(the room the node keeps in each head)")
        ok = False
    return HeaderModifier(set_, add, remove) if ok else None


def _header_list(d: _Doc, value: object, path: str) -> tuple[tuple[str, str], ...] | None:
    def one(d: _Doc, value: object, path: str) -> tuple[str, str] | None:
        fields = _fields(d, value, path, ("name", "value"), required=("name", "value"))
        if fields is None:
            return None
        name = _opt(d, fields, path, "name", _header_name, None)
        text = _opt(d, fields, path, "value", _header_value, None)
        return None if name is None or text is None else (name, text)
    return _items(d, value, path, MAX_HEADER_ACTIONS, one)


def _backend_ref(d: _Doc, value: object, path: str) -> BackendRef | None:
    not_yet = NOT_IMPLEMENTED["backendRef fields"]
    fields = _fields(d, value, path, ("group", "kind", "name", "namespace", "port", "weight", "filters",
                                      *not_yet),
                     required=("name",))
    if fields is None:
        return None
    for key in not_yet:
        if key in fields:
            _not_yet(d, join(path, key), key)
    group = _opt(d, fields, path, "group", _group, "")
    kind = _opt(d, fields, path, "kind", _kind, "Service")
    name = _opt(d, fields, path, "name", _object_name, None)
    namespace = _opt(d, fields, path, "namespace", _dns_label, None)
    port = _opt(d, fields, path, "port", _port, None)
    weight = _opt(d, fields, path, "weight", lambda d, v, p: _int(d, v, p, 0, MAX_WEIGHT), 1)
    filters = _opt(d, fields, path, "filters",
                   lambda d, v, p: _filters(d, v, p, "backendRef filter types"), ())
    if group in CORE_GROUPS and kind == "Service" and "port" not in fields:
        d.fail(join(path, "port"), "required for a Service backend (the Service's port, not its "
                                   "target port)")
        return None
    if None in (group, kind, name, weight, filters) or ("namespace" in fields and namespace is None) \
            or ("port" in fields and port is None) or any(k in fields for k in not_yet):
        return None
    return BackendRef(name, group, kind, namespace, port, weight, filters)  # type: ignore[arg-type]


_gateway_duration = _patterned(_GATEWAY_DURATION, "a Gateway API duration (GEP-2257): 1 to 4 parts, each "
                                                  "1 to 5 digits and a unit h, m, s or ms, such as '10s', "
                                                  "'1m30s' or '500ms'", max_len=64)


def _timeouts(d: _Doc, value: object, path: str) -> Timeouts | None:
    fields = _fields(d, value, path, ("request", "backendRequest"))
    if fields is None:
        return None
    request = _opt(d, fields, path, "request", _gateway_duration, None)
    backend = _opt(d, fields, path, "backendRequest", _gateway_duration, None)
    if ("request" in fields and request is None) or ("backendRequest" in fields and backend is None):
        return None
    for key, text in (("request", request), ("backendRequest", backend)):
        if text is not None and parse_duration(text) > MAX_TIMEOUT_S:
            d.fail(join(path, key), f"{text!r} is longer than the longest timeout meshnode keeps, 24h")
            return None
    if request is not None and backend is not None:
        limit = parse_duration(request)
        if limit and parse_duration(backend) > limit:
            d.fail(join(path, "backendRequest"), f"backendRequest timeout ({backend}) cannot be longer "
                                                 f"than request timeout ({request})")
            return None
    return Timeouts(request, backend)


def route_to_dict(route: HTTPRoute) -> dict[str, Any]:
    """The route as Kubernetes would show it: the user's values as written, the spec's
    defaults filled in; parse_route reads it back equal."""
    metadata = metadata_dict(route.metadata, route.created)
    spec: dict[str, Any] = {"parentRefs": [parent_ref_dict(p) for p in route.spec.parent_refs]}
    if route.spec.hostnames:
        spec["hostnames"] = list(route.spec.hostnames)
    spec["rules"] = [_rule_dict(rule) for rule in route.spec.rules]
    return {"apiVersion": API_VERSIONS[0], "kind": route.kind, "metadata": metadata, "spec": spec}


def _present(*pairs: tuple[str, Any]) -> dict[str, Any]:
    """The fields that are set (None: left out), in the order given."""
    return {key: value for key, value in pairs if value is not None}


def parent_ref_dict(ref: ParentRef) -> dict[str, Any]:
    return _present(("group", ref.group), ("kind", ref.kind), ("namespace", ref.namespace),
                    ("name", ref.name), ("sectionName", ref.section_name), ("port", ref.port))


def _rule_dict(rule: RouteRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.name is not None:
        out["name"] = rule.name
    out["matches"] = [_match_dict(m) for m in rule.matches]
    if rule.filters:
        out["filters"] = [_filter_dict(f) for f in rule.filters]
    if rule.backend_refs:
        out["backendRefs"] = [_backend_dict(b) for b in rule.backend_refs]
    if rule.timeouts is not None:
        out["timeouts"] = _present(("request", rule.timeouts.request),
                                   ("backendRequest", rule.timeouts.backend_request))
    if rule.retry is not None:
        out["retry"] = retry_dict(rule.retry)
    return out


def _match_dict(match: RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"path": {"type": match.path.type, "value": match.path.value}}
    if match.headers:
        out["headers"] = [{"type": h.type, "name": h.name, "value": h.value} for h in match.headers]
    if match.query_params:
        out["queryParams"] = [{"type": q.type, "name": q.name, "value": q.value} for q in match.query_params]
    if match.method is not None:
        out["method"] = match.method
    return out


def _mirror_dict(mirror: Mirror) -> dict[str, Any]:
    ref = mirror.backend
    out: dict[str, Any] = {"backendRef": _present(("group", ref.group), ("kind", ref.kind), ("name", ref.name),
                                                  ("namespace", ref.namespace), ("port", ref.port))}
    if mirror.written == "percent":
        out["percent"] = mirror.numerator
    elif mirror.written == "fraction":
        out["fraction"] = {"numerator": mirror.numerator, "denominator": mirror.denominator}
    return out


def _filter_dict(f: RouteFilter) -> dict[str, Any]:
    if f.extension_ref is not None:
        ref = f.extension_ref
        return {"type": f.type, FILTER_FIELDS[f.type]: {"group": ref.group, "kind": ref.kind,
                                                          "name": ref.name}}
    out = filter_dict(f)
    if out is None:
        out = {"type": f.type, FILTER_FIELDS[f.type]: _mirror_dict(f.mirror) if f.mirror
               else _modifier_dict(f.headers or HeaderModifier())}
    return out


def _modifier_dict(mod: HeaderModifier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if mod.set:
        out["set"] = [{"name": n, "value": v} for n, v in mod.set]
    if mod.add:
        out["add"] = [{"name": n, "value": v} for n, v in mod.add]
    if mod.remove:
        out["remove"] = list(mod.remove)
    return out


def _backend_dict(ref: BackendRef) -> dict[str, Any]:
    return _present(("group", ref.group), ("kind", ref.kind), ("name", ref.name),
                    ("namespace", ref.namespace), ("port", ref.port), ("weight", ref.weight),
                    ("filters", [_filter_dict(f) for f in ref.filters] if ref.filters else None))
