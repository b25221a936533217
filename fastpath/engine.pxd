# fastpath/engine.pxd: the data plane engine's C state: route tables, connection pairs,
# buffer pool, counters, and the Python classes that own them.
#
# Everything below the classes' Python-facing methods is plain C touched only by the
# engine thread (the one inside Engine.run(), GIL released), except where a field says
# otherwise. The reasoning is in engine.pyx's docstring; the implementation in the stage
# files it includes (loop, timers, conn, io, handshake, caller_ext, detect, http_stream,
# router, filters, balancer, endpoint, stats, table: *.pxi), one stage of a connection's
# path each.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastpath.includes cimport net, openssl
from fastpath.http1 cimport ChunkState, Limits, ReqHead, RespHead


# Results of the engine's nogil functions; Engine maps them to exceptions (_check).
cdef enum Status:
    STATUS_OK = 0
    STATUS_AGAIN = -1      # would block: wait for the next readiness event
    STATUS_EOF = -2        # the peer closed its sending side (FIN, or close_notify)
    STATUS_CLOSE = -3      # close the pair (done, or refused during setup): FIN
    STATUS_RESET = -4      # the pair failed mid-stream (counted where found): RST
    STATUS_ENOMEM = -5     # out of memory
    STATUS_ESYS = -6       # a system call failed; errno is in Core.saved_errno
    STATUS_RETRY = -7      # HTTP: a pooled upstream failed before answering: route again
    STATUS_BACKOFF = -8    # HTTP: a try failed that its route retries: wait, then again


# --- route table: what a snapshot of config says, in C -----------------------------------

cdef struct Name:
    char* data             # NUL-terminated copy, malloc'd
    uint32_t length


# One destination service port's upstream connections in this worker (pool.pxi), kept
# in Core.upstream_counts by the service's name so that it outlives tables: an upstream
# counts from its connect until its socket closes, in a pair, idle in a pool, carried
# to a newer table or ending. Engine thread only, but for `key` (claimed at install,
# when `tables` and `conns` are read to find an entry nobody uses any more) and `tables`.
cdef struct UpstreamCount:
    uint64_t key                   # 0: never claimed; else its service's, or of one gone
    uint32_t conns                 # upstreams open (connecting, in use, idle, closing)
    uint32_t pending               # HTTP requests waiting for one (CONN_POOL_WAIT)
    uint32_t tables                # tables built that point at it (atomic: bound at
                                   # install, let go when the table is freed, by either
                                   # thread); 0 with `conns` 0: free to take for another key


# An HTTP upstream connection (mTLS, peer identity verified) with no request on it,
# kept by its endpoint for the next client connection routed there. Not in the epoll
# set while idle: checked (SSL_read must say WANT_READ) and aged when taken.
cdef struct IdleUp:
    int fd
    openssl.SSL* ssl
    int64_t since_ns
    uint16_t principal             # the peer's SPIFFE ID (Core.principals index)
    openssl.SSL_CTX* client_ctx    # the identity it was opened as (compared only): a
                                   # connection is only reused by the same caller identity
    UpstreamCount* counted         # its service's count it is in (pool.pxi; NULL: none)
    uint32_t requests              # requests it carried (maxRequestsPerConnection)
    uint64_t caller[2]             # the address of the client it was opened for, as
                                   # limits.pxi _source_key: its ClientHello told the
                                   # other node that caller (caller_ext.pxi), so only a
                                   # client at the same address reuses it


cdef enum:
    # Idle HTTP upstream connections kept per endpoint (LIFO; more are closed).
    ENGINE_POOL_PER_ENDPOINT = 64
    # Destination service ports whose upstream connections a worker counts (pool.pxi):
    # an open-addressed table keyed by the service's name, entries never freed.
    ENGINE_UPSTREAM_COUNTS = 4096


# DestinationRule trafficPolicy.connectionPool, compiled for one service port (Istio's
# ConnectionPoolSettings, per worker: the node splits the limits, meshnode.dataplane).
cdef struct ConnPoolPolicy:
    uint32_t max_connections       # tcp.maxConnections (0: no limit)
    uint32_t max_pending           # http.http1MaxPendingRequests
    uint32_t max_requests          # http.maxRequestsPerConnection (0: no limit)
    int64_t connect_timeout_ns     # tcp.connectTimeout (0: the engine's)


# Outlier detection's state, shared by a node's workers (outlier.pxi): an endpoint of a
# service (keyed by the service's name and the endpoint's address) has one slot in a
# fixed-layout region every worker maps MAP_SHARED (Engine.share_state), so that an
# ejection is the node's, not one worker's; so does each outlier-detecting service
# (keyed by its name alone: its `ejecting`). Fields are read and written with atomics
# (fastpath/includes/atomics.pxd) only; times are CLOCK_MONOTONIC, one clock for every
# process of the host. One cache line per slot. Claimed, kept and taken over as
# shared_slots.pxi says.
cdef struct SharedSlot:
    uint64_t key                   # 0: never claimed; claimed by compare-and-swap, taken
                                   # over in place once unseen for the region's lease
    int64_t ejected_until_ns       # ejected until then (0: never ejected)
    uint32_t consecutive_5xx       # answers >= 500 (and failed setups) in a row
    uint32_t consecutive_gateway   # 502/503/504 (and failed setups) in a row
    uint32_t multiplier            # the ejection time's multiple of baseEjectionTime
    uint32_t ejecting              # a service's own slot (keyed by its name alone): the
                                   # ejections of its endpoints being decided now, by any
                                   # worker (low 8 bits), and since when (the rest: the
                                   # oldest one's monotonic milliseconds, wrapping;
                                   # outlier.pxi _outlier_announce)
    uint64_t ejections             # ejections so far (node-wide, since its key's claim)
    int64_t seen_ns                # when a worker last had it in a table (0: just claimed)
    uint64_t reserved[2]


cdef struct Endpoint


# DestinationRule trafficPolicy.outlierDetection, compiled for one service (Envoy's
# consecutive_5xx and consecutive_gateway_failure detectors, as Istio configures them).
cdef struct OutlierPolicy:
    uint32_t consecutive_5xx       # 0: that detector is off
    uint32_t consecutive_gateway   # 0: off
    int64_t interval_ns            # the sweep: ejections end on its ticks
    int64_t base_ns                # baseEjectionTime
    uint32_t max_percent           # maxEjectionPercent
    uint32_t min_health_percent    # below it healthy, ejections are ignored (0: never)
    Endpoint* endpoints            # the service's (each with its slot: Endpoint.shared)
    SharedSlot* guard              # the service's own slot (NULL: the region is full)
    uint64_t guard_key             # its key (the slot is the service's while it holds it)
    uint32_t n_slots               # = the service's n_endpoints
    int64_t panic_at_ns            # min_health_percent: when `panic` was last worked out
    bint panic


cdef struct Endpoint:
    net.sockaddr_storage addr      # the destination node's inbound port
    net.socklen_t addrlen
    # Last resumable client session for this endpoint, and the client SSL_CTX that made
    # it: a session carries the client identity it was made with, so a connection from
    # another ctx must not resume it. Engine thread only.
    openssl.SSL_SESSION* session
    openssl.SSL_CTX* session_ctx   # compared, never dereferenced
    IdleUp idle[ENGINE_POOL_PER_ENDPOINT]   # HTTP: idle upstreams, newest last
    uint32_t n_idle
    # Setups that failed here in a row, and until when the balancer passes the
    # endpoint over for it (ENGINE_EJECT_*_MS). Engine thread only; carried over to
    # the same service's same address when a new table is swapped in.
    uint32_t fails
    int64_t down_until_ns
    # What the balancer weighs (balancer.pxi), engine thread only, carried over as
    # `fails` is: requests sent here and not yet answered (HTTP; an opaque pair counts
    # one while it is open), and the peak-EWMA latency estimate (ns) with the time it
    # was last moved (0: no estimate yet, the default RTT stands in).
    uint32_t outstanding
    double ewma_ns
    int64_t ewma_at_ns
    # The `version` label of the workload serving here (empty: none), for request
    # figures (destination_version), and its Core.tags index + 1 once looked up (0: not
    # yet; stats.pxi _tag_of).
    Name version
    uint16_t version_tag
    # Outlier detection (outlier.pxi): the service's policy (NULL: none) and this
    # endpoint's shared slot (NULL: none, or no room), both set when the table is built.
    OutlierPolicy* outlier
    SharedSlot* shared
    uint64_t shared_key            # its key: the slot is this endpoint's while it holds it


# The filter chain (filters.pxi): a route's compiled steps, run at three points of a
# pair's path, each returning continue, stop (run it again later: no room yet, a limit
# to wait out) or answer (the engine answers instead of forwarding). Steps are kinds in
# a switch, not function pointers, so the compiler inlines them into the path.
cdef enum FilterPhase:
    PHASE_CONNECTION = 0           # the pair is set up: the peer's verified ID is known
    PHASE_REQUEST = 1              # a request head is framed, before it goes on
    PHASE_RESPONSE = 2             # a response head is framed, before it goes on
    PHASE_ACCEPT = 3               # an opaque pair is about to be carried (inbound: its
                                   # handshake done; outbound: before its upstream)


cdef enum FilterVerdict:
    FILTER_CONTINUE = 0
    FILTER_STOP = 1                # changed nothing; run again from this step later
    FILTER_ANSWER = 2              # FilterCall.status says what (0: refuse, no answer)


cdef enum FilterKind:
    # Outbound, on connection: the upstream's SPIFFE ID must be one the service runs as.
    FILTER_PEER_ID = 1
    # Inbound, on request: x-forwarded-client-cert set to the route's and the caller's
    # verified IDs, whatever the caller sent under that name (Envoy's SANITIZE_SET).
    FILTER_XFCC = 2
    # Either side, on request or on an opaque pair's accept: a RateLimitPolicy's token
    # bucket (ratelimit.pxi); `arg` is its Table.limits index.
    FILTER_RATE_LIMIT = 3
    # Inbound, on request (HTTP) and at accept (an opaque pair): the route's
    # AuthorizationPolicy program (authz.pxi); denied: 403, or the pair closed.
    FILTER_AUTHZ = 4


cdef struct Filter:
    uint8_t kind                   # FilterKind
    uint8_t phase                  # FilterPhase
    uint32_t arg                   # kind-specific (an index into the table's arrays)


cdef struct FilterChain:
    Filter* steps                  # malloc'd, in order; NULL when n == 0
    uint32_t n
    uint32_t phases                # bit (1 << phase) set when a step runs there


