# tickets.pxi: how long a TLS session may be resumed, and the keys that seal its tickets.
#
# Included into fastpath/tls.pyx. Why: OpenSSL re-tickets a resumed TLS 1.3 session
# with a fresh time and lifetime, so a peer that resumes now and then keeps a session,
# and the certificate check behind it, forever; and the keys that seal tickets never
# change while a process lives. Here a session's life is counted from the full
# handshake that verified the peer (the server seals that time into every ticket it
# issues, the client keeps it with the session) and ends at the latest at the peer
# certificate's notAfter; and ticket keys, given a shared base, are derived per period
# of the wall clock, so every worker of a node holds the same ones without talking.
#
# Policy lives in a TicketPolicy hung off the SSL_CTX as ex_data (freed with it, as
# the ALPN list is). The callbacks run on whichever thread drives the handshake: the
# one thing they change, the cache of the period's keys, is under a lock.

from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, intptr_t
from libc.stdlib cimport calloc
from libc.time cimport time

ctypedef struct TicketPolicy:
    int64_t life_s          # a session's whole life, from its full handshake
    int64_t period_s        # ticket key period; 0: OpenSSL's own keys (not ours)
    unsigned char base[TLS_TICKET_KEYS_BYTES]    # what each period's keys derive from
    # The keys of period `period` and the one before, derived once a period (an HMAC
    # costs a provider fetch in OpenSSL 3: measurable per handshake). Under `lock`:
    # handshakes of one context may run on several threads.
    openssl.CRYPTO_RWLOCK* lock
    int64_t period
    unsigned char keys[2 * TLS_TICKET_KEYS_BYTES]


cdef enum:
    _ORIGIN_BYTES = 8       # the ticket appdata: the full handshake's time, big-endian
    _KEY_NAME_BYTES = 16    # a ticket's key name (RFC 5077 §4 layout, OpenSSL's too)
    _HMAC_KEY_BYTES = 32
    _AES_KEY_BYTES = 32
    _SHA512_BYTES = 64
    _DERIVED_BYTES = 2 * _SHA512_BYTES    # two HMAC-SHA512 blocks, 80 bytes used
    _LABEL_BYTES = 26       # len("meshnode ticket key period")


cdef void _policy_free(void* parent, void* ptr, openssl.CRYPTO_EX_DATA* ad,
                       int idx, long argl, void* argp) noexcept nogil:
    if ptr != NULL:
        openssl.CRYPTO_THREAD_lock_free((<TicketPolicy*>ptr).lock)
        openssl.OPENSSL_cleanse(ptr, sizeof(TicketPolicy))
        free(ptr)


cdef int _policy_index = openssl.SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, _policy_free)
# The policy of the ctx that issues an SSL's tickets, kept on the SSL before an SNI
# switch (SSL_set_SSL_CTX) hides that ctx: the key callback has no argument of its own.
cdef int _policy_ssl_index = openssl.SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)
# Server: the full handshake's time of the session a connection resumed, from its
# ticket (OpenSSL's copy of a resumed session for the next ticket drops the appdata).
cdef int _origin_ssl_index = openssl.SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)
# Client sessions: the time of the full handshake, as an integer in the pointer. OpenSSL
# copies ex_data when it duplicates a session for a new ticket, so the sessions that
# tickets after a resumption make keep their original's.
cdef int _origin_index = openssl.SSL_SESSION_get_ex_new_index(0, NULL, NULL, NULL, NULL)
if (_policy_index < 0 or _policy_ssl_index < 0 or _origin_ssl_index < 0
        or _origin_index < 0):
    raise_tls_error("cannot reserve ex_data indexes for session life")


cdef int64_t _cert_left_s(openssl.X509* cert) noexcept nogil:
    """Seconds from now to the certificate's notAfter (< 0 once past, -1 if it does not
    parse); a session without a peer certificate is bounded by its life alone."""
    cdef int days = 0
    cdef int secs = 0
    if cert == NULL:
        return INT64_MAX
    if openssl.ASN1_TIME_diff(&days, &secs, NULL, openssl.X509_get0_notAfter(cert)) != 1:
        return -1
    return <int64_t>days * 86400 + secs


