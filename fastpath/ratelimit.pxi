# ratelimit.pxi: RateLimitPolicy's token buckets, node-wide: a request over its limit is
# answered 429 (Retry-After, and the IETF RateLimit-Policy / RateLimit fields), an opaque
# pair over it is closed before it is carried; the buckets live in a region every worker
# of the node maps, so a limit is the node's whatever the number of workers.
#
# Included into fastpath/engine.pyx (one extension); the state is engine.pxd's RateLimit
# (in Table.limits, named by a FILTER_RATE_LIMIT step's arg), RateBucket (the region) and
# RateStat (Core.rate_stats, counts by policy name across tables).
#
# GCRA (the generic cell rate algorithm, as redis-cell and Stripe's limiters run it): a
# bucket is one int64, its theoretical arrival time `tat`. A limit of `tokens` per
# `interval` with a burst of `maxTokens` lets a request through when
# max(tat, now) + T - now <= maxTokens x T (T = interval / tokens), and moves tat there
# with one compare-and-swap; so it is a token bucket refilled continuously (Envoy's
# refills by whole fills: the same rate, smoother). Lock-free: a CAS that loses to
# another worker's is tried again on the value that won. Time is CLOCK_MONOTONIC, one
# clock for every process of the host.
#
# Keys. A limit per caller (principal or address) has a window of n_keys buckets after
# its own one; a key's bucket is the first on its probe path (linear, in the window)
# that holds it. A new key takes the first never-claimed bucket, or one whose tat is
# past (fully refilled: the same state as a new bucket, so handing it over changes no
# decision); with neither, the key shares the limit's own bucket (the overflow bucket)
# and the decision is counted as overflow. Keys are never set back to 0, so probe paths
# stay whole. Two workers taking two buckets for one new key at once give it one burst
# too many once: a bounded error, in the callers' favour.
#
# Windows are placed by the limit's key alone (its bits under the region's size), so a
# push that adds, drops or resizes another limit moves none: a limit keeps its spent
# buckets across tables, and workers on different tables of a push share them. Windows
# may overlap (they wrap at the region's end): a bucket whose key is another limit's is
# skipped as any other key's, and so is one in the limit's own place, its own bucket
# then being the first free one past it (RATE_OWN_PROBE buckets at most).

# A request's limit is decided when nothing is owed before it on its pair (an answer
# cannot overtake an earlier one): behind pipelined requests the step stops, taking no
# token, and runs again once they are answered. The 429 of a kept-alive request without
# a body, on a pair past its first request, is answered in place (Envoy's local rate
# limit keeps the connection): written to the client as the next answer, the request's
# head dropped, and the pair goes on, so a caller over the rate costs no new connection
# (inbound: no new mTLS handshake for the caller's node). Any other 429 ends the pair
# (Connection: close), as the engine's other answers do: a body would have to be read
# and dropped first, and a first request's pair has no stream to go on with yet.

from fastpath.includes.atomics cimport mn_cas_i64, mn_cas_u64, mn_load_i64, mn_load_u64

cdef const char* _RATE_MAGIC = b"MNRATE01"
cdef enum:
    RATE_HEADER_BYTES = 64
    RATE_DEFAULT_SLOTS = 16384     # buckets, node-wide (16 bytes each)
    RATE_MAX_SLOTS = 1 << 22
    RATE_MAX_KEYS = 65536          # distinct keys one limit tells apart
    RATE_OWN_PROBE = 64            # buckets a limit's own one may be looked for in
    RATE_NAME_MAX = 600            # a limit's id: the config's NS/NAME/LIMIT is at most 571
    _RATE_FIELDS_MAX = 2048        # a 429's rate-limit field lines (two ids, numbers)

# The longest an emptied bucket may take to fill again (burst x emission): tat runs at
# most this far ahead of CLOCK_MONOTONIC's now, so now + it + a token's time stays an
# int64 for the first 146 years of a host's uptime (2^62 ns each).
cdef int64_t RATE_MAX_REFILL_NS = (<int64_t>1) << 62

