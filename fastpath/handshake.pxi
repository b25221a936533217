# handshake.pxi: TLS handshakes on either side of a pair: driving them, counting how they
# ended, and reading the peer's verified SPIFFE ID once per connection.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

# Why a handshake failed (_failure_of).
cdef enum HandshakeFailure:
    FAILED_OTHER = 0
    FAILED_VERIFY                       # the peer's certificate was missing or bad
    FAILED_PLAINTEXT                    # the peer sent a plaintext HTTP request


cdef HandshakeFailure _failure_of(openssl.SSL* ssl) noexcept nogil:
    """Why this handshake failed, as OpenSSL's error queue says (drained as it looks)."""
    cdef unsigned long e
    cdef int reason
    cdef HandshakeFailure failure = (FAILED_VERIFY if openssl.SSL_get_verify_result(ssl)
                                     != openssl.X509_V_OK else FAILED_OTHER)
    while True:
        e = openssl.ERR_get_error()
        if e == 0:
            break
        if openssl.ERR_GET_LIB(e) == openssl.ERR_LIB_SSL:
            reason = openssl.ERR_GET_REASON(e)
            if (reason == openssl.SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
                    or reason == openssl.SSL_R_CERTIFICATE_VERIFY_FAILED):
                failure = FAILED_VERIFY
            elif (reason == openssl.SSL_R_HTTP_REQUEST
                    or reason == openssl.SSL_R_HTTPS_PROXY_REQUEST):
                failure = FAILED_PLAINTEXT
    return failure


cdef int _refuse_unknown_name(int preverify_ok, openssl.X509_STORE_CTX* store) noexcept nogil:
    """Verify callback of an inbound handshake whose SNI names no route: the client's
    chain is judged as for any route (a failure stays that failure, so a client without
    a mesh certificate cannot tell a known name from an unknown one), and a chain that
    verifies is then refused at its leaf: the caller is not told which names exist."""
    if not preverify_ok:
        return 0
    if openssl.X509_STORE_CTX_get_error_depth(store) == 0:
        openssl.X509_STORE_CTX_set_error(store, openssl.X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    return 1


cdef inline Side* _tls_side(Conn* c) noexcept nogil:
    return &c.down if c.flags & CONN_INBOUND else &c.up


cdef int _handshake_done(Core* core, Conn* c, Side* s) noexcept nogil:
    """A handshake completed: count it, keep the peer's verified SPIFFE ID with the pair
    (read once per connection), and hand the pair to its side's next stage: the
    upstream's identity check and the pipe (endpoint), or the inbound detection."""
    cdef SideCounters* sc = _counters_of(core, c)
    cdef char peer[SPIFFE_ID_MAX_BYTES + 1]
    cdef int n
    sc.tls_handshakes += 1
    if openssl.SSL_session_reused(s.ssl):
        sc.tls_resumed += 1
    n = peer_spiffe_id(s.ssl, peer, sizeof(peer))
    if not (c.flags & CONN_INBOUND):
        if not _peer_allowed(core, c, peer, n):
            return STATUS_CLOSE
    elif c.flags & CONN_UNKNOWN_SNI:
        core.counters.tls_unknown_sni += 1      # resumed: no certificate was judged
        return STATUS_CLOSE
    elif not (c.flags & CONN_ROUTED):
        sc.tls_failures_other += 1      # cannot happen: routed or unknown, in the callback
        return STATUS_CLOSE
    elif n <= 0:
        # Verified by the route's trust bundle, yet no usable SPIFFE ID: not a workload.
        sc.tls_failures_verify += 1
        return STATUS_CLOSE
    c.peer_id = <char*>malloc(<size_t>n + 1)
    if c.peer_id == NULL:
        sc.aborted += 1
        return STATUS_RESET
    memcpy(c.peer_id, peer, <size_t>n + 1)
    c.peer_id_length = <uint32_t>n
    c.peer_principal = _principal_of(core, peer, <uint32_t>n)
    c.stat = -1
    if not (c.flags & CONN_INBOUND):
        session_mark_origin(s.ssl)
        if not openssl.SSL_session_reused(s.ssl):
            c.flags |= CONN_TICKET_WAIT
        return _enter_pipe(core, c)
    return _inbound_detect(core, c, s)


cdef int _handshake(Core* core, Conn* c) noexcept nogil:
    cdef Side* s = _tls_side(c)
    cdef SideCounters* sc = _counters_of(core, c)
    cdef int r, err
    cdef HandshakeFailure failure
    cdef Endpoint* ep
    openssl.ERR_clear_error()
    r = openssl.SSL_do_handshake(s.ssl)
    if r == 1:
        return _handshake_done(core, c, s)
    err = openssl.SSL_get_error(s.ssl, r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_OK
    if c.flags & CONN_CALLER_MALFORMED:
        core.counters.caller_addr_malformed += 1
        openssl.ERR_clear_error()
    elif c.flags & CONN_UNKNOWN_SNI:
        core.counters.tls_unknown_sni += 1
        openssl.ERR_clear_error()
    else:
        failure = _failure_of(s.ssl)
        if failure == FAILED_VERIFY:
            sc.tls_failures_verify += 1
        elif failure == FAILED_PLAINTEXT and c.flags & CONN_INBOUND:
            # A table with no route that takes plaintext does not look at the first
            # byte (detect.pxi): plaintext HTTP is known by OpenSSL's refusal, and
            # refused as a STRICT route's is on a table that looks (plaintext.pxi).
            return _plaintext_refused(core, c)
        else:
            sc.tls_failures_other += 1
    if c.flags & CONN_OFFERED_SESSION:
        # The session we offered may be what broke the handshake: do not offer it again.
        ep = &c.table.services[c.service].endpoints[c.endpoint]
        if ep.session != NULL:
            openssl.SSL_SESSION_free(ep.session)
            ep.session = NULL
    return STATUS_CLOSE
