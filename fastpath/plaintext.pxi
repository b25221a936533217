# plaintext.pxi: PeerAuthentication on the inbound port (Istio's mtls.mode, per route):
# which routes take plaintext as well as mutual TLS, plaintext HTTP routed to one by its
# Host, plaintext refused, and the table's part of it (the mode per route, the Host names
# a plaintext request may give).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# Why by Host: the node's local services share one inbound port, and mutual TLS names a
# route by its SNI; plaintext has none, so an HTTP request's Host names it ("svc",
# "svc.ns", "svc.ns.svc"; its port picks among the service's ports, as on the HTTP
# outbound listener). Opaque plaintext names nothing and is refused: Istio's sidecar
# tells it by the app port it was sent to, a listener per port, where this node has one.
# A plaintext pair keeps the route its first request named, as a TLS pair keeps its
# SNI's, until a table that makes that route STRICT reaches it (carry.pxi): then it is
# closed, not drained as Envoy drains a removed filter chain, since the mode is a
# security decision and the next request would pass unauthenticated; in the middle of
# a request's body or of an upgraded tunnel, at once, as no request boundary may come.


cdef inline bint _takes_pair(const InboundRoute* route, const Conn* c) noexcept nogil:
    """Does `route` take pair c: any pair over mutual TLS, a plaintext one unless STRICT."""
    return not (c.flags & CONN_PLAINTEXT) or route.mtls != MTLS_STRICT


cdef inline bint _serves_plaintext(const InboundRoute* route) noexcept nogil:
    """Does `route` serve a plaintext request whose Host names it: not STRICT, and not
    declared TCP (plaintext is taken as framed HTTP only)."""
    return route.mtls != MTLS_STRICT and route.protocol != PROTO_TCP


cdef int _plaintext_refused(Core* core, Conn* c) noexcept nogil:
    """Plaintext the node does not take: counted, and reset, as Istio's sidecar resets a
    connection no filter chain takes (a plaintext client of a STRICT workload sees
    "connection reset by peer"). The same for a Host naming a STRICT or TCP route as
    for one naming none, so that a plaintext client cannot list the node's services (as
    with an unknown SNI, detect.pxi _on_servername)."""
    core.counters.plaintext_refused += 1
    return STATUS_RESET


cdef bint _plaintext_revoked(Core* core, Conn* c) noexcept nogil:
    """Is c a plaintext pair whose route the current table (newer than the pair's)
    makes STRICT?"""
    cdef int64_t j
    if not c.flags & CONN_PLAINTEXT:
        return False
    j = _route_in(core.table, c)
    return j >= 0 and not _takes_pair(&core.table.routes[j], c)


cdef int _plaintext_revoke(Core* core, Conn* c) noexcept nogil:
    """Plaintext pair c, its route made STRICT by a push (_plaintext_revoked): closed,
    counted with the refused. Between requests (carry.pxi _inbound_move) with a clean
    end, its next request unserved; in the middle of a message (a request's body, an
    upgraded tunnel: no boundary may ever come) at once, with a reset, as the rest of
    the message will not reach the app (carry.pxi _reach_open_pairs)."""
    core.counters.plaintext_refused += 1
    if c.req_phase == REQ_HEAD:
        return _end_gracefully(core, c)
    return STATUS_RESET


cdef int _plaintext_route(Core* core, Conn* c, ReqHead* req) noexcept nogil:
    """Inbound plaintext, its first request head parsed at d2u.buf: the route its Host
    names on the current table (its port picks among the service's, as an mTLS caller's
    would: a port STRICT under portLevelMtls, or declared TCP, is refused, not served by
    another port's app), when that route serves plaintext, then on to the app as a
    TLS pair goes (_inbound_open), framed; no peer ID, so no principal and no
    x-forwarded-client-cert but the removal of the caller's (filters.pxi)."""
    cdef char host[256]
    cdef int port = -1
    cdef size_t hn = 0
    cdef HostEntry* e = NULL
    cdef InboundRoute* route
    if c.table != core.table:
        _retable(core, c, core.table)   # routed on the table current now (carry.pxi)
    if req.authority.len > 0:
        hn = authority_host(c.d2u.buf + c.d2u.head + req.authority.off, req.authority.len,
                            host, sizeof(host), &port)
    if hn > 0:
        e = _host_lookup(c.table.plain_hosts, c.table.n_plain_hosts, host, hn, port)
    if e == NULL or not _serves_plaintext(&c.table.routes[e.service]):
        return _plaintext_refused(core, c)
    core.counters.plaintext_accepted += 1
    c.route = e.service
    c.flags |= CONN_ROUTED
    c.stat = -1
    route = &c.table.routes[c.route]
    c.local_principal = _interned(core, &route.principal, &route.identity)
    # The app's connect has connect_timeout from here (the head had its own).
    _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    return _inbound_open(core, c, True)


# --- the table's part (RouteTable.set_inbound_mtls, _build) ----------------------------------

MTLS_MODES = {"STRICT": MTLS_STRICT, "PERMISSIVE": MTLS_PERMISSIVE, "DISABLE": MTLS_DISABLE}
"""PeerAuthentication's mtls.mode values RouteTable.set_inbound_mtls() takes (Istio's
spelling; UNSET is resolved by the control side, inherited from the wider scope)."""


cdef int _mtls_add(RouteTable table, str sni, str mode, object hosts, int port) except -1:
    """set_inbound_mtls()'s checks: a route for `sni` added already, one of MTLS_MODES,
    Host names as add_host() takes them, a service port."""
    sni_b = _host_name(sni, "sni")
    if not any(sni_b == entry[0] for entry in table._routes):
        raise ValueError("no inbound route for sni %r (add_inbound_route() first)" % sni)
    if mode not in MTLS_MODES:
        raise ValueError("sni %r: mode must be one of %s, not %r"
                         % (sni, ", ".join(MTLS_MODES), mode))
    if isinstance(hosts, str):
        raise TypeError("hosts must be a list of names, not one str")
    names = [_request_host(host) for host in hosts]
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1..65535, not %d" % port)
    table._mtls[sni_b] = (MTLS_MODES[mode], names, port)
    return 0


cdef int _plaintext_build(Table* t, list routes, dict mtls) except -1:
    """Each inbound route's mode (STRICT unless set), whether the table takes plaintext
    at all, and the Host names of its routes, sorted for _host_lookup (STRICT and TCP
    ones too: a Host whose port names one is refused, not sent to another port's app).
    A name's TCP ports come after its others: plaintext is HTTP only, so a Host with no
    port (or one the service lacks) never means a TCP one when the service has
    another."""
    entries = []
    opaque = []
    for i, route in enumerate(routes):
        mode, names, port = mtls.get(route[0], (MTLS_STRICT, (), 0))
        t.routes[i].mtls = mode
        t.plaintext = t.plaintext or mode != MTLS_STRICT
        (opaque if t.routes[i].protocol == PROTO_TCP else entries).extend(
            (name, port, i) for name in names)
    _hosts_fill(&t.plain_hosts, &t.n_plain_hosts, entries + opaque)   # (a stable sort)
    return 0
