"""fastpath.http1_ref: the plain-Python HTTP/1.1 reference that tests hold fastpath.http1 to.

It is written differently on purpose: whole lines matched by regular expressions and
fields judged from a list, where the compiled codec runs a byte automaton with
accumulators. Both follow the rules documented in fastpath/http1.pxd, including when a
limit counts as exceeded: a line over its limit is refused as malformed if its first
`limit` bytes already are, else as too long; the head limit is applied by looking only
at the first max_head_bytes of the input. Results have the shape of
fastpath.http1.parse_request / parse_response; refusals raise RefError with the code
name ("EPARSE", "ELIMIT_LINE", ...). Not for production: it copies freely.
"""

from __future__ import annotations

import re

MAX_HEADERS = 128                       # http1.pxd HTTP1_MAX_HEADERS
INT64_MAX = 2**63 - 1
MAX_CHUNK_DIGITS = 16

DEFAULT_LIMITS: dict[str, int] = {
    "max_request_line": 8192,
    "max_headers": 100,
    "max_header_bytes": 8192,
    "max_head_bytes": 65536,
    "max_chunk_ext": 1024,
    "max_trailer_bytes": 8192,
    "max_chunk_size": INT64_MAX,
}

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


class RefError(Exception):
    """The reference refuses the input; `code` names why, as HTTPError.code does."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Incomplete(Exception):
    pass


_T = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"      # tchar
_V = rb"[\x21\x22\x24-\x7e]"               # request-target byte: VCHAR but '#' (no fragment)
_F = rb"[\t\x20-\x7e\x80-\xff]"            # field-value / reason / chunk-ext byte


def _nested(atoms: list[bytes]) -> bytes:
    """A pattern matching every prefix of the sequence `atoms` (the empty one too)."""
    pattern = b""
    for atom in reversed(atoms):
        pattern = b"(?:" + atom + pattern + b")?"
    return pattern


_VERSION_ATOMS = [b"H", b"T", b"T", b"P", b"/", b"[0-9]", rb"\.", b"[0-9]"]
_VERSION_PREFIX = _nested(_VERSION_ATOMS)

_REQUEST_LINE = re.compile(rb"(%s+) (%s+) HTTP/([0-9])\.([0-9])" % (_T, _V))
_REQUEST_PREFIX = re.compile(
    rb"%s*|%s+ %s*|%s+ %s+ %s" % (_T, _T, _V, _T, _V, _VERSION_PREFIX))
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: (%s*))?" % _F)
_STATUS_PREFIX = re.compile(
    _nested(_VERSION_ATOMS + [b" ", b"[0-9]", b"[0-9]", b"[0-9]", b" " + _F + b"*"]))
_FIELD_LINE = re.compile(rb"(%s+):(%s*)" % (_T, _F))
_FIELD_PREFIX = re.compile(rb"%s*|%s+:%s*" % (_T, _T, _F))
_AUTHORITY = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::([0-9]{0,5}))?")
_DIGITS = re.compile(rb"[0-9]+")
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted ) ] ).
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_EXT_ITEM = rb"[ \t]*;[ \t]*%s+(?:[ \t]*=[ \t]*(?:%s+|%s))?" % (_T, _T, _QUOTED)
_EXT = re.compile(rb"(?:%s)*" % _EXT_ITEM)
# Every prefix of a chunk-ext: whole items, then the start of one more.
_EXT_PREFIX = re.compile(
    rb"(?:%s)*(?:[ \t]*|[ \t]*;[ \t]*(?:%s+[ \t]*(?:=[ \t]*"
    rb'(?:"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*\\?)?)?)?)'
    % (_EXT_ITEM, _T))


def limits(**overrides: int) -> dict[str, int]:
    unknown = set(overrides) - set(DEFAULT_LIMITS)
    if unknown:
        raise TypeError("unknown limits: %s" % ", ".join(sorted(unknown)))
    return {**DEFAULT_LIMITS, **overrides}


def _line(view: bytes, start: int, limit: int, full: re.Pattern, prefix: re.Pattern,
          too_long: str) -> tuple[re.Match, int]:
    """The line at `start`: its match and where the next line starts."""
    cr = view.find(b"\r", start)
    end = cr if cr >= 0 else len(view)
    content = view[start:end]
    if len(content) > limit:
        if prefix.fullmatch(content[:limit]) is None:
            raise RefError("EPARSE")
        raise RefError(too_long)
    if cr < 0:
        if prefix.fullmatch(content) is None:
            raise RefError("EPARSE")
        raise _Incomplete
    match = full.fullmatch(content)
    if match is None:
        raise RefError("EPARSE")
    if cr + 1 >= len(view):
        raise _Incomplete
    if view[cr + 1] != 0x0A:
        raise RefError("EPARSE")
    return match, cr + 2


def _fields(view: bytes, pos: int, lim: dict[str, int]) -> tuple[list[tuple[bytes, bytes]], int]:
    headers: list[tuple[bytes, bytes]] = []
    while True:
        if pos >= len(view):
            raise _Incomplete
        if view[pos] == 0x0D:
            if pos + 1 >= len(view):
                raise _Incomplete
            if view[pos + 1] != 0x0A:
                raise RefError("EPARSE")
            return headers, pos + 2
        if len(headers) >= min(lim["max_headers"], MAX_HEADERS):
            raise RefError("ELIMIT_HEADERS")
        match, pos = _line(view, pos, lim["max_header_bytes"], _FIELD_LINE, _FIELD_PREFIX,
                           "ELIMIT_HEADERS")
        headers.append((match.group(1), match.group(2).strip(b" \t")))


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def _elements(values: list[bytes]) -> list[bytes]:
    return [element.strip(b" \t") for value in values for element in value.split(b",")]


def _authority(value: bytes, need_port: bool) -> bool:
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return False
    port = match.group(2)
    if port:
        return int(port) <= 65535
    return not need_port


def _framing(headers: list[tuple[bytes, bytes]], minor: int, response: bool) -> int | None:
    """The Content-Length value (None: none); raises for unusable framing."""
    te = _values(headers, b"transfer-encoding")
    cl = _values(headers, b"content-length")
    if te:
        # RFC 9110 §5.6.1: empty list elements are ignored.
        codings = [c.lower() for c in _elements(te) if c]
        if minor == 0 or not codings or codings.count(b"chunked") > 1:
            raise RefError("ELENGTH")
        if not response and codings[-1] != b"chunked":
            raise RefError("ELENGTH")
        if cl:
            raise RefError("ELENGTH")
        if not response and any(c != b"chunked" for c in codings):
            raise RefError("ETRANSFER")
    if not cl:
        return None
    numbers = _elements(cl)
    if any(_DIGITS.fullmatch(n) is None for n in numbers):
        raise RefError("ELENGTH")
    values = {int(n) for n in numbers}
    if len(values) != 1 or max(values) > INT64_MAX:
        raise RefError("ELENGTH")
    return values.pop()


def _connection(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {option.lower() for option in _elements(_values(headers, b"connection"))}


def _bounded(parse, data: bytes, lim: dict[str, int]):
    max_head = lim["max_head_bytes"]
    try:
        return parse(data[:max_head])
    except _Incomplete:
        if len(data) >= max_head:
            raise RefError("ELIMIT_HEADERS") from None
        return None


def parse_request(data: bytes, **overrides: int) -> dict | None:
    lim = limits(**overrides)
    return _bounded(lambda view: _request(view, lim), data, lim)


def _request(view: bytes, lim: dict[str, int]) -> dict:
    pos = 0
    while pos < len(view) and view[pos] == 0x0D:        # empty lines before the request
        if pos + 1 >= len(view):
            raise _Incomplete
        if view[pos + 1] != 0x0A:
            raise RefError("EPARSE")
        pos += 2
    if pos >= len(view):
        raise _Incomplete
    line, pos = _line(view, pos, lim["max_request_line"], _REQUEST_LINE, _REQUEST_PREFIX,
                      "ELIMIT_LINE")
    method, target, major, minor_digit = line.groups()
    if major != b"1":
        raise RefError("EVERSION")
    minor = 0 if minor_digit == b"0" else 1
    kind = method.decode("ascii") if method.decode("ascii") in METHODS else "OTHER"

    authority = None
    if target.startswith(b"/"):
        if kind == "CONNECT":
            raise RefError("EPARSE")
        form, path = "origin", target
    elif target == b"*":
        if kind != "OPTIONS":
            raise RefError("EPARSE")
        form, path = "asterisk", target
    elif kind != "CONNECT" and target[:7].lower() == b"http://":
        rest = target[7:]
        cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0], default=len(rest))
        authority, path = rest[:cut], rest[cut:]
        if not _authority(authority, need_port=False):
            raise RefError("EPARSE")
        form = "absolute"
    elif kind == "CONNECT":
        if not _authority(target, need_port=True):
            raise RefError("EPARSE")
        form, authority, path = "authority", target, b""
    else:
        raise RefError("EPARSE")

    headers, head_len = _fields(view, pos, lim)
    content_length = _framing(headers, minor, response=False)
    chunked = bool(_values(headers, b"transfer-encoding"))
    hosts = _values(headers, b"host")
    if len(hosts) > 1 or (minor == 1 and not hosts):
        raise RefError("EPARSE")
    if hosts and hosts[0] and not _authority(hosts[0], need_port=False):
        raise RefError("EPARSE")
    if authority is None:
        authority = hosts[0] if hosts else b""
    options = _connection(headers)
    upgrades = [value for value in _values(headers, b"upgrade") if value]
    expect = {e.lower() for e in _elements(_values(headers, b"expect"))}
    if chunked:
        body = "chunked"
    elif content_length:
        body = "length"
    else:
        body = "none"
    return {
        "head_len": head_len,
        "method": method,
        "method_kind": kind,
        "target": target,
        "target_form": form,
        "authority": authority,
        "path": path,
        "version": (1, minor),
        "headers": headers,
        "host_index": next((i for i, (k, _) in enumerate(headers) if k.lower() == b"host"), -1),
        "content_length": -1 if content_length is None else content_length,
        "body": body,
        "keep_alive": b"close" not in options and (minor == 1 or b"keep-alive" in options),
        "chunked": chunked,
        "expect_continue": minor == 1 and b"100-continue" in expect,
        "upgrade": minor == 1 and b"upgrade" in options and bool(upgrades),
        "upgrade_value": upgrades[0] if upgrades else b"",
        "has_host": bool(hosts),
        "fold_length": body != "chunked" and len(_elements(_values(headers, b"content-length"))) > 1,
        "fold_coding": chunked and (len(_values(headers, b"transfer-encoding")) > 1
                                    or b"" in _elements(_values(headers, b"transfer-encoding"))),
    }


def parse_response(data: bytes, head_request: bool = False, connect_request: bool = False,
                   **overrides: int) -> dict | None:
    lim = limits(**overrides)
    return _bounded(lambda view: _response(view, lim, head_request, connect_request), data, lim)


def _response(view: bytes, lim: dict[str, int], head_request: bool, connect_request: bool) -> dict:
    line, pos = _line(view, 0, lim["max_request_line"], _STATUS_LINE, _STATUS_PREFIX,
                      "ELIMIT_LINE")
    major, minor_digit, code, reason = line.groups()
    if major != b"1":
        raise RefError("EVERSION")
    status = int(code)
    if status < 100:
        raise RefError("EPARSE")
    minor = 0 if minor_digit == b"0" else 1
    headers, head_len = _fields(view, pos, lim)
    content_length = _framing(headers, minor, response=True)
    te = [c.lower() for c in _elements(_values(headers, b"transfer-encoding")) if c]
    chunked = bool(te) and te[-1] == b"chunked"
    options = _connection(headers)
    keep_alive = b"close" not in options and (minor == 1 or b"keep-alive" in options)
    if status == 101 or (connect_request and 200 <= status < 300):
        body, keep_alive = "tunnel", False
    elif head_request or status < 200 or status in (204, 304):
        body = "none"
    elif te:
        body = "chunked" if chunked else "until_close"
    elif content_length is not None:
        body = "length" if content_length > 0 else "none"
    else:
        body = "until_close"
    if body == "until_close":
        keep_alive = False
    return {
        "head_len": head_len,
        "version": (1, minor),
        "status": status,
        "reason": reason or b"",
        "headers": headers,
        "content_length": -1 if content_length is None else content_length,
        "body": body,
        "keep_alive": keep_alive,
        "chunked": chunked,
        "upgrade": status == 101,
        "fold_length": len(_elements(_values(headers, b"content-length"))) > 1,
    }


def _is_field_byte(byte: int) -> bool:
    return byte == 0x09 or 0x20 <= byte <= 0x7E or byte >= 0x80


def _is_tchar(byte: int) -> bool:
    return re.fullmatch(_T, bytes([byte])) is not None


def chunked_frame(data: bytes, **overrides: int) -> tuple[int, bool, bytes]:
    """(bytes of `data` in the chunked body, whether it ended, the chunk data)."""
    return _chunked(data, limits(**overrides))[:3]


GUARDED = (b"host", b"content-length", b"transfer-encoding", b"x-forwarded-client-cert",
           b"x-meshnode-failure")


def guarded(name: bytes) -> bool:
    """http1.guarded_name() != GUARDED_NONE: a name the proxy owns, '_' read as '-'."""
    return name.lower().replace(b"_", b"-") in GUARDED


def chunked_relay(data: bytes, **overrides: int) -> tuple[int, bool, bytes]:
    """What ChunkedFramer.relay makes of `data`: (bytes that belong to the message, as
    it leaves them; whether it ended; `data` with the guarded trailer lines cut out).
    Not ended in the trailer section: the section is held, not counted."""
    consumed, done, _, start = _chunked(data, limits(**overrides))
    if start is None:
        return consumed, done, data
    if not done:
        return start, False, data
    lines = data[start:consumed - 2].split(b"\r\n")[:-1] if consumed - 2 > start else []
    kept = b"".join(line + b"\r\n" for line in lines if not guarded(line.partition(b":")[0]))
    out = data[:start] + kept + b"\r\n"
    return len(out), True, out + data[consumed:]


def _chunked(data: bytes, lim: dict[str, int]) -> tuple[int, bool, bytes, int | None]:
    """chunked_frame's answer, and where the trailer section starts (None: not yet)."""
    body: list[bytes] = []
    pos = 0
    while True:
        cr = data.find(b"\r", pos)
        line = data[pos:cr if cr >= 0 else len(data)]
        digits = re.match(rb"[0-9A-Fa-f]*", line).group()
        size = 0
        for count, digit in enumerate(digits, 1):
            size = size * 16 + int(chr(digit), 16)
            if count > MAX_CHUNK_DIGITS or size > lim["max_chunk_size"]:
                raise RefError("ELIMIT_CHUNK")
        rest = line[len(digits):]
        if not digits:
            if cr < 0 and not rest:
                return len(data), False, b"".join(body), None
            raise RefError("EPARSE")
        # First fault by position in what follows the digits: the first byte after
        # which it is no longer the start of a chunk-ext, or the (max_chunk_ext + 1)th.
        j = 0
        while j < len(rest) and _EXT_PREFIX.fullmatch(rest[:j + 1]) is not None:
            j += 1
        if len(rest) > lim["max_chunk_ext"] and j > lim["max_chunk_ext"]:
            raise RefError("ELIMIT_CHUNK")
        if j < len(rest):
            raise RefError("EPARSE")
        if cr < 0:
            return len(data), False, b"".join(body), None
        if rest and _EXT.fullmatch(rest) is None:
            raise RefError("EPARSE")
        if cr + 1 >= len(data):
            return len(data), False, b"".join(body), None
        if data[cr + 1] != 0x0A:
            raise RefError("EPARSE")
        pos = cr + 2
        if size == 0:
            break
        body.append(data[pos:pos + size])
        if len(data) - pos <= size:
            return len(data), False, b"".join(body), None
        pos += size
        if data[pos] != 0x0D:
            raise RefError("EPARSE")
        if pos + 1 >= len(data):
            return len(data), False, b"".join(body), None
        if data[pos + 1] != 0x0A:
            raise RefError("EPARSE")
        pos += 2

    start = pos
    end, bad = _trailers(data, pos)
    over = start + lim["max_trailer_bytes"]     # the first byte past the trailer limit
    if bad is not None:
        raise RefError("ELIMIT_CHUNK" if over < bad else "EPARSE")
    if end is None:
        if len(data) > over:
            raise RefError("ELIMIT_CHUNK")
        return len(data), False, b"".join(body), start
    if end > over:
        raise RefError("ELIMIT_CHUNK")
    return end, True, b"".join(body), start


def _trailers(data: bytes, pos: int) -> tuple[int | None, int | None]:
    """(end of the trailer section, None), (None, first bad byte) or (None, None)."""
    while True:
        if pos >= len(data):
            return None, None
        if data[pos] == 0x0D:
            if pos + 1 >= len(data):
                return None, None
            return (pos + 2, None) if data[pos + 1] == 0x0A else (None, pos + 1)
        cr = data.find(b"\r", pos)
        content = data[pos:cr if cr >= 0 else len(data)]
        j = 0
        while j < len(content) and _is_tchar(content[j]):
            j += 1
        named = j > 0 and j < len(content) and content[j] == ord(":")
        if named:
            j += 1
            while j < len(content) and _is_field_byte(content[j]):
                j += 1
        if j < len(content):
            return None, pos + j
        if cr < 0:
            return None, None
        if not named:
            return None, cr                     # a trailer line without a colon
        if cr + 1 >= len(data):
            return None, None
        if data[cr + 1] != 0x0A:
            return None, cr + 1
        pos = cr + 2
