"""Tests for the engine's request and response sizes (Istio's istio_request_bytes and
istio_response_bytes): per figure and status, a request's bytes as the client sent
them (head and body) and its answer's as the client got them, exact, on keep-alive,
chunked, pipelined and until-close exchanges; and an opaque pair a sniffing listener
took, its first bytes counted. The two nodes, the app and the client are
test_engine_http's (real engines, sockets and OpenSSL)."""

from __future__ import annotations

import socket

from fastpath import engine as fe

from enginekit import port_of, recv_all, wait_for
from test_engine_http import (TIMEOUT_S, Mesh, _echo, _record, _sniffing,  # noqa: F401
                              _with_raw_app, mesh, mesh_pki, recv_until)

SERVICE = "demo/backend:http"


def read_answer(c: socket.socket, have: bytes = b"") -> tuple[bytes, bytes]:
    """One answer with a Content-Length or a chunked body, as the client got it, and
    what came after it."""
    buf = bytearray(have)
    while b"\r\n\r\n" not in buf:
        buf += c.recv(65536)
    head_end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:head_end]).lower()
    if b"transfer-encoding: chunked" in head:
        # The test app's chunked answers end with a one-field trailer section.
        while not buf.endswith(b"\r\n\r\n") or buf.count(b"\r\n0\r\n") == 0:
            buf += c.recv(65536)
        return bytes(buf), b""
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(buf) < head_end + length:
        buf += c.recv(65536)
    return bytes(buf[:head_end + length]), bytes(buf[head_end + length:])


def sizes(m: Mesh, direction: str, which: str) -> dict[int, dict]:
    return _record((m.out_node if direction == "outbound" else m.in_node).engine.request_stats(),
                   direction, SERVICE)[which]


def histogram(*ns: int) -> dict:
    """The engine's histogram of these sizes (fe.size_bounds(): the first bound not passed)."""
    counts = [0] * (len(fe.size_bounds()) + 1)
    for n in ns:
        counts[next((i for i, b in enumerate(fe.size_bounds()) if n <= b), len(fe.size_bounds()))] += 1
    return {"counts": counts, "sum": sum(ns)}


def test_size_bounds_are_envoys_default_buckets() -> None:
    # Istio sets none for its size histograms: Envoy's defaults, 0.5 being 0 in bytes.
    assert fe.size_bounds() == [0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                                30000, 60000, 300000, 600000, 1800000, 3600000]


def test_keep_alive_requests_and_answers_are_sized_by_status_exactly(mesh: Mesh) -> None:
    body = b"q" * 3000
    requests = [b"GET /big?n=40000 HTTP/1.1\r\nHost: backend\r\n\r\n",
                b"POST /post HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body),
                b"GET /status?c=404 HTTP/1.1\r\nHost: backend\r\n\r\n"]
    c = mesh.client()
    answers = []
    for request in requests:
        c.sendall(request[:20])             # a head in two reads, then its body
        c.sendall(request[20:])
        answer, rest = read_answer(c)
        assert rest == b""
        answers.append(answer)
    assert answers[2].startswith(b"HTTP/1.1 404")
    want_req = {200: histogram(len(requests[0]), len(requests[1])), 404: histogram(len(requests[2]))}
    want_resp = {200: histogram(len(answers[0]), len(answers[1])), 404: histogram(len(answers[2]))}
    wait_for(lambda: sizes(mesh, "outbound", "response_bytes") == want_resp, what="sizes counted")
    assert sizes(mesh, "outbound", "request_bytes") == want_req
    assert sizes(mesh, "outbound", "tcp")["opened"] == 0     # an HTTP pair is no TCP one
    # The serving side: the same answers (nothing edits them on the way back).
    wait_for(lambda: sizes(mesh, "inbound", "response_bytes") == want_resp, what="inbound sizes")
    # Its requests as the caller's node forwarded them: with the x-request-id and the
    # traceparent it made (tracing.pxi; the client sent neither).
    traced = len(b"x-request-id: \r\n") + 36 + len(b"traceparent: \r\n") + 55
    want_in = {200: histogram(len(requests[0]) + traced, len(requests[1]) + traced),
               404: histogram(len(requests[2]) + traced)}
    assert sizes(mesh, "inbound", "request_bytes") == want_in


def test_chunked_bodies_both_ways_and_pipelined_requests_are_sized_whole(mesh: Mesh) -> None:
    post = (b"POST /post HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n" + b"%x\r\n%s\r\n" % (9000, b"c" * 9000) + b"0\r\n\r\n")
    chunked = b"GET /chunked HTTP/1.1\r\nHost: backend\r\n\r\n"
    c = mesh.client()
    c.sendall(post + chunked)               # pipelined: the second waits for the first answer
    first, rest = read_answer(c)
    second, _ = read_answer(c, rest)
    assert second.endswith(b"0\r\nX-Trailer: t\r\n\r\n") and len(second) > 70000
    want = {200: histogram(len(first), len(second))}
    wait_for(lambda: sizes(mesh, "outbound", "response_bytes") == want, what="sizes counted")
    assert sizes(mesh, "outbound", "request_bytes") == {200: histogram(len(post), len(chunked))}


def test_an_answer_until_close_is_sized_when_its_body_ends(mesh: Mesh) -> None:
    request = b"GET /eof HTTP/1.1\r\nHost: backend\r\n\r\n"
    c = mesh.client()
    c.sendall(request)
    got = recv_all(c)                       # its body runs until the end
    assert got.endswith(b"\r\n\r\nuntil close")
    wait_for(lambda: sizes(mesh, "outbound", "response_bytes") == {200: histogram(len(got))},
             what="sized at the close")
    assert sizes(mesh, "outbound", "request_bytes") == {200: histogram(len(request))}
    assert _record(mesh.out_node.engine.request_stats(), "outbound", SERVICE)["codes"] == {200: 1}


def test_the_engines_own_answers_are_not_sized(mesh: Mesh) -> None:
    # Like the duration histogram: only answers the engine timed (an app's) are sized.
    c = mesh.client()
    c.sendall(b"GET / HTTP/1.1\r\nHost: nobody\r\n\r\n")
    assert recv_all(c).startswith(b"HTTP/1.1 503")
    rec = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/nobody:http")
    assert rec["codes"] == {503: 1}
    assert rec["request_bytes"] == rec["response_bytes"] == {}


def test_a_sniffed_opaque_pair_counts_the_bytes_read_to_tell_what_it_is(mesh: Mesh) -> None:
    app = _with_raw_app(mesh, _echo)
    try:
        port = port_of(_sniffing(mesh))
        c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        c.sendall(b"PING\r\n")           # read by the listener before it knew it was TCP
        assert recv_until(c, b"PING\r\n") == b"PING\r\n"
        c.sendall(b"more")
        assert recv_until(c, b"more") == b"more"
        c.close()
        wait_for(lambda: _record(mesh.out_node.engine.request_stats(), "outbound",
                                 "demo/backend:http-own")["tcp"] == {
                     "opened": 1, "closed": 1, "received": 10, "sent": 10}, what="pair counted")
    finally:
        app.close()