cdef int64_t _session_left_s(openssl.SSL_SESSION* s, int64_t origin, int64_t life_s,
                             int64_t now) noexcept nogil:
    cdef int64_t left = origin + life_s - now
    cdef int64_t cert_left = _cert_left_s(openssl.SSL_SESSION_get0_peer(s))
    return left if left < cert_left else cert_left


cdef int64_t _ticket_origin(openssl.SSL_SESSION* s) noexcept nogil:
    """The full handshake's time sealed in a server session's ticket, or -1."""
    cdef void* data = NULL
    cdef size_t n = 0
    cdef const unsigned char* p
    cdef int64_t origin = 0
    cdef int i
    if openssl.SSL_SESSION_get0_ticket_appdata(s, &data, &n) != 1 or n != _ORIGIN_BYTES:
        return -1
    p = <const unsigned char*>data
    for i in range(_ORIGIN_BYTES):
        origin = (origin << 8) | p[i]
    return origin


cdef int _on_ticket_seal(openssl.SSL* ssl, void* arg) noexcept nogil:
    """Server, before each NewSessionTicket: seal the full handshake's time into the
    ticket (after a resumption, the resumed ticket's), and make the ticket's lifetime
    what is left of the session, so a client drops it in time."""
    cdef TicketPolicy* p = <TicketPolicy*>arg
    cdef openssl.SSL_SESSION* s = openssl.SSL_get0_session(ssl)
    cdef int64_t now = <int64_t>time(NULL)
    cdef int64_t origin, left
    cdef unsigned char data[_ORIGIN_BYTES]
    cdef int i
    openssl.SSL_set_ex_data(ssl, _policy_ssl_index, p)      # for _ticket_key, next
    if s == NULL:
        return 1
    origin = <int64_t><intptr_t>openssl.SSL_get_ex_data(ssl, _origin_ssl_index)
    if origin <= 0:
        origin = _ticket_origin(s)          # a second ticket after a full handshake
    if origin <= 0:
        origin = now
    if _ticket_origin(s) != origin:
        for i in range(_ORIGIN_BYTES):
            data[i] = <unsigned char>((origin >> (8 * (_ORIGIN_BYTES - 1 - i))) & 0xff)
        if openssl.SSL_SESSION_set1_ticket_appdata(s, data, _ORIGIN_BYTES) != 1:
            return 0
    left = _session_left_s(s, origin, p.life_s, now)
    # A ticket cannot be withheld from here; one with no life left is refused on use.
    openssl.SSL_SESSION_set_timeout(s, <long>(left if left > 1 else 1))
    return 1


cdef openssl.SSL_TICKET_RETURN _on_ticket_open(
        openssl.SSL* ssl, openssl.SSL_SESSION* s, const unsigned char* name, size_t name_len,
        openssl.SSL_TICKET_STATUS status, void* arg) noexcept nogil:
    """Server, a ticket opened: resume only within the life of its full handshake and of
    the peer certificate it verified. The client's own check is not relied upon: its
    clock, and its respect for the ticket's lifetime, are the client's."""
    cdef TicketPolicy* p = <TicketPolicy*>arg
    cdef int64_t origin
    if status == openssl.SSL_TICKET_SUCCESS or status == openssl.SSL_TICKET_SUCCESS_RENEW:
        origin = _ticket_origin(s)
        if origin <= 0 or _session_left_s(s, origin, p.life_s, <int64_t>time(NULL)) <= 0:
            return openssl.SSL_TICKET_RETURN_IGNORE_RENEW      # a full handshake
        openssl.SSL_set_ex_data(ssl, _origin_ssl_index, <void*><intptr_t>origin)
        if status == openssl.SSL_TICKET_SUCCESS_RENEW:
            return openssl.SSL_TICKET_RETURN_USE_RENEW
        return openssl.SSL_TICKET_RETURN_USE
    if (status == openssl.SSL_TICKET_NONE or status == openssl.SSL_TICKET_EMPTY
            or status == openssl.SSL_TICKET_NO_DECRYPT):
        return openssl.SSL_TICKET_RETURN_IGNORE_RENEW
    return openssl.SSL_TICKET_RETURN_ABORT                     # SSL_TICKET_FATAL_ERR_*


