# regex_syntax.pxi: pattern text -> syntax tree: RE2's grammar, what it refuses (by name,
# with the offset), and the code point classes a pattern's atoms stand for, case folding
# included.
#
# Included into fastpath/regex.pyx (one extension), which compiles the tree.


# --- code point sets --------------------------------------------------------------------
# A class is a tuple of (lo, hi) code point ranges, sorted, merged, within 0..U+10FFFF.

cdef int _MAX_RUNE = 0x10FFFF


cdef tuple _norm(list ranges):
    cdef list out = []
    cdef Py_ssize_t last = -1
    ranges.sort()
    for lo, hi in ranges:
        if last >= 0 and lo <= out[last][1] + 1:
            if hi > out[last][1]:
                out[last] = (out[last][0], hi)
        else:
            out.append((lo, hi))
            last += 1
    return tuple(out)


cdef tuple _negate(tuple ranges):
    cdef list out = []
    cdef int nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return tuple(out)


# Case orbits: the code points that share a simple case folding (k, K and U+212A), each a
# sorted tuple. Built on first use of (?i): about 25 ms. Folding a range adds the members
# of the orbits that cross its edges; an orbit spans at most _SPAN code points but for the
# few in _WIDE (k and U+212A, s and U+017F...), so those are found by bisection.
cdef int _SPAN = 256
cdef list _SHORT = None      # orbits spanning at most _SPAN, by first member
cdef list _SHORT_FIRST = None
cdef list _WIDE = None
cdef dict _FOLD_CACHE = {}


cdef void _fold_tables():
    global _SHORT, _SHORT_FIRST, _WIDE
    cdef dict groups = {}
    cdef int cp
    # Above U+1E943 (Adlam) no character has a case mapping.
    for cp in range(0x1E944):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        key = ch.casefold()
        if len(key) != 1:
            key = ch.lower()
            if len(key) != 1:
                key = ch
        if key != ch or ch.upper() != ch:
            groups.setdefault(key, {ord(key)}).add(cp)
    orbits = sorted(tuple(sorted(m)) for m in groups.values() if len(m) > 1)
    _WIDE = [o for o in orbits if o[len(o) - 1] - o[0] > _SPAN]
    _SHORT = [o for o in orbits if o[len(o) - 1] - o[0] <= _SPAN]
    _SHORT_FIRST = [o[0] for o in _SHORT]


cdef tuple _fold(tuple ranges):
    """ranges with every case orbit that meets them added whole."""
    cdef list out
    cdef Py_ssize_t a, b
    found = _FOLD_CACHE.get(ranges)
    if found is not None:
        return found
    if _SHORT is None:
        _fold_tables()
    out = list(ranges)
    for lo, hi in ranges:
        # An orbit inside the range adds nothing; one that meets it and leaves it crosses
        # lo (first member in [lo - _SPAN, lo)) or hi (first member in (hi - _SPAN, hi]).
        a = bisect_left(_SHORT_FIRST, lo - _SPAN)
        b = bisect_left(_SHORT_FIRST, lo)
        candidates = _WIDE + _SHORT[a:b]
        a = bisect_left(_SHORT_FIRST, hi - _SPAN)
        b = bisect_left(_SHORT_FIRST, hi + 1)
        candidates += _SHORT[a:b]
        for orbit in candidates:
            if (orbit[0] < lo or orbit[len(orbit) - 1] > hi) and any(lo <= m <= hi for m in orbit):
                out.extend((m, m) for m in orbit)
    found = _norm(out)
    if len(_FOLD_CACHE) < 4096:
        _FOLD_CACHE[ranges] = found
    return found


# ASCII-only, as RE2 defines them.
_PERL = {
    "d": ((0x30, 0x39),),
    "s": ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)),
    "w": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
}
_POSIX = {
    "alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": ((0x00, 0x7F),),
    "blank": ((0x09, 0x09), (0x20, 0x20)),
    "cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    "digit": ((0x30, 0x39),),
    "graph": ((0x21, 0x7E),),
    "lower": ((0x61, 0x7A),),
    "print": ((0x20, 0x7E),),
    "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": ((0x09, 0x0D), (0x20, 0x20)),
    "upper": ((0x41, 0x5A),),
    "word": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
    "xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}
_ESCAPED_CONTROLS = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}
_ASSERT_ESCAPES = {"A": RX_BEGIN_TEXT, "z": RX_END_TEXT, "b": RX_WORD_BOUNDARY,
                   "B": RX_NOT_WORD_BOUNDARY}