# What a step sees and says, for one run of a chain.
cdef struct FilterCall:
    uint8_t phase
    ReqHead* req                   # PHASE_REQUEST: the head parsed at d2u.buf + base
    uint32_t base
    int64_t delta                  # the head's change in length, summed over the steps
    RespHead* resp                 # PHASE_RESPONSE
    const char* peer               # PHASE_CONNECTION: the peer's verified ID (or NULL)
    int peer_len
    int status                     # FILTER_ANSWER: the engine's answer (0: refuse)
    bint kept                      # ... sent in place: the pair goes on (filters.pxi
                                   # _answer_in_place)


# AuthorizationPolicy (authz.pxi, Istio's semantics): an inbound route's program as the
# control side compiles it (fastpath/authz_table.pxi checks it), flattened into arrays
# the program owns: policies -> rules -> clauses (a SOURCE or an OPERATION: all its
# matches hold) and `when` matches -> leaves. Indexes, not pointers: one malloc per
# array, freed with the table.
cdef enum AuthzAction:
    AUTHZ_ALLOW = 0
    AUTHZ_DENY
    AUTHZ_AUDIT
    AUTHZ_NONE                     # figures only: no ALLOW policy, no DENY matched


cdef enum AuthzField:
    AZ_PRINCIPAL = 0               # the peer's SPIFFE ID without "spiffe://"
    AZ_NAMESPACE                   # the namespace in it
    AZ_SOURCE_IP                   # the calling workload's address (Conn.source_ip)
    AZ_REMOTE_IP                   # the first X-Forwarded-For entry, else AZ_SOURCE_IP
    AZ_DEST_IP                     # the local app's address
    AZ_DEST_PORT                   # the local app's port
    AZ_SNI                         # the route's SNI
    AZ_HOST                        # HTTP only (Istio's forTCP errors): Host, no case
    AZ_METHOD                      # HTTP only
    AZ_PATH                        # HTTP only: as normalized, query stripped
    AZ_HEADER                      # HTTP only: request.headers[NAME]


cdef enum AuthzLeafKind:
    AZ_EXACT = 0
    AZ_PREFIX
    AZ_SUFFIX
    AZ_ANY                         # present (an absent value matches no leaf)
    AZ_TEMPLATE                    # Istio path template: {*} one segment, {**} the rest
    AZ_CIDR
    AZ_PORT


# Istio's meshConfig.pathNormalization (Envoy's normalize_path, merge_slashes,
# path_with_escaped_slashes_action): a table's, for every HTTP request (normalize.pxi).
cdef enum PathNormalization:
    PATH_NORM_NONE = 0
    PATH_NORM_BASE                 # RFC 3986 §5.2.4 dot segments, unreserved %XX decoded
    PATH_NORM_MERGE_SLASHES        # BASE, then "//" -> "/"
    PATH_NORM_DECODE_AND_MERGE     # %2F, %5C decoded first, then MERGE_SLASHES


cdef struct AuthzLeaf:
    uint8_t kind                   # AuthzLeafKind
    uint8_t bits                   # AZ_CIDR: prefix length over the 16-byte address
    uint32_t off                   # strings: AuthzProgram.text[off : off + length]
    uint32_t length
    uint8_t addr[16]               # AZ_CIDR: the network (IPv4 as ::ffff:a.b.c.d)
    bint v6                        # AZ_CIDR: an IPv6 block (holds no IPv4 address)
    uint32_t port                  # AZ_PORT


cdef struct AuthzMatch:
    uint8_t field                  # AuthzField
    uint32_t name_off              # AZ_HEADER: the field's name (lowercase) in text
    uint32_t name_len
    bint has_values                # values given: one of them must match
    uint32_t first_value           # AuthzProgram.leaves
    uint32_t n_values
    uint32_t first_not             # ... none of these may match
    uint32_t n_not


cdef struct AuthzClause:           # a SOURCE or an OPERATION: every match holds
    uint32_t first_match
    uint32_t n_matches


cdef struct AuthzRule:
    bint any_from                  # `from` absent: any source
    uint32_t first_from            # AuthzProgram.clauses: one of them holds
    uint32_t n_from
    bint any_to
    uint32_t first_to
    uint32_t n_to
    uint32_t first_when            # AuthzProgram.matches: every one holds
    uint32_t n_when
    bint http_only                 # it names an HTTP-only field (AZ_HOST and after)


cdef struct AuthzPolicy:
    uint8_t action                 # AuthzAction
    uint32_t name_off              # "namespace/name" in text
    uint32_t name_len
    uint32_t first_rule
    uint32_t n_rules               # 0: matches nothing
    uint16_t figure                # Core.authz index + 1 (0: not looked up yet)


cdef struct AuthzProgram:
    AuthzPolicy* policies
    uint32_t n_policies
    AuthzRule* rules
    AuthzClause* clauses
    AuthzMatch* matches
    AuthzLeaf* leaves
    char* text
    bint has_allow                 # an ALLOW policy: a request must match one
    uint32_t want                  # bit (1 << AuthzField) per field some match names
    uint16_t figure_none           # figures of the decisions no policy made (index + 1)
    uint16_t figure_unmatched


# Authorization decisions per (policy, action), node-lifetime (Core.authz): created by
# the engine thread at a policy's first decision, published with n_authz, counts read
# without a lock like Counters.
cdef struct AuthzFigure:
    Name policy                    # "namespace/name"; empty: no policy decided
    uint8_t action                 # AuthzAction
    uint64_t allowed
    uint64_t denied
    uint64_t audited


# How a service picks an endpoint for a new upstream (balancer.pxi).
cdef enum BalancerKind:
    BALANCE_P2C_EWMA = 0           # the default: two random picks, the cheaper by peak
                                   # EWMA latency x (outstanding + 1) wins (Linkerd)
    BALANCE_ROUND_ROBIN            # in turn
    BALANCE_RANDOM                 # uniformly
    BALANCE_LEAST_REQUEST          # two random picks, the fewer outstanding wins (Envoy)
    BALANCE_RING_HASH              # consistent hash on a ring (hashing.pxi, Envoy's RING_HASH)
    BALANCE_MAGLEV                 # consistent hash in a Maglev table (Envoy's MAGLEV)


# DestinationRule consistentHash (hashing.pxi): what a request is hashed by, and the
# service's ring or Maglev table, built at install and never changed after.
cdef enum HashKeyKind:
    HASH_KEY_NONE = 0              # no key: every request is a random pick (Envoy)
    HASH_KEY_HEADER                # httpHeaderName: the field's value(s)
    HASH_KEY_COOKIE                # httpCookie: the cookie's value (maybe generated)
    HASH_KEY_SOURCE_IP             # useSourceIp: the caller's address
    HASH_KEY_QUERY                 # httpQueryParameterName: the first value, decoded


cdef struct HashPolicy:
    uint8_t key                    # HashKeyKind
    Name name                      # header (lowercase), cookie or query parameter name
    Name path                      # httpCookie.path (empty: none)
    int64_t ttl_s                  # httpCookie.ttl: -1 none (a missing cookie is no
                                   # key), 0 a session cookie, else its Max-Age
    uint64_t* points               # ring: the sorted points; Maglev: NULL
    uint32_t* owners               # ring: each point's endpoint; Maglev: each slot's
    uint32_t n_slots               # points on the ring, or the Maglev table's size


cdef struct Service:
    FilterChain chain              # its steps (on connection: the upstream's ID)
    Name name                      # as RouteTable.add_service() got it: request figures' key
    uint16_t name_tag              # Core.tags index + 1 of `name` (0: not looked up yet)
    Name sni                       # sent in the ClientHello: the destination service
    Name* identities               # SPIFFE IDs the destination may present (>= 1)
    uint32_t n_identities
    Endpoint* endpoints
    uint32_t n_endpoints
    uint32_t rr_next               # round-robin cursor; engine thread only
    uint8_t balancer               # BalancerKind
    uint32_t first_set             # its route sets: Table.sets[first_set : + n_sets]
    uint32_t n_sets                # (0: no HTTPRoute: requests go to the service itself)
    HashPolicy* hash               # BALANCE_RING_HASH / MAGLEV: owned (hashing.pxi)
    RetryBudget* budget            # in Table.budgets; shared by one Service's ports
    OutlierPolicy* outlier         # outlierDetection: owned (outlier.pxi); NULL: none
    ConnPoolPolicy* conn_pool      # connectionPool: owned (pool.pxi); NULL: none
    UpstreamCount* upstreams       # its count in Core.upstream_counts (NULL: no room)


cdef struct OutboundListener:
    int fd                         # borrowed: the Python caller owns the socket
    uint32_t service               # TCP: the one service; HTTP: unused (routed by Host)
    bint http                      # the HTTP outbound listener (port-base+1)
    bint sniff                     # a service port's listener that tells HTTP/1.1 from
                                   # opaque TCP by the first bytes (CONN_SNIFFING):
                                   # its port's protocol is omitted or "auto"
    bint framed                    # a service port's listener whose port is declared
                                   # HTTP: framed always, what does not parse gets a 4xx
    openssl.SSL_CTX* client_ctx    # one reference owned: the identity of every caller
                                   # when the table tells none apart (Table.sources
                                   # empty); NULL: none (callers are refused)
    Name identity                  # its SPIFFE ID, for request figures (may be empty)
    int32_t principal              # Core.principals index of `identity`; -1: not yet
    int32_t ns                     # Table.namespaces index of its namespace; -1: none


# A local workload as its callers are told apart (DESIGN §4 "Who is calling"): by the
# OS account that owns the calling socket (callers.pxi asks the kernel), or, where no
# workload names one, by its own address (as Istio's ztunnel tells pods apart). A
# connection accepted on any outbound listener presents the identity of the source it
# matches; one matching none is refused.
cdef struct Source:
    int64_t uid                    # the owner of the caller's socket; -1: by address only
    net.sockaddr_storage addr      # port ignored; ss_family 0: any address (by uid only)
    openssl.SSL_CTX* client_ctx    # one reference owned
    Name identity
    int32_t principal              # as in OutboundListener
    int32_t ns                     # as in OutboundListener


# One Host name an HTTP request may name (svc, svc.ns, svc.ns.svc), for one service
# port. Table.hosts is sorted by (name bytes, insertion order): a lookup is a binary
# search for the name's run, then the entry whose port the request named, else the
# run's first (the service's first HTTP port).
cdef struct HostEntry:
    Name name                      # lowercase, no port, no trailing dot
    int port                       # the service port (1..65535)
    uint32_t service               # index in Table.services


# HTTPRoute (Gateway API, GAMMA) compiled (routes.pxi): a service port with routes has
# route sets, one for its producer routes and one per namespace with consumer routes;
# a set's entries are its rules' matches in precedence order, the first that holds
# picks a rule, and the rule picks a backend service by weight. No entry holds: 404.
cdef enum RouteMatchKind:
    MATCH_ANY = 0                  # (path only) no condition
    MATCH_EXACT
    MATCH_PREFIX                   # path, segment-wise: "/v2" is not a prefix of "/v2x"
    MATCH_REGEX                    # the whole value (RE2 syntax, fastpath.regex)


