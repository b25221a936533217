# timers.pxi: The timer wheel: each connection pair's one timer, filed at its nearest
# deadline (setup, request head, sniffing, a gone client's drain, idle, a departed
# destination's drain period, quiet while going away), fired when due, and how long the
# loop may sleep until the next one (or the engine's drain deadline).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (Wheel; Conn's tw_* fields).
#
# Why a wheel, and this one. A scan of every slot (what this replaced, every 250 ms) costs
# O(connections) per pass however few deadlines are near, and fires up to a pass late. A
# heap (libevent's, Envoy's) costs O(log n) per arm; connections arm and move their timer
# at every setup step, so the wheel's O(1) arm, move and cancel is what nginx-sized
# connection counts want. A flat wheel must either cover minutes in ticks (idle timeouts)
# or revisit far timers every turn; a hierarchical one with cascading (Varghese & Lauck,
# "Hashed and Hierarchical Timing Wheels", 1987; the Linux timer wheel before 4.8) moves
# each timer down a level at most three times in its life and never fires one early or
# late by more than a tick.
#
# Geometry: a tick is 2^ENGINE_TIMER_TICK_SHIFT ns (2^22: 4.2 ms, the kernel's HZ=250
# jiffy; timeouts are configured in whole milliseconds at the finest and the old scan was
# 60 times coarser). Level 0 has 256 lists of one tick each (1.07 s: the 200 ms sniffing
# window), level 1 64 lists of 256 ticks (68.7 s: the default 5 s setup), level 2 64 of
# 2^14 ticks (73 min: the default 300 s idle timeout), level 3 64 of 2^20 ticks (78 h). A
# timer further out than that is filed at the wheel's far end and re-armed when it fires.
# Each list is a doubly-linked list through its Conns (no allocation per timer), with a
# bit per list saying it is not empty, so the next tick with work is found with a few
# word tests (__builtin_ctzll) instead of walking empty lists: the loop sleeps until
# then (an engine with nothing armed sleeps ENGINE_WAIT_MAX_MS), and after a long sleep
# it jumps over the empty ticks. A higher level's list is cascaded (its timers filed
# again, into the lower levels) when its time comes, as in Linux.
#
# A timer is filed for the first tick that begins at or after its deadline and fires
# when the loop's clock has reached that tick: never early, at most one tick plus
# epoll_wait's rounding up to a millisecond late. A pair has one timer, at the deadline
# of the state it is in (_conn_due_ns): moving it (_timer_arm) is O(1), done when a
# deadline is set and when the pair enters its pipe, and closing the pair disarms it, so
# a reused slot starts unarmed. The idle timeout costs nothing per pump: bytes moving
# only write c.active_ns, and the idle timer, when it fires, finds the pair was active
# since and files itself again at active_ns + idle_timeout (the lazy re-arm nginx and
# Envoy use). Every path keeps one rule: a timer may be filed earlier than its pair's
# deadline (it then fires, finds nothing due and re-arms), never later.

cdef enum:
    _TW_L0 = 1 << ENGINE_TIMER_L0_BITS                  # level 0's lists (one tick each)
    _TW_LN = 1 << ENGINE_TIMER_LN_BITS                  # each higher level's lists
    _TW_FIRING = ENGINE_TIMER_LISTS - 1                 # the list of the tick being run
    _TW_SPAN_BITS = ENGINE_TIMER_L0_BITS + 3 * ENGINE_TIMER_LN_BITS   # the wheel's reach
    _TW_TICK_NS = 1 << ENGINE_TIMER_TICK_SHIFT


cdef inline int64_t _tick_at(int64_t ns) noexcept nogil:
    """The first tick that begins at or after `ns`: a timer filed there is never early."""
    return (ns + (_TW_TICK_NS - 1)) >> ENGINE_TIMER_TICK_SHIFT


cdef inline void _wheel_link(Wheel* w, Conn* c, uint32_t i) noexcept nogil:
    cdef Conn* head = w.heads[i]
    c.tw_prev = NULL
    c.tw_next = head
    if head != NULL:
        head.tw_prev = c
    else:
        w.occupied[i >> 6] |= (<uint64_t>1) << (i & 63)
    w.heads[i] = c
    c.tw_list = i + 1


