# mirror.pxi: HTTPRoute RequestMirror: a copy of a request, as the route edited it, sent
# to a mirror backend over its own mTLS connection; the mirror's answer is read and
# dropped, and nothing the mirror does reaches the client or its request.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# A copy is a Conn of its own (CONN_MIRROR) with only an `up` side: it connects, does
# the handshake, checks the mirror's identity, resumes sessions and takes or gives back
# pooled upstreams exactly as a client pair's upstream does (endpoint.pxi), and its
# timer is on the same wheel. Its slots lie after the max_conns the budgets share out
# (Core.max_mirrors): a mirror never takes a caller's slot. Its request bytes live in
# one pooled buffer (d2u): the head is copied when the client's request is framed
# (http_stream.pxi _http_framed), its body as each part is framed for the real
# upstream (_http_frame), and sent to the mirror as soon as the copy's connection can
# take it. Nothing waits for the copy: when its buffer is full (a slow or not yet
# connected mirror), it cannot connect, or its time is up, the copy is given up and
# counted (http_mirror_dropped); a copy sent whole counts in http_mirrored. Its answer
# is framed only to know where it ends (so that the connection can go back to the
# pool), in the copy's own buffer (u2d), and dropped.
#
# As Envoy's request_mirror_policies: the copy's Host gets "-shadow" after its host
# name (before any port), the choice of percent/fraction is made per request, and an
# Upgrade or CONNECT is not mirrored (a tunnel cannot be copied to two places).
#
# A copy's life:
#
#   FEEDING ─the client's body framed to its end─► WHOLE ─every byte sent─► SENT
#      │                                            │                         │
#      └─ buffer full, client pair gone, setup failed, time up ─► dropped     └─ answer
#         (any state but SENT: counted in http_mirror_dropped)                  read:
#                                                                               pooled
#                                                                               or closed

cdef enum MirrorState:
    MIRROR_FEEDING = 0             # its request's body is still being framed
    MIRROR_WHOLE                   # the whole request is in its buffer or sent
    MIRROR_SENT                    # every byte of it went to the mirror: it counts


cdef inline Conn* _mirror_of(Core* core, Conn* c, uint32_t k) noexcept nogil:
    """The copy c.mirror_slot[k] still names (NULL: given up since; its slot may be
    another's now)."""
    cdef Conn* m = &core.conns[c.mirror_slot[k]]
    if m.state == CONN_FREE or not m.flags & CONN_MIRROR or m.serial != c.mirror_serial[k]:
        return NULL
    return m


cdef uint32_t _shadow_host(Core* core, Conn* m) noexcept nogil:
    """Add "-shadow" to the Host of the copy's head (m.d2u.buf[0:tail], room for it
    kept): after the host name, before a port ("svc:8080" -> "svc-shadow:8080"), as
    Envoy names a shadow's authority. Returns the bytes added (0: no Host)."""
    cdef ReqHead req
    cdef char* b = m.d2u.buf
    cdef uint32_t off, n, at
    if parse_request_head(b, m.d2u.tail, &req, &core.http_limits) <= 0 or req.host_index < 0:
        return 0
    off = req.headers[req.host_index].value.off
    n = req.headers[req.host_index].value.len
    at = 0
    if n > 0 and b[off] == c'[':
        while at < n and b[off + at] != c']':      # an IPv6 literal: its colons are not a port
            at += 1
        if at < n:
            at += 1
    while at < n and b[off + at] != c':':
        at += 1
    at += off
    memmove(b + at + ENGINE_SHADOW_SUFFIX_BYTES, b + at, m.d2u.tail - at)
    memcpy(b + at, b"-shadow", ENGINE_SHADOW_SUFFIX_BYTES)
    m.d2u.tail += ENGINE_SHADOW_SUFFIX_BYTES
    return ENGINE_SHADOW_SUFFIX_BYTES


