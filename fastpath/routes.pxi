# routes.pxi: Request -> route -> backend: a service port's HTTPRoutes (Gateway API,
# GAMMA), compiled into route sets, picking for each request the rule whose match holds
# first and, by weight, the backend service it goes to; and the rule's header edits.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
# A set's entries come in precedence order (the control plane sorts them as the Gateway
# API orders rules), so the first entry that holds is the one the spec picks. Nothing
# here allocates or takes a lock: a request's match reads the head where it lies.

cdef enum:
    # A header named several times is matched on its values joined by "," (RFC 9110
    # §5.3, as Envoy joins them); joined values longer than this match nothing.
    _ROUTE_JOIN_MAX = 8192


cdef inline uint64_t _route_random(Core* core) noexcept nogil:
    """xorshift64*: the weighted choice needs spread, not secrecy."""
    cdef uint64_t x = core.route_rng
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    core.route_rng = x
    return x * <uint64_t>0x2545F4914F6CDD1D


cdef inline bint _bytes_eq(const char* a, size_t n, const Name* b) noexcept nogil:
    return n == b.length and (n == 0 or memcmp(a, b.data, n) == 0)


cdef bint _str_holds(const RouteStr* m, const char* v, size_t n) noexcept nogil:
    if m.kind == MATCH_REGEX:
        return _route_regex(m.regex, v, n)
    return _bytes_eq(v, n, &m.value)


cdef bint _path_holds(const RouteEntry* e, const char* path, size_t n) noexcept nogil:
    """`path`: the request's path, without its query."""
    cdef size_t k
    if e.path_kind == MATCH_ANY:
        return True
    if e.path_kind == MATCH_EXACT:
        return _bytes_eq(path, n, &e.path)
    if e.path_kind == MATCH_PREFIX:
        # Element by element: "/v2" holds for /v2, /v2/ and /v2/x, not /v2x. The
        # compiled prefix has no trailing "/" (but "/" itself, which holds for all).
        k = e.path.length
        if n < k or memcmp(path, e.path.data, k) != 0:
            return False
        return n == k or path[k] == c'/' or (k > 0 and e.path.data[k - 1] == c'/')
    return _route_regex(e.path_regex, path, n)


cdef inline bint _lower_eq(const char* a, const char* lower, uint32_t n) noexcept nogil:
    """a[0:n] equals `lower` (lowercase already) without regard to ASCII case."""
    cdef uint32_t i
    cdef unsigned char x
    for i in range(n):
        x = <unsigned char>a[i]
        if x >= c'A' and x <= c'Z':
            x += 32
        if x != <unsigned char>lower[i]:
            return False
    return True


cdef bint _field_joined(const char* name, uint32_t name_len, const char* head,
                        const ReqHead* req, char* joined, size_t cap, const char** value,
                        size_t* n) noexcept nogil:
    """The value of the request's fields `name` (lowercase): one, where it lies; several,
    joined by "," into `joined` (RFC 9110 §5.3, as Envoy's matchers see them). False when
    there is none, or when joined they are over `cap`."""
    cdef uint32_t i, seen = 0
    cdef size_t used = 0
    cdef const Field* f
    cdef const Field* first = NULL
    for i in range(req.header_count):
        f = &req.headers[i]
        if f.name.len != name_len or not _lower_eq(head + f.name.off, name, name_len):
            continue
        seen += 1
        if seen == 1:
            first = f
            continue
        if seen == 2:
            if first.value.len > cap:
                return False
            memcpy(joined, head + first.value.off, first.value.len)
            used = first.value.len
        if used + 1 + f.value.len > cap:
            return False
        joined[used] = c','
        memcpy(joined + used + 1, head + f.value.off, f.value.len)
        used += 1 + f.value.len
    if seen == 0:
        return False
    if seen == 1:
        value[0] = head + first.value.off
        n[0] = first.value.len
    else:
        value[0] = joined
        n[0] = used
    return True


cdef bint _header_holds(const RouteStr* m, const char* head, const ReqHead* req) noexcept nogil:
    """The request's fields named m.name (without case): none, no match; one, its
    value; several, their values joined by ",". Host, of an absolute-form request, is
    its target's authority: the Host it is sent on with (_absolute_form), not the one
    the client wrote."""
    cdef char joined[_ROUTE_JOIN_MAX]
    cdef const char* v
    cdef size_t n
    if req.target_form == TARGET_ABSOLUTE and _name_eq(&m.name, b"host", 4):
        return _str_holds(m, head + req.authority.off, req.authority.len)
    return (_field_joined(m.name.data, m.name.length, head, req, joined, sizeof(joined), &v, &n)
            and _str_holds(m, v, n))


