"""Tests for fastpath.engine's RequestMirror (mirror.pxi): a copy of each request a rule
takes, as the rule edited it, body included, goes to a mirror service over its own mTLS
connection; the mirror's answer is dropped, and a mirror that is slow, silent or down
costs the real request nothing (the copy is dropped and counted).

The two nodes and the apps of tests/fastpath/test_engine_routes.py, plus recorders: raw
HTTP/1.1 servers behind the app's node that keep every request's bytes as they came, so
what the mirror got is compared byte for byte with what the real backend got.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from fastpath import engine as fe

from test_engine_routes import (BACKEND_ID, TIMEOUT_S, Mesh, mesh_pki, request,  # noqa: F401
                                running_mesh, server_ctx)

MIRROR_ANSWER = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 6\r\n\r\nmirror"
REAL_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"


def _read_request(f: Any) -> bytes | None:
    """One request's bytes as they came (Content-Length or chunked body), None at the end."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline(65536)
        if not line:
            return None
        head += line
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while not body.endswith(b"\r\n0\r\n\r\n") and body != b"0\r\n\r\n":
            line = f.readline(65536)
            if not line:
                return None
            body += line
        return head + body
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (f.read(length) if length else b"")


class Recorder:
    """A raw HTTP/1.1 server that keeps each request's bytes: `answer` (bytes) answers
    every request; None never answers (reads on); `deaf` never reads at all."""

    def __init__(self, answer: bytes | None, deaf: bool = False) -> None:
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        rec = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                if deaf:
                    rec.stop.wait(TIMEOUT_S * 3)
                    return
                while True:
                    got = _read_request(self.rfile)
                    if got is None:
                        return
                    rec.requests.append(got)
                    if answer is not None:
                        self.wfile.write(answer)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.01)


@pytest.fixture
def mesh(mesh_pki: Any) -> Iterator[Mesh]:  # noqa: F811
    with running_mesh(mesh_pki) as m:
        yield m


class Mirrored:
    """The mesh with services "rec" (the real backend, a recorder) and mirrors
    "mirror0".."mirrorN" (recorders of their own, or a closed port), all behind the
    app's node; the route sends everything to "rec" and mirrors it."""

    def __init__(self, mesh: Mesh, mirrors: list[Recorder | None]) -> None:
        self.mesh = mesh
        self.real = Recorder(REAL_ANSWER)
        self.mirrors = mirrors
        self.closed = socket.socket()
        self.closed.bind(("127.0.0.1", 0))          # bound, never listening: refused
        inbound = mesh.inbound_table()
        for name, rec in [("rec", self.real)] + [(f"mirror{i}", r) for i, r in enumerate(mirrors)]:
            if rec is not None:
                inbound.add_inbound_route(f"http.{name}.demo.svc", server_ctx(mesh.pki), "127.0.0.1",
                                          rec.port, service=f"demo/{name}:http",
                                          identity=BACKEND_ID, protocol="HTTP")
        mesh.in_node.install(inbound)
        self.table, self.ix = mesh.outbound()
        in_ep = [("127.0.0.1", mesh.in_sock.getsockname()[1])]
        for name, rec in [("rec", self.real)] + [(f"mirror{i}", r) for i, r in enumerate(mirrors)]:
            ep = in_ep if rec is not None else [("127.0.0.1", self.closed.getsockname()[1])]
            self.ix[name] = self.table.add_service(f"demo/{name}:http", f"http.{name}.demo.svc",
                                                   [BACKEND_ID], ep)

    def route(self, fractions: list[tuple[int, int]] | None = None, timeout_s: float = 0.0,
              request_headers: dict[str, Any] | None = None) -> None:
        t = self.table
        s = t.add_route_set(self.ix["backend"])
        rule = t.add_route_rule("demo/r#0", [(self.ix["rec"], 1)], request_headers,
                                timeout_s=timeout_s)
        for i, (num, den) in enumerate(fractions or [(100, 100)] * len(self.mirrors)):
            t.add_route_mirror(rule, self.ix[f"mirror{i}"], num, den)
        t.add_route_match(s, rule)
        self.mesh.out_node.install(t)

    def stats(self) -> dict[str, Any]:
        return self.mesh.out_node.engine.stats()

    def close(self) -> None:
        self.real.close()
        for rec in self.mirrors:
            if rec is not None:
                rec.close()
        self.closed.close()