RATE_LIMIT_KEYS = {"none": RATE_BY_NONE, "principal": RATE_BY_PRINCIPAL,
                   "source_ip": RATE_BY_SOURCE_IP}


# --- the data plane (engine thread) -----------------------------------------------------------

cdef inline RateBucket* _rate_buckets(Core* core) noexcept nogil:
    return <RateBucket*>(core.rate_region + RATE_HEADER_BYTES)


cdef inline bint _rate_takeable(RateBucket* b, uint64_t k, int64_t now) noexcept nogil:
    """May a new key have bucket `b` (holding `k`)? Never claimed, or refilled."""
    return k == 0 or mn_load_i64(&b.tat) <= now


cdef RateBucket* _rate_claim(RateBucket* b, uint64_t key, int64_t now) noexcept nogil:
    """`b` for `key`: it holds it, or it is takeable and taken; NULL otherwise."""
    cdef uint64_t k = mn_load_u64(&b.key)
    if k == key:
        return b
    if _rate_takeable(b, k, now) and mn_cas_u64(&b.key, k, key):
        return b
    return b if mn_load_u64(&b.key) == key else NULL


cdef RateBucket* _rate_find(Core* core, uint32_t start, uint32_t span, uint32_t at,
                            uint64_t key, int64_t now) noexcept nogil:
    """The bucket of `key` on its probe path through the `span` buckets from `start`
    (wrapping at the region's end), from `at` along them (module comment: Keys); NULL:
    it holds none and none is free."""
    cdef RateBucket* buckets = _rate_buckets(core)
    cdef uint32_t mask = core.rate_slots - 1
    cdef RateBucket* spare = NULL
    cdef RateBucket* b
    cdef uint32_t n
    cdef uint64_t k
    for n in range(span):
        b = &buckets[(start + at) & mask]
        k = mn_load_u64(&b.key)
        if k == key:
            return b
        if spare == NULL and _rate_takeable(b, k, now):
            spare = b
        if k == 0:
            break                   # the end of every probe path through here
        at = at + 1 if at + 1 < span else 0
    return _rate_claim(spare, key, now) if spare != NULL else NULL


cdef RateBucket* _rate_bucket(Core* core, const RateLimit* lim, uint64_t key, int64_t now,
                              bint* overflow) noexcept nogil:
    """The bucket of `key` under `lim` (module comment: Keys); NULL: none in the region
    (the request goes through, counted no_slot)."""
    cdef RateBucket* b
    if lim.by != RATE_BY_NONE and lim.n_keys > 0:
        b = _rate_find(core, lim.first + 1, lim.n_keys, <uint32_t>(key % lim.n_keys), key, now)
        if b != NULL:
            return b
        overflow[0] = True
    return _rate_find(core, lim.first, min(<uint32_t>RATE_OWN_PROBE, core.rate_slots), 0,
                      lim.key, now)


cdef int64_t _gcra_take(RateBucket* b, const RateLimit* lim, int64_t now) noexcept nogil:
    """Take a token from `b`: 0 when taken, else the nanoseconds until one will be.

    A tat further ahead than this limit's burst was set under an earlier, slower or
    deeper, limit of the same key (a push keeps the buckets): it is brought back to an
    empty bucket of this one, from which time refills it, not kept as the old limit's
    debt (a limit raised from one a day to a thousand a second would otherwise refuse
    its spent callers for the rest of the day)."""
    cdef int64_t tat, start, after
    while True:
        tat = mn_load_i64(&b.tat)
        if tat - now > lim.burst_ns:
            mn_cas_i64(&b.tat, tat, now + lim.burst_ns)
            continue                # (lost to another worker: its value is read again)
        start = tat if tat > now else now
        after = start + lim.emission_ns
        if after - now > lim.burst_ns:
            return after - lim.burst_ns - now
        if mn_cas_i64(&b.tat, tat, after):
            return 0


