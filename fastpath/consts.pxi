# fastpath/consts.pxi: limits and build flags shared by fastpath's .pyx files.
#
# Include from .pyx files only (`include "consts.pxi"`), never from a .pxd, or the
# names get defined twice in one module.

cdef enum:
    # RFC 7301 §3.1: a protocol name is 1..255 bytes, the whole list fits a uint16.
    ALPN_PROTO_MAX_BYTES = 255
    ALPN_LIST_MAX_BYTES = 65535

    # Enough for ERR_error_string_n's "error:XXXXXXXX:lib:func:reason" line.
    TLS_ERR_STRING_BYTES = 256

    # RFC 8446 §5.1: a record carries at most 2^14 bytes of plaintext, so one SSL_read
    # never returns more; a blocking read(n) allocates no more than this.
    TLS_RECORD_PLAINTEXT_BYTES = 16384

    # SPIFFE ID spec §2.3: implementations must accept IDs up to 2048 bytes. A buffer
    # for peer_spiffe_id() holds that plus the NUL.
    SPIFFE_ID_MAX_BYTES = 2048

# peer_spiffe_id() / _spiffe_from_x509(): a length >= 0 is the ID's; these are < 0.
cdef enum:
    SPIFFE_NO_PEER = -1       # no certificate (no peer cert, or none yet: no handshake)
    SPIFFE_UNVERIFIED = -2    # the peer's chain did not verify to the trust bundle
    SPIFFE_NONE = -3          # no URI SAN, or the one URI SAN is not a spiffe:// URI
    SPIFFE_MANY = -4          # more than one URI SAN (X509-SVID §2: exactly one)
    SPIFFE_TOO_LONG = -5      # the ID and its NUL do not fit the caller's buffer
    SPIFFE_MALFORMED = -6     # SAN does not decode, or the ID breaks SPIFFE ID §2 syntax

# MESHNODE_DEBUG is set by setup.py (MESHNODE_DEBUG=1 builds); the default keeps a
# plain `cython` run or a foreign build compiling as release.
cdef extern from *:
    """
    #ifndef MESHNODE_DEBUG
    #define MESHNODE_DEBUG 0
    #endif
    """
    const bint MESHNODE_DEBUG
