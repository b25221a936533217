"""Tests for fastpath.engine's early answers: an app that answers a request before it has
read all of it (a 413 for a body too large, a 503 before the body is read) and closes.
Sending the rest of the request then fails on both hops; the answer the app had sent
still reaches the client, whole as far as it came, and the connection then ends (as
Envoy forwards an early response).

The two-node mesh of test_engine_routes: the caller's node routes "backend" to v1, the
app's node serves it with a raw app. Real engines, mutual TLS and sockets on loopback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from enginekit import TIMEOUT_S, port_of
from test_engine_http import _read_head as head
from test_engine_routes import Mesh, mesh, mesh_pki  # noqa: F401
from test_engine_routes_attack import one_rule, v1_is

pytestmark = pytest.mark.timeout(60)

BIG = 32 << 20                      # more than every buffer on the way holds


def early(status: bytes, body: bytes, reads: int = 0) -> Callable[[socket.socket], None]:
    """v1's serve(): read the head (and `reads` bytes more), answer `status` with `body`
    and Connection: close, and close without reading the rest (the kernel resets)."""
    def serve(conn: socket.socket) -> None:
        got = head(conn)
        left = reads - (len(got) - got.index(b"\r\n\r\n") - 4)
        while left > 0:
            chunk = conn.recv(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
        conn.sendall(b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (status, len(body), body))
    return serve


def upload(m: Mesh, size: int = BIG) -> bytes:
    """POST `size` bytes from a client that reads while it sends; all it is answered
    (a reset after the answer ends it too)."""
    return upload_ended(m, size)[0]


def upload_ended(m: Mesh, size: int = BIG) -> tuple[bytes, bool]:
    """upload(), and whether the answer ended in a reset (else a clean end)."""
    c = socket.create_connection(("127.0.0.1", port_of(m.http_sock)), timeout=TIMEOUT_S)

    def send() -> None:
        try:
            c.sendall(b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n"
                      % size)
            block = b"u" * 65536
            for _ in range(size // len(block)):
                c.sendall(block)
        except OSError:
            pass                        # the other side is gone: the answer tells why
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    reset = False
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            answer += chunk
    except OSError:
        reset = True
    sender.join(TIMEOUT_S)
    c.close()
    return answer, reset


def upload_to(m: Mesh, serve: Callable[[socket.socket], None]) -> bytes:
    """upload() to v1 served by `serve` (a raw app) through one rule."""
    raw = v1_is(m, serve)
    try:
        one_rule(m)
        return upload(m)
    finally:
        raw.close()


@pytest.mark.parametrize("status, body, reads", [
    (b"413 Content Too Large", b"too large\n", 0),
    (b"503 Service Unavailable", b"try later\n", 100_000),
])
def test_an_answer_sent_before_the_body_was_read_reaches_the_client(
        mesh: Mesh, status: bytes, body: bytes, reads: int) -> None:  # noqa: F811
    answer = upload_to(mesh, early(status, body, reads))
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n"), answer[:200]
    assert answer.endswith(b"\r\n\r\n" + body), answer[:200]


def test_an_early_answer_cut_short_is_passed_on_as_far_as_it_came(mesh: Mesh) -> None:  # noqa: F811
    def serve(conn: socket.socket) -> None:
        head(conn)
        conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 1000\r\n\r\npartial")
    answer = upload_to(mesh, serve)
    assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"\r\n\r\npartial"), answer


@pytest.mark.parametrize("framing", [b"Content-Length: 1000\r\n", b""])
def test_an_answer_cut_short_by_a_reset_ends_in_a_reset(mesh: Mesh, framing: bytes) -> None:  # noqa: F811
    """An app that resets in the middle of its answer (with a length, or one until its
    end): what came goes on, and the client's connection is reset after it, never ended
    as if the answer were whole."""
    def serve(conn: socket.socket) -> None:
        head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n%s\r\npartial" % framing)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw = v1_is(mesh, serve)
    try:
        one_rule(mesh)
        c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
        with c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            answer, reset = b"", False
            try:
                while chunk := c.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                reset = True
    finally:
        raw.close()
    assert reset and answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer


def test_an_upstream_that_resets_without_answering_is_a_502(mesh: Mesh) -> None:  # noqa: F811
    def serve(conn: socket.socket) -> None:
        head(conn)
    answer = upload_to(mesh, serve)
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
