# table.pxi: Route tables: the Python RouteTable description, its compile to a C Table,
# and the swap to the next table (what it carries over: carry.pxi).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
# A feature's setters (routes, mirrors, faults, retry budgets, hashing, outlier detection,
# connectionPool, callers, limits) keep only their signature and docstring here: Cython
# allows no include inside a class body, so their checks live in the feature's own file as
# a cdef helper taking the RouteTable (_route_rule_add, _outlier_add, _pool_add...).

cdef inline bint _name_eq(const Name* a, const char* b, size_t n) noexcept nogil:
    # Host names compare without regard to ASCII case (RFC 6066 §3, RFC 4343).
    cdef size_t i
    cdef unsigned char x, y
    if a.length != n:
        return False
    for i in range(n):
        x = <unsigned char>a.data[i]
        y = <unsigned char>b[i]
        if x >= c'A' and x <= c'Z':
            x += 32
        if y >= c'A' and y <= c'Z':
            y += 32
        if x != y:
            return False
    return True


cdef void _name_free(Name* n) noexcept nogil:
    free(n.data)
    n.data = NULL
    n.length = 0


cdef void _table_free(Table* t) noexcept nogil:
    """Free a table and everything it owns; takes partially built ones too (calloc'd)."""
    cdef uint32_t i, j
    cdef Service* svc
    if t == NULL:
        return
    if t.listeners != NULL:
        for i in range(t.n_listeners):
            if t.listeners[i].client_ctx != NULL:
                openssl.SSL_CTX_free(t.listeners[i].client_ctx)
            _name_free(&t.listeners[i].identity)
        free(t.listeners)
    if t.sources != NULL:
        for i in range(t.n_sources):
            if t.sources[i].client_ctx != NULL:
                openssl.SSL_CTX_free(t.sources[i].client_ctx)
            _name_free(&t.sources[i].identity)
        free(t.sources)
    if t.services != NULL:
        for i in range(t.n_services):
            svc = &t.services[i]
            _chain_free(&svc.chain)
            _hash_free(svc)
            _outlier_free(svc)
            free(svc.conn_pool)
            _name_free(&svc.name)
            _name_free(&svc.sni)
            if svc.identities != NULL:
                for j in range(svc.n_identities):
                    _name_free(&svc.identities[j])
                free(svc.identities)
            if svc.endpoints != NULL:
                for j in range(svc.n_endpoints):
                    _name_free(&svc.endpoints[j].version)
                    while svc.endpoints[j].n_idle > 0:
                        svc.endpoints[j].n_idle -= 1
                        _idle_close(&svc.endpoints[j].idle[svc.endpoints[j].n_idle])
                    if svc.endpoints[j].session != NULL:
                        openssl.SSL_SESSION_free(svc.endpoints[j].session)
                free(svc.endpoints)
            _pool_unbind(svc)           # (after its idle upstreams left the count)
        free(t.services)
    free(t.budgets)
    _limits_free(t)
    if t.routes != NULL:
        for i in range(t.n_routes):
            _chain_free(&t.routes[i].chain)
            _name_free(&t.routes[i].sni)
            _name_free(&t.routes[i].alias)
            _name_free(&t.routes[i].service)
            _name_free(&t.routes[i].identity)
            _name_free(&t.routes[i].version)
            _authz_free(t.routes[i].authz)
            if t.routes[i].server_ctx != NULL:
                openssl.SSL_CTX_free(t.routes[i].server_ctx)
        free(t.routes)
    _hosts_free(t.hosts, t.n_hosts)
    _hosts_free(t.plain_hosts, t.n_plain_hosts)
    _mirrors_free(t)
    _routes_free(t)
    if t.dispatch_ctx != NULL:
        openssl.SSL_CTX_free(t.dispatch_ctx)
    free(t)


cdef void _hosts_free(HostEntry* hosts, uint32_t n) noexcept nogil:
    cdef uint32_t i
    if hosts != NULL:
        for i in range(n):
            _name_free(&hosts[i].name)
        free(hosts)


cdef inline void _table_release(Core* core, Table* t) noexcept nogil:
    _invariant(t != NULL and t.refs > 0, b"table released more often than taken")
    t.refs -= 1
    if t.refs == 0:
        _table_free(t)
        core.counters.tables_live -= 1


cdef void _listeners_unwatch(Core* core, Table* t) noexcept nogil:
    cdef uint32_t i
    # Errors are expected and harmless: a listener the caller already closed has left
    # the epoll set by itself.
    for i in range(t.n_listeners):
        net.epoll_ctl(core.epfd, net.EPOLL_CTL_DEL, t.listeners[i].fd, NULL)
    if t.inbound_fd >= 0:
        net.epoll_ctl(core.epfd, net.EPOLL_CTL_DEL, t.inbound_fd, NULL)


cdef bint _table_has_ctx(const Table* t, const openssl.SSL_CTX* ctx) noexcept nogil:
    """Does `t` hold a reference to client ctx `ctx` (a listener's or a source's)?"""
    cdef uint32_t i
    for i in range(t.n_listeners):
        if t.listeners[i].client_ctx == ctx:
            return True
    for i in range(t.n_sources):
        if t.sources[i].client_ctx == ctx:
            return True
    return False


