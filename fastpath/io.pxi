# io.pxi: Moving bytes on one socket: plaintext and TLS reads and writes, ends of stream,
# and the pump that drives both directions of a pair.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef inline void _nodelay(int fd) noexcept nogil:
    # A relay forwards what it has at once; Nagle would hold back the tail of each burst.
    cdef int one = 1
    net.setsockopt(fd, net.IPPROTO_TCP, net.TCP_NODELAY, &one, sizeof(one))


cdef Py_ssize_t _recv(Side* s, char* p, uint32_t n) noexcept nogil:
    cdef Py_ssize_t r
    cdef int err
    cdef openssl.BIO* rbio
    if s.ssl == NULL:
        if not s.readable:
            return STATUS_AGAIN
        while True:
            r = net.recv(s.fd, p, n, 0)
            if r > 0:
                if r < n and not s.hup:
                    s.readable = False  # drained: the next arrival brings an EPOLLIN
                s.bytes_in += <uint64_t>r
                return r
            if r == 0:
                return STATUS_EOF
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                s.readable = False
                return STATUS_AGAIN
            return STATUS_RESET
    if not s.readable and not openssl.SSL_has_pending(s.ssl):
        return STATUS_AGAIN
    # SSL_get_error reads this thread's error queue: it must hold nothing older.
    openssl.ERR_clear_error()
    rbio = openssl.SSL_get_rbio(s.ssl)
    openssl.BIO_set_callback_arg(rbio, <char*>s)  # _rbio_read_done may clear s.readable
    r = openssl.SSL_read(s.ssl, p, <int>n)
    openssl.BIO_set_callback_arg(rbio, NULL)
    if r > 0:
        s.bytes_in += <uint64_t>r
        return r
    err = openssl.SSL_get_error(s.ssl, <int>r)
    if err == openssl.SSL_ERROR_WANT_READ:
        s.readable = False              # OpenSSL read the socket empty
        return STATUS_AGAIN
    if err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_AGAIN
    if err == openssl.SSL_ERROR_ZERO_RETURN:
        return STATUS_EOF           # close_notify: the only clean end of a TLS stream
    # Includes OpenSSL 3's "unexpected eof while reading": a truncated stream.
    openssl.ERR_clear_error()
    return STATUS_RESET