cdef uint64_t _rate_key(Core* core, const Conn* c, const RateLimit* lim) noexcept nogil:
    """The key of pair c's caller under `lim`: its verified SPIFFE ID (inbound) or its
    local workload's (outbound), or its address (inbound: the calling workload's, as its
    node carried it, caller_ext.pxi; outbound: the local client's); never 0."""
    cdef uint64_t h = lim.key
    cdef const Name* p
    cdef uint64_t addr[2]
    if lim.by == RATE_BY_PRINCIPAL:
        if c.flags & CONN_INBOUND:
            h = _fnv_add(h, c.peer_id, c.peer_id_length) if c.peer_id != NULL else h
        else:
            p = &core.principals[c.local_principal]
            h = _fnv_add(h, p.data, p.length)
    elif lim.by == RATE_BY_SOURCE_IP:
        if c.flags & CONN_INBOUND:
            memcpy(addr, c.source_ip, 16)
        else:
            _source_key(&c.peer_addr, addr)
        h = _fnv_add(h, <const char*>addr, 16)
    h = _fmix(h)
    return h if h != 0 else 1


cdef inline bint _rate_rule_in(const RateLimit* lim, int32_t rule) noexcept nogil:
    cdef uint32_t i
    for i in range(lim.n_rules):
        if lim.rules[i] == rule:
            return True
    return False


cdef FilterVerdict _ratelimit_step(Core* core, Conn* c, const Filter* f,
                                   FilterCall* call) noexcept nogil:
    """A request (PHASE_REQUEST) or a new opaque pair (PHASE_ACCEPT) takes a token from
    its bucket; none left: the request is answered 429 (_ratelimit_reply), the pair
    refused (call.status 0)."""
    cdef const RateLimit* lim = &c.table.limits[f.arg]
    cdef RateStat* stat = &core.rate_stats[lim.stat]
    cdef RateBucket* b
    cdef bint overflow = False
    cdef int64_t now, wait
    if call.phase == PHASE_ACCEPT and lim.n_rules > 0:
        return FILTER_CONTINUE          # a route rule's limit: its requests only
    if call.phase == PHASE_REQUEST:
        if lim.n_rules > 0 and not _rate_rule_in(lim, c.req_rule):
            return FILTER_CONTINUE
        if _answer_owed(c):
            return FILTER_STOP
    now = _now_ns()
    b = _rate_bucket(core, lim, _rate_key(core, c, lim), now, &overflow)
    if overflow:
        stat.overflow += 1
    if b == NULL:
        stat.no_slot += 1
        return FILTER_CONTINUE
    wait = _gcra_take(b, lim, now)
    if wait == 0:
        stat.allowed += 1
        return FILTER_CONTINUE
    call.status = 0
    c.acc_flags |= AFLAG_RL             # its access record says why (accesslog.pxi)
    if call.phase == PHASE_REQUEST:
        stat.limited += 1
        call.status = 429
        call.kept = _ratelimit_reply(core, c, lim, wait, call)
    else:
        stat.refused += 1
    return FILTER_ANSWER


cdef bint _ratelimit_reply(Core* core, Conn* c, const RateLimit* lim, int64_t wait_ns,
                           const FilterCall* call) noexcept nogil:
    """429, with the seconds until a token is back (rounded up, RFC 9110 §10.2.3) in
    Retry-After and in the RateLimit field's `t`, its `r` 0, and the limit's
    RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers): in place when it may be
    (True: the pair goes on), else as the engine's closing answer."""
    cdef char fields[_RATE_FIELDS_MAX]
    cdef long long secs = (wait_ns + 999999999) // 1000000000
    cdef int n = snprintf(fields, sizeof(fields),
                          b"retry-after: %lld\r\n%sratelimit: %s;r=0;t=%lld\r\n",
                          secs, lim.policy_field.data, lim.policy.data, secs)
    if n <= 0 or n >= <int>sizeof(fields):
        n = 0
    if _answer_in_place(core, c, call, 429, b"rate limit exceeded\n", fields, n):
        return True
    _http_reply_fields(core, c, 429, b"rate limit exceeded\n", -1, fields, n)
    return False


