# routes_table.pxi: HTTPRoute's part of a route table: what RouteTable.add_route_set(),
# add_route_rule() and add_route_match() accept, checked with the GIL, and its compile
# to the C arrays routes.pxi reads (Table.sets, entries, rules, namespaces).
#
# Included into fastpath/engine.pyx after table.pxi (it uses its helpers).

# Field names no route may edit: they frame the message or route it (a client-side edit
# of them would desynchronise the node's framing from the app's), they are the hop's
# own, or the node vouches for them (x-forwarded-client-cert is the inbound node's;
# x-meshnode-failure, either way, the nodes' word that an app failed: retry.pxi).
_UNEDITABLE_REQUEST = frozenset((
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
    b"proxy-connection", b"upgrade", b"te", b"trailer", b"x-forwarded-client-cert",
    b"expect", b"x-meshnode-failure"))
_UNEDITABLE_RESPONSE = frozenset((
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
    b"proxy-connection", b"upgrade", b"te", b"trailer", b"x-meshnode-failure"))

_MATCH_KINDS = {"exact": MATCH_EXACT, "pathprefix": MATCH_PREFIX, "prefix": MATCH_PREFIX,
                "regularexpression": MATCH_REGEX, "regex": MATCH_REGEX}
_MATCH_NAMES = {MATCH_EXACT: "Exact", MATCH_PREFIX: "PathPrefix",
                MATCH_REGEX: "RegularExpression"}
_METHODS = {"GET": METHOD_GET, "HEAD": METHOD_HEAD, "POST": METHOD_POST, "PUT": METHOD_PUT,
            "DELETE": METHOD_DELETE, "CONNECT": METHOD_CONNECT, "OPTIONS": METHOD_OPTIONS,
            "TRACE": METHOD_TRACE, "PATCH": METHOD_PATCH}
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
ROUTE_VALUE_MAX = 4096
# The most one rule's edits may add to a head, each way: room for them is kept in every
# outbound HTTP pair's buffers (never more than half a buffer: http_stream.pxi).
ROUTE_GROW_MAX = 4096


cdef bytes _field_name(str name, str what):
    b = name.encode("ascii", "replace").lower()
    if not b or any(ch not in _TCHAR for ch in b):
        raise ValueError("%s %r is not an HTTP field name" % (what, name))
    return b


cdef bytes _field_value(str value, str what):
    b = value.encode("utf-8")
    if len(b) > ROUTE_VALUE_MAX or any(ch < 0x20 and ch != 0x09 or ch == 0x7f for ch in b):
        raise ValueError("%s %r: a field value holds no control characters (and at most %d "
                         "bytes)" % (what, value, ROUTE_VALUE_MAX))
    return b


cdef uint8_t _match_kind(object kind, tuple allowed, str what) except 255:
    k = _MATCH_KINDS.get(str(kind).lower())
    if k is None or k not in allowed:
        raise ValueError("%s: match type %r is not one of %s" % (what, kind, ", ".join(
            _MATCH_NAMES[v] for v in allowed)))
    return k


cdef object _compiled(uint8_t kind, bytes value, str what):
    """A RegularExpression's compiled program (fastpath.regex), None for other kinds; its
    refusal (RE2 syntax, bounded size) names the match."""
    if kind != MATCH_REGEX:
        return None
    try:
        return Regex(value.decode("utf-8"))
    except ValueError as exc:
        raise ValueError("%s: %s" % (what, exc)) from None


cdef void* _prog_of(object regex) except? NULL:
    """A copy of a Regex's program the table owns (freed with it on the engine thread)."""
    cdef RegexProg* p
    if regex is None:
        return NULL
    p = regex_copy((<Regex>regex).prog)
    if p == NULL:
        raise MemoryError()
    return p


cdef list _edits(object spec, frozenset refused, str what):
    """A header modifier ({"set": [[name, value]], "add": [...], "remove": [name]}) as
    (op, name bytes, value bytes) in the order they apply."""
    out = []
    if not spec:
        return out
    for key in spec:
        if key not in ("set", "add", "remove"):
            raise ValueError("%s: %r is not set, add or remove" % (what, key))
    for op, key in ((EDIT_REMOVE, "remove"), (EDIT_SET, "set"), (EDIT_ADD, "add")):
        for item in spec.get(key) or ():
            if op == EDIT_REMOVE:
                name, value = item, ""
            else:
                name, value = item
            name_b = _field_name(name, what)
            if name_b in refused:
                raise ValueError("%s: %r may not be edited by a route (the node frames, "
                                 "routes or vouches for it)" % (what, name))
            out.append((op, name_b, _field_value(value, what) if op != EDIT_REMOVE else b""))
    return out


