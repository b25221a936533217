"""fastpath.http1: HTTP/1.1 request and response heads parsed in place; chunked framing."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.limits cimport INT_MAX
from libc.stdint cimport INT64_MAX, UINT32_MAX, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort
from libc.string cimport memcmp, memcpy, memmove, memset

from fastpath.errors import HTTPError

include "consts.pxi"


# --- bytes ----------------------------------------------------------------------------

cdef enum:
    _HT = 9
    _LF = 10
    _CR = 13
    _SP = 32

# Character classes, one bit each, in _cls (filled once at import by _init_classes).
cdef enum:
    _TCHAR = 1      # RFC 9110 §5.6.2 tchar: methods, field names, codings
    _TARGET = 2     # request-target bytes as sent: VCHAR (0x21-0x7E) but '#' (no fragment)
    _FIELD = 4      # field-value, reason-phrase, quoted-string text: VCHAR, obs-text, SP, HTAB
    _HEX = 8
    _DIGIT = 16
    _HOST = 32      # RFC 3986 reg-name: unreserved, sub-delims and '%'

cdef unsigned char _cls[256]


cdef void _init_classes() noexcept:
    cdef int c
    cdef const char* p
    memset(_cls, 0, sizeof(_cls))
    for c in range(256):
        if 0x21 <= c <= 0x7E:
            _cls[c] |= _FIELD if c == c'#' else _TARGET | _FIELD
        elif c >= 0x80 or c == _SP or c == _HT:
            _cls[c] |= _FIELD
        if c'0' <= c <= c'9':
            _cls[c] |= _DIGIT | _HEX | _TCHAR | _HOST
        elif c'a' <= c <= c'z' or c'A' <= c <= c'Z':
            _cls[c] |= _TCHAR | _HOST
            if c'a' <= c <= c'f' or c'A' <= c <= c'F':
                _cls[c] |= _HEX
    p = b"!#$%&'*+-.^_`|~"
    while p[0] != 0:
        _cls[<unsigned char>p[0]] |= _TCHAR
        p += 1
    p = b"-._~%!$&'()*+,;="
    while p[0] != 0:
        _cls[<unsigned char>p[0]] |= _HOST
        p += 1


_init_classes()


cdef void _out_of_bounds(size_t i, size_t n) noexcept nogil:
    fprintf(stderr, b"fastpath.http1: read at offset %zu of a %zu-byte buffer\n", i, n)
    abort()


cdef inline unsigned char _at(const char* buf, size_t i, size_t n) noexcept nogil:
    # Every read of an untrusted buffer goes through here. Cython cannot bounds-check a
    # raw pointer, so the debug build checks it here and aborts loudly; in release
    # MESHNODE_DEBUG is the constant 0 and this is a plain load.
    if MESHNODE_DEBUG and i >= n:
        _out_of_bounds(i, n)
    return <unsigned char>buf[i]


cdef inline uint64_t _word(const char* buf, size_t i, size_t n) noexcept nogil:
    # Eight bytes at once; memcpy is how C spells an unaligned load (one mov at -O2).
    cdef uint64_t x
    if MESHNODE_DEBUG and (i >= n or n - i < 8):
        _out_of_bounds(i + 7, n)
    memcpy(&x, buf + i, 8)
    return x


# SWAR ("SIMD within a register", Bit Twiddling Hacks: "determine if a word has a byte
# less than n"): nonzero iff some byte of x is below n (0 < n <= 128). Exact as a yes/no.
cdef inline uint64_t _below(uint64_t x, uint64_t n) noexcept nogil:
    return (x - <uint64_t>0x0101010101010101ULL * n) & ~x & <uint64_t>0x8080808080808080ULL


cdef inline uint64_t _has_del(uint64_t x) noexcept nogil:
    return _below(x ^ <uint64_t>0x7F7F7F7F7F7F7F7FULL, 1)


cdef inline size_t _scan_field(const char* buf, size_t i, size_t e, size_t n) noexcept nogil:
    """Past the field-value bytes (VCHAR, obs-text, SP, HTAB) from i, up to e. Values
    are most of a head's bytes: whole words of plain text go 8 at a time, and the
    first word with a CTL, DEL or HTAB in it finishes byte by byte."""
    cdef uint64_t x
    while e - i >= 8:
        x = _word(buf, i, n)
        if _below(x, 0x20) | _has_del(x):
            break
        i += 8
    while i < e and (_cls[_at(buf, i, n)] & _FIELD):
        i += 1
    return i


cdef inline size_t _scan_target(const char* buf, size_t i, size_t e, size_t n) noexcept nogil:
    """Past the request-target bytes (VCHAR: 0x21-0x7E) from i, up to e, stopping at a
    '#': a fragment is never sent (RFC 9110 §4.2.5), so the caller refuses one where
    it stands, the SP it expects not being there (Envoy's default too,
    http_reject_path_with_fragment)."""
    cdef uint64_t x
    while e - i >= 8:
        x = _word(buf, i, n)
        if (_below(x, 0x21) | (x & <uint64_t>0x8080808080808080ULL) | _has_del(x)
                | _below(x ^ <uint64_t>0x2323232323232323ULL, 1)):
            break
        i += 8
    while i < e and (_cls[_at(buf, i, n)] & _TARGET):
        i += 1
    return i


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if c'A' <= c <= c'Z' else c


cdef inline bint _ieq(const char* buf, size_t off, size_t n, const char* lit,
                      size_t lit_len) noexcept nogil:
    """buf[off:off+n] equals the lowercase `lit`, ignoring ASCII case."""
    cdef size_t k
    if n != lit_len:
        return False
    for k in range(n):
        if _lower(_at(buf, off + k, off + n)) != <unsigned char>lit[k]:
            return False
    return True


cdef inline bint _ows(unsigned char c) noexcept nogil:
    return c == _SP or c == _HT


# --- limits and codes -------------------------------------------------------------------

cdef void limits_init(Limits* lim) noexcept nogil:
    lim.max_request_line = HTTP1_DEFAULT_MAX_REQUEST_LINE
    lim.max_headers = HTTP1_DEFAULT_MAX_HEADERS
    lim.max_header_bytes = HTTP1_DEFAULT_MAX_HEADER_BYTES
    lim.max_head_bytes = HTTP1_DEFAULT_MAX_HEAD_BYTES
    lim.max_chunk_ext = HTTP1_DEFAULT_MAX_CHUNK_EXT
    lim.max_trailer_bytes = HTTP1_DEFAULT_MAX_TRAILER_BYTES
    lim.max_chunk_size = HTTP1_DEFAULT_MAX_CHUNK_SIZE


cdef int request_error_status(int rc) noexcept nogil:
    if rc == HTTP1_EPARSE or rc == HTTP1_ELENGTH:
        return 400
    if rc == HTTP1_ELIMIT_LINE:
        return 414          # RFC 9110 §15.5.15; nginx answers a long request-line so too
    if rc == HTTP1_ELIMIT_HEADERS:
        return 431          # RFC 6585 §5
    if rc == HTTP1_EVERSION:
        return 505
    if rc == HTTP1_ETRANSFER:
        return 501          # RFC 9112 §6.1: a transfer coding we do not understand
    if rc == HTTP1_ELIMIT_CHUNK:
        return 413          # as Node does for oversized chunk extensions
    return 500


cdef const char* status_name(int rc) noexcept nogil:
    if rc == HTTP1_AGAIN:
        return b"AGAIN"
    if rc == HTTP1_EPARSE:
        return b"EPARSE"
    if rc == HTTP1_ELIMIT_LINE:
        return b"ELIMIT_LINE"
    if rc == HTTP1_ELIMIT_HEADERS:
        return b"ELIMIT_HEADERS"
    if rc == HTTP1_EVERSION:
        return b"EVERSION"
    if rc == HTTP1_ELENGTH:
        return b"ELENGTH"
    if rc == HTTP1_ETRANSFER:
        return b"ETRANSFER"
    if rc == HTTP1_ELIMIT_CHUNK:
        return b"ELIMIT_CHUNK"
    return b"OK" if rc > 0 else b"UNKNOWN"


# --- scanning primitives ------------------------------------------------------------------
#
# A head is scanned left to right. `n` is min(len, max_head): a byte at or past
# max_head is over the head limit whether it arrived or not, so limits are positions
# and every prefix of a buffer gets HTTP1_AGAIN or the whole buffer's answer.

# What the scanning helpers return when the scan may go on. Not 0: that is HTTP1_AGAIN.
cdef enum:
    _GO = 1


cdef inline int _short(size_t i, size_t max_head) noexcept nogil:
    """The scan needs byte i and does not have it."""
    return HTTP1_ELIMIT_HEADERS if i >= max_head else HTTP1_AGAIN


cdef inline int _edge(const char* buf, size_t i, size_t n, size_t cl, size_t max_head,
                      int elimit) noexcept nogil:
    """A scan of line content stopped at i, bounded by n and by cl (the latest place
    the line's CR may be). _GO: buf[i] exists and is the caller's to judge; at cl that
    is only ever a CR, anything else there makes the line too long."""
    if i >= n:
        return _short(i, max_head)
    if i < cl or _at(buf, i, n) == _CR:
        return _GO
    return elimit


cdef inline int _crlf(const char* buf, size_t i, size_t n, size_t max_head) noexcept nogil:
    """buf[i] is a CR: _GO when a LF follows."""
    if i + 1 >= n:
        return _short(i + 1, max_head)
    return _GO if _at(buf, i + 1, n) == _LF else HTTP1_EPARSE


cdef inline int _version(const char* buf, size_t* pi, size_t n, size_t cl, size_t max_head,
                         int elimit) noexcept nogil:
    """HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3: case-sensitive)."""
    cdef const char* name = b"HTTP/"
    cdef size_t i = pi[0]
    cdef int k, rc
    cdef unsigned char c
    for k in range(8):
        rc = _edge(buf, i, n, cl, max_head, elimit)
        if rc != _GO:
            return rc
        c = _at(buf, i, n)
        if k < 5:
            if c != <unsigned char>name[k]:
                return HTTP1_EPARSE
        elif k == 6:
            if c != c'.':
                return HTTP1_EPARSE
        elif not (_cls[c] & _DIGIT):
            return HTTP1_EPARSE
        i += 1
    pi[0] = i
    return _GO


# --- field semantics --------------------------------------------------------------------

# What the field lines of one head say about framing, routing and the connection;
# judged as a whole once the head is complete.
cdef struct _Sem:
    int64_t cl              # the Content-Length value (when cl_seen)
    Span host
    Span upgrade
    int host_count
    int host_index
    int cl_count            # Content-Length elements over all its lines
    int te_count            # Transfer-Encoding field lines
    int te_chunked          # "chunked" list elements over all of them
    int te_codings          # codings (non-empty elements) over all of them
    bint cl_seen
    bint cl_bad             # a Content-Length element not 1*DIGIT, too big, or differing
    bint te_empty           # an empty Transfer-Encoding list element (ignored, §5.6.1)
    bint te_other           # a coding other than chunked
    bint te_last_chunked    # the final coding so far is chunked
    bint host_bad
    bint conn_close
    bint conn_keep_alive
    bint conn_upgrade
    bint expect_continue
    bint has_upgrade


cdef enum _Name:
    _N_OTHER
    _N_HOST
    _N_CONTENT_LENGTH
    _N_TRANSFER_ENCODING
    _N_CONNECTION
    _N_EXPECT
    _N_UPGRADE


cdef inline _Name _field_name(const char* buf, size_t off, size_t n) noexcept nogil:
    # By length first: most fields are none of these and cost one switch.
    if n == 4:
        return _N_HOST if _ieq(buf, off, n, b"host", 4) else _N_OTHER
    if n == 6:
        return _N_EXPECT if _ieq(buf, off, n, b"expect", 6) else _N_OTHER
    if n == 7:
        return _N_UPGRADE if _ieq(buf, off, n, b"upgrade", 7) else _N_OTHER
    if n == 10:
        return _N_CONNECTION if _ieq(buf, off, n, b"connection", 10) else _N_OTHER
    if n == 14:
        return _N_CONTENT_LENGTH if _ieq(buf, off, n, b"content-length", 14) else _N_OTHER
    if n == 17:
        return _N_TRANSFER_ENCODING if _ieq(buf, off, n, b"transfer-encoding", 17) else _N_OTHER
    return _N_OTHER


cdef void _content_length(const char* buf, size_t p, size_t end, _Sem* sem) noexcept nogil:
    # RFC 9112 §6.3 rule 5: a comma list of equal values is that value; anything else
    # that is not 1*DIGIT is unrecoverable. Empty elements are refused too: a list a
    # backend might read differently is exactly what smuggling is made of.
    cdef size_t e1, t
    cdef int64_t v
    cdef int d
    while True:
        while p < end and _ows(_at(buf, p, end)):
            p += 1
        e1 = p
        while e1 < end and _at(buf, e1, end) != c',':
            e1 += 1
        t = e1
        while t > p and _ows(_at(buf, t - 1, end)):
            t -= 1
        if t == p:
            sem.cl_bad = True
            return
        v = 0
        while p < t:
            d = <int>_at(buf, p, end) - c'0'
            if d < 0 or d > 9 or v > (INT64_MAX - d) // 10:
                sem.cl_bad = True
                return
            v = v * 10 + d
            p += 1
        if sem.cl_seen and v != sem.cl:
            sem.cl_bad = True
            return
        sem.cl = v
        sem.cl_seen = True
        sem.cl_count += 1
        if e1 >= end:
            return
        p = e1 + 1


cdef void _list_field(const char* buf, size_t p, size_t end, _Name name,
                      _Sem* sem) noexcept nogil:
    """The elements of a comma-separated list field (RFC 9110 §5.6.1), OWS trimmed."""
    cdef size_t e1, t, n
    while True:
        while p < end and _ows(_at(buf, p, end)):
            p += 1
        e1 = p
        while e1 < end and _at(buf, e1, end) != c',':
            e1 += 1
        t = e1
        while t > p and _ows(_at(buf, t - 1, end)):
            t -= 1
        n = t - p
        if name == _N_TRANSFER_ENCODING:
            # RFC 9110 §5.6.1: a recipient ignores empty list elements (",chunked").
            if n == 0:
                sem.te_empty = True
            elif _ieq(buf, p, n, b"chunked", 7):
                sem.te_chunked += 1
                sem.te_codings += 1
                sem.te_last_chunked = True
            else:
                sem.te_other = True
                sem.te_codings += 1
                sem.te_last_chunked = False
        elif name == _N_CONNECTION:
            if _ieq(buf, p, n, b"close", 5):
                sem.conn_close = True
            elif _ieq(buf, p, n, b"keep-alive", 10):
                sem.conn_keep_alive = True
            elif _ieq(buf, p, n, b"upgrade", 7):
                sem.conn_upgrade = True
        elif name == _N_EXPECT:
            if _ieq(buf, p, n, b"100-continue", 12):
                sem.expect_continue = True
        if e1 >= end:
            return
        p = e1 + 1


cdef bint _split_authority(const char* p, size_t n, size_t* host_len, int* port) noexcept nogil:
    """authority = uri-host [ ":" port ] (RFC 3986 §3.2, no userinfo). IP-literals are
    checked loosely (hex digits, ':' and '.' in brackets): they route nowhere anyway.
    An empty port ("host:") is allowed by the grammar and reads as no port."""
    cdef size_t i = 0
    cdef int v = 0
    cdef unsigned char c
    port[0] = -1
    if n == 0:
        return False
    if _at(p, 0, n) == c'[':
        i = 1
        while i < n:
            c = _at(p, i, n)
            if not ((_cls[c] & _HEX) or c == c':' or c == c'.'):
                break
            i += 1
        if i == 1 or i >= n or _at(p, i, n) != c']':
            return False
        i += 1
    else:
        while i < n and (_cls[_at(p, i, n)] & _HOST):
            i += 1
        if i == 0:
            return False
    host_len[0] = i
    if i == n:
        return True
    if _at(p, i, n) != c':' or n - i - 1 > 5:
        return False
    i += 1
    if i == n:
        return True
    while i < n:
        c = _at(p, i, n)
        if not (_cls[c] & _DIGIT):
            return False
        v = v * 10 + (c - c'0')
        i += 1
    if v > 65535:
        return False
    port[0] = v
    return True


cdef void _note_field(const char* buf, const Field* f, int index, _Sem* sem) noexcept nogil:
    cdef size_t v0 = f.value.off
    cdef size_t v1 = v0 + f.value.len
    cdef size_t host_len
    cdef int port
    cdef _Name name = _field_name(buf, f.name.off, f.name.len)
    if name == _N_OTHER:
        return
    if name == _N_HOST:
        sem.host_count += 1
        if sem.host_count == 1:
            sem.host = f.value
            sem.host_index = index
        # RFC 9110 §7.2: empty when the target has no authority; otherwise uri-host[:port].
        if v1 > v0 and not _split_authority(buf + v0, v1 - v0, &host_len, &port):
            sem.host_bad = True
    elif name == _N_CONTENT_LENGTH:
        _content_length(buf, v0, v1, sem)
    elif name == _N_UPGRADE:
        if not sem.has_upgrade and v1 > v0:
            sem.has_upgrade = True
            sem.upgrade = f.value
    else:
        if name == _N_TRANSFER_ENCODING:
            sem.te_count += 1
        _list_field(buf, v0, v1, name, sem)


cdef int _fields(const char* buf, size_t i, size_t n, size_t max_head, const Limits* lim,
                 Field* fields, uint32_t* count, _Sem* sem) noexcept nogil:
    """The field lines from buf[i] through the empty line; the head's length or a code."""
    cdef uint32_t max_fields = lim.max_headers
    cdef size_t start, cl, e, name_end, v0, v1
    cdef unsigned char c
    cdef int rc
    cdef Field* f
    if max_fields > HTTP1_MAX_HEADERS:
        max_fields = HTTP1_MAX_HEADERS
    memset(sem, 0, sizeof(_Sem))
    sem.host_index = -1
    count[0] = 0
    while True:
        if i >= n:
            return _short(i, max_head)
        c = _at(buf, i, n)
        if c == _CR:
            rc = _crlf(buf, i, n, max_head)
            return rc if rc != _GO else <int>(i + 2)
        if count[0] >= max_fields:
            return HTTP1_ELIMIT_HEADERS
        # field-line = field-name ":" OWS field-value OWS. A line starting with SP or
        # HTAB (obs-fold, or whitespace before the first field) and whitespace before
        # the colon both fail the token scan: RFC 9112 §5.1, §5.2 want a 400.
        start = i
        cl = start + lim.max_header_bytes
        e = cl if cl < n else n
        while i < e and (_cls[_at(buf, i, n)] & _TCHAR):
            i += 1
        rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_HEADERS)
        if rc != _GO:
            return rc
        if i == start or _at(buf, i, n) != c':':
            return HTTP1_EPARSE
        name_end = i
        i += 1
        while i < e and _ows(_at(buf, i, n)):
            i += 1
        v0 = i
        i = _scan_field(buf, i, e, n)
        rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_HEADERS)
        if rc != _GO:
            return rc
        if _at(buf, i, n) != _CR:
            return HTTP1_EPARSE         # CTL, NUL or a bare LF in the value
        rc = _crlf(buf, i, n, max_head)
        if rc != _GO:
            return rc
        v1 = i
        while v1 > v0 and _ows(_at(buf, v1 - 1, n)):
            v1 -= 1
        f = &fields[count[0]]
        f.name.off = <uint32_t>start
        f.name.len = <uint32_t>(name_end - start)
        f.value.off = <uint32_t>v0
        f.value.len = <uint32_t>(v1 - v0)
        _note_field(buf, f, <int>count[0], sem)
        count[0] += 1
        i += 2


