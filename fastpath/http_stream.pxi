# http_stream.pxi: HTTP/1.1 framing both ways on a pair: request heads and bodies from the
# client, responses from the upstream, and a gone client's drain. (The engine's own
# answers are http_reply.pxi's; a head's request-target and upgrade tokens,
# http_target.pxi's.)
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef int _drain_start(Core* core, Conn* c) noexcept nogil:
    """The client of an HTTP outbound pair is gone: keep the upstream when every byte
    sent on it belongs to whole requests (their answers are then read and dropped, and
    the upstream pooled: _drain); STATUS_RESET when it cannot be kept."""
    if (c.flags & (CONN_INBOUND | CONN_HTTP)) != CONN_HTTP or c.up.ssl == NULL:
        return STATUS_RESET
    if (c.state != CONN_PIPE or c.switching or not c.reusable or c.fwd != 0
            or c.req_phase != REQ_HEAD or c.resp_phase == RESP_TUNNEL
            or c.resp_phase == RESP_CLOSE or c.u2d.eof
            or (c.resp_phase == RESP_LENGTH and c.resp_left > core.drain_max_bytes)):
        return STATUS_RESET
    _side_close(&c.down, True)
    if c.d2u.buf != NULL:
        _buf_put(core, c.d2u.buf)
    memset(&c.d2u, 0, sizeof(Flow))
    c.flags = (c.flags | CONN_DRAINING) & ~(CONN_RETRYABLE | CONN_KEPT)
    if c.resp_phase != RESP_HEAD:
        c.flags |= CONN_DRAIN_HEAD_SEEN
    _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    return _drain(core, c)


cdef int _drain(Core* core, Conn* c) noexcept nogil:
    """CONN_DRAINING: read the upstream's answers, drop them as they are framed, pool
    the upstream once nothing is owed (STATUS_CLOSE ends the pair either way)."""
    cdef Flow* f = &c.u2d
    cdef Py_ssize_t r
    cdef uint32_t cap = core.buffer_bytes
    while True:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                return STATUS_RESET
        # What is framed was for the client that left (at the start, maybe a whole
        # buffer it stopped reading): dropped.
        f.head += c.resp_fwd
        c.resp_fwd = 0
        if f.head == f.tail:
            f.head = 0
            f.tail = 0
        elif f.tail == cap:
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
            if f.tail == cap:
                return STATUS_RESET     # a head over a buffer: not worth keeping
        r = _recv(&c.up, f.buf + f.tail, cap - f.tail)
        if r == STATUS_AGAIN:
            break
        if r <= 0:
            return STATUS_RESET         # ended or failed: nothing to keep
        f.tail += <uint32_t>r
        if _http_rframe(core, c) != STATUS_OK:
            return STATUS_RESET
    if f.head == f.tail:
        _buf_put(core, f.buf)
        memset(f, 0, sizeof(Flow))
    c.active_ns = core.now_ns
    if c.n_pend == 0 and c.resp_phase == RESP_HEAD and f.buf == NULL and c.reusable:
        _pool_put(core, c)
        return STATUS_CLOSE
    return STATUS_OK


