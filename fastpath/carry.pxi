# carry.pxi: Open pairs meet a newer route table (Envoy's rule): each HTTP request is
# routed on the table current when its head is framed, an upstream to an endpoint that
# left takes no new request, an opaque pair whose destination left is closed after the
# drain period (an inbound one the new table's AuthorizationPolicies deny, at once);
# endpoints that stay keep their state (sessions, idle upstreams, balancer figures)
# across the swap.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# A pair holds a reference to the table it started on (its indexes point into it). At a
# request boundary an HTTP pair moves to the current table: in place when its upstream
# (or, inbound, its app connection) is just as good there — the same destination and
# address, opened as the identity the new table gives the pair — else by dropping that
# connection and routing the next request afresh (_http_switch, _inbound_move).
# Pairs between requests move when the table is swapped in (_reach_open_pairs); pairs
# with requests in flight move once those are answered or their next head is framed.
# A pair going away (CONN_GOING_AWAY: the engine drains, its listener or its inbound
# service left) stays on its table until it ends.


cdef inline bint _between_requests(const Conn* c) noexcept nogil:
    """An HTTP pair in PIPE with nothing owed either way (bytes of a next request that
    are not framed yet may wait in d2u)."""
    return (c.state == CONN_PIPE and c.n_pend == 0 and c.fwd == 0
            and c.req_phase == REQ_HEAD and c.resp_phase == RESP_HEAD
            and c.resp_fwd == 0 and c.u2d.buf == NULL and not c.switching
            and not c.client_close and not c.d2u.eof and not c.d2u.shut
            and not (c.flags & CONN_DRAINING))


cdef inline void _retable(Core* core, Conn* c, Table* t) noexcept nogil:
    """Hold `t` instead of the pair's table (which may be freed here: no pointer into
    it may be used after this)."""
    t.refs += 1
    _table_release(core, c.table)
    c.table = t
    c.stat = -1
    c.req_rule = -1                     # an index into the old table's rules
    c.filter_at = 0                     # another table, other chains
    core.counters.pairs_moved += 1


cdef OutboundListener* _listener_in(Table* t, int fd) noexcept nogil:
    cdef uint32_t i
    for i in range(t.n_listeners):
        if t.listeners[i].fd == fd:
            return &t.listeners[i]
    return NULL


cdef openssl.SSL_CTX* _client_identity(Core* core, Conn* c, Table* t,
                                       uint16_t* principal, int32_t* ns) noexcept nogil:
    """The identity `t` gives outbound pair c (_listener_identity, for its listener
    there); NULL when the listener left `t` or `t` knows no workload for its caller."""
    cdef OutboundListener* l = _listener_in(t, c.lfd) if c.lfd >= 0 else NULL
    if l == NULL:
        return NULL
    return _listener_identity(core, c, t, l, principal, ns)


cdef openssl.SSL_CTX* _listener_identity(Core* core, Conn* c, Table* t, OutboundListener* l,
                                         uint16_t* principal, int32_t* ns) noexcept nogil:
    """The one place that decides the identity outbound pair c presents, accepted on
    `l` of table `t` (DESIGN §4 "Who is calling"): where `t` tells local callers apart,
    that of the workload the caller is (callers.pxi: by the owner of its socket, or by
    its address); else the listener's (the node's one local workload). NULL: the caller
    is no workload `t` knows, and is refused (_caller_refused), never given another's.
    `ns`: the caller's namespace in `t` (its consumer HTTPRoutes, routes.pxi)."""
    cdef Source* s
    if t.n_sources > 0:
        s = _caller_source(core, c, t)
        if s == NULL:
            principal[0] = 0
            ns[0] = -1
            return NULL
        principal[0] = _interned(core, &s.principal, &s.identity)
        ns[0] = s.ns
        return s.client_ctx
    principal[0] = _interned(core, &l.principal, &l.identity)
    ns[0] = l.ns
    return l.client_ctx


