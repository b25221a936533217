# conn.pxi: Connection pairs' slots (take, close, settle a step's status) and the pooled
# buffers their flows borrow.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef inline SideCounters* _counters_of(Core* core, Conn* c) noexcept nogil:
    if c.flags & CONN_INBOUND:
        return &core.counters.inbound
    if c.flags & CONN_MIRROR:
        return &core.counters.mirror    # a request's copy (mirror.pxi)
    return &core.counters.outbound


cdef inline char* _buf_get(Core* core) noexcept nogil:
    if core.n_free_bufs == 0:
        return NULL
    core.n_free_bufs -= 1
    core.counters.buffers_in_use += 1
    if core.counters.buffers_in_use > core.counters.buffers_peak:
        core.counters.buffers_peak = core.counters.buffers_in_use
    return core.free_bufs[core.n_free_bufs]


cdef inline void _buf_put(Core* core, char* buf) noexcept nogil:
    _invariant(core.n_free_bufs < core.n_bufs and buf != NULL, b"buffer returned twice")
    core.free_bufs[core.n_free_bufs] = buf
    core.n_free_bufs += 1
    core.counters.buffers_in_use -= 1


cdef Conn* _conn_new(Core* core, Table* t, uint32_t flags) noexcept nogil:
    cdef Conn* c
    if core.free_head >= 0:
        c = &core.conns[core.free_head]
        _invariant(c.state == CONN_FREE and c.tw_list == 0,
                   b"free list holds a live connection, or one with a timer")
        core.free_head = c.next_free
    elif core.n_slots < core.max_conns + core.max_mirrors:
        c = &core.conns[core.n_slots]   # first use: zeroed by calloc (CONN_FREE, gen 0)
        c.index = core.n_slots
        core.n_slots += 1
    else:
        return NULL
    # index and gen survive reuse; so does IN_READY (the slot is still on a ready list).
    c.flags = flags | (c.flags & CONN_IN_READY)
    c.next_free = -1
    c.table = t
    t.refs += 1
    c.service = 0
    c.endpoint = 0
    c.ep_load = 0
    c.setup_tries = 0
    c.route = 0
    c.lfd = -1
    c.peer_addr.ss_family = 0
    c.close_at_ns = 0
    c.client_ctx = NULL
    c.caller_ns = -1
    c.parent = 0
    c.req_rule = -1
    c.req_deadline_ns = 0
    c.hash_state = 0
    c.hash_cookie = 0
    c.pend_cookie = 0
    c.fault_until_ns = 0
    c.fault_kept = -1
    c.held_inflight = 0
    c.held_source = 0
    c.slow_phase = SLOW_NONE
    c.down.fd = -1
    c.down.ssl = NULL
    c.down.readable = True
    c.down.hup = False
    c.down.bytes_in = 0
    c.down.bytes_out = 0
    c.up.fd = -1
    c.up.ssl = NULL
    c.up.readable = True
    c.up.hup = False
    c.up.counted = NULL                 # (a mirror's upstream is counted only when pooled)
    c.up.requests = 0
    memset(&c.d2u, 0, sizeof(Flow))
    memset(&c.u2d, 0, sizeof(Flow))
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    c.active_ns = core.now_ns
    c.peer_id = NULL
    c.peer_id_length = 0
    c.req_phase = REQ_HEAD
    c.upgrade = UPGRADE_NONE
    c.head_scan = 0
    c.head_method = METHOD_OTHER
    c.fwd = 0
    c.req_left = 0
    c.switching = False
    c.reusable = True
    c.client_close = False
    c.up_refused = 0
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.resp_left = 0
    c.resp_status = 0
    c.pend_first = 0
    c.n_pend = 0
    c.peer_principal = 0
    c.stat = -1
    c.tcp_stat = -1
    c.resp_bytes = 0
    c.open_size_stat = -1
    c.head_reserve = 0
    c.filter_at = 0
    c.n_mirroring = 0
    c.rebalance_to = 0
    c.mirror_state = 0
    c.opened_ns = core.now_ns
    c.acc_head = 0
    c.acc_flags = 0
    c.acc_policy = 0
    c.acc_result = ACCESS_NOT_JUDGED
    c.acc_audited = 0
    c.state = CONN_CONNECTING      # callers set the real first state
    _timer_arm(core, c, c.deadline_ns)
    cdef SideCounters* sc = _counters_of(core, c)
    sc.connections_opened += 1
    sc.connections_active += 1
    return c


cdef void _side_close(Side* s, bint reset) noexcept nogil:
    cdef net.linger lg
    _pool_closed(&s.counted)            # an upstream leaves its service's count (pool.pxi)
    if s.ssl != NULL:
        if (not reset and openssl.SSL_is_init_finished(s.ssl)
                and not openssl.SSL_get_shutdown(s.ssl) & openssl.SSL_SENT_SHUTDOWN):
            # A connection the engine ends on purpose (between messages, idle, done)
            # ends cleanly: with close_notify, the peer's node takes the end for an end,
            # not a truncation to reset (best effort: a full send buffer drops it).
            openssl.ERR_clear_error()
            openssl.SSL_shutdown(s.ssl)
            openssl.ERR_clear_error()
        # A connection ended without close_notify (a client gone mid-request, a reset)
        # says nothing against its session: marked shut, SSL_free() keeps the session
        # resumable, so the next connections to the endpoint still resume it instead of
        # all paying full handshakes at once.
        openssl.SSL_set_shutdown(s.ssl, openssl.SSL_get_shutdown(s.ssl) | openssl.SSL_SENT_SHUTDOWN)
        openssl.SSL_free(s.ssl)
        s.ssl = NULL
    if s.fd >= 0:
        if reset:
            lg.l_onoff = 1
            lg.l_linger = 0
            net.setsockopt(s.fd, net.SOL_SOCKET, net.SO_LINGER, &lg, sizeof(lg))
        # close() also takes the fd out of the epoll set.
        close(s.fd)
        s.fd = -1


