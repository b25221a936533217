# shared_slots.pxi: The slots of outlier detection's region, which the node's workers map
# together: claimed by key, kept while a worker's table uses them, taken over once no
# worker has for a lease, so that endpoints coming and going never fill the region.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (SharedSlot, Core.shared*). The detectors that use the slots are in outlier.pxi.
#
# Keys. A slot's key is a hash of (service name, endpoint address), or of the service
# name alone for the service's own slot; 0 marks a slot never claimed. Open addressing
# with linear probing: a key's slot is the first on its probe path that holds it, and a
# probe ends at a slot never claimed. Keys are never set back to 0 (that would cut the
# probe chains running through the slot): a slot is taken over in place instead.
#
# Lease. Each slot says when a worker last saw it in use (`seen_ns`): the worker that
# binds a table marks its slots, and every loop marks those of its current table each
# quarter lease (_shared_keep). A slot unseen for the lease (header; 180 s unless the
# region was formatted with another) belongs to endpoints no worker's table has had for
# that long: once the region is full, a claim takes the first such slot on its key's
# probe path, unless it is ejected (an ejection outlives the table, as Envoy's host set
# keeps an ejected host's state while it stays ejected) or its service's ejections are
# being decided. Taking over happens under the region's lock (header): claims that find
# their key or a never-claimed slot stay lock-free, and no two workers can take two
# slots for one key. The lock holds a monotonic time: a worker killed holding it (a
# scan of the region: microseconds) leaves it to be broken a second later, and a claim
# that could not have it gives the pass it is in (a keep, an install) no more waits. A
# worker killed elsewhere (between a claim's key and its stamp, deciding an ejection,
# taking over) leaves a slot that still ages out (_shared_stale).
#
# Who still holds a slot taken over: an older table's pair whose endpoint left every
# table more than a lease ago (pairs of a table move on at their next request, opaque
# ones end after the drain period: rarely any), or a worker stopped (SIGSTOP) longer than
# the lease. Each endpoint and service remembers its key and uses its slot only while
# the key is still there (outlier.pxi _slot_of), and its loop claims again at the next
# keep; at worst a count that was being added as the slot changed hands lands in the new
# one.

# The region's header: magic, then the slot count (a power of two), then the slot size,
# the lock and the lease.
cdef const char* _SHARED_MAGIC = b"MNOUTLR2"  # 2: seen_ns, the lock, the lease
cdef enum:
    SHARED_HEADER_BYTES = 64
    SHARED_DEFAULT_SLOTS = 4096    # endpoints and services, node-wide
    SHARED_MAX_SLOTS = 1 << 20
    _SHARED_LOCK_AT = 16           # int64: the holder's monotonic time, 0 when free
    _SHARED_LEASE_AT = 24          # int64: the lease in nanoseconds
    _SHARED_LOCK_TRIES = 100000    # spins before a claim gives up (tried again at the next keep)
cdef double SHARED_DEFAULT_LEASE_S = 180.0
cdef int64_t _SHARED_LOCK_STALE_NS = 1000000000LL
# A slot being taken over (under the lock): no key's, so no probe stops at it.
cdef uint64_t _SHARED_TAKING = 0xFFFFFFFFFFFFFFFFULL


cdef inline SharedSlot* _shared_slots(Core* core) noexcept nogil:
    return <SharedSlot*>(core.shared + SHARED_HEADER_BYTES)


cdef inline int64_t* _shared_word(Core* core, uint32_t at) noexcept nogil:
    return <int64_t*>(core.shared + at)


cdef uint64_t _shared_key(const Service* svc, const Endpoint* ep) noexcept nogil:
    """The slot key of endpoint `ep` of `svc`; `ep` NULL: the service's own slot's.
    Never 0 (free) nor _SHARED_TAKING."""
    cdef uint64_t h = _fnv_add(_FNV_OFFSET, svc.name.data, svc.name.length)
    h = _fnv_add(h, b"\0", 1)
    if ep != NULL:
        h = _fnv_add(h, <const char*>&ep.addr, ep.addrlen)
    h = _fmix(h)
    return h if h != 0 and h != _SHARED_TAKING else 1


cdef SharedSlot* _shared_find(Core* core, uint64_t key, bint claim) noexcept nogil:
    """The slot holding `key`; with `claim`, the never-claimed slot its probe reaches
    first, claimed for it. NULL: none (the region is full, when claiming)."""
    cdef SharedSlot* slots = _shared_slots(core)
    cdef uint32_t mask = core.shared_slots - 1
    cdef uint32_t i = <uint32_t>(key & mask)
    cdef uint32_t n
    cdef uint64_t k
    for n in range(core.shared_slots):
        k = mn_load_u64(&slots[i].key)
        if k == key:
            return &slots[i]
        if k == 0:
            if not claim:
                return NULL
            if mn_cas_u64(&slots[i].key, 0, key):
                # Marked seen at once: a claim that has never been seen is no one's
                # leftover (_shared_stale stamps a slot never seen, never takes it).
                mn_store_i64(&slots[i].seen_ns, _now_ns())
                return &slots[i]
            if mn_load_u64(&slots[i].key) == key:   # another worker claimed it for `key`
                return &slots[i]
        i = (i + 1) & mask
    return NULL