cdef int _mirror_dial(Core* core, Conn* m) noexcept nogil:
    """Give the copy an upstream to its service: a pooled one of the endpoint the
    balancer picks, else a new connection (connect, then the mTLS handshake)."""
    cdef Service* svc = &m.table.services[m.service]
    cdef int64_t setup
    cdef int st
    _bind_endpoint(core, m, svc)
    if _pool_take(core, m, &svc.endpoints[m.endpoint]):
        core.counters.http_upstream_reused += 1
        return _enter_pipe(core, m)
    setup = core.now_ns + core.connect_timeout_ns
    _deadline_at(core, m, setup if setup < m.mirror_deadline_ns else m.mirror_deadline_ns)
    st = _connect(core, m, &svc.endpoints[m.endpoint].addr, svc.endpoints[m.endpoint].addrlen)
    if st == STATUS_OK:
        return _tls_client_start(core, m)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


cdef int _mirror_redial(Core* core, Conn* m) noexcept nogil:
    """The copy's setup failed on one endpoint (endpoint.pxi _fail_over): nothing of it
    was sent, so it goes to the service's next endpoint."""
    m.flags &= ~(CONN_TICKET_WAIT | CONN_OFFERED_SESSION)
    _side_close(&m.up, False)
    m.up.readable = True
    m.up.hup = False
    _up_forget(m)                       # events of the closed socket are not the next's
    return _mirror_dial(core, m)


cdef Conn* _mirror_open(Core* core, Conn* c, const RouteMirror* mr, const char* head,
                        uint32_t head_len, uint8_t method, bint whole) noexcept nogil:
    """A copy of the request whose (edited) head is head[0:head_len], for mirror `mr`
    of c's rule, on its way; NULL when it was given up (counted) or is done already."""
    cdef Service* svc = &c.table.services[mr.service]
    cdef RouteRule* rule = &c.table.rules[c.req_rule]
    cdef Conn* m
    cdef int st
    if (svc.n_endpoints == 0 or _outlier_none_healthy(core, svc)
            or core.mirrors_active >= core.max_mirrors
            or head_len + ENGINE_SHADOW_SUFFIX_BYTES > core.buffer_bytes
            or c.client_ctx == NULL):
        core.counters.http_mirror_dropped += 1
        return NULL
    m = _conn_new(core, c.table, CONN_MIRROR)
    if m == NULL:
        core.counters.http_mirror_dropped += 1
        return NULL
    core.mirrors_active += 1
    core.mirror_serial += 1
    m.serial = core.mirror_serial
    m.mirror_state = MIRROR_WHOLE if whole else MIRROR_FEEDING
    m.mirror_deadline_ns = core.now_ns + (rule.timeout_ns if rule.timeout_ns > 0 else
                                          <int64_t>ENGINE_MIRROR_TIMEOUT_MS * 1000000)
    m.service = mr.service
    m.client_ctx = c.client_ctx
    # Its ClientHello says the client's address, as the request's own upstream's does,
    # and it pools (and reuses) upstreams as that client's (caller_ext.pxi).
    memcpy(&m.peer_addr, &c.peer_addr, sizeof(net.sockaddr_storage))
    m.pend_method[0] = method
    m.d2u.buf = _buf_get(core)
    if m.d2u.buf == NULL:
        _conn_close(core, m, False)     # (counted dropped)
        return NULL
    memcpy(m.d2u.buf, head, head_len)
    m.d2u.tail = head_len
    _shadow_host(core, m)
    st = _mirror_dial(core, m)
    _settle(core, m, st)
    return NULL if m.state == CONN_FREE or m.serial != core.mirror_serial else m


cdef void _mirror_begin(Core* core, Conn* c, const ReqHead* req, const char* head,
                        uint32_t head_len) noexcept nogil:
    """A request of c's rule, which has RequestMirror filters, was framed: its head,
    as edited for the upstream, is head[0:head_len]; its body (c.req_phase) follows
    through _mirror_feed. Each mirror takes its copy with its own probability."""
    cdef RouteRule* rule = &c.table.rules[c.req_rule]
    cdef const RouteMirror* mr
    cdef bint whole = c.req_phase != REQ_LENGTH and c.req_phase != REQ_CHUNKED
    cdef uint32_t k
    cdef uint32_t n = rule.n_mirrors
    cdef Conn* m
    c.n_mirroring = 0
    if req.upgrade or req.method == METHOD_CONNECT:
        return
    if n > ENGINE_MIRRORS_MAX:
        n = ENGINE_MIRRORS_MAX          # (the table's build refuses more: a pair has no
                                        # more slots for copies, Conn.mirror_slot)
    for k in range(n):
        mr = &rule.mirrors[k]
        if (mr.numerator < mr.denominator
                and _route_random(core) % mr.denominator >= mr.numerator):
            continue
        m = _mirror_open(core, c, mr, head, head_len, <uint8_t>req.method, whole)
        if m != NULL and not whole:
            c.mirror_slot[c.n_mirroring] = m.index
            c.mirror_serial[c.n_mirroring] = m.serial
            c.n_mirroring += 1


