# router.pxi: Request -> service: the Host lookup, the first routing of a client
# connection, and moving it to another service (switch) or another endpoint (reroute).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef int _name_cmp(const Name* a, const char* b, size_t n) noexcept nogil:
    """Byte order of (a, b), shorter first on a common prefix: Python's bytes order."""
    cdef size_t m = a.length if a.length < n else n
    cdef int r = memcmp(a.data, b, m)
    if r != 0:
        return r
    if a.length == n:
        return 0
    return -1 if a.length < n else 1


cdef HostEntry* _host_lookup(HostEntry* hosts, uint32_t count, const char* host, size_t n,
                             int port) noexcept nogil:
    """The entry of `hosts` (sorted: Table.hosts, Table.plain_hosts) for a (lowercase,
    portless) host name: the one for `port` when the request named a port that the
    service has, else the name's first entry."""
    cdef uint32_t lo = 0
    cdef uint32_t hi = count
    cdef uint32_t mid, i
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if _name_cmp(&hosts[mid].name, host, n) < 0:
            lo = mid + 1
        else:
            hi = mid
    if lo >= count or _name_cmp(&hosts[lo].name, host, n) != 0:
        return NULL
    if port >= 0:
        i = lo
        while i < count and _name_cmp(&hosts[i].name, host, n) == 0:
            if hosts[i].port == port:
                return &hosts[i]
            i += 1
    return &hosts[lo]


cdef int _http_route(Core* core, Conn* c, ReqHead* req) noexcept nogil:
    """A complete request head at d2u.buf (first on the client connection, or first
    after a switch): pick the service by its authority, then take a pooled upstream of
    the next endpoint (round robin) or connect as the TCP listener does (the head
    waits in d2u)."""
    cdef char host[256]
    cdef char body[384]
    cdef int port = -1
    cdef int n
    cdef size_t hn = 0
    cdef HostEntry* e = NULL
    cdef Service* svc
    cdef int st
    cdef uint32_t parent, backend
    cdef int32_t rule = -1
    if c.flags & CONN_INBOUND:
        return _plaintext_route(core, c, req)   # inbound plaintext (plaintext.pxi)
    if c.table != core.table and not c.flags & CONN_GOING_AWAY:
        _adopt(core, c)                 # routed on the current table (carry.pxi)
    if c.client_ctx == NULL:
        return _caller_refused(core, c) # no local workload's caller (callers.pxi)
    if _path_normalized(core, c, req, c.d2u.head) < 0:
        # Before the route match sees its path (normalize.pxi); nothing is owed before it.
        _http_reply(core, c, 400, b"", 0)
        return STATUS_CLOSE
    _access_begin(core, c, req, c.d2u.buf + c.d2u.head)  # its record, even if 404 (accesslog.pxi)
    if c.flags & CONN_FIXED_SERVICE:
        parent = c.parent
    else:
        if req.authority.len > 0:
            hn = authority_host(c.d2u.buf + c.d2u.head + req.authority.off,
                                req.authority.len, host, sizeof(host), &port)
        if hn > 0:
            e = _host_lookup(c.table.hosts, c.table.n_hosts, host, hn, port)
        if e == NULL:
            n = snprintf(body, sizeof(body), b"no route to host \"%.*s\"\n", <int>hn, host)
            _http_reply(core, c, 404, body, n)
            return STATUS_CLOSE
        parent = e.service
    if c.flags & CONN_ROUTE_DECIDED:
        # Decided as it was framed behind the requests before it (routes.pxi).
        c.flags &= ~CONN_ROUTE_DECIDED
        backend, rule, st = c.decided_service, c.decided_rule, c.decided_status
    else:
        st = _route_pick(core, c, parent, c.d2u.buf + c.d2u.head, req, &backend, &rule)
        if c.fault_kept > 0 and c.fault_kept & _FAULT_ANSWER:
            st = c.fault_kept           # released under a newer table: its abort stands
    c.fault_kept = -1                   # (faults were not drawn again for it: fault.pxi)
    if st & _FAULT_HOLD:
        return _fault_hold(core, c, backend, rule, st & ~_FAULT_HOLD)   # fault.pxi
    if st != 0:
        c.service = parent              # counted for the service the request named
        c.req_rule = rule               # ... and the route whose rule answers (500)
        c.flags |= CONN_SERVICE_KNOWN
        c.stat = -1
        if st == 404:
            _http_reply(core, c, 404, b"no route matches the request\n", -1)
        elif st < 400:
            return _redirect_reply(core, c, c.d2u.buf + c.d2u.head, req,
                                   c.table.rules[rule].url)
        elif st > _FAULT_STATUS:
            _fault_answer(core, c, st)
        else:
            _http_reply(core, c, st, b"no valid backend for the request's route\n", -1)
        return STATUS_CLOSE
    c.service = backend
    c.req_rule = rule
    svc = &c.table.services[c.service]
    _hash_route(core, c, svc, c.d2u.buf + c.d2u.head, req)   # (hashing.pxi)
    c.flags |= CONN_SERVICE_KNOWN
    c.peer_principal = 0            # until an upstream is verified (handshake or pool)
    c.stat = -1
    if svc.n_endpoints == 0:
        core.counters.no_endpoint += 1
        n = snprintf(body, sizeof(body), b"no healthy endpoint for \"%.*s\"\n", <int>hn, host)
        _http_reply(core, c, 503, body, n)
        return STATUS_CLOSE
    if _leaves_http(c.d2u.buf + c.d2u.head, req):
        core.counters.http_upgrade_refused += 1
        _http_reply(core, c, 403, b"upgrade not allowed\n", -1)
        return STATUS_CLOSE
    st = _http_framed(core, c, req, c.d2u.head)
    if st == STATUS_RESET:
        _http_reply(core, c, 431, b"request head cannot be rewritten for the upstream\n", -1)
        return STATUS_CLOSE
    if st == STATUS_CLOSE:
        return STATUS_CLOSE             # answered: a step's (ratelimit.pxi), or overload's 503
    # (A first request's step that waits needs a timer to wake the pair: the first
    # such outbound step brings it; inbound pairs do not route here.)
    _invariant(st == STATUS_OK, b"a first request's step stopped")
    core.counters.http_routed += 1
    return _http_upstream(core, c, -1)


