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


cdef ChunkPhase _ext_next(ChunkPhase phase, unsigned char c) noexcept nogil:
    """One byte of a chunk extension (the table in http1.pxd): the next phase, or
    CHUNK_FAILED. A CR is the caller's: it ends the line where the grammar allows. (Not
    inline: extensions are rare, the loop of the common bytes stays small.)"""
    cdef unsigned char k = _cls[c]
    if phase == CHUNK_EXT_QUOTED:
        # qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text (RFC 9110 §5.6.4)
        if c == c'"':
            return CHUNK_EXT_QEND
        if c == c'\\':
            return CHUNK_EXT_ESCAPE
        return phase if k & _FIELD else CHUNK_FAILED
    if phase == CHUNK_EXT_ESCAPE:
        return CHUNK_EXT_QUOTED if k & _FIELD else CHUNK_FAILED
    if _ows(c):
        if phase == CHUNK_EXT_NAME:
            return CHUNK_EXT_NAME_BWS
        if phase == CHUNK_EXT_TOKEN or phase == CHUNK_EXT_QEND:
            return CHUNK_EXT_BWS
        return phase                    # BWS goes on in EXT_BWS, _SEMI, _NAME_BWS, _EQ
    if c == c';':
        return CHUNK_FAILED if phase == CHUNK_EXT_SEMI or phase == CHUNK_EXT_EQ else CHUNK_EXT_SEMI
    if c == c'=':
        return CHUNK_EXT_EQ if phase == CHUNK_EXT_NAME or phase == CHUNK_EXT_NAME_BWS else CHUNK_FAILED
    if k & _TCHAR:
        if phase == CHUNK_EXT_SEMI or phase == CHUNK_EXT_NAME:
            return CHUNK_EXT_NAME
        if phase == CHUNK_EXT_EQ or phase == CHUNK_EXT_TOKEN:
            return CHUNK_EXT_TOKEN
        return CHUNK_FAILED
    if c == c'"' and phase == CHUNK_EXT_EQ:
        return CHUNK_EXT_QUOTED
    return CHUNK_FAILED


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
                st.phase = CHUNK_EXT_SEMI
            elif _ows(c):
                # RFC 9112 §7.1.1 allows BWS only before a ';': "5 \r\n" is refused.
                st.phase = CHUNK_EXT_BWS
            else:
                return _chunk_fail(st, HTTP1_EPARSE)
            st.ext_bytes = 1
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
        elif CHUNK_EXT_BWS <= st.phase <= CHUNK_EXT_QEND:
            if c == _CR:
                # The line ends only after a whole name or value.
                if not (st.phase == CHUNK_EXT_NAME or st.phase == CHUNK_EXT_TOKEN
                        or st.phase == CHUNK_EXT_QEND):
                    return _chunk_fail(st, HTTP1_EPARSE)
                st.phase = CHUNK_SIZE_LF
                continue
            st.phase = _ext_next(st.phase, c)
            if st.phase == CHUNK_FAILED:
                return _chunk_fail(st, HTTP1_EPARSE)
            st.ext_bytes += 1
            if st.ext_bytes > st.max_chunk_ext:
                return _chunk_fail(st, HTTP1_ELIMIT_CHUNK)
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


cdef inline bint _in_trailer(ChunkPhase phase) noexcept nogil:
    return CHUNK_TRAILER <= phase <= CHUNK_END_LF


cdef size_t _cut_guarded(char* buf, size_t sec, size_t end, size_t len) noexcept nogil:
    """buf[sec:end] is a whole trailer section (framed: field lines, then CRLF) and
    buf[end:len] what followed it: cuts out the field lines with a guarded name, moving
    each kept run once. Returns the bytes cut."""
    cdef size_t p = sec
    cdef size_t src = sec
    cdef size_t dst = sec
    cdef size_t line_end, colon
    while p + 2 < end:
        colon = p
        while _at(buf, colon, end) != c':':
            colon += 1
        line_end = colon
        while _at(buf, line_end, end) != _LF:
            line_end += 1
        line_end += 1
        if guarded_name(buf + p, colon - p) != GUARDED_NONE:
            if dst != src:
                memmove(buf + dst, buf + src, p - src)
            dst += p - src
            src = line_end
        p = line_end
    if src == dst:
        return 0
    memmove(buf + dst, buf + src, len - src)
    return src - dst


cdef Py_ssize_t chunked_relay(ChunkState* st, char* buf, size_t len,
                              size_t* cut) noexcept nogil:
    cdef size_t held = 0
    cdef size_t sec
    cdef Py_ssize_t r
    cut[0] = 0
    if st.phase == CHUNK_FAILED:
        return st.status
    if _in_trailer(st.phase):
        # Resumed: buf starts with the section held back last time, scanned already.
        held = st.trailer_bytes
        if held > len:
            return _chunk_fail(st, HTTP1_EPARSE)    # the caller broke the contract
    r = chunked_advance(st, buf + held, len - held, NULL, NULL)
    if r < 0:
        return r
    r += <Py_ssize_t>held
    if _in_trailer(st.phase):
        return r - <Py_ssize_t>st.trailer_bytes     # all of it read: the section waits
    if st.phase != CHUNK_DONE or st.trailer_bytes <= 2:
        return r                                    # a body, or no trailer field
    sec = <size_t>r - st.trailer_bytes
    cut[0] = _cut_guarded(buf, sec, <size_t>r, len)
    return r - <Py_ssize_t>cut[0]
