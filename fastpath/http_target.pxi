# http_target.pxi: reading a request head before it goes on: its request-target put in
# origin form (an absolute-form target's authority checked against Host), and the
# Upgrade / Connection tokens that say whether the request leaves HTTP (CONNECT, a
# protocol switch other than WebSocket, h2c asked for). Apart from http_stream.pxi's
# framing: these look at one head and edit it, they keep no state of the pair.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

# The most an absolute-form head gains (_absolute_form): a Host field added ("Host: " +
# authority + CRLF) where "http://" + authority went, less the "/" an empty path gets.
cdef enum:
    _ABSOLUTE_FORM_GROW_MAX = 2


cdef uint32_t _origin_form(Flow* f, uint32_t base, ReqHead* req) noexcept nogil:
    """Rewrite an absolute-form request-target ("http://host/p?q") parsed at
    f.buf + base to origin-form ("/p?q") in the buffer: apps expect origin-form from a
    proxy (RFC 9112 §3.2.2). Returns how many bytes the head lost."""
    cdef char* b = f.buf + base
    cdef uint32_t start = req.target.off
    cdef uint32_t cut
    if req.path.len > 0 and b[req.path.off] == c'/':
        cut = req.path.off - start
    else:
        # Empty path or a bare query: "/" goes where the authority's last byte was.
        b[req.path.off - 1] = c'/'
        cut = req.path.off - 1 - start
    memmove(b + start, b + start + cut, f.tail - base - start - cut)
    f.tail -= cut
    return cut


cdef int64_t _absolute_form(Core* core, Flow* f, uint32_t base, ReqHead* req) noexcept nogil:
    """An absolute-form request head at f.buf + base, routed by its target's authority:
    the target becomes origin-form and the Host field that authority (RFC 9112 §3.2.2:
    a proxy replaces the Host it got by the target's; added when there is none), so
    the app sees the name the request was routed by. The bytes the head gained (< 0:
    lost), or INT64_MAX when it cannot be edited (an authority longer than any host
    name, or no room to add the field)."""
    cdef char auth[ENGINE_AUTHORITY_MAX]
    cdef uint32_t alen = req.authority.len
    cdef uint32_t cut, voff, vlen
    cdef char* b = f.buf + base
    cdef int added
    if alen > sizeof(auth):
        return INT64_MAX
    memcpy(auth, b + req.authority.off, alen)
    cut = _origin_form(f, base, req)
    if req.host_index < 0:
        added = add_field(b, req.head_len - cut, f.tail - base, core.buffer_bytes - base,
                          b"Host", 4, auth, alen)
        if added < 0:
            return INT64_MAX
        f.tail += <uint32_t>added
        return <int64_t>added - cut
    # The field lines come after the target: moved back by the cut.
    voff = req.headers[req.host_index].value.off - cut
    vlen = req.headers[req.host_index].value.len
    if alen > vlen and f.tail + (alen - vlen) > core.buffer_bytes:
        return INT64_MAX
    memmove(b + voff + alen, b + voff + vlen, f.tail - base - voff - vlen)
    memcpy(b + voff, auth, alen)
    f.tail = f.tail + alen - vlen
    return <int64_t>alen - vlen - cut


cdef inline bint _lower_is(unsigned char x, unsigned char lower) noexcept nogil:
    return x == lower or (x >= c'A' and x <= c'Z' and x + 32 == lower)


cdef bint _token_in(const char* v, uint32_t n, const char* token, uint32_t m) noexcept nogil:
    """Is `token` (lowercase) an element of the comma list v[0:n], any case?"""
    cdef uint32_t p = 0
    cdef uint32_t e, t, k
    while p <= n:
        while p < n and (v[p] == c' ' or v[p] == c'\t'):
            p += 1
        e = p
        while e < n and v[e] != c',':
            e += 1
        t = e
        while t > p and (v[t - 1] == c' ' or v[t - 1] == c'\t'):
            t -= 1
        if t - p == m:
            k = 0
            while k < m and _lower_is(<unsigned char>v[p + k], <unsigned char>token[k]):
                k += 1
            if k == m:
                return True
        p = e + 1
    return False


cdef bint _asks_h2c(const char* b, const ReqHead* req) noexcept nogil:
    """Does an Upgrade field of the request head at b list h2c (any of its lines, as
    Go's h2c handler reads them)?"""
    cdef uint32_t i, k
    cdef const char* name
    for i in range(req.header_count):
        if req.headers[i].name.len != 7:
            continue
        name = b + req.headers[i].name.off
        k = 0
        while k < 7 and _lower_is(<unsigned char>name[k], <unsigned char>(b"upgrade"[k])):
            k += 1
        if k == 7 and _token_in(b + req.headers[i].value.off, req.headers[i].value.len,
                                b"h2c", 3):
            return True
    return False


cdef bint _leaves_http(const char* b, const ReqHead* req) noexcept nogil:
    """Does the request head at b ask to leave HTTP for something the mesh does not
    carry? Only WebSocket upgrades are (Istio's default upgrade_configs); CONNECT and
    any other Upgrade are refused 403 before they reach an app, as Envoy answers an
    upgrade it has no config for ("upgrade_failed"): an app that is no proxy may answer
    CONNECT 2xx and go on reading requests, which a tunnel would hand it unframed. (h2c
    is taken out of the request instead: _http_framed.)"""
    if req.method == METHOD_CONNECT:
        return True
    if not req.upgrade:
        return False
    return not (_token_in(b + req.upgrade_value.off, req.upgrade_value.len, b"websocket", 9)
                or _asks_h2c(b, req))
