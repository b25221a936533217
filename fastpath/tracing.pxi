# tracing.pxi: Trace context on every HTTP request head, both ways: its x-request-id
# (made when it has none), and a span of its own in the trace its traceparent (W3C Trace
# Context) or B3 fields name, or in a new one, passed on as the next hop's parent; the
# span's ids kept in the request's access record (accesslog.pxi _access_traced).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# As Envoy's sidecars do with tracing on. Neither side is an edge (Istio's sidecars do
# not use the remote address), so each keeps an x-request-id it is given and makes a
# UUID4 only when there is none. Each side opens a span (outbound Istio's CLIENT span,
# inbound its SERVER one) and forwards traceparent with its own span id as the parent;
# a caller that sent B3 fields gets them rewritten alike; tracestate goes on unchanged.
# A traceparent that does not parse (W3C Trace Context §3.2: its length, version ff,
# anything but lowercase hex, an all-zero id), or comes twice, goes and a new trace
# begins. Only hex the engine drew, or checked as hex, is ever written: a caller cannot
# make the node emit bytes through an id. The usual hop (a traceparent and an
# x-request-id came) costs a scan of the field names and 18 bytes written in place; a
# head with no context gains two lines, in room kept for them (_TRACE_ROOM).

cdef enum:
    _TRACEPARENT_BYTES = 55         # version 00: "00-" 32 "-" 16 "-" 2
    _REQUEST_ID_BYTES = 36          # a UUID's text
    # The most the fields below add to one head: x-request-id (52), a traceparent
    # (70), B3's x-b3-traceid, x-b3-parentspanid and x-b3-sampled (102), rounded up.
    _TRACE_ROOM = 256

# The fields looked at, by the index their one line is kept under.
cdef enum:                          # the fields looked at (_trace_scan)
    _TF_REQUEST_ID = 0
    _TF_TRACEPARENT
    _TF_B3_TRACE
    _TF_B3_SPAN
    _TF_B3_PARENT
    _TF_B3_SAMPLED
    _TF_B3_FLAGS
    _TF_COUNT

cdef enum:
    _TF_NONE = -1
    _TF_TWICE = -2                  # named more than once

cdef const char* _HEX = b"0123456789abcdef"


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef uint64_t _trace_random(Core* core) noexcept nogil:
    """xoshiro256** (Blackman and Vigna): ids only need to be unlikely to meet, at no
    syscall per request; its state is seeded from the kernel (Engine.__cinit__)."""
    cdef uint64_t* s = core.trace_rng
    cdef uint64_t out = _rotl(s[1] * 5, 7) * 9
    cdef uint64_t t = s[1] << 17
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return out


cdef inline uint64_t _trace_nonzero(Core* core) noexcept nogil:
    """A span id: never all zeros, which W3C and B3 read as none."""
    cdef uint64_t x = _trace_random(core)
    return x if x != 0 else 1


cdef inline void _hex_put(char* out, uint64_t x, int digits) noexcept nogil:
    cdef int i
    for i in range(digits - 1, -1, -1):
        out[i] = _HEX[x & 15]
        x >>= 4


cdef bint _hex_get(const char* s, uint32_t n, uint64_t* out) noexcept nogil:
    """s[0:n] (n <= 16) as lowercase hex, the only case W3C allows (HEXDIGLC)."""
    cdef uint64_t x = 0
    cdef uint32_t i
    cdef char ch
    for i in range(n):
        ch = s[i]
        if c'0' <= ch <= c'9':
            x = (x << 4) | <uint64_t>(ch - c'0')
        elif c'a' <= ch <= c'f':
            x = (x << 4) | <uint64_t>(ch - c'a' + 10)
        else:
            return False
    out[0] = x
    return True


cdef bint _traceparent_parse(const char* v, uint32_t n, TraceIds* t) noexcept nogil:
    """W3C Trace Context §3.2: version-traceid-parentid-flags. A version above 00 (but
    ff) is read for its first four parts when more follows after a "-"; 00 is exactly
    55 bytes. False: treat it as absent."""
    cdef uint64_t version, flags
    if (n < _TRACEPARENT_BYTES or v[2] != c'-' or v[35] != c'-' or v[52] != c'-'
            or not _hex_get(v, 2, &version) or version == 0xff
            or (n > _TRACEPARENT_BYTES and (version == 0 or v[55] != c'-'))):
        return False
    if not (_hex_get(v + 3, 16, &t.trace_hi) and _hex_get(v + 19, 16, &t.trace_lo)
            and _hex_get(v + 36, 16, &t.parent) and _hex_get(v + 53, 2, &flags)):
        return False
    if t.trace_hi == 0 and t.trace_lo == 0 or t.parent == 0:
        return False
    t.flags = TRACE_SAMPLED if flags & 1 else 0
    return True


