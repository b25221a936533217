# http1_api.pxi: The parser's Python boundary: parse_request/parse_response, the
# ChunkedFramer and the limits as dicts, for tests, tools and config time (never the
# forwarding path, which calls the cdef functions without the GIL).
#
# Included into fastpath/http1.pyx (one extension).

MAX_HEADERS = HTTP1_MAX_HEADERS      # field lines a head can hold (Limits.max_headers at most)

_LIMIT_NAMES = ("max_request_line", "max_headers", "max_header_bytes", "max_head_bytes",
                "max_chunk_ext", "max_trailer_bytes", "max_chunk_size")
_METHOD_NAMES = {METHOD_OTHER: "OTHER", METHOD_GET: "GET", METHOD_HEAD: "HEAD",
                 METHOD_POST: "POST", METHOD_PUT: "PUT", METHOD_DELETE: "DELETE",
                 METHOD_CONNECT: "CONNECT", METHOD_OPTIONS: "OPTIONS",
                 METHOD_TRACE: "TRACE", METHOD_PATCH: "PATCH"}
_METHOD_CODES = {name: code for code, name in _METHOD_NAMES.items()}
_TARGET_FORMS = {TARGET_ORIGIN: "origin", TARGET_ABSOLUTE: "absolute",
                 TARGET_AUTHORITY: "authority", TARGET_ASTERISK: "asterisk"}
_BODY_KINDS = {BODY_NONE: "none", BODY_LENGTH: "length", BODY_CHUNKED: "chunked",
               BODY_UNTIL_CLOSE: "until_close", BODY_TUNNEL: "tunnel"}
_PROBLEMS = {
    HTTP1_EPARSE: "malformed message",
    HTTP1_ELIMIT_LINE: "request-line too long",
    HTTP1_ELIMIT_HEADERS: "header fields too large",
    HTTP1_EVERSION: "HTTP version not supported",
    HTTP1_ELENGTH: "invalid message framing (Content-Length / Transfer-Encoding)",
    HTTP1_ETRANSFER: "transfer coding not implemented",
    HTTP1_ELIMIT_CHUNK: "chunked framing over its limits",
}


DEBUG_BUILD = bool(MESHNODE_DEBUG)
"""Compiled with MESHNODE_DEBUG=1: bounds checks and invariants on (tests/fastpath/
test_debug_build.py runs the suites against such a build)."""


def default_limits() -> dict:
    """The codec's default limits, by Limits field name."""
    cdef Limits lim
    limits_init(&lim)
    return {"max_request_line": lim.max_request_line, "max_headers": lim.max_headers,
            "max_header_bytes": lim.max_header_bytes, "max_head_bytes": lim.max_head_bytes,
            "max_chunk_ext": lim.max_chunk_ext, "max_trailer_bytes": lim.max_trailer_bytes,
            "max_chunk_size": lim.max_chunk_size}


cdef int _limits_from(dict kw, Limits* lim) except -1:
    limits_init(lim)
    for name, value in kw.items():
        if name not in _LIMIT_NAMES:
            raise TypeError("unknown HTTP/1 limit %r (known: %s)"
                            % (name, ", ".join(_LIMIT_NAMES)))
        if not isinstance(value, int) or value < 0:
            raise ValueError("%s must be an int >= 0, not %r" % (name, value))
        if name == "max_chunk_size":
            if value > INT64_MAX:
                raise ValueError("max_chunk_size must be at most %d" % INT64_MAX)
            lim.max_chunk_size = value
            continue
        if name == "max_headers" and value > HTTP1_MAX_HEADERS:
            raise ValueError("max_headers must be at most %d (HTTP1_MAX_HEADERS)"
                             % HTTP1_MAX_HEADERS)
        if name == "max_head_bytes" and value > INT_MAX:
            raise ValueError("max_head_bytes must be at most %d" % INT_MAX)
        if value > UINT32_MAX:
            raise ValueError("%s must be at most %d" % (name, UINT32_MAX))
        if name == "max_request_line":
            lim.max_request_line = value
        elif name == "max_headers":
            lim.max_headers = value
        elif name == "max_header_bytes":
            lim.max_header_bytes = value
        elif name == "max_head_bytes":
            lim.max_head_bytes = value
        elif name == "max_chunk_ext":
            lim.max_chunk_ext = value
        else:
            lim.max_trailer_bytes = value
    return 0