cdef bint _query_holds(const RouteStr* m, const char* q, size_t n) noexcept nogil:
    """`q`: the query (after "?"). The first parameter named m.name (exactly, as the
    spec compares them) decides; a parameter without "=" has the empty value."""
    cdef size_t i = 0
    cdef size_t end, eq
    while i <= n:
        end = i
        while end < n and q[end] != c'&':
            end += 1
        eq = i
        while eq < end and q[eq] != c'=':
            eq += 1
        if _bytes_eq(q + i, eq - i, &m.name):
            if eq == end:
                return _str_holds(m, q + end, 0)
            return _str_holds(m, q + eq + 1, end - eq - 1)
        i = end + 1
    return False


cdef bint _entry_holds(const RouteEntry* e, const char* head, const ReqHead* req,
                       const char* path, size_t path_len, const char* query,
                       size_t query_len) noexcept nogil:
    cdef uint32_t i
    if e.method >= 0 and <int32_t>req.method != e.method:
        return False
    if not _path_holds(e, path, path_len):
        return False
    for i in range(e.n_headers):
        if not _header_holds(&e.headers[i], head, req):
            return False
    for i in range(e.n_query):
        if query == NULL or not _query_holds(&e.query[i], query, query_len):
            return False
    return True


cdef const RouteSet* _route_set(const Table* t, const Service* parent, int32_t ns) noexcept nogil:
    """The set governing a caller of namespace `ns` (Table.namespaces index, -1: none):
    that namespace's consumer routes, else the producer routes; NULL: none applies."""
    cdef uint32_t i
    cdef const RouteSet* producer = NULL
    cdef const RouteSet* s
    for i in range(parent.first_set, parent.first_set + parent.n_sets):
        s = &t.sets[i]
        if s.ns < 0:
            producer = s
        elif s.ns == ns:
            return s
    return producer


cdef int _route_pick(Core* core, Conn* c, uint32_t parent, const char* head,
                     const ReqHead* req, uint32_t* service, int32_t* rule) noexcept nogil:
    """Where a request (its head at `head`, parsed into `req`) for service `parent`
    goes: 0 with the backend service and the rule (-1: the service has no routes for
    this caller, the request goes to it), or the status the engine answers: 404 (no
    rule matches), 500 (its rule has no valid backend for it); or a fault's status
    (fault.pxi: an abort, or the backend and rule with a delay first)."""
    cdef Table* t = c.table
    cdef const Service* svc = &t.services[parent]
    cdef const RouteSet* s
    cdef const RouteRule* r
    cdef const char* path
    cdef const char* query = NULL
    cdef size_t path_len, query_len = 0
    cdef const char* mark
    cdef uint32_t i
    cdef uint64_t pick
    cdef int fault = 0
    service[0] = parent
    rule[0] = -1
    if svc.n_sets == 0:
        return 0
    s = _route_set(t, svc, c.caller_ns)
    if s == NULL:
        return 0
    path = head + req.path.off
    path_len = req.path.len
    mark = <const char*>memchr(path, c'?', path_len)
    if mark != NULL:
        query = mark + 1
        query_len = path_len - <size_t>(query - path)
        path_len = <size_t>(mark - path)
    if path_len == 0:
        # An absolute-form target without one ("http://h", "http://h?q"): it is sent
        # on as "/" (_origin_form), and matched so.
        path = b"/"
        path_len = 1
    for i in range(s.first_entry, s.first_entry + s.n_entries):
        if _entry_holds(&t.entries[i], head, req, path, path_len, query, query_len):
            break
    else:
        core.counters.route_no_match += 1
        return 404
    rule[0] = <int32_t>t.entries[i].rule
    r = &t.rules[t.entries[i].rule]
    core.counters.route_matched += 1
    if r.fault != NULL and c.fault_kept < 0:     # (drawn once per request: fault.pxi)
        fault = _fault_pick(core, c, r.fault)
        if fault != 0 and not fault & _FAULT_HOLD:
            return fault                # answered at once, no backend (fault.pxi)
    if r.url != NULL and r.url.redirect != 0:
        # Answered by the node (route_filters.pxi), after a fault delay drawn (fault.pxi);
        # an abort drawn with the delay answers instead of the redirect.
        return fault if fault & _FAULT_ANSWER else fault | r.url.redirect
    if r.total_weight == 0:
        core.counters.route_no_backend += 1
        return 500
    pick = _route_random(core) % r.total_weight
    for i in range(r.n_backends):
        if pick < r.backends[i].weight:
            break
        pick -= r.backends[i].weight
    if r.backends[i].service < 0:
        core.counters.route_no_backend += 1     # an invalid backendRef's share
        return 500
    service[0] = <uint32_t>r.backends[i].service
    if r.backends[i].rule >= 0:
        rule[0] = r.backends[i].rule    # the backendRef's own filters with the rule's
    return fault                        # 0, or held first (fault.pxi)


