# limits.pxi: Limits before authentication: each side's budget of connection slots, the
# inbound TLS handshakes under way (in all and per source address; plaintext not yet
# routed counts as one), connections per source address, and a pause of the listeners
# when descriptors run out.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (Core's limit fields, SourceCount; Conn.peer_addr and the CONN_*_HELD flags).
#
# Why. Before a peer has shown a certificate it has cost this side a slot, a descriptor
# and, once its ClientHello comes, a handshake's CPU: a source that opens connections and
# never finishes them held every slot of the one pool, and local callers' outbound
# connections were refused. Now every slot belongs to one side (Core.max_inbound +
# max_outbound = max_conns), and an inbound connection is counted at accept against the
# handshakes under way and its source address's connections and handshakes; one over a
# limit is closed there (RST), before SSL_new, and counted by the limit it met. (HAProxy's
# maxsslconn and nginx's limit_conn by $binary_remote_addr, done at accept.)
#
# Per source: an open-addressed table (linear probing) keyed by the address, with at least
# four times the entries of slots (an inbound pair may hold two: its connected address's
# and, for overload.pxi's requests in flight, its calling workload's), so it is never more
# than half full and a lookup probes a few entries; an entry is freed (backward-shift
# deletion: no tombstones, probe runs stay short) when its last connection closes and its
# last request in flight ends. The hash is keyed with a per-engine random seed
# so that addresses an attacker picks (an IPv6 prefix holds many) cannot be aimed at one
# probe run. A connection costs one lookup at accept, one when its handshake ends, one at
# close; nothing per read or per request.


cdef inline void _source_key(const net.sockaddr_storage* a, uint64_t* key) noexcept nogil:
    """The address as 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d (how a dual-stack
    listener sees it too), anything else as ::."""
    cdef unsigned char b[16]
    memset(b, 0, 16)
    if a.ss_family == net.AF_INET:
        b[10] = 0xff
        b[11] = 0xff
        memcpy(&b[12], &(<net.sockaddr_in*>a).sin_addr, 4)
    elif a.ss_family == net.AF_INET6:
        memcpy(b, &(<net.sockaddr_in6*>a).sin6_addr, 16)
    memcpy(key, b, 16)


cdef inline uint64_t _mix64(uint64_t h) noexcept nogil:
    # MurmurHash3's fmix64: every input bit reaches every output bit.
    h ^= h >> 33
    h *= <uint64_t>0xff51afd7ed558ccd
    h ^= h >> 33
    h *= <uint64_t>0xc4ceb9fe1a85ec53
    h ^= h >> 33
    return h


cdef inline uint32_t _source_home(const Core* core, const uint64_t* key) noexcept nogil:
    return <uint32_t>(_mix64(_mix64(key[0] ^ core.source_seed[0]) + (key[1] ^ core.source_seed[1]))
                      & core.sources_mask)


cdef inline bint _source_empty(const SourceCount* e) noexcept nogil:
    """Does nothing hold entry e: no connection from its address, no request in flight
    from a caller there (overload.pxi)?"""
    return e.conns == 0 and e.requests == 0


cdef uint32_t _source_at(const Core* core, const uint64_t* key) noexcept nogil:
    """The entry holding `key`, else the empty one where it goes (one always is: the
    table has more entries than pairs can hold)."""
    cdef uint32_t i = _source_home(core, key)
    cdef const SourceCount* e
    while True:
        e = &core.sources[i]
        if _source_empty(e) or (e.key[0] == key[0] and e.key[1] == key[1]):
            return i
        i = (i + 1) & core.sources_mask


cdef inline void _source_take(Core* core, SourceCount* e, const uint64_t* key) noexcept nogil:
    """Entry e (_source_at's for `key`) is to hold something of key's: taken for it if it
    was empty."""
    if _source_empty(e):
        e.key[0] = key[0]
        e.key[1] = key[1]
        core.n_sources += 1


