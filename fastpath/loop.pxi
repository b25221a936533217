# loop.pxi: The engine thread's epoll loop: accepting, dispatching readiness events, the
# ready list, the timer wheel's turn (timers.pxi), and winding down.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint64_t _tag(uint32_t kind, uint32_t index, uint32_t gen) noexcept nogil:
    return (<uint64_t>gen << 32) | (<uint64_t>index << 2) | kind


cdef inline int _watch(Core* core, int fd, uint64_t tag) noexcept nogil:
    cdef net.epoll_event ev
    ev.events = _CONN_EVENTS
    ev.data.u64 = tag
    return net.epoll_ctl(core.epfd, net.EPOLL_CTL_ADD, fd, &ev)


cdef inline int _rewatch(Core* core, int fd, uint64_t tag) noexcept nogil:
    """Give a socket in the epoll set another tag (its current readiness is reported
    again, as _watch's is)."""
    cdef net.epoll_event ev
    ev.events = _CONN_EVENTS
    ev.data.u64 = tag
    return net.epoll_ctl(core.epfd, net.EPOLL_CTL_MOD, fd, &ev)


cdef inline uint64_t _up_tag(Core* core, Conn* c) noexcept nogil:
    """A tag for the upstream socket c takes on now, of a generation no other socket
    was given: an upstream has a generation of its own, apart from its pair's (`gen`,
    the client's), so that changing upstreams (a switch, a retry, pooling) leaves the
    client's registration alone and costs no epoll_ctl on it. Pooled upstreams stay in
    the epoll set under the tag they had (endpoint.pxi _pool_put): their events are
    stale from then on, and a generation used once keeps them so."""
    core.up_seq += 1
    if core.up_seq == 0:
        core.up_seq = 1                 # 0 is no upstream's
    c.up_tag = core.up_seq
    return _tag(_TAG_UP, c.index, c.up_tag)


cdef inline void _up_forget(Conn* c) noexcept nogil:
    """c lets go of its upstream socket: events still queued for it are not the next
    one's."""
    c.up_tag = 0


cdef void _wake(Core* core) noexcept nogil:
    cdef uint64_t one = 1
    # EAGAIN means the counter is already non-zero: the loop will wake anyway.
    write(core.wakefd, &one, sizeof(one))


cdef inline void _invariant(bint holds, const char* what) noexcept nogil:
    # Debug builds only (MESHNODE_DEBUG is a compile-time constant: release code has no
    # trace of these). A broken invariant is a bug in this file: stop at the scene.
    if MESHNODE_DEBUG and not holds:
        fprintf(stderr, b"fastpath.engine: invariant broken: %s\n", what)
        abort()


cdef void _accept(Core* core, uint32_t which) noexcept nogil:
    cdef Table* t = core.table
    cdef bint inbound = which == _INBOUND_LISTENER
    cdef SideCounters* sc = &core.counters.inbound if inbound else &core.counters.outbound
    cdef int lfd, fd, e, n
    cdef Conn* c
    cdef net.sockaddr_storage peer
    cdef net.socklen_t peer_len
    cdef uint32_t at = 0
    if t == NULL or core.accept_resume_ns != 0:
        return                          # (paused: events of this batch, before the pause)
    if inbound:
        lfd = t.inbound_fd
    elif which < t.n_listeners:
        lfd = t.listeners[which].fd
    else:
        return
    if lfd < 0:
        return
    for n in range(ENGINE_ACCEPT_BATCH):
        peer_len = sizeof(peer)
        peer.ss_family = 0
        fd = net.accept4(lfd, <net.sockaddr*>&peer, &peer_len, net.SOCK_NONBLOCK | net.SOCK_CLOEXEC)
        if fd < 0:
            e = errno
            if e == EAGAIN:
                return
            if e == EINTR or e == ECONNABORTED:
                continue
            sc.accept_failures += 1
            if e == EMFILE or e == ENFILE:
                if core.spare_fd >= 0:
                    # Out of descriptors: level-triggered epoll would report this backlog
                    # forever. Spend the spare fd to take one connection off and close it
                    # (the libuv / nginx trick), then take the spare back.
                    close(core.spare_fd)
                    fd = net.accept4(lfd, NULL, NULL, net.SOCK_CLOEXEC)
                    if fd >= 0:
                        close(fd)
                    core.spare_fd = c_open(b"/dev/null", O_RDONLY | O_CLOEXEC)
                if core.spare_fd < 0:
                    _accept_pause(core)     # no spare (now): wait, do not spin
            return
        # Limits before authentication (limits.pxi): over one, closed before any TLS.
        if inbound:
            if not _inbound_admit(core, &peer, &at):
                _refuse(fd)
                continue
        elif sc.connections_active >= core.max_outbound:
            sc.rejected_limit += 1
            close(fd)                   # a local caller: told as before, with FIN
            continue
        c = _conn_new(core, t, CONN_INBOUND if inbound else 0)
        if c == NULL:
            sc.rejected_limit += 1
            close(fd)
            continue
        if inbound:
            _inbound_hold(core, c, &peer, at)
        c.down.fd = fd                  # TCP_NODELAY: from the listener (_check_fd)
        if _watch(core, fd, _tag(_TAG_DOWN, c.index, c.gen)) != 0:
            sc.accept_failures += 1
            _conn_close(core, c, False)
            continue
        if inbound:
            _settle(core, c, _inbound_start(core, c))
        else:
            _settle(core, c, _outbound_start(core, c, which, &peer))


