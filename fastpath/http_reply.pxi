# http_reply.pxi: the answers the engine makes itself (a 4xx for a request it refuses, a
# 5xx for an upstream that failed, a timeout, a route with no backend, a pool overflow,
# a fault's abort): their status line, the fields they carry and their plain-text body.
# Apart from http_stream.pxi (which frames what clients and upstreams send) because
# every part of the path answers through them: routes, filters, retries, pools, faults.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef const char* _reason(int status) noexcept nogil:
    if status == 301:
        return b"Moved Permanently"
    if status == 302:
        return b"Found"
    if status == 303:
        return b"See Other"
    if status == 307:
        return b"Temporary Redirect"
    if status == 308:
        return b"Permanent Redirect"
    if status == 502:
        return b"Bad Gateway"
    if status == 400:
        return b"Bad Request"
    if status == 403:
        return b"Forbidden"
    if status == 404:
        return b"Not Found"
    if status == 408:
        return b"Request Timeout"
    if status == 413:
        return b"Content Too Large"
    if status == 414:
        return b"URI Too Long"
    if status == 429:
        return b"Too Many Requests"
    if status == 431:
        return b"Request Header Fields Too Large"
    if status == 501:
        return b"Not Implemented"
    if status == 503:
        return b"Service Unavailable"
    if status == 505:
        return b"HTTP Version Not Supported"
    return b"Error"


cdef void _http_reply(Core* core, Conn* c, int status, const char* body,
                      int body_len) noexcept nogil:
    _http_reply_fields(core, c, status, body, body_len, NULL, 0)


cdef inline bint _reply_owed(const Conn* c) noexcept nogil:
    """Would _http_reply_fields answer on c now? Not when it answered already or the
    client's side was ended, nor when nothing was asked since the last answer."""
    if c.flags & CONN_HTTP_REPLIED or c.down.fd < 0 or c.u2d.shut:
        return False
    return not (c.n_pend == 0 and c.flags & CONN_ANSWERED
                and (c.d2u.buf == NULL or c.d2u.tail == c.d2u.head))


cdef void _http_reply_fields(Core* core, Conn* c, int status, const char* body,
                             int body_len, const char* fields, int fields_len) noexcept nogil:
    """Answer the client ourselves (at most once per connection) before the pair closes:
    `status` with a text body (`body_len` bytes of `body`, all of a C string `body` when
    -1, or the reason phrase when `body` is NULL), Connection: close, and the field
    lines fields[0:fields_len] (each ending CRLF; a redirect's Location: route_filters.pxi).
    The request answered is the oldest pending one, else the head being framed (one
    that did not parse has no method): to HEAD, the body's length and no body (RFC 9110
    §9.3.2; the caller's node frames it so when the answer is inbound).

    What the client sent and we did not read is drained first (bounded): closing a
    socket with unread bytes sends RST, which can make the client drop our answer
    (RFC 9112 §9.6 asks for a lingering close; this is the cheap part of one)."""
    cdef char sink[4096]
    cdef char msg[1024 + ENGINE_LOCATION_MAX]
    cdef const char* reason = _reason(status)
    cdef int n, i
    cdef Py_ssize_t r
    cdef bint bodiless
    if not _reply_owed(c):
        return
    c.flags |= CONN_HTTP_REPLIED
    _count_answer(core, c, status, -1)
    bodiless = (c.pend_method[c.pend_first] if c.n_pend > 0
                else c.head_method) == METHOD_HEAD
    if c.n_pend > 0:
        # The answer to the oldest request sent on; any behind it are cut off, and
        # counted so when the pair closes (_count_cut_off).
        c.resp_phase = RESP_HEAD
        c.pend_first = (c.pend_first + 1) % ENGINE_HTTP_PIPELINE_MAX
        c.n_pend -= 1
        _load_move(core, c, -1, -1)
    if status == 404:
        core.counters.http_no_route += 1
    elif status == 503:
        core.counters.http_unavailable += 1
    elif (status == 400 or status == 413 or status == 414 or status == 431 or status == 501
            or status == 505):
        # What a request that does not parse or exceeds a limit is answered
        # (http1.request_error_status), and the edits it cannot take. The engine's other
        # answers count by their cause where they are made: 403 callers_refused or
        # http_upgrade_refused, 408 http_head_timeouts, 500 route_no_backend or
        # route_filter_unresolved, 502 http_bad_response, 504 route_timeouts, a fault's
        # abort faults_aborted (one with these statuses counts here too).
        core.counters.http_bad_request += 1
    if c.down.ssl == NULL:
        for i in range(256):
            if net.recv(c.down.fd, sink, sizeof(sink), 0) <= 0:
                break
    if body == NULL:
        body = reason
        body_len = <int>strlen(reason)
    elif body_len == -1:
        body_len = <int>strlen(body)
    if body_len < 0 or body_len > 512:
        body_len = 0
    if fields == NULL or fields_len < 0 or fields_len > ENGINE_LOCATION_MAX:
        fields, fields_len = b"", 0
    # (Inbound, a 502 says the app failed the request: the caller's node may retry it
    # as the connection error it was. No answer of the app's carries the field: its
    # node takes it out, retry.pxi _cut_owned.)
    n = snprintf(msg, sizeof(msg),
                 b"HTTP/1.1 %d %s\r\n%scontent-type: text/plain\r\ncontent-length: %d\r\n"
                 b"connection: close\r\n%.*s\r\n%.*s%s",
                 status, reason,
                 b"x-meshnode-failure: upstream\r\n" if c.down.ssl != NULL and status == 502 else b"",
                 <int>(body_len + (1 if body == reason else 0)), fields_len,
                 fields, 0 if bodiless else body_len, body,
                 b"\n" if body == reason and not bodiless else b"")
    if n <= 0 or n >= <int>sizeof(msg):
        return
    if c.down.ssl != NULL:
        # Inbound: the peer node's outbound side reads this as the app's answer.
        r = _send(&c.down, msg, <uint32_t>n)
        if r > 0:
            core.counters.inbound.bytes_sent += <uint64_t>r
        _shut(&c.down)
        return
    r = net.send(c.down.fd, msg, <size_t>n, net.MSG_NOSIGNAL)
    if r > 0:
        core.counters.outbound.bytes_sent += <uint64_t>r
    net.shutdown(c.down.fd, net.SHUT_WR)