cdef int _http_framed(Core* core, Conn* c, ReqHead* req, uint32_t base) noexcept nogil:
    """A request head at d2u.buf + base, for the current upstream: edit it for the
    next hop, count it as framed, and expect its body. STATUS_OK (also: a step answered
    it in place and dropped it: ratelimit.pxi), STATUS_AGAIN (inbound: no room for
    x-forwarded-client-cert until earlier bytes are sent; outbound: none for its
    route's request edits; a step waits for earlier answers; overload's caps wait for
    them too: every wait comes before anything of the head is taken, the caller
    frames it again), STATUS_CLOSE (a step answered it, the
    pair ends: a rate limit's 429, an authorization's 403; or overload answered 503 over
    a cap: overload.pxi), or
    STATUS_RESET (outbound: an absolute-form head that cannot be edited; either way:
    one over the parser's limits with its trace fields; 431).

    Both ways the head gets its trace context for the next hop (tracing.pxi).

    Outbound, the client's hop-by-hop fields go and an absolute-form target becomes
    origin-form, its authority the Host. The client's `Connection: close` is about the
    client's connection only: the upstream hop stays pooled (HTTP/1.1 requests go on
    without it), and the client's connection is closed after this request's answer,
    which then says so."""
    cdef int64_t delta = 0
    cdef int64_t grow
    cdef uint32_t i
    cdef int st
    cdef bint h2c
    cdef FilterCall call
    cdef FilterVerdict v
    cdef const FilterChain* chain = (&c.table.routes[c.route].chain if c.flags & CONN_INBOUND
                                     else &c.table.services[c.service].chain)
    cdef uint32_t received = req.head_len   # as the client sent it (Conn.pend_req_bytes)
    if core.draining:
        c.flags |= CONN_GOING_AWAY      # (it became HTTP after the drain began)
    if req.method_span.off > 0:
        # Empty lines before the request-line (RFC 9112 §2.2: ignored) are not passed on:
        # not every app ignores them.
        memmove(c.d2u.buf + base, c.d2u.buf + base + req.method_span.off,
                c.d2u.tail - base - req.method_span.off)
        c.d2u.tail -= req.method_span.off
        parse_request_head(c.d2u.buf + base, c.d2u.tail - base, req, &core.http_limits)
    # h2c is HTTP/2 over this connection: granted, the requests after it would reach the
    # app unframed, their identity fields as the client wrote them ("h2c smuggling").
    # Not an upgrade here, as in Envoy: outbound the request goes on without its
    # Upgrade, Connection and HTTP2-Settings (hop-by-hop fields, below); inbound an
    # app's 101 to it is a 502. (Looked at before the steps edit the head.)
    h2c = req.upgrade and _asks_h2c(c.d2u.buf + base, req)
    if h2c:
        req.upgrade = False
    if _overload_wait(core, c):
        return STATUS_AGAIN             # over a cap, behind answers owed (overload.pxi)
    if _edits_wait(core, c, req, base):
        return STATUS_AGAIN             # no room for its route's edits yet (routes.pxi)
    if _trace_wait(core, c, req, base):
        return STATUS_AGAIN             # ... nor for its trace fields (tracing.pxi)
    _access_begin(core, c, req, c.d2u.buf + base)   # what its record says (accesslog.pxi)
    if _chain_at(chain, PHASE_REQUEST):
        call.phase = PHASE_REQUEST
        call.req = req
        call.base = base
        call.delta = 0
        call.status = 0
        call.kept = False
        v = _filters_run(core, c, chain, &call)
        if v == FILTER_STOP:
            return STATUS_AGAIN
        if v == FILTER_ANSWER:
            # A step answered the request itself (a rate limit's 429, an
            # authorization's 403): in place, its head dropped and the pair going on to
            # the next request, or as the engine's other answers, the pair ending after.
            c.filter_at = 0
            return STATUS_OK if call.kept else STATUS_CLOSE
        delta = call.delta
    c.flags &= ~CONN_HOLD_TABLE
    if c.flags & CONN_INBOUND:
        if c.flags & CONN_GOING_AWAY:
            # Draining: this request's answer tells the caller's node to go elsewhere.
            c.client_close = True
    else:
        if delta != 0:
            # The engine's own edits below work on the head as the steps left it.
            parse_request_head(c.d2u.buf + base, c.d2u.tail - base, req, &core.http_limits)
            delta = 0
            req.upgrade = req.upgrade and not h2c
        if req.version_minor == 1 and not req.upgrade:
            delta = -<int64_t>strip_hop_fields(c.d2u.buf + base, c.d2u.tail - base, req)
            c.d2u.tail = <uint32_t>(c.d2u.tail + delta)
        elif not req.keep_alive:
            c.reusable = False  # HTTP/1.0 goes on as it came: the upstream will close
        if not req.keep_alive or c.flags & CONN_GOING_AWAY:
            c.client_close = True
        if req.target_form == TARGET_ABSOLUTE:
            if delta != 0:
                # Field lines went: the Host field's place is read again.
                parse_request_head(c.d2u.buf + base, c.d2u.tail - base, req, &core.http_limits)
                delta = 0
            grow = _absolute_form(core, &c.d2u, base, req)
            if grow == INT64_MAX:
                return STATUS_RESET
            delta += grow
        if _edits_request(c):
            st = _request_edits(core, c, req, base, &delta)
            if st != STATUS_OK:
                return st
    st = _trace_request(core, c, req, base, &delta)     # (tracing.pxi)
    if st != STATUS_OK:
        return st
    # Its parses of the edited head read Upgrade afresh: h2c stays no upgrade (above).
    req.upgrade = req.upgrade and not h2c
    # Counted in flight here, past the last wait (a head framed again is counted once).
    if not _overload_admit(core, c):
        return STATUS_CLOSE             # answered 503: over a cap (overload.pxi)
    c.fwd = <uint32_t>(c.fwd + req.head_len + delta)
    if not (req.method == METHOD_GET or req.method == METHOD_HEAD or req.method == METHOD_PUT
            or req.method == METHOD_DELETE or req.method == METHOD_OPTIONS
            or req.method == METHOD_TRACE):
        # RFC 9110 §9.2.2: only idempotent requests may be sent twice.
        c.flags &= ~CONN_RETRYABLE
    _invariant(c.n_pend < ENGINE_HTTP_PIPELINE_MAX, b"pipeline ring overflow")
    i = (c.pend_first + c.n_pend) % ENGINE_HTTP_PIPELINE_MAX
    c.pend_start_ns[i] = core.now_ns
    c.pend_method[i] = <uint8_t>req.method
    c.pend_req_bytes[i] = received      # its body's come as it is framed (_req_body_bytes)
    _access_pending(c, i)
    c.pend_rule[i] = c.req_rule         # its answer's edits (routes.pxi)
    _hash_framed(c, i)                  # ... and a generated cookie (hashing.pxi)
    c.pend_deadline[i] = 0
    if c.req_rule >= 0:
        c.pend_deadline[i] = _try_deadline(&c.table.rules[c.req_rule], core.now_ns, core.now_ns)
        if c.n_pend == 0 and c.pend_deadline[i] != 0:
            _request_deadline(core, c, c.pend_deadline[i])
    c.n_pend += 1
    _load_move(core, c, 1, -1)          # (outbound, bound: one more outstanding there)
    # Upgrade or CONNECT: after its body nothing more is framed until the answer says
    # whether the rest is a byte pipe (101, 2xx to CONNECT) or more requests; until
    # then the client's bytes wait (a request smuggled behind a refused Upgrade would
    # otherwise reach the app unframed, its identity headers as the client wrote them).
    c.upgrade = (UPGRADE_ASKED if req.upgrade or req.method == METHOD_CONNECT
                 else UPGRADE_NONE)
    if req.body == BODY_LENGTH:
        c.req_phase = REQ_LENGTH
        c.req_left = req.content_length
    elif req.body == BODY_CHUNKED:
        c.req_phase = REQ_CHUNKED
        chunk_init(&c.chunk, &core.http_limits)
    else:
        c.req_phase = _after_request(c)
    if c.req_rule >= 0 and c.table.rules[c.req_rule].n_mirrors > 0:
        # RequestMirror: a copy of the head as edited; its body follows (mirror.pxi).
        _mirror_begin(core, c, req, c.d2u.buf + base, <uint32_t>(req.head_len + delta))
    if not c.flags & CONN_INBOUND:
        _budget_deposit(core, c)            # its service's retry budget (budget.pxi)
    if c.req_rule >= 0 and c.table.rules[c.req_rule].retry != NULL:
        _retry_keep(core, c, req, base)     # kept for replay
    return STATUS_OK