cdef void _mirror_take(Core* core, Conn* m, const char* p, uint32_t n, bint last) noexcept nogil:
    """Append p[0:n] of the request's body to copy m, sending what its connection
    takes; the copy is given up when its buffer cannot hold the rest."""
    cdef Flow* f = &m.d2u
    cdef int st = STATUS_OK
    if m.state == CONN_PIPE and f.head < f.tail:
        st = _mirror_send(core, m)      # room first
    if st == STATUS_OK and n > 0:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            f.head = 0
            f.tail = 0
        if f.buf != NULL and f.head > 0 and core.buffer_bytes - f.tail < n:
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
        if f.buf == NULL or core.buffer_bytes - f.tail < n:
            st = STATUS_RESET           # the mirror is slower than the client: given up
        else:
            memcpy(f.buf + f.tail, p, n)
            f.tail += n
    if st == STATUS_OK and last:
        m.mirror_state = MIRROR_WHOLE
    if st == STATUS_OK and m.state == CONN_PIPE:
        st = _mirror_send(core, m)
    if st != STATUS_OK:
        _settle(core, m, st)


cdef void _mirror_feed(Core* core, Conn* c, const char* p, uint32_t n, bint last) noexcept nogil:
    """The next n framed bytes of the body of the request c's copies are for (`last`:
    its end)."""
    cdef uint32_t k
    cdef Conn* m
    for k in range(c.n_mirroring):
        m = _mirror_of(core, c, k)
        if m != NULL:
            _mirror_take(core, m, p, n, last)
    if last:
        c.n_mirroring = 0


cdef void _mirror_abort(Core* core, Conn* c) noexcept nogil:
    """c's request will not be framed to its end (the client pair closes): its copies
    are given up, cut short (RST). (A request routed again, _http_reroute, is not
    framed again: its copies go on.)"""
    cdef uint32_t k
    cdef Conn* m
    for k in range(c.n_mirroring):
        m = _mirror_of(core, c, k)
        if m != NULL:
            _conn_close(core, m, True)
    c.n_mirroring = 0


cdef void _mirror_closing(Core* core, Conn* c) noexcept nogil:
    """From _conn_close: a copy that goes unsent counts as dropped; a client pair's
    copies still being fed are given up."""
    if c.flags & CONN_MIRROR:
        if c.mirror_state != MIRROR_SENT:
            core.counters.http_mirror_dropped += 1
        core.mirrors_active -= 1
        c.mirror_state = MIRROR_SENT
    elif c.n_mirroring > 0:
        _mirror_abort(core, c)


cdef int _mirror_send(Core* core, Conn* m) noexcept nogil:
    """Write the copy's buffered bytes to the mirror; the copy counts once all of a
    whole request went."""
    cdef Flow* f = &m.d2u
    cdef Py_ssize_t r
    while f.buf != NULL and f.head < f.tail:
        r = _send(&m.up, f.buf + f.head, f.tail - f.head)
        if r > 0:
            f.head += <uint32_t>r
            core.counters.mirror.bytes_sent += <uint64_t>r
            m.active_ns = core.now_ns
        elif r == STATUS_AGAIN:
            break
        else:
            return STATUS_RESET
    if f.buf != NULL and f.head == f.tail:
        _buf_put(core, f.buf)
        memset(f, 0, sizeof(Flow))
    if f.buf == NULL and m.mirror_state == MIRROR_WHOLE:
        m.mirror_state = MIRROR_SENT
        core.counters.http_mirrored += 1
    return STATUS_OK


