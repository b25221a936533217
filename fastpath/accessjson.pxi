# Access records as JSON lines, formatted in C (Engine.access_lines).
#
# A worker logs every request by default, so what a record costs on its way to the file
# is paid per request: built as a Python dict, packed for the bus, unpacked and dumped
# by telemetry, it cost ~40 µs of CPU each (the sidecar-pair bench at half its req/s).
# Here the reader formats the ring's records straight into one buffer of JSON lines,
# without the GIL and without allocating per record, and the batch crosses the bus as
# bytes that telemetry appends to the file as they are. The fields and their order are
# Envoy's default JSON access log names (Istio's accessLogEncoding JSON); a field the
# record has no value for is null. Texts from the request (path, authority, ids) are
# escaped as JSON strings; a byte that is not part of valid UTF-8 becomes U+FFFD, as a
# decode with "replace" would.

cdef extern from "time.h" nogil:
    struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    ctypedef long time_t
    tm* gmtime_r(const time_t* timep, tm* result)

cdef extern from "arpa/inet.h" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)

DEF _AJ_FIXED = 1536               # a line's bytes besides its texts (names, numbers, time)

cdef struct JsonOut:
    char* buf
    size_t len
    size_t cap

cdef const char* _AJ_HEX = b"0123456789abcdef"


cdef inline void _aj_raw(JsonOut* w, const char* s, size_t n) noexcept nogil:
    memcpy(w.buf + w.len, s, n)
    w.len += n


cdef inline void _aj_lit(JsonOut* w, const char* s) noexcept nogil:
    _aj_raw(w, s, strlen(s))


