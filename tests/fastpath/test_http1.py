"""Tests for fastpath.http1: request/response heads, chunked framing, host routing keys.

Every behaviour is checked on the compiled codec; the hypothesis suites also hold it to
the pure-Python reference (fastpath.http1_ref) on generated and mutated input. The
suite is meant to pass on the release build and on the debug build (MESHNODE_DEBUG=1),
where every buffer read is bounds-checked and an overread aborts the run.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import http1
from fastpath import http1_ref as ref
from fastpath.errors import FastpathError, HTTPError

CRLF = b"\r\n"


def req(*lines: bytes | str, version: str = "1.1") -> bytes:
    """A request head: first line "METHOD TARGET" (version appended), then fields."""
    first, *fields = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return first + b" HTTP/" + version.encode() + CRLF + b"".join(f + CRLF for f in fields) + CRLF


def outcome(parse, data: bytes, **kw):
    """("ok", result) / ("again",) / ("error", code, status) for either implementation."""
    try:
        result = parse(data, **kw)
    except HTTPError as err:
        return ("error", err.code, err.status)
    except ref.RefError as err:
        return ("error", err.code, None)
    return ("again",) if result is None else ("ok", result)


def code_of(parse, data: bytes, **kw) -> str:
    with pytest.raises(HTTPError) as info:
        parse(data, **kw)
    return info.value.code


# --- valid requests -------------------------------------------------------------------------

def test_simple_get_spans_index_the_buffer():
    data = req("GET /index.html?q=1", "Host: web.demo", "Accept: */*")
    head = http1.parse_request(data)
    assert head["head_len"] == len(data)
    assert head["method"] == b"GET" and head["method_kind"] == "GET"
    assert head["target"] == head["path"] == b"/index.html?q=1"
    assert head["target_form"] == "origin"
    assert head["authority"] == b"web.demo"
    assert head["version"] == (1, 1)
    assert head["headers"] == [(b"Host", b"web.demo"), (b"Accept", b"*/*")]
    assert head["host_index"] == 0 and head["has_host"]
    assert head["content_length"] == -1 and head["body"] == "none"
    assert head["keep_alive"] and not head["chunked"]
    assert not head["expect_continue"] and not head["upgrade"]


@pytest.mark.parametrize("method, kind", [
    (b"GET", "GET"), (b"HEAD", "HEAD"), (b"POST", "POST"), (b"PUT", "PUT"),
    (b"DELETE", "DELETE"), (b"OPTIONS", "OPTIONS"), (b"TRACE", "TRACE"), (b"PATCH", "PATCH"),
    (b"PROPFIND", "OTHER"), (b"get", "OTHER"), (b"M-SEARCH", "OTHER"), (b"X", "OTHER"),
])
def test_method_kinds(method, kind):
    head = http1.parse_request(req(method + b" /", "Host: a"))
    assert head["method"] == method and head["method_kind"] == kind


def test_field_values_are_trimmed_and_keep_inner_whitespace_and_obs_text():
    head = http1.parse_request(req("GET /", "Host:a", "X-A: \t one  two \t", "X-B:",
                                   b"X-C: caf\xc3\xa9", "X-D:   "))
    assert head["headers"] == [(b"Host", b"a"), (b"X-A", b"one  two"), (b"X-B", b""),
                               (b"X-C", b"caf\xc3\xa9"), (b"X-D", b"")]


def test_empty_lines_before_the_request_line_are_skipped():
    # RFC 9112 §2.2: e.g. the stray CRLF some clients send after a POST body.
    data = CRLF + CRLF + req("GET /", "Host: a")
    head = http1.parse_request(data)
    assert head["head_len"] == len(data)
    assert head["method"] == b"GET"


def test_http_1_minor_above_1_reads_as_1_1():
    assert http1.parse_request(req("GET /", "Host: a", version="1.7"))["version"] == (1, 1)


# --- refused requests: the status the client gets --------------------------------------------

LONG = "a" * 9000

REFUSED = [
    # (request, status, code)
    (req("GET /"), 400, "EPARSE"),                                       # HTTP/1.1 without Host
    (req("GET /", "Host: a", "Host: b"), 400, "EPARSE"),
    (req("GET /", "Host: a", "host: a"), 400, "EPARSE"),                 # even the same value
    (req("GET /", "Host: a b"), 400, "EPARSE"),
    (req("GET /", "Host: user@a"), 400, "EPARSE"),
    (req("GET /", "Host: a:http"), 400, "EPARSE"),
    (req("GET /", "Host: a:99999"), 400, "EPARSE"),
    (req("GET /", "Host: :80"), 400, "EPARSE"),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "EPARSE"),              # two SP
    (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "EPARSE"),
    (b"GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n", 400, "EPARSE"),
    (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "EPARSE"),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400, "EPARSE"),                     # bare LF
    (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "EPARSE"),
    (b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400, "EPARSE"),             # bare CR
    (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "EPARSE"),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "EPARSE"),               # HTTP-name: case matters
    (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "EPARSE"),
    (b"GET / HTTP/1\r\nHost: a\r\n\r\n", 400, "EPARSE"),
    (b"GET /\r\n\r\n", 400, "EPARSE"),                                   # HTTP/0.9
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "EPARSE"),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "EPARSE"),    # target bytes are VCHAR
    (req("GET /", "Host: a", "X: a\x00b"), 400, "EPARSE"),               # RFC 9110 §5.5
    (req("GET /", "Host: a", "X: a\x7fb"), 400, "EPARSE"),
    (req("GET /", "Host: a", "X: a\x01b"), 400, "EPARSE"),
    (req("GET /", "Host: a", "X: one", " folded"), 400, "EPARSE"),       # obs-fold, §5.2
    (req("GET /", "Host: a", "X: one", "\tfolded"), 400, "EPARSE"),
    (req("GET /", " Host: a"), 400, "EPARSE"),                           # §2.2
    (req("GET /", "Host : a"), 400, "EPARSE"),                           # §5.1
    (req("GET /", "Host\t: a"), 400, "EPARSE"),
    (req("GET /", "Host: a", ": empty name"), 400, "EPARSE"),
    (req("GET /", "Host: a", "No colon"), 400, "EPARSE"),
    (req("GET /", "Host: a", "X(y): 1"), 400, "EPARSE"),
    (req("GET *", "Host: a"), 400, "EPARSE"),                            # "*": OPTIONS only
    (req("GET a.b:80", "Host: a"), 400, "EPARSE"),                       # CONNECT only
    (req("CONNECT /", "Host: a"), 400, "EPARSE"),
    (req("CONNECT a.b", "Host: a"), 400, "EPARSE"),                      # port required
    (req("CONNECT a.b:", "Host: a"), 400, "EPARSE"),
    (req("CONNECT http://a.b:443/", "Host: a"), 400, "EPARSE"),
    (req("GET https://a.b/", "Host: a"), 400, "EPARSE"),                 # proxied https: CONNECT
    (req("GET ftp://a.b/", "Host: a"), 400, "EPARSE"),
    (req("GET http://user@a.b/", "Host: a"), 400, "EPARSE"),             # RFC 9110 §4.2.4
    (req("GET http:///x", "Host: a"), 400, "EPARSE"),
    (req("GET http://a#b/", "Host: a"), 400, "EPARSE"),
    # A fragment is the client's own (RFC 9110 §4.2.5): Envoy refuses one by default
    # (http_reject_path_with_fragment), so do we, in every form of target.
    (req("GET /a#frag", "Host: a"), 400, "EPARSE"),
    (req("GET /#", "Host: a"), 400, "EPARSE"),
    (req("GET /a?q=1#x", "Host: a"), 400, "EPARSE"),
    (req("GET /abcdefghijklmnop#q", "Host: a"), 400, "EPARSE"),         # past a whole word
    (req("GET http://a/b#c", "Host: a"), 400, "EPARSE"),
    (req("GET http://a?q#c", "Host: a"), 400, "EPARSE"),
    (req("GET /", "Host: a", version="2.0"), 505, "EVERSION"),
    (req("GET /", "Host: a", version="0.9"), 505, "EVERSION"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "EVERSION"),              # h2 preface
    (req("GET /" + LONG, "Host: a"), 414, "ELIMIT_LINE"),
    (req("GET /", "Host: a", "X: " + LONG), 431, "ELIMIT_HEADERS"),
    (req("GET /", "Host: a", *["X-%d: 1" % i for i in range(100)]), 431, "ELIMIT_HEADERS"),
]


@pytest.mark.parametrize("data, status, code", REFUSED)
def test_refused_requests(data, status, code):
    with pytest.raises(HTTPError) as info:
        http1.parse_request(data)
    assert (info.value.status, info.value.code) == (status, code)
    assert isinstance(info.value, FastpathError)
    assert http1.status_for(code) == status


@pytest.mark.parametrize("data, status, code", REFUSED)
def test_reference_agrees_on_refused_requests(data, status, code):
    with pytest.raises(ref.RefError) as info:
        ref.parse_request(data)
    assert info.value.code == code


# Values and targets are scanned eight bytes at a time: put each byte class at every
# offset of a few words, so it lands in a word's every lane and in the byte-wise tail.

@pytest.mark.parametrize("offset", range(26))
@pytest.mark.parametrize("byte, allowed", [
    (0x00, False), (0x01, False), (0x08, False), (0x0A, False), (0x0B, False), (0x0D, False),
    (0x1F, False), (0x7F, False), (0x09, True), (0x20, True), (0x21, True), (0x7E, True),
    (0x80, True), (0xFF, True),
])
def test_every_byte_in_every_lane_of_a_value(offset, byte, allowed):
    value = bytearray(b"abcdefghijklmnopqrstuvwxyz")
    value[offset] = byte
    data = req("GET /", "Host: a", b"X-V: " + bytes(value))
    if allowed:
        assert http1.parse_request(data)["headers"][1] == (b"X-V", bytes(value).strip(b" \t"))
    else:
        assert code_of(http1.parse_request, data) == "EPARSE"
    assert outcome(ref.parse_request, data)[:2] == outcome(http1.parse_request, data)[:2]


@pytest.mark.parametrize("offset", range(1, 26))
@pytest.mark.parametrize("byte, allowed", [
    (0x00, False), (0x09, False), (0x0D, False), (0x20, False), (0x7F, False), (0x80, False),
    (0xFF, False), (0x21, True), (0x7E, True), (0x25, True), (0x23, False),
])
def test_every_byte_in_every_lane_of_a_target(offset, byte, allowed):
    target = bytearray(b"/bcdefghijklmnopqrstuvwxyz")
    target[offset] = byte
    data = b"GET " + bytes(target) + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    if allowed:
        assert http1.parse_request(data)["target"] == bytes(target)
    else:
        assert code_of(http1.parse_request, data) == "EPARSE"
    assert outcome(ref.parse_request, data)[:2] == outcome(http1.parse_request, data)[:2]


# --- request smuggling (RFC 9112 §6.1, §6.3) ---------------------------------------------------

SMUGGLING = [
    (["Content-Length: 5", "Transfer-Encoding: chunked"], "ELENGTH"),
    (["Transfer-Encoding: chunked", "Content-Length: 5"], "ELENGTH"),
    (["Transfer-Encoding: chunked", "Content-Length: 0"], "ELENGTH"),
    (["Content-Length: 5", "Content-Length: 6"], "ELENGTH"),
    (["Content-Length: 5, 6"], "ELENGTH"),
    (["Content-Length: 5,"], "ELENGTH"),
    (["Content-Length: ,5"], "ELENGTH"),
    (["Content-Length:"], "ELENGTH"),
    (["Content-Length: +5"], "ELENGTH"),
    (["Content-Length: -1"], "ELENGTH"),
    (["Content-Length: 0x10"], "ELENGTH"),
    (["Content-Length: 5 5"], "ELENGTH"),
    (["Content-Length: 1e3"], "ELENGTH"),
    (["Content-Length: 9223372036854775808"], "ELENGTH"),              # 2^63
    (["Content-Length: 99999999999999999999999"], "ELENGTH"),
    (["Transfer-Encoding: chunked, identity"], "ELENGTH"),             # chunked not final
    (["Transfer-Encoding: identity"], "ELENGTH"),
    (["Transfer-Encoding: gzip"], "ELENGTH"),
    (["Transfer-Encoding: chunked", "Transfer-Encoding: identity"], "ELENGTH"),
    (["Transfer-Encoding: chunked, chunked"], "ELENGTH"),
    (["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], "ELENGTH"),
    (["Transfer-Encoding:"], "ELENGTH"),                                # no coding at all
    (["Transfer-Encoding: ,"], "ELENGTH"),
    (["Transfer-Encoding: , ,", "Transfer-Encoding:"], "ELENGTH"),
    (["Transfer-Encoding: ,chunked", "Transfer-Encoding: ,chunked"], "ELENGTH"),
    (["Transfer-Encoding: gzip, , chunked"], "ETRANSFER"),
    (["Transfer-Encoding: xchunked"], "ELENGTH"),
    (["Transfer-Encoding: chunked;q=1"], "ELENGTH"),
    (["Transfer-Encoding: \"chunked\""], "ELENGTH"),
    (["Transfer-Encoding: gzip, chunked"], "ETRANSFER"),               # 501: not implemented
    (["Transfer-Encoding: identity, chunked"], "ETRANSFER"),
    (["Transfer-Encoding : chunked"], "EPARSE"),                       # space before colon
    (["Transfer-Encoding\t: chunked"], "EPARSE"),
    (["Transfer-Encoding: chunked", " , identity"], "EPARSE"),         # obs-fold
    (["Transfer-Encoding: \x0bchunked"], "EPARSE"),                    # VT is not OWS
    (["Content-Length : 5"], "EPARSE"),
]


@pytest.mark.parametrize("fields, code", SMUGGLING)
def test_smuggling_shapes_are_refused(fields, code):
    data = req("POST /upload", "Host: a", *fields)
    with pytest.raises(HTTPError) as info:
        http1.parse_request(data)
    assert info.value.code == code
    assert info.value.status == {"ELENGTH": 400, "ETRANSFER": 501, "EPARSE": 400}[code]
    with pytest.raises(ref.RefError) as ref_info:
        ref.parse_request(data)
    assert ref_info.value.code == code


def test_transfer_encoding_in_http_1_0_is_faulty_framing():
    # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    assert code_of(http1.parse_request, req("POST /", "Transfer-Encoding: chunked",
                                            version="1.0")) == "ELENGTH"


@pytest.mark.parametrize("fields, length", [
    (["Content-Length: 5"], 5),
    (["Content-Length: 005"], 5),
    (["Content-Length: 5, 5"], 5),                     # §6.3 rule 5: equal values are one
    (["Content-Length: 5", "content-length: 05"], 5),
    (["Content-Length: 0"], 0),
    (["Content-Length: 9223372036854775807"], 2**63 - 1),
])
def test_valid_content_lengths(fields, length):
    head = http1.parse_request(req("POST /", "Host: a", *fields))
    assert head["content_length"] == length
    assert head["body"] == ("length" if length else "none")
    # RFC 9110 §8.6: equal values are one, and a proxy sends one (headedit folds them).
    assert head["fold_length"] is (len(fields) > 1 or "," in fields[0])
    assert http1.parse_response(resp("HTTP/1.1 200 OK", *fields))["fold_length"] is head["fold_length"]


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED", "  chunked  "])
def test_chunked_requests(value):
    head = http1.parse_request(req("POST /", "Host: a", "Transfer-Encoding:" + value))
    assert head["chunked"] and head["body"] == "chunked" and head["content_length"] == -1
    assert not head["fold_coding"]


@pytest.mark.parametrize("fields", [
    ["Transfer-Encoding: ,chunked"], ["Transfer-Encoding: chunked,"],
    ["Transfer-Encoding: , , chunked , ,"], ["Transfer-Encoding:", "Transfer-Encoding: chunked"],
    ["Transfer-Encoding: chunked", "Transfer-Encoding: ,"],
])
def test_empty_transfer_coding_elements_are_ignored(fields):
    """RFC 9110 §5.6.1: a recipient ignores empty list elements. The head says the field
    needs folding, so the app is sent one plain `Transfer-Encoding: chunked`."""
    data = req("POST /", "Host: a", *fields)
    head = http1.parse_request(data)
    assert head["body"] == "chunked" and head["fold_coding"]
    assert ref.parse_request(data) == head
    answer = http1.parse_response(resp("HTTP/1.1 200 OK", "Transfer-Encoding: gzip, , chunked"))
    assert answer["body"] == "chunked"


# --- keep-alive, Expect, Upgrade ---------------------------------------------------------------

@pytest.mark.parametrize("version, fields, keep_alive", [
    ("1.1", [], True),
    ("1.1", ["Connection: close"], False),
    ("1.1", ["Connection: Close"], False),
    ("1.1", ["Connection: keep-alive"], True),
    ("1.1", ["Connection: keep-alive, close"], False),     # close wins
    ("1.1", ["Connection: foo,close"], False),
    ("1.1", ["Connection: foo", "Connection: close"], False),
    ("1.1", ["Connection: closed"], True),
    ("1.1", ["X-Connection: close"], True),
    ("1.0", [], False),
    ("1.0", ["Connection: keep-alive"], True),
    ("1.0", ["Connection: Keep-Alive"], True),
    ("1.0", ["Connection: te, keep-alive"], True),
    ("1.0", ["Connection: keep-alive", "Connection: close"], False),
])
def test_keep_alive(version, fields, keep_alive):
    head = http1.parse_request(req("GET /", "Host: a", *fields, version=version))
    assert head["keep_alive"] is keep_alive


@pytest.mark.parametrize("version, fields, expect", [
    ("1.1", ["Expect: 100-continue"], True),
    ("1.1", ["Expect: 100-Continue"], True),
    ("1.1", ["Expect:  100-continue "], True),
    ("1.1", ["Expect: foo"], False),
    ("1.1", [], False),
    ("1.0", ["Expect: 100-continue"], False),               # RFC 9110 §10.1.1: ignored
])
def test_expect_continue(version, fields, expect):
    head = http1.parse_request(req("PUT /blob", "Host: a", "Content-Length: 10", *fields,
                                   version=version))
    assert head["expect_continue"] is expect


def test_websocket_upgrade():
    data = req("GET /chat", "Host: ws.demo", "Upgrade: websocket", "Connection: Upgrade",
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13")
    head = http1.parse_request(data)
    assert head["upgrade"] and head["upgrade_value"] == b"websocket"
    assert head["keep_alive"]


@pytest.mark.parametrize("version, fields", [
    ("1.1", ["Upgrade: websocket"]),                        # not addressed to this hop
    ("1.1", ["Connection: upgrade"]),
    ("1.1", ["Connection: upgrade", "Upgrade:"]),
    ("1.0", ["Connection: upgrade", "Upgrade: websocket"]),  # RFC 9110 §7.8
])
def test_not_an_upgrade(version, fields):
    assert not http1.parse_request(req("GET /", "Host: a", *fields, version=version))["upgrade"]


# --- targets and routing ------------------------------------------------------------------------

@pytest.mark.parametrize("line, form, authority, path", [
    ("GET http://backend.demo.svc:8080/path", "absolute", b"backend.demo.svc:8080", b"/path"),
    ("GET http://backend/a/b?c=d", "absolute", b"backend", b"/a/b?c=d"),
    ("GET HTTP://Backend.Demo", "absolute", b"Backend.Demo", b""),
    ("GET http://backend?x=1", "absolute", b"backend", b"?x=1"),
    ("GET http://[::1]:8080/", "absolute", b"[::1]:8080", b"/"),
    ("GET http://10.0.0.1/", "absolute", b"10.0.0.1", b"/"),
    ("CONNECT backend.demo:443", "authority", b"backend.demo:443", b""),
    ("OPTIONS *", "asterisk", b"host.header", b"*"),
    ("GET /x", "origin", b"host.header", b"/x"),
])
def test_target_forms(line, form, authority, path):
    # RFC 9112 §3.2.2: with an absolute-form target the Host field is not the authority.
    head = http1.parse_request(req(line, "Host: host.header"))
    assert (head["target_form"], head["authority"], head["path"]) == (form, authority, path)


@pytest.mark.parametrize("authority, expected", [
    (b"svc", (b"svc", None)),
    (b"svc.ns", (b"svc.ns", None)),
    (b"svc.ns.svc", (b"svc.ns.svc", None)),
    (b"svc:8080", (b"svc", 8080)),
    (b"svc.ns:80", (b"svc.ns", 80)),
    (b"Svc.NS.svc:8080", (b"svc.ns.svc", 8080)),
    (b"svc.ns.svc.cluster.local.", (b"svc.ns.svc.cluster.local", None)),
    (b"svc.:0", (b"svc", 0)),
    (b"svc:", (b"svc", None)),
    (b"svc:65535", (b"svc", 65535)),
    (b"10.1.2.3:9", (b"10.1.2.3", 9)),
    (b"[::1]:443", (b"[::1]", 443)),
    (b"[FE80::1]", (b"[fe80::1]", None)),
    (b"", None),
    (b".", None),
    (b":80", None),
    (b"svc:65536", None),
    (b"svc:080000", None),
    (b"svc:8a", None),
    (b"svc:1:2", None),
    (b"s v c", None),
    (b"user@svc", None),
    (b"[::1", None),
    (b"[]", None),
    (b"svc\x00", None),
])
def test_normalize_host(authority, expected):
    assert http1.normalize_host(authority) == expected


def test_routing_key_from_a_proxied_request():
    head = http1.parse_request(req("GET http://Backend.Demo.svc:8080/path", "Host: x"))
    assert http1.normalize_host(head["authority"]) == (b"backend.demo.svc", 8080)


def test_normalize_host_longer_than_the_buffer_routes_nowhere():
    assert http1.normalize_host(b"a" * 255) == (b"a" * 255, None)
    assert http1.normalize_host(b"a" * 257) is None


# --- pipelining and incremental input -----------------------------------------------------------

def test_pipelined_requests_split_at_head_len():
    first = req("POST /a", "Host: a", "Content-Length: 5") + b"hello"
    second = req("GET /b", "Host: a", "Connection: close")
    data = first + second
    head = http1.parse_request(data)
    assert head["path"] == b"/a"
    body_end = head["head_len"] + head["content_length"]
    assert data[head["head_len"]:body_end] == b"hello"
    nxt = http1.parse_request(data[body_end:])
    assert nxt["path"] == b"/b" and not nxt["keep_alive"]
    assert body_end + nxt["head_len"] == len(data)


def test_pipelined_heads_without_bodies():
    one = req("GET /1", "Host: a")
    data = one * 3
    offset = 0
    for _ in range(3):
        head = http1.parse_request(data[offset:])
        assert head["path"] == b"/1"
        offset += head["head_len"]
    assert offset == len(data)


def test_pipelined_request_after_a_chunked_body():
    body = b"5\r\nhello\r\n0\r\n\r\n"
    data = (req("POST /c", "Host: a", "Transfer-Encoding: chunked") + body
            + req("GET /d", "Host: a"))
    head = http1.parse_request(data)
    consumed, done = http1.chunked_frame(data[head["head_len"]:])
    assert done and consumed == len(body)
    assert http1.parse_request(data[head["head_len"] + consumed:])["path"] == b"/d"


SAMPLES = [
    req("GET /", "Host: a"),
    req("GET /index.html?q=1", "Host: web.demo:8080", "User-Agent: curl/8.5.0", "Accept: */*"),
    req("POST http://backend.demo.svc:8080/api", "Host: backend.demo.svc:8080",
        "Content-Length: 12", "Expect: 100-continue"),
    req("GET /chat", "Host: ws", "Upgrade: websocket", "Connection: keep-alive, Upgrade"),
    CRLF + req("DELETE /x", "Host: a", "Connection: close", version="1.0"),
    req("POST /", "Host: a", "Transfer-Encoding: chunked"),
    req("CONNECT db.demo:5432", "Host: db.demo:5432"),
    # refused ones too: a prefix never refuses differently from the whole
    req("GET /", "Host: a", "Content-Length: 1", "Transfer-Encoding: chunked"),
    req("GET /", "Host: a", "Bad Name: 1"),
    req("GET /" + "x" * 100, "Host: a"),
    req("GET /", "Host: a", version="3.0"),
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n",
]


@pytest.mark.parametrize("data", SAMPLES)
def test_byte_at_a_time_agrees_with_the_whole(data):
    # httptools' test_parser_request_fragmented_bytes: every prefix is "incomplete" or
    # the same answer as the whole buffer, and a valid head is found at its last byte.
    limits = {"max_request_line": 64}
    whole = outcome(http1.parse_request, data, **limits)
    for k in range(len(data) + 1):
        part = outcome(http1.parse_request, data[:k], **limits)
        if whole[0] == "ok":
            expected = whole if k >= whole[1]["head_len"] else ("again",)
            assert part == expected, k
        else:
            assert part in (("again",), whole), k


def test_bytes_after_the_head_do_not_change_it():
    data = req("GET /", "Host: a")
    assert http1.parse_request(data + b"GARBAGE \x00\xff") == http1.parse_request(data)


# --- limits ------------------------------------------------------------------------------------

def test_default_limits():
    assert http1.default_limits() == ref.DEFAULT_LIMITS
    assert http1.MAX_HEADERS == ref.MAX_HEADERS


def test_request_line_limit_is_inclusive():
    line = "GET /" + "a" * 20
    data = req(line, "Host: a")
    size = len(line) + len(" HTTP/1.1")
    assert http1.parse_request(data, max_request_line=size)["head_len"] == len(data)
    assert code_of(http1.parse_request, data, max_request_line=size - 1) == "ELIMIT_LINE"


def test_header_line_limit_is_inclusive():
    data = req("GET /", "Host: a", "X-Long: " + "v" * 30)
    size = len("X-Long: ") + 30
    assert http1.parse_request(data, max_header_bytes=size)
    assert code_of(http1.parse_request, data, max_header_bytes=size - 1) == "ELIMIT_HEADERS"


def test_header_count_limit_is_inclusive():
    data = req("GET /", "Host: a", "A: 1", "B: 2")
    assert http1.parse_request(data, max_headers=3)
    with pytest.raises(HTTPError) as info:
        http1.parse_request(data, max_headers=2)
    assert (info.value.status, info.value.code) == (431, "ELIMIT_HEADERS")


def test_head_limit_counts_the_final_crlf_and_does_not_wait_for_more_bytes():
    data = req("GET /", "Host: a", "X: " + "v" * 50)
    assert http1.parse_request(data, max_head_bytes=len(data))
    assert code_of(http1.parse_request, data, max_head_bytes=len(data) - 1) == "ELIMIT_HEADERS"
    # An incomplete head already at the limit is refused: it can only get longer.
    short = len(data) - 2
    assert code_of(http1.parse_request, data[:-2], max_head_bytes=short) == "ELIMIT_HEADERS"
    assert http1.parse_request(data[:-2], max_head_bytes=len(data)) is None


def test_an_endless_head_is_refused_at_the_default_limit():
    data = b"GET / HTTP/1.1\r\n" + (b"X-Filler: " + b"v" * 4000 + b"\r\n") * 20
    with pytest.raises(HTTPError) as info:
        http1.parse_request(data)
    assert info.value.status == 431


def test_over_long_uri_is_414_before_the_line_ends():
    data = b"GET /" + b"a" * 9000
    with pytest.raises(HTTPError) as info:
        http1.parse_request(data)
    assert info.value.status == 414


def test_bad_limits_are_refused():
    with pytest.raises(TypeError):
        http1.parse_request(b"", max_line=5)
    with pytest.raises(ValueError):
        http1.parse_request(b"", max_headers=http1.MAX_HEADERS + 1)
    with pytest.raises(ValueError):
        http1.parse_request(b"", max_head_bytes=-1)
    with pytest.raises(ValueError):
        http1.chunked_frame(b"", max_chunk_size=2**63)


def test_max_headers_up_to_the_slot_count():
    fields = ["Host: a"] + ["X-%d: %d" % (i, i) for i in range(ref.MAX_HEADERS - 1)]
    head = http1.parse_request(req("GET /", *fields), max_headers=ref.MAX_HEADERS)
    assert len(head["headers"]) == ref.MAX_HEADERS
    assert head["headers"][-1] == (b"X-126", b"126")


def test_early_errors_for_protocol_detection():
    # The first bytes of a TLS ClientHello or of garbage are refused at once, without
    # waiting for a head that will never come.
    client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    assert code_of(http1.parse_request, client_hello) == "EPARSE"
    assert code_of(http1.parse_request, b"SSH-2.0-OpenSSH_9.6\r\n") == "EPARSE"
    assert http1.parse_request(b"GET /") is None
    assert http1.parse_request(b"") is None


# --- responses ----------------------------------------------------------------------------------

def resp(status_line: str, *fields: str) -> bytes:
    return (status_line.encode("latin-1") + CRLF
            + b"".join(f.encode("latin-1") + CRLF for f in fields) + CRLF)


@pytest.mark.parametrize("data, kw, body, keep_alive, length", [
    (resp("HTTP/1.1 200 OK", "Content-Length: 5"), {}, "length", True, 5),
    (resp("HTTP/1.1 200 OK", "Content-Length: 0"), {}, "none", True, 0),
    (resp("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), {}, "chunked", True, -1),
    (resp("HTTP/1.1 200 OK", "Transfer-Encoding: gzip, chunked"), {}, "chunked", True, -1),
    (resp("HTTP/1.1 200 OK", "Transfer-Encoding: gzip"), {}, "until_close", False, -1),
    (resp("HTTP/1.1 200 OK"), {}, "until_close", False, -1),
    (resp("HTTP/1.0 200 OK", "Content-Length: 2"), {}, "length", False, 2),
    (resp("HTTP/1.0 200 OK", "Content-Length: 2", "Connection: keep-alive"),
     {}, "length", True, 2),
    (resp("HTTP/1.1 200 OK", "Content-Length: 2", "Connection: close"), {}, "length", False, 2),
    (resp("HTTP/1.1 204 No Content", "Content-Length: 7"), {}, "none", True, 7),
    (resp("HTTP/1.1 304 Not Modified", "Content-Length: 7"), {}, "none", True, 7),
    (resp("HTTP/1.1 200 OK", "Content-Length: 7"), {"head_request": True}, "none", True, 7),
    (resp("HTTP/1.1 200 OK"), {"head_request": True}, "none", True, -1),
    (resp("HTTP/1.1 100 Continue"), {}, "none", True, -1),
    (resp("HTTP/1.1 103 Early Hints", "Link: </s.css>; rel=preload"), {}, "none", True, -1),
    (resp("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"),
     {}, "tunnel", False, -1),
    (resp("HTTP/1.1 200 Connection established"), {"connect_request": True}, "tunnel", False, -1),
    (resp("HTTP/1.1 407 Auth", "Content-Length: 0"), {"connect_request": True}, "none", True, 0),
])
def test_response_bodies(data, kw, body, keep_alive, length):
    head = http1.parse_response(data, **kw)
    assert (head["body"], head["keep_alive"], head["content_length"]) == (body, keep_alive, length)
    assert head["upgrade"] is (head["status"] == 101)
    assert ref.parse_response(data, **kw) == head


def test_a_request_is_not_both_head_and_connect():
    with pytest.raises(ValueError):
        http1.parse_response(resp("HTTP/1.1 200 OK"), head_request=True, connect_request=True)


def test_status_line_shapes():
    head = http1.parse_response(b"HTTP/1.1 404 Not  Found \r\nContent-Length: 0\r\n\r\n")
    assert (head["status"], head["reason"], head["version"]) == (404, b"Not  Found ", (1, 1))
    assert http1.parse_response(b"HTTP/1.1 200\r\n\r\n")["reason"] == b""
    assert http1.parse_response(b"HTTP/1.1 200 \r\n\r\n")["reason"] == b""


@pytest.mark.parametrize("data, code", [
    (b"HTTP/1.1 099 Low\r\n\r\n", "EPARSE"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "EPARSE"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "EPARSE"),
    (b"HTTP/1.1  200 OK\r\n\r\n", "EPARSE"),
    (b"HTTP/1.1 200 O\x00K\r\n\r\n", "EPARSE"),
    (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "EPARSE"),
    (b"http/1.1 200 OK\r\n\r\n", "EPARSE"),
    (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "EPARSE"),
    (b"HTTP/2.0 200 OK\r\n\r\n", "EVERSION"),
    (resp("HTTP/1.1 200 OK", "Content-Length: 1", "Transfer-Encoding: chunked"), "ELENGTH"),
    (resp("HTTP/1.1 200 OK", "Content-Length: 1", "Content-Length: 2"), "ELENGTH"),
    (resp("HTTP/1.1 200 OK", "Transfer-Encoding: chunked, chunked"), "ELENGTH"),
    (resp("HTTP/1.0 200 OK", "Transfer-Encoding: chunked"), "ELENGTH"),
    (resp("HTTP/1.1 200 OK", "Bad Field: 1"), "EPARSE"),
])
def test_refused_responses_are_502(data, code):
    with pytest.raises(HTTPError) as info:
        http1.parse_response(data)
    assert (info.value.status, info.value.code) == (502, code)
    with pytest.raises(ref.RefError) as ref_info:
        ref.parse_response(data)
    assert ref_info.value.code == code


def test_response_byte_at_a_time():
    data = resp("HTTP/1.1 200 OK", "Content-Type: text/plain", "Transfer-Encoding: chunked")
    whole = http1.parse_response(data)
    for k in range(len(data)):
        assert http1.parse_response(data[:k]) is None
    assert http1.parse_response(data + b"5\r\n") == whole


# --- chunked framing ----------------------------------------------------------------------------

@pytest.mark.parametrize("body, payload", [
    (b"0\r\n\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"a\r\n0123456789\r\n000\r\n\r\n", b"0123456789"),
    (b"00000005\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;name=value\r\nhello\r\n0;last\r\n\r\n", b"hello"),
    (b"5 ; name = \"quoted ; \\\" value\"\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\t;x\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;a\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;a=b;c;d=\"\"\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5; a=\"q\\\"s\"\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;a=\"\xff\t\\\xfe\" ;b\r\nhello\r\n0\r\n\r\n", b"hello"),     # obs-text, HTAB
    (b"5;!#$%&'*+-.^_`|~=!#$%&'*+-.^_`|~\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n0\r\nExpires: never\r\nX-Checksum: abc\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n0\r\nX-Empty:\r\n\r\n", b"hello"),
    (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r"),                     # data is opaque
])
def test_chunked_bodies(body, payload):
    tail = b"GET /next HTTP/1.1\r\n"
    assert http1.chunked_frame(body + tail) == (len(body), True)
    framer = http1.ChunkedFramer()
    assert framer.decode(body + tail) == (len(body), payload)
    assert framer.done and framer.body_bytes == len(payload)
    assert ref.chunked_frame(body + tail) == (len(body), True, payload)


@pytest.mark.parametrize("body, code", [
    (b"\r\n", "EPARSE"),                               # no size
    (b"x\r\n", "EPARSE"),
    (b"-5\r\n", "EPARSE"),
    (b"0x5\r\n", "EPARSE"),
    (b"+5\r\n", "EPARSE"),
    (b" 5\r\n", "EPARSE"),
    (b"5 \r\nhello\r\n", "EPARSE"),                    # BWS only before ';'
    (b"5 x\r\n", "EPARSE"),
    (b"5\nhello\r\n", "EPARSE"),                       # bare LF
    (b"5\rhello\r\n", "EPARSE"),
    (b"5;a\nb\r\nhello\r\n", "EPARSE"),                # a LF inside an extension
    (b"5;a\rb\r\nhello\r\n", "EPARSE"),
    (b"5;a\x00\r\nhello\r\n", "EPARSE"),
    # RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ).
    (b"5;\r\nhello\r\n", "EPARSE"),                   # no name
    (b"5; \r\nhello\r\n", "EPARSE"),
    (b"5;;a\r\nhello\r\n", "EPARSE"),
    (b"5;bad[=x\r\nhello\r\n", "EPARSE"),             # a name is a token
    (b"5;a b\r\nhello\r\n", "EPARSE"),
    (b"5;a \r\nhello\r\n", "EPARSE"),                 # BWS only before ';' or '='
    (b"5;a=b \r\nhello\r\n", "EPARSE"),
    (b"5;a=\r\nhello\r\n", "EPARSE"),                 # '=' wants a value
    (b"5;a= \r\nhello\r\n", "EPARSE"),
    (b"5;a=;b\r\nhello\r\n", "EPARSE"),
    (b"5;=b\r\nhello\r\n", "EPARSE"),
    (b"5;a=b=c\r\nhello\r\n", "EPARSE"),
    (b"5;a=b c\r\nhello\r\n", "EPARSE"),
    (b"5;a=[x]\r\nhello\r\n", "EPARSE"),              # a value is a token or quoted
    (b"5;a=\"unbalanced\r\nhello\r\n", "EPARSE"),
    (b"5;a=\"x\"y\r\nhello\r\n", "EPARSE"),
    (b"5;a=\"x\\\"\r\nhello\r\n", "EPARSE"),             # the escaped quote does not close
    (b"5;a=\"x\x01\"\r\nhello\r\n", "EPARSE"),           # CTL in a quoted-string
    (b"5;a=\"\\\x01\"\r\nhello\r\n", "EPARSE"),
    (b"5;a=x\"y\"\r\nhello\r\n", "EPARSE"),
    (b"5\r\nhelloX\r\n", "EPARSE"),                    # data longer than its size
    (b"5\r\nhello\n0\r\n\r\n", "EPARSE"),
    (b"5\r\nhello\r\r\n", "EPARSE"),
    (b"0\r\nX-No-Colon\r\n\r\n", "EPARSE"),
    (b"0\r\nX : 1\r\n\r\n", "EPARSE"),
    (b"0\r\n folded\r\n\r\n", "EPARSE"),
    (b"0\r\nX: 1\n\r\n", "EPARSE"),
    (b"0\r\nX: a\x00\r\n\r\n", "EPARSE"),
    (b"0\r\n\n", "EPARSE"),
    (b"0\r\n\r\r", "EPARSE"),
    (b"10000000000000000\r\n", "ELIMIT_CHUNK"),       # 2^64
    (b"8000000000000000\r\n", "ELIMIT_CHUNK"),        # 2^63
    (b"00000000000000001\r\n", "ELIMIT_CHUNK"),       # 17 digits
    (b"5;" + b"e" * 2000 + b"\r\n", "ELIMIT_CHUNK"),
    (b"5;a=\"" + b"e" * 2000 + b"\"\r\n", "ELIMIT_CHUNK"),
    (b"0\r\nX: " + b"v" * 9000 + b"\r\n\r\n", "ELIMIT_CHUNK"),
])
def test_refused_chunked_bodies(body, code):
    with pytest.raises(HTTPError) as info:
        http1.chunked_frame(body)
    assert info.value.code == code
    assert info.value.status == {"EPARSE": 400, "ELIMIT_CHUNK": 413}[code]
    with pytest.raises(ref.RefError) as ref_info:
        ref.chunked_frame(body)
    assert ref_info.value.code == code


def test_largest_chunk_size_and_its_limit():
    assert http1.chunked_frame(b"7fffffffffffffff\r\n") == (18, False)
    assert http1.chunked_frame(b"0000000000000010\r\n") == (18, False)
    assert http1.chunked_frame(b"100\r\n", max_chunk_size=256) == (5, False)
    assert code_of(http1.chunked_frame, b"101\r\n", max_chunk_size=256) == "ELIMIT_CHUNK"
    assert code_of(http1.chunked_frame, b"1000\r\n", max_chunk_size=256) == "ELIMIT_CHUNK"


def test_chunk_ext_and_trailer_limits_are_inclusive():
    body = b"5;abc\r\nhello\r\n0\r\n\r\n"
    assert http1.chunked_frame(body, max_chunk_ext=4) == (len(body), True)
    assert code_of(http1.chunked_frame, body, max_chunk_ext=3) == "ELIMIT_CHUNK"
    body = b"0\r\nX: 1\r\n\r\n"                         # trailer section: 8 bytes
    assert http1.chunked_frame(body, max_trailer_bytes=8) == (len(body), True)
    assert code_of(http1.chunked_frame, body, max_trailer_bytes=7) == "ELIMIT_CHUNK"


def test_chunked_byte_at_a_time():
    body = (b"5;ext=1\r\nhello\r\n1A\r\n" + bytes(range(26)) + b"\r\n"
            + b"0\r\nTrailer-A: 1\r\nTrailer-B: two\r\n\r\n")
    data = body + b"NEXT"
    framer = http1.ChunkedFramer()
    total = 0
    payload = b""
    for k in range(len(data)):
        consumed, part = framer.decode(data[k:k + 1])
        total += consumed
        payload += part
        assert framer.done is (k >= len(body) - 1), k
        assert consumed == (1 if k < len(body) else 0), k
    assert total == len(body)
    assert payload == b"hello" + bytes(range(26)) and framer.body_bytes == 31


@pytest.mark.parametrize("body", [b"5\r\nhelloX", b"0\r\nX : 1\r\n", b"5;" + b"e" * 40 + b"\r\n"])
def test_chunked_errors_byte_at_a_time_and_sticky(body):
    framer = http1.ChunkedFramer(max_chunk_ext=30)
    with pytest.raises(HTTPError) as info:
        for k in range(len(body)):
            framer.feed(body[k:k + 1])
    with pytest.raises(HTTPError) as again:
        framer.feed(b"0\r\n\r\n")                      # FAILED is terminal
    assert again.value.code == info.value.code
    assert code_of(http1.chunked_frame, body, max_chunk_ext=30) == info.value.code


def test_framing_mode_consumes_big_chunks_whole():
    payload = b"x" * 1_000_000
    body = b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"
    assert http1.chunked_frame(body) == (len(body), True)
    framer = http1.ChunkedFramer()
    assert framer.feed(body[:500_000]) == 500_000
    assert framer.feed(body[500_000:] + b"tail") == len(body) - 500_000
    assert framer.done and framer.body_bytes == len(payload)


# --- a request body on its way to an app: guarded trailer fields cut out -------------------------

def relay_pieces(pieces: list[bytes], **limits) -> tuple[bytes, bool, bytes]:
    """Feed `pieces` through ChunkedFramer.relay as the engine does: what was read goes
    after what is held; what belongs to the message leaves the buffer. (What went on,
    whether the body ended, what is left in the buffer.)"""
    framer = http1.ChunkedFramer(**limits)
    buf = bytearray()
    out = bytearray()
    for piece in pieces:
        buf += piece
        if not framer.done:
            n = framer.relay(buf)
            out += buf[:n]
            del buf[:n]
    return bytes(out), framer.done, bytes(buf)


def relay_expected(data: bytes, **limits) -> tuple[bytes, bool, bytes]:
    consumed, done, edited = ref.chunked_relay(data, **limits)
    return edited[:consumed], done, edited[consumed:]


GUARDED_TRAILERS = [
    b"X-Forwarded-Client-Cert: By=spiffe://x/y;URI=spiffe://x/z\r\n",
    b"x_forwarded_client_cert: URI=spiffe://x/z\r\n",
    b"X-FORWARDED_CLIENT-CERT:\r\n",
    b"Content-Length: 99\r\n",
    b"Transfer_Encoding: chunked\r\n",
    b"host: elsewhere\r\n",
    b"X-Meshnode-Failure: upstream\r\n",
    b"x_meshnode-failure: upstream\r\n",
]


@pytest.mark.parametrize("guarded", GUARDED_TRAILERS)
def test_guarded_trailer_fields_are_cut_out(guarded):
    body = (b"5\r\nhello\r\n0\r\n" + guarded + b"X-Sum: 1\r\n" + guarded + guarded
            + b"X-Last: 2\r\n" + guarded + b"\r\n")
    want = b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Last: 2\r\n\r\n"
    nxt = b"GET /next HTTP/1.1\r\n"
    assert relay_pieces([body + nxt]) == (want, True, nxt)
    assert relay_expected(body + nxt) == (want, True, nxt)
    data = bytearray(body + nxt)
    framer = http1.ChunkedFramer()
    assert framer.relay(data) == len(want) and bytes(data) == want + nxt


@pytest.mark.parametrize("name", [b"X-Forwarded-Client", b"Content-Lengths", b"X-Host",
                                  b"Content.Length", b"Hosts"])
def test_other_trailer_fields_go_on(name):
    body = b"0\r\n" + name + b": v\r\n\r\n"
    assert relay_pieces([body]) == (body, True, b"")


def test_trailers_relayed_one_byte_at_a_time_are_held_until_whole():
    body = (b"3;x=1\r\nabc\r\n0\r\nX-Forwarded-Client-Cert: forged\r\nX-Sum: 1\r\n"
            b"Content_Length: 9\r\n\r\n")
    data = body + b"NEXT"
    framer = http1.ChunkedFramer()
    buf = bytearray()
    out = bytearray()
    section = body.index(b"0\r\n") + 3
    for k in range(len(data)):
        buf += data[k:k + 1]
        if framer.done:
            continue
        n = framer.relay(buf)
        if k < section or framer.done:
            assert len(buf) == n or framer.done          # nothing held outside the section
        else:
            assert n == 0                                 # the section waits, whole or not
        out += buf[:n]
        del buf[:n]
    assert out == b"3;x=1\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n" and bytes(buf) == b"NEXT"


def test_a_held_trailer_section_keeps_its_limit():
    framer = http1.ChunkedFramer(max_trailer_bytes=15)
    buf = bytearray(b"0\r\nX: 1234567")
    assert framer.relay(buf) == 3
    del buf[:3]
    buf += b"89\r\n\r\n"                             # 16 bytes: one over
    with pytest.raises(HTTPError) as info:
        framer.relay(buf)
    assert info.value.code == "ELIMIT_CHUNK"


# --- hypothesis: the compiled codec against the reference ----------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TCHARS, min_size=1, max_size=12).map(str.encode)
field_values = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128))


def mostly(good: list[bytes], bad: list[bytes]):
    """Valid values four times out of five: mutations and `bad` supply the rest."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good),
                     st.sampled_from(good), st.sampled_from(bad))