cdef int _framing(const _Sem* sem, uint8_t minor, bint response) noexcept nogil:
    """RFC 9112 §6.1 and §6.3 for the framing fields, as one judgement per head."""
    if sem.te_count:
        # §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; so has
        # one whose Transfer-Encoding names no coding at all.
        if minor == 0 or sem.te_codings == 0 or sem.te_chunked > 1:
            return HTTP1_ELENGTH
        # §6.3 rule 3: chunked not final in a request → 400 (a response reads to close).
        if not response and not sem.te_last_chunked:
            return HTTP1_ELENGTH
        # TE with CL "ought to be handled as an error" (§6.1); it is the classic
        # smuggling input, refused outright as Envoy does.
        if sem.cl_seen or sem.cl_bad:
            return HTTP1_ELENGTH
        if not response and sem.te_other:
            return HTTP1_ETRANSFER
    if sem.cl_bad:
        return HTTP1_ELENGTH
    return 0


# --- requests ---------------------------------------------------------------------------

cdef inline Method _method(const char* p, size_t n) noexcept nogil:
    if n == 3:
        if memcmp(p, b"GET", 3) == 0:
            return METHOD_GET
        if memcmp(p, b"PUT", 3) == 0:
            return METHOD_PUT
    elif n == 4:
        if memcmp(p, b"POST", 4) == 0:
            return METHOD_POST
        if memcmp(p, b"HEAD", 4) == 0:
            return METHOD_HEAD
    elif n == 5:
        if memcmp(p, b"PATCH", 5) == 0:
            return METHOD_PATCH
        if memcmp(p, b"TRACE", 5) == 0:
            return METHOD_TRACE
    elif n == 6:
        if memcmp(p, b"DELETE", 6) == 0:
            return METHOD_DELETE
    elif n == 7:
        if memcmp(p, b"OPTIONS", 7) == 0:
            return METHOD_OPTIONS
        if memcmp(p, b"CONNECT", 7) == 0:
            return METHOD_CONNECT
    return METHOD_OTHER


