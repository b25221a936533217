# pool.pxi: DestinationRule trafficPolicy.connectionPool: how many upstream connections a
# destination service port may have (tcp.maxConnections), the requests that wait for one
# (http.http1MaxPendingRequests), the requests one carries (http.maxRequestsPerConnection)
# and its setup's own deadline (tcp.connectTimeout).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (UpstreamCount, ConnPoolPolicy, Side.counted, IdleUp.counted, CONN_POOL_WAIT).
#
# Counting. Each service port has an UpstreamCount in Core.upstream_counts, keyed by its
# name (the engine's service name "ns/name:port"), so the count outlives route tables: a
# pair on an older table, an idle upstream carried to a newer one and one still closing
# all count for the same service. An upstream enters the count when its connect begins
# (_pool_opened, from _connect) and the socket carries the count with it: Side.counted
# while a pair holds it, IdleUp.counted while it sits in an endpoint's pool; whichever
# closes the socket (_side_close, _idle_close) leaves the count. No other path closes an
# upstream socket, so no hook is needed where one is let go. Envoy counts per cluster,
# and an Envoy cluster is a service port: so does this.
#
# Admission. A pair that needs a new upstream (none of its identity idle at the endpoint
# the balancer picked) asks _pool_room first. At maxConnections, an idle upstream of the
# service elsewhere (another endpoint, another caller identity) is closed to make room
# (an idle connection is worth less than a waiting request); with none, an opaque pair is
# closed, and an HTTP request waits (CONN_POOL_WAIT) if fewer than http1MaxPendingRequests
# wait already, else it is answered 503. A waiting pair holds no upstream and no
# outstanding load; its one timer polls each wheel tick (4.2 ms) and the request goes on
# as soon as the count is under the limit again (an upstream of the service closed, or
# went idle and can be closed for it), in the order the wheel fires them; a request
# arriving while others wait queues behind them. As in Envoy, nothing but its route's
# timeout (504) ends the wait: connectTimeout bounds a connection's setup, not a request's
# turn (Istio's own example sets it to 30 ms). A client that resets while waiting closes
# the pair at its next tick (as a fault delay's, fault.pxi); one that only half-closed
# after its request waits on for its answer, as it would get it on the path that does
# not wait (a FIN is no abort: retry.pxi _backoff_event). Envoy also counts as pending a
# request whose new connection is still being set up; here only the requests over
# maxConnections wait, and count.
#
# Upstreams belong to the service, not to a client. A keep-alive client holds its
# upstream from request to request (no pool round trip per request); under a
# maxConnections limit that would let a quiet client keep a connection others wait for,
# so there each answer done sends the upstream back to the pool (_pooled_between): the
# client's next request takes it again (it is the newest idle one at that endpoint) unless
# requests waiting for a connection come first, as they do in Envoy's pool.
#
# maxRequestsPerConnection. Each upstream counts the requests sent on it (Side.requests,
# kept in IdleUp.requests while pooled): one that carried that many is not pooled but
# closed when its last answer is done, and a keep-alive client's next request switches to
# another upstream (_rebalance asks _upstream_spent) as for another backend.

# The services a worker counts at once (Core.upstream_counts), for tests and views.
UPSTREAM_COUNTS = ENGINE_UPSTREAM_COUNTS


cdef uint64_t _pool_key(const Service* svc) noexcept nogil:
    cdef uint64_t h = _fmix(_fnv_add(_FNV_OFFSET, svc.name.data, svc.name.length))
    return h if h != 0 else 1


cdef inline bint _count_unused(UpstreamCount* u) noexcept nogil:
    """No table points at `u` and no socket counts in it: nothing can reach it again
    (only a table's services lead to an entry, and a counted socket's pair or pool holds
    its table), so it may be taken for another key."""
    return mn_load_u32(&u.tables) == 0 and mn_load_u32(&u.conns) == 0