cdef enum:
    _B3_NONE = 0                    # absent, or not well formed: not read
    _B3_DECIDED = 1                 # read, with its sampling decision
    _B3_UNDECIDED = 2               # read, the decision left to this side


cdef int _b3_parse(const char* head, const Field* fields, const int32_t* at,
                   TraceIds* t) noexcept nogil:
    """B3's multiple fields (openzipkin/b3-propagation): x-b3-traceid (16 or 32 hex) and
    x-b3-spanid (16 hex), each once; x-b3-flags "1" (debug) samples it, x-b3-sampled
    decides (_b3_accepts); with neither the decision is this side's."""
    cdef const Field* f
    if at[_TF_B3_TRACE] < 0 or at[_TF_B3_SPAN] < 0:
        return _B3_NONE
    f = &fields[at[_TF_B3_TRACE]]
    t.trace_hi = 0
    if f.value.len == 32:
        if not (_hex_get(head + f.value.off, 16, &t.trace_hi)
                and _hex_get(head + f.value.off + 16, 16, &t.trace_lo)):
            return _B3_NONE
    elif f.value.len != 16 or not _hex_get(head + f.value.off, 16, &t.trace_lo):
        return _B3_NONE
    f = &fields[at[_TF_B3_SPAN]]
    if (f.value.len != 16 or not _hex_get(head + f.value.off, 16, &t.parent)
            or t.parent == 0 or t.trace_hi == 0 and t.trace_lo == 0):
        return _B3_NONE
    t.flags = TRACE_B3
    if at[_TF_B3_FLAGS] >= 0 and _field_is(head, &fields[at[_TF_B3_FLAGS]], b"1", 1):
        t.flags |= TRACE_SAMPLED
        return _B3_DECIDED
    if at[_TF_B3_SAMPLED] < 0:
        return _B3_UNDECIDED
    if _b3_accepts(head, &fields[at[_TF_B3_SAMPLED]]):
        t.flags |= TRACE_SAMPLED
    return _B3_DECIDED


cdef inline bint _b3_accepts(const char* head, const Field* f) noexcept nogil:
    """Does x-b3-sampled accept the trace? "1"; also "true", which tracers older than
    the B3 spec wrote (it lets readers take it: Envoy's and OpenTelemetry's do), and
    the single header's debug "d". Any other value denies, as in Envoy: the caller's
    trace is still joined (it goes on as "0"), not left behind with a new trace's
    traceparent beside its B3 fields."""
    return (_field_is(head, f, b"1", 1) or _field_is(head, f, b"true", 4)
            or _field_is(head, f, b"d", 1))


cdef inline bint _field_is(const char* head, const Field* f, const char* text,
                           uint32_t n) noexcept nogil:
    return f.value.len == n and memcmp(head + f.value.off, text, n) == 0


cdef int _trace_field(const char* name, uint32_t n) noexcept nogil:
    """Which of the fields looked at a field name is (-1: none): names compared by
    length first, so most fields cost one comparison."""
    if n == 11:
        if _lower_eq(name, b"traceparent", 11):
            return _TF_TRACEPARENT
        if _lower_eq(name, b"x-b3-spanid", 11):
            return _TF_B3_SPAN
    elif n == 12:
        if _lower_eq(name, b"x-request-id", 12):
            return _TF_REQUEST_ID
        if _lower_eq(name, b"x-b3-traceid", 12):
            return _TF_B3_TRACE
        if _lower_eq(name, b"x-b3-sampled", 12):
            return _TF_B3_SAMPLED
    elif n == 17:
        if _lower_eq(name, b"x-b3-parentspanid", 17):
            return _TF_B3_PARENT
    elif n == 10:
        if _lower_eq(name, b"x-b3-flags", 10):
            return _TF_B3_FLAGS
    return -1