cdef int _mirror_frame(Core* core, Conn* m) noexcept nogil:
    """Drop what of the mirror's answer is in m.u2d, framing it: 1 once a final
    answer ended, 0 for more to come, STATUS_RESET for one that does not parse (or a
    head over a buffer)."""
    cdef Flow* f = &m.u2d
    cdef uint32_t avail
    cdef Py_ssize_t n
    cdef int rc
    cdef RespHead resp
    while f.head < f.tail:
        avail = f.tail - f.head
        if m.resp_phase == RESP_CLOSE:
            f.head = f.tail             # until the mirror ends
        elif m.resp_phase == RESP_LENGTH:
            n = avail if <int64_t>avail < m.resp_left else <Py_ssize_t>m.resp_left
            f.head += <uint32_t>n
            m.resp_left -= n
            if m.resp_left == 0:
                m.resp_phase = RESP_HEAD
                return 1
        elif m.resp_phase == RESP_CHUNKED:
            n = chunked_advance(&m.resp_chunk, f.buf + f.head, avail, NULL, NULL)
            if n < 0:
                return STATUS_RESET
            f.head += <uint32_t>n
            if m.resp_chunk.phase == CHUNK_DONE:
                m.resp_phase = RESP_HEAD
                return 1
            if n == 0:
                break
        else:
            rc = parse_response_head(f.buf + f.head, avail, &resp, &core.http_limits,
                                     <Method>m.pend_method[0])
            if rc == 0:
                if f.head == 0 and f.tail == core.buffer_bytes:
                    return STATUS_RESET
                break
            if rc < 0 or resp.body == BODY_TUNNEL:
                return STATUS_RESET
            f.head += <uint32_t>rc
            if resp.status < 200:
                continue                # interim (100 Continue): the answer follows
            if not resp.keep_alive:
                m.reusable = False
            if resp.body == BODY_LENGTH and resp.content_length > 0:
                m.resp_phase = RESP_LENGTH
                m.resp_left = resp.content_length
            elif resp.body == BODY_CHUNKED:
                m.resp_phase = RESP_CHUNKED
                chunk_init(&m.resp_chunk, &core.http_limits)
            elif resp.body == BODY_UNTIL_CLOSE:
                m.resp_phase = RESP_CLOSE
                m.reusable = False
            else:
                return 1
    if f.head > 0:
        memmove(f.buf, f.buf + f.head, f.tail - f.head)
        f.tail -= f.head
        f.head = 0
    return 0


cdef int _mirror_pump(Core* core, Conn* m) noexcept nogil:
    """A copy's connection is up (or moved): send what is buffered, read and drop the
    answer; once it ended after the whole request went, the upstream goes to its
    endpoint's pool (or is closed) and the copy is done (STATUS_CLOSE)."""
    cdef Flow* f = &m.u2d
    cdef Py_ssize_t r
    cdef int st
    cdef int done = 0
    if m.flags & CONN_TICKET_WAIT:
        _take_ticket(m)
    st = _mirror_send(core, m)
    if st != STATUS_OK:
        return st
    while done == 0:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                return STATUS_RESET
        r = _recv(&m.up, f.buf + f.tail, core.buffer_bytes - f.tail)
        if r == STATUS_AGAIN:
            break
        if r == STATUS_EOF:
            # Ended: an answer that ran until the end is whole; anything else is cut.
            return STATUS_CLOSE if m.resp_phase == RESP_CLOSE else STATUS_RESET
        if r < 0:
            return STATUS_RESET
        core.counters.mirror.bytes_received += <uint64_t>r
        m.active_ns = core.now_ns
        f.tail += <uint32_t>r
        done = _mirror_frame(core, m)
        if done < 0:
            core.counters.http_bad_response += 1
            return STATUS_RESET
    if m.flags & CONN_TICKET_WAIT:
        _take_ticket(m)
    if done == 0:
        if f.buf != NULL and f.tail == 0:
            _buf_put(core, f.buf)
            memset(f, 0, sizeof(Flow))
        return STATUS_OK
    if m.mirror_state != MIRROR_SENT:
        return STATUS_RESET             # answered before it had the whole request
    if m.reusable and f.head == f.tail:
        _load_release(core, m)
        _pool_put(core, m)
    return STATUS_CLOSE


