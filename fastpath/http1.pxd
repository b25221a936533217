# fastpath/http1.pxd: HTTP/1.1 message heads parsed in place, and chunked body framing.
#
# The engine embeds ReqHead / RespHead / ChunkState / Limits in its per-connection
# structs and calls the nogil functions below on its read buffer. Nothing is copied:
# a head is a set of Spans (offset, length) into the buffer the parse call was given,
# valid for as long as the caller keeps those bytes where they are.
#
# Return codes (HTTP1_AGAIN, HTTP1_E*) and the default limits (HTTP1_DEFAULT_*) are in
# consts.pxi, like every fastpath status; request_error_status() maps a code to the
# HTTP status to answer a client with. A refused upstream response is always a 502.
#
# Strictness (RFC 9112, chosen to leave no room for request smuggling between this
# proxy and whatever sits behind it; each point is a 400 unless noted):
#   - lines end in CRLF only: a bare LF or a bare CR is refused (Envoy's choice; nginx
#     and llhttp's lenient mode accept a bare LF). Empty lines before a request-line
#     are skipped (§2.2).
#   - one SP between the parts of a request-line; method and field names are tokens;
#     request-target bytes are VCHAR (0x21-0x7E) but '#': a fragment is the client's
#     own (RFC 9110 §4.2.5) and a target that carries one is refused, as Envoy does by
#     default (http_reject_path_with_fragment); field values are VCHAR, obs-text, SP
#     and HTAB only (so no CR, LF, NUL or other CTL, RFC 9110 §5.5).
#   - whitespace before a field's colon, obs-fold and whitespace before the first
#     field line are refused (§5.1, §5.2, §2.2).
#   - HTTP-version is exactly "HTTP/" DIGIT "." DIGIT; a major other than 1 is
#     HTTP1_EVERSION (505); 1.2..1.9 are read as 1.1 (RFC 9110 §2.5).
#   - an HTTP/1.1 request needs exactly one Host field, with a valid uri-host[:port]
#     value (§3.2); an empty value is allowed (RFC 9110 §7.2) and routes nowhere.
#   - request-target: origin-form ("/..."); absolute-form with the "http" scheme only
#     (an https:// target through a proxy is a CONNECT); authority-form only with, and
#     always with, CONNECT, port required; asterisk-form only with OPTIONS. Userinfo
#     in an absolute-form target is refused (RFC 9110 §4.2.4).
#   - framing (§6.1, §6.3), HTTP1_ELENGTH (400) for: Transfer-Encoding together with
#     Content-Length; a Transfer-Encoding in HTTP/1.0; a Transfer-Encoding whose final
#     coding is not chunked, that names chunked twice, or names no coding at all
#     (empty list elements are ignored, RFC 9110 §5.6.1: ",chunked" is chunked); a
#     Content-Length that is not 1*DIGIT, has an empty element, overflows int64, or
#     whose values (across lines and comma lists) differ. Equal duplicates ("5, 5")
#     are one value, and the head says so (fold_length) so that a proxy sends one
#     (RFC 9110 §8.6; headedit does).
#     A request whose codings are "<other>, chunked" is HTTP1_ETRANSFER (501): we
#     forward chunked framing but do not implement other codings (RFC 9112 §6.1).
#   - responses are read the same way except: no Host rule; the SP and reason after
#     the status code may be missing; Transfer-Encoding whose final coding is not
#     chunked means the body runs until close (§6.3 rule 4); other codings before
#     chunked are forwarded as they are.
#
# Statelessness: parse_*_head is a pure function of (buf, len, limits). On HTTP1_AGAIN
# the engine calls it again from the start once more bytes arrived. For any buffer B
# and any prefix P of B, parse(P) is HTTP1_AGAIN or equals parse(B): errors are found
# as early as the bytes allow (protocol detection can call it on the first read) and
# never change when more bytes come. Limits are positions, not availability.
# Re-parse cost: a head sent one byte per read costs O(n^2) for n up to
# Limits.max_head_bytes. Measured: ~10 us to re-parse an incomplete 64 KiB head, so a
# client trickling a full-size head byte by byte costs ~0.3 s of CPU. An engine that
# cares re-parses only when a read brought a LF (or the buffer reached a limit): a head
# cannot complete in between, and the field-count limit then bounds the re-parses.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t


cdef enum:
    # Field lines one head can hold: the size of ReqHead.headers and RespHead.headers
    # (16 bytes each). Limits.max_headers is clamped to it. Envoy's default is 100.
    HTTP1_MAX_HEADERS = 128


