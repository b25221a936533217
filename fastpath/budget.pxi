# budget.pxi: Retry budgets, one per destination Service (Gateway API GEP-3388
# XBackendTrafficPolicy retryConstraint, Linkerd's retry budget): what share of a
# service's requests may be retries, so that retries cannot multiply an outage.
#
# Included into fastpath/engine.pyx; the state is engine.pxd's RetryBudget, owned by
# Table.budgets and pointed to by each Service (one Service's ports share one).
#
# Every outbound HTTP request framed for a service deposits in its budget (whatever its
# rule: GEP-3388 budgets "all routes destined for that service"); a retry toward it
# (retry.pxi _retry_wanted) withdraws. A retry is allowed while the retries over the
# window (budget.interval, 10 s) stay within `percent` (20) of the requests over it, or
# while fewer than `min_count` (10) retries were made in the current `min_interval`
# (1 s: minRetryRate), so that a quiet service still retries. All in integers: a
# request inside the current slot costs a compare and an add; the window's sum (ten
# slots) is taken only when a retry asks.
#
# Per worker (each engine has its own), as Linkerd's is per proxy: a node of N workers
# lets up to N times the floor through. A new table takes the counts of the budget it
# replaces when its service and settings are unchanged (_budgets_carry); otherwise it
# starts empty.


# --- the data plane (engine thread) -----------------------------------------------------------

cdef void _budget_roll(Core* core, RetryBudget* b) noexcept nogil:
    """Move the ring to the slot now falls in, emptying the slots it passes."""
    cdef int64_t now_slot = core.now_ns // b.slot_ns
    cdef int64_t k
    if b.slot_end_ns != 0 and now_slot == b.slot_at:
        return
    if b.slot_end_ns == 0 or now_slot - b.slot_at >= ENGINE_RETRY_SLOTS or now_slot < b.slot_at:
        memset(b.requests, 0, sizeof(b.requests))
        memset(b.retries, 0, sizeof(b.retries))
    else:
        for k in range(b.slot_at + 1, now_slot + 1):
            b.requests[k % ENGINE_RETRY_SLOTS] = 0
            b.retries[k % ENGINE_RETRY_SLOTS] = 0
    b.slot_at = now_slot
    b.slot = <uint32_t>(now_slot % ENGINE_RETRY_SLOTS)
    b.slot_end_ns = (now_slot + 1) * b.slot_ns


cdef inline RetryBudget* _budget_of(const Conn* c) noexcept nogil:
    """The budget of the service the pair's requests go to now (outbound)."""
    if c.service >= c.table.n_services:
        return NULL
    return c.table.services[c.service].budget


cdef inline void _budget_deposit(Core* core, Conn* c) noexcept nogil:
    """One more request framed toward the pair's service: room for percent / 100 of
    a retry."""
    cdef RetryBudget* b = _budget_of(c)
    if b == NULL:
        return
    if core.now_ns >= b.slot_end_ns:
        _budget_roll(core, b)
    b.requests[b.slot] += 1


cdef bint _budget_withdraw(Core* core, Conn* c) noexcept nogil:
    """May a retry toward the pair's service be made now? If so it is counted (in the
    window, and in the floor's interval when that is what allowed it)."""
    cdef RetryBudget* b = _budget_of(c)
    cdef uint64_t requests = 0
    cdef uint64_t retries = 0
    cdef uint32_t i
    cdef bint allowed
    if b == NULL:
        return False
    _budget_roll(core, b)
    for i in range(ENGINE_RETRY_SLOTS):
        requests += b.requests[i]
        retries += b.retries[i]
    allowed = (retries + 1) * 100 <= requests * b.percent
    if not allowed:
        if b.min_since_ns == 0 or core.now_ns - b.min_since_ns >= b.min_interval_ns:
            b.min_since_ns = core.now_ns
            b.min_used = 0
        allowed = b.min_used < b.min_count
        if allowed:
            b.min_used += 1
    if allowed:
        b.retries[b.slot] += 1
    return allowed


cdef bint _budget_same(const RetryBudget* a, const RetryBudget* b) noexcept nogil:
    return (a.percent == b.percent and a.slot_ns == b.slot_ns and a.min_count == b.min_count
            and a.min_interval_ns == b.min_interval_ns)