cdef uint32_t _grow(list edits):
    """The most bytes a rule's edits can add to a head: a line per set or add."""
    return sum(len(n) + len(v) + 4 for op, n, v in edits if op != EDIT_REMOVE)


cdef bytes _identity_namespace(bytes identity):
    """NS of spiffe://TD/ns/NS/sa/SA (b"": another shape)."""
    parts = identity.split(b"/")
    if len(parts) >= 7 and parts[3] == b"ns" and parts[5] == b"sa":
        return parts[4]
    return b""


cdef int _edits_set(HeaderEdit** out, uint32_t* n, list edits) except -1:
    if not edits:
        return 0
    out[0] = <HeaderEdit*>calloc(len(edits), sizeof(HeaderEdit))
    if out[0] == NULL:
        raise MemoryError()
    n[0] = len(edits)
    for i, (op, name_b, value_b) in enumerate(edits):
        out[0][i].op = op
        _name_set(&out[0][i].name, name_b)
        _name_set(&out[0][i].value, value_b)
    return 0


cdef int _strs_set(RouteStr** out, uint32_t* n, list items) except -1:
    if not items:
        return 0
    out[0] = <RouteStr*>calloc(len(items), sizeof(RouteStr))
    if out[0] == NULL:
        raise MemoryError()
    n[0] = len(items)
    for i, (kind, name_b, value_b, regex) in enumerate(items):
        out[0][i].kind = kind
        _name_set(&out[0][i].name, name_b)
        _name_set(&out[0][i].value, value_b)
        out[0][i].regex = _prog_of(regex)
    return 0


cdef void _edits_free(HeaderEdit* edits, uint32_t n) noexcept nogil:
    cdef uint32_t i
    if edits == NULL:
        return
    for i in range(n):
        _name_free(&edits[i].name)
        _name_free(&edits[i].value)
    free(edits)


cdef void _strs_free(RouteStr* strs, uint32_t n) noexcept nogil:
    cdef uint32_t i
    if strs == NULL:
        return
    for i in range(n):
        _name_free(&strs[i].name)
        _name_free(&strs[i].value)
        regex_free(<RegexProg*>strs[i].regex)
    free(strs)


cdef void _routes_free(Table* t) noexcept nogil:
    """What _routes_build() allocated (partially built ones too: calloc'd)."""
    cdef uint32_t i
    if t.entries != NULL:
        for i in range(t.n_entries):
            _name_free(&t.entries[i].path)
            regex_free(<RegexProg*>t.entries[i].path_regex)
            _strs_free(t.entries[i].headers, t.entries[i].n_headers)
            _strs_free(t.entries[i].query, t.entries[i].n_query)
        free(t.entries)
    if t.rules != NULL:
        for i in range(t.n_rules):
            _name_free(&t.rules[i].name)
            free(t.rules[i].backends)
            free(t.rules[i].fault)
            _edits_free(t.rules[i].request_edits, t.rules[i].n_request_edits)
            _edits_free(t.rules[i].response_edits, t.rules[i].n_response_edits)
            _url_free(t.rules[i].url)
            free(t.rules[i].retry)
        free(t.rules)
    if t.namespaces != NULL:
        for i in range(t.n_namespaces):
            _name_free(&t.namespaces[i])
        free(t.namespaces)
    free(t.sets)


cdef int _route_set_add(RouteTable table, int service_index,
                        str consumer_namespace) except -1:
    """RouteTable.add_route_set(): a set of routes of a service port; its index."""
    if not 0 <= service_index < len(table._services):
        raise ValueError("no service %d (add_service() first)" % service_index)
    ns = None if consumer_namespace is None else consumer_namespace.encode()
    for parent, other, _ in table._route_sets:
        if parent == service_index and other == ns:
            raise ValueError("service %d already has a route set for %s" % (
                service_index, "producers" if ns is None else consumer_namespace))
    table._route_sets.append((service_index, ns, []))
    return len(table._route_sets) - 1