cdef void _trace_scan(const char* head, const ReqHead* req, int32_t* at) noexcept nogil:
    """at[k]: the index of the one field of kind k, _TF_NONE or _TF_TWICE."""
    cdef uint32_t i
    cdef int k
    for k in range(_TF_COUNT):
        at[k] = _TF_NONE
    for i in range(req.header_count):
        k = _trace_field(head + req.headers[i].name.off, req.headers[i].name.len)
        if k >= 0:
            at[k] = <int32_t>i if at[k] == _TF_NONE else _TF_TWICE


cdef bint _trace_context(Core* core, const Conn* c, const char* head, const ReqHead* req,
                         const int32_t* at, TraceIds* t) noexcept nogil:
    """t: the caller's trace (its traceparent, else its B3 fields) with this side's
    new span under the caller's, or a new trace, sampled per the table. True when the
    traceparent was read (it is then rewritten, not replaced)."""
    cdef TraceIds b3
    cdef const Field* f
    cdef bint read = False
    cdef bint decided
    cdef int b3_read
    if at[_TF_TRACEPARENT] >= 0:
        f = &req.headers[at[_TF_TRACEPARENT]]
        read = _traceparent_parse(head + f.value.off, f.value.len, t)
    if at[_TF_TRACEPARENT] != _TF_NONE and not read:
        core.counters.trace_malformed += 1
    b3_read = _b3_parse(head, req.headers, at, &b3)
    decided = read
    if b3_read != _B3_NONE:
        if not read:
            t[0] = b3
            decided = b3_read == _B3_DECIDED
        t.flags |= TRACE_B3
    if read or b3_read != _B3_NONE:
        core.counters.trace_joined += 1
        t.flags |= TRACE_JOINED
    else:
        t.trace_hi = _trace_random(core)
        t.trace_lo = _trace_nonzero(core)
        t.parent = 0
        t.flags = 0
        core.counters.trace_started += 1
    if not decided and _trace_random(core) % 10000 < c.table.trace_sample:
        t.flags |= TRACE_SAMPLED
    t.span = _trace_nonzero(core)
    t.flags |= TRACE_ON
    return read


cdef void _request_id_text(Core* core, char* out) noexcept nogil:
    """A UUID4's text (RFC 9562 §5.4: version 4, variant 10), as Envoy makes them."""
    cdef uint64_t a = (_trace_random(core) & ~<uint64_t>0xF000) | 0x4000
    cdef uint64_t b = (_trace_random(core) & <uint64_t>0x3FFFFFFFFFFFFFFF) | (<uint64_t>1 << 63)
    _hex_put(out, a >> 32, 8)
    out[8] = c'-'
    _hex_put(out + 9, (a >> 16) & 0xFFFF, 4)
    out[13] = c'-'
    _hex_put(out + 14, a & 0xFFFF, 4)
    out[18] = c'-'
    _hex_put(out + 19, b >> 48, 4)
    out[23] = c'-'
    _hex_put(out + 24, b & <uint64_t>0xFFFFFFFFFFFF, 12)


cdef void _traceparent_text(const TraceIds* t, char* out) noexcept nogil:
    """Version 00 naming this side's span as the next hop's parent."""
    memcpy(out, b"00-", 3)
    _hex_put(out + 3, t.trace_hi, 16)
    _hex_put(out + 19, t.trace_lo, 16)
    out[35] = c'-'
    _hex_put(out + 36, t.span, 16)
    out[52] = c'-'
    out[53] = c'0'
    out[54] = c'1' if t.flags & TRACE_SAMPLED else c'0'


cdef inline bint _in_place(const int32_t* at, int k, const ReqHead* req, uint32_t n) noexcept nogil:
    """Is field k there once, its value n bytes (so it is rewritten where it lies)?"""
    return at[k] >= 0 and req.headers[at[k]].value.len == n


cdef inline void _trace_drop(Flow* f, uint32_t base, ReqHead* req, const char* name,
                             uint32_t n, Core* core) noexcept nogil:
    """Every line named `name` goes (a malformed or repeated one); the head is parsed
    again for the next edit (it only lost lines, so it parses)."""
    f.tail -= drop_named(f.buf + base, f.tail - base, req.headers, req.header_count, name, n)
    parse_request_head(f.buf + base, f.tail - base, req, &core.http_limits)