cdef int _target(const char* buf, size_t t0, size_t t1, size_t n, ReqHead* out) noexcept nogil:
    """The request-target's form (RFC 9112 §3.2) and what routing needs from it."""
    cdef size_t a0, a1, host_len
    cdef int port
    cdef unsigned char c0 = _at(buf, t0, n)
    cdef bint connect = out.method == METHOD_CONNECT
    out.target.off = <uint32_t>t0
    out.target.len = <uint32_t>(t1 - t0)
    if c0 == c'/':
        if connect:
            return HTTP1_EPARSE
        out.target_form = TARGET_ORIGIN
        out.path = out.target
    elif t1 - t0 == 1 and c0 == c'*':
        if out.method != METHOD_OPTIONS:
            return HTTP1_EPARSE
        out.target_form = TARGET_ASTERISK
        out.path = out.target
    elif not connect and t1 - t0 >= 7 and _ieq(buf, t0, 7, b"http://", 7):
        # What HTTP_PROXY clients send; the authority is up to the path or query. A
        # '@' (userinfo) or '#' is not a host byte, so it fails the authority check.
        a0 = t0 + 7
        a1 = a0
        while a1 < t1 and _at(buf, a1, n) != c'/' and _at(buf, a1, n) != c'?':
            a1 += 1
        if a1 == a0 or not _split_authority(buf + a0, a1 - a0, &host_len, &port):
            return HTTP1_EPARSE
        out.target_form = TARGET_ABSOLUTE
        out.authority.off = <uint32_t>a0
        out.authority.len = <uint32_t>(a1 - a0)
        out.path.off = <uint32_t>a1
        out.path.len = <uint32_t>(t1 - a1)
    elif connect:
        # authority-form = uri-host ":" port, the port required (RFC 9112 §3.2.3).
        if not _split_authority(buf + t0, t1 - t0, &host_len, &port) or port < 0:
            return HTTP1_EPARSE
        out.target_form = TARGET_AUTHORITY
        out.authority = out.target
        out.path.off = <uint32_t>t1
        out.path.len = 0
    else:
        return HTTP1_EPARSE
    return 0


