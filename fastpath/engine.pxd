# fastpath/engine.pxd: the data plane engine's C state: route tables, connection pairs,
# buffer pool, counters, and the Python classes that own them.
#
# Everything below the classes' Python-facing methods is plain C touched only by the
# engine thread (the one inside Engine.run(), GIL released), except where a field says
# otherwise. The implementation and the reasoning are in engine.pyx.

from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastpath.includes cimport net, openssl


# Results of the engine's nogil functions; Engine maps them to exceptions (_check).
cdef enum Status:
    STATUS_OK = 0
    STATUS_AGAIN = -1      # would block: wait for the next readiness event
    STATUS_EOF = -2        # the peer closed its sending side (FIN, or close_notify)
    STATUS_CLOSE = -3      # close the pair (done, or refused during setup): FIN
    STATUS_RESET = -4      # the pair failed mid-stream (counted where found): RST
    STATUS_ENOMEM = -5     # out of memory
    STATUS_ESYS = -6       # a system call failed; errno is in Core.saved_errno


# --- route table: what a snapshot of config says, in C -----------------------------------

cdef struct Name:
    char* data             # NUL-terminated copy, malloc'd
    uint32_t length


cdef struct Endpoint:
    net.sockaddr_storage addr      # the destination node's inbound port
    net.socklen_t addrlen
    # Last resumable client session for this endpoint, and the client SSL_CTX that made
    # it: a session carries the client identity it was made with, so a connection from
    # another ctx must not resume it. Engine thread only.
    openssl.SSL_SESSION* session
    openssl.SSL_CTX* session_ctx   # compared, never dereferenced


cdef struct Service:
    Name sni                       # sent in the ClientHello: the destination service
    Name* identities               # SPIFFE IDs the destination may present (>= 1)
    uint32_t n_identities
    Endpoint* endpoints
    uint32_t n_endpoints
    uint32_t rr_next               # round-robin cursor; engine thread only


cdef struct OutboundListener:
    int fd                         # borrowed: the Python caller owns the socket
    uint32_t service
    openssl.SSL_CTX* client_ctx    # one reference owned: the local workload's identity


cdef struct InboundRoute:
    Name sni
    openssl.SSL_CTX* server_ctx    # one reference owned: the local service's identity
    net.sockaddr_storage app_addr  # the local app, reached in plaintext
    net.socklen_t app_addrlen


# A compiled RouteTable. Built by Python (GIL held) in RouteTable._build(), handed to
# the engine by Engine.install(); from then on only the engine thread touches it.
# `refs` counts the engine's "current table" reference plus one per connection that
# started on it: a replaced table lives until its last connection closes.
cdef struct Table:
    uint64_t generation
    int refs
    OutboundListener* listeners
    uint32_t n_listeners
    Service* services
    uint32_t n_services
    int inbound_fd                 # borrowed; -1 when there is no inbound listener
    # Server ctx every inbound SSL starts from: it holds no certificate, only the
    # servername callback that switches the SSL to its route's ctx (one reference).
    openssl.SSL_CTX* dispatch_ctx
    InboundRoute* routes
    uint32_t n_routes


# --- connections ---------------------------------------------------------------------------

# A connection pair's life. One Conn is two sockets: `down`, the one accepted, and
# `up`, the one the engine connected. Events on the side not named by the state are
# left for later (the setup deadline bounds how long).
#
#   outbound: FREE ─accept─► CONNECTING ─TCP up─► HANDSHAKING ─TLS done, peer ID allowed─► PIPE
#   inbound:  FREE ─accept─► HANDSHAKING ─TLS done (SNI route)─► CONNECTING ─TCP up─► PIPE
#   PIPE ─both directions closed (FIN / close_notify passed on)─► FREE
#   any ─error, timeout, stop()─► FREE      (sockets closed, buffers returned, counted)
cdef enum ConnState:
    CONN_FREE = 0
    CONN_CONNECTING
    CONN_HANDSHAKING
    CONN_PIPE


cdef struct Side:
    int fd                         # -1 when closed / not opened yet
    openssl.SSL* ssl               # NULL for the plaintext side


# Bytes moving one way, from one side to the other, through at most one pooled buffer.
cdef struct Flow:
    char* buf                      # from the pool while it holds data, else NULL
    uint32_t head                  # buf[head:tail] is read but not written yet
    uint32_t tail
    bint eof                       # the source ended (FIN or close_notify)
    bint shut                      # the end was passed on (FIN or close_notify sent)


cdef enum ConnFlags:
    CONN_INBOUND = 1               # accepted on the inbound listener (down is TLS)
    CONN_UNKNOWN_SNI = 2           # set by the servername callback: counted on failure
    CONN_TICKET_WAIT = 4           # outbound: keep the first resumable session we see
    CONN_OFFERED_SESSION = 8       # outbound: the handshake offered the endpoint's session
    CONN_IN_READY = 16             # on a ready list (pump budget used up)
    CONN_ROUTED = 32               # inbound: the servername callback chose `route`