cdef int _trace_request(Core* core, Conn* c, ReqHead* req, uint32_t base,
                        int64_t* delta) noexcept nogil:
    """The request head at d2u.buf + base, as its steps and route left it (`delta`: its
    change in length since req was parsed, folded in here): its trace context for the
    next hop, its span (and an x-request-id made for it) in its access record
    (_access_traced). STATUS_OK; or STATUS_RESET (431) when the lines it needs do not
    fit the buffer or the parser's limits (past _trace_wait, only a head at the
    buffer's start with edits of its route's that took the room)."""
    cdef Flow* f = &c.d2u
    cdef TraceIds trace
    cdef const TraceIds* t = &trace
    cdef int32_t at[_TF_COUNT]
    cdef char request_id[_REQUEST_ID_BYTES]
    cdef char parent[_TRACEPARENT_BYTES]
    cdef char span_hex[16]
    cdef char up_hex[16]
    cdef char trace_hex[32]
    cdef char sampled
    cdef char* v
    cdef bint add_id, add_parent
    cdef int b3_add = 0
    cdef uint32_t need = 0, lines = 0, head_len
    if delta[0] != 0:
        if parse_request_head(f.buf + base, f.tail - base, req, &core.http_limits) <= 0:
            return STATUS_RESET
        delta[0] = 0
    _trace_scan(f.buf + base, req, at)
    add_parent = not _trace_context(core, c, f.buf + base, req, at, &trace)
    _hex_put(span_hex, t.span, 16)
    _hex_put(up_hex, t.parent, 16)
    _hex_put(trace_hex, t.trace_hi, 16)
    _hex_put(trace_hex + 16, t.trace_lo, 16)
    sampled = c'1' if t.flags & TRACE_SAMPLED else c'0'
    # Rewritten where they lie: no byte moves (the usual hop).
    if not add_parent and _in_place(at, _TF_TRACEPARENT, req, _TRACEPARENT_BYTES):
        v = f.buf + base + req.headers[at[_TF_TRACEPARENT]].value.off
        v[0] = c'0'
        v[1] = c'0'
        memcpy(v + 36, span_hex, 16)
        v[53] = c'0'
        v[54] = sampled
    else:
        add_parent = True
    if t.flags & TRACE_B3:
        b3_add = _b3_rewrite(f.buf + base, req, at, t, trace_hex, span_hex, up_hex, sampled)
    # Replaced: malformed, repeated or another version's length (rare: each costs a parse).
    if add_parent and at[_TF_TRACEPARENT] != _TF_NONE:
        _trace_drop(f, base, req, b"traceparent", 11, core)
    if b3_add & _ADD_B3_TRACE:
        _trace_drop(f, base, req, b"x-b3-traceid", 12, core)
    if b3_add & _ADD_B3_PARENT and at[_TF_B3_PARENT] != _TF_NONE:
        _trace_drop(f, base, req, b"x-b3-parentspanid", 17, core)
    if b3_add & _ADD_B3_SAMPLED and at[_TF_B3_SAMPLED] != _TF_NONE:
        _trace_drop(f, base, req, b"x-b3-sampled", 12, core)
    add_id = at[_TF_REQUEST_ID] == _TF_NONE
    if add_id:
        _request_id_text(core, request_id)
    # Its record's: read from the head as it now is (an added line is not in req).
    _access_traced(core, c, req, f.buf + base, t, <char*>request_id if add_id else NULL)
    need = ((14 + _REQUEST_ID_BYTES + 2 if add_id else 0)
            + (13 + _TRACEPARENT_BYTES + 2 if add_parent else 0)
            + (14 + 32 + 2 if b3_add & _ADD_B3_TRACE else 0)
            + (19 + 16 + 2 if b3_add & _ADD_B3_PARENT else 0)
            + (14 + 1 + 2 if b3_add & _ADD_B3_SAMPLED else 0))
    lines = (<uint32_t>add_id + <uint32_t>add_parent + <uint32_t>(b3_add & _ADD_B3_TRACE != 0)
             + <uint32_t>(b3_add & _ADD_B3_PARENT != 0) + <uint32_t>(b3_add & _ADD_B3_SAMPLED != 0))
    if lines == 0:
        return STATUS_OK
    if (f.tail + need > core.buffer_bytes
            or req.header_count + lines > core.http_limits.max_headers
            or req.head_len + need > core.http_limits.max_head_bytes):
        core.counters.trace_no_room += 1
        return STATUS_RESET
    head_len = req.head_len
    if add_id:
        head_len += _trace_add(core, f, base, head_len, b"x-request-id", 12, request_id,
                               _REQUEST_ID_BYTES)
        core.counters.request_ids_made += 1
    if add_parent:
        _traceparent_text(t, parent)
        head_len += _trace_add(core, f, base, head_len, b"traceparent", 11, parent,
                               _TRACEPARENT_BYTES)
    if b3_add & _ADD_B3_TRACE:
        head_len += _trace_add(core, f, base, head_len, b"x-b3-traceid", 12, trace_hex, 32)
    if b3_add & _ADD_B3_PARENT:
        head_len += _trace_add(core, f, base, head_len, b"x-b3-parentspanid", 17, up_hex, 16)
    if b3_add & _ADD_B3_SAMPLED:
        head_len += _trace_add(core, f, base, head_len, b"x-b3-sampled", 12, &sampled, 1)
    delta[0] = <int64_t>head_len - <int64_t>req.head_len
    return STATUS_OK


