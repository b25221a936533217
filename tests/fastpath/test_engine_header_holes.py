"""Issue 10, item 10: the header and framing holes a client could use to hand an app a
field the mesh vouches for, or a message the app frames differently than the mesh.

Each test replays the attack through two real engines (the client's node: the HTTP
outbound listener; the app's node: the inbound mutual-TLS listener), real sockets and
OpenSSL, and looks at the bytes the app's socket actually received (an app that echoes
every request it read, raw), or at what the client gets back. Fixtures are those of
test_engine_http.py; loopback only, every wait bounded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, listener, recv_all
from test_engine_http import (BACKEND_ID, FRONTEND_ID, SNI, Mesh, Node, RawApp,  # noqa: F401
                              exchange, mesh, mesh_pki, server_ctx)

pytestmark = pytest.mark.timeout(60)

FORGED = b"By=spiffe://cluster.local/ns/ops/sa/admin;URI=spiffe://cluster.local/ns/ops/sa/admin"
XFCC = f"By={BACKEND_ID};URI={FRONTEND_ID}".encode()


# --- an app that answers each request with the bytes it received ------------------------------


def _more(conn: socket.socket, buf: bytearray) -> None:
    chunk = conn.recv(65536)
    if not chunk:
        raise OSError("EOF")
    buf += chunk


def _line(conn: socket.socket, buf: bytearray, at: int) -> int:
    """Where the line starting at `at` ends (just past its LF), reading as needed."""
    while (end := buf.find(b"\n", at)) < 0:
        _more(conn, buf)
    return end + 1


def read_request(conn: socket.socket, buf: bytearray) -> bytes:
    """One request off `buf` (+ the socket), framed as a lenient app would: the first
    Content-Length element, or "chunked" anywhere in Transfer-Encoding. Its raw bytes."""
    while b"\r\n\r\n" not in buf:
        _more(conn, buf)
    at = buf.index(b"\r\n\r\n") + 4
    fields = [line.partition(b":") for line in bytes(buf[:at]).split(b"\r\n")[1:]]
    named = {name.strip().lower(): value.strip() for name, _, value in fields}
    if b"chunked" in named.get(b"transfer-encoding", b"").lower():
        while True:
            end = _line(conn, buf, at)
            size = int(bytes(buf[at:end]).split(b";")[0], 16)
            at = end
            if size == 0:
                while True:                 # trailer lines, then the empty one
                    end = _line(conn, buf, at)
                    empty = end - at <= 2
                    at = end
                    if empty:
                        break
                break
            while len(buf) < at + size + 2:
                _more(conn, buf)
            at += size + 2
    elif b"content-length" in named:
        at += int(named[b"content-length"].split(b",")[0])
        while len(buf) < at:
            _more(conn, buf)
    raw = bytes(buf[:at])
    del buf[:at]
    return raw


class EchoApp:
    """Answers every request with 200 and, as its body, the request's raw bytes."""

    def __init__(self) -> None:
        self.raw = RawApp(self._serve)
        self.port = self.raw.port

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            got = read_request(conn, buf)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(got), got))

    def close(self) -> None:
        self.raw.close()


def _route_to(m: Mesh, port: int) -> None:
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno())
    t.add_inbound_route(SNI, server_ctx(m.pki), "127.0.0.1", port,
                        service="demo/backend:http", identity=BACKEND_ID)
    m.in_node.install(t)


@pytest.fixture
def echo(mesh: Mesh):
    app = EchoApp()
    _route_to(mesh, app.port)
    yield app
    app.close()


def app_saw(m: Mesh, request: bytes) -> bytes:
    """What the app's socket received for `request` (sent in one write, ending the
    client's connection after its answer)."""
    reply = exchange(m, request)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), reply[:200]
    return body


def fields_of(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The head's field lines as (name as sent, value)."""
    head = raw.partition(b"\r\n\r\n")[0]
    return [(n, v.strip()) for n, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])]