# Methods the engine switches on without comparing bytes. Methods are case-sensitive
# tokens (RFC 9110 §9.1): "get" is METHOD_OTHER, and ReqHead.method_span holds it.
cdef enum Method:
    METHOD_OTHER = 0
    METHOD_GET
    METHOD_HEAD
    METHOD_POST
    METHOD_PUT
    METHOD_DELETE
    METHOD_CONNECT
    METHOD_OPTIONS
    METHOD_TRACE
    METHOD_PATCH


# RFC 9112 §3.2.
cdef enum TargetForm:
    TARGET_ORIGIN       # "/path?query"
    TARGET_ABSOLUTE     # "http://authority/path?query" (what HTTP_PROXY clients send)
    TARGET_AUTHORITY    # "host:port", CONNECT only
    TARGET_ASTERISK     # "*", OPTIONS only


# What follows a head on the connection (RFC 9112 §6.3, in its order of precedence).
cdef enum BodyKind:
    BODY_NONE           # nothing: the next bytes are the next message
    BODY_LENGTH         # content_length (> 0) bytes
    BODY_CHUNKED        # chunked framing: feed the bytes to chunked_advance()
    BODY_UNTIL_CLOSE    # response only: everything until the server closes
    BODY_TUNNEL         # response only: 101, or 2xx to CONNECT; a byte pipe both ways


# A run of bytes in the caller's buffer: buf[off : off + len].
cdef struct Span:
    uint32_t off
    uint32_t len


cdef struct Field:
    Span name               # a token, as received (compare case-insensitively)
    Span value              # leading and trailing OWS trimmed; may be empty


# Parser limits. limits_init() fills the defaults from consts.pxi. Exceeding a limit is
# a specific status: request-line → HTTP1_ELIMIT_LINE (414); field count, one field
# line or the whole head → HTTP1_ELIMIT_HEADERS (431); chunked framing → HTTP1_ELIMIT_CHUNK.
cdef struct Limits:
    uint32_t max_request_line   # bytes of the request-line / status-line, CRLF excluded
    uint32_t max_headers        # field lines in one head (clamped to HTTP1_MAX_HEADERS)
    uint32_t max_header_bytes   # bytes of one field line, CRLF excluded
    uint32_t max_head_bytes     # the whole head, with leading empty lines and the final
                                # CRLFCRLF (at most INT_MAX)
    uint32_t max_chunk_ext      # bytes after a chunk-size up to its CRLF (BWS, ';', ext)
    uint32_t max_trailer_bytes  # the trailer section, from after the last-chunk line
                                # through the final CRLF
    int64_t max_chunk_size      # one chunk's size in bytes


# One parsed request head. Spans index the buffer given to parse_request_head(); the
# fields are only meaningful when it returned a length > 0.
cdef struct ReqHead:
    uint32_t head_len           # bytes of the head, final CRLFCRLF included: the body
                                # (or the next pipelined request) starts here
    Method method
    TargetForm target_form
    BodyKind body               # BODY_NONE, BODY_LENGTH or BODY_CHUNKED
    Span method_span
    Span target                 # the request-target as received
    Span authority              # host[:port]: from an absolute- or authority-form
                                # target, else the Host field's value; len 0 when none
                                # or empty (see authority_host() for routing)
    Span path                   # what to send upstream as the origin-form target: the
                                # target itself for origin/asterisk form, the part after
                                # the authority for absolute form (may be empty or start
                                # with '?': prepend "/"), empty for authority form
    Span upgrade_value          # the first Upgrade field's value (e.g. "websocket")
    int64_t content_length      # -1 when there is no Content-Length
    int host_index              # index in headers of the Host field, -1 when none
    uint32_t header_count
    uint8_t version_minor       # 0 or 1
    bint keep_alive             # §9.3: "close" token wins; else 1.1 yes, 1.0 only
                                # with a "keep-alive" token
    bint chunked                # Transfer-Encoding: chunked (body == BODY_CHUNKED)
    bint expect_continue        # Expect: 100-continue on HTTP/1.1 (1.0: ignored,
                                # RFC 9110 §10.1.1)
    bint upgrade                # HTTP/1.1, a Connection "upgrade" token and an Upgrade
                                # field: if the upstream answers 101 the connection
                                # becomes a byte pipe
    bint has_host               # a Host field was present (its value may be empty)
    bint fold_length            # Content-Length came as more than one (equal) value
    bint fold_coding            # Transfer-Encoding came with an empty list element or
                                # on more than one line: its one coding is chunked
    Field headers[HTTP1_MAX_HEADERS]