cdef SharedSlot* _shared_claim(Core* core, uint64_t key) noexcept nogil:
    """The slot of `key`, claimed when it has none; once the region is full, a slot no
    worker has used for the lease, taken over; NULL: none of those either."""
    cdef SharedSlot* s = _shared_find(core, key, True)
    cdef int64_t held
    if s != NULL:
        return s
    held = _shared_lock(core)
    if held == 0:
        return NULL
    s = _shared_find(core, key, True)   # another took one over for `key` meanwhile
    if s == NULL:
        s = _shared_stale(core, key)
        if s != NULL:
            _shared_take_over(s, key)
            core.counters.outlier_slots_reclaimed += 1
    _shared_unlock(core, held)
    return s


cdef SharedSlot* _shared_stale(Core* core, uint64_t key) noexcept nogil:
    """The first slot on `key`'s probe path that no worker has seen in use for the
    lease, is not ejected and has no ejection being decided (announcements of workers
    that died deciding do not count: outlier.pxi _announced). Under the lock.

    A slot never seen is stamped now: its claim is under way (its claimer stamps it
    again) or its claimer died between the key and the stamp, and then it ages from
    here like any other instead of being nobody's for good."""
    cdef SharedSlot* slots = _shared_slots(core)
    cdef uint32_t mask = core.shared_slots - 1
    cdef uint32_t i = <uint32_t>(key & mask)
    cdef uint32_t n
    cdef int64_t now = _now_ns()
    cdef int64_t seen
    cdef int64_t lease = core.shared_lease_ns
    for n in range(core.shared_slots):
        seen = mn_load_i64(&slots[i].seen_ns)
        if seen == 0:
            mn_cas_i64(&slots[i].seen_ns, 0, now)
        elif (now - seen > lease
                and mn_load_i64(&slots[i].ejected_until_ns) <= now
                and _announced(mn_load_u32(&slots[i].ejecting), now) == 0):
            return &slots[i]
        i = (i + 1) & mask
    return NULL


cdef void _shared_take_over(SharedSlot* s, uint64_t key) noexcept nogil:
    """Give `s` to `key`, state cleared: its old key is gone first, so that whoever
    still holds the slot for it stops using it (outlier.pxi _slot_of) before the
    counts are cleared, and `key` appears only once they are."""
    mn_store_u64(&s.key, _SHARED_TAKING)
    mn_store_i64(&s.ejected_until_ns, 0)
    mn_store_u32(&s.consecutive_5xx, 0)
    mn_store_u32(&s.consecutive_gateway, 0)
    mn_store_u32(&s.multiplier, 0)
    mn_store_u32(&s.ejecting, 0)
    mn_store_u64(&s.ejections, 0)
    mn_store_i64(&s.seen_ns, _now_ns())
    mn_store_u64(&s.key, key)


cdef int64_t _shared_lock(Core* core) noexcept nogil:
    """Take the region's lock (for taking a slot over): the value it holds, for
    _shared_unlock; 0 after _SHARED_LOCK_TRIES spins. A lock held over
    _SHARED_LOCK_STALE_NS is a dead worker's: broken."""
    cdef int64_t* word = _shared_word(core, _SHARED_LOCK_AT)
    cdef int64_t held, now
    cdef int n
    for n in range(_SHARED_LOCK_TRIES):
        held = mn_load_i64(word)
        now = _now_ns()
        if held == 0 or now - held > _SHARED_LOCK_STALE_NS:
            if mn_cas_i64(word, held, now):
                return now
    return 0


cdef inline void _shared_unlock(Core* core, int64_t held) noexcept nogil:
    """Give the lock back if it is still ours (`held`: what _shared_lock put in it): a
    holder stalled past _SHARED_LOCK_STALE_NS had it broken, and must not free the
    lock of the worker that broke it."""
    mn_cas_i64(_shared_word(core, _SHARED_LOCK_AT), held, 0)


