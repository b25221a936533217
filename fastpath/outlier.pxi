# outlier.pxi: Outlier detection (DestinationRule outlierDetection): an endpoint that
# answers 5xx (or gateway errors) so many times in a row is ejected, for the whole node,
# from its service's balancing for baseEjectionTime x its ejections in a row.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# Semantics are Envoy's detectors as Istio configures them (Envoy: outlier_detection.proto,
# "Outlier detection" in the architecture overview):
# - consecutive_5xx: an answer >= 500 counts one, any other final answer resets; a setup
#   that failed (connect, TLS, peer ID: Envoy's local-origin errors, not split from the
#   answers as Istio leaves split_external_local_origin_errors off) counts as a 503;
#   an opaque pair's setup that succeeded counts as a 200 (Envoy's tcp_proxy reports
#   LocalOriginConnectSuccessFinal, which then counts as a success).
# - consecutive_gateway_failure: 502, 503 and 504 count one, any other answer resets.
# - Reaching a threshold ejects the endpoint at once, unless maxEjectionPercent of the
#   service's endpoints are ejected already (one may always be: Envoy lets the first
#   ejection through whatever the percentage), and resets its counts. Envoy decides on
#   its main thread, one ejection after another; the node's workers decide at once, so
#   each ejection being decided is announced first (the service's own slot, `ejecting`)
#   and counted by every other decision as if made: the check and the ejection are then
#   one step for the node (_outlier_eject).
# - The k-th ejection in a row lasts k x baseEjectionTime (at most max(300 s, base):
#   Envoy's max_ejection_time default), and ends at the first tick of the `interval`
#   sweep after that; each sweep that finds the endpoint not ejected lowers k by one.
#   The sweep's ticks are multiples of the interval on CLOCK_MONOTONIC, the same for
#   every worker, so the ejection ends at the same instant on all of them, and the
#   decay of k is worked out when it is next needed instead of by a timer.
# - minHealthPercent (Envoy's healthy_panic_threshold): with fewer endpoints than that
#   percentage not ejected, ejections are ignored: every endpoint takes traffic.
# - Every endpoint ejected (maxEjectionPercent 100 lets all go) and minHealthPercent 0
#   (Istio's default, which turns Envoy's panic mode off): Envoy's balancer finds no
#   host and answers 503 "no healthy upstream" (response flag UH, counted
#   upstream_cx_none_healthy); so does the node (_outlier_none_healthy): the request is
#   answered 503, an opaque pair closed, a mirror's copy given up, nothing sent to an
#   ejected endpoint. Endpoints only passed over after failed setups (balancer.pxi) are
#   no ejection of Envoy's: one of them is still tried.
#
# Node-wide: the counts and the ejection live in a SharedSlot per (service name,
# endpoint address) in a region all of the node's workers map (Engine.share_state,
# meshnode/sharedstate.py), updated with atomics, so that a failing endpoint is ejected
# once for the node, from whichever worker's requests saw it fail.

from fastpath.includes.atomics cimport (mn_add_u32, mn_add_u64, mn_cas_i64, mn_cas_u32,
                                        mn_cas_u64, mn_load_i64, mn_load_u32, mn_load_u64,
                                        mn_store_i64, mn_store_u32, mn_store_u64)

cdef int64_t _EJECT_MAX_NS = 300 * 1000000000LL     # Envoy's max_ejection_time default
# A service's announced ejections (SharedSlot.ejecting): how many, in the low bits, and
# since when, in the others. A decision takes microseconds: announcements older than
# _ANNOUNCED_STALE_MS are those of a worker that died deciding.
cdef enum:
    _ANNOUNCED_COUNT_BITS = 8      # (a node has fewer workers deciding at once)
    _ANNOUNCED_COUNT_MASK = (1 << _ANNOUNCED_COUNT_BITS) - 1
    _ANNOUNCED_MS_MASK = (1 << (32 - _ANNOUNCED_COUNT_BITS)) - 1
    _ANNOUNCED_STALE_MS = 10000