cdef bint _adopt(Core* core, Conn* c) noexcept nogil:
    """Outbound HTTP pair with no upstream (about to route a request): take the current
    table, with the identity it gives the pair (NULL when the caller is no workload
    there any more: its request is refused, the identity is not kept a request
    longer). False (the pair stays where it is, going away) when its listener left the
    table."""
    cdef Table* t = core.table
    cdef uint16_t principal = 0
    cdef OutboundListener* l = _listener_in(t, c.lfd) if c.lfd >= 0 else NULL
    cdef openssl.SSL_CTX* ctx
    cdef int32_t ns = -1
    if l == NULL:
        c.flags |= CONN_GOING_AWAY
        return False
    ctx = _listener_identity(core, c, t, l, &principal, &ns)
    c.caller_ns = ns
    c.flags &= ~CONN_ROUTE_DECIDED     # decided on the old table: routed again here
    c.rebalance_to = 0
    if c.flags & CONN_FIXED_SERVICE:
        c.service = l.service
        c.parent = l.service
    else:
        # c.service indexes the old table: until the request is routed on this one, its
        # answers (a 404) are counted for no service, not read through a stale index.
        c.flags &= ~CONN_SERVICE_KNOWN
    _retable(core, c, t)
    c.client_ctx = ctx
    c.local_principal = principal
    return True


cdef inline bint _rules_in_flight(const Conn* c) noexcept nogil:
    """Is a request of the pair's still unanswered that a route's rule took? Its answer
    is edited by that rule, which Conn.pend_rule names by its index in the pair's table."""
    cdef uint32_t i
    for i in range(c.n_pend):
        if c.pend_rule[(c.pend_first + i) % ENGINE_HTTP_PIPELINE_MAX] >= 0:
            return True
    return False


cdef bint _outbound_rebind(Core* core, Conn* c) noexcept nogil:
    """Outbound HTTP pair with an upstream: move it to the current table in place when
    that upstream is one the table would give it (same destination, same address, the
    same identity); False when it is not, or when requests a rule took are in flight:
    they finish on the table that routed them (the next one waits for their answers and
    a switch), as an index of that table's rules would name another rule in `t`, or
    none (a pipelined request after a push had the one before it edited so)."""
    cdef Table* t = core.table
    cdef Service* a = &c.table.services[c.service]
    cdef uint16_t principal = 0
    cdef int32_t ns = -1
    cdef int64_t k
    cdef Endpoint* ep
    if c.up.ssl == NULL or c.u2d.eof or not c.reusable or _rules_in_flight(c):
        return False
    if _client_identity(core, c, t, &principal, &ns) != c.client_ctx:
        return False
    # (A service port's own listener: its service's next request is routed by the
    # listener's service in `t`, which may send it elsewhere; the upstream stays if `t`
    # has its destination.)
    k = _service_in(t, a, c.service)
    if k < 0:
        return False
    ep = _endpoint_in(&t.services[k], &a.endpoints[c.endpoint])
    if ep == NULL:
        return False
    if c.flags & CONN_EP_BOUND:
        # `ep` counts the pair already (carried over at the swap); the old one lets go.
        _load_add(core, c, &a.endpoints[c.endpoint], -<int32_t>c.ep_load, -1)
    if c.flags & CONN_FIXED_SERVICE:
        # (Only once the pair moves: an index of `t` on a pair left on its old table
        # would name another service there.)
        c.parent = _listener_in(t, c.lfd).service
    c.service = <uint32_t>k
    c.endpoint = <uint32_t>(ep - t.services[k].endpoints)
    c.local_principal = principal
    c.caller_ns = ns
    _retable(core, c, t)
    return True


cdef int64_t _route_in(const Table* t, const Conn* c) noexcept nogil:
    """The index of `t`'s inbound route for the SNI inbound pair `c` came by (its
    route's own name for a plaintext pair); -1 when it has none."""
    cdef const Name* sni = _sni_sent(c, &c.table.routes[c.route])
    cdef bint alias
    return _route_named(t, sni.data, sni.length, &alias)


