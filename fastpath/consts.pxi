# fastpath/consts.pxi: limits and build flags shared by fastpath's .pyx files.
#
# Include from .pyx files only (`include "consts.pxi"`), never from a .pxd, or the
# names get defined twice in one module.

cdef enum:
    # RFC 7301 §3.1: a protocol name is 1..255 bytes, the whole list fits a uint16.
    ALPN_PROTO_MAX_BYTES = 255
    ALPN_LIST_MAX_BYTES = 65535

    # Enough for ERR_error_string_n's "error:XXXXXXXX:lib:func:reason" line.
    TLS_ERR_STRING_BYTES = 256

    # RFC 8446 §5.1: a record carries at most 2^14 bytes of plaintext, so one SSL_read
    # never returns more; a blocking read(n) allocates no more than this.
    TLS_RECORD_PLAINTEXT_BYTES = 16384

    # SSL_CTX_set_tlsext_ticket_keys: 16 bytes of ticket name, a 32-byte HMAC key and a
    # 32-byte AES key.
    TLS_TICKET_KEYS_BYTES = 80

    # A TLS session's whole life, counted from the full handshake that verified the
    # peer's certificate (resumptions do not extend it), and never past that
    # certificate's notAfter: so no session outlives a revoked or expired certificate
    # by more than this. Certificates live 1 h by default (meshnode.ca).
    TLS_SESSION_LIFE_S = 3600
    # Ticket keys: a new one every period; tickets sealed with the previous one still
    # open for one more period (then a full handshake).
    TLS_TICKET_PERIOD_S = 3600

    # SPIFFE ID spec §2.3: implementations must accept IDs up to 2048 bytes. A buffer
    # for peer_spiffe_id() holds that plus the NUL.
    SPIFFE_ID_MAX_BYTES = 2048

# peer_spiffe_id() / _spiffe_from_x509(): a length >= 0 is the ID's; these are < 0.
cdef enum:
    SPIFFE_NO_PEER = -1       # no certificate (no peer cert, or none yet: no handshake)
    SPIFFE_UNVERIFIED = -2    # the peer's chain did not verify to the trust bundle
    SPIFFE_NONE = -3          # no URI SAN, or the one URI SAN is not a spiffe:// URI
    SPIFFE_MANY = -4          # more than one URI SAN (X509-SVID §2: exactly one)
    SPIFFE_TOO_LONG = -5      # the ID and its NUL do not fit the caller's buffer
    SPIFFE_MALFORMED = -6     # SAN does not decode, or the ID breaks SPIFFE ID §2 syntax

# MESHNODE_DEBUG is set by setup.py (MESHNODE_DEBUG=1 builds); the default keeps a
# plain `cython` run or a foreign build compiling as release.
cdef extern from *:
    """
    #ifndef MESHNODE_DEBUG
    #define MESHNODE_DEBUG 0
    #endif
    """
    const bint MESHNODE_DEBUG


# --- fastpath.http1: HTTP/1.1 codec limits and return codes ------------------------
# Self-contained block: the codec's defaults (copied into a Limits by limits_init) and
# the codes its nogil functions return. See fastpath/http1.pxd for what each limit bounds.

cdef enum:
    # nginx's large_client_header_buffers is 4 x 8 KiB: one request-line or one field
    # line must fit 8 KiB there, so clients already live within these.
    HTTP1_DEFAULT_MAX_REQUEST_LINE = 8192
    HTTP1_DEFAULT_MAX_HEADER_BYTES = 8192
    # Envoy's max_headers_count default.
    HTTP1_DEFAULT_MAX_HEADERS = 100
    # The whole head; Envoy's max_request_headers_kb default is 60 KiB.
    HTTP1_DEFAULT_MAX_HEAD_BYTES = 65536
    # Chunk extensions carry nothing a proxy uses; llhttp caps them after
    # CVE-2024-22019 (unbounded extensions as a CPU and bandwidth sink).
    HTTP1_DEFAULT_MAX_CHUNK_EXT = 1024
    HTTP1_DEFAULT_MAX_TRAILER_BYTES = 8192
    # Hex digits of one chunk-size, leading zeros included: 16 cover the int64 range.
    HTTP1_MAX_CHUNK_DIGITS = 16

