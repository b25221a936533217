# filters.pxi: The filter chain: a route's compiled steps on connection (with the peer's
# verified identity), on request head and on response head, each returning continue,
# stop or answer; the steps themselves (the upstream's identity, the identity header;
# authorization's is authz.pxi's).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# New per-request behaviour (authorization, rate limits, header modifiers, faults,
# mirroring) is a new FilterKind and a case in _filter_step, compiled into the chains
# by RouteTable._build, not a branch in the loop. A chain with no step at a phase costs
# one bit test there. A step that stops must have changed nothing; steps before it ran
# already and are not run again (Conn.filter_at): the caller re-parses the head, so
# their edits are part of what the next steps see. The engine's own waits for a head
# (overload's caps, room for its route's edits) come before its chain (_http_framed):
# past the chain nothing waits, so no step runs twice for one request.


cdef inline uint32_t _xfcc_value_len(const InboundRoute* route, uint32_t peer_len) noexcept nogil:
    """len("By=<local ID>;URI=<peer ID>"), without By= when the route has no ID."""
    return (route.identity.length + 4 if route.identity.length > 0 else 0) + 4 + peer_len


cdef FilterVerdict _xfcc_step(Core* core, Conn* c, FilterCall* call) noexcept nogil:
    """Inbound request: replace whatever x-forwarded-client-cert the head carries by
    `By=<local ID>;URI=<caller's verified ID>`. Stops (nothing changed) while the buffer
    has no room for it. A plaintext caller (plaintext.pxi) has no verified ID: the
    field goes and none comes, as Envoy's SANITIZE_SET does without mutual TLS."""
    cdef Flow* f = &c.d2u
    cdef const InboundRoute* route = &c.table.routes[c.route]
    cdef uint32_t base = call.base
    cdef char value[2 * SPIFFE_ID_MAX_BYTES + 16]
    cdef uint32_t n = 0
    cdef uint32_t cut
    cdef int added
    if c.flags & CONN_PLAINTEXT:
        cut = drop_fields(f.buf + base, f.tail - base, call.req, _XFCC, _XFCC_BYTES)
        f.tail -= cut
        call.delta -= <int64_t>cut
        return FILTER_CONTINUE
    if f.tail + _XFCC_BYTES + 4 + _xfcc_value_len(route, c.peer_id_length) > core.buffer_bytes:
        return FILTER_STOP
    if route.identity.length > 0:
        memcpy(value, b"By=", 3)
        memcpy(value + 3, route.identity.data, route.identity.length)
        n = 3 + route.identity.length
        value[n] = c';'
        n += 1
    memcpy(value + n, b"URI=", 4)
    memcpy(value + n + 4, c.peer_id, c.peer_id_length)
    n += 4 + c.peer_id_length
    cut = drop_fields(f.buf + base, f.tail - base, call.req, _XFCC, _XFCC_BYTES)
    f.tail -= cut
    added = add_field(f.buf + base, call.req.head_len - cut, f.tail - base,
                      core.buffer_bytes - base, _XFCC, _XFCC_BYTES, value, n)
    _invariant(added > 0, b"x-forwarded-client-cert did not fit after the room check")
    f.tail += <uint32_t>added
    call.delta += <int64_t>added - <int64_t>cut
    return FILTER_CONTINUE


cdef FilterVerdict _peer_id_step(Core* core, Conn* c, FilterCall* call) noexcept nogil:
    """Outbound connection: the upstream's verified SPIFFE ID must be one the service
    runs as, before a byte of the client's goes to it; else the pair is refused."""
    cdef Service* svc = &c.table.services[c.service]
    cdef uint32_t i
    if call.peer_len > 0:
        for i in range(svc.n_identities):
            if (svc.identities[i].length == <uint32_t>call.peer_len
                    and memcmp(svc.identities[i].data, call.peer, <size_t>call.peer_len) == 0):
                return FILTER_CONTINUE
    core.counters.identity_mismatch += 1
    call.status = 0
    return FILTER_ANSWER


cdef inline FilterVerdict _filter_step(Core* core, Conn* c, const Filter* f,
                                       FilterCall* call) noexcept nogil:
    if f.kind == FILTER_XFCC:
        return _xfcc_step(core, c, call)
    if f.kind == FILTER_PEER_ID:
        return _peer_id_step(core, c, call)
    if f.kind == FILTER_RATE_LIMIT:
        return _ratelimit_step(core, c, f, call)   # ratelimit.pxi
    if f.kind == FILTER_AUTHZ:
        return _authz_step(core, c, call)       # (authz.pxi)
    return FILTER_CONTINUE


cdef inline bint _answer_owed(const Conn* c) noexcept nogil:
    """Is an answer owed on pair c before one the engine would make for the request
    being framed? (Then that answer must wait: it cannot overtake.) A first request's
    (CONN_HTTP_HEAD) comes with nothing owed, as the router's own answers."""
    if c.n_pend > 0 or c.fwd > 0:
        return True
    if c.state == CONN_HTTP_HEAD:
        return False
    return c.resp_fwd > 0 or (c.u2d.buf != NULL and c.u2d.head != c.u2d.tail)


