# route_filters_table.pxi: A rule's URLRewrite and RequestRedirect, and its backendRefs'
# own header modifiers, as RouteTable.add_route_rule() takes them: checked with the GIL
# (no byte reaches a head or a Location that could split a line or change where it
# leads) and compiled to the UrlFilter route_filters.pxi reads.
#
# Included into fastpath/engine.pyx after routes_table.pxi (it uses its helpers).

_REDIRECT_STATUSES = (301, 302, 303, 307, 308)     # HTTPRequestRedirectFilter.StatusCode
_SCHEMES = ("http", "https")
_PATH_OPS = {"ReplaceFullPath": PATH_FULL, "ReplacePrefixMatch": PATH_PREFIX}
# What a path written into a head or a Location may hold (RFC 3986 pchar and "/"): no
# space, no control character, no "?" or "#" (the query is the request's own).
_PATH_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        b"-._~!$&'()*+,;=:@/%")
_HOST_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-.")


cdef bytes _url_path(object value, str what, bint empty_ok):
    b = str(value).encode("utf-8")
    if not b and empty_ok:
        return b
    if (not b.startswith(b"/") or len(b) > ROUTE_VALUE_MAX
            or any(ch not in _PATH_BYTES for ch in b)):
        raise ValueError("%s %r: a path starts with / and holds letters, digits, "
                         "-._~!$&'()*+,;=:@/ and %%XX escapes only" % (what, value))
    return b


cdef bytes _url_host(object value, str what):
    b = str(value).encode("utf-8")
    if not b or len(b) > 253 or any(ch not in _HOST_BYTES for ch in b):
        raise ValueError("%s %r is not a hostname (lowercase letters, digits, - and .)"
                         % (what, value))
    return b


cdef tuple _url_filter(object redirect, object rewrite, str name):
    """(redirect status or 0, scheme, hostname, port or 0, PathOp, path, prefix) of a
    rule's RequestRedirect or URLRewrite, None for neither. A prefix replacement's
    `prefix` is the rule's PathPrefix match; both lose a trailing "/" ("/" is empty),
    so that whole segments are replaced as the spec's table shows."""
    if redirect is not None and rewrite is not None:
        raise ValueError("rule %r: a RequestRedirect and a URLRewrite cannot go together"
                         % name)
    spec = redirect if redirect is not None else rewrite
    if spec is None:
        return None
    what = "rule %r %s" % (name, "redirect" if redirect is not None else "rewrite")
    known = (("status", "scheme", "hostname", "port", "path", "prefix")
             if redirect is not None else ("hostname", "path", "prefix"))
    for key in spec:
        if key not in known:
            raise ValueError("%s: %r is not one of %s" % (what, key, ", ".join(known)))
    status, scheme, port = 0, b"", 0
    if redirect is not None:
        status = spec.get("status") or 302
        if status not in _REDIRECT_STATUSES:
            raise ValueError("%s: status %r is not one of %s" % (what, status, _REDIRECT_STATUSES))
        scheme_s = spec.get("scheme") or "http"
        if scheme_s not in _SCHEMES:
            raise ValueError("%s: scheme %r is not http or https" % (what, scheme_s))
        scheme = scheme_s.encode()
        port = spec.get("port") or 0
        if not 0 <= port <= 65535:
            raise ValueError("%s: port %r is not 1..65535" % (what, port))
    host = b""
    if spec.get("hostname") is not None:
        host = _url_host(spec["hostname"], what + " hostname")
    op, path, prefix = PATH_KEEP, b"", b""
    if spec.get("path") is not None:
        kind, value = spec["path"]
        if kind not in _PATH_OPS:
            raise ValueError("%s: path type %r is not ReplaceFullPath or ReplacePrefixMatch"
                             % (what, kind))
        op = _PATH_OPS[kind]
        path = _url_path(value, what + " path", op == PATH_PREFIX)
        if op == PATH_PREFIX:
            if spec.get("prefix") is None:
                raise ValueError("%s: ReplacePrefixMatch needs the rule's PathPrefix" % what)
            prefix = _url_path(spec["prefix"], what + " prefix", False).rstrip(b"/")
            path = path.rstrip(b"/")
    return (status, scheme, host, port, op, path, prefix)


cdef uint32_t _url_grow(tuple url):
    """The most a rewrite adds to a head: a Host line (when the request had none) and
    the path (the new one, and the "/" an emptied one gets)."""
    if url is None or url[0] != 0:
        return 0
    status, scheme, host, port, op, path, prefix = url
    return (len(host) + 8 if host else 0) + (len(path) + 1 if op != PATH_KEEP else 0)


cdef list _merged_edits(list rule_edits, list ref_edits):
    """A rule's header edits, then a backendRef's, as one list that _route_edit applies
    (removals, sets, then additions): the ref's set or remove of a name replaces the
    rule's action on it (applied after it, it would undo it), its add goes beside."""
    replaced = {name for op, name, value in ref_edits if op != EDIT_ADD}
    return [e for e in rule_edits if e[1] not in replaced] + ref_edits


cdef list _with_variants(list rules, list mirrors):
    """The rules' RequestMirror entries, each also for the rule's backendRef variants
    (the rule as a backend with filters of its own is chosen: add_route_rule), so that
    a request mirrors whichever backend takes it."""
    out = list(mirrors)
    for rule_index, service_index, numerator, denominator in mirrors:
        for backend in rules[rule_index][1]:
            if backend[2] >= 0:
                out.append((backend[2], service_index, numerator, denominator))
    return out


cdef int _url_set(RouteRule* r, tuple url) except -1:
    cdef UrlFilter* u
    if url is None:
        return 0
    u = <UrlFilter*>calloc(1, sizeof(UrlFilter))
    if u == NULL:
        raise MemoryError()
    r.url = u
    status, scheme, host, port, op, path, prefix = url
    u.redirect = status
    u.port = port
    u.path_op = op
    _name_set(&u.scheme, scheme)
    _name_set(&u.hostname, host)
    _name_set(&u.path, path)
    _name_set(&u.prefix, prefix)
    return 0


cdef void _url_free(UrlFilter* u) noexcept nogil:
    if u == NULL:
        return
    _name_free(&u.scheme)
    _name_free(&u.hostname)
    _name_free(&u.path)
    _name_free(&u.prefix)
    free(u)