cdef inline void _req_body_bytes(Conn* c, uint64_t n) noexcept nogil:
    """Body bytes of the request being framed, for its size: the newest pending
    request's (none is when its answer came first: its size was counted then)."""
    if c.n_pend > 0:
        c.pend_req_bytes[(c.pend_first + c.n_pend - 1) % ENGINE_HTTP_PIPELINE_MAX] += n


cdef inline ReqPhase _after_request(Conn* c) noexcept nogil:
    """Where the client's bytes are once a request's body is framed."""
    if c.upgrade == UPGRADE_ASKED:
        return REQ_UPGRADE_WAIT
    if c.upgrade == UPGRADE_GRANTED:
        return REQ_TUNNEL
    return REQ_HEAD


cdef bint _framed_as_message(const char* b, const RespHead* resp) noexcept nogil:
    """Does a response head carry Content-Length or Transfer-Encoding?"""
    cdef uint32_t i
    if resp.content_length >= 0 or resp.chunked:
        return True
    for i in range(resp.header_count):
        if (resp.headers[i].name.len == 17
                and guarded_name(b + resp.headers[i].name.off, 17) == GUARDED_EXACT):
            return True
    return False


cdef int _upgrade_answered(Conn* c, const RespHead* resp, const char* b) noexcept nogil:
    """The final answer to a request that asked to leave HTTP (c.upgrade ASKED):
    granted (101, 2xx to CONNECT) the client's bytes become a pipe once its body is
    framed; refused, they are framed as requests again. -1 when a 101 answers a
    request that asked for no upgrade (or a CONNECT): no pipe the caller did not ask
    for; and when a 2xx to CONNECT (head at `b`) is framed as a message, with a
    Content-Length or Transfer-Encoding: a tunnel's has neither (RFC 9110 §9.3.6: a
    server MUST NOT send them), that is an app answering every method alike, still
    reading requests, and a pipe would hand it the client's next bytes unframed."""
    if resp.body == BODY_TUNNEL:
        if c.upgrade != UPGRADE_ASKED or c.n_pend != 1 or (
                resp.status == 101 and c.pend_method[c.pend_first] == METHOD_CONNECT):
            return -1
        if resp.status != 101 and _framed_as_message(b, resp):
            return -1
        if c.req_phase == REQ_UPGRADE_WAIT:
            c.req_phase = REQ_TUNNEL
            c.upgrade = UPGRADE_NONE
        else:
            c.upgrade = UPGRADE_GRANTED
        return 0
    if c.upgrade == UPGRADE_ASKED and c.n_pend == 1:
        c.upgrade = UPGRADE_NONE
        if c.req_phase == REQ_UPGRADE_WAIT:
            c.req_phase = REQ_HEAD
    return 0


cdef bint _head_ended(const char* b, uint32_t n, uint32_t* scan) noexcept nogil:
    """Is there an empty line in b[0:n] (where a head ends: CRLF or bare LF, the parser
    judges which)? Searches only from *scan, and leaves there where the next call must
    begin: a head trickled a line per read is scanned once and parsed once, not parsed
    from its start on every read (quadratic)."""
    cdef uint32_t i = scan[0]
    cdef const char* p
    while i < n:
        p = <const char*>memchr(b + i, c'\n', n - i)
        if p == NULL:
            break
        i = <uint32_t>(p - b) + 1
        if i < n and b[i] == c'\n':
            scan[0] = i + 1
            return True
        if i + 1 < n and b[i] == c'\r' and b[i + 1] == c'\n':
            scan[0] = i + 2
            return True
        if i + 1 >= n:
            scan[0] = i - 1             # the bytes after this LF are still to come
            return False
    scan[0] = n
    return False


