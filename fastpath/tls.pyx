"""fastpath.tls: TLS credentials and policy as OpenSSL SSL_CTX objects, and peer SPIFFE IDs."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.limits cimport INT_MAX
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from fastpath.includes cimport openssl

import os

from fastpath.errors import TLSError

include "consts.pxi"


# Key exchange groups of mesh hops, most preferred first: P-256 keeps a default
# handshake on NIST curves only; X25519 is accepted from peers that prefer it.
cdef bytes _MESH_GROUPS = b"P-256:X25519"
# Names the sessions a mesh server issues (at most SSL_MAX_SID_CTX_LENGTH bytes).
cdef bytes _MESH_SID_CTX = b"meshnode/mtls"


# ALPN list a server context selects from, in wire format (RFC 7301 §3.1: each name
# prefixed by its length). It hangs off the SSL_CTX as ex_data, not off the Python
# object: a connection's SSL keeps its SSL_CTX alive after the TLSContext is gone
# (config swap with requests in flight), and ex_data is freed with the SSL_CTX itself.
ctypedef struct AlpnWire:
    unsigned int length
    unsigned char* data        # points just past the struct, same allocation


cdef void _alpn_wire_free(void* parent, void* ptr, openssl.CRYPTO_EX_DATA* ad,
                          int idx, long argl, void* argp) noexcept nogil:
    # OpenSSL calls this for every SSL_CTX at free time, set or not.
    if ptr != NULL:
        free(ptr)


cdef int _alpn_index = openssl.SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, _alpn_wire_free)
if _alpn_index < 0:
    raise_tls_error("cannot reserve SSL_CTX ex_data index for ALPN")


cdef int _alpn_select(openssl.SSL* ssl, const unsigned char** out, unsigned char* outlen,
                      const unsigned char* client, unsigned int client_len,
                      void* arg) noexcept nogil:
    cdef AlpnWire* wire = <AlpnWire*>openssl.SSL_CTX_get_ex_data(
        openssl.SSL_get_SSL_CTX(ssl), _alpn_index)
    if wire == NULL or wire.length == 0:
        return openssl.SSL_TLSEXT_ERR_NOACK
    if client_len == 0:
        # Malformed offer; also the input behind CVE-2024-5535 on unpatched libssl.
        return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
    # The server's preference order wins, as in Envoy and nginx.
    if openssl.SSL_select_next_proto(<unsigned char**>out, outlen, wire.data, wire.length,
                                     client, client_len) != openssl.OPENSSL_NPN_NEGOTIATED:
        # RFC 7301 §3.2: no common protocol is a fatal no_application_protocol alert.
        return openssl.SSL_TLSEXT_ERR_ALERT_FATAL
    return openssl.SSL_TLSEXT_ERR_OK


cdef int _no_passphrase(char* buf, int size, int rwflag, void* userdata) noexcept nogil:
    # Without a callback OpenSSL prompts on the terminal for an encrypted key; a
    # worker must fail instead. Keys reach workers unencrypted, in memory, from ca.
    return -1


cdef int raise_tls_error(str what, str detail=None, object verify_result=None) except -1:
    """Drain this thread's OpenSSL error queue into one TLSError and raise it.

    Draining matters as much as reporting: the queue is per thread, and anything left
    in it would be blamed on the next, unrelated failure. `detail` is what the queue
    cannot say (why a certificate failed verification, the errno of a socket call).
    """
    cdef unsigned long code
    cdef const char* lib
    cdef const char* reason
    cdef char line[TLS_ERR_STRING_BYTES]
    reasons = []
    codes = []
    while True:
        code = openssl.ERR_get_error()
        if code == 0:
            break
        codes.append(code)
        lib = openssl.ERR_lib_error_string(code)
        reason = openssl.ERR_reason_error_string(code)
        if reason != NULL:
            reasons.append("%s: %s" % (
                lib.decode("ascii", "replace") if lib != NULL else "unknown library",
                reason.decode("ascii", "replace")))
        else:
            openssl.ERR_error_string_n(code, line, sizeof(line))
            reasons.append(line.decode("ascii", "replace"))
    # An empty queue is normal when the caller found the problem itself (no PEM block).
    parts = reasons + [detail] if detail else reasons
    message = "%s: %s" % (what, "; ".join(parts)) if parts else what
    raise TLSError(message, tuple(reasons), tuple(codes), verify_result)


cdef openssl.BIO* _memory_bio(bytes pem, str what) except NULL:
    # Read-only BIO over the bytes object's own buffer: no copy, and nothing on disk.
    # The caller keeps `pem` alive for as long as the BIO.
    cdef Py_ssize_t n = len(pem)
    if n > INT_MAX:
        raise ValueError("%s: %d bytes is more than OpenSSL can read" % (what, n))
    cdef openssl.BIO* bio = openssl.BIO_new_mem_buf(<const char*>pem, <int>n)
    if bio == NULL:
        raise_tls_error(what)
    return bio


cdef int _expect_pem_end(str what) except -1:
    # A PEM read loop ends on "no start line" once the input is used up
    # (what SSL_CTX_use_certificate_chain_file does); any other error is a bad block.
    cdef unsigned long last = openssl.ERR_peek_last_error()
    if (openssl.ERR_GET_LIB(last) == openssl.ERR_LIB_PEM
            and openssl.ERR_GET_REASON(last) == openssl.PEM_R_NO_START_LINE):
        openssl.ERR_clear_error()
        return 0
    raise_tls_error(what)


cdef openssl.stack_st_X509* _read_certs(openssl.BIO* bio, str what) except NULL:
    """Every CERTIFICATE block left in `bio`, in order (possibly none)."""
    cdef openssl.X509* cert
    cdef openssl.stack_st_X509* certs = openssl.sk_X509_new_null()
    if certs == NULL:
        raise_tls_error(what)
    try:
        while True:
            cert = openssl.PEM_read_bio_X509(bio, NULL, _no_passphrase, NULL)
            if cert == NULL:
                break
            if openssl.sk_X509_push(certs, cert) <= 0:
                openssl.X509_free(cert)
                raise_tls_error(what)
        _expect_pem_end(what)
    except BaseException:
        openssl.sk_X509_pop_free(certs, openssl.X509_free)
        raise
    return certs


include "tickets.pxi"          # session life, ticket keys by period


def openssl_version() -> str:
    """The linked libssl's version text, e.g. "OpenSSL 3.0.13 30 Jan 2024"."""
    return openssl.OpenSSL_version(openssl.OPENSSL_VERSION).decode("ascii", "replace")