cdef void session_mark_origin(openssl.SSL* ssl) noexcept nogil:
    cdef openssl.SSL_SESSION* s = openssl.SSL_get0_session(ssl)
    # A resumed session has its time already; a full handshake's session is new. (Not
    # from a new-session callback: that needs the client cache mode, with which
    # OpenSSL spends each TLS 1.3 ticket on its first resumption.)
    if s != NULL and openssl.SSL_SESSION_get_ex_data(s, _origin_index) == NULL:
        openssl.SSL_SESSION_set_ex_data(s, _origin_index, <void*><intptr_t>time(NULL))


cdef bint session_offerable(openssl.SSL_CTX* ctx, openssl.SSL_SESSION* s) noexcept nogil:
    cdef TicketPolicy* p = <TicketPolicy*>openssl.SSL_CTX_get_ex_data(ctx, _policy_index)
    cdef int64_t life_s = p.life_s if p != NULL else TLS_SESSION_LIFE_S
    cdef int64_t origin = <int64_t><intptr_t>openssl.SSL_SESSION_get_ex_data(s, _origin_index)
    if origin == 0:
        origin = <int64_t>openssl.SSL_SESSION_get_time(s)     # made without our callback
    return _session_left_s(s, origin, life_s, <int64_t>time(NULL)) > 0


cdef void ticket_policy_keep(openssl.SSL* ssl) noexcept nogil:
    cdef void* p = openssl.SSL_CTX_get_ex_data(openssl.SSL_get_SSL_CTX(ssl), _policy_index)
    if p != NULL:
        openssl.SSL_set_ex_data(ssl, _policy_ssl_index, p)


cdef int _period_keys(const TicketPolicy* p, int64_t period, unsigned char* out) noexcept nogil:
    """The 80 bytes of keys (name, HMAC key, AES key) of `period` into out: HMAC-SHA512
    under the base, of a label, the period number and a block counter."""
    cdef unsigned char msg[_LABEL_BYTES + 9]
    cdef unsigned char block[_DERIVED_BYTES]
    cdef size_t n = _LABEL_BYTES
    cdef unsigned int md_len = 0
    cdef int i
    cdef int rc = 0
    memcpy(msg, b"meshnode ticket key period", n)
    for i in range(8):
        msg[n + i] = <unsigned char>((period >> (8 * (7 - i))) & 0xff)
    for i in range(2):
        msg[n + 8] = <unsigned char>(i + 1)
        if openssl.HMAC(openssl.EVP_sha512(), p.base, TLS_TICKET_KEYS_BYTES, msg, n + 9,
                        block + i * _SHA512_BYTES, &md_len) == NULL:
            rc = -1
    memcpy(out, block, TLS_TICKET_KEYS_BYTES)
    openssl.OPENSSL_cleanse(block, sizeof(block))
    return rc


cdef int _period_pair(TicketPolicy* p, int64_t period, unsigned char* out) noexcept nogil:
    """This period's keys and the previous one's into out[0:160], from the cache."""
    cdef int rc = 0
    if openssl.CRYPTO_THREAD_write_lock(p.lock) != 1:
        return -1
    if p.period != period:
        if p.period == period - 1:
            memcpy(p.keys + TLS_TICKET_KEYS_BYTES, p.keys, TLS_TICKET_KEYS_BYTES)
        else:
            rc = _period_keys(p, period - 1, p.keys + TLS_TICKET_KEYS_BYTES)
        if rc == 0:
            rc = _period_keys(p, period, p.keys)
        p.period = period if rc == 0 else INT64_MIN
    memcpy(out, p.keys, 2 * TLS_TICKET_KEYS_BYTES)
    openssl.CRYPTO_THREAD_unlock(p.lock)
    return rc