_HEX = frozenset("0123456789abcdefABCDEF")


# --- parse ------------------------------------------------------------------------------
# The syntax tree: tuples (N_CLS, ranges), (N_CAT, [nodes]), (N_ALT, [nodes]),
# (N_REP, node, min, max or -1), (N_ASSERT, RegexAssert), _EMPTY. A node that can only
# match the empty string without testing anything is _EMPTY itself (the builders fold it
# away), so every other node compiles to at least one instruction: that is what bounds
# compile time by REGEX_MAX_INSNS.

cdef enum:
    N_EMPTY = 0
    N_CLS = 1
    N_CAT = 2
    N_ALT = 3
    N_REP = 4
    N_ASSERT = 5

cdef enum:
    F_FOLD = 1
    F_MULTILINE = 2
    F_DOTALL = 4
    F_UNGREEDY = 8

cdef tuple _EMPTY = (N_EMPTY,)
_FLAG_BITS = {"i": F_FOLD, "m": F_MULTILINE, "s": F_DOTALL, "U": F_UNGREEDY}
# (?X...) forms RE2 refuses, by what they are.
_GROUP_REFUSALS = (
    ("?=", "lookahead (?=...)"), ("?!", "negative lookahead (?!...)"),
    ("?<=", "lookbehind (?<=...)"), ("?<!", "negative lookbehind (?<!...)"),
    ("?>", "atomic groups (?>...)"), ("?#", "comments (?#...)"),
    ("?(", "conditionals (?(...)...)"), ("?|", "branch reset groups (?|...)"),
    ("?P=", "backreferences (?P=name)"), ("?P>", "recursion (?P>name)"),
    ("?R", "recursion (?R)"), ("?&", "recursion (?&name)"), ("?C", "callouts (?C)"),
)


cdef tuple _cat(list items):
    items = [x for x in items if x is not _EMPTY]
    if not items:
        return _EMPTY
    if len(items) == 1:
        return items[0]
    return (N_CAT, items)


cdef tuple _alt(list items):
    if all(x is _EMPTY for x in items):
        return _EMPTY
    if len(items) == 1:
        return items[0]
    return (N_ALT, items)


cdef tuple _rep(tuple body, int lo, int hi):
    if body is _EMPTY or hi == 0:
        return _EMPTY
    if lo == 1 and hi == 1:
        return body
    return (N_REP, body, lo, hi)