cdef int _mirror_expired(Core* core, Conn* m) noexcept nogil:
    """The copy's timer fired: its setup (connect, handshake) took longer than
    connect_timeout_s (the next endpoint is tried) or its life is up (given up, even if
    sent whole: its answer is not worth the slot). STATUS_OK when nothing was due."""
    cdef int64_t now = core.now_ns
    if now >= m.mirror_deadline_ns:
        m.flags &= ~CONN_SETTING_UP
        if m.state != CONN_PIPE:
            core.counters.mirror.connect_timeouts += 1
        else:
            core.counters.mirror.idle_timeouts += 1
        return STATUS_RESET
    if m.state != CONN_PIPE and now >= m.deadline_ns:
        if m.state == CONN_CONNECTING:
            core.counters.mirror.connect_timeouts += 1
        else:
            core.counters.mirror.tls_handshake_timeouts += 1
        return STATUS_CLOSE             # (_settle: the next endpoint, while tries are left)
    return STATUS_OK


cdef int _mirrors_build(Table* t, list mirrors) except -1:
    """Each rule's RequestMirror filters (RouteTable.add_route_mirror) into its
    RouteRule; the checks were made as they were added."""
    cdef RouteRule* r
    per_rule = {}
    for rule_index, service_index, numerator, denominator in mirrors:
        per_rule.setdefault(rule_index, []).append((service_index, numerator, denominator))
    for rule_index, items in per_rule.items():
        if len(items) > ENGINE_MIRRORS_MAX:
            # (add_route_mirror refuses them first: Conn.mirror_slot has this many slots)
            raise ValueError("rule %d: more than %d RequestMirror filters"
                             % (rule_index, ENGINE_MIRRORS_MAX))
        r = &t.rules[rule_index]
        r.mirrors = <RouteMirror*>calloc(len(items), sizeof(RouteMirror))
        if r.mirrors == NULL:
            raise MemoryError()
        r.n_mirrors = len(items)
        for k, (service_index, numerator, denominator) in enumerate(items):
            r.mirrors[k].service = service_index
            r.mirrors[k].numerator = numerator
            r.mirrors[k].denominator = denominator
    return 0


cdef void _mirrors_free(Table* t) noexcept nogil:
    cdef uint32_t i
    if t.rules == NULL:
        return
    for i in range(t.n_rules):
        free(t.rules[i].mirrors)
        t.rules[i].mirrors = NULL


cdef tuple _mirror_checked(list rules, list mirrors, list services, int rule_index,
                           int service_index, long long numerator, long long denominator):
    """RouteTable.add_route_mirror()'s arguments, checked: a rule's mirror entry."""
    if not 0 <= rule_index < len(rules):
        raise ValueError("no rule %d (add_route_rule() first)" % rule_index)
    name = rules[rule_index][0].decode()
    if not 0 <= service_index < len(services):
        raise ValueError("rule %r: no mirror service %d" % (name, service_index))
    if not (1 <= denominator <= 0xFFFFFFFF and 0 <= numerator <= denominator):
        raise ValueError("rule %r: a mirror's fraction is numerator/denominator with "
                         "0 <= numerator <= denominator and denominator >= 1, not %d/%d"
                         % (name, numerator, denominator))
    entry = (rule_index, service_index, numerator, denominator)
    if _mirrors_over(rules, mirrors + [entry]):
        raise ValueError("rule %r: at most %d RequestMirror filters per rule (a backendRef "
                         "with filters of its own makes a variant of its rule, which takes "
                         "the rule's mirrors and its own)" % (name, ENGINE_MIRRORS_MAX))
    return entry


cdef int _mirror_add(RouteTable table, int rule_index, int service_index,
                     long long numerator, long long denominator) except -1:
    """RouteTable.add_route_mirror(): a mirror of rule `rule_index`, kept for
    _mirrors_build."""
    table._route_mirrors.append(_mirror_checked(
        table._route_rules, table._route_mirrors, table._services, rule_index,
        service_index, numerator, denominator))
    return 0


cdef list _mirrors_over(list rules, list mirrors):
    """The rules that would start more than ENGINE_MIRRORS_MAX copies of a request:
    counted as the table is built, each variant with its rule's mirrors
    (_with_variants)."""
    counts = {}
    for m in _with_variants(rules, mirrors):
        counts[m[0]] = counts.get(m[0], 0) + 1
    return [r for r, n in counts.items() if n > ENGINE_MIRRORS_MAX]
