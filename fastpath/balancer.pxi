# balancer.pxi: Service -> endpoint: the service's balancer (peak-EWMA P2C, round robin,
# random, least request), passing over endpoints after a failed setup; the load each
# endpoint carries (outstanding requests, latency estimate) and the pass-over windows.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# Peak EWMA follows tower's PeakEwma as linkerd2-proxy configures it (Finagle's formula):
# an endpoint's estimate jumps to a sample above it, else moves toward the sample by
# 1 - exp(-elapsed / decay); reading the cost first decays the estimate to now (a sample
# of 0), so an endpoint that stopped answering slowly regains its share; the cost is the
# estimate x (outstanding + 1). linkerd2-proxy's constants: default RTT 30 ms (an endpoint
# with no sample yet), decay 10 s. Samples are HTTP answers' latencies, from a request's
# framing to its answer's end; an opaque TCP pair has none, and counts one outstanding
# while it is open: for it, P2C compares the outstanding counts alone.

from libc.math cimport exp

cdef double _EWMA_DEFAULT_RTT_NS = 30e6
cdef double _EWMA_DECAY_NS = 10e9


cdef inline bint _endpoint_up(Core* core, const Endpoint* ep) noexcept nogil:
    return ep.down_until_ns <= core.now_ns and not _outlier_ejected(core, ep)


cdef uint32_t _first_up(Core* core, Service* svc, uint32_t start) noexcept nogil:
    """The first endpoint from `start` on (wrapping) not passed over; when all are, the
    first not ejected by outlier detection (one only passed over after failed setups:
    a try beats a certain 503, as Envoy's panic threshold reasons, and Envoy would
    count it healthy), else `start` itself (the caller refused a service whose every
    endpoint is ejected already, unless minHealthPercent ignores ejections)."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t i, k
    for i in range(n):
        k = (start + i) % n
        if _endpoint_up(core, &svc.endpoints[k]):
            return k
    for i in range(n):
        k = (start + i) % n
        if not _outlier_ejected(core, &svc.endpoints[k]):
            return k
    return start


cdef void _ewma_observe(Core* core, Endpoint* ep, double rtt_ns) noexcept nogil:
    """Move the estimate by a sample (0: decay only), peak-sensitive."""
    cdef double elapsed, decay
    if ep.ewma_at_ns == 0:
        ep.ewma_ns = _EWMA_DEFAULT_RTT_NS
        ep.ewma_at_ns = core.now_ns
    if ep.ewma_ns < rtt_ns:
        ep.ewma_ns = rtt_ns
    else:
        elapsed = <double>(core.now_ns - ep.ewma_at_ns)
        if elapsed > 0:
            decay = exp(-elapsed / _EWMA_DECAY_NS)
            ep.ewma_ns = ep.ewma_ns * decay + rtt_ns * (1.0 - decay)
    if core.now_ns > ep.ewma_at_ns:
        ep.ewma_at_ns = core.now_ns


cdef inline double _p2c_cost(Core* core, Service* svc, Endpoint* ep, bint by_latency) noexcept nogil:
    if svc.balancer == BALANCE_LEAST_REQUEST or not by_latency:
        return <double>ep.outstanding
    _ewma_observe(core, ep, 0.0)
    return ep.ewma_ns * (<double>ep.outstanding + 1.0)


cdef uint32_t _pick_p2c(Core* core, Service* svc, bint by_latency) noexcept nogil:
    """Power of two choices: two distinct endpoints at random, the cheaper wins (a tie:
    the first drawn). One passed over loses to one that is not; both passed over: the
    first not passed over from the first drawn, if any. Not `by_latency` (an opaque TCP
    pair: no request latencies to learn from), the cost is the outstanding count alone."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t a = <uint32_t>(_route_random(core) % n)
    cdef uint32_t b = <uint32_t>(_route_random(core) % (n - 1))
    cdef bint a_up, b_up
    if b >= a:
        b += 1
    a_up = _endpoint_up(core, &svc.endpoints[a])
    b_up = _endpoint_up(core, &svc.endpoints[b])
    if a_up != b_up:
        return a if a_up else b
    if not a_up:
        return _first_up(core, svc, a)
    if (_p2c_cost(core, svc, &svc.endpoints[b], by_latency)
            < _p2c_cost(core, svc, &svc.endpoints[a], by_latency)):
        return b
    return a


