"""fastpath.regex: RE2-syntax regular expressions compiled once, matched in linear time, no GIL.

HTTPRoute (and Istio) `RegularExpression` matches on a path, a header or a query value
run on every request, against patterns users write: a backtracking engine would let one
route such as `(a*)*b` pin a worker. Envoy matches these with RE2; meshnode links no
C++ library, so this module is a small RE2 of its own:

  parse    (regex_syntax.pxi) RE2's syntax, the part routes use, refusing by name and
           with the offset what RE2 refuses (backreferences, lookaround, possessive and
           atomic forms, \\C, \\p{..}); ValueError("... at offset N").
  compile  Thompson's construction into a byte-level NFA program (RegexProg, see
           regex.pxd) of at most REGEX_MAX_INSNS instructions; classes beyond ASCII
           become UTF-8 byte-sequence alternations with shared suffixes, as RE2 compiles
           them; counted repetition expands (counts up to 1000, as RE2).
  DFA      built from the program at compile time by subset construction, assertions
           (^ $ \\b \\B, (?m)) included as RE2's DFA handles them; read-only, so shared
           by every thread: one table load per input byte.
  Pike VM  for a pattern whose DFA would pass REGEX_DFA_MAX_STATES or its build budget
           (such as (a|b)*a(a|b){12}): a Thompson simulation whose thread lists visit
           each instruction at most once per input position, so time is
           O(len(input) x program size), on fixed arrays on the caller's stack.

Semantics, where they needed choosing (RE2's unless said):
  - regex_fullmatch: the whole input must match (Gateway API and Envoy semantics).
    Lazy quantifiers and (?U) are accepted; a yes/no answer does not depend on them.
  - Input bytes are UTF-8: `.` and negated classes match one well-formed sequence (no
    overlong forms, surrogates or values above U+10FFFF); a byte that begins none is
    matched by nothing, so an input holding one never fully matches. Literal
    non-ASCII characters and \\x{...} in a pattern match their UTF-8 bytes.
  - `.` matches any character but \\n unless (?s); `^`/`$` are \\A/\\z unless (?m);
    \\d \\s \\w \\b are ASCII ([0-9], [\\t\\n\\f\\r ], [0-9A-Za-z_]); POSIX classes
    [[:alpha:]] and [[:^alpha:]] are ASCII too.
  - (?i) uses Unicode simple case folding (Python's tables: str.casefold when it gives
    one character, str.lower otherwise), applied before a class is negated: `(?i)k`
    also matches U+212A KELVIN SIGN, `(?i)[^k]` matches none of k, K and U+212A.
  - Flags i, m, s, U, in (?flags), (?flags:re) and (?-flags); a bare (?flags) lasts to
    the end of the enclosing group, alternatives after it included.
"""

from bisect import bisect_left

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport UINT32_MAX, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

include "consts.pxi"
include "regex_syntax.pxi"  # pattern text -> syntax tree: RE2's grammar, refusals, classes

DEBUG_BUILD = bool(MESHNODE_DEBUG)

cdef extern from *:
    """
    /* Hides a pointer's value from the optimiser, so a benchmark loop that matches the
       same input n times is not folded into one call. */
    static inline const char* regex_opaque(const char* p) {
        __asm__ volatile("" : "+r"(p));
        return p;
    }
    """
    const char* regex_opaque(const char* p) nogil


# --- matching (nogil) -------------------------------------------------------------------

cdef inline bint _inset(const RegexProg* p, uint16_t k, uint8_t c) noexcept nogil:
    return (p.sets[(<size_t>k << 5) + (c >> 3)] >> (c & 7)) & 1