cdef int _keys_init(unsigned char* keys, unsigned char* iv, openssl.EVP_CIPHER_CTX* cctx,
                    openssl.EVP_MAC_CTX* hctx, bint seal) noexcept nogil:
    # OpenSSL's own ticket format: AES-256-CBC, HMAC-SHA256 (ssl/t1_lib.c).
    cdef openssl.OSSL_PARAM params[3]
    params[0] = openssl.OSSL_PARAM_construct_octet_string(
        b"key", keys + _KEY_NAME_BYTES, _HMAC_KEY_BYTES)
    params[1] = openssl.OSSL_PARAM_construct_utf8_string(b"digest", <char*>b"SHA256", 0)
    params[2] = openssl.OSSL_PARAM_construct_end()
    if openssl.EVP_MAC_CTX_set_params(hctx, params) != 1:
        return -1
    if seal:
        if openssl.EVP_EncryptInit_ex(cctx, openssl.EVP_aes_256_cbc(), NULL,
                                      keys + _KEY_NAME_BYTES + _HMAC_KEY_BYTES, iv) != 1:
            return -1
    elif openssl.EVP_DecryptInit_ex(cctx, openssl.EVP_aes_256_cbc(), NULL,
                                    keys + _KEY_NAME_BYTES + _HMAC_KEY_BYTES, iv) != 1:
        return -1
    return 0


cdef int _ticket_key(openssl.SSL* ssl, unsigned char* name, unsigned char* iv,
                     openssl.EVP_CIPHER_CTX* cctx, openssl.EVP_MAC_CTX* hctx,
                     int enc) noexcept nogil:
    """Seal with this period's key; open with this period's or the previous one's (2:
    OpenSSL then reseals the session with this period's). An older ticket does not open
    (0): the client gets a full handshake."""
    cdef TicketPolicy* p = <TicketPolicy*>openssl.SSL_get_ex_data(ssl, _policy_ssl_index)
    cdef unsigned char keys[2 * TLS_TICKET_KEYS_BYTES]     # this period's, the previous
    cdef unsigned char* k
    cdef int rc = 0
    cdef int age
    if p == NULL:
        p = <TicketPolicy*>openssl.SSL_CTX_get_ex_data(openssl.SSL_get_SSL_CTX(ssl),
                                                       _policy_index)
    if p == NULL or p.period_s <= 0:
        return -1
    if _period_pair(p, <int64_t>time(NULL) // p.period_s, keys) != 0:
        rc = -1
    elif enc:
        if openssl.RAND_bytes(iv, 16) != 1 or _keys_init(keys, iv, cctx, hctx, True) != 0:
            rc = -1
        else:
            memcpy(name, keys, _KEY_NAME_BYTES)
            rc = 1
    else:
        for age in range(2):
            k = keys + age * TLS_TICKET_KEYS_BYTES
            if memcmp(name, k, _KEY_NAME_BYTES) == 0:
                rc = -1 if _keys_init(k, iv, cctx, hctx, False) != 0 else 1 + age
                break
    openssl.OPENSSL_cleanse(keys, sizeof(keys))
    return rc


cdef TicketPolicy* _policy(TLSContext ctx) except NULL:
    """The context's policy, made (life TLS_SESSION_LIFE_S) and its callbacks installed
    on first use."""
    cdef TicketPolicy* p = <TicketPolicy*>openssl.SSL_CTX_get_ex_data(ctx.ctx, _policy_index)
    if p != NULL:
        return p
    p = <TicketPolicy*>calloc(1, sizeof(TicketPolicy))
    if p == NULL:
        raise MemoryError()
    p.life_s = TLS_SESSION_LIFE_S
    p.period = INT64_MIN
    openssl.ERR_clear_error()
    p.lock = openssl.CRYPTO_THREAD_lock_new()
    if p.lock == NULL or openssl.SSL_CTX_set_ex_data(ctx.ctx, _policy_index, p) != 1:
        openssl.CRYPTO_THREAD_lock_free(p.lock)
        free(p)
        raise_tls_error("cannot keep the session policy")
    if ctx.server and openssl.SSL_CTX_set_session_ticket_cb(
            ctx.ctx, _on_ticket_seal, _on_ticket_open, p) != 1:
        raise_tls_error("cannot set the session ticket callbacks")
    return p
