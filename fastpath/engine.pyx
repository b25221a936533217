"""fastpath.engine: the data plane's event loop, moving opaque TCP between nodes over mutual TLS.

One Engine per proxy worker. A Python thread calls run(), which releases the GIL and
runs a C epoll loop until stop(); the agent thread only install()s route tables and
reads stats() (DESIGN.md §3). This version carries opaque TCP:

- outbound (local app → another service): a plaintext connection accepted on a
  service's local outbound port is relayed over mutual TLS to an endpoint of the
  service (round robin), on that endpoint node's inbound port, with the service in
  SNI and b"meshnode-tcp" in ALPN; the peer must present one of the SPIFFE IDs the
  service runs as (else `identity_mismatch`).
- inbound (another node → local app): the inbound listener terminates mutual TLS,
  picks the local service by SNI (its own server SSL_CTX: the identity the service
  runs as), keeps the peer's SPIFFE ID with the connection, and relays in plaintext
  to the service's local app address.

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
  unrecognized_name. The dispatch ctx issues and decrypts the session tickets, so
  sessions die with the table (a rotated certificate starts with full handshakes), and
  a ticket from another worker process does not resume (each has its own ticket keys).
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
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort, calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset, strlen
from posix.fcntl cimport O_CLOEXEC, O_RDONLY
from posix.fcntl cimport open as c_open
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, write

from fastpath.includes cimport net, openssl
from fastpath.tls cimport TLSContext, peer_spiffe_id, raise_tls_error

import os

from fastpath.errors import FastpathError

include "consts.pxi"


ALPN_TCP = b"meshnode-tcp"
"""The ALPN protocol of opaque TCP between nodes; inbound server contexts must accept it."""

# The same protocol as an ALPN wire list (RFC 7301 §3.1: length-prefixed), offered by
# every outbound SSL.
cdef const unsigned char* _ALPN_TCP_WIRE = <const unsigned char*>b"\x0cmeshnode-tcp"
cdef unsigned int _ALPN_TCP_WIRE_BYTES = 13

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
        free(t.listeners)
    if t.services != NULL:
        for i in range(t.n_services):
            svc = &t.services[i]
            _name_free(&svc.sni)
            if svc.identities != NULL:
                for j in range(svc.n_identities):
                    _name_free(&svc.identities[j])
                free(svc.identities)
            if svc.endpoints != NULL:
                for j in range(svc.n_endpoints):
                    if svc.endpoints[j].session != NULL:
                        openssl.SSL_SESSION_free(svc.endpoints[j].session)
                free(svc.endpoints)
        free(t.services)
    if t.routes != NULL:
        for i in range(t.n_routes):
            _name_free(&t.routes[i].sni)
            if t.routes[i].server_ctx != NULL:
                openssl.SSL_CTX_free(t.routes[i].server_ctx)
        free(t.routes)
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


cdef void _swap(Core* core, Table* t) noexcept nogil:
    """Make `t` the current table: accept only from its listeners from now on."""
    cdef Table* old = core.table
    cdef net.epoll_event ev
    cdef uint32_t i
    if old != NULL:
        _listeners_unwatch(core, old)
    core.table = t
    t.refs += 1
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
    if core.free_head < 0:
        return NULL
    c = &core.conns[core.free_head]
    _invariant(c.state == CONN_FREE, b"free list holds a live connection")
    core.free_head = c.next_free
    # index and gen survive reuse; so does IN_READY (the slot is still on a ready list).
    c.flags = flags | (c.flags & CONN_IN_READY)
    c.next_free = -1
    c.table = t
    t.refs += 1
    c.service = 0
    c.endpoint = 0
    c.route = 0
    c.client_ctx = NULL
    c.down.fd = -1
    c.down.ssl = NULL
    c.up.fd = -1
    c.up.ssl = NULL
    memset(&c.d2u, 0, sizeof(Flow))
    memset(&c.u2d, 0, sizeof(Flow))
    c.deadline_ns = core.now_ns + core.connect_timeout_ns
    c.active_ns = core.now_ns
    c.peer_id = NULL
    c.peer_id_length = 0
    c.state = CONN_CONNECTING      # callers set the real first state
    cdef SideCounters* sc = _counters_of(core, c)
    sc.connections_opened += 1
    sc.connections_active += 1
    return c


cdef void _side_close(Side* s, bint reset) noexcept nogil:
    cdef net.linger lg
    if s.ssl != NULL:
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


cdef void _conn_close(Core* core, Conn* c, bint reset) noexcept nogil:
    cdef SideCounters* sc = _counters_of(core, c)
    _invariant(c.state != CONN_FREE, b"connection closed twice")
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
    """The one place a step's status closes a pair."""
    if status == STATUS_CLOSE:
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
    if s.ssl == NULL:
        while True:
            r = net.recv(s.fd, p, n, 0)
            if r > 0:
                return r
            if r == 0:
                return STATUS_EOF
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return STATUS_AGAIN
            return STATUS_RESET
    # SSL_get_error reads this thread's error queue: it must hold nothing older.
    openssl.ERR_clear_error()
    r = openssl.SSL_read(s.ssl, p, <int>n)
    if r > 0:
        return r
    err = openssl.SSL_get_error(s.ssl, <int>r)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
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
                   uint64_t* received, uint64_t* sent) noexcept nogil:
    """Move what can move from src to dst; the amount moved (bytes, +1 per end passed
    on), or STATUS_RESET. `received`/`sent` count bytes read from src / written to dst
    when not NULL."""
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
    if f.eof and f.buf == NULL and not f.shut:
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


