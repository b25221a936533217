# endpoint.pxi: The upstream end of a pair: connect, the mTLS client, the peer ID check,
# session resumption, the idle upstream pool, and failover to the next endpoint.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef void _take_ticket(Conn* c) noexcept nogil:
    """Keep the connection's session for its endpoint once it is resumable (TLS 1.3:
    once a NewSessionTicket has been read, which happens inside SSL_read)."""
    cdef openssl.SSL_SESSION* s = openssl.SSL_get0_session(c.up.ssl)
    cdef Endpoint* ep
    if s == NULL or not openssl.SSL_SESSION_is_resumable(s):
        return
    ep = &c.table.services[c.service].endpoints[c.endpoint]
    if ep.session != s:
        openssl.SSL_SESSION_up_ref(s)
        if ep.session != NULL:
            openssl.SSL_SESSION_free(ep.session)
        ep.session = s
    ep.session_ctx = c.client_ctx
    c.flags &= ~CONN_TICKET_WAIT


cdef int _connect(Core* core, Conn* c, const net.sockaddr_storage* addr,
                  net.socklen_t addrlen) noexcept nogil:
    """Start the up side's TCP connect: STATUS_OK (connected), STATUS_AGAIN (in
    progress), or STATUS_CLOSE (failed, counted)."""
    cdef int fd
    cdef SideCounters* sc = _counters_of(core, c)
    c.state = CONN_CONNECTING
    fd = net.socket(addr.ss_family, net.SOCK_STREAM | net.SOCK_NONBLOCK | net.SOCK_CLOEXEC, 0)
    if fd < 0:
        sc.connect_failures += 1
        return STATUS_CLOSE
    c.up.fd = fd
    c.up.readable = True
    c.up.hup = False
    if not c.flags & (CONN_INBOUND | CONN_MIRROR):
        _pool_opened(core, c)           # counts for its service until it closes (pool.pxi)
    _nodelay(fd)
    if _watch(core, fd, _up_tag(core, c)) != 0:
        sc.connect_failures += 1
        return STATUS_CLOSE
    if not (c.flags & CONN_INBOUND):
        # From here a failure is the endpoint's (not this node's: no fd, no memory),
        # and may move the pair to the next one (_settle).
        c.flags |= CONN_SETTING_UP
    while True:
        if net.connect(fd, <const net.sockaddr*>addr, addrlen) == 0:
            return STATUS_OK
        if errno == EINTR:
            continue
        if errno == EINPROGRESS:
            return STATUS_AGAIN
        sc.connect_failures += 1
        return STATUS_CLOSE


cdef int _tls_client_start(Core* core, Conn* c) noexcept nogil:
    """Outbound, TCP up: start the mutual-TLS handshake toward the endpoint's node."""
    cdef Service* svc = &c.table.services[c.service]
    cdef Endpoint* ep = &svc.endpoints[c.endpoint]
    cdef openssl.SSL* ssl
    cdef SideCounters* sc = _counters_of(core, c)
    openssl.ERR_clear_error()
    ssl = openssl.SSL_new(c.client_ctx)
    if ssl == NULL:
        sc.tls_failures_other += 1
        openssl.ERR_clear_error()
        c.flags &= ~CONN_SETTING_UP     # this node's failure: no endpoint to blame
        return STATUS_CLOSE
    c.up.ssl = ssl
    if (openssl.SSL_set_fd(ssl, c.up.fd) != 1
            # The ClientHello says the pair's client's address (caller_ext.pxi); read
            # only while this handshake runs (TLS 1.3 sends no second ClientHello on
            # a connection, pooled or not, but after a HelloRetryRequest).
            or openssl.SSL_set_ex_data(ssl, _conn_ex_index, c) != 1
            or openssl.SSL_set_tlsext_host_name(ssl, svc.sni.data) != 1
            or (openssl.SSL_set_alpn_protos(ssl, _ALPN_HTTP1_WIRE, _ALPN_HTTP1_WIRE_BYTES)
                if c.flags & (CONN_HTTP | CONN_MIRROR) else
                openssl.SSL_set_alpn_protos(ssl, _ALPN_TCP_WIRE, _ALPN_TCP_WIRE_BYTES)) != 0):
        sc.tls_failures_other += 1
        openssl.ERR_clear_error()
        c.flags &= ~CONN_SETTING_UP
        return STATUS_CLOSE
    openssl.SSL_set_connect_state(ssl)
    _ssl_tune(ssl)
    if (ep.session != NULL and ep.session_ctx == c.client_ctx
            and session_offerable(c.client_ctx, ep.session)):
        if openssl.SSL_set_session(ssl, ep.session) == 1:
            c.flags |= CONN_OFFERED_SESSION
        else:
            openssl.ERR_clear_error()
    c.state = CONN_HANDSHAKING
    return _handshake(core, c)