cdef inline bint _pend_idempotent(const Conn* c) noexcept nogil:
    """Are the requests in flight all of idempotent methods (RFC 9110 §9.2.2)?"""
    cdef uint32_t k
    cdef uint8_t m
    for k in range(c.n_pend):
        m = c.pend_method[(c.pend_first + k) % ENGINE_HTTP_PIPELINE_MAX]
        if not (m == METHOD_GET or m == METHOD_HEAD or m == METHOD_PUT or m == METHOD_DELETE
                or m == METHOD_OPTIONS or m == METHOD_TRACE):
            return False
    return True


cdef int _http_upstream(Core* core, Conn* c, int64_t avoid) noexcept nogil:
    """The requests framed for c.service, whole at d2u offset 0 as they were edited for
    the hop, go to an endpoint the balancer picks (another than `avoid`, an endpoint
    index, when the service has another; -1: any): on a pooled upstream of it, else on a
    new one (connect; they wait in d2u)."""
    cdef Service* svc = &c.table.services[c.service]
    cdef int st
    cdef bint waiting = _pool_unwait(core, c)     # (it waited for room: pool.pxi)
    if _outlier_none_healthy(core, svc):
        return _outlier_refuse(core, c)             # every endpoint ejected: 503
    if avoid >= 0 and svc.n_endpoints > 1:
        _bind_other(core, c, svc, <uint32_t>avoid)     # (retry.pxi)
    else:
        _bind_endpoint(core, c, svc)
    c.peer_principal = 0            # until an upstream is verified (handshake or pool)
    c.stat = -1
    if _pool_take(core, c, &svc.endpoints[c.endpoint]):
        core.counters.http_upstream_reused += 1
        # Kept at d2u offset 0 until an answer starts: should the pooled upstream turn
        # out closed (the keep-alive race), idempotent requests go again at once. (A
        # request its route retries is retried by the route's policy alone, counted.)
        if _pend_idempotent(c) and not c.flags & CONN_KEPT:
            c.flags |= CONN_RETRYABLE
        return _enter_pipe(core, c)
    if not _pool_room(core, c, svc, waiting):
        return _pool_full(core, c, svc, waiting)   # connectionPool (pool.pxi)
    # Setup (connect + handshake) gets its own connect_timeout from here.
    _deadline_at(core, c, core.now_ns + _setup_timeout_ns(core, svc))
    st = _connect(core, c, &svc.endpoints[c.endpoint].addr, svc.endpoints[c.endpoint].addrlen)
    if st == STATUS_OK:
        return _tls_client_start(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st                       # the next endpoint, or 503 (_settle)


cdef int _http_retry(Core* core, Conn* c) noexcept nogil:
    """A pooled upstream failed before a byte of answer: its requests go again, at
    once, to another upstream (_http_reroute)."""
    core.counters.http_upstream_retried += 1
    return _http_reroute(core, c)


cdef int _http_reroute(Core* core, Conn* c) noexcept nogil:
    """Drop the upstream and send the client's requests framed for it again, as they
    were edited for the hop (still whole at d2u offset 0: none of their bytes went to
    it, or it failed before a byte of answer), to an endpoint of the same service,
    pooled or new. Their rules, starts and timeouts stay theirs; requests not framed
    yet are framed as they come, a route decided for one of them stays decided."""
    _retry_discard(core, c)             # (retry.pxi)
    c.req_deadline_ns = c.pend_deadline[c.pend_first] if c.n_pend > 0 else 0
    return _http_upstream(core, c, -1)


cdef int _http_switch(Core* core, Conn* c) noexcept nogil:
    """The upstream ended after answering every request it got: drop it and route the
    client's next request (buffered in d2u) afresh, on the same client connection."""
    _load_release(core, c)
    if not (_http_idle(c) and _pool_put(core, c)):
        _side_close(&c.up, False)
    memset(&c.u2d, 0, sizeof(Flow))
    c.d2u.shut = False
    c.switching = False
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.n_pend = 0
    c.fwd = 0
    c.req_phase = REQ_HEAD
    c.upgrade = UPGRADE_NONE
    c.head_scan = 0
    c.reusable = True
    c.setup_tries = 0
    c.filter_at = 0
    c.flags &= ~CONN_KEPT
    # The next request names its own service: until it is routed, none is known (a
    # 404 then counts for no service, not for the one this client used before).
    if not (c.flags & CONN_FIXED_SERVICE):
        c.flags &= ~CONN_SERVICE_KNOWN
        c.stat = -1
    c.flags &= ~(CONN_TICKET_WAIT | CONN_OFFERED_SESSION)
    free(c.peer_id)
    c.peer_id = NULL
    c.peer_id_length = 0
    _up_forget(c)
    c.state = CONN_HTTP_HEAD
    _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    return _http_head(core, c)


cdef int _tcp_start(Core* core, Conn* c) noexcept nogil:
    """Opaque TCP to c.service: connect to its next endpoint (the mTLS hop follows);
    bytes the client already sent wait in d2u."""
    cdef Service* svc
    cdef int st
    if c.table != core.table and not _adopt_opaque(core, c):
        return STATUS_CLOSE             # its listener left the table (carry.pxi)
    if c.client_ctx == NULL:
        return _caller_refused(core, c) # no local workload's caller (callers.pxi)
    svc = &c.table.services[c.service]
    if svc.n_endpoints == 0:
        core.counters.no_endpoint += 1
        return STATUS_CLOSE
    if _outlier_none_healthy(core, svc):
        return _outlier_refuse(core, c)
    if c.setup_tries == 0 and _pair_refused(core, c, &svc.chain):
        return STATUS_CLOSE             # over a rate limit (ratelimit.pxi; a failover's
                                        # next try is the same pair: taken once)
    if not _pool_room(core, c, svc, False):
        return _pool_full(core, c, svc, False)     # connectionPool (pool.pxi)
    _deadline_at(core, c, core.now_ns + _setup_timeout_ns(core, svc))
    _bind_endpoint(core, c, svc)
    st = _connect(core, c, &svc.endpoints[c.endpoint].addr, svc.endpoints[c.endpoint].addrlen)
    if st == STATUS_OK:
        return _tls_client_start(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st
