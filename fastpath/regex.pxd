# fastpath/regex.pxd: RE2-syntax regular expressions for HTTPRoute matches, matched in
# linear time without the GIL.
#
# The config side compiles a pattern once, at install, into a Regex; the engine keeps
# that object alive for as long as its route table holds `regex.prog`, and calls
# regex_fullmatch() on a path, a header value or a query value for each request:
#
#     from fastpath.regex cimport Regex, RegexProg, regex_fullmatch
#     cdef Regex rx = Regex("/api/v[0-9]+/users/[^/]+")      # ValueError if refused
#     cdef const RegexProg* p = rx.prog                      # valid while rx lives
#     with nogil:
#         ok = regex_fullmatch(p, path, path_len)            # whole input must match
#
# A program is immutable once built and holds no scratch space, so any number of
# threads may match the same one at once. Matching never allocates: a program gets a
# DFA built at compile time (one table load per input byte) unless that DFA would pass
# the REGEX_DFA_* limits; such a program runs on a Pike VM whose thread lists live in
# bounded arrays on the caller's stack (about 40 KiB: REGEX_MAX_INSNS entries each of a
# mark, two lists and a stack), in time O(n x ninsns).
#
# Input is bytes, read as UTF-8 the way RE2 reads it: `.` and negated classes match one
# well-formed UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, nothing above
# U+10FFFF); a byte that begins no such sequence is matched by nothing, so an input
# that holds one never fully matches (HTTP paths are ASCII; a header value with
# obs-text bytes that are not UTF-8 matches no regular expression, as in Envoy).

from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef enum:
    # Instructions one program may have; a pattern that compiles to more is refused
    # ("pattern too large"). Counted repetition expands, so `[a-z]{1000}` is 1000
    # instructions and `(x{100}){100}` is refused. Thread lists are sized by it.
    REGEX_MAX_INSNS = 4096
    # The largest count in {n}, {n,}, {n,m}: RE2's limit.
    REGEX_MAX_REPEAT = 1000
    # Groups nested deeper than this are refused (the parser recurses per group).
    REGEX_MAX_NESTING = 200
    # The compile-time DFA: at most this many states, this many table cells (states x
    # byte classes, 4 bytes each: 1 MiB) and this many NFA instruction visits to build
    # it; past any of them the program runs on the Pike VM alone.
    REGEX_DFA_MAX_STATES = 2048
    REGEX_DFA_MAX_CELLS = 262144
    REGEX_DFA_BUILD_BUDGET = 4000000


# The instruction set of the byte-level NFA (Thompson's construction, RE2's compiler in
# miniature). Every instruction but MATCH names its successor(s) by index.
cdef enum RegexOp:
    RX_BYTES = 0     # consume one byte that is in sets[set], go to x
    RX_SPLIT = 1     # go to x and to y (alternation, repetition)
    RX_ASSERT = 2    # empty-width assertion `arg` (RegexAssert); if it holds, go to x
    RX_MATCH = 3     # the pattern matched here


cdef enum RegexAssert:
    RX_BEGIN_TEXT = 0      # \A, and ^ without (?m)
    RX_END_TEXT = 1        # \z, and $ without (?m) (RE2: $ is \z, not Perl's \Z)
    RX_BEGIN_LINE = 2      # (?m)^: at the start or after \n
    RX_END_LINE = 3        # (?m)$: at the end or before \n
    RX_WORD_BOUNDARY = 4   # \b: ASCII word character on exactly one side
    RX_NOT_WORD_BOUNDARY = 5  # \B


cdef struct RegexInst:
    uint8_t op       # RegexOp
    uint8_t arg      # RegexAssert for RX_ASSERT
    uint16_t set     # RX_BYTES: index of its 32-byte bitmap in RegexProg.sets
    uint16_t x
    uint16_t y


cdef struct RegexProg:
    uint32_t ninsns
    uint32_t start          # first instruction
    uint32_t nsets
    const RegexInst* insns
    const uint8_t* sets     # nsets bitmaps of 32 bytes: byte b is in set k when
                            # sets[32 * k + b / 8] has bit b % 8
    # The DFA, when dfa_nstates > 0. State 0 is dead (no match possible). A transition
    # is dfa_next[row + classmap[byte]]; rows are stored premultiplied (state x
    # nclasses), so the value read is the next state's row. dfa_accept[state] says
    # whether input may end in that state.
    uint32_t dfa_nstates
    uint32_t nclasses
    uint32_t dfa_start_row
    const uint32_t* dfa_next
    const uint8_t* dfa_accept
    uint8_t classmap[256]   # byte -> equivalence class: bytes no instruction tells apart


cdef class Regex:
    cdef readonly str pattern
    cdef readonly bint ignore_case
    # The compiled program, owned by this object (one block, freed with it).
    cdef const RegexProg* prog


# A program of its own, copied from `p` (one malloc'd block, pointers into it fixed
# up), for a holder that outlives the Regex and has no GIL to keep one alive: the
# engine's route table, freed on the engine thread. NULL when out of memory.
cdef RegexProg* regex_copy(const RegexProg* p) noexcept nogil

# Frees what regex_copy() returned (NULL is fine).
cdef void regex_free(RegexProg* p) noexcept nogil

# True when the whole of s[0:n] matches (Gateway API and Envoy full-match semantics).
# Time O(n) with a DFA, O(n x ninsns) on the Pike VM; no allocation, no shared state.
cdef bint regex_fullmatch(const RegexProg* p, const char* s, size_t n) noexcept nogil