cdef inline SharedSlot* _slot_of(const Endpoint* ep) noexcept nogil:
    """ep's slot while it holds ep's key (shared_slots.pxi: a slot no worker used for
    the lease may have been taken over); NULL: none."""
    cdef SharedSlot* s = ep.shared
    if s != NULL and mn_load_u64(&s.key) == ep.shared_key:
        return s
    return NULL


cdef inline SharedSlot* _guard_of(const OutlierPolicy* od) noexcept nogil:
    """The service's own slot while it holds the service's key; NULL: none."""
    cdef SharedSlot* s = od.guard
    if s != NULL and mn_load_u64(&s.key) == od.guard_key:
        return s
    return NULL


cdef int _outlier_bind(Core* core, Table* t) except -1:
    """Give each endpoint of an outlier-detecting service of `t` its shared slot (at
    install, before the loop sees `t`), then the service its own, each marked seen
    (shared_slots.pxi). Endpoints first: should the region fill up, an endpoint without
    a slot is never ejected, while a service without one only has its ejections judged
    by this worker's count. The loop claims again what got none at its next keep."""
    cdef uint32_t i, j
    cdef Service* svc
    cdef OutlierPolicy* od
    cdef int64_t now = _now_ns()
    cdef bint may_claim = True
    for i in range(t.n_services):
        svc = &t.services[i]
        od = svc.outlier
        if od == NULL:
            continue
        od.endpoints = svc.endpoints
        for j in range(svc.n_endpoints):
            svc.endpoints[j].outlier = od
            svc.endpoints[j].shared_key = _shared_key(svc, &svc.endpoints[j])
            _slot_keep(core, &svc.endpoints[j].shared, svc.endpoints[j].shared_key, now,
                       &may_claim)
            if svc.endpoints[j].shared == NULL:
                core.counters.outlier_no_slot += 1
    for i in range(t.n_services):
        od = t.services[i].outlier
        if od == NULL:
            continue
        od.guard_key = _shared_key(&t.services[i], NULL)
        _slot_keep(core, &od.guard, od.guard_key, now, &may_claim)
        if od.guard == NULL:
            core.counters.outlier_no_slot += 1
    return 0


cdef inline bint _slot_ejected(const SharedSlot* s, int64_t now_ns) noexcept nogil:
    return s != NULL and mn_load_i64(&s.ejected_until_ns) > now_ns


cdef uint32_t _outlier_ejected_count(Core* core, OutlierPolicy* od) noexcept nogil:
    cdef uint32_t j, n = 0
    for j in range(od.n_slots):
        if _slot_ejected(_slot_of(&od.endpoints[j]), core.now_ns):
            n += 1
    return n


cdef bint _outlier_panic(Core* core, OutlierPolicy* od) noexcept nogil:
    """minHealthPercent: fewer endpoints than that percentage are not ejected (worked
    out once per loop iteration)."""
    cdef uint32_t healthy
    if od.min_health_percent == 0:
        return False
    if od.panic_at_ns != core.now_ns:
        healthy = od.n_slots - _outlier_ejected_count(core, od)
        od.panic = <uint64_t>healthy * 100 < <uint64_t>od.min_health_percent * od.n_slots
        od.panic_at_ns = core.now_ns
    return od.panic


cdef inline bint _outlier_ejected(Core* core, const Endpoint* ep) noexcept nogil:
    """Is `ep` ejected by its service's outlier detection (and the service not below
    minHealthPercent)? The balancer passes an ejected endpoint over (balancer.pxi)."""
    if not _slot_ejected(_slot_of(ep), core.now_ns):
        return False
    return not _outlier_panic(core, ep.outlier)