# --- the region (GIL held) -----------------------------------------------------------------

def rate_region_bytes(int slots=RATE_DEFAULT_SLOTS) -> int:
    """The size of a rate-limit region of `slots` buckets (a power of two)."""
    if slots < 2 or slots > RATE_MAX_SLOTS or slots & (slots - 1):
        raise ValueError("slots must be a power of two, 2..%d, not %d" % (RATE_MAX_SLOTS, slots))
    return RATE_HEADER_BYTES + slots * sizeof(RateBucket)


def rate_region_format(buffer, int slots=RATE_DEFAULT_SLOTS) -> None:
    """Write an empty region of `slots` buckets into `buffer` (writable, its size
    rate_region_bytes(slots))."""
    cdef unsigned char[::1] view = buffer
    cdef Py_ssize_t size = rate_region_bytes(slots)
    if view.shape[0] != size:
        raise ValueError("the buffer holds %d bytes, not %d" % (view.shape[0], size))
    memset(&view[0], 0, size)
    memcpy(&view[0], _RATE_MAGIC, 8)
    (<uint32_t*>&view[8])[0] = <uint32_t>slots
    (<uint32_t*>&view[12])[0] = <uint32_t>sizeof(RateBucket)


cdef int _rate_region_take(Core* core, object buffer) except -1:
    """Point the engine at the region in `buffer`, its header checked."""
    cdef unsigned char[::1] view = buffer
    cdef uint32_t slots
    if view.shape[0] < RATE_HEADER_BYTES or memcmp(&view[0], _RATE_MAGIC, 8) != 0:
        raise ValueError("not a rate-limit region (rate_region_format writes one)")
    slots = (<uint32_t*>&view[8])[0]
    if ((<uint32_t*>&view[12])[0] != sizeof(RateBucket) or slots < 2 or slots & (slots - 1)
            or slots > RATE_MAX_SLOTS
            or view.shape[0] != <Py_ssize_t>(RATE_HEADER_BYTES + slots * sizeof(RateBucket))):
        raise ValueError("the rate-limit region's header does not match its size or "
                         "this engine's bucket layout")
    if core.rate_owned:
        free(core.rate_region)
    core.rate_region = <char*>&view[0]
    core.rate_slots = slots
    core.rate_owned = False
    return 0


cdef int _rate_region_own(Core* core) except -1:
    """The engine's own region, until share_rate_limits()."""
    cdef Py_ssize_t size = rate_region_bytes()
    core.rate_region = <char*>calloc(1, size)
    if core.rate_region == NULL:
        raise MemoryError()
    core.rate_owned = True
    core.rate_slots = RATE_DEFAULT_SLOTS
    rate_region_format(<char[:size]>core.rate_region)
    return 0


cdef void _rate_region_free(Core* core) noexcept nogil:
    cdef uint32_t i
    if core.rate_owned:
        free(core.rate_region)
    core.rate_region = NULL
    for i in range(core.n_rate_stats):
        _name_free(&core.rate_stats[i].policy)


cdef uint16_t _rate_stat(Core* core, const char* policy, uint32_t length) except? 0:
    """The Core.rate_stats index counting `policy` (added when new; 0 past the bound).
    Only install() adds, before the loop sees the table that names it."""
    cdef uint32_t i
    cdef uint32_t n = core.n_rate_stats
    if n == 0:
        n = 1                           # [0]: names over the bound, counted as ""
    for i in range(1, n):
        if _name_eq(&core.rate_stats[i].policy, policy, length):
            return <uint16_t>i
    if n >= ENGINE_RATE_POLICIES:
        mn_publish_u32(&core.n_rate_stats, n)
        return 0
    _name_set(&core.rate_stats[n].policy, policy[:length])
    mn_publish_u32(&core.n_rate_stats, n + 1)
    return <uint16_t>n