cdef int _pump(Core* core, Conn* c) noexcept nogil:
    """Move bytes both ways until neither direction moves or the turn's budget is used."""
    cdef SideCounters* sc = _counters_of(core, c)
    cdef int64_t a, b
    cdef int64_t moved = 0
    while True:
        a = _flow(core, &c.down, &c.up, &c.d2u, &sc.bytes_received, NULL)
        if a < 0:
            sc.aborted += 1
            return STATUS_RESET
        b = _flow(core, &c.up, &c.down, &c.u2d, NULL, &sc.bytes_sent)
        if b < 0:
            sc.aborted += 1
            return STATUS_RESET
        if c.flags & CONN_TICKET_WAIT:
            _take_ticket(c)
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
    cdef int fd = net.socket(addr.ss_family, net.SOCK_STREAM | net.SOCK_NONBLOCK | net.SOCK_CLOEXEC, 0)
    cdef SideCounters* sc = _counters_of(core, c)
    if fd < 0:
        sc.connect_failures += 1
        return STATUS_CLOSE
    c.up.fd = fd
    _nodelay(fd)
    if _watch(core, fd, _tag(_TAG_UP, c.index, c.gen)) != 0:
        sc.connect_failures += 1
        return STATUS_CLOSE
    c.state = CONN_CONNECTING
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


cdef int _handshake_done(Core* core, Conn* c, Side* s) noexcept nogil:
    cdef SideCounters* sc = _counters_of(core, c)
    cdef char peer[SPIFFE_ID_MAX_BYTES + 1]
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
    if not (c.flags & CONN_INBOUND):
        if not openssl.SSL_session_reused(s.ssl):
            c.flags |= CONN_TICKET_WAIT
        return _enter_pipe(core, c)
    route = &c.table.routes[c.route]
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


cdef inline void _ssl_tune(openssl.SSL* ssl) noexcept nogil:
    # No read-ahead: it saves the record-header read() but measured no faster here,
    # and keeps more plaintext inside OpenSSL, outside the pool's accounting.
    openssl.SSL_set_mode(ssl, _SSL_MODES)


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
        return STATUS_CLOSE
    c.up.ssl = ssl
    if (openssl.SSL_set_fd(ssl, c.up.fd) != 1
            or openssl.SSL_set_tlsext_host_name(ssl, svc.sni.data) != 1
            or openssl.SSL_set_alpn_protos(ssl, _ALPN_TCP_WIRE, _ALPN_TCP_WIRE_BYTES) != 0):
        sc.tls_failures_other += 1
        openssl.ERR_clear_error()
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


