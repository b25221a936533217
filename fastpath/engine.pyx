"""fastpath.engine: the data plane's event loop, moving TCP and HTTP/1.1 between nodes over mutual TLS.

One Engine per proxy worker. A Python thread calls run(), which releases the GIL and
runs a C epoll loop until stop(); the agent thread only install()s route tables and
reads stats() (DESIGN.md §3). This version carries opaque TCP and HTTP/1.1:

- outbound (local app → another service): a plaintext connection accepted on a
  service's local outbound port is relayed over mutual TLS to an endpoint of the
  service (round robin), on that endpoint node's inbound port, with the service in
  SNI and b"meshnode-tcp" in ALPN; the peer must present one of the SPIFFE IDs the
  service runs as (else `identity_mismatch`).
- endpoint failover: while the upstream is being set up nothing of the client's went
  to it, so when the connect, the handshake or the identity check fails (or times
  out), the pair is set up again on the service's next endpoint, up to
  ENGINE_SETUP_TRIES endpoints in all (upstream_failovers). The failed endpoint is
  passed over by the round robin for ENGINE_EJECT_BASE_MS, doubling with each
  failure in a row up to ENGINE_EJECT_MAX_MS (endpoint_ejections), unless every
  endpoint is; failures of setups begun before that do not lengthen it, and a
  successful setup ends the streak. The state lives in the table's Endpoint, is
  carried to the next table for the same service and address, and a pair that began
  on an older table marks the current one's endpoint too. A request routed again
  keeps its service (its head was edited for the first hop) and its start time.
- inbound (another node → local app): the inbound listener terminates mutual TLS,
  picks the local service by SNI (its own server SSL_CTX: the identity the service
  runs as), keeps the peer's SPIFFE ID with the connection, and relays in plaintext
  to the service's local app address.
- HTTP outbound (local app → another service, RouteTable.set_outbound_http: the one
  listener on 127.0.0.1:port-base+1): each request is routed by its Host, or by its
  absolute-form target (HTTP_PROXY clients), through the table's host names
  (add_host: exact, case-insensitive, port stripped; the Host's port picks among a
  service's ports, else its first); a sorted array and a binary search, in C. The
  connection to the chosen endpoint is opened as for TCP, with b"http/1.1" in ALPN;
  the inbound side relays it to the app as an opaque pipe (one app connection per
  inbound TLS connection), which is correct for HTTP/1.1 because this side frames
  every message.
- HTTP framing (fastpath.http1, in place, no copies): the client's bytes are parsed
  request by request (head, then Content-Length or chunked body) and only framed bytes
  go upstream; the upstream's bytes are parsed response by response (the request's
  method for HEAD/CONNECT; 1xx interim heads such as 100 Continue are passed on and
  the request keeps waiting; 204/304 and HEAD answers have no body) and only framed
  bytes go to the client. Keep-alive and pipelining (up to ENGINE_HTTP_PIPELINE_MAX
  requests unanswered; more wait in the client's buffer) follow from that. An absolute-
  form target is rewritten to origin-form in the buffer. A request with Upgrade (or a
  CONNECT) turns both directions into a byte pipe (WebSocket after 101).
- One upstream per client connection at a time: requests for the same service share
  it (so a keep-alive client costs one mTLS handshake). A request for another service
  "switches": the engine stops framing at that request, waits until every earlier
  request is answered, puts the upstream in the pool (or closes it), and goes back to
  HTTP_HEAD on the same client connection, routing the buffered request afresh.
- Upstream pool: an upstream between messages (nothing owed either way, no
  Connection: close on either side, no tunnel) is kept by its endpoint (LIFO, at most
  ENGINE_POOL_PER_ENDPOINT, in the table: a new table takes over the idle connections
  and the resumable session of each endpoint it keeps, _carry_endpoints, and the old
  one closes the rest when it is freed) when its client
  connection ends or switches away, and taken by the next request routed to that
  endpoint. Idle upstreams are out of the epoll set; taking one checks it
  (SSL_read must want to read: a closed one, or one idle for more than half of
  idle_timeout_s, is closed and counted stale). The keep-alive race (the other node
  closes the connection just as we reuse it) is covered by one retry: while no byte
  of answer came on a pooled upstream, its requests stay whole in the client buffer
  (from offset 0, at most one buffer) and, if all are idempotent (RFC 9110 §9.2.2),
  are routed again when the upstream ends or fails (http_upstream_retried);
  otherwise the client gets the 502.
- HTTP errors the engine answers itself (Connection: close, then the connection
  closes): 400/414/431/501/505 for a first head that does not parse or exceeds the
  limits (a head larger than one pooled buffer is a 431); 404 with `no route to host
  "X"` in the body; 503 for no endpoint, or connect failure or timeout, handshake
  failure, identity mismatch on every endpoint tried; 502 when the upstream ends (or
  sends an unparsable head) before any byte of the awaited response went to the client; 408 when no whole head
  arrives within connect_timeout_s. A bad request after earlier ones, or an upstream
  ending mid-body, resets the client connection instead (answers cannot be put in
  order any more; a truncated body must not pass as whole).
- HTTP counters: requests routed, the engine's own answers by cause, responses by
  class (2xx…), and a latency histogram (request head framed → response framed to its
  end; log-linear microsecond buckets, latency_bounds_us()).

Choices, and why:

- Ownership. RouteTable is a Python description; every Engine.install() compiles a
  fresh C Table from it (GIL held) and hands it to the loop through a mutex-guarded
  slot and an eventfd; the loop swaps tables at the top of an iteration. A C refcount,
  touched by the engine thread only, counts the "current table" reference plus one
  per connection that started on the table, so in-flight connections finish on the
  config and certificates they started with and the old table (its SSL_CTXs, cached
  sessions) is freed with its last connection. Certificates rotate the same way: the
  agent builds a table with new TLSContexts and installs it. A table installed over
  one the loop has not picked up yet replaces it, unused.
- No Python on the loop path: connection state is C structs in one preallocated
  array (max_connections) with a free list; epoll tags carry (slot, generation,
  side), so an event for a slot closed earlier in the same batch is ignored.
- Buffers: a pool of 2 × max_connections blocks of buffer_bytes, allocated once,
  handed out LIFO. A direction of a pair holds at most one block, and only while it
  holds unsent bytes: memory per pair is bounded by 2 blocks (plus OpenSSL's record
  buffers, released when idle with SSL_MODE_RELEASE_BUFFERS, and kernel socket
  buffers). A full block stops reading that side: that is the backpressure.
- Edge-triggered epoll (IN|OUT|RDHUP|ET), each socket registered once. Any event on
  either socket of a pair pumps both directions until neither moves; every read and
  write is retried until EAGAIN, WANT_READ/WANT_WRITE or a full/empty buffer, so no
  edge is lost (including plaintext OpenSSL already buffered). A pair that moves more
  than ENGINE_PUMP_BUDGET_BYTES in one turn yields and goes on a ready list served
  next iteration, so one fast stream cannot starve the others. Listeners are
  level-triggered and accept at most ENGINE_ACCEPT_BATCH per wakeup.
- Half-close: the end of one direction (FIN from a plaintext peer, close_notify from
  a TLS peer) is passed on after that direction's buffer is flushed: close_notify
  (SSL_shutdown) toward a TLS peer, shutdown(SHUT_WR) toward a plaintext one. The
  other direction keeps flowing (OpenSSL reads after sending close_notify, and writes
  after receiving one). When both ends have been passed on the pair is closed. A
  TLS stream that ends without close_notify is a truncation: the pair is reset.
- Errors close and count, never crash. Setup failures (no endpoint, connect refused
  or timed out, handshake failure, identity mismatch, unknown SNI) close the accepted
  connection plainly; failures mid-stream (reset, TLS error) close both sides with RST
  (SO_LINGER 0) so a truncated stream cannot pass for a complete one.
- Timeouts are found by a scan of the connection array every ENGINE_SCAN_INTERVAL_MS
  (so they fire up to that late): setup (TCP connect + TLS handshake, whichever is
  pending: counted as connect or handshake timeouts) must end within
  connect_timeout_s of the accept; a pair in which no byte moved for idle_timeout_s is
  closed. A timer wheel will replace the scan when per-request timers arrive with HTTP.
- SNI dispatch: inbound SSLs start from a per-table "dispatch" SSL_CTX that holds no
  certificate; its servername callback switches the SSL to the route's SSL_CTX
  (SSL_set_SSL_CTX) and copies its verification settings, which SSL_set_SSL_CTX does
  not (as nginx does). No route for the name (or no SNI) fails the handshake with
  unrecognized_name. The dispatch ctx issues and decrypts the session tickets: with
  random keys of its own, sessions die with the table and a ticket from another worker
  process does not resume; given keys (RouteTable.set_inbound), every table and every
  worker holding the same keys resumes them.
- Session resumption (client side): one SSL_SESSION per endpoint, taken from the
  first resumable session a fully handshaken connection sees (TLS 1.3 tickets arrive
  after the handshake, with reads), offered by later connections made with the same
  client SSL_CTX, dropped if a handshake that offered it fails.
- Identity: the outbound side admits the upstream only if its verified SPIFFE ID is
  one the service runs as, before a byte of the client's is forwarded; the inbound
  side keeps the client's verified SPIFFE ID with the pair (one malloc per connection,
  not per read) for the policy and access records of the next versions.
- Counters are plain uint64 fields written by the engine thread; stats() copies them
  without a lock (aligned 64-bit loads do not tear on x86-64 and aarch64).
- Debug builds (MESHNODE_DEBUG=1) check the pool, refcount and slot invariants and
  abort on a broken one; in release builds the checks compile to nothing.
- SIGPIPE: OpenSSL writes to sockets with write(); Python ignores SIGPIPE, so a peer
  that is gone shows as EPIPE. Plaintext sends use MSG_NOSIGNAL regardless.
- Listener fds belong to the caller, who must keep them open while a table that names
  them may be in use; close one only after Engine.generation shows that a table
  without it was swapped in (install() returns that table's generation).
"""

from libc.errno cimport (EAGAIN, ECONNABORTED, EINPROGRESS, EINTR, EMFILE, ENFILE,
                         errno)
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport fprintf, snprintf, stderr
from libc.stdlib cimport abort, calloc, free, malloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset, strlen
from posix.fcntl cimport F_GETFL, O_CLOEXEC, O_NONBLOCK, O_RDONLY, fcntl
from posix.fcntl cimport open as c_open
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, write

from fastpath.includes cimport net, openssl
from fastpath.http1 cimport (BODY_CHUNKED, BODY_LENGTH, BODY_NONE, BODY_TUNNEL,
                             BODY_UNTIL_CLOSE, CHUNK_DONE, METHOD_CONNECT, METHOD_DELETE,
                             METHOD_GET, METHOD_HEAD, METHOD_OPTIONS, METHOD_PUT,
                             METHOD_TRACE, Method, ReqHead,
                             RespHead, TARGET_ABSOLUTE, authority_host, chunk_init,
                             chunked_advance, limits_init, parse_request_head,
                             parse_response_head, request_error_status)
from fastpath.tls cimport TLSContext, peer_spiffe_id, raise_tls_error
from fastpath.headedit cimport (CLOSE_LINE_BYTES, add_field, drop_fields, make_close,
                                strip_hop_fields)

import os

from fastpath.errors import FastpathError

include "consts.pxi"

# Release/acquire for the counts other threads read while the engine thread appends
# (Core.n_stats, Core.n_principals): the record is whole before its index is visible.
cdef extern from *:
    """
    static inline void mn_publish_u32(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint32_t mn_acquire_u32(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    """
    void mn_publish_u32(uint32_t* p, uint32_t v) nogil
    uint32_t mn_acquire_u32(const uint32_t* p) nogil

# The field the inbound side vouches for on each request it hands the app (Envoy's
# SANITIZE_SET: whatever the client sent under this name is dropped first).
cdef const char* _XFCC = b"x-forwarded-client-cert"
cdef uint32_t _XFCC_BYTES = 23


ALPN_TCP = b"meshnode-tcp"
"""The ALPN protocol of opaque TCP between nodes; inbound server contexts must accept it."""

# The same protocol as an ALPN wire list (RFC 7301 §3.1: length-prefixed), offered by
# every outbound SSL.
cdef const unsigned char* _ALPN_TCP_WIRE = <const unsigned char*>b"\x0cmeshnode-tcp"
cdef unsigned int _ALPN_TCP_WIRE_BYTES = 13
# What the HTTP outbound listener's connections offer: the inbound side relays them to
# the app as they are.
cdef const unsigned char* _ALPN_HTTP1_WIRE = <const unsigned char*>b"\x08http/1.1"
cdef unsigned int _ALPN_HTTP1_WIRE_BYTES = 9

# Mirrors fastpath.tls for_mesh(): the dispatch ctx is where an inbound SSL takes its
# key exchange groups and session id context from (SSL_set_SSL_CTX copies neither),
# and a session issued after the SNI switch must match the context it resumes under.
cdef bytes _MESH_GROUPS = b"P-256:X25519"
cdef bytes _MESH_SID_CTX = b"meshnode/mtls"

cdef long _SSL_MODES = (openssl.SSL_MODE_ENABLE_PARTIAL_WRITE
                        | openssl.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                        | openssl.SSL_MODE_RELEASE_BUFFERS)

cdef uint32_t _CONN_EVENTS = (net.EPOLLIN | net.EPOLLOUT | net.EPOLLRDHUP | net.EPOLLET)

# epoll tags: bits 0-1 kind, 2-31 slot index, 32-63 slot generation.
cdef enum:
    _TAG_WAKE = 0
    _TAG_LISTENER = 1
    _TAG_DOWN = 2
    _TAG_UP = 3
    _TAG_INDEX_MASK = (1 << ENGINE_TAG_INDEX_BITS) - 1
    _INBOUND_LISTENER = _TAG_INDEX_MASK     # listener "index" of the inbound listener

# The connection an inbound SSL belongs to, for the servername callback.
cdef int _conn_ex_index = openssl.SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)
if _conn_ex_index < 0:
    raise_tls_error("cannot reserve SSL ex_data index for the engine")


# --- small helpers ---------------------------------------------------------------------

cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint64_t _tag(uint32_t kind, uint32_t index, uint32_t gen) noexcept nogil:
    return (<uint64_t>gen << 32) | (<uint64_t>index << 2) | kind


cdef inline SideCounters* _counters_of(Core* core, Conn* c) noexcept nogil:
    if c.flags & CONN_INBOUND:
        return &core.counters.inbound
    return &core.counters.outbound


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


cdef inline void _nodelay(int fd) noexcept nogil:
    # A relay forwards what it has at once; Nagle would hold back the tail of each burst.
    cdef int one = 1
    net.setsockopt(fd, net.IPPROTO_TCP, net.TCP_NODELAY, &one, sizeof(one))


cdef inline int _watch(Core* core, int fd, uint64_t tag) noexcept nogil:
    cdef net.epoll_event ev
    ev.events = _CONN_EVENTS
    ev.data.u64 = tag
    return net.epoll_ctl(core.epfd, net.EPOLL_CTL_ADD, fd, &ev)


cdef void _wake(Core* core) noexcept nogil:
    cdef uint64_t one = 1
    # EAGAIN means the counter is already non-zero: the loop will wake anyway.
    write(core.wakefd, &one, sizeof(one))


cdef inline void _invariant(bint holds, const char* what) noexcept nogil:
    # Debug builds only (MESHNODE_DEBUG is a compile-time constant: release code has no
    # trace of these). A broken invariant is a bug in this file: stop at the scene.
    if MESHNODE_DEBUG and not holds:
        fprintf(stderr, b"fastpath.engine: invariant broken: %s\n", what)
        abort()


# --- buffer pool -------------------------------------------------------------------------

cdef inline char* _buf_get(Core* core) noexcept nogil:
    if core.n_free_bufs == 0:
        return NULL
    core.n_free_bufs -= 1
    core.counters.buffers_in_use += 1
    if core.counters.buffers_in_use > core.counters.buffers_peak:
        core.counters.buffers_peak = core.counters.buffers_in_use
    return core.free_bufs[core.n_free_bufs]


cdef inline void _buf_put(Core* core, char* buf) noexcept nogil:
    _invariant(core.n_free_bufs < core.n_bufs and buf != NULL, b"buffer returned twice")
    core.free_bufs[core.n_free_bufs] = buf
    core.n_free_bufs += 1
    core.counters.buffers_in_use -= 1


