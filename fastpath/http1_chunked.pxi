# http1_chunked.pxi: Chunked transfer coding (RFC 9112 §7.1) framed in place, a chunk
# size line, data, and the trailer section at a time, with the same limits as heads.
#
# Included into fastpath/http1.pyx (one extension); the state is ChunkState in http1.pxd.

cdef void chunk_init(ChunkState* st, const Limits* lim) noexcept nogil:
    st.phase = CHUNK_SIZE
    st.status = 0
    st.size = 0
    st.body_bytes = 0
    st.digits = 0
    st.ext_bytes = 0
    st.trailer_bytes = 0
    st.max_chunk_size = lim.max_chunk_size if lim.max_chunk_size >= 0 else 0
    st.max_chunk_ext = lim.max_chunk_ext
    st.max_trailer_bytes = lim.max_trailer_bytes


cdef inline Py_ssize_t _chunk_fail(ChunkState* st, int rc) noexcept nogil:
    st.phase = CHUNK_FAILED
    st.status = rc
    return rc


cdef Py_ssize_t chunked_advance(ChunkState* st, const char* buf, size_t len,
                                size_t* data_off, size_t* data_len) noexcept nogil:
    cdef size_t i = 0
    cdef size_t take
    cdef unsigned char c
    cdef int d
    cdef bint decode = data_off != NULL and data_len != NULL
    if decode:
        data_off[0] = 0
        data_len[0] = 0
    if st.phase == CHUNK_FAILED:
        return st.status
    while i < len and st.phase != CHUNK_DONE:
        if st.phase == CHUNK_DATA:
            take = len - i
            if <uint64_t>take > <uint64_t>st.size:
                take = <size_t>st.size
            st.size -= <int64_t>take
            st.body_bytes += <int64_t>take
            i += take
            if st.size == 0:
                st.phase = CHUNK_DATA_CR
            if decode:
                data_off[0] = i - take
                data_len[0] = take
                return <Py_ssize_t>i
            continue
        c = _at(buf, i, len)
        i += 1
        if st.phase == CHUNK_SIZE:
            if _cls[c] & _HEX:
                st.digits += 1
                d = (c - c'0') if c <= c'9' else (_lower(c) - c'a' + 10)
                if (st.digits > HTTP1_MAX_CHUNK_DIGITS or st.size > (INT64_MAX >> 4)
                        or st.size * 16 + d > st.max_chunk_size):
                    return _chunk_fail(st, HTTP1_ELIMIT_CHUNK)
                st.size = st.size * 16 + d
                continue
            if st.digits == 0:
                return _chunk_fail(st, HTTP1_EPARSE)
            if c == _CR:
                st.phase = CHUNK_SIZE_LF
                continue
            if c == c';':
                st.phase = CHUNK_EXT
            elif _ows(c):
                # RFC 9112 §7.1.1 allows BWS only before a ';': "5 \r\n" is refused.
                st.phase = CHUNK_SIZE_BWS
            else:
                return _chunk_fail(st, HTTP1_EPARSE)
            st.ext_bytes = 1
            if st.ext_bytes > st.max_chunk_ext:
                return _chunk_fail(st, HTTP1_ELIMIT_CHUNK)
        elif st.phase == CHUNK_SIZE_BWS or st.phase == CHUNK_EXT:
            if c == _CR and st.phase == CHUNK_EXT:
                st.phase = CHUNK_SIZE_LF
                continue
            if st.phase == CHUNK_SIZE_BWS:
                if c == c';':
                    st.phase = CHUNK_EXT
                elif not _ows(c):
                    return _chunk_fail(st, HTTP1_EPARSE)
            elif not (_cls[c] & _FIELD):
                # The extension's grammar is not checked, its bytes are: no CR, LF or
                # CTL, so the line ends at the one place every parser agrees on (the
                # "funky chunks" smuggling class lives in lenient ext parsing).
                return _chunk_fail(st, HTTP1_EPARSE)
            st.ext_bytes += 1
            if st.ext_bytes > st.max_chunk_ext:
                return _chunk_fail(st, HTTP1_ELIMIT_CHUNK)
        elif st.phase == CHUNK_SIZE_LF:
            if c != _LF:
                return _chunk_fail(st, HTTP1_EPARSE)
            st.phase = CHUNK_DATA if st.size > 0 else CHUNK_TRAILER
        elif st.phase == CHUNK_DATA_CR:
            if c != _CR:
                return _chunk_fail(st, HTTP1_EPARSE)
            st.phase = CHUNK_DATA_LF
        elif st.phase == CHUNK_DATA_LF:
            if c != _LF:
                return _chunk_fail(st, HTTP1_EPARSE)
            st.phase = CHUNK_SIZE
            st.size = 0
            st.digits = 0
            st.ext_bytes = 0
        else:
            # The trailer section: field lines (RFC 9112 §7.1.2), then an empty line.
            if st.phase == CHUNK_TRAILER:
                if c == _CR:
                    st.phase = CHUNK_END_LF
                elif _cls[c] & _TCHAR:
                    st.phase = CHUNK_TRAILER_NAME
                else:
                    return _chunk_fail(st, HTTP1_EPARSE)
            elif st.phase == CHUNK_TRAILER_NAME:
                if c == c':':
                    st.phase = CHUNK_TRAILER_VALUE
                elif not (_cls[c] & _TCHAR):
                    return _chunk_fail(st, HTTP1_EPARSE)
            elif st.phase == CHUNK_TRAILER_VALUE:
                if c == _CR:
                    st.phase = CHUNK_TRAILER_LF
                elif not (_cls[c] & _FIELD):
                    return _chunk_fail(st, HTTP1_EPARSE)
            elif st.phase == CHUNK_TRAILER_LF:
                if c != _LF:
                    return _chunk_fail(st, HTTP1_EPARSE)
                st.phase = CHUNK_TRAILER
            elif st.phase == CHUNK_END_LF:
                if c != _LF:
                    return _chunk_fail(st, HTTP1_EPARSE)
                st.phase = CHUNK_DONE
            st.trailer_bytes += 1
            if st.trailer_bytes > st.max_trailer_bytes:
                return _chunk_fail(st, HTTP1_ELIMIT_CHUNK)
    return <Py_ssize_t>i