cdef enum:                          # the B3 lines _b3_rewrite could not rewrite in place
    _ADD_B3_TRACE = 1
    _ADD_B3_PARENT = 2
    _ADD_B3_SAMPLED = 4


cdef int _b3_rewrite(char* head, const ReqHead* req, const int32_t* at, const TraceIds* t,
                     const char* trace_hex, const char* span_hex, const char* up_hex,
                     char sampled) noexcept nogil:
    """The caller's B3 fields rewritten where they lie to name this side's span in t's
    trace; the lines that must be replaced instead (_ADD_B3_*). Its trace id is
    written too: when a traceparent came with B3 fields of another trace, the
    traceparent's was joined, and the B3 fields passed on must name the same span in
    the same trace (a 16-hex id is kept 16 when that trace's upper half is zero)."""
    cdef const Field* f = &req.headers[at[_TF_B3_TRACE]]
    cdef int add = 0
    if f.value.len == 32:
        memcpy(head + f.value.off, trace_hex, 32)
    elif t.trace_hi == 0:
        memcpy(head + f.value.off, trace_hex + 16, 16)
    else:
        add |= _ADD_B3_TRACE
    memcpy(head + req.headers[at[_TF_B3_SPAN]].value.off, span_hex, 16)
    if _in_place(at, _TF_B3_PARENT, req, 16):
        memcpy(head + req.headers[at[_TF_B3_PARENT]].value.off, up_hex, 16)
    else:
        add |= _ADD_B3_PARENT
    if _in_place(at, _TF_B3_SAMPLED, req, 1):
        head[req.headers[at[_TF_B3_SAMPLED]].value.off] = sampled
    else:
        add |= _ADD_B3_SAMPLED
    return add


cdef inline uint32_t _trace_add(Core* core, Flow* f, uint32_t base, uint32_t head_len,
                                const char* name, uint32_t n, const char* value,
                                uint32_t value_len) noexcept nogil:
    """One line before the head's final CRLF (room checked: _trace_request)."""
    cdef int added = add_field(f.buf + base, head_len, f.tail - base, core.buffer_bytes - base,
                               name, n, value, value_len)
    _invariant(added > 0, b"a trace field did not fit after the room check")
    f.tail += <uint32_t>added
    return <uint32_t>added


cdef inline uint32_t _trace_room(const Conn* c, const ReqHead* req) noexcept nogil:
    """Bytes a head of pair c may gain past its wait: its steps' fields (inbound), its
    route's edits (outbound), and the trace fields."""
    if c.flags & CONN_INBOUND:
        return c.head_reserve + _TRACE_ROOM
    return _edits_room(c, req) + _TRACE_ROOM


cdef inline bint _trace_wait(Core* core, const Conn* c, const ReqHead* req,
                             uint32_t base) noexcept nogil:
    """Must the head at d2u.buf + base wait until the bytes before it are sent and moved
    away, for room for what it may gain (_trace_room)? Asked with _edits_wait, before
    its steps run, so that nothing of it is taken twice. A head at the buffer's start
    never waits (the buffer's cap kept the room: _d2u_cap)."""
    return base != 0 and c.d2u.tail + _trace_room(c, req) > core.buffer_bytes


# --- the table's part (with the GIL) ------------------------------------------------------------

def _trace_sample_of(percent) -> int:
    """Mesh spec.tracing.sampling (a percentage, 0.01 precision, as Istio's) in the
    engine's per-10000."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError("sampling must be 0..100 percent, not %r" % (percent,))
    return int(round(percent * 100))