# --- route tables ---------------------------------------------------------------------------

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
            _name_free(&svc.name)
            _name_free(&svc.sni)
            if svc.identities != NULL:
                for j in range(svc.n_identities):
                    _name_free(&svc.identities[j])
                free(svc.identities)
            if svc.endpoints != NULL:
                for j in range(svc.n_endpoints):
                    while svc.endpoints[j].n_idle > 0:
                        svc.endpoints[j].n_idle -= 1
                        _idle_close(&svc.endpoints[j].idle[svc.endpoints[j].n_idle])
                    if svc.endpoints[j].session != NULL:
                        openssl.SSL_SESSION_free(svc.endpoints[j].session)
                free(svc.endpoints)
        free(t.services)
    if t.routes != NULL:
        for i in range(t.n_routes):
            _name_free(&t.routes[i].sni)
            _name_free(&t.routes[i].service)
            _name_free(&t.routes[i].identity)
            if t.routes[i].server_ctx != NULL:
                openssl.SSL_CTX_free(t.routes[i].server_ctx)
        free(t.routes)
    if t.hosts != NULL:
        for i in range(t.n_hosts):
            _name_free(&t.hosts[i].name)
        free(t.hosts)
    if t.dispatch_ctx != NULL:
        openssl.SSL_CTX_free(t.dispatch_ctx)
    free(t)


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


cdef bint _same_destination(const Service* a, const Service* b) noexcept nogil:
    """Same service name, SNI and allowed peer IDs: a connection verified for one is
    good for the other."""
    cdef uint32_t i
    if (not _name_eq(&b.name, a.name.data, a.name.length)
            or not _name_eq(&b.sni, a.sni.data, a.sni.length)
            or a.n_identities != b.n_identities):
        return False
    for i in range(a.n_identities):         # exactly, as _handshake_done checks them
        if (a.identities[i].length != b.identities[i].length
                or memcmp(a.identities[i].data, b.identities[i].data, a.identities[i].length) != 0):
            return False
    return True


cdef int64_t _service_in(const Table* t, const Service* a, int64_t guess) noexcept nogil:
    """The index in `t` of the service that is `a`'s destination (_same_destination),
    looked for at `guess` first; -1 when `t` has none."""
    cdef uint32_t k
    if 0 <= guess < t.n_services and _same_destination(a, &t.services[guess]):
        return guess
    for k in range(t.n_services):
        if _same_destination(a, &t.services[k]):
            return k
    return -1


cdef Endpoint* _endpoint_in(Service* b, const Endpoint* e) noexcept nogil:
    """`b`'s endpoint at `e`'s address, or NULL."""
    cdef uint32_t m
    for m in range(b.n_endpoints):
        if (b.endpoints[m].addrlen == e.addrlen
                and memcmp(&b.endpoints[m].addr, &e.addr, e.addrlen) == 0):
            return &b.endpoints[m]
    return NULL


cdef void _carry_endpoint(const Table* t, Endpoint* e, Endpoint* b) noexcept nogil:
    """Move what old endpoint `e` knows to `b`, the same address in table `t`: its
    failure streak, its resumable session and its idle upstreams. Only those opened as
    an identity `t` still presents move (a session does not hold its ctx: compared
    against a ctx `t` holds, the pointer cannot be a freed one's reused address)."""
    cdef uint32_t x, kept = 0
    if e.fails > b.fails:
        b.fails = e.fails
        b.down_until_ns = e.down_until_ns
    if e.session != NULL and b.session == NULL and _table_has_ctx(t, e.session_ctx):
        b.session = e.session
        b.session_ctx = e.session_ctx
        e.session = NULL
    for x in range(e.n_idle):
        if b.n_idle < ENGINE_POOL_PER_ENDPOINT and _table_has_ctx(t, e.idle[x].client_ctx):
            b.idle[b.n_idle] = e.idle[x]
            b.n_idle += 1
        else:
            e.idle[kept] = e.idle[x]
            kept += 1
    e.n_idle = kept


cdef void _carry_endpoints(Table* old, Table* t) noexcept nogil:
    """Endpoint state outlives a config push: for each service `t` keeps as it was
    (name, SNI, peer IDs), each endpoint address it keeps gets the old one's failure
    streak (a node that just failed is still passed over), resumable session and idle
    upstreams (the next requests need no new handshake). What stays behind is closed
    with the old table. Services are looked up at the same index first: a push rarely
    reorders or inserts many, so a swap stays about linear in the endpoints."""
    cdef uint32_t i, j
    cdef int64_t k
    cdef int64_t shift = 0           # where the last service moved to, relative
    cdef Service* a
    cdef Endpoint* e
    cdef Endpoint* b
    for i in range(old.n_services):
        a = &old.services[i]
        k = _service_in(t, a, <int64_t>i + shift)
        if k < 0:
            continue
        shift = k - <int64_t>i
        for j in range(a.n_endpoints):
            e = &a.endpoints[j]
            if e.fails == 0 and e.session == NULL and e.n_idle == 0:
                continue
            b = _endpoint_in(&t.services[k], e)
            if b != NULL:
                _carry_endpoint(t, e, b)


cdef void _swap(Core* core, Table* t) noexcept nogil:
    """Make `t` the current table: accept only from its listeners from now on."""
    cdef Table* old = core.table
    cdef net.epoll_event ev
    cdef uint32_t i
    if old != NULL:
        _listeners_unwatch(core, old)
        _carry_endpoints(old, t)
    core.table = t
    t.refs += 1
    if t.connect_timeout_ns > 0:
        core.connect_timeout_ns = t.connect_timeout_ns
    if t.idle_timeout_ns > 0:
        core.idle_timeout_ns = t.idle_timeout_ns
    core.generation = t.generation
    core.counters.tables_installed += 1
    core.counters.tables_live += 1
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
    if old != NULL:
        _table_release(core, old)


# --- connection slots -------------------------------------------------------------------------

cdef Conn* _conn_new(Core* core, Table* t, uint32_t flags) noexcept nogil:
    cdef Conn* c
    if core.free_head >= 0:
        c = &core.conns[core.free_head]
        _invariant(c.state == CONN_FREE, b"free list holds a live connection")
        core.free_head = c.next_free
    elif core.n_slots < core.max_conns:
        c = &core.conns[core.n_slots]   # first use: zeroed by calloc (CONN_FREE, gen 0)
        c.index = core.n_slots
        core.n_slots += 1
    else:
        return NULL
    # index and gen survive reuse; so does IN_READY (the slot is still on a ready list).
    c.flags = flags | (c.flags & CONN_IN_READY)
    c.next_free = -1
    c.table = t
    t.refs += 1
    c.service = 0
    c.endpoint = 0
    c.setup_tries = 0
    c.route = 0
    c.client_ctx = NULL
    c.down.fd = -1
    c.down.ssl = NULL
    c.down.readable = True
    c.down.hup = False
    c.up.fd = -1
    c.up.ssl = NULL
    c.up.readable = True
    c.up.hup = False
    memset(&c.d2u, 0, sizeof(Flow))
    memset(&c.u2d, 0, sizeof(Flow))
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    c.active_ns = core.now_ns
    c.peer_id = NULL
    c.peer_id_length = 0
    c.req_phase = REQ_HEAD
    c.fwd = 0
    c.req_left = 0
    c.switching = False
    c.reusable = True
    c.client_close = False
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.resp_left = 0
    c.resp_status = 0
    c.pend_first = 0
    c.n_pend = 0
    c.peer_principal = 0
    c.stat = -1
    c.head_reserve = 0
    c.state = CONN_CONNECTING      # callers set the real first state
    cdef SideCounters* sc = _counters_of(core, c)
    sc.connections_opened += 1
    sc.connections_active += 1
    return c


cdef void _side_close(Side* s, bint reset) noexcept nogil:
    cdef net.linger lg
    if s.ssl != NULL:
        # A connection ended without close_notify (a client gone mid-request, a reset)
        # says nothing against its session: marked shut, SSL_free() keeps the session
        # resumable, so the next connections to the endpoint still resume it instead of
        # all paying full handshakes at once.
        openssl.SSL_set_shutdown(s.ssl, openssl.SSL_get_shutdown(s.ssl) | openssl.SSL_SENT_SHUTDOWN)
        openssl.SSL_free(s.ssl)
        s.ssl = NULL
    if s.fd >= 0:
        if reset:
            lg.l_onoff = 1
            lg.l_linger = 0
            net.setsockopt(s.fd, net.SOL_SOCKET, net.SO_LINGER, &lg, sizeof(lg))
        # close() also takes the fd out of the epoll set.
        close(s.fd)
        s.fd = -1


cdef void _count_cut_off(Core* core, Conn* c) noexcept nogil:
    """Requests still owed (the rest of) an answer when their pair closes are counted
    too, once each: the one under way with its status when its head had come (the
    client may have it, as Envoy keeps the code with "downstream disconnected" or
    "upstream reset"), every other as 0, no answer."""
    cdef int status
    while c.n_pend > 0:
        status = 0
        if (c.resp_phase != RESP_HEAD
                and (not c.flags & CONN_DRAINING or c.flags & CONN_DRAIN_HEAD_SEEN)):
            status = c.resp_status
        _count_answer(core, c, status, core.now_ns - c.pend_start_ns[c.pend_first])
        c.resp_phase = RESP_HEAD
        c.flags &= ~CONN_DRAIN_HEAD_SEEN
        c.pend_first = (c.pend_first + 1) % ENGINE_HTTP_PIPELINE_MAX
        c.n_pend -= 1


cdef void _conn_close(Core* core, Conn* c, bint reset) noexcept nogil:
    cdef SideCounters* sc = _counters_of(core, c)
    _invariant(c.state != CONN_FREE, b"connection closed twice")
    if c.n_pend > 0:
        _count_cut_off(core, c)
    _side_close(&c.down, reset)
    _side_close(&c.up, reset)
    if c.d2u.buf != NULL:
        _buf_put(core, c.d2u.buf)
        c.d2u.buf = NULL
    if c.u2d.buf != NULL:
        _buf_put(core, c.u2d.buf)
        c.u2d.buf = NULL
    free(c.peer_id)
    c.peer_id = NULL
    _table_release(core, c.table)
    c.table = NULL
    c.state = CONN_FREE
    c.gen += 1
    c.flags &= CONN_IN_READY
    c.next_free = core.free_head
    core.free_head = <int>c.index
    sc.connections_closed += 1
    sc.connections_active -= 1


cdef inline void _settle(Core* core, Conn* c, int status) noexcept nogil:
    """The one place a step's status closes a pair (after trying the service's other
    endpoints when an outbound upstream's setup failed)."""
    if status == STATUS_CLOSE and c.flags & CONN_SETTING_UP:
        status = _setup_failed(core, c)
    if status == STATUS_CLOSE:
        if (c.flags & CONN_HTTP and
                (c.state == CONN_CONNECTING or c.state == CONN_HANDSHAKING)):
            # The request was routed but never reached the upstream: say so.
            _http_reply(core, c, 503, b"upstream unavailable\n", -1)
        _conn_close(core, c, False)
    elif status == STATUS_RESET:
        _conn_close(core, c, True)


cdef inline void _ready_push(Core* core, Conn* c) noexcept nogil:
    if c.flags & CONN_IN_READY:
        return
    c.flags |= CONN_IN_READY
    core.ready_next[core.n_ready_next] = c.index
    core.n_ready_next += 1


# --- byte moving ------------------------------------------------------------------------------
# Reads return a byte count > 0 or a status; so do writes.

cdef Py_ssize_t _recv(Side* s, char* p, uint32_t n) noexcept nogil:
    cdef Py_ssize_t r
    cdef int err
    cdef openssl.BIO* rbio
    if s.ssl == NULL:
        if not s.readable:
            return STATUS_AGAIN
        while True:
            r = net.recv(s.fd, p, n, 0)
            if r > 0:
                if r < n and not s.hup:
                    s.readable = False  # drained: the next arrival brings an EPOLLIN
                return r
            if r == 0:
                return STATUS_EOF
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                s.readable = False
                return STATUS_AGAIN
            return STATUS_RESET
    if not s.readable and not openssl.SSL_has_pending(s.ssl):
        return STATUS_AGAIN
    # SSL_get_error reads this thread's error queue: it must hold nothing older.
    openssl.ERR_clear_error()
    rbio = openssl.SSL_get_rbio(s.ssl)
    openssl.BIO_set_callback_arg(rbio, <char*>s)  # _rbio_read_done may clear s.readable
    r = openssl.SSL_read(s.ssl, p, <int>n)
    openssl.BIO_set_callback_arg(rbio, NULL)
    if r > 0:
        return r
    err = openssl.SSL_get_error(s.ssl, <int>r)
    if err == openssl.SSL_ERROR_WANT_READ:
        s.readable = False              # OpenSSL read the socket empty
        return STATUS_AGAIN
    if err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_AGAIN
    if err == openssl.SSL_ERROR_ZERO_RETURN:
        return STATUS_EOF           # close_notify: the only clean end of a TLS stream
    # Includes OpenSSL 3's "unexpected eof while reading": a truncated stream.
    openssl.ERR_clear_error()
    return STATUS_RESET