cdef bint _outlier_none_healthy(Core* core, Service* svc) noexcept nogil:
    """Has outlier detection ejected every endpoint of `svc`, with minHealthPercent
    not putting the service in panic? Then no endpoint may be picked (Envoy: no
    healthy upstream). Stops at the first endpoint not ejected: one per request
    mostly."""
    cdef OutlierPolicy* od = svc.outlier
    cdef uint32_t j
    if od == NULL or od.n_slots == 0:
        return False
    for j in range(od.n_slots):
        if not _slot_ejected(_slot_of(&od.endpoints[j]), core.now_ns):
            return False
    return not _outlier_panic(core, od)


cdef int _outlier_refuse(Core* core, Conn* c) noexcept nogil:
    """c's service has no endpoint outlier detection left in (_outlier_none_healthy):
    an HTTP request is answered 503 as Envoy answers it, an opaque pair closed;
    counted."""
    core.counters.outlier_none_healthy += 1
    if c.flags & CONN_HTTP:
        _http_reply(core, c, 503, b"no healthy upstream\n", -1)
    return STATUS_CLOSE


cdef void _outlier_eject(Core* core, OutlierPolicy* od, SharedSlot* s) noexcept nogil:
    """Eject `s`'s endpoint, unless maxEjectionPercent of the service's endpoints are
    out. Two workers deciding at once must not both let one more out: each announces
    its decision (`ejecting`, sequentially consistent) before it counts, and counts the
    others announced as ejected. Of two, the later to announce sees the earlier one,
    announced still or its ejection done (made before it withdrew the announcement), so
    the last decision always sees every other; both may hold back (the next failure
    decides again), never both go over. Without the service's slot (the region is full)
    this worker's count is all there is."""
    cdef uint32_t others = 0
    cdef SharedSlot* guard = _guard_of(od)
    if mn_load_i64(&s.ejected_until_ns) > core.now_ns:
        return                          # ejected already (by another worker, maybe)
    if guard != NULL:
        others = _outlier_announce(guard, core.now_ns)
    _outlier_eject_within(core, od, s, others)
    if guard != NULL:
        _outlier_withdraw(guard)


