# route_filters.pxi: A route rule's URLRewrite (the request's path and Host changed on its
# way to the backend) and RequestRedirect (the node answers 3xx with a Location, the
# backend never asked), as Gateway API v1 says (apis/v1/httproute_types.go,
# HTTPURLRewriteFilter, HTTPRequestRedirectFilter, HTTPPathModifier).
#
# Included into fastpath/engine.pyx after routes.pxi; the state it touches is in
# engine.pxd (UrlFilter, compiled by routes_table.pxi). Nothing here allocates: a
# rewrite edits the head in its buffer, within the room the table's request_grow keeps
# (ROUTE_GROW_MAX at most); a redirect's Location is built on the stack, bounded.

cdef bint _splice(char* b, uint32_t* total, uint32_t cap, uint32_t off, uint32_t old_len,
                  const char* new, uint32_t new_len) noexcept nogil:
    """b[off:off+old_len] becomes new[0:new_len] in the head b[0:total] (room up to
    `cap`); False, nothing changed, when it does not fit."""
    if new_len > old_len and total[0] + (new_len - old_len) > cap:
        return False
    memmove(b + off + new_len, b + off + old_len, total[0] - off - old_len)
    if new_len:
        memcpy(b + off, new, new_len)
    total[0] = total[0] - old_len + new_len
    return True


cdef inline size_t _path_end(const char* p, size_t n) noexcept nogil:
    """Where the path of a target p[0:n] ends: at its query's "?" (kept as it is by
    every modifier), else n."""
    cdef const char* mark = <const char*>memchr(p, c'?', n)
    return n if mark == NULL else <size_t>(mark - p)


cdef inline bint _prefix_holds(const UrlFilter* u, const char* p, size_t n) noexcept nogil:
    """Does the rule's PathPrefix (whole segments) hold for the path p[0:n]? It did when
    the rule was chosen; checked again so a modifier never cuts a path it does not
    start (a table built by hand may pair any match with it)."""
    cdef size_t k = u.prefix.length
    return n >= k and (k == 0 or memcmp(p, u.prefix.data, k) == 0) and (
        n == k or p[k] == c'/')


cdef int _url_rewrite(Core* core, Flow* f, uint32_t base, ReqHead* req,
                      const UrlFilter* u) noexcept nogil:
    """URLRewrite on the origin-form request head at f.buf + base: the Host field's value
    becomes the hostname (added when the request had none), then the path as the
    modifier says; the query and percent-encodings stay as the client wrote them.
    STATUS_OK, the head parsed again into `req`; STATUS_RESET when it does not fit in
    the buffer or the parser refuses what it became (431)."""
    cdef char* b = f.buf + base
    cdef uint32_t total = f.tail - base
    cdef uint32_t cap = core.buffer_bytes - base
    cdef const Field* host
    cdef const char* p
    cdef size_t n, k
    cdef int added
    if u.hostname.length > 0:
        # The Host line comes after the request-line: edited first, the path's offsets
        # stay as parsed.
        if req.host_index >= 0:
            host = &req.headers[req.host_index]
            if not _splice(b, &total, cap, host.value.off, host.value.len, u.hostname.data,
                           <uint32_t>u.hostname.length):
                return STATUS_RESET
        else:
            added = add_field(b, req.head_len, total, cap, b"Host", 4, u.hostname.data,
                              u.hostname.length)
            if added < 0:
                return STATUS_RESET
            total += <uint32_t>added
    p = b + req.path.off
    n = _path_end(p, req.path.len)
    # (An asterisk-form target, "OPTIONS *", has no path to rewrite.)
    if u.path_op != PATH_KEEP and n > 0 and p[0] == c'/':
        if u.path_op == PATH_FULL:
            if not _splice(b, &total, cap, req.path.off, <uint32_t>n, u.path.data,
                           <uint32_t>u.path.length):
                return STATUS_RESET
        elif _prefix_holds(u, p, n):
            k = u.prefix.length
            if u.path.length == 0 and k == n:
                # "/foo" with prefix /foo, replaced by nothing: "/", never an empty path.
                if not _splice(b, &total, cap, req.path.off, <uint32_t>k, b"/", 1):
                    return STATUS_RESET
            elif not _splice(b, &total, cap, req.path.off, <uint32_t>k, u.path.data,
                             <uint32_t>u.path.length):
                return STATUS_RESET
    f.tail = base + total
    core.counters.route_rewrites += 1
    if parse_request_head(b, total, req, &core.http_limits) <= 0:
        return STATUS_RESET
    return STATUS_OK