cdef struct RouteStr:              # one header or query parameter condition
    uint8_t kind                   # MATCH_EXACT or MATCH_REGEX
    Name name                      # header: lowercase (compared without case); query:
                                   # compared exactly
    Name value
    void* regex                    # MATCH_REGEX: its compiled program (owned)


cdef struct RouteEntry:            # one match of one rule
    uint8_t path_kind              # RouteMatchKind
    Name path
    void* path_regex               # MATCH_REGEX: its compiled program (owned)
    int32_t method                 # http1 Method; -1: any
    RouteStr* headers
    uint32_t n_headers
    RouteStr* query
    uint32_t n_query
    uint32_t rule                  # index in Table.rules


cdef enum HeaderOp:
    EDIT_REMOVE = 0
    EDIT_SET                       # every field of the name goes; one line comes in
    EDIT_ADD                       # one line more, whatever is there


cdef struct HeaderEdit:
    uint8_t op                     # HeaderOp
    Name name
    Name value


cdef struct RouteBackend:
    int32_t service                # index in Table.services; -1: an invalid backendRef
                                   # (its share of the requests is answered 500)
    uint32_t weight
    int32_t rule                   # the backendRef's own filters: Table.rules index of the
                                   # rule as this backend is chosen (its edits and the
                                   # ref's merged); -1: the rule's own


# URLRewrite and RequestRedirect compiled (route_filters.pxi). Every part the request
# does not decide is settled at install: a redirect's scheme, and its port (0: none in
# Location, the scheme's own); left to the request: the host (hostname empty) and the path.
cdef enum PathOp:
    PATH_KEEP = 0
    PATH_FULL                      # ReplaceFullPath: the path (not the query) is `path`
    PATH_PREFIX                    # ReplacePrefixMatch: `prefix` (whole segments) becomes
                                   # `path`; both without a trailing "/" ("/": empty)


cdef struct UrlFilter:
    uint16_t redirect              # RequestRedirect's status (301..308); 0: URLRewrite
    uint8_t path_op                # PathOp
    Name scheme                    # redirect: "http" or "https"
    Name hostname                  # empty: the request's own (redirect) or kept (rewrite)
    uint16_t port                  # redirect: 0: none written
    Name path
    Name prefix


# RequestMirror (mirror.pxi): a copy of each request the rule takes, chosen with
# probability numerator/denominator, goes to `service` too; its answer is dropped.
cdef struct RouteMirror:
    uint32_t service               # index in Table.services
    uint32_t numerator             # <= denominator
    uint32_t denominator           # >= 1


# A rule's `retry` (Gateway API GEP-1731) (retry.pxi); the budget it draws on is its
# backend service's (RetryBudget, budget.pxi).
cdef enum:
    ENGINE_RETRY_SLOTS = 10        # the budget's window, in this many slots
    ENGINE_RETRY_CODE_WORDS = 4    # codes 400..599, a bit each


cdef struct RetryPolicy:
    uint32_t attempts              # retries after the first try (>= 1)
    uint64_t codes[ENGINE_RETRY_CODE_WORDS]   # bit (code - 400): retried
    int64_t backoff_ns             # the least wait before a retry


# A destination Service's retry budget (budget.pxi; Linkerd's, as Gateway API
# XBackendTrafficPolicy retryConstraint sets it; GEP-3388: one per destination service,
# across its routes): a retry toward the service is allowed while the window's retries
# stay within `percent` of its requests, or while fewer than `min_count` were made in
# the current `min_interval_ns` (the floor for quiet services). Shared by the service's
# ports (Table.budgets); engine thread only past the build.
cdef struct RetryBudget:
    uint32_t percent               # 0..100
    int64_t slot_ns                # the window (budget.interval) / ENGINE_RETRY_SLOTS
    uint32_t min_count             # minRetryRate.count (0: no floor)
    int64_t min_interval_ns        # minRetryRate.interval
    # Requests and retries per slot of the window (a ring), the slot number (now /
    # slot_ns) of the newest, its ring index and when it ends (0: never rolled): a
    # request inside the current slot costs a compare and an add.
    uint32_t requests[ENGINE_RETRY_SLOTS]
    uint32_t retries[ENGINE_RETRY_SLOTS]
    int64_t slot_at
    uint32_t slot
    int64_t slot_end_ns
    # The floor's own window: since when, and the retries it allowed in it.
    int64_t min_since_ns
    uint32_t min_used
    bint carried                   # a swap gave it the previous table's counts


# A rule's fault injection (fault.pxi): an ExtensionRef filter naming a meshnode.io
# FaultInjection (Istio's HTTPFaultInjection). Chances are parts per million, drawn
# independently (Istio: "delay and abort faults are independent of one another").
cdef struct RouteFault:
    int64_t delay_ns               # fixedDelay (0: no delay)
    uint32_t delay_ppm             # the chance a request is held that long first
    uint16_t abort_status          # httpStatus (0: no abort)
    uint32_t abort_ppm             # the chance a request is answered it, at once
    bint unresolved                # the filter names nothing meshnode has: every
                                   # request the rule takes is answered 500


cdef struct RouteRule:
    Name name                      # "ns/route" and the rule's index or name: for figures
    RouteBackend* backends         # in order; none: every request is answered 500
    uint32_t n_backends
    uint64_t total_weight
    HeaderEdit* request_edits      # RequestHeaderModifier: remove, then set, then add
    uint32_t n_request_edits
    uint32_t request_grow          # the most bytes its edits add to a head
    HeaderEdit* response_edits     # ResponseHeaderModifier
    uint32_t n_response_edits
    uint32_t response_grow
    # timeouts.request (0: none), over all of a request's tries, and backendRequest
    # (0: none), each try's: from the request's framing (a retry: its new try) until
    # its answer is whole; expired before the answer's head, the engine answers 504.
    int64_t timeout_ns
    RouteMirror* mirrors           # RequestMirror filters, in order (mirror.pxi)
    uint32_t n_mirrors
    UrlFilter* url                 # URLRewrite or RequestRedirect (route_filters.pxi);
                                   # NULL: neither
    uint16_t route_tag             # Core.tags index + 1 of `name` up to its "#", the
                                   # `route` of its requests' figures (0: not looked up)
    int64_t try_timeout_ns
    RetryPolicy* retry             # malloc'd; NULL: no retries (retry.pxi)
    RouteFault* fault              # its FaultInjection (fault.pxi), owned; NULL: none


cdef struct RouteSet:
    uint32_t service               # the parent service port (index in Table.services)
    int32_t ns                     # -1: producer routes; else Table.namespaces index:
                                   # consumer routes of callers in that namespace
    uint32_t first_entry           # its entries: Table.entries[first : first + n]
    uint32_t n_entries


cdef struct InboundRoute:
    FilterChain chain              # its steps (on request: x-forwarded-client-cert)
    Name sni
    Name alias                     # the other name it answers to, for callers that send
                                   # another form (older nodes); empty: none
    Name service                   # the local service, as named for request figures
    Name identity                  # the local service's SPIFFE ID (empty: not given)
    int32_t principal              # as in OutboundListener
    openssl.SSL_CTX* server_ctx    # one reference owned: the local service's identity
    net.sockaddr_storage app_addr  # the local app, reached in plaintext
    net.socklen_t app_addrlen
    uint8_t protocol               # the app port's declared protocol (PROTO_*): HTTP is
                                   # framed whatever ALPN the peer offers, TCP is opaque,
                                   # AUTO is told by the first bytes
    Name version                   # the local workload's `version` label, as Endpoint's
    uint16_t version_tag
    uint16_t service_tag           # Core.tags index + 1 of `service` (0: not looked up yet)
    AuthzProgram* authz            # its AuthorizationPolicies (authz.pxi), owned; NULL: none
    uint8_t mtls                   # MtlsMode: does it take plaintext too (plaintext.pxi)


# PeerAuthentication's mtls.mode of an inbound route (Istio's): STRICT takes mutual TLS
# only; PERMISSIVE and DISABLE take plaintext HTTP too, routed by its Host (plaintext.pxi).
cdef enum MtlsMode:
    MTLS_STRICT = 0
    MTLS_PERMISSIVE
    MTLS_DISABLE


# A service port's declared protocol (DESIGN §3: the declared protocol wins).
cdef enum Protocol:
    PROTO_AUTO = 0                 # omitted or "auto": told by the first bytes
    PROTO_HTTP                     # HTTP/1.1, always framed
    PROTO_TCP                      # opaque


# RateLimitPolicy (ratelimit.pxi): one limit's token bucket(s), GCRA on a theoretical
# arrival time per bucket in a region the node's workers map together.
cdef enum RateKey:
    RATE_BY_NONE = 0               # one bucket: the service's, or the route rule's
    RATE_BY_PRINCIPAL              # a bucket per caller SPIFFE ID
    RATE_BY_SOURCE_IP              # a bucket per caller address


cdef struct RateBucket:            # in the shared region
    uint64_t key                   # whose (0: never claimed)
    int64_t tat                    # GCRA's theoretical arrival time, CLOCK_MONOTONIC ns