hosts = mostly([b"svc", b"svc.ns", b"svc.ns.svc", b"Svc.NS:8080", b"10.0.0.1:80", b"[::1]:443",
                b"backend.demo.svc:8080", b"svc.", b""], [b"a b", b"x:99999", b"u@h", b":80"])
special_fields = st.one_of(
    st.tuples(st.sampled_from([b"Content-Length", b"content-length"]),
              mostly([b"0", b"5", b"05", b"5, 5", b"123456"],
                     [b"5,6", b"", b"-1", b"18446744073709551616", b"5,"])),
    st.tuples(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]),
              mostly([b"chunked", b"Chunked"],
                     [b"gzip, chunked", b"chunked, gzip", b"identity", b"", b", chunked",
                      b"chunked,chunked"])),
    st.tuples(st.sampled_from([b"Connection", b"connection"]),
              st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"keep-alive, upgrade", b"foo",
                               b"Close, TE", b""])),
    st.tuples(st.just(b"Upgrade"), st.sampled_from([b"websocket", b"h2c", b""])),
    st.tuples(st.just(b"Expect"), st.sampled_from([b"100-continue", b"100-Continue", b"nope"])),
)
fields = st.lists(st.one_of(st.tuples(tokens, field_values), st.tuples(tokens, field_values),
                            special_fields), max_size=8)
