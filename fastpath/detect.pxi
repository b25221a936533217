# detect.pxi: What an accepted connection is and where it goes first: the inbound SNI
# route and the port's declared protocol, the HTTP outbound listener's source identity,
# the first bytes where no protocol is declared.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef int64_t _route_named(const Table* t, const char* name, size_t n,
                          bint* alias) noexcept nogil:
    """The index of `t`'s inbound route that answers to `name`, by its SNI or its alias
    (`alias` says which); -1 when none does."""
    cdef uint32_t i
    for i in range(t.n_routes):
        if _name_eq(&t.routes[i].sni, name, n):
            alias[0] = False
            return i
        if _name_eq(&t.routes[i].alias, name, n):
            alias[0] = True
            return i
    return -1


cdef inline const Name* _sni_sent(const Conn* c, const InboundRoute* route) noexcept nogil:
    """The name inbound pair `c`'s ClientHello gave, as `route` (its route) keeps it."""
    return &route.alias if c.flags & CONN_SNI_ALIAS else &route.sni


cdef int _on_servername(openssl.SSL* ssl, int* alert, void* arg) noexcept nogil:
    """Inbound ClientHello: switch the SSL to the SSL_CTX of the service it names.

    A name with no route (or none) is not refused here: that alert, sent before the
    client has shown a certificate, would let anyone list the node's services. The
    handshake goes on with some route's credentials, chosen by the name (the same for
    the same name on every worker), so a client without a mesh certificate fails
    exactly as it would for a known name; one with a certificate that verifies is
    refused after that (_refuse_unknown_name), and the pair is closed and counted as
    tls_unknown_sni either way."""
    cdef Table* t = <Table*>arg
    cdef Conn* c = <Conn*>openssl.SSL_get_ex_data(ssl, _conn_ex_index)
    cdef const char* name = openssl.SSL_get_servername(ssl, openssl.TLSEXT_NAMETYPE_host_name)
    cdef size_t n = 0
    cdef int64_t found = -1
    cdef uint32_t i
    cdef uint32_t pick = 2166136261u      # FNV-1a over the name
    cdef bint known, alias = False
    cdef openssl.SSL_CTX* ctx
    cdef openssl.SSL_verify_cb verify
    if c == NULL:
        alert[0] = openssl.SSL_AD_INTERNAL_ERROR
        return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
    if name != NULL:
        n = strlen(name)
        found = _route_named(t, name, n, &alias)
    known = found >= 0
    if known:
        i = <uint32_t>found
    else:
        c.flags |= CONN_UNKNOWN_SNI
        if t.n_routes == 0:
            alert[0] = openssl.SSL_AD_UNRECOGNIZED_NAME    # nothing here to list
            return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
        for i in range(<uint32_t>n):
            pick = (pick ^ <unsigned char>name[i]) * 16777619u
        i = pick % t.n_routes
    ctx = t.routes[i].server_ctx
    ticket_policy_keep(ssl)            # tickets stay the dispatch ctx's
    if openssl.SSL_set_SSL_CTX(ssl, ctx) == NULL:
        alert[0] = openssl.SSL_AD_INTERNAL_ERROR
        return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
    # SSL_new copied these from the dispatch ctx; SSL_set_SSL_CTX does not
    # replace them (nginx does the same after its switch).
    verify = openssl.SSL_CTX_get_verify_callback(ctx) if known else _refuse_unknown_name
    openssl.SSL_set_verify(ssl, openssl.SSL_CTX_get_verify_mode(ctx), verify)
    openssl.SSL_set_verify_depth(ssl, openssl.SSL_CTX_get_verify_depth(ctx))
    openssl.SSL_clear_options(ssl, openssl.SSL_get_options(ssl)
                              & ~openssl.SSL_CTX_get_options(ctx))
    openssl.SSL_set_options(ssl, openssl.SSL_CTX_get_options(ctx))
    if known:
        c.route = i
        c.flags |= CONN_ROUTED | (CONN_SNI_ALIAS if alias else 0)
    return openssl.SSL_TLSEXT_ERR_OK


