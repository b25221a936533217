# overload.pxi: Overload defence for HTTP requests: a node-wide cap on requests in flight,
# a cap on one inbound calling workload's concurrent requests (by its address), and slow
# clients (a request head or body trickled below a least rate) cut at a deadline.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (OverloadRegion; Core's, Conn's and Table's overload fields; SourceCount.requests).
#
# Why. The limits before authentication (limits.pxi) bound connections and handshakes;
# past them, callers can still send more requests than the apps behind the node answer,
# and then every request waits in some queue: latency collapses for all of them. Envoy's
# overload manager answers new requests 503 at once (response flag "OM") while a resource
# is over its threshold, and HAProxy's maxconn stops taking work at a fixed count; here the
# resource is requests in flight. A request counts from the moment its head is framed
# (routed, its filters passed) until its answer is framed to its end or its pair closes.
# Over the node's cap or its source's, a request is answered 503 at once (with
# `Connection: close`: a caller that keeps sending is also the one to slow down, and
# `x-envoy-overloaded: true`: a caller's node does not retry it), counted
# (overload_shed, overload_source_shed) and flagged "OM" in its figures (StatRecord.shed);
# requests admitted before go on. One pipelined behind others on its pair cannot be
# answered out of order: over a cap, it waits unframed until the answers before it have
# gone (as a rate limit's or authorization's refusal does), and is then admitted or shed
# as any other (admitted at once, each pair could hold ENGINE_HTTP_PIPELINE_MAX requests
# past the cap). It is counted once framed past its last wait (_http_framed: a head that
# waits for room for its route's edits is framed again).
#
# Node-wide. The cap is the node's whatever --workers is: its count is the `total` of a
# region the workers map together (meshnode.sharedstate), and an admission is one atomic
# add to it and a compare (undone when over). Each worker also keeps its own share in a
# slot of its own (written by it alone: no contention), so that a worker killed with
# requests in flight has its share given back (_overload_reap: by a worker taking a slot,
# and by every worker's agent each second) instead of holding the cap down for good. Its
# two adds are ordered for that window: the slot first on admission, the total first on
# release, so a reap gives back at most one request more than the dead worker held, never
# fewer (the total may then read -1: the cap one request loose, never tightened).
# Per source: the source is the calling workload's address, as authorization's source.ip
# and a rate limit by source IP take it (Conn.source_ip: between nodes, the one the
# caller's node carries in its ClientHello, caller_ext.pxi; a plaintext caller's own). The
# connected address is the caller's node, whose callers all share it: counted by it, one
# caller's requests in flight got every other caller on its node shed. Its counts live in
# that address's entry of limits.pxi's table (made for them if no connection holds one),
# per worker as the connection caps are.
#
# Slow clients (slowloris, slow POST). A pair's first request head has the head timeout
# (CONN_HTTP_HEAD: connect_timeout); the heads after it, every head of an inbound pair and
# every body had only the idle timeout, which each byte starts again: a byte every few
# minutes held a slot, a buffer and an app's connection for good. Now a head or body being
# received must come at `slow_min_rate` bytes a second once `slow_grace_ns` has passed
# (Apache mod_reqtimeout's MinRate; nginx's client_body_timeout and HAProxy's `timeout
# http-request` bound the wait between reads or the whole head): its deadline is
# start + grace + bytes / rate. Bytes only move the deadline later, so a read costs an
# add; the pair's one timer (timers.pxi _conn_due_ns) is moved only when a head or a body
# begins, and one that fires early finds the deadline moved and files itself again (the
# idle timer's lazy re-arm). Cut, a head with nothing owed before it is answered 408;
# otherwise (a body: part of it went upstream) the pair is closed. Bytes the node holds
# unsent (its upstream is slow to take them) are the upstream's wait, not the client's:
# the window starts again.

from fastpath.includes.atomics cimport (mn_add_i64, mn_cas_u32, mn_load_i64, mn_load_u32,
                                        mn_store_i64, mn_store_u32)


cdef enum SlowPhase:
    SLOW_NONE = 0
    SLOW_HEAD = 1                   # a request head has begun and is not whole
    SLOW_BODY = 2                   # a request body is being framed

cdef enum:
    _OVERLOAD_REAPING = 0xFFFFFFFF  # a slot's pid while its share is being given back
    _OVERLOADED_FIELD_BYTES = 26    # len(_OVERLOADED_FIELD)

cdef const char* _OVERLOADED_FIELD = b"x-envoy-overloaded: true\r\n"

_OVERLOAD_MAGIC = b"MNOVLD01"


# --- the region ---------------------------------------------------------------------------------