cdef inline void _slot_keep(Core* core, SharedSlot** at, uint64_t key, int64_t now,
                            bint* may_claim) noexcept nogil:
    """Mark the slot at `at` seen for `key`; a slot taken over from it (or none: the
    region was full) is found again first, claimed while `may_claim`. A claim that
    fails clears it: the region is full (each probe path is then all of it) with
    nothing to take over, or its lock stays held, so the other claims of the same pass
    would fail too, each after its own scans or wait for the lock (a dead worker's
    holds it for a second): they only look their keys up until the next pass."""
    cdef SharedSlot* s = at[0]
    if s == NULL or mn_load_u64(&s.key) != key:
        if may_claim[0]:
            s = _shared_claim(core, key)
            may_claim[0] = s != NULL
        else:
            s = _shared_find(core, key, False)
        at[0] = s
        if s == NULL:
            return
    mn_store_i64(&s.seen_ns, now)


cdef void _shared_keep(Core* core) noexcept nogil:
    """Each quarter lease, from the loop: the slots of the current table's endpoints and
    services are seen in use (_slot_keep). A table's slots are the loop's to change once
    it has the table (install binds them before)."""
    cdef Table* t = core.table
    cdef uint32_t i, j
    cdef Service* svc
    cdef int64_t now = core.now_ns
    cdef bint may_claim = True
    core.shared_keep_ns = now + core.shared_lease_ns // 4
    if t == NULL:
        return                          # (the region may still be changing: share_state)
    for i in range(t.n_services):
        svc = &t.services[i]
        if svc.outlier == NULL:
            continue
        for j in range(svc.n_endpoints):
            _slot_keep(core, &svc.endpoints[j].shared, svc.endpoints[j].shared_key, now,
                       &may_claim)
        _slot_keep(core, &svc.outlier.guard, svc.outlier.guard_key, now, &may_claim)


# --- at install (GIL held) ---------------------------------------------------------------

def shared_state_bytes(int slots=SHARED_DEFAULT_SLOTS) -> int:
    """The size of a shared outlier region of `slots` slots (a power of two)."""
    if slots < 1 or slots > SHARED_MAX_SLOTS or slots & (slots - 1):
        raise ValueError("slots must be a power of two, 1..%d, not %d" % (SHARED_MAX_SLOTS, slots))
    return SHARED_HEADER_BYTES + slots * sizeof(SharedSlot)


def shared_state_format(buffer, int slots=SHARED_DEFAULT_SLOTS,
                        double lease_s=SHARED_DEFAULT_LEASE_S) -> None:
    """Write an empty region of `slots` slots into `buffer` (writable, its size
    shared_state_bytes(slots)): every slot free. A slot no worker has used for `lease_s`
    may be taken over by another endpoint once the region is full."""
    cdef unsigned char[::1] view = buffer
    cdef Py_ssize_t size = shared_state_bytes(slots)
    if view.shape[0] != size:
        raise ValueError("the buffer holds %d bytes, not %d" % (view.shape[0], size))
    if not 0.001 <= lease_s <= 86400:
        raise ValueError("lease_s must be 1 ms .. 1 day, not %r" % lease_s)
    memset(&view[0], 0, size)
    memcpy(&view[0], _SHARED_MAGIC, 8)
    (<uint32_t*>&view[8])[0] = <uint32_t>slots
    (<uint32_t*>&view[12])[0] = <uint32_t>sizeof(SharedSlot)
    (<int64_t*>&view[_SHARED_LEASE_AT])[0] = <int64_t>(lease_s * 1e9)


cdef int _shared_take(Core* core, object buffer) except -1:
    """Point the engine at the region in `buffer` (checked: a file another version of
    the engine wrote is refused, not misread)."""
    cdef unsigned char[::1] view = buffer
    cdef uint32_t slots, slot_bytes
    if view.shape[0] < SHARED_HEADER_BYTES or memcmp(&view[0], _SHARED_MAGIC, 8) != 0:
        raise ValueError("not a shared outlier region (shared_state_format writes one)")
    slots = (<uint32_t*>&view[8])[0]
    slot_bytes = (<uint32_t*>&view[12])[0]
    if (slot_bytes != sizeof(SharedSlot) or slots == 0 or slots & (slots - 1)
            or slots > SHARED_MAX_SLOTS
            or view.shape[0] != <Py_ssize_t>(SHARED_HEADER_BYTES + slots * sizeof(SharedSlot))
            or (<int64_t*>&view[_SHARED_LEASE_AT])[0] <= 0):
        raise ValueError("the shared outlier region's header does not match its size or "
                         "this engine's slot layout")
    if core.shared_owned:
        free(core.shared)
    core.shared = <char*>&view[0]
    core.shared_slots = slots
    core.shared_owned = False
    core.shared_lease_ns = (<int64_t*>&view[_SHARED_LEASE_AT])[0]
    # Kept by the region's own lease from the loop's next iteration on, not by the one it
    # scheduled for the engine's own region (share_state comes before the first install,
    # whose lock and wakeup hand this to the loop).
    core.shared_keep_ns = 0
    return 0