def openssl_version_number() -> int:
    """The linked libssl's OPENSSL_VERSION_NUMBER (0xMNN00PP0L)."""
    return openssl.OpenSSL_version_num()


cdef class TLSContext:
    """One role's TLS policy and credentials: TLS 1.3 only, certs and keys from memory.

    Configure it fully before the engine makes connections from it; to rotate
    credentials build a new TLSContext and swap it in (DESIGN.md §3), since OpenSSL
    does not make SSL_CTX changes safe against concurrent handshakes.
    """

    def __cinit__(self, bint server):
        self.ctx = NULL
        self.server = server
        openssl.ERR_clear_error()
        self.ctx = openssl.SSL_CTX_new(
            openssl.TLS_server_method() if server else openssl.TLS_client_method())
        if self.ctx == NULL:
            raise_tls_error("cannot create SSL_CTX")
        # The mesh talks only to itself, so it has no reason to accept anything older;
        # the maximum keeps it on 1.3 when a later libssl learns a newer version.
        if openssl.SSL_CTX_set_min_proto_version(self.ctx, openssl.TLS1_3_VERSION) != 1:
            raise_tls_error("cannot require TLS 1.3")
        if openssl.SSL_CTX_set_max_proto_version(self.ctx, openssl.TLS1_3_VERSION) != 1:
            raise_tls_error("cannot require TLS 1.3")

    def __dealloc__(self):
        if self.ctx != NULL:
            openssl.SSL_CTX_free(self.ctx)
            self.ctx = NULL

    def __repr__(self) -> str:
        return "<TLSContext %s>" % ("server" if self.server else "client")

    @classmethod
    def for_mesh(cls, bint server, bytes cert_chain_pem not None, bytes key_pem not None,
                 bytes bundle_pem not None, alpn=None) -> TLSContext:
        """A complete mutual-TLS context for one side of a hop between mesh nodes.

        `cert_chain_pem` is the workload certificate (whose one URI SAN is its SPIFFE
        ID) followed by its issuer(s); `bundle_pem` holds the mesh root(s) only, the
        sole anchors of trust. Both sides send their chain and require and verify the
        peer's (expiry, purpose, chain up to a bundle root); deciding whether the peer's
        SPIFFE ID may talk is left to the caller's policy. A server issues TLS 1.3
        session tickets, which only that context can decrypt (so a rotated context
        starts with full handshakes) unless it is given shared keys: set_ticket_keys().
        `alpn`: protocols, most preferred first, or None.
        """
        cdef TLSContext self = cls(server)
        cdef char own_id[SPIFFE_ID_MAX_BYTES + 1]
        openssl.ERR_clear_error()
        if openssl.SSL_CTX_set1_groups_list(self.ctx, _MESH_GROUPS) != 1:
            raise_tls_error("cannot set key exchange groups")
        self.load_cert_chain(cert_chain_pem, key_pem)
        # Refuse to run without an identity: peers would refuse us anyway, one
        # connection at a time, far from the cause.
        _spiffe_result(
            _spiffe_from_x509(openssl.SSL_CTX_get0_certificate(self.ctx), own_id, sizeof(own_id)),
            own_id, "certificate chain: the leaf", True)
        self.load_trust(bundle_pem)
        # Only the bundle's roots anchor trust: an intermediate the peer sends is an
        # untrusted link to be verified up to one. Off by default; cleared in case a
        # system openssl.cnf turned it on.
        openssl.X509_VERIFY_PARAM_clear_flags(openssl.SSL_CTX_get0_param(self.ctx),
                                              openssl.X509_V_FLAG_PARTIAL_CHAIN)
        self.require_peer_cert()
        self.set_session_life(TLS_SESSION_LIFE_S)
        if server:
            # Without a session id context a server that verifies clients fails every
            # resumption attempt (SSL_R_SESSION_ID_CONTEXT_UNINITIALIZED).
            if openssl.SSL_CTX_set_session_id_context(
                    self.ctx, _MESH_SID_CTX, len(_MESH_SID_CTX)) != 1:
                raise_tls_error("cannot set session id context")
        if alpn is not None:
            self.set_alpn(alpn)
        return self

    def load_cert_chain(self, bytes cert_pem not None, bytes key_pem not None) -> None:
        """Use a certificate chain (leaf first, then intermediates) and its private key.

        Both are PEM in memory; the key must not be encrypted. Both are parsed before
        the context is touched, so unreadable input leaves it as it was.
        """
        cdef openssl.BIO* bio = NULL
        cdef openssl.stack_st_X509* chain = NULL
        cdef openssl.X509* leaf = NULL
        cdef openssl.EVP_PKEY* key = NULL
        openssl.ERR_clear_error()
        try:
            bio = _memory_bio(cert_pem, "certificate chain")
            chain = _read_certs(bio, "certificate chain")
            # What is left after the leaf are the intermediates sent along with it.
            leaf = openssl.sk_X509_shift(chain)
            if leaf == NULL:
                raise_tls_error("certificate chain holds no CERTIFICATE block")
            openssl.BIO_free(bio)
            bio = _memory_bio(key_pem, "private key")
            key = openssl.PEM_read_bio_PrivateKey(bio, NULL, _no_passphrase, NULL)
            if key == NULL:
                raise_tls_error("private key")

            if openssl.SSL_CTX_use_certificate(self.ctx, leaf) != 1:
                raise_tls_error("certificate")
            # Fails with "key values mismatch" when the key is not the leaf's.
            if openssl.SSL_CTX_use_PrivateKey(self.ctx, key) != 1:
                raise_tls_error("private key does not match the certificate")
            if openssl.SSL_CTX_check_private_key(self.ctx) != 1:
                raise_tls_error("private key does not match the certificate")
            # set1 takes its own references; an empty stack clears an older chain.
            if openssl.SSL_CTX_set1_chain(self.ctx, chain) != 1:
                raise_tls_error("certificate chain")
        finally:
            if bio != NULL:
                openssl.BIO_free(bio)
            if chain != NULL:
                openssl.sk_X509_pop_free(chain, openssl.X509_free)
            if leaf != NULL:
                openssl.X509_free(leaf)
            if key != NULL:
                openssl.EVP_PKEY_free(key)

    def load_trust(self, bytes bundle_pem not None) -> int:
        """Trust every certificate of a PEM bundle as a root; returns how many.

        A bundle holds several roots while one is rotated (DESIGN.md §4). Nothing is
        added unless the whole bundle parses.
        """
        cdef openssl.BIO* bio = NULL
        cdef openssl.stack_st_X509* certs = NULL
        cdef openssl.X509_STORE* store = openssl.SSL_CTX_get_cert_store(self.ctx)
        cdef int i, n
        openssl.ERR_clear_error()
        try:
            bio = _memory_bio(bundle_pem, "trust bundle")
            certs = _read_certs(bio, "trust bundle")
            n = openssl.sk_X509_num(certs)
            if n == 0:
                raise_tls_error("trust bundle holds no CERTIFICATE block")
            for i in range(n):
                # Since OpenSSL 1.1.1 a certificate already in the store is not an error.
                if openssl.X509_STORE_add_cert(store, openssl.sk_X509_value(certs, i)) != 1:
                    raise_tls_error("trust bundle")
            return n
        finally:
            if bio != NULL:
                openssl.BIO_free(bio)
            if certs != NULL:
                openssl.sk_X509_pop_free(certs, openssl.X509_free)

    def require_peer_cert(self) -> None:
        """Verify the peer's certificate against the trust store, and refuse a peer without one.

        OpenSSL ignores SSL_VERIFY_FAIL_IF_NO_PEER_CERT on clients, where a server
        always presents a certificate anyway.
        """
        openssl.SSL_CTX_set_verify(
            self.ctx, openssl.SSL_VERIFY_PEER | openssl.SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL)

    def set_session_life(self, long seconds) -> None:
        """A session resumes for at most `seconds` after the full handshake that made
        it (resumptions do not extend that), and never past the peer certificate's
        notAfter. A server seals the handshake's time into each ticket, refuses older
        ones (a full handshake instead) and sends what is left as the ticket's lifetime;
        a client keeps the time with its session and does not offer an older one
        (TLSSession.set_session, the engine's endpoints). for_mesh() sets
        TLS_SESSION_LIFE_S. Call before the context is used."""
        if not 1 <= seconds <= 7 * 86400:
            # RFC 8446 §4.6.1: a ticket lives at most seven days.
            raise ValueError("session life must be 1..604800 s, not %d" % seconds)
        _policy(self).life_s = seconds

    def set_ticket_keys(self, bytes keys not None, long period_s=TLS_TICKET_PERIOD_S) -> None:
        """Seal and open session tickets with keys derived from `keys`
        (TLS_TICKET_KEYS_BYTES = 80) instead of the context's own random ones, so that
        every server context given the same keys resumes the others' sessions: a
        node's workers share one set, and a client resumes whichever worker it reaches.

        A new key every `period_s` seconds of the wall clock (the period number and
        `keys` make it, so contexts agree without talking); a ticket sealed with the
        previous period's key still opens (and is resealed), an older one does not.
        Call before the context is used."""
        cdef TicketPolicy* p
        if not self.server:
            raise ValueError("session ticket keys are a server context's")
        if len(keys) != TLS_TICKET_KEYS_BYTES:
            raise ValueError("session ticket keys must be %d bytes, not %d"
                             % (TLS_TICKET_KEYS_BYTES, len(keys)))
        if period_s < 1:
            raise ValueError("ticket key period must be >= 1 s, not %d" % period_s)
        p = _policy(self)
        memcpy(p.base, <const char*>keys, TLS_TICKET_KEYS_BYTES)
        p.period_s = period_s
        p.period = INT64_MIN                 # derive again
        openssl.ERR_clear_error()
        if openssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(self.ctx, _ticket_key) != 1:
            raise_tls_error("cannot set session ticket keys")

    def set_alpn(self, protocols) -> None:
        """Set the ALPN protocols, most preferred first (e.g. [b"h2", b"http/1.1"]).

        A client offers them; a server picks its most preferred one that the client
        offers and refuses the handshake when there is none (RFC 7301 §3.2). An empty
        list turns ALPN off.
        """
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t n
        cdef AlpnWire* wire = NULL
        cdef AlpnWire* old
        cdef unsigned char* p
        protocols = tuple(protocols)     # iterated twice below
        for proto in protocols:
            if not isinstance(proto, bytes):
                raise TypeError("ALPN protocol must be bytes, not %s" % type(proto).__name__)
            n = len(<bytes>proto)
            if n < 1 or n > ALPN_PROTO_MAX_BYTES:
                raise ValueError("ALPN protocol %r: length must be 1..%d bytes"
                                 % (proto, ALPN_PROTO_MAX_BYTES))
            total += 1 + n
            if total > ALPN_LIST_MAX_BYTES:
                raise ValueError("ALPN list longer than %d bytes" % ALPN_LIST_MAX_BYTES)
        if total > 0:
            wire = <AlpnWire*>malloc(sizeof(AlpnWire) + <size_t>total)
            if wire == NULL:
                raise MemoryError()
            wire.length = <unsigned int>total
            wire.data = <unsigned char*>(wire + 1)
            p = wire.data
            for proto in protocols:
                n = len(<bytes>proto)
                p[0] = <unsigned char>n
                memcpy(p + 1, <const char*>(<bytes>proto), <size_t>n)
                p += 1 + n

        openssl.ERR_clear_error()
        if not self.server:
            try:
                # Copies the list; returns 0 on success, unlike its neighbours.
                if openssl.SSL_CTX_set_alpn_protos(
                        self.ctx, wire.data if wire != NULL else NULL,
                        wire.length if wire != NULL else 0) != 0:
                    raise_tls_error("cannot set ALPN protocols")
            finally:
                free(wire)
            return

        old = <AlpnWire*>openssl.SSL_CTX_get_ex_data(self.ctx, _alpn_index)
        if openssl.SSL_CTX_set_ex_data(self.ctx, _alpn_index, wire) != 1:
            free(wire)
            raise_tls_error("cannot set ALPN protocols")
        free(old)
        openssl.SSL_CTX_set_alpn_select_cb(self.ctx, _alpn_select, NULL)