cdef void _source_free(Core* core, uint32_t i) noexcept nogil:
    """Empty entry i, moving later entries of its probe run back into the hole so that
    every lookup still finds its key before an empty entry (Knuth's algorithm R)."""
    cdef SourceCount* t = core.sources
    cdef uint32_t mask = core.sources_mask
    cdef uint32_t j = i
    cdef uint32_t home
    while True:
        j = (j + 1) & mask
        if _source_empty(&t[j]):
            break
        home = _source_home(core, t[j].key)
        # Entry j may fill hole i when i lies on its probe path: from home up to j.
        if ((j - home) & mask) >= ((j - i) & mask):
            t[i] = t[j]
            i = j
    t[i].conns = 0
    t[i].handshakes = 0
    t[i].requests = 0                   # (a moved entry's copy: overload.pxi)
    core.n_sources -= 1


cdef inline void _refuse(int fd) noexcept nogil:
    """Close an accepted connection over a limit: with RST (no TIME_WAIT kept for it,
    and the peer knows at once), before any TLS byte."""
    cdef net.linger lg
    lg.l_onoff = 1
    lg.l_linger = 0
    net.setsockopt(fd, net.SOL_SOCKET, net.SO_LINGER, &lg, sizeof(lg))
    close(fd)


cdef bint _inbound_admit(Core* core, const net.sockaddr_storage* peer, uint32_t* at) noexcept nogil:
    """May a connection from `peer` be taken on the inbound side now? If not, the limit
    it meets is counted. If so, `at` is its source's entry for _inbound_hold."""
    cdef uint64_t key[2]
    cdef const SourceCount* e
    if core.counters.inbound.connections_active >= core.max_inbound:
        core.counters.inbound.rejected_limit += 1
        return False
    if core.handshakes >= core.max_handshakes:
        core.counters.rejected_handshakes += 1
        return False
    _source_key(peer, key)
    at[0] = _source_at(core, key)
    e = &core.sources[at[0]]
    if e.conns >= core.max_source_conns:
        core.counters.rejected_source_conns += 1
        return False
    if e.handshakes >= core.max_source_handshakes:
        core.counters.rejected_source_handshakes += 1
        return False
    return True


cdef void _inbound_hold(Core* core, Conn* c, const net.sockaddr_storage* peer,
                        uint32_t at) noexcept nogil:
    """Count admitted connection c (right after _inbound_admit said yes for entry `at`:
    nothing moved the table since) against its source, and its handshake."""
    cdef SourceCount* e = &core.sources[at]
    memcpy(&c.peer_addr, peer, sizeof(net.sockaddr_storage))
    # The calling workload's address, as authorization judges it (source.ip, ipBlocks):
    # the peer that connected, until its ClientHello carries the caller's own address
    # (caller_ext.pxi: its node vouches for it, and the handshake for the node).
    _source_key(peer, <uint64_t*>c.source_ip)
    _source_take(core, e, <const uint64_t*>c.source_ip)
    e.conns += 1
    e.handshakes += 1
    core.handshakes += 1
    c.flags |= CONN_SOURCE_HELD | CONN_HANDSHAKE_HELD


cdef inline bint _handshaking(const Conn* c) noexcept nogil:
    """Does inbound pair c count as a handshake under way: its TLS handshake, or, in
    plaintext (plaintext.pxi), everything before its first request's Host named a
    route that takes it (the first-bytes sniff, the head)? Such a pair is no more
    authenticated than a handshake, and as cheap for its peer to hold open: counted
    as one, a source's slow plaintext heads stay within its handshakes, and all
    sources' within max_handshakes, as under STRICT."""
    return (c.state == CONN_HANDSHAKING
            or (c.flags & (CONN_PLAINTEXT | CONN_ROUTED)) == CONN_PLAINTEXT)