def named(raw: bytes, name: bytes) -> list[bytes]:
    """Values of the fields that a CGI/WSGI server would file under `name` ('_' = '-')."""
    key = name.lower().replace(b"_", b"-")
    return [v for n, v in fields_of(raw) if n.lower().replace(b"_", b"-") == key]


# --- 1. a field name with '_' for '-' ---------------------------------------------------------


@pytest.mark.parametrize("spelling", [b"X_Forwarded_Client_Cert", b"x-forwarded_client-cert",
                                      b"X_FORWARDED_CLIENT_CERT"])
def test_an_underscored_xfcc_does_not_reach_the_app(mesh: Mesh, echo: EchoApp,
                                                    spelling: bytes) -> None:
    """A WSGI/CGI app files X_Forwarded_Client_Cert and X-Forwarded-Client-Cert under
    one HTTP_X_FORWARDED_CLIENT_CERT: the forged one must not get there (Envoy's
    headers_with_underscores_action=DROP_HEADER, for the names the mesh vouches for)."""
    got = app_saw(mesh, b"GET /who HTTP/1.1\r\nHost: backend\r\n" + spelling + b": " + FORGED
                  + b"\r\nConnection: close\r\n\r\n")
    assert named(got, b"x-forwarded-client-cert") == [XFCC], got
    assert FORGED not in got


def test_underscored_framing_fields_do_not_reach_the_app(mesh: Mesh, echo: EchoApp) -> None:
    got = app_saw(mesh, b"POST /f HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n"
                        b"Content_Length: 0\r\nTransfer_Encoding: chunked\r\nX_Other: kept\r\n"
                        b"Connection: close\r\n\r\nhello")
    names = [n for n, _ in fields_of(got)]
    assert b"Content_Length" not in names and b"Transfer_Encoding" not in names
    assert b"X_Other" in names          # other underscored names are the app's business
    assert got.endswith(b"\r\n\r\nhello")


# --- 2. a vouched-for field in the chunked trailer section --------------------------------------


TRAILERS = (b"X-Forwarded-Client-Cert: " + FORGED + b"\r\nX-Checksum: abc\r\n"
            b"x_forwarded_client_cert: " + FORGED + b"\r\nContent-Length: 99\r\n"
            b"X-Last: z\r\n\r\n")


def _chunked_post(trailers: bytes) -> tuple[bytes, bytes]:
    head = (b"POST /t HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n")
    return head, b"5\r\nhello\r\n6\r\n world\r\n0\r\n" + trailers


def _assert_trailers_cleaned(got: bytes) -> None:
    body = got.partition(b"\r\n\r\n")[2]
    assert body == (b"5\r\nhello\r\n6\r\n world\r\n0\r\n"
                    b"X-Checksum: abc\r\nX-Last: z\r\n\r\n"), body
    assert named(got, b"x-forwarded-client-cert") == [XFCC]


def test_an_xfcc_in_chunked_trailers_does_not_reach_the_app(mesh: Mesh, echo: EchoApp) -> None:
    """Servers that merge trailers into the request's fields (RFC 9110 §6.5.1 allows it
    where the field's definition does) would take the trailer's identity."""
    head, body = _chunked_post(TRAILERS)
    _assert_trailers_cleaned(app_saw(mesh, head + body))


def test_an_xfcc_trickled_into_the_trailers_does_not_reach_the_app(mesh: Mesh,
                                                                   echo: EchoApp) -> None:
    """The trailer section split over many reads (one byte each): it is judged whole."""
    head, body = _chunked_post(TRAILERS)
    c = mesh.client()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(head + body[:body.index(b"0\r\n") + 3])
    for k in range(len(TRAILERS)):
        c.sendall(TRAILERS[k:k + 1])
        time.sleep(0.001)
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    _assert_trailers_cleaned(reply.partition(b"\r\n\r\n")[2])