cdef inline void _wheel_unlink(Wheel* w, Conn* c) noexcept nogil:
    cdef uint32_t i = c.tw_list - 1
    _invariant(c.tw_list != 0, b"a timer unlinked that is on no list")
    if c.tw_prev != NULL:
        c.tw_prev.tw_next = c.tw_next
    else:
        w.heads[i] = c.tw_next
        if c.tw_next == NULL:
            w.occupied[i >> 6] &= ~((<uint64_t>1) << (i & 63))
    if c.tw_next != NULL:
        c.tw_next.tw_prev = c.tw_prev
    c.tw_next = NULL
    c.tw_prev = NULL
    c.tw_list = 0


cdef inline void _wheel_file(Wheel* w, Conn* c) noexcept nogil:
    """Put an unlinked timer on the list of its tick, c.tw_tick, as seen from the tick
    the wheel runs next: level 0 within 256 ticks, else the level whose reach holds it."""
    cdef int64_t d = c.tw_tick - w.tick
    cdef uint32_t shift = ENGINE_TIMER_L0_BITS
    cdef uint32_t base = _TW_L0
    cdef uint32_t i
    if d < _TW_L0:
        # Overdue (a deadline already past): the next tick run takes it.
        i = <uint32_t>((c.tw_tick if d >= 0 else w.tick) & (_TW_L0 - 1))
    else:
        if d >= (<int64_t>1 << _TW_SPAN_BITS):
            # Beyond the wheel's reach: filed at its far end, fired early, re-armed.
            d = (<int64_t>1 << _TW_SPAN_BITS) - 1
            c.tw_tick = w.tick + d
        while d >= (<int64_t>1 << (shift + ENGINE_TIMER_LN_BITS)):
            shift += ENGINE_TIMER_LN_BITS
            base += _TW_LN
        i = base + <uint32_t>((c.tw_tick >> shift) & (_TW_LN - 1))
    _wheel_link(w, c, i)


cdef void _wheel_cascade(Wheel* w) noexcept nogil:
    """At a tick that begins a level-0 turn (a multiple of 256): file the timers of level
    1's list for this turn again (now in level 0), and likewise level 2's when level 1
    begins a turn, and level 3's (Linux's cascade; none lands on the list it left)."""
    cdef uint32_t shift = ENGINE_TIMER_L0_BITS
    cdef uint32_t base = _TW_L0
    cdef uint32_t j, i, level
    cdef Conn* c
    cdef Conn* nxt
    for level in range(3):
        j = <uint32_t>((w.tick >> shift) & (_TW_LN - 1))
        i = base + j
        c = w.heads[i]
        if c != NULL:
            w.heads[i] = NULL
            w.occupied[i >> 6] &= ~((<uint64_t>1) << (i & 63))
            while c != NULL:
                nxt = c.tw_next
                _wheel_file(w, c)
                c = nxt
        if j != 0:
            break
        shift += ENGINE_TIMER_LN_BITS
        base += _TW_LN


cdef int64_t _wheel_next(Wheel* w) noexcept nogil:
    """The first tick at or after w.tick with work: a level-0 list to fire, or a higher
    level's list to cascade (its timers are due no sooner). INT64_MAX when none is."""
    cdef int64_t best = INT64_MAX
    cdef int64_t first, at
    cdef uint32_t pos = <uint32_t>(w.tick & (_TW_L0 - 1))
    cdef uint32_t k, word, j0, d, shift, level
    cdef uint64_t bits
    # Level 0: lists pos, pos + 1, ... (round the ring) hold ticks w.tick, w.tick + 1, ...
    for k in range((_TW_L0 >> 6) + 1):
        word = ((pos >> 6) + k) & ((_TW_L0 >> 6) - 1)
        bits = w.occupied[word]
        if k == 0:
            bits &= ~(<uint64_t>0) << (pos & 63)
        elif k == _TW_L0 >> 6:
            bits &= ((<uint64_t>1) << (pos & 63)) - 1    # back at pos's word: before pos
        if bits:
            best = w.tick + ((word * 64 + <uint32_t>net.__builtin_ctzll(bits) - pos)
                             & (_TW_L0 - 1))
            break
    # Levels 1..3 (one bitmap word each: 64 lists): list j is cascaded at the first tick
    # at or after w.tick that begins one of the level's slots and whose slot number is j.
    shift = ENGINE_TIMER_L0_BITS
    for level in range(3):
        bits = w.occupied[(_TW_L0 >> 6) + level]
        if bits:
            first = (w.tick + ((<int64_t>1 << shift) - 1)) >> shift
            j0 = <uint32_t>(first & (_TW_LN - 1))
            if bits >> j0:
                d = <uint32_t>net.__builtin_ctzll(bits >> j0)
            else:
                d = 64 - j0 + <uint32_t>net.__builtin_ctzll(bits)
            at = (first + d) << shift
            if at < best:
                best = at
        shift += ENGINE_TIMER_LN_BITS
    return best