cdef void _swap(Core* core, Table* t) noexcept nogil:
    """Make `t` the current table: accept only from its listeners from now on."""
    cdef Table* old = core.table
    cdef bint shorter = False
    if old != NULL:
        if not core.draining:
            # (Draining, they left at _drain_begin, and the caller may have closed
            # them and reused the numbers: a delete by fd could hit a pair's socket.)
            _listeners_unwatch(core, old)
        _carry_endpoints(old, t)
        _budgets_carry(old, t)          # (budget.pxi)
        # What did not move belongs to endpoints that left: no request takes them now.
        core.counters.departed_idle_closed += _close_idle(old)
    core.table = t
    t.refs += 1
    if t.connect_timeout_ns > 0:
        core.connect_timeout_ns = t.connect_timeout_ns
    if t.idle_timeout_ns > 0:
        shorter = t.idle_timeout_ns < core.idle_timeout_ns
        core.idle_timeout_ns = t.idle_timeout_ns
    if t.drain_ns > 0:
        core.drain_ns = t.drain_ns
    _limits_take(core, t)
    if _overload_take(core, t):
        shorter = True                  # slow clients' deadlines may be sooner now
    core.generation = t.generation
    core.counters.tables_installed += 1
    core.counters.tables_live += 1
    if old != NULL:
        _reach_open_pairs(core)         # carry.pxi: open pairs meet the new table
    if shorter:
        _timers_refile(core)            # idle timers filed for the longer timeout
    if not core.draining and core.accept_resume_ns == 0:
        # (Draining, it accepts nothing more; paused, _accept_resume watches them.)
        _listeners_watch(core, t)
    if old != NULL:
        _table_release(core, old)


cdef void _listeners_watch(Core* core, Table* t) noexcept nogil:
    cdef net.epoll_event ev
    cdef uint32_t i
    # Level-triggered: a backlog left after one accept batch is reported again.
    ev.events = net.EPOLLIN
    for i in range(t.n_listeners):
        ev.data.u64 = _tag(_TAG_LISTENER, i, 0)
        if net.epoll_ctl(core.epfd, net.EPOLL_CTL_ADD, t.listeners[i].fd, &ev) != 0:
            core.counters.outbound.accept_failures += 1
    if t.inbound_fd >= 0:
        ev.data.u64 = _tag(_TAG_LISTENER, _INBOUND_LISTENER, 0)
        if net.epoll_ctl(core.epfd, net.EPOLL_CTL_ADD, t.inbound_fd, &ev) != 0:
            core.counters.inbound.accept_failures += 1


cdef bytes _host_name(str name, str what):
    cdef bytes b
    try:
        b = name.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("%s %r: must be ASCII" % (what, name)) from None
    # RFC 6066 §3: a host_name is 1..255 bytes; a NUL would cut it short in C.
    if not 1 <= len(b) <= 255 or b"\0" in b:
        raise ValueError("%s %r: must be 1..255 bytes without NUL" % (what, name))
    return b.lower()


cdef bytes _request_host(str host):
    """A name an HTTP request's Host may give, as the tables keep it: lowercase, no
    port, no trailing dot."""
    host_b = _host_name(host, "host")
    if b":" in host_b and not host_b.startswith(b"["):
        raise ValueError("host %r: give the name without a port" % host)
    return host_b.rstrip(b".") or host_b


cdef int _hosts_fill(HostEntry** out, uint32_t* n, list entries) except -1:
    """A sorted HostEntry array from (name bytes, port, index) entries: a stable sort,
    so that a name's entries keep the order they were added in (_host_lookup)."""
    cdef uint32_t i
    entries = sorted(entries, key=lambda entry: entry[0])
    if not entries:
        return 0
    out[0] = <HostEntry*>calloc(len(entries), sizeof(HostEntry))
    if out[0] == NULL:
        raise MemoryError()
    n[0] = len(entries)
    for i, (host_b, port, index) in enumerate(entries):
        _name_set(&out[0][i].name, host_b)
        out[0][i].port = port
        out[0][i].service = index
    return 0


cdef int _sockaddr(str host, int port, net.sockaddr_storage* out,
                   net.socklen_t* length) except -1:
    """Numeric IPv4/IPv6 address and port into a sockaddr: the engine resolves no names."""
    cdef bytes b
    cdef net.sockaddr_in* sin = <net.sockaddr_in*>out
    cdef net.sockaddr_in6* sin6 = <net.sockaddr_in6*>out
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1..65535, not %d" % port)
    try:
        b = host.encode("ascii")
    except UnicodeEncodeError:
        b = b"\0"
    memset(out, 0, sizeof(net.sockaddr_storage))
    if b"\0" not in b and net.inet_pton(net.AF_INET, b, &sin.sin_addr) == 1:
        sin.sin_family = net.AF_INET
        sin.sin_port = net.htons(<uint16_t>port)
        length[0] = sizeof(net.sockaddr_in)
        return 0
    if b"\0" not in b and net.inet_pton(net.AF_INET6, b, &sin6.sin6_addr) == 1:
        sin6.sin6_family = net.AF_INET6
        sin6.sin6_port = net.htons(<uint16_t>port)
        length[0] = sizeof(net.sockaddr_in6)
        return 0
    raise ValueError("%r is not an IPv4 or IPv6 address (the engine does not resolve names)"
                     % host)


cdef int _name_set(Name* n, bytes value) except -1:
    n.data = <char*>malloc(len(value) + 1)
    if n.data == NULL:
        raise MemoryError()
    memcpy(n.data, <const char*>value, len(value))
    n.data[len(value)] = 0
    n.length = <uint32_t>len(value)
    return 0


cdef int _check_timeouts(double connect_timeout_s, double idle_timeout_s) except -1:
    if not 0 < connect_timeout_s <= 86400:
        raise ValueError("connect_timeout_s must be > 0 and at most a day, not %r"
                         % connect_timeout_s)
    if not 0 < idle_timeout_s <= 86400 * 365:
        raise ValueError("idle_timeout_s must be > 0 and at most a year, not %r"
                         % idle_timeout_s)
    return 0


cdef bytes _spiffe_id(str identity):
    """An identity given to a RouteTable, as bytes (b"" for None). It goes into
    x-forwarded-client-cert values, so it must not carry their separators."""
    b = (identity or "").encode("ascii", "replace")
    if b and (not b.startswith(b"spiffe://") or len(b) > SPIFFE_ID_MAX_BYTES
              or any(ch < 0x21 or ch > 0x7e or ch in b';,"=?' for ch in b)):
        raise ValueError("identity %r is not a SPIFFE ID" % identity)
    return b