ows = st.sampled_from([b"", b" ", b" ", b"  ", b"\t", b" \t"])
origin_targets = st.text("abcXYZ019-._~!$&'()*+,;=:@/?%", max_size=40).map(
    lambda s: b"/" + s.encode())
absolute_targets = st.tuples(
    mostly([b"http://", b"HTTP://"], [b"https://", b"ftp://"]),
    mostly([b"svc", b"svc.ns.svc:8080", b"[::1]", b"10.1.2.3:80"], [b"u@h", b"", b"a b"]),
    st.sampled_from([b"", b"/", b"/a?b", b"?q", b"/x/y/z"])).map(b"".join)
method_targets = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"PATCH", b"TRACE",
                               b"PROPFIND", b"get"]) | tokens,
              st.one_of(origin_targets, origin_targets, absolute_targets)),
    st.tuples(st.just(b"OPTIONS"), st.sampled_from([b"*", b"/", b"http://svc/"])),
    st.tuples(st.just(b"CONNECT"), mostly([b"svc:443", b"[::1]:8443", b"db.ns:5432"],
                                          [b"svc", b"/", b"svc:"])),
    st.tuples(tokens, st.sampled_from([b"*", b"svc:443"])),
)
versions = mostly([b"1.1", b"1.1", b"1.0", b"1.2"], [b"2.0", b"0.9"])


