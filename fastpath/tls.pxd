# fastpath/tls.pxd: TLS credentials and policy as OpenSSL SSL_CTX objects.
#
# Other fastpath modules cimport TLSContext to reach `ctx` when they create SSL
# objects for connections, and raise_tls_error to report OpenSSL failures.

from fastpath.includes cimport openssl


cdef class TLSContext:
    # Owned: created in __cinit__, released in __dealloc__. An SSL made from it holds
    # its own reference, so in-flight connections outlive a replaced context.
    cdef openssl.SSL_CTX* ctx
    cdef readonly bint server


# The one place OpenSSL's error queue becomes a Python exception (fastpath.errors.TLSError).
cdef int raise_tls_error(str what) except -1