cdef struct RateLimit:
    int64_t emission_ns            # one token's worth of time (fillInterval / tokensPerFill)
    int64_t burst_ns               # maxTokens x emission_ns: how far ahead tat may run
    uint64_t key                   # the policy's own (name and limit): its buckets' seed
    uint8_t by                     # RateKey
    int32_t* rules                 # outbound: the Table.rules indexes it limits (malloc'd;
    uint32_t n_rules               # none: any request)
    uint32_t first                 # its window in the region (by its key): its own (or overflow)
    uint32_t n_keys                # bucket, then n_keys buckets for distinct keys
    uint16_t stat                  # Core.rate_stats index (0: names over the bound)
    Name policy_field              # "ratelimit-policy: ...\r\n" of its 429s
    Name policy                    # the policy's id in the RateLimit field


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
    HostEntry* hosts               # for the HTTP outbound listener; sorted, see HostEntry
    uint32_t n_hosts
    Source* sources                # local callers told apart (none: the listener's identity)
    uint32_t n_sources
    bint callers_by_user           # the sources name uids: each caller's is looked up
    # Timeouts the engine takes on when it swaps this table in (0: keep its own).
    int64_t connect_timeout_ns
    int64_t idle_timeout_ns
    # How long an opaque TCP pair whose destination left with this table may go on
    # before it is closed (0: keep the engine's; Mesh drainDuration).
    int64_t drain_ns
    # PathNormalization of every HTTP request's path, both ways (normalize.pxi).
    uint8_t path_normalization
    # Access records (accesslog.pxi): kept at all, the share of requests and pairs
    # sampled (per 10000), and the least status a request's record needs (0: any; a
    # pair's, a response flag).
    bint access_on
    uint32_t access_sample
    uint16_t access_min_status
    # Tracing (tracing.pxi): the share of new traces sampled, per 10000 (Mesh
    # spec.tracing.sampling; a trace a caller began keeps its own decision), and
    # whether a sampled span gets a record when the access log did not draw its request
    # (a collector is named: telemetry exports spans from the records).
    uint32_t trace_sample
    bint trace_spans
    # Limits before authentication the engine takes on at the swap (limits.pxi; 0:
    # keep its own): inbound TLS handshakes under way, connections and handshakes per
    # source address, and the inbound side's share of the slots (thousandths).
    uint32_t max_handshakes
    uint32_t max_source_conns
    uint32_t max_source_handshakes
    uint32_t inbound_permille
    # Overload defence the engine takes on at the swap (overload.pxi; only when
    # overload_set: each 0 means off): HTTP requests in flight node-wide, concurrent
    # requests from one inbound source address, and a slow client's grace period and
    # the least bytes per second its request head or body must come at after it.
    bint overload_set
    uint32_t max_inflight
    uint32_t max_source_requests
    int64_t slow_grace_ns
    uint32_t slow_min_rate
    # HTTPRoute (routes.pxi): route sets sorted by parent service, their entries and
    # rules, and the namespaces consumer routes name (callers' namespaces are indexes).
    RouteSet* sets
    uint32_t n_sets
    RouteEntry* entries
    uint32_t n_entries
    RouteRule* rules
    uint32_t n_rules
    Name* namespaces
    uint32_t n_namespaces
    RetryBudget* budgets           # every service's retry budget (budget.pxi)
    uint32_t n_budgets
    RateLimit* limits              # RateLimitPolicy limits (ratelimit.pxi), Filter.arg
    uint32_t n_limits
    uint32_t request_grow          # the most any rule's request edits add to a head
    uint32_t response_grow         # ... and its response edits (and a generated
                                   # consistent-hash cookie's Set-Cookie line)
    # PeerAuthentication (plaintext.pxi): some inbound route takes plaintext (else an
    # accepted connection goes straight to its TLS handshake, as with none), and the
    # Host names a plaintext request may give, sorted as `hosts`, each naming its route
    # (HostEntry.service: an index in `routes`; a STRICT one refuses it).
    bint plaintext
    HostEntry* plain_hosts
    uint32_t n_plain_hosts


# --- connections ---------------------------------------------------------------------------

# Array sizes in the structs below (a .pxd cannot include consts.pxi).
cdef enum:
    # The caller's address as a ClientHello carries it (caller_ext.pxi): a family byte
    # (4 or 6), then the 4 or 16 bytes of the address.
    ENGINE_CALLER_WIRE_MAX = 17
    # HTTP outbound: requests one client connection may have sent upstream and not yet
    # seen answered (pipelining depth); further requests wait in the client's buffer.
    ENGINE_HTTP_PIPELINE_MAX = 16
    # Request latency histogram: log-linear, 4 buckets per power of two microseconds
    # (bounds: fastpath.engine.latency_bounds_us()); the last one takes the rest.
    ENGINE_LATENCY_BUCKETS = 160
    # A request figure keeps a latency histogram for each of its first
    # ENGINE_LATENCY_CODES - 1 status codes (Istio's request_duration carries
    # response_code); the answers of any further code share the last one, code 0.
    ENGINE_LATENCY_CODES = 6
    # Request and response size histograms (Istio's request_bytes / response_bytes):
    # one bucket per bound of Envoy's default histogram buckets, which Istio's
    # istio_request_bytes and istio_response_bytes use (stats.pxi _SIZE_BOUNDS), and
    # one for what is over the last bound.
    ENGINE_SIZE_BUCKETS = 20
    # Request figures are kept per (direction, service, peer SPIFFE ID): at most this
    # many such keys (more are counted in Counters.stats_overflow, not per key) ...
    ENGINE_STAT_RECORDS = 512
    # ... and this many distinct peer IDs (index 0: none / not known; more are 0) ...
    ENGINE_PRINCIPALS = 256
    # ... and this many distinct `route` and `destination_version` values (index 0:
    # none), each at most ENGINE_TAG_MAX_BYTES long; an answer whose value finds no room
    # is counted in Counters.stats_overflow, not under another key.
    ENGINE_TAGS = 256
    ENGINE_TAG_MAX_BYTES = 253
    # Access records (accesslog.pxi): the ring the worker drains (the default size), the
    # heads kept for requests awaiting their answers, and the most of each text a
    # record keeps (a longer one is cut there and flagged).
    ENGINE_ACCESS_RING = 4096
    ENGINE_ACCESS_HEADS = 1024
    ENGINE_ACCESS_PATH_MAX = 256
    ENGINE_ACCESS_METHOD_MAX = 16
    ENGINE_ACCESS_AUTHORITY_MAX = 128
    ENGINE_ACCESS_ID_MAX = 64      # x-request-id (a UUID is 36)
    ENGINE_ACCESS_TRACE_MAX = 64   # traceparent (version 00 is 55)
    # RateLimitPolicy names counted apart (ratelimit.pxi); more are counted under "".
    ENGINE_RATE_POLICIES = 64
    # Status codes 100..599 counted one by one (index code - 100); anything else in
    # the last slot.
    ENGINE_STATUS_SLOTS = 501
    # Worker slots in the node's region of requests in flight (overload.pxi): a node
    # runs a worker per core.
    ENGINE_OVERLOAD_WORKERS = 256
    # The timer wheel's lists (geometry and the reasons for it: timers.pxi): level 0
    # has 2^8 slots of one tick, levels 1..3 have 2^6 slots each, every level's slot 64
    # times as long as the one below; one more list holds the timers being fired.
    ENGINE_TIMER_L0_BITS = 8
    ENGINE_TIMER_LN_BITS = 6
    ENGINE_TIMER_LISTS = (1 << ENGINE_TIMER_L0_BITS) + 3 * (1 << ENGINE_TIMER_LN_BITS) + 1
    ENGINE_TIMER_WORDS = (ENGINE_TIMER_LISTS + 63) >> 6    # occupancy bitmap words
    # RequestMirror filters one rule may have (Gateway API v1.1 allows several): the
    # copies of one request that are fed its body as it passes (mirror.pxi).
    ENGINE_MIRRORS_MAX = 4
    # Authorization figures (Core.authz): distinct (policy, action) pairs counted; more
    # go to Counters.stats_overflow.
    ENGINE_AUTHZ_FIGURES = 1024


# Outbound: the owner of a local caller's socket, asked of the kernel at most once per
# pair (callers.pxi), only when its table tells callers apart by user.
cdef enum CallerState:
    CALLER_NOT_ASKED = 0
    CALLER_KNOWN                   # Conn.caller_uid holds it
    CALLER_UNKNOWN                 # the lookup failed (the caller is refused)


# A connection pair's life. One Conn is two sockets: `down`, the one accepted, and
# `up`, the one the engine connected. Events on the side not named by the state are
# left for later (the setup deadline bounds how long).
#
#   HTTP out: FREE ─accept─► HTTP_HEAD ─request head parsed, Host routed─► CONNECTING …
#             HTTP_HEAD ─bad head / no route / no endpoint─► (status reply) ─► FREE
#             CONNECTING, HANDSHAKING ─failure─► (503 reply) ─► FREE
#             PIPE ─a request for another service─► (end the upstream: close_notify,
#                  wait for its end, responses flushed) ─► HTTP_HEAD (same client)
#   outbound: FREE ─accept─► CONNECTING ─TCP up─► HANDSHAKING ─TLS done, peer ID allowed─► PIPE
#   inbound:  FREE ─accept─► HANDSHAKING ─TLS done (SNI route)─► CONNECTING ─TCP up─► PIPE
#   inbound plaintext (a table with a PERMISSIVE or DISABLE route, plaintext.pxi):
#             FREE ─accept─► HANDSHAKING (CONN_FIRST_BYTE) ─first byte 22─► (TLS, as above)
#             HANDSHAKING ─another byte─► SNIFFING ─a request line─► HTTP_HEAD ─head parsed,
#             Host names a route that takes plaintext─► CONNECTING ─TCP up─► PIPE
#             SNIFFING ─not HTTP─►, HTTP_HEAD ─no such route─► (reset) ─► FREE
#   PIPE ─both directions closed (FIN / close_notify passed on)─► FREE
#   any ─error, timeout, stop()─► FREE      (sockets closed, buffers returned, counted)
cdef enum ConnState:
    CONN_FREE = 0
    CONN_CONNECTING
    CONN_HANDSHAKING
    CONN_PIPE
    CONN_HTTP_HEAD                 # HTTP outbound: reading the first request head
    CONN_SNIFFING                  # sniffing listener: HTTP request or opaque TCP?
    CONN_BACKOFF                   # HTTP outbound: a try failed, its retry waits out its
                                   # backoff (no upstream; the client's bytes wait)
    CONN_POOL_WAIT                 # HTTP outbound: a request waits for an upstream of its
                                   # service (connectionPool at maxConnections, pool.pxi)