cdef int raise_http_error(int rc, bint upstream) except -1:
    """The one place an HTTP1_E* code becomes fastpath.errors.HTTPError."""
    status = 502 if upstream else request_error_status(rc)
    problem = _PROBLEMS.get(rc, "unknown status %d" % rc)
    raise HTTPError(status, "%s%s" % ("upstream response: " if upstream else "", problem),
                    status_name(rc).decode("ascii"))


cdef inline bytes _span(bytes data, Span s):
    return data[s.off:s.off + s.len]


cdef list _headers(bytes data, const Field* fields, uint32_t count):
    cdef uint32_t k
    return [(_span(data, fields[k].name), _span(data, fields[k].value)) for k in range(count)]


def parse_request(bytes data, **limits) -> dict | None:
    """Parse the request head at the start of `data`: a dict, or None when incomplete.

    Raises HTTPError with the status to answer (400, 414, 431, 501, 505). Keyword
    arguments override default_limits(). Spans come back as bytes copies.
    """
    cdef Limits lim
    cdef ReqHead head
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(data)
    cdef int rc
    _limits_from(limits, &lim)
    with nogil:
        rc = parse_request_head(buf, n, &head, &lim)
    if rc == HTTP1_AGAIN:
        return None
    if rc < 0:
        raise_http_error(rc, False)
    return {
        "head_len": head.head_len,
        "method": _span(data, head.method_span),
        "method_kind": _METHOD_NAMES[head.method],
        "target": _span(data, head.target),
        "target_form": _TARGET_FORMS[head.target_form],
        "authority": _span(data, head.authority),
        "path": _span(data, head.path),
        "version": (1, head.version_minor),
        "headers": _headers(data, head.headers, head.header_count),
        "host_index": head.host_index,
        "content_length": head.content_length,
        "body": _BODY_KINDS[head.body],
        "keep_alive": bool(head.keep_alive),
        "chunked": bool(head.chunked),
        "expect_continue": bool(head.expect_continue),
        "upgrade": bool(head.upgrade),
        "upgrade_value": _span(data, head.upgrade_value),
        "has_host": bool(head.has_host),
        "fold_length": bool(head.fold_length),
        "fold_coding": bool(head.fold_coding),
    }


def parse_response(bytes data, head_request=False, connect_request=False, **limits) -> dict | None:
    """Parse the response head at the start of `data`: a dict, or None when incomplete.

    `head_request` / `connect_request`: the request was a HEAD / a CONNECT (no body /
    a 2xx makes a tunnel). Raises HTTPError(502, ...) for a response to refuse.
    """
    cdef Limits lim
    cdef RespHead head
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(data)
    cdef int rc
    cdef Method method = METHOD_HEAD if head_request else (
        METHOD_CONNECT if connect_request else METHOD_GET)
    if head_request and connect_request:
        raise ValueError("a request is a HEAD or a CONNECT, not both")
    _limits_from(limits, &lim)
    with nogil:
        rc = parse_response_head(buf, n, &head, &lim, method)
    if rc == HTTP1_AGAIN:
        return None
    if rc < 0:
        raise_http_error(rc, True)
    return {
        "head_len": head.head_len,
        "version": (1, head.version_minor),
        "status": head.status,
        "reason": _span(data, head.reason),
        "headers": _headers(data, head.headers, head.header_count),
        "content_length": head.content_length,
        "body": _BODY_KINDS[head.body],
        "keep_alive": bool(head.keep_alive),
        "chunked": bool(head.chunked),
        "upgrade": bool(head.upgrade),
        "fold_length": bool(head.fold_length),
    }