cdef bytes _label_value(object value, str what):
    """A request figures' label value (a workload's version) as the engine keeps it:
    UTF-8, b"" for None or ""; one longer than ENGINE_TAG_MAX_BYTES is not kept per
    key (the engine counts its answers in stats_overflow)."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise TypeError("%s must be str, not %s" % (what, type(value).__name__))
    return (<str>value).encode("utf-8", "replace")


cdef Protocol _protocol(str protocol) except *:
    """A service port's declared protocol, as the config names it (any case)."""
    name = protocol.lower()
    if name == "http":
        return PROTO_HTTP
    if name == "tcp":
        return PROTO_TCP
    if name == "auto":
        return PROTO_AUTO
    raise ValueError("protocol must be \"http\", \"tcp\" or \"auto\", not %r" % protocol)


cdef int _up_ref(openssl.SSL_CTX* ctx) except -1:
    if openssl.SSL_CTX_up_ref(ctx) != 1:
        raise_tls_error("cannot reference SSL_CTX")
    return 0


BALANCERS = {"p2c-ewma": BALANCE_P2C_EWMA, "round-robin": BALANCE_ROUND_ROBIN,
             "random": BALANCE_RANDOM, "least-request": BALANCE_LEAST_REQUEST,
             "ring-hash": BALANCE_RING_HASH, "maglev": BALANCE_MAGLEV}
"""The balancers add_service() takes, by name (balancer.pxi)."""


