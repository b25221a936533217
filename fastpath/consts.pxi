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

# MESHNODE_DEBUG is set by setup.py (MESHNODE_DEBUG=1 builds); the default keeps a
# plain `cython` run or a foreign build compiling as release.
cdef extern from *:
    """
    #ifndef MESHNODE_DEBUG
    #define MESHNODE_DEBUG 0
    #endif
    """
    const bint MESHNODE_DEBUG
