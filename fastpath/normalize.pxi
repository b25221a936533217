# normalize.pxi: every HTTP request's path, normalized in its head as Envoy's connection
# manager does it under Istio's meshConfig.pathNormalization (normalize_path,
# merge_slashes, path_with_escaped_slashes_action), before anything reads it: the route
# match, authorization, the app.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# In place and without a copy: no step makes a path longer, so the output never overtakes
# the input, and the bytes after a shortened path move up once. A path with no '%', no
# '\\', no "/." and (when slashes merge) no "//" is left after one scan.

_PATH_NORMALIZATIONS = {"NONE": PATH_NORM_NONE, "BASE": PATH_NORM_BASE,
                        "MERGE_SLASHES": PATH_NORM_MERGE_SLASHES,
                        "DECODE_AND_MERGE_SLASHES": PATH_NORM_DECODE_AND_MERGE}
"""The modes RouteTable.set_path_normalization() takes, Istio's names (its DEFAULT, BASE,
is resolved by the control side)."""


cdef uint8_t _path_mode(str mode) except? 255:
    if mode not in _PATH_NORMALIZATIONS:
        raise ValueError("path normalization must be one of %s, not %r"
                         % (", ".join(_PATH_NORMALIZATIONS), mode))
    return _PATH_NORMALIZATIONS[mode]


cdef inline int _hex_value(int x) noexcept nogil:
    if x >= c'0' and x <= c'9':
        return x - c'0'
    if x >= c'a' and x <= c'f':
        return x - c'a' + 10
    if x >= c'A' and x <= c'F':
        return x - c'A' + 10
    return -1


cdef inline bint _unreserved(int x) noexcept nogil:
    """RFC 3986 §2.3: what percent-decoding may give back as is (§6.2.2.2)."""
    return ((x >= c'a' and x <= c'z') or (x >= c'A' and x <= c'Z') or (x >= c'0' and x <= c'9')
            or x == c'-' or x == c'.' or x == c'_' or x == c'~')


cdef inline bint _nests(const char* out, uint32_t k, int v) noexcept nogil:
    """Would `v` written at out[k] make a new escape with a '%' kept as it came just
    before it ("%%34%31" decoded to "%41", which the app would decode again to "A")?
    Chromium's CheckForNestedEscapes, which Envoy's normalize_path runs, escapes that
    '%' as "%25"; here `v` stays encoded instead, so a path never grows, and the app
    decoding it once still gets no new escape."""
    if _hex_value(v) < 0:
        return False
    return ((k >= 1 and out[k - 1] == c'%')
            or (k >= 2 and out[k - 2] == c'%' and _hex_value(out[k - 1]) >= 0))


cdef int64_t _path_decode(char* p, uint32_t n, uint8_t mode) noexcept nogil:
    """Percent-decoding as Istio's normalizations do it, in place (once, no double
    decoding): unreserved characters always, %2F and %5C under DECODE_AND_MERGE_SLASHES
    only; a backslash is a slash (Envoy's normalize_path). An escape that is not one
    ("%zz", "%4") is kept as it came, as Envoy keeps it. The new length, or -1 for %00
    (Chromium's path canonicalizer fails on it: Envoy answers 400)."""
    cdef uint32_t i = 0
    cdef uint32_t k = 0
    cdef int hi, lo, v
    while i < n:
        if p[i] == c'%' and i + 2 < n:
            hi = _hex_value(p[i + 1])
            lo = _hex_value(p[i + 2])
            if hi >= 0 and lo >= 0:
                v = hi * 16 + lo
                if v == 0:
                    return -1
                if ((_unreserved(v) and not _nests(p, k, v))
                        or (mode == PATH_NORM_DECODE_AND_MERGE and (v == c'/' or v == c'\\'))):
                    p[k] = c'/' if v == c'\\' else <char>v
                    k += 1
                    i += 3
                    continue
        p[k] = c'/' if p[i] == c'\\' else p[i]
        k += 1
        i += 1
    return k


cdef uint32_t _dot_segments(char* p, uint32_t n) noexcept nogil:
    """RFC 3986 §5.2.4 on an absolute path, in place (the output never overtakes the
    input): "." goes, ".." takes the segment before it with it (none above the root,
    as Envoy: "/../a" is "/a", not refused); a last "." or ".." leaves the path ending
    in "/". The new length (at least 1: "/")."""
    cdef uint32_t i = 1
    cdef uint32_t j
    cdef uint32_t k = 0
    cdef uint32_t seg
    cdef bint last
    while True:
        j = i
        while j < n and p[j] != c'/':
            j += 1
        seg = j - i
        last = j >= n
        if seg == 1 and p[i] == c'.':
            if last:
                p[k] = c'/'
                k += 1
        elif seg == 2 and p[i] == c'.' and p[i + 1] == c'.':
            while k > 0 and p[k - 1] != c'/':
                k -= 1
            if k > 0:
                k -= 1
            if last:
                p[k] = c'/'
                k += 1
        else:
            p[k] = c'/'
            memmove(p + k + 1, p + i, seg)
            k += 1 + seg
        if last:
            break
        i = j + 1
    if k == 0:
        p[0] = c'/'
        k = 1
    return k


