# accesslog.pxi: Access records: what each HTTP request and each opaque pair was, written
# into a ring the worker drains (one record per answer, or per pair at its close).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# The engine thread is the ring's only producer and the worker's reader its only
# consumer (Engine.access_records): a record is whole before access_in moves past it
# (a release store), and a slot is written again only after access_out moved past it.
# Per request the cost is a draw, copies of a few texts of the head into a head kept
# from Core.access_heads, and at the answer one memcpy into the ring: no allocation,
# no lock, nothing formatted. Full (or no head free), the record is dropped and counted,
# never waited for. A request's bytes are its sizes (Istio's request_bytes and
# response_bytes, Conn.pend_req_bytes and resp_bytes: its head and body as the client
# sent them, its answer as framed for the client; an answer the engine makes itself
# counts none); an opaque pair's, all its client's both ways (Side.bytes_in/out).
#
# A tap under way (Engine.set_tap, meshnode.tap) wants every record whatever the access
# log's sampling and filter: a record says whom it is for (AccessHead.drawn), and the
# worker matches the tap's filters off this thread, so the engine's cost stays one load.
#
# A request's record carries its span's ids (tracing.pxi), and is also how a sampled
# span reaches telemetry's exporter: a request the access log's sampling or filter
# left out still gets a record when its span is sampled and spans are exported
# (RouteTable.set_tracing; ACCESS_DRAWN_SPAN). Tracing alone thus costs a head and a
# record for its sampled requests only.

cdef inline uint8_t _access_drawn(Core* core, const Table* t) noexcept nogil:
    """Whom the next request's (or pair's) record is for (AccessDrawn; 0: nobody): the
    access log when the table's sampling keeps it, a tap when one is under way."""
    cdef uint8_t drawn = ACCESS_DRAWN_TAP if mn_load_u32(&core.access_tap) else 0
    if t == NULL or not t.access_on:
        return drawn
    if t.access_sample >= 10000 or _route_random(core) % 10000 < t.access_sample:
        drawn |= ACCESS_DRAWN_LOG
    return drawn


cdef inline AccessHead* _access_head(Core* core, int32_t slot) noexcept nogil:
    return &core.access_heads[slot - 1] if slot > 0 else NULL


cdef inline void _access_put(Core* core, int32_t slot) noexcept nogil:
    """Give a head (index + 1; 0 or -1: none) back to the free list."""
    if slot > 0:
        core.access_heads[slot - 1].next_free = core.access_free
        core.access_free = slot


cdef uint32_t _access_text(char* dst, uint32_t cap, const char* src, uint32_t n,
                           uint8_t* cut, uint8_t bit) noexcept nogil:
    """Copy at most `cap` bytes of src; flag `bit` in cut when more was there. The
    length copied."""
    if n > cap:
        n = cap
        cut[0] |= bit
    memcpy(dst, src, n)
    return n


cdef void _access_fields(AccessHead* h, const char* head, const ReqHead* req) noexcept nogil:
    """x-request-id and traceparent, as the client sent them (the first of each)."""
    cdef uint32_t i
    cdef const Field* f
    cdef bint got_id = False
    cdef bint got_trace = False
    for i in range(req.header_count):
        f = &req.headers[i]
        if not got_id and f.name.len == 12 and _lower_eq(head + f.name.off, b"x-request-id", 12):
            h.id_len = <uint8_t>_access_text(h.request_id, ENGINE_ACCESS_ID_MAX, head + f.value.off,
                                    f.value.len, &h.cut, ACCESS_CUT_ID)
            got_id = True
        elif not got_trace and f.name.len == 11 and _lower_eq(head + f.name.off, b"traceparent", 11):
            h.trace_len = <uint8_t>_access_text(h.traceparent, ENGINE_ACCESS_TRACE_MAX, head + f.value.off,
                                       f.value.len, &h.cut, ACCESS_CUT_TRACE)
            got_trace = True


cdef void _access_begin(Core* core, Conn* c, const ReqHead* req, const char* head) noexcept nogil:
    """A request head is being framed (its path normalized, before its steps): keep what
    it says for its answer's record, if it is drawn. A head framed again after a wait
    keeps what it had."""
    cdef AccessHead* h
    cdef uint8_t drawn
    if c.acc_head != 0:
        return
    c.acc_head = -1
    drawn = _access_drawn(core, c.table)
    if drawn:
        h = _access_claim(core, c, req, head)
        if h != NULL:
            h.drawn = drawn
    else:
        # What authorization decides on it waits here, for a head its span may claim.
        c.acc_policy, c.acc_result, c.acc_audited = 0, ACCESS_NOT_JUDGED, 0