cdef uint32_t _pick_endpoint(Core* core, Service* svc, bint by_latency) noexcept nogil:
    """The endpoint for a new upstream of `svc`, as its balancer picks among those not
    passed over after a failed setup (ENGINE_EJECT_*); `by_latency`: for HTTP requests
    (peak EWMA weighs their latency; opaque pairs have none)."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t k
    if n == 1:
        return 0
    if svc.balancer == BALANCE_ROUND_ROBIN:
        k = _first_up(core, svc, svc.rr_next % n)
        svc.rr_next = (k + 1) % n
        return k
    if svc.balancer == BALANCE_RANDOM:
        return _first_up(core, svc, <uint32_t>(_route_random(core) % n))
    return _pick_p2c(core, svc, by_latency)


cdef bint _rebalance(Core* core, Conn* c, const char* head, const ReqHead* req) noexcept nogil:
    """Whether the next request framed on c's kept upstream goes on another: when the
    upstream carried its service's maxRequestsPerConnection (pool.pxi), or the
    balancer moves it (_rebalance_pick). A request that stays counts on the upstream."""
    if _upstream_spent(core, c) or _rebalance_pick(core, c, head, req):
        return True
    c.up.requests += 1
    return False


cdef bint _rebalance_pick(Core* core, Conn* c, const char* head, const ReqHead* req) noexcept nogil:
    """Whether the next request framed on c's kept upstream should go to another
    endpoint instead. Linkerd balances each request; a client connection here holds one
    upstream, and a keep-alive client would otherwise stay with the endpoint its first
    request was given, however slow it became. So peak-EWMA P2C draws its two choices
    again for each request, and the request leaves its upstream (a switch, as for
    another backend: the upstream goes back to the pool) only when the pick costs less
    than half of it, or its endpoint is passed over: the margin keeps endpoints of like
    cost from trading the connection back and forth (each switch costs a few system
    calls). A hashing balancer sends each request (the head at `head`) where its key
    says (hashing.pxi). Other balancers keep their per-connection choice while its
    endpoint is up: one passed over or ejected by outlier detection loses its kept
    clients at their next request, as Envoy, which balances each request, sends none
    there. A pair on an older table moves to the current one at a request boundary
    (carry.pxi). Every endpoint ejected (outlier.pxi): the request leaves its upstream
    too, to be answered 503 when routed afresh (_http_upstream)."""
    cdef Service* svc = &c.table.services[c.service]
    cdef Endpoint* cur
    cdef uint32_t k
    if _outlier_none_healthy(core, svc):
        return True
    if svc.hash != NULL:
        return _hash_rebalance(core, c, svc, head, req)
    if svc.n_endpoints < 2 or not (c.flags & CONN_EP_BOUND) or c.table != core.table:
        return False
    cur = &svc.endpoints[c.endpoint]
    if svc.balancer != BALANCE_P2C_EWMA:
        if _endpoint_up(core, cur):
            return False
        k = _pick_endpoint(core, svc, True)
        if k == c.endpoint or not _endpoint_up(core, &svc.endpoints[k]):
            return False                # none up: a try beats a certain 503
    else:
        k = _pick_p2c(core, svc, True)
        if k == c.endpoint:
            return False
        if _endpoint_up(core, cur) and not (
                2.0 * _p2c_cost(core, svc, &svc.endpoints[k], True)
                < _p2c_cost(core, svc, cur, True)):
            return False
    core.counters.http_rebalanced += 1
    c.rebalance_to = k + 1              # bound at the switch (_bind_endpoint)
    return True


cdef void _load_add(Core* core, Conn* c, Endpoint* ep, int32_t delta,
                    double sample_ns) noexcept nogil:
    if delta < 0 and <uint32_t>(-delta) > ep.outstanding:
        ep.outstanding = 0              # (an estimate carried over from an older table)
    else:
        ep.outstanding = <uint32_t>(<int64_t>ep.outstanding + delta)
    if sample_ns >= 0:
        _ewma_observe(core, ep, sample_ns)


cdef void _load_move(Core* core, Conn* c, int32_t delta, double sample_ns) noexcept nogil:
    """Change what a bound pair adds to its endpoint's `outstanding` by `delta` (and
    give the estimate a latency sample when `sample_ns` >= 0), on c's table and, when
    c started on an older one, on the current table's same endpoint too: that one
    carried the older one's count over at the swap, and only it is balanced on."""
    cdef Endpoint* current
    if not c.flags & CONN_EP_BOUND:
        return
    if delta < 0 and <uint32_t>(-delta) > c.ep_load:
        delta = -<int32_t>c.ep_load
    if delta == 0 and sample_ns < 0:
        return
    c.ep_load = <uint32_t>(<int64_t>c.ep_load + delta)
    if c.table.services[c.service].balancer != BALANCE_P2C_EWMA:
        sample_ns = -1
    _load_add(core, c, &c.table.services[c.service].endpoints[c.endpoint], delta, sample_ns)
    if c.table != core.table:
        current = _current_endpoint(core, c)
        if current != NULL:
            _load_add(core, c, current, delta, sample_ns)


cdef void _load_release(Core* core, Conn* c) noexcept nogil:
    """The pair lets go of its endpoint (its upstream closed, pooled or left for
    another): what it added to `outstanding` goes."""
    if c.flags & CONN_EP_BOUND:
        _load_move(core, c, -<int32_t>c.ep_load, -1)
        c.flags &= ~CONN_EP_BOUND
    c.ep_load = 0


cdef void _bind_endpoint(Core* core, Conn* c, Service* svc) noexcept nogil:
    """Pick c's endpoint of `svc` (c.service) and count the pair there: each request
    framed for it (HTTP), or the pair itself (opaque TCP). A service with one endpoint
    has no choice to weigh: its pairs are not counted and take no latency samples (the
    per-request path stays as it was); should a later table give the endpoint company,
    it starts from the default estimate and counts the pairs bound from then on."""
    cdef uint32_t k = c.rebalance_to
    _load_release(core, c)
    c.rebalance_to = 0
    if svc.hash != NULL:
        c.endpoint = _hash_pick(core, c, svc)   # the key of the request (hashing.pxi)
    elif 0 < k <= svc.n_endpoints and _endpoint_up(core, &svc.endpoints[k - 1]):
        c.endpoint = k - 1              # where _rebalance moved the request
    else:
        c.endpoint = _pick_endpoint(core, svc, (c.flags & CONN_HTTP) != 0)
    if svc.n_endpoints < 2:
        return
    c.flags |= CONN_EP_BOUND
    _load_move(core, c, <int32_t>c.n_pend if c.flags & CONN_HTTP else 1, -1)


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
    _outlier_status(core, c, 503)       # (a local-origin error: outlier.pxi)
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