# --- SPIFFE identity ------------------------------------------------------------------

cdef enum:
    _SPIFFE_SCHEME_BYTES = 9    # len("spiffe://")


cdef inline bint _spiffe_trust_domain_char(unsigned char c) noexcept nogil:
    # SPIFFE ID §2.1: lowercase letters, digits, dots, dashes, underscores.
    return ((c >= c'a' and c <= c'z') or (c >= c'0' and c <= c'9')
            or c == c'.' or c == c'-' or c == c'_')


cdef inline bint _spiffe_path_char(unsigned char c) noexcept nogil:
    # SPIFFE ID §2.2: letters, digits, dots, dashes, underscores; no percent-encoding.
    return _spiffe_trust_domain_char(c) or (c >= c'A' and c <= c'Z')


cdef int _spiffe_copy(const unsigned char* uri, int n, char* out, size_t cap) noexcept nogil:
    """Check one URI SAN's bytes against the SPIFFE ID syntax and copy it out with a NUL."""
    cdef int i, start
    if (uri == NULL or n < _SPIFFE_SCHEME_BYTES
            or memcmp(uri, b"spiffe://", _SPIFFE_SCHEME_BYTES) != 0):
        return SPIFFE_NONE
    if cap == 0 or <size_t>n >= cap:
        return SPIFFE_TOO_LONG
    # The SAN's bytes are untrusted until the syntax passes: no NUL, no query, no
    # port, no userinfo, and nothing that would need escaping in a log or a label.
    i = _SPIFFE_SCHEME_BYTES
    while i < n and uri[i] != c'/':
        if not _spiffe_trust_domain_char(uri[i]):
            return SPIFFE_MALFORMED
        i += 1
    if i == _SPIFFE_SCHEME_BYTES:
        return SPIFFE_MALFORMED                 # empty trust domain
    while i < n:                                # uri[i] == '/'
        i += 1
        start = i
        while i < n and uri[i] != c'/':
            if not _spiffe_path_char(uri[i]):
                return SPIFFE_MALFORMED
            i += 1
        # §2.2: no empty segment (so no trailing slash) and no dot segments.
        if (i == start or (i - start == 1 and uri[start] == c'.')
                or (i - start == 2 and uri[start] == c'.' and uri[start + 1] == c'.')):
            return SPIFFE_MALFORMED
    memcpy(out, uri, <size_t>n)
    out[n] = 0
    return n