cdef UpstreamCount* _pool_claim(Core* core, uint64_t key) noexcept nogil:
    """The entry of `key` in Core.upstream_counts, claimed if new; NULL when full. Open
    addressing, linear probing: the probe for `key` runs to its entry or to a never
    claimed one; an entry of a service no table names any more (_count_unused) is taken
    for `key` in place (its old key stays until then, so no probe chain is cut), the
    first such on the way when `key` has none. The loop never writes `key`: only
    install claims (GIL held: one at a time)."""
    cdef uint32_t mask = ENGINE_UPSTREAM_COUNTS - 1
    cdef uint32_t i = <uint32_t>key & mask
    cdef uint32_t n
    cdef UpstreamCount* u
    cdef UpstreamCount* unused = NULL
    for n in range(ENGINE_UPSTREAM_COUNTS):
        u = &core.upstream_counts[i]
        if u.key == key:
            return u
        if u.key == 0:
            if unused == NULL:
                u.key = key
                return u
            break
        if unused == NULL and _count_unused(u):
            unused = u
        i = (i + 1) & mask
    if unused != NULL:
        unused.key = key
        unused.pending = 0
        core.counters.pool_counts_reused += 1
    return unused


cdef int _pool_bind(Core* core, Table* t) except -1:
    """Give each service of `t` its count (at install, before the loop sees `t`; only
    `key` and `tables` are written, `tables` atomically), held until the table is freed
    (_pool_unbind). Services with a policy first: should the table fill up, the
    uncounted ones are those nobody limits."""
    cdef uint32_t i
    cdef int rnd
    cdef UpstreamCount* u
    for rnd in range(2):
        for i in range(t.n_services):
            if (t.services[i].conn_pool != NULL) != (rnd == 0):
                continue
            u = _pool_claim(core, _pool_key(&t.services[i]))
            t.services[i].upstreams = u
            if u != NULL:
                mn_add_u32(&u.tables, 1)
            elif t.services[i].conn_pool != NULL:
                core.counters.pool_no_slot += 1
    return 0


cdef inline void _pool_unbind(Service* svc) noexcept nogil:
    """svc's table is being freed (by the loop, or by install for a table the loop never
    took), after its idle upstreams were closed: its count is one table freer."""
    if svc.upstreams != NULL:
        mn_add_u32(&svc.upstreams.tables, <uint32_t>-1)
        svc.upstreams = NULL


cdef inline void _pool_opened(Core* core, Conn* c) noexcept nogil:
    """c's outbound upstream socket was just made: it counts for c's service until it
    closes. An HTTP pair's requests framed already go on it."""
    cdef UpstreamCount* u = c.table.services[c.service].upstreams
    c.up.counted = u
    c.up.requests = c.n_pend if c.flags & CONN_HTTP else 0
    if u != NULL:
        u.conns += 1


cdef inline void _pool_closed(UpstreamCount** counted) noexcept nogil:
    """A counted upstream socket is closing (_side_close, _idle_close)."""
    if counted[0] != NULL:
        _invariant(counted[0].conns > 0, b"upstream count below zero")
        counted[0].conns -= 1
        counted[0] = NULL


cdef inline int64_t _setup_timeout_ns(Core* core, const Service* svc) noexcept nogil:
    """tcp.connectTimeout: the service's own setup deadline, else the engine's."""
    if svc.conn_pool != NULL and svc.conn_pool.connect_timeout_ns > 0:
        return svc.conn_pool.connect_timeout_ns
    return core.connect_timeout_ns


cdef inline bint _requests_spent(const Service* svc, uint32_t requests) noexcept nogil:
    return (svc.conn_pool != NULL and svc.conn_pool.max_requests != 0
            and requests >= svc.conn_pool.max_requests)


cdef inline bint _upstream_spent(Core* core, Conn* c) noexcept nogil:
    """Has c's upstream carried its service's maxRequestsPerConnection (the next request
    goes on another)? (Counted when it is closed instead of pooled: _pool_keep.)"""
    return c.up.fd >= 0 and _requests_spent(&c.table.services[c.service], c.up.requests)


cdef inline bint _pooled_between(Core* core, Conn* c) noexcept nogil:
    """Outbound HTTP between requests, to a service that limits its connections: the
    upstream goes now (_http_switch pools it, or closes it when it carried
    maxRequestsPerConnection), not when the client's next request comes, so that a
    quiet keep-alive client does not hold a connection maxConnections counts."""
    cdef ConnPoolPolicy* p
    if not ((c.flags & (CONN_HTTP | CONN_INBOUND | CONN_MIRROR)) == CONN_HTTP
            and c.up.fd >= 0 and not c.switching and not c.client_close and _http_idle(c)):
        return False
    p = c.table.services[c.service].conn_pool
    return p != NULL and (p.max_connections != 0 or _upstream_spent(core, c))


