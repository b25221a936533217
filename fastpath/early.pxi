# early.pxi: An upstream that answered before it took the whole request: sending the rest
# to it failed (it reset: an app that answered 413, or 503 before reading the body, and
# closed with the body unread), and what it answered is passed on to the client, then the
# pair ends (as Envoy forwards an early response).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (Conn.up_refused).
#
# The answer came before the reset (TCP keeps order), so it waits in the upstream's
# socket (or was read already, and the read after it failed: the same case met from the
# other side, _up_failed): from the refusal on, the client's side stops (nothing more read from it, what
# it sent and is buffered dropped: it had nowhere to go) and the upstream's answers are
# read and framed as ever (_http_u2d), through the client's backpressure. A read error
# of that upstream is then its end, not a reset of the pair: what came before it goes
# on. The pair ends when the answer under way is whole and sent (closed; a head framed
# after the refusal says `Connection: close`), or when the upstream ended: an answer
# cut short (its body, or one until close ended by an error) is reset after what came of
# it, as a truncation is elsewhere; no answer at all is the 502 of an upstream that
# closed before answering.

cdef enum UpRefused:
    UP_SENDING = 0                 # the upstream takes the client's bytes (no refusal)
    UP_REFUSED                     # a send failed: the answer is read, the client not
    UP_REFUSED_ENDED               # ... and a read of the upstream failed: its end


cdef int64_t _up_refused(Core* core, Conn* c, int64_t progress) noexcept nogil:
    """_http_d2u: a send to the upstream failed, and no retry takes the request. The
    client's side stops; the answers come as they may (_http_u2d). The amount moved."""
    cdef Flow* f = &c.d2u
    c.up_refused = UP_REFUSED
    c.flags &= ~(CONN_RETRYABLE | CONN_KEPT)
    c.fwd = 0
    c.switching = False
    if f.buf != NULL:
        _buf_put(core, f.buf)
    memset(f, 0, sizeof(Flow))
    f.eof = True                        # nothing more is read from the client ...
    f.shut = True                       # ... or sent to the upstream (not even its end)
    c.reusable = False
    c.client_close = True               # an answer head framed from here says close
    c.up.readable = True                # (the reset's event may be gone: read anyway)
    return progress + 1


cdef inline void _up_failed(Core* core, Conn* c) noexcept nogil:
    """_http_u2d: a read of the upstream failed, and no retry takes the request: that is
    the upstream's end. What it sent before goes on (an early answer, then the reset,
    may be read before a send fails on it): the client's side stops as after a refused
    send (_up_refused), and the pair ends once that is passed on (_up_refused_done)."""
    if c.up_refused == UP_SENDING:
        _up_refused(core, c, 0)
    c.up_refused = UP_REFUSED_ENDED
    c.u2d.eof = True


cdef inline int _up_refused_done(Conn* c) noexcept nogil:
    """_http_u2d, after sending: STATUS_CLOSE once every answer that came is whole and
    sent; STATUS_RESET when the upstream failed under an answer that runs until its end
    (cut short); STATUS_OK while more may come or wait to be sent. (An answer with a
    length cut short, or none at all, is _http_rframe's.)"""
    if c.u2d.buf != NULL or c.resp_fwd != 0:
        return STATUS_OK
    if c.resp_phase == RESP_HEAD and (c.n_pend == 0 or c.u2d.eof):
        return STATUS_CLOSE
    if c.up_refused == UP_REFUSED_ENDED and (c.resp_phase == RESP_CLOSE
                                             or c.resp_phase == RESP_TUNNEL):
        return STATUS_RESET
    return STATUS_OK
