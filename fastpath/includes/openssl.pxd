# fastpath.includes.openssl: every OpenSSL (libssl, libcrypto) declaration fastpath uses.
#
# Feature modules cimport this file and never declare externs themselves, so the whole
# C surface we depend on is reviewable in one place. Targets OpenSSL 3.0+ (Debian 12,
# Ubuntu 22.04, RHEL 9). Several names below are C macros or static inline functions
# in the headers (noted "macro"); Cython only needs their call shape.
#
# Everything is nogil: none of these calls touch Python, and the engine thread calls
# them with the GIL released.


cdef extern from "openssl/crypto.h" nogil:
    const int OPENSSL_VERSION

    const char* OpenSSL_version(int which)
    unsigned long OpenSSL_version_num()

    ctypedef struct CRYPTO_EX_DATA:
        pass

    ctypedef void CRYPTO_EX_new(void* parent, void* ptr, CRYPTO_EX_DATA* ad,
                                int idx, long argl, void* argp) noexcept
    ctypedef int CRYPTO_EX_dup(CRYPTO_EX_DATA* to, const CRYPTO_EX_DATA* from_,
                               void** from_d, int idx, long argl, void* argp) noexcept
    ctypedef void CRYPTO_EX_free(void* parent, void* ptr, CRYPTO_EX_DATA* ad,
                                 int idx, long argl, void* argp) noexcept


cdef extern from "openssl/err.h" nogil:
    const int ERR_LIB_PEM

    unsigned long ERR_get_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
    const char* ERR_lib_error_string(unsigned long e)
    const char* ERR_reason_error_string(unsigned long e)
    int ERR_GET_LIB(unsigned long e)       # static inline
    int ERR_GET_REASON(unsigned long e)    # static inline


cdef extern from "openssl/bio.h" nogil:
    ctypedef struct BIO:
        pass

    BIO* BIO_new_mem_buf(const void* buf, int len)
    int BIO_free(BIO* a)


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_PKEY:
        pass

    void EVP_PKEY_free(EVP_PKEY* pkey)


cdef extern from "openssl/x509.h" nogil:
    ctypedef struct X509:
        pass
    ctypedef struct X509_STORE:
        pass
    ctypedef struct X509_STORE_CTX:
        pass
    # STACK_OF(X509) is a macro-generated type; the cname is emitted verbatim.
    ctypedef struct stack_st_X509 "STACK_OF(X509)":
        pass

    void X509_free(X509* a)
    int X509_STORE_add_cert(X509_STORE* store, X509* x)   # takes its own reference

    stack_st_X509* sk_X509_new_null()                              # macro
    int sk_X509_push(stack_st_X509* sk, X509* x)                   # macro; takes ownership
    int sk_X509_num(const stack_st_X509* sk)                       # macro
    X509* sk_X509_value(const stack_st_X509* sk, int i)            # macro
    X509* sk_X509_shift(stack_st_X509* sk)                         # macro; gives ownership
    void sk_X509_pop_free(stack_st_X509* sk, void (*f)(X509*))     # macro


cdef extern from "openssl/pem.h" nogil:
    const int PEM_R_NO_START_LINE

    ctypedef int pem_password_cb(char* buf, int size, int rwflag, void* userdata) noexcept

    X509* PEM_read_bio_X509(BIO* bp, X509** x, pem_password_cb* cb, void* u)
    EVP_PKEY* PEM_read_bio_PrivateKey(BIO* bp, EVP_PKEY** x, pem_password_cb* cb, void* u)


cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass

    const int TLS1_3_VERSION

    const int SSL_VERIFY_PEER
    const int SSL_VERIFY_FAIL_IF_NO_PEER_CERT

    const int SSL_TLSEXT_ERR_OK
    const int SSL_TLSEXT_ERR_ALERT_FATAL
    const int SSL_TLSEXT_ERR_NOACK
    const int OPENSSL_NPN_NEGOTIATED

    ctypedef int (*SSL_verify_cb)(int preverify_ok, X509_STORE_CTX* x509_ctx) noexcept
    ctypedef int (*SSL_CTX_alpn_select_cb_func)(
        SSL* ssl, const unsigned char** out, unsigned char* outlen,
        const unsigned char* in_, unsigned int inlen, void* arg) noexcept

    const SSL_METHOD* TLS_server_method()
    const SSL_METHOD* TLS_client_method()

    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    SSL_CTX* SSL_get_SSL_CTX(const SSL* ssl)

    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)        # macro

    int SSL_CTX_use_certificate(SSL_CTX* ctx, X509* x)
    int SSL_CTX_use_PrivateKey(SSL_CTX* ctx, EVP_PKEY* pkey)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    # Copies the stack and up-refs each cert; applies to the current certificate.
    long SSL_CTX_set1_chain(SSL_CTX* ctx, stack_st_X509* sk)            # macro

    X509_STORE* SSL_CTX_get_cert_store(const SSL_CTX* ctx)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, SSL_verify_cb callback)

    # Client side; note the inverted convention: returns 0 on success.
    int SSL_CTX_set_alpn_protos(SSL_CTX* ctx, const unsigned char* protos,
                                unsigned int protos_len)
    void SSL_CTX_set_alpn_select_cb(SSL_CTX* ctx, SSL_CTX_alpn_select_cb_func cb,
                                    void* arg)
    int SSL_select_next_proto(unsigned char** out, unsigned char* outlen,
                              const unsigned char* server, unsigned int server_len,
                              const unsigned char* client, unsigned int client_len)

    int SSL_CTX_get_ex_new_index(long argl, void* argp, CRYPTO_EX_new* new_func,
                                 CRYPTO_EX_dup* dup_func,
                                 CRYPTO_EX_free* free_func)                 # macro
    int SSL_CTX_set_ex_data(SSL_CTX* ctx, int idx, void* data)
    void* SSL_CTX_get_ex_data(const SSL_CTX* ctx, int idx)