def test_the_request_after_a_cleaned_trailer_section_is_framed(mesh: Mesh, echo: EchoApp) -> None:
    head, body = _chunked_post(TRAILERS)
    head = head.replace(b"Connection: close\r\n", b"")
    c = mesh.client()
    c.sendall(head + body + b"GET /next HTTP/1.1\r\nHost: backend\r\n"
              b"X-Forwarded-Client-Cert: " + FORGED + b"\r\nConnection: close\r\n\r\n")
    reply = recv_all(c)
    assert reply.count(b"HTTP/1.1 200 OK") == 2, reply
    second = reply.split(b"HTTP/1.1 200 OK")[2].partition(b"\r\n\r\n")[2]
    assert second.startswith(b"GET /next HTTP/1.1\r\n")
    assert named(second, b"x-forwarded-client-cert") == [XFCC]


def test_a_trailer_section_cut_short_by_the_clients_end_is_not_sent(mesh: Mesh) -> None:
    """Held until whole, a section that never ends is never sent: the app sees the body
    end at the last chunk, then the end of the connection, not half a forged field."""
    got: list[bytes] = []
    done = threading.Event()

    def serve(conn: socket.socket) -> None:
        got.append(recv_all(conn))
        done.set()

    app = RawApp(serve)
    try:
        _route_to(mesh, app.port)
        head, body = _chunked_post(b"X-Sum: 1\r\nX-Forwarded-Client-Cert: " + FORGED)
        c = mesh.client()
        c.sendall(head + body)
        c.shutdown(socket.SHUT_WR)
        assert done.wait(TIMEOUT_S)
        assert got[0].endswith(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n"), got[0]
    finally:
        app.close()


def test_a_trailer_section_over_a_buffer_is_refused(mesh: Mesh) -> None:
    # The client's node with buffers smaller than the trailer limit (8 KiB).
    m = dataclasses.replace(mesh, out_node=Node(buffer_bytes=2048), http_sock=listener())
    try:
        m.out_node.install(m.outbound_table())
        head, body = _chunked_post(b"X-Pad: " + b"p" * 3000 + b"\r\n\r\n")
        reply = exchange(m, head + body)
        assert b"HTTP/1.1 200" not in reply
        assert m.out_node.stats()["http_bad_request"] == 1
    finally:
        m.out_node.stop()
        m.http_sock.close()


# --- 2b. ... and in an answer's: the app's node and the client's both clean it ---------------


ANSWER_TRAILERS = (b"X-Meshnode-Failure: upstream\r\n" + TRAILERS.replace(
    b"X-Last: z", b"x_meshnode_failure: upstream\r\nTransfer-Encoding: chunked\r\nX-Last: z"))


def _chunked_answer(trailers: bytes, trickle: bool = False) -> RawApp:
    """An app answering each request chunked, with `trailers` (one byte a write when
    `trickle`), routed to by the app's node."""

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            read_request(conn, buf)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n")
            for k in range(0, len(trailers), 1 if trickle else len(trailers)):
                conn.sendall(trailers[k:k + 1] if trickle else trailers)
                if trickle:
                    time.sleep(0.001)

    return RawApp(serve)


@pytest.mark.parametrize("trickle", [False, True])
def test_owned_fields_in_an_answers_trailers_do_not_reach_the_client(mesh: Mesh,
                                                                     trickle: bool) -> None:
    """x-meshnode-failure is the nodes' word (retry.pxi), the framing fields the node's:
    a client that merges trailers into the head would take an app's for theirs. The
    section is judged whole, however it arrives."""
    app = _chunked_answer(ANSWER_TRAILERS, trickle)
    try:
        _route_to(mesh, app.port)
        reply = exchange(mesh, b"GET /t HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    finally:
        app.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert body == (b"5\r\nhello\r\n6\r\n world\r\n0\r\n"
                    b"X-Checksum: abc\r\nX-Last: z\r\n\r\n"), body


# --- 3. a repeated Content-Length --------------------------------------------------------------


@pytest.mark.parametrize("fields", [b"Content-Length: 5, 5\r\n",
                                    b"Content-Length: 5\r\ncontent-length: 05\r\n",
                                    b"Content-Length: 5,5\r\nX-Mid: m\r\nContent-Length: 5\r\n"])
def test_a_repeated_content_length_reaches_the_app_as_one(mesh: Mesh, echo: EchoApp,
                                                          fields: bytes) -> None:
    """RFC 9110 §8.6: a recipient that takes equal values as one sends one; an app that
    reads "5, 5" as no length would take the body for the next request."""
    c = mesh.client()
    c.sendall(b"POST /cl HTTP/1.1\r\nHost: backend\r\n" + fields + b"\r\nhello"
              b"GET /after HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    reply = recv_all(c)
    assert reply.count(b"HTTP/1.1 200 OK") == 2, reply
    first = reply.split(b"HTTP/1.1 200 OK")[1].partition(b"\r\n\r\n")[2]
    lengths = [(n, v) for n, v in fields_of(first) if n.lower() == b"content-length"]
    assert len(lengths) == 1 and int(lengths[0][1]) == 5, first
    assert lengths[0][1] in (b"5", b"05")
    assert first.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("lengths", [b"Content-Length: 5, 5\r\n",
                                     b"Content-Length: 5\r\nContent-Length: 5\r\n"])
def test_a_repeated_content_length_reaches_the_client_as_one(mesh: Mesh, lengths: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + lengths + b"X-App: a\r\n\r\nhello"

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            read_request(conn, buf)
            conn.sendall(answer)

    app = RawApp(serve)
    try:
        _route_to(mesh, app.port)
        reply = exchange(mesh, b"GET /x HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        assert reply.endswith(b"\r\n\r\nhello"), reply
        got = [n for n, _ in fields_of(reply) if n.lower() == b"content-length"]
        assert len(got) == 1, reply
        assert b"Content-Length: 5\r\n" in reply and b"5, 5" not in reply
    finally:
        app.close()


# --- 4, 5, 6: chunk extensions, empty list elements, fragments ----------------------------------


@pytest.mark.parametrize("ext", [b";", b";bad[=x", b';a="unbalanced', b"; a=", b";a=b c"])
def test_a_malformed_chunk_extension_is_refused_and_never_reaches_the_app(
        mesh: Mesh, echo: EchoApp, ext: bytes) -> None:
    """RFC 9112 §7.1.1: an extension parsers read differently is how "funky chunks"
    smuggle; the bad line is never sent on, the client's connection is dropped."""
    c = mesh.client()
    c.sendall(b"POST /e HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n5" + ext + b"\r\nhello\r\n0\r\n\r\n")
    reply = recv_all(c)
    assert b"HTTP/1.1 200" not in reply
    assert mesh.out_node.stats()["http_bad_request"] == 1


def test_a_valid_chunk_extension_passes(mesh: Mesh, echo: EchoApp) -> None:
    body = b'5;a=b\r\nhello\r\n1; q="x\\"y" ;z\r\n!\r\n0;last\r\n\r\n'
    got = app_saw(mesh, b"POST /e HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n"
                        b"Connection: close\r\n\r\n" + body)
    assert got.endswith(b"\r\n\r\n" + body)


@pytest.mark.parametrize("value", [b",chunked", b"chunked,", b" , chunked , "])
def test_transfer_encoding_with_empty_list_elements_is_chunked(mesh: Mesh, value: bytes) -> None:
    """RFC 9110 §5.6.1: empty list elements are ignored. The app (http.server, which
    wants the value to be exactly "chunked") reads the body: the mesh sends it one
    plain `Transfer-Encoding: chunked`."""
    reply = exchange(mesh, b"POST /te HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: " + value
                     + b"\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert reply.endswith(f"5 {hashlib.sha256(b'hello').hexdigest()}\n".encode())


@pytest.mark.parametrize("target", [b"/a#frag", b"/a?q=1#", b"http://backend/a#x"])
def test_a_target_with_a_fragment_is_400(mesh: Mesh, echo: EchoApp, target: bytes) -> None:
    """A fragment is the client's own business (RFC 9110 §4.2.5); Envoy's default
    (http_reject_path_with_fragment) refuses a request that sends one."""
    reply = exchange(mesh, b"GET " + target + b" HTTP/1.1\r\nHost: backend\r\n"
                           b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert mesh.out_node.stats()["http_bad_request"] == 1