cdef AccessHead* _access_claim(Core* core, Conn* c, const ReqHead* req,
                               const char* head) noexcept nogil:
    """A free head for the request being framed, filled from what it says (NULL: none
    free, counted)."""
    cdef AccessHead* h
    cdef int32_t slot = core.access_free
    if slot != 0:
        core.access_free = core.access_heads[slot - 1].next_free
    elif core.access_fresh < ENGINE_ACCESS_HEADS:
        core.access_fresh += 1
        slot = <int32_t>core.access_fresh
    else:
        core.access_no_head += 1
        return NULL
    h = &core.access_heads[slot - 1]
    c.acc_head = slot
    h.start_ns = core.now_ns
    h.head_bytes = req.head_len
    h.cut = 0
    h.authz_policy = 0
    h.authz_result = ACCESS_NOT_JUDGED
    h.audited = 0
    h.trace.flags = 0
    h.version_minor = req.version_minor
    h.method_len = <uint8_t>_access_text(h.method, ENGINE_ACCESS_METHOD_MAX,
                                         head + req.method_span.off, req.method_span.len,
                                         &h.cut, 0)    # (no method is that long)
    h.path_len = <uint16_t>_access_text(h.path, ENGINE_ACCESS_PATH_MAX, head + req.path.off,
                                        req.path.len, &h.cut, ACCESS_CUT_PATH)
    h.authority_len = <uint16_t>_access_text(h.authority, ENGINE_ACCESS_AUTHORITY_MAX,
                                             head + req.authority.off, req.authority.len,
                                             &h.cut, ACCESS_CUT_AUTHORITY)
    h.id_len = 0
    h.trace_len = 0
    _access_fields(h, head, req)
    return h


cdef void _access_traced(Core* core, Conn* c, const ReqHead* req, const char* head,
                         const TraceIds* t, const char* made_id) noexcept nogil:
    """The request being framed has its span (tracing.pxi), and `made_id` the
    x-request-id made for it (NULL: it came with one): both go into its record, the id
    as forwarded. A sampled span is drawn for telemetry's exporter when spans are
    exported; a request nobody else drew gets a head for it, read from the head as its
    steps and route left it (a URLRewrite's path)."""
    cdef AccessHead* h = _access_head(core, c.acc_head)
    cdef bint span = t.flags & TRACE_SAMPLED and c.table.trace_spans
    if h == NULL:
        if not span:
            return
        h = _access_claim(core, c, req, head)
        if h == NULL:
            return
        h.drawn = 0
        h.authz_policy, h.authz_result, h.audited = c.acc_policy, c.acc_result, c.acc_audited
    if span:
        h.drawn |= ACCESS_DRAWN_SPAN
    h.trace = t[0]
    if made_id != NULL:
        memcpy(h.request_id, made_id, _REQUEST_ID_BYTES)
        h.id_len = _REQUEST_ID_BYTES


cdef inline void _access_pending(Conn* c, uint32_t i) noexcept nogil:
    """The head being framed went upstream as pending request i: its record waits there."""
    c.pend_acc[i] = c.acc_head
    c.acc_head = 0


cdef void _access_judged(Core* core, Conn* c, AuthzFigure* f, bint allowed,
                         bint audited) noexcept nogil:
    """Authorization decided on the request being framed (or the opaque pair): the
    figure it was counted under names the policy for the record."""
    cdef AccessHead* h = _access_head(core, c.acc_head)
    cdef uint16_t policy = <uint16_t>(f - core.authz + 1) if f != NULL else 0
    cdef uint8_t result = ACCESS_ALLOWED if allowed else ACCESS_DENIED
    if h != NULL:
        h.authz_policy, h.authz_result, h.audited = policy, result, audited
    else:
        c.acc_policy, c.acc_result, c.acc_audited = policy, result, audited


cdef AccessRecord* _access_slot(Core* core) noexcept nogil:
    """The ring's next slot, or NULL when the reader has not freed one (counted)."""
    if core.access_in - mn_load_u64(&core.access_out) >= core.access_ring_size:
        core.access_ring_full += 1
        return NULL
    return &core.access_ring[core.access_in & (core.access_ring_size - 1)]


cdef void _access_where(Core* core, Conn* c, AccessRecord* rec, bint own) noexcept nogil:
    """Who and where: the principals, the destination service and route, and the host
    the pair's upstream side is connected to (an endpoint node, or inbound the app),
    unless the engine answered itself (`own`: nothing of the request went there)."""
    cdef Table* t = c.table
    cdef const net.sockaddr_storage* addr = NULL
    cdef Service* svc
    cdef InboundRoute* ir
    cdef uint16_t route, version
    rec.principal = c.peer_principal
    rec.local = c.local_principal
    rec.inbound = (c.flags & CONN_INBOUND) != 0
    rec.plaintext = (c.flags & CONN_PLAINTEXT) != 0
    _figure_tags(core, c, &route, &version)
    rec.route = route if route != _TAG_FULL else 0
    rec.service = 0
    if c.flags & CONN_INBOUND:
        if c.flags & CONN_ROUTED and c.route < t.n_routes:
            ir = &t.routes[c.route]
            rec.service = _tag_of(core, &ir.service_tag, ir.service.data, ir.service.length)
            addr = &ir.app_addr
    elif (c.flags & CONN_SERVICE_KNOWN or not c.flags & CONN_HTTP) and c.service < t.n_services:
        svc = &t.services[c.service]
        rec.service = _tag_of(core, &svc.name_tag, svc.name.data, svc.name.length)
        if c.endpoint < svc.n_endpoints:
            addr = &svc.endpoints[c.endpoint].addr
    if rec.service == _TAG_FULL:
        rec.service = 0
    rec.upstream_family = 0
    if addr == NULL or c.up.fd < 0 or own:
        return
    if addr.ss_family == net.AF_INET:
        rec.upstream_family = 4
        memcpy(rec.upstream_addr, &(<net.sockaddr_in*>addr).sin_addr, 4)
        rec.upstream_port = net.htons((<net.sockaddr_in*>addr).sin_port)
    elif addr.ss_family == net.AF_INET6:
        rec.upstream_family = 6
        memcpy(rec.upstream_addr, &(<net.sockaddr_in6*>addr).sin6_addr, 16)
        rec.upstream_port = net.htons((<net.sockaddr_in6*>addr).sin6_port)