cdef void _count_cut_off(Core* core, Conn* c) noexcept nogil:
    """Requests still owed (the rest of) an answer when their pair closes are counted
    too, once each: the one under way with its status when its head had come (the
    client may have it, as Envoy keeps the code with "downstream disconnected" or
    "upstream reset"), every other as 0, no answer."""
    cdef int status
    while c.n_pend > 0:
        status = 0
        if (c.resp_phase != RESP_HEAD
                and (not c.flags & CONN_DRAINING or c.flags & CONN_DRAIN_HEAD_SEEN)):
            status = c.resp_status
        _count_sizes(core, c, _count_answer(core, c, status,
                                            core.now_ns - c.pend_start_ns[c.pend_first]), False)
        c.resp_phase = RESP_HEAD
        c.flags &= ~CONN_DRAIN_HEAD_SEEN
        c.pend_first = (c.pend_first + 1) % ENGINE_HTTP_PIPELINE_MAX
        c.n_pend -= 1


cdef void _conn_close(Core* core, Conn* c, bint reset) noexcept nogil:
    cdef SideCounters* sc = _counters_of(core, c)
    _invariant(c.state != CONN_FREE, b"connection closed twice")
    if c.held_inflight | c.held_source:
        _overload_release(core, c, c.held_inflight, c.held_source)   # (overload.pxi)
    if c.flags & (CONN_SOURCE_HELD | CONN_HANDSHAKE_HELD):
        _limits_release(core, c, CONN_SOURCE_HELD | CONN_HANDSHAKE_HELD)
    _count_open_sizes(core, c)          # (before the cut-off answers: stats.pxi)
    if c.n_pend > 0:
        _count_cut_off(core, c)
    _tcp_closed(core, c)
    _access_closing(core, c)            # (accesslog.pxi)
    if c.n_mirroring > 0 or c.flags & CONN_MIRROR:
        _mirror_closing(core, c)
    _pool_unwait(core, c)               # a request waiting for an upstream (pool.pxi)
    _load_release(core, c)
    _side_close(&c.down, reset)
    _side_close(&c.up, reset)
    if c.d2u.buf != NULL:
        _buf_put(core, c.d2u.buf)
        c.d2u.buf = NULL
    if c.u2d.buf != NULL:
        _buf_put(core, c.u2d.buf)
        c.u2d.buf = NULL
    free(c.peer_id)
    c.peer_id = NULL
    _timer_disarm(core, c)
    _table_release(core, c.table)
    c.table = NULL
    c.state = CONN_FREE
    c.gen += 1
    _up_forget(c)
    c.flags &= CONN_IN_READY
    c.next_free = core.free_head
    core.free_head = <int>c.index
    sc.connections_closed += 1
    sc.connections_active -= 1


cdef inline void _settle(Core* core, Conn* c, int status) noexcept nogil:
    """The one place a step's status closes a pair (after trying the service's other
    endpoints when an outbound upstream's setup failed); and where an inbound pair's
    handshake, once over, stops counting against the limits (limits.pxi)."""
    if c.flags & CONN_HANDSHAKE_HELD and not _handshaking(c):
        _limits_release(core, c, CONN_HANDSHAKE_HELD)
    if status == STATUS_CLOSE and c.flags & CONN_SETTING_UP:
        status = _setup_failed(core, c)
    if (status == STATUS_CLOSE and c.flags & CONN_KEPT
            and (c.state == CONN_CONNECTING or c.state == CONN_HANDSHAKING)
            and _retry_wanted(core, c, 0)):
        status = _retry_begin(core, c)  # no endpoint took the kept request: retried
    if status == STATUS_CLOSE:
        if (c.flags & CONN_HTTP and
                (c.state == CONN_CONNECTING or c.state == CONN_HANDSHAKING)):
            # The request was routed but never reached the upstream: say so.
            _http_reply(core, c, 503, b"upstream unavailable\n", -1)
        _conn_close(core, c, False)
    elif status == STATUS_RESET:
        _conn_close(core, c, True)
    elif c.flags & CONN_GOING_AWAY and c.state != CONN_FREE:
        # Going away (drain.pxi): the step may have left the pair between requests, due
        # to be closed once quiet (timers.pxi): a wheel operation per step, only for
        # such pairs.
        _timer_arm(core, c, _conn_due_ns(core, c))


cdef inline void _ready_push(Core* core, Conn* c) noexcept nogil:
    if c.flags & CONN_IN_READY:
        return
    c.flags |= CONN_IN_READY
    core.ready_next[core.n_ready_next] = c.index
    core.n_ready_next += 1