cdef int _spiffe_from_x509(openssl.X509* cert, char* out, size_t cap) noexcept nogil:
    """The SPIFFE ID of a certificate, whose only URI SAN it must be (X509-SVID §2)."""
    cdef int crit = 0
    cdef int i, n, kind
    cdef int uris = 0
    cdef int rc
    cdef void* value
    cdef openssl.ASN1_STRING* uri = NULL
    cdef openssl.GENERAL_NAMES* names
    if cert == NULL:
        return SPIFFE_NO_PEER
    # A SAN that does not decode is an answer (MALFORMED), not an error to leave on
    # this thread's queue for the next unrelated call to report.
    openssl.ERR_set_mark()
    names = <openssl.GENERAL_NAMES*>openssl.X509_get_ext_d2i(
        cert, openssl.NID_subject_alt_name, &crit, NULL)
    openssl.ERR_pop_to_mark()
    if names == NULL:
        # -1: no SAN at all. -2 (the extension twice) or a decoding failure: malformed.
        return SPIFFE_NONE if crit == -1 else SPIFFE_MALFORMED
    n = openssl.sk_GENERAL_NAME_num(names)
    for i in range(n):
        value = openssl.GENERAL_NAME_get0_value(openssl.sk_GENERAL_NAME_value(names, i), &kind)
        if kind == openssl.GEN_URI:
            uris += 1
            uri = <openssl.ASN1_STRING*>value
    if uris == 0:
        rc = SPIFFE_NONE
    elif uris > 1:
        rc = SPIFFE_MANY
    else:
        rc = _spiffe_copy(openssl.ASN1_STRING_get0_data(uri), openssl.ASN1_STRING_length(uri),
                          out, cap)
    openssl.GENERAL_NAMES_free(names)
    return rc