cdef bint _answer_in_place(Core* core, Conn* c, const FilterCall* call, int status,
                           const char* body, const char* fields, int fields_len) noexcept nogil:
    """Answer the request being framed `status` with text `body` (and the field lines
    fields[0:fields_len]) as the pair's next answer and drop its head, the pair going on
    as Envoy's local replies (a rate limit's, RBAC's) keep the connection; False when it
    may not be: not past its first request (CONN_PIPE), a body, an upgrade, the request
    or the node's drain ending the pair anyway, or requests kept in the buffer for a
    replay (CONN_RETRYABLE, CONN_KEPT: the dropped head would be sent with them). An
    answer to HEAD has the body's length and no body (RFC 9110 §9.3.2: the caller's
    node frames it so). Nothing is owed before it (_answer_owed), so the client's side
    of u2d is empty."""
    cdef Flow* u = &c.u2d
    cdef const ReqHead* req = call.req
    cdef int n
    if (c.state != CONN_PIPE or req.body != BODY_NONE or req.upgrade
            or req.method == METHOD_CONNECT or not req.keep_alive
            or c.client_close or c.flags & (CONN_GOING_AWAY | CONN_RETRYABLE | CONN_KEPT)
            or core.draining
            or call.base != c.d2u.head or c.fwd != 0):
        return False
    if u.buf == NULL:
        u.buf = _buf_get(core)
        if u.buf == NULL:
            return False
    n = snprintf(u.buf, core.buffer_bytes,
                 b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%.*s\r\n%s",
                 status, _reason(status), <int>strlen(body), fields_len, fields,
                 <const char*>b"" if req.method == METHOD_HEAD else body)
    if n <= 0 or n >= <int>core.buffer_bytes:
        return False
    u.head = 0
    u.tail = <uint32_t>n
    c.resp_fwd = <uint32_t>n            # framed: the client's next bytes (_http_u2d)
    c.d2u.head += req.head_len          # the request goes no further
    c.flags |= CONN_ANSWERED
    _count_answer(core, c, status, -1)
    return True


cdef bint _pair_refused(Core* core, Conn* c, const FilterChain* chain) noexcept nogil:
    """A new opaque pair (PHASE_ACCEPT): does a step of its chain refuse it (over a rate
    limit, refused by authorization)? Then the caller closes it."""
    cdef FilterCall call
    if not _chain_at(chain, PHASE_ACCEPT):
        return False
    memset(&call, 0, sizeof(FilterCall))
    call.phase = PHASE_ACCEPT
    return _filters_run(core, c, chain, &call) != FILTER_CONTINUE


cdef inline bint _chain_at(const FilterChain* chain, FilterPhase phase) noexcept nogil:
    """Has `chain` a step at `phase`? Tested where the chain would run, so a phase with
    no step costs the path this one test."""
    return (chain.phases >> phase) & 1


cdef FilterVerdict _filters_run(Core* core, Conn* c, const FilterChain* chain,
                                FilterCall* call) noexcept nogil:
    """Run `chain`'s steps for call.phase in order, from where the last run of this
    request stopped; the first verdict that is not continue ends the run."""
    cdef uint32_t i
    cdef FilterVerdict v
    if not (chain.phases >> call.phase) & 1:
        return FILTER_CONTINUE
    i = c.filter_at if call.phase == PHASE_REQUEST else 0
    while i < chain.n:
        if chain.steps[i].phase == call.phase:
            v = _filter_step(core, c, &chain.steps[i], call)
            if v != FILTER_CONTINUE:
                if v == FILTER_STOP and call.phase == PHASE_REQUEST:
                    c.filter_at = <uint8_t>i
                return v
        i += 1
    if call.phase == PHASE_REQUEST:
        c.filter_at = 0
    return FILTER_CONTINUE


cdef uint32_t _request_room(const InboundRoute* route, const Conn* c) noexcept nogil:
    """Bytes the request steps of `route`'s chain may add to one head of pair c: kept
    free at the end of its request buffer (Conn.head_reserve), and what a pair moving
    to `route` needs free (carry.pxi)."""
    cdef const FilterChain* chain = &route.chain
    cdef uint32_t i
    cdef uint32_t room = 0
    for i in range(chain.n):
        if (chain.steps[i].phase == PHASE_REQUEST and chain.steps[i].kind == FILTER_XFCC
                and not c.flags & CONN_PLAINTEXT):     # (plaintext: the field only goes)
            room += _xfcc_value_len(route, c.peer_id_length) + _XFCC_BYTES + 4
    return room


cdef int _chain_set(FilterChain* chain, const Filter* steps, uint32_t n) noexcept nogil:
    """Compile `n` steps into `chain` (RouteTable._build); -1 when out of memory."""
    cdef uint32_t i
    chain.steps = NULL
    chain.n = 0
    chain.phases = 0
    if n == 0:
        return 0
    chain.steps = <Filter*>malloc(n * sizeof(Filter))
    if chain.steps == NULL:
        return -1
    memcpy(chain.steps, steps, n * sizeof(Filter))
    chain.n = n
    for i in range(n):
        chain.phases |= 1u << steps[i].phase
    return 0


cdef void _chain_free(FilterChain* chain) noexcept nogil:
    free(chain.steps)
    chain.steps = NULL
    chain.n = 0
    chain.phases = 0