cdef class ChunkedFramer:
    """One chunked body's framing over pieces fed in order (tests and tools).

    feed() answers how many bytes of the piece belong to the body; once `done`, the
    rest of that piece and anything later is the next message's. Errors raise
    HTTPError (400 malformed, 413 over a limit) and stick.
    """
    cdef ChunkState st

    def __init__(self, **limits):
        cdef Limits lim
        _limits_from(limits, &lim)
        chunk_init(&self.st, &lim)

    def feed(self, bytes data) -> int:
        cdef const char* buf = PyBytes_AS_STRING(data)
        cdef size_t n = <size_t>PyBytes_GET_SIZE(data)
        cdef Py_ssize_t rc
        with nogil:
            rc = chunked_advance(&self.st, buf, n, NULL, NULL)
        if rc < 0:
            raise_http_error(<int>rc, False)
        return rc

    def decode(self, bytes data) -> tuple:
        """As feed(), and also the chunk data in what was consumed: (consumed, data)."""
        cdef const char* buf = PyBytes_AS_STRING(data)
        cdef size_t n = <size_t>PyBytes_GET_SIZE(data)
        cdef size_t pos = 0, off, run
        cdef Py_ssize_t rc
        parts = []
        while pos < n and self.st.phase != CHUNK_DONE:
            rc = chunked_advance(&self.st, buf + pos, n - pos, &off, &run)
            if rc < 0:
                raise_http_error(<int>rc, False)
            if run:
                parts.append(data[pos + off:pos + off + run])
            pos += <size_t>rc
        return pos, b"".join(parts)

    def relay(self, bytearray data) -> int:
        """chunked_relay() over `data`, which it edits as the engine's buffer is: guarded
        trailer fields cut out, and `data` shortened by what was cut. Returns the bytes
        that belong to the message; not done and fewer than len(data): the rest is
        held, to be given again at the start of the next call. Do not mix with feed()."""
        cdef size_t cut = 0
        cdef Py_ssize_t rc
        cdef char* buf = data
        cdef size_t n = <size_t>len(data)
        with nogil:
            rc = chunked_relay(&self.st, buf, n, &cut)
        if rc < 0:
            raise_http_error(<int>rc, False)
        if cut:
            del data[n - cut:]
        return rc

    @property
    def done(self) -> bool:
        return self.st.phase == CHUNK_DONE

    @property
    def body_bytes(self) -> int:
        return self.st.body_bytes


def chunked_frame(bytes data, **limits) -> tuple:
    """Frame a whole chunked body at the start of `data`: (consumed, done)."""
    framer = ChunkedFramer(**limits)
    consumed = framer.feed(data)
    return consumed, framer.done


def normalize_host(bytes authority) -> tuple | None:
    """authority_host() from Python: (host, port or None), or None when unroutable."""
    cdef char out[256]
    cdef int port
    cdef size_t n = authority_host(PyBytes_AS_STRING(authority),
                                   <size_t>PyBytes_GET_SIZE(authority), out, sizeof(out), &port)
    if n == 0:
        return None
    return out[:n], (port if port >= 0 else None)


def status_for(str code) -> int:
    """The HTTP status a client gets for a refused request's code name ("EPARSE"...)."""
    for rc in _PROBLEMS:
        if status_name(rc).decode("ascii") == code:
            return request_error_status(rc)
    raise KeyError(code)


# --- benchmarks: loops in C, so bench/ measures the parser and not Python calls ----------

def bench_parse_request(bytes data, Py_ssize_t n) -> int:
    """parse_request_head over `data` n times without the GIL; the last result."""
    cdef Limits lim
    cdef ReqHead head
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef size_t size = <size_t>PyBytes_GET_SIZE(data)
    cdef Py_ssize_t k
    cdef int rc = 0
    limits_init(&lim)
    with nogil:
        for k in range(n):
            rc = parse_request_head(buf, size, &head, &lim)
    return rc


def bench_parse_response(bytes data, Py_ssize_t n) -> int:
    """parse_response_head over `data` n times without the GIL; the last result."""
    cdef Limits lim
    cdef RespHead head
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef size_t size = <size_t>PyBytes_GET_SIZE(data)
    cdef Py_ssize_t k
    cdef int rc = 0
    limits_init(&lim)
    with nogil:
        for k in range(n):
            rc = parse_response_head(buf, size, &head, &lim, METHOD_GET)
    return rc


def bench_chunked(bytes data, Py_ssize_t n) -> int:
    """chunked_advance (framing mode) over `data` n times, fresh state each; the last result."""
    cdef Limits lim
    cdef ChunkState st
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef size_t size = <size_t>PyBytes_GET_SIZE(data)
    cdef Py_ssize_t k
    cdef Py_ssize_t rc = 0
    limits_init(&lim)
    with nogil:
        for k in range(n):
            chunk_init(&st, &lim)
            rc = chunked_advance(&st, buf, size, NULL, NULL)
    return rc