cdef class _Parser:
    cdef str s
    cdef Py_ssize_t i, n
    cdef int flags, depth
    cdef set names

    def __init__(self, str s, int flags):
        self.s = s
        self.i = 0
        self.n = len(s)
        self.flags = flags
        self.depth = 0
        self.names = set()

    cdef err(self, str what, Py_ssize_t at):
        raise ValueError(f"{what} at offset {at}")

    cdef tuple parse(self):
        cdef tuple node = self.parse_alt()
        if self.i < self.n:
            self.err("unexpected ): no group is open", self.i)
        return node

    cdef tuple parse_alt(self):
        cdef list branches = [self.parse_cat()]
        while self.i < self.n and self.s[self.i] == "|":
            self.i += 1
            branches.append(self.parse_cat())
        return _alt(branches)

    cdef tuple parse_cat(self):
        cdef list items = []
        cdef Py_ssize_t at
        while self.i < self.n:
            c = self.s[self.i]
            if c == "|" or c == ")":
                break
            at = self.i
            if c in "*+?" or (c == "{" and self.peek_repeat() is not None):
                self.err(f"missing argument to repetition operator {c}", at)
            atom = self.parse_atom()
            if type(atom) is list:
                # \Q...\E: a quantifier after it applies to its last character only.
                if not atom:
                    continue
                items.extend(atom[:len(atom) - 1])
                atom = atom[len(atom) - 1]
            if atom is not None:
                items.append(self.parse_quant(atom))
        return _cat(items)

    cdef object peek_repeat(self):
        """(min, max or -1, end) of a {n}, {n,} or {n,m} at self.i, or None: any other
        `{` is a literal, as in RE2 (so `{,3}` is four literal characters)."""
        cdef str s = self.s
        cdef Py_ssize_t j = self.i + 1, first = self.i + 1
        while j < self.n and "0" <= s[j] <= "9":
            j += 1
        if j == first:
            return None
        lo = int(s[first:j]) if j - first < 8 else REGEX_MAX_REPEAT + 1
        hi = lo
        if j < self.n and s[j] == ",":
            j += 1
            first = j
            while j < self.n and "0" <= s[j] <= "9":
                j += 1
            hi = -1 if j == first else (int(s[first:j]) if j - first < 8 else REGEX_MAX_REPEAT + 1)
        if j >= self.n or s[j] != "}":
            return None
        return lo, hi, j + 1

    cdef tuple parse_quant(self, tuple atom):
        cdef Py_ssize_t at = self.i
        if at >= self.n:
            return atom
        c = self.s[at]
        if c == "*":
            lo, hi, end = 0, -1, at + 1
        elif c == "+":
            lo, hi, end = 1, -1, at + 1
        elif c == "?":
            lo, hi, end = 0, 1, at + 1
        elif c == "{":
            found = self.peek_repeat()
            if found is None:
                return atom
            lo, hi, end = found
            if lo > REGEX_MAX_REPEAT or hi > REGEX_MAX_REPEAT:
                self.err(f"repetition count above {REGEX_MAX_REPEAT} in {self.s[at:end]}", at)
            if hi != -1 and hi < lo:
                self.err(f"invalid repetition {self.s[at:end]}: maximum below minimum", at)
        else:
            return atom
        self.i = end
        # A lazy form: the same yes/no answer.
        if self.i < self.n and self.s[self.i] == "?":
            self.i += 1
        if self.i < self.n:
            c = self.s[self.i]
            if c == "+":
                self.err(f"possessive quantifiers are not supported (RE2 syntax): "
                         f"{self.s[at:self.i + 1]}", at)
            if c in "*?" or (c == "{" and self.peek_repeat() is not None):
                self.err(f"bad repetition operator {self.s[at:self.i + 1]}: a repetition "
                         f"of a repetition needs a group, (?:x*)*", at)
        return _rep(atom, lo, hi)

    cdef object parse_atom(self):
        cdef Py_ssize_t at = self.i
        c = self.s[at]
        if c == "(":
            return self.parse_group()
        if c == "[":
            return self.parse_class()
        if c == "\\":
            return self.parse_escape()
        self.i += 1
        if c == ".":
            if self.flags & F_DOTALL:
                return (N_CLS, ((0, _MAX_RUNE),))
            return (N_CLS, ((0, 9), (11, _MAX_RUNE)))
        if c == "^":
            return (N_ASSERT, RX_BEGIN_LINE if self.flags & F_MULTILINE else RX_BEGIN_TEXT)
        if c == "$":
            return (N_ASSERT, RX_END_LINE if self.flags & F_MULTILINE else RX_END_TEXT)
        return (N_CLS, self.char_ranges(ord(c), ord(c), at))

    cdef tuple char_ranges(self, int lo, int hi, Py_ssize_t at):
        if lo <= 0xDFFF and hi >= 0xD800 and lo == hi:
            self.err(f"U+{lo:04X} is a surrogate, not a character", at)
        if self.flags & F_FOLD:
            return _fold(((lo, hi),))
        return ((lo, hi),)

    cdef tuple named_class(self, tuple ranges, bint negated):
        if self.flags & F_FOLD:
            ranges = _fold(ranges)
        return _negate(ranges) if negated else ranges

    cdef object parse_group(self):
        cdef Py_ssize_t at = self.i, end
        cdef str s = self.s
        self.i += 1
        if self.i >= self.n or s[self.i] != "?":
            return self.group_body(at, self.flags)
        for prefix, what in _GROUP_REFUSALS:
            if s.startswith(prefix, self.i):
                self.err(f"{what} not supported (RE2 syntax)", at)
        if s.startswith("?P<", self.i) or s.startswith("?<", self.i):
            self.i += 3 if s[self.i + 1] == "P" else 2
            end = s.find(">", self.i)
            if end < 0:
                self.err("group name without its closing >", at)
            name = s[self.i:end]
            if not name or not all(ch == "_" or ch.isalnum() for ch in name):
                self.err(f"invalid group name {name!r}", at)
            if name in self.names:
                self.err(f"duplicate group name {name!r}", at)
            self.names.add(name)
            self.i = end + 1
            return self.group_body(at, self.flags)
        if self.i + 1 < self.n and (s[self.i + 1].isdigit() or (
                s[self.i + 1] in "+-" and self.i + 2 < self.n and s[self.i + 2].isdigit())):
            self.err("recursion (?N) not supported (RE2 syntax)", at)
        return self.parse_flags(at)

    cdef object parse_flags(self, Py_ssize_t at):
        cdef str s = self.s
        cdef Py_ssize_t j = self.i + 1
        cdef int on = 0, off = 0
        cdef bint negated = False, any_flag = False, after_minus = False
        cdef str c
        while True:
            if j >= self.n:
                self.err("missing closing ) for the group opened", at)
            c = s[j]
            if c == ":" or c == ")":
                # (?:re) is a group without flags; (?) and (?i-) are nothing.
                if (c == ")" and not any_flag) or (negated and not after_minus):
                    self.err(f"missing flags in {s[at:j + 1]}", at)
                break
            if c == "-":
                if negated:
                    self.err(f"invalid flags {s[at:j + 1]}: two -", at)
                negated = True
            elif c in _FLAG_BITS:
                if negated:
                    off |= _FLAG_BITS[c]
                    after_minus = True
                else:
                    on |= _FLAG_BITS[c]
                any_flag = True
            elif c.isalpha():
                self.err(f"flag {c} is not supported (RE2 flags are i, m, s and U)", j)
            else:
                self.err(f"invalid group syntax {s[at:j + 1]}", at)
            j += 1
        self.i = j + 1
        flags = (self.flags | on) & ~off
        if c == ")":
            self.flags = flags
            return None
        return self.group_body(at, flags)

    cdef tuple group_body(self, Py_ssize_t at, int flags):
        cdef int saved = self.flags
        self.depth += 1
        if self.depth > REGEX_MAX_NESTING:
            self.err(f"groups nested deeper than {REGEX_MAX_NESTING}", at)
        self.flags = flags
        node = self.parse_alt()
        self.flags = saved
        self.depth -= 1
        if self.i >= self.n or self.s[self.i] != ")":
            self.err("missing closing ) for the group opened", at)
        self.i += 1
        return node

    cdef object parse_escape(self):
        cdef Py_ssize_t at = self.i, end
        cdef str c
        if at + 1 < self.n:
            c = self.s[at + 1]
            if c in _ASSERT_ESCAPES:
                self.i += 2
                return (N_ASSERT, _ASSERT_ESCAPES[c])
            if c == "Q":
                end = self.s.find("\\E", at + 2)
                text = self.s[at + 2:end] if end >= 0 else self.s[at + 2:]
                self.i = end + 2 if end >= 0 else self.n
                return [(N_CLS, self.char_ranges(ord(ch), ord(ch), at)) for ch in text]
        return (N_CLS, self.escape_class(False))

    cdef tuple escape_class(self, bint in_class):
        """The ranges of a Perl class escape (\\d \\D \\s \\S \\w \\W) at self.i, or of
        the one character another escape stands for."""
        cdef Py_ssize_t at = self.i
        cdef int cp
        if at + 1 < self.n:
            c = self.s[at + 1]
            if c in "dswDSW":
                self.i += 2
                return self.named_class(_PERL[c.lower()], c.isupper())
        cp = self.escape_char(in_class)
        return self.char_ranges(cp, cp, at)

    cdef int escape_char(self, bint in_class) except -1:
        cdef str s = self.s
        cdef Py_ssize_t at = self.i, j, end
        cdef int cp
        cdef str c
        if at + 1 >= self.n:
            self.err("trailing \\ at the end of the pattern", at)
        c = s[at + 1]
        self.i = at + 2
        if c == "0" or ("1" <= c <= "7" and at + 2 < self.n and "0" <= s[at + 2] <= "7"):
            # Octal, up to three digits (RE2: \1 alone is a backreference, \12 is octal).
            cp = 0
            j = at + 1
            while j < self.n and j < at + 4 and "0" <= s[j] <= "7":
                cp = cp * 8 + ord(s[j]) - 48
                j += 1
            self.i = j
            return cp
        if "1" <= c <= "9" or c in "kg":
            self.err(f"backreferences (\\{c}) are not supported (RE2 syntax)", at)
        if c == "x":
            if self.i < self.n and s[self.i] == "{":
                end = s.find("}", self.i)
                digits = s[self.i + 1:end] if end >= 0 else ""
                if not digits or not _HEX.issuperset(digits) or len(digits) > 8:
                    self.err("invalid escape \\x{...}: hex digits expected before }", at)
                self.i = end + 1
            else:
                digits = s[self.i:self.i + 2]
                if len(digits) != 2 or not _HEX.issuperset(digits):
                    self.err("invalid escape \\x: two hex digits or \\x{...} expected", at)
                self.i += 2
            cp = int(digits, 16)
            if cp > _MAX_RUNE:
                self.err(f"escape \\x{{{digits}}} is above U+10FFFF", at)
            return cp
        if c in _ESCAPED_CONTROLS:
            return _ESCAPED_CONTROLS[c]
        if ord(c) < 0x80 and not c.isalnum():
            return ord(c)
        if c in "pP":
            self.err(f"Unicode classes \\{c} are not supported", at)
        if c == "C":
            self.err("\\C (any byte) is not supported", at)
        if c == "Z":
            self.err("\\Z is not supported (RE2 syntax: \\z is the end of text)", at)
        if in_class and (c in _ASSERT_ESCAPES or c == "Q"):
            self.err(f"\\{c} is not allowed in a character class", at)
        self.err(f"invalid escape sequence \\{c}", at)

    cdef tuple parse_class(self):
        cdef str s = self.s
        cdef Py_ssize_t at = self.i, item, end
        cdef list ranges = []
        cdef bint negated = False, first = True
        cdef int lo, hi
        self.i += 1
        if self.i < self.n and s[self.i] == "^":
            negated = True
            self.i += 1
        while True:
            if self.i >= self.n:
                self.err("missing closing ] for the class opened", at)
            c = s[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            item = self.i
            if s.startswith("[:", item):
                end = s.find(":]", item + 2)
                if end >= 0:
                    name = s[item + 2:end]
                    known = _POSIX.get(name[1:] if name.startswith("^") else name)
                    if known is None:
                        self.err(f"invalid character class [:{name}:]", item)
                    ranges.extend(self.named_class(known, name.startswith("^")))
                    self.i = end + 2
                    continue
            if c == "\\" and item + 1 < self.n and s[item + 1] in "dswDSW":
                ranges.extend(self.escape_class(True))
                continue
            lo = self.class_char()
            hi = lo
            if self.i + 1 < self.n and s[self.i] == "-" and s[self.i + 1] != "]":
                self.i += 1
                if s[self.i] == "\\" and self.i + 1 < self.n and s[self.i + 1] in "dswDSW":
                    self.err(f"invalid character class range {s[item:self.i + 2]}", item)
                hi = self.class_char()
                if hi < lo:
                    self.err(f"invalid character class range {s[item:self.i]}", item)
            ranges.extend(self.char_ranges(lo, hi, item))
        found = _norm(ranges)
        return (N_CLS, _negate(found) if negated else found)

    cdef int class_char(self) except -1:
        cdef Py_ssize_t at = self.i
        c = self.s[at]
        if c == "\\":
            return self.escape_char(True)
        self.i += 1
        if 0xD800 <= ord(c) <= 0xDFFF:
            self.err(f"U+{ord(c):04X} is a surrogate, not a character", at)
        return ord(c)