cdef int peer_spiffe_id(openssl.SSL* ssl, char* out, size_t cap) noexcept nogil:
    cdef openssl.X509* cert = openssl.SSL_get0_peer_certificate(ssl)
    if cert == NULL:
        return SPIFFE_NO_PEER
    # An identity is only as good as the chain behind it: with SSL_VERIFY_PEER a
    # failed verification ends the handshake, but a context without it (or a caller
    # asking mid-failure) would otherwise get an ID anyone could have minted.
    if openssl.SSL_get_verify_result(ssl) != openssl.X509_V_OK:
        return SPIFFE_UNVERIFIED
    return _spiffe_from_x509(cert, out, cap)


_SPIFFE_PROBLEMS = {
    SPIFFE_NO_PEER: "no certificate",
    SPIFFE_UNVERIFIED: "certificate did not verify to the trust bundle",
    SPIFFE_NONE: "no SPIFFE ID (no spiffe:// URI SAN)",
    SPIFFE_MANY: "more than one URI SAN (an X509-SVID has exactly one)",
    SPIFFE_TOO_LONG: "SPIFFE ID longer than %d bytes" % SPIFFE_ID_MAX_BYTES,
    SPIFFE_MALFORMED: "subjectAltName does not hold a valid SPIFFE ID",
}