cdef int _inbound_start(Core* core, Conn* c) noexcept nogil:
    """Inbound, accepted: its TLS handshake begins; on a table where some route takes
    plaintext (PeerAuthentication PERMISSIVE, DISABLE) its first byte says first
    whether it is TLS at all (_inbound_first_byte). A table with none costs this test."""
    c.state = CONN_HANDSHAKING
    if c.table.plaintext:
        c.flags |= CONN_FIRST_BYTE
        return _inbound_first_byte(core, c)
    return _inbound_tls(core, c)


cdef int _inbound_first_byte(Core* core, Conn* c) noexcept nogil:
    """CONN_FIRST_BYTE: a TLS record begins with its content type, 22 (handshake) for a
    ClientHello (RFC 8446 §5.1), where an HTTP request begins with a token character:
    the byte is peeked, not read, so that OpenSSL reads the ClientHello whole. Plaintext
    goes on to the first-bytes sniff as an auto port's does (_sniff), and then to its
    route by Host (plaintext.pxi). The pair stays HANDSHAKING until the byte comes,
    with the handshake's deadline; it counts among the handshakes under way until its
    Host routes it (limits.pxi _handshaking)."""
    cdef unsigned char first
    cdef Py_ssize_t r
    while True:
        r = net.recv(c.down.fd, &first, 1, net.MSG_PEEK)
        if r >= 0 or errno != EINTR:
            break
    if r < 0:
        if errno == EAGAIN:
            c.down.readable = False
            return STATUS_OK
        return STATUS_RESET
    if r == 0:
        return STATUS_CLOSE             # gone before a byte: nothing to refuse
    c.flags &= ~CONN_FIRST_BYTE
    if first == 22:
        return _inbound_tls(core, c)
    c.flags |= CONN_PLAINTEXT
    c.state = CONN_SNIFFING
    _deadline_at(core, c, core.now_ns + ENGINE_SNIFF_TIMEOUT_MS * 1000000)
    return _sniff(core, c)


cdef int _inbound_tls(Core* core, Conn* c) noexcept nogil:
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
    return _handshake(core, c)


cdef inline bint _alpn_is(const unsigned char* alpn, unsigned int n, const char* name,
                          unsigned int m) noexcept nogil:
    return n == m and memcmp(alpn, name, m) == 0


cdef int _inbound_detect(Core* core, Conn* c, Side* s) noexcept nogil:
    """Inbound, handshake done (the SNI chose the route, the caller's ID is kept): how
    the pair is carried to the local app. The app port's declared protocol decides,
    whatever ALPN the peer offers (DESIGN §3): HTTP is framed request by request (the
    caller's identity set on each); TCP is relayed as it comes; a peer whose ALPN says
    the other one is refused and counted. A port with no declared protocol follows
    ALPN http/1.1 (another node's HTTP outbound side), and otherwise the first bytes."""
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alpn_len = 0
    cdef InboundRoute* route
    openssl.SSL_get0_alpn_selected(s.ssl, &alpn, &alpn_len)
    if c.table != core.table:
        _inbound_current(core, c)       # a push came during the handshake (carry.pxi)
    route = &c.table.routes[c.route]
    c.local_principal = _interned(core, &route.principal, &route.identity)
    if route.protocol == PROTO_HTTP:
        if _alpn_is(alpn, alpn_len, b"meshnode-tcp", 12):
            core.counters.inbound_protocol_mismatch += 1
            return _end_gracefully(core, c)
        return _inbound_open(core, c, True)
    if route.protocol == PROTO_TCP:
        if _alpn_is(alpn, alpn_len, b"http/1.1", 8):
            core.counters.inbound_protocol_mismatch += 1
            return _end_gracefully(core, c)
        return _inbound_open(core, c, False)
    if _alpn_is(alpn, alpn_len, b"http/1.1", 8):
        return _inbound_open(core, c, True)
    # Told by the first bytes; room is kept in d2u for the fields a request gets.
    c.head_reserve = _request_room(route, c)
    c.state = CONN_SNIFFING
    _deadline_at(core, c, core.now_ns + ENGINE_SNIFF_TIMEOUT_MS * 1000000)
    return _sniff(core, c)