# One parsed response head; same conventions as ReqHead.
cdef struct RespHead:
    uint32_t head_len
    uint16_t status             # 100..999
    uint8_t version_minor
    BodyKind body               # decided by status, request method and framing fields
    Span reason
    int64_t content_length      # -1 when there is no Content-Length
    uint32_t header_count
    bint keep_alive             # as for requests; never with BODY_UNTIL_CLOSE / TUNNEL
    bint chunked                # the final transfer coding is chunked
    bint upgrade                # 101 Switching Protocols
    bint fold_length            # as for requests
    Field headers[HTTP1_MAX_HEADERS]


# Chunked body framing (RFC 9112 §7.1), one byte at a time where it must, whole chunk
# data runs at once. Each arrow consumes one byte unless noted.
#
#   SIZE ─hex─► SIZE ─CR (after ≥1 hex digit)─► SIZE_LF ─LF─┬─ size > 0 ─► DATA
#                                                            └─ size = 0 ─► TRAILER
#
#   DATA ─size bytes (many per step)─► DATA_CR ─CR─► DATA_LF ─LF─► SIZE
#
# Chunk extensions, RFC 9112 §7.1.1 to the letter (a parser that reads them loosely is
# what the "funky chunks" smuggling class feeds on): chunk-ext = *( BWS ";" BWS
# chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), a name is a token, a value a token
# or a quoted-string, BWS is SP / HTAB. From the size's digits on ("-": FAILED):
#
#   state          SP/HTAB        ';'        '='      tchar       '"'         CR
#   SIZE           EXT_BWS        EXT_SEMI   -        hex: SIZE   -           SIZE_LF
#   EXT_BWS        EXT_BWS        EXT_SEMI   -        -           -           -
#   EXT_SEMI       EXT_SEMI       -          -        EXT_NAME    -           -
#   EXT_NAME       EXT_NAME_BWS   EXT_SEMI   EXT_EQ   EXT_NAME    -           SIZE_LF
#   EXT_NAME_BWS   EXT_NAME_BWS   EXT_SEMI   EXT_EQ   -           -           -
#   EXT_EQ         EXT_EQ         -          -        EXT_TOKEN   EXT_QUOTED  -
#   EXT_TOKEN      EXT_BWS        EXT_SEMI   -        EXT_TOKEN   -           SIZE_LF
#   EXT_QEND       EXT_BWS        EXT_SEMI   -        -           -           SIZE_LF
#
#   EXT_QUOTED: '"' → EXT_QEND, '\' → EXT_ESCAPE, other qdtext stays, anything else
#   fails; EXT_ESCAPE: one HTAB, SP, VCHAR or obs-text → EXT_QUOTED.
#
# The trailer section (field lines, RFC 9112 §7.1.2, then an empty line):
#
#   TRAILER ─CR─► END_LF ─LF─► DONE          (DONE: the message ended; bytes after it
#      │  ▲                                   belong to the next message)
#      │  └──LF── TRAILER_LF ◄─CR─┐
#      └─tchar─► TRAILER_NAME ─':'─► TRAILER_VALUE
#
# Any other byte, or a limit exceeded, goes to FAILED (terminal; `status` holds why).
cdef enum ChunkPhase:
    CHUNK_SIZE
    CHUNK_SIZE_LF
    CHUNK_DATA
    CHUNK_DATA_CR
    CHUNK_DATA_LF
    # The extension states, in one run (the framer tests the range).
    CHUNK_EXT_BWS               # BWS after the size or a value: only ';' may follow
    CHUNK_EXT_SEMI              # after ';' (and BWS): a name must follow
    CHUNK_EXT_NAME
    CHUNK_EXT_NAME_BWS          # BWS after a name: '=' or ';'
    CHUNK_EXT_EQ                # after '=' (and BWS): a value must follow
    CHUNK_EXT_TOKEN
    CHUNK_EXT_QUOTED
    CHUNK_EXT_ESCAPE            # after a '\' in a quoted-string
    CHUNK_EXT_QEND              # after a quoted-string's closing '"'
    # The trailer states, in one run too.
    CHUNK_TRAILER
    CHUNK_TRAILER_NAME
    CHUNK_TRAILER_VALUE
    CHUNK_TRAILER_LF
    CHUNK_END_LF
    CHUNK_DONE
    CHUNK_FAILED


cdef struct ChunkState:
    ChunkPhase phase
    int status                  # HTTP1_EPARSE / HTTP1_ELIMIT_CHUNK once FAILED
    int64_t size                # chunk-size being read, then data bytes left in the chunk
    int64_t body_bytes          # chunk-data bytes so far (for body limits and metrics)
    uint32_t digits             # hex digits of the chunk-size being read
    uint32_t ext_bytes          # bytes after the chunk-size on this line
    uint32_t trailer_bytes      # of the trailer section so far (chunked_relay: the
                                # bytes it holds back)
    # Copied from Limits by chunk_init().
    int64_t max_chunk_size
    uint32_t max_chunk_ext
    uint32_t max_trailer_bytes