cdef object _spiffe_result(int rc, const char* buf, str what, bint required=False):
    """The one mapping of SPIFFE_* statuses to Python: the ID, None, or TLSError.

    None means "no identity claimed" (no certificate, no SPIFFE URI SAN); an identity
    that is claimed but unusable raises, as does any status when `required`.
    """
    if rc >= 0:
        return buf[:rc].decode("ascii")    # the syntax check allowed ASCII only
    if not required and (rc == SPIFFE_NO_PEER or rc == SPIFFE_NONE):
        return None
    raise_tls_error(what, _SPIFFE_PROBLEMS.get(rc, "SPIFFE status %d" % rc))


def spiffe_id_of_pem(bytes cert_pem not None) -> str | None:
    """The SPIFFE ID of the first certificate in `cert_pem` (a chain's leaf), or None.

    None when the certificate has no URI SAN or its one URI SAN is not spiffe://;
    TLSError when the PEM holds no certificate, or the certificate has several URI
    SANs or a malformed or over-long SPIFFE ID. The chain is not verified.
    """
    cdef openssl.BIO* bio = NULL
    cdef openssl.X509* cert = NULL
    cdef char buf[SPIFFE_ID_MAX_BYTES + 1]
    cdef int rc
    openssl.ERR_clear_error()
    try:
        bio = _memory_bio(cert_pem, "certificate")
        cert = openssl.PEM_read_bio_X509(bio, NULL, _no_passphrase, NULL)
        if cert == NULL:
            raise_tls_error("certificate")
        with nogil:
            rc = _spiffe_from_x509(cert, buf, sizeof(buf))
        return _spiffe_result(rc, buf, "certificate")
    finally:
        if cert != NULL:
            openssl.X509_free(cert)
        if bio != NULL:
            openssl.BIO_free(bio)


# --- blocking sessions ----------------------------------------------------------------

cdef class TLSSessionTicket:
    """A client session that a later connection can resume (TLSSession.set_session).

    Only TLSSession.get_session() makes them. Opaque: it holds the session's secrets.
    """

    def __cinit__(self):
        self.session = NULL

    def __init__(self):
        raise TypeError("TLSSessionTicket comes from TLSSession.get_session()")

    def __dealloc__(self):
        if self.session != NULL:
            openssl.SSL_SESSION_free(self.session)
            self.session = NULL