def overload_region_bytes() -> int:
    """The size of the node's region of requests in flight (overload_region_format)."""
    return sizeof(OverloadRegion)


def overload_region_format(buffer) -> None:
    """Write an empty region into `buffer` (writable, overload_region_bytes() long):
    nothing in flight, every worker slot free."""
    cdef unsigned char[::1] view = buffer
    cdef OverloadRegion* r
    if view.shape[0] != <Py_ssize_t>sizeof(OverloadRegion):
        raise ValueError("the buffer holds %d bytes, not %d"
                         % (view.shape[0], sizeof(OverloadRegion)))
    r = <OverloadRegion*>&view[0]
    memset(r, 0, sizeof(OverloadRegion))
    memcpy(r.magic, <const char*>_OVERLOAD_MAGIC, 8)
    r.workers = ENGINE_OVERLOAD_WORKERS
    r.slot_bytes = sizeof(OverloadSlot)


cdef inline void _total_add(OverloadRegion* r, int64_t n) noexcept nogil:
    mn_add_i64(&r.total, n)


cdef int _overload_claim(OverloadRegion* r, uint32_t pid) noexcept nogil:
    """A free slot for worker `pid` (dead workers' given back first), or -1."""
    cdef uint32_t i
    _overload_reap(r, pid)
    for i in range(ENGINE_OVERLOAD_WORKERS):
        if mn_cas_u32(&r.slots[i].pid, 0, pid):
            mn_store_i64(&r.slots[i].count, 0)
            return <int>i
    return -1


cdef uint32_t _overload_reap(OverloadRegion* r, uint32_t self_pid) noexcept nogil:
    """Give back the share of every worker whose process is gone (kill(pid, 0): ESRCH),
    its slot freed: one reaper a slot (the CAS to _OVERLOAD_REAPING). A pid reused by
    another process keeps its slot until that one ends too. The number reaped."""
    cdef uint32_t i, pid
    cdef uint32_t n = 0
    cdef int64_t held
    for i in range(ENGINE_OVERLOAD_WORKERS):
        pid = mn_load_u32(&r.slots[i].pid)
        if pid == 0 or pid == _OVERLOAD_REAPING or pid == self_pid:
            continue
        if kill(<int>pid, 0) == 0 or errno != ESRCH:
            continue
        if not mn_cas_u32(&r.slots[i].pid, pid, _OVERLOAD_REAPING):
            continue
        held = mn_load_i64(&r.slots[i].count)
        mn_store_i64(&r.slots[i].count, 0)
        _total_add(r, -held)
        mn_store_u32(&r.slots[i].pid, 0)
        n += 1
    return n


cdef int _overload_init(Core* core) except -1:
    """The engine's own region (until Engine.share_overload) and the defaults."""
    core.overload = <OverloadRegion*>calloc(1, sizeof(OverloadRegion))
    if core.overload == NULL:
        raise MemoryError()
    core.overload_owned = True
    core.overload.slots[0].pid = <uint32_t>os.getpid()
    core.overload_slot = 0
    core.slow_grace_ns = <int64_t>ENGINE_SLOW_GRACE_MS * 1000000
    core.slow_min_rate = ENGINE_SLOW_MIN_RATE
    return 0


cdef int _overload_share(Core* core, object buffer) except -1:
    """Engine.share_overload(): count in the node's region from now on (a slot taken in
    it; checked: a file another version of the engine wrote is refused, not misread)."""
    cdef unsigned char[::1] view = buffer
    cdef OverloadRegion* r
    cdef int slot
    if (view.shape[0] != <Py_ssize_t>sizeof(OverloadRegion)
            or memcmp(&view[0], <const char*>_OVERLOAD_MAGIC, 8) != 0):
        raise ValueError("not a region of requests in flight (overload_region_format "
                         "writes one)")
    r = <OverloadRegion*>&view[0]
    if r.workers != ENGINE_OVERLOAD_WORKERS or r.slot_bytes != sizeof(OverloadSlot):
        raise ValueError("the region of requests in flight does not match this engine's "
                         "layout")
    slot = _overload_claim(r, <uint32_t>os.getpid())
    if slot < 0:
        raise ValueError("no free worker slot in the region of requests in flight")
    _overload_leave(core)
    core.overload = r
    core.overload_owned = False
    core.overload_slot = <uint32_t>slot
    return 0


cdef void _overload_leave(Core* core) noexcept nogil:
    """The engine is done with its region: its slot freed (its share is 0 once every
    pair closed; given back whatever it is), its own region freed."""
    cdef OverloadSlot* own
    if core.overload == NULL:
        return
    own = &core.overload.slots[core.overload_slot]
    _total_add(core.overload, -mn_load_i64(&own.count))
    mn_store_i64(&own.count, 0)
    mn_store_u32(&own.pid, 0)
    if core.overload_owned:
        free(core.overload)
    core.overload = NULL


