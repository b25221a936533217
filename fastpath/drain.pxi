# drain.pxi: Graceful drain (Engine.drain): the engine stops accepting, lets what is in
# flight finish, sends HTTP clients elsewhere, and ends when nothing is left or at the
# deadline (Istio's terminationDrainDuration).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# HTTP pairs are marked CONN_GOING_AWAY: the next request framed on one is its last, its
# answer says `Connection: close` (outbound, to the local client; inbound, to the
# caller's node, which then routes that client's next request afresh), and a pair
# found between requests for ENGINE_DRAIN_IDLE_MS is ended cleanly (close_notify, FIN).
# Opaque TCP pairs go on until they end or the deadline cuts them. The listeners leave
# the epoll set at once, so the caller may close them and let sibling workers (sharing
# the port with SO_REUSEPORT) take every new connection.


cdef void _drain_begin(Core* core, int64_t for_ns) noexcept nogil:
    cdef uint32_t i
    cdef Conn* c
    core.draining = True
    core.drain_deadline_ns = core.now_ns + for_ns
    if core.table != NULL:
        _listeners_unwatch(core, core.table)
    mn_publish_u32(&core.listeners_out, 1)
    for i in range(core.n_slots):
        c = &core.conns[i]
        if c.state != CONN_FREE and c.flags & CONN_HTTP:
            c.flags |= CONN_GOING_AWAY
    _timers_refile(core)                # quiet pairs are due sooner now


cdef inline bint _drain_over(Core* core) noexcept nogil:
    return (core.counters.outbound.connections_active == 0
            and core.counters.inbound.connections_active == 0
            or core.now_ns >= core.drain_deadline_ns)


cdef inline bint _may_go_quiet(Conn* c) noexcept nogil:
    """Is an HTTP pair going away (the engine drains, or its listener left the table)
    and between requests? A pair that never got an answer is left alone: its client
    connected just before the listeners closed, and its request is coming."""
    if not (c.flags & CONN_GOING_AWAY and c.flags & CONN_ANSWERED):
        return False
    if c.state == CONN_PIPE:
        # (Bytes of a next request in d2u: it is coming, and will be answered.)
        return _between_requests(c) and (c.d2u.buf == NULL or c.d2u.tail == c.d2u.head)
    # HTTP_HEAD after an answer (a switch): nothing of a next request read yet.
    return c.state == CONN_HTTP_HEAD and (c.d2u.buf == NULL or c.d2u.tail == c.d2u.head)


cdef inline bint _gone_quiet(Core* core, Conn* c) noexcept nogil:
    """... and has been for ENGINE_DRAIN_IDLE_MS?"""
    return (_may_go_quiet(c)
            and core.now_ns - c.active_ns >= <int64_t>ENGINE_DRAIN_IDLE_MS * 1000000)