cdef void _limits_release(Core* core, Conn* c, uint32_t held) noexcept nogil:
    """Give back what c holds of `held` (CONN_HANDSHAKE_HELD: its handshake ended;
    both: it closes)."""
    cdef uint64_t key[2]
    cdef uint32_t i
    cdef SourceCount* e
    held &= c.flags
    if held == 0:
        return
    c.flags &= ~held
    _source_key(&c.peer_addr, key)
    i = _source_at(core, key)
    e = &core.sources[i]
    _invariant(e.conns > 0, b"a connection's source has no entry")
    if held & CONN_HANDSHAKE_HELD:
        _invariant(e.handshakes > 0 and core.handshakes > 0, b"handshakes miscounted")
        e.handshakes -= 1
        core.handshakes -= 1
    if held & CONN_SOURCE_HELD:
        e.conns -= 1
        if _source_empty(e):
            _source_free(core, i)


cdef uint32_t _share(uint32_t total, uint32_t permille) noexcept nogil:
    """The inbound side's slots: at least one for each side when there are two."""
    cdef uint64_t n = <uint64_t>total * permille // 1000
    if total < 2:
        return total
    if n < 1:
        n = 1
    if n > total - 1:
        n = total - 1
    return <uint32_t>n


cdef int _limits_set(RouteTable table, int max_handshakes, int max_connections_per_source,
                     int max_handshakes_per_source, double inbound_share) except -1:
    """RouteTable.set_limits(): its limits checked, kept for the table's compile (and
    _limits_take at its swap)."""
    for name, value in (("max_handshakes", max_handshakes),
                        ("max_connections_per_source", max_connections_per_source),
                        ("max_handshakes_per_source", max_handshakes_per_source)):
        if not 1 <= value <= ENGINE_MAX_CONNECTIONS:
            raise ValueError("%s must be 1..%d, not %d"
                             % (name, ENGINE_MAX_CONNECTIONS, value))
    if not 0 < inbound_share < 1:
        raise ValueError("inbound_share must be strictly between 0 and 1, not %r"
                         % inbound_share)
    table._limits = (max_handshakes, max_connections_per_source, max_handshakes_per_source,
                     min(999, max(1, int(round(inbound_share * 1000)))))
    return 0


cdef void _limits_take(Core* core, const Table* t) noexcept nogil:
    """At a swap: the limits the table sets (0: keep the engine's). Connections already
    over a lowered limit stay; new ones wait below it."""
    if t.max_handshakes > 0:
        core.max_handshakes = t.max_handshakes
    if t.max_source_conns > 0:
        core.max_source_conns = t.max_source_conns
    if t.max_source_handshakes > 0:
        core.max_source_handshakes = t.max_source_handshakes
    if t.inbound_permille > 0:
        core.max_inbound = _share(core.max_conns, t.inbound_permille)
        core.max_outbound = core.max_conns - core.max_inbound if core.max_conns > 1 else 1


cdef void _accept_pause(Core* core) noexcept nogil:
    """Out of descriptors and no spare to shed a connection with: a level-triggered
    listener would report the same backlog at once, every iteration (a busy loop). Take
    the listeners out of the loop for ENGINE_ACCEPT_PAUSE_MS instead; connections
    closing meanwhile give descriptors back."""
    if core.accept_resume_ns != 0:
        return
    if core.table != NULL and not core.draining:
        _listeners_unwatch(core, core.table)
    core.accept_resume_ns = core.now_ns + <int64_t>ENGINE_ACCEPT_PAUSE_MS * 1000000
    core.counters.accept_paused += 1


cdef void _accept_resume(Core* core) noexcept nogil:
    """The pause is over: take a spare descriptor again if one is free, and watch the
    current table's listeners (unless draining: those stay out for good)."""
    core.accept_resume_ns = 0
    if core.spare_fd < 0:
        core.spare_fd = c_open(b"/dev/null", O_RDONLY | O_CLOEXEC)
    if core.table != NULL and not core.draining:
        _listeners_watch(core, core.table)


cdef inline int _pause_wait_ms(const Core* core, int timeout_ms) noexcept nogil:
    """epoll_wait's timeout while the listeners are paused: no later than the resume
    (rounded up to a whole millisecond: an early wake would find it not due yet)."""
    cdef int64_t wait = (core.accept_resume_ns - core.now_ns + 999999) // 1000000
    if wait <= 0:
        return 0
    return <int>wait if wait < timeout_ms else timeout_ms