@st.composite
def requests(draw) -> bytes:
    method, target = draw(method_targets)
    version = draw(versions)
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    if draw(st.integers(0, 4)) == 0:
        head = b"\r\n" + head
    items = draw(fields)
    if draw(st.integers(0, 9)) > 0:                        # Host, nine times out of ten
        items.insert(draw(st.integers(0, len(items))), (draw(st.sampled_from([b"Host", b"host"])),
                                                        draw(hosts)))
    for name, value in items:
        head += name + b":" + draw(ows) + value + draw(ows) + b"\r\n"
    return head + b"\r\n" + draw(st.sampled_from([b"", b"body", b"GET / HTTP/1.1\r\n"]))


@st.composite
def mutated(draw, source) -> bytes:
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(st.one_of(st.sampled_from(b"\r\n \t:;,\x00\x7f\x80/\"0"), st.integers(0, 255)))
        if how == "replace":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        elif how == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


small_limits = st.fixed_dictionaries({}, optional={
    "max_request_line": st.integers(0, 60),
    "max_headers": st.integers(0, 10),
    "max_header_bytes": st.integers(0, 40),
    "max_head_bytes": st.integers(0, 200),
})

CROSS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same_request(data: bytes, limits: dict) -> None:
    compiled = outcome(http1.parse_request, data, **limits)
    expected = outcome(ref.parse_request, data, **limits)
    assert compiled[:2] == expected[:2]
    if compiled[0] == "ok":
        assert compiled[1] == expected[1]


