# stats.pxi: Request figures: answers by code, latency and sizes per (direction, service,
# peer, route, destination version, plaintext or not), opaque TCP pairs and their bytes
# under the same keys, and the interned peer IDs and label values they name.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# A figure's `route` is the HTTPRoute ("namespace/name") whose rule sent the request on,
# and its `version` the `version` label of the workload behind the endpoint that answered
# (Istio's destination_version): both are indexes into Core.tags, looked up once per table
# entry (a rule, an endpoint, an inbound route) and kept there, so an answer compares two
# integers with the pair's cached record and looks up (a scan, no allocation) only when
# its key differs from the last answer's.

cdef enum:
    _TAG_FULL = 0xFFFE              # no room in Core.tags: the answer is not kept per key

# Size histograms' bounds in bytes: Envoy's default histogram buckets (0.5, 1, 5, 10 ...
# 3600000), which Istio leaves istio_request_bytes and istio_response_bytes on. A size
# counts in the first bucket whose bound it does not pass (sizes are whole: 0.5 is 0),
# the last bucket takes what passes them all (size_bounds()).
cdef uint64_t _SIZE_BOUNDS[ENGINE_SIZE_BUCKETS - 1]
_SIZE_BOUNDS[:] = [0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                   300000, 600000, 1800000, 3600000]