cdef inline bint _same_app(const InboundRoute* a, const InboundRoute* b) noexcept nogil:
    """Same app address, same declared protocol (a pair framed, or not, for one is not
    carried to the other)."""
    return (a.app_addrlen == b.app_addrlen and a.protocol == b.protocol
            and memcmp(&a.app_addr, &b.app_addr, a.app_addrlen) == 0)


cdef void _inbound_take_route(Core* core, Conn* c, uint32_t j) noexcept nogil:
    cdef InboundRoute* route = &core.table.routes[j]
    cdef const Name* sni = _sni_sent(c, &c.table.routes[c.route])
    # The name it came by may be the alias of route j where it was the old route's SNI,
    # or the other way round (before _retable: the old table may go with it).
    if _name_eq(&route.alias, sni.data, sni.length):
        c.flags |= CONN_SNI_ALIAS
    else:
        c.flags &= ~CONN_SNI_ALIAS
    _retable(core, c, core.table)
    c.route = j
    c.local_principal = _interned(core, &route.principal, &route.identity)
    if c.flags & CONN_HTTP:
        c.head_reserve = _request_room(route, c)


cdef bint _inbound_rebind(Core* core, Conn* c) noexcept nogil:
    """Inbound pair: move it to the current table in place when the route for its SNI
    still leads to the same app address and takes it (plaintext: not STRICT); False
    when it does not. The room checked is what the pair's heads need there: none in
    plaintext, so a plaintext pair is never held on its table past a push
    (_inbound_move, CONN_HOLD_TABLE), where a later push's STRICT would not reach its
    next request."""
    cdef int64_t j = _route_in(core.table, c)
    if (j < 0 or not _same_app(&c.table.routes[c.route], &core.table.routes[j])
            or not _takes_pair(&core.table.routes[j], c)):
        return False
    if (c.flags & CONN_HTTP
            and c.d2u.tail + _request_room(&core.table.routes[j], c) > core.buffer_bytes):
        return False                    # no room for its fields: moved between requests
    _inbound_take_route(core, c, <uint32_t>j)
    return True


cdef bint _rebind(Core* core, Conn* c) noexcept nogil:
    """At a request head of a pair on an older table: moved in place, or False (the
    pair switches once its earlier requests are answered)."""
    if c.flags & CONN_INBOUND:
        return _inbound_rebind(core, c)
    return _outbound_rebind(core, c)


cdef int _end_gracefully(Core* core, Conn* c) noexcept nogil:
    """Close a pair between messages with a clean end both ways (close_notify to a TLS
    peer, FIN to a plaintext one), so neither side takes it for a truncation."""
    if c.down.fd >= 0 and not c.u2d.shut:
        _shut(&c.down)
    if c.up.fd >= 0 and not c.d2u.shut:
        _shut(&c.up)
    return STATUS_CLOSE