cdef int _http_head(Core* core, Conn* c) noexcept nogil:
    """HTTP_HEAD: read a request head into d2u until it parses, then route it. After a
    switch the head (and maybe more requests) may be buffered already. Room is kept
    for the lines a route's edits add (_d2u_cap)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t cap = _d2u_cap(core, c)
    cdef Py_ssize_t r
    cdef int rc
    cdef bint full
    cdef bint fresh
    cdef bint buffered = f.buf != NULL and f.tail > f.head
    cdef ReqHead req
    if c.fault_until_ns != 0:
        return _fault_waiting(core, c)  # its request is held by a fault delay (fault.pxi)
    if buffered and f.head > 0:
        memmove(f.buf, f.buf + f.head, f.tail - f.head)
        f.tail -= f.head
        f.head = 0
    while True:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                return STATUS_CLOSE     # cannot happen: the pool has two blocks per slot
        full = f.tail == cap
        if not full and not buffered:
            r = _recv(&c.down, f.buf + f.tail, cap - f.tail)
            if r == STATUS_AGAIN:
                if f.tail == 0:
                    # A keep-alive client between requests holds no buffer.
                    _buf_put(core, f.buf)
                    memset(f, 0, sizeof(Flow))
                return STATUS_OK
            if r == STATUS_EOF:
                return STATUS_CLOSE     # gone before a whole head: nothing to answer
            if r < 0:
                return STATUS_RESET
            _counters_of(core, c).bytes_received += <uint64_t>r   # (inbound: plaintext)
            fresh = f.tail == 0 and c.flags & CONN_ANSWERED
            f.tail += <uint32_t>r
            c.active_ns = core.now_ns
            if fresh:
                # The first bytes of a keep-alive client's next request: its head has
                # connect_timeout from now (until then the pair was idle, not late).
                _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
        buffered = False
        # A head not whole at its first parse is parsed again only once the empty line
        # that ends it has come (searched from where the last search stopped).
        if c.head_scan > 0 and not _head_ended(f.buf, f.tail, &c.head_scan) and f.tail < cap:
            continue
        rc = parse_request_head(f.buf, f.tail, &req, &core.http_limits)
        c.head_method = <uint8_t>req.method if rc > 0 else METHOD_OTHER
        if rc > 0:
            c.head_scan = 0
            return _http_route(core, c, &req)
        if rc == 0:
            _head_ended(f.buf, f.tail, &c.head_scan)
        if rc < 0:
            _http_reply(core, c, request_error_status(rc), NULL, 0)
            return STATUS_CLOSE
        if full or f.tail == cap:
            # The head does not fit one pooled buffer: a limit like any other.
            _http_reply(core, c, 431, NULL, 0)
            return STATUS_CLOSE


cdef int _http_frame(Core* core, Conn* c) noexcept nogil:
    """PIPE: extend the framed part of d2u over what was read, request by request, up
    to a request for another service (then `switching`). STATUS_OK, STATUS_CLOSE (a
    request that does not parse with nothing owed before it: answered 4xx), or
    STATUS_RESET (one that does not parse mid-connection: answers to earlier requests
    may still be coming, so we cannot answer in order; the client sees the connection
    drop)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t start, avail
    cdef Py_ssize_t n
    cdef size_t cut
    cdef int rc, port
    cdef size_t hn
    cdef char host[256]
    cdef HostEntry* e
    cdef ReqHead req
    cdef uint32_t parent, backend
    cdef int32_t rule
    cdef int rst
    while not c.switching and f.buf != NULL:
        start = f.head + c.fwd
        avail = f.tail - start
        if c.client_close and c.req_phase == REQ_HEAD:
            # Nothing after a request that said close is a request (RFC 9112 §9.6):
            # what the client sends is dropped, as if it had ended there.
            f.tail = start
            f.eof = True
            return STATUS_OK
        if avail == 0:
            return STATUS_OK
        if c.req_phase == REQ_TUNNEL:
            c.fwd += avail
        elif c.req_phase == REQ_UPGRADE_WAIT:
            return STATUS_OK            # held until the Upgrade / CONNECT is answered
        elif c.req_phase == REQ_LENGTH:
            n = avail if <int64_t>avail < c.req_left else <Py_ssize_t>c.req_left
            c.fwd += <uint32_t>n
            c.req_left -= n
            _req_body_bytes(c, <uint64_t>n)
            if c.n_mirroring:
                _mirror_feed(core, c, f.buf + start, <uint32_t>n, c.req_left == 0)
            if c.req_left == 0:
                c.req_phase = _after_request(c)
        elif c.req_phase == REQ_CHUNKED:
            # Its trailer section is held until whole, and leaves without the fields
            # the mesh owns (http1.pxd chunked_relay).
            n = chunked_relay(&c.chunk, f.buf + start, avail, &cut)
            if n < 0:
                core.counters.http_bad_request += 1
                return STATUS_RESET
            c.fwd += <uint32_t>n
            f.tail -= <uint32_t>cut
            _req_body_bytes(c, <uint64_t>n + cut)   # (the trailer fields cut came too)
            if c.n_mirroring:
                _mirror_feed(core, c, f.buf + start, <uint32_t>n, c.chunk.phase == CHUNK_DONE)
            if c.chunk.phase == CHUNK_DONE:
                c.req_phase = _after_request(c)
            elif <uint32_t>n < avail:
                if f.eof:
                    f.tail = start + <uint32_t>n    # never whole: nothing of it to send
                elif start == 0 and f.tail >= _d2u_cap(core, c):
                    core.counters.http_bad_request += 1     # a section over a buffer
                    return STATUS_RESET
                return STATUS_OK
        else:
            if c.n_pend == ENGINE_HTTP_PIPELINE_MAX or c.flags & CONN_KEPT:
                # Deep enough, or behind a request a retry may send again (retry.pxi):
                # the rest waits for answers.
                return STATUS_OK
            if c.table != core.table and (
                    _plaintext_revoked(core, c)
                    or (not c.flags & (CONN_GOING_AWAY | CONN_HOLD_TABLE)
                        and not _rebind(core, c))):
                # Each request is routed on the table current when its head is framed:
                # this one waits until the earlier ones are answered (carry.pxi). A
                # plaintext pair's route made STRICT reaches it even going away (its
                # service left, then came back): it is closed instead (plaintext.pxi).
                c.switching = True
                return STATUS_OK
            if (c.head_scan > 0 and not _head_ended(f.buf + start, avail, &c.head_scan)
                    and not f.eof and f.tail < _d2u_cap(core, c)):
                return STATUS_OK        # its end is not here yet: nothing to parse
            rc = parse_request_head(f.buf + start, avail, &req, &core.http_limits)
            c.head_method = <uint8_t>req.method if rc > 0 else METHOD_OTHER
            if rc > 0:
                c.head_scan = 0
            if rc == 0:
                _head_ended(f.buf + start, avail, &c.head_scan)
                if f.tail >= _d2u_cap(core, c) and f.head == 0 and c.fwd == 0:
                    core.counters.http_bad_request += 1     # a head over a buffer
                    return STATUS_RESET
                if f.eof:
                    f.tail = start      # a partial head, then the end: nothing to send
                return STATUS_OK
            if rc < 0:
                if (c.n_pend == 0 and c.fwd == 0 and c.resp_fwd == 0
                        and (c.u2d.buf == NULL or c.u2d.head == c.u2d.tail)):
                    # Nothing owed before it: its 4xx is the next answer (counted).
                    _http_reply(core, c, request_error_status(rc), NULL, 0)
                    return STATUS_CLOSE
                core.counters.http_bad_request += 1
                return STATUS_RESET
            if _path_normalized(core, c, &req, start) < 0:
                # (Before anything reads its path: the route match, authorization.)
                rst = _path_refused(core, c, &req, start)
                if rst == STATUS_AGAIN:
                    return STATUS_OK    # its turn comes once the answers before it went
                if rst != STATUS_OK:
                    return rst
                continue                # answered in place: on to the next request
            if not (c.flags & CONN_INBOUND):
                # Outbound, each request is routed on its own: the shared listener's by
                # the service its Host names (a service port's own listener: that
                # service), then by that service's routes to a backend. One for another
                # backend, or that its balancer moves to another endpoint (_rebalance),
                # waits for a switch, its route decided (inbound: the SNI chose
                # the one local service).
                if c.flags & CONN_FIXED_SERVICE:
                    parent = c.parent
                else:
                    hn = 0
                    port = -1
                    e = NULL
                    if req.authority.len > 0:
                        hn = authority_host(f.buf + start + req.authority.off,
                                            req.authority.len, host, sizeof(host), &port)
                    if hn > 0:
                        e = _host_lookup(c.table.hosts, c.table.n_hosts, host, hn, port)
                    if e == NULL:
                        c.switching = True      # _http_route answers 404
                        return STATUS_OK
                    parent = e.service
                rst = _route_pick(core, c, parent, f.buf + start, &req, &backend, &rule)
                if rst != 0 or backend != c.service or _rebalance(core, c, f.buf + start, &req):
                    c.flags |= CONN_ROUTE_DECIDED
                    c.decided_service, c.decided_rule, c.decided_status = backend, rule, rst
                    c.switching = True
                    return STATUS_OK
                c.req_rule = rule
            if not (c.flags & CONN_INBOUND):
                core.counters.http_routed += 1
            if _leaves_http(f.buf + start, &req):
                core.counters.http_upgrade_refused += 1
                if c.n_pend == 0 and c.fwd == 0 and c.resp_fwd == 0 and (
                        c.u2d.buf == NULL or c.u2d.head == c.u2d.tail):
                    _http_reply(core, c, 403, b"upgrade not allowed\n", -1)
                    return STATUS_CLOSE
                core.counters.http_bad_request += 1
                return STATUS_RESET         # (cannot answer out of order)
            rc = _http_framed(core, c, &req, start)
            if rc == STATUS_RESET:
                core.counters.http_bad_request += 1
                return STATUS_RESET
            if rc == STATUS_CLOSE:
                return STATUS_CLOSE     # answered by a step (ratelimit.pxi, authz.pxi) or overload
            if rc == STATUS_AGAIN:
                if f.head == 0:
                    if not _answer_owed(c):
                        # Nothing framed is left to send nor any answer owed: no room
                        # (nor the turn a step's answer waits for) will come.
                        core.counters.http_bad_request += 1
                        return STATUS_RESET
                    return STATUS_OK    # room comes once the framed bytes are sent
                memmove(f.buf, f.buf + f.head, f.tail - f.head)
                f.tail -= f.head
                f.head = 0
    return STATUS_OK