cdef int64_t _route_edit(char* buf, uint32_t total, uint32_t cap, const HeaderEdit* edits,
                         uint32_t n, bint response, ReqHead* req, RespHead* resp,
                         const Limits* limits, Method method) noexcept nogil:
    """A rule's header edits on the head at buf[0:total] (the rest of the buffer up to
    `cap` is room): removals, then sets (the name's fields go, one line comes), then
    additions, each on the head as the previous one left it (parsed again). Returns the
    head's change in length, or INT64_MAX when an addition does not fit or the head it
    makes is one the parser refuses (more field lines, or bytes, than its limits take:
    the next hop would refuse it as well); nothing is sent with half its edits, the
    caller waits for room or refuses the message."""
    cdef int64_t delta = 0
    cdef uint32_t i, cut, head_len
    cdef int added
    cdef const HeaderEdit* e
    cdef int pass_
    for pass_ in range(3):          # EDIT_REMOVE, EDIT_SET, EDIT_ADD in turn
        for i in range(n):
            e = &edits[i]
            if e.op != pass_:
                continue
            cut = 0
            if e.op != EDIT_ADD:
                if response:
                    cut = drop_named(buf, total, resp.headers, resp.header_count,
                                     e.name.data, e.name.length)
                else:
                    cut = drop_named(buf, total, req.headers, req.header_count,
                                     e.name.data, e.name.length)
                total -= cut
                delta -= cut
            if e.op != EDIT_REMOVE:
                head_len = (resp.head_len if response else req.head_len) - (
                    <uint32_t>cut if e.op == EDIT_SET else 0)
                added = add_field(buf, head_len, total, cap, e.name.data, e.name.length,
                                  e.value.data, e.value.length)
                if added < 0:
                    return INT64_MAX
                total += <uint32_t>added
                delta += added
            # A refused parse leaves the head's length 0: the next edit would work at
            # offset -2 (a client's 100 field lines and a rule adding two crashed the node).
            if response:
                if parse_response_head(buf, total, resp, limits, method) <= 0:
                    return INT64_MAX
            elif parse_request_head(buf, total, req, limits) <= 0:
                return INT64_MAX
    return delta


cdef inline bint _route_regex(const void* prog, const char* s, size_t n) noexcept nogil:
    """A RegularExpression match of the whole value (RE2 syntax, linear time:
    fastpath.regex), as Envoy's safe_regex matches paths, headers and query values."""
    return regex_fullmatch(<const RegexProg*>prog, s, n)


cdef inline bint _edits_request(const Conn* c) noexcept nogil:
    """Has the outbound request's rule a URLRewrite or request header edits?"""
    return c.req_rule >= 0 and (c.table.rules[c.req_rule].n_request_edits > 0
                                or c.table.rules[c.req_rule].url != NULL)


cdef bint _edits_wait(Core* core, const Conn* c, const ReqHead* req, uint32_t base) noexcept nogil:
    """Must the outbound head at d2u.buf + base wait for room for its rule's request
    edits (_request_edits) until the bytes before it are sent and moved away? Asked
    before its steps run or anything of it is edited (_http_framed), so that the head,
    framed again after the wait, has taken nothing yet: a step runs once per request (a
    rate limit's token), its `Connection: close` is read once. The room counted is what
    the edits need after the engine's own (hop-by-hop fields only go; an absolute-form
    target may gain _ABSOLUTE_FORM_GROW_MAX bytes). A head at the buffer's start never
    waits: no more room will come (_request_edits refuses it)."""
    if base == 0 or c.flags & CONN_INBOUND or not _edits_request(c):
        return False
    return c.d2u.tail + _edits_room(c, req) > core.buffer_bytes


cdef inline uint32_t _edits_room(const Conn* c, const ReqHead* req) noexcept nogil:
    """The bytes an outbound head's route edits may add (_edits_wait)."""
    cdef uint32_t room = 0
    if _edits_request(c):
        room = c.table.rules[c.req_rule].request_grow
    if req.target_form == TARGET_ABSOLUTE:
        room += _ABSOLUTE_FORM_GROW_MAX
    return room