cdef int _ratelimit_bind(Core* core, Table* t) except -1:
    """At install: each limit's window in the region (module comment: Windows) and
    the index its counts go to."""
    cdef uint32_t i
    cdef RateLimit* lim
    for i in range(t.n_limits):
        lim = &t.limits[i]
        if lim.by == RATE_BY_NONE:
            lim.n_keys = 0
        elif lim.n_keys > core.rate_slots - 1:
            lim.n_keys = core.rate_slots - 1
        lim.first = <uint32_t>(lim.key & (core.rate_slots - 1))
        # (Counted by the policy's name: its id in the RateLimit field, unquoted.)
        lim.stat = _rate_stat(core, lim.policy.data + 1, lim.policy.length - 2)
    return 0


cdef list _rate_view(Core* core):
    """Engine.rate_limits(): read without a lock while the loop counts."""
    cdef uint32_t n = mn_acquire_u32(&core.n_rate_stats)
    cdef uint32_t i
    cdef RateStat* s
    out = []
    for i in range(n):
        s = &core.rate_stats[i]
        out.append({"policy": s.policy.data[:s.policy.length].decode() if s.policy.length else "",
                     "allowed": s.allowed, "limited": s.limited, "refused": s.refused,
                     "overflow": s.overflow, "no_slot": s.no_slot})
    return out


# --- the table's limits, from RouteTable.add_rate_limit() (GIL held) ---------------------------

cdef tuple _policy_window(long long tokens, double interval_s):
    """RateLimit-Policy's quota and window (q, w: whole seconds) for `tokens` per
    `interval_s`: the fill itself when its interval is whole seconds, else the rate
    over the shortest whole window that holds at least one token."""
    cdef long long w
    if interval_s >= 1.0 and interval_s == <long long>interval_s:
        return tokens, <long long>interval_s
    w = 1
    while tokens * w / interval_s < 1.0:
        w += 1
    return <long long>(tokens * w / interval_s + 0.5), w