# Fills *lim with the HTTP1_DEFAULT_* limits.
cdef void limits_init(Limits* lim) noexcept nogil

# Parses the request head at the start of buf[0:len]. Returns its length (> 0, also in
# out.head_len) when complete, HTTP1_AGAIN (0) when it needs more bytes, or an HTTP1_E*
# status (< 0). *out is overwritten; only meaningful after a return > 0.
cdef int parse_request_head(const char* buf, size_t len, ReqHead* out,
                            const Limits* lim) noexcept nogil

# As parse_request_head, for the response to a request whose method was req_method
# (METHOD_HEAD: no body whatever the fields say; METHOD_CONNECT: a 2xx is a tunnel).
cdef int parse_response_head(const char* buf, size_t len, RespHead* out,
                             const Limits* lim, Method req_method) noexcept nogil

# Readies *st for one chunked body, with the chunk limits from *lim.
cdef void chunk_init(ChunkState* st, const Limits* lim) noexcept nogil

# Advances the framing over buf[0:len]; returns how many bytes belong to the message
# (all of len unless it ended: then st.phase == CHUNK_DONE and the rest is the next
# message), or an HTTP1_E* status (< 0; st is FAILED and returns it again).
# Framing mode (data_off == NULL): one call frames the whole buffer. Decoding mode
# (both pointers set): the call stops after the first run of chunk data, which is
# buf[*data_off : *data_off + *data_len] (*data_len == 0: no data in what was consumed);
# call again with buf + consumed for the rest.
cdef Py_ssize_t chunked_advance(ChunkState* st, const char* buf, size_t len,
                                size_t* data_off, size_t* data_len) noexcept nogil

# chunked_advance in framing mode, for a request body on its way to an app: the
# trailer section is held back (not counted as consumed) until it is whole, then the
# field lines with a guarded name (guarded_name() != GUARDED_NONE) are cut out of it
# in place: a trailer must not bring back a field the proxy vouches for or frames by
# (servers may merge trailers into the request's fields, RFC 9110 §6.5.1). Returns the
# bytes that belong to the message, or an HTTP1_E* status (< 0). *cut is how many bytes
# the buffer lost: buf[0:len - *cut] is what it holds now, and after a DONE the next
# message starts at the returned count. Not DONE and fewer than len: the rest is held;
# the caller presents it again, unchanged, at the start of its next call, followed by
# what arrived since. A ChunkState is used in one mode only (this or chunked_advance).
cdef Py_ssize_t chunked_relay(ChunkState* st, char* buf, size_t len,
                              size_t* cut) noexcept nogil

# Field names the proxy owns: what frames or routes a message (Host, Content-Length,
# Transfer-Encoding), the identity it vouches for (X-Forwarded-Client-Cert), and what
# an app's node says of the app's failure to the caller's node (X-Meshnode-Failure, on
# the 502 it answers itself: the caller's node retries it as a connection error). A
# field name is compared ignoring case, and with '_' read as '-': CGI and WSGI servers
# file X_Forwarded_Client_Cert and X-Forwarded-Client-Cert under one
# HTTP_X_FORWARDED_CLIENT_CERT, so a client could forge the one through the other
# (Envoy's headers_with_underscores_action exists for this).
cdef enum Guarded:
    GUARDED_NONE = 0
    GUARDED_EXACT               # the name as registered ("content-length", any case)
    GUARDED_UNDERSCORE          # spelled with '_' for '-' ("Content_Length")

cdef Guarded guarded_name(const char* name, size_t n) noexcept nogil

# Routing key of an authority (host[:port], e.g. ReqHead.authority): the host
# lowercased, without port and without one trailing dot, written to out[0:cap] (no
# NUL). Returns its length, or 0 when the authority is empty, malformed or does not
# fit. *port is the port (0..65535), or -1 when there is none. An IP-literal keeps its
# brackets ("[::1]").
cdef size_t authority_host(const char* p, size_t n, char* out, size_t cap,
                           int* port) noexcept nogil

# The HTTP status a client gets for an HTTP1_E* code from parsing its request or its
# chunked body: 400, 413, 414, 431, 501 or 505 (500 for a code that is not an error).
cdef int request_error_status(int rc) noexcept nogil

# The name of an HTTP1_* code ("EPARSE", ...), for counters and logs.
cdef const char* status_name(int rc) noexcept nogil