cdef inline uint32_t _d2u_cap(Core* core, Conn* c) noexcept nogil:
    """How far an HTTP pair's d2u buffer is filled from the client: room is kept for
    the field the engine adds to request heads (Conn.head_reserve; outbound, the lines a
    route's request edits add, the table's most), but never more than
    half the buffer (a caller whose identity would need more gets no room for it and
    its requests are refused, counted; the cap never wraps below zero)."""
    cdef uint32_t reserve = c.head_reserve
    if not c.flags & CONN_INBOUND and c.table.request_grow > reserve:
        reserve = c.table.request_grow  # a route's request edits (routes.pxi)
    reserve += _TRACE_ROOM              # the trace fields (tracing.pxi)
    if reserve > core.buffer_bytes // 2:
        return core.buffer_bytes - core.buffer_bytes // 2
    return core.buffer_bytes - reserve


cdef int64_t _http_d2u(Core* core, Conn* c, uint64_t* received) noexcept nogil:
    """_flow() for an HTTP client's bytes: read, frame (_http_frame), send only what
    is framed for the current upstream (a request for another service waits in the
    buffer until _pump switches). The amount moved, STATUS_RESET, or STATUS_CLOSE (a
    request that does not parse was answered 4xx)."""
    cdef Flow* f = &c.d2u
    cdef int st
    cdef int64_t progress = 0
    cdef Py_ssize_t r
    cdef uint32_t cap = _d2u_cap(core, c)
    cdef bint truncated
    cdef uint64_t got = 0
    while not f.eof and not c.switching:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                break
        if f.tail >= cap:
            if f.head == 0 or (c.flags & CONN_KEPT and c.req_phase == REQ_HEAD):
                break                   # (a kept request is whole: the rest waits)
            c.flags &= ~(CONN_RETRYABLE | CONN_KEPT)  # the sent bytes go: no retry from here
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
            if f.tail >= cap:
                break                   # added fields fill the room kept for them
        r = _recv(&c.down, f.buf + f.tail, cap - f.tail)
        if r > 0:
            f.tail += <uint32_t>r
            progress += r
            got += <uint64_t>r
            received[0] += <uint64_t>r
        elif r == STATUS_EOF:
            f.eof = True
            progress += 1
        elif r == STATUS_AGAIN:
            break
        else:
            c.flags |= CONN_CLIENT_GONE
            return STATUS_RESET
    st = _http_frame(core, c)
    if st != STATUS_OK:
        return STATUS_CLOSE if st == STATUS_CLOSE else STATUS_RESET
    _slow_track(core, c, got)           # a slow client's head or body (overload.pxi)
    if c.flags & CONN_KEPT:
        _retry_grown(core, c)
    while c.fwd > 0:
        r = _send(&c.up, f.buf + f.head, c.fwd)
        if r > 0:
            f.head += <uint32_t>r
            c.fwd -= <uint32_t>r
            progress += r
        elif r == STATUS_AGAIN:
            break
        elif _retry_wanted(core, c, 0):
            return STATUS_BACKOFF       # the upstream failed under the kept request
        else:
            return _up_refused(core, c, progress)   # its early answer goes on (early.pxi)
    _invariant(f.head + c.fwd <= f.tail and f.tail <= core.buffer_bytes,
               b"http framing out of the buffer")
    if f.buf != NULL and f.head == f.tail and not (c.flags & (CONN_RETRYABLE | CONN_KEPT)):
        _buf_put(core, f.buf)
        f.buf = NULL
        f.head = 0
        f.tail = 0
    # A client that ended in the middle of a request body cannot make it whole: its end
    # goes upstream now, so the app sees the request cut short and answers or closes,
    # rather than all three waiting for bytes that will not come. Such an upstream is
    # not pooled. (A head never finished is dropped by _http_frame.)
    truncated = f.eof and (c.req_phase == REQ_LENGTH or c.req_phase == REQ_CHUNKED)
    if truncated:
        c.reusable = False
        c.flags &= ~(CONN_RETRYABLE | CONN_KEPT)
    # The client's end goes upstream once its requests are answered (or cut short) and
    # the upstream cannot be pooled (_pump pools it otherwise).
    if (not f.shut and c.fwd == 0 and not c.switching and f.eof and f.buf == NULL
            and (c.n_pend == 0 or truncated) and not _http_idle(c)):
        r = _shut(&c.up)
        if r == STATUS_OK:
            f.shut = True
            progress += 1
        elif r != STATUS_AGAIN:
            return STATUS_RESET
    return progress