cdef int _conn_event(Core* core, Conn* c, uint32_t kind, uint32_t events) noexcept nogil:
    cdef Side* side = &c.down if kind == _TAG_DOWN else &c.up
    if events & (net.EPOLLIN | net.EPOLLRDHUP | net.EPOLLHUP | net.EPOLLERR):
        side.readable = True
    if events & (net.EPOLLRDHUP | net.EPOLLHUP | net.EPOLLERR):
        side.hup = True
    if c.state == CONN_PIPE:
        return _pump(core, c)
    if c.state == CONN_HTTP_HEAD:
        return _http_head(core, c) if kind == _TAG_DOWN else STATUS_OK
    if c.state == CONN_SNIFFING:
        return _sniff(core, c) if kind == _TAG_DOWN else STATUS_OK
    if c.state == CONN_HANDSHAKING:
        if kind == <uint32_t>(_TAG_DOWN if c.flags & CONN_INBOUND else _TAG_UP):
            if c.flags & CONN_FIRST_BYTE:
                return _inbound_first_byte(core, c)    # TLS or plaintext? (detect.pxi)
            return _handshake(core, c)
        return STATUS_OK
    if c.state == CONN_CONNECTING and kind == _TAG_UP:
        return _connect_done(core, c, events)
    if c.state == CONN_BACKOFF and kind == _TAG_DOWN:
        return _backoff_event(core, c, events)     # the client, while a retry waits
    return STATUS_OK


cdef void _dispatch(Core* core, uint64_t tag, uint32_t events) noexcept nogil:
    cdef uint32_t kind = <uint32_t>(tag & 3)
    cdef uint32_t index = <uint32_t>((tag >> 2) & _TAG_INDEX_MASK)
    cdef uint32_t gen = <uint32_t>(tag >> 32)
    cdef uint64_t drained
    cdef Conn* c
    if kind == _TAG_WAKE:
        read(core.wakefd, &drained, sizeof(drained))
        core.woken = True
        return
    if kind == _TAG_LISTENER:
        _accept(core, index)
        return
    if index >= core.max_conns + core.max_mirrors:
        return
    c = &core.conns[index]
    # A slot closed earlier in this batch (and maybe reused), or an upstream it let go
    # of (closed, pooled, or left for another), is not this event's. (No upstream's
    # tag has generation 0, the up_tag of a pair without one.)
    if c.state == CONN_FREE or gen != (c.up_tag if kind == _TAG_UP else c.gen):
        return
    _settle(core, c, _conn_event(core, c, kind, events))


cdef void _serve_ready(Core* core) noexcept nogil:
    cdef uint32_t* serving = core.ready_next
    cdef uint32_t n = core.n_ready_next
    cdef uint32_t i
    cdef Conn* c
    core.ready_next = core.ready
    core.n_ready_next = 0
    core.ready = serving
    core.n_ready = n
    for i in range(n):
        c = &core.conns[serving[i]]
        c.flags &= ~CONN_IN_READY
        if c.state == CONN_PIPE:
            _settle(core, c, _pump(core, c))
    core.n_ready = 0


