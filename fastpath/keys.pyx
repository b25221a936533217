"""fastpath.keys: a worker's own key, its certificate signing request, and the validity
of the chain it gets back, with OpenSSL's C API.

Why here and not with the `cryptography` package: a proxy worker needs nothing else of
it, and importing it costs every worker about 11 MB of RSS (its Rust extension carries
its own OpenSSL). The CA side keeps using meshnode.identity.pki; what these functions
make must be what pki.csr_identity() accepts (one critical URI subjectAltName, an empty
subject, ECDSA P-256 with SHA-256): tests/fastpath/test_keys.py checks it.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memset

from fastpath.includes cimport openssl
from fastpath.tls cimport raise_tls_error

include "consts.pxi"


cdef extern from "time.h" nogil:
    struct tm:
        pass
    long timegm(tm* t)


cdef bytes _bio_bytes(openssl.BIO* bio):
    cdef char* data = NULL
    cdef long n = openssl.BIO_get_mem_data(bio, &data)
    return PyBytes_FromStringAndSize(data, n)


def new_key_pem() -> bytes:
    """A fresh ECDSA P-256 private key, as unencrypted PKCS#8 PEM."""
    cdef openssl.EVP_PKEY* key
    cdef openssl.BIO* bio
    openssl.ERR_clear_error()
    key = openssl.EVP_EC_gen(b"P-256")
    if key == NULL:
        raise_tls_error("cannot generate a P-256 key")
    bio = openssl.BIO_new(openssl.BIO_s_mem())
    try:
        if bio == NULL or openssl.PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1:
            raise_tls_error("cannot write the key as PEM")
        return _bio_bytes(bio)
    finally:
        openssl.BIO_free(bio)
        openssl.EVP_PKEY_free(key)


cdef openssl.EVP_PKEY* _load_key(bytes key_pem) except NULL:
    cdef openssl.BIO* bio = openssl.BIO_new_mem_buf(<const char*>key_pem, len(key_pem))
    cdef openssl.EVP_PKEY* key
    if bio == NULL:
        raise MemoryError()
    openssl.ERR_clear_error()
    key = openssl.PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
    openssl.BIO_free(bio)
    if key == NULL:
        raise_tls_error("the private key does not parse")
    return key


def make_csr_pem(bytes key_pem not None, str identity not None) -> bytes:
    """A PEM CSR for one SPIFFE ID (a critical URI subjectAltName, empty subject),
    signed with `key_pem`'s key (which never leaves the worker)."""
    cdef bytes value
    cdef openssl.EVP_PKEY* key
    cdef openssl.X509_REQ* req = NULL
    cdef openssl.X509_EXTENSION* san = NULL
    cdef openssl.stack_st_X509_EXTENSION* exts = NULL
    cdef openssl.BIO* bio = NULL
    value = identity.encode("ascii")
    if (not value.startswith(b"spiffe://") or len(value) > SPIFFE_ID_MAX_BYTES
            or any(ch <= 0x20 or ch >= 0x7f or ch == 0x2c for ch in value)):
        raise ValueError("not a SPIFFE ID: %r" % identity)
    key = _load_key(key_pem)
    try:
        openssl.ERR_clear_error()
        req = openssl.X509_REQ_new()
        exts = openssl.sk_X509_EXTENSION_new_null()
        if req == NULL or exts == NULL:
            raise MemoryError()
        san = openssl.X509V3_EXT_nconf_nid(NULL, NULL, openssl.NID_subject_alt_name,
                                           b"critical,URI:" + value)
        if san == NULL:
            raise_tls_error("cannot make the subjectAltName")
        if openssl.sk_X509_EXTENSION_push(exts, san) <= 0:
            openssl.X509_EXTENSION_free(san)
            raise MemoryError()
        if (openssl.X509_REQ_set_version(req, 0) != 1
                or openssl.X509_REQ_set_pubkey(req, key) != 1
                or openssl.X509_REQ_add_extensions(req, exts) != 1
                or openssl.X509_REQ_sign(req, key, openssl.EVP_sha256()) <= 0):
            raise_tls_error("cannot build the CSR")
        bio = openssl.BIO_new(openssl.BIO_s_mem())
        if bio == NULL or openssl.PEM_write_bio_X509_REQ(bio, req) != 1:
            raise_tls_error("cannot write the CSR as PEM")
        return _bio_bytes(bio)
    finally:
        openssl.BIO_free(bio)
        if exts != NULL:
            openssl.sk_X509_EXTENSION_pop_free(exts, openssl.X509_EXTENSION_free)
        openssl.X509_REQ_free(req)
        openssl.EVP_PKEY_free(key)


cdef double _posix(const openssl.ASN1_TIME* t) except? -1:
    cdef tm when
    memset(&when, 0, sizeof(when))
    if t == NULL or openssl.ASN1_TIME_to_tm(t, &when) != 1:
        raise_tls_error("certificate validity does not parse")
    return <double>timegm(&when)


def chain_validity(bytes chain_pem not None) -> tuple:
    """(not_before, not_after) of the leaf (the first certificate) of a PEM chain, in
    POSIX seconds; every certificate of the chain must parse (TLSError if not, or if
    there is none)."""
    cdef openssl.BIO* bio = openssl.BIO_new_mem_buf(<const char*>chain_pem, len(chain_pem))
    cdef openssl.X509* cert
    cdef object validity = None
    cdef unsigned long err
    if bio == NULL:
        raise MemoryError()
    try:
        openssl.ERR_clear_error()
        while True:
            cert = openssl.PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if cert == NULL:
                break
            try:
                if validity is None:
                    validity = (_posix(openssl.X509_get0_notBefore(cert)),
                                _posix(openssl.X509_get0_notAfter(cert)))
            finally:
                openssl.X509_free(cert)
        err = openssl.ERR_peek_last_error()
        # The end of the PEM blocks reads as "no start line": anything else is a bad one.
        if validity is None or (err != 0 and not (
                openssl.ERR_GET_LIB(err) == openssl.ERR_LIB_PEM
                and openssl.ERR_GET_REASON(err) == openssl.PEM_R_NO_START_LINE)):
            raise_tls_error("the certificate chain does not parse")
        openssl.ERR_clear_error()
        return validity
    finally:
        openssl.BIO_free(bio)
