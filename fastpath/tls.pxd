# fastpath/tls.pxd: TLS credentials and policy as OpenSSL SSL_CTX objects, and
# blocking TLS sessions over them.
#
# Other fastpath modules cimport TLSContext to reach `ctx` when they create SSL
# objects for connections, raise_tls_error to report OpenSSL failures, and
# peer_spiffe_id to learn a connection's peer identity without the GIL (its status
# codes, SPIFFE_*, are in consts.pxi).

from fastpath.includes cimport openssl


cdef class TLSContext:
    # Owned: created in __cinit__, released in __dealloc__. An SSL made from it holds
    # its own reference, so in-flight connections outlive a replaced context.
    cdef openssl.SSL_CTX* ctx
    cdef readonly bint server


# A resumable client session (TLS 1.3: a ticket and its secrets), one reference owned.
cdef class TLSSessionTicket:
    cdef openssl.SSL_SESSION* session


# A TLSSession's life; each arrow is one call from Python.
#
#   NEW ──handshake() ok──► OPEN ──shutdown()──► CLOSED   (read() still drains)
#    │                       │
#    └──handshake() fails──► FAILED ◄──read()/write() fail (a read timeout does not)
#
# FAILED is terminal: OpenSSL forbids SSL_shutdown after a fatal error.
cdef enum SessionState:
    SESSION_NEW
    SESSION_OPEN
    SESSION_CLOSED
    SESSION_FAILED


cdef class TLSSession:
    # Owned SSL over a borrowed fd (the caller keeps the socket open and closes it).
    cdef openssl.SSL* ssl
    cdef readonly bint server
    cdef SessionState state
    # Set while a call runs with the GIL released: an SSL is not safe to use from two
    # threads at once, so a second caller gets RuntimeError instead of corrupt state.
    cdef bint busy

    cdef int _enter(self) except -1
    cdef str _state_name(self)
    cdef int _fail(self, str what, int ret, int saved_errno, bint retryable) except -1


# The one place OpenSSL's error queue becomes a Python exception (fastpath.errors.TLSError).
# `detail` is appended to the message (what the queue cannot say: the verify result,
# errno); `verify_result` is the X509_V_* code to attach, None when none applies.
cdef int raise_tls_error(str what, str detail=*, object verify_result=*) except -1

# The verified peer's SPIFFE ID copied into out[0:cap] with a NUL; returns its length,
# or a SPIFFE_* status < 0 (no peer cert, unverified, none, several, too long, malformed).
cdef int peer_spiffe_id(openssl.SSL* ssl, char* out, size_t cap) noexcept nogil


# Client: may session `s` (made with client context `ctx`) still be offered? Not once
# its life (TLSContext.set_session_life, counted from its full handshake) is over, nor
# past the server certificate's notAfter.
cdef bint session_offerable(openssl.SSL_CTX* ctx, openssl.SSL_SESSION* s) noexcept nogil

# Server, before SSL_set_SSL_CTX (an SNI switch): keep the ticket policy of the SSL's
# current ctx, the one that issues its tickets, where the ticket key callback finds it.
cdef void ticket_policy_keep(openssl.SSL* ssl) noexcept nogil

# Client, handshake done: stamp the session with the time of this full handshake,
# unless it is a resumed one (which has its original's). What session_offerable counts from.
cdef void session_mark_origin(openssl.SSL* ssl) noexcept nogil