cdef void _wind_down(Core* core) noexcept nogil:
    """After the loop: close every pair, leave the listeners, drop the tables."""
    cdef uint32_t i
    cdef Table* pending
    for i in range(core.n_slots):
        if core.conns[i].state != CONN_FREE:
            _conn_close(core, &core.conns[i], False)
    core.n_ready = 0
    core.n_ready_next = 0
    if core.table != NULL:
        if not core.draining:
            _listeners_unwatch(core, core.table)
        _table_release(core, core.table)
        core.table = NULL
    net.pthread_mutex_lock(&core.lock)
    pending = core.pending
    core.pending = NULL
    net.pthread_mutex_unlock(&core.lock)
    _table_free(pending)
    _invariant(core.counters.buffers_in_use == 0 and core.n_free_bufs == core.n_bufs,
               b"buffers still out after every connection closed")
    _invariant(core.counters.tables_live == 0, b"a table outlived the loop")
    _invariant(core.wheel.n_armed == 0, b"timers armed after every connection closed")
    _invariant(core.counters.outbound.connections_active == 0
               and core.counters.inbound.connections_active == 0,
               b"connections still counted active after the loop")
    _invariant(core.handshakes == 0 and core.n_sources == 0,
               b"handshakes or sources still counted after the loop")


cdef int _loop(Core* core) noexcept nogil:
    cdef net.epoll_event events[ENGINE_EPOLL_EVENTS]
    cdef int n, i, timeout_ms
    cdef int status = STATUS_OK
    cdef int64_t busy
    cdef Table* pending
    cdef bint stop
    cdef int64_t drain_for
    core.now_ns = _now_ns()
    core.wheel.tick = core.now_ns >> ENGINE_TIMER_TICK_SHIFT
    core.woken = True                   # look at pending/stop before the first wait
    while True:
        if core.woken:
            core.woken = False
            net.pthread_mutex_lock(&core.lock)
            pending = core.pending
            core.pending = NULL
            stop = core.stop_requested
            drain_for = core.drain_for_ns
            net.pthread_mutex_unlock(&core.lock)
            if pending != NULL:
                _swap(core, pending)
            if stop:
                break
            if drain_for > 0 and not core.draining:
                _drain_begin(core, drain_for)
        if core.draining and _drain_over(core):
            break
        if core.n_ready_next > 0:
            timeout_ms = 0
        else:
            timeout_ms = _timers_wait_ms(core)
            if core.accept_resume_ns != 0:
                timeout_ms = _pause_wait_ms(core, timeout_ms)
        n = net.epoll_wait(core.epfd, events, ENGINE_EPOLL_EVENTS, timeout_ms)
        if n < 0:
            if errno != EINTR:
                core.saved_errno = errno
                status = STATUS_ESYS
                break
            n = 0
        core.now_ns = _now_ns()
        for i in range(n):
            _dispatch(core, events[i].data.u64, events[i].events)
        if core.n_ready_next > 0:
            _serve_ready(core)
        _timers_run(core)
        if core.now_ns >= core.shared_keep_ns:
            _shared_keep(core)          # (shared_slots.pxi: each quarter lease)
        if core.accept_resume_ns != 0 and core.now_ns >= core.accept_resume_ns:
            _accept_resume(core)
        busy = _now_ns() - core.now_ns
        core.counters.loop_busy_us[_latency_bucket(busy)] += 1
        if busy > <int64_t>core.counters.loop_busy_max_ns:
            core.counters.loop_busy_max_ns = <uint64_t>busy
    _wind_down(core)
    return status


cdef void _core_free(Core* core) noexcept nogil:
    if core == NULL:
        return
    _table_free(core.pending)
    if core.table != NULL:              # only if the loop never wound down
        _table_free(core.table)
    if core.epfd >= 0:
        close(core.epfd)
    if core.wakefd >= 0:
        close(core.wakefd)
    if core.spare_fd >= 0:
        close(core.spare_fd)
    if core.diag_fd >= 0:
        close(core.diag_fd)
    net.pthread_mutex_destroy(&core.lock)
    cdef uint32_t i
    if core.stats != NULL:
        for i in range(core.n_stats):
            _name_free(&core.stats[i].service)
        free(core.stats)
    for i in range(core.n_principals):
        _name_free(&core.principals[i])
    for i in range(core.n_tags):
        _name_free(&core.tags[i])
    if core.authz != NULL:
        for i in range(core.n_authz):
            _name_free(&core.authz[i].policy)
        free(core.authz)
        free(core.access_ring)
        free(core.access_heads)
    free(core.scratch)
    free(core.conns)
    free(core.sources)
    free(core.ready)
    free(core.ready_next)
    free(core.pool)
    free(core.free_bufs)
    free(core.upstream_counts)          # after the tables: their idle upstreams counted here
    _rate_region_free(core)
    _overload_leave(core)               # its slot in the node's region freed
    if core.shared_owned:
        free(core.shared)
    free(core)