cdef class RouteTable:
    """What one worker's engine routes: a snapshot, compiled to C by Engine.install().

    Built at config time, with the GIL, by the agent. Listener sockets are the
    caller's: bind them (SO_REUSEPORT, so every worker process has its own), make them
    non-blocking, pass their fds, and keep them open while an engine may use them.
    TLSContexts must be fully configured: the engine shares their SSL_CTX.
    """

    def __cinit__(self):
        self._services = []
        self._outbound = []
        self._routes = []
        self._inbound_fd = -1
        self._hosts = []
        self._http_fd = -1
        self._http_ctx = None
        self._http_identity = b""
        self._sources = []
        self._connect_timeout_s = 0
        self._idle_timeout_s = 0
        self._drain_s = 0
        self._ticket_keys = None
        self._ticket_period_s = TLS_TICKET_PERIOD_S
        self._session_life_s = TLS_SESSION_LIFE_S
        self._limits = None
        self._overload = None
        self._route_sets = []
        self._route_rules = []
        self._route_mirrors = []
        self._hashes = {}
        self._route_faults = []
        self._retry_budgets = []
        self._outliers = {}
        self._conn_pools = {}
        self._mtls = {}
        self._rate_limits = []
        self._authz = {}
        self._path_normalization = PATH_NORM_BASE
        self._trace_sample = 100        # Istio's default: 1 % of new traces
        self._trace_spans = False

    def __repr__(self) -> str:
        return "<RouteTable services=%d outbound=%d http=%s hosts=%d inbound=%s routes=%d>" % (
            len(self._services), len(self._outbound),
            self._http_fd if self._http_fd >= 0 else None, len(self._hosts),
            self._inbound_fd if self._inbound_fd >= 0 else None, len(self._routes))

    cdef int _check_fd(self, int fd) except -1:
        cdef int flags
        if fd < 0:
            raise ValueError("fd must be an open listening socket's descriptor, not %d" % fd)
        if (fd == self._inbound_fd or fd == self._http_fd
                or any(fd == entry[0] for entry in self._outbound)):
            raise ValueError("fd %d is already a listener of this table" % fd)
        flags = fcntl(fd, F_GETFL)
        if flags < 0:
            raise OSError(errno, "fd %d: %s" % (fd, os.strerror(errno)))
        if not (flags & O_NONBLOCK):
            # The loop accepts until EAGAIN: on a blocking listener it would wait in
            # accept() and serve nothing else, stop() included.
            raise ValueError("fd %d is a blocking socket; a listener must be non-blocking" % fd)
        # Accepted sockets inherit it from their listener (Linux copies the option):
        # one system call per listener instead of one per connection.
        _nodelay(fd)
        return 0

    def add_service(self, str name not None, str sni not None, identities, endpoints,
                    str balancer="p2c-ewma") -> int:
        """A destination service; returns its index for add_outbound_tcp().

        `sni`: the name sent in the ClientHello (the service as the inbound side routes
        it); `identities`: the SPIFFE IDs (str) the service may run as, at least one;
        `endpoints`: (IP address, port) of each node inbound port serving it (may be
        empty: connections are then refused and counted as no_endpoint), or (IP
        address, port, version): the `version` label of the workload serving there, the
        destination version of the answers it gives (request_stats()). An address
        given twice is one endpoint (with the first one's version): a node's inbound
        port takes the service's connections to one local app whatever number of
        workloads it fronts, and the balancer must not weigh one node's load as two
        endpoints'.
        `balancer`: how each new upstream picks its endpoint (BALANCERS): "p2c-ewma"
        (Linkerd's peak-EWMA power of two choices), "round-robin", "random" or
        "least-request" (power of two choices on outstanding requests, as Envoy's),
        "ring-hash" or "maglev" (consistent hashing by the key set_hash() names; none:
        every request is a random pick).
        """
        if balancer not in BALANCERS:
            raise ValueError("service %r: balancer %r is not one of %s"
                             % (name, balancer, ", ".join(BALANCERS)))
        cdef net.sockaddr_storage addr
        cdef net.socklen_t length
        sni_b = _host_name(sni, "sni")
        ids = []
        for identity in identities:
            if not isinstance(identity, str):
                raise TypeError("identity must be str, not %s" % type(identity).__name__)
            try:
                b = (<str>identity).encode("ascii")
            except UnicodeEncodeError:
                b = b""
            # The full syntax is checked where IDs come from (certificates); here it
            # only has to be something a peer_spiffe_id() result can equal.
            if (not b.startswith(b"spiffe://") or b"\0" in b
                    or len(b) > SPIFFE_ID_MAX_BYTES):
                raise ValueError("identity %r is not a SPIFFE ID" % identity)
            ids.append(b)
        if not ids:
            raise ValueError("service %r: at least one identity is required" % name)
        eps = []
        seen = set()
        for endpoint in endpoints:
            if len(endpoint) not in (2, 3):
                raise ValueError("endpoint %r: (address, port) or (address, port, version)"
                                 % (endpoint,))
            host, port = endpoint[0], endpoint[1]
            version_b = _label_value(endpoint[2] if len(endpoint) == 3 else None, "version")
            _sockaddr(host, port, &addr, &length)
            packed = (<char*>&addr)[:length]
            if packed not in seen:
                seen.add(packed)
                eps.append((str(host), int(port), version_b))
        self._services.append((name, sni_b, ids, eps, BALANCERS[balancer]))
        return len(self._services) - 1

    def set_retry_budget(self, service_indexes, long long percent=20, double interval_s=10.0,
                         long long min_retries=10, double min_retry_interval_s=1.0) -> None:
        """The retry budget of one destination Service (budget.pxi; Gateway API
        XBackendTrafficPolicy retryConstraint), shared by its ports `service_indexes`:
        retries toward them may be up to `percent` of their requests over the last
        `interval_s` (budget), and at least `min_retries` in each `min_retry_interval_s`
        (minRetryRate; 0: no floor). A service no call names has a budget of its own
        with these defaults (Linkerd's and Gateway API's)."""
        _budget_add(self, service_indexes, percent, interval_s, min_retries,
                    min_retry_interval_s)

    def set_hash(self, int service_index, str key not None, str name=None, str path=None,
                 ttl_s=None, int slots=0) -> None:
        """What a "ring-hash" or "maglev" service's requests are hashed by (hashing.pxi):
        `key` "header" (field `name`), "cookie" (cookie `name`; with `ttl_s` not None,
        one is generated for a request without it, set on its answer with Max-Age
        `ttl_s`, 0: a session cookie, and Path `path`), "query" (parameter `name`) or
        "source-ip" (the caller's address; opaque TCP pairs too). `slots`: the ring's
        least points, or the Maglev table's size (a prime); 0: Envoy's default."""
        _hash_add(self, service_index, key, name, path, ttl_s, slots)

    def set_outlier(self, int service_index, int consecutive_5xx=5, int consecutive_gateway=0,
                    double interval_s=10.0, double base_ejection_s=30.0,
                    int max_ejection_percent=10, int min_health_percent=0) -> None:
        """Outlier detection for service `service_index` (outlier.pxi; Istio's
        outlierDetection, its defaults): an endpoint is ejected after `consecutive_5xx`
        answers >= 500 in a row, or `consecutive_gateway` 502/503/504 (0: that detector
        off; a failed setup counts as a 503), for `base_ejection_s` x its ejections in
        a row, ending on a tick of the `interval_s` sweep; at most
        `max_ejection_percent` of the endpoints at once (one always may be); below
        `min_health_percent` not ejected, ejections are ignored. Node-wide when the
        engines share their state (Engine.share_state)."""
        _outlier_add(self, service_index, consecutive_5xx, consecutive_gateway, interval_s,
                     base_ejection_s, max_ejection_percent, min_health_percent)

    def set_connection_pool(self, int service_index, long long max_connections=0,
                            long long max_pending_requests=0xFFFFFFFF,
                            long long max_requests_per_connection=0,
                            double connect_timeout_s=0.0) -> None:
        """connectionPool for service `service_index` (pool.pxi; Istio's
        ConnectionPoolSettings, for this engine): at most `max_connections` upstream
        connections (0: no limit; over it an idle one of the service is closed to make
        room, else an opaque pair is closed and an HTTP request waits, while fewer than
        `max_pending_requests` wait, until one closes or `connect_timeout_s` passes:
        503); at most `max_requests_per_connection` requests per upstream (0: no limit);
        each upstream's setup (TCP and the mTLS handshake) within `connect_timeout_s`
        (0: the table's connect timeout)."""
        _pool_add(self, service_index, max_connections, max_pending_requests,
                  max_requests_per_connection, connect_timeout_s)

    def add_outbound_tcp(self, int fd, int service_index, TLSContext client_ctx,
                         str protocol="tcp") -> None:
        """Relay connections accepted on listener `fd` to service `service_index`, as the
        workload whose credentials `client_ctx` (a client context) holds, or, when the
        table tells callers apart (add_user, add_source), as the caller's own workload.
        `client_ctx` None: callers no source matches are refused.

        `protocol`, the service port's declared protocol (DESIGN §3, the declared
        protocol wins): "tcp" relays opaque; "http" frames every connection as HTTP/1.1
        (counted per request, every request to this service; a head that does not parse
        is answered 4xx, never relayed); "auto" tells them apart by how the first bytes
        begin (a request line: HTTP, framed as for "http"; anything else, or nothing
        within ENGINE_SNIFF_TIMEOUT_MS: opaque)."""
        self._check_fd(fd)
        if not 0 <= service_index < len(self._services):
            raise ValueError("no service %d (add_service() first)" % service_index)
        if client_ctx is not None and client_ctx.server:
            raise ValueError("outbound needs a client TLSContext")
        self._outbound.append((fd, service_index, client_ctx, b"", _protocol(protocol)))

    def set_outbound_http(self, int fd, TLSContext client_ctx, str identity=None) -> None:
        """The HTTP outbound listener (port-base+1): each connection accepted on `fd` is
        routed by the Host (or absolute-form target) of its first request, through the
        names add_host() gave, as the workload whose credentials `client_ctx` holds
        (SPIFFE ID `identity`, for request figures), or, when the table tells callers
        apart (add_user, add_source), as the caller's own workload. `client_ctx` None:
        callers no source matches are refused (403)."""
        if fd != self._http_fd:
            self._check_fd(fd)
        if client_ctx is not None and client_ctx.server:
            raise ValueError("outbound needs a client TLSContext")
        self._http_fd = fd
        self._http_ctx = client_ctx
        self._http_identity = _spiffe_id(identity)

    def set_timeouts(self, double connect_timeout_s, double idle_timeout_s,
                     double drain_s=0.0) -> None:
        """The engine's connect timeout (connect + TLS handshake, and an HTTP client's
        whole request head) and idle timeout from this table on (Engine() gave the
        first ones). Idle pairs already open are judged by the new idle timeout; setup
        deadlines already running keep theirs. `drain_s` (0: keep the engine's, at
        first ENGINE_DRAIN_PERIOD_MS): how long an opaque TCP pair whose destination
        left the table goes on before it is closed (Mesh drainDuration)."""
        _check_timeouts(connect_timeout_s, idle_timeout_s)
        if not 0 <= drain_s <= 3600:
            raise ValueError("drain_s must be 0..3600, not %r" % drain_s)
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._drain_s = drain_s

    def set_limits(self, int max_handshakes, int max_connections_per_source,
                   int max_handshakes_per_source, double inbound_share) -> None:
        """Limits before authentication from this table on (limits.pxi; until a table
        sets them, the engine's ENGINE_* defaults), per engine: inbound TLS handshakes
        under way at once, inbound connections and handshakes under way from one
        source address at once, and the inbound side's share of the connection slots
        (strictly between 0 and 1; outbound has the rest). An inbound connection over
        one is closed at accept, before any TLS, and counted by the limit it met.
        Connections already open when a limit is lowered stay open."""
        _limits_set(self, max_handshakes, max_connections_per_source,
                    max_handshakes_per_source, inbound_share)

    def set_overload(self, long max_requests_in_flight=0, long max_requests_per_source=0,
                     double slow_grace_s=ENGINE_SLOW_GRACE_MS / 1000.0,
                     long slow_min_rate=ENGINE_SLOW_MIN_RATE) -> None:
        """Overload defence from this table on (overload.pxi; until a table sets it, no
        caps and the ENGINE_SLOW_* defaults). `max_requests_in_flight`: HTTP requests
        in flight at once in every engine sharing the region (Engine.share_overload;
        else this engine's); `max_requests_per_source`: inbound, at once from one
        calling workload's address (Conn.source_ip: its node carries it), per engine. A request over either is answered 503 at once (flagged
        "OM") and its connection closed; 0: no cap. A request head or body must come
        at `slow_min_rate` bytes a second once `slow_grace_s` has passed, else it is
        cut (a head answered 408); 0: no least rate."""
        _overload_set(self, max_requests_in_flight, max_requests_per_source, slow_grace_s,
                      slow_min_rate)

    def add_source(self, str address not None, TLSContext client_ctx not None,
                   str identity=None) -> None:
        """Outbound connections from `address` (an IP address: a local workload's own)
        present `client_ctx`'s identity, SPIFFE ID `identity`; a connection from an
        address no source names is refused (the listener's identity is then nobody's).
        The first added for an address wins. Any local process can bind any loopback
        address: use add_user() where workloads run as their own OS accounts."""
        _source_add(self, address, client_ctx, identity)

    def add_user(self, long long uid, TLSContext client_ctx not None, str identity=None,
                 str address=None) -> None:
        """Outbound connections whose calling socket is owned by OS user `uid` (the
        kernel says, once per connection: sock_diag) present `client_ctx`'s identity,
        SPIFFE ID `identity`; with `address`, only those from that address (for
        workloads sharing an account). A caller no entry matches is refused. The first
        added that matches wins."""
        _user_add(self, uid, client_ctx, identity, address)

    def add_host(self, str host not None, int service_index, int port) -> None:
        """HTTP requests for `host` (exact name, any case, no port: "svc", "svc.ns",
        "svc.ns.svc") go to service `service_index`, the service port `port`. A name
        given for several ports: the request's port picks, else the first one added.
        The same (host, port) added twice: the first wins."""
        host_b = _request_host(host)
        if not 0 <= service_index < len(self._services):
            raise ValueError("no service %d (add_service() first)" % service_index)
        if not 1 <= port <= 65535:
            raise ValueError("port must be 1..65535, not %d" % port)
        self._hosts.append((host_b, port, service_index))

    def add_route_set(self, int service_index, str consumer_namespace=None) -> int:
        """HTTPRoutes govern requests to service port `service_index` (routes.pxi): the
        producer routes (`consumer_namespace` None) for every caller, or the consumer
        routes of callers in `consumer_namespace`, in place of the producer ones. The
        set's matches come from add_route_match(), in precedence order; a request none
        of them holds for is answered 404. Returns the set's index."""
        return _route_set_add(self, service_index, consumer_namespace)

    def add_route_rule(self, str name not None, backends, request_headers=None,
                       response_headers=None, double timeout_s=0.0, redirect=None,
                       rewrite=None, double backend_timeout_s=0.0, retry=None) -> int:
        """One rule of a route: `backends`, (service index or -1, weight) pairs, among
        which each request it takes is sent by weight (-1: an invalid backendRef: its
        share is answered 500; no backend or all weights 0: every request 500), or
        (service index, weight, request_headers, response_headers): that backendRef's
        own header modifiers, applied after the rule's when it is chosen;
        `request_headers` / `response_headers`: Gateway API header modifiers as
        {"set": [(name, value)], "add": [...], "remove": [name]}; `timeout_s`: from a
        request's framing until its answer is whole, over all its tries, else 504 (0:
        none; Gateway API's timeouts.request); `backend_timeout_s` likewise for each try
        (backendRequest); `retry`: Gateway API's `retry` as a dict (retry.pxi's
        _RETRY_DEFAULTS: attempts, codes, backoff_s; the budget its retries draw on is
        the backend service's, set_retry_budget()), None: no retries. `redirect`: the node answers every request with it ({"status", "scheme",
        "hostname", "port", "path": (type, value), "prefix"}: port 0 or None writes none;
        hostname None keeps the request's); `rewrite`: {"hostname", "path", "prefix"}
        edits each request's Host and path (route_filters_table.pxi). `name`: for
        figures. Returns the rule's index for add_route_match()."""
        return _route_rule_add(self, name, backends, request_headers, response_headers,
                               timeout_s, redirect, rewrite, backend_timeout_s, retry)

    def add_route_mirror(self, int rule_index, int service_index, long long numerator=100,
                         long long denominator=100) -> None:
        """A RequestMirror filter of rule `rule_index`: a copy of numerator/denominator of
        its requests (chosen per request; Gateway API percent p is p/100) goes to service
        `service_index` too, its answer dropped (mirror.pxi). At most ENGINE_MIRRORS_MAX
        (4) per rule."""
        _mirror_add(self, rule_index, service_index, numerator, denominator)

    def add_route_fault(self, int rule_index, double delay_s=0.0, double delay_percent=0.0,
                        int abort_status=0, double abort_percent=0.0,
                        bint unresolved=False) -> None:
        """Fault injection on rule `rule_index` (fault.pxi, Istio's HTTPFaultInjection):
        each request it takes is held `delay_s` first with a chance of `delay_percent`,
        and answered `abort_status` (200..599; 0: none) without a backend with a chance
        of `abort_percent` (0..100 each, drawn independently; both drawn: the delay, then
        the abort). `unresolved`: the rule's filter names nothing the node has: every
        request it takes is answered 500. A later call for one rule replaces this one."""
        _fault_add(self, rule_index, delay_s, delay_percent, abort_status, abort_percent,
                   unresolved)

    def add_rate_limit(self, str policy not None, long long tokens, double interval_s,
                       long long burst, str by="none", long long max_keys=1024,
                       inbound=(), services=(), rules=(), str key=None) -> int:
        """A RateLimitPolicy's token bucket (ratelimit.pxi): `tokens` every `interval_s`
        seconds, at most `burst` at once; one bucket (`by` "none"), or one per caller
        "principal" or "source_ip" for up to `max_keys` callers (more share one
        overflow bucket, counted). It limits the requests and new opaque pairs of the
        inbound routes named by SNI in `inbound` and of the services (indexes) in
        `services`; with `rules` (route rule indexes), outbound requests those rules
        take only (an HTTPRoute's limit: no opaque pair).

        `policy` names it in 429s' RateLimit-Policy and RateLimit fields and in
        rate_limits(); `key` (default: `policy`) keys its buckets in the node's region:
        the same key on every worker, a new one starts full. Its index."""
        return _rate_limit_add(self, policy, tokens, interval_s, burst, by, max_keys,
                               inbound, services, rules, key)

    def add_route_match(self, int set_index, int rule_index, path=None, str method=None,
                        headers=(), query=()) -> None:
        """The next match of set `set_index`, in precedence order: a request it holds
        for takes rule `rule_index`. `path`: (type, value), type "Exact" or
        "PathPrefix" (element-wise), "RegularExpression", or None (any path);
        `method`: an HTTP method or None; `headers` / `query`: (type, name, value) each,
        type "Exact" or "RegularExpression", all must hold (header names without case,
        query names exactly). A RegularExpression is RE2 syntax matched against the
        whole value (fastpath.regex); one it refuses raises ValueError naming the match."""
        _route_match_add(self, set_index, rule_index, path, method, headers, query)

    def set_inbound(self, int fd, bytes ticket_keys=None,
                    long ticket_period_s=TLS_TICKET_PERIOD_S,
                    long session_life_s=TLS_SESSION_LIFE_S) -> None:
        """The node's inbound (mutual TLS) listener.

        `ticket_keys` (80 bytes, TLSContext.set_ticket_keys): what the keys of the
        table's dispatch context, which issues and decrypts every inbound session
        ticket, derive from, a new key every `ticket_period_s` (the previous one still
        opens tickets); None: random of the table's own. The same keys in every
        worker's table, and in the next table, let a peer resume whichever worker it
        reaches, across config pushes and certificate rotations; the caller changes
        them to end resumption (meshnode: with the trust bundle, see
        meshnode.ticketkeys). A session resumes for `session_life_s` from its full
        handshake at most, and not past the client certificate's notAfter."""
        if ticket_keys is not None and len(ticket_keys) != TLS_TICKET_KEYS_BYTES:
            raise ValueError("session ticket keys must be %d bytes, not %d"
                             % (TLS_TICKET_KEYS_BYTES, len(ticket_keys)))
        if ticket_period_s < 1 or not 1 <= session_life_s <= 7 * 86400:
            raise ValueError("ticket_period_s must be >= 1 and session_life_s 1..604800, "
                             "not %d and %d" % (ticket_period_s, session_life_s))
        if fd != self._inbound_fd:
            self._check_fd(fd)
        self._inbound_fd = fd
        self._ticket_keys = ticket_keys
        self._ticket_period_s = ticket_period_s
        self._session_life_s = session_life_s

    def add_inbound_route(self, str sni not None, TLSContext server_ctx not None,
                          str app_host not None, int app_port, str service=None,
                          str identity=None, str protocol="auto", str version=None,
                          str alias=None) -> None:
        """Inbound connections naming `sni` handshake with `server_ctx` (the local
        service's identity and trust) and go to the app at (app_host, app_port).

        `alias`: a second name the route answers to, as callers of another version
        name the same service port: a connection naming it is this route's in every
        respect (set_inbound_mtls, set_inbound_authz and rate limits name the route by
        `sni` only), except that its connection.sni is the alias. One alias at most,
        so the ClientHello's lookup compares at most two names per route.

        `protocol`: the app port's declared protocol, which decides whatever ALPN the
        peer offers: "http" frames every connection (a peer offering the opaque
        protocol is refused and counted: inbound_protocol_mismatch), "tcp" relays opaque
        (a peer offering http/1.1 is refused), "auto" frames a connection whose first
        bytes begin a request line and relays anything else.

        `service`: the name its request figures are kept under (request_stats()), and
        `version` the app's `version` label, their destination version;
        `identity`: the local service's SPIFFE ID, which HTTP requests handed to the
        app carry in x-forwarded-client-cert (By=) next to the caller's (URI=)."""
        cdef net.sockaddr_storage addr
        cdef net.socklen_t length
        sni_b = _host_name(sni, "sni")
        alias_b = _host_name(alias, "alias") if alias is not None else b""
        if not server_ctx.server:
            raise ValueError("inbound routes need a server TLSContext")
        if alias_b == sni_b:
            raise ValueError("alias %r is the route's sni" % alias)
        taken = {name for entry in self._routes for name in (entry[0], entry[8]) if name}
        for name in (sni_b, alias_b):
            if name in taken:
                raise ValueError("%r already names a route" % name.decode())
        identity_b = _spiffe_id(identity)
        _sockaddr(app_host, app_port, &addr, &length)
        self._routes.append((sni_b, server_ctx, app_host, app_port,
                             (service or "").encode(), identity_b, _protocol(protocol),
                             _label_value(version, "version"), alias_b))

    def set_inbound_mtls(self, str sni not None, str mode not None, hosts=(),
                         int port=80) -> None:
        """PeerAuthentication's mtls.mode for the inbound route of `sni` (plaintext.pxi;
        MTLS_MODES): "STRICT" (the default) takes mutual TLS only; "PERMISSIVE" and
        "DISABLE" take plaintext HTTP too, a request whose Host is one of `hosts`
        (names as add_host() takes them) framed and handed to the app with no
        principal, its port picking among the routes of one name by their service
        `port` (else the name's first). Plaintext whose Host picks a STRICT route
        (give its `hosts` too: under portLevelMtls, a STRICT port is not served by
        another port's app), or none, or to a route declared TCP, is reset and counted
        (plaintext_refused). A later call for one route replaces this one."""
        _mtls_add(self, sni, mode, hosts, port)

    def set_inbound_authz(self, str sni not None, program) -> None:
        """The AuthorizationPolicies that apply to inbound route `sni` (authz.pxi,
        Istio's semantics), as control compiles them: `program` is
        {"policies": [...]} (the authorization program's contract), checked whole,
        AUTHZ_MAX_* included (a ValueError names what is wrong; nothing is installed).
        Each HTTP request is judged on its head, its path as set_path_normalization()
        left it; an opaque connection once, before its app is connected. Denied: 403
        `RBAC: access denied`, or the connection closed. None removes the route's
        program. A later call replaces this one."""
        _authz_add(self, sni, program)

    def set_path_normalization(self, str mode not None) -> None:
        """How every HTTP request's path is normalized in its head, both ways, before
        the route match, authorization and the app see it (normalize.pxi; Istio's
        meshConfig.pathNormalization, whose DEFAULT is "BASE", the table's until set):
        "NONE", "BASE" (RFC 3986 dot segments, unreserved characters decoded, a
        backslash a slash), "MERGE_SLASHES" (BASE, then "//" merged) or
        "DECODE_AND_MERGE_SLASHES" (%2F and %5C decoded first). Under any but NONE a
        path with %00 is answered 400."""
        self._path_normalization = _path_mode(mode)

    def set_access_log(self, bint on, double sample_percent=100.0, int min_status=0) -> None:
        """Access records (accesslog.pxi, read with Engine.access_records()): none unless
        `on`; then `sample_percent` of requests and opaque pairs, drawn at random, and
        of those only the requests answered `min_status` or above or with a response
        flag (and pairs with a flag or refused) when min_status is not 0. Off until set."""
        if not 0.0 <= sample_percent <= 100.0:
            raise ValueError("sample_percent must be 0..100, not %r" % sample_percent)
        if not 0 <= min_status <= 599:
            raise ValueError("min_status must be 0..599, not %d" % min_status)
        self._access = (<uint32_t>(sample_percent * 100 + 0.5), min_status) if on else None

    def set_tracing(self, double sampling, bint spans=False) -> None:
        """The percentage of new traces sampled (Mesh spec.tracing.sampling, Istio's
        meshConfig defaultConfig.tracing.sampling: 0..100 in steps of 0.01, 1 until
        set). Every HTTP request is traced both ways whatever it is (tracing.pxi); a
        trace a caller began keeps its own decision. With `spans` (a collector is
        named), every sampled request gets an access record for its span, flagged
        span_only where the access log's settings left it out (accesslog.pxi)."""
        self._trace_sample = _trace_sample_of(sampling)
        self._trace_spans = spans

    cdef Table* _build(self) except NULL:
        cdef Table* t = <Table*>calloc(1, sizeof(Table))
        cdef Source* src
        cdef net.socklen_t length
        cdef Service* svc
        cdef InboundRoute* route
        cdef OutboundListener* l
        cdef TLSContext ctx
        cdef TLSContext dispatch
        cdef uint32_t i, j
        cdef Filter step
        if t == NULL:
            raise MemoryError()
        t.inbound_fd = -1
        t.connect_timeout_ns = <int64_t>(self._connect_timeout_s * 1e9)
        t.idle_timeout_ns = <int64_t>(self._idle_timeout_s * 1e9)
        t.drain_ns = <int64_t>(self._drain_s * 1e9)
        t.path_normalization = self._path_normalization
        if self._access is not None:
            t.access_on = True
            t.access_sample, t.access_min_status = self._access
        t.trace_sample = self._trace_sample
        t.trace_spans = self._trace_spans
        if self._limits is not None:
            (t.max_handshakes, t.max_source_conns, t.max_source_handshakes,
             t.inbound_permille) = self._limits
        _overload_compile(t, self._overload)
        try:
            if self._services:
                t.services = <Service*>calloc(len(self._services), sizeof(Service))
                if t.services == NULL:
                    raise MemoryError()
                t.n_services = len(self._services)
            for i, (name, sni_b, ids, eps, balancer) in enumerate(self._services):
                svc = &t.services[i]
                svc.balancer = balancer
                # Its chain: the upstream's identity checked on connection.
                # (And the rate limits that name it: ratelimit.pxi.)
                _chain_build(&svc.chain, [(FILTER_PEER_ID, PHASE_CONNECTION, 0)]
                             + _limit_steps(self._rate_limits, None, i))
                _name_set(&svc.name, (<str>name).encode())
                _name_set(&svc.sni, sni_b)
                svc.identities = <Name*>calloc(len(ids), sizeof(Name))
                if svc.identities == NULL:
                    raise MemoryError()
                svc.n_identities = len(ids)
                for j, identity in enumerate(ids):
                    _name_set(&svc.identities[j], identity)
                if eps:
                    svc.endpoints = <Endpoint*>calloc(len(eps), sizeof(Endpoint))
                    if svc.endpoints == NULL:
                        raise MemoryError()
                    svc.n_endpoints = len(eps)
                for j, (host, port, version_b) in enumerate(eps):
                    _sockaddr(host, port, &svc.endpoints[j].addr, &svc.endpoints[j].addrlen)
                    _name_set(&svc.endpoints[j].version, version_b)

            _budgets_build(t, self._retry_budgets)

            outbound = list(self._outbound)
            if self._http_fd >= 0:
                outbound.append((self._http_fd, -1, self._http_ctx, self._http_identity,
                                 PROTO_HTTP))
            if outbound:
                t.listeners = <OutboundListener*>calloc(len(outbound), sizeof(OutboundListener))
                if t.listeners == NULL:
                    raise MemoryError()
                t.n_listeners = len(outbound)
            for i, (fd, service_index, ctx, identity_b, proto) in enumerate(outbound):
                l = &t.listeners[i]
                l.fd = fd
                l.http = service_index < 0
                l.sniff = proto == PROTO_AUTO
                l.framed = proto == PROTO_HTTP and not l.http
                l.service = service_index if service_index >= 0 else 0
                l.principal = -1
                _name_set(&l.identity, identity_b)
                if ctx is not None:
                    _caller_ext_register(ctx.ctx)
                    _up_ref(ctx.ctx)
                    l.client_ctx = ctx.ctx

            if self._sources:
                t.sources = <Source*>calloc(len(self._sources), sizeof(Source))
                if t.sources == NULL:
                    raise MemoryError()
                t.n_sources = len(self._sources)
            for i, (host, ctx, identity_b, uid) in enumerate(self._sources):
                src = &t.sources[i]
                if host is not None:
                    _sockaddr(host, 1, &src.addr, &length)
                src.uid = uid
                t.callers_by_user = uid >= 0
                src.principal = -1
                _name_set(&src.identity, identity_b)
                _caller_ext_register(ctx.ctx)
                _up_ref(ctx.ctx)
                src.client_ctx = ctx.ctx

            _hosts_fill(&t.hosts, &t.n_hosts, self._hosts)

            _routes_build(t, self._route_sets, self._route_rules)
            _mirrors_build(t, _with_variants(self._route_rules, self._route_mirrors))
            _hash_build(t, self._hashes)
            _outlier_build(t, self._outliers)
            _pool_build(t, self._conn_pools)
            _faults_build(t, self._route_faults)
            _limits_build(t, self._rate_limits)

            if self._routes:
                t.routes = <InboundRoute*>calloc(len(self._routes), sizeof(InboundRoute))
                if t.routes == NULL:
                    raise MemoryError()
                t.n_routes = len(self._routes)
            for i, (sni_b, ctx, host, port, service_b, identity_b, proto,
                    version_b, alias_b) in enumerate(self._routes):
                route = &t.routes[i]
                route.protocol = proto
                # Its chain: authorization first (a request it refuses takes no token
                # and is not edited), at accept (opaque pairs) and on request; the rate
                # limits that name it (ratelimit.pxi); then the caller's identity on
                # every request handed to the app.
                steps = []
                if i in self._authz:
                    route.authz = _authz_program(self._authz[i])
                    steps = [(FILTER_AUTHZ, PHASE_ACCEPT, 0), (FILTER_AUTHZ, PHASE_REQUEST, 0)]
                _chain_build(&route.chain, steps + _limit_steps(self._rate_limits, sni_b, None)
                             + [(FILTER_XFCC, PHASE_REQUEST, 0)])
                _name_set(&route.sni, sni_b)
                _name_set(&route.alias, alias_b)
                _name_set(&route.service, service_b)
                _name_set(&route.identity, identity_b)
                _name_set(&route.version, version_b)
                route.principal = -1
                _up_ref(ctx.ctx)
                route.server_ctx = ctx.ctx
                _sockaddr(host, port, &route.app_addr, &route.app_addrlen)
            _plaintext_build(t, self._routes, self._mtls)

            if self._inbound_fd >= 0:
                t.inbound_fd = self._inbound_fd
                # TLS 1.3 only, like every mesh context (TLSContext.__cinit__); no
                # certificate: the servername callback supplies the route's.
                dispatch = TLSContext(True)
                openssl.ERR_clear_error()
                if openssl.SSL_CTX_set1_groups_list(dispatch.ctx, _MESH_GROUPS) != 1:
                    raise_tls_error("dispatch context: cannot set key exchange groups")
                if openssl.SSL_CTX_set_session_id_context(
                        dispatch.ctx, _MESH_SID_CTX, len(_MESH_SID_CTX)) != 1:
                    raise_tls_error("dispatch context: cannot set session id context")
                # Verification parameters stay the dispatch ctx's after the switch:
                # only the bundle's roots anchor trust (as in for_mesh()).
                openssl.X509_VERIFY_PARAM_clear_flags(openssl.SSL_CTX_get0_param(dispatch.ctx),
                                                      openssl.X509_V_FLAG_PARTIAL_CHAIN)
                # Belt and braces: the callback copies the route's verify mode anyway.
                openssl.SSL_CTX_set_verify(
                    dispatch.ctx,
                    openssl.SSL_VERIFY_PEER | openssl.SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL)
                dispatch.set_session_life(self._session_life_s)
                dispatch.set_ticket_keys(self._ticket_keys or os.urandom(TLS_TICKET_KEYS_BYTES),
                                         self._ticket_period_s)
                openssl.SSL_CTX_set_tlsext_servername_callback(dispatch.ctx, _on_servername)
                openssl.SSL_CTX_set_tlsext_servername_arg(dispatch.ctx, t)
                _caller_ext_register(dispatch.ctx)
                _up_ref(dispatch.ctx)
                t.dispatch_ctx = dispatch.ctx
        except BaseException:
            _table_free(t)
            raise
        return t