cdef inline bint _isword(uint8_t c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


cdef bint _assert_ok(uint8_t kind, const uint8_t* s, size_t n, size_t i) noexcept nogil:
    cdef bint before, after
    if kind == RX_BEGIN_TEXT:
        return i == 0
    if kind == RX_END_TEXT:
        return i == n
    if kind == RX_BEGIN_LINE:
        return i == 0 or s[i - 1] == 10
    if kind == RX_END_LINE:
        return i == n or s[i] == 10
    before = i > 0 and _isword(s[i - 1])
    after = i < n and _isword(s[i])
    if kind == RX_WORD_BOUNDARY:
        return before != after
    return before == after


# One Pike VM run's state. marks[pc] == gen says pc is already on the list being built
# for the current input position: each instruction is visited at most once per position,
# which is what bounds a run by (len(input) + 1) x ninsns visits.
cdef struct _Pike:
    const RegexProg* p
    const uint8_t* s
    size_t n
    uint32_t gen
    bint matched
    uint64_t steps
    uint32_t marks[REGEX_MAX_INSNS]
    uint16_t stack[REGEX_MAX_INSNS]


cdef uint32_t _add(_Pike* vm, uint32_t pc, size_t i, uint16_t* lst, uint32_t cnt) noexcept nogil:
    """Adds pc's closure at input position i to lst: consuming instructions go on the
    list, MATCH sets vm.matched, splits and assertions that hold are followed."""
    cdef const RegexInst* inst
    cdef uint32_t sp = 1
    if vm.marks[pc] == vm.gen:
        return cnt
    vm.marks[pc] = vm.gen
    vm.stack[0] = <uint16_t>pc
    while sp:
        sp -= 1
        pc = vm.stack[sp]
        vm.steps += 1
        inst = &vm.p.insns[pc]
        if inst.op == RX_BYTES:
            lst[cnt] = <uint16_t>pc
            cnt += 1
        elif inst.op == RX_SPLIT:
            if vm.marks[inst.y] != vm.gen:
                vm.marks[inst.y] = vm.gen
                vm.stack[sp] = inst.y
                sp += 1
            if vm.marks[inst.x] != vm.gen:
                vm.marks[inst.x] = vm.gen
                vm.stack[sp] = inst.x
                sp += 1
        elif inst.op == RX_ASSERT:
            if vm.marks[inst.x] != vm.gen and _assert_ok(inst.arg, vm.s, vm.n, i):
                vm.marks[inst.x] = vm.gen
                vm.stack[sp] = inst.x
                sp += 1
        else:
            vm.matched = True
    return cnt


cdef bint _pike(const RegexProg* p, const uint8_t* s, size_t n, bint anchored,
                uint64_t* steps) noexcept nogil:
    """Anchored: does all of s match? Unanchored: does some substring match?"""
    cdef _Pike vm
    cdef uint16_t list_a[REGEX_MAX_INSNS]
    cdef uint16_t list_b[REGEX_MAX_INSNS]
    cdef uint16_t* clist = list_a
    cdef uint16_t* nlist = list_b
    cdef uint16_t* swap
    cdef uint32_t cnt, ncnt, k
    cdef size_t i = 0
    cdef uint8_t c
    cdef const RegexInst* inst
    vm.p = p
    vm.s = s
    vm.n = n
    vm.gen = 1
    vm.matched = False
    vm.steps = 0
    memset(vm.marks, 0, p.ninsns * sizeof(uint32_t))
    cnt = _add(&vm, p.start, 0, clist, 0)
    while i < n:
        if anchored:
            if cnt == 0:
                break
        elif vm.matched:
            break
        c = s[i]
        if vm.gen == UINT32_MAX:
            memset(vm.marks, 0, p.ninsns * sizeof(uint32_t))
            vm.gen = 0
        vm.gen += 1
        vm.matched = False
        ncnt = 0
        for k in range(cnt):
            inst = &p.insns[clist[k]]
            if _inset(p, inst.set, c):
                ncnt = _add(&vm, inst.x, i + 1, nlist, ncnt)
        if not anchored and (i + 1 == n or (s[i + 1] & 0xC0) != 0x80):
            # A match starts at a character boundary, not before a continuation byte.
            ncnt = _add(&vm, p.start, i + 1, nlist, ncnt)
        swap = clist
        clist = nlist
        nlist = swap
        cnt = ncnt
        i += 1
    if steps != NULL:
        steps[0] = vm.steps
    if anchored:
        return vm.matched and i == n
    return vm.matched


cdef bint _dfa(const RegexProg* p, const uint8_t* s, size_t n, uint64_t* steps) noexcept nogil:
    cdef const uint32_t* nxt = p.dfa_next
    cdef const uint8_t* cm = &p.classmap[0]
    cdef uint32_t row = p.dfa_start_row
    cdef size_t i
    for i in range(n):
        row = nxt[row + cm[s[i]]]
        if row == 0:
            if steps != NULL:
                steps[0] = i + 1
            return False
    if steps != NULL:
        steps[0] = n
    return p.dfa_accept[row // p.nclasses]


cdef bint regex_fullmatch(const RegexProg* p, const char* s, size_t n) noexcept nogil:
    if p.dfa_nstates:
        return _dfa(p, <const uint8_t*>s, n, NULL)
    return _pike(p, <const uint8_t*>s, n, True, NULL)


# --- compile ----------------------------------------------------------------------------

cdef void _utf8_split(int lo, int hi, list out):
    """Appends the byte-range sequences that encode lo..hi (no surrogates) in UTF-8:
    each is a tuple of (lo, hi) byte ranges, one per byte of the encoding."""
    cdef list todo = [(lo, hi)]
    cdef int m, i
    while todo:
        lo, hi = todo.pop()
        for m in (0x7F, 0x7FF, 0xFFFF):
            if lo <= m < hi:
                todo.append((m + 1, hi))
                todo.append((lo, m))
                break
        else:
            if hi <= 0x7F:
                out.append(((lo, hi),))
                continue
            for i in (1, 2, 3):
                m = (1 << (6 * i)) - 1
                if (lo & ~m) != (hi & ~m):
                    if lo & m:
                        todo.append(((lo | m) + 1, hi))
                        todo.append((lo, lo | m))
                        break
                    if (hi & m) != m:
                        todo.append((hi & ~m, hi))
                        todo.append((lo, (hi & ~m) - 1))
                        break
            else:
                out.append(tuple(zip(chr(lo).encode(), chr(hi).encode())))


cdef list _utf8_seqs(tuple ranges):
    cdef list out = []
    for lo, hi in ranges:
        if lo <= 0xDFFF and hi >= 0xD800:
            if lo < 0xD800:
                _utf8_split(lo, 0xD7FF, out)
            if hi > 0xDFFF:
                _utf8_split(0xE000, hi, out)
        else:
            _utf8_split(lo, hi, out)
    return out


cdef bytes _bitmap(ranges):
    cdef bytearray bm = bytearray(32)
    cdef int b
    for lo, hi in ranges:
        for b in range(lo, hi + 1):
            bm[b >> 3] |= 1 << (b & 7)
    return bytes(bm)


cdef class _Compiler:
    """Emits instructions back to front: comp(node, nxt) returns the pc where node's
    code starts, code that continues at nxt."""
    cdef list insns      # [op, arg, set, x, y]
    cdef list sets       # 32-byte bitmaps
    cdef dict set_ids
    cdef dict plans      # class ranges -> UTF-8 byte sequences
    cdef int asserts     # bit (1 << RegexAssert) for each kind the program holds

    def __init__(self):
        self.insns = []
        self.sets = []
        self.set_ids = {}
        self.plans = {}
        self.asserts = 0

    cdef int emit(self, int op, int arg, int set_id, int x, int y) except -1:
        if len(self.insns) >= REGEX_MAX_INSNS:
            raise ValueError(f"pattern too large: it compiles to more than {REGEX_MAX_INSNS} "
                             f"instructions (a counted repetition x{{n}} is n copies of x)")
        self.insns.append([op, arg, set_id, x, y])
        return len(self.insns) - 1

    cdef int bytes_insn(self, ranges, int nxt) except -1:
        bm = _bitmap(ranges)
        k = self.set_ids.get(bm)
        if k is None:
            k = self.set_ids[bm] = len(self.sets)
            self.sets.append(bm)
        return self.emit(RX_BYTES, 0, k, nxt, 0)

    cdef int alt(self, list starts) except -1:
        cdef int pc = starts[len(starts) - 1]
        for k in range(len(starts) - 2, -1, -1):
            pc = self.emit(RX_SPLIT, 0, 0, starts[k], pc)
        return pc

    cdef int comp(self, tuple node, int nxt) except -1:
        kind = node[0]
        if kind == N_CLS:
            return self.comp_class(node[1], nxt)
        if kind == N_CAT:
            for sub in reversed(node[1]):
                nxt = self.comp(sub, nxt)
            return nxt
        if kind == N_ALT:
            return self.alt([self.comp(sub, nxt) for sub in node[1]])
        if kind == N_REP:
            return self.comp_rep(node[1], node[2], node[3], nxt)
        if kind == N_ASSERT:
            self.asserts |= 1 << node[1]
            return self.emit(RX_ASSERT, node[1], 0, nxt, 0)
        return nxt

    cdef int comp_rep(self, tuple body, int lo, int hi, int nxt) except -1:
        cdef int pc = nxt, loop, first, k, mandatory = lo
        if hi == -1:
            # x* is L: split(x -> L, nxt); x+ enters x first; x{n,} is n-1 copies and x+.
            loop = self.emit(RX_SPLIT, 0, 0, 0, nxt)
            first = self.comp(body, loop)
            self.insns[loop][3] = first
            if lo == 0:
                return loop
            pc = first
            mandatory = lo - 1
        else:
            # x{n,m}: n copies, then m-n nested optional ones, (x(x)?)?.
            for k in range(hi - lo):
                pc = self.emit(RX_SPLIT, 0, 0, self.comp(body, pc), nxt)
        for k in range(mandatory):
            pc = self.comp(body, pc)
        return pc

    cdef int comp_class(self, tuple ranges, int nxt) except -1:
        """One instruction for an ASCII class; beyond ASCII, the UTF-8 sequences of the
        ranges, their suffixes shared and their first bytes merged per suffix."""
        cdef dict tails = {}, groups = {}
        cdef int t
        if not ranges or ranges[len(ranges) - 1][1] <= 0x7F:
            return self.bytes_insn(ranges, nxt)
        seqs = self.plans.get(ranges)
        if seqs is None:
            seqs = self.plans[ranges] = _utf8_seqs(ranges)
        for seq in seqs:
            t = nxt
            for j in range(len(seq) - 1, 0, -1):
                key = (seq[j], t)
                found = tails.get(key)
                if found is None:
                    found = tails[key] = self.bytes_insn((seq[j],), t)
                t = found
            groups.setdefault(t, []).append(seq[0])
        return self.alt([self.bytes_insn(firsts, t) for t, firsts in groups.items()])


# --- program block ----------------------------------------------------------------------

cdef inline size_t _align8(size_t n) noexcept nogil:
    return (n + 7) & ~(<size_t>7)


cdef RegexProg* regex_copy(const RegexProg* p) noexcept nogil:
    # The block's layout is _pack's: the struct, then instructions, bitmaps, DFA rows and
    # accept flags at the same offsets, computed again from the counts it holds.
    cdef size_t ncells = <size_t>p.dfa_nstates * p.nclasses
    cdef size_t off_insns = _align8(sizeof(RegexProg))
    cdef size_t off_sets = _align8(off_insns + p.ninsns * sizeof(RegexInst))
    cdef size_t off_next = _align8(off_sets + p.nsets * 32)
    cdef size_t off_accept = off_next + ncells * sizeof(uint32_t)
    cdef size_t total = off_accept + p.dfa_nstates
    cdef char* block = <char*>malloc(total)
    cdef RegexProg* q
    if block == NULL:
        return NULL
    memcpy(block, <const char*>p, total)
    q = <RegexProg*>block
    q.insns = <const RegexInst*>(block + off_insns)
    q.sets = <const uint8_t*>(block + off_sets)
    if q.dfa_nstates > 0:
        q.dfa_next = <const uint32_t*>(block + off_next)
        q.dfa_accept = <const uint8_t*>(block + off_accept)
    return q


cdef void regex_free(RegexProg* p) noexcept nogil:
    free(p)


cdef RegexProg* _pack(list insns, list sets, uint32_t start, object dfa) except NULL:
    """One malloc'd block: the RegexProg, its instructions, bitmaps and DFA tables."""
    cdef size_t ninsns = len(insns), nsets = len(sets), ncells = 0, nstates = 0
    cdef size_t off_insns, off_sets, off_next, off_accept, total
    cdef char* block
    cdef RegexProg* p
    cdef RegexInst* inst
    cdef uint32_t* nxt
    cdef uint8_t* acc
    cdef size_t k, c, ncls = 0
    if dfa is not None:
        classmap, ncls, rows, accept = dfa
        nstates = len(rows)
        ncells = nstates * ncls
    off_insns = _align8(sizeof(RegexProg))
    off_sets = _align8(off_insns + ninsns * sizeof(RegexInst))
    off_next = _align8(off_sets + nsets * 32)
    off_accept = off_next + ncells * sizeof(uint32_t)
    total = off_accept + nstates
    block = <char*>malloc(total)
    if block == NULL:
        raise MemoryError()
    memset(block, 0, total)
    p = <RegexProg*>block
    inst = <RegexInst*>(block + off_insns)
    for k in range(ninsns):
        op, arg, set_id, x, y = insns[k]
        inst[k].op = op
        inst[k].arg = arg
        inst[k].set = set_id
        inst[k].x = x
        inst[k].y = y
    for k in range(nsets):
        memcpy(block + off_sets + 32 * k, PyBytes_AS_STRING(sets[k]), 32)
    p.ninsns = <uint32_t>ninsns
    p.start = start
    p.nsets = <uint32_t>nsets
    p.insns = inst
    p.sets = <const uint8_t*>(block + off_sets)
    if dfa is not None:
        nxt = <uint32_t*>(block + off_next)
        acc = <uint8_t*>(block + off_accept)
        for k in range(nstates):
            row = rows[k]
            for c in range(ncls):
                nxt[k * ncls + c] = <uint32_t>(row[c] * ncls)
            acc[k] = accept[k]
        for c in range(256):
            p.classmap[c] = classmap[c]
        p.dfa_nstates = <uint32_t>nstates
        p.nclasses = <uint32_t>ncls
        p.dfa_start_row = <uint32_t>ncls
        p.dfa_next = nxt
        p.dfa_accept = acc
    return p


# --- DFA (subset construction at compile time) ------------------------------------------
# A DFA state is a set of NFA instructions, sorted, plus what the empty-width assertions
# among them may ask of the byte before: at the start of the input, after a word byte,
# after \n. Assertions stay unresolved in the set (as in RE2's DFA) until the next byte
# is known: a transition on byte b first follows them with the context now complete,
# then steps the consuming instructions over b, then follows splits only. A state's
# accept flag is the same resolution at the end of the input.

cdef enum:
    _CTX_BEGIN = 1        # at the start of the input
    _CTX_END = 2          # at the end of the input
    _CTX_PREV_WORD = 4    # the byte before is an ASCII word byte
    _CTX_PREV_NL = 8      # the byte before is \n
    _CTX_NEXT_WORD = 16   # the byte after is an ASCII word byte
    _CTX_NEXT_NL = 32     # the byte after is \n


cdef int _cmp_u16(const void* a, const void* b) noexcept nogil:
    return (<const uint16_t*>a)[0] - (<const uint16_t*>b)[0]


cdef inline bint _ctx_ok(uint8_t kind, int ctx) noexcept nogil:
    if kind == RX_BEGIN_TEXT:
        return ctx & _CTX_BEGIN
    if kind == RX_END_TEXT:
        return ctx & _CTX_END
    if kind == RX_BEGIN_LINE:
        return ctx & (_CTX_BEGIN | _CTX_PREV_NL)
    if kind == RX_END_LINE:
        return ctx & (_CTX_END | _CTX_NEXT_NL)
    if kind == RX_WORD_BOUNDARY:
        return (ctx & _CTX_PREV_WORD == 0) != (ctx & _CTX_NEXT_WORD == 0)
    return (ctx & _CTX_PREV_WORD == 0) == (ctx & _CTX_NEXT_WORD == 0)


cdef uint32_t _closure(const RegexProg* p, const uint16_t* src, uint32_t nsrc, int ctx,
                       bint resolve, uint16_t* out, uint32_t* marks, uint32_t gen,
                       uint16_t* stack, bint* matched, uint64_t* work) noexcept nogil:
    """Follows splits from src into out (consuming instructions, MATCH and, unless
    resolve, assertions). With resolve, an assertion that holds in ctx is followed and
    one that does not is dropped."""
    cdef uint32_t sp = 0, cnt = 0, k, pc
    cdef const RegexInst* inst
    for k in range(nsrc):
        pc = src[k]
        if marks[pc] != gen:
            marks[pc] = gen
            stack[sp] = <uint16_t>pc
            sp += 1
    while sp:
        sp -= 1
        pc = stack[sp]
        work[0] += 1
        inst = &p.insns[pc]
        if inst.op == RX_SPLIT or (inst.op == RX_ASSERT and resolve and _ctx_ok(inst.arg, ctx)):
            if marks[inst.x] != gen:
                marks[inst.x] = gen
                stack[sp] = inst.x
                sp += 1
            if inst.op == RX_SPLIT and marks[inst.y] != gen:
                marks[inst.y] = gen
                stack[sp] = inst.y
                sp += 1
        elif inst.op != RX_ASSERT or not resolve:
            if inst.op == RX_MATCH:
                matched[0] = True
            out[cnt] = <uint16_t>pc
            cnt += 1
    return cnt


cdef tuple _byte_classes(list sets):
    """Byte -> class, such that no instruction tells apart two bytes of one class."""
    cdef list cm = [0] * 256
    cdef int b
    cdef dict ids = {}
    for bm in sets:
        ids = {}
        for b in range(256):
            key = (cm[b], (bm[b >> 3] >> (b & 7)) & 1)
            v = ids.get(key)
            if v is None:
                v = ids[key] = len(ids)
            cm[b] = v
    return cm, max(len(ids), 1)


cdef class _DFABuilder:
    """Subset construction over a packed program, within the REGEX_DFA_* limits."""
    cdef const RegexProg* p
    cdef uint32_t* marks
    cdef uint16_t* stack
    cdef uint16_t* src
    cdef uint16_t* out
    cdef uint32_t gen
    cdef uint64_t work
    cdef int keep        # the _CTX_PREV_* flags some assertion of the program reads

    def __dealloc__(self):
        free(self.marks)
        free(self.stack)
        free(self.src)
        free(self.out)

    cdef setup(self, const RegexProg* p, int keep):
        cdef size_t n = p.ninsns
        self.p = p
        self.keep = keep
        self.marks = <uint32_t*>malloc(n * sizeof(uint32_t))
        self.stack = <uint16_t*>malloc(n * sizeof(uint16_t))
        self.src = <uint16_t*>malloc(n * sizeof(uint16_t))
        self.out = <uint16_t*>malloc((n + 1) * sizeof(uint16_t))
        if self.marks == NULL or self.stack == NULL or self.src == NULL or self.out == NULL:
            raise MemoryError()
        memset(self.marks, 0, n * sizeof(uint32_t))

    cdef bytes state(self, uint32_t nsrc, int flags):
        """The state from src[0:nsrc] after following splits: its flags (kept only when
        an assertion in it may read them) then its instructions, as uint16s."""
        cdef bint matched = False
        cdef uint32_t cnt, k
        self.gen += 1
        cnt = _closure(self.p, self.src, nsrc, 0, False, self.out + 1, self.marks, self.gen,
                       self.stack, &matched, &self.work)
        if cnt == 0:
            return None
        qsort(self.out + 1, cnt, sizeof(uint16_t), _cmp_u16)
        self.out[0] = 0
        for k in range(1, cnt + 1):
            if self.p.insns[self.out[k]].op == RX_ASSERT:
                self.out[0] = <uint16_t>flags
                break
        return PyBytes_FromStringAndSize(<char*>self.out, (cnt + 1) * sizeof(uint16_t))

    cdef uint32_t resolve(self, bytes key, int ctx, bint* matched):
        """The instructions of state key with its assertions resolved in ctx, into out."""
        cdef const uint16_t* words = <const uint16_t*>PyBytes_AS_STRING(key)
        cdef uint32_t n = PyBytes_GET_SIZE(key) // sizeof(uint16_t) - 1
        self.gen += 1
        return _closure(self.p, words + 1, n, ctx | words[0], True, self.out, self.marks,
                        self.gen, self.stack, matched, &self.work)

    cdef object build(self, list sets):
        """(classmap, nclasses, rows, accept), or None when the DFA would pass a limit."""
        cdef uint32_t cnt, nn, j
        cdef int c, ncls, ctx, flags
        cdef uint8_t b
        cdef bint matched = False
        cdef const RegexInst* inst
        classmap, ncls = _byte_classes(sets)
        reps = [classmap.index(c) for c in range(ncls)]
        # State 0 is dead. State 1, the start, is reached from no other (at the start of
        # the input is part of it), so it is not in ids.
        self.src[0] = <uint16_t>self.p.start
        states = [None, self.state(1, _CTX_BEGIN)]
        rows = [[0] * ncls]
        accept = [0]
        ids = {}
        k = 1
        while k < len(states):
            key = states[k]
            matched = False
            self.resolve(key, _CTX_END, &matched)
            accept.append(1 if matched else 0)
            row = [0] * ncls
            for c in range(ncls):
                b = reps[c]
                ctx = ((_CTX_NEXT_WORD if _isword(b) else 0) | (_CTX_NEXT_NL if b == 10 else 0))
                cnt = self.resolve(key, ctx, &matched)
                nn = 0
                for j in range(cnt):
                    inst = &self.p.insns[self.out[j]]
                    if inst.op == RX_BYTES and _inset(self.p, inst.set, b):
                        self.src[nn] = inst.x
                        nn += 1
                if nn == 0:
                    continue
                flags = ((_CTX_PREV_WORD if _isword(b) else 0) | (_CTX_PREV_NL if b == 10 else 0))
                nkey = self.state(nn, flags & self.keep)
                if nkey is None:
                    continue
                sid = ids.get(nkey)
                if sid is None:
                    sid = len(states)
                    if sid >= REGEX_DFA_MAX_STATES or (sid + 1) * ncls > REGEX_DFA_MAX_CELLS:
                        return None
                    ids[nkey] = sid
                    states.append(nkey)
                row[c] = sid
                if self.work > REGEX_DFA_BUILD_BUDGET:
                    return None
            rows.append(row)
            k += 1
        return classmap, ncls, rows, accept


cdef RegexProg* _build(str pattern, bint ignore_case) except NULL:
    cdef _Parser parser = _Parser(pattern, F_FOLD if ignore_case else 0)
    cdef _Compiler comp = _Compiler()
    cdef _DFABuilder builder = _DFABuilder()
    cdef RegexProg* nfa
    cdef int keep = 0
    node = parser.parse()
    start = comp.comp(node, comp.emit(RX_MATCH, 0, 0, 0, 0))
    nfa = _pack(comp.insns, comp.sets, start, None)
    # Bytes that assertions tell apart must be apart in the byte classes too.
    sets = list(comp.sets)
    if comp.asserts & ((1 << RX_WORD_BOUNDARY) | (1 << RX_NOT_WORD_BOUNDARY)):
        keep |= _CTX_PREV_WORD
        sets.append(_bitmap(_PERL["w"]))
    if comp.asserts & ((1 << RX_BEGIN_LINE) | (1 << RX_END_LINE)):
        keep |= _CTX_PREV_NL
        sets.append(_bitmap(((10, 10),)))
    try:
        builder.setup(nfa, keep)
        dfa = builder.build(sets)
    except BaseException:
        free(nfa)
        raise
    if dfa is None:
        return nfa
    free(nfa)
    return _pack(comp.insns, comp.sets, start, dfa)


# --- Python API -------------------------------------------------------------------------

cdef class Regex:
    """A compiled RE2-syntax pattern; ValueError names what is refused and where."""

    def __cinit__(self, str pattern not None, bint ignore_case=False):
        self.prog = NULL
        self.pattern = pattern
        self.ignore_case = ignore_case
        self.prog = _build(pattern, ignore_case)

    def __dealloc__(self):
        free(<void*>self.prog)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r}{', ignore_case=True' if self.ignore_case else ''})"

    @property
    def program_size(self) -> int:
        """Instructions in the NFA program (at most REGEX_MAX_INSNS)."""
        return self.prog.ninsns

    @property
    def dfa_states(self) -> int:
        """States of the compile-time DFA, dead state included; 0 when there is none."""
        return self.prog.dfa_nstates

    def fullmatch(self, bytes data not None) -> bool:
        """Does all of data match? What the engine's regex_fullmatch answers."""
        return regex_fullmatch(self.prog, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    def fullmatch_nfa(self, bytes data not None) -> bool:
        """fullmatch on the Pike VM even when there is a DFA (to cross-check them)."""
        return _pike(self.prog, <const uint8_t*>PyBytes_AS_STRING(data),
                     PyBytes_GET_SIZE(data), True, NULL)

    def search(self, bytes data not None) -> bool:
        """Does some part of data match (unanchored, on the Pike VM; a match starts at a
        character boundary)? For tests and tools."""
        return _pike(self.prog, <const uint8_t*>PyBytes_AS_STRING(data),
                     PyBytes_GET_SIZE(data), False, NULL)

    def fullmatch_steps(self, bytes data not None, bint nfa=False) -> int:
        """The work fullmatch does on data: DFA transitions taken, or on the Pike VM
        (nfa=True, or when there is no DFA) instruction visits, which never exceed
        (len(data) + 1) x program_size."""
        cdef uint64_t steps = 0
        cdef const uint8_t* s = <const uint8_t*>PyBytes_AS_STRING(data)
        if self.prog.dfa_nstates and not nfa:
            _dfa(self.prog, s, PyBytes_GET_SIZE(data), &steps)
        else:
            _pike(self.prog, s, PyBytes_GET_SIZE(data), True, &steps)
        return steps


def bench_fullmatch(Regex regex not None, bytes data not None, Py_ssize_t n,
                    bint nfa=False) -> tuple:
    """Matches data n times without the GIL: (matches, start_ns, end_ns), the times on
    CLOCK_MONOTONIC around the loop. For bench/ and the concurrency test."""
    cdef const RegexProg* p = regex.prog
    cdef const char* s = PyBytes_AS_STRING(data)
    cdef size_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t k, hits = 0
    cdef timespec t0, t1
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for k in range(n):
            if nfa:
                hits += _pike(p, <const uint8_t*>regex_opaque(s), size, True, NULL)
            else:
                hits += regex_fullmatch(p, regex_opaque(s), size)
        clock_gettime(CLOCK_MONOTONIC, &t1)
    return (hits, t0.tv_sec * 1_000_000_000 + t0.tv_nsec,
            t1.tv_sec * 1_000_000_000 + t1.tv_nsec)
