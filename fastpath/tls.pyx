"""fastpath.tls: TLS credentials and policy (certificates, trust, ALPN) as OpenSSL SSL_CTX objects."""

from libc.limits cimport INT_MAX
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from fastpath.includes cimport openssl

from fastpath.errors import TLSError

include "consts.pxi"


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


cdef int raise_tls_error(str what) except -1:
    """Drain this thread's OpenSSL error queue into one TLSError and raise it.

    Draining matters as much as reporting: the queue is per thread, and anything left
    in it would be blamed on the next, unrelated failure.
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
    message = "%s: %s" % (what, "; ".join(reasons)) if reasons else what
    raise TLSError(message, tuple(reasons), tuple(codes))


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
        # The mesh talks only to itself, so it has no reason to accept anything older.
        if openssl.SSL_CTX_set_min_proto_version(self.ctx, openssl.TLS1_3_VERSION) != 1:
            raise_tls_error("cannot require TLS 1.3")

    def __dealloc__(self):
        if self.ctx != NULL:
            openssl.SSL_CTX_free(self.ctx)
            self.ctx = NULL

    def __repr__(self) -> str:
        return "<TLSContext %s>" % ("server" if self.server else "client")

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