@CROSS
@given(requests(), small_limits)
def test_reference_cross_check_generated_requests(data, limits):
    assert_same_request(data, {})
    assert_same_request(data, limits)


@CROSS
@given(mutated(requests()), small_limits)
def test_reference_cross_check_mutated_requests(data, limits):
    assert_same_request(data, {})
    assert_same_request(data, limits)


@CROSS
@given(st.binary(max_size=80))
def test_reference_cross_check_random_bytes(data):
    assert_same_request(data, {})
    assert_same_request(b"GET / HTTP/1.1\r\n" + data, {})


@settings(max_examples=300, deadline=None)
@given(st.one_of(requests(), mutated(requests())), small_limits, st.data())
def test_prefixes_agree_with_the_whole(data, limits, draw):
    whole = outcome(http1.parse_request, data, **limits)
    cut = draw.draw(st.integers(0, len(data)))
    part = outcome(http1.parse_request, data[:cut], **limits)
    if whole[0] == "ok" and cut >= whole[1]["head_len"]:
        assert part == whole
    else:
        assert part in (("again",), whole)


statuses = st.sampled_from([b"200 OK", b"204 No Content", b"304 Not Modified", b"101 Switching",
                            b"100 Continue", b"404", b"502 Bad Gateway", b"099 Low", b"200 "])