cdef struct Side:
    int fd                         # -1 when closed / not opened yet
    openssl.SSL* ssl               # NULL for the plaintext side
    # The socket may have bytes to read: set by every EPOLLIN (edge-triggered: each new
    # arrival brings one), cleared when a read finds it empty (EAGAIN, or a plaintext
    # read shorter than asked). A read of a side not readable costs no system call.
    bint readable
    bint hup                       # EPOLLRDHUP/HUP/ERR seen: an end is pending, so a
                                   # short read does not mean the socket is empty
    # Outbound `up` (pool.pxi): the service count this socket is in until it closes
    # (_side_close; NULL: none), and the requests it carried.
    UpstreamCount* counted
    uint32_t requests
    # Plaintext bytes read from and written to this socket (_recv, _send): a client's
    # side gives an opaque pair's bytes to its access record.
    uint64_t bytes_in
    uint64_t bytes_out


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
                                   # (plaintext: its first request's Host did)
    CONN_HTTP = 64                 # accepted on the HTTP outbound listener
    CONN_HTTP_REPLIED = 128        # HTTP: the engine answered the client itself
    # HTTP: the upstream came from the pool, no byte of it was read yet, the requests
    # sent on it are idempotent and still whole in d2u from offset 0: if it fails now
    # (the other node closed it as we took it: the keep-alive race), route them again.
    CONN_RETRYABLE = 256
    # HTTP: `service` is the one the client's request named (its answers are counted
    # for it; before routing, and after a 404, they are counted for no service).
    CONN_SERVICE_KNOWN = 512
    # HTTP: a request on this pair got its whole answer already.
    CONN_ANSWERED = 1024
    # HTTP outbound: reading from or writing to the client failed (it reset or left).
    CONN_CLIENT_GONE = 2048
    # HTTP outbound, client gone with whole requests upstream: their answers are read
    # and dropped, then the upstream goes to the pool (as HAProxy keeps a server
    # connection whose client aborted), so a client's abort costs no new handshake.
    CONN_DRAINING = 4096
    # HTTP from a service port's own listener: every request goes to that service,
    # whatever its Host (routing by Host is the shared listener's).
    CONN_FIXED_SERVICE = 8192
    # HTTP outbound, draining: the answer under way when the client left had its head
    # framed for the client, so it counts with its status (Envoy keeps the code of a
    # response whose headers it had, and flags it "downstream disconnected"); answers
    # begun after that count as 0.
    CONN_DRAIN_HEAD_SEEN = 16384
    # Outbound: the upstream is being set up (connect, TLS handshake, peer ID check);
    # a failure now moves the pair to the service's next endpoint (_setup_failed).
    CONN_SETTING_UP = 32768
    # HTTP outbound: the one request in flight is kept for replay by its rule's retry
    # (retry.pxi): its bytes, as edited for the hop, stay whole at d2u offset 0 until
    # its answer's head passes, and no request behind it is framed until then.
    CONN_KEPT = 65536
    # HTTP: the pair is going away (the engine drains, or its listener left the table):
    # the next request framed is its last (its answer says close), and between
    # requests the pair is closed (_going_away).
    CONN_GOING_AWAY = 131072
    # HTTP inbound, on an older table: its next request is framed there all the same
    # (the buffer it fills has no room for the current route's fields); it moves after.
    CONN_HOLD_TABLE = 262144
    # Inbound: counted in its source address's entry (limits.pxi) until it closes ...
    CONN_SOURCE_HELD = 524288
    # ... and in the handshakes under way (its own and its source's) until its TLS
    # handshake ends (_settle) or it closes.
    CONN_HANDSHAKE_HELD = 1048576
    # HTTP outbound: the next request's route was decided as it was framed (it named
    # another backend, so the pair switches first): Conn.decided_* say where it goes,
    # so that a weighted choice is made once per request.
    CONN_ROUTE_DECIDED = 2097152
    # Outbound: the pair holds an endpoint (c.endpoint, picked by the balancer) and
    # counts in its `outstanding` (Conn.ep_load) until it lets go (_load_release).
    CONN_EP_BOUND = 4194304
    # A mirror's copy of a request (mirror.pxi): `up` only, no client; its answer is
    # read and dropped.
    CONN_MIRROR = 8388608
    # Inbound, on a table with a route that takes plaintext (plaintext.pxi): in
    # HANDSHAKING, no SSL yet, until the first byte says TLS (a handshake record) or not.
    CONN_FIRST_BYTE = 16777216
    # Inbound without TLS (PeerAuthentication PERMISSIVE or DISABLE): no peer ID, HTTP
    # only, on the route its first request's Host named.
    CONN_PLAINTEXT = 33554432
    # Inbound: the ClientHello carried a caller address that is not one (caller_ext.pxi):
    # the handshake failed on it, counted as caller_addr_malformed.
    CONN_CALLER_MALFORMED = 67108864
    # Inbound: the ClientHello named the route's alias, not its SNI: connection.sni
    # is the alias (authz.pxi), and a newer table's route is found by it (carry.pxi).
    CONN_SNI_ALIAS = 134217728


# HTTP outbound, in PIPE: where the client's bytes (d2u) are in their request.
#   HEAD ─head parsed, same service─► LENGTH (Content-Length > 0) / CHUNKED / HEAD (no body)
#   LENGTH ─req_left bytes─► HEAD      CHUNKED ─chunked_advance DONE─► HEAD
#   HEAD ─Upgrade or CONNECT head (its body framed first)─► UPGRADE_WAIT: nothing more is
#        framed; what the client sends waits in d2u until the answer: 101 (2xx to
#        CONNECT) ─► TUNNEL (opaque from here on, both ways); any other ─► HEAD, so the
#        bytes behind the refused head are framed as requests like any others.
cdef enum ReqPhase:
    REQ_HEAD = 0
    REQ_LENGTH
    REQ_CHUNKED
    REQ_TUNNEL
    REQ_UPGRADE_WAIT


# HTTP: the last request framed asked to leave HTTP (Upgrade, CONNECT); its answer says.
cdef enum UpgradeState:
    UPGRADE_NONE = 0
    UPGRADE_ASKED                  # waiting for the answer
    UPGRADE_GRANTED                # 101 / 2xx to CONNECT came while its body was framed


# HTTP outbound, in PIPE: where the upstream's bytes (u2d) are in their response.
#   HEAD ─1xx head (not 101)─► HEAD (interim: forwarded, the request still waits)
#   HEAD ─final head─► LENGTH / CHUNKED ─body framed─► HEAD (request answered: counted)
#        └─► HEAD (no body)   └─► CLOSE (body until the upstream ends)
#   HEAD ─101, 2xx to CONNECT, or the requests went TUNNEL─► TUNNEL (opaque)
# The upstream ending in HEAD with a request unanswered and nothing of its response
# sent yet: 502 to the client; ending mid-body: the client connection is reset.
cdef enum RespPhase:
    RESP_HEAD = 0
    RESP_LENGTH
    RESP_CHUNKED
    RESP_CLOSE
    RESP_TUNNEL


# A request's span (tracing.pxi): its trace, its own id and its parent's (0: it begins
# the trace), and TraceFlag bits. Kept in its access record's head (AccessHead.trace);
# a request with no TRACE_ON (answered before it was framed) has none.
cdef struct TraceIds:
    uint64_t trace_hi
    uint64_t trace_lo
    uint64_t span
    uint64_t parent
    uint8_t flags

cdef enum TraceFlag:
    TRACE_ON = 1                   # the ids are set
    TRACE_SAMPLED = 2              # the trace is sampled (W3C's flag 01, B3's sampled 1)
    TRACE_B3 = 4                   # the caller sent B3 fields: they are passed on too
    TRACE_JOINED = 8               # the trace came with the request (not begun here)