cdef class TLSSession:
    """One TLS connection over a connected, blocking socket fd; blocking calls.

    For tests and command-line checks: the engine drives SSL objects itself. The
    role (accept or connect) is the context's. The fd is borrowed: the caller keeps
    the socket open while the session is used and closes it afterwards. The
    blocking calls release the GIL, so both ends can run in one process on two
    threads; a socket timeout (SO_RCVTIMEO/SO_SNDTIMEO) bounds them and shows as
    TLSError. A socket with a Python-level timeout is non-blocking underneath:
    use setsockopt instead.
    """

    def __cinit__(self, TLSContext ctx not None, int fd, server_name=None):
        cdef bytes name = None
        self.ssl = NULL
        self.server = ctx.server
        self.state = SESSION_NEW
        self.busy = False
        if fd < 0:
            raise ValueError("fd must be an open socket's descriptor, not %d" % fd)
        if server_name is not None:
            if self.server:
                raise ValueError("server_name (SNI) is sent by clients only")
            if not isinstance(server_name, str):
                raise TypeError("server_name must be str, not %s" % type(server_name).__name__)
            name = (<str>server_name).encode("ascii")     # UnicodeEncodeError is a ValueError
            # RFC 6066 §3: a host_name is 1..255 bytes; a NUL would cut it short in C.
            if not 1 <= len(name) <= 255 or b"\0" in name:
                raise ValueError("server_name %r: must be 1..255 bytes without NUL" % server_name)
        openssl.ERR_clear_error()
        self.ssl = openssl.SSL_new(ctx.ctx)
        if self.ssl == NULL:
            raise_tls_error("cannot create SSL")
        if openssl.SSL_set_fd(self.ssl, fd) != 1:
            raise_tls_error("cannot attach the socket")
        if name is not None and openssl.SSL_set_tlsext_host_name(self.ssl, name) != 1:
            raise_tls_error("cannot set server_name")

    def __dealloc__(self):
        if self.ssl != NULL:
            openssl.SSL_free(self.ssl)
            self.ssl = NULL

    def __repr__(self) -> str:
        return "<TLSSession %s %s>" % ("server" if self.server else "client", self._state_name())

    cdef int _enter(self) except -1:
        if self.busy:
            raise RuntimeError("TLSSession is in use by another thread")
        self.busy = True
        openssl.ERR_clear_error()    # SSL_get_error needs an empty queue before the call
        return 0

    cdef int _fail(self, str what, int ret, int saved_errno, bint retryable) except -1:
        cdef int err = openssl.SSL_get_error(self.ssl, ret)
        cdef long verify = openssl.SSL_get_verify_result(self.ssl)
        cdef const char* text
        if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
            if not retryable:
                self.state = SESSION_FAILED
            raise_tls_error(what, "timed out (socket timeout, or the fd is non-blocking)")
        self.state = SESSION_FAILED
        details = []
        verify_result = None
        if verify != openssl.X509_V_OK:
            verify_result = verify
            text = openssl.X509_verify_cert_error_string(verify)
            details.append("peer certificate: %s" % (
                text.decode("ascii", "replace") if text != NULL else "error %d" % verify))
        if err == openssl.SSL_ERROR_SYSCALL:
            details.append(os.strerror(saved_errno) if saved_errno != 0
                           else "connection closed by the peer")
        elif err == openssl.SSL_ERROR_ZERO_RETURN:
            details.append("connection closed by the peer")
        raise_tls_error(what, "; ".join(details) or None, verify_result)

    def handshake(self) -> None:
        """Run the TLS handshake (accept or connect), blocking; TLSError on failure.

        The message names OpenSSL's reason and, when the peer's certificate was
        refused, why ("certificate has expired"). TLS 1.3 note: a client finishes its
        handshake before the server has judged the client's certificate, so a client
        learns of its refusal from the first read() (an alert), not from here.
        """
        cdef openssl.SSL* ssl = self.ssl
        cdef bint server = self.server
        cdef int ret, saved_errno
        if self.state != SESSION_NEW:
            raise ValueError("handshake() runs once")
        self._enter()
        try:
            with nogil:
                ret = openssl.SSL_accept(ssl) if server else openssl.SSL_connect(ssl)
                saved_errno = errno
            if ret == 1:
                self.state = SESSION_OPEN
                if not server:
                    session_mark_origin(ssl)
                return
            self._fail("TLS handshake failed", ret, saved_errno, False)
        finally:
            self.busy = False

    def read(self, Py_ssize_t n) -> bytes:
        """Up to `n` bytes (at most one record); b"" once the peer has closed cleanly."""
        cdef openssl.SSL* ssl = self.ssl
        cdef int want, ret, saved_errno
        cdef char* p
        if n < 0:
            raise ValueError("read size must be >= 0")
        if self.state != SESSION_OPEN and self.state != SESSION_CLOSED:
            raise ValueError("read() needs a completed handshake (session is %s)"
                             % self._state_name())
        if n == 0:
            return b""
        want = <int>(n if n < TLS_RECORD_PLAINTEXT_BYTES else TLS_RECORD_PLAINTEXT_BYTES)
        buf = PyBytes_FromStringAndSize(NULL, want)
        p = PyBytes_AS_STRING(buf)
        self._enter()
        try:
            with nogil:
                ret = openssl.SSL_read(ssl, p, want)
                saved_errno = errno
            if ret > 0:
                return buf if ret == want else buf[:ret]
            if openssl.SSL_get_error(ssl, ret) == openssl.SSL_ERROR_ZERO_RETURN:
                return b""     # close_notify: the only end of stream that is not truncation
            self._fail("TLS read failed", ret, saved_errno, True)
        finally:
            self.busy = False

    def write(self, bytes data not None) -> int:
        """Send all of `data` (blocking); returns len(data)."""
        cdef openssl.SSL* ssl = self.ssl
        cdef Py_ssize_t n = len(data)
        cdef const char* p = data
        cdef int ret, saved_errno
        if self.state != SESSION_OPEN:
            raise ValueError("write() needs an open session (session is %s)" % self._state_name())
        if n > INT_MAX:
            raise ValueError("write of %d bytes: at most %d per call" % (n, INT_MAX))
        if n == 0:
            return 0           # SSL_write(0) is an error, not a no-op
        self._enter()
        try:
            with nogil:
                # Without SSL_MODE_ENABLE_PARTIAL_WRITE a blocking SSL_write returns
                # only when every byte is written.
                ret = openssl.SSL_write(ssl, p, <int>n)
                saved_errno = errno
            if ret > 0:
                return ret
            self._fail("TLS write failed", ret, saved_errno, False)
        finally:
            self.busy = False

    def shutdown(self) -> None:
        """Send close_notify; the peer's arrives as read() == b"". No-op unless open.

        Does not wait for the peer's close_notify; the socket stays open (the caller's).
        """
        cdef openssl.SSL* ssl = self.ssl
        cdef int ret, saved_errno
        if self.state != SESSION_OPEN:
            return
        self._enter()
        try:
            with nogil:
                ret = openssl.SSL_shutdown(ssl)
                saved_errno = errno
            if ret >= 0:
                self.state = SESSION_CLOSED
                return
            self._fail("TLS shutdown failed", ret, saved_errno, False)
        finally:
            self.busy = False

    def get_session(self) -> TLSSessionTicket | None:
        """This client connection's session, to resume later; None if there is none yet.

        TLS 1.3 sends tickets after the handshake: they are processed by read(), so
        exchange data before asking, or get None.
        """
        cdef openssl.SSL_SESSION* session
        cdef TLSSessionTicket ticket
        if self.server:
            raise ValueError("get_session() is for clients: servers resume from tickets")
        self._enter()
        try:
            session = openssl.SSL_get1_session(self.ssl)
        finally:
            self.busy = False
        if session == NULL:
            return None
        if not openssl.SSL_SESSION_is_resumable(session):
            openssl.SSL_SESSION_free(session)
            return None
        ticket = TLSSessionTicket.__new__(TLSSessionTicket)
        ticket.session = session
        return ticket

    def set_session(self, TLSSessionTicket ticket not None) -> bool:
        """Offer `ticket` for resumption in the coming handshake (clients, before
        handshake()); False, and nothing offered, once the session's life is over
        (TLSContext.set_session_life) or the server's certificate has expired."""
        if self.server:
            raise ValueError("set_session() is for clients")
        if self.state != SESSION_NEW:
            raise ValueError("set_session() must come before handshake()")
        if ticket.session == NULL:
            raise ValueError("empty TLSSessionTicket")
        if not session_offerable(openssl.SSL_get_SSL_CTX(self.ssl), ticket.session):
            return False
        self._enter()
        try:
            if openssl.SSL_set_session(self.ssl, ticket.session) != 1:
                raise_tls_error("cannot set session")
        finally:
            self.busy = False
        return True

    cdef str _state_name(self):
        return ("new", "open", "closed", "failed")[<int>self.state]

    @property
    def peer_spiffe_id(self) -> str | None:
        """The verified peer's SPIFFE ID; None if the peer has no certificate (yet) or
        no SPIFFE ID; TLSError if its certificate is unverified or its ID unusable."""
        cdef char buf[SPIFFE_ID_MAX_BYTES + 1]
        return _spiffe_result(peer_spiffe_id(self.ssl, buf, sizeof(buf)), buf, "peer certificate")

    @property
    def alpn(self) -> bytes | None:
        """The protocol ALPN selected, or None."""
        cdef const unsigned char* data = NULL
        cdef unsigned int length = 0
        openssl.SSL_get0_alpn_selected(self.ssl, &data, &length)
        if data == NULL or length == 0:
            return None
        return (<const char*>data)[:length]

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed a session instead of a full one."""
        return openssl.SSL_session_reused(self.ssl) == 1

    @property
    def server_name(self) -> str | None:
        """SNI: the name a client sent, or a server received; None without one."""
        cdef const char* name = openssl.SSL_get_servername(
            self.ssl, openssl.TLSEXT_NAMETYPE_host_name)
        if name == NULL:
            return None
        return name.decode("ascii", "replace")

    @property
    def version(self) -> str:
        """The negotiated protocol, e.g. "TLSv1.3"."""
        return openssl.SSL_get_version(self.ssl).decode("ascii", "replace")
