# caller_ext.pxi: The calling workload's own address, carried across the hop: the
# caller's node says it in its ClientHello, the destination's node keeps it with the
# pair (Conn.source_ip) for the policy that judges source.ip and ipBlocks.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# Why. Between nodes the connected address is the caller's node, yet AuthorizationPolicy's
# source.ip and ipBlocks name the calling workload (issue 12). Only the caller's node saw
# the workload's socket (it accepted it: Conn.peer_addr), and every mTLS peer is a node
# (the workloads' keys live in their nodes, DESIGN §4, §7), so the node vouches for the
# address: in an extension of a private-use type (RFC 8446 §4.2; IANA's registry keeps
# 0xFF00-0xFFFF for private use) in its ClientHello. That costs no round trip and no extra
# record, and the handshake transcript covers it, which both Finished messages
# authenticate: once the handshake completed with a verified peer, the address is that
# node's word, and nothing the client sends later (no header) can change it.
#
# Wire: a family byte (4 or 6), then the address's 4 or 16 bytes, nothing else (no port:
# source.ip is an address). Any other body fails the handshake with decode_error and is
# counted (caller_addr_malformed). A node that sends none (an older version) is judged
# at its own connected address.
#
# Every ClientHello carries it, a resumed one too (a session is not tied to a caller),
# from the pair's client: a retry or a failover makes a new ClientHello for the same
# client, a mirror's copy takes its client's address (mirror.pxi). A pooled upstream
# told the other node the address of the client it was opened for, so the pool keys
# upstreams by identity and caller address (endpoint.pxi _pool_take): the further
# connections of a workload come from its same address and still reuse them.
#
# Cost per connection: one callback on each side (the add callback encodes 5 or 17
# bytes, the parse callback decodes them) and 9 or 21 more bytes in the ClientHello
# (type, length, body).


cdef int _caller_wire(const net.sockaddr_storage* a, uint8_t* w) noexcept nogil:
    """The wire form of a socket address in w[0:returned] (0: not an IP address)."""
    if a.ss_family == net.AF_INET:
        w[0] = 4
        memcpy(&w[1], &(<const net.sockaddr_in*>a).sin_addr, 4)
        return 5
    if a.ss_family == net.AF_INET6:
        w[0] = 6
        memcpy(&w[1], &(<const net.sockaddr_in6*>a).sin6_addr, 16)
        return 17
    return 0


cdef bint _caller_read(Conn* c, const uint8_t* w, size_t n) noexcept nogil:
    """c.source_ip := the address wire w[0:n] says (IPv4 as ::ffff:a.b.c.d, as accept set
    the connected one: limits.pxi _source_key); False, nothing changed, when w is not
    exactly a family byte and an address of that family."""
    if n == 5 and w[0] == 4:
        memset(c.source_ip, 0, 10)
        c.source_ip[10] = 0xff
        c.source_ip[11] = 0xff
        memcpy(&c.source_ip[12], &w[1], 4)
        return True
    if n == 17 and w[0] == 6:
        memcpy(c.source_ip, &w[1], 16)
        return True
    return False


cdef int _caller_ext_add(openssl.SSL* ssl, unsigned int ext_type, unsigned int context,
                         const unsigned char** out, size_t* outlen, openssl.X509* x,
                         size_t chainidx, int* al, void* arg) noexcept nogil:
    """Outbound ClientHello: the pair's client's address. Left out (0) from an SSL the
    engine did not make (a TLSSession of the same context: it speaks for no caller)."""
    cdef Conn* c = <Conn*>openssl.SSL_get_ex_data(ssl, _conn_ex_index)
    cdef int n
    if c == NULL:
        return 0
    n = _caller_wire(&c.peer_addr, c.caller_wire)
    if n == 0:
        return 0
    out[0] = c.caller_wire              # lives with the pair, past the hello's writing
    outlen[0] = <size_t>n
    return 1


cdef int _caller_ext_parse(openssl.SSL* ssl, unsigned int ext_type, unsigned int context,
                           const unsigned char* data, size_t inlen, openssl.X509* x,
                           size_t chainidx, int* al, void* arg) noexcept nogil:
    """Inbound ClientHello: keep the caller's address the peer node says; a body that is
    not one fails the handshake (the pair is marked, _handshake counts it)."""
    cdef Conn* c = <Conn*>openssl.SSL_get_ex_data(ssl, _conn_ex_index)
    if c == NULL:
        al[0] = openssl.SSL_AD_INTERNAL_ERROR
        return 0
    if _caller_read(c, data, inlen):
        return 1
    c.flags |= CONN_CALLER_MALFORMED
    al[0] = openssl.SSL_AD_DECODE_ERROR
    return 0


cdef int _caller_ext_register(openssl.SSL_CTX* ctx) except -1:
    """Make every SSL from `ctx` send (client) or read (server) the caller's address.
    Done when a table is built, before the table's first SSL: a context an earlier table
    had is registered already (OpenSSL refuses a type twice, and an SSL_CTX in use must
    not change), so nothing is done then."""
    if openssl.SSL_CTX_has_client_custom_ext(ctx, ENGINE_CALLER_EXT_TYPE):
        return 0
    openssl.ERR_clear_error()
    if openssl.SSL_CTX_add_custom_ext(ctx, ENGINE_CALLER_EXT_TYPE, openssl.SSL_EXT_CLIENT_HELLO,
                                      _caller_ext_add, NULL, NULL,
                                      _caller_ext_parse, NULL) != 1:
        raise_tls_error("cannot register the caller address extension")
    return 0


cdef bytes _V4_MAPPED = b"\0" * 10 + b"\xff\xff"


cdef dict _callers_view(Core* core):
    """Engine.inbound_callers(): the inbound pairs past their handshake, by source_ip."""
    out = {}
    cdef uint32_t i
    cdef Conn* c
    for i in range(core.n_slots):
        c = &core.conns[i]
        if (c.state == CONN_FREE or c.state == CONN_HANDSHAKING
                or not c.flags & CONN_INBOUND):
            continue
        raw = (<const char*>c.source_ip)[:16]
        if raw.startswith(_V4_MAPPED):
            host = socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            host = socket.inet_ntop(socket.AF_INET6, raw)
        out[host] = out.get(host, 0) + 1
    return out