@st.composite
def responses(draw) -> bytes:
    head = b"HTTP/%s %s\r\n" % (draw(versions), draw(statuses))
    for name, value in draw(fields):
        head += name + b":" + draw(ows) + value + b"\r\n"
    return head + b"\r\n"


request_kinds = st.sampled_from([{}, {"head_request": True}, {"connect_request": True}])


@CROSS
@given(st.one_of(responses(), mutated(responses())), request_kinds, small_limits)
def test_reference_cross_check_responses(data, request_kind, limits):
    for kw in ({}, limits):
        compiled = outcome(http1.parse_response, data, **request_kind, **kw)
        expected = outcome(ref.parse_response, data, **request_kind, **kw)
        assert compiled[:2] == expected[:2]
        if compiled[0] == "ok":
            assert compiled[1] == expected[1]


@st.composite
def chunked_bodies(draw) -> bytes:
    out = b""
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4)):
        size = b"%x" % len(chunk)
        if draw(st.booleans()):
            size = size.upper()
        out += draw(st.sampled_from([b"", b"0", b"000"])) + size
        out += draw(st.sampled_from([b"", b";a", b";a=b", b" ;a=\"x y\"", b"\t; q",
                                     b"; a = \"\\\"\" ;b=c", b";a;b", b";", b";a=", b"; a ",
                                     b";a=\"x", b";[", b";a=b;c=\"\\\x01\""])) + b"\r\n"
        out += chunk + b"\r\n"
    out += b"0" + draw(st.sampled_from([b"", b";end"])) + b"\r\n"
    for name, value in draw(st.lists(st.tuples(tokens, field_values), max_size=3)):
        out += name + b": " + value + b"\r\n"
    return out + b"\r\n" + draw(st.sampled_from([b"", b"NEXT"]))


