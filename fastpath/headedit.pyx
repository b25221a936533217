# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""In-place edits of parsed HTTP/1.1 heads: hop-by-hop fields out, `Connection: close`
and proxy-vouched fields in, what an app could read apart from the proxy folded or cut
(see headedit.pxd for the contract).

Why in place: the engine forwards heads straight from its read buffer; an edit is a
memmove of the bytes behind the edited line, never a copy of the message. Lines are
found from the parser's spans: a field line starts at its name and ends at the LF
after its value (values hold no CR or LF: http1 refuses them).
"""

from libc.stdint cimport UINT32_MAX, uint32_t
from libc.string cimport memchr, memcpy, memmove, memset

from fastpath.http1 cimport (GUARDED_UNDERSCORE, HTTP1_MAX_HEADERS, Field, ReqHead, RespHead,
                             Span, guarded_name)


cdef enum:
    # Connection options looked at per head; a client naming more loses no protection
    # (the fixed hop-by-hop set is always removed), only the extra names stay.
    _MAX_OPTIONS = 16

# What happens to a field line (one uint32 per field of a head): kept, removed whole,
# or any other value k: its value keeps only its first k bytes (_remove_marked).
cdef enum:
    _KEEP = 0
cdef uint32_t _DROP = UINT32_MAX


cdef inline unsigned char _lower(unsigned char x) noexcept nogil:
    return x + 32 if 65 <= x <= 90 else x


cdef bint _ieq(const char* a, uint32_t n, const char* lit, uint32_t m) noexcept nogil:
    cdef uint32_t i
    if n != m:
        return False
    for i in range(n):
        if _lower(<unsigned char>a[i]) != <unsigned char>lit[i]:
            return False
    return True


cdef inline unsigned char _name_byte(unsigned char x, bint cgi) noexcept nogil:
    # `cgi`: as a CGI/WSGI server files a field name, where '_' and '-' are one.
    return c'-' if cgi and x == c'_' else _lower(x)


cdef bint _ieq2(const char* a, uint32_t n, const char* b, uint32_t m, bint cgi) noexcept nogil:
    cdef uint32_t i
    if n != m:
        return False
    for i in range(n):
        if _name_byte(<unsigned char>a[i], cgi) != _name_byte(<unsigned char>b[i], cgi):
            return False
    return True


cdef inline bint _ows(char x) noexcept nogil:
    return x == c' ' or x == c'\t'


cdef uint32_t _line_end(const char* buf, uint32_t total, const Field* f) noexcept nogil:
    """Offset just past the LF that ends field line `f`."""
    cdef uint32_t from_ = f.value.off + f.value.len
    cdef const char* lf = <const char*>memchr(buf + from_, c'\n', total - from_)
    return <uint32_t>(lf - buf) + 1 if lf != NULL else total


cdef uint32_t _remove_marked(char* buf, uint32_t total, const Field* fields,
                             uint32_t count, const uint32_t* act) noexcept nogil:
    """Applies act[i] (_KEEP, _DROP, or a value length) to each field (fields are in
    buffer order); returns the bytes removed. One pass: each kept run moves once."""
    cdef uint32_t src = 0
    cdef uint32_t dst = 0
    cdef uint32_t i, start, end
    for i in range(count):
        if act[i] == _KEEP:
            continue
        if act[i] == _DROP:
            start = fields[i].name.off
            end = _line_end(buf, total, &fields[i])
        else:
            # The value's tail and the OWS after it: up to the line's CRLF.
            start = fields[i].value.off + act[i]
            end = _line_end(buf, total, &fields[i]) - 2
            if start >= end:
                continue
        if dst != src:
            memmove(buf + dst, buf + src, start - src)
        dst += start - src
        src = end
    if src == 0:
        return 0
    memmove(buf + dst, buf + src, total - src)
    return src - dst


cdef uint32_t _first_element(const char* buf, const Field* f) noexcept nogil:
    """Length of the first element of a list value (up to a ',', OWS trimmed; the
    value itself starts with no OWS)."""
    cdef uint32_t e = 0
    while e < f.value.len and buf[f.value.off + e] != c',':
        e += 1
    while e > 0 and _ows(buf[f.value.off + e - 1]):
        e -= 1
    return e


cdef bint _names_a_coding(const char* buf, const Field* f) noexcept nogil:
    cdef uint32_t i
    for i in range(f.value.len):
        if buf[f.value.off + i] != c',' and not _ows(buf[f.value.off + i]):
            return True
    return False


cdef bint _fold(char* buf, const Field* fields, uint32_t count, bint length, bint coding,
                uint32_t* act) noexcept nogil:
    """Marks in act what makes one field of a Content-Length sent as several equal
    values (`length`, RFC 9110 §8.6: a proxy sends one) and of a request's
    Transfer-Encoding sent with empty elements or over several lines (`coding`,
    §5.6.1; the parser let through only "chunked" then): the first line keeps its first
    value, "chunked" for the coding, the other lines go. An app that reads "5, 5" as no
    length, or ",chunked" as not chunked, would take the body for the next request."""
    cdef uint32_t i
    cdef const Field* f
    cdef bint first_length = True
    cdef bint first_coding = True
    cdef bint any_change = False
    for i in range(count):
        f = &fields[i]
        if length and _ieq(buf + f.name.off, f.name.len, b"content-length", 14):
            act[i] = _first_element(buf, f) if first_length else _DROP
            first_length = False
            any_change = True
        elif coding and _ieq(buf + f.name.off, f.name.len, b"transfer-encoding", 17):
            if first_coding and f.value.len >= 7 and _names_a_coding(buf, f):
                memcpy(buf + f.value.off, b"chunked", 7)
                act[i] = 7
                first_coding = False
            else:
                act[i] = _DROP
            any_change = True
    return any_change


cdef bint _protected(const char* name, uint32_t n) noexcept nogil:
    return (_ieq(name, n, b"host", 4) or _ieq(name, n, b"content-length", 14)
            or _ieq(name, n, b"transfer-encoding", 17))


cdef uint32_t _options(const char* buf, const Field* f, Span* out,
                       uint32_t have) noexcept nogil:
    """Appends the elements of Connection field `f` (OWS trimmed, empty ones skipped)
    to out[have:_MAX_OPTIONS]; returns the new count."""
    cdef uint32_t p = f.value.off
    cdef uint32_t end = f.value.off + f.value.len
    cdef uint32_t e, t
    while p < end and have < _MAX_OPTIONS:
        while p < end and _ows(buf[p]):
            p += 1
        e = p
        while e < end and buf[e] != c',':
            e += 1
        t = e
        while t > p and _ows(buf[t - 1]):
            t -= 1
        if t > p:
            out[have].off = p
            out[have].len = t - p
            have += 1
        p = e + 1
    return have


cdef uint32_t strip_hop_fields(char* buf, uint32_t total, const ReqHead* req) noexcept nogil:
    cdef uint32_t act[HTTP1_MAX_HEADERS]
    cdef Span options[_MAX_OPTIONS]
    cdef uint32_t n_options = 0
    cdef uint32_t i, j, n
    cdef const char* name
    cdef bint drop
    cdef bint any_drop = False
    for i in range(req.header_count):
        name = buf + req.headers[i].name.off
        if _ieq(name, req.headers[i].name.len, b"connection", 10):
            n_options = _options(buf, &req.headers[i], options, n_options)
    for i in range(req.header_count):
        name = buf + req.headers[i].name.off
        n = req.headers[i].name.len
        drop = (_ieq(name, n, b"connection", 10) or _ieq(name, n, b"keep-alive", 10)
                or _ieq(name, n, b"proxy-connection", 16) or _ieq(name, n, b"upgrade", 7)
                or guarded_name(name, n) == GUARDED_UNDERSCORE)
        if not drop and n_options > 0 and not _protected(name, n):
            for j in range(n_options):
                if _ieq2(name, n, buf + options[j].off, options[j].len, False):
                    drop = True
                    break
        act[i] = _DROP if drop else _KEEP
        any_drop = any_drop or drop
    if req.fold_length or req.fold_coding:
        any_drop = _fold(buf, req.headers, req.header_count, req.fold_length, req.fold_coding,
                         act) or any_drop
    if not any_drop:
        return 0
    return _remove_marked(buf, total, req.headers, req.header_count, act)


cdef uint32_t drop_fields(char* buf, uint32_t total, const ReqHead* req,
                          const char* name, uint32_t name_len) noexcept nogil:
    cdef uint32_t act[HTTP1_MAX_HEADERS]
    cdef uint32_t i, n
    cdef const char* field
    cdef bint drop
    cdef bint any_drop = False
    for i in range(req.header_count):
        field = buf + req.headers[i].name.off
        n = req.headers[i].name.len
        drop = (_ieq2(field, n, name, name_len, True)
                or guarded_name(field, n) == GUARDED_UNDERSCORE)
        act[i] = _DROP if drop else _KEEP
        any_drop = any_drop or drop
    if req.fold_length or req.fold_coding:
        any_drop = _fold(buf, req.headers, req.header_count, req.fold_length, req.fold_coding,
                         act) or any_drop
    if not any_drop:
        return 0
    return _remove_marked(buf, total, req.headers, req.header_count, act)


cdef uint32_t _drop_by_name(char* buf, uint32_t total, const Field* fields, uint32_t count,
                            const char* name, uint32_t name_len, bint cgi) noexcept nogil:
    cdef uint32_t act[HTTP1_MAX_HEADERS]
    cdef uint32_t i
    cdef bint any_drop = False
    for i in range(count):
        if _ieq2(buf + fields[i].name.off, fields[i].name.len, name, name_len, cgi):
            act[i] = _DROP
            any_drop = True
        else:
            act[i] = _KEEP
    if not any_drop:
        return 0
    return _remove_marked(buf, total, fields, count, act)


cdef uint32_t drop_named(char* buf, uint32_t total, const Field* fields, uint32_t count,
                         const char* name, uint32_t name_len) noexcept nogil:
    return _drop_by_name(buf, total, fields, count, name, name_len, False)


cdef uint32_t drop_owned(char* buf, uint32_t total, const Field* fields, uint32_t count,
                         const char* name, uint32_t name_len) noexcept nogil:
    return _drop_by_name(buf, total, fields, count, name, name_len, True)


cdef uint32_t fold_response(char* buf, uint32_t total, const RespHead* resp) noexcept nogil:
    cdef uint32_t act[HTTP1_MAX_HEADERS]
    if not resp.fold_length:
        return 0
    memset(act, 0, resp.header_count * sizeof(uint32_t))
    _fold(buf, resp.headers, resp.header_count, True, False, act)
    return _remove_marked(buf, total, resp.headers, resp.header_count, act)


cdef int _insert(char* buf, uint32_t at, uint32_t total, uint32_t cap,
                 uint32_t n) noexcept nogil:
    """Opens a gap of n bytes at `at`; -1 when total + n exceeds cap."""
    if total + n > cap:
        return -1
    memmove(buf + at + n, buf + at, total - at)
    return 0


cdef int add_field(char* buf, uint32_t head_len, uint32_t total, uint32_t cap,
                   const char* name, uint32_t name_len,
                   const char* value, uint32_t value_len) noexcept nogil:
    cdef uint32_t n = name_len + 2 + value_len + 2
    cdef uint32_t at = head_len - 2          # before the CRLF that ends the head
    cdef char* p
    if _insert(buf, at, total, cap, n) < 0:
        return -1
    p = buf + at
    memcpy(p, name, name_len)
    p += name_len
    p[0] = c':'
    p[1] = c' '
    p += 2
    memcpy(p, value, value_len)
    p += value_len
    p[0] = c'\r'
    p[1] = c'\n'
    return <int>n


cdef int make_close(char* buf, uint32_t total, uint32_t cap, const RespHead* resp) noexcept nogil:
    cdef uint32_t i
    cdef const Field* f
    cdef int keep = -1                       # the Connection field that will say close
    for i in range(resp.header_count):
        f = &resp.headers[i]
        if keep < 0 and f.value.len >= 5 and _ieq(buf + f.name.off, f.name.len, b"connection", 10):
            keep = <int>i
    if keep < 0 and total + CLOSE_LINE_BYTES > cap:
        return -1
    for i in range(resp.header_count):
        f = &resp.headers[i]
        if not _ieq(buf + f.name.off, f.name.len, b"connection", 10):
            continue
        if <int>i == keep:
            memcpy(buf + f.value.off, b"close", 5)
            memset(buf + f.value.off + 5, c' ', f.value.len - 5)
        else:
            memset(buf + f.value.off, c' ', f.value.len)
    if keep >= 0:
        return 0
    return add_field(buf, resp.head_len, total, cap, b"Connection", 10, b"close", 5)