cdef inline uint16_t _own_answer_flags(int status) noexcept nogil:
    """Envoy's flag for an answer the engine made itself, by its code (a step that
    answers with a code of its own flags the pair before: Conn.acc_flags)."""
    if status == 404:
        return AFLAG_NR
    if status == 503:
        return AFLAG_UF
    if status == 504:
        return AFLAG_UT
    if status == 502:
        return AFLAG_UC
    if status == 400 or status == 413 or status == 414 or status == 431 or status == 501 or status == 505:
        return AFLAG_DPE
    return 0


cdef void _access_answer(Core* core, Conn* c, int status, bint own) noexcept nogil:
    """The request the pair answers now (the oldest pending one, else the head being
    framed) got its answer, `status` (0: none reached the client), made by the engine
    when `own`: its record goes into the ring, if it was drawn and passes the filter."""
    cdef int32_t slot
    cdef AccessHead* h
    cdef AccessRecord* rec
    cdef uint16_t flags = c.acc_flags
    cdef uint64_t received = 0
    cdef uint64_t sent = 0
    cdef uint8_t drawn
    c.acc_flags = 0
    if c.flags & CONN_MIRROR:
        return                          # a mirror's copy: its answer goes nowhere
    if c.n_pend > 0:
        slot = c.pend_acc[c.pend_first]
        c.pend_acc[c.pend_first] = 0
        received = c.pend_req_bytes[c.pend_first]
        sent = c.resp_bytes
    else:
        slot = c.acc_head
        c.acc_head = 0
    h = _access_head(core, slot)
    drawn = h.drawn if h != NULL else (_access_drawn(core, c.table) if slot == 0 else 0)
    if not drawn:
        return                          # not drawn (or no head was free: counted)
    if status == 0:
        flags |= AFLAG_DC
    elif own and flags == 0:
        flags = _own_answer_flags(status)
    if status < c.table.access_min_status and flags == 0:
        drawn &= ~ACCESS_DRAWN_LOG      # the access log's filter leaves it out
    if not drawn:
        _access_put(core, slot)
        return
    rec = _access_slot(core)
    if rec == NULL:
        _access_put(core, slot)
        return
    if h != NULL:
        memcpy(&rec.head, h, sizeof(AccessHead))
        if c.n_pend == 0:
            received = h.head_bytes     # answered before it went on: its head came
    else:
        # A head that did not parse (400, 431 …) or never came whole (408): its answer only.
        memset(&rec.head, 0, sizeof(AccessHead))
        rec.head.start_ns = core.now_ns
    rec.head.drawn = drawn
    _access_put(core, slot)
    rec.kind = ACCESS_HTTP
    rec.status = <uint16_t>status
    rec.flags = flags
    rec.duration_ns = core.now_ns - rec.head.start_ns
    rec.received = received
    rec.sent = sent
    _access_where(core, c, rec, own)
    mn_store_u64(&core.access_in, core.access_in + 1)


cdef void _access_closing(Core* core, Conn* c) noexcept nogil:
    """A pair closes: an opaque one's record (HTTP pairs had one per request); the head
    it was framing goes back."""
    cdef AccessRecord* rec
    cdef uint16_t flags = c.acc_flags
    cdef uint8_t drawn
    _access_put(core, c.acc_head)
    c.acc_head = 0
    c.acc_flags = 0
    if c.flags & (CONN_HTTP | CONN_MIRROR):
        return
    drawn = _access_drawn(core, c.table)
    if c.table.access_min_status != 0 and flags == 0 and c.acc_result != ACCESS_DENIED:
        drawn &= ~ACCESS_DRAWN_LOG      # errors only: a pair refused or flagged
    if not drawn:
        return
    rec = _access_slot(core)
    if rec == NULL:
        return
    memset(&rec.head, 0, sizeof(AccessHead))
    rec.head.start_ns = c.opened_ns
    rec.head.authz_policy = c.acc_policy
    rec.head.authz_result = c.acc_result
    rec.head.audited = c.acc_audited
    rec.head.drawn = drawn
    rec.kind = ACCESS_TCP
    rec.status = 0
    rec.flags = flags
    rec.duration_ns = core.now_ns - c.opened_ns
    rec.received = c.down.bytes_in
    rec.sent = c.down.bytes_out
    _access_where(core, c, rec, False)
    mn_store_u64(&core.access_in, core.access_in + 1)