cdef void _http_answered(Core* core, Conn* c, bint until_close) noexcept nogil:
    """The oldest pending request got its final response (framed to its end; or to
    its head, `until_close`: its body runs until the upstream's end, its size is known
    then)."""
    _invariant(c.n_pend > 0, b"a response without a request")
    c.flags |= CONN_ANSWERED
    # An answer nobody received counts as code 0 (Envoy's "downstream disconnected").
    _count_sizes(core, c, _count_answer(core, c, c.resp_status if not c.flags & CONN_DRAINING
                                        or c.flags & CONN_DRAIN_HEAD_SEEN else 0,
                                        core.now_ns - c.pend_start_ns[c.pend_first]),
                 until_close)
    # Its endpoint's load: one fewer outstanding, and the latency as a sample.
    _load_move(core, c, -1, <double>(core.now_ns - c.pend_start_ns[c.pend_first]))
    _overload_done(core, c)             # no longer in flight (overload.pxi)
    c.flags &= ~CONN_DRAIN_HEAD_SEEN
    c.pend_first = (c.pend_first + 1) % ENGINE_HTTP_PIPELINE_MAX
    c.n_pend -= 1
    if c.n_pend == 0:
        c.req_rule = -1     # the next request is not routed yet: its 400/408 has no route
    # The next pending request's timeout, if it has one (its timer may fire early:
    # it then finds nothing due and files itself again).
    if c.req_deadline_ns != 0 or (c.n_pend > 0 and c.pend_deadline[c.pend_first] != 0):
        _request_deadline(core, c, c.pend_deadline[c.pend_first] if c.n_pend > 0 else 0)


cdef inline bint _up_left_between(const Conn* c) noexcept nogil:
    """Outbound HTTP: the upstream ended (close_notify) between answers that kept the
    connection alive, and the client is still there: not the client's end."""
    return ((c.flags & (CONN_HTTP | CONN_INBOUND)) == CONN_HTTP and c.u2d.eof
            and c.reusable and c.n_pend == 0 and c.resp_phase == RESP_HEAD
            and c.req_phase == REQ_HEAD and c.fwd == 0 and c.u2d.buf == NULL
            and not c.u2d.shut and not c.d2u.eof and not c.client_close)


cdef inline uint32_t _u2d_cap(Core* core, Conn* c) noexcept nogil:
    """How far an HTTP client's u2d buffer is filled from the upstream: room is kept
    for the `Connection: close` its last answer may need, and outbound for the lines a
    route's response edits may add (the table's most)."""
    cdef uint32_t reserve = CLOSE_LINE_BYTES if c.client_close else 0
    if not c.flags & CONN_INBOUND:
        reserve += c.table.response_grow
    if reserve > core.buffer_bytes // 2:
        reserve = core.buffer_bytes // 2
    return core.buffer_bytes - reserve