cdef tuple _rate_limit_spec(str policy, long long tokens, double interval_s, long long burst,
                            str by, long long max_keys, str key):
    """add_rate_limit()'s arguments checked, as _limits_build takes them."""
    what = "rate limit %r" % policy
    if not policy or len(policy) > RATE_NAME_MAX or any(ch in policy for ch in '"\\\r\n') \
            or not policy.isprintable():
        raise ValueError("%s: the name must be 1..%d printable characters, no quote or "
                         "backslash" % (what, RATE_NAME_MAX))
    if not 1 <= tokens <= 1000000000:
        raise ValueError("%s: tokens must be 1..1e9, not %d" % (what, tokens))
    if not 0.001 <= interval_s <= 86400.0:
        raise ValueError("%s: interval_s must be 0.001..86400, not %r" % (what, interval_s))
    if not 1 <= burst <= 1000000000:
        raise ValueError("%s: burst must be 1..1e9, not %d" % (what, burst))
    if by not in RATE_LIMIT_KEYS:
        raise ValueError("%s: by must be one of %s, not %r" % (what, sorted(RATE_LIMIT_KEYS), by))
    if not 1 <= max_keys <= RATE_MAX_KEYS:
        raise ValueError("%s: max_keys must be 1..%d, not %d" % (what, RATE_MAX_KEYS, max_keys))
    emission = int(round(interval_s * 1e9)) // tokens
    if emission < 1:
        raise ValueError("%s: more than one token a nanosecond" % what)
    if emission * burst > RATE_MAX_REFILL_NS:
        raise ValueError("%s: burst x interval_s / tokens (the time to fill the bucket "
                         "again) must be at most %d s" % (what, RATE_MAX_REFILL_NS // 10**9))
    q, w = _policy_window(tokens, interval_s)
    key_b = (key or policy).encode()
    return (emission, emission * burst, _fmix(_fnv_add(_FNV_OFFSET, key_b, len(key_b))) or 1,
            RATE_LIMIT_KEYS[by], max_keys, ('"%s"' % policy).encode(),
            ('ratelimit-policy: "%s";q=%d;w=%d\r\n' % (policy, q, w)).encode())


cdef int _limits_build(Table* t, list limits) except -1:
    """The table's RateLimit array (Filter.arg indexes it)."""
    cdef RateLimit* lim
    cdef uint32_t i, j
    if not limits:
        return 0
    t.limits = <RateLimit*>calloc(len(limits), sizeof(RateLimit))
    if t.limits == NULL:
        raise MemoryError()
    t.n_limits = len(limits)
    for i, (spec, rules, _, _) in enumerate(limits):
        lim = &t.limits[i]
        (lim.emission_ns, lim.burst_ns, lim.key, lim.by, lim.n_keys, policy_b, field_b) = spec
        if rules:
            lim.rules = <int32_t*>malloc(len(rules) * sizeof(int32_t))
            if lim.rules == NULL:
                raise MemoryError()
            for j, rule in enumerate(rules):
                lim.rules[j] = rule
            lim.n_rules = len(rules)
        _name_set(&lim.policy, policy_b)
        _name_set(&lim.policy_field, field_b)
    return 0


cdef void _limits_free(Table* t) noexcept nogil:
    cdef uint32_t i
    for i in range(t.n_limits):
        _name_free(&t.limits[i].policy)
        _name_free(&t.limits[i].policy_field)
        free(t.limits[i].rules)
    free(t.limits)
    t.limits = NULL
    t.n_limits = 0


cdef list _limit_steps(list limits, object sni, object service_index):
    """The rate-limit steps of an inbound route (by its `sni`) or a service's chain:
    each limit that names it, on request and on an opaque pair's accept."""
    steps = []
    for i, (_, _, snis, services) in enumerate(limits):
        if (sni is not None and sni in snis) or (service_index is not None
                                                 and service_index in services):
            steps.append((FILTER_RATE_LIMIT, PHASE_REQUEST, i))
            steps.append((FILTER_RATE_LIMIT, PHASE_ACCEPT, i))
    return steps


cdef int _chain_build(FilterChain* chain, list steps) except -1:
    """Compile (kind, phase, arg) steps, in order, into `chain`."""
    cdef Filter buf[2 * 64 + 2]
    cdef uint32_t i
    if len(steps) > sizeof(buf) // sizeof(Filter):
        raise ValueError("too many filter steps on one chain (%d)" % len(steps))
    for i, (kind, phase, arg) in enumerate(steps):
        buf[i].kind, buf[i].phase, buf[i].arg = kind, phase, arg
    if _chain_set(chain, buf, len(steps)) != 0:
        raise MemoryError()
    return 0


cdef int _rate_limit_add(RouteTable table, str policy, long long tokens, double interval_s,
                         long long burst, str by, long long max_keys, object inbound,
                         object services, object rules, str key) except -1:
    """RouteTable.add_rate_limit(): checked, kept for _limits_build and the chains."""
    snis = tuple(_host_name(sni, "sni") for sni in inbound)
    for sni_b in snis:
        if not any(sni_b == entry[0] for entry in table._routes):
            raise ValueError("rate limit %r: no inbound route for sni %r "
                             "(add_inbound_route() first)" % (policy, sni_b.decode()))
    indexes = tuple(int(i) for i in services)
    for i in indexes:
        if not 0 <= i < len(table._services):
            raise ValueError("rate limit %r: no service %d (add_service() first)" % (policy, i))
    rules = tuple(int(i) for i in rules)
    for i in rules:
        if not 0 <= i < len(table._route_rules):
            raise ValueError("rate limit %r: no route rule %d" % (policy, i))
    if rules and snis:
        raise ValueError("rate limit %r: a route rule's limit is outbound: no inbound route"
                         % policy)
    if not snis and not indexes:
        raise ValueError("rate limit %r: name an inbound route or a service" % policy)
    table._rate_limits.append((_rate_limit_spec(policy, tokens, interval_s, burst, by,
                                                max_keys, key), rules, snis, indexes))
    return len(table._rate_limits) - 1
