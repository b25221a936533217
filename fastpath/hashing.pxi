# hashing.pxi: Consistent hashing (DestinationRule consistentHash, Envoy's RING_HASH and
# MAGLEV): a request's hash key read where it lies in the head, the service's ring or
# Maglev table built at install, the endpoint a key picks, and the cookie generated for
# a request that had none.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# The hash is FNV-1a 64 over the key's bytes, finished by MurmurHash3's fmix64. FNV-1a
# takes one byte at a time, so a percent-encoded query value is hashed as it is decoded
# and a key is never copied (no buffer, no malloc per request); keys are short (a
# header value, a cookie), where xxHash's speed on long inputs buys nothing. FNV-1a's
# high bits mix poorly on short inputs, which a ring (ordered by the whole 64 bits) and a
# Maglev table (modulo its size) both feel: fmix64 spreads every input bit over all 64.
# The hash is unseeded: every worker of a node, and every node, must send one key to the
# same endpoint. A caller can choose keys that land on one endpoint, as with any
# consistent hash (Envoy's too); that costs it nothing it could not do by replaying one
# key, and the endpoint's own limits still apply.
#
# Per request, not per connection: the HTTP stream frames each request of a kept-alive
# client and asks _rebalance whether its endpoint differs from the kept upstream's; a
# request whose key picks another endpoint waits for a switch (the upstream is pooled)
# and is bound to the endpoint its key picks (_hash_request keeps the key in the Conn
# from the routing of the request to its bind). A request with no key stays where the
# connection is (any endpoint is as good as Envoy's random pick, and a switch costs).

from libc.stdlib cimport qsort

cdef enum:
    # Envoy's and Istio's defaults: ringHash.minimumRingSize, maglev.tableSize.
    HASH_RING_DEFAULT = 1024
    HASH_MAGLEV_DEFAULT = 65537
    # The most a service's table may hold, per worker: a ring point is 12 bytes (a
    # million: 12 MiB), a Maglev slot 4 (Istio's own limit, 5000011: 20 MiB).
    HASH_RING_MAX = 1048576
    HASH_MAGLEV_MAX = 5000011
    # Ring points (or Maglev slots) looked at past a passed-over endpoint before the
    # endpoints are scanned in order: bounds a pick when most endpoints are down.
    HASH_PROBES = 64
    # httpCookie name and path bytes (the Set-Cookie line they make is reserved room
    # in every answer's buffer).
    HASH_COOKIE_NAME_MAX = 128
    HASH_COOKIE_PATH_MAX = 256
    HASH_COOKIE_VALUE_BYTES = 16        # 64 bits in hex, as Envoy writes its value

cdef uint64_t _FNV_OFFSET = 0xcbf29ce484222325ULL
cdef uint64_t _FNV_PRIME = 0x100000001b3ULL

cdef Name _COOKIE_FIELD             # the Cookie field's name, as _name_eq compares it
_COOKIE_FIELD.data = b"cookie"
_COOKIE_FIELD.length = 6

HASH_KEYS = {"header": HASH_KEY_HEADER, "cookie": HASH_KEY_COOKIE,
             "source-ip": HASH_KEY_SOURCE_IP, "query": HASH_KEY_QUERY}
"""What RouteTable.set_hash() hashes a request by (HashKeyKind)."""


