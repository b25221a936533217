# authz.pxi: AuthorizationPolicy at the destination: an inbound route's compiled program
# judged on each request head (HTTP) or once per opaque connection (and again on an open
# one when a newer table is swapped in: carry.pxi _opaque_denied), in Istio's order
# (any matching DENY denies; else, with an ALLOW policy, one must match; AUDIT only
# counted), on the request path as normalize.pxi left it (Istio's pathNormalization),
# and the decisions counted per (policy, action, result).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd;
# the program's checks and compile are authz_table.pxi's.
#
# Nothing here allocates on a request (a policy's figure is made at its first decision,
# once per node) or takes the GIL: the values of a field named twice, joined, go to
# Core.scratch; a request's other fields are read where they lie.

cdef enum:
    _AUTHZ_IP_TEXT_MAX = 64         # the longest address text X-Forwarded-For may give


cdef const char* _AUTHZ_DENIED = b"RBAC: access denied"   # Envoy's RBAC filter's body


# What a decision looks at: the caller, the connection, and on HTTP the request.
cdef struct AuthzInput:
    bint http
    const char* principal           # the peer's ID without "spiffe://" (NULL: none)
    uint32_t principal_len
    const char* ns                  # the namespace in it (NULL: none)
    uint32_t ns_len
    const uint8_t* source_ip        # 16 bytes
    uint8_t remote_ip[16]
    uint8_t dest_ip[16]
    uint32_t dest_port
    const char* sni
    uint32_t sni_len
    const char* head                # HTTP: the head, parsed into req
    const ReqHead* req
    const char* path                # HTTP: as normalized (normalize.pxi), query stripped
    uint32_t path_len
    char* joined                    # HTTP: room for a field named twice, its values joined
    uint32_t joined_cap


# --- path templates ------------------------------------------------------------------------

cdef bint _template_holds(const char* t, uint32_t tn, const char* p, uint32_t pn) noexcept nogil:
    """An Istio path template (checked at install: "{*}" and "{**}" only as whole
    segments, no operator after "{**}"), as Envoy's uri_template matches it: "{*}" is
    one non-empty segment, "{**}" any run of characters, "/" included, maybe empty (so
    "/a/{**}" wants "/a/" at least); the rest is compared as it is."""
    cdef uint32_t i = 0
    cdef uint32_t j = 0
    cdef uint32_t ti, pj, rest
    while i < tn:
        if tn - i >= 4 and memcmp(t + i, b"{**}", 4) == 0:
            rest = tn - i - 4           # a literal tail: the path must end with it
            return pn - j >= rest and memcmp(t + tn - rest, p + pn - rest, rest) == 0
        if tn - i >= 3 and memcmp(t + i, b"{*}", 3) == 0:
            pj = j
            while j < pn and p[j] != c'/':
                j += 1
            if j == pj:
                return False
            i += 3
            continue
        ti = i
        while i < tn and t[i] != c'{':
            i += 1
        if pn - j < i - ti or memcmp(t + ti, p + j, i - ti) != 0:
            return False
        j += i - ti
    return j == pn


# --- leaves and matches --------------------------------------------------------------------

cdef inline bint _bytes_at(const char* v, const char* s, uint32_t n, bint nocase) noexcept nogil:
    return _lower_eq(v, s, n) if nocase else memcmp(v, s, n) == 0


cdef bint _string_leaf(const AuthzProgram* prog, const AuthzLeaf* leaf, const char* v,
                       uint32_t n, bint nocase) noexcept nogil:
    cdef const char* s = prog.text + leaf.off
    if leaf.kind == AZ_ANY:
        return True
    if leaf.kind == AZ_EXACT:
        return n == leaf.length and _bytes_at(v, s, n, nocase)
    if leaf.kind == AZ_PREFIX:
        return n >= leaf.length and _bytes_at(v, s, leaf.length, nocase)
    if leaf.kind == AZ_SUFFIX:
        return n >= leaf.length and _bytes_at(v + n - leaf.length, s, leaf.length, nocase)
    if leaf.kind == AZ_TEMPLATE:
        return _template_holds(s, leaf.length, v, n)
    return False