cdef int _route_rule_add(RouteTable table, str name, object backends, object request_headers,
                         object response_headers, double timeout_s, object redirect,
                         object rewrite, double backend_timeout_s, object retry) except -1:
    """RouteTable.add_route_rule(): a rule checked and kept, with a variant per
    backendRef with header modifiers of its own; the rule's index."""
    for what, value in (("timeout_s", timeout_s), ("backend_timeout_s", backend_timeout_s)):
        if not 0 <= value <= 86400:
            raise ValueError("rule %r: %s must be 0..86400, not %r" % (name, what, value))
    url = _url_filter(redirect, rewrite, name)
    retry_args = _retry_args(retry, name)
    out, refs = [], []
    for backend in backends:
        if len(backend) not in (2, 4):
            raise ValueError("rule %r: a backend is (service, weight) or (service, weight, "
                             "request_headers, response_headers), not %r" % (name, backend))
        service_index, weight = backend[0], backend[1]
        if service_index != -1 and not 0 <= service_index < len(table._services):
            raise ValueError("rule %r: no service %d" % (name, service_index))
        if not 0 <= weight <= 1000000:
            raise ValueError("rule %r: weight must be 0..1000000, not %r" % (name, weight))
        if weight:
            out.append([int(service_index), int(weight), -1])
            refs.append(backend[2:] if len(backend) == 4 else None)
    req = _edits(request_headers, _UNEDITABLE_REQUEST, "rule %r request header" % name)
    resp = _edits(response_headers, _UNEDITABLE_RESPONSE, "rule %r response header" % name)
    variants = []
    for j, ref in enumerate(refs):
        if ref is not None and any(ref):
            variants.append((j, _merged_edits(req, _edits(
                ref[0], _UNEDITABLE_REQUEST, "rule %r backend %d request header" % (name, j))),
                _merged_edits(resp, _edits(
                    ref[1], _UNEDITABLE_RESPONSE, "rule %r backend %d response header"
                    % (name, j)))))
    for edits, what in ([(req, "request"), (resp, "response")]
                        + [(v[1], "request") for v in variants]
                        + [(v[2], "response") for v in variants]):
        if _grow(edits) + (_url_grow(url) if what == "request" else 0) > ROUTE_GROW_MAX:
            raise ValueError("rule %r: its %s header edits%s add more than %d bytes"
                             % (name, what, " and rewrite" if url else "", ROUTE_GROW_MAX))
    table._route_rules.append((name.encode(), out, req, resp, timeout_s, url,
                               backend_timeout_s, retry_args))
    index = len(table._route_rules) - 1
    for j, v_req, v_resp in variants:
        # The rule as this backend is chosen (routes.pxi _route_pick): its own edits.
        out[j][2] = len(table._route_rules)
        table._route_rules.append((name.encode(), [], v_req, v_resp, timeout_s, url,
                                   backend_timeout_s, retry_args))
    return index


cdef int _route_match_add(RouteTable table, int set_index, int rule_index, object path,
                          str method, object headers, object query) except -1:
    """RouteTable.add_route_match(): the next match of a set, checked and compiled."""
    if not 0 <= set_index < len(table._route_sets):
        raise ValueError("no route set %d" % set_index)
    if not 0 <= rule_index < len(table._route_rules):
        raise ValueError("no route rule %d" % rule_index)
    path_kind, path_b = MATCH_ANY, b""
    if path is not None:
        kind, value = path
        path_kind = _match_kind(kind, (MATCH_EXACT, MATCH_PREFIX, MATCH_REGEX), "path")
        path_b = _field_value(value, "path")
        if path_kind != MATCH_REGEX and not path_b.startswith(b"/"):
            raise ValueError("path %r must begin with /" % value)
        if path_kind == MATCH_PREFIX and len(path_b) > 1:
            path_b = path_b.rstrip(b"/") or b"/"    # "/v2/" holds as "/v2" does
        if path_kind == MATCH_PREFIX and path_b == b"/":
            path_kind, path_b = MATCH_ANY, b""
    method_v = -1
    if method is not None:
        if method not in _METHODS:
            raise ValueError("method %r is not one of %s" % (method, ", ".join(_METHODS)))
        method_v = _METHODS[method]
    hs, qs = [], []
    for out, items, what in ((hs, headers, "header"), (qs, query, "query")):
        for k, n, v in items:
            kind = _match_kind(k, (MATCH_EXACT, MATCH_REGEX), "%s %r" % (what, n))
            name_b = _field_name(n, what) if what == "header" else (<str>n).encode()
            if not name_b:
                raise ValueError("a query parameter match needs a name")
            value_b = _field_value(v, "%s %r" % (what, n))
            out.append((kind, name_b, value_b,
                        _compiled(kind, value_b, "%s %r" % (what, n))))
    table._route_sets[set_index][2].append(
        (path_kind, path_b, _compiled(path_kind, path_b, "path"), method_v, hs, qs,
         rule_index))
    return 0


