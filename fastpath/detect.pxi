# detect.pxi: What an accepted connection is and where it goes first: the inbound SNI
# route and ALPN, the HTTP outbound listener's source identity, a sniffing listener's
# first bytes.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef int _on_servername(openssl.SSL* ssl, int* alert, void* arg) noexcept nogil:
    """Inbound ClientHello: switch the SSL to the SSL_CTX of the service it names."""
    cdef Table* t = <Table*>arg
    cdef Conn* c = <Conn*>openssl.SSL_get_ex_data(ssl, _conn_ex_index)
    cdef const char* name = openssl.SSL_get_servername(ssl, openssl.TLSEXT_NAMETYPE_host_name)
    cdef size_t n
    cdef uint32_t i
    cdef openssl.SSL_CTX* ctx
    if c == NULL:
        alert[0] = openssl.SSL_AD_INTERNAL_ERROR
        return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
    if name != NULL:
        n = strlen(name)
        for i in range(t.n_routes):
            if not _name_eq(&t.routes[i].sni, name, n):
                continue
            ctx = t.routes[i].server_ctx
            if openssl.SSL_set_SSL_CTX(ssl, ctx) == NULL:
                alert[0] = openssl.SSL_AD_INTERNAL_ERROR
                return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
            # SSL_new copied these from the dispatch ctx; SSL_set_SSL_CTX does not
            # replace them (nginx does the same after its switch).
            openssl.SSL_set_verify(ssl, openssl.SSL_CTX_get_verify_mode(ctx),
                                   openssl.SSL_CTX_get_verify_callback(ctx))
            openssl.SSL_set_verify_depth(ssl, openssl.SSL_CTX_get_verify_depth(ctx))
            openssl.SSL_clear_options(ssl, openssl.SSL_get_options(ssl)
                                      & ~openssl.SSL_CTX_get_options(ctx))
            openssl.SSL_set_options(ssl, openssl.SSL_CTX_get_options(ctx))
            c.route = i
            c.flags |= CONN_ROUTED
            return openssl.SSL_TLSEXT_ERR_OK
    c.flags |= CONN_UNKNOWN_SNI
    alert[0] = openssl.SSL_AD_UNRECOGNIZED_NAME
    return openssl.SSL_TLSEXT_ERR_ALERT_FATAL


cdef int _inbound_start(Core* core, Conn* c) noexcept nogil:
    cdef openssl.SSL* ssl
    openssl.ERR_clear_error()
    ssl = openssl.SSL_new(c.table.dispatch_ctx)
    if ssl == NULL:
        core.counters.inbound.tls_failures_other += 1
        openssl.ERR_clear_error()
        return STATUS_CLOSE
    c.down.ssl = ssl
    if (openssl.SSL_set_fd(ssl, c.down.fd) != 1
            or openssl.SSL_set_ex_data(ssl, _conn_ex_index, c) != 1):
        core.counters.inbound.tls_failures_other += 1
        openssl.ERR_clear_error()
        return STATUS_CLOSE
    openssl.SSL_set_accept_state(ssl)
    _ssl_tune(ssl)
    c.state = CONN_HANDSHAKING
    return _handshake(core, c)


cdef int _inbound_detect(Core* core, Conn* c, Side* s) noexcept nogil:
    """Inbound, handshake done (the SNI chose the route, the caller's ID is kept): how
    the pair is carried to the local app. ALPN http/1.1 (another node's HTTP outbound
    side) is framed request by request, for the destination's figures and the caller's
    identity on each request; anything else is relayed as it comes."""
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alpn_len = 0
    cdef InboundRoute* route
    cdef int st
    openssl.SSL_get0_alpn_selected(s.ssl, &alpn, &alpn_len)
    if alpn_len == 8 and memcmp(alpn, b"http/1.1", 8) == 0:
        c.flags |= CONN_HTTP
    if c.table != core.table:
        _inbound_current(core, c)       # a push came during the handshake (carry.pxi)
    route = &c.table.routes[c.route]
    c.local_principal = _interned(core, &route.principal, &route.identity)
    if c.flags & CONN_HTTP:
        c.head_reserve = _request_room(&route.chain, c)
    st = _connect(core, c, &route.app_addr, route.app_addrlen)
    if st == STATUS_OK:
        return _enter_pipe(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


cdef int _sniff(Core* core, Conn* c) noexcept nogil:
    """CONN_SNIFFING: an HTTP/1.1 request head goes the HTTP way (to the listener's
    service, whatever its Host); bytes that cannot begin one, or the client's end, go
    as opaque TCP; a valid beginning waits (its timer takes it for TCP at the
    deadline, as it does a client that says nothing)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t cap = core.buffer_bytes
    cdef Py_ssize_t r
    cdef int rc = -1
    cdef ReqHead req
    if f.buf == NULL:
        f.buf = _buf_get(core)
        if f.buf == NULL:
            return STATUS_CLOSE         # cannot happen: the pool has two blocks per slot
    while f.tail < cap and not f.eof:
        r = _recv(&c.down, f.buf + f.tail, cap - f.tail)
        if r == STATUS_AGAIN:
            break
        if r == STATUS_EOF:
            f.eof = True
        elif r < 0:
            return STATUS_RESET
        else:
            core.counters.outbound.bytes_received += <uint64_t>r
            f.tail += <uint32_t>r
    if f.tail == 0 and not f.eof:
        return STATUS_OK
    if f.tail > 0:
        rc = parse_request_head(f.buf, f.tail, &req, &core.http_limits)
    if rc > 0:
        core.counters.sniffed_http += 1
        c.flags |= CONN_HTTP | CONN_FIXED_SERVICE
        c.state = CONN_HTTP_HEAD
        return _http_route(core, c, &req)
    if rc == 0 and not f.eof and f.tail < cap:
        return STATUS_OK
    core.counters.sniffed_tcp += 1
    return _tcp_start(core, c)


cdef bint _same_ip(const net.sockaddr_storage* a, const net.sockaddr_storage* b) noexcept nogil:
    if a.ss_family != b.ss_family:
        return False
    if a.ss_family == net.AF_INET:
        return memcmp(&(<net.sockaddr_in*>a).sin_addr, &(<net.sockaddr_in*>b).sin_addr, 4) == 0
    return memcmp(&(<net.sockaddr_in6*>a).sin6_addr, &(<net.sockaddr_in6*>b).sin6_addr, 16) == 0


cdef int _outbound_start(Core* core, Conn* c, uint32_t listener,
                         const net.sockaddr_storage* peer) noexcept nogil:
    cdef OutboundListener* l = &c.table.listeners[listener]
    c.lfd = l.fd
    if l.http:
        memcpy(&c.peer_addr, peer, sizeof(net.sockaddr_storage))
    c.client_ctx = _listener_identity(core, c, c.table, l, &c.local_principal)
    if l.http:
        c.flags |= CONN_HTTP
        c.state = CONN_HTTP_HEAD
        return _http_head(core, c)
    c.service = l.service
    if l.sniff:
        c.state = CONN_SNIFFING
        _deadline_at(core, c, core.now_ns + ENGINE_SNIFF_TIMEOUT_MS * 1000000)
        return _sniff(core, c)
    return _tcp_start(core, c)