cdef void _budgets_carry(Table* old, Table* t) noexcept nogil:
    """A config push does not reset the budgets: each budget of `t` whose service `old`
    had (_same_destination) with the same settings takes the old one's counts, so that
    applying any resource cannot reopen a spent budget. (Pairs still on `old` go on
    counting there.)"""
    cdef uint32_t i
    cdef int64_t k
    cdef RetryBudget* a
    cdef RetryBudget* b
    for i in range(old.n_services):
        a = old.services[i].budget
        if a == NULL or a.slot_end_ns == 0:
            continue
        k = _service_in(t, &old.services[i], <int64_t>i)
        if k < 0:
            continue
        b = t.services[k].budget
        if b == NULL or b.carried or not _budget_same(a, b):
            continue
        memcpy(b.requests, a.requests, sizeof(b.requests))
        memcpy(b.retries, a.retries, sizeof(b.retries))
        b.slot_at = a.slot_at
        b.slot = a.slot
        b.slot_end_ns = a.slot_end_ns
        b.min_since_ns = a.min_since_ns
        b.min_used = a.min_used
        b.carried = True


# --- the table's budgets, from RouteTable.set_retry_budget() (GIL held) -------------------------

_BUDGET_DEFAULTS = {"percent": 20, "interval_s": 10.0, "min_retries": 10,
                    "min_retry_interval_s": 1.0}


cdef tuple _budget_args(long long percent, double interval_s, long long min_retries,
                        double min_retry_interval_s):
    """set_retry_budget's settings checked (Gateway API's bounds: percent 0..100, the
    interval 1 s..1 h, minRetryRate's count up to 1,000,000 over at most 1 h; a count
    of 0 is no floor), as a tuple of integers (ns)."""
    if not 0 <= percent <= 100:
        raise ValueError("retry budget: percent must be 0..100, not %d" % percent)
    if not 1.0 <= interval_s <= 3600.0:
        raise ValueError("retry budget: interval_s must be 1..3600, not %r" % interval_s)
    if not 0 <= min_retries <= 1000000:
        raise ValueError("retry budget: min_retries must be 0..1000000, not %d" % min_retries)
    if not 0.001 <= min_retry_interval_s <= 3600.0:
        raise ValueError("retry budget: min_retry_interval_s must be 0.001..3600, not %r"
                         % min_retry_interval_s)
    # The window in whole slots of whole nanoseconds: (now // slot_ns) never moves back.
    return (int(percent), int(round(interval_s * 1e9)) // ENGINE_RETRY_SLOTS,
            int(min_retries), int(round(min_retry_interval_s * 1e9)))


cdef int _budget_add(RouteTable table, object service_indexes, long long percent,
                     double interval_s, long long min_retries,
                     double min_retry_interval_s) except -1:
    """RouteTable.set_retry_budget(): a budget shared by the services it names (each in
    one budget at most), kept for _budgets_build."""
    indexes = tuple(int(i) for i in service_indexes)
    if not indexes:
        raise ValueError("retry budget: name at least one service")
    taken = {i for named, _ in table._retry_budgets for i in named}
    for i in indexes:
        if not 0 <= i < len(table._services):
            raise ValueError("retry budget: no service %d (add_service() first)" % i)
        if i in taken or indexes.count(i) > 1:
            raise ValueError("retry budget: service %d already has one" % i)
    table._retry_budgets.append((indexes, _budget_args(percent, interval_s, min_retries,
                                                       min_retry_interval_s)))
    return 0


cdef int _budgets_build(Table* t, list budgets) except -1:
    """Give every service of `t` its budget: those set_retry_budget() named share the
    one it set, each other service has one of its own on _BUDGET_DEFAULTS."""
    cdef RetryBudget* b
    cdef uint32_t n = 0
    cdef uint32_t i
    if t.n_services == 0:
        return 0
    # At most one budget per service: each named set holds one service or more.
    t.budgets = <RetryBudget*>calloc(t.n_services, sizeof(RetryBudget))
    if t.budgets == NULL:
        raise MemoryError()
    default = _budget_args(_BUDGET_DEFAULTS["percent"], _BUDGET_DEFAULTS["interval_s"],
                           _BUDGET_DEFAULTS["min_retries"], _BUDGET_DEFAULTS["min_retry_interval_s"])
    for indexes, args in budgets:
        b = &t.budgets[n]
        n += 1
        b.percent, b.slot_ns, b.min_count, b.min_interval_ns = args
        for i in indexes:
            t.services[i].budget = b
    for i in range(t.n_services):
        if t.services[i].budget == NULL:
            b = &t.budgets[n]
            n += 1
            b.percent, b.slot_ns, b.min_count, b.min_interval_ns = default
            t.services[i].budget = b
    t.n_budgets = n
    return 0