cdef int _inbound_open(Core* core, Conn* c, bint http) noexcept nogil:
    """Inbound: connect to the local app, the pair framed as HTTP or opaque."""
    cdef InboundRoute* route
    cdef int st
    if c.state == CONN_SNIFFING:
        # Its first bytes were awaited: the app's connect has connect_timeout from now.
        _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    if c.table != core.table:
        _inbound_current(core, c)       # a push came while its first bytes were awaited
    route = &c.table.routes[c.route]
    # The declared protocol wins, on the table the pair goes on with: a push that
    # declared the port while its first bytes were awaited decides, not the detection.
    if route.protocol == PROTO_HTTP:
        http = True
    elif route.protocol == PROTO_TCP:
        http = False
    if http:
        c.flags |= CONN_HTTP
        c.head_reserve = _request_room(route, c)
    else:
        c.head_reserve = 0
        if _pair_refused(core, c, &route.chain):
            # Over a rate limit (ratelimit.pxi) or refused by authorization (authz.pxi):
            # closed before its app is connected, so nothing of the caller's reaches it.
            return STATUS_CLOSE
    st = _connect(core, c, &route.app_addr, route.app_addrlen)
    if st == STATUS_OK:
        return _enter_pipe(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


cdef inline bint _tchar(unsigned char x) noexcept nogil:
    """RFC 9110 §5.6.2's token characters."""
    return ((x >= c'a' and x <= c'z') or (x >= c'A' and x <= c'Z') or (x >= c'0' and x <= c'9')
            or (x != 0 and strchr(b"!#$%&'*+-.^_`|~", x) != NULL))


cdef inline bint _blank(unsigned char x) noexcept nogil:
    """A byte some app takes for the space between the parts of a request line: SP,
    HTAB, and the rest of what Python's str.split() splits a latin-1 line on (VT, FF,
    CR, FS to US, NEL, NBSP: http.server's parse_request)."""
    return (x == c' ' or x == c'\t' or x == 0x0b or x == 0x0c or x == c'\r'
            or (x >= 0x1c and x <= 0x1f) or x == 0x85 or x == 0xa0)


cdef int _begins_request(const char* b, uint32_t n) noexcept nogil:
    """Do the first bytes begin an HTTP/1.x request line: a method token, blanks, a
    target, blanks, "HTTP/"? 1 yes, -1 no, 0 too few bytes to tell. Read leniently,
    so that whatever a lenient app would take for a request is framed (strictly) and
    not relayed as it came: empty lines and blanks before, any blanks between the
    parts, any case, a method token of any length (Go's net/http and h11 take one of
    any length), and "GET target" alone on its line (HTTP/0.9's form, for which
    Python's http.server still reads the field lines that follow)."""
    cdef uint32_t i = 0
    cdef uint32_t m, t, k
    cdef const char* version = b"http/"
    while i < n and (b[i] == c'\n' or _blank(<unsigned char>b[i])):
        i += 1
    m = i
    while i < n and _tchar(<unsigned char>b[i]):
        i += 1
    if i == n:
        return 0
    if i == m or not _blank(<unsigned char>b[i]):
        return -1
    while i < n and _blank(<unsigned char>b[i]):
        i += 1
    t = i
    while i < n and not _blank(<unsigned char>b[i]) and b[i] != c'\n':
        i += 1
    if i == n:
        return 0
    if i == t:
        return -1
    while i < n and _blank(<unsigned char>b[i]):
        i += 1
    if i == n:
        return 0
    if b[i] == c'\n':
        return 1 if i - m >= 3 and memcmp(b + m, b"GET", 3) == 0 and not _tchar(
            <unsigned char>b[m + 3]) else -1
    for k in range(5):
        if i + k == n:
            return 0
        if (<unsigned char>b[i + k] | 0x20) != <unsigned char>version[k]:
            return -1
    return 1


cdef int _sniff(Core* core, Conn* c) noexcept nogil:
    """CONN_SNIFFING (a port whose protocol is omitted or "auto"): bytes that begin a
    request line make the pair HTTP, framed strictly from there (a head that does not
    parse is answered 4xx, never relayed); other bytes, or the client's end, make it
    opaque TCP; a beginning too short to tell waits (at the deadline its timer takes it
    for HTTP, and a peer that said nothing for TCP)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t cap = _d2u_cap(core, c)
    cdef Py_ssize_t r
    cdef int rc = 0
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
            _counters_of(core, c).bytes_received += <uint64_t>r
            f.tail += <uint32_t>r
    if f.tail == 0 and not f.eof:
        return STATUS_OK
    if f.tail > 0:
        rc = _begins_request(f.buf, f.tail)
    if rc == 0 and not f.eof and f.tail < cap:
        return STATUS_OK
    # A request line longer than the buffer still began like one: HTTP (then a 414).
    return _sniffed(core, c, rc > 0 or (rc == 0 and f.tail == cap))


cdef int _sniffed(Core* core, Conn* c, bint http) noexcept nogil:
    """CONN_SNIFFING decided (or timed out: not HTTP): go on as HTTP or opaque TCP;
    a port that a push declared while its first bytes were awaited goes on as
    declared. Inbound plaintext has no route yet: HTTP goes on to be routed by its
    Host (plaintext.pxi), anything else is refused (it cannot name a route)."""
    cdef OutboundListener* l
    if not c.flags & CONN_INBOUND and c.table != core.table and c.lfd >= 0:
        l = _listener_in(core.table, c.lfd)
        if l != NULL and l.framed:
            http = True
        elif l != NULL and not l.sniff and not l.http:
            http = False
    if http:
        core.counters.sniffed_http += 1
    else:
        core.counters.sniffed_tcp += 1
    if c.flags & CONN_PLAINTEXT:
        if not http:
            return _plaintext_refused(core, c)  # opaque: it names no route (plaintext.pxi)
    elif c.flags & CONN_INBOUND:
        return _inbound_open(core, c, http)
    elif not http:
        return _tcp_start(core, c)
    else:
        c.flags |= CONN_FIXED_SERVICE
    c.flags |= CONN_HTTP
    c.state = CONN_HTTP_HEAD
    # The head has connect_timeout from here, as on the HTTP listener.
    _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    return _http_head(core, c)


cdef bint _same_ip(const net.sockaddr_storage* a, const net.sockaddr_storage* b) noexcept nogil:
    if a.ss_family != b.ss_family:
        return False
    if a.ss_family == net.AF_INET:
        return memcmp(&(<net.sockaddr_in*>a).sin_addr, &(<net.sockaddr_in*>b).sin_addr, 4) == 0
    return memcmp(&(<net.sockaddr_in6*>a).sin6_addr, &(<net.sockaddr_in6*>b).sin6_addr, 16) == 0


cdef int _outbound_start(Core* core, Conn* c, uint32_t listener,
                         const net.sockaddr_storage* peer) noexcept nogil:
    """A local caller accepted: its identity is decided now (_listener_identity; NULL:
    it matches no local workload, and is refused when it is routed or relayed)."""
    cdef OutboundListener* l = &c.table.listeners[listener]
    c.lfd = l.fd
    memcpy(&c.peer_addr, peer, sizeof(net.sockaddr_storage))
    c.caller = CALLER_NOT_ASKED
    c.client_ctx = _listener_identity(core, c, c.table, l, &c.local_principal, &c.caller_ns)
    if l.http:
        c.flags |= CONN_HTTP
        c.state = CONN_HTTP_HEAD
        return _http_head(core, c)
    c.service = l.service
    c.parent = l.service
    if l.framed:
        # A port declared HTTP: framed always (DESIGN §3), for this one service.
        c.flags |= CONN_HTTP | CONN_FIXED_SERVICE
        c.state = CONN_HTTP_HEAD
        _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
        return _http_head(core, c)
    if l.sniff:
        c.state = CONN_SNIFFING
        _deadline_at(core, c, core.now_ns + ENGINE_SNIFF_TIMEOUT_MS * 1000000)
        return _sniff(core, c)
    return _tcp_start(core, c)
