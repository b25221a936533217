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
    # A mark brackets calls whose failures are expected and handled (a cert's SAN that
    # does not decode): pop_to_mark drops only what was queued since, not older errors.
    int ERR_set_mark()
    int ERR_pop_to_mark()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
    const char* ERR_lib_error_string(unsigned long e)
    const char* ERR_reason_error_string(unsigned long e)
    int ERR_GET_LIB(unsigned long e)       # static inline
    int ERR_GET_REASON(unsigned long e)    # static inline


cdef extern from "openssl/bio.h" nogil:
    ctypedef struct BIO:
        pass

    ctypedef struct BIO_METHOD:
        pass

    BIO* BIO_new_mem_buf(const void* buf, int len)
    BIO* BIO_new(const BIO_METHOD* method)
    const BIO_METHOD* BIO_s_mem()
    long BIO_get_mem_data(BIO* b, char** pp)                      # macro
    int BIO_free(BIO* a)
    ctypedef long (*BIO_callback_fn_ex)(BIO* b, int oper, const char* argp, size_t len,
                                        int argi, long argl, int ret,
                                        size_t* processed) noexcept nogil
    void BIO_set_callback_ex(BIO* b, BIO_callback_fn_ex callback)
    void BIO_set_callback_arg(BIO* b, char* arg)
    char* BIO_get_callback_arg(const BIO* b)
    enum:
        BIO_CB_READ
        BIO_CB_RETURN


cdef extern from "openssl/asn1.h" nogil:
    ctypedef struct ASN1_STRING:
        pass

    # The bytes are not NUL-terminated and may contain NULs: always use the length.
    const unsigned char* ASN1_STRING_get0_data(const ASN1_STRING* x)
    int ASN1_STRING_length(const ASN1_STRING* x)

    ctypedef struct ASN1_TIME:
        pass
    # Broken-down UTC time (libc struct tm, from time.h).
    int ASN1_TIME_to_tm(const ASN1_TIME* s, void* tm)


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_PKEY:
        pass

    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_CIPHER:
        pass

    void EVP_PKEY_free(EVP_PKEY* pkey)
    # A fresh EC key on the named curve ("P-256"). Macro over EVP_PKEY_Q_keygen.
    EVP_PKEY* EVP_EC_gen(const char* curve)
    const EVP_MD* EVP_sha256()


cdef extern from "openssl/x509.h" nogil:
    ctypedef struct X509:
        pass
    ctypedef struct X509_STORE:
        pass
    ctypedef struct X509_STORE_CTX:
        pass
    ctypedef struct X509_VERIFY_PARAM:
        pass
    # STACK_OF(X509) is a macro-generated type; the cname is emitted verbatim.
    ctypedef struct stack_st_X509 "STACK_OF(X509)":
        pass

    const int NID_subject_alt_name                        # obj_mac.h, via objects.h

    # x509_vfy.h, included by x509.h.
    const long X509_V_OK
    const unsigned long X509_V_FLAG_PARTIAL_CHAIN

    ctypedef struct X509_REQ:
        pass
    ctypedef struct X509_EXTENSION:
        pass
    ctypedef struct stack_st_X509_EXTENSION "STACK_OF(X509_EXTENSION)":
        pass

    void X509_free(X509* a)
    const ASN1_TIME* X509_get0_notBefore(const X509* x)
    const ASN1_TIME* X509_get0_notAfter(const X509* x)

    # Certificate signing requests (what a worker sends its node's CA).
    X509_REQ* X509_REQ_new()
    void X509_REQ_free(X509_REQ* req)
    int X509_REQ_set_version(X509_REQ* req, long version)
    int X509_REQ_set_pubkey(X509_REQ* req, EVP_PKEY* pkey)
    int X509_REQ_add_extensions(X509_REQ* req, const stack_st_X509_EXTENSION* exts)
    int X509_REQ_sign(X509_REQ* req, EVP_PKEY* pkey, const EVP_MD* md)   # > 0 on success
    void X509_EXTENSION_free(X509_EXTENSION* ex)
    stack_st_X509_EXTENSION* sk_X509_EXTENSION_new_null()                        # macro
    int sk_X509_EXTENSION_push(stack_st_X509_EXTENSION* sk, X509_EXTENSION* ex)  # macro
    void sk_X509_EXTENSION_pop_free(stack_st_X509_EXTENSION* sk,
                                    void (*f)(X509_EXTENSION*))                   # macro
    int X509_STORE_add_cert(X509_STORE* store, X509* x)   # takes its own reference
    int X509_VERIFY_PARAM_clear_flags(X509_VERIFY_PARAM* param, unsigned long flags)
    # Static text for an X509_V_* code ("certificate has expired").
    const char* X509_verify_cert_error_string(long n)
    # Decodes an extension into a new object the caller frees. *crit is -1 when the
    # extension is absent and -2 when it occurs more than once (both return NULL).
    void* X509_get_ext_d2i(const X509* x, int nid, int* crit, int* idx)

    stack_st_X509* sk_X509_new_null()                              # macro
    int sk_X509_push(stack_st_X509* sk, X509* x)                   # macro; takes ownership
    int sk_X509_num(const stack_st_X509* sk)                       # macro
    X509* sk_X509_value(const stack_st_X509* sk, int i)            # macro
    X509* sk_X509_shift(stack_st_X509* sk)                         # macro; gives ownership
    void sk_X509_pop_free(stack_st_X509* sk, void (*f)(X509*))     # macro


