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
  picks the local service by SNI, the route's own name or its one alias (its own
  server SSL_CTX: the identity the service runs as), keeps the peer's SPIFFE ID with
  the connection, and relays in plaintext to the service's local app address.
- PeerAuthentication (plaintext.pxi, RouteTable.set_inbound_mtls): an inbound route
  PERMISSIVE or DISABLE takes plaintext HTTP too: on a table with one, the inbound
  side peeks at each connection's first byte (a TLS handshake record, or not), frames
  plaintext, routes it by its first request's Host and hands it to the app with no
  peer ID; plaintext for a STRICT route, for none, or not HTTP, is reset and counted.
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
- Access records (accesslog.pxi, RouteTable.set_access_log): one per HTTP answer on
  either side and one per opaque pair at its close, fixed-size, in a ring the worker
  drains (access_records()); sampled and filtered per table, dropped and counted when
  the ring is full, never waited for; while a tap is under way (set_tap()) every request
  gets one, marked "tap_only" where the access log would not have kept it. A request's
  record names its span (tracing.pxi); a sampled span the access log left out gets one
  of its own, marked "span_only", when its table exports spans (RouteTable.set_tracing).
- Trace context (tracing.pxi, RouteTable.set_tracing): every HTTP request head, both
  ways, gets an x-request-id when it has none and a span of this side's in its
  traceparent's (or B3's) trace, or a new one sampled per table, passed on as the next
  hop's parent.
- HTTP counters: requests routed, the engine's own answers by cause, responses by
  class (2xx…), and a latency histogram (request head framed → response framed to its
  end; log-linear microsecond buckets, latency_bounds_us()).

Choices, and why:

- Ownership. RouteTable is a Python description; every Engine.install() compiles a
  fresh C Table from it (GIL held) and hands it to the loop through a mutex-guarded
  slot and an eventfd; the loop swaps tables at the top of an iteration. A C refcount,
  touched by the engine thread only, counts the "current table" reference plus one
  per connection that holds the table, and the old table (its SSL_CTXs, cached
  sessions) is freed with its last connection. A new table reaches open connections
  as Envoy's does (carry.pxi): each HTTP request is routed on the table current when
  its head is framed (the pair moves to it in place when its upstream or app
  connection is still right, else that connection goes and the request is routed
  afresh), idle upstreams of endpoints that left are closed, and an opaque pair whose
  destination left is closed after the drain period. Certificates rotate the same
  way: the agent builds a table with new TLSContexts and installs it. A table
  installed over one the loop has not picked up yet replaces it, unused.
- Graceful drain (drain.pxi): Engine.drain() stops accepting, answers what is in
  flight, gives HTTP clients `Connection: close` on their next answer and closes
  those quiet between requests, and run() returns once nothing is left or at the
  deadline.