cdef int _outbound_start(Core* core, Conn* c, uint32_t listener) noexcept nogil:
    cdef OutboundListener* l = &c.table.listeners[listener]
    cdef Service* svc = &c.table.services[l.service]
    cdef int st
    if svc.n_endpoints == 0:
        core.counters.no_endpoint += 1
        return STATUS_CLOSE
    c.service = l.service
    c.client_ctx = l.client_ctx
    c.endpoint = svc.rr_next % svc.n_endpoints
    svc.rr_next = (c.endpoint + 1) % svc.n_endpoints
    st = _connect(core, c, &svc.endpoints[c.endpoint].addr, svc.endpoints[c.endpoint].addrlen)
    if st == STATUS_OK:
        return _tls_client_start(core, c)
    if st == STATUS_AGAIN:
        return STATUS_OK
    return st


# --- the loop ---------------------------------------------------------------------------------

cdef void _accept(Core* core, uint32_t which) noexcept nogil:
    cdef Table* t = core.table
    cdef bint inbound = which == _INBOUND_LISTENER
    cdef SideCounters* sc = &core.counters.inbound if inbound else &core.counters.outbound
    cdef int lfd, fd, e, n
    cdef Conn* c
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
        fd = net.accept4(lfd, NULL, NULL, net.SOCK_NONBLOCK | net.SOCK_CLOEXEC)
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
        c.down.fd = fd
        _nodelay(fd)
        if _watch(core, fd, _tag(_TAG_DOWN, c.index, c.gen)) != 0:
            sc.accept_failures += 1
            _conn_close(core, c, False)
            continue
        if inbound:
            _settle(core, c, _inbound_start(core, c))
        else:
            _settle(core, c, _outbound_start(core, c, which))


cdef int _conn_event(Core* core, Conn* c, uint32_t kind, uint32_t events) noexcept nogil:
    if c.state == CONN_PIPE:
        return _pump(core, c)
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
    for i in range(core.max_conns):
        c = &core.conns[i]
        if c.state == CONN_FREE:
            continue
        sc = _counters_of(core, c)
        if c.state == CONN_PIPE:
            if now - c.active_ns >= core.idle_timeout_ns:
                sc.idle_timeouts += 1
                _conn_close(core, c, False)
        elif now >= c.deadline_ns:
            if c.state == CONN_CONNECTING:
                sc.connect_timeouts += 1
            else:
                sc.tls_handshake_timeouts += 1
            _conn_close(core, c, False)