cdef inline size_t _head_limit(const Limits* lim) noexcept nogil:
    # A head length is returned as an int.
    return lim.max_head_bytes if lim.max_head_bytes < <uint32_t>INT_MAX else <size_t>INT_MAX


cdef inline void _req_reset(ReqHead* out) noexcept nogil:
    # Not the header array: only header_count entries of it are ever read.
    out.head_len = 0
    out.method = METHOD_OTHER
    out.target_form = TARGET_ORIGIN
    out.body = BODY_NONE
    out.method_span.off = out.method_span.len = 0
    out.target.off = out.target.len = 0
    out.authority.off = out.authority.len = 0
    out.path.off = out.path.len = 0
    out.upgrade_value.off = out.upgrade_value.len = 0
    out.content_length = -1
    out.host_index = -1
    out.header_count = 0
    out.version_minor = 0
    out.keep_alive = False
    out.chunked = False
    out.expect_continue = False
    out.upgrade = False
    out.has_host = False
    out.fold_length = False
    out.fold_coding = False


cdef int parse_request_head(const char* buf, size_t len, ReqHead* out,
                            const Limits* lim) noexcept nogil:
    cdef size_t max_head = _head_limit(lim)
    cdef size_t n = len if len < max_head else max_head
    cdef size_t i = 0
    cdef size_t start, cl, e, t0, t1, v0
    cdef int rc, head_len
    cdef _Sem sem
    _req_reset(out)
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line (CRLF) received
    # before the request-line (some clients send one after a POST body).
    while True:
        if i >= n:
            return _short(i, max_head)
        if _at(buf, i, n) != _CR:
            break
        rc = _crlf(buf, i, n, max_head)
        if rc != _GO:
            return rc
        i += 2
    # request-line = method SP request-target SP HTTP-version, one SP each (§3).
    start = i
    cl = start + lim.max_request_line
    e = cl if cl < n else n
    while i < e and (_cls[_at(buf, i, n)] & _TCHAR):
        i += 1
    rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    if i == start or _at(buf, i, n) != _SP:
        return HTTP1_EPARSE
    out.method_span.off = <uint32_t>start
    out.method_span.len = <uint32_t>(i - start)
    i += 1
    t0 = i
    i = _scan_target(buf, i, e, n)
    rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    if i == t0 or _at(buf, i, n) != _SP:
        return HTTP1_EPARSE
    t1 = i
    i += 1
    v0 = i
    rc = _version(buf, &i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    if _at(buf, i, n) != _CR:
        return HTTP1_EPARSE
    rc = _crlf(buf, i, n, max_head)
    if rc != _GO:
        return rc
    i += 2
    # The line is whole: judge it before reading on (a "PRI * HTTP/2.0" preface is
    # answered at its first line).
    if _at(buf, v0 + 5, n) != c'1':
        return HTTP1_EVERSION
    out.version_minor = 0 if _at(buf, v0 + 7, n) == c'0' else 1
    out.method = _method(buf + start, out.method_span.len)
    rc = _target(buf, t0, t1, n, out)
    if rc != 0:
        return rc

    head_len = _fields(buf, i, n, max_head, lim, out.headers, &out.header_count, &sem)
    if head_len <= 0:
        return head_len
    out.head_len = <uint32_t>head_len

    rc = _framing(&sem, out.version_minor, False)
    if rc != 0:
        return rc
    # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with two, or a bad one.
    if sem.host_count > 1 or sem.host_bad or (out.version_minor == 1 and sem.host_count == 0):
        return HTTP1_EPARSE
    out.has_host = sem.host_count == 1
    out.host_index = sem.host_index
    if out.target_form == TARGET_ORIGIN or out.target_form == TARGET_ASTERISK:
        out.authority = sem.host
    if sem.te_count:
        out.chunked = True
        out.body = BODY_CHUNKED
        out.fold_coding = sem.te_empty or sem.te_count > 1
    elif sem.cl_seen:
        out.content_length = sem.cl
        out.body = BODY_LENGTH if sem.cl > 0 else BODY_NONE
        out.fold_length = sem.cl_count > 1
    # §9.3: "close" wins; HTTP/1.1 persists by default, HTTP/1.0 only when asked.
    out.keep_alive = not sem.conn_close and (out.version_minor == 1 or sem.conn_keep_alive)
    if out.version_minor == 1:
        out.expect_continue = sem.expect_continue
        # RFC 9110 §7.8: an Upgrade in an HTTP/1.0 request is ignored; without the
        # "upgrade" connection option it is not addressed to this hop.
        out.upgrade = sem.conn_upgrade and sem.has_upgrade
    out.upgrade_value = sem.upgrade
    return head_len


# --- responses --------------------------------------------------------------------------

cdef inline void _resp_reset(RespHead* out) noexcept nogil:
    out.head_len = 0
    out.status = 0
    out.version_minor = 0
    out.body = BODY_NONE
    out.reason.off = out.reason.len = 0
    out.content_length = -1
    out.header_count = 0
    out.keep_alive = False
    out.chunked = False
    out.upgrade = False
    out.fold_length = False


cdef int parse_response_head(const char* buf, size_t len, RespHead* out,
                             const Limits* lim, Method req_method) noexcept nogil:
    cdef size_t max_head = _head_limit(lim)
    cdef size_t n = len if len < max_head else max_head
    cdef size_t i = 0
    cdef size_t cl = lim.max_request_line
    cdef size_t e = cl if cl < n else n
    cdef size_t r0
    cdef unsigned char c
    cdef int rc, k, status = 0
    cdef int head_len
    cdef _Sem sem
    _resp_reset(out)
    # status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4).
    rc = _version(buf, &i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    if _at(buf, i, n) != _SP:
        return HTTP1_EPARSE
    i += 1
    for k in range(3):
        rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
        if rc != _GO:
            return rc
        c = _at(buf, i, n)
        if not (_cls[c] & _DIGIT):
            return HTTP1_EPARSE
        status = status * 10 + (c - c'0')
        i += 1
    rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
    if rc != _GO:
        return rc
    r0 = i
    c = _at(buf, i, n)
    if c == _SP:
        # Servers that send no reason often drop its SP too ("HTTP/1.1 200\r\n");
        # §4 tells clients to ignore the reason, so both shapes are read.
        i += 1
        r0 = i
        i = _scan_field(buf, i, e, n)
        rc = _edge(buf, i, n, cl, max_head, HTTP1_ELIMIT_LINE)
        if rc != _GO:
            return rc
    if _at(buf, i, n) != _CR:
        return HTTP1_EPARSE
    rc = _crlf(buf, i, n, max_head)
    if rc != _GO:
        return rc
    out.reason.off = <uint32_t>r0
    out.reason.len = <uint32_t>(i - r0)
    i += 2
    if _at(buf, 5, n) != c'1':
        return HTTP1_EVERSION
    if status < 100:
        return HTTP1_EPARSE
    out.version_minor = 0 if _at(buf, 7, n) == c'0' else 1
    out.status = <uint16_t>status

    head_len = _fields(buf, i, n, max_head, lim, out.headers, &out.header_count, &sem)
    if head_len <= 0:
        return head_len
    out.head_len = <uint32_t>head_len
    rc = _framing(&sem, out.version_minor, True)
    if rc != 0:
        return rc
    if sem.cl_seen:
        out.content_length = sem.cl
        out.fold_length = sem.cl_count > 1
    out.chunked = sem.te_count > 0 and sem.te_last_chunked
    out.keep_alive = not sem.conn_close and (out.version_minor == 1 or sem.conn_keep_alive)
    # RFC 9112 §6.3, in its order.
    if status == 101 or (req_method == METHOD_CONNECT and 200 <= status < 300):
        out.upgrade = status == 101
        out.body = BODY_TUNNEL
        out.keep_alive = False
    elif req_method == METHOD_HEAD or status < 200 or status == 204 or status == 304:
        out.body = BODY_NONE
    elif sem.te_count:
        if out.chunked:
            out.body = BODY_CHUNKED
        else:
            out.body = BODY_UNTIL_CLOSE
            out.keep_alive = False
    elif sem.cl_seen:
        out.body = BODY_LENGTH if sem.cl > 0 else BODY_NONE
    else:
        out.body = BODY_UNTIL_CLOSE
        out.keep_alive = False
    return head_len


# --- names the proxy owns -----------------------------------------------------------------

cdef inline Guarded _guarded_as(const char* name, size_t n, const char* lit) noexcept nogil:
    """`name` against the lowercase `lit` of the same length, '_' read as '-'."""
    cdef size_t k
    cdef unsigned char c
    cdef bint underscore = False
    for k in range(n):
        c = _lower(_at(name, k, n))
        if c != <unsigned char>lit[k]:
            if c != c'_' or lit[k] != c'-':
                return GUARDED_NONE
            underscore = True
    return GUARDED_UNDERSCORE if underscore else GUARDED_EXACT


cdef Guarded guarded_name(const char* name, size_t n) noexcept nogil:
    # By length first, as _field_name: most names cost one switch.
    if n == 4:
        return _guarded_as(name, n, b"host")
    if n == 14:
        return _guarded_as(name, n, b"content-length")
    if n == 17:
        return _guarded_as(name, n, b"transfer-encoding")
    if n == 18:
        return _guarded_as(name, n, b"x-meshnode-failure")
    if n == 23:
        return _guarded_as(name, n, b"x-forwarded-client-cert")
    return GUARDED_NONE


# --- chunked framing: http1_chunked.pxi ----------------------------------------------

include "http1_chunked.pxi"


# --- routing ----------------------------------------------------------------------------

cdef size_t authority_host(const char* p, size_t n, char* out, size_t cap,
                           int* port) noexcept nogil:
    cdef size_t h, k
    if not _split_authority(p, n, &h, port):
        port[0] = -1
        return 0
    # "svc.ns." is "svc.ns": a fully qualified name's root dot does not change the name.
    if _at(p, 0, n) != c'[' and _at(p, h - 1, n) == c'.':
        h -= 1
    if h == 0 or h > cap:
        return 0
    for k in range(h):
        out[k] = <char>_lower(_at(p, k, n))
    return h


# --- Python boundary: http1_api.pxi ---------------------------------------------------

include "http1_api.pxi"