cdef struct Conn:
    ConnState state
    uint32_t flags
    uint32_t gen                   # bumped on free: stale epoll tags are ignored
    uint32_t up_tag                # the generation in the upstream socket's epoll tag
                                   # (_up_tag; 0: none, its events are stale)
    uint32_t index
    int next_free
    Table* table                   # holds a reference: the config the pair started on
    uint32_t service               # outbound: index in table.services
    uint32_t endpoint              # outbound: index in the service's endpoints
    uint32_t ep_load               # outbound, CONN_EP_BOUND: what the pair adds to its
                                   # endpoint's `outstanding` (balancer.pxi)
    uint32_t setup_tries           # outbound: endpoints tried for this setup (failover)
    uint32_t tries                 # HTTP outbound, CONN_KEPT: retries made so far
    uint32_t failed_endpoint       # ... and the endpoint of the last failed try
    uint32_t route                 # inbound: index in table.routes (servername callback)
    int lfd                        # outbound: the listener it was accepted on (a table may
                                   # move: found again by fd in the next one)
    net.sockaddr_storage peer_addr # outbound: the client's address (its identity);
                                   # inbound: the source its limits are counted for
    # Inbound: the calling workload's own address (16 bytes, IPv4 as ::ffff:a.b.c.d),
    # what authorization (source.ip, ipBlocks) and a rate limit by source address judge:
    # the address the caller's node carried in its ClientHello (caller_ext.pxi; that
    # node accepted the workload's connection), else the connected peer's, set at accept
    # (limits.pxi): a node that carries none (an older version), a plaintext caller
    # (PeerAuthentication PERMISSIVE, DISABLE). Written while the handshake runs, before
    # the peer is verified: it is the caller's only once the handshake completed (the
    # pair is past CONN_HANDSHAKING), the transcript both Finished messages sign covering
    # it. Nothing sent after the handshake (no request header) changes it.
    uint8_t source_ip[16]
    CallerState caller             # outbound: what the kernel said of the caller's socket
    uint32_t caller_uid            # ... its owner, when CALLER_KNOWN (asked once a pair)
    # Outbound: the extension body the ClientHello carries, built from peer_addr by the
    # add callback; OpenSSL copies it only after the callback returns.
    uint8_t caller_wire[ENGINE_CALLER_WIRE_MAX]
    int64_t close_at_ns            # opaque: its destination left the table; closed then
                                   # (0: not due)
    openssl.SSL_CTX* client_ctx    # outbound: borrowed from the table
    Side down
    Side up
    Flow d2u                       # down → up
    Flow u2d                       # up → down
    # The deadline of the state the pair is in (setup: connect + handshake; the first
    # request head; sniffing; draining) and the last time bytes moved (idle timeout).
    int64_t deadline_ns
    int64_t active_ns              # written per pump; the idle timer re-arms lazily
    # The pair's one timer (timers.pxi), filed at its nearest deadline: `tw_list` is
    # 1 + the index of the wheel list it is on (0: not armed; zeroed slots start so),
    # `tw_tick` the tick it is filed for, and the list's neighbours.
    Conn* tw_next
    Conn* tw_prev
    int64_t tw_tick
    uint32_t tw_list
    char* peer_id                  # verified peer SPIFFE ID (malloc'd, NUL-terminated)
    uint32_t peer_id_length
    # HTTP outbound only (CONN_HTTP). d2u.buf[d2u.head : d2u.head + fwd] is framed as
    # part of requests for the current upstream: only those bytes are sent.
    ReqPhase req_phase
    uint32_t fwd
    int64_t req_left               # REQ_LENGTH: body bytes still to frame
    bint switching                 # the next request is for another service
    bint reusable                  # no request or response on this upstream said close
    bint client_close              # the client's last request said close: no more are
                                   # read, its answer says close, then the client goes
    uint8_t up_refused             # early.pxi UpRefused: a send to the upstream failed,
                                   # what it answered goes on, then the pair ends
    uint8_t upgrade                # UpgradeState of the last request framed
    uint32_t head_scan             # the request head being read: searched this far
                                   # (from its start) for its end (_head_ended)
    uint8_t head_method            # Method of the head being read, once it parsed (else
                                   # METHOD_OTHER): an engine's answer to it before it
                                   # is pending (_http_reply_fields) has no body if HEAD
    ChunkState chunk               # REQ_CHUNKED
    # u2d.buf[u2d.head : u2d.head + resp_fwd] is framed response bytes: only those go on.
    RespPhase resp_phase
    uint32_t resp_fwd
    int64_t resp_left              # RESP_LENGTH: body bytes still to frame
    uint16_t resp_status           # of the response being framed
    ChunkState resp_chunk          # RESP_CHUNKED
    # Requests sent upstream, not yet answered, oldest first (a ring): when each was
    # framed (latency) and its method (HEAD and CONNECT change the response framing).
    int64_t pend_start_ns[ENGINE_HTTP_PIPELINE_MAX]
    uint8_t pend_method[ENGINE_HTTP_PIPELINE_MAX]
    uint32_t pend_first
    uint32_t n_pend
    # Sizes (stats.pxi, Istio's request_bytes and response_bytes, what Envoy's stats
    # filter takes from the downstream bytes meter): each pending request's bytes as
    # received from the client, head and body (set as its head is framed, grown as its
    # body is; final once its body is framed, or at its answer if that comes first),
    # and the bytes of the answer being framed as sent to the client, every head
    # (interim ones too) and its body (final at its answer, _http_answered; for a body
    # that runs until the upstream's end, at that end or the pair's close:
    # open_size_stat). _count_sizes takes both, and zeroes resp_bytes.
    uint64_t pend_req_bytes[ENGINE_HTTP_PIPELINE_MAX]
    uint64_t resp_bytes
    # A body running until the upstream's end (RESP_CLOSE): the StatRecord its sizes go
    # to at that end (-1: none), the record's code slot, its request's bytes.
    int32_t open_size_stat
    uint8_t open_size_slot
    uint64_t open_req_bytes
    # Request figures: the peer's ID as a Core.principals index, and the StatRecord the
    # pair's answers go to (-1: look it up at the next answer).
    uint16_t peer_principal
    uint16_t local_principal       # the identity this node presents for the pair
    int32_t stat
    int32_t tcp_stat               # an opaque pair's record (Istio's istio_tcp_*): set
                                   # as it starts relaying (-1: not relaying, or none left)
    # Bytes kept free at the end of the request buffer for the fields the filter chain
    # adds to each request head (inbound: x-forwarded-client-cert).
    uint32_t head_reserve
    uint8_t filter_at              # the request's chain stopped at this step: resume there
    # HTTPRoute (routes.pxi), outbound: the caller's namespace (Table.namespaces index
    # on c.table; -1: none there), the rule of the request being framed (Table.rules
    # index; -1: none), each pending request's rule (its response edits), and the
    # decision CONN_ROUTE_DECIDED keeps: backend service, rule, or the engine's answer.
    int32_t caller_ns
    uint32_t parent                # CONN_FIXED_SERVICE: its listener's service (routed by
                                   # that service's routes; c.service is the backend)
    int32_t req_rule
    int32_t pend_rule[ENGINE_HTTP_PIPELINE_MAX]
    int64_t pend_deadline[ENGINE_HTTP_PIPELINE_MAX]  # its route's timeout (0: none)
    int64_t req_deadline_ns        # the oldest pending request's (0: none): the timer's
    uint32_t decided_service
    int32_t decided_rule
    uint16_t decided_status
    # RequestMirror (mirror.pxi). A client pair: the copies of the request whose body is
    # being framed (slot index and serial; fed as it passes). A copy (CONN_MIRROR): its
    # serial, where it is (MirrorState), and when it is given up (0: not set).
    uint32_t mirror_slot[ENGINE_MIRRORS_MAX]
    uint32_t mirror_serial[ENGINE_MIRRORS_MAX]
    uint8_t n_mirroring
    uint8_t mirror_state
    uint32_t serial
    int64_t mirror_deadline_ns
    # Consistent hashing (hashing.pxi), outbound: the key of the request being routed
    # (hash_state: 0 none, 1 a key, 2 a key and a cookie generated for it), the
    # cookie value generated for this client connection (0: none yet), and which
    # pending requests' answers set it (bit per pipeline slot).
    uint64_t hash_key
    uint8_t hash_state
    uint64_t hash_cookie
    uint32_t pend_cookie
    # The endpoint index + 1 that _rebalance (balancer.pxi) moved the next request to,
    # bound at its switch (0: none; cleared when the pair moves to a newer table).
    uint32_t rebalance_to
    # HTTP outbound: the request at d2u offset 0 is held by its rule's fault delay until
    # then (fault.pxi; 0: none): nothing more is read, its route is decided.
    int64_t fault_until_ns
    int64_t fault_delay_ns         # the delay a route pick drew, until it is held
    # The request at d2u offset 0 was held and released (fault.pxi): what its draw said
    # follows the delay (0: forward; _FAULT_ANSWER | status: an abort) until it is
    # routed, faults not drawn again; -1: no such request.
    int32_t fault_kept
    # Overload defence (overload.pxi): requests of this pair counted in the node's
    # requests in flight and in its source's; and the part of a request the client is
    # sending (SlowPhase), since when, and how many bytes of it came since then.
    uint16_t held_inflight
    uint16_t held_source
    uint8_t slow_phase
    int64_t slow_start_ns
    uint64_t slow_bytes
    # Access records (accesslog.pxi): when the pair began; the Core.access_heads entry of the head being framed (-1: none; -2: not
    # sampled) and of each pending request; what authorization decided on the request
    # (or pair) being judged, and the response flags its answer is to carry.
    int64_t opened_ns
    int32_t acc_head               # index + 1; 0: none yet; -1: not recorded
    int32_t pend_acc[ENGINE_HTTP_PIPELINE_MAX]     # likewise
    uint16_t acc_flags
    uint16_t acc_policy            # an opaque pair's decision (a request's is in its head)
    uint8_t acc_result
    uint8_t acc_audited


# Request figures for one (direction, service, peer SPIFFE ID). Created by the engine
# thread (fields first, then Core.n_stats published), never removed; counts written by
# the engine thread only and read without a lock (like Counters).
cdef struct StatRecord:
    Name service                   # empty: the request named no known service (404, 400)
    uint16_t principal             # Core.principals index: the verified peer (0: none)
    uint16_t local                 # Core.principals index: this side's identity
    uint16_t route                 # Core.tags index: the HTTPRoute that routed it (0: none)
    uint16_t version               # Core.tags index: the destination's version (0: none)
    bint inbound                   # reported by the destination's side
    bint plaintext                 # inbound without TLS (connection_security_policy none)
    uint64_t codes[ENGINE_STATUS_SLOTS]
    uint16_t latency_codes[ENGINE_LATENCY_CODES]   # each histogram's status (0: unclaimed)
    uint64_t latency_us[ENGINE_LATENCY_CODES][ENGINE_LATENCY_BUCKETS]
    uint64_t shed                  # of its 503s, those overload answered (flag "OM")
    # Timed answers' request and response sizes by code, in the latency histograms'
    # code slots (latency_codes): counts per _size_bucket and exact sums of bytes.
    uint64_t req_bytes[ENGINE_LATENCY_CODES][ENGINE_SIZE_BUCKETS]
    uint64_t resp_bytes[ENGINE_LATENCY_CODES][ENGINE_SIZE_BUCKETS]
    uint64_t req_bytes_sum[ENGINE_LATENCY_CODES]
    uint64_t resp_bytes_sum[ENGINE_LATENCY_CODES]
    # Opaque TCP pairs under this key (Istio's istio_tcp_*, as its TCP stats filter
    # counts connections through tcp_proxy only, none of HTTP's): pairs that began
    # relaying and closed, and bytes received from and sent to the accepted side.
    uint64_t tcp_opened
    uint64_t tcp_closed
    uint64_t tcp_received
    uint64_t tcp_sent


# Access records (accesslog.pxi). What a request's head said, kept from its framing to
# its answer in one of Core.access_heads (a free list: none free, the request is not
# recorded, counted), and the record an answer (or an opaque pair's close) copies into
# Core.access_ring: fixed fields and fixed-size texts, no pointer, so the worker's
# thread reads a slot as it is and nothing is formatted on the engine's thread.
cdef struct AccessHead:
    int64_t start_ns               # CLOCK_MONOTONIC: the head framed / the pair accepted
    uint32_t head_bytes            # the head as the client sent it (its size if it is
                                   # answered before it goes on: Conn.pend_req_bytes after)
    int32_t next_free
    uint16_t path_len
    uint16_t authority_len
    uint8_t id_len
    uint8_t trace_len
    uint8_t method_len
    uint8_t version_minor
    uint8_t cut                    # ACCESS_CUT_* of the texts cut at their maximum
    uint8_t drawn                  # AccessDrawn: who wants the record
    uint16_t authz_policy          # Core.authz index + 1 of the deciding figure (0: none)
    uint8_t authz_result           # AccessJudged
    uint8_t audited                # an AUDIT policy matched
    TraceIds trace                 # its span (tracing.pxi; flags 0: none)
    char method[ENGINE_ACCESS_METHOD_MAX]
    char path[ENGINE_ACCESS_PATH_MAX]
    char authority[ENGINE_ACCESS_AUTHORITY_MAX]
    char request_id[ENGINE_ACCESS_ID_MAX]
    char traceparent[ENGINE_ACCESS_TRACE_MAX]

cdef enum AccessCut:
    ACCESS_CUT_PATH = 1
    ACCESS_CUT_AUTHORITY = 2
    ACCESS_CUT_ID = 4
    ACCESS_CUT_TRACE = 8

# Who a request's (or pair's) record is for: the access log (its table's sampling drew
# it, and at the answer its filter keeps it), a tap under way (Core.access_tap), telemetry's
# span exporter, or several.
cdef enum AccessDrawn:
    ACCESS_DRAWN_LOG = 1
    ACCESS_DRAWN_TAP = 2
    ACCESS_DRAWN_SPAN = 4          # its span is sampled and exported (_access_traced)

cdef enum AccessJudged:
    ACCESS_NOT_JUDGED = 0          # no AuthorizationPolicy on its route
    ACCESS_ALLOWED = 1
    ACCESS_DENIED = 2

cdef enum AccessKind:
    ACCESS_HTTP = 0                # one request and its answer
    ACCESS_TCP = 1                 # one opaque pair, from accept to close

# Envoy's response flags (%RESPONSE_FLAGS%) the engine can tell, a bit each.
cdef enum AccessFlag:
    AFLAG_NR = 1                   # no route: the engine's 404
    AFLAG_UF = 2                   # upstream connect failure: the engine's 503
    AFLAG_UT = 4                   # upstream request timeout: the engine's 504
    AFLAG_UC = 8                   # upstream connection termination: the engine's 502
    AFLAG_DC = 16                  # downstream connection termination: no answer (0)
    AFLAG_RL = 32                  # rate limited (429, or a pair refused)
    AFLAG_FI = 64                  # fault injection abort
    AFLAG_OM = 128                 # overload manager: shed 503
    AFLAG_DPE = 256                # downstream protocol error: a head that does not parse