cdef void _wind_down(Core* core) noexcept nogil:
    """After the loop: close every pair, leave the listeners, drop the tables."""
    cdef uint32_t i
    cdef Table* pending
    for i in range(core.max_conns):
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

    Thread use: run() on a thread of its own (it returns after stop()); install(),
    stop(), stats() and `generation` from any other thread.
    """

    def __cinit__(self, int max_connections=4096, int buffer_bytes=16384,
                  double connect_timeout_s=5.0, double idle_timeout_s=300.0):
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
        if not 0 < connect_timeout_s <= 86400:
            raise ValueError("connect_timeout_s must be > 0 and at most a day, not %r"
                             % connect_timeout_s)
        if not 0 < idle_timeout_s <= 86400 * 365:
            raise ValueError("idle_timeout_s must be > 0 and at most a year, not %r"
                             % idle_timeout_s)

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
        core.connect_timeout_ns = <int64_t>(connect_timeout_s * 1e9)
        core.idle_timeout_ns = <int64_t>(idle_timeout_s * 1e9)

        core.conns = <Conn*>calloc(core.max_conns, sizeof(Conn))
        core.ready = <uint32_t*>malloc(core.max_conns * sizeof(uint32_t))
        core.ready_next = <uint32_t*>malloc(core.max_conns * sizeof(uint32_t))
        # Two blocks per slot: never short. Pages nobody touched are not resident.
        n_bufs = 2 * <size_t>core.max_conns
        core.pool = <char*>malloc(n_bufs * core.buffer_bytes)
        core.free_bufs = <char**>malloc(n_bufs * sizeof(char*))
        if (core.conns == NULL or core.ready == NULL or core.ready_next == NULL
                or core.pool == NULL or core.free_bufs == NULL):
            raise MemoryError()
        for i in range(core.max_conns):
            core.conns[i].index = i
            core.conns[i].state = CONN_FREE
            core.conns[i].down.fd = -1
            core.conns[i].up.fd = -1
            core.conns[i].next_free = <int>i + 1 if i + 1 < core.max_conns else -1
        core.free_head = 0
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
        out["generation"] = self.core.generation
        return out


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

    def __repr__(self) -> str:
        return "<RouteTable services=%d outbound=%d inbound=%s routes=%d>" % (
            len(self._services), len(self._outbound),
            self._inbound_fd if self._inbound_fd >= 0 else None, len(self._routes))

    cdef int _check_fd(self, int fd) except -1:
        if fd < 0:
            raise ValueError("fd must be an open listening socket's descriptor, not %d" % fd)
        if fd == self._inbound_fd or any(fd == entry[0] for entry in self._outbound):
            raise ValueError("fd %d is already a listener of this table" % fd)
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

    def add_outbound_tcp(self, int fd, int service_index, TLSContext client_ctx not None) -> None:
        """Relay connections accepted on listener `fd` to service `service_index`, as the
        workload whose credentials `client_ctx` (a client context) holds."""
        self._check_fd(fd)
        if not 0 <= service_index < len(self._services):
            raise ValueError("no service %d (add_service() first)" % service_index)
        if client_ctx.server:
            raise ValueError("outbound needs a client TLSContext")
        self._outbound.append((fd, service_index, client_ctx))

    def set_inbound(self, int fd) -> None:
        """The node's inbound (mutual TLS) listener."""
        if fd != self._inbound_fd:
            self._check_fd(fd)
        self._inbound_fd = fd

    def add_inbound_route(self, str sni not None, TLSContext server_ctx not None,
                          str app_host not None, int app_port) -> None:
        """Inbound connections naming `sni` handshake with `server_ctx` (the local
        service's identity and trust) and go to the app at (app_host, app_port)."""
        cdef net.sockaddr_storage addr
        cdef net.socklen_t length
        sni_b = _host_name(sni, "sni")
        if not server_ctx.server:
            raise ValueError("inbound routes need a server TLSContext")
        if any(sni_b == entry[0] for entry in self._routes):
            raise ValueError("sni %r already has a route" % sni)
        _sockaddr(app_host, app_port, &addr, &length)
        self._routes.append((sni_b, server_ctx, app_host, app_port))

    cdef Table* _build(self) except NULL:
        cdef Table* t = <Table*>calloc(1, sizeof(Table))
        cdef Service* svc
        cdef InboundRoute* route
        cdef OutboundListener* l
        cdef TLSContext ctx
        cdef TLSContext dispatch
        cdef uint32_t i, j
        if t == NULL:
            raise MemoryError()
        t.inbound_fd = -1
        try:
            if self._services:
                t.services = <Service*>calloc(len(self._services), sizeof(Service))
                if t.services == NULL:
                    raise MemoryError()
                t.n_services = len(self._services)
            for i, (name, sni_b, ids, eps) in enumerate(self._services):
                svc = &t.services[i]
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

            if self._outbound:
                t.listeners = <OutboundListener*>calloc(len(self._outbound), sizeof(OutboundListener))
                if t.listeners == NULL:
                    raise MemoryError()
                t.n_listeners = len(self._outbound)
            for i, (fd, service_index, ctx) in enumerate(self._outbound):
                l = &t.listeners[i]
                l.fd = fd
                l.service = service_index
                _up_ref(ctx.ctx)
                l.client_ctx = ctx.ctx

            if self._routes:
                t.routes = <InboundRoute*>calloc(len(self._routes), sizeof(InboundRoute))
                if t.routes == NULL:
                    raise MemoryError()
                t.n_routes = len(self._routes)
            for i, (sni_b, ctx, host, port) in enumerate(self._routes):
                route = &t.routes[i]
                _name_set(&route.sni, sni_b)
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
                openssl.SSL_CTX_set_tlsext_servername_callback(dispatch.ctx, _on_servername)
                openssl.SSL_CTX_set_tlsext_servername_arg(dispatch.ctx, t)
                _up_ref(dispatch.ctx)
                t.dispatch_ctx = dispatch.ctx
        except BaseException:
            _table_free(t)
            raise
        return t