cdef int _routes_build(Table* t, list sets, list rules) except -1:
    """Table.sets (sorted by parent service, each service's first_set/n_sets), their
    entries, the rules and the consumer namespaces; then each caller's namespace."""
    cdef uint32_t i, j, k
    cdef RouteSet* s
    cdef RouteEntry* e
    cdef RouteRule* r
    namespaces = sorted({ns for _, ns, _ in sets if ns is not None})
    ns_index = {ns: i for i, ns in enumerate(namespaces)}
    if namespaces:
        t.namespaces = <Name*>calloc(len(namespaces), sizeof(Name))
        if t.namespaces == NULL:
            raise MemoryError()
        t.n_namespaces = len(namespaces)
        for i, ns in enumerate(namespaces):
            _name_set(&t.namespaces[i], ns)
    if rules:
        t.rules = <RouteRule*>calloc(len(rules), sizeof(RouteRule))
        if t.rules == NULL:
            raise MemoryError()
        t.n_rules = len(rules)
    for i, (name_b, backends, req_edits, resp_edits, timeout_s, url, try_timeout_s,
            retry) in enumerate(rules):
        r = &t.rules[i]
        _name_set(&r.name, name_b)
        r.timeout_ns = <int64_t>(timeout_s * 1e9)
        r.try_timeout_ns = <int64_t>(try_timeout_s * 1e9)
        r.retry = _retry_policy(retry)          # (retry.pxi)
        if backends:
            r.backends = <RouteBackend*>calloc(len(backends), sizeof(RouteBackend))
            if r.backends == NULL:
                raise MemoryError()
            r.n_backends = len(backends)
        for j, (service_index, weight, variant) in enumerate(backends):
            r.backends[j].service = service_index
            r.backends[j].weight = weight
            r.backends[j].rule = variant
            r.total_weight += weight
        _edits_set(&r.request_edits, &r.n_request_edits, req_edits)
        _url_set(r, url)
        r.request_grow = _grow(req_edits) + _url_grow(url)
        _edits_set(&r.response_edits, &r.n_response_edits, resp_edits)
        r.response_grow = _grow(resp_edits)
        t.request_grow = max(t.request_grow, r.request_grow)
        t.response_grow = max(t.response_grow, r.response_grow)
    order = sorted(range(len(sets)), key=lambda i: sets[i][0])   # stable: by parent
    n_entries = sum(len(entries) for _, _, entries in sets)
    if sets:
        t.sets = <RouteSet*>calloc(len(sets), sizeof(RouteSet))
        if t.sets == NULL:
            raise MemoryError()
        t.n_sets = len(sets)
    if n_entries:
        t.entries = <RouteEntry*>calloc(n_entries, sizeof(RouteEntry))
        if t.entries == NULL:
            raise MemoryError()
        t.n_entries = n_entries
    k = 0
    for i, at in enumerate(order):
        service_index, ns, entries = sets[at]
        s = &t.sets[i]
        s.service = service_index
        s.ns = -1 if ns is None else ns_index[ns]
        s.first_entry = k
        s.n_entries = len(entries)
        if t.services[service_index].n_sets == 0:
            t.services[service_index].first_set = i
        t.services[service_index].n_sets += 1
        for path_kind, path_b, path_regex, method, headers, query, rule_index in entries:
            e = &t.entries[k]
            k += 1
            e.path_kind = path_kind
            _name_set(&e.path, path_b)
            e.path_regex = _prog_of(path_regex)
            e.method = method
            e.rule = rule_index
            _strs_set(&e.headers, &e.n_headers, headers)
            _strs_set(&e.query, &e.n_query, query)
    for i in range(t.n_listeners):
        t.listeners[i].ns = _namespace_of(&t.listeners[i].identity, ns_index)
    for i in range(t.n_sources):
        t.sources[i].ns = _namespace_of(&t.sources[i].identity, ns_index)
    return 0


cdef int32_t _namespace_of(const Name* identity, dict ns_index):
    if identity.length == 0:
        return -1
    ns = _identity_namespace(identity.data[:identity.length])
    return ns_index.get(ns, -1)
