# balancer.pxi: Service -> endpoint: round robin over the endpoints not passed over after
# a failed setup, and the pass-over windows themselves.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef uint32_t _pick_endpoint(Core* core, Service* svc) noexcept nogil:
    """The service's next endpoint in round robin, passing over those down after a
    failed setup (ENGINE_EJECT_*); when all are down, the next in turn all the same
    (a try beats a certain 503, as Envoy's panic threshold reasons)."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t start = svc.rr_next % n
    cdef uint32_t i, k = start
    for i in range(n):
        k = (start + i) % n
        if svc.endpoints[k].down_until_ns <= core.now_ns:
            break
    else:
        k = start
    svc.rr_next = (k + 1) % n
    return k


cdef Endpoint* _current_endpoint(Core* core, Conn* c) noexcept nogil:
    """c's endpoint as the current table has it, when c started on an older table
    (same destination, same address); NULL when it has none or c's table is current."""
    cdef Table* t = core.table
    cdef Service* a = &c.table.services[c.service]
    cdef int64_t k
    if t == NULL or t == c.table:
        return NULL
    k = _service_in(t, a, c.service)
    if k < 0:
        return NULL
    return _endpoint_in(&t.services[k], &a.endpoints[c.endpoint])


cdef void _pass_over(Core* core, Endpoint* ep) noexcept nogil:
    """Pass `ep` over for a while, longer with each failure in a row. Failures of
    setups begun before it was passed over (in flight at once, or tried while every
    endpoint was down) neither lengthen the while nor count."""
    cdef int64_t ms = ENGINE_EJECT_BASE_MS
    cdef uint32_t k
    if ep.down_until_ns > core.now_ns:
        return
    ep.fails += 1
    for k in range(1, ep.fails):
        ms *= 2
        if ms >= ENGINE_EJECT_MAX_MS:
            ms = ENGINE_EJECT_MAX_MS
            break
    ep.down_until_ns = core.now_ns + ms * 1000000
    core.counters.endpoint_ejections += 1


cdef void _endpoint_failed(Core* core, Conn* c) noexcept nogil:
    """A setup failed on c's endpoint: pass it over, in c's table and in the current
    one (new connections use that; c may have started before a config push)."""
    cdef Endpoint* current = _current_endpoint(core, c)
    _pass_over(core, &c.table.services[c.service].endpoints[c.endpoint])
    if current != NULL:
        _pass_over(core, current)


cdef void _endpoint_ok(Core* core, Conn* c) noexcept nogil:
    """A setup succeeded on c's endpoint: its failure streak ends, in both tables."""
    cdef Endpoint* ep = &c.table.services[c.service].endpoints[c.endpoint]
    ep.fails = 0
    ep.down_until_ns = 0
    if c.table != core.table:
        ep = _current_endpoint(core, c)
        if ep != NULL:
            ep.fails = 0
            ep.down_until_ns = 0