cdef inline uint64_t _fnv_add(uint64_t h, const char* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * _FNV_PRIME
    return h


cdef inline uint64_t _fmix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t _hash_bytes(const char* p, size_t n) noexcept nogil:
    return _fmix(_fnv_add(_FNV_OFFSET, p, n))


def hash_key(bytes key) -> int:
    """The hash of a key's bytes as the engine computes it (for tests and tools)."""
    return _hash_bytes(<const char*>key, len(key))


# --- the key of a request ---------------------------------------------------------------------

cdef bint _key_header(const char* b, const ReqHead* req, const Name* name,
                      uint64_t* out) noexcept nogil:
    """httpHeaderName: its value; several lines of it, the sum of their values' hashes
    (Envoy sorts them before hashing: either way their order does not count)."""
    cdef uint32_t i
    cdef uint64_t acc = 0
    cdef bint found = False
    for i in range(req.header_count):
        if _name_eq(name, b + req.headers[i].name.off, req.headers[i].name.len):
            acc += _hash_bytes(b + req.headers[i].value.off, req.headers[i].value.len)
            found = True
    out[0] = acc
    return found


cdef bint _key_cookie(const char* b, const ReqHead* req, const Name* name,
                      uint64_t* out) noexcept nogil:
    """httpCookie: the first cookie of that name (case counts, RFC 6265 §5.4) in any
    Cookie field, its value without the quotes around it, as Envoy's parseCookieValue
    reads it. An empty value is no cookie."""
    cdef uint32_t i, p, e, eq, vs, ve, n
    cdef const char* v
    for i in range(req.header_count):
        if req.headers[i].name.len != 6 or not _name_eq(&_COOKIE_FIELD, b + req.headers[i].name.off, 6):
            continue
        v = b + req.headers[i].value.off
        n = req.headers[i].value.len
        p = 0
        while p < n:
            while p < n and (v[p] == c' ' or v[p] == c'\t'):
                p += 1
            e = p
            while e < n and v[e] != c';':
                e += 1
            eq = p
            while eq < e and v[eq] != c'=':
                eq += 1
            if eq < e and eq - p == name.length and memcmp(v + p, name.data, name.length) == 0:
                vs = eq + 1
                ve = e
                while ve > vs and (v[ve - 1] == c' ' or v[ve - 1] == c'\t'):
                    ve -= 1
                if ve - vs >= 2 and v[vs] == c'"' and v[ve - 1] == c'"':
                    vs += 1
                    ve -= 1
                if ve == vs:
                    return False
                out[0] = _hash_bytes(v + vs, ve - vs)
                return True
            p = e + 1
    return False


cdef inline int _hex_digit(unsigned char ch) noexcept nogil:
    if ch >= c'0' and ch <= c'9':
        return ch - c'0'
    if ch >= c'a' and ch <= c'f':
        return ch - c'a' + 10
    if ch >= c'A' and ch <= c'F':
        return ch - c'A' + 10
    return -1


cdef inline uint32_t _pct_byte(const char* s, uint32_t n, uint32_t i, unsigned char* ch) noexcept nogil:
    """The byte of a percent-encoded string at s[i] (decoded: %XX is one byte), and the
    index after it. A '%' not followed by two hex digits stands for itself."""
    cdef int hi, lo
    if s[i] == c'%' and i + 2 < n:
        hi = _hex_digit(<unsigned char>s[i + 1])
        lo = _hex_digit(<unsigned char>s[i + 2])
        if hi >= 0 and lo >= 0:
            ch[0] = <unsigned char>(hi * 16 + lo)
            return i + 3
    ch[0] = <unsigned char>s[i]
    return i + 1


cdef bint _key_query(const char* b, const ReqHead* req, const Name* name,
                     uint64_t* out) noexcept nogil:
    """httpQueryParameterName: the first parameter of that name (compared decoded), its
    value decoded (empty, or no '=': the empty value, a key all the same, as Envoy's)."""
    cdef const char* s = b + req.path.off
    cdef uint32_t n = req.path.len
    cdef uint32_t p = 0
    cdef uint32_t e, i, k
    cdef unsigned char ch
    cdef uint64_t h
    cdef bint same
    while p < n and s[p] != c'?':
        p += 1
    p += 1
    while p < n:
        e = p
        while e < n and s[e] != c'&':
            e += 1
        # The name, decoded, against the configured one.
        i = p
        k = 0
        same = True
        while i < e and s[i] != c'=':
            i = _pct_byte(s, e, i, &ch)
            if k >= name.length or <unsigned char>name.data[k] != ch:
                same = False
            k += 1
        if same and k == name.length and (i > p or name.length == 0):
            h = _FNV_OFFSET
            if i < e:
                i += 1                          # the '='
                while i < e:
                    i = _pct_byte(s, e, i, &ch)
                    h = (h ^ ch) * _FNV_PRIME
            out[0] = _fmix(h)
            return True
        p = e + 1
    return False


cdef bint _key_source(const Conn* c, uint64_t* out) noexcept nogil:
    """useSourceIp: the caller's address (its port does not count)."""
    cdef const net.sockaddr_storage* a = &c.peer_addr
    if a.ss_family == net.AF_INET:
        out[0] = _hash_bytes(<const char*>&(<const net.sockaddr_in*>a).sin_addr, 4)
        return True
    if a.ss_family == net.AF_INET6:
        out[0] = _hash_bytes(<const char*>&(<const net.sockaddr_in6*>a).sin6_addr, 16)
        return True
    return False


cdef inline void _cookie_text(uint64_t value, char* out) noexcept nogil:
    """A generated cookie's value: 16 lowercase hex digits."""
    cdef int i
    for i in range(HASH_COOKIE_VALUE_BYTES):
        out[i] = b"0123456789abcdef"[(value >> (60 - 4 * i)) & 15]


cdef void _hash_request(Core* core, Conn* c, const Service* svc, const char* b,
                        const ReqHead* req) noexcept nogil:
    """The key of the request head at b for `svc` (a hashing balancer's), kept in
    c.hash_key for the endpoint's bind (hash_state 1), or none (0). A cookie key the
    request lacks is generated when the policy has a ttl: one value per client
    connection, as Envoy's (its answer sets it: hash_state 2)."""
    cdef const HashPolicy* hp = svc.hash
    cdef char text[HASH_COOKIE_VALUE_BYTES]
    cdef bint found = False
    c.hash_state = 0
    if hp == NULL:
        return
    if hp.key == HASH_KEY_HEADER:
        found = _key_header(b, req, &hp.name, &c.hash_key)
    elif hp.key == HASH_KEY_QUERY:
        found = _key_query(b, req, &hp.name, &c.hash_key)
    elif hp.key == HASH_KEY_SOURCE_IP:
        found = _key_source(c, &c.hash_key)
    elif hp.key == HASH_KEY_COOKIE:
        found = _key_cookie(b, req, &hp.name, &c.hash_key)
        if not found and hp.ttl_s >= 0:
            while c.hash_cookie == 0:
                c.hash_cookie = _route_random(core)
            _cookie_text(c.hash_cookie, text)
            c.hash_key = _hash_bytes(text, HASH_COOKIE_VALUE_BYTES)
            c.hash_state = 2
            return
    if found:
        c.hash_state = 1


cdef void _hash_framed(Conn* c, uint32_t slot) noexcept nogil:
    """The request framed into pipeline slot `slot`: does its answer set the cookie?"""
    if c.hash_state == 2:
        c.pend_cookie |= (<uint32_t>1) << slot
    else:
        c.pend_cookie &= ~((<uint32_t>1) << slot)


cdef int _hash_set_cookie(Core* core, Conn* c, uint32_t start, uint32_t head_len) noexcept nogil:
    """The final answer at u2d.buf + start to a request whose cookie was generated:
    a Set-Cookie line goes in, as Envoy's: name="value"; Max-Age=ttl (none: a session
    cookie); Path=path; HttpOnly. The bytes added (0 when none is due), or -1 when it
    does not fit (cannot happen: the table's response_grow keeps the room)."""
    cdef const HashPolicy* hp
    cdef char line[HASH_COOKIE_NAME_MAX + HASH_COOKIE_PATH_MAX + 96]
    cdef char text[HASH_COOKIE_VALUE_BYTES]
    cdef int n, added
    if not (c.pend_cookie >> c.pend_first) & 1:
        return 0
    c.pend_cookie &= ~((<uint32_t>1) << c.pend_first)
    hp = c.table.services[c.service].hash
    if hp == NULL or c.hash_cookie == 0:
        return 0                        # (a table without it since: nothing to set)
    _cookie_text(c.hash_cookie, text)
    n = snprintf(line, sizeof(line), b"%.*s=\"%.*s\"", <int>hp.name.length, hp.name.data,
                 <int>HASH_COOKIE_VALUE_BYTES, text)
    if hp.ttl_s > 0:
        n += snprintf(line + n, sizeof(line) - n, b"; Max-Age=%lld", <long long>hp.ttl_s)
    if hp.path.length > 0:
        n += snprintf(line + n, sizeof(line) - n, b"; Path=%.*s", <int>hp.path.length,
                      hp.path.data)
    n += snprintf(line + n, sizeof(line) - n, b"; HttpOnly")
    added = add_field(c.u2d.buf + start, head_len, c.u2d.tail - start,
                      core.buffer_bytes - start, b"set-cookie", 10, line, <uint32_t>n)
    if added < 0:
        return -1
    c.u2d.tail += <uint32_t>added
    core.counters.hash_cookies_set += 1
    return added


# --- the endpoint a key picks ------------------------------------------------------------------

cdef uint32_t _hash_walk(Core* core, Service* svc, uint32_t slot) noexcept nogil:
    """The endpoint at `slot` of the service's ring or table, or, passed over, the next
    slot's not passed over: its keys move on to the next endpoint along, the other
    endpoints keep theirs. Past HASH_PROBES slots, the endpoints in order from it."""
    cdef const HashPolicy* hp = svc.hash
    cdef uint32_t k = hp.owners[slot]
    cdef uint32_t first = k
    cdef int i
    if _endpoint_up(core, &svc.endpoints[k]):
        return k
    for i in range(HASH_PROBES):
        slot += 1
        if slot == hp.n_slots:
            slot = 0
        k = hp.owners[slot]
        if _endpoint_up(core, &svc.endpoints[k]):
            return k
    return _first_up(core, svc, first)


cdef uint32_t _hash_pick(Core* core, Conn* c, Service* svc) noexcept nogil:
    """The endpoint c's request key picks (c.hash_key, hash_state), or, with no key
    (none in the request, or a pair that is not HTTP and not hashed by its source
    address), one at random, as Envoy picks for a request its hash policy gives no
    hash."""
    cdef const HashPolicy* hp = svc.hash
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t lo, hi, mid
    if not c.flags & CONN_HTTP:
        c.hash_state = 0
        if hp != NULL and hp.key == HASH_KEY_SOURCE_IP and _key_source(c, &c.hash_key):
            c.hash_state = 1
    if hp == NULL or hp.n_slots == 0 or c.hash_state == 0:
        core.counters.hash_no_key += 1
        return _first_up(core, svc, <uint32_t>(_route_random(core) % n))
    if hp.points == NULL:               # Maglev: the table's slot
        return _hash_walk(core, svc, <uint32_t>(c.hash_key % hp.n_slots))
    # Ring: the first point at or after the key, wrapping.
    lo = 0
    hi = hp.n_slots
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if hp.points[mid] < c.hash_key:
            lo = mid + 1
        else:
            hi = mid
    return _hash_walk(core, svc, lo if lo < hp.n_slots else 0)


# --- building a service's table (install time, with the GIL) --------------------------------

cdef uint64_t _endpoint_hash(const Endpoint* ep, uint64_t salt) noexcept nogil:
    """An endpoint's place: its address and port, never its index, so that an endpoint
    coming or going moves only its own keys, the same on every worker and node."""
    cdef uint64_t h = _fnv_add(_FNV_OFFSET, <const char*>&ep.addr, ep.addrlen)
    h = _fnv_add(h, <const char*>&salt, sizeof(salt))
    return _fmix(h)


cdef int _point_cmp(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0]
    cdef uint64_t y = (<const uint64_t*>b)[0]
    if x != y:
        return -1 if x < y else 1
    # Equal points (one in 2^64): by owner, so the ring does not depend on qsort.
    x = (<const uint64_t*>a)[1]
    y = (<const uint64_t*>b)[1]
    return -1 if x < y else (1 if x > y else 0)


cdef int _ring_build(HashPolicy* hp, const Service* svc, uint32_t minimum) except -1:
    """Envoy's ring: each endpoint at ceil(minimum / n) points (at least `minimum` in
    all), the points sorted."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t per = (minimum + n - 1) // n
    cdef uint32_t total, i, j, k
    cdef uint64_t* pairs
    if per == 0:
        per = 1
    total = per * n
    pairs = <uint64_t*>malloc(2 * <size_t>total * sizeof(uint64_t))
    hp.points = <uint64_t*>malloc(<size_t>total * sizeof(uint64_t))
    hp.owners = <uint32_t*>malloc(<size_t>total * sizeof(uint32_t))
    if pairs == NULL or hp.points == NULL or hp.owners == NULL:
        free(pairs)
        raise MemoryError()
    k = 0
    for i in range(n):
        for j in range(per):
            pairs[2 * k] = _endpoint_hash(&svc.endpoints[i], j)
            pairs[2 * k + 1] = i
            k += 1
    qsort(pairs, total, 2 * sizeof(uint64_t), _point_cmp)
    for k in range(total):
        hp.points[k] = pairs[2 * k]
        hp.owners[k] = <uint32_t>pairs[2 * k + 1]
    free(pairs)
    hp.n_slots = total
    return 0


cdef int _maglev_build(HashPolicy* hp, const Service* svc, uint32_t size) except -1:
    """Maglev's table (Eisenbud et al., NSDI 2016, §3.4): each endpoint's preference
    list is a permutation of the slots (offset and skip from two hashes of its address;
    the size is prime, so every skip walks them all); in turn, each endpoint takes its
    next preferred slot still free, until every slot is taken."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint64_t* offset = <uint64_t*>malloc(n * sizeof(uint64_t))
    cdef uint64_t* skip = <uint64_t*>malloc(n * sizeof(uint64_t))
    cdef uint64_t* nxt = <uint64_t*>calloc(n, sizeof(uint64_t))
    cdef uint32_t i, filled = 0
    cdef uint64_t slot
    hp.owners = <uint32_t*>malloc(<size_t>size * sizeof(uint32_t))
    if offset == NULL or skip == NULL or nxt == NULL or hp.owners == NULL:
        free(offset)
        free(skip)
        free(nxt)
        raise MemoryError()
    memset(hp.owners, 0xff, <size_t>size * sizeof(uint32_t))
    for i in range(n):
        offset[i] = _endpoint_hash(&svc.endpoints[i], 0x6f66667365740000ULL) % size
        skip[i] = _endpoint_hash(&svc.endpoints[i], 0x736b697000000000ULL) % (size - 1) + 1
    with nogil:
        while filled < size:
            for i in range(n):
                slot = (offset[i] + nxt[i] * skip[i]) % size
                while hp.owners[slot] != 0xffffffffU:
                    nxt[i] += 1
                    slot = (offset[i] + nxt[i] * skip[i]) % size
                hp.owners[slot] = i
                nxt[i] += 1
                filled += 1
                if filled == size:
                    break
    free(offset)
    free(skip)
    free(nxt)
    hp.n_slots = size
    return 0


cdef int _hash_build(Table* t, dict hashes) except -1:
    """Each hashing service's policy and table (RouteTable.set_hash), and the room every
    answer's buffer keeps for a generated cookie's Set-Cookie line."""
    cdef Service* svc
    cdef HashPolicy* hp
    cdef uint32_t most = 0, line
    cdef uint32_t i
    for i in range(t.n_services):
        svc = &t.services[i]
        if svc.balancer != BALANCE_RING_HASH and svc.balancer != BALANCE_MAGLEV:
            continue
        key, name_b, path_b, ttl_s, slots = hashes.get(i, (HASH_KEY_NONE, b"", b"", -1, 0))
        if slots == 0:
            slots = HASH_RING_DEFAULT if svc.balancer == BALANCE_RING_HASH else HASH_MAGLEV_DEFAULT
        hp = <HashPolicy*>calloc(1, sizeof(HashPolicy))
        if hp == NULL:
            raise MemoryError()
        svc.hash = hp
        hp.key = key
        hp.ttl_s = ttl_s
        _name_set(&hp.name, name_b)
        _name_set(&hp.path, path_b)
        if svc.n_endpoints > 0:
            if svc.balancer == BALANCE_RING_HASH:
                _ring_build(hp, svc, slots)
            else:
                _maglev_build(hp, svc, slots)
        if key == HASH_KEY_COOKIE and ttl_s >= 0:
            # set-cookie: NAME="VALUE"; Max-Age=N; Path=P; HttpOnly CRLF
            line = 12 + len(name_b) + 3 + HASH_COOKIE_VALUE_BYTES + 30 + 7 + len(path_b) + 10 + 2
            most = max(most, line)
    t.response_grow += most
    return 0


cdef void _hash_free(Service* svc) noexcept nogil:
    if svc.hash == NULL:
        return
    _name_free(&svc.hash.name)
    _name_free(&svc.hash.path)
    free(svc.hash.points)
    free(svc.hash.owners)
    free(svc.hash)
    svc.hash = NULL



cdef bint _hash_rebalance(Core* core, Conn* c, Service* svc, const char* head,
                          const ReqHead* req) noexcept nogil:
    """_rebalance for a hashing service: the next request on c's kept upstream goes
    elsewhere when its key picks another endpoint (the key stays in c for the bind).
    One with no key stays (a random pick is as good where it is)."""
    _hash_request(core, c, svc, head, req)
    if (c.hash_state == 0 or svc.n_endpoints < 2 or not (c.flags & CONN_EP_BOUND)
            or c.table != core.table):
        return False
    if _hash_pick(core, c, svc) == c.endpoint:
        return False
    core.counters.http_rebalanced += 1
    return True


cdef void _hash_route(Core* core, Conn* c, const Service* svc, const char* head,
                      const ReqHead* req) noexcept nogil:
    """A request routed to `svc` (router.pxi), before its head is edited for the next
    hop: its key, for the bind that follows. (A request routed again, _http_reroute, is
    sent again as it was edited, not routed here: the key it had, left in c, picks its
    endpoint again, and its answer sets the cookie as before, Conn.pend_cookie.)"""
    if svc.hash == NULL:
        c.hash_state = 0
    else:
        _hash_request(core, c, svc, head, req)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


cdef int _hash_add(RouteTable table, int index, str key, str name, str path, object ttl_s,
                   int slots) except -1:
    """RouteTable.set_hash(), checked: the engine takes no key it cannot read safely."""
    if not 0 <= index < len(table._services):
        raise ValueError("no service %d (add_service() first)" % index)
    balancer = table._services[index][4]
    if balancer != BALANCE_RING_HASH and balancer != BALANCE_MAGLEV:
        raise ValueError("service %d does not hash: its balancer is not ring-hash or maglev"
                         % index)
    if key not in HASH_KEYS:
        raise ValueError("hash key %r is not one of %s" % (key, ", ".join(HASH_KEYS)))
    kind = HASH_KEYS[key]
    # (A query parameter's name is compared decoded: any bytes, UTF-8 as browsers send.)
    name_b = (name or "").encode("utf-8" if kind == HASH_KEY_QUERY else "ascii", "replace")
    path_b = (path or "").encode("ascii", "replace")
    if kind == HASH_KEY_SOURCE_IP:
        if name or path or ttl_s is not None:
            raise ValueError("source-ip takes no name, path or ttl")
    elif not name_b or b"\0" in name_b or len(name_b) > HASH_COOKIE_NAME_MAX:
        raise ValueError("a %s key needs a name of 1..%d bytes" % (key, HASH_COOKIE_NAME_MAX))
    if kind == HASH_KEY_HEADER:
        name_b = _field_name(name, "hash header")
    if kind == HASH_KEY_COOKIE:
        # RFC 6265 §4.1.1: a cookie-name is a token; a path, octets but CTLs and ';'.
        if any(ch <= 0x20 or ch >= 0x7f or ch in b'()<>@,;:\\"/[]?={}' for ch in name_b):
            raise ValueError("cookie name %r is not a token" % name)
        if len(path_b) > HASH_COOKIE_PATH_MAX or any(
                ch < 0x20 or ch >= 0x7f or ch == 0x3b for ch in path_b):
            raise ValueError("cookie path %r: at most %d bytes, no ';' or control bytes"
                             % (path, HASH_COOKIE_PATH_MAX))
        if ttl_s is not None and not 0 <= ttl_s <= 2 ** 31:
            raise ValueError("cookie ttl_s must be 0..2^31, not %r" % ttl_s)
    elif path or ttl_s is not None:
        raise ValueError("only a cookie key takes a path and a ttl")
    if balancer == BALANCE_RING_HASH and not 0 <= slots <= HASH_RING_MAX:
        raise ValueError("a ring's size must be 1..%d, not %d" % (HASH_RING_MAX, slots))
    if balancer == BALANCE_MAGLEV and slots != 0 and not (
            slots <= HASH_MAGLEV_MAX and _is_prime(slots)):
        raise ValueError("a Maglev table's size must be a prime up to %d, not %d"
                         % (HASH_MAGLEV_MAX, slots))
    table._hashes[index] = (kind, name_b, path_b,
                            -1 if ttl_s is None else int(ttl_s), slots)
    return 0