cdef extern from "openssl/x509v3.h" nogil:
    const int GEN_URI

    ctypedef struct GENERAL_NAME:
        pass
    # STACK_OF(GENERAL_NAME), the decoded subjectAltName extension.
    ctypedef struct GENERAL_NAMES:
        pass

    void GENERAL_NAMES_free(GENERAL_NAMES* a)
    # An extension from its config-file text ("critical,URI:spiffe://..."); NULL conf
    # and ctx are enough for a subjectAltName of URIs.
    X509_EXTENSION* X509V3_EXT_nconf_nid(void* conf, void* ctx, int ext_nid,
                                         const char* value)
    # The union member for the name's type; for GEN_URI an ASN1_IA5STRING (an ASN1_STRING).
    void* GENERAL_NAME_get0_value(const GENERAL_NAME* a, int* ptype)
    int sk_GENERAL_NAME_num(const GENERAL_NAMES* sk)                          # macro
    GENERAL_NAME* sk_GENERAL_NAME_value(const GENERAL_NAMES* sk, int i)       # macro


cdef extern from "openssl/pem.h" nogil:
    const int PEM_R_NO_START_LINE

    ctypedef int pem_password_cb(char* buf, int size, int rwflag, void* userdata) noexcept

    X509* PEM_read_bio_X509(BIO* bp, X509** x, pem_password_cb* cb, void* u)
    EVP_PKEY* PEM_read_bio_PrivateKey(BIO* bp, EVP_PKEY** x, pem_password_cb* cb, void* u)
    # PKCS#8 ("BEGIN PRIVATE KEY"), unencrypted when enc is NULL.
    int PEM_write_bio_PrivateKey(BIO* bp, const EVP_PKEY* x, const EVP_CIPHER* enc,
                                 const unsigned char* kstr, int klen, pem_password_cb* cb,
                                 void* u)
    int PEM_write_bio_X509_REQ(BIO* bp, const X509_REQ* x)


cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_SESSION:
        pass

    const int TLS1_3_VERSION
    const int TLSEXT_NAMETYPE_host_name                  # tls1.h
    const int SSL_MAX_SID_CTX_LENGTH

    # SSL_get_error() results.
    const int SSL_ERROR_NONE
    const int SSL_ERROR_SSL
    const int SSL_ERROR_WANT_READ
    const int SSL_ERROR_WANT_WRITE
    const int SSL_ERROR_SYSCALL
    const int SSL_ERROR_ZERO_RETURN

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
    int SSL_CTX_set_max_proto_version(SSL_CTX* ctx, int version)        # macro
    # Key exchange groups, most preferred first, e.g. "P-256:X25519".
    int SSL_CTX_set1_groups_list(SSL_CTX* ctx, const char* groups)      # macro
    # Servers that verify clients must set one, or resumption fails the handshake.
    int SSL_CTX_set_session_id_context(SSL_CTX* ctx, const unsigned char* sid_ctx,
                                       unsigned int sid_ctx_len)
    # Ticket name (16), HMAC key (32), AES key (32): contexts given the same keys take
    # each other's session tickets.
    long SSL_CTX_set_tlsext_ticket_keys(SSL_CTX* ctx, void* keys, long keylen)  # macro
    X509_VERIFY_PARAM* SSL_CTX_get0_param(SSL_CTX* ctx)
    X509* SSL_CTX_get0_certificate(const SSL_CTX* ctx)

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

    # --- connections (SSL) ---------------------------------------------------------
    SSL* SSL_new(SSL_CTX* ctx)                           # up-refs ctx
    void SSL_free(SSL* ssl)
    # Shutdown state flags (SSL_SENT_SHUTDOWN...). SSL_free() drops the connection's
    # session from resumption when SSL_SENT_SHUTDOWN is not set ("bad session").
    int SSL_get_shutdown(const SSL* ssl)
    int SSL_is_init_finished(const SSL* s)
    void SSL_set_shutdown(SSL* ssl, int mode)
    const int SSL_SENT_SHUTDOWN
    const int SSL_RECEIVED_SHUTDOWN
    # Wraps the fd in a socket BIO that does not close it.
    int SSL_set_fd(SSL* ssl, int fd)
    BIO* SSL_get_rbio(const SSL* ssl)
    # SNI; takes a copy. Macro over SSL_ctrl, so the cast to void* happens in C.
    int SSL_set_tlsext_host_name(SSL* ssl, const char* name)            # macro
    const char* SSL_get_servername(const SSL* ssl, const int type)

    int SSL_connect(SSL* ssl)
    int SSL_accept(SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    # Plaintext or record bytes OpenSSL holds (read-ahead) that need no socket read.
    int SSL_has_pending(const SSL* ssl)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_shutdown(SSL* ssl)
    # Valid only right after the failed call, on the same thread, with the error
    # queue cleared before that call.
    int SSL_get_error(const SSL* ssl, int ret)

    const char* SSL_get_version(const SSL* ssl)
    X509* SSL_get0_peer_certificate(const SSL* ssl)      # no new reference
    X509* SSL_get1_peer_certificate(const SSL* ssl)      # caller frees
    # An X509_V_* code; kept in the session, so a resumed connection reports the
    # result of the full handshake that made the session.
    long SSL_get_verify_result(const SSL* ssl)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data,
                                unsigned int* len)
    int SSL_session_reused(const SSL* ssl)

    # --- sessions (resumption) -------------------------------------------------------
    SSL_SESSION* SSL_get1_session(SSL* ssl)              # caller frees
    int SSL_set_session(SSL* ssl, SSL_SESSION* session)  # takes its own reference
    void SSL_SESSION_free(SSL_SESSION* session)
    # False for a TLS 1.3 session until its NewSessionTicket has been read.
    int SSL_SESSION_is_resumable(const SSL_SESSION* session)


# --- engine: non-blocking connections, SNI dispatch, session reuse (fastpath/engine) --
# The event loop drives handshakes with SSL_do_handshake on non-blocking sockets, picks
# the server SSL_CTX by SNI in a servername callback, and keeps client sessions per
# endpoint. Nothing here is specific to the engine; it is where they were first needed.

from libc.stdint cimport uint64_t

cdef extern from "openssl/err.h" nogil:
    const int ERR_LIB_SSL