chunk_limits = st.fixed_dictionaries({}, optional={
    "max_chunk_ext": st.integers(0, 8),
    "max_trailer_bytes": st.integers(0, 40),
    "max_chunk_size": st.integers(0, 30),
})


def chunked_outcome_compiled(data: bytes, limits: dict):
    framer = http1.ChunkedFramer(**limits)
    try:
        consumed, payload = framer.decode(data)
    except HTTPError as err:
        return ("error", err.code)
    assert http1.chunked_frame(data, **limits) == (consumed, framer.done)
    return ("ok", consumed, framer.done, payload)


def chunked_outcome_ref(data: bytes, limits: dict):
    try:
        return ("ok", *ref.chunked_frame(data, **limits))
    except ref.RefError as err:
        return ("error", err.code)


@CROSS
@given(st.one_of(chunked_bodies(), mutated(chunked_bodies())), chunk_limits)
def test_reference_cross_check_chunked(data, limits):
    for kw in ({}, limits):
        assert chunked_outcome_compiled(data, kw) == chunked_outcome_ref(data, kw)


trailer_lines = st.lists(st.one_of(
    st.tuples(tokens, field_values),
    st.tuples(st.sampled_from([b"X-Forwarded-Client-Cert", b"x_forwarded_client_cert",
                               b"Content-Length", b"HOST", b"transfer_encoding",
                               b"X_Meshnode_Failure"]), field_values),
), max_size=5)


