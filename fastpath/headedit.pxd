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

from fastpath.http1 cimport ReqHead, RespHead


# Removes from a request head the field lines that belong to the client's hop:
# Connection, Keep-Alive, Proxy-Connection, an Upgrade that no "upgrade" connection
# option announces, and the fields the Connection header names — except the ones
# that frame or route the message (Host, Content-Length, Transfer-Encoding), which a
# client must not be able to strip from what the upstream sees. Call only for an
# HTTP/1.1 request that is not an upgrade (an upgrade keeps its Connection: upgrade).
# Returns the bytes removed (buf[0:total - removed] is the result).
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

# Removes every field line named `name` (compared case-insensitively) from a request
# head: a client must not be able to forge a field the proxy itself vouches for (e.g.
# x-forwarded-client-cert). Returns the bytes removed.
cdef uint32_t drop_fields(char* buf, uint32_t total, const ReqHead* req,
                          const char* name, uint32_t name_len) noexcept nogil

cdef enum:
    # len("Connection: close\r\n")
    CLOSE_LINE_BYTES = 19