cdef extern from "openssl/ssl.h" nogil:
    # Alert sent when the servername callback knows no such name (RFC 6066 §3).
    const int SSL_AD_UNRECOGNIZED_NAME
    const int SSL_AD_INTERNAL_ERROR
    # sslerr.h reasons the engine counts as "the peer's certificate was refused".
    const int SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
    const int SSL_R_CERTIFICATE_VERIFY_FAILED
    # A server's first record began like a plaintext HTTP request (or a proxy's CONNECT).
    const int SSL_R_HTTP_REQUEST
    const int SSL_R_HTTPS_PROXY_REQUEST

    # SSL_set_mode() bits.
    void SSL_set_read_ahead(SSL* ssl, int yes)
    void SSL_set_default_read_buffer_len(SSL* ssl, size_t length)
    # SSL_write returns after each record instead of after the whole buffer.
    const long SSL_MODE_ENABLE_PARTIAL_WRITE
    # A retried SSL_write may pass the same bytes from another address (after memmove).
    const long SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    # Give idle connections' record buffers back to the allocator.
    const long SSL_MODE_RELEASE_BUFFERS

    ctypedef int (*SSL_servername_cb)(SSL* ssl, int* alert, void* arg) noexcept

    int SSL_CTX_up_ref(SSL_CTX* ctx)
    # Switches the SSL's certificate and ctx-level settings (used from the servername
    # callback); the session (ticket keys, cache) stays with the original ctx.
    SSL_CTX* SSL_set_SSL_CTX(SSL* ssl, SSL_CTX* ctx)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX* ctx, SSL_servername_cb cb)  # macro
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX* ctx, void* arg)                  # macro

    int SSL_get_ex_new_index(long argl, void* argp, CRYPTO_EX_new* new_func,
                             CRYPTO_EX_dup* dup_func, CRYPTO_EX_free* free_func)   # macro
    int SSL_set_ex_data(SSL* ssl, int idx, void* data)
    void* SSL_get_ex_data(const SSL* ssl, int idx)

    # Verification and options copied from the SNI-selected ctx onto the SSL, which
    # took them from the original ctx in SSL_new (SSL_set_SSL_CTX does not).
    int SSL_CTX_get_verify_mode(const SSL_CTX* ctx)
    int SSL_CTX_get_verify_depth(const SSL_CTX* ctx)
    SSL_verify_cb SSL_CTX_get_verify_callback(const SSL_CTX* ctx)
    void SSL_set_verify(SSL* ssl, int mode, SSL_verify_cb callback)
    void SSL_set_verify_depth(SSL* ssl, int depth)
    uint64_t SSL_CTX_get_options(const SSL_CTX* ctx)
    uint64_t SSL_get_options(const SSL* ssl)
    uint64_t SSL_set_options(SSL* ssl, uint64_t options)
    uint64_t SSL_clear_options(SSL* ssl, uint64_t options)

    void SSL_set_connect_state(SSL* ssl)
    void SSL_set_accept_state(SSL* ssl)
    # Continues the handshake in the role set above; 1 when done.
    int SSL_do_handshake(SSL* ssl)
    long SSL_set_mode(SSL* ssl, long mode)                                         # macro
    # Client side, per connection; 0 on success, like SSL_CTX_set_alpn_protos.
    int SSL_set_alpn_protos(SSL* ssl, const unsigned char* protos, unsigned int protos_len)

    SSL_SESSION* SSL_get0_session(const SSL* ssl)        # no new reference
    int SSL_SESSION_up_ref(SSL_SESSION* session)

    # Custom TLS extensions (the calling workload's address in the ClientHello,
    # caller_ext.pxi). Registered per SSL_CTX before its first SSL; SSL_new copies them.
    const unsigned int SSL_EXT_CLIENT_HELLO
    const int SSL_AD_DECODE_ERROR
    ctypedef int (*SSL_custom_ext_add_cb_ex)(
        SSL* s, unsigned int ext_type, unsigned int context, const unsigned char** out,
        size_t* outlen, X509* x, size_t chainidx, int* al, void* add_arg) noexcept
    ctypedef void (*SSL_custom_ext_free_cb_ex)(
        SSL* s, unsigned int ext_type, unsigned int context, const unsigned char* out,
        void* add_arg) noexcept
    ctypedef int (*SSL_custom_ext_parse_cb_ex)(
        SSL* s, unsigned int ext_type, unsigned int context, const unsigned char* data,
        size_t inlen, X509* x, size_t chainidx, int* al, void* parse_arg) noexcept
    int SSL_CTX_add_custom_ext(SSL_CTX* ctx, unsigned int ext_type, unsigned int context,
                               SSL_custom_ext_add_cb_ex add_cb,
                               SSL_custom_ext_free_cb_ex free_cb, void* add_arg,
                               SSL_custom_ext_parse_cb_ex parse_cb, void* parse_arg)
    int SSL_CTX_has_client_custom_ext(const SSL_CTX* ctx, unsigned int ext_type)


# --- session life and ticket key rotation (fastpath/tls) -----------------------------
# A session lives a bounded time from its full handshake: the server keeps that time in
# the ticket (appdata) and refuses older tickets; the client keeps it with the session
# (ex_data) and does not offer older ones. Ticket keys are derived per period.


cdef extern from "openssl/asn1.h" nogil:
    # from_ NULL means now: *pday days and *psec seconds from `from_` to `to`.
    int ASN1_TIME_diff(int* pday, int* psec, const ASN1_TIME* from_, const ASN1_TIME* to)


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass
    ctypedef struct ENGINE:
        pass
    const int EVP_MAX_IV_LENGTH
    const EVP_MD* EVP_sha512()
    const EVP_CIPHER* EVP_aes_256_cbc()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
                           const unsigned char* key, const unsigned char* iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
                           const unsigned char* key, const unsigned char* iv)


cdef extern from "openssl/params.h" nogil:
    ctypedef struct OSSL_PARAM:
        const char* key
        unsigned int data_type
        void* data
        size_t data_size
        size_t return_size
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char* key, char* buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char* key, void* buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()


cdef extern from "openssl/evp.h" nogil:
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX* ctx, const OSSL_PARAM* params)