cdef Py_ssize_t _send(Side* s, const char* p, uint32_t n) noexcept nogil:
    cdef Py_ssize_t r
    cdef int err
    if s.ssl == NULL:
        while True:
            r = net.send(s.fd, p, n, net.MSG_NOSIGNAL)
            if r >= 0:
                s.bytes_out += <uint64_t>r
                return r if r > 0 else STATUS_AGAIN
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return STATUS_AGAIN
            return STATUS_RESET
    openssl.ERR_clear_error()
    # A retry after WANT_WRITE passes the same leading bytes (maybe moved, and maybe
    # more of them): what SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER and partial writes allow.
    r = openssl.SSL_write(s.ssl, p, <int>n)
    if r > 0:
        s.bytes_out += <uint64_t>r
        return r
    err = openssl.SSL_get_error(s.ssl, <int>r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_AGAIN
    openssl.ERR_clear_error()
    return STATUS_RESET


cdef int _shut(Side* s) noexcept nogil:
    """Pass an end of stream on: FIN to a plaintext peer, close_notify to a TLS one."""
    cdef int r, err
    if s.ssl == NULL:
        return STATUS_OK if net.shutdown(s.fd, net.SHUT_WR) == 0 else STATUS_RESET
    openssl.ERR_clear_error()
    # 0: sent, the peer's close_notify not seen yet (the other direction may go on);
    # 1: sent after the peer's.
    r = openssl.SSL_shutdown(s.ssl)
    if r >= 0:
        return STATUS_OK
    err = openssl.SSL_get_error(s.ssl, r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_AGAIN
    openssl.ERR_clear_error()
    return STATUS_RESET


cdef int64_t _flow(Core* core, Side* src, Side* dst, Flow* f,
                   uint64_t* received, uint64_t* sent, bint pass_eof) noexcept nogil:
    """Move what can move from src to dst; the amount moved (bytes, +1 per end passed
    on), or STATUS_RESET. `received`/`sent` count bytes read from src / written to dst
    when not NULL. `pass_eof` false keeps src's end from reaching dst (HTTP: an
    upstream ended on purpose, the client connection goes on)."""
    cdef int64_t progress = 0
    cdef Py_ssize_t r
    cdef uint32_t cap = core.buffer_bytes
    while not f.eof:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                break               # cannot happen: the pool has two blocks per slot
        if f.tail == cap:
            if f.head == 0:
                break               # full: src waits until dst takes some (backpressure)
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
        r = _recv(src, f.buf + f.tail, cap - f.tail)
        if r > 0:
            f.tail += <uint32_t>r
            progress += r
            if received != NULL:
                received[0] += <uint64_t>r
        elif r == STATUS_EOF:
            f.eof = True
            progress += 1
        elif r == STATUS_AGAIN:
            break
        else:
            return STATUS_RESET
    while f.head < f.tail:
        r = _send(dst, f.buf + f.head, f.tail - f.head)
        if r > 0:
            f.head += <uint32_t>r
            progress += r
            if sent != NULL:
                sent[0] += <uint64_t>r
        elif r == STATUS_AGAIN:
            break
        else:
            return STATUS_RESET
    _invariant(f.head <= f.tail and f.tail <= cap, b"flow offsets out of the buffer")
    if f.buf != NULL and f.head == f.tail:
        # Empty: back to the pool, so an idle pair holds no buffer at all.
        _buf_put(core, f.buf)
        f.buf = NULL
        f.head = 0
        f.tail = 0
    if f.eof and f.buf == NULL and not f.shut and pass_eof:
        r = _shut(dst)
        if r == STATUS_OK:
            f.shut = True
            progress += 1
        elif r != STATUS_AGAIN:
            return STATUS_RESET
    return progress


cdef int _pump(Core* core, Conn* c) noexcept nogil:
    """Move bytes both ways until neither direction moves or the turn's budget is used."""
    cdef SideCounters* sc = _counters_of(core, c)
    cdef int64_t a, b
    cdef int64_t moved = 0
    cdef uint64_t moved_in, moved_out
    cdef int st
    if c.flags & CONN_DRAINING:
        return _drain(core, c)
    if c.flags & CONN_MIRROR:
        return _mirror_pump(core, c)    # a request's copy (mirror.pxi)
    while True:
        if c.flags & CONN_HTTP:
            a = _http_d2u(core, c, &sc.bytes_received)
            if a == STATUS_CLOSE:
                return STATUS_CLOSE     # answered 4xx (counted)
            if a == STATUS_BACKOFF:
                return _retry_begin(core, c)
            if a < 0 and c.flags & CONN_RETRYABLE:
                return _http_retry(core, c)
        else:
            moved_in = 0
            a = _flow(core, &c.down, &c.up, &c.d2u, &moved_in, NULL, True)
            sc.bytes_received += moved_in
            _tcp_moved(core, c, moved_in, 0)    # (stats.pxi: Istio's istio_tcp_*)
        if a < 0:
            sc.aborted += 1
            if c.flags & CONN_CLIENT_GONE:
                return _drain_start(core, c)
            return STATUS_RESET
        if c.flags & CONN_HTTP:
            b = _http_u2d(core, c, &sc.bytes_sent)
            if b == STATUS_CLOSE:
                return STATUS_CLOSE     # answered 502 (counted)
            if b == STATUS_RETRY:
                return _http_retry(core, c)
            if b == STATUS_BACKOFF:
                return _retry_begin(core, c)
        else:
            moved_out = 0
            b = _flow(core, &c.up, &c.down, &c.u2d, NULL, &moved_out, True)
            sc.bytes_sent += moved_out
            _tcp_moved(core, c, 0, moved_out)
        if b < 0:
            sc.aborted += 1
            if c.flags & CONN_CLIENT_GONE:
                return _drain_start(core, c)
            return STATUS_RESET
        if c.flags & CONN_TICKET_WAIT:
            _take_ticket(c)
        if c.switching and c.n_pend == 0 and c.u2d.buf == NULL:
            if c.resp_phase != RESP_HEAD:
                # The last answer ran until the upstream's end (no length, or a tunnel):
                # the client needs that end to see where it stops, so no other answer
                # may follow on this connection; what it sent after is cut off.
                if c.u2d.eof:
                    if not c.u2d.shut:
                        _shut(&c.down)
                    return STATUS_CLOSE
            elif c.flags & CONN_INBOUND:
                # Inbound, on an older table: the app's new address, or going away
                # (carry.pxi); the waiting request is framed on the way on.
                st = _inbound_move(core, c)
                if st != STATUS_OK or c.state != CONN_PIPE:
                    return st
                continue
            else:
                # Every request sent upstream is answered: the client's next request
                # goes to the service it names, on the current table; the upstream goes
                # to the pool if it can.
                return _http_switch(core, c)
        if (c.flags & (CONN_HTTP | CONN_INBOUND) == CONN_HTTP and c.d2u.eof
                and c.d2u.buf == NULL and _http_idle(c)):
            # The client is done; its upstream is pooled, or closed with the pair when
            # the endpoint's pool is full.
            _pool_put(core, c)
            return STATUS_CLOSE
        if _up_left_between(c) or _pooled_between(core, c):
            # The upstream ended cleanly between answers that kept it alive (its node
            # drains, or its service moved), or carried maxRequestsPerConnection
            # or its service limits connections (pool.pxi: back to the pool): the
            # client's connection goes on, and its next request gets an upstream anew.
            return _http_switch(core, c)
        if (c.table != core.table and c.flags & CONN_HTTP
                and not c.flags & (CONN_GOING_AWAY | CONN_HOLD_TABLE)
                and _between_requests(c)):
            # A config push came while requests were in flight: now they are answered,
            # the pair moves to the current table (carry.pxi). (Each way out of
            # _http_move leaves this test false, so the loop goes on without coming
            # back here.)
            st = _http_move(core, c)
            if st != STATUS_OK or c.state != CONN_PIPE:
                return st
            continue
        if c.d2u.shut and c.u2d.shut:
            return STATUS_CLOSE
        if a + b == 0:
            return STATUS_OK
        moved += a + b
        c.active_ns = core.now_ns
        if moved >= ENGINE_PUMP_BUDGET_BYTES:
            _ready_push(core, c)
            return STATUS_OK


cdef inline int _enter_pipe(Core* core, Conn* c) noexcept nogil:
    # The readable flags are right as they are: every event of every state sets them,
    # and only a read that found a socket empty clears one (handshake reads never do).
    c.state = CONN_PIPE
    c.active_ns = core.now_ns
    _timer_arm(core, c, _conn_due_ns(core, c))     # from here the idle timeout
    _tcp_opened(core, c)                # an opaque pair, counted by its peer (stats.pxi)
    if c.table != core.table and not (c.flags & CONN_HTTP):
        # Set up across a config push: is its destination still there? (carry.pxi)
        _opaque_check(core, c)
    # Bytes may be waiting already (the client spoke first; OpenSSL decrypted a record
    # with the handshake's last flight): their edges are gone, so pump now.
    return _pump(core, c)


cdef long _rbio_read_done(openssl.BIO* b, int oper, const char* argp, size_t length, int argi,
                          long argl, int ret, size_t* processed) noexcept nogil:
    """After each read() OpenSSL makes of a TLS socket: one that got less than it asked
    for (read-ahead asks for a whole buffer) read the socket empty, so the side is not
    readable until its next EPOLLIN — as a short plaintext read does in _recv. Without
    this, every SSL_read that returned data was followed by one more that found the
    socket empty: a read() with EAGAIN per record."""
    cdef Side* s
    if oper == (openssl.BIO_CB_READ | openssl.BIO_CB_RETURN) and ret > 0 and processed != NULL \
            and processed[0] < length:
        s = <Side*>openssl.BIO_get_callback_arg(b)
        if s != NULL and not s.hup:
            s.readable = False
    return ret


cdef inline void _ssl_tune(openssl.SSL* ssl) noexcept nogil:
    openssl.SSL_set_mode(ssl, _SSL_MODES)
    openssl.SSL_set_read_ahead(ssl, 1)
    # Read-ahead takes what the socket has up to this buffer: several 16 KiB records per
    # read() when an answer streams (the buffer exists only while it holds bytes:
    # SSL_MODE_RELEASE_BUFFERS).
    openssl.SSL_set_default_read_buffer_len(ssl, ENGINE_TLS_READ_BYTES)
    # The argument (the Side reading) is set around each SSL_read in _recv only: an SSL
    # moves between connections (pooled upstreams), a Side pointer must not outlive a call.
    openssl.BIO_set_callback_ex(openssl.SSL_get_rbio(ssl), _rbio_read_done)
