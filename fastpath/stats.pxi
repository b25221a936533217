# stats.pxi: Request figures: answers by code and latency per (direction, service, peer),
# and the interned peer IDs they name.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

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


cdef uint16_t _principal_of(Core* core, const char* peer, uint32_t n) noexcept nogil:
    """The Core.principals index of a verified peer ID, added when new; 0 when the
    table is full. Called once per handshake, never per request."""
    cdef uint32_t i
    cdef uint32_t have = core.n_principals
    cdef Name* slot
    for i in range(1, have):
        if core.principals[i].length == n and memcmp(core.principals[i].data, peer, n) == 0:
            return <uint16_t>i
    if have >= ENGINE_PRINCIPALS:
        return 0
    slot = &core.principals[have]
    slot.data = <char*>malloc(n + 1)
    if slot.data == NULL:
        return 0
    memcpy(slot.data, peer, n)
    slot.data[n] = 0
    slot.length = n
    mn_publish_u32(&core.n_principals, have + 1)
    return <uint16_t>have


cdef StatRecord* _stat_record(Core* core, Conn* c) noexcept nogil:
    """The record the pair's answers count in now: looked up (or made) once per
    service or peer change, then cached in c.stat. NULL when the records are used up."""
    cdef const Name* service = NULL
    cdef bint inbound = (c.flags & CONN_INBOUND) != 0
    cdef uint32_t i, n
    cdef StatRecord* r
    if c.stat >= 0:
        return &core.stats[c.stat]
    if inbound:
        if c.flags & CONN_ROUTED:
            service = &c.table.routes[c.route].service
    elif c.flags & CONN_SERVICE_KNOWN:
        service = &c.table.services[c.service].name
    n = service.length if service != NULL else 0
    for i in range(core.n_stats):
        r = &core.stats[i]
        if (r.inbound == inbound and r.principal == c.peer_principal
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
    r.principal = c.peer_principal
    r.local = c.local_principal
    c.stat = <int32_t>core.n_stats
    mn_publish_u32(&core.n_stats, core.n_stats + 1)
    return r


cdef void _count_answer(Core* core, Conn* c, int status, int64_t latency_ns) noexcept nogil:
    """One answer to a client: by code (and latency, unless < 0: the engine's own
    answers have none worth a histogram) in the pair's record; outbound answers also in
    the engine-wide class and latency counters."""
    cdef StatRecord* r = _stat_record(core, c)
    cdef uint32_t cls = <uint32_t>status // 100
    if not (c.flags & CONN_INBOUND):
        if 1 <= cls <= 5:
            core.counters.http_responses[cls - 1] += 1
        if latency_ns >= 0:
            core.counters.http_latency_us[_latency_bucket(latency_ns)] += 1
    if r == NULL:
        core.counters.stats_overflow += 1
        return
    r.codes[status - 100 if 100 <= status < 600 else ENGINE_STATUS_SLOTS - 1] += 1
    if latency_ns >= 0:
        r.latency_us[_latency_bucket(latency_ns)] += 1


cdef uint16_t _interned(Core* core, int32_t* cache, const Name* identity) noexcept nogil:
    """The Core.principals index of a table's identity, found once per table entry."""
    if cache[0] < 0:
        cache[0] = (_principal_of(core, identity.data, identity.length)
                    if identity.length > 0 else 0)
    return <uint16_t>cache[0]