cdef struct AccessRecord:
    AccessHead head                # HTTP: what its head said; TCP: start and bytes only
    uint64_t received              # bytes from the client (plaintext)
    uint64_t sent                  # bytes to the client
    int64_t duration_ns
    uint16_t status                # HTTP: the code answered (0: none reached the client)
    uint16_t flags                 # AccessFlag bits
    uint16_t principal             # Core.principals: the verified peer (0: none)
    uint16_t local                 # Core.principals: this side's identity
    uint16_t route                 # Core.tags: the HTTPRoute that routed it (0: none)
    uint16_t service               # Core.tags: the destination service (0: not known)
    uint8_t kind                   # AccessKind
    uint8_t inbound
    uint8_t plaintext              # inbound without TLS
    uint8_t upstream_family        # 0: no upstream host; 4 or 6
    uint16_t upstream_port
    uint8_t upstream_addr[16]


# The timer wheel (timers.pxi): each list is a doubly-linked list through its Conns'
# tw_next/tw_prev; a bit per list says it is not empty. Engine thread only.
cdef struct Wheel:
    Conn* heads[ENGINE_TIMER_LISTS]
    uint64_t occupied[ENGINE_TIMER_WORDS]
    int64_t tick                   # the next tick to run (CLOCK_MONOTONIC ns >> shift)
    uint32_t n_armed               # timers on any list


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
    uint64_t rejected_limit        # accepted and closed at once: the side's slots are
                                   # all in use (its budget, limits.pxi)
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
    uint64_t caller_addr_malformed # inbound ClientHello whose caller address extension
                                   # was malformed: handshake refused (caller_ext.pxi)
    uint64_t buffers_in_use
    uint64_t buffers_peak
    uint64_t tables_installed      # swaps done by the loop
    uint64_t tables_live           # current table plus replaced ones still in use
    # HTTP outbound listener. Each accepted connection is routed by its first request.
    uint64_t http_routed           # first request heads parsed and routed to a service
    uint64_t http_no_route         # 404: the Host named no service
    uint64_t http_bad_request      # 400/414/431/501/505: the head did not parse
    uint64_t http_unavailable      # 503: no endpoint, connect or TLS failure, identity
    uint64_t http_head_timeouts    # no complete head within connect_timeout_s
    uint64_t http_bad_response     # upstream response head did not parse, or ended early
    uint64_t http_upstream_pooled  # idle upstreams kept for reuse
    uint64_t http_upstream_reused  # requests' upstreams taken from the pool
    uint64_t http_upstream_stale   # pooled upstreams found closed or too old when taken
    uint64_t http_upstream_retried # requests routed again after a pooled upstream failed
    # Outbound setups that failed on one endpoint and went on to the next, and the
    # endpoints passed over by the round robin after a failure (ENGINE_EJECT_*).
    uint64_t upstream_failovers
    uint64_t endpoint_ejections
    # Requests on a kept-alive client connection that the balancer moved to another
    # endpoint than its upstream's (balancer.pxi _rebalance).
    uint64_t http_rebalanced
    # Consistent hashing (hashing.pxi): requests with no hash key (a random pick), and
    # cookies generated for requests without one (Set-Cookie on their answers).
    uint64_t hash_no_key
    uint64_t hash_cookies_set
    # Answers by class (index status // 100 - 1: 1xx is 101 only), the engine's own
    # replies included; latency: request framed → response framed to its end, upstream
    # answers only, log-linear microsecond buckets (Engine.latency_bounds_us()).
    uint64_t http_responses[5]
    uint64_t http_latency_us[ENGINE_LATENCY_BUCKETS]
    uint64_t stats_overflow        # answers (and opaque pairs) not kept per key:
                                   # ENGINE_STAT_RECORDS (or ENGINE_TAGS) used up
    uint64_t sniffed_http          # sniffing listeners' connections found to be HTTP/1.1
    uint64_t sniffed_tcp           # ... and taken for opaque TCP (other bytes, or silence)
    uint64_t http_upgrade_refused  # CONNECT or an Upgrade other than websocket: 403
    uint64_t inbound_protocol_mismatch  # inbound: the peer's ALPN is not the port's
                                   # declared protocol (refused after the handshake)
    # Inbound plaintext (PeerAuthentication, plaintext.pxi): connections whose first
    # request's Host named a route that takes plaintext, and those refused (reset): a
    # Host naming a STRICT route or none, bytes that are no HTTP request, or a pair a
    # newer table's STRICT mode reached between requests.
    uint64_t plaintext_accepted
    uint64_t plaintext_refused
    # The loop's own health (Envoy's dispatcher loop_duration_us): time from epoll_wait
    # returning to the next call, log-linear µs buckets as http_latency_us, and the most.
    uint64_t loop_busy_us[ENGINE_LATENCY_BUCKETS]
    uint64_t loop_busy_max_ns
    # A config push reaching open pairs: HTTP pairs moved to the newer table at a
    # request boundary; opaque pairs closed a drain period after their destination
    # left; idle pooled upstreams whose endpoint left, closed at the swap.
    uint64_t pairs_moved
    uint64_t departed_closed
    uint64_t departed_idle_closed
    # HTTP pairs going away (Engine.drain, or their listener left the table), closed
    # quiet between requests.
    uint64_t drain_closed
    # Local callers (callers.pxi): refused for matching no local workload (403 or
    # closed); their sockets' owners asked of the kernel, and lookups that failed.
    uint64_t callers_refused
    uint64_t caller_lookups
    uint64_t caller_lookup_failures
    # Inbound connections closed at accept, before any TLS (limits.pxi), by the limit
    # they met: handshakes under way in all, connections from their source address,
    # handshakes under way from it. (Over the side's budget: inbound.rejected_limit.)
    uint64_t rejected_handshakes
    uint64_t rejected_source_conns
    uint64_t rejected_source_handshakes
    # Overload defence (overload.pxi): requests answered 503 at once for the node's
    # requests in flight or their source's; request heads and bodies cut for coming
    # slower than the least rate (a head answered 408, a body's pair closed).
    uint64_t overload_shed
    uint64_t overload_source_shed
    uint64_t slow_heads_cut
    uint64_t slow_bodies_cut
    # HTTPRoute (routes.pxi): requests a route set governed, those no entry matched
    # (404), and those whose rule had no valid backend for them (500).
    uint64_t route_matched
    uint64_t route_no_match
    uint64_t route_no_backend
    uint64_t route_timeouts        # 504: a route's timeout came before the answer's head
    uint64_t route_redirects       # answered by a RequestRedirect (route_filters.pxi)
    uint64_t route_rewrites        # request heads a URLRewrite changed
    uint64_t route_retries         # tries made again by a route's retry (retry.pxi)
    uint64_t route_retries_over_budget  # failures passed on as they were: no budget left
    # Fault injection (fault.pxi): requests held by a fault delay, answered by a fault
    # abort, and answered 500 because their rule's ExtensionRef filter did not resolve.
    uint64_t faults_delayed
    uint64_t faults_aborted
    uint64_t route_filter_unresolved
    # Out of descriptors with no spare left: the listeners left the loop for
    # ENGINE_ACCEPT_PAUSE_MS instead of reporting the same backlog in a busy loop.
    uint64_t accept_paused
    # RequestMirror (mirror.pxi): copies sent whole to a mirror backend, and copies given
    # up (no slot, no endpoint or every one ejected, its buffer full, cannot connect, too
    # slow); the copies' own connections, counted as a side (bytes_sent: request bytes
    # to the mirror).
    uint64_t http_mirrored
    uint64_t http_mirror_dropped
    SideCounters mirror
    # Outlier detection (outlier.pxi): endpoints this worker ejected for the node, and
    # ejections maxEjectionPercent held back; endpoints left without a shared slot (the
    # region is full: they are never ejected) and services left without theirs (their
    # ejections are then judged by this worker's count alone); requests answered 503
    # and opaque pairs closed because every endpoint of their service was ejected
    # (Envoy's upstream_cx_none_healthy); slots taken over from endpoints and services
    # no worker had seen for the region's lease.
    uint64_t outlier_ejections
    uint64_t outlier_ejections_overflow
    uint64_t outlier_no_slot
    uint64_t outlier_none_healthy
    uint64_t outlier_slots_reclaimed
    # connectionPool (pool.pxi): what was refused, by the limit met (an opaque pair closed
    # or an HTTP request answered 503): maxConnections with no room to wait, the pending
    # requests' limit; requests that waited; idle
    # upstreams closed to make room under maxConnections; upstreams closed after
    # maxRequestsPerConnection; services left uncounted (no room in the table); counts
    # taken over from services no table names any more.
    uint64_t pool_overflow_connections
    uint64_t pool_overflow_pending
    uint64_t pool_waited
    uint64_t pool_idle_evicted
    uint64_t pool_spent
    uint64_t pool_no_slot
    uint64_t pool_counts_reused
    # AuthorizationPolicy (authz.pxi): decisions that let a request or an opaque pair
    # through, HTTP requests answered 403 and opaque pairs closed (at accept, or open
    # when a newer table's policies denied them: authz_revoked_tcp, carry.pxi), AUDIT
    # matches.
    uint64_t authz_allowed
    uint64_t authz_denied_http
    uint64_t authz_denied_tcp
    uint64_t authz_revoked_tcp
    uint64_t authz_audited
    # Tracing (tracing.pxi): request heads that began a trace, that joined their
    # caller's, whose traceparent did not parse (a new trace began), that got an
    # x-request-id made for them; heads refused (431) with no room for the fields.
    uint64_t trace_started
    uint64_t trace_joined
    uint64_t trace_malformed
    uint64_t request_ids_made
    uint64_t trace_no_room


# --- overload defence (overload.pxi) ------------------------------------------------------------

# The node's requests in flight: a region its workers map together (meshnode.sharedstate),
# laid out by overload_region_format. `total` is what every admission adds to and compares;
# each worker's own share of it is in its slot, so that a worker killed with requests in
# flight has its share given back (Engine.overload_reap) instead of holding the cap down.
cdef struct OverloadSlot:
    uint32_t pid                   # the worker's; 0: free; OVERLOAD_REAPING: being given back
    uint32_t _pad
    int64_t count                  # its requests in the total (written by it alone)
    char _line[48]                 # a slot a cache line: workers do not share lines

cdef struct OverloadRegion:
    char magic[8]
    uint32_t workers               # slots
    uint32_t slot_bytes
    char _head[48]
    int64_t total                  # node-wide, atomic; may read -1 after a reap (see reap)
    char _line[56]
    OverloadSlot slots[ENGINE_OVERLOAD_WORKERS]


# --- limits before authentication (limits.pxi) --------------------------------------------------