cdef bint _peer_allowed(Core* core, Conn* c, const char* peer, int n) noexcept nogil:
    """Outbound, handshake done: is the upstream's verified SPIFFE ID one the service
    runs as? Checked before a byte of the client's goes to it. Allowed ends the
    endpoint's setup, and with it its failure streak (and any passing over)."""
    cdef Service* svc = &c.table.services[c.service]
    cdef FilterCall call
    call.phase = PHASE_CONNECTION
    call.peer = peer
    call.peer_len = n
    call.status = 0
    if _filters_run(core, c, &svc.chain, &call) != FILTER_CONTINUE:
        return False
    c.flags &= ~CONN_SETTING_UP
    if svc.endpoints[c.endpoint].fails != 0 or c.table != core.table:
        _endpoint_ok(core, c)
    if not c.flags & (CONN_HTTP | CONN_MIRROR):
        _outlier_status(core, c, 200)   # an opaque pair's setup is its answer
    return True


cdef int _connect_done(Core* core, Conn* c, uint32_t events) noexcept nogil:
    """An event on the up side while its connect is pending."""
    cdef int err = 0
    cdef net.socklen_t length = sizeof(err)
    if not (events & (net.EPOLLOUT | net.EPOLLERR | net.EPOLLHUP)):
        return STATUS_OK
    if net.getsockopt(c.up.fd, net.SOL_SOCKET, net.SO_ERROR, &err, &length) != 0:
        err = errno
    if err != 0:
        _counters_of(core, c).connect_failures += 1
        return STATUS_CLOSE
    if not (events & net.EPOLLOUT):
        return STATUS_OK
    if c.flags & CONN_INBOUND:
        return _enter_pipe(core, c)
    return _tls_client_start(core, c)


cdef void _idle_close(IdleUp* u) noexcept nogil:
    # Best effort close_notify, so the other node sees a clean end, not a truncation.
    _pool_closed(&u.counted)
    openssl.ERR_clear_error()
    openssl.SSL_shutdown(u.ssl)
    openssl.ERR_clear_error()
    openssl.SSL_free(u.ssl)
    close(u.fd)
    u.ssl = NULL
    u.fd = -1


cdef inline bint _http_idle(Conn* c) noexcept nogil:
    """Is the upstream between messages, with nothing owed either way, and willing to
    carry another request (no Connection: close, no tunnel, not ended)?"""
    return (c.state == CONN_PIPE and c.up.ssl != NULL and c.reusable and c.n_pend == 0
            and c.fwd == 0 and c.req_phase == REQ_HEAD and c.resp_phase == RESP_HEAD
            and c.u2d.buf == NULL and not c.u2d.eof and not c.d2u.shut)


cdef bint _pool_put(Core* core, Conn* c) noexcept nogil:
    """Hand the pair's upstream to its endpoint's pool; False (nothing changed) when
    the pool is full. A pair on an older table pools into the current table's endpoint
    at the same address, if the current table still presents the identity the
    upstream was opened as; otherwise the upstream is not pooled (its endpoint left)."""
    cdef Endpoint* ep = &c.table.services[c.service].endpoints[c.endpoint]
    cdef IdleUp* u
    if c.d2u.shut or openssl.SSL_get_shutdown(c.up.ssl) & (openssl.SSL_SENT_SHUTDOWN
                                                          | openssl.SSL_RECEIVED_SHUTDOWN):
        return False                    # it was told, or told us, the end: not reusable
    if c.table != core.table:
        ep = _current_endpoint(core, c)
        if ep == NULL or not _table_has_ctx(core.table, c.client_ctx):
            core.counters.departed_idle_closed += 1     # closed by the caller
            return False
    if ep.n_idle >= ENGINE_POOL_PER_ENDPOINT or not _pool_keep(core, c):
        return False
    # It stays in the epoll set (no system call): its tag's generation is the pair's
    # no more, so its events, until a pair takes it again, reach nobody (loop.pxi
    # _up_tag). Whether it closed meanwhile, _pool_take's probe finds out.
    _up_forget(c)
    u = &ep.idle[ep.n_idle]
    ep.n_idle += 1
    u.fd = c.up.fd
    u.ssl = c.up.ssl
    u.since_ns = core.now_ns
    u.principal = c.peer_principal
    u.client_ctx = c.client_ctx
    _source_key(&c.peer_addr, u.caller)
    u.counted = c.up.counted
    u.requests = c.up.requests
    c.up.fd = -1
    c.up.ssl = NULL
    c.up.counted = NULL
    core.counters.http_upstream_pooled += 1
    return True