cdef inline uint32_t _latency_bucket(int64_t ns) noexcept nogil:
    """Log-linear: [0,1) [1,2) [2,3) [3,4) µs, then 4 buckets per power of two."""
    cdef uint64_t us = <uint64_t>(ns // 1000) if ns > 0 else 0
    cdef uint32_t e = 0
    cdef uint32_t idx
    if us < 4:
        return <uint32_t>us
    while (us >> (e + 1)) != 0:
        e += 1                      # e = floor(log2(us)) >= 2
    idx = 4 * (e - 1) + <uint32_t>((us >> (e - 2)) & 3)
    return idx if idx < ENGINE_LATENCY_BUCKETS else ENGINE_LATENCY_BUCKETS - 1


cdef inline uint32_t _size_bucket(uint64_t n) noexcept nogil:
    """The size histogram bucket of n bytes (a binary search: five compares)."""
    cdef uint32_t lo = 0
    cdef uint32_t hi = ENGINE_SIZE_BUCKETS - 1
    cdef uint32_t mid
    while lo < hi:
        mid = (lo + hi) // 2
        if n <= _SIZE_BOUNDS[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef uint16_t _intern(Name* names, uint32_t* count, uint32_t cap, const char* s, uint32_t n,
                      uint16_t full) noexcept nogil:
    """The index of `s` in names[1:count], added when new (a copy, published after it is
    whole); `full` when the array is (or no memory is left). Never per request."""
    cdef uint32_t i
    cdef uint32_t have = count[0]
    cdef Name* slot
    for i in range(1, have):
        if names[i].length == n and memcmp(names[i].data, s, n) == 0:
            return <uint16_t>i
    if have >= cap:
        return full
    slot = &names[have]
    slot.data = <char*>malloc(n + 1)
    if slot.data == NULL:
        return full
    memcpy(slot.data, s, n)
    slot.data[n] = 0
    slot.length = n
    mn_publish_u32(count, have + 1)
    return <uint16_t>have


cdef inline uint16_t _principal_of(Core* core, const char* peer, uint32_t n) noexcept nogil:
    """The Core.principals index of a verified peer ID, added when new; 0 when the
    table is full. Called once per handshake, never per request."""
    return _intern(core.principals, &core.n_principals, ENGINE_PRINCIPALS, peer, n, 0)


cdef uint16_t _tag_lookup(Core* core, const char* s, uint32_t n) noexcept nogil:
    """The Core.tags index of a label value (0: none; _TAG_FULL: no room for it)."""
    if n == 0:
        return 0
    if n > ENGINE_TAG_MAX_BYTES:
        return _TAG_FULL
    return _intern(core.tags, &core.n_tags, ENGINE_TAGS, s, n, _TAG_FULL)


cdef inline uint16_t _tag_of(Core* core, uint16_t* cache, const char* s, uint32_t n) noexcept nogil:
    """The Core.tags index of a table entry's label value, looked up at the entry's
    first answer and kept in `cache` (index + 1; 0: not yet)."""
    if cache[0] == 0:
        cache[0] = 1 + _tag_lookup(core, s, n)
    return cache[0] - 1


cdef inline bint _service_known(const Conn* c) noexcept nogil:
    """Outbound: is c.service the pair's (HTTP: once a request named it; an opaque
    pair's is its listener's from the start)?"""
    return (c.flags & CONN_SERVICE_KNOWN) != 0 or not c.flags & CONN_HTTP


cdef inline void _figure_tags(Core* core, Conn* c, uint16_t* route,
                              uint16_t* version) noexcept nogil:
    """The route and destination version the answer being counted is figured under.
    Outbound: the rule of the request it answers (the oldest pending one; with none
    pending, the one being routed, c.req_rule) and the version of the endpoint whose
    verified upstream answered (none yet: not known); inbound: no route (the caller
    routed it), the local workload's version."""
    cdef Table* t = c.table
    cdef int32_t rule
    cdef RouteRule* r
    cdef const char* mark
    cdef Service* svc
    cdef Endpoint* ep
    cdef InboundRoute* ir
    route[0] = 0
    version[0] = 0
    if c.flags & CONN_INBOUND:
        if c.flags & CONN_ROUTED and c.route < t.n_routes:
            ir = &t.routes[c.route]
            version[0] = _tag_of(core, &ir.version_tag, ir.version.data, ir.version.length)
        return
    rule = c.pend_rule[c.pend_first] if c.n_pend > 0 else c.req_rule
    if 0 <= rule < <int32_t>t.n_rules:
        r = &t.rules[rule]
        if r.route_tag == 0:
            # The rule's name is "namespace/route#rule": the route is the part before "#".
            mark = <const char*>memchr(r.name.data, c'#', r.name.length) if r.name.length else NULL
            r.route_tag = 1 + _tag_lookup(core, r.name.data, <uint32_t>(mark - r.name.data)
                                          if mark != NULL else r.name.length)
        route[0] = r.route_tag - 1
    if c.peer_principal != 0 and _service_known(c) and c.service < t.n_services:
        svc = &t.services[c.service]
        if c.endpoint < svc.n_endpoints:
            ep = &svc.endpoints[c.endpoint]
            version[0] = _tag_of(core, &ep.version_tag, ep.version.data, ep.version.length)


cdef StatRecord* _stat_record(Core* core, Conn* c) noexcept nogil:
    """The record the pair's answer counts in now: looked up (or made) once per
    service, peer, route or version change, then cached in c.stat. NULL when the
    records (or the label values) are used up."""
    cdef const Name* service = NULL
    cdef bint inbound = (c.flags & CONN_INBOUND) != 0
    cdef bint plaintext = (c.flags & CONN_PLAINTEXT) != 0
    cdef uint32_t i, n
    cdef uint16_t route, version
    cdef StatRecord* r
    _figure_tags(core, c, &route, &version)
    if route == _TAG_FULL or version == _TAG_FULL:
        return NULL
    if c.stat >= 0:
        r = &core.stats[c.stat]
        if r.route == route and r.version == version:
            return r
    if inbound:
        if c.flags & CONN_ROUTED:
            service = &c.table.routes[c.route].service
    elif _service_known(c):
        service = &c.table.services[c.service].name
    n = service.length if service != NULL else 0
    for i in range(core.n_stats):
        r = &core.stats[i]
        if (r.route == route and r.version == version
                and r.inbound == inbound and r.plaintext == plaintext
                and r.principal == c.peer_principal
                and r.local == c.local_principal and r.service.length == n
                and (n == 0 or memcmp(r.service.data, service.data, n) == 0)):
            c.stat = <int32_t>i
            return r
    if core.n_stats >= ENGINE_STAT_RECORDS:
        return NULL
    r = &core.stats[core.n_stats]
    if n > 0:
        r.service.data = <char*>malloc(n + 1)
        if r.service.data == NULL:
            return NULL
        memcpy(r.service.data, service.data, n + 1)
        r.service.length = n
    r.inbound = inbound
    r.plaintext = plaintext
    r.route = route
    r.version = version
    r.principal = c.peer_principal
    r.local = c.local_principal
    c.stat = <int32_t>core.n_stats
    mn_publish_u32(&core.n_stats, core.n_stats + 1)
    return r


cdef inline uint32_t _code_slot(StatRecord* r, int status) noexcept nogil:
    """The record's histograms (latency, sizes) for `status`: its own slot, claimed at
    the code's first timed answer, or the shared last one (code 0) once the others are
    claimed (and for a status outside 100..599). A reader skips a slot it sees
    unclaimed: counts stored before the code became visible to it show at its next
    read."""
    cdef uint32_t j
    if not 100 <= status < 600:
        return ENGINE_LATENCY_CODES - 1
    for j in range(ENGINE_LATENCY_CODES - 1):
        if r.latency_codes[j] == status:
            return j
        if r.latency_codes[j] == 0:
            r.latency_codes[j] = <uint16_t>status
            return j
    return ENGINE_LATENCY_CODES - 1


cdef int _count_answer(Core* core, Conn* c, int status, int64_t latency_ns) noexcept nogil:
    """One answer to a client: by code (and latency, unless < 0: the engine's own
    answers have none worth a histogram) in the pair's record; outbound answers also in
    the engine-wide class and latency counters. The code slot of its histograms in
    core.stats[c.stat] when it was timed (its sizes go there: _count_sizes), else -1."""
    cdef StatRecord* r = _stat_record(core, c)
    cdef uint32_t cls = <uint32_t>status // 100
    cdef uint32_t j
    _access_answer(core, c, status, latency_ns < 0)     # its record (accesslog.pxi)
    if not (c.flags & CONN_INBOUND):
        if 1 <= cls <= 5:
            core.counters.http_responses[cls - 1] += 1
        if latency_ns >= 0:
            core.counters.http_latency_us[_latency_bucket(latency_ns)] += 1
    if r == NULL:
        core.counters.stats_overflow += 1
        return -1
    r.codes[status - 100 if 100 <= status < 600 else ENGINE_STATUS_SLOTS - 1] += 1
    if latency_ns < 0:
        return -1
    j = _code_slot(r, status)
    r.latency_us[j][_latency_bucket(latency_ns)] += 1
    return <int>j


cdef inline void _sizes_add(StatRecord* r, uint32_t slot, uint64_t req,
                            uint64_t resp) noexcept nogil:
    r.req_bytes[slot][_size_bucket(req)] += 1
    r.req_bytes_sum[slot] += req
    r.resp_bytes[slot][_size_bucket(resp)] += 1
    r.resp_bytes_sum[slot] += resp


cdef void _count_sizes(Core* core, Conn* c, int slot, bint until_close) noexcept nogil:
    """The sizes of the oldest pending request and of its answer, just counted by
    _count_answer (`slot`: its code slot, -1 when it was not kept or not timed), as
    Istio's request_bytes and response_bytes: final now, or, for an answer whose body
    runs until the upstream's end, at the pair's close (_count_open_sizes)."""
    if slot >= 0 and until_close:
        c.open_size_stat = c.stat
        c.open_size_slot = <uint8_t>slot
        c.open_req_bytes = c.pend_req_bytes[c.pend_first]
        return                          # c.resp_bytes grows with the body until then
    if slot >= 0:
        _sizes_add(&core.stats[c.stat], <uint32_t>slot, c.pend_req_bytes[c.pend_first],
                   c.resp_bytes)
    c.resp_bytes = 0                    # the next answer's count starts


cdef void _count_open_sizes(Core* core, Conn* c) noexcept nogil:
    """The upstream ended (or the pair closes): an answer whose body ran until then
    has its sizes now."""
    if c.open_size_stat >= 0:
        _sizes_add(&core.stats[c.open_size_stat], c.open_size_slot, c.open_req_bytes,
                   c.resp_bytes)
        c.open_size_stat = -1
        c.resp_bytes = 0


cdef void _tcp_opened(Core* core, Conn* c) noexcept nogil:
    """An opaque pair starts relaying, its peer known: counted opened in its record
    (Istio's istio_tcp_connections_opened_total), with the bytes read from the client
    before (a sniffing listener's first bytes); once per pair."""
    cdef StatRecord* r
    if c.tcp_stat >= 0 or c.flags & (CONN_HTTP | CONN_MIRROR):
        return
    r = _stat_record(core, c)
    if r == NULL:
        core.counters.stats_overflow += 1
        return
    c.tcp_stat = c.stat
    r.tcp_opened += 1
    if c.d2u.buf != NULL:
        r.tcp_received += c.d2u.tail - c.d2u.head


cdef inline void _tcp_moved(Core* core, Conn* c, uint64_t received, uint64_t sent) noexcept nogil:
    """Bytes an opaque pair relayed from (received) and to (sent) its accepted side."""
    cdef StatRecord* r
    if c.tcp_stat >= 0:
        r = &core.stats[c.tcp_stat]
        r.tcp_received += received
        r.tcp_sent += sent


cdef inline void _tcp_closed(Core* core, Conn* c) noexcept nogil:
    if c.tcp_stat >= 0:
        core.stats[c.tcp_stat].tcp_closed += 1
        c.tcp_stat = -1


cdef uint16_t _interned(Core* core, int32_t* cache, const Name* identity) noexcept nogil:
    """The Core.principals index of a table's identity, found once per table entry."""
    if cache[0] < 0:
        cache[0] = (_principal_of(core, identity.data, identity.length)
                    if identity.length > 0 else 0)
    return <uint16_t>cache[0]