- The filter chain (filters.pxi): per service and per inbound route, compiled steps
  run on connection, on request head and on response head (the upstream's identity
  check, x-forwarded-client-cert, an inbound route's AuthorizationPolicy: authz.pxi);
  new per-request behaviour is a new step.
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
- Limits before authentication (limits.pxi): the slots are split into an inbound and an
  outbound budget, so a flood at the inbound port cannot take local callers' slots; on
  the inbound side, handshakes under way (in all and per source address; a plaintext
  pair counts as one until its Host routes it) and connections per source address are
  capped. Checked at accept, from a small
  open-addressed table keyed by the source address (entries freed at zero); a
  connection over a limit is closed there with RST before SSL_new, and counted by the
  limit (stats: inbound_rejected_limit, rejected_handshakes, rejected_source_*). Out of
  descriptors with the spare lost, the listeners leave the loop for
  ENGINE_ACCEPT_PAUSE_MS (a level-triggered listener would otherwise spin the loop).
- Timeouts live in a hierarchical timer wheel (timers.pxi), not a scan of the
  connection array: each pair has one timer, filed at the deadline of the state it is
  in, armed, moved and cancelled in O(1) through links in the Conn (no allocation).
  Setup (TCP connect + TLS handshake, whichever is pending: counted as connect or
  handshake timeouts) must end within connect_timeout_s of its start; a first request
  head within connect_timeout_s (408); a sniffing listener's first bytes within
  ENGINE_SNIFF_TIMEOUT_MS; a pair in which no byte moved for idle_timeout_s is closed.
  The drain deadlines are timers of the same wheel: a gone HTTP client's upstream
  (connect_timeout_s), an opaque pair whose destination left (the drain period), and
  an HTTP pair going away (the engine drains, or its listener left), quiet between
  requests (ENGINE_DRAIN_IDLE_MS); the loop also wakes at the engine's own drain
  deadline.
  Ticks are 2^ENGINE_TIMER_TICK_SHIFT ns (4.2 ms): a timeout fires at most a tick and
  a millisecond late, never early, and epoll_wait sleeps until the next tick with a
  timer due. The idle timeout costs no wheel operation per read or write: the pump
  only stamps active_ns, and an idle timer that fires on a pair that moved bytes since
  files itself again (lazy re-arm, as nginx and Envoy do).
- SNI dispatch: inbound SSLs start from a per-table "dispatch" SSL_CTX that holds no
  certificate; its servername callback switches the SSL to the route's SSL_CTX
  (SSL_set_SSL_CTX) and copies its verification settings, which SSL_set_SSL_CTX does
  not (as nginx does). No route for the name (or no SNI) goes on with a route's ctx
  chosen by the name and a verify callback that refuses a client certificate once it
  has verified, so only a mesh member learns that a name is not served; a resumption
  naming no route is closed after the handshake (both counted as tls_unknown_sni). The
  dispatch ctx issues and decrypts the session tickets, with keys derived per period
  (RouteTable.set_inbound): from random bytes of its own, sessions die with the table
  and a ticket from another worker process does not resume; from given keys, every
  table and every worker holding the same keys resumes them. A session resumes for
  session_life_s from its full handshake, never past the client certificate's notAfter.
- Session resumption (client side): one SSL_SESSION per endpoint, taken from the
  first resumable session a fully handshaken connection sees (TLS 1.3 tickets arrive
  after the handshake, with reads), offered by later connections made with the same
  client SSL_CTX, dropped if a handshake that offered it fails, not offered past its
  life (counted from its full handshake) or the upstream certificate's notAfter.
- Identity: the outbound side admits the upstream only if its verified SPIFFE ID is
  one the service runs as, before a byte of the client's is forwarded; the inbound
  side keeps the client's verified SPIFFE ID with the pair (one malloc per connection,
  not per read) for the policy and access records of the next versions. A local caller
  presents its own workload's identity (callers.pxi): told apart by the owner of its
  socket (the kernel's sock_diag, asked once per connection) or by its address, or the
  listener's when the table tells no callers apart; one that matches no workload is
  refused (HTTP 403, opaque closed; callers_refused), never given another's identity.
- The calling workload's address crosses the hop (caller_ext.pxi): the caller's node
  says its client's address in a private-use ClientHello extension; the destination
  keeps it (else the connected node's address) in Conn.source_ip, the source.ip of
  authorization. Pooled upstreams are reused only by clients at the same address.
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

from libc.errno cimport (EAGAIN, ECONNABORTED, EINPROGRESS, EINTR, EMFILE, ENFILE, ESRCH,
                         errno)
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport fprintf, snprintf, stderr
from libc.stdlib cimport abort, calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset, strchr, strlen
from posix.fcntl cimport F_GETFL, O_CLOEXEC, O_NONBLOCK, O_RDONLY, fcntl
from posix.fcntl cimport open as c_open
from posix.signal cimport kill
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, write

from fastpath.includes cimport diag, net, openssl
from fastpath.http1 cimport (BODY_CHUNKED, BODY_LENGTH, BODY_NONE, BODY_TUNNEL,
                             BODY_UNTIL_CLOSE, CHUNK_DONE, GUARDED_EXACT, GUARDED_NONE,
                             METHOD_CONNECT, METHOD_DELETE,
                             METHOD_GET, METHOD_HEAD, METHOD_OPTIONS, METHOD_OTHER, METHOD_PATCH,
                             METHOD_POST, METHOD_PUT,
                             METHOD_TRACE, Field, Method, ReqHead,
                             RespHead, TARGET_ABSOLUTE, authority_host, chunk_init,
                             chunked_advance, chunked_relay, limits_init, parse_request_head,
                             parse_response_head, request_error_status, guarded_name)
from fastpath.tls cimport (TLSContext, peer_spiffe_id, raise_tls_error, session_mark_origin,
                          session_offerable, ticket_policy_keep)
from fastpath.regex cimport Regex, RegexProg, regex_copy, regex_free, regex_fullmatch
from fastpath.headedit cimport (CLOSE_LINE_BYTES, add_field, drop_fields, drop_named,
                                drop_owned, fold_response, make_close, strip_hop_fields)

import json
import os
import socket
import time

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

# epoll tags: bits 0-1 kind, 2-31 slot index, 32-63 a generation: the slot's (`gen`) for
# its client side, the upstream socket's own (`up_tag`, loop.pxi _up_tag) for its upstream.
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


# --- the path, one stage a file (DESIGN.md §3); included so the C compiler inlines across them
include "loop.pxi"          # the event loop, accept, winding down
include "timers.pxi"        # the timer wheel: each pair's one timer, its timeouts
include "conn.pxi"          # connection slots and the buffer pool
include "io.pxi"            # socket and TLS reads and writes, the byte pump
include "handshake.pxi"     # TLS handshakes both ways and the peer's verified ID
include "caller_ext.pxi"    # the calling workload's address, carried in the ClientHello
include "detect.pxi"        # what an accepted connection is: SNI, ALPN, first bytes
include "plaintext.pxi"     # PeerAuthentication: plaintext HTTP beside mTLS, by Host
include "callers.pxi"       # which local workload is calling: socket owner, address
include "http_reply.pxi"    # the answers the engine makes itself
include "http_target.pxi"   # a request head's target form and upgrade tokens
include "normalize.pxi"     # every request's path normalized (Istio's pathNormalization)
include "http_stream.pxi"   # HTTP/1.1 framing both ways, per-request state
include "router.pxi"        # request -> service; switching a client between services
include "routes.pxi"        # request -> route -> backend: HTTPRoute matches, weights, edits
include "route_filters.pxi" # a route's URLRewrite and RequestRedirect
include "retry.pxi"         # a route's retries: kept requests, backoff, replay
include "budget.pxi"        # retry budgets per destination service (GEP-3388)
include "early.pxi"         # an answer sent before the upstream took the whole request
include "fault.pxi"         # a route rule's fault injection: delay on the wheel, abort
include "filters.pxi"       # per-request steps on the route (x-forwarded-client-cert)
include "authz.pxi"         # AuthorizationPolicy: a route's program judged
include "mirror.pxi"        # RequestMirror: a request's copy to a mirror, its answer dropped
include "balancer.pxi"      # service -> endpoint, passing over failed endpoints
include "hashing.pxi"       # consistent hashing: a request's key, ring and Maglev tables
include "outlier.pxi"       # outlier detection: ejections shared by the node's workers
include "shared_slots.pxi"  # the shared region's slots: claimed, kept, taken over
include "pool.pxi"          # connectionPool: upstream counts, waiting requests, limits
include "endpoint.pxi"      # connect, mTLS client, pool, sessions, failover
include "stats.pxi"         # request figures per (direction, service, peer)
include "table.pxi"         # route tables: compile, swap, carry-over of endpoint state
include "routes_table.pxi"  # HTTPRoute's part of a table: checked, compiled
include "route_filters_table.pxi"  # a rule's URLRewrite, RequestRedirect, backendRef filters
include "authz_table.pxi"   # AuthorizationPolicy's part of a table: checked, compiled
include "carry.pxi"         # open pairs meet a newer table
include "drain.pxi"         # graceful drain: stop accepting, finish, send clients away
include "limits.pxi"        # limits before authentication: budgets, handshakes, sources
include "ratelimit.pxi"     # RateLimitPolicy: node-wide token buckets, 429, refused pairs
include "overload.pxi"      # overload: requests in flight node-wide and per source, slow clients
include "accesslog.pxi"     # access records: one per request and per opaque pair, in a ring
include "accessjson.pxi"    # access records as JSON lines, formatted in C
include "tracing.pxi"       # trace context: x-request-id, traceparent and B3, a span per side



cdef int _raise_errno(str what) except -1:
    cdef int e = errno
    raise OSError(e, "%s: %s" % (what, os.strerror(e)))


_STATUS_TEXT = {
    STATUS_AGAIN: "would block",
    STATUS_EOF: "end of stream",
    STATUS_CLOSE: "closed",
    STATUS_RESET: "reset",
}


cdef dict _latencies(StatRecord* r):
    """A record's latency histograms by status (request_stats()), the claimed ones and
    the shared last one when it has counts."""
    cdef uint32_t k, j
    cdef uint32_t shared = ENGINE_LATENCY_CODES - 1     # never claimed: its code stays 0
    out = {}
    for k in range(ENGINE_LATENCY_CODES):
        if r.latency_codes[k] == 0 and k != shared:
            continue
        counts = [r.latency_us[k][j] for j in range(ENGINE_LATENCY_BUCKETS)]
        if k != shared or any(counts):
            out[r.latency_codes[k]] = counts
    return out


cdef dict _sizes(StatRecord* r, bint response):
    """A record's request (or response) size histograms by status (request_stats()),
    in the latency histograms' code slots: {status: {"counts": per size_bounds()
    bucket, "sum": bytes}} for the slots with counts."""
    cdef uint32_t k, j
    cdef uint64_t* hist
    out = {}
    for k in range(ENGINE_LATENCY_CODES):
        hist = &r.resp_bytes[k][0] if response else &r.req_bytes[k][0]
        counts = [hist[j] for j in range(ENGINE_SIZE_BUCKETS)]
        if any(counts) and (r.latency_codes[k] != 0 or k == ENGINE_LATENCY_CODES - 1):
            out[r.latency_codes[k]] = {
                "counts": counts,
                "sum": r.resp_bytes_sum[k] if response else r.req_bytes_sum[k]}
    return out


cdef class Engine:
    """One worker's data plane: an epoll loop over connection pairs, run by one thread.

    `max_connections`: connection pairs at once (each accepted connection and the one
    the engine opens for it), split between the inbound and the outbound side (half
    each until a table's set_limits() says); accepts beyond a side's budget are
    closed and counted (limits.pxi). A worker sizes it from its descriptor limit: a
    pair holds two. `buffer_bytes`:
    the size of a pooled buffer; a pair holds at most one per direction. Timeouts are
    seconds: `connect_timeout_s` bounds a pair's setup (TCP connect and TLS handshake)
    from its accept, `idle_timeout_s` closes a pair in which no byte moved that long.
    `drain_max_bytes`: an HTTP client that leaves mid-answer leaves its upstream to read
    the rest and be pooled when no more than this is owed (else the upstream is closed).
    `replay_max_bytes`: a request on a route that retries is kept for replay when its
    head and body are no more than this (and fit a buffer); a larger one is not retried.
    `access_records`: the access records the ring holds until the worker reads them (a
    power of two; more are dropped and counted: access_dropped()).

    Thread use: run() on a thread of its own (it returns after stop()); install(),
    stop(), stats() and `generation` from any other thread.
    """

    def __cinit__(self, int max_connections=4096, int buffer_bytes=16384,
                  double connect_timeout_s=5.0, double idle_timeout_s=300.0,
                  long long drain_max_bytes=ENGINE_DRAIN_MAX_BYTES,
                  long long replay_max_bytes=ENGINE_REPLAY_MAX_BYTES,
                  int access_records=ENGINE_ACCESS_RING):
        cdef Core* core
        cdef uint32_t i
        cdef size_t n_bufs, n_sources
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
        if access_records < 1 or access_records & (access_records - 1):
            raise ValueError("access_records must be a power of two, not %d" % access_records)
        if drain_max_bytes < 0:
            raise ValueError("drain_max_bytes must be at least 0, not %d" % drain_max_bytes)
        if not 0 <= replay_max_bytes <= 0xFFFFFFFF:
            raise ValueError("replay_max_bytes must be 0..%d, not %d"
                             % (0xFFFFFFFF, replay_max_bytes))

        core = <Core*>calloc(1, sizeof(Core))
        if core == NULL:
            raise MemoryError()
        core.epfd = -1
        core.wakefd = -1
        core.spare_fd = -1
        core.diag_fd = -1
        core.free_head = -1
        if net.pthread_mutex_init(&core.lock, NULL) != 0:
            free(core)
            raise MemoryError()
        self.core = core
        core.max_conns = <uint32_t>max_connections
        # RequestMirror copies' own slots (and their buffers), after the callers' (mirror.pxi).
        core.max_mirrors = <uint32_t>(max_connections // ENGINE_MIRROR_SHARE) or 1
        core.buffer_bytes = <uint32_t>buffer_bytes
        core.drain_max_bytes = <int64_t>drain_max_bytes
        core.replay_max_bytes = <uint32_t>replay_max_bytes
        core.connect_timeout_ns = <int64_t>(connect_timeout_s * 1e9)
        limits_init(&core.http_limits)
        core.idle_timeout_ns = <int64_t>(idle_timeout_s * 1e9)

        # Zeroed pages nobody touched are not resident: only keys in use cost memory.
        core.stats = <StatRecord*>calloc(ENGINE_STAT_RECORDS, sizeof(StatRecord))
        core.authz = <AuthzFigure*>calloc(ENGINE_AUTHZ_FIGURES, sizeof(AuthzFigure))
        core.access_ring = <AccessRecord*>calloc(access_records, sizeof(AccessRecord))
        core.access_ring_size = <uint32_t>access_records
        core.access_heads = <AccessHead*>calloc(ENGINE_ACCESS_HEADS, sizeof(AccessHead))
        core.scratch = <char*>malloc(<size_t>buffer_bytes)
        core.n_principals = 1               # [0]: no peer / not known (empty)
        core.n_tags = 1                     # [0]: no route / version (empty)
        core.conns = <Conn*>calloc(core.max_conns + core.max_mirrors, sizeof(Conn))
        # Limits before authentication (limits.pxi): the engine's own until a table's.
        core.max_inbound = _share(core.max_conns, ENGINE_INBOUND_PERMILLE)
        core.max_outbound = core.max_conns - core.max_inbound if core.max_conns > 1 else 1
        core.max_handshakes = ENGINE_MAX_HANDSHAKES
        core.max_source_conns = ENGINE_SOURCE_CONNECTIONS
        core.max_source_handshakes = ENGINE_SOURCE_HANDSHAKES
        # Per source: never more than half full (two entries per inbound slot at most:
        # its connected address's, its calling workload's: limits.pxi).
        n_sources = 2
        while n_sources < 4 * <size_t>core.max_conns:
            n_sources *= 2
        core.sources = <SourceCount*>calloc(n_sources, sizeof(SourceCount))
        core.sources_mask = <uint32_t>(n_sources - 1)
        seed = os.urandom(16)
        memcpy(core.source_seed, <const char*>seed, 16)
        seed = os.urandom(8)
        memcpy(&core.route_rng, <const char*>seed, 8)
        core.route_rng |= 1             # xorshift's state is never 0
        seed = os.urandom(32)
        memcpy(core.trace_rng, <const char*>seed, 32)
        core.trace_rng[0] |= 1          # xoshiro's state is never all zeros
        core.ready = <uint32_t*>malloc((core.max_conns + core.max_mirrors) * sizeof(uint32_t))
        core.ready_next = <uint32_t*>malloc((core.max_conns + core.max_mirrors) * sizeof(uint32_t))
        # Two blocks per slot: never short. Pages nobody touched are not resident.
        n_bufs = 2 * (<size_t>core.max_conns + core.max_mirrors)
        core.pool = <char*>malloc(n_bufs * core.buffer_bytes)
        core.free_bufs = <char**>malloc(n_bufs * sizeof(char*))
        if (core.conns == NULL or core.stats == NULL or core.authz == NULL
                or core.access_ring == NULL or core.access_heads == NULL
                or core.scratch == NULL or core.ready == NULL or core.ready_next == NULL
                or core.pool == NULL or core.free_bufs == NULL or core.sources == NULL):
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
        # Outlier detection's region: the engine's own until share_state() (outlier.pxi).
        self._shared = None
        self._outlier_index = []
        self._pool_index = []
        core.upstream_counts = <UpstreamCount*>calloc(ENGINE_UPSTREAM_COUNTS, sizeof(UpstreamCount))
        if core.upstream_counts == NULL:
            raise MemoryError()
        core.shared = <char*>calloc(1, shared_state_bytes())
        if core.shared == NULL:
            raise MemoryError()
        core.shared_owned = True
        shared_state_format(<char[:shared_state_bytes()]>core.shared)
        core.shared_slots = SHARED_DEFAULT_SLOTS
        _overload_init(core)                # requests in flight: the engine's own region
        core.shared_lease_ns = <int64_t>(SHARED_DEFAULT_LEASE_S * 1e9)
        self._rate_shared = None
        _rate_region_own(core)          # RateLimitPolicy's buckets (ratelimit.pxi)

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

    def drain(self, double deadline_s) -> None:
        """Drain gracefully, from any thread (drain.pxi): the loop stops accepting at its
        next iteration (then `draining` is True and the caller may close its listening
        sockets), answers what is in flight, sends HTTP clients away (`Connection:
        close` on their next answer, pairs quiet between requests closed), and run()
        returns once no pair is left, or `deadline_s` seconds from now, when what is
        left is closed as stop() would. A second call changes nothing."""
        if not 0 < deadline_s <= 3600:
            raise ValueError("deadline_s must be > 0 and at most an hour, not %r" % deadline_s)
        net.pthread_mutex_lock(&self.core.lock)
        if self.core.drain_for_ns == 0:
            self.core.drain_for_ns = <int64_t>(deadline_s * 1e9)
        net.pthread_mutex_unlock(&self.core.lock)
        _wake(self.core)

    @property
    def draining(self) -> bool:
        """True once a drain began: the loop has taken every listener out of its epoll
        set and accepts nothing more."""
        return mn_acquire_u32(&self.core.listeners_out) != 0

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
        _outlier_bind(self.core, t)     # (claims slots only: raises nothing)
        self._outlier_index = _outlier_index(self.core, t)
        _pool_bind(self.core, t)        # (likewise)
        _ratelimit_bind(self.core, t)   # (only names a new policy's counts: cannot fail)
        self._pool_index = _pool_index(self.core, t)
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

    def share_state(self, buffer not None) -> None:
        """Keep outlier detection's state in `buffer` (writable, laid out by
        shared_state_format(); the node's workers map one file MAP_SHARED), so that
        every engine mapping it ejects an endpoint together. Before the first install().
        The engine keeps a reference to `buffer`: it must stay mapped while it lives."""
        if self.installs != 0:
            raise RuntimeError("share_state() must come before the first install()")
        _shared_take(self.core, buffer)
        self._shared = memoryview(buffer)   # an export: the mapping cannot be closed under us

    def share_rate_limits(self, buffer not None) -> None:
        """Keep RateLimitPolicy's buckets in `buffer` (writable, laid out by
        rate_region_format(); the node's workers map one file MAP_SHARED), so that every
        engine mapping it enforces one limit together. Before the first install(); the
        engine keeps a reference to `buffer`."""
        if self.installs != 0:
            raise RuntimeError("share_rate_limits() must come before the first install()")
        _rate_region_take(self.core, buffer)
        self._rate_shared = memoryview(buffer)

    def rate_limits(self) -> list[dict]:
        """RateLimitPolicy's counts by policy name, since the engine started: {"policy",
        "allowed" (requests and opaque pairs let through), "limited" (answered 429),
        "refused" (opaque pairs closed), "overflow" (decided on a limit's overflow
        bucket: more callers than its max_keys), "no_slot" (let through: no bucket in
        the region)}; policy "" counts names past the engine's bound."""
        return _rate_view(self.core)
    def share_overload(self, buffer not None) -> None:
        """Count requests in flight in `buffer` (writable, laid out by
        overload_region_format(); the node's workers map one file MAP_SHARED), so that
        a table's max_requests_in_flight is the node's whatever the number of workers.
        Before the first install(). The engine keeps a reference to `buffer`."""
        if self.installs != 0:
            raise RuntimeError("share_overload() must come before the first install()")
        _overload_share(self.core, buffer)
        self._overload = memoryview(buffer)  # an export: the mapping cannot be closed under us

    def overload_reap(self) -> int:
        """Give back the requests in flight of the region's workers whose process is
        gone (killed mid-request); the number of workers reaped. From any thread
        (a worker's agent calls it each beat)."""
        cdef uint32_t n
        cdef uint32_t pid = <uint32_t>os.getpid()
        with nogil:
            n = _overload_reap(self.core.overload, pid)
        return n

    def overload(self) -> dict[str, int]:
        """Requests in flight now: "node" (every worker sharing the region) and
        "engine" (this one's share), and the caps the current table set (0: off)."""
        cdef OverloadRegion* r = self.core.overload
        return {"node": max(0, mn_load_i64(&r.total)),
                "engine": mn_load_i64(&r.slots[self.core.overload_slot].count),
                "max_requests_in_flight": self.core.max_inflight,
                "max_requests_per_source": self.core.max_source_requests}

    def outliers(self) -> list[dict]:
        """Outlier detection per endpoint of the last table installed: {"service",
        "address", "port", "tracked" (it has a shared slot), "ejected", "ejected_for_s",
        "ejections" (node-wide), "consecutive_5xx", "consecutive_gateway_errors"}."""
        return _outlier_view(self.core, self._outlier_index)

    def upstreams(self) -> dict[str, dict]:
        """This engine's upstream connections per service of the last table installed
        (pool.pxi): {name: {"connections" (open: connecting, in use, idle, closing),
        "pending" (HTTP requests waiting for one), "limited" (a connectionPool applies)}}.
        Read without a lock while the loop runs: a moment's figures."""
        return _pool_view(self.core, self._pool_index)

    def inbound_callers(self) -> dict[str, int]:
        """The calling workloads' addresses of this engine's inbound pairs open now
        and past their handshake (Conn.source_ip: as the caller's node carried it,
        else the connected node's), with how many pairs each. Read without a lock
        while the loop runs: a moment's figures."""
        return _callers_view(self.core)

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
        out["caller_addr_malformed"] = snap.caller_addr_malformed
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
        out["http_rebalanced"] = snap.http_rebalanced
        out["hash_no_key"] = snap.hash_no_key
        out["hash_cookies_set"] = snap.hash_cookies_set
        for i in range(5):
            out["http_responses_%dxx" % (i + 1)] = snap.http_responses[i]
        out["http_latency_us"] = [snap.http_latency_us[i] for i in range(ENGINE_LATENCY_BUCKETS)]
        out["stats_overflow"] = snap.stats_overflow
        out["sniffed_http"] = snap.sniffed_http
        out["sniffed_tcp"] = snap.sniffed_tcp
        out["inbound_protocol_mismatch"] = snap.inbound_protocol_mismatch
        # PeerAuthentication (plaintext.pxi): inbound plaintext served, and refused.
        out["plaintext_accepted"] = snap.plaintext_accepted
        out["plaintext_refused"] = snap.plaintext_refused
        out["http_upgrade_refused"] = snap.http_upgrade_refused
        out["loop_busy_us"] = [snap.loop_busy_us[i] for i in range(ENGINE_LATENCY_BUCKETS)]
        out["loop_busy_max_us"] = snap.loop_busy_max_ns // 1000
        out["pairs_moved"] = snap.pairs_moved
        out["departed_closed"] = snap.departed_closed
        out["departed_idle_closed"] = snap.departed_idle_closed
        out["drain_closed"] = snap.drain_closed
        out["callers_refused"] = snap.callers_refused
        out["caller_lookups"] = snap.caller_lookups
        out["caller_lookup_failures"] = snap.caller_lookup_failures
        # Limits before authentication: refusals by limit, and what is held now.
        out["rejected_handshakes"] = snap.rejected_handshakes
        out["rejected_source_conns"] = snap.rejected_source_conns
        out["trace_started"] = snap.trace_started
        out["trace_joined"] = snap.trace_joined
        out["trace_malformed"] = snap.trace_malformed
        out["request_ids_made"] = snap.request_ids_made
        out["trace_no_room"] = snap.trace_no_room
        out["route_matched"] = snap.route_matched
        out["route_no_match"] = snap.route_no_match
        out["route_no_backend"] = snap.route_no_backend
        out["route_timeouts"] = snap.route_timeouts
        out["route_redirects"] = snap.route_redirects
        out["route_rewrites"] = snap.route_rewrites
        out["route_retries"] = snap.route_retries
        out["route_retries_over_budget"] = snap.route_retries_over_budget
        out["faults_delayed"] = snap.faults_delayed
        out["faults_aborted"] = snap.faults_aborted
        out["route_filter_unresolved"] = snap.route_filter_unresolved
        out["rejected_source_handshakes"] = snap.rejected_source_handshakes
        out["accept_paused"] = snap.accept_paused
        # Overload defence (overload.pxi): requests shed (503 "OM") by the cap they met,
        # slow heads and bodies cut.
        out["overload_shed"] = snap.overload_shed
        out["overload_source_shed"] = snap.overload_source_shed
        out["slow_heads_cut"] = snap.slow_heads_cut
        out["slow_bodies_cut"] = snap.slow_bodies_cut
        # Outlier detection (outlier.pxi): ejections this worker made for the node.
        out["outlier_ejections"] = snap.outlier_ejections
        out["outlier_ejections_overflow"] = snap.outlier_ejections_overflow
        out["outlier_no_slot"] = snap.outlier_no_slot
        out["outlier_none_healthy"] = snap.outlier_none_healthy
        out["outlier_slots_reclaimed"] = snap.outlier_slots_reclaimed
        # connectionPool (pool.pxi): refusals by the limit met, waits, closes.
        out["pool_overflow_connections"] = snap.pool_overflow_connections
        out["pool_overflow_pending"] = snap.pool_overflow_pending
        out["pool_waited"] = snap.pool_waited
        out["pool_idle_evicted"] = snap.pool_idle_evicted
        out["pool_spent"] = snap.pool_spent
        out["pool_no_slot"] = snap.pool_no_slot
        out["pool_counts_reused"] = snap.pool_counts_reused
        # AuthorizationPolicy (authz.pxi): decisions; per policy: authz_stats().
        out["authz_allowed"] = snap.authz_allowed
        out["authz_denied_http"] = snap.authz_denied_http
        out["authz_denied_tcp"] = snap.authz_denied_tcp
        out["authz_revoked_tcp"] = snap.authz_revoked_tcp
        out["authz_audited"] = snap.authz_audited
        # RequestMirror (mirror.pxi): copies sent whole, copies given up, the slots for
        # them and those in use, and their connections as a side of their own.
        out["http_mirrored"] = snap.http_mirrored
        out["http_mirror_dropped"] = snap.http_mirror_dropped
        out["mirror_slots"] = self.core.max_mirrors
        out["mirrors_active"] = self.core.mirrors_active
        for key, value in snap.mirror.items():
            out["mirror_" + key] = value
        out["inbound_budget"] = self.core.max_inbound
        out["outbound_budget"] = self.core.max_outbound
        out["handshakes_active"] = self.core.handshakes
        out["sources_active"] = self.core.n_sources
        out["draining"] = int(mn_acquire_u32(&self.core.listeners_out) != 0)
        out["generation"] = self.core.generation
        return out

    def request_stats(self) -> list[dict]:
        """HTTP answers per (direction, service, peer, route, version), as counted so
        far: a list of {"direction": "outbound" | "inbound", "service": the name given
        to add_service() (outbound) or add_inbound_route() (inbound), "" when the
        request named none, "peer": the verified SPIFFE ID of the other side ("" when
        there was none), "local": the SPIFFE ID this side presented ("" when not given
        to the table), "route": the name of the rule that routed it, up to its "#"
        (add_route_rule(); "" when none did, and inbound), "version": the version given
        for the endpoint that answered (add_service()) or the inbound route
        (add_inbound_route()), "" when none was, "plaintext": True for inbound
        requests that came without TLS (set_inbound_mtls: Istio's
        connection_security_policy "none"), "codes": {status: count}, "shed": of the
        503s, those overload answered (Envoy's response flag "OM"),
        "latency_us": {status: counts per latency_bounds_us() bucket} for the answers
        the engine timed (its own answers it does not): a code each for the first
        ENGINE_LATENCY_CODES - 1 codes, the others together under 0,
        "request_bytes" and "response_bytes": the same answers' sizes, {status:
        {"counts": per size_bounds() bucket, "sum": bytes}} (a request as received
        from the client, its answer as sent to it: heads and bodies), "tcp": opaque
        pairs under this key, {"opened", "closed", "received", "sent"} (bytes from and
        to the accepted side), all 0 when none}.
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
                "route": core.tags[r.route].data[:core.tags[r.route].length].decode(
                    "utf-8", "replace") if r.route else "",
                "version": core.tags[r.version].data[:core.tags[r.version].length].decode(
                    "utf-8", "replace") if r.version else "",
                "plaintext": bool(r.plaintext),
                "codes": codes,
                "shed": r.shed,
                "latency_us": _latencies(r),
                "request_bytes": _sizes(r, False),
                "response_bytes": _sizes(r, True),
                "tcp": {"opened": r.tcp_opened, "closed": r.tcp_closed,
                        "received": r.tcp_received, "sent": r.tcp_sent},
            })
        return out

    def access_lines(self, int limit=ENGINE_ACCESS_RING) -> tuple[bytes, int]:
        """Take up to `limit` access records from the ring, oldest first, as JSON lines
        in Envoy's default access log names (accessjson.pxi), and their count: one per
        HTTP answer and per opaque pair closed, those its table's set_access_log()
        keeps (and a tap, and set_tracing(spans=True) for a sampled span). Formatted without the GIL; one reader at a time (the ring has a single
        consumer); the slots read are the engine's to write again once this returns."""
        cdef Core* core = self.core
        cdef uint64_t out = core.access_out
        cdef uint64_t end = mn_load_u64(&core.access_in)
        cdef int64_t offset = _wall_offset_ns()
        cdef JsonOut w
        cdef size_t taken
        if end - out > <uint64_t>max(limit, 0):
            end = out + <uint64_t>max(limit, 0)
        if end == out:
            return b"", 0
        w.len, w.cap = 0, <size_t>(end - out) * 2048
        w.buf = <char*>malloc(w.cap)
        if w.buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                taken = _access_format(core, &w, out, end, offset)
            mn_store_u64(&core.access_out, out + taken)
            return w.buf[:w.len], taken
        finally:
            free(w.buf)

    def access_records(self, int limit=ENGINE_ACCESS_RING) -> list[dict]:
        """access_lines() parsed: the records as dicts (tests, a tap), the same text."""
        lines, _ = self.access_lines(limit)
        return [json.loads(line) for line in lines.splitlines()]

    def set_tap(self, bint on) -> None:
        """While `on`, every request and opaque pair gets a record, whatever its table's
        access log keeps: those the access log would not have say "tap_only" (a tap
        under way wants them: meshnode.tap matches its filters in the reader's thread).
        The ring is the same: a busy tap fills it sooner, and what it drops is counted."""
        mn_store_u32(&self.core.access_tap, 1 if on else 0)

    def access_dropped(self) -> dict[str, int]:
        """Access records not kept, by reason: "ring_full" (the reader was behind),
        "no_head" (more requests awaited answers than heads are kept for). Only grow."""
        return {"ring_full": self.core.access_ring_full, "no_head": self.core.access_no_head}

    def authz_stats(self) -> list[dict]:
        """Authorization decisions per (policy, action), counted so far across tables:
        a list of {"policy": "namespace/name" ("" when no policy decided: with
        "action" "ALLOW", no ALLOW policy matched; with "NONE", none applied), "action":
        "ALLOW" | "DENY" | "AUDIT" | "NONE", "allowed", "denied", "audited": counts}.
        A decision counts under the policy that made it; an AUDIT policy counts each
        request or connection it matches. Counts only grow."""
        cdef Core* core = self.core
        cdef uint32_t n = mn_acquire_u32(&core.n_authz)
        cdef uint32_t i
        cdef AuthzFigure* f
        names = ("ALLOW", "DENY", "AUDIT", "NONE")
        out = []
        for i in range(n):
            f = &core.authz[i]
            out.append({"policy": f.policy.data[:f.policy.length].decode("utf-8", "replace")
                        if f.policy.length else "",
                        "action": names[f.action], "allowed": f.allowed, "denied": f.denied,
                        "audited": f.audited})
        return out


def _wall_offset_ns() -> int:
    """The wall clock less the monotonic one the engine stamps with, from the closest
    of three reads: a read preempted between its two clocks shifted every time of the
    batch it stamped, and the two sides' spans of one request came out of order."""
    best = None
    for _ in range(3):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    return best[1]


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
                e = _host_lookup(t.hosts, t.n_hosts, host, hn, port) if hn > 0 else NULL
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
# Bytes every HTTP head keeps free in its buffer for the trace fields (tracing.pxi): a
# head fills at most its buffer less these and its own fields' room.
TRACE_ROOM = _TRACE_ROOM
"""Compiled with MESHNODE_DEBUG=1: bounds checks and invariants on (tests/fastpath/
test_debug_build.py runs the suites against such a build)."""


def size_bounds() -> list[int]:
    """Inclusive upper bounds (bytes) of request_stats()' size buckets (Envoy's default
    histogram buckets, 0.5 read as 0); one more bucket takes everything above the last."""
    return [_SIZE_BOUNDS[i] for i in range(ENGINE_SIZE_BUCKETS - 1)]


def latency_bounds_us() -> list[int]:
    """Exclusive upper bounds (microseconds) of stats()["http_latency_us"] buckets; the
    last bucket also takes everything above its bound."""
    bounds = [1, 2, 3, 4]
    for idx in range(4, ENGINE_LATENCY_BUCKETS):
        e = idx // 4 + 1
        bounds.append((5 + idx % 4) << (e - 2))
    return bounds