cdef bint _pool_take(Core* core, Conn* c, Endpoint* ep) noexcept nogil:
    """Give the pair the newest live idle upstream of `ep` opened as the pair's own
    identity (c.client_ctx) for a client at the pair's client's address (its ClientHello
    told the other node that caller: caller_ext.pxi); False when there is none. A pooled
    one the other node closed (or that sat longer than idle_timeout_s) is closed here:
    it is only ever looked at when a pair of its identity and address wants one."""
    cdef IdleUp u
    cdef char probe
    cdef int r, err
    cdef uint32_t i = ep.n_idle
    cdef uint64_t caller[2]
    _source_key(&c.peer_addr, caller)
    while i > 0:
        i -= 1
        if (ep.idle[i].client_ctx != c.client_ctx or ep.idle[i].caller[0] != caller[0]
                or ep.idle[i].caller[1] != caller[1]):
            continue
        u = ep.idle[i]
        # Out of the pool, newer entries moving down: the order stays newest last.
        memmove(&ep.idle[i], &ep.idle[i + 1], (ep.n_idle - i - 1) * sizeof(IdleUp))
        ep.n_idle -= 1
        # Half the idle timeout: the other node (same defaults) closes an idle
        # connection at its full timeout, and one closed just as we write our request
        # would cost the client a 502.
        if (core.now_ns - u.since_ns < core.idle_timeout_ns // 2
                and not _requests_spent(&c.table.services[c.service], u.requests)):
            openssl.ERR_clear_error()
            # Also reads a late session ticket; any application byte is a protocol error.
            r = openssl.SSL_read(u.ssl, &probe, 1)
            err = openssl.SSL_get_error(u.ssl, r) if r <= 0 else openssl.SSL_ERROR_SSL
            openssl.ERR_clear_error()
            if err == openssl.SSL_ERROR_WANT_READ:
                c.up.fd = u.fd
                c.up.ssl = u.ssl
                # The probe read it empty; what comes later brings an EPOLLIN (the
                # registration below reports one already there).
                c.up.readable = False
                c.up.hup = False
                c.peer_principal = u.principal
                c.stat = -1
                if _rewatch(core, u.fd, _up_tag(core, c)) == 0:
                    c.up.counted = u.counted
                    c.up.requests = u.requests + c.n_pend
                    return True
                c.up.fd = -1
                c.up.ssl = NULL
        core.counters.http_upstream_stale += 1
        _idle_close(&u)
    return False


cdef int _setup_failed(Core* core, Conn* c) noexcept nogil:
    """An outbound upstream's setup (connect, handshake, peer ID) failed: mark its
    endpoint, then set the pair up on the service's next endpoint while tries are left
    (nothing of the client's went upstream yet, so any request may go elsewhere).
    STATUS_CLOSE once none is left: _settle answers 503 and closes."""
    cdef Service* svc
    cdef uint32_t tries
    cdef int status = STATUS_CLOSE
    while status == STATUS_CLOSE and c.flags & CONN_SETTING_UP:
        _endpoint_failed(core, c)
        c.flags &= ~CONN_SETTING_UP
        svc = &c.table.services[c.service]
        tries = ENGINE_SETUP_TRIES if ENGINE_SETUP_TRIES < svc.n_endpoints else svc.n_endpoints
        c.setup_tries += 1
        if c.setup_tries >= tries:
            return STATUS_CLOSE
        core.counters.upstream_failovers += 1
        status = _fail_over(core, c)
    return status


cdef int _fail_over(Core* core, Conn* c) noexcept nogil:
    _load_release(core, c)
    if c.flags & CONN_MIRROR:
        return _mirror_redial(core, c)
    if c.flags & CONN_HTTP:
        return _http_reroute(core, c)
    c.flags &= ~(CONN_TICKET_WAIT | CONN_OFFERED_SESSION)
    _side_close(&c.up, False)
    c.up.readable = True
    c.up.hup = False
    _up_forget(c)
    return _tcp_start(core, c)