cdef inline int64_t _conn_due_ns(Core* core, Conn* c) noexcept nogil:
    """When the pair's state times out, the soonest of what _conn_expired checks for
    it: in the pipe the idle timeout, a gone client's drain deadline, a departed
    destination's close_at_ns, and the quiet time of a pair going away between
    requests; a keep-alive client between requests (its upstream went) is idle, not
    late; any other state has its deadline."""
    cdef int64_t due, quiet
    if c.flags & CONN_MIRROR:           # a request's copy (mirror.pxi): its own deadlines
        return c.mirror_deadline_ns if c.state == CONN_PIPE else c.deadline_ns
    if c.state == CONN_PIPE:
        due = c.active_ns + core.idle_timeout_ns
        if c.flags & CONN_DRAINING and c.deadline_ns < due:
            due = c.deadline_ns
        if c.req_deadline_ns != 0 and c.req_deadline_ns < due:
            due = c.req_deadline_ns     # a route's request timeout (routes.pxi)
        if c.close_at_ns != 0 and c.close_at_ns < due:
            due = c.close_at_ns
        if c.slow_phase != SLOW_NONE and _slow_due(core, c) < due:
            due = _slow_due(core, c)    # a slow client's head or body (overload.pxi)
    elif (c.state == CONN_HTTP_HEAD and c.flags & CONN_ANSWERED
            and (c.d2u.buf == NULL or c.d2u.tail == c.d2u.head)):
        due = c.active_ns + core.idle_timeout_ns
    else:
        return c.deadline_ns
    if _may_go_quiet(c):
        quiet = c.active_ns + <int64_t>ENGINE_DRAIN_IDLE_MS * 1000000
        if quiet < due:
            due = quiet
    return due


cdef void _timer_arm(Core* core, Conn* c, int64_t due_ns) noexcept nogil:
    """File the pair's one timer for `due_ns`, moving it if it is armed: O(1)."""
    cdef Wheel* w = &core.wheel
    cdef int64_t tick = _tick_at(due_ns)
    _invariant(c.state != CONN_FREE, b"a timer armed for a free slot")
    if c.tw_list != 0:
        if c.tw_tick == tick:
            return
        _wheel_unlink(w, c)
    else:
        w.n_armed += 1
    c.tw_tick = tick
    _wheel_file(w, c)


cdef inline void _timer_disarm(Core* core, Conn* c) noexcept nogil:
    if c.tw_list != 0:
        _wheel_unlink(&core.wheel, c)
        core.wheel.n_armed -= 1


cdef inline void _deadline_at(Core* core, Conn* c, int64_t ns) noexcept nogil:
    """Set the deadline of the state the pair is in, or is about to enter, and file its
    timer for it (or sooner, if its state is due sooner: early is safe, late is not)."""
    cdef int64_t due
    c.deadline_ns = ns
    due = _conn_due_ns(core, c)
    if ns < due:
        due = ns
    _timer_arm(core, c, due)