cdef int _http_rframe(Core* core, Conn* c) noexcept nogil:
    """Extend the framed part of u2d over what the upstream sent, response by
    response. STATUS_OK, STATUS_RESET, or STATUS_CLOSE after answering 502."""
    cdef Flow* f = &c.u2d
    cdef uint32_t start, avail
    cdef Py_ssize_t n
    cdef size_t cut
    cdef int rc, added, st
    cdef RespHead resp
    cdef FilterCall call
    cdef FilterVerdict v
    cdef const FilterChain* chain
    while f.buf != NULL:
        start = f.head + c.resp_fwd
        avail = f.tail - start
        if avail == 0:
            break
        if c.resp_phase == RESP_TUNNEL or c.resp_phase == RESP_CLOSE:
            c.resp_fwd += avail
            if c.resp_phase == RESP_CLOSE:
                c.resp_bytes += avail   # (a tunnel's bytes are no answer's)
        elif c.resp_phase == RESP_LENGTH:
            n = avail if <int64_t>avail < c.resp_left else <Py_ssize_t>c.resp_left
            c.resp_fwd += <uint32_t>n
            c.resp_bytes += <uint64_t>n
            c.resp_left -= n
            if c.resp_left == 0:
                _http_answered(core, c, False)
                c.resp_phase = RESP_HEAD
        elif c.resp_phase == RESP_CHUNKED:
            # As a request's: its trailer section is held until whole, and leaves without
            # the fields the mesh owns (http1.pxd chunked_relay), which a client that
            # merges trailers into the head (RFC 9110 §6.5.1) would take for the node's.
            n = chunked_relay(&c.resp_chunk, f.buf + start, avail, &cut)
            if n < 0:
                core.counters.http_bad_response += 1
                return STATUS_RESET
            c.resp_fwd += <uint32_t>n
            c.resp_bytes += <uint64_t>n
            f.tail -= <uint32_t>cut
            if c.resp_chunk.phase == CHUNK_DONE:
                _http_answered(core, c, False)
                c.resp_phase = RESP_HEAD
            elif <uint32_t>n < avail:
                if start == 0 and f.tail >= _u2d_cap(core, c):
                    core.counters.http_bad_response += 1    # a section over a buffer
                    return STATUS_RESET
                break                       # the rest of the section is to come
        else:
            if c.n_pend == 0:
                core.counters.http_bad_response += 1    # bytes nobody asked for
                return STATUS_RESET
            rc = parse_response_head(f.buf + start, avail, &resp, &core.http_limits,
                                     <Method>c.pend_method[c.pend_first])
            if rc == 0:
                if f.tail >= _u2d_cap(core, c) and f.head == 0 and c.resp_fwd == 0:
                    rc = -1                 # a head over a buffer: refused like a bad one
                else:
                    break
            if rc < 0:
                core.counters.http_bad_response += 1
                _outlier_status(core, c, 502)   # (outbound only: outlier.pxi)
                if c.resp_fwd == 0:
                    _http_reply(core, c, 502, b"bad response from upstream\n", -1)
                    return STATUS_CLOSE
                return STATUS_RESET
            if resp.status >= 200:
                _outlier_status(core, c, resp.status)   # outlier.pxi (outbound only)
            if c.flags & CONN_KEPT and resp.status >= 200:
                st = _retry_answer(core, c, _retry_status(c, f.buf + start, &resp))
                if st != STATUS_OK:
                    return st               # tried again, or timed out (retry.pxi)
            if _cut_owned(core, c, start, &resp, &rc) < 0:
                core.counters.http_bad_response += 1
                return STATUS_RESET         # (retry.pxi: the nodes' own field goes)
            chain = (&c.table.routes[c.route].chain if c.flags & CONN_INBOUND
                     else &c.table.services[c.service].chain)
            if _chain_at(chain, PHASE_RESPONSE):
                call.phase = PHASE_RESPONSE
                call.resp = &resp
                call.base = start
                call.delta = 0
                v = _filters_run(core, c, chain, &call)
                # (A response step that waits needs a timer to wake the pair: the first
                # one brings it; none stops or answers yet.)
                _invariant(v == FILTER_CONTINUE, b"a response step stopped or answered")
                if call.delta != 0:
                    # The engine's own edit below works on the head as the steps left it.
                    rc = parse_response_head(f.buf + start, f.tail - start, &resp,
                                             &core.http_limits,
                                             <Method>c.pend_method[c.pend_first])
            if (resp.status >= 200 or resp.body == BODY_TUNNEL) and (
                    c.upgrade != UPGRADE_NONE or resp.body == BODY_TUNNEL):
                if _upgrade_answered(c, &resp, f.buf + start) != 0:
                    core.counters.http_bad_response += 1
                    if c.resp_fwd == 0:
                        _http_reply(core, c, 502, b"upgrade nobody asked for, or a "
                                    b"CONNECT answered as a message\n", -1)
                        return STATUS_CLOSE
                    return STATUS_RESET
            c.resp_status = resp.status
            if c.client_close and c.n_pend == 1 and resp.status >= 200:
                # The answer to the request that said close: the client learns that its
                # connection ends here (its upstream may well stay pooled).
                if f.head > 0:
                    memmove(f.buf, f.buf + f.head, f.tail - f.head)
                    f.tail -= f.head
                    start -= f.head
                    f.head = 0
                added = make_close(f.buf + start, f.tail - start,
                                   core.buffer_bytes - start, &resp)
                if added < 0:
                    return STATUS_RESET     # cannot happen: _u2d_cap keeps the room
                f.tail += <uint32_t>added
                rc += added
            if resp.fold_length:
                # RFC 9110 §8.6: a repeated Content-Length goes on as one (after
                # make_close, whose spans a fold would move).
                n = fold_response(f.buf + start, f.tail - start, &resp)
                f.tail -= <uint32_t>n
                rc -= <int>n
            if (resp.status >= 200 and c.pend_rule[c.pend_first] >= 0
                    and c.table.rules[c.pend_rule[c.pend_first]].n_response_edits > 0):
                rc = _response_edits(core, c, &resp, start)
                if rc < 0:
                    core.counters.http_bad_response += 1
                    if c.resp_fwd == 0:
                        _http_reply(core, c, 502, b"response head cannot be rewritten for "
                                    b"the client\n", -1)
                        return STATUS_CLOSE
                    return STATUS_RESET
            if resp.status >= 200 and c.pend_cookie != 0:
                added = _hash_set_cookie(core, c, start, <uint32_t>rc)
                if added < 0:
                    return STATUS_RESET     # cannot happen: _u2d_cap keeps the room
                rc += added
            c.resp_fwd += <uint32_t>rc
            c.resp_bytes += <uint32_t>rc
            if resp.status < 200 and resp.status != 101:
                continue                    # interim (100 Continue): the request waits
            if not resp.keep_alive:
                c.reusable = False
            if resp.body == BODY_LENGTH:
                c.resp_phase = RESP_LENGTH
                c.resp_left = resp.content_length
            elif resp.body == BODY_CHUNKED:
                c.resp_phase = RESP_CHUNKED
                chunk_init(&c.resp_chunk, &core.http_limits)
            else:
                # No body, or one until close / a tunnel: answered as of its head.
                _http_answered(core, c, resp.body == BODY_UNTIL_CLOSE)
                if resp.body == BODY_UNTIL_CLOSE:
                    c.resp_phase = RESP_CLOSE
                elif resp.body == BODY_TUNNEL:
                    c.resp_phase = RESP_TUNNEL
    if f.eof and c.resp_fwd == 0:
        if c.resp_phase == RESP_LENGTH or c.resp_phase == RESP_CHUNKED:
            core.counters.http_bad_response += 1    # ended mid-body: do not pass as whole
            return STATUS_RESET
        if c.resp_phase == RESP_HEAD and (c.n_pend > 0 or f.head < f.tail):
            _outlier_status(core, c, 502)   # closed unanswered: Envoy's 5xx for a reset
            if _retry_wanted(core, c, 0):
                return STATUS_BACKOFF       # ended before answering the kept request
            if c.flags & CONN_INBOUND and c.flags & CONN_ANSWERED:
                # The app closed a connection it had kept alive as a request arrived
                # (the keep-alive race): end the pair without an answer, so the
                # caller's node may send an idempotent request again.
                return STATUS_CLOSE
            if c.flags & CONN_ANSWERED and not c.reusable:
                # An answer said close and the upstream did: the requests behind it
                # get no answer (none may follow a close), counted as cut off.
                return STATUS_CLOSE
            core.counters.http_bad_response += 1
            _http_reply(core, c, 502, b"upstream closed before responding\n", -1)
            return STATUS_CLOSE
    return STATUS_OK