# Inbound connections and handshakes under way from one source address, and requests in
# flight from callers at it: an entry of Core.sources, an open-addressed table (linear
# probing, backward-shift deletion, no tombstones) keyed by the address, its entry freed
# when `conns` and `requests` are both 0.
cdef struct SourceCount:
    uint64_t key[2]                # the IPv6 address; IPv4 as ::ffff:a.b.c.d
    uint32_t conns                 # connections from it (both 0: the entry is empty)
    uint32_t handshakes
    uint32_t requests              # HTTP requests in flight whose calling workload is
                                   # there (Conn.source_ip: overload.pxi)


# --- the engine's state ------------------------------------------------------------------------

# A RateLimitPolicy's counts (ratelimit.pxi), kept by policy name across tables.
cdef struct RateStat:
    Name policy
    uint64_t allowed               # requests and opaque pairs let through
    uint64_t limited               # requests answered 429
    uint64_t refused               # opaque pairs closed over the rate
    uint64_t overflow              # decisions on the overflow bucket (keys over the bound)
    uint64_t no_slot               # let through: no bucket free in the region


cdef struct Core:
    int epfd
    int wakefd                     # eventfd: stop() and install() wake the loop
    int spare_fd                   # /dev/null, given up to accept-and-close on EMFILE
    int diag_fd                    # NETLINK_SOCK_DIAG, opened at the first caller lookup
    uint32_t diag_seq              # the last lookup's netlink sequence number
    # Guards `pending` and `stop_requested`, the only fields other threads write.
    net.pthread_mutex_t lock
    Table* pending                 # installed, not yet picked up by the loop
    bint stop_requested
    int64_t drain_for_ns           # Engine.drain() asked for a drain this long (0: not)
    bint woken                     # the eventfd fired: look at pending/stop
    int saved_errno
    uint32_t up_seq                # the last upstream tag generation given (_up_tag)

    Table* table                   # the current table, or NULL
    uint64_t generation            # of the current table (read by other threads)

    Conn* conns
    uint32_t max_conns
    int free_head                  # free list of conns, by index; -1 when empty
    # Slots [0, n_slots) have been used; the rest were never touched (calloc'd pages,
    # not resident): taken in order when the free list is empty. Scans stop here.
    uint32_t n_slots
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
    uint32_t replay_max_bytes      # the most of a request (head and body) kept for replay
    int64_t drain_max_bytes        # an HTTP client gone mid-answer: its upstream is drained
                                   # and pooled when no more than this is owed

    Limits http_limits             # HTTP/1.1 head limits (defaults from consts.pxi)

    int64_t connect_timeout_ns
    int64_t idle_timeout_ns
    int64_t drain_ns               # the table's drain period for departed opaque pairs
    # Draining (Engine.drain): no listener is watched, HTTP pairs go between requests,
    # and the loop ends when no pair is left or at drain_deadline_ns.
    bint draining
    int64_t drain_deadline_ns
    uint32_t listeners_out         # 1 once the listeners left the epoll set (published)
    int64_t now_ns                 # CLOCK_MONOTONIC, once per loop iteration
    # Limits before authentication (limits.pxi): each side's budget of slots (they
    # add up to max_conns: one side's flood cannot take the other's), and on the
    # inbound side TLS handshakes under way, in all and per source, and connections
    # per source. Counted at accept; over a limit, closed before any TLS work.
    uint32_t max_inbound
    uint32_t max_outbound
    uint32_t max_handshakes
    uint32_t max_source_conns
    uint32_t max_source_handshakes
    uint32_t handshakes            # inbound handshakes under way
    SourceCount* sources           # 2^k >= 2 x max_conns entries: at most half in use
    uint32_t sources_mask          # entries - 1
    uint32_t n_sources             # entries in use
    uint64_t source_seed[2]        # random: where an address hashes cannot be aimed at
    # Overload defence (overload.pxi): the node's count of requests in flight (a region
    # the workers share; the engine's own until Engine.share_overload), this engine's
    # slot in it, and the caps and slow-client rate the current table set (0: off).
    OverloadRegion* overload
    bint overload_owned
    uint32_t overload_slot
    uint32_t max_inflight
    uint32_t max_source_requests
    int64_t slow_grace_ns
    uint32_t slow_min_rate
    uint64_t route_rng             # xorshift state: a route's weighted backend choice
    uint64_t trace_rng[4]          # xoshiro256** state: span, trace and request ids
    # Listeners out of the epoll set until then (EMFILE with no spare fd); 0: watched.
    int64_t accept_resume_ns
    Wheel wheel                    # every pair's timer (timers.pxi)
    # RequestMirror copies (mirror.pxi) have slots of their own after the max_conns the
    # budgets share out: at most max_mirrors at once; serials tell a copy's slot reused.
    uint32_t max_mirrors
    uint32_t mirrors_active
    uint32_t mirror_serial
    Counters counters
    # Outlier detection's shared region (outlier.pxi): a header, then `shared_slots`
    # SharedSlots. The engine's own (calloc'd, `shared_owned`) until share_state() hands
    # it the node's mapping; the Engine keeps that buffer alive.
    char* shared
    uint32_t shared_slots
    bint shared_owned
    int64_t shared_keep_ns         # when the loop next marks its table's slots seen
    int64_t shared_lease_ns        # the region's lease (its header's, copied: the loop
                                   # reads no region before it has a table)
    UpstreamCount* upstream_counts # ENGINE_UPSTREAM_COUNTS entries (pool.pxi)
    # RateLimitPolicy's region (ratelimit.pxi): a header, then `rate_slots` RateBuckets;
    # the engine's own (`rate_owned`) until share_rate_limits() hands it the node's.
    char* rate_region
    uint32_t rate_slots
    bint rate_owned
    RateStat rate_stats[ENGINE_RATE_POLICIES]   # [0]: policies over the bound
    uint32_t n_rate_stats          # published with a release store
    # Request figures (StatRecord) and the peer IDs they name. principals[0] is empty.
    StatRecord* stats
    uint32_t n_stats               # published with a release store (_publish)
    Name principals[ENGINE_PRINCIPALS]
    uint32_t n_principals          # likewise
    Name tags[ENGINE_TAGS]         # `route` and `destination_version` values; [0] empty
    uint32_t n_tags                # likewise
    char* scratch                  # buffer_bytes: a field's values joined (authz.pxi)
    AuthzFigure* authz             # ENGINE_AUTHZ_FIGURES (authz.pxi)
    uint32_t n_authz               # likewise
    # Access records (accesslog.pxi): a single-producer single-consumer ring (the engine
    # thread writes at access_in, the worker's reader at access_out; each index only
    # grows, published with a release store), the heads kept for pending requests, and
    # records not kept: the ring full, or no head free.
    AccessRecord* access_ring      # access_ring_size (a power of two; ENGINE_ACCESS_RING
    uint32_t access_ring_size      # unless Engine(access_records=) says)
    uint64_t access_in
    uint64_t access_out
    AccessHead* access_heads       # ENGINE_ACCESS_HEADS
    int32_t access_free            # the first free head + 1 (0: none)
    uint32_t access_fresh          # heads [0, access_fresh) were handed out once (the
                                   # rest are untouched calloc'd pages, not resident)
    uint64_t access_ring_full
    uint64_t access_no_head
    uint32_t access_tap            # taps under way want every record (Engine.set_tap;
                                   # the worker's thread writes it, the engine's reads)


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
    cdef object _shared            # the buffer share_state() maps (kept alive), or None
    cdef object _overload          # the buffer share_overload() maps (kept alive), or None
    cdef list _outlier_index       # the last table's outlier endpoints (outlier.pxi)
    cdef list _pool_index          # the last table's services' counts (pool.pxi)
    cdef object _rate_shared       # the buffer share_rate_limits() maps, or None

    cdef int _check(self, int status, str what) except -1


cdef class RouteTable:
    # Python-side description; each Engine.install() compiles a fresh C Table from it.
    cdef list _services            # (name, sni bytes, [id bytes], [(host, port)] distinct,
                                   # BalancerKind)
    cdef list _outbound            # (fd, service index, TLSContext)
    cdef list _routes              # (sni bytes, TLSContext, app host, app port, service,
                                   # identity, Protocol, version, alias bytes or b"")
    cdef list _hosts               # (host bytes, port, service index)
    cdef int _http_fd              # -1: no HTTP outbound listener
    cdef object _http_ctx          # its client TLSContext
    cdef bytes _http_identity      # its SPIFFE ID (b"": not given)
    cdef list _sources             # (address str or None, TLSContext, identity bytes, uid or -1)
    cdef double _connect_timeout_s # 0: keep the engine's
    cdef double _idle_timeout_s
    cdef double _drain_s           # 0: keep the engine's
    cdef int _inbound_fd
    cdef bytes _ticket_keys        # the dispatch ctx's session ticket keys (None: random)
    cdef long _ticket_period_s     # a new ticket key every this many seconds
    cdef long _session_life_s      # an inbound session's life from its full handshake
    cdef tuple _limits             # set_limits(): (handshakes, per source, handshakes
                                   # per source, inbound permille); None: the engine's
    cdef tuple _access             # set_access_log(): (sample per 10000, least status);
                                   # None: no records
    cdef tuple _overload           # set_overload(): (in flight, per source, slow grace
                                   # ns, slow rate); None: the engine's
    cdef list _route_sets          # (parent service index, consumer namespace bytes or
                                   # None, [entry tuples]) (routes_table.pxi)
    cdef list _route_rules         # (name bytes, [[service index, weight, variant rule
                                   # or -1]], request edits, response edits, timeout s,
                                   # url filter tuple or None (route_filters_table.pxi),
                                   # backend timeout s, retry tuple or None)
    cdef list _route_mirrors       # (rule index, service index, numerator, denominator)
    cdef dict _hashes              # service index -> (key kind, name bytes, path bytes,
                                   # ttl s, slots) (hashing.pxi)
    cdef list _route_faults        # (rule index, fault tuple) (fault.pxi)
    cdef list _retry_budgets       # ((service index, ...), budget tuple) (budget.pxi)
    cdef dict _outliers            # service index -> outlier tuple (outlier.pxi)
    cdef dict _conn_pools          # service index -> connectionPool tuple (pool.pxi)
    cdef dict _mtls                # inbound route sni bytes -> (MtlsMode, [host bytes],
                                   # service port) (plaintext.pxi); absent: STRICT
    cdef list _rate_limits         # (limit tuple, inbound snis, service indexes) (ratelimit.pxi)
    cdef dict _authz               # inbound route index -> compiled program tuple
                                   # (authz_table.pxi)
    cdef uint8_t _path_normalization   # PathNormalization (normalize.pxi)
    cdef uint32_t _trace_sample        # set_tracing(): new traces sampled per 10000
    cdef bint _trace_spans             # ... and sampled spans get records of their own

    cdef int _check_fd(self, int fd) except -1
    cdef Table* _build(self) except NULL