cdef inline bint _put(char* out, size_t* at, const char* s, size_t n) noexcept nogil:
    if at[0] + n > ENGINE_LOCATION_MAX:
        return False
    memcpy(out + at[0], s, n)
    at[0] += n
    return True


cdef bint _location_host(const char* h, size_t n) noexcept nogil:
    """Is a request's host (lowercase, portless: authority_host) one a Location may
    carry as it is: a DNS name or an IP literal? Anything else ("a@b", "a/b", "a b")
    would let the client choose where the Location leads past its host."""
    cdef size_t i
    cdef char ch
    if n == 0:
        return False
    if h[0] == c'[':
        if n < 3 or h[n - 1] != c']':
            return False
        for i in range(1, n - 1):
            ch = h[i]
            if not (c'0' <= ch <= c'9' or c'a' <= ch <= c'f' or ch == c':' or ch == c'.'):
                return False
        return True
    for i in range(n):
        ch = h[i]
        if not (c'a' <= ch <= c'z' or c'0' <= ch <= c'9' or ch == c'-' or ch == c'.'
                or ch == c'_'):
            return False
    return True


cdef int _redirect_reply(Core* core, Conn* c, const char* head, const ReqHead* req,
                         const UrlFilter* u) noexcept nogil:
    """Answer the request (its head at `head`) with the rule's RequestRedirect: its
    status and Location scheme://host[:port]path[?query], the host the filter's or the
    request's own (its Host, or an absolute-form target's authority), the path the
    request's as the modifier changes it, the query as it came. 400 when the request's
    host cannot be written in a Location, 414 when the Location would be over
    ENGINE_LOCATION_MAX. STATUS_CLOSE: the pair closes after the answer, as after the engine's
    other answers."""
    cdef char loc[ENGINE_LOCATION_MAX]
    cdef char host[256]
    cdef char num[8]
    cdef size_t at = 0
    cdef size_t hn, n, k
    cdef int port = -1
    cdef const char* p
    cdef bint ok
    if u.hostname.length > 0:
        hn = u.hostname.length
        memcpy(host, u.hostname.data, hn)
    else:
        hn = 0
        if req.authority.len > 0:
            hn = authority_host(head + req.authority.off, req.authority.len, host,
                                sizeof(host), &port)
        if not _location_host(host, hn):
            _http_reply(core, c, 400, b"the request's host cannot be redirected to\n", -1)
            return STATUS_CLOSE
    p = head + req.path.off
    n = req.path.len
    k = _path_end(p, n)
    ok = (_put(loc, &at, b"Location: ", 10) and _put(loc, &at, u.scheme.data, u.scheme.length)
          and _put(loc, &at, b"://", 3) and _put(loc, &at, host, hn))
    if ok and u.port != 0:
        ok = _put(loc, &at, num, <size_t>snprintf(num, sizeof(num), b":%u", <unsigned>u.port))
    if ok and (k == 0 or p[0] != c'/'):
        # An absolute-form target without a path ("http://h?q"), or asterisk-form:
        # the path is "/".
        if u.path_op == PATH_FULL:
            ok = _put(loc, &at, u.path.data, u.path.length)
        else:
            ok = _put(loc, &at, b"/", 1)
    elif ok and u.path_op == PATH_FULL:
        ok = _put(loc, &at, u.path.data, u.path.length)
    elif ok and u.path_op == PATH_PREFIX and _prefix_holds(u, p, k):
        if u.path.length == 0 and u.prefix.length == k:
            ok = _put(loc, &at, b"/", 1)
        else:
            ok = (_put(loc, &at, u.path.data, u.path.length)
                  and _put(loc, &at, p + u.prefix.length, k - u.prefix.length))
    elif ok:
        ok = _put(loc, &at, p, k)
    ok = ok and _put(loc, &at, p + k, n - k) and _put(loc, &at, b"\r\n", 2)
    if not ok:
        _http_reply(core, c, 414, b"the redirect's location would be too long\n", -1)
        return STATUS_CLOSE
    core.counters.route_redirects += 1
    _http_reply_fields(core, c, u.redirect, NULL, 0, loc, <int>at)
    return STATUS_CLOSE