cdef extern from "openssl/hmac.h" nogil:
    unsigned char* HMAC(const EVP_MD* evp_md, const void* key, int key_len,
                        const unsigned char* data, size_t data_len, unsigned char* md,
                        unsigned int* md_len)


cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char* buf, int num)


cdef extern from "openssl/x509_vfy.h" nogil:
    int X509_STORE_CTX_get_error_depth(const X509_STORE_CTX* ctx)
    void X509_STORE_CTX_set_error(X509_STORE_CTX* ctx, int s)
    const int X509_V_ERR_APPLICATION_VERIFICATION


cdef extern from "openssl/ssl.h" nogil:
    ctypedef int SSL_TICKET_STATUS
    ctypedef int SSL_TICKET_RETURN
    const int SSL_TICKET_NO_DECRYPT
    const int SSL_TICKET_SUCCESS
    const int SSL_TICKET_SUCCESS_RENEW
    const int SSL_TICKET_EMPTY
    const int SSL_TICKET_NONE
    const int SSL_TICKET_RETURN_ABORT
    const int SSL_TICKET_RETURN_IGNORE
    const int SSL_TICKET_RETURN_IGNORE_RENEW
    const int SSL_TICKET_RETURN_USE
    const int SSL_TICKET_RETURN_USE_RENEW
    ctypedef int (*SSL_CTX_generate_session_ticket_fn)(SSL* s, void* arg) noexcept
    ctypedef SSL_TICKET_RETURN (*SSL_CTX_decrypt_session_ticket_fn)(
        SSL* s, SSL_SESSION* ss, const unsigned char* keyname, size_t keyname_length,
        SSL_TICKET_STATUS status, void* arg) noexcept
    # Server side, on the ctx that issues tickets (the SSL's session ctx): gen_cb runs
    # before each NewSessionTicket is sealed, dec_cb after a ticket is opened.
    int SSL_CTX_set_session_ticket_cb(SSL_CTX* ctx, SSL_CTX_generate_session_ticket_fn gen_cb,
                                      SSL_CTX_decrypt_session_ticket_fn dec_cb, void* arg)
    # Sealed into the ticket; copied when OpenSSL duplicates a session to re-ticket it.
    int SSL_SESSION_set1_ticket_appdata(SSL_SESSION* ss, const void* data, size_t len)
    int SSL_SESSION_get0_ticket_appdata(SSL_SESSION* ss, void** data, size_t* len)
    long SSL_SESSION_get_time(const SSL_SESSION* s)
    # The ticket_lifetime a server sends (RFC 8446 §4.6.1) is the session's timeout.
    long SSL_SESSION_set_timeout(SSL_SESSION* s, long t)
    X509* SSL_SESSION_get0_peer(SSL_SESSION* s)            # no new reference
    int SSL_SESSION_get_ex_new_index(long argl, void* argp, CRYPTO_EX_new* new_func,
                                     CRYPTO_EX_dup* dup_func, CRYPTO_EX_free* free_func)  # macro
    int SSL_SESSION_set_ex_data(SSL_SESSION* ss, int idx, void* data)
    void* SSL_SESSION_get_ex_data(const SSL_SESSION* ss, int idx)
    # Client side: the new-session callback sees each session a NewSessionTicket makes.
    const long SSL_SESS_CACHE_CLIENT
    const long SSL_SESS_CACHE_NO_INTERNAL_STORE
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)                    # macro
    void SSL_CTX_sess_set_new_cb(SSL_CTX* ctx, int (*cb)(SSL* ssl, SSL_SESSION* s) noexcept)


cdef extern from "openssl/tls1.h" nogil:
    # Seals and opens tickets with keys the callback picks by name (enc 1: seal).
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(
        SSL_CTX* ctx, int (*cb)(SSL* s, unsigned char* key_name, unsigned char* iv,
                                EVP_CIPHER_CTX* ctx, EVP_MAC_CTX* hctx, int enc) noexcept)


cdef extern from "openssl/crypto.h" nogil:
    # A memset the compiler may not drop: key material on the stack after use.
    void OPENSSL_cleanse(void* ptr, size_t len)
    ctypedef void CRYPTO_RWLOCK
    CRYPTO_RWLOCK* CRYPTO_THREAD_lock_new()
    int CRYPTO_THREAD_write_lock(CRYPTO_RWLOCK* lock)
    int CRYPTO_THREAD_unlock(CRYPTO_RWLOCK* lock)
    void CRYPTO_THREAD_lock_free(CRYPTO_RWLOCK* lock)