# --- settings -------------------------------------------------------------------------------------

cdef int _overload_set(RouteTable table, long max_requests_in_flight,
                       long max_requests_per_source, double slow_grace_s,
                       long slow_min_rate) except -1:
    """RouteTable.set_overload(): checked, kept for the table's compile."""
    for name, value in (("max_requests_in_flight", max_requests_in_flight),
                        ("max_requests_per_source", max_requests_per_source),
                        ("slow_min_rate", slow_min_rate)):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("%s must be 0..%d, not %d" % (name, 0xFFFFFFFF, value))
    if not 0.001 <= slow_grace_s <= 3600:
        raise ValueError("slow_grace_s must be 0.001..3600, not %r" % slow_grace_s)
    table._overload = (max_requests_in_flight, max_requests_per_source,
                       <int64_t>(slow_grace_s * 1e9), slow_min_rate)
    return 0


cdef void _overload_compile(Table* t, tuple overload) except *:
    if overload is not None:
        t.overload_set = True
        t.max_inflight, t.max_source_requests, t.slow_grace_ns, t.slow_min_rate = overload


cdef bint _overload_take(Core* core, const Table* t) noexcept nogil:
    """At a swap: the settings the table sets. True when a slow client's deadline may
    now be sooner than its pair's timer was filed for (the caller files them again)."""
    cdef bint sooner
    if not t.overload_set:
        return False
    sooner = t.slow_min_rate > core.slow_min_rate or t.slow_grace_ns < core.slow_grace_ns
    core.max_inflight = t.max_inflight
    core.max_source_requests = t.max_source_requests
    core.slow_grace_ns = t.slow_grace_ns
    core.slow_min_rate = t.slow_min_rate
    return sooner


# --- requests in flight ---------------------------------------------------------------------------

cdef inline uint32_t _caller_at(const Core* core, const Conn* c, uint64_t* key) noexcept nogil:
    """The entry of the source an inbound pair's requests count for (`key`: its calling
    workload's address, Conn.source_ip: the one the caller's node carried, else the
    connected one), or the empty entry where it goes."""
    memcpy(key, c.source_ip, 16)
    return _source_at(core, key)


cdef void _overload_shed(Core* core, Conn* c, const char* why) noexcept nogil:
    """Answer the request 503 now, flagged as overload's in its figures and, as Envoy's
    overload manager marks its local replies, by `x-envoy-overloaded: true`: a caller's
    node does not retry it into the overload (retry.pxi _retry_status)."""
    cdef StatRecord* r
    c.acc_flags |= AFLAG_OM
    if _reply_owed(c):
        # Flagged before the answer is written: a caller reading the figures once it has
        # the 503 finds both its code and its flag.
        r = _stat_record(core, c)
        if r != NULL:
            r.shed += 1
    _http_reply_fields(core, c, 503, why, -1, _OVERLOADED_FIELD, _OVERLOADED_FIELD_BYTES)


cdef bint _overload_wait(Core* core, const Conn* c) noexcept nogil:
    """Must the request being framed on c wait before it is framed: over a cap, with
    answers owed before it (its 503 cannot overtake them)? Checked before the steps run
    and the head is edited, so that it is framed afresh once they have gone."""
    cdef uint64_t key[2]
    if not _answer_owed(c):
        return False
    if (core.max_source_requests != 0 and c.flags & CONN_INBOUND
            and core.sources[_caller_at(core, c, key)].requests >= core.max_source_requests):
        return True
    return (core.max_inflight != 0
            and mn_load_i64(&core.overload.total) >= <int64_t>core.max_inflight)


cdef bint _overload_admit(Core* core, Conn* c) noexcept nogil:
    """May the request being framed on c go on? Yes: it is counted in flight (the
    node's, its source's) until _overload_done. No: it was answered 503 and counted;
    the pair is to close. (With answers owed before it, it waited while over a cap:
    _overload_wait; put over since by another worker's requests, it goes on.)"""
    cdef SourceCount* e = NULL
    cdef OverloadSlot* own
    cdef uint64_t key[2]
    if core.max_source_requests != 0 and c.flags & CONN_INBOUND:
        e = &core.sources[_caller_at(core, c, key)]
        if e.requests >= core.max_source_requests and not _answer_owed(c):
            core.counters.overload_source_shed += 1
            _overload_shed(core, c, b"overloaded: too many requests in flight from one "
                           b"source\n")
            return False
    if core.max_inflight != 0:
        own = &core.overload.slots[core.overload_slot]
        mn_store_i64(&own.count, own.count + 1)
        if (mn_add_i64(&core.overload.total, 1) > <int64_t>core.max_inflight
                and not _answer_owed(c)):
            _total_add(core.overload, -1)
            mn_store_i64(&own.count, own.count - 1)
            core.counters.overload_shed += 1
            _overload_shed(core, c, b"overloaded: too many requests in flight\n")
            return False
        c.held_inflight += 1
    if e != NULL:
        _source_take(core, e, key)
        e.requests += 1
        c.held_source += 1
    return True


