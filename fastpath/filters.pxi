# filters.pxi: Per-request steps on a route: today the identity header (x-forwarded-
# client-cert) the inbound side sets on each request it hands the app.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.

cdef inline uint32_t _xfcc_value_len(const InboundRoute* route, uint32_t peer_len) noexcept nogil:
    """len("By=<local ID>;URI=<peer ID>"), without By= when the route has no ID."""
    return (route.identity.length + 4 if route.identity.length > 0 else 0) + 4 + peer_len


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