cdef bint _pool_keep(Core* core, Conn* c) noexcept nogil:
    """May c's upstream go idle into its endpoint's pool (_pool_put)? Not when it carried
    maxRequestsPerConnection (closed instead), nor when it was never counted (a mirror's
    copy opens its own) and its service has no room for one more."""
    cdef Service* svc = &c.table.services[c.service]
    cdef UpstreamCount* u = svc.upstreams
    if _requests_spent(svc, c.up.requests):
        if not (c.flags & CONN_MIRROR):
            core.counters.pool_spent += 1
        return False
    if c.up.counted == NULL and u != NULL:
        if (svc.conn_pool != NULL and svc.conn_pool.max_connections != 0
                and u.conns >= svc.conn_pool.max_connections):
            return False
        u.conns += 1
        c.up.counted = u
    return True


cdef bint _pool_evict(Core* core, Conn* c, Service* svc) noexcept nogil:
    """Close the oldest idle upstream of c's service (on the current table, where idle
    upstreams are kept) to make room for c's; False when none is idle."""
    cdef Service* s = svc
    cdef Endpoint* ep
    cdef IdleUp u
    cdef int64_t k
    cdef uint32_t j
    cdef Endpoint* oldest = NULL
    if c.table != core.table and core.table != NULL:
        k = _service_in(core.table, svc, c.service)
        if k < 0:
            return False
        s = &core.table.services[k]
    for j in range(s.n_endpoints):
        ep = &s.endpoints[j]
        if ep.n_idle > 0 and (oldest == NULL or ep.idle[0].since_ns < oldest.idle[0].since_ns):
            oldest = ep
    if oldest == NULL:
        return False
    u = oldest.idle[0]
    memmove(&oldest.idle[0], &oldest.idle[1], (oldest.n_idle - 1) * sizeof(IdleUp))
    oldest.n_idle -= 1
    _idle_close(&u)
    core.counters.pool_idle_evicted += 1
    return True


cdef ConnPoolPolicy* _pool_policy(Core* core, Conn* c, Service* svc) noexcept nogil:
    """The connectionPool that judges c's new upstream to `svc` (of c's table): the
    current table's for the same destination, so that a config push changes the limits
    for the requests waiting already too (they hold their table until they go on);
    `svc`'s own when the current table has it no more."""
    cdef int64_t k
    if c.table == core.table or core.table == NULL:
        return svc.conn_pool
    k = _service_in(core.table, svc, c.service)
    return svc.conn_pool if k < 0 else core.table.services[k].conn_pool


cdef bint _pool_room(Core* core, Conn* c, Service* svc, bint waiting) noexcept nogil:
    """May c open a new upstream to `svc` now (tcp.maxConnections)? Requests waiting
    already go first (`waiting`: c is one of them)."""
    cdef ConnPoolPolicy* p = _pool_policy(core, c, svc)
    cdef UpstreamCount* u = svc.upstreams
    if p == NULL or u == NULL or p.max_connections == 0:
        return True
    if u.pending > 0 and not waiting:
        return False                    # behind those waiting
    if u.conns < p.max_connections:
        return True
    return _pool_evict(core, c, svc) and u.conns < p.max_connections


cdef inline void _pool_poll(Core* core, Conn* c) noexcept nogil:
    """File a waiting pair's timer for the next tick (or its route's timeout if sooner)."""
    cdef int64_t at = core.now_ns + _TW_TICK_NS
    if c.req_deadline_ns != 0 and at > c.req_deadline_ns:
        at = c.req_deadline_ns
    _deadline_at(core, c, at)


cdef bint _pool_unwait(Core* core, Conn* c) noexcept nogil:
    """The pair stops waiting (to go on, be answered or close): no longer pending. Was
    it waiting? Its state becomes HTTP_HEAD (no upstream, the request not sent), which
    the step that follows changes (_connect, _enter_pipe) or closes."""
    cdef UpstreamCount* u
    if c.state != CONN_POOL_WAIT:
        return False
    # (Only now: a pair that never waited may name no service of its table, an inbound
    # one's has none at all.)
    u = c.table.services[c.service].upstreams
    if u != NULL and u.pending > 0:
        u.pending -= 1
    c.state = CONN_HTTP_HEAD
    return True


