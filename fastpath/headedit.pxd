# fastpath/headedit.pxd: in-place edits of parsed HTTP/1.1 heads, for the engine.
#
# A proxy forwards end-to-end fields and owns the hop-by-hop ones (RFC 9110 §7.6.1):
# the client's `Connection: close` speaks of the client's connection, not of the pooled
# mutual-TLS hop behind it. These functions edit a head where it lies in the engine's
# read buffer: `buf[0:total]` holds the head (parsed into the given ReqHead/RespHead,
# whose spans index `buf`) followed by whatever was read after it (body bytes, the
# next pipelined message). Removing or inserting a field line moves those following
# bytes; the caller adjusts its buffer's tail by the returned amount. Spans that lie
# before the first edited field line (request-line, target) stay valid.

from libc.stdint cimport uint32_t

from fastpath.http1 cimport Field, ReqHead, RespHead


# Removes from a request head the field lines that belong to the client's hop:
# Connection, Keep-Alive, Proxy-Connection, an Upgrade that no "upgrade" connection
# option announces, and the fields the Connection header names — except the ones
# that frame or route the message (Host, Content-Length, Transfer-Encoding), which a
# client must not be able to strip from what the upstream sees. The underscore
# spellings of the names the proxy owns go too, and a repeated Content-Length or an
# untidy Transfer-Encoding is folded into one field (as drop_fields does). Call only
# for an HTTP/1.1 request that is not an upgrade (an upgrade keeps its Connection:
# upgrade). Returns the bytes removed (buf[0:total - removed] is the result).
cdef uint32_t strip_hop_fields(char* buf, uint32_t total, const ReqHead* req) noexcept nogil

# Makes a response head say `Connection: close`: the first Connection field's value
# becomes "close" padded with spaces (trailing OWS) when it is long enough, other
# Connection fields become empty; with none long enough, a "Connection: close" line
# goes in before the final CRLF. Returns the bytes added (0 or CLOSE_LINE_BYTES), or
# -1 when the insertion does not fit in `cap` (nothing changed).
cdef int make_close(char* buf, uint32_t total, uint32_t cap, const RespHead* resp) noexcept nogil

# Inserts the field line `name: value\r\n` before the final CRLF of a head of
# `head_len` bytes. Returns the bytes added, or -1 when it does not fit in `cap`.
cdef int add_field(char* buf, uint32_t head_len, uint32_t total, uint32_t cap,
                   const char* name, uint32_t name_len,
                   const char* value, uint32_t value_len) noexcept nogil

# Removes every field line named `name` from a request head, comparing names as a
# CGI/WSGI server files them (case, and '_' for '-', do not count): a client must not
# be able to forge a field the proxy itself vouches for (e.g. x-forwarded-client-cert),
# not even as X_Forwarded_Client_Cert. Being the edit every request an app receives
# goes through, it also removes the underscore spellings of the other names the proxy
# owns (http1.guarded_name: Content_Length, Transfer_Encoding), as Envoy's
# headers_with_underscores_action=DROP_HEADER would, and folds a repeated
# Content-Length or an untidy Transfer-Encoding into one field (ReqHead.fold_length,
# fold_coding). Returns the bytes removed.
cdef uint32_t drop_fields(char* buf, uint32_t total, const ReqHead* req,
                          const char* name, uint32_t name_len) noexcept nogil

# A response whose Content-Length came as several equal values (RespHead.fold_length)
# gets one field with one value (RFC 9110 §8.6): the first line keeps its first value,
# the other lines go. Returns the bytes removed (0 when there is nothing to fold); the
# spans of fields after the first Content-Length line are stale after a fold.
cdef uint32_t fold_response(char* buf, uint32_t total, const RespHead* resp) noexcept nogil

# Removes every field line of a head whose name is `name` (ASCII case does not count:
# a route's header modifier names a field as HTTP does, RFC 9110 §5.1). `fields` and
# `count` are the head's parsed fields (ReqHead.headers or RespHead.headers). Returns
# the bytes removed; the spans of fields after the first removed line are stale.
cdef uint32_t drop_named(char* buf, uint32_t total, const Field* fields, uint32_t count,
                         const char* name, uint32_t name_len) noexcept nogil

# Removes every field line of a head whose name is `name` as a CGI/WSGI server files
# it (case, and '_' for '-', do not count), as drop_named does otherwise: a field the
# nodes own (x-meshnode-failure) taken out of what an app answers, in every spelling
# that could be read as it. Returns the bytes removed.
cdef uint32_t drop_owned(char* buf, uint32_t total, const Field* fields, uint32_t count,
                         const char* name, uint32_t name_len) noexcept nogil

cdef enum:
    # len("Connection: close\r\n")
    CLOSE_LINE_BYTES = 19
