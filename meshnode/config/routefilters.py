"""HTTPRoute's RequestRedirect and URLRewrite filters: checked as Gateway API v1 says, and written back.

The checks are the spec's (apis/v1/httproute_types.go: HTTPRequestRedirectFilter,
HTTPURLRewriteFilter, HTTPPathModifier and their CEL rules, and HTTPRouteRule's rules that
pair them with matches and backendRefs), plus the one the data plane needs: a path it
writes into a request line or a Location holds only what a path may (no space, no
control character, no "?" or "#"), so no route can split a head or re-aim a redirect.
routeparse.py calls in here for a filter of these types and for each rule.
"""
from __future__ import annotations

import re
from typing import Any

from .httproute import (BackendRef, HeaderModifier, PathModifier, RequestRedirect, RouteFilter, RouteMatch, RouteRule,
                        URLRewrite)
from .validate import _Doc, _fields, _port, _string, join

PATH_TYPES = ("ReplaceFullPath", "ReplacePrefixMatch")
SCHEMES = ("http", "https")
STATUS_CODES = (301, 302, 303, 307, 308)
MAX_PATH = 1024
PATH_VALUE = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
# PreciseHostname (apis/v1/shared_types.go): no wildcard.
_PRECISE_HOSTNAME = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
# RFC 3986 path characters and %XX escapes: what fastpath writes into a head or a Location.
_PATH = re.compile(r"/(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})*")


def _hostname(d: _Doc, value: object, path: str) -> str | None:
    text = _string(d, value, path)
    if text is not None and (len(text) > 253 or not _PRECISE_HOSTNAME.fullmatch(text)):
        d.fail(path, f"{text!r} is not a hostname: lowercase DNS labels joined by '.' (no wildcard, "
                     "no port, at most 253 characters)")
        return None
    return text


def _path_value(d: _Doc, value: object, path: str, empty_ok: bool) -> str | None:
    text = _string(d, value, path)
    if text is None:
        return None
    if len(text) > MAX_PATH:
        d.fail(path, f"must be at most {MAX_PATH} characters, got {len(text)}")
        return None
    if (text or not empty_ok) and not _PATH.fullmatch(text):
        d.fail(path, f"{text!r} is not a path meshnode writes: it starts with '/' and holds letters, "
                     "digits, -/._~!$&'()*+,;=:@ and %XX escapes only (the query stays the request's)")
        return None
    return text


def _path_modifier(d: _Doc, value: object, path: str) -> PathModifier | None:
    fields = _fields(d, value, path, ("type", *PATH_VALUE.values()), required=("type",))
    if fields is None:
        return None
    kind = fields["type"] if "type" in fields else None
    if kind not in PATH_TYPES:
        d.fail(join(path, "type"), f"must be one of {', '.join(PATH_TYPES)}, got {kind!r}")
        return None
    member = PATH_VALUE[kind]
    other_kind = PATH_TYPES[1 - PATH_TYPES.index(kind)]
    other = PATH_VALUE[other_kind]
    if other in fields:
        d.fail(join(path, other), f"type must be '{other_kind}' when {other} is set")
        return None
    if member not in fields:
        d.fail(join(path, member), f"{member} must be specified when type is set to '{kind}'")
        return None
    text = _path_value(d, fields[member], join(path, member), empty_ok=kind == "ReplacePrefixMatch")
    return None if text is None else PathModifier(kind, text)


def _status(d: _Doc, value: object, path: str) -> int | None:
    if isinstance(value, bool) or value not in STATUS_CODES:
        d.fail(path, f"must be one of {', '.join(map(str, STATUS_CODES))}, got {value!r}")
        return None
    return int(value)  # type: ignore[call-overload]


def _parts(d: _Doc, value: object, path: str, allowed: tuple[str, ...]) -> dict[str, Any] | None:
    """A redirect's or rewrite's fields, each checked (hostname, path, and a redirect's
    port and statusCode); None when any is wrong."""
    fields = _fields(d, value, path, allowed)
    if fields is None:
        return None
    checks = {"hostname": _hostname, "path": _path_modifier, "port": _port, "statusCode": _status}
    parts = {key: checks[key](d, fields[key], join(path, key)) for key in fields if key in checks}
    if "scheme" in fields and fields["scheme"] not in SCHEMES:
        d.fail(join(path, "scheme"), f"must be one of {', '.join(SCHEMES)}, got {fields['scheme']!r}")
        return None
    return None if None in parts.values() else {**fields, **parts}


def parse_redirect(d: _Doc, value: object, path: str) -> RouteFilter | None:
    got = _parts(d, value, path, ("scheme", "hostname", "path", "port", "statusCode"))
    if got is None:
        return None
    return RouteFilter("RequestRedirect", redirect=RequestRedirect(
        got.get("scheme"), got.get("hostname"), got.get("path"), got.get("port"), got.get("statusCode", 302)))


def parse_rewrite(d: _Doc, value: object, path: str) -> RouteFilter | None:
    got = _parts(d, value, path, ("hostname", "path"))
    return None if got is None else RouteFilter("URLRewrite", rewrite=URLRewrite(got.get("hostname"), got.get("path")))


def _growth(mod: HeaderModifier | None) -> int:
    return 0 if mod is None else sum(len(n) + len(v) + 4 for n, v in (*mod.set, *mod.add))