cdef void _conn_expired(Core* core, Conn* c) noexcept nogil:
    """The pair's timer fired: act on the deadline of its state if it has come (close
    an idle or draining pair, end a departed or quiet one cleanly, take a silent sniff
    for TCP, fail a setup over or close it, answer 408 to a slow head). If it has not
    (bytes moved since the idle timer was filed), do nothing: the caller files the
    timer again. The order of the checks is _conn_due_ns's."""
    cdef SideCounters* sc = _counters_of(core, c)
    cdef int64_t now = core.now_ns
    if c.flags & CONN_MIRROR:
        _settle(core, c, _mirror_expired(core, c))
        return
    if c.state == CONN_PIPE:
        if c.req_deadline_ns != 0 and now >= c.req_deadline_ns:
            _request_timed_out(core, c)
        elif c.slow_phase != SLOW_NONE and now >= _slow_due(core, c):
            _slow_expired(core, c)      # a head or body too slow (overload.pxi)
        elif c.flags & CONN_DRAINING and now >= c.deadline_ns:
            sc.idle_timeouts += 1       # answers nobody waits for: not for long
            _conn_close(core, c, True)
        elif now - c.active_ns >= core.idle_timeout_ns:
            sc.idle_timeouts += 1
            _conn_close(core, c, False)
        elif c.close_at_ns != 0 and now >= c.close_at_ns:
            core.counters.departed_closed += 1  # its destination left the table
            _settle(core, c, _end_gracefully(core, c))
        elif _gone_quiet(core, c):
            core.counters.drain_closed += 1
            _settle(core, c, _end_gracefully(core, c))
    elif c.state == CONN_BACKOFF:
        if now >= c.deadline_ns:
            _settle(core, c, _retry_fire(core, c))  # a route's retry (retry.pxi)
    elif c.state == CONN_POOL_WAIT:
        if now >= c.deadline_ns:
            _settle(core, c, _pool_waited(core, c))  # room for an upstream? (pool.pxi)
    elif _gone_quiet(core, c):
        core.counters.drain_closed += 1
        _conn_close(core, c, False)
    elif (c.state == CONN_HTTP_HEAD and c.flags & CONN_ANSWERED
            and (c.d2u.buf == NULL or c.d2u.tail == c.d2u.head)):
        # A keep-alive client between requests (its upstream went): idle, not late.
        if now - c.active_ns >= core.idle_timeout_ns:
            sc.idle_timeouts += 1
            _conn_close(core, c, False)
    elif c.state == CONN_SNIFFING:
        if now >= c.deadline_ns:
            # Silent: opaque (a server-first protocol). Bytes that still may begin a
            # request line: HTTP (framed; its head has its own timeout), so that a
            # request sent in two parts, the second after the deadline, is not relayed.
            _settle(core, c, _sniffed(core, c, c.d2u.tail > 0))
    elif c.fault_until_ns != 0:
        if now >= c.fault_until_ns:
            _settle(core, c, _fault_release(core, c))   # a fault delay is over (fault.pxi)
    elif now >= c.deadline_ns:
        if c.state == CONN_HTTP_HEAD:
            core.counters.http_head_timeouts += 1
            _http_reply(core, c, 408, b"request head timeout\n", -1)
        elif c.state == CONN_CONNECTING:
            sc.connect_timeouts += 1
        else:
            sc.tls_handshake_timeouts += 1
        if c.flags & CONN_SETTING_UP:
            _settle(core, c, STATUS_CLOSE)  # the next endpoint, or 503
            return
        if c.flags & CONN_HTTP and c.state != CONN_HTTP_HEAD:
            _http_reply(core, c, 503, b"upstream unavailable\n", -1)
        _conn_close(core, c, False)


cdef void _timers_expire(Core* core, int64_t upto) noexcept nogil:
    """Run the wheel's ticks up to and including `upto`, skipping those with no work:
    cascade what comes due, and fire each level-0 list due."""
    cdef Wheel* w = &core.wheel
    cdef int64_t tick
    cdef uint32_t i
    cdef Conn* c
    _wheel_check(core)
    while w.n_armed > 0:
        tick = _wheel_next(w)
        if tick > upto:
            break
        w.tick = tick
        i = <uint32_t>(tick & (_TW_L0 - 1))
        if i == 0:
            _wheel_cascade(w)
        w.tick = tick + 1
        c = w.heads[i]
        if c == NULL:
            continue                    # the tick had only a cascade to do
        # The due list becomes the firing list: a timer filed again while it fires goes
        # to a later tick's list, and one disarmed by another's firing leaves it cleanly.
        w.heads[i] = NULL
        w.occupied[i >> 6] &= ~((<uint64_t>1) << (i & 63))
        w.heads[_TW_FIRING] = c
        w.occupied[_TW_FIRING >> 6] |= (<uint64_t>1) << (_TW_FIRING & 63)
        while c != NULL:
            c.tw_list = _TW_FIRING + 1
            c = c.tw_next
        while w.heads[_TW_FIRING] != NULL:
            c = w.heads[_TW_FIRING]
            _wheel_unlink(w, c)
            w.n_armed -= 1
            _conn_expired(core, c)
            if c.state != CONN_FREE and c.tw_list == 0:
                # Not due after all (the lazy idle re-arm), or a step that kept the pair
                # and set no deadline: filed again at what it is due now.
                _timer_arm(core, c, _conn_due_ns(core, c))
                _invariant(_conn_due_ns(core, c) > core.now_ns,
                           b"a timer filed again for a deadline already past")
    if w.tick <= upto:
        w.tick = upto + 1
    _wheel_check(core)