cdef struct Conn:
    ConnState state
    uint32_t flags
    uint32_t gen                   # bumped on free: stale epoll tags are ignored
    uint32_t index
    int next_free
    Table* table                   # holds a reference: the config the pair started on
    uint32_t service               # outbound: index in table.services
    uint32_t endpoint              # outbound: index in the service's endpoints
    uint32_t route                 # inbound: index in table.routes (servername callback)
    openssl.SSL_CTX* client_ctx    # outbound: borrowed from the table
    Side down
    Side up
    Flow d2u                       # down → up
    Flow u2d                       # up → down
    int64_t deadline_ns            # setup (connect + handshake) must end by then
    int64_t active_ns              # last time bytes moved: idle timeout
    char* peer_id                  # verified peer SPIFFE ID (malloc'd, NUL-terminated)
    uint32_t peer_id_length


# --- counters: written by the engine thread only, read by the agent thread ------------------
# Aligned uint64 loads and stores do not tear on x86-64 and aarch64, so stats() copies
# them without a lock; fields of one copy may be a few events apart.

cdef struct SideCounters:
    uint64_t connections_opened    # pairs accepted (and given a slot)
    uint64_t connections_closed
    uint64_t connections_active
    uint64_t bytes_received        # plaintext bytes read from the accepted peer
    uint64_t bytes_sent            # plaintext bytes written to the accepted peer
    uint64_t connect_failures      # the engine's connect failed (refused, unreachable…)
    uint64_t connect_timeouts      # the engine's connect was still pending at the deadline
    uint64_t idle_timeouts
    uint64_t aborted               # reset, write to a closed peer, TLS error after setup
    uint64_t rejected_limit        # accepted and closed at once: no free connection slot
    uint64_t accept_failures       # accept4 failed (EMFILE, ENFILE, ENOBUFS…)
    uint64_t tls_handshakes        # completed
    uint64_t tls_resumed           # of which resumed a session
    uint64_t tls_failures_verify   # the peer's certificate was missing or did not verify
    uint64_t tls_failures_other    # any other handshake failure (alerts from the peer…)
    uint64_t tls_handshake_timeouts


cdef struct Counters:
    SideCounters outbound
    SideCounters inbound
    uint64_t no_endpoint           # outbound service without endpoints
    uint64_t identity_mismatch     # outbound peer's SPIFFE ID not one the service runs as
    uint64_t tls_unknown_sni       # inbound ClientHello named no route (or no SNI)
    uint64_t buffers_in_use
    uint64_t buffers_peak
    uint64_t tables_installed      # swaps done by the loop
    uint64_t tables_live           # current table plus replaced ones still in use


# --- the engine's state ------------------------------------------------------------------------

cdef struct Core:
    int epfd
    int wakefd                     # eventfd: stop() and install() wake the loop
    int spare_fd                   # /dev/null, given up to accept-and-close on EMFILE
    # Guards `pending` and `stop_requested`, the only fields other threads write.
    net.pthread_mutex_t lock
    Table* pending                 # installed, not yet picked up by the loop
    bint stop_requested
    bint woken                     # the eventfd fired: look at pending/stop
    int saved_errno

    Table* table                   # the current table, or NULL
    uint64_t generation            # of the current table (read by other threads)

    Conn* conns
    uint32_t max_conns
    int free_head                  # free list of conns, by index; -1 when empty
    # Ready lists: indexes of connections that used up their pump budget. `ready` is
    # served this iteration while pumps append to `ready_next`.
    uint32_t* ready
    uint32_t n_ready
    uint32_t* ready_next
    uint32_t n_ready_next

    char* pool                     # 2 * max_conns buffers of buffer_bytes each
    char** free_bufs               # LIFO: recently used buffers stay in cache
    uint32_t n_free_bufs
    uint32_t n_bufs
    uint32_t buffer_bytes

    int64_t connect_timeout_ns
    int64_t idle_timeout_ns
    int64_t now_ns                 # CLOCK_MONOTONIC, once per loop iteration
    int64_t next_scan_ns
    Counters counters


# Engine's life: NEW ─run()─► RUNNING ─loop ends (stop())─► DONE. stop() before run()
# makes run() return at once; run() never starts twice.
cdef enum EngineState:
    ENGINE_NEW
    ENGINE_RUNNING
    ENGINE_DONE


cdef class Engine:
    cdef Core* core
    cdef EngineState state
    cdef uint64_t installs         # generations handed out by install()

    cdef int _check(self, int status, str what) except -1


cdef class RouteTable:
    # Python-side description; each Engine.install() compiles a fresh C Table from it.
    cdef list _services            # (name, sni bytes, [id bytes], [(family, packed addr, port)])
    cdef list _outbound            # (fd, service index, TLSContext)
    cdef list _routes              # (sni bytes, TLSContext, app host, app port)
    cdef int _inbound_fd

    cdef int _check_fd(self, int fd) except -1
    cdef Table* _build(self) except NULL