cdef inline bint _ipv4(const uint8_t* ip) noexcept nogil:
    """Is the 16-byte address an IPv4 one (kept as ::ffff:a.b.c.d)?"""
    return memcmp(ip, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0


cdef bint _ip_leaf(const AuthzLeaf* leaf, const uint8_t* ip) noexcept nogil:
    """Envoy's CIDR range: only an address of the block's version is in it (an IPv4
    caller is in no IPv6 block, "::/0" and "::ffff:0:0/96" neither)."""
    cdef uint32_t whole = leaf.bits >> 3
    cdef uint32_t rest = leaf.bits & 7
    cdef uint8_t mask
    if (leaf.kind != AZ_CIDR or leaf.v6 == _ipv4(ip)
            or memcmp(ip, leaf.addr, whole) != 0):
        return False
    if rest == 0:
        return True
    mask = <uint8_t>(0xFF << (8 - rest))
    return (ip[whole] & mask) == leaf.addr[whole]


cdef bint _match_holds(const AuthzProgram* prog, const AuthzMatch* m,
                       const AuthzInput* x) noexcept nogil:
    """One field's values (one must match, when given) and not-values (none may): a
    value the request or connection does not have matches no leaf."""
    cdef const char* s = NULL
    cdef size_t n = 0
    cdef const uint8_t* ip = NULL
    cdef bint present = True
    cdef bint nocase = False
    cdef bint hit
    cdef uint32_t i, k, first, count
    cdef const AuthzLeaf* leaf
    if m.field == AZ_PRINCIPAL:
        s, n, present = x.principal, x.principal_len, x.principal != NULL
    elif m.field == AZ_NAMESPACE:
        s, n, present = x.ns, x.ns_len, x.ns != NULL
    elif m.field == AZ_SOURCE_IP:
        ip = x.source_ip
    elif m.field == AZ_REMOTE_IP:
        ip = &x.remote_ip[0]
    elif m.field == AZ_DEST_IP:
        ip = &x.dest_ip[0]
    elif m.field == AZ_SNI:
        s, n, present = x.sni, x.sni_len, x.sni_len > 0
    elif m.field == AZ_HOST:
        s, n, nocase = x.head + x.req.authority.off, x.req.authority.len, True
        present = n > 0 or x.req.has_host
    elif m.field == AZ_METHOD:
        s, n = x.head + x.req.method_span.off, x.req.method_span.len
    elif m.field == AZ_PATH:
        s, n = x.path, x.path_len
    elif m.field == AZ_HEADER:
        present = _field_joined(prog.text + m.name_off, m.name_len, x.head, x.req, x.joined,
                                x.joined_cap, &s, &n)
    for k in range(2):
        if k == 0:
            if not m.has_values:
                continue
            first, count = m.first_value, m.n_values
        else:
            first, count = m.first_not, m.n_not
        hit = False
        if present:
            for i in range(first, first + count):
                leaf = &prog.leaves[i]
                if m.field == AZ_DEST_PORT:
                    hit = leaf.kind == AZ_PORT and leaf.port == x.dest_port
                elif ip != NULL:
                    hit = _ip_leaf(leaf, ip)
                else:
                    hit = _string_leaf(prog, leaf, s, <uint32_t>n, nocase)
                if hit:
                    break
        if hit != (k == 0):
            return False
    return True


cdef inline bint _http_field(uint8_t field) noexcept nogil:
    """Istio's HTTP-only fields (pilot/pkg/security/authz/model/generator.go: their
    generators fail forTCP)."""
    return field >= AZ_HOST


cdef bint _matches_hold(const AuthzProgram* prog, uint32_t first, uint32_t n,
                        const AuthzInput* x) noexcept nogil:
    """Every match holds. On an opaque connection a match of an HTTP-only field is left
    out, as Istio builds a DENY or AUDIT rule for TCP (model.go checkError: the field is
    ignored, the rule wider); an ALLOW rule naming one never gets here on TCP."""
    cdef uint32_t i
    for i in range(first, first + n):
        if not x.http and _http_field(prog.matches[i].field):
            continue
        if not _match_holds(prog, &prog.matches[i], x):
            return False
    return True


cdef bint _clauses_hold(const AuthzProgram* prog, bint any, uint32_t first, uint32_t n,
                        const AuthzInput* x) noexcept nogil:
    """`from` or `to`: absent, or one of its sources / operations holds."""
    cdef uint32_t i
    if any:
        return True
    for i in range(first, first + n):
        if _matches_hold(prog, prog.clauses[i].first_match, prog.clauses[i].n_matches, x):
            return True
    return False


cdef bint _policy_matches(const AuthzProgram* prog, const AuthzPolicy* p,
                          const AuthzInput* x) noexcept nogil:
    """One of its rules holds (none: `{}` matches nothing). On TCP an ALLOW rule that
    names an HTTP-only field matches nothing (Istio: the rule is dropped for TCP)."""
    cdef uint32_t i
    cdef const AuthzRule* r
    for i in range(p.first_rule, p.first_rule + p.n_rules):
        r = &prog.rules[i]
        if r.http_only and not x.http and p.action == AUTHZ_ALLOW:
            continue
        if (_clauses_hold(prog, r.any_from, r.first_from, r.n_from, x)
                and _clauses_hold(prog, r.any_to, r.first_to, r.n_to, x)
                and _matches_hold(prog, r.first_when, r.n_when, x)):
            return True
    return False


cdef int32_t _authz_decide(const AuthzProgram* prog, const AuthzInput* x,
                           bint* allowed) noexcept nogil:
    """Istio's order: a DENY that matches denies; else, when an ALLOW policy exists, one
    must match; else allowed. The deciding policy's index, or -1 (no policy decided:
    none applied, or no ALLOW matched)."""
    cdef uint32_t i
    for i in range(prog.n_policies):
        if prog.policies[i].action == AUTHZ_DENY and _policy_matches(prog, &prog.policies[i], x):
            allowed[0] = False
            return <int32_t>i
    allowed[0] = not prog.has_allow
    for i in range(prog.n_policies):
        if prog.policies[i].action == AUTHZ_ALLOW and _policy_matches(prog, &prog.policies[i], x):
            allowed[0] = True
            return <int32_t>i
    return -1


# --- figures -------------------------------------------------------------------------------

cdef AuthzFigure* _authz_figure(Core* core, uint16_t* cache, const char* name, uint32_t n,
                                uint8_t action) noexcept nogil:
    """The node-lifetime figure of (policy `name`, action), looked up at a program
    entry's first decision and kept in `cache` (index + 1); made when new (its name
    copied once). NULL when Core.authz is full (counted as stats_overflow)."""
    cdef uint32_t i
    cdef AuthzFigure* f
    if cache[0] != 0:
        return &core.authz[cache[0] - 1]
    for i in range(core.n_authz):
        f = &core.authz[i]
        if (f.action == action and f.policy.length == n
                and (n == 0 or memcmp(f.policy.data, name, n) == 0)):
            cache[0] = <uint16_t>(i + 1)
            return f
    if core.n_authz >= ENGINE_AUTHZ_FIGURES:
        return NULL
    f = &core.authz[core.n_authz]
    if n > 0:
        f.policy.data = <char*>malloc(n + 1)
        if f.policy.data == NULL:
            return NULL
        memcpy(f.policy.data, name, n)
        f.policy.data[n] = 0
        f.policy.length = n
    f.action = action
    cache[0] = <uint16_t>(core.n_authz + 1)
    mn_publish_u32(&core.n_authz, core.n_authz + 1)
    return f


cdef void _authz_count(Core* core, Conn* c, AuthzProgram* prog, const AuthzInput* x,
                       int32_t decider, bint allowed) noexcept nogil:
    """Count a decision acted on: under the policy that made it (none: ALLOW policies
    that did not match, or no policy that applies), and each AUDIT policy it matches;
    the deciding figure names the policy in the request's (or pair's) access record."""
    cdef AuthzFigure* f
    cdef AuthzFigure* decided
    cdef AuthzPolicy* p
    cdef uint32_t i
    cdef bint audited = False
    if decider >= 0:
        p = &prog.policies[decider]
        f = _authz_figure(core, &p.figure, prog.text + p.name_off, p.name_len, p.action)
    elif prog.has_allow:
        f = _authz_figure(core, &prog.figure_unmatched, NULL, 0, AUTHZ_ALLOW)
    else:
        f = _authz_figure(core, &prog.figure_none, NULL, 0, AUTHZ_NONE)
    decided = f
    if f == NULL:
        core.counters.stats_overflow += 1
    elif allowed:
        f.allowed += 1
    else:
        f.denied += 1
    if allowed:
        core.counters.authz_allowed += 1
    for i in range(prog.n_policies):
        p = &prog.policies[i]
        if p.action == AUTHZ_AUDIT and _policy_matches(prog, p, x):
            audited = True
            core.counters.authz_audited += 1
            f = _authz_figure(core, &p.figure, prog.text + p.name_off, p.name_len, AUTHZ_AUDIT)
            if f == NULL:
                core.counters.stats_overflow += 1
            else:
                f.audited += 1
    _access_judged(core, c, decided, allowed, audited)


# --- the step ------------------------------------------------------------------------------

cdef void _authz_connection(Conn* c, const InboundRoute* route, AuthzInput* x) noexcept nogil:
    """What a connection has: the caller's verified ID (and the namespace in it), its
    address, the route's app address and port, and the SNI its ClientHello named (the
    route's, or the alias it answers to as well; a plaintext caller named none, though
    its Host picked the route)."""
    cdef const char* p = c.peer_id
    cdef uint32_t n = c.peer_id_length
    cdef const char* at
    cdef const char* end
    cdef const uint8_t* port
    cdef const Name* sni
    memset(x, 0, sizeof(AuthzInput))
    if p != NULL and n > 0:
        if n >= 9 and memcmp(p, b"spiffe://", 9) == 0:
            p += 9
            n -= 9
        x.principal, x.principal_len = p, n
        # <trust domain>/ns/<namespace>/sa/<account>
        at = <const char*>memchr(p, c'/', n)
        if at != NULL and (p + n) - at > 4 and memcmp(at, b"/ns/", 4) == 0:
            at += 4
            end = <const char*>memchr(at, c'/', (p + n) - at)
            x.ns = at
            x.ns_len = <uint32_t>((end if end != NULL else p + n) - at)
    x.source_ip = c.source_ip
    memcpy(x.remote_ip, c.source_ip, 16)
    _source_key(&route.app_addr, <uint64_t*>x.dest_ip)
    port = <const uint8_t*>&(<net.sockaddr_in*>&route.app_addr).sin_port
    x.dest_port = (<uint32_t>port[0] << 8) | port[1]   # (sin6_port lies at the same offset)
    if c.down.ssl != NULL:
        sni = _sni_sent(c, route)
        x.sni, x.sni_len = sni.data, sni.length


cdef void _remote_ip(const char* head, const ReqHead* req, AuthzInput* x) noexcept nogil:
    """remote.ip: the last X-Forwarded-For entry (of the last such field), when it is an
    address; else the calling workload's (already in x.remote_ip). Envoy's rule for a
    proxy that trusts no hop in front of it (a sidecar: use_remote_address false,
    xff_num_trusted_hops 0): the rightmost entry is the one the nearest proxy appended,
    the leftmost whatever the client wrote, which anybody may forge."""
    cdef char text[_AUTHZ_IP_TEXT_MAX]
    cdef uint8_t v4[4]
    cdef uint32_t i, n, k, start
    cdef const char* v = NULL
    cdef const Field* f
    for i in range(req.header_count):
        f = &req.headers[i]
        if f.name.len == 15 and _lower_eq(head + f.name.off, b"x-forwarded-for", 15):
            v = head + f.value.off
            n = f.value.len
    if v == NULL:
        return
    start = n
    while start > 0 and v[start - 1] != c',':
        start -= 1
    while start < n and (v[start] == c' ' or v[start] == c'\t'):
        start += 1
    k = n
    while k > start and (v[k - 1] == c' ' or v[k - 1] == c'\t'):
        k -= 1
    if k == start or k - start >= _AUTHZ_IP_TEXT_MAX:
        return
    memcpy(text, v + start, k - start)
    text[k - start] = 0
    if net.inet_pton(net.AF_INET, text, v4) == 1:
        memset(x.remote_ip, 0, 10)
        x.remote_ip[10] = 0xFF
        x.remote_ip[11] = 0xFF
        memcpy(x.remote_ip + 12, v4, 4)
    elif net.inet_pton(net.AF_INET6, text, x.remote_ip) != 1:
        memcpy(x.remote_ip, x.source_ip, 16)


cdef bint _origin_forward(Core* core, Conn* c, FilterCall* call) noexcept nogil:
    """An absolute-form request goes on in origin form, its Host the target's authority
    (Envoy's :authority and :path), so the app reads the host and path that were
    judged, not a Host field the caller wrote beside them. False when the head cannot
    be edited."""
    if _absolute_form(core, &c.d2u, call.base, call.req) == INT64_MAX:
        return False
    parse_request_head(c.d2u.buf + call.base, c.d2u.tail - call.base, call.req,
                       &core.http_limits)
    return True


cdef FilterVerdict _authz_request(Core* core, Conn* c, const InboundRoute* route,
                                  FilterCall* call) noexcept nogil:
    """A request head, its path normalized already (normalize.pxi: the path judged is
    the path the app gets). Denied: answered 403 `RBAC: access denied` once every answer
    owed before it has gone (FILTER_STOP until then, the decision made again: a push
    may come between), in place when it may be (_answer_in_place: the pair goes on, as
    Envoy's RBAC local reply keeps the connection), else with the pair's end."""
    cdef AuthzProgram* prog = route.authz
    cdef AuthzInput x
    cdef const ReqHead* req = call.req
    cdef const char* head = c.d2u.buf + call.base
    cdef const char* q
    cdef int32_t decider
    cdef bint allowed
    _authz_connection(c, route, &x)
    x.http = True
    x.head = head
    x.req = req
    q = <const char*>memchr(head + req.path.off, c'?', req.path.len)
    x.path = head + req.path.off
    x.path_len = <uint32_t>(q - x.path) if q != NULL else req.path.len
    if x.path_len == 0 and req.target_form == TARGET_ABSOLUTE:
        # "http://host" or "http://host?q" asks for "/" (RFC 9110 §4.2.3), Envoy's :path.
        x.path, x.path_len = b"/", 1
    # Scratch holds any field's values joined, whole (Envoy's matchers see them so):
    # they are less than the head, which fits a buffer. A smaller room would make a
    # long field absent, and its DENY pass it by.
    x.joined, x.joined_cap = core.scratch, core.buffer_bytes
    if prog.want & (1u << AZ_REMOTE_IP):
        _remote_ip(head, req, &x)
    decider = _authz_decide(prog, &x, &allowed)
    if not allowed and _answer_owed(c):
        return FILTER_STOP
    _authz_count(core, c, prog, &x, decider, allowed)
    if not allowed:
        core.counters.authz_denied_http += 1
        call.status = 403
        call.kept = _answer_in_place(core, c, call, 403, _AUTHZ_DENIED, NULL, 0)
        if not call.kept:
            _http_reply(core, c, 403, _AUTHZ_DENIED, -1)
        return FILTER_ANSWER
    if req.target_form == TARGET_ABSOLUTE and not _origin_forward(core, c, call):
        # The head cannot be edited (an authority past any host name's length, or no
        # room for a Host field): it does not go on as something other than judged.
        core.counters.http_bad_request += 1
        call.status = 0
        return FILTER_ANSWER
    return FILTER_CONTINUE


cdef FilterVerdict _authz_step(Core* core, Conn* c, FilterCall* call) noexcept nogil:
    """Inbound: the route's AuthorizationPolicies, on each request head (HTTP) or once
    on an opaque pair at accept, before its app is connected (denied: call.status 0,
    the pair is closed and no byte reaches the app)."""
    cdef const InboundRoute* route = &c.table.routes[c.route]
    cdef AuthzInput x
    cdef int32_t decider
    cdef bint allowed
    if call.phase == PHASE_REQUEST:
        return _authz_request(core, c, route, call)
    _authz_connection(c, route, &x)
    decider = _authz_decide(route.authz, &x, &allowed)
    _authz_count(core, c, route.authz, &x, decider, allowed)
    if allowed:
        return FILTER_CONTINUE
    core.counters.authz_denied_tcp += 1
    call.status = 0
    return FILTER_ANSWER


cdef bint _authz_revoked(Core* core, Conn* c, InboundRoute* now) noexcept nogil:
    """Opaque pair c, allowed at accept on an older table, meets `now`: the current
    table's route for its SNI. Does `now`'s program deny it? Judged on what the pair
    kept of its decision (its caller's verified ID and address, its SNI, the app address
    it is connected to; an opaque pair has no request), with no allocation. A denial is
    counted as one at accept is (under its deciding policy, authz_denied_tcp), and in
    authz_revoked_tcp; a pair still allowed is not counted (its decision stands), so a
    push does not add the open pairs to the figures."""
    cdef AuthzInput x
    cdef int32_t decider
    cdef bint allowed
    if now.authz == NULL:
        return False
    _authz_connection(c, &c.table.routes[c.route], &x)
    decider = _authz_decide(now.authz, &x, &allowed)
    if allowed:
        return False
    _authz_count(core, c, now.authz, &x, decider, False)
    core.counters.authz_denied_tcp += 1
    core.counters.authz_revoked_tcp += 1
    return True