cdef void _aj_u64(JsonOut* w, uint64_t v) noexcept nogil:
    cdef char digits[20]
    cdef int n = 0
    while True:
        digits[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n > 0:
        n -= 1
        w.buf[w.len] = digits[n]
        w.len += 1


cdef inline void _aj_pad(JsonOut* w, uint32_t v, int width) noexcept nogil:
    """v in `width` decimal digits, zero-padded (a timestamp's fields)."""
    cdef int i
    for i in range(width - 1, -1, -1):
        w.buf[w.len + i] = <char>(48 + v % 10)
        v //= 10
    w.len += width


cdef inline int _aj_utf8_len(const unsigned char* s, size_t n) noexcept nogil:
    """The length of the valid UTF-8 sequence s starts with (lead byte >= 0x80), 0 when
    it is not one (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF)."""
    cdef unsigned char b = s[0]
    cdef unsigned char lo = 0x80
    cdef unsigned char hi = 0xBF
    cdef int need, i
    if 0xC2 <= b <= 0xDF:
        need = 2
    elif 0xE0 <= b <= 0xEF:
        need = 3
        if b == 0xE0:
            lo = 0xA0
        elif b == 0xED:
            hi = 0x9F
    elif 0xF0 <= b <= 0xF4:
        need = 4
        if b == 0xF0:
            lo = 0x90
        elif b == 0xF4:
            hi = 0x8F
    else:
        return 0
    if <size_t>need > n or not (lo <= s[1] <= hi):
        return 0
    for i in range(2, need):
        if not (0x80 <= s[i] <= 0xBF):
            return 0
    return need


cdef void _aj_text(JsonOut* w, const char* text, size_t n) noexcept nogil:
    """text[0:n] escaped for a JSON string (no quotes)."""
    cdef const unsigned char* s = <const unsigned char*>text
    cdef size_t i = 0
    cdef unsigned char b
    cdef int k
    while i < n:
        b = s[i]
        if b == 34 or b == 92:
            w.buf[w.len] = 92
            w.buf[w.len + 1] = <char>b
            w.len += 2
        elif b < 0x20 or b == 0x7F:
            _aj_raw(w, b"\\u00", 4)
            w.buf[w.len] = _AJ_HEX[b >> 4]
            w.buf[w.len + 1] = _AJ_HEX[b & 15]
            w.len += 2
        elif b < 0x80:
            w.buf[w.len] = <char>b
            w.len += 1
        else:
            k = _aj_utf8_len(s + i, n - i)
            if k == 0:
                _aj_raw(w, b"\xef\xbf\xbd", 3)       # U+FFFD
                k = 1
            else:
                _aj_raw(w, text + i, k)
            i += k
            continue
        i += 1


cdef void _aj_str(JsonOut* w, const char* text, size_t n) noexcept nogil:
    """A JSON string of text[0:n], or null when n is 0 (the record has no value)."""
    if n == 0:
        _aj_raw(w, b"null", 4)
        return
    w.buf[w.len] = 34
    w.len += 1
    _aj_text(w, text, n)
    w.buf[w.len] = 34
    w.len += 1


cdef inline void _aj_name(JsonOut* w, const Name* names, uint32_t count, uint16_t i) noexcept nogil:
    if 0 < i < count:
        _aj_str(w, names[i].data, names[i].length)
    else:
        _aj_raw(w, b"null", 4)


cdef void _aj_time(JsonOut* w, int64_t wall_ns) noexcept nogil:
    """"YYYY-MM-DDTHH:MM:SS.mmmZ", Envoy's %START_TIME% in UTC."""
    cdef time_t secs = <time_t>(wall_ns // 1000000000)
    cdef tm t
    gmtime_r(&secs, &t)
    w.buf[w.len] = 34
    w.len += 1
    _aj_pad(w, <uint32_t>(t.tm_year + 1900), 4)
    w.buf[w.len] = 45
    w.len += 1
    _aj_pad(w, <uint32_t>(t.tm_mon + 1), 2)
    w.buf[w.len] = 45
    w.len += 1
    _aj_pad(w, <uint32_t>t.tm_mday, 2)
    w.buf[w.len] = 84
    w.len += 1
    _aj_pad(w, <uint32_t>t.tm_hour, 2)
    w.buf[w.len] = 58
    w.len += 1
    _aj_pad(w, <uint32_t>t.tm_min, 2)
    w.buf[w.len] = 58
    w.len += 1
    _aj_pad(w, <uint32_t>t.tm_sec, 2)
    w.buf[w.len] = 46
    w.len += 1
    _aj_pad(w, <uint32_t>(wall_ns // 1000000 % 1000), 3)
    _aj_raw(w, b"Z\"", 2)


cdef void _aj_flags(JsonOut* w, uint16_t flags) noexcept nogil:
    """Envoy's %RESPONSE_FLAGS%: the short names joined by ",", "-" for none."""
    cdef bint first = True
    cdef int i
    cdef uint16_t bits[9]
    cdef const char* names[9]
    bits[:] = [AFLAG_NR, AFLAG_UF, AFLAG_UT, AFLAG_UC, AFLAG_DC, AFLAG_RL, AFLAG_FI,
               AFLAG_OM, AFLAG_DPE]
    names[:] = [b"NR", b"UF", b"UT", b"UC", b"DC", b"RL", b"FI", b"OM", b"DPE"]
    w.buf[w.len] = 34
    w.len += 1
    for i in range(9):
        if flags & bits[i]:
            if not first:
                w.buf[w.len] = 44
                w.len += 1
            _aj_lit(w, names[i])
            first = False
    if first:
        w.buf[w.len] = 45
        w.len += 1
    w.buf[w.len] = 34
    w.len += 1


cdef void _aj_upstream(JsonOut* w, const AccessRecord* r) noexcept nogil:
    cdef char text[64]
    if r.upstream_family == 4:
        inet_ntop(net.AF_INET, r.upstream_addr, text, sizeof(text))
        w.buf[w.len] = 34
        w.len += 1
        _aj_lit(w, text)
    elif r.upstream_family == 6:
        inet_ntop(net.AF_INET6, r.upstream_addr, text, sizeof(text))
        _aj_raw(w, b"\"[", 2)
        _aj_lit(w, text)
        w.buf[w.len] = 93
        w.len += 1
    else:
        _aj_raw(w, b"null", 4)
        return
    w.buf[w.len] = 58
    w.len += 1
    _aj_u64(w, r.upstream_port)
    w.buf[w.len] = 34
    w.len += 1


cdef void _aj_record(JsonOut* w, Core* core, const AccessRecord* r, int64_t wall_offset_ns,
                     uint32_t n_principals, uint32_t n_tags, uint32_t n_authz) noexcept nogil:
    """One record as one JSON line (the caller made room for _aj_bound's bytes)."""
    cdef const AccessHead* h = &r.head
    cdef bint http = r.kind == ACCESS_HTTP
    cdef bint first = True
    cdef const AuthzFigure* f
    _aj_lit(w, b"{\"start_time\":")
    _aj_time(w, h.start_ns + wall_offset_ns)
    _aj_lit(w, b",\"method\":")
    _aj_str(w, h.method, h.method_len)
    _aj_lit(w, b",\"path\":")
    _aj_str(w, h.path, h.path_len)
    _aj_lit(w, b",\"protocol\":")
    if http and h.method_len:
        _aj_lit(w, b"\"HTTP/1.")
        _aj_u64(w, h.version_minor)
        w.buf[w.len] = 34
        w.len += 1
    else:
        _aj_raw(w, b"null", 4)
    _aj_lit(w, b",\"response_code\":")
    _aj_u64(w, r.status)
    _aj_lit(w, b",\"response_flags\":")
    _aj_flags(w, r.flags)
    _aj_lit(w, b",\"bytes_received\":")
    _aj_u64(w, r.received)
    _aj_lit(w, b",\"bytes_sent\":")
    _aj_u64(w, r.sent)
    _aj_lit(w, b",\"duration\":")
    _aj_u64(w, <uint64_t>(r.duration_ns // 1000000) if r.duration_ns > 0 else 0)
    _aj_lit(w, b",\"upstream_host\":")
    _aj_upstream(w, r)
    _aj_lit(w, b",\"upstream_cluster\":")
    if 0 < r.service < n_tags:
        _aj_lit(w, b"\"inbound|||" if r.inbound else b"\"outbound|||")
        _aj_text(w, core.tags[r.service].data, core.tags[r.service].length)
        w.buf[w.len] = 34
        w.len += 1
    else:
        _aj_raw(w, b"null", 4)
    _aj_lit(w, b",\"authority\":")
    _aj_str(w, h.authority, h.authority_len)
    _aj_lit(w, b",\"request_id\":")
    _aj_str(w, h.request_id, h.id_len)
    _aj_lit(w, b",\"traceparent\":")
    _aj_str(w, h.traceparent, h.trace_len)
    _aj_lit(w, b",\"route_name\":")
    _aj_name(w, core.tags, n_tags, r.route)
    # Envoy's %DOWNSTREAM_PEER_URI_SAN% and friends: inbound, the caller is the
    # downstream peer; outbound, the destination is the upstream peer.
    _aj_lit(w, b",\"downstream_peer_uri_san\":")
    _aj_name(w, core.principals, n_principals, r.principal if r.inbound else 0)
    _aj_lit(w, b",\"downstream_local_uri_san\":")
    _aj_name(w, core.principals, n_principals, r.local if r.inbound else 0)
    _aj_lit(w, b",\"upstream_peer_uri_san\":")
    _aj_name(w, core.principals, n_principals, 0 if r.inbound else r.principal)
    _aj_lit(w, b",\"upstream_local_uri_san\":")
    _aj_name(w, core.principals, n_principals, 0 if r.inbound else r.local)
    _aj_lit(w, b",\"reporter\":\"destination\"" if r.inbound else b",\"reporter\":\"source\"")
    _aj_lit(w, b",\"connection_security_policy\":")
    if r.inbound:
        _aj_lit(w, b"\"none\"" if r.plaintext else b"\"mutual_tls\"")
    else:
        _aj_raw(w, b"null", 4)
    _aj_lit(w, b",\"authorization_policy\":")
    if h.authz_result != ACCESS_NOT_JUDGED and 0 < h.authz_policy <= n_authz:
        f = &core.authz[h.authz_policy - 1]
        _aj_str(w, f.policy.data, f.policy.length)
    else:
        _aj_raw(w, b"null", 4)
    _aj_lit(w, b",\"authorization_result\":")
    if h.authz_result == ACCESS_NOT_JUDGED:
        _aj_raw(w, b"null", 4)
    else:
        _aj_lit(w, b"\"allow\"" if h.authz_result == ACCESS_ALLOWED else b"\"deny\"")
        if h.audited:
            _aj_lit(w, b",\"authorization_audited\":true")
    if h.cut:
        _aj_lit(w, b",\"truncated\":[")
        if h.cut & ACCESS_CUT_PATH:
            _aj_lit(w, b"\"path\"")
            first = False
        if h.cut & ACCESS_CUT_AUTHORITY:
            _aj_lit(w, b"\"authority\"" if first else b",\"authority\"")
            first = False
        if h.cut & ACCESS_CUT_ID:
            _aj_lit(w, b"\"request_id\"" if first else b",\"request_id\"")
            first = False
        if h.cut & ACCESS_CUT_TRACE:
            _aj_lit(w, b"\"traceparent\"" if first else b",\"traceparent\"")
        w.buf[w.len] = 93
        w.len += 1
    if h.trace.flags & TRACE_ON:
        _aj_span(w, h, r, wall_offset_ns)
    if not h.drawn & ACCESS_DRAWN_LOG:         # not for the access log: whose, then
        if h.drawn & ACCESS_DRAWN_TAP:
            _aj_lit(w, b",\"tap_only\":true")
        if h.drawn & ACCESS_DRAWN_SPAN:
            _aj_lit(w, b",\"span_only\":true")
    _aj_raw(w, b"}\n", 2)


cdef void _aj_span(JsonOut* w, const AccessHead* h, const AccessRecord* r,
                   int64_t wall_offset_ns) noexcept nogil:
    """A request's span (tracing.pxi) in the OpenTelemetry log data model's names
    (trace_id, span_id), hex as W3C writes it; one drawn for the span exporter also with
    its times to the nanosecond (meshnode.tracing_export)."""
    cdef char text[32]
    _aj_lit(w, b",\"trace_id\":\"")
    _hex_put(text, h.trace.trace_hi, 16)
    _hex_put(text + 16, h.trace.trace_lo, 16)
    _aj_raw(w, text, 32)
    _aj_lit(w, b"\",\"span_id\":\"")
    _hex_put(text, h.trace.span, 16)
    _aj_raw(w, text, 16)
    _aj_lit(w, b"\",\"parent_span_id\":")
    if h.trace.parent:
        _hex_put(text, h.trace.parent, 16)
        _aj_raw(w, b"\"", 1)
        _aj_raw(w, text, 16)
        _aj_raw(w, b"\"", 1)
    else:
        _aj_raw(w, b"null", 4)
    _aj_lit(w, b",\"trace_sampled\":true" if h.trace.flags & TRACE_SAMPLED
            else b",\"trace_sampled\":false")
    if h.drawn & ACCESS_DRAWN_SPAN:
        _aj_lit(w, b",\"start_unix_nano\":")
        _aj_u64(w, <uint64_t>(h.start_ns + wall_offset_ns))
        _aj_lit(w, b",\"duration_ns\":")
        _aj_u64(w, <uint64_t>r.duration_ns)


cdef inline size_t _aj_name_len(const Name* names, uint32_t count, uint16_t i) noexcept nogil:
    return names[i].length if 0 < i < count else 0


cdef size_t _aj_bound(Core* core, const AccessRecord* r, uint32_t n_principals,
                      uint32_t n_tags, uint32_t n_authz) noexcept nogil:
    """The most bytes a record's line can take: each text byte escapes to at most 6."""
    cdef const AccessHead* h = &r.head
    cdef size_t texts = (h.method_len + h.path_len + h.authority_len + h.id_len + h.trace_len
                         + _aj_name_len(core.principals, n_principals, r.principal)
                         + _aj_name_len(core.principals, n_principals, r.local)
                         + _aj_name_len(core.tags, n_tags, r.route)
                         + _aj_name_len(core.tags, n_tags, r.service))
    if 0 < h.authz_policy <= n_authz:
        texts += core.authz[h.authz_policy - 1].policy.length
    return _AJ_FIXED + 6 * texts


cdef size_t _access_format(Core* core, JsonOut* w, uint64_t out, uint64_t end,
                           int64_t wall_offset_ns) noexcept nogil:
    """Records [out, end) of the ring as JSON lines appended to w, growing its buffer as
    needed (realloc per batch, not per record); the records formatted returned (fewer
    only when memory ran out)."""
    cdef uint32_t n_principals = mn_acquire_u32(&core.n_principals)
    cdef uint32_t n_tags = mn_acquire_u32(&core.n_tags)
    cdef uint32_t n_authz = mn_acquire_u32(&core.n_authz)
    cdef const AccessRecord* r
    cdef size_t need, taken = 0
    cdef char* grown
    while out < end:
        r = &core.access_ring[out & (core.access_ring_size - 1)]
        need = _aj_bound(core, r, n_principals, n_tags, n_authz)
        if w.len + need > w.cap:
            grown = <char*>realloc(w.buf, max(w.cap * 2, w.len + need))
            if grown == NULL:
                break
            w.buf, w.cap = grown, max(w.cap * 2, w.len + need)
        _aj_record(w, core, r, wall_offset_ns, n_principals, n_tags, n_authz)
        out += 1
        taken += 1
    return taken