cdef uint32_t _merge_slashes(char* p, uint32_t n) noexcept nogil:
    cdef uint32_t i
    cdef uint32_t k = 0
    for i in range(n):
        if p[i] == c'/' and k > 0 and p[k - 1] == c'/':
            continue
        p[k] = p[i]
        k += 1
    return k


cdef uint32_t _path_scan(const char* p, uint32_t n, bint merge, bint* plain) noexcept nogil:
    """The length of p[0:n] before its query, in one scan; *plain: nothing in it a
    normalization changes (no '%', no '\\', no segment starting with '.', no "//"
    when slashes merge). The first thing that is not plain ends the scan: the query's
    '?' is then found by memchr."""
    cdef uint32_t i
    cdef char ch
    cdef const char* q
    plain[0] = True
    for i in range(n):
        ch = p[i]
        if ch == c'?':
            return i
        if (ch == c'%' or ch == c'\\'
                or (i > 0 and p[i - 1] == c'/' and (ch == c'.' or (merge and ch == c'/')))):
            plain[0] = False
            q = <const char*>memchr(p + i, c'?', n - i)
            return <uint32_t>(q - p) if q != NULL else n
    return n


cdef int64_t _path_normalize(char* p, uint32_t n, uint8_t mode) noexcept nogil:
    """p[0:n] (an absolute path, no query) normalized in place, in Istio's order:
    decode, RFC 3986 normalization, merge slashes. Its length, or -1: refused (%00)."""
    cdef int64_t k = _path_decode(p, n, mode)
    if k < 0:
        return -1
    k = _dot_segments(p, <uint32_t>k)
    if mode == PATH_NORM_MERGE_SLASHES or mode == PATH_NORM_DECODE_AND_MERGE:
        k = _merge_slashes(p, <uint32_t>k)
    return k


cdef int64_t _path_rewrite(char* p, uint32_t n, uint8_t mode, uint32_t* raw) noexcept nogil:
    """A request target's path and query, p[0:n]: the path normalized in place by `mode`,
    the query left as it is. *raw: the path's length before; returned: its length now,
    or -1 (refused). A target that is not an absolute path (asterisk- and
    authority-form, an absolute-form one with none) is left as it is (*raw 0)."""
    cdef bint plain
    raw[0] = 0
    if mode == PATH_NORM_NONE or n == 0 or p[0] != c'/':
        return 0
    raw[0] = _path_scan(p, n, mode != PATH_NORM_BASE, &plain)
    if plain:
        return raw[0]
    return _path_normalize(p, raw[0], mode)


cdef int _path_normalized(Core* core, Conn* c, ReqHead* req, uint32_t base) noexcept nogil:
    """The request head at d2u.buf + base (parsed into req) with its path normalized by
    the pair's table's mode: a shorter path moves the rest of the buffer up and the head
    is parsed again (it parses as it did: only the path changed). 0, or -1: the path is
    refused (the caller answers 400)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t at = base + req.path.off
    cdef uint32_t raw
    cdef int64_t n = _path_rewrite(f.buf + at, req.path.len, c.table.path_normalization, &raw)
    if n < 0:
        return -1
    if n < raw:
        memmove(f.buf + at + n, f.buf + at + raw, f.tail - (at + raw))
        f.tail -= raw - <uint32_t>n
        parse_request_head(f.buf + base, f.tail - base, req, &core.http_limits)
    return 0


cdef int _path_refused(Core* core, Conn* c, ReqHead* req, uint32_t base) noexcept nogil:
    """A framed pair's request whose path is refused: answered 400 with no body, as
    Envoy's connection manager answers a path its normalization fails on, once every
    answer owed before it has gone (STATUS_AGAIN until then: its head waits in the
    buffer, judged again); in place when it may be (the pair goes on to the next
    request, as Envoy keeps the connection), else with the pair's end (STATUS_CLOSE)."""
    cdef FilterCall call
    if _answer_owed(c):
        return STATUS_AGAIN
    memset(&call, 0, sizeof(FilterCall))
    call.phase = PHASE_REQUEST
    call.req = req
    call.base = base
    if _answer_in_place(core, c, &call, 400, b"", NULL, 0):
        core.counters.http_bad_request += 1     # (_http_reply counts its own)
        return STATUS_OK
    _http_reply(core, c, 400, b"", 0)
    return STATUS_CLOSE


def normalize_path(bytes target not None, str mode not None):
    """`target` (an origin-form request target: path and query) as a request goes on
    with it under `mode` (set_path_normalization()'s), or None when it is refused
    (answered 400). The engine does this in each request's head; here for tests (held to
    fastpath.normalize_ref) and tools."""
    cdef bytearray buf = bytearray(target)
    cdef uint32_t raw
    cdef int64_t n
    cdef uint8_t m = _path_mode(mode)
    if len(buf) > 0xFFFFFFFF:
        raise ValueError("a target of at most 4 GiB")
    n = _path_rewrite(buf, <uint32_t>len(buf), m, &raw)
    return None if n < 0 else bytes(buf[:n] + buf[raw:])