cdef int _pool_full(Core* core, Conn* c, Service* svc, bint waiting) noexcept nogil:
    """c needs a new upstream and `svc` is at maxConnections: an opaque pair is closed;
    an HTTP request waits for one (STATUS_OK, CONN_POOL_WAIT) or, with
    http1MaxPendingRequests waiting already, is answered 503. `waiting`: c waited
    already, and goes on waiting until the end it was given."""
    cdef ConnPoolPolicy* p = _pool_policy(core, c, svc)
    if not (c.flags & CONN_HTTP):
        core.counters.pool_overflow_connections += 1
        return STATUS_CLOSE
    if waiting:
        _load_release(core, c)          # (the endpoint it was given is picked again)
        svc.upstreams.pending += 1
        c.state = CONN_POOL_WAIT
    else:
        if svc.upstreams.pending >= p.max_pending:
            if p.max_pending == 0:
                core.counters.pool_overflow_connections += 1
            else:
                core.counters.pool_overflow_pending += 1
            _http_reply(core, c, 503, b"upstream connection pool overflow: maxConnections "
                                      b"reached and http1MaxPendingRequests waiting\n", -1)
            return STATUS_CLOSE
        _load_release(core, c)          # no endpoint yet: picked again when it goes on
        svc.upstreams.pending += 1
        core.counters.pool_waited += 1
        c.state = CONN_POOL_WAIT
    _pool_poll(core, c)
    return STATUS_OK


cdef int _pool_waited(Core* core, Conn* c) noexcept nogil:
    """A waiting pair's timer fired: go on when there is room, else end at the route's
    timeout (504) or the client's reset, else wait a tick more."""
    if _waiting_client_left(c):       # (fault.pxi)
        _pool_unwait(core, c)
        return STATUS_CLOSE             # the client left: nobody to answer
    if c.req_deadline_ns != 0 and core.now_ns >= c.req_deadline_ns:
        _pool_unwait(core, c)
        core.counters.route_timeouts += 1
        _http_reply(core, c, 504, b"upstream request timeout\n", -1)
        return STATUS_CLOSE
    return _http_upstream(core, c, -1)  # (waits on when there is no room yet)


# --- install (GIL held): RouteTable.set_connection_pool() and the table's compile -------------

cdef int _pool_add(RouteTable table, int index, long long max_connections,
                   long long max_pending_requests, long long max_requests_per_connection,
                   double connect_timeout_s) except -1:
    if not 0 <= index < len(table._services):
        raise IndexError("service index %d out of range" % index)
    for name, value in (("max_connections", max_connections),
                        ("max_pending_requests", max_pending_requests),
                        ("max_requests_per_connection", max_requests_per_connection)):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("%s must be 0..%d, not %d" % (name, 0xFFFFFFFF, value))
    if not 0 <= connect_timeout_s <= 86400:
        raise ValueError("connect_timeout_s must be 0..86400, not %r" % connect_timeout_s)
    table._conn_pools[index] = (max_connections, max_pending_requests,
                                max_requests_per_connection, <int64_t>(connect_timeout_s * 1e9))
    return 0


cdef int _pool_build(Table* t, dict pools) except -1:
    """Each limited service's policy (RouteTable.set_connection_pool); the service owns it."""
    cdef ConnPoolPolicy* p
    for i, (most, pending, per_conn, timeout_ns) in pools.items():
        p = <ConnPoolPolicy*>calloc(1, sizeof(ConnPoolPolicy))
        if p == NULL:
            raise MemoryError()
        t.services[<uint32_t>i].conn_pool = p
        p.max_connections = most
        p.max_pending = pending
        p.max_requests = per_conn
        p.connect_timeout_ns = timeout_ns
    return 0


cdef list _pool_index(Core* core, Table* t):
    """(service name, count index) of each service of `t` with a count (the view reads
    the counts by index, never the table)."""
    out = []
    cdef uint32_t i
    for i in range(t.n_services):
        if t.services[i].upstreams != NULL:
            out.append((t.services[i].name.data[:t.services[i].name.length].decode(),
                        t.services[i].upstreams - core.upstream_counts,
                        t.services[i].conn_pool != NULL))
    return out


cdef dict _pool_view(Core* core, list index):
    """Each service's upstream connections and waiting requests in this worker now."""
    out = {}
    for name, k, limited in index:
        out[name] = {"connections": core.upstream_counts[<uint32_t>k].conns,
                     "pending": core.upstream_counts[<uint32_t>k].pending,
                     "limited": limited}
    return out