@pytest.fixture
def mirrored(mesh: Mesh) -> Iterator[Callable[..., Mirrored]]:
    made: list[Mirrored] = []

    def make(*mirrors: Recorder | None) -> Mirrored:
        made.append(Mirrored(mesh, list(mirrors)))
        return made[-1]
    yield make
    for m in made:
        m.close()


def shadow(raw: bytes) -> bytes:
    """What the real backend got, as the mirror must get it: Host gets "-shadow"."""
    return raw.replace(b"\r\nHost: backend\r\n", b"\r\nHost: backend-shadow\r\n", 1)


def spanless(raw: bytes) -> bytes:
    """A request as received with its traceparent's span id aside: the copy and the
    request each reach an app's node that opens a span of its own (tracing.pxi)."""
    return re.sub(rb"(traceparent: 00-[0-9a-f]{32}-)[0-9a-f]{16}", rb"\1span", raw)


def test_the_mirror_gets_a_byte_exact_copy_body_included_and_its_answer_is_dropped(
        mirrored: Callable[..., Mirrored]) -> None:
    m = mirrored(Recorder(MIRROR_ANSWER))
    m.route(request_headers={"add": [("x-edited", "yes")]})
    conn = m.mesh.http()
    bodies = [None, b"a" * 1000, bytes(range(256)) * 40]

    def copy_done() -> None:
        # (Each copy is answered before the next request, so that its connection is
        # back in the pool for the next copy however slowly a loaded host runs them.)
        wait_for(lambda: m.stats()["mirrors_active"] == 0, "the copy answered")

    for body in bodies:
        status, _, got = request(conn, "/p?q=1", method="POST" if body else "GET", body=body)
        assert (status, got) == (200, b"real")          # the mirror's 500 is nobody's
        copy_done()
    conn.request("POST", "/chunked", body=iter([b"abc", b"d" * 5000]),
                 headers={"Host": "backend", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"real")
    copy_done()
    # After the first copy's connection went back to the pool, bodies larger than a
    # buffer stream through it as they pass.
    big = bytes(range(251)) * 2000                     # ~500 KB: 30 buffers
    assert request(conn, "/big", method="PUT", body=big)[:3:2] == (200, b"real")
    wait_for(lambda: len(m.mirrors[0].requests) == 5, "five copies")
    assert len(m.real.requests) == 5
    # Each copy goes on a connection of its own: they may arrive in any order.
    assert (sorted(spanless(shadow(r)) for r in m.real.requests)
            == sorted(spanless(r) for r in m.mirrors[0].requests))
    assert all(b"\r\nx-edited: yes\r\n" in r for r in m.mirrors[0].requests)   # as edited
    assert any(r.endswith(big) for r in m.mirrors[0].requests)
    stats = m.stats()
    assert stats["http_mirrored"] == 5 and stats["http_mirror_dropped"] == 0
    assert len(big) < stats["mirror_bytes_sent"] < sum(len(r) for r in m.mirrors[0].requests)
    # A copy's connection goes back to the pool once its answer is read.
    assert stats["mirror_tls_handshakes"] < 5
    wait_for(lambda: m.stats()["mirrors_active"] == 0, "copies done")


def test_a_silent_mirror_costs_the_real_request_nothing_and_is_given_up_in_time(
        mirrored: Callable[..., Mirrored]) -> None:
    m = mirrored(Recorder(None))
    m.route(timeout_s=1.0)                  # the copies' life too
    conn = m.mesh.http()
    for i in range(5):
        assert request(conn, f"/{i}")[2] == b"real"
    wait_for(lambda: len(m.mirrors[0].requests) == 5, "five copies")
    assert m.stats()["http_mirrored"] == 5 and m.stats()["mirrors_active"] == 5
    wait_for(lambda: m.stats()["mirrors_active"] == 0, "silent copies given up")
    stats = m.stats()
    assert stats["mirror_idle_timeouts"] == 5 and stats["http_mirror_dropped"] == 0
    assert stats["buffers_in_use"] <= 2                 # (the client pair's, if any)


def test_a_mirror_that_is_down_costs_nothing_and_its_copies_are_dropped(
        mirrored: Callable[..., Mirrored]) -> None:
    m = mirrored(None)
    m.route()
    conn = m.mesh.http()
    for i in range(4):
        assert request(conn, f"/{i}", method="POST", body=b"x" * 100)[2] == b"real"
    wait_for(lambda: m.stats()["http_mirror_dropped"] == 4, "four copies dropped")
    stats = m.stats()
    assert stats["http_mirrored"] == 0 and stats["mirror_connect_failures"] >= 4
    assert len(m.real.requests) == 4


def test_a_mirror_slower_than_the_client_drops_its_copy_not_the_request(
        mirrored: Callable[..., Mirrored]) -> None:
    m = mirrored(Recorder(None, deaf=True))             # never reads: its buffers fill
    m.route()
    body = b"z" * (64 << 20)                            # more than every buffer on the way
    conn = m.mesh.http()
    assert request(conn, "/upload", method="POST", body=body)[:3:2] == (200, b"real")
    assert m.real.requests[0].endswith(body)
    wait_for(lambda: m.stats()["http_mirror_dropped"] == 1, "the copy dropped")
    assert m.stats()["http_mirrored"] == 0 and m.stats()["mirrors_active"] == 0


def test_several_mirrors_each_get_their_copy(mirrored: Callable[..., Mirrored]) -> None:
    m = mirrored(Recorder(MIRROR_ANSWER), Recorder(None))
    m.route()
    conn = m.mesh.http()
    for i in range(3):
        assert request(conn, f"/{i}", method="POST", body=b"b%d" % i)[2] == b"real"
    wait_for(lambda: all(len(r.requests) == 3 for r in m.mirrors), "three copies each")
    # Each copy goes on a connection of its own: they may arrive in any order.
    assert (sorted(spanless(r) for r in m.mirrors[0].requests)
            == sorted(spanless(r) for r in m.mirrors[1].requests)
            == sorted(spanless(shadow(r)) for r in m.real.requests))
    assert m.stats()["http_mirrored"] == 6


@pytest.mark.parametrize("fraction, n, low, high", [
    ((1, 4), 400, 57, 143),             # binomial(400, 1/4): mean 100, sd 8.7; ±5 sd
    ((0, 100), 50, 0, 0),
    ((100, 100), 50, 50, 50),
])
def test_a_fraction_of_the_requests_is_mirrored(mirrored: Callable[..., Mirrored],
                                                fraction: tuple[int, int], n: int, low: int,
                                                high: int) -> None:
    m = mirrored(Recorder(MIRROR_ANSWER))
    m.route([fraction])
    conn = m.mesh.http()
    for i in range(n):
        assert request(conn, f"/{i}")[2] == b"real"
    wait_for(lambda: len(m.mirrors[0].requests) == m.stats()["http_mirrored"], "copies in")
    assert low <= len(m.mirrors[0].requests) <= high
    assert m.stats()["http_mirror_dropped"] == 0


def test_bad_mirror_input_is_refused(mirrored: Callable[..., Mirrored]) -> None:
    m = mirrored(Recorder(MIRROR_ANSWER))
    t = m.table
    rule = t.add_route_rule("demo/r#0", [(m.ix["rec"], 1)])
    with pytest.raises(ValueError, match="no rule"):
        t.add_route_mirror(rule + 1, m.ix["mirror0"])
    with pytest.raises(ValueError, match="no mirror service"):
        t.add_route_mirror(rule, 99)
    for num, den in ((1, 0), (5, 4), (-1, 10)):
        with pytest.raises(ValueError, match="fraction"):
            t.add_route_mirror(rule, m.ix["mirror0"], num, den)
    for _ in range(4):
        t.add_route_mirror(rule, m.ix["mirror0"])
    with pytest.raises(ValueError, match="at most 4"):
        t.add_route_mirror(rule, m.ix["mirror0"])


def test_mirror_slots_and_counters_are_reported() -> None:
    e = fe.Engine(max_connections=16, buffer_bytes=4096)
    stats = e.stats()
    assert stats["mirror_slots"] == 2 and stats["buffers_total"] == 2 * (16 + 2)
    assert stats["http_mirrored"] == stats["http_mirror_dropped"] == stats["mirrors_active"] == 0


def test_a_rule_and_its_backend_variant_start_at_most_four_copies(
        mirrored: Callable[..., Mirrored]) -> None:
    """A backendRef with filters of its own makes a variant of its rule (add_route_rule),
    which mirrors as the rule does: mirrors added to the variant as well would make a
    request start more copies than a rule may have (and than a pair has slots for)."""
    m = mirrored(*(Recorder(MIRROR_ANSWER) for _ in range(4)))
    t = m.table
    rule = t.add_route_rule("demo/r#0", [(m.ix["rec"], 1, {"add": [("x-variant", "1")]}, None)])
    variant = rule + 1
    for i in range(4):
        t.add_route_mirror(rule, m.ix[f"mirror{i}"])
    with pytest.raises(ValueError, match="at most 4"):
        t.add_route_mirror(variant, m.ix["mirror0"])
    other = t.add_route_rule("demo/r#1", [(m.ix["rec"], 1, {"add": [("x-variant", "2")]}, None)])
    t.add_route_mirror(other + 1, m.ix["mirror0"])      # its variant first, then the rule
    for i in range(3):
        t.add_route_mirror(other, m.ix[f"mirror{i}"])
    with pytest.raises(ValueError, match="at most 4"):
        t.add_route_mirror(other, m.ix["mirror3"])
    s = t.add_route_set(m.ix["backend"])
    t.add_route_match(s, rule)
    m.mesh.out_node.install(t)
    conn = m.mesh.http()
    for i in range(3):
        assert request(conn, f"/{i}", method="POST", body=b"v%d" % i)[2] == b"real"
    # Four copies of each of three requests: each reached its mirror or was given up
    # (a slow machine may drop one: the bound, not delivery, is what is tested here).
    wait_for(lambda: sum(len(r.requests) for r in m.mirrors)
             + m.stats()["http_mirror_dropped"] == 12, "twelve copies")
    assert all(len(r.requests) <= 3 for r in m.mirrors), [len(r.requests) for r in m.mirrors]
    assert all(b"\r\nx-variant: 1\r\n" in r for r in m.mirrors[0].requests)


def test_a_copy_tells_the_mirror_its_client_s_address(mirrored: Callable[..., Mirrored]) -> None:
    """The copy's ClientHello says the client's address, as the real request's does
    (caller_ext.pxi), not the node's own: both upstreams are the client's at the
    destination."""
    m = mirrored(Recorder(MIRROR_ANSWER))
    m.route()
    assert request(m.mesh.http("127.0.0.2"), "/p")[::2] == (200, b"real")
    wait_for(lambda: m.stats()["http_mirrored"] == 1, "the copy sent")
    wait_for(lambda: m.mesh.in_node.engine.inbound_callers() == {"127.0.0.2": 2},
             "the real request's upstream and the copy's, both the client's")