@st.composite
def trailed_bodies(draw) -> bytes:
    out = draw(st.sampled_from([b"", b"3\r\nabc\r\n"])) + b"0\r\n"
    for name, value in draw(trailer_lines):
        out += name + b": " + value + b"\r\n"
    return out + b"\r\n" + draw(st.sampled_from([b"", b"NEXT"]))


@CROSS
@given(st.one_of(trailed_bodies(), mutated(trailed_bodies()), chunked_bodies()), chunk_limits,
       st.data())
def test_reference_cross_check_relay_split_anywhere(data, limits, draw):
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=6)))
    pieces = [data[lo:hi] for lo, hi in zip([0] + cuts, cuts + [len(data)])]
    try:
        got = ("ok", *relay_pieces(pieces, **limits))
    except HTTPError as err:
        got = ("error", err.code)
    try:
        want = ("ok", *relay_expected(data, **limits))
    except ref.RefError as err:
        want = ("error", err.code)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.one_of(chunked_bodies(), mutated(chunked_bodies())), chunk_limits, st.data())
def test_chunked_split_anywhere_agrees_with_whole(data, limits, draw):
    whole = chunked_outcome_compiled(data, limits)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4)))
    framer = http1.ChunkedFramer(**limits)
    consumed = 0
    payload = b""
    try:
        for lo, hi in zip([0] + cuts, cuts + [len(data)]):
            if framer.done:
                break
            used, part = framer.decode(data[lo:hi])
            consumed += used
            payload += part
    except HTTPError as err:
        assert whole == ("error", err.code)
    else:
        assert whole == ("ok", consumed, framer.done, payload)