cdef int _request_edits(Core* core, Conn* c, ReqHead* req, uint32_t base,
                        int64_t* delta) noexcept nogil:
    """The request rule's URLRewrite (route_filters.pxi), then its header edits, on the
    head at d2u.buf + base (its earlier edits counted in `delta`, which this folds into
    a parse of the head as it stands), with room for them (_edits_wait).
    STATUS_OK; or STATUS_RESET: no room will come, or the edited head is over the
    parser's limits (431)."""
    cdef const RouteRule* r = &c.table.rules[c.req_rule]
    cdef Flow* f = &c.d2u
    cdef int64_t grow
    if delta[0] != 0:
        # (An absolute-form head may have gained a Host line: one over the limit.)
        if parse_request_head(f.buf + base, f.tail - base, req, &core.http_limits) <= 0:
            return STATUS_RESET
        delta[0] = 0
    if f.tail + r.request_grow > core.buffer_bytes:
        # All or nothing: a head never goes on with half its edits, nor gets one twice.
        _invariant(base == 0, b"no room for a head's edits past _edits_wait")
        return STATUS_RESET
    if r.url != NULL:
        if _url_rewrite(core, f, base, req, r.url) != STATUS_OK:
            return STATUS_RESET         # (431)
    grow = _route_edit(f.buf + base, f.tail - base, core.buffer_bytes - base,
                       r.request_edits, r.n_request_edits, False, req, NULL,
                       &core.http_limits, METHOD_OTHER)
    if grow == INT64_MAX:
        return STATUS_RESET             # edited, it is over the parser's limits (431)
    f.tail = <uint32_t>(f.tail + grow)
    return STATUS_OK


cdef int _response_edits(Core* core, Conn* c, RespHead* resp, uint32_t start) noexcept nogil:
    """The answered request's rule's response edits on the final response head at
    u2d.buf + start (room for them was kept: _u2d_cap). The head's length after them,
    or -1 when they did not fit or made a head over the parser's limits."""
    cdef const RouteRule* r = &c.table.rules[c.pend_rule[c.pend_first]]
    cdef Flow* f = &c.u2d
    cdef Method method = <Method>c.pend_method[c.pend_first]
    cdef int64_t grow
    # (Its `Connection: close` may have made it one line over the limit.)
    if parse_response_head(f.buf + start, f.tail - start, resp, &core.http_limits, method) <= 0:
        return -1
    grow = _route_edit(f.buf + start, f.tail - start, core.buffer_bytes - start,
                       r.response_edits, r.n_response_edits, True, NULL, resp,
                       &core.http_limits, method)
    if grow == INT64_MAX:
        return -1
    f.tail = <uint32_t>(f.tail + grow)
    return <int>resp.head_len


cdef void _request_deadline(Core* core, Conn* c, int64_t ns) noexcept nogil:
    """The oldest pending request's timeout is now `ns` (0: none): file the pair's timer
    for it when that is sooner than its state's other deadlines."""
    c.req_deadline_ns = ns
    if ns != 0 and c.state == CONN_PIPE:
        _timer_arm(core, c, _conn_due_ns(core, c))


cdef void _request_timed_out(Core* core, Conn* c) noexcept nogil:
    """A route's timeout came before the oldest pending request's answer was whole: 504
    when nothing of that answer went to the client yet (the upstream is dropped, it may
    still be answering), else the client's connection is cut (the answer began: a
    status cannot be sent any more), as Envoy resets a stream it timed out. Behind an
    answer that runs until the upstream closes (or a tunnel) nothing will be answered,
    and that answer is another request's: it is not cut, the timeout is dropped."""
    c.req_deadline_ns = 0
    if c.resp_phase == RESP_CLOSE or c.resp_phase == RESP_TUNNEL:
        return
    if c.up.fd >= 0:
        # The try's endpoint did not answer in time: to outlier detection that is the
        # 504 Envoy counts for a timed-out upstream request (outlier.pxi).
        _outlier_status(core, c, 504)
    if _retry_wanted(core, c, 0):
        _settle(core, c, _retry_begin(core, c))     # a try's timeout (retry.pxi)
        return
    core.counters.route_timeouts += 1
    c.reusable = False
    if (c.resp_phase == RESP_HEAD and c.resp_fwd == 0
            and (c.u2d.buf == NULL or c.u2d.head == c.u2d.tail)):
        _http_reply(core, c, 504, b"upstream request timeout\n", -1)
        _conn_close(core, c, False)
    else:
        _conn_close(core, c, True)