cdef void _overload_release(Core* core, Conn* c, uint16_t inflight,
                            uint16_t source) noexcept nogil:
    """Give back `inflight` of the pair's requests in flight and `source` of its
    source's (no more than it holds)."""
    cdef OverloadSlot* own
    cdef SourceCount* e
    cdef uint32_t at
    cdef uint64_t key[2]
    if inflight > c.held_inflight:
        inflight = c.held_inflight
    if source > c.held_source:
        source = c.held_source
    if inflight:
        own = &core.overload.slots[core.overload_slot]
        _total_add(core.overload, -<int64_t>inflight)
        mn_store_i64(&own.count, own.count - inflight)
        c.held_inflight -= inflight
    if source:
        at = _caller_at(core, c, key)
        e = &core.sources[at]
        _invariant(e.requests >= source, b"a source's requests miscounted")
        e.requests -= source
        c.held_source -= source
        if _source_empty(e):
            _source_free(core, at)


cdef inline void _overload_done(Core* core, Conn* c) noexcept nogil:
    """A request of the pair was answered (its answer framed to its end)."""
    if c.held_inflight | c.held_source:
        _overload_release(core, c, 1, 1)


# --- slow clients ---------------------------------------------------------------------------------

cdef inline uint8_t _slow_phase_of(const Conn* c) noexcept nogil:
    """What part of a request the client is sending: a body being framed, or a head
    begun and not whole (head_scan: searched for its end); a whole head waiting for
    the engine is not the client's wait."""
    if c.req_phase == REQ_LENGTH or c.req_phase == REQ_CHUNKED:
        return SLOW_BODY
    if c.req_phase == REQ_HEAD and c.head_scan > 0 and not c.d2u.eof:
        return SLOW_HEAD
    return SLOW_NONE


cdef inline void _slow_track(Core* core, Conn* c, uint64_t got) noexcept nogil:
    """After a read of `got` bytes and its framing: the same part goes on (its
    deadline moves later by the bytes), or a new one begins its window, and the pair's
    timer is filed for it (it may be due sooner than the idle timeout)."""
    cdef uint8_t phase = _slow_phase_of(c) if core.slow_min_rate != 0 else SLOW_NONE
    if phase == c.slow_phase:
        c.slow_bytes += got
        return
    c.slow_phase = phase
    c.slow_start_ns = core.now_ns
    c.slow_bytes = 0
    if phase != SLOW_NONE and c.state != CONN_FREE:
        _timer_arm(core, c, _conn_due_ns(core, c))


cdef inline int64_t _slow_due(const Core* core, const Conn* c) noexcept nogil:
    """When the part being sent is late: its start, the grace, and a second per
    slow_min_rate bytes that came (INT64_MAX: no part, or no least rate)."""
    cdef uint64_t rate = core.slow_min_rate
    cdef uint64_t b = c.slow_bytes
    if c.slow_phase == SLOW_NONE or rate == 0:
        return INT64_MAX
    if b // rate > 1000000000:
        return INT64_MAX                # decades away
    return (c.slow_start_ns + core.slow_grace_ns + <int64_t>((b // rate) * 1000000000
            + (b % rate) * 1000000000 // rate))


cdef void _slow_expired(Core* core, Conn* c) noexcept nogil:
    """The part being sent is late: cut it (408 to a head nothing is owed before,
    else the pair closed), unless the node holds bytes it has not sent on: then the
    upstream is the slow one, and the window starts again."""
    if c.fwd > 0 or (c.d2u.buf != NULL and c.d2u.tail >= _d2u_cap(core, c)):
        c.slow_start_ns = core.now_ns
        c.slow_bytes = 0
        return
    if c.slow_phase == SLOW_HEAD:
        core.counters.slow_heads_cut += 1
        if not _answer_owed(c):
            _http_reply(core, c, 408, b"request head too slow\n", -1)
            _conn_close(core, c, False)
            return
    else:
        core.counters.slow_bodies_cut += 1
    _conn_close(core, c, True)