# One chunk's size: by default anything a Content-Length may be (int64).
cdef extern from *:
    """
    #define HTTP1_DEFAULT_MAX_CHUNK_SIZE INT64_MAX
    """
    const long long HTTP1_DEFAULT_MAX_CHUNK_SIZE

# parse_request_head / parse_response_head return a head length > 0, or one of these;
# chunked_advance returns a byte count >= 0, or one of the errors.
cdef enum:
    HTTP1_AGAIN = 0             # incomplete: call again with more bytes
    HTTP1_EPARSE = -1           # malformed (400; 502 from an upstream)
    HTTP1_ELIMIT_LINE = -2      # request-line over max_request_line (414)
    HTTP1_ELIMIT_HEADERS = -3   # field count, field line or head over its limit (431)
    HTTP1_EVERSION = -4         # HTTP major version other than 1 (505)
    HTTP1_ELENGTH = -5          # unusable message framing: smuggling rules (400)
    HTTP1_ETRANSFER = -6        # a transfer coding other than chunked (501)
    HTTP1_ELIMIT_CHUNK = -7     # chunk-size, chunk-ext or trailers over the limit (413)

# --- engine (fastpath/engine.pyx): event loop, connection and buffer limits ----------

cdef enum:
    # Readiness events taken per epoll_wait; more wait for the next iteration.
    ENGINE_EPOLL_EVENTS = 256
    # Connections accepted per listener wakeup (level-triggered, so the rest come back
    # next iteration): one busy listener cannot starve established connections.
    ENGINE_ACCEPT_BATCH = 64
    # The timer wheel's tick (timers.pxi): 2^22 ns, 4.2 ms. A timeout fires at the
    # first tick boundary at or after its deadline: never early, at most a tick (and
    # epoll_wait's millisecond) late.
    ENGINE_TIMER_TICK_SHIFT = 22
    # The longest epoll_wait of a loop with no timer due sooner: nothing needs the loop
    # before its next timer or an eventfd wakeup; this only bounds a lost wakeup.
    ENGINE_WAIT_MAX_MS = 60000
    # A sniffing outbound listener (an HTTP service port's outboundPort) waits this long
    # for the client's first bytes before it takes the connection for opaque TCP (a
    # server-first protocol sends nothing until the server spoke).
    ENGINE_SNIFF_TIMEOUT_MS = 200
    # The longest absolute-form authority the engine edits into a Host field: a DNS name
    # (253) with a port and brackets; a longer one names no route anyway.
    ENGINE_AUTHORITY_MAX = 320
    # The longest Location a RequestRedirect writes (route_filters.pxi): its path is
    # the client's; a request whose Location would be longer is answered 414.
    ENGINE_LOCATION_MAX = 8192
    # Engine(drain_max_bytes=) default: an HTTP client that leaves mid-answer leaves its
    # upstream to read the rest and drop it, when no more than this is owed
    # (Content-Length); a larger answer, or one still coming at the connect timeout,
    # closes the upstream instead.
    ENGINE_DRAIN_MAX_BYTES = 1048576
    # Engine(replay_max_bytes=) default: a request on a route with a retry policy is kept
    # for replay (retry.pxi) when its head and body are no more than this and fit the
    # pair's buffer: a larger request is sent as it streams, never held whole.
    ENGINE_REPLAY_MAX_BYTES = 65536
    # How long an opaque TCP pair whose destination left the table (a config push)
    # goes on before it is closed, unless the table says (Mesh drainDuration; Istio's
    # terminationDrainDuration default).
    ENGINE_DRAIN_PERIOD_MS = 5000
    # Draining (Engine.drain): an HTTP pair between requests for this long is closed
    # (a client sending at that moment would meet the close, as at any keep-alive
    # timeout; one that keeps sending gets `Connection: close` on its next answer).
    ENGINE_DRAIN_IDLE_MS = 1000
    # Outbound setup (connect, TLS handshake, peer identity) failing on an endpoint:
    # the connection is set up again on the service's next endpoint, at most this many
    # tries in all (Istio's default retry policy: 2 retries on connect failure), and
    # the failed endpoint is passed over by the round robin for a while: BASE ms after
    # its first failure in a row, doubling with each further one up to MAX (Linkerd's
    # failure accrual backs off the same way). A set-up connection ends its streak.
    ENGINE_SETUP_TRIES = 3
    ENGINE_EJECT_BASE_MS = 1000
    ENGINE_EJECT_MAX_MS = 30000
    # OpenSSL's read-ahead buffer per TLS connection (while it holds bytes): up to four
    # full records per read() of a streaming answer instead of one.
    ENGINE_TLS_READ_BYTES = 65536 + 4 * 256
    # Bytes one connection moves per turn before the loop serves others; the rest of
    # its work goes on the ready list (edge-triggered epoll will not report it again).
    ENGINE_PUMP_BUDGET_BYTES = 262144
    # Engine(max_connections=, buffer_bytes=) bounds. Connection slots, their buffers
    # (two per connection, one per direction) and ready lists are sized up front.
    ENGINE_MAX_CONNECTIONS = 1048576
    ENGINE_MIN_BUFFER_BYTES = 1024
    ENGINE_MAX_BUFFER_BYTES = 16777216
    # Connection slot indexes fit the 30 bits an epoll tag gives them.
    ENGINE_TAG_INDEX_BITS = 30
    # Limits before authentication (limits.pxi), the engine's own until a table sets
    # them (Mesh spec.connections, whose defaults these are). Per engine (per worker).
    # Inbound TLS handshakes under way at once: a full handshake costs this side a
    # signature and a chain verification, and an idle one a slot until the connect
    # timeout; a peer's burst of new connections (hundreds at once from one node) waits
    # its turn on this one thread, so this is well above such a burst.
    ENGINE_MAX_HANDSHAKES = 1024
    # Handshakes under way from one source address: half of the above, so no one address
    # takes them all, yet a peer node's burst (its pooled connections coming back at
    # once, on a loaded host) is not refused; and connections from one address in all
    # (every connection from another node comes from its address: a busy node holds many).
    ENGINE_SOURCE_HANDSHAKES = 512
    ENGINE_SOURCE_CONNECTIONS = 2048
    # The inbound side's share of the slots, in thousandths; outbound has the rest.
    ENGINE_INBOUND_PERMILLE = 500
    # Out of descriptors with no spare to shed a connection with: the listeners leave
    # the loop this long (nginx disables accept events for its accept_mutex_delay,
    # 500 ms, on EMFILE), then come back and try again.
    ENGINE_ACCEPT_PAUSE_MS = 100
    # Overload defence (overload.pxi): the slow-client defaults (Apache
    # mod_reqtimeout's: a head or body must come at 500 bytes a second after 20 s).
    ENGINE_SLOW_GRACE_MS = 20000
    ENGINE_SLOW_MIN_RATE = 500
    # RequestMirror (mirror.pxi): slots for copies of requests on their way to a mirror
    # backend, one per this many connection slots (at least one), on top of them: a
    # mirror never takes a slot a caller could have. A copy's whole life (connect,
    # send, its answer read and dropped) is bounded by its rule's timeout, else this
    # (Envoy's default route timeout, which its shadow requests keep).
    ENGINE_MIRROR_SHARE = 8
    ENGINE_MIRROR_TIMEOUT_MS = 15000
    # "-shadow", added to a copy's Host (as Envoy names a shadow's authority).
    ENGINE_SHADOW_SUFFIX_BYTES = 7
    # The TLS extension type of the caller's address in a node's ClientHello
    # (caller_ext.pxi): private use (RFC 8446 §4.2; 0xFF01 is renegotiation_info).
    ENGINE_CALLER_EXT_TYPE = 0xFF4D