def rewrite_growth(rewrite: URLRewrite | None) -> int:
    """The most a URLRewrite adds to a head, as fastpath counts it (route_filters_table.pxi):
    a Host line, and the path and the "/" an emptied one gets."""
    if rewrite is None:
        return 0
    return ((len(rewrite.hostname) + 8 if rewrite.hostname else 0)
            + (len(rewrite.path.value) + 1 if rewrite.path else 0))


def check_rule(d: _Doc, path: str, matches: tuple[RouteMatch, ...], filters: tuple[RouteFilter, ...],
               backends: tuple[BackendRef, ...], max_growth: int) -> bool:
    """HTTPRouteRule's CEL rules on these filters, and the room the data plane keeps for
    what a rule (with any one of its backendRefs' filters) adds to a head."""
    kinds = [f.type for f in filters]
    ok = True
    if "RequestRedirect" in kinds and "URLRewrite" in kinds:
        d.fail(join(path, "filters"), "May specify either httpRouteFilterRequestRedirect or "
                                      "httpRouteFilterRequestRewrite, but not both")
        ok = False
    if "RequestRedirect" in kinds and backends:
        d.fail(join(path, "backendRefs"), "RequestRedirect filter must not be used together with "
                                          "backendRefs")
        ok = False
    for f in filters:
        modifier = (f.redirect or f.rewrite).path if (f.redirect or f.rewrite) else None
        if modifier is not None and modifier.type == "ReplacePrefixMatch" and (
                len(matches) != 1 or matches[0].path.type != "PathPrefix"):
            d.fail(join(path, "matches"), f"When using {f.type} filter with path.replacePrefixMatch, "
                                          "exactly one PathPrefix match must be specified")
            ok = False
    own = {f.type: f for f in filters}
    for direction, kind in (("request", "RequestHeaderModifier"), ("response", "ResponseHeaderModifier")):
        base = _growth(own[kind].headers if kind in own else None)
        if direction == "request":
            base += rewrite_growth(own["URLRewrite"].rewrite if "URLRewrite" in own else None)
        most = max([0] + [_growth(g.headers) for b in backends for g in b.filters if g.type == kind])
        if base + most > max_growth:
            d.fail(path, f"its filters and a backendRef's would add up to {base + most} bytes to a "
                         f"{direction} head: at most {max_growth} (the room the node keeps in each head)")
            ok = False
    return ok


def _modifier_dict(mod: PathModifier) -> dict[str, Any]:
    return {"type": mod.type, PATH_VALUE[mod.type]: mod.value}


def filter_dict(f: RouteFilter) -> dict[str, Any] | None:
    """A RequestRedirect or URLRewrite filter as written (the statusCode default filled
    in, as the API server does); None for the other types."""
    if f.redirect is not None:
        r = f.redirect
        out: dict[str, Any] = {}
        for key, value in (("scheme", r.scheme), ("hostname", r.hostname),
                           ("path", _modifier_dict(r.path) if r.path else None), ("port", r.port),
                           ("statusCode", r.status_code)):
            if value is not None:
                out[key] = value
        return {"type": f.type, "requestRedirect": out}
    if f.rewrite is not None:
        w = f.rewrite
        out = {}
        if w.hostname is not None:
            out["hostname"] = w.hostname
        if w.path is not None:
            out["path"] = _modifier_dict(w.path)
        return {"type": f.type, "urlRewrite": out}
    return None


_WELL_KNOWN_PORTS = {"http": 80, "https": 443}


def _prefix(rule: RouteRule, path: PathModifier | None) -> str | None:
    """The PathPrefix a ReplacePrefixMatch replaces: the rule's one match's (check_rule)."""
    if path is None or path.type != "ReplacePrefixMatch":
        return None
    return rule.matches[0].path.value if rule.matches else "/"


def redirect_spec(rule: RouteRule, listener_port: int) -> dict[str, Any] | None:
    """A rule's RequestRedirect for the snapshot, its Location's port settled as the spec
    says (HTTPRequestRedirectFilter.Port): the filter's; else, with a scheme, that
    scheme's well-known port; else the listener's, which in a mesh is the Service port
    the request was sent to. None (no port written) when it is the scheme's own: http
    and 80, https and 443. Without a scheme, the request's: an app's outbound request
    to its node is plain http (the mesh's mTLS is the node's, not the app's)."""
    r = next((f.redirect for f in rule.filters if f.redirect is not None), None)
    if r is None:
        return None
    scheme = r.scheme or "http"
    port = r.port or (_WELL_KNOWN_PORTS[r.scheme] if r.scheme else listener_port)
    return {"status": r.status_code, "scheme": scheme, "hostname": r.hostname,
            "port": None if _WELL_KNOWN_PORTS[scheme] == port else port,
            "path": {"type": r.path.type, "value": r.path.value} if r.path else None,
            "prefix": _prefix(rule, r.path)}


def rewrite_spec(rule: RouteRule) -> dict[str, Any] | None:
    """A rule's URLRewrite for the snapshot."""
    w = next((f.rewrite for f in rule.filters if f.rewrite is not None), None)
    if w is None:
        return None
    return {"hostname": w.hostname, "path": {"type": w.path.type, "value": w.path.value} if w.path else None,
            "prefix": _prefix(rule, w.path)}