cdef uint32_t _outlier_announce(SharedSlot* g, int64_t now_ns) noexcept nogil:
    """Announce an ejection being decided in service slot `g`; the others announced.
    A worker killed while deciding never withdraws its announcement, which would count
    as an ejection for good and, with Envoy's one-always-goes rule, hold back every
    ejection of a service of fewer endpoints than 2 x 100 / maxEjectionPercent (Istio's
    10 %: under 20): announcements older than _ANNOUNCED_STALE_MS, kept since the
    oldest of them, are dropped by the next one."""
    cdef uint32_t ms = <uint32_t>(now_ns // 1000000) & _ANNOUNCED_MS_MASK
    cdef uint32_t v, n, since
    while True:
        v = mn_load_u32(&g.ejecting)
        n = _announced(v, now_ns)
        since = v >> _ANNOUNCED_COUNT_BITS if n != 0 else ms
        if mn_cas_u32(&g.ejecting, v, (since << _ANNOUNCED_COUNT_BITS) | (n + 1)):
            return n


cdef inline uint32_t _announced(uint32_t v, int64_t now_ns) noexcept nogil:
    """The ejections announced in `v` (SharedSlot.ejecting) still being decided: none
    once the oldest is _ANNOUNCED_STALE_MS old (its worker died deciding)."""
    cdef uint32_t ms = <uint32_t>(now_ns // 1000000) & _ANNOUNCED_MS_MASK
    if ((ms - (v >> _ANNOUNCED_COUNT_BITS)) & _ANNOUNCED_MS_MASK) > _ANNOUNCED_STALE_MS:
        return 0
    return v & _ANNOUNCED_COUNT_MASK


cdef void _outlier_withdraw(SharedSlot* g) noexcept nogil:
    """This worker's announcement is over (dropped already if it was kept past
    _ANNOUNCED_STALE_MS: then another's goes, counted one fewer)."""
    cdef uint32_t v
    while True:
        v = mn_load_u32(&g.ejecting)
        if (v & _ANNOUNCED_COUNT_MASK) == 0 or mn_cas_u32(&g.ejecting, v, v - 1):
            return


cdef void _outlier_eject_within(Core* core, OutlierPolicy* od, SharedSlot* s,
                                uint32_t others) noexcept nogil:
    """_outlier_eject's decision, `others` ejections being decided elsewhere."""
    cdef int64_t now = core.now_ns
    cdef int64_t old = mn_load_i64(&s.ejected_until_ns)
    cdef int64_t dur, until, cap
    cdef uint32_t k, ejected
    if old > now:
        return                          # ejected already (by another worker, maybe)
    ejected = _outlier_ejected_count(core, od) + others
    if ejected > 0 and <uint64_t>(ejected + 1) * 100 > <uint64_t>od.max_percent * od.n_slots:
        core.counters.outlier_ejections_overflow += 1
        return
    k = mn_load_u32(&s.multiplier)
    if old > 0 and k > 0:
        # A sweep that found it not ejected lowered k by one: the ticks since `old`.
        if <uint64_t>((now - old) // od.interval_ns) >= k:
            k = 0
        else:
            k -= <uint32_t>((now - old) // od.interval_ns)
    k += 1
    cap = _EJECT_MAX_NS if _EJECT_MAX_NS > od.base_ns else od.base_ns
    dur = od.base_ns * k if od.base_ns * k < cap else cap
    # Ends at the sweep's first tick after that (ticks: multiples of the interval).
    until = ((now + dur + od.interval_ns - 1) // od.interval_ns) * od.interval_ns
    if not mn_cas_i64(&s.ejected_until_ns, old, until):
        return                          # another worker ejected it first
    mn_store_u32(&s.multiplier, k)
    mn_store_u32(&s.consecutive_5xx, 0)
    mn_store_u32(&s.consecutive_gateway, 0)
    mn_add_u64(&s.ejections, 1)
    core.counters.outlier_ejections += 1


cdef void _outlier_status(Core* core, Conn* c, int status) noexcept nogil:
    """An outbound try on c's endpoint ended with `status` (a final answer's, 503 for a
    setup that failed, 200 for an opaque pair's that succeeded): the detectors count it."""
    cdef Service* svc
    cdef Endpoint* ep
    cdef SharedSlot* s
    cdef OutlierPolicy* od
    cdef uint32_t n5, ng = 0
    cdef bint gateway
    if c.flags & CONN_INBOUND or c.service >= c.table.n_services:
        return
    svc = &c.table.services[c.service]
    if c.endpoint >= svc.n_endpoints:
        return
    ep = &svc.endpoints[c.endpoint]
    s = _slot_of(ep)
    od = ep.outlier
    if s == NULL:
        return
    if status < 500:
        # (A store only when there is something to reset: the line stays shared.)
        if mn_load_u32(&s.consecutive_5xx) != 0:
            mn_store_u32(&s.consecutive_5xx, 0)
        if mn_load_u32(&s.consecutive_gateway) != 0:
            mn_store_u32(&s.consecutive_gateway, 0)
        return
    if _slot_ejected(s, core.now_ns):
        return                          # answers of tries sent before it was ejected
    gateway = status == 502 or status == 503 or status == 504
    if gateway:
        ng = mn_add_u32(&s.consecutive_gateway, 1)
    elif mn_load_u32(&s.consecutive_gateway) != 0:
        mn_store_u32(&s.consecutive_gateway, 0)
    n5 = mn_add_u32(&s.consecutive_5xx, 1)
    if ((od.consecutive_5xx != 0 and n5 >= od.consecutive_5xx)
            or (od.consecutive_gateway != 0 and gateway and ng >= od.consecutive_gateway)):
        _outlier_eject(core, od, s)


# --- at install (GIL held) ---------------------------------------------------------------

cdef int _outlier_build(Table* t, dict outliers) except -1:
    """Each outlier-detecting service's policy (RouteTable.set_outlier)."""
    cdef Service* svc
    cdef OutlierPolicy* od
    for i, (c5, cg, interval_ns, base_ns, max_pct, min_health) in outliers.items():
        svc = &t.services[<uint32_t>i]
        od = <OutlierPolicy*>calloc(1, sizeof(OutlierPolicy))
        if od == NULL:
            raise MemoryError()
        svc.outlier = od
        od.consecutive_5xx = c5
        od.consecutive_gateway = cg
        od.interval_ns = interval_ns
        od.base_ns = base_ns
        od.max_percent = max_pct
        od.min_health_percent = min_health
        od.n_slots = svc.n_endpoints
    return 0


cdef void _outlier_free(Service* svc) noexcept nogil:
    if svc.outlier != NULL:
        free(svc.outlier)
        svc.outlier = NULL


cdef int _outlier_add(RouteTable table, int index, int consecutive_5xx,
                      int consecutive_gateway, double interval_s, double base_ejection_s,
                      int max_ejection_percent, int min_health_percent) except -1:
    if not 0 <= index < len(table._services):
        raise IndexError("service index %d out of range" % index)
    if consecutive_5xx < 0 or consecutive_gateway < 0:
        raise ValueError("consecutive error counts must be at least 0")
    if not 0.001 <= interval_s <= 86400 or not 0.001 <= base_ejection_s <= 86400:
        raise ValueError("interval_s and base_ejection_s must be 1 ms .. 1 day")
    if not 0 <= max_ejection_percent <= 100 or not 0 <= min_health_percent <= 100:
        raise ValueError("percentages must be 0..100")
    table._outliers[index] = (consecutive_5xx, consecutive_gateway, <int64_t>(interval_s * 1e9),
                              <int64_t>(base_ejection_s * 1e9), max_ejection_percent,
                              min_health_percent)
    return 0


cdef tuple _endpoint_address(const Endpoint* ep):
    """(host text, port) of an endpoint's sockaddr."""
    raw = (<const char*>&ep.addr)[:ep.addrlen]
    port = int.from_bytes(raw[2:4], "big")
    if ep.addr.ss_family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port


cdef list _outlier_index(Core* core, Table* t):
    """(service name, host, port, slot key) of each outlier-detecting endpoint of `t`,
    worked out at install: the view (Engine.outliers) finds the shared slots by key,
    never through the table (the loop frees tables it is done with, and moves an
    endpoint to another slot when its own was taken over)."""
    out = []
    cdef uint32_t i, j
    cdef Service* svc
    for i in range(t.n_services):
        svc = &t.services[i]
        if svc.outlier == NULL:
            continue
        for j in range(svc.n_endpoints):
            host, port = _endpoint_address(&svc.endpoints[j])
            out.append((svc.name.data[:svc.name.length].decode(), host, port,
                        svc.endpoints[j].shared_key))
    return out


cdef list _outlier_view(Core* core, list index):
    """Each outlier-detecting endpoint of the last table installed, as the node sees it."""
    out = []
    cdef SharedSlot* s
    cdef int64_t now = _now_ns()
    cdef int64_t until
    for name, host, port, key in index:
        s = _shared_find(core, key, False)
        entry = {"service": name, "address": host, "port": port, "tracked": s != NULL,
                 "ejected": False, "ejected_for_s": 0.0, "ejections": 0,
                 "consecutive_5xx": 0, "consecutive_gateway_errors": 0}
        if s != NULL:
            until = mn_load_i64(&s.ejected_until_ns)
            entry["ejected"] = until > now
            entry["ejected_for_s"] = (until - now) / 1e9 if until > now else 0.0
            entry["ejections"] = mn_load_u64(&s.ejections)
            entry["consecutive_5xx"] = mn_load_u32(&s.consecutive_5xx)
            entry["consecutive_gateway_errors"] = mn_load_u32(&s.consecutive_gateway)
        out.append(entry)
    return out