cdef int64_t _http_u2d(Core* core, Conn* c, uint64_t* sent) noexcept nogil:
    """_flow() for an upstream's answers to an HTTP client: read, frame
    (_http_rframe), send only whole-framed bytes; the upstream's end reaches the client
    unless it was ended to switch services. The amount moved, or a status."""
    cdef Flow* f = &c.u2d
    cdef int64_t progress = 0
    cdef Py_ssize_t r
    cdef int st
    cdef uint32_t cap = _u2d_cap(core, c)
    while not f.eof:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                break
        if f.tail >= cap:
            if f.head == 0:
                break
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
            if f.tail >= cap:
                break               # filled before the room for `close` was kept
        r = _recv(&c.up, f.buf + f.tail, cap - f.tail)
        if r > 0:
            c.flags &= ~CONN_RETRYABLE  # an answer started: it is the client's now
            f.tail += <uint32_t>r
            progress += r
        elif r == STATUS_AGAIN:
            break
        elif c.flags & CONN_RETRYABLE:
            return STATUS_RETRY
        elif r == STATUS_EOF:
            f.eof = True
            progress += 1
        else:
            if c.n_pend > 0 and c.resp_phase == RESP_HEAD:
                _outlier_status(core, c, 502)   # reset unanswered (outlier.pxi)
            if _retry_wanted(core, c, 0):
                return STATUS_BACKOFF       # failed before answering the kept request
            if c.resp_phase == RESP_HEAD and c.n_pend > 0 and c.resp_fwd == 0 and f.buf != NULL and f.head == f.tail:
                core.counters.http_bad_response += 1
                _http_reply(core, c, 502, b"upstream connection failed\n", -1)
                return STATUS_CLOSE
            _up_failed(core, c)         # its end: what it sent before goes on (early.pxi)
            progress += 1
    st = _http_rframe(core, c)
    if st != STATUS_OK:
        return st
    if f.eof:
        _count_open_sizes(core, c)      # a body until the upstream's end is whole
    while c.resp_fwd > 0:
        r = _send(&c.down, f.buf + f.head, c.resp_fwd)
        if r > 0:
            f.head += <uint32_t>r
            c.resp_fwd -= <uint32_t>r
            progress += r
            sent[0] += <uint64_t>r
        elif r == STATUS_AGAIN:
            break
        else:
            c.flags |= CONN_CLIENT_GONE
            return STATUS_RESET
    # (Reads stop at `cap`; the lines the node adds to a head, `Connection: close` and a
    # route's response edits, go into the room kept above it.)
    _invariant(f.head + c.resp_fwd <= f.tail and f.tail <= core.buffer_bytes,
               b"http response framing out of the buffer")
    if f.buf != NULL and f.head == f.tail:
        _buf_put(core, f.buf)
        f.buf = NULL
        f.head = 0
        f.tail = 0
    if c.up_refused:
        st = _up_refused_done(c)        # (early.pxi)
        if st != STATUS_OK:
            return st
    if (f.eof and f.buf == NULL and not f.shut and not c.switching
            and c.resp_phase != RESP_LENGTH and c.resp_phase != RESP_CHUNKED
            and not _up_left_between(c)):
        # (An answer cut short is not passed on as a clean end: _http_rframe resets.)
        r = _shut(&c.down)
        if r == STATUS_OK:
            f.shut = True
            progress += 1
        elif r != STATUS_AGAIN:
            return STATUS_RESET
    return progress