cdef inline void _timers_run(Core* core) noexcept nogil:
    """Once per loop iteration: fire what is due by core.now_ns (one compare when no
    tick began since the last run)."""
    cdef int64_t now_tick = core.now_ns >> ENGINE_TIMER_TICK_SHIFT
    if now_tick >= core.wheel.tick:
        _timers_expire(core, now_tick)


cdef int _timers_wait_ms(Core* core) noexcept nogil:
    """How long epoll_wait may sleep: until the next tick with work, a draining
    engine's deadline or the next keep of the outlier region's slots, rounded up to a
    whole millisecond (an early wake would find nothing due and spin), at most
    ENGINE_WAIT_MAX_MS."""
    cdef int64_t next_tick, wait
    cdef int64_t due = INT64_MAX
    if core.wheel.n_armed > 0:
        next_tick = _wheel_next(&core.wheel)
        if next_tick < (INT64_MAX >> ENGINE_TIMER_TICK_SHIFT):
            due = next_tick << ENGINE_TIMER_TICK_SHIFT
    if core.draining and core.drain_deadline_ns < due:
        due = core.drain_deadline_ns
    if core.shared_keep_ns < due:
        due = core.shared_keep_ns      # the outlier region's slots kept (shared_slots.pxi)
    if due == INT64_MAX:
        return ENGINE_WAIT_MAX_MS
    wait = (due - core.now_ns + 999999) // 1000000
    if wait <= 0:
        return 0
    if wait > ENGINE_WAIT_MAX_MS:
        return ENGINE_WAIT_MAX_MS
    return <int>wait


cdef void _timers_refile(Core* core) noexcept nogil:
    """What every pair is due for changed at once (a table swap shortened the idle
    timeout; the engine began to drain): timers filed before would fire late. File each
    again (a walk of the slots, once per such event)."""
    cdef uint32_t i
    cdef Conn* c
    for i in range(core.n_slots):
        c = &core.conns[i]
        if c.state != CONN_FREE:
            _timer_arm(core, c, _conn_due_ns(core, c))


cdef void _wheel_check(Core* core) noexcept nogil:
    """Debug builds: every list linked both ways and flagged in the bitmap, one timer
    per live pair and none for a free slot, none filed after its pair's deadline."""
    cdef Wheel* w = &core.wheel
    cdef uint32_t i
    cdef uint32_t n = 0
    cdef uint32_t live = 0
    cdef Conn* c
    cdef Conn* prev
    if not MESHNODE_DEBUG:
        return
    for i in range(<uint32_t>ENGINE_TIMER_LISTS):
        c = w.heads[i]
        _invariant(((w.occupied[i >> 6] >> (i & 63)) & 1) == (c != NULL),
                   b"a timer list's bit says otherwise")
        prev = NULL
        while c != NULL:
            _invariant(c.tw_list == i + 1 and c.tw_prev == prev, b"a timer list is mislinked")
            n += 1
            prev = c
            c = c.tw_next
    _invariant(n == w.n_armed, b"armed timers miscounted")
    for i in range(core.n_slots):
        c = &core.conns[i]
        if c.state == CONN_FREE:
            _invariant(c.tw_list == 0, b"a free slot has a timer")
            continue
        live += 1
        _invariant(c.tw_list != 0, b"a live pair has no timer")
        _invariant(c.tw_tick <= _tick_at(_conn_due_ns(core, c)),
                   b"a timer is filed after its pair's deadline")
    _invariant(live == n, b"timers armed for pairs that are not live")