cdef Py_ssize_t _send(Side* s, const char* p, uint32_t n) noexcept nogil:
    cdef Py_ssize_t r
    cdef int err
    if s.ssl == NULL:
        while True:
            r = net.send(s.fd, p, n, net.MSG_NOSIGNAL)
            if r >= 0:
                return r if r > 0 else STATUS_AGAIN
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return STATUS_AGAIN
            return STATUS_RESET
    openssl.ERR_clear_error()
    # A retry after WANT_WRITE passes the same leading bytes (maybe moved, and maybe
    # more of them): what SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER and partial writes allow.
    r = openssl.SSL_write(s.ssl, p, <int>n)
    if r > 0:
        return r
    err = openssl.SSL_get_error(s.ssl, <int>r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_AGAIN
    openssl.ERR_clear_error()
    return STATUS_RESET


cdef int _shut(Side* s) noexcept nogil:
    """Pass an end of stream on: FIN to a plaintext peer, close_notify to a TLS one."""
    cdef int r, err
    if s.ssl == NULL:
        return STATUS_OK if net.shutdown(s.fd, net.SHUT_WR) == 0 else STATUS_RESET
    openssl.ERR_clear_error()
    # 0: sent, the peer's close_notify not seen yet (the other direction may go on);
    # 1: sent after the peer's.
    r = openssl.SSL_shutdown(s.ssl)
    if r >= 0:
        return STATUS_OK
    err = openssl.SSL_get_error(s.ssl, r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_AGAIN
    openssl.ERR_clear_error()
    return STATUS_RESET


cdef int64_t _flow(Core* core, Side* src, Side* dst, Flow* f,
                   uint64_t* received, uint64_t* sent, bint pass_eof) noexcept nogil:
    """Move what can move from src to dst; the amount moved (bytes, +1 per end passed
    on), or STATUS_RESET. `received`/`sent` count bytes read from src / written to dst
    when not NULL. `pass_eof` false keeps src's end from reaching dst (HTTP: an
    upstream ended on purpose, the client connection goes on)."""
    cdef int64_t progress = 0
    cdef Py_ssize_t r
    cdef uint32_t cap = core.buffer_bytes
    while not f.eof:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                break               # cannot happen: the pool has two blocks per slot
        if f.tail == cap:
            if f.head == 0:
                break               # full: src waits until dst takes some (backpressure)
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
        r = _recv(src, f.buf + f.tail, cap - f.tail)
        if r > 0:
            f.tail += <uint32_t>r
            progress += r
            if received != NULL:
                received[0] += <uint64_t>r
        elif r == STATUS_EOF:
            f.eof = True
            progress += 1
        elif r == STATUS_AGAIN:
            break
        else:
            return STATUS_RESET
    while f.head < f.tail:
        r = _send(dst, f.buf + f.head, f.tail - f.head)
        if r > 0:
            f.head += <uint32_t>r
            progress += r
            if sent != NULL:
                sent[0] += <uint64_t>r
        elif r == STATUS_AGAIN:
            break
        else:
            return STATUS_RESET
    _invariant(f.head <= f.tail and f.tail <= cap, b"flow offsets out of the buffer")
    if f.buf != NULL and f.head == f.tail:
        # Empty: back to the pool, so an idle pair holds no buffer at all.
        _buf_put(core, f.buf)
        f.buf = NULL
        f.head = 0
        f.tail = 0
    if f.eof and f.buf == NULL and not f.shut and pass_eof:
        r = _shut(dst)
        if r == STATUS_OK:
            f.shut = True
            progress += 1
        elif r != STATUS_AGAIN:
            return STATUS_RESET
    return progress


cdef void _take_ticket(Conn* c) noexcept nogil:
    """Keep the connection's session for its endpoint once it is resumable (TLS 1.3:
    once a NewSessionTicket has been read, which happens inside SSL_read)."""
    cdef openssl.SSL_SESSION* s = openssl.SSL_get0_session(c.up.ssl)
    cdef Endpoint* ep
    if s == NULL or not openssl.SSL_SESSION_is_resumable(s):
        return
    ep = &c.table.services[c.service].endpoints[c.endpoint]
    if ep.session != s:
        openssl.SSL_SESSION_up_ref(s)
        if ep.session != NULL:
            openssl.SSL_SESSION_free(ep.session)
        ep.session = s
    ep.session_ctx = c.client_ctx
    c.flags &= ~CONN_TICKET_WAIT


cdef int _drain_start(Core* core, Conn* c) noexcept nogil:
    """The client of an HTTP outbound pair is gone: keep the upstream when every byte
    sent on it belongs to whole requests (their answers are then read and dropped, and
    the upstream pooled: _drain); STATUS_RESET when it cannot be kept."""
    if (c.flags & (CONN_INBOUND | CONN_HTTP)) != CONN_HTTP or c.up.ssl == NULL:
        return STATUS_RESET
    if (c.state != CONN_PIPE or c.switching or not c.reusable or c.fwd != 0
            or c.req_phase != REQ_HEAD or c.resp_phase == RESP_TUNNEL
            or c.resp_phase == RESP_CLOSE or c.u2d.eof
            or (c.resp_phase == RESP_LENGTH and c.resp_left > core.drain_max_bytes)):
        return STATUS_RESET
    _side_close(&c.down, True)
    if c.d2u.buf != NULL:
        _buf_put(core, c.d2u.buf)
    memset(&c.d2u, 0, sizeof(Flow))
    c.flags = (c.flags | CONN_DRAINING) & ~CONN_RETRYABLE
    if c.resp_phase != RESP_HEAD:
        c.flags |= CONN_DRAIN_HEAD_SEEN
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    return _drain(core, c)


cdef int _drain(Core* core, Conn* c) noexcept nogil:
    """CONN_DRAINING: read the upstream's answers, drop them as they are framed, pool
    the upstream once nothing is owed (STATUS_CLOSE ends the pair either way)."""
    cdef Flow* f = &c.u2d
    cdef Py_ssize_t r
    cdef uint32_t cap = core.buffer_bytes
    while True:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                return STATUS_RESET
        # What is framed was for the client that left (at the start, maybe a whole
        # buffer it stopped reading): dropped.
        f.head += c.resp_fwd
        c.resp_fwd = 0
        if f.head == f.tail:
            f.head = 0
            f.tail = 0
        elif f.tail == cap:
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
            if f.tail == cap:
                return STATUS_RESET     # a head over a buffer: not worth keeping
        r = _recv(&c.up, f.buf + f.tail, cap - f.tail)
        if r == STATUS_AGAIN:
            break
        if r <= 0:
            return STATUS_RESET         # ended or failed: nothing to keep
        f.tail += <uint32_t>r
        if _http_rframe(core, c) != STATUS_OK:
            return STATUS_RESET
    if f.head == f.tail:
        _buf_put(core, f.buf)
        memset(f, 0, sizeof(Flow))
    c.active_ns = core.now_ns
    if c.n_pend == 0 and c.resp_phase == RESP_HEAD and f.buf == NULL and c.reusable:
        _pool_put(core, c)
        return STATUS_CLOSE
    return STATUS_OK


cdef int _pump(Core* core, Conn* c) noexcept nogil:
    """Move bytes both ways until neither direction moves or the turn's budget is used."""
    cdef SideCounters* sc = _counters_of(core, c)
    cdef int64_t a, b
    cdef int64_t moved = 0
    if c.flags & CONN_DRAINING:
        return _drain(core, c)
    while True:
        if c.flags & CONN_HTTP:
            a = _http_d2u(core, c, &sc.bytes_received)
            if a < 0 and c.flags & CONN_RETRYABLE:
                return _http_retry(core, c)
        else:
            a = _flow(core, &c.down, &c.up, &c.d2u, &sc.bytes_received, NULL, True)
        if a < 0:
            sc.aborted += 1
            if c.flags & CONN_CLIENT_GONE:
                return _drain_start(core, c)
            return STATUS_RESET
        if c.flags & CONN_HTTP:
            b = _http_u2d(core, c, &sc.bytes_sent)
            if b == STATUS_CLOSE:
                return STATUS_CLOSE     # answered 502 (counted)
            if b == STATUS_RETRY:
                return _http_retry(core, c)
        else:
            b = _flow(core, &c.up, &c.down, &c.u2d, NULL, &sc.bytes_sent, True)
        if b < 0:
            sc.aborted += 1
            if c.flags & CONN_CLIENT_GONE:
                return _drain_start(core, c)
            return STATUS_RESET
        if c.flags & CONN_TICKET_WAIT:
            _take_ticket(c)
        if (c.switching and c.n_pend == 0 and c.u2d.buf == NULL
                and (c.resp_phase == RESP_HEAD or c.u2d.eof)):
            # Every request sent upstream is answered: the client's next request goes
            # to the service it names; the upstream goes to the pool if it can.
            return _http_switch(core, c)
        if (c.flags & (CONN_HTTP | CONN_INBOUND) == CONN_HTTP and c.d2u.eof
                and c.d2u.buf == NULL and _http_idle(c)):
            # The client is done; its upstream is pooled, or closed with the pair when
            # the endpoint's pool is full.
            _pool_put(core, c)
            return STATUS_CLOSE
        if c.d2u.shut and c.u2d.shut:
            return STATUS_CLOSE
        if a + b == 0:
            return STATUS_OK
        moved += a + b
        c.active_ns = core.now_ns
        if moved >= ENGINE_PUMP_BUDGET_BYTES:
            _ready_push(core, c)
            return STATUS_OK


cdef inline int _enter_pipe(Core* core, Conn* c) noexcept nogil:
    # The readable flags are right as they are: every event of every state sets them,
    # and only a read that found a socket empty clears one (handshake reads never do).
    c.state = CONN_PIPE
    c.active_ns = core.now_ns
    # Bytes may be waiting already (the client spoke first; OpenSSL decrypted a record
    # with the handshake's last flight): their edges are gone, so pump now.
    return _pump(core, c)


# --- setup: connect, handshake ------------------------------------------------------------------

cdef int _connect(Core* core, Conn* c, const net.sockaddr_storage* addr,
                  net.socklen_t addrlen) noexcept nogil:
    """Start the up side's TCP connect: STATUS_OK (connected), STATUS_AGAIN (in
    progress), or STATUS_CLOSE (failed, counted)."""
    cdef int fd
    cdef SideCounters* sc = _counters_of(core, c)
    c.state = CONN_CONNECTING
    fd = net.socket(addr.ss_family, net.SOCK_STREAM | net.SOCK_NONBLOCK | net.SOCK_CLOEXEC, 0)
    if fd < 0:
        sc.connect_failures += 1
        return STATUS_CLOSE
    c.up.fd = fd
    c.up.readable = True
    c.up.hup = False
    _nodelay(fd)
    if _watch(core, fd, _tag(_TAG_UP, c.index, c.gen)) != 0:
        sc.connect_failures += 1
        return STATUS_CLOSE
    if not (c.flags & CONN_INBOUND):
        # From here a failure is the endpoint's (not this node's: no fd, no memory),
        # and may move the pair to the next one (_settle).
        c.flags |= CONN_SETTING_UP
    while True:
        if net.connect(fd, <const net.sockaddr*>addr, addrlen) == 0:
            return STATUS_OK
        if errno == EINTR:
            continue
        if errno == EINPROGRESS:
            return STATUS_AGAIN
        sc.connect_failures += 1
        return STATUS_CLOSE


cdef bint _peer_refused(openssl.SSL* ssl) noexcept nogil:
    """Did this handshake fail because the peer's certificate was missing or bad?"""
    cdef unsigned long e
    cdef bint refused = openssl.SSL_get_verify_result(ssl) != openssl.X509_V_OK
    while True:
        e = openssl.ERR_get_error()       # drains the queue as it looks
        if e == 0:
            break
        if openssl.ERR_GET_LIB(e) == openssl.ERR_LIB_SSL:
            if (openssl.ERR_GET_REASON(e) == openssl.SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
                    or openssl.ERR_GET_REASON(e) == openssl.SSL_R_CERTIFICATE_VERIFY_FAILED):
                refused = True
    return refused


cdef inline Side* _tls_side(Conn* c) noexcept nogil:
    return &c.down if c.flags & CONN_INBOUND else &c.up


cdef inline uint32_t _xfcc_value_len(const InboundRoute* route, uint32_t peer_len) noexcept nogil:
    """len("By=<local ID>;URI=<peer ID>"), without By= when the route has no ID."""
    return (route.identity.length + 4 if route.identity.length > 0 else 0) + 4 + peer_len


cdef int _handshake_done(Core* core, Conn* c, Side* s) noexcept nogil:
    cdef SideCounters* sc = _counters_of(core, c)
    cdef char peer[SPIFFE_ID_MAX_BYTES + 1]
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alpn_len = 0
    cdef int n
    cdef uint32_t i
    cdef bint allowed = False
    cdef Service* svc
    cdef InboundRoute* route
    cdef int st
    sc.tls_handshakes += 1
    if openssl.SSL_session_reused(s.ssl):
        sc.tls_resumed += 1
    n = peer_spiffe_id(s.ssl, peer, sizeof(peer))
    if not (c.flags & CONN_INBOUND):
        svc = &c.table.services[c.service]
        if n > 0:
            for i in range(svc.n_identities):
                if (svc.identities[i].length == <uint32_t>n
                        and memcmp(svc.identities[i].data, peer, <size_t>n) == 0):
                    allowed = True
                    break
        if not allowed:
            core.counters.identity_mismatch += 1
            return STATUS_CLOSE
        # Set up: the endpoint's failure streak ends, and with it any passing over.
        c.flags &= ~CONN_SETTING_UP
        if svc.endpoints[c.endpoint].fails != 0 or c.table != core.table:
            _endpoint_ok(core, c)
    elif not (c.flags & CONN_ROUTED):
        sc.tls_failures_other += 1      # cannot happen: no route means no certificate
        return STATUS_CLOSE
    elif n <= 0:
        # Verified by the route's trust bundle, yet no usable SPIFFE ID: not a workload.
        sc.tls_failures_verify += 1
        return STATUS_CLOSE
    c.peer_id = <char*>malloc(<size_t>n + 1)
    if c.peer_id == NULL:
        sc.aborted += 1
        return STATUS_RESET
    memcpy(c.peer_id, peer, <size_t>n + 1)
    c.peer_id_length = <uint32_t>n
    c.peer_principal = _principal_of(core, peer, <uint32_t>n)
    c.stat = -1
    if not (c.flags & CONN_INBOUND):
        if not openssl.SSL_session_reused(s.ssl):
            c.flags |= CONN_TICKET_WAIT
        return _enter_pipe(core, c)
    route = &c.table.routes[c.route]
    c.local_principal = _interned(core, &route.principal, &route.identity)
    openssl.SSL_get0_alpn_selected(s.ssl, &alpn, &alpn_len)
    if alpn_len == 8 and memcmp(alpn, b"http/1.1", 8) == 0:
        # HTTP from another node's outbound side: requests are framed here too, for
        # the destination's figures and the caller's identity on each request.
        c.flags |= CONN_HTTP
        c.head_reserve = _xfcc_value_len(route, <uint32_t>n) + _XFCC_BYTES + 4
    st = _connect(core, c, &route.app_addr, route.app_addrlen)
    if st == STATUS_OK:
        return _enter_pipe(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


cdef int _handshake(Core* core, Conn* c) noexcept nogil:
    cdef Side* s = _tls_side(c)
    cdef SideCounters* sc = _counters_of(core, c)
    cdef int r, err
    cdef Endpoint* ep
    openssl.ERR_clear_error()
    r = openssl.SSL_do_handshake(s.ssl)
    if r == 1:
        return _handshake_done(core, c, s)
    err = openssl.SSL_get_error(s.ssl, r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        return STATUS_OK
    if c.flags & CONN_UNKNOWN_SNI:
        core.counters.tls_unknown_sni += 1
        openssl.ERR_clear_error()
    elif _peer_refused(s.ssl):
        sc.tls_failures_verify += 1
    else:
        sc.tls_failures_other += 1
        openssl.ERR_clear_error()
    if c.flags & CONN_OFFERED_SESSION:
        # The session we offered may be what broke the handshake: do not offer it again.
        ep = &c.table.services[c.service].endpoints[c.endpoint]
        if ep.session != NULL:
            openssl.SSL_SESSION_free(ep.session)
            ep.session = NULL
    return STATUS_CLOSE


cdef long _rbio_read_done(openssl.BIO* b, int oper, const char* argp, size_t length, int argi,
                          long argl, int ret, size_t* processed) noexcept nogil:
    """After each read() OpenSSL makes of a TLS socket: one that got less than it asked
    for (read-ahead asks for a whole buffer) read the socket empty, so the side is not
    readable until its next EPOLLIN — as a short plaintext read does in _recv. Without
    this, every SSL_read that returned data was followed by one more that found the
    socket empty: a read() with EAGAIN per record."""
    cdef Side* s
    if oper == (openssl.BIO_CB_READ | openssl.BIO_CB_RETURN) and ret > 0 and processed != NULL \
            and processed[0] < length:
        s = <Side*>openssl.BIO_get_callback_arg(b)
        if s != NULL and not s.hup:
            s.readable = False
    return ret


cdef inline void _ssl_tune(openssl.SSL* ssl) noexcept nogil:
    openssl.SSL_set_mode(ssl, _SSL_MODES)
    openssl.SSL_set_read_ahead(ssl, 1)
    # Read-ahead takes what the socket has up to this buffer: several 16 KiB records per
    # read() when an answer streams (the buffer exists only while it holds bytes:
    # SSL_MODE_RELEASE_BUFFERS).
    openssl.SSL_set_default_read_buffer_len(ssl, ENGINE_TLS_READ_BYTES)
    # The argument (the Side reading) is set around each SSL_read in _recv only: an SSL
    # moves between connections (pooled upstreams), a Side pointer must not outlive a call.
    openssl.BIO_set_callback_ex(openssl.SSL_get_rbio(ssl), _rbio_read_done)


cdef int _tls_client_start(Core* core, Conn* c) noexcept nogil:
    """Outbound, TCP up: start the mutual-TLS handshake toward the endpoint's node."""
    cdef Service* svc = &c.table.services[c.service]
    cdef Endpoint* ep = &svc.endpoints[c.endpoint]
    cdef openssl.SSL* ssl
    cdef SideCounters* sc = _counters_of(core, c)
    openssl.ERR_clear_error()
    ssl = openssl.SSL_new(c.client_ctx)
    if ssl == NULL:
        sc.tls_failures_other += 1
        openssl.ERR_clear_error()
        c.flags &= ~CONN_SETTING_UP     # this node's failure: no endpoint to blame
        return STATUS_CLOSE
    c.up.ssl = ssl
    if (openssl.SSL_set_fd(ssl, c.up.fd) != 1
            or openssl.SSL_set_tlsext_host_name(ssl, svc.sni.data) != 1
            or (openssl.SSL_set_alpn_protos(ssl, _ALPN_HTTP1_WIRE, _ALPN_HTTP1_WIRE_BYTES)
                if c.flags & CONN_HTTP else
                openssl.SSL_set_alpn_protos(ssl, _ALPN_TCP_WIRE, _ALPN_TCP_WIRE_BYTES)) != 0):
        sc.tls_failures_other += 1
        openssl.ERR_clear_error()
        c.flags &= ~CONN_SETTING_UP
        return STATUS_CLOSE
    openssl.SSL_set_connect_state(ssl)
    _ssl_tune(ssl)
    if ep.session != NULL and ep.session_ctx == c.client_ctx:
        if openssl.SSL_set_session(ssl, ep.session) == 1:
            c.flags |= CONN_OFFERED_SESSION
        else:
            openssl.ERR_clear_error()
    c.state = CONN_HANDSHAKING
    return _handshake(core, c)


cdef int _connect_done(Core* core, Conn* c, uint32_t events) noexcept nogil:
    """An event on the up side while its connect is pending."""
    cdef int err = 0
    cdef net.socklen_t length = sizeof(err)
    if not (events & (net.EPOLLOUT | net.EPOLLERR | net.EPOLLHUP)):
        return STATUS_OK
    if net.getsockopt(c.up.fd, net.SOL_SOCKET, net.SO_ERROR, &err, &length) != 0:
        err = errno
    if err != 0:
        _counters_of(core, c).connect_failures += 1
        return STATUS_CLOSE
    if not (events & net.EPOLLOUT):
        return STATUS_OK
    if c.flags & CONN_INBOUND:
        return _enter_pipe(core, c)
    return _tls_client_start(core, c)


cdef int _on_servername(openssl.SSL* ssl, int* alert, void* arg) noexcept nogil:
    """Inbound ClientHello: switch the SSL to the SSL_CTX of the service it names."""
    cdef Table* t = <Table*>arg
    cdef Conn* c = <Conn*>openssl.SSL_get_ex_data(ssl, _conn_ex_index)
    cdef const char* name = openssl.SSL_get_servername(ssl, openssl.TLSEXT_NAMETYPE_host_name)
    cdef size_t n
    cdef uint32_t i
    cdef openssl.SSL_CTX* ctx
    if c == NULL:
        alert[0] = openssl.SSL_AD_INTERNAL_ERROR
        return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
    if name != NULL:
        n = strlen(name)
        for i in range(t.n_routes):
            if not _name_eq(&t.routes[i].sni, name, n):
                continue
            ctx = t.routes[i].server_ctx
            if openssl.SSL_set_SSL_CTX(ssl, ctx) == NULL:
                alert[0] = openssl.SSL_AD_INTERNAL_ERROR
                return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
            # SSL_new copied these from the dispatch ctx; SSL_set_SSL_CTX does not
            # replace them (nginx does the same after its switch).
            openssl.SSL_set_verify(ssl, openssl.SSL_CTX_get_verify_mode(ctx),
                                   openssl.SSL_CTX_get_verify_callback(ctx))
            openssl.SSL_set_verify_depth(ssl, openssl.SSL_CTX_get_verify_depth(ctx))
            openssl.SSL_clear_options(ssl, openssl.SSL_get_options(ssl)
                                      & ~openssl.SSL_CTX_get_options(ctx))
            openssl.SSL_set_options(ssl, openssl.SSL_CTX_get_options(ctx))
            c.route = i
            c.flags |= CONN_ROUTED
            return openssl.SSL_TLSEXT_ERR_OK
    c.flags |= CONN_UNKNOWN_SNI
    alert[0] = openssl.SSL_AD_UNRECOGNIZED_NAME
    return openssl.SSL_TLSEXT_ERR_ALERT_FATAL


cdef int _inbound_start(Core* core, Conn* c) noexcept nogil:
    cdef openssl.SSL* ssl
    openssl.ERR_clear_error()
    ssl = openssl.SSL_new(c.table.dispatch_ctx)
    if ssl == NULL:
        core.counters.inbound.tls_failures_other += 1
        openssl.ERR_clear_error()
        return STATUS_CLOSE
    c.down.ssl = ssl
    if (openssl.SSL_set_fd(ssl, c.down.fd) != 1
            or openssl.SSL_set_ex_data(ssl, _conn_ex_index, c) != 1):
        core.counters.inbound.tls_failures_other += 1
        openssl.ERR_clear_error()
        return STATUS_CLOSE
    openssl.SSL_set_accept_state(ssl)
    _ssl_tune(ssl)
    c.state = CONN_HANDSHAKING
    return _handshake(core, c)


# --- HTTP outbound: route a connection by its first request --------------------------------------

cdef const char* _reason(int status) noexcept nogil:
    if status == 502:
        return b"Bad Gateway"
    if status == 400:
        return b"Bad Request"
    if status == 404:
        return b"Not Found"
    if status == 408:
        return b"Request Timeout"
    if status == 413:
        return b"Content Too Large"
    if status == 414:
        return b"URI Too Long"
    if status == 431:
        return b"Request Header Fields Too Large"
    if status == 501:
        return b"Not Implemented"
    if status == 503:
        return b"Service Unavailable"
    if status == 505:
        return b"HTTP Version Not Supported"
    return b"Error"


cdef void _http_reply(Core* core, Conn* c, int status, const char* body,
                      int body_len) noexcept nogil:
    """Answer the client ourselves (at most once per connection) before the pair closes:
    `status` with a text body (`body_len` bytes of `body`, all of a C string `body` when
    -1, or the reason phrase when `body` is NULL), Connection: close.

    What the client sent and we did not read is drained first (bounded): closing a
    socket with unread bytes sends RST, which can make the client drop our answer
    (RFC 9112 §9.6 asks for a lingering close; this is the cheap part of one)."""
    cdef char sink[4096]
    cdef char msg[1024]
    cdef const char* reason = _reason(status)
    cdef int n, i
    cdef Py_ssize_t r
    if c.flags & CONN_HTTP_REPLIED or c.down.fd < 0 or c.u2d.shut:
        return                          # (the client's side was ended already: no answer)
    c.flags |= CONN_HTTP_REPLIED
    _count_answer(core, c, status, -1)
    if c.n_pend > 0:
        # The answer to the oldest request sent on; any behind it are cut off, and
        # counted so when the pair closes (_count_cut_off).
        c.resp_phase = RESP_HEAD
        c.pend_first = (c.pend_first + 1) % ENGINE_HTTP_PIPELINE_MAX
        c.n_pend -= 1
    if status == 404:
        core.counters.http_no_route += 1
    elif status == 503:
        core.counters.http_unavailable += 1
    elif status != 408:
        core.counters.http_bad_request += 1
    if c.down.ssl == NULL:
        for i in range(256):
            if net.recv(c.down.fd, sink, sizeof(sink), 0) <= 0:
                break
    if body == NULL:
        body = reason
        body_len = <int>strlen(reason)
    elif body_len == -1:
        body_len = <int>strlen(body)
    if body_len < 0 or body_len > 512:
        body_len = 0
    n = snprintf(msg, sizeof(msg),
                 b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                 b"connection: close\r\n\r\n%.*s%s",
                 status, reason, <int>(body_len + (1 if body == reason else 0)), body_len, body,
                 b"\n" if body == reason else b"")
    if n <= 0 or n >= <int>sizeof(msg):
        return
    if c.down.ssl != NULL:
        # Inbound: the peer node's outbound side reads this as the app's answer.
        r = _send(&c.down, msg, <uint32_t>n)
        if r > 0:
            core.counters.inbound.bytes_sent += <uint64_t>r
        _shut(&c.down)
        return
    r = net.send(c.down.fd, msg, <size_t>n, net.MSG_NOSIGNAL)
    if r > 0:
        core.counters.outbound.bytes_sent += <uint64_t>r
    net.shutdown(c.down.fd, net.SHUT_WR)


cdef int _name_cmp(const Name* a, const char* b, size_t n) noexcept nogil:
    """Byte order of (a, b), shorter first on a common prefix: Python's bytes order."""
    cdef size_t m = a.length if a.length < n else n
    cdef int r = memcmp(a.data, b, m)
    if r != 0:
        return r
    if a.length == n:
        return 0
    return -1 if a.length < n else 1


cdef HostEntry* _host_lookup(Table* t, const char* host, size_t n, int port) noexcept nogil:
    """The entry for a (lowercase, portless) host name: the one for `port` when the
    request named a port that the service has, else the name's first entry."""
    cdef uint32_t lo = 0
    cdef uint32_t hi = t.n_hosts
    cdef uint32_t mid, i
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if _name_cmp(&t.hosts[mid].name, host, n) < 0:
            lo = mid + 1
        else:
            hi = mid
    if lo >= t.n_hosts or _name_cmp(&t.hosts[lo].name, host, n) != 0:
        return NULL
    if port >= 0:
        i = lo
        while i < t.n_hosts and _name_cmp(&t.hosts[i].name, host, n) == 0:
            if t.hosts[i].port == port:
                return &t.hosts[i]
            i += 1
    return &t.hosts[lo]


cdef uint32_t _origin_form(Flow* f, uint32_t base, ReqHead* req) noexcept nogil:
    """Rewrite an absolute-form request-target ("http://host/p?q") parsed at
    f.buf + base to origin-form ("/p?q") in the buffer: apps expect origin-form from a
    proxy (RFC 9112 §3.2.2). Returns how many bytes the head lost."""
    cdef char* b = f.buf + base
    cdef uint32_t start = req.target.off
    cdef uint32_t cut
    if req.path.len > 0 and b[req.path.off] == c'/':
        cut = req.path.off - start
    else:
        # Empty path or a bare query: "/" goes where the authority's last byte was.
        b[req.path.off - 1] = c'/'
        cut = req.path.off - 1 - start
    memmove(b + start, b + start + cut, f.tail - base - start - cut)
    f.tail -= cut
    return cut


cdef bint _xfcc_set(Core* core, Conn* c, ReqHead* req, uint32_t base,
                    int64_t* delta) noexcept nogil:
    """Inbound: replace whatever x-forwarded-client-cert the request head at d2u.buf +
    base carries by `By=<local ID>;URI=<caller's verified ID>`. False (nothing changed)
    when the buffer has no room for it yet; *delta is the head's change in length."""
    cdef Flow* f = &c.d2u
    cdef const InboundRoute* route = &c.table.routes[c.route]
    cdef char value[2 * SPIFFE_ID_MAX_BYTES + 16]
    cdef uint32_t n = 0
    cdef uint32_t cut
    cdef int added
    if f.tail + _XFCC_BYTES + 4 + _xfcc_value_len(route, c.peer_id_length) > core.buffer_bytes:
        return False
    if route.identity.length > 0:
        memcpy(value, b"By=", 3)
        memcpy(value + 3, route.identity.data, route.identity.length)
        n = 3 + route.identity.length
        value[n] = c';'
        n += 1
    memcpy(value + n, b"URI=", 4)
    memcpy(value + n + 4, c.peer_id, c.peer_id_length)
    n += 4 + c.peer_id_length
    cut = drop_fields(f.buf + base, f.tail - base, req, _XFCC, _XFCC_BYTES)
    f.tail -= cut
    added = add_field(f.buf + base, req.head_len - cut, f.tail - base,
                      core.buffer_bytes - base, _XFCC, _XFCC_BYTES, value, n)
    _invariant(added > 0, b"x-forwarded-client-cert did not fit after the room check")
    f.tail += <uint32_t>added
    delta[0] = <int64_t>added - <int64_t>cut
    return True


cdef int _http_framed(Core* core, Conn* c, ReqHead* req, uint32_t base) noexcept nogil:
    """A request head at d2u.buf + base, for the current upstream: edit it for the
    next hop, count it as framed, and expect its body. STATUS_OK, or STATUS_AGAIN
    (inbound: no room for x-forwarded-client-cert until earlier bytes are sent).

    Outbound, the client's hop-by-hop fields go and an absolute-form target becomes
    origin-form. The client's `Connection: close` is about the client's connection
    only: the upstream hop stays pooled (HTTP/1.1 requests go on without it), and the
    client's connection is closed after this request's answer, which then says so."""
    cdef int64_t delta = 0
    cdef uint32_t i
    if c.flags & CONN_INBOUND:
        if not _xfcc_set(core, c, req, base, &delta):
            return STATUS_AGAIN
    else:
        if req.version_minor == 1 and not req.upgrade:
            delta = -<int64_t>strip_hop_fields(c.d2u.buf + base, c.d2u.tail - base, req)
            c.d2u.tail = <uint32_t>(c.d2u.tail + delta)
        elif not req.keep_alive:
            c.reusable = False  # HTTP/1.0 goes on as it came: the upstream will close
        if not req.keep_alive:
            c.client_close = True
        if req.target_form == TARGET_ABSOLUTE:
            delta -= _origin_form(&c.d2u, base, req)
    c.fwd = <uint32_t>(c.fwd + req.head_len + delta)
    if not (req.method == METHOD_GET or req.method == METHOD_HEAD or req.method == METHOD_PUT
            or req.method == METHOD_DELETE or req.method == METHOD_OPTIONS
            or req.method == METHOD_TRACE):
        # RFC 9110 §9.2.2: only idempotent requests may be sent twice.
        c.flags &= ~CONN_RETRYABLE
    _invariant(c.n_pend < ENGINE_HTTP_PIPELINE_MAX, b"pipeline ring overflow")
    i = (c.pend_first + c.n_pend) % ENGINE_HTTP_PIPELINE_MAX
    c.pend_start_ns[i] = core.now_ns
    c.pend_method[i] = <uint8_t>req.method
    c.n_pend += 1
    if req.upgrade or req.method == METHOD_CONNECT:
        # Whatever the answer, we stop reading requests here: a 101 (or a 2xx to
        # CONNECT) makes the rest a byte pipe; a refusal is rare enough to just pipe.
        c.req_phase = REQ_TUNNEL
    elif req.body == BODY_LENGTH:
        c.req_phase = REQ_LENGTH
        c.req_left = req.content_length
    elif req.body == BODY_CHUNKED:
        c.req_phase = REQ_CHUNKED
        chunk_init(&c.chunk, &core.http_limits)
    else:
        c.req_phase = REQ_HEAD
    return STATUS_OK


cdef int _http_route(Core* core, Conn* c, ReqHead* req) noexcept nogil:
    """A complete request head at d2u.buf (first on the client connection, or first
    after a switch): pick the service by its authority, then take a pooled upstream of
    the next endpoint (round robin) or connect as the TCP listener does (the head
    waits in d2u)."""
    cdef char host[256]
    cdef char body[384]
    cdef int port = -1
    cdef int n
    cdef size_t hn = 0
    cdef HostEntry* e = NULL
    cdef Service* svc
    cdef int st
    cdef uint32_t i
    cdef bint rerouted = c.flags & CONN_REROUTED
    c.flags &= ~CONN_REROUTED
    if not (c.flags & CONN_FIXED_SERVICE or rerouted):
        if req.authority.len > 0:
            hn = authority_host(c.d2u.buf + c.d2u.head + req.authority.off, req.authority.len,
                                host, sizeof(host), &port)
        if hn > 0:
            e = _host_lookup(c.table, host, hn, port)
        if e == NULL:
            n = snprintf(body, sizeof(body), b"no route to host \"%.*s\"\n", <int>hn, host)
            _http_reply(core, c, 404, body, n)
            return STATUS_CLOSE
        c.service = e.service
    svc = &c.table.services[c.service]
    c.flags |= CONN_SERVICE_KNOWN
    c.peer_principal = 0            # until an upstream is verified (handshake or pool)
    c.stat = -1
    if svc.n_endpoints == 0:
        core.counters.no_endpoint += 1
        n = snprintf(body, sizeof(body), b"no healthy endpoint for \"%.*s\"\n", <int>hn, host)
        _http_reply(core, c, 503, body, n)
        return STATUS_CLOSE
    _http_framed(core, c, req, c.d2u.head)
    if rerouted:
        i = (c.pend_first + c.n_pend - 1) % ENGINE_HTTP_PIPELINE_MAX
        c.pend_start_ns[i] = c.reroute_start_ns
    else:
        core.counters.http_routed += 1
    c.endpoint = _pick_endpoint(core, svc)
    if _pool_take(core, c, &svc.endpoints[c.endpoint]):
        core.counters.http_upstream_reused += 1
        # The head sits at d2u offset 0 (_http_head): kept there until an answer starts.
        c.flags |= CONN_RETRYABLE
        if not (req.method == METHOD_GET or req.method == METHOD_HEAD
                or req.method == METHOD_PUT or req.method == METHOD_DELETE
                or req.method == METHOD_OPTIONS or req.method == METHOD_TRACE):
            c.flags &= ~CONN_RETRYABLE
        return _enter_pipe(core, c)
    # Setup (connect + handshake) gets its own connect_timeout from here.
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    st = _connect(core, c, &svc.endpoints[c.endpoint].addr, svc.endpoints[c.endpoint].addrlen)
    if st == STATUS_OK:
        return _tls_client_start(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st                       # the next endpoint, or 503 (_settle)


cdef int _http_head(Core* core, Conn* c) noexcept nogil:
    """HTTP_HEAD: read a request head into d2u until it parses, then route it. After a
    switch the head (and maybe more requests) may be buffered already."""
    cdef Flow* f = &c.d2u
    cdef uint32_t cap = core.buffer_bytes
    cdef Py_ssize_t r
    cdef int rc
    cdef bint full
    cdef bint buffered = f.buf != NULL and f.tail > f.head
    cdef ReqHead req
    if buffered and f.head > 0:
        memmove(f.buf, f.buf + f.head, f.tail - f.head)
        f.tail -= f.head
        f.head = 0
    while True:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                return STATUS_CLOSE     # cannot happen: the pool has two blocks per slot
        full = f.tail == cap
        if not full and not buffered:
            r = _recv(&c.down, f.buf + f.tail, cap - f.tail)
            if r == STATUS_AGAIN:
                return STATUS_OK
            if r == STATUS_EOF:
                return STATUS_CLOSE     # gone before a whole head: nothing to answer
            if r < 0:
                return STATUS_RESET
            core.counters.outbound.bytes_received += <uint64_t>r
            f.tail += <uint32_t>r
            c.active_ns = core.now_ns
            # A head ends with a LF: no use re-parsing before one arrives (http1.pxd).
            if memchr(f.buf + f.tail - r, c'\n', <size_t>r) == NULL and f.tail < cap:
                continue
        buffered = False
        rc = parse_request_head(f.buf, f.tail, &req, &core.http_limits)
        if rc > 0:
            return _http_route(core, c, &req)
        if rc < 0:
            _http_reply(core, c, request_error_status(rc), NULL, 0)
            return STATUS_CLOSE
        if full or f.tail == cap:
            # The head does not fit one pooled buffer: a limit like any other.
            _http_reply(core, c, 431, NULL, 0)
            return STATUS_CLOSE


cdef int _sniff(Core* core, Conn* c) noexcept nogil:
    """CONN_SNIFFING: an HTTP/1.1 request head goes the HTTP way (to the listener's
    service, whatever its Host); bytes that cannot begin one, or the client's end, go
    as opaque TCP; a valid beginning waits (the scan takes it for TCP at the deadline,
    as it does a client that says nothing)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t cap = core.buffer_bytes
    cdef Py_ssize_t r
    cdef int rc = -1
    cdef ReqHead req
    if f.buf == NULL:
        f.buf = _buf_get(core)
        if f.buf == NULL:
            return STATUS_CLOSE         # cannot happen: the pool has two blocks per slot
    while f.tail < cap and not f.eof:
        r = _recv(&c.down, f.buf + f.tail, cap - f.tail)
        if r == STATUS_AGAIN:
            break
        if r == STATUS_EOF:
            f.eof = True
        elif r < 0:
            return STATUS_RESET
        else:
            core.counters.outbound.bytes_received += <uint64_t>r
            f.tail += <uint32_t>r
    if f.tail == 0 and not f.eof:
        return STATUS_OK
    if f.tail > 0:
        rc = parse_request_head(f.buf, f.tail, &req, &core.http_limits)
    if rc > 0:
        core.counters.sniffed_http += 1
        c.flags |= CONN_HTTP | CONN_FIXED_SERVICE
        c.state = CONN_HTTP_HEAD
        return _http_route(core, c, &req)
    if rc == 0 and not f.eof and f.tail < cap:
        return STATUS_OK
    core.counters.sniffed_tcp += 1
    return _tcp_start(core, c)


cdef int _http_frame(Core* core, Conn* c) noexcept nogil:
    """PIPE: extend the framed part of d2u over what was read, request by request, up
    to a request for another service (then `switching`). STATUS_OK or STATUS_RESET (a
    request that does not parse mid-connection: answers to earlier requests may still
    be coming, so we cannot answer in order; the client sees the connection drop)."""
    cdef Flow* f = &c.d2u
    cdef uint32_t start, avail
    cdef Py_ssize_t n
    cdef int rc, port
    cdef size_t hn
    cdef char host[256]
    cdef HostEntry* e
    cdef ReqHead req
    while not c.switching and f.buf != NULL:
        start = f.head + c.fwd
        avail = f.tail - start
        if c.client_close and c.req_phase == REQ_HEAD:
            # Nothing after a request that said close is a request (RFC 9112 §9.6):
            # what the client sends is dropped, as if it had ended there.
            f.tail = start
            f.eof = True
            return STATUS_OK
        if avail == 0:
            return STATUS_OK
        if c.req_phase == REQ_TUNNEL:
            c.fwd += avail
        elif c.req_phase == REQ_LENGTH:
            n = avail if <int64_t>avail < c.req_left else <Py_ssize_t>c.req_left
            c.fwd += <uint32_t>n
            c.req_left -= n
            if c.req_left == 0:
                c.req_phase = REQ_HEAD
        elif c.req_phase == REQ_CHUNKED:
            n = chunked_advance(&c.chunk, f.buf + start, avail, NULL, NULL)
            if n < 0:
                core.counters.http_bad_request += 1
                return STATUS_RESET
            c.fwd += <uint32_t>n
            if c.chunk.phase == CHUNK_DONE:
                c.req_phase = REQ_HEAD
        else:
            if c.n_pend == ENGINE_HTTP_PIPELINE_MAX:
                return STATUS_OK        # deep enough: the rest waits for answers
            rc = parse_request_head(f.buf + start, avail, &req, &core.http_limits)
            if rc == 0:
                if f.tail >= _d2u_cap(core, c) and f.head == 0 and c.fwd == 0:
                    core.counters.http_bad_request += 1     # a head over a buffer
                    return STATUS_RESET
                if f.eof:
                    f.tail = start      # a partial head, then the end: nothing to send
                return STATUS_OK
            if rc < 0:
                core.counters.http_bad_request += 1
                return STATUS_RESET
            if not (c.flags & (CONN_INBOUND | CONN_FIXED_SERVICE)):
                # Shared outbound listener: each request names its service; another one
                # waits for a switch (inbound: the SNI chose the one local service; a
                # service port's own listener: that service).
                hn = 0
                port = -1
                e = NULL
                if req.authority.len > 0:
                    hn = authority_host(f.buf + start + req.authority.off, req.authority.len,
                                        host, sizeof(host), &port)
                if hn > 0:
                    e = _host_lookup(c.table, host, hn, port)
                if e == NULL or e.service != c.service:
                    c.switching = True
                    return STATUS_OK
            if not (c.flags & CONN_INBOUND):
                core.counters.http_routed += 1
            if _http_framed(core, c, &req, start) == STATUS_AGAIN:
                if f.head == 0:
                    return STATUS_OK    # room comes once the framed bytes are sent
                memmove(f.buf, f.buf + f.head, f.tail - f.head)
                f.tail -= f.head
                f.head = 0
    return STATUS_OK


cdef inline uint32_t _d2u_cap(Core* core, Conn* c) noexcept nogil:
    """How far an HTTP pair's d2u buffer is filled from the client: room is kept for
    the field the engine adds to request heads (Conn.head_reserve)."""
    return core.buffer_bytes - c.head_reserve


cdef int64_t _http_d2u(Core* core, Conn* c, uint64_t* received) noexcept nogil:
    """_flow() for an HTTP client's bytes: read, frame (_http_frame), send only what
    is framed for the current upstream (a request for another service waits in the
    buffer until _pump switches). The amount moved, or STATUS_RESET."""
    cdef Flow* f = &c.d2u
    cdef int64_t progress = 0
    cdef Py_ssize_t r
    cdef uint32_t cap = _d2u_cap(core, c)
    cdef bint truncated
    while not f.eof and not c.switching:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                break
        if f.tail >= cap:
            if f.head == 0:
                break
            c.flags &= ~CONN_RETRYABLE  # the sent bytes go: no retry from here
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
            if f.tail >= cap:
                break                   # added fields fill the room kept for them
        r = _recv(&c.down, f.buf + f.tail, cap - f.tail)
        if r > 0:
            f.tail += <uint32_t>r
            progress += r
            received[0] += <uint64_t>r
        elif r == STATUS_EOF:
            f.eof = True
            progress += 1
        elif r == STATUS_AGAIN:
            break
        else:
            c.flags |= CONN_CLIENT_GONE
            return STATUS_RESET
    if _http_frame(core, c) != STATUS_OK:
        return STATUS_RESET
    while c.fwd > 0:
        r = _send(&c.up, f.buf + f.head, c.fwd)
        if r > 0:
            f.head += <uint32_t>r
            c.fwd -= <uint32_t>r
            progress += r
        elif r == STATUS_AGAIN:
            break
        else:
            return STATUS_RESET
    _invariant(f.head + c.fwd <= f.tail and f.tail <= core.buffer_bytes,
               b"http framing out of the buffer")
    if f.buf != NULL and f.head == f.tail and not (c.flags & CONN_RETRYABLE):
        _buf_put(core, f.buf)
        f.buf = NULL
        f.head = 0
        f.tail = 0
    # A client that ended in the middle of a request body cannot make it whole: its end
    # goes upstream now, so the app sees the request cut short and answers or closes,
    # rather than all three waiting for bytes that will not come. Such an upstream is
    # not pooled. (A head never finished is dropped by _http_frame.)
    truncated = f.eof and (c.req_phase == REQ_LENGTH or c.req_phase == REQ_CHUNKED)
    if truncated:
        c.reusable = False
        c.flags &= ~CONN_RETRYABLE
    # The client's end goes upstream once its requests are answered (or cut short) and
    # the upstream cannot be pooled (_pump pools it otherwise).
    if (not f.shut and c.fwd == 0 and not c.switching and f.eof and f.buf == NULL
            and (c.n_pend == 0 or truncated) and not _http_idle(c)):
        r = _shut(&c.up)
        if r == STATUS_OK:
            f.shut = True
            progress += 1
        elif r != STATUS_AGAIN:
            return STATUS_RESET
    return progress


cdef inline uint32_t _latency_bucket(int64_t ns) noexcept nogil:
    """Log-linear: [0,1) [1,2) [2,3) [3,4) µs, then 4 buckets per power of two."""
    cdef uint64_t us = <uint64_t>(ns // 1000) if ns > 0 else 0
    cdef uint32_t e = 0
    cdef uint32_t idx
    if us < 4:
        return <uint32_t>us
    while (us >> (e + 1)) != 0:
        e += 1                      # e = floor(log2(us)) >= 2
    idx = 4 * (e - 1) + <uint32_t>((us >> (e - 2)) & 3)
    return idx if idx < ENGINE_LATENCY_BUCKETS else ENGINE_LATENCY_BUCKETS - 1


# --- request figures per (direction, service, peer) ----------------------------------------

cdef uint16_t _principal_of(Core* core, const char* peer, uint32_t n) noexcept nogil:
    """The Core.principals index of a verified peer ID, added when new; 0 when the
    table is full. Called once per handshake, never per request."""
    cdef uint32_t i
    cdef uint32_t have = core.n_principals
    cdef Name* slot
    for i in range(1, have):
        if core.principals[i].length == n and memcmp(core.principals[i].data, peer, n) == 0:
            return <uint16_t>i
    if have >= ENGINE_PRINCIPALS:
        return 0
    slot = &core.principals[have]
    slot.data = <char*>malloc(n + 1)
    if slot.data == NULL:
        return 0
    memcpy(slot.data, peer, n)
    slot.data[n] = 0
    slot.length = n
    mn_publish_u32(&core.n_principals, have + 1)
    return <uint16_t>have


cdef StatRecord* _stat_record(Core* core, Conn* c) noexcept nogil:
    """The record the pair's answers count in now: looked up (or made) once per
    service or peer change, then cached in c.stat. NULL when the records are used up."""
    cdef const Name* service = NULL
    cdef bint inbound = (c.flags & CONN_INBOUND) != 0
    cdef uint32_t i, n
    cdef StatRecord* r
    if c.stat >= 0:
        return &core.stats[c.stat]
    if inbound:
        if c.flags & CONN_ROUTED:
            service = &c.table.routes[c.route].service
    elif c.flags & CONN_SERVICE_KNOWN:
        service = &c.table.services[c.service].name
    n = service.length if service != NULL else 0
    for i in range(core.n_stats):
        r = &core.stats[i]
        if (r.inbound == inbound and r.principal == c.peer_principal
                and r.local == c.local_principal and r.service.length == n
                and (n == 0 or memcmp(r.service.data, service.data, n) == 0)):
            c.stat = <int32_t>i
            return r
    if core.n_stats >= ENGINE_STAT_RECORDS:
        return NULL
    r = &core.stats[core.n_stats]
    if n > 0:
        r.service.data = <char*>malloc(n + 1)
        if r.service.data == NULL:
            return NULL
        memcpy(r.service.data, service.data, n + 1)
        r.service.length = n
    r.inbound = inbound
    r.principal = c.peer_principal
    r.local = c.local_principal
    c.stat = <int32_t>core.n_stats
    mn_publish_u32(&core.n_stats, core.n_stats + 1)
    return r


cdef void _count_answer(Core* core, Conn* c, int status, int64_t latency_ns) noexcept nogil:
    """One answer to a client: by code (and latency, unless < 0: the engine's own
    answers have none worth a histogram) in the pair's record; outbound answers also in
    the engine-wide class and latency counters."""
    cdef StatRecord* r = _stat_record(core, c)
    cdef uint32_t cls = <uint32_t>status // 100
    if not (c.flags & CONN_INBOUND):
        if 1 <= cls <= 5:
            core.counters.http_responses[cls - 1] += 1
        if latency_ns >= 0:
            core.counters.http_latency_us[_latency_bucket(latency_ns)] += 1
    if r == NULL:
        core.counters.stats_overflow += 1
        return
    r.codes[status - 100 if 100 <= status < 600 else ENGINE_STATUS_SLOTS - 1] += 1
    if latency_ns >= 0:
        r.latency_us[_latency_bucket(latency_ns)] += 1


cdef void _http_answered(Core* core, Conn* c) noexcept nogil:
    """The oldest pending request got its final response (framed to its end)."""
    _invariant(c.n_pend > 0, b"a response without a request")
    c.flags |= CONN_ANSWERED
    # An answer nobody received counts as code 0 (Envoy's "downstream disconnected").
    _count_answer(core, c, c.resp_status if not c.flags & CONN_DRAINING
                  or c.flags & CONN_DRAIN_HEAD_SEEN else 0,
                  core.now_ns - c.pend_start_ns[c.pend_first])
    c.flags &= ~CONN_DRAIN_HEAD_SEEN
    c.pend_first = (c.pend_first + 1) % ENGINE_HTTP_PIPELINE_MAX
    c.n_pend -= 1


cdef inline uint32_t _u2d_cap(Core* core, Conn* c) noexcept nogil:
    """How far an HTTP client's u2d buffer is filled from the upstream: room is kept
    for the `Connection: close` its last answer may need."""
    return core.buffer_bytes - (CLOSE_LINE_BYTES if c.client_close else 0)


cdef int _http_rframe(Core* core, Conn* c) noexcept nogil:
    """Extend the framed part of u2d over what the upstream sent, response by
    response. STATUS_OK, STATUS_RESET, or STATUS_CLOSE after answering 502."""
    cdef Flow* f = &c.u2d
    cdef uint32_t start, avail
    cdef Py_ssize_t n
    cdef int rc, added
    cdef RespHead resp
    while f.buf != NULL:
        start = f.head + c.resp_fwd
        avail = f.tail - start
        if avail == 0:
            break
        if c.resp_phase == RESP_TUNNEL or c.resp_phase == RESP_CLOSE:
            c.resp_fwd += avail
        elif c.resp_phase == RESP_LENGTH:
            n = avail if <int64_t>avail < c.resp_left else <Py_ssize_t>c.resp_left
            c.resp_fwd += <uint32_t>n
            c.resp_left -= n
            if c.resp_left == 0:
                _http_answered(core, c)
                c.resp_phase = RESP_HEAD
        elif c.resp_phase == RESP_CHUNKED:
            n = chunked_advance(&c.resp_chunk, f.buf + start, avail, NULL, NULL)
            if n < 0:
                core.counters.http_bad_response += 1
                return STATUS_RESET
            c.resp_fwd += <uint32_t>n
            if c.resp_chunk.phase == CHUNK_DONE:
                _http_answered(core, c)
                c.resp_phase = RESP_HEAD
        else:
            if c.n_pend == 0:
                if c.req_phase == REQ_TUNNEL:
                    c.resp_phase = RESP_TUNNEL      # requests went opaque: so do answers
                    continue
                core.counters.http_bad_response += 1    # bytes nobody asked for
                return STATUS_RESET
            rc = parse_response_head(f.buf + start, avail, &resp, &core.http_limits,
                                     <Method>c.pend_method[c.pend_first])
            if rc == 0:
                if f.tail >= _u2d_cap(core, c) and f.head == 0 and c.resp_fwd == 0:
                    rc = -1                 # a head over a buffer: refused like a bad one
                else:
                    break
            if rc < 0:
                core.counters.http_bad_response += 1
                if c.resp_fwd == 0:
                    _http_reply(core, c, 502, b"bad response from upstream\n", -1)
                    return STATUS_CLOSE
                return STATUS_RESET
            c.resp_status = resp.status
            if c.client_close and c.n_pend == 1 and resp.status >= 200:
                # The answer to the request that said close: the client learns that its
                # connection ends here (its upstream may well stay pooled).
                if f.head > 0:
                    memmove(f.buf, f.buf + f.head, f.tail - f.head)
                    f.tail -= f.head
                    start -= f.head
                    f.head = 0
                added = make_close(f.buf + start, f.tail - start,
                                   core.buffer_bytes - start, &resp)
                if added < 0:
                    return STATUS_RESET     # cannot happen: _u2d_cap keeps the room
                f.tail += <uint32_t>added
                rc += added
            c.resp_fwd += <uint32_t>rc
            if resp.status < 200 and resp.status != 101:
                continue                    # interim (100 Continue): the request waits
            if not resp.keep_alive:
                c.reusable = False
            if resp.body == BODY_LENGTH:
                c.resp_phase = RESP_LENGTH
                c.resp_left = resp.content_length
            elif resp.body == BODY_CHUNKED:
                c.resp_phase = RESP_CHUNKED
                chunk_init(&c.resp_chunk, &core.http_limits)
            else:
                # No body, or one until close / a tunnel: answered as of its head.
                _http_answered(core, c)
                if resp.body == BODY_UNTIL_CLOSE:
                    c.resp_phase = RESP_CLOSE
                elif resp.body == BODY_TUNNEL:
                    c.resp_phase = RESP_TUNNEL
    if f.eof and c.resp_fwd == 0:
        if c.resp_phase == RESP_LENGTH or c.resp_phase == RESP_CHUNKED:
            core.counters.http_bad_response += 1    # ended mid-body: do not pass as whole
            return STATUS_RESET
        if c.resp_phase == RESP_HEAD and (c.n_pend > 0 or f.head < f.tail):
            if c.flags & CONN_INBOUND and c.flags & CONN_ANSWERED:
                # The app closed a connection it had kept alive as a request arrived
                # (the keep-alive race): end the pair without an answer, so the
                # caller's node may send an idempotent request again.
                return STATUS_CLOSE
            if c.flags & CONN_ANSWERED and not c.reusable:
                # An answer said close and the upstream did: the requests behind it
                # get no answer (none may follow a close), counted as cut off.
                return STATUS_CLOSE
            core.counters.http_bad_response += 1
            _http_reply(core, c, 502, b"upstream closed before responding\n", -1)
            return STATUS_CLOSE
    return STATUS_OK


cdef int64_t _http_u2d(Core* core, Conn* c, uint64_t* sent) noexcept nogil:
    """_flow() for an upstream's answers to an HTTP client: read, frame
    (_http_rframe), send only whole-framed bytes; the upstream's end reaches the client
    unless it was ended to switch services. The amount moved, or a status."""
    cdef Flow* f = &c.u2d
    cdef int64_t progress = 0
    cdef Py_ssize_t r
    cdef int st
    cdef uint32_t cap = _u2d_cap(core, c)
    while not f.eof:
        if f.buf == NULL:
            f.buf = _buf_get(core)
            if f.buf == NULL:
                break
        if f.tail >= cap:
            if f.head == 0:
                break
            memmove(f.buf, f.buf + f.head, f.tail - f.head)
            f.tail -= f.head
            f.head = 0
            if f.tail >= cap:
                break               # filled before the room for `close` was kept
        r = _recv(&c.up, f.buf + f.tail, cap - f.tail)
        if r > 0:
            c.flags &= ~CONN_RETRYABLE  # an answer started: it is the client's now
            f.tail += <uint32_t>r
            progress += r
        elif r == STATUS_AGAIN:
            break
        elif c.flags & CONN_RETRYABLE:
            return STATUS_RETRY
        elif r == STATUS_EOF:
            f.eof = True
            progress += 1
        else:
            if c.resp_phase == RESP_HEAD and c.n_pend > 0 and c.resp_fwd == 0 and f.buf != NULL and f.head == f.tail:
                core.counters.http_bad_response += 1
                _http_reply(core, c, 502, b"upstream connection failed\n", -1)
                return STATUS_CLOSE
            return STATUS_RESET
    st = _http_rframe(core, c)
    if st != STATUS_OK:
        return st
    while c.resp_fwd > 0:
        r = _send(&c.down, f.buf + f.head, c.resp_fwd)
        if r > 0:
            f.head += <uint32_t>r
            c.resp_fwd -= <uint32_t>r
            progress += r
            sent[0] += <uint64_t>r
        elif r == STATUS_AGAIN:
            break
        else:
            c.flags |= CONN_CLIENT_GONE
            return STATUS_RESET
    _invariant(f.head + c.resp_fwd <= f.tail and f.tail <= cap, b"http response framing out of the buffer")
    if f.buf != NULL and f.head == f.tail:
        _buf_put(core, f.buf)
        f.buf = NULL
        f.head = 0
        f.tail = 0
    if (f.eof and f.buf == NULL and not f.shut and not c.switching
            and c.resp_phase != RESP_LENGTH and c.resp_phase != RESP_CHUNKED):
        # (An answer cut short is not passed on as a clean end: _http_rframe resets.)
        r = _shut(&c.down)
        if r == STATUS_OK:
            f.shut = True
            progress += 1
        elif r != STATUS_AGAIN:
            return STATUS_RESET
    return progress


# --- HTTP upstream pool ------------------------------------------------------------------------

cdef void _idle_close(IdleUp* u) noexcept nogil:
    # Best effort close_notify, so the other node sees a clean end, not a truncation.
    openssl.ERR_clear_error()
    openssl.SSL_shutdown(u.ssl)
    openssl.ERR_clear_error()
    openssl.SSL_free(u.ssl)
    close(u.fd)
    u.ssl = NULL
    u.fd = -1


cdef inline bint _http_idle(Conn* c) noexcept nogil:
    """Is the upstream between messages, with nothing owed either way, and willing to
    carry another request (no Connection: close, no tunnel, not ended)?"""
    return (c.state == CONN_PIPE and c.up.ssl != NULL and c.reusable and c.n_pend == 0
            and c.fwd == 0 and c.req_phase == REQ_HEAD and c.resp_phase == RESP_HEAD
            and c.u2d.buf == NULL and not c.u2d.eof and not c.d2u.shut)


cdef bint _pool_put(Core* core, Conn* c) noexcept nogil:
    """Hand the pair's upstream to its endpoint's pool; False (nothing changed) when
    the pool is full."""
    cdef Endpoint* ep = &c.table.services[c.service].endpoints[c.endpoint]
    cdef IdleUp* u
    if ep.n_idle >= ENGINE_POOL_PER_ENDPOINT:
        return False
    # Out of the epoll set: its events must not reach this slot's next user.
    net.epoll_ctl(core.epfd, net.EPOLL_CTL_DEL, c.up.fd, NULL)
    u = &ep.idle[ep.n_idle]
    ep.n_idle += 1
    u.fd = c.up.fd
    u.ssl = c.up.ssl
    u.since_ns = core.now_ns
    u.principal = c.peer_principal
    u.client_ctx = c.client_ctx
    c.up.fd = -1
    c.up.ssl = NULL
    core.counters.http_upstream_pooled += 1
    return True


cdef bint _pool_take(Core* core, Conn* c, Endpoint* ep) noexcept nogil:
    """Give the pair the newest live idle upstream of `ep` opened as the pair's own
    identity (c.client_ctx); False when there is none. A pooled one the other node
    closed (or that sat longer than idle_timeout_s) is closed here: it is only ever
    looked at when a pair of its identity wants one."""
    cdef IdleUp u
    cdef char probe
    cdef int r, err
    cdef uint32_t i = ep.n_idle
    while i > 0:
        i -= 1
        if ep.idle[i].client_ctx != c.client_ctx:
            continue
        u = ep.idle[i]
        # Out of the pool, newer entries moving down: the order stays newest last.
        memmove(&ep.idle[i], &ep.idle[i + 1], (ep.n_idle - i - 1) * sizeof(IdleUp))
        ep.n_idle -= 1
        # Half the idle timeout: the other node (same defaults) closes an idle
        # connection at its full timeout, and one closed just as we write our request
        # would cost the client a 502.
        if core.now_ns - u.since_ns < core.idle_timeout_ns // 2:
            openssl.ERR_clear_error()
            # Also reads a late session ticket; any application byte is a protocol error.
            r = openssl.SSL_read(u.ssl, &probe, 1)
            err = openssl.SSL_get_error(u.ssl, r) if r <= 0 else openssl.SSL_ERROR_SSL
            openssl.ERR_clear_error()
            if err == openssl.SSL_ERROR_WANT_READ:
                c.up.fd = u.fd
                c.up.ssl = u.ssl
                # The probe read it empty; what comes later brings an EPOLLIN (the
                # registration below reports one already there).
                c.up.readable = False
                c.up.hup = False
                c.peer_principal = u.principal
                c.stat = -1
                if _watch(core, u.fd, _tag(_TAG_UP, c.index, c.gen)) == 0:
                    return True
                c.up.fd = -1
                c.up.ssl = NULL
        core.counters.http_upstream_stale += 1
        _idle_close(&u)
    return False


cdef int _http_retry(Core* core, Conn* c) noexcept nogil:
    """A pooled upstream failed before a byte of answer: route again (_http_reroute)."""
    core.counters.http_upstream_retried += 1
    return _http_reroute(core, c)


cdef int _http_reroute(Core* core, Conn* c) noexcept nogil:
    """Drop the upstream and route the client's requests, still whole at d2u offset 0
    (none of their bytes went to it, or it failed before a byte of answer), again:
    another endpoint, pooled or new."""
    cdef net.epoll_event ev
    # The head was edited for the first hop (hop-by-hop fields gone, an absolute-form
    # target made origin-form): routing it by its Host again could pick another service.
    # The service stays; so does the first request's start, for its latency.
    c.reroute_start_ns = c.pend_start_ns[c.pend_first] if c.n_pend > 0 else core.now_ns
    c.flags |= CONN_REROUTED
    c.flags &= ~(CONN_RETRYABLE | CONN_TICKET_WAIT | CONN_OFFERED_SESSION | CONN_SETTING_UP)
    _side_close(&c.up, False)
    c.up.readable = True
    c.up.hup = False
    if c.u2d.buf != NULL:
        _buf_put(core, c.u2d.buf)
    memset(&c.u2d, 0, sizeof(Flow))
    c.d2u.head = 0
    c.d2u.shut = False
    c.switching = False
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.n_pend = 0
    c.fwd = 0
    c.req_phase = REQ_HEAD
    c.reusable = True
    c.gen += 1
    ev.events = _CONN_EVENTS
    ev.data.u64 = _tag(_TAG_DOWN, c.index, c.gen)
    if net.epoll_ctl(core.epfd, net.EPOLL_CTL_MOD, c.down.fd, &ev) != 0:
        return STATUS_RESET
    c.state = CONN_HTTP_HEAD
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    return _http_head(core, c)


cdef int _http_switch(Core* core, Conn* c) noexcept nogil:
    """The upstream ended after answering every request it got: drop it and route the
    client's next request (buffered in d2u) afresh, on the same client connection."""
    cdef net.epoll_event ev
    if not (_http_idle(c) and _pool_put(core, c)):
        _side_close(&c.up, False)
    memset(&c.u2d, 0, sizeof(Flow))
    c.d2u.shut = False
    c.switching = False
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.n_pend = 0
    c.fwd = 0
    c.req_phase = REQ_HEAD
    c.reusable = True
    c.setup_tries = 0
    c.flags &= ~(CONN_TICKET_WAIT | CONN_OFFERED_SESSION)
    free(c.peer_id)
    c.peer_id = NULL
    c.peer_id_length = 0
    # New generation: events still queued for the old upstream socket are not the new
    # one's. The client socket keeps its registration under the new tag.
    c.gen += 1
    ev.events = _CONN_EVENTS
    ev.data.u64 = _tag(_TAG_DOWN, c.index, c.gen)
    if net.epoll_ctl(core.epfd, net.EPOLL_CTL_MOD, c.down.fd, &ev) != 0:
        return STATUS_RESET
    c.state = CONN_HTTP_HEAD
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    return _http_head(core, c)


cdef uint16_t _interned(Core* core, int32_t* cache, const Name* identity) noexcept nogil:
    """The Core.principals index of a table's identity, found once per table entry."""
    if cache[0] < 0:
        cache[0] = (_principal_of(core, identity.data, identity.length)
                    if identity.length > 0 else 0)
    return <uint16_t>cache[0]


cdef bint _same_ip(const net.sockaddr_storage* a, const net.sockaddr_storage* b) noexcept nogil:
    if a.ss_family != b.ss_family:
        return False
    if a.ss_family == net.AF_INET:
        return memcmp(&(<net.sockaddr_in*>a).sin_addr, &(<net.sockaddr_in*>b).sin_addr, 4) == 0
    return memcmp(&(<net.sockaddr_in6*>a).sin6_addr, &(<net.sockaddr_in6*>b).sin6_addr, 16) == 0


cdef int _outbound_start(Core* core, Conn* c, uint32_t listener,
                         const net.sockaddr_storage* peer) noexcept nogil:
    cdef OutboundListener* l = &c.table.listeners[listener]
    cdef Service* svc
    cdef uint32_t i
    cdef int st
    c.client_ctx = l.client_ctx
    c.local_principal = _interned(core, &l.principal, &l.identity)
    if l.http:
        for i in range(c.table.n_sources):
            if _same_ip(&c.table.sources[i].addr, peer):
                c.client_ctx = c.table.sources[i].client_ctx
                c.local_principal = _interned(core, &c.table.sources[i].principal,
                                              &c.table.sources[i].identity)
                break
        c.flags |= CONN_HTTP
        c.state = CONN_HTTP_HEAD
        return _http_head(core, c)
    c.service = l.service
    if l.sniff:
        c.state = CONN_SNIFFING
        c.deadline_ns = core.now_ns + ENGINE_SNIFF_TIMEOUT_MS * 1000000
        if core.next_scan_ns > c.deadline_ns:
            core.next_scan_ns = c.deadline_ns   # the decision is due then, not a scan later
        return _sniff(core, c)
    return _tcp_start(core, c)


cdef int _tcp_start(Core* core, Conn* c) noexcept nogil:
    """Opaque TCP to c.service: connect to its next endpoint (the mTLS hop follows);
    bytes the client already sent wait in d2u."""
    cdef Service* svc = &c.table.services[c.service]
    cdef int st
    if svc.n_endpoints == 0:
        core.counters.no_endpoint += 1
        return STATUS_CLOSE
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    c.endpoint = _pick_endpoint(core, svc)
    st = _connect(core, c, &svc.endpoints[c.endpoint].addr, svc.endpoints[c.endpoint].addrlen)
    if st == STATUS_OK:
        return _tls_client_start(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


# --- endpoint failover --------------------------------------------------------------------------

cdef uint32_t _pick_endpoint(Core* core, Service* svc) noexcept nogil:
    """The service's next endpoint in round robin, passing over those down after a
    failed setup (ENGINE_EJECT_*); when all are down, the next in turn all the same
    (a try beats a certain 503, as Envoy's panic threshold reasons)."""
    cdef uint32_t n = svc.n_endpoints
    cdef uint32_t start = svc.rr_next % n
    cdef uint32_t i, k = start
    for i in range(n):
        k = (start + i) % n
        if svc.endpoints[k].down_until_ns <= core.now_ns:
            break
    else:
        k = start
    svc.rr_next = (k + 1) % n
    return k


cdef Endpoint* _current_endpoint(Core* core, Conn* c) noexcept nogil:
    """c's endpoint as the current table has it, when c started on an older table
    (same destination, same address); NULL when it has none or c's table is current."""
    cdef Table* t = core.table
    cdef Service* a = &c.table.services[c.service]
    cdef int64_t k
    if t == NULL or t == c.table:
        return NULL
    k = _service_in(t, a, c.service)
    if k < 0:
        return NULL
    return _endpoint_in(&t.services[k], &a.endpoints[c.endpoint])


cdef void _pass_over(Core* core, Endpoint* ep) noexcept nogil:
    """Pass `ep` over for a while, longer with each failure in a row. Failures of
    setups begun before it was passed over (in flight at once, or tried while every
    endpoint was down) neither lengthen the while nor count."""
    cdef int64_t ms = ENGINE_EJECT_BASE_MS
    cdef uint32_t k
    if ep.down_until_ns > core.now_ns:
        return
    ep.fails += 1
    for k in range(1, ep.fails):
        ms *= 2
        if ms >= ENGINE_EJECT_MAX_MS:
            ms = ENGINE_EJECT_MAX_MS
            break
    ep.down_until_ns = core.now_ns + ms * 1000000
    core.counters.endpoint_ejections += 1


cdef void _endpoint_failed(Core* core, Conn* c) noexcept nogil:
    """A setup failed on c's endpoint: pass it over, in c's table and in the current
    one (new connections use that; c may have started before a config push)."""
    cdef Endpoint* current = _current_endpoint(core, c)
    _pass_over(core, &c.table.services[c.service].endpoints[c.endpoint])
    if current != NULL:
        _pass_over(core, current)


cdef void _endpoint_ok(Core* core, Conn* c) noexcept nogil:
    """A setup succeeded on c's endpoint: its failure streak ends, in both tables."""
    cdef Endpoint* ep = &c.table.services[c.service].endpoints[c.endpoint]
    ep.fails = 0
    ep.down_until_ns = 0
    if c.table != core.table:
        ep = _current_endpoint(core, c)
        if ep != NULL:
            ep.fails = 0
            ep.down_until_ns = 0


cdef int _setup_failed(Core* core, Conn* c) noexcept nogil:
    """An outbound upstream's setup (connect, handshake, peer ID) failed: mark its
    endpoint, then set the pair up on the service's next endpoint while tries are left
    (nothing of the client's went upstream yet, so any request may go elsewhere).
    STATUS_CLOSE once none is left: _settle answers 503 and closes."""
    cdef Service* svc
    cdef uint32_t tries
    cdef int status = STATUS_CLOSE
    while status == STATUS_CLOSE and c.flags & CONN_SETTING_UP:
        _endpoint_failed(core, c)
        c.flags &= ~CONN_SETTING_UP
        svc = &c.table.services[c.service]
        tries = ENGINE_SETUP_TRIES if ENGINE_SETUP_TRIES < svc.n_endpoints else svc.n_endpoints
        c.setup_tries += 1
        if c.setup_tries >= tries:
            return STATUS_CLOSE
        core.counters.upstream_failovers += 1
        status = _fail_over(core, c)
    return status


cdef int _fail_over(Core* core, Conn* c) noexcept nogil:
    cdef net.epoll_event ev
    if c.flags & CONN_HTTP:
        return _http_reroute(core, c)
    c.flags &= ~(CONN_TICKET_WAIT | CONN_OFFERED_SESSION)
    _side_close(&c.up, False)
    c.up.readable = True
    c.up.hup = False
    # Events of the closed socket still in this batch must not reach the next one.
    c.gen += 1
    ev.events = _CONN_EVENTS
    ev.data.u64 = _tag(_TAG_DOWN, c.index, c.gen)
    if net.epoll_ctl(core.epfd, net.EPOLL_CTL_MOD, c.down.fd, &ev) != 0:
        return STATUS_RESET
    return _tcp_start(core, c)


# --- the loop ---------------------------------------------------------------------------------

cdef void _accept(Core* core, uint32_t which) noexcept nogil:
    cdef Table* t = core.table
    cdef bint inbound = which == _INBOUND_LISTENER
    cdef SideCounters* sc = &core.counters.inbound if inbound else &core.counters.outbound
    cdef int lfd, fd, e, n
    cdef Conn* c
    cdef net.sockaddr_storage peer
    cdef net.socklen_t peer_len
    if t == NULL:
        return
    if inbound:
        lfd = t.inbound_fd
    elif which < t.n_listeners:
        lfd = t.listeners[which].fd
    else:
        return
    if lfd < 0:
        return
    for n in range(ENGINE_ACCEPT_BATCH):
        peer_len = sizeof(peer)
        peer.ss_family = 0
        fd = net.accept4(lfd, <net.sockaddr*>&peer, &peer_len, net.SOCK_NONBLOCK | net.SOCK_CLOEXEC)
        if fd < 0:
            e = errno
            if e == EAGAIN:
                return
            if e == EINTR or e == ECONNABORTED:
                continue
            sc.accept_failures += 1
            if (e == EMFILE or e == ENFILE) and core.spare_fd >= 0:
                # Out of descriptors: level-triggered epoll would report this backlog
                # forever. Spend the spare fd to take one connection off and close it
                # (the libuv / nginx trick), then take the spare back.
                close(core.spare_fd)
                fd = net.accept4(lfd, NULL, NULL, net.SOCK_CLOEXEC)
                if fd >= 0:
                    close(fd)
                core.spare_fd = c_open(b"/dev/null", O_RDONLY | O_CLOEXEC)
            return
        c = _conn_new(core, t, CONN_INBOUND if inbound else 0)
        if c == NULL:
            sc.rejected_limit += 1
            close(fd)
            continue
        c.down.fd = fd                  # TCP_NODELAY: from the listener (_check_fd)
        if _watch(core, fd, _tag(_TAG_DOWN, c.index, c.gen)) != 0:
            sc.accept_failures += 1
            _conn_close(core, c, False)
            continue
        if inbound:
            _settle(core, c, _inbound_start(core, c))
        else:
            _settle(core, c, _outbound_start(core, c, which, &peer))


cdef int _conn_event(Core* core, Conn* c, uint32_t kind, uint32_t events) noexcept nogil:
    cdef Side* side = &c.down if kind == _TAG_DOWN else &c.up
    if events & (net.EPOLLIN | net.EPOLLRDHUP | net.EPOLLHUP | net.EPOLLERR):
        side.readable = True
    if events & (net.EPOLLRDHUP | net.EPOLLHUP | net.EPOLLERR):
        side.hup = True
    if c.state == CONN_PIPE:
        return _pump(core, c)
    if c.state == CONN_HTTP_HEAD:
        return _http_head(core, c) if kind == _TAG_DOWN else STATUS_OK
    if c.state == CONN_SNIFFING:
        return _sniff(core, c) if kind == _TAG_DOWN else STATUS_OK
    if c.state == CONN_HANDSHAKING:
        if kind == <uint32_t>(_TAG_DOWN if c.flags & CONN_INBOUND else _TAG_UP):
            return _handshake(core, c)
        return STATUS_OK
    if c.state == CONN_CONNECTING and kind == _TAG_UP:
        return _connect_done(core, c, events)
    return STATUS_OK


cdef void _dispatch(Core* core, uint64_t tag, uint32_t events) noexcept nogil:
    cdef uint32_t kind = <uint32_t>(tag & 3)
    cdef uint32_t index = <uint32_t>((tag >> 2) & _TAG_INDEX_MASK)
    cdef uint32_t gen = <uint32_t>(tag >> 32)
    cdef uint64_t drained
    cdef Conn* c
    if kind == _TAG_WAKE:
        read(core.wakefd, &drained, sizeof(drained))
        core.woken = True
        return
    if kind == _TAG_LISTENER:
        _accept(core, index)
        return
    if index >= core.max_conns:
        return
    c = &core.conns[index]
    # A slot closed earlier in this batch (and maybe reused) is not this event's.
    if c.gen != gen or c.state == CONN_FREE:
        return
    _settle(core, c, _conn_event(core, c, kind, events))


cdef void _serve_ready(Core* core) noexcept nogil:
    cdef uint32_t* serving = core.ready_next
    cdef uint32_t n = core.n_ready_next
    cdef uint32_t i
    cdef Conn* c
    core.ready_next = core.ready
    core.n_ready_next = 0
    core.ready = serving
    core.n_ready = n
    for i in range(n):
        c = &core.conns[serving[i]]
        c.flags &= ~CONN_IN_READY
        if c.state == CONN_PIPE:
            _settle(core, c, _pump(core, c))
    core.n_ready = 0


cdef void _scan(Core* core) noexcept nogil:
    """Close pairs whose setup outlived connect_timeout or that idled past idle_timeout."""
    cdef uint32_t i
    cdef Conn* c
    cdef SideCounters* sc
    cdef int64_t now = core.now_ns
    for i in range(core.n_slots):
        c = &core.conns[i]
        if c.state == CONN_FREE:
            continue
        sc = _counters_of(core, c)
        if c.state == CONN_PIPE:
            if c.flags & CONN_DRAINING and now >= c.deadline_ns:
                sc.idle_timeouts += 1       # answers nobody waits for: not for long
                _conn_close(core, c, True)
            elif now - c.active_ns >= core.idle_timeout_ns:
                sc.idle_timeouts += 1
                _conn_close(core, c, False)
        elif c.state == CONN_SNIFFING:
            if now >= c.deadline_ns:        # silent, or no whole head in time: TCP
                core.counters.sniffed_tcp += 1
                _settle(core, c, _tcp_start(core, c))
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
                continue
            if c.flags & CONN_HTTP and c.state != CONN_HTTP_HEAD:
                _http_reply(core, c, 503, b"upstream unavailable\n", -1)
            _conn_close(core, c, False)


cdef void _wind_down(Core* core) noexcept nogil:
    """After the loop: close every pair, leave the listeners, drop the tables."""
    cdef uint32_t i
    cdef Table* pending
    for i in range(core.n_slots):
        if core.conns[i].state != CONN_FREE:
            _conn_close(core, &core.conns[i], False)
    core.n_ready = 0
    core.n_ready_next = 0
    if core.table != NULL:
        _listeners_unwatch(core, core.table)
        _table_release(core, core.table)
        core.table = NULL
    net.pthread_mutex_lock(&core.lock)
    pending = core.pending
    core.pending = NULL
    net.pthread_mutex_unlock(&core.lock)
    _table_free(pending)
    _invariant(core.counters.buffers_in_use == 0 and core.n_free_bufs == core.n_bufs,
               b"buffers still out after every connection closed")
    _invariant(core.counters.tables_live == 0, b"a table outlived the loop")
    _invariant(core.counters.outbound.connections_active == 0
               and core.counters.inbound.connections_active == 0,
               b"connections still counted active after the loop")


cdef int _loop(Core* core) noexcept nogil:
    cdef net.epoll_event events[ENGINE_EPOLL_EVENTS]
    cdef int n, i, timeout_ms
    cdef int status = STATUS_OK
    cdef int64_t busy
    cdef Table* pending
    cdef bint stop
    core.now_ns = _now_ns()
    core.next_scan_ns = core.now_ns + ENGINE_SCAN_INTERVAL_MS * 1000000
    core.woken = True                   # look at pending/stop before the first wait
    while True:
        if core.woken:
            core.woken = False
            net.pthread_mutex_lock(&core.lock)
            pending = core.pending
            core.pending = NULL
            stop = core.stop_requested
            net.pthread_mutex_unlock(&core.lock)
            if pending != NULL:
                _swap(core, pending)
            if stop:
                break
        if core.n_ready_next > 0:
            timeout_ms = 0
        else:
            timeout_ms = <int>((core.next_scan_ns - core.now_ns + 999999) // 1000000)
            if timeout_ms < 0:
                timeout_ms = 0
        n = net.epoll_wait(core.epfd, events, ENGINE_EPOLL_EVENTS, timeout_ms)
        if n < 0:
            if errno != EINTR:
                core.saved_errno = errno
                status = STATUS_ESYS
                break
            n = 0
        core.now_ns = _now_ns()
        for i in range(n):
            _dispatch(core, events[i].data.u64, events[i].events)
        if core.n_ready_next > 0:
            _serve_ready(core)
        if core.now_ns >= core.next_scan_ns:
            _scan(core)
            core.next_scan_ns = core.now_ns + ENGINE_SCAN_INTERVAL_MS * 1000000
        busy = _now_ns() - core.now_ns
        core.counters.loop_busy_us[_latency_bucket(busy)] += 1
        if busy > <int64_t>core.counters.loop_busy_max_ns:
            core.counters.loop_busy_max_ns = <uint64_t>busy
    _wind_down(core)
    return status


cdef void _core_free(Core* core) noexcept nogil:
    if core == NULL:
        return
    _table_free(core.pending)
    if core.table != NULL:              # only if the loop never wound down
        _table_free(core.table)
    if core.epfd >= 0:
        close(core.epfd)
    if core.wakefd >= 0:
        close(core.wakefd)
    if core.spare_fd >= 0:
        close(core.spare_fd)
    net.pthread_mutex_destroy(&core.lock)
    cdef uint32_t i
    if core.stats != NULL:
        for i in range(core.n_stats):
            _name_free(&core.stats[i].service)
        free(core.stats)
    for i in range(core.n_principals):
        _name_free(&core.principals[i])
    free(core.conns)
    free(core.ready)
    free(core.ready_next)
    free(core.pool)
    free(core.free_bufs)
    free(core)


# --- Python boundary ---------------------------------------------------------------------------

cdef int _raise_errno(str what) except -1:
    cdef int e = errno
    raise OSError(e, "%s: %s" % (what, os.strerror(e)))


_STATUS_TEXT = {
    STATUS_AGAIN: "would block",
    STATUS_EOF: "end of stream",
    STATUS_CLOSE: "closed",
    STATUS_RESET: "reset",
}


cdef class Engine:
    """One worker's data plane: an epoll loop over connection pairs, run by one thread.

    `max_connections`: connection pairs at once (each accepted connection and the one
    the engine opens for it); accepts beyond it are closed and counted. `buffer_bytes`:
    the size of a pooled buffer; a pair holds at most one per direction. Timeouts are
    seconds: `connect_timeout_s` bounds a pair's setup (TCP connect and TLS handshake)
    from its accept, `idle_timeout_s` closes a pair in which no byte moved that long.
    `drain_max_bytes`: an HTTP client that leaves mid-answer leaves its upstream to read
    the rest and be pooled when no more than this is owed (else the upstream is closed).

    Thread use: run() on a thread of its own (it returns after stop()); install(),
    stop(), stats() and `generation` from any other thread.
    """

    def __cinit__(self, int max_connections=4096, int buffer_bytes=16384,
                  double connect_timeout_s=5.0, double idle_timeout_s=300.0,
                  long long drain_max_bytes=ENGINE_DRAIN_MAX_BYTES):
        cdef Core* core
        cdef uint32_t i
        cdef size_t n_bufs
        cdef net.epoll_event ev
        self.core = NULL
        self.state = ENGINE_NEW
        self.installs = 0
        if not 1 <= max_connections <= ENGINE_MAX_CONNECTIONS:
            raise ValueError("max_connections must be 1..%d, not %d"
                             % (ENGINE_MAX_CONNECTIONS, max_connections))
        if not ENGINE_MIN_BUFFER_BYTES <= buffer_bytes <= ENGINE_MAX_BUFFER_BYTES:
            raise ValueError("buffer_bytes must be %d..%d, not %d"
                             % (ENGINE_MIN_BUFFER_BYTES, ENGINE_MAX_BUFFER_BYTES, buffer_bytes))
        _check_timeouts(connect_timeout_s, idle_timeout_s)
        if drain_max_bytes < 0:
            raise ValueError("drain_max_bytes must be at least 0, not %d" % drain_max_bytes)

        core = <Core*>calloc(1, sizeof(Core))
        if core == NULL:
            raise MemoryError()
        core.epfd = -1
        core.wakefd = -1
        core.spare_fd = -1
        core.free_head = -1
        if net.pthread_mutex_init(&core.lock, NULL) != 0:
            free(core)
            raise MemoryError()
        self.core = core
        core.max_conns = <uint32_t>max_connections
        core.buffer_bytes = <uint32_t>buffer_bytes
        core.drain_max_bytes = <int64_t>drain_max_bytes
        core.connect_timeout_ns = <int64_t>(connect_timeout_s * 1e9)
        limits_init(&core.http_limits)
        core.idle_timeout_ns = <int64_t>(idle_timeout_s * 1e9)

        # Zeroed pages nobody touched are not resident: only keys in use cost memory.
        core.stats = <StatRecord*>calloc(ENGINE_STAT_RECORDS, sizeof(StatRecord))
        core.n_principals = 1               # [0]: no peer / not known (empty)
        core.conns = <Conn*>calloc(core.max_conns, sizeof(Conn))
        core.ready = <uint32_t*>malloc(core.max_conns * sizeof(uint32_t))
        core.ready_next = <uint32_t*>malloc(core.max_conns * sizeof(uint32_t))
        # Two blocks per slot: never short. Pages nobody touched are not resident.
        n_bufs = 2 * <size_t>core.max_conns
        core.pool = <char*>malloc(n_bufs * core.buffer_bytes)
        core.free_bufs = <char**>malloc(n_bufs * sizeof(char*))
        if (core.conns == NULL or core.stats == NULL or core.ready == NULL or core.ready_next == NULL
                or core.pool == NULL or core.free_bufs == NULL):
            raise MemoryError()
        # Slots are taken as needed (_conn_new): the array's pages stay untouched, and
        # so out of the worker's RSS, until that many connections were open at once.
        core.free_head = -1
        core.n_slots = 0
        core.n_bufs = <uint32_t>n_bufs
        for i in range(core.n_bufs):
            # Reversed, so the first blocks handed out are the pool's first pages.
            core.free_bufs[i] = core.pool + <size_t>(core.n_bufs - 1 - i) * core.buffer_bytes
        core.n_free_bufs = core.n_bufs

        core.epfd = net.epoll_create1(net.EPOLL_CLOEXEC)
        if core.epfd < 0:
            _raise_errno("epoll_create1")
        core.wakefd = net.eventfd(0, net.EFD_NONBLOCK | net.EFD_CLOEXEC)
        if core.wakefd < 0:
            _raise_errno("eventfd")
        ev.events = net.EPOLLIN
        ev.data.u64 = _tag(_TAG_WAKE, 0, 0)
        if net.epoll_ctl(core.epfd, net.EPOLL_CTL_ADD, core.wakefd, &ev) != 0:
            _raise_errno("epoll_ctl(eventfd)")
        core.spare_fd = c_open(b"/dev/null", O_RDONLY | O_CLOEXEC)
        if core.spare_fd < 0:
            _raise_errno("open(/dev/null)")

    def __dealloc__(self):
        _core_free(self.core)
        self.core = NULL

    def __repr__(self) -> str:
        return "<Engine %s max_connections=%d buffer_bytes=%d generation=%d>" % (
            ("new", "running", "done")[<int>self.state], self.core.max_conns,
            self.core.buffer_bytes, self.core.generation)

    cdef int _check(self, int status, str what) except -1:
        """The one mapping of engine statuses to Python exceptions."""
        if status == STATUS_OK:
            return 0
        if status == STATUS_ENOMEM:
            raise MemoryError(what)
        if status == STATUS_ESYS:
            raise OSError(self.core.saved_errno, "%s: %s" % (what, os.strerror(self.core.saved_errno)))
        raise FastpathError("%s: %s" % (what, _STATUS_TEXT.get(status, "status %d" % status)))

    def run(self) -> None:
        """Run the loop on this thread, GIL released, until stop(); then close every
        connection (listeners stay open: they are the caller's) and return."""
        cdef Core* core = self.core
        cdef int status
        if self.state != ENGINE_NEW:
            raise RuntimeError("Engine.run() runs once")
        self.state = ENGINE_RUNNING
        try:
            with nogil:
                status = _loop(core)
        finally:
            self.state = ENGINE_DONE
        self._check(status, "engine loop")

    def stop(self) -> None:
        """Make run() close everything and return soon; from any thread, any time."""
        net.pthread_mutex_lock(&self.core.lock)
        self.core.stop_requested = True
        net.pthread_mutex_unlock(&self.core.lock)
        _wake(self.core)

    def install(self, RouteTable table not None) -> int:
        """Hand the loop a new route table; returns its generation (see `generation`).

        Compiled here, from the table as it is now; the loop starts using it at its next
        iteration. Connections already open finish on the table they started with.
        """
        cdef Table* t
        cdef Table* replaced
        if self.state == ENGINE_DONE:
            raise RuntimeError("the engine has stopped")
        t = table._build()
        # No Python code runs from here to the unlock, so generations follow install order.
        self.installs += 1
        t.generation = self.installs
        net.pthread_mutex_lock(&self.core.lock)
        replaced = self.core.pending
        self.core.pending = t
        net.pthread_mutex_unlock(&self.core.lock)
        _wake(self.core)
        # Never seen by the loop: freeing it here races nothing.
        _table_free(replaced)
        return t.generation

    @property
    def generation(self) -> int:
        """The generation of the table the loop uses (install()'s result); 0 before any."""
        return self.core.generation

    @property
    def max_connections(self) -> int:
        return self.core.max_conns

    @property
    def buffer_bytes(self) -> int:
        return self.core.buffer_bytes

    def stats(self) -> dict[str, int]:
        """A copy of the counters, flat: `outbound_*` and `inbound_*` per side (see
        SideCounters in engine.pxd), then the engine-wide ones."""
        cdef Counters snap
        memcpy(&snap, &self.core.counters, sizeof(Counters))
        out = {}
        for prefix, side in (("outbound_", snap.outbound), ("inbound_", snap.inbound)):
            for key, value in side.items():
                out[prefix + key] = value
        out["no_endpoint"] = snap.no_endpoint
        out["identity_mismatch"] = snap.identity_mismatch
        out["tls_unknown_sni"] = snap.tls_unknown_sni
        out["buffers_in_use"] = snap.buffers_in_use
        out["buffers_peak"] = snap.buffers_peak
        out["buffers_total"] = self.core.n_bufs
        out["tables_installed"] = snap.tables_installed
        out["tables_live"] = snap.tables_live
        out["http_routed"] = snap.http_routed
        out["http_no_route"] = snap.http_no_route
        out["http_bad_request"] = snap.http_bad_request
        out["http_unavailable"] = snap.http_unavailable
        out["http_head_timeouts"] = snap.http_head_timeouts
        out["http_bad_response"] = snap.http_bad_response
        out["http_upstream_pooled"] = snap.http_upstream_pooled
        out["http_upstream_reused"] = snap.http_upstream_reused
        out["http_upstream_stale"] = snap.http_upstream_stale
        out["http_upstream_retried"] = snap.http_upstream_retried
        out["upstream_failovers"] = snap.upstream_failovers
        out["endpoint_ejections"] = snap.endpoint_ejections
        for i in range(5):
            out["http_responses_%dxx" % (i + 1)] = snap.http_responses[i]
        out["http_latency_us"] = [snap.http_latency_us[i] for i in range(ENGINE_LATENCY_BUCKETS)]
        out["stats_overflow"] = snap.stats_overflow
        out["sniffed_http"] = snap.sniffed_http
        out["sniffed_tcp"] = snap.sniffed_tcp
        out["loop_busy_us"] = [snap.loop_busy_us[i] for i in range(ENGINE_LATENCY_BUCKETS)]
        out["loop_busy_max_us"] = snap.loop_busy_max_ns // 1000
        out["generation"] = self.core.generation
        return out

    def request_stats(self) -> list[dict]:
        """HTTP answers per (direction, service, peer), as counted so far: a list of
        {"direction": "outbound" | "inbound", "service": the name given to add_service()
        (outbound) or add_inbound_route() (inbound), "" when the request named none,
        "peer": the verified SPIFFE ID of the other side ("" when there was none),
        "local": the SPIFFE ID this side presented ("" when not given to the table),
        "codes": {status: count}, "latency_us": counts per latency_bounds_us() bucket}.
        Outbound, the peer is the destination; inbound, the caller. Counts only grow."""
        cdef Core* core = self.core
        cdef uint32_t n = mn_acquire_u32(&core.n_stats)
        cdef uint32_t i, j
        cdef StatRecord* r
        cdef uint64_t v
        out = []
        for i in range(n):
            r = &core.stats[i]
            codes = {}
            for j in range(ENGINE_STATUS_SLOTS):
                v = r.codes[j]
                if v:
                    codes[j + 100 if j < ENGINE_STATUS_SLOTS - 1 else 0] = v
            out.append({
                "direction": "inbound" if r.inbound else "outbound",
                "service": r.service.data[:r.service.length].decode() if r.service.length else "",
                "peer": (core.principals[r.principal].data[:core.principals[r.principal].length].decode()
                         if r.principal else ""),
                "local": (core.principals[r.local].data[:core.principals[r.local].length].decode()
                          if r.local else ""),
                "codes": codes,
                "latency_us": [r.latency_us[j] for j in range(ENGINE_LATENCY_BUCKETS)],
            })
        return out


def bench_route_lookup(RouteTable table not None, bytes authority not None,
                       Py_ssize_t n) -> int:
    """Route one request's authority n times without the GIL, as the engine does for
    each request on its HTTP listener (authority_host(), then the table's sorted host
    search); the service index found, -1 for none. For bench/bench_engine_micro.py."""
    cdef Table* t = table._build()
    cdef const char* a = authority
    cdef size_t alen = len(authority)
    cdef char host[256]
    cdef size_t hn = 0
    cdef int port = -1
    cdef HostEntry* e = NULL
    cdef Py_ssize_t k
    try:
        with nogil:
            for k in range(n):
                hn = authority_host(a, alen, host, sizeof(host), &port)
                e = _host_lookup(t, host, hn, port) if hn > 0 else NULL
        return <int>e.service if e != NULL else -1
    finally:
        _table_free(t)


def bench_buffer_pool(Engine engine not None, Py_ssize_t n, int depth=2) -> int:
    """Take `depth` buffers from a (not running) engine's pool and give them back, n
    times without the GIL: a pair's cost of holding buffers only while bytes wait. The
    buffers in use afterwards (0). For bench/bench_engine_micro.py."""
    cdef Core* core = engine.core
    cdef char* held[16]
    cdef Py_ssize_t k
    cdef int i
    if engine.state == ENGINE_RUNNING:
        raise RuntimeError("the pool belongs to the engine thread while it runs")
    if not 1 <= depth <= 16:
        raise ValueError("depth must be 1..16")
    with nogil:
        for k in range(n):
            for i in range(depth):
                held[i] = _buf_get(core)
            for i in range(depth - 1, -1, -1):
                _buf_put(core, held[i])
    return <int>core.counters.buffers_in_use


DEBUG_BUILD = bool(MESHNODE_DEBUG)
"""Compiled with MESHNODE_DEBUG=1: bounds checks and invariants on (tests/fastpath/
test_debug_build.py runs the suites against such a build)."""


def latency_bounds_us() -> list[int]:
    """Exclusive upper bounds (microseconds) of stats()["http_latency_us"] buckets; the
    last bucket also takes everything above its bound."""
    bounds = [1, 2, 3, 4]
    for idx in range(4, ENGINE_LATENCY_BUCKETS):
        e = idx // 4 + 1
        bounds.append((5 + idx % 4) << (e - 2))
    return bounds


# --- route tables, Python side -------------------------------------------------------------------

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


cdef int _up_ref(openssl.SSL_CTX* ctx) except -1:
    if openssl.SSL_CTX_up_ref(ctx) != 1:
        raise_tls_error("cannot reference SSL_CTX")
    return 0


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
        self._ticket_keys = None

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

    def add_service(self, str name not None, str sni not None, identities, endpoints) -> int:
        """A destination service; returns its index for add_outbound_tcp().

        `sni`: the name sent in the ClientHello (the service as the inbound side routes
        it); `identities`: the SPIFFE IDs (str) the service may run as, at least one;
        `endpoints`: (IP address, port) of each node inbound port serving it (may be
        empty: connections are then refused and counted as no_endpoint).
        """
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
        for endpoint in endpoints:
            host, port = endpoint
            _sockaddr(host, port, &addr, &length)
            eps.append((str(host), int(port)))
        self._services.append((name, sni_b, ids, eps))
        return len(self._services) - 1

    def add_outbound_tcp(self, int fd, int service_index, TLSContext client_ctx not None,
                         bint sniff=False) -> None:
        """Relay connections accepted on listener `fd` to service `service_index`, as the
        workload whose credentials `client_ctx` (a client context) holds.

        `sniff`: a connection whose first bytes are an HTTP/1.1 request is HTTP (framed,
        counted per request, every request to this service); anything else, or nothing
        within ENGINE_SNIFF_TIMEOUT_MS, is opaque TCP."""
        self._check_fd(fd)
        if not 0 <= service_index < len(self._services):
            raise ValueError("no service %d (add_service() first)" % service_index)
        if client_ctx.server:
            raise ValueError("outbound needs a client TLSContext")
        self._outbound.append((fd, service_index, client_ctx, b"", sniff))

    def set_outbound_http(self, int fd, TLSContext client_ctx not None,
                          str identity=None) -> None:
        """The HTTP outbound listener (port-base+1): each connection accepted on `fd` is
        routed by the Host (or absolute-form target) of its first request, through the
        names add_host() gave, as the workload whose credentials `client_ctx` holds
        (SPIFFE ID `identity`, for request figures) unless add_source() names the
        connection's source address."""
        if fd != self._http_fd:
            self._check_fd(fd)
        if client_ctx.server:
            raise ValueError("outbound needs a client TLSContext")
        self._http_fd = fd
        self._http_ctx = client_ctx
        self._http_identity = _spiffe_id(identity)

    def set_timeouts(self, double connect_timeout_s, double idle_timeout_s) -> None:
        """The engine's connect timeout (connect + TLS handshake, and an HTTP client's
        whole request head) and idle timeout from this table on (Engine() gave the
        first ones). Idle pairs already open are judged by the new idle timeout; setup
        deadlines already running keep theirs."""
        _check_timeouts(connect_timeout_s, idle_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s

    def add_source(self, str address not None, TLSContext client_ctx not None,
                   str identity=None) -> None:
        """HTTP outbound connections from `address` (an IP address: a local workload's
        own) present `client_ctx`'s identity, SPIFFE ID `identity`. The first added for
        an address wins."""
        cdef net.sockaddr_storage addr
        cdef net.socklen_t length
        if client_ctx.server:
            raise ValueError("outbound needs a client TLSContext")
        _sockaddr(address, 1, &addr, &length)   # the port is not compared
        self._sources.append((address, client_ctx, _spiffe_id(identity)))

    def add_host(self, str host not None, int service_index, int port) -> None:
        """HTTP requests for `host` (exact name, any case, no port: "svc", "svc.ns",
        "svc.ns.svc") go to service `service_index`, the service port `port`. A name
        given for several ports: the request's port picks, else the first one added.
        The same (host, port) added twice: the first wins."""
        host_b = _host_name(host, "host")
        if b":" in host_b and not host_b.startswith(b"["):
            raise ValueError("host %r: give the name without a port" % host)
        if not 0 <= service_index < len(self._services):
            raise ValueError("no service %d (add_service() first)" % service_index)
        if not 1 <= port <= 65535:
            raise ValueError("port must be 1..65535, not %d" % port)
        self._hosts.append((host_b.rstrip(b".") or host_b, port, service_index))

    def set_inbound(self, int fd, bytes ticket_keys=None) -> None:
        """The node's inbound (mutual TLS) listener.

        `ticket_keys` (80 bytes, TLSContext.set_ticket_keys): what the table's dispatch
        context, which issues and decrypts every inbound session ticket, uses instead
        of random keys of its own. The same keys in every worker's table, and in the
        next table, let a peer resume whichever worker it reaches, across config
        pushes and certificate rotations; the caller changes them to end resumption
        (meshnode: with the trust bundle, see meshnode.ticketkeys)."""
        if ticket_keys is not None and len(ticket_keys) != TLS_TICKET_KEYS_BYTES:
            raise ValueError("session ticket keys must be %d bytes, not %d"
                             % (TLS_TICKET_KEYS_BYTES, len(ticket_keys)))
        if fd != self._inbound_fd:
            self._check_fd(fd)
        self._inbound_fd = fd
        self._ticket_keys = ticket_keys

    def add_inbound_route(self, str sni not None, TLSContext server_ctx not None,
                          str app_host not None, int app_port, str service=None,
                          str identity=None) -> None:
        """Inbound connections naming `sni` handshake with `server_ctx` (the local
        service's identity and trust) and go to the app at (app_host, app_port).

        `service`: the name its request figures are kept under (request_stats());
        `identity`: the local service's SPIFFE ID, which HTTP requests handed to the
        app carry in x-forwarded-client-cert (By=) next to the caller's (URI=)."""
        cdef net.sockaddr_storage addr
        cdef net.socklen_t length
        sni_b = _host_name(sni, "sni")
        if not server_ctx.server:
            raise ValueError("inbound routes need a server TLSContext")
        if any(sni_b == entry[0] for entry in self._routes):
            raise ValueError("sni %r already has a route" % sni)
        identity_b = _spiffe_id(identity)
        _sockaddr(app_host, app_port, &addr, &length)
        self._routes.append((sni_b, server_ctx, app_host, app_port,
                             (service or "").encode(), identity_b))

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
        if t == NULL:
            raise MemoryError()
        t.inbound_fd = -1
        t.connect_timeout_ns = <int64_t>(self._connect_timeout_s * 1e9)
        t.idle_timeout_ns = <int64_t>(self._idle_timeout_s * 1e9)
        try:
            if self._services:
                t.services = <Service*>calloc(len(self._services), sizeof(Service))
                if t.services == NULL:
                    raise MemoryError()
                t.n_services = len(self._services)
            for i, (name, sni_b, ids, eps) in enumerate(self._services):
                svc = &t.services[i]
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
                for j, (host, port) in enumerate(eps):
                    _sockaddr(host, port, &svc.endpoints[j].addr, &svc.endpoints[j].addrlen)

            outbound = list(self._outbound)
            if self._http_fd >= 0:
                outbound.append((self._http_fd, -1, self._http_ctx, self._http_identity, False))
            if outbound:
                t.listeners = <OutboundListener*>calloc(len(outbound), sizeof(OutboundListener))
                if t.listeners == NULL:
                    raise MemoryError()
                t.n_listeners = len(outbound)
            for i, (fd, service_index, ctx, identity_b, sniff) in enumerate(outbound):
                l = &t.listeners[i]
                l.fd = fd
                l.http = service_index < 0
                l.sniff = sniff
                l.service = service_index if service_index >= 0 else 0
                l.principal = -1
                _name_set(&l.identity, identity_b)
                _up_ref(ctx.ctx)
                l.client_ctx = ctx.ctx

            if self._sources:
                t.sources = <Source*>calloc(len(self._sources), sizeof(Source))
                if t.sources == NULL:
                    raise MemoryError()
                t.n_sources = len(self._sources)
            for i, (host, ctx, identity_b) in enumerate(self._sources):
                src = &t.sources[i]
                _sockaddr(host, 1, &src.addr, &length)
                src.principal = -1
                _name_set(&src.identity, identity_b)
                _up_ref(ctx.ctx)
                src.client_ctx = ctx.ctx

            # Stable sort: a name's entries keep the order they were added in.
            hosts = sorted(self._hosts, key=lambda entry: entry[0])
            if hosts:
                t.hosts = <HostEntry*>calloc(len(hosts), sizeof(HostEntry))
                if t.hosts == NULL:
                    raise MemoryError()
                t.n_hosts = len(hosts)
            for i, (host_b, port, service_index) in enumerate(hosts):
                _name_set(&t.hosts[i].name, host_b)
                t.hosts[i].port = port
                t.hosts[i].service = service_index

            if self._routes:
                t.routes = <InboundRoute*>calloc(len(self._routes), sizeof(InboundRoute))
                if t.routes == NULL:
                    raise MemoryError()
                t.n_routes = len(self._routes)
            for i, (sni_b, ctx, host, port, service_b, identity_b) in enumerate(self._routes):
                route = &t.routes[i]
                _name_set(&route.sni, sni_b)
                _name_set(&route.service, service_b)
                _name_set(&route.identity, identity_b)
                route.principal = -1
                _up_ref(ctx.ctx)
                route.server_ctx = ctx.ctx
                _sockaddr(host, port, &route.app_addr, &route.app_addrlen)

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
                if self._ticket_keys is not None:
                    dispatch.set_ticket_keys(self._ticket_keys)
                openssl.SSL_CTX_set_tlsext_servername_callback(dispatch.ctx, _on_servername)
                openssl.SSL_CTX_set_tlsext_servername_arg(dispatch.ctx, t)
                _up_ref(dispatch.ctx)
                t.dispatch_ctx = dispatch.ctx
        except BaseException:
            _table_free(t)
            raise
        return t