cdef int _inbound_move(Core* core, Conn* c) noexcept nogil:
    """Inbound HTTP pair between requests, on an older table: go on with the current
    table's route for its SNI, to the app's new address on a new app connection. When
    the service left this node the pair stays on its table, going away (as Envoy
    drains a removed filter chain): the caller's node may not have the push yet, and
    its next request on this pair is answered (saying close), not refused. A plaintext
    pair whose route is STRICT now is closed, its waiting request unanswered
    (plaintext.pxi)."""
    cdef int64_t j = _route_in(core.table, c)
    cdef InboundRoute* route
    cdef int st
    c.switching = False
    if _plaintext_revoked(core, c):
        return _plaintext_revoke(core, c)
    if j < 0 or core.table.routes[j].protocol == PROTO_TCP:
        # (A port now declared TCP takes no framed pair: new connections will be opaque.)
        c.flags |= CONN_GOING_AWAY
        return STATUS_OK
    if _same_app(&c.table.routes[c.route], &core.table.routes[j]):
        if not _inbound_rebind(core, c):
            # The next request, already buffered, leaves no room for the current
            # route's fields: it is framed on this route, and the pair moves after it.
            c.flags |= CONN_HOLD_TABLE
        return STATUS_OK
    _side_close(&c.up, False)
    if c.u2d.buf != NULL:
        _buf_put(core, c.u2d.buf)
    memset(&c.u2d, 0, sizeof(Flow))
    c.d2u.shut = False
    c.reusable = True
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.req_phase = REQ_HEAD
    c.upgrade = UPGRADE_NONE
    c.head_scan = 0
    c.fwd = 0
    c.n_pend = 0
    _inbound_take_route(core, c, <uint32_t>j)
    _up_forget(c)                       # (the old app socket's events)
    route = &c.table.routes[c.route]
    # The new app connection's setup has connect_timeout from now (not from the accept).
    _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    st = _connect(core, c, &route.app_addr, route.app_addrlen)
    if st == STATUS_OK:
        return _enter_pipe(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


cdef int _http_move(Core* core, Conn* c) noexcept nogil:
    """An HTTP pair between requests, on an older table: moved to the current one."""
    if c.flags & CONN_INBOUND:
        return _inbound_move(core, c)
    if _outbound_rebind(core, c):
        return STATUS_OK
    # The upstream goes (to the current table's pool when it may) and the next request
    # is routed on the current table.
    return _http_switch(core, c)


cdef bint _adopt_opaque(Core* core, Conn* c) noexcept nogil:
    """Outbound pair about to set up opaque TCP (a sniffing listener's timeout, a
    failover): take the current table, its listener's service and the identity it
    gives the pair there (NULL: refused by the caller). False when its listener left
    the table (the pair is refused)."""
    cdef Table* t = core.table
    cdef OutboundListener* l = _listener_in(t, c.lfd) if c.lfd >= 0 else NULL
    if l == NULL or l.http:
        return False
    c.service = l.service
    c.client_ctx = _listener_identity(core, c, t, l, &c.local_principal, &c.caller_ns)
    _retable(core, c, t)
    return True


cdef void _inbound_current(Core* core, Conn* c) noexcept nogil:
    """Inbound pair whose handshake ended after a config push: carried by the current
    table's route for its SNI; when there is none the pair stays on its route, going
    away (HTTP) or closed after the drain period (opaque)."""
    cdef int64_t j = _route_in(core.table, c)
    if j >= 0:
        _inbound_take_route(core, c, <uint32_t>j)
    elif c.flags & CONN_HTTP:
        c.flags |= CONN_GOING_AWAY
    elif c.close_at_ns == 0:
        c.close_at_ns = core.now_ns + (core.drain_ns if core.drain_ns > 0
                                       else <int64_t>ENGINE_DRAIN_PERIOD_MS * 1000000)
        _timer_arm(core, c, _conn_due_ns(core, c))


cdef void _opaque_check(Core* core, Conn* c) noexcept nogil:
    """An opaque pair meets a new table: if its destination (outbound: the same service
    and endpoint address; inbound: the route for its SNI to the same app) left, it is
    closed a drain period from now, unless a later table brings it back."""
    cdef bint kept
    cdef int64_t j
    if c.flags & CONN_INBOUND:
        j = _route_in(core.table, c)
        kept = j >= 0 and _same_app(&c.table.routes[c.route], &core.table.routes[j])
    else:
        kept = _current_endpoint(core, c) != NULL
    if kept:
        c.close_at_ns = 0               # its timer, if filed for it, fires and re-arms
    elif c.close_at_ns == 0:
        c.close_at_ns = core.now_ns + (core.drain_ns if core.drain_ns > 0
                                       else <int64_t>ENGINE_DRAIN_PERIOD_MS * 1000000)
        _timer_arm(core, c, _conn_due_ns(core, c))


cdef bint _opaque_denied(Core* core, Conn* c) noexcept nogil:
    """Inbound opaque pair c, past its decision (connecting to its app, or relaying), on
    an older table: do the AuthorizationPolicies of the current table's route for its
    SNI deny it now (authz.pxi _authz_revoked)? An opaque pair has no next request to
    judge, so without this a caller whose access was taken back would keep its open
    pairs for as long as they last. (Envoy drains every connection of a changed filter
    chain; here only the denied ones end.) A route that left judges nothing: the pair
    is closed after the drain period (_opaque_check). An upgraded HTTP tunnel keeps its
    decision: it was made on a request head that is gone."""
    cdef int64_t j
    if ((c.flags & (CONN_INBOUND | CONN_HTTP)) != CONN_INBOUND
            or (c.state != CONN_PIPE and c.state != CONN_CONNECTING)):
        return False
    j = _route_in(core.table, c)
    return j >= 0 and _authz_revoked(core, c, &core.table.routes[j])


cdef void _reach_open_pairs(Core* core) noexcept nogil:
    """A table was just swapped in: HTTP pairs between requests move to it now, opaque
    pairs learn whether their destination is still there, inbound opaque pairs its
    policies deny are cut, as are plaintext pairs in the middle of a message to a
    route made STRICT (plaintext.pxi). Once per swap, over the slots in use: a decision
    per open inbound opaque pair, nothing for the others."""
    cdef uint32_t i
    cdef Conn* c
    for i in range(core.n_slots):
        c = &core.conns[i]
        if c.state == CONN_FREE or c.table == core.table:
            continue
        if _opaque_denied(core, c):
            # At once, with a reset: its caller may not send a byte more, and neither
            # end may take the cut for the stream's end.
            _settle(core, c, STATUS_RESET)
            continue
        if c.lfd >= 0 and _listener_in(core.table, c.lfd) == NULL:
            # Its listener left: the caller may close that fd now and open another
            # under the same number, which must never pass for this pair's listener.
            # An HTTP pair goes away (its next answer says close; quiet, it is closed).
            c.lfd = -1
            if c.flags & CONN_HTTP:
                c.flags |= CONN_GOING_AWAY
                _timer_arm(core, c, _conn_due_ns(core, c))  # quiet: due sooner
        if c.state != CONN_PIPE:
            continue
        if c.req_phase != REQ_HEAD and _plaintext_revoked(core, c):
            _settle(core, c, _plaintext_revoke(core, c))
        elif (not (c.flags & CONN_HTTP) or c.req_phase == REQ_TUNNEL
                or c.resp_phase == RESP_TUNNEL):
            _opaque_check(core, c)          # (an upgraded or CONNECT tunnel is opaque)
        elif _between_requests(c) and not c.flags & (CONN_GOING_AWAY | CONN_HOLD_TABLE):
            _settle(core, c, _http_move(core, c))


# --- endpoint state carried to a newer table at its swap (table.pxi _swap) -----------------

cdef bint _same_destination(const Service* a, const Service* b) noexcept nogil:
    """Same service name, SNI and allowed peer IDs: a connection verified for one is
    good for the other."""
    cdef uint32_t i
    if (not _name_eq(&b.name, a.name.data, a.name.length)
            or not _name_eq(&b.sni, a.sni.data, a.sni.length)
            or a.n_identities != b.n_identities):
        return False
    for i in range(a.n_identities):         # exactly, as _handshake_done checks them
        if (a.identities[i].length != b.identities[i].length
                or memcmp(a.identities[i].data, b.identities[i].data, a.identities[i].length) != 0):
            return False
    return True


cdef int64_t _service_in(const Table* t, const Service* a, int64_t guess) noexcept nogil:
    """The index in `t` of the service that is `a`'s destination (_same_destination),
    looked for at `guess` first; -1 when `t` has none."""
    cdef uint32_t k
    if 0 <= guess < t.n_services and _same_destination(a, &t.services[guess]):
        return guess
    for k in range(t.n_services):
        if _same_destination(a, &t.services[k]):
            return k
    return -1


cdef Endpoint* _endpoint_in(Service* b, const Endpoint* e) noexcept nogil:
    """`b`'s endpoint at `e`'s address, or NULL."""
    cdef uint32_t m
    for m in range(b.n_endpoints):
        if (b.endpoints[m].addrlen == e.addrlen
                and memcmp(&b.endpoints[m].addr, &e.addr, e.addrlen) == 0):
            return &b.endpoints[m]
    return NULL


cdef void _carry_endpoint(const Table* t, Endpoint* e, Endpoint* b) noexcept nogil:
    """Move what old endpoint `e` knows to `b`, the same address in table `t`: its
    failure streak, its load (outstanding requests, latency estimate: the pairs still
    on the old table report to both, _load_move), its resumable session and its idle
    upstreams. Only those opened as
    an identity `t` still presents move (a session does not hold its ctx: compared
    against a ctx `t` holds, the pointer cannot be a freed one's reused address)."""
    cdef uint32_t x, kept = 0
    if e.fails > b.fails:
        b.fails = e.fails
        b.down_until_ns = e.down_until_ns
    b.outstanding = e.outstanding
    b.ewma_ns = e.ewma_ns
    b.ewma_at_ns = e.ewma_at_ns
    if e.session != NULL and b.session == NULL and _table_has_ctx(t, e.session_ctx):
        b.session = e.session
        b.session_ctx = e.session_ctx
        e.session = NULL
    for x in range(e.n_idle):
        if b.n_idle < ENGINE_POOL_PER_ENDPOINT and _table_has_ctx(t, e.idle[x].client_ctx):
            b.idle[b.n_idle] = e.idle[x]
            b.n_idle += 1
        else:
            e.idle[kept] = e.idle[x]
            kept += 1
    e.n_idle = kept


cdef void _carry_endpoints(Table* old, Table* t) noexcept nogil:
    """Endpoint state outlives a config push: for each service `t` keeps as it was
    (name, SNI, peer IDs), each endpoint address it keeps gets the old one's failure
    streak (a node that just failed is still passed over), load (the balancer weighs
    it as before), resumable session and idle upstreams (the next requests need no new
    handshake). What stays behind is closed
    with the old table. Services are looked up at the same index first: a push rarely
    reorders or inserts many, so a swap stays about linear in the endpoints."""
    cdef uint32_t i, j
    cdef int64_t k
    cdef int64_t shift = 0           # where the last service moved to, relative
    cdef Service* a
    cdef Endpoint* e
    cdef Endpoint* b
    for i in range(old.n_services):
        a = &old.services[i]
        k = _service_in(t, a, <int64_t>i + shift)
        if k < 0:
            continue
        shift = k - <int64_t>i
        for j in range(a.n_endpoints):
            e = &a.endpoints[j]
            if (e.fails == 0 and e.session == NULL and e.n_idle == 0
                    and e.outstanding == 0 and e.ewma_at_ns == 0):
                continue
            b = _endpoint_in(&t.services[k], e)
            if b != NULL:
                _carry_endpoint(t, e, b)


cdef uint64_t _close_idle(Table* t) noexcept nogil:
    """Close every idle upstream `t`'s endpoints still hold; how many."""
    cdef uint32_t i, j
    cdef uint64_t n = 0
    cdef Endpoint* ep
    for i in range(t.n_services):
        for j in range(t.services[i].n_endpoints):
            ep = &t.services[i].endpoints[j]
            while ep.n_idle > 0:
                ep.n_idle -= 1
                _idle_close(&ep.idle[ep.n_idle])
                n += 1
    return n
