"""Tests for fastpath.engine's route retries (retry.pxi, Gateway API GEP-1731): a rule's
`retry` tries a request again on the codes it lists and on connections that fail before
answering, after a backoff, within a retry budget (test_engine_retry_budget); the replay is the bytes the failed
try was sent; the failed tries' answers never reach the client; timeouts.request spans
the tries and backendRequest bounds each.

The two-node mesh of test_engine_routes (the caller's node routes "backend" to v1; the
app's node serves it), v1's app a raw one that answers each request as its query says:
the first `n` tries of a target get `code` (0: the connection closed without an answer)
or, on /slow, an answer `ms` late; later tries get 200. Every try's bytes and arrival
time are kept.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from enginekit import TIMEOUT_S, port_of, wait_for
from test_engine_header_holes import read_request
from test_engine_http import RawApp
from test_engine_routes import BACKEND_ID, Mesh, mesh, mesh_pki, request  # noqa: F401
from test_engine_routes_attack import exchange, one_rule, v1_is

pytestmark = pytest.mark.timeout(60)

FAST = {"backoff_s": 0.005}     # retries in tests wait no longer than they must


@dataclass
class FlakyApp:
    """v1's app: fails the first tries of each target as its query asks (see the module)."""
    tries: dict[bytes, list[tuple[float, bytes]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    raw: RawApp | None = None

    def serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            got = read_request(conn, buf)
            target = got.split(b" ")[1]
            path, _, query = target.partition(b"?")
            q = dict(p.split(b"=", 1) for p in query.split(b"&") if b"=" in p)
            with self.lock:
                self.tries[target].append((time.monotonic(), got))
                k = len(self.tries[target])
            if k <= int(q.get(b"n", b"0")):
                if path == b"/slow":
                    time.sleep(int(q[b"ms"]) / 1000)
                elif int(q.get(b"code", b"500")) == 0:
                    return                  # closed without an answer
                else:
                    body = b"try %d failed" % k
                    conn.sendall(b"HTTP/1.1 %s Failed\r\nContent-Length: %d\r\n\r\n%s"
                                 % (q.get(b"code", b"500"), len(body), body))
                    continue
            body = b"try %d ok" % k
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def count(self, target: str) -> int:
        with self.lock:
            return len(self.tries[target.encode()])

    def raws(self, target: str) -> list[bytes]:
        with self.lock:
            return [raw for _, raw in self.tries[target.encode()]]

    def times(self, target: str) -> list[float]:
        with self.lock:
            return [at for at, _ in self.tries[target.encode()]]


@pytest.fixture
def app(mesh: Mesh) -> Iterator[FlakyApp]:  # noqa: F811
    a = FlakyApp()
    a.raw = v1_is(mesh, a.serve)
    yield a
    a.raw.close()


def get(m: Mesh, path: str, **kw: Any) -> tuple[int, bytes]:
    status, _, body = request(m.http(), path, **kw)
    return status, body


# --- what is retried ---------------------------------------------------------------------------


def test_a_listed_code_is_retried_until_an_answer_passes(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, retry={"attempts": 3, "codes": [500], **FAST})
    assert get(mesh, "/fail?code=500&n=2") == (200, b"try 3 ok")
    assert app.count("/fail?code=500&n=2") == 3
    assert get(mesh, "/fail?code=500&n=4") == (500, b"try 4 failed")  # the last try's, as it came
    assert app.count("/fail?code=500&n=4") == 4
    assert get(mesh, "/fail?code=503&n=1") == (503, b"try 1 failed")  # not listed: not retried
    assert app.count("/fail?code=503&n=1") == 1
    assert mesh.out_node.stats()["route_retries"] == 5


def test_the_failed_answers_never_reach_the_client(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, retry={"attempts": 2, "codes": [502, 503], **FAST})
    answers = exchange(mesh, b"GET /fail?code=502&n=2 HTTP/1.1\r\nHost: backend\r\n"
                             b"Connection: close\r\n\r\n")
    assert answers.count(b"HTTP/1.1 ") == 1 and answers.endswith(b"\r\n\r\ntry 3 ok"), answers
    assert b"failed" not in answers


def test_an_app_closing_before_answering_is_retried_without_codes(
        mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """Behind the app's node, the app's connection error is that node's 502 for it, which
    says so (x-meshnode-failure): the caller's node retries it as a connection error. A
    502 of the app's own is an answer like any other: not retried unless listed."""
    one_rule(mesh, retry={"attempts": 1, **FAST})
    assert get(mesh, "/fail?code=0&n=1") == (200, b"try 2 ok")
    assert app.count("/fail?code=0&n=1") == 2
    assert get(mesh, "/fail?code=502&n=1") == (502, b"try 1 failed")
    assert app.count("/fail?code=502&n=1") == 1


def test_attempts_bound_the_tries_on_pooled_upstreams_too(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """A request its route retries is not also sent again as a pooled upstream's
    keep-alive race: however its tries fail, the app sees 1 + attempts of them."""
    one_rule(mesh, retry={"attempts": 2, **FAST})
    # The upstream (and the app's connection behind it) is pooled once its client leaves.
    assert request(mesh.http(), "/warm", headers={"Connection": "close"})[0] == 200
    mesh.out_node.wait_stat("http_upstream_pooled")
    assert request(mesh.http(), "/fail?code=0&n=9")[0] == 502
    assert app.count("/fail?code=0&n=9") == 3
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 2 and stats["http_upstream_retried"] == 0


def test_an_endpoint_refusing_connections_is_retried_without_codes(mesh: Mesh) -> None:  # noqa: F811
    """A connection error on the caller's node's own hop is retried whatever the codes:
    every try's connect is refused, and after the last the client gets 503."""
    dead = socket.create_server(("127.0.0.1", 0))
    port = port_of(dead)
    dead.close()
    t, ix = mesh.outbound()
    gone = t.add_service("demo/gone:http", "http.gone.demo.svc", [BACKEND_ID],
                         [("127.0.0.1", port)])
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(gone, 1)],
                                          retry={"attempts": 2, **FAST}))
    mesh.out_node.install(t)
    assert get(mesh, "/")[0] == 503
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 2 and stats["outbound_connect_failures"] == 3


def test_no_retry_policy_no_retry(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh)
    assert get(mesh, "/fail?code=500&n=1") == (500, b"try 1 failed")
    assert app.count("/fail?code=500&n=1") == 1
    assert mesh.out_node.stats()["route_retries"] == 0


# --- what is sent again ------------------------------------------------------------------------


def test_a_post_body_and_added_fields_are_replayed_byte_for_byte(
        mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """The replay is the bytes the failed try was sent: the rule's added line once, the
    body whole (a rule that adds lines was not retried at all before)."""
    one_rule(mesh, retry={"attempts": 2, "codes": [503], **FAST},
             request_headers={"add": [("X-Added", "once")]})
    body = os.urandom(10_000)
    assert get(mesh, "/fail?code=503&n=1", method="POST", body=body) == (200, b"try 2 ok")
    # (The app's node opens a span per try it receives: its traceparent names each.)
    first, second = (re.sub(rb"(traceparent: 00-[0-9a-f]{32}-)[0-9a-f]{16}", rb"\1span", raw)
                     for raw in app.raws("/fail?code=503&n=1"))
    assert first == second
    assert first.lower().count(b"\r\nx-added: once\r\n") == 1 and first.endswith(body)


def test_a_body_over_the_replay_limit_is_not_retried(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, retry={"attempts": 2, "codes": [503], **FAST})
    body = b"x" * 100_000                   # over Engine(replay_max_bytes=) 64 KiB
    assert get(mesh, "/fail?code=503&n=1", method="POST", body=body) == (503, b"try 1 failed")
    assert app.count("/fail?code=503&n=1") == 1
    assert app.raws("/fail?code=503&n=1")[0].endswith(body)
    assert mesh.out_node.stats()["route_retries"] == 0


def test_requests_pipelined_behind_a_kept_one_wait_and_go_once(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """A request a retry may send again is the only one in flight: the POST behind it is
    sent after its answer passed, once."""
    one_rule(mesh, retry={"attempts": 1, "codes": [500], **FAST})
    answers = exchange(mesh, b"GET /fail?code=500&n=1 HTTP/1.1\r\nHost: backend\r\n\r\n"
                             b"POST /after HTTP/1.1\r\nHost: backend\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\nhi")
    assert answers.count(b"HTTP/1.1 200 ") == 2 and b"try 2 ok" in answers, answers
    assert answers.endswith(b"try 1 ok")
    assert app.count("/fail?code=500&n=1") == 2 and app.count("/after") == 1
    assert app.times("/after")[0] > app.times("/fail?code=500&n=1")[1]


# --- when ------------------------------------------------------------------------------------


def test_tries_are_spaced_by_at_least_the_backoff_doubling(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, retry={"attempts": 2, "codes": [500], "backoff_s": 0.1})
    assert get(mesh, "/fail?code=500&n=2") == (200, b"try 3 ok")
    t0, t1, t2 = app.times("/fail?code=500&n=2")
    assert t1 - t0 >= 0.1 and t2 - t1 >= 0.2


def test_a_try_over_backend_request_is_retried(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, backend_timeout_s=0.3, retry={"attempts": 1, **FAST})
    assert get(mesh, "/slow?ms=2000&n=1") == (200, b"try 2 ok")
    assert app.count("/slow?ms=2000&n=1") == 2


def test_the_request_timeout_spans_every_try(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, timeout_s=0.6, backend_timeout_s=0.25, retry={"attempts": 9, **FAST})
    status, body = get(mesh, "/slow?ms=3000&n=99")
    assert status == 504 and b"timeout" in body
    assert 2 <= app.count("/slow?ms=3000&n=99") <= 3
    assert mesh.out_node.stats()["route_timeouts"] == 1


def test_a_backoff_past_the_request_timeout_ends_in_504_then(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """GEP-1731: when timeouts.request comes during a retry's backoff, the client gets a
    timeout error then, not the failed answer and not a late try."""
    one_rule(mesh, timeout_s=0.3, retry={"attempts": 1, "codes": [500], "backoff_s": 2.0})
    status, body = get(mesh, "/fail?code=500&n=1")
    assert status == 504 and b"timeout" in body
    assert app.count("/fail?code=500&n=1") == 1
    stats = mesh.out_node.stats()
    assert stats["route_retries"] == 1 and stats["route_timeouts"] == 1


# --- arguments and clean-up -------------------------------------------------------------------


def test_retry_arguments_are_checked(mesh: Mesh) -> None:  # noqa: F811
    t, ix = mesh.outbound()
    for bad in ({"attempts": 0}, {"codes": [200]}, {"codes": [600]}, {"backoff_s": -1},
                {"tries": 2}):
        with pytest.raises(ValueError):
            t.add_route_rule("demo/r#0", [(ix["v1"], 1)], retry=bad)


def test_a_client_gone_during_the_backoff_costs_nothing(mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    one_rule(mesh, retry={"attempts": 1, "codes": [500], "backoff_s": 0.3})
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    c.sendall(b"GET /fail?code=500&n=1 HTTP/1.1\r\nHost: backend\r\n\r\n")
    deadline = time.monotonic() + TIMEOUT_S
    while app.count("/fail?code=500&n=1") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    c.close()
    mesh.out_node.wait_stat("route_retries")
    mesh.out_node.wait_stat("outbound_connections_closed")
    deadline = time.monotonic() + TIMEOUT_S
    while mesh.out_node.stats()["outbound_connections_active"] and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = mesh.out_node.stats()
    assert stats["outbound_connections_active"] == 0 and stats["buffers_in_use"] == 0


def _aborting(mesh: Mesh, app: FlakyApp, target: str, backoff_s: float) -> socket.socket:  # noqa: F811
    """A client whose request's first try failed: it waits out a `backoff_s` backoff."""
    one_rule(mesh, retry={"attempts": 1, "codes": [500], "backoff_s": backoff_s})
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    c.sendall(b"GET %s HTTP/1.1\r\nHost: backend\r\n\r\n" % target.encode())
    mesh.out_node.wait_stat("route_retries")
    return c


def test_a_client_that_resets_during_the_backoff_ends_its_request(
        mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """Nobody is there to answer: the kept request is not sent again, the pair ends at
    once (not at the backoff's end), counted as a client gone mid-request."""
    target = "/fail?code=500&n=1&reset"
    c = _aborting(mesh, app, target, backoff_s=0.8)
    aborted = mesh.out_node.stats()["outbound_aborted"]
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()                                       # SO_LINGER 0: a reset
    left = time.monotonic()
    deadline = left + TIMEOUT_S
    while mesh.out_node.stats()["outbound_connections_active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.monotonic() - left < 0.4            # well before the backoff's end
    time.sleep(max(0.0, left + 1.0 - time.monotonic()))    # past it: no second try
    assert app.count(target) == 1
    stats = mesh.out_node.stats()
    assert stats["outbound_connections_active"] == 0 and stats["buffers_in_use"] == 0
    assert stats["outbound_aborted"] == aborted + 1
    codes = [r["codes"] for r in mesh.out_node.engine.request_stats() if r["route"] == "demo/r"]
    assert codes == [{0: 1}]                        # no answer reached anybody


def test_a_client_that_reset_before_the_backoff_ends_its_request_as_it_begins(
        mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """A client that half-closed after its request, then reset while the try was under
    way: its side is no longer read, so the reset's one event passed while the try went
    on, and none comes during the backoff. The pair still ends as the backoff begins,
    not at its end, and the request is not sent again."""
    target = "/slow?ms=2000&n=1"
    one_rule(mesh, backend_timeout_s=0.5, retry={"attempts": 1, "backoff_s": 0.8})
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    c.sendall(b"GET %s HTTP/1.1\r\nHost: backend\r\n\r\n" % target.encode())
    c.shutdown(socket.SHUT_WR)
    wait_for(lambda: app.count(target) == 1, what="the first try at the app")
    aborted = mesh.out_node.stats()["outbound_aborted"]
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()                                       # SO_LINGER 0: a reset, before the backoff
    mesh.out_node.wait_stat("route_retries")
    began = time.monotonic()
    wait_for(lambda: not mesh.out_node.stats()["outbound_connections_active"],
             what="the pair closed")
    assert time.monotonic() - began < 0.4           # well before the backoff's end
    time.sleep(max(0.0, began + 1.0 - time.monotonic()))   # past it: no second try
    assert app.count(target) == 1
    stats = mesh.out_node.stats()
    assert stats["buffers_in_use"] == 0 and stats["outbound_aborted"] == aborted + 1
    codes = [r["codes"] for r in mesh.out_node.engine.request_stats() if r["route"] == "demo/r"]
    assert codes == [{0: 1}]                        # no answer reached anybody


def test_a_client_that_half_closes_during_the_backoff_gets_its_answer(
        mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """FIN after a whole request (HTTP/1.0 clients, `nc -q`) is no abort: the retry is
    made and its answer sent."""
    target = "/fail?code=500&n=1&halfclose"
    c = _aborting(mesh, app, target, backoff_s=0.3)
    with c:
        c.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            answer += chunk
            if answer.endswith(b"try 2 ok"):
                break
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"try 2 ok"), answer
    assert app.count(target) == 2


# --- x-meshnode-failure is the nodes' own ----------------------------------------------------


def _answers_with(head: bytes, fail_first: bool = False):
    """v1's serve(): each request answered by `head` (a response head without its final
    CRLF, an empty body). `fail_first`: the first connection closes unanswered."""
    seen: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            seen.append(read_request(conn, buf))
            if fail_first and len(seen) == 1:
                return
            conn.sendall(head + b"Content-Length: 0\r\n\r\n")
    return serve, seen


def test_an_apps_own_failure_field_is_no_connection_error_and_never_reaches_the_client(
        mesh: Mesh) -> None:  # noqa: F811
    """An app that sends x-meshnode-failure itself gets no retry a 502 of its own would
    not get (the rule retries no codes), and the field reaches no client: the app's
    node takes it out of what the app answers."""
    serve, seen = _answers_with(b"HTTP/1.1 502 Bad Gateway\r\nX-Meshnode-Failure: upstream\r\n"
                                b"x_meshnode_failure: upstream\r\nX-Other: 1\r\n")
    raw = v1_is(mesh, serve)
    try:
        one_rule(mesh, retry={"attempts": 2, **FAST})
        answer = exchange(mesh, b"GET /forged HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    finally:
        raw.close()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"\r\nX-Other: 1\r\n" in answer
    assert b"meshnode" not in answer.lower() and b"meshnode_failure" not in answer.lower(), answer
    assert len(seen) == 1 and mesh.out_node.stats()["route_retries"] == 0


def test_the_nodes_failure_field_is_read_then_taken_out(mesh: Mesh) -> None:  # noqa: F811
    """The app's node's 502 for an app that failed says so to the caller's node, which
    retries it as the connection error it was; the client sees neither the field nor, when
    no retry follows, anything but the 502."""
    serve, seen = _answers_with(b"HTTP/1.1 200 OK\r\nX-Meshnode-Failure: upstream\r\n",
                                fail_first=True)
    raw = v1_is(mesh, serve)
    try:
        one_rule(mesh, retry={"attempts": 1, **FAST})
        retried = exchange(mesh, b"GET /a HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        one_rule(mesh)
        seen.clear()
        failed = exchange(mesh, b"GET /b HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    finally:
        raw.close()
    assert retried.startswith(b"HTTP/1.1 200 OK\r\n"), retried
    assert failed.startswith(b"HTTP/1.1 502 "), failed
    for answer in (retried, failed):
        assert b"meshnode" not in answer.lower(), answer
    assert mesh.out_node.stats()["route_retries"] == 1


# --- x-envoy-overloaded: an overloaded server's answer is not retried -------------------------


@pytest.mark.parametrize("field, tries", [
    (b"x-envoy-overloaded: true", 1), (b"X-Envoy-Overloaded: anything", 1),
    (b"x-envoy-overloaded:", 1), (b"x-envoy-overloaded-not: true", 3)])
def test_an_answer_that_says_overloaded_is_not_retried_and_reaches_the_client(
        mesh: Mesh, field: bytes, tries: int) -> None:  # noqa: F811
    """As Envoy's router: a code the rule retries, answered with x-envoy-overloaded (any
    value, any case; a node's overload writes it on its 503, and an app may say so
    too), is the client's answer, the field with it. Another field is no such word."""
    serve, seen = _answers_with(b"HTTP/1.1 503 Service Unavailable\r\n%s\r\n" % field)
    raw = v1_is(mesh, serve)
    try:
        one_rule(mesh, retry={"attempts": 2, "codes": [503], **FAST})
        answer = exchange(mesh, b"GET /o HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    finally:
        raw.close()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"\r\n%s\r\n" % field in answer, answer
    assert len(seen) == tries and mesh.out_node.stats()["route_retries"] == tries - 1


class FakeNode:
    """A TLS server with the backend's identity standing in for the app's node: answers
    every request with `head` (no body), counting them."""

    def __init__(self, m: Mesh, tmp: Any, head: bytes) -> None:  # noqa: F811
        (tmp / "chain.pem").write_bytes(m.pki.backend.chain_pem)
        (tmp / "key.pem").write_bytes(m.pki.backend.key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.head = head
        self.requests = 0
        self.raw = RawApp(self._serve)
        self.port = self.raw.port

    def _serve(self, conn: socket.socket) -> None:
        with self.ctx.wrap_socket(conn, server_side=True) as t:     # (errors: RawApp's)
            buf = bytearray()
            while True:
                read_request(t, buf)
                self.requests += 1
                t.sendall(self.head + b"Content-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.raw.close()


@pytest.mark.parametrize("value, retried", [
    (b"upstream", True), (b"Upstream", False), (b"upstream2", False), (b"", False),
    (b"upstream, upstream", False)])
def test_only_the_exact_failure_value_is_read(mesh: Mesh, tmp_path: Any, value: bytes,  # noqa: F811
                                              retried: bool) -> None:
    """The caller's node takes a 502 for a connection error only when its failure field
    says exactly `upstream` (as the app's node writes it); any other is an answer, not
    retried without its code, and the field never reaches the client."""
    fake = FakeNode(mesh, tmp_path, b"HTTP/1.1 502 Bad Gateway\r\nx-meshnode-failure: %s\r\n" % value)
    try:
        t, ix = mesh.outbound()
        node = t.add_service("demo/fake:http", "http.fake.demo.svc", [BACKEND_ID],
                             [("127.0.0.1", fake.port)])
        s = t.add_route_set(ix["backend"])
        t.add_route_match(s, t.add_route_rule("demo/r#0", [(node, 1)],
                                              retry={"attempts": 1, **FAST}))
        mesh.out_node.install(t)
        answer = exchange(mesh, b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    finally:
        fake.close()
    assert answer.startswith(b"HTTP/1.1 502 ") and b"meshnode" not in answer.lower(), answer
    assert fake.requests == (2 if retried else 1)


@pytest.mark.parametrize("side", ["request_headers", "response_headers"])
@pytest.mark.parametrize("op", ["set", "add", "remove"])
def test_route_filters_may_not_write_the_failure_field(mesh: Mesh, side: str, op: str) -> None:  # noqa: F811
    t, ix = mesh.outbound()
    edit = {op: ["X-Meshnode-Failure"] if op == "remove" else [("X-Meshnode-Failure", "upstream")]}
    with pytest.raises(ValueError, match="may not be edited"):
        t.add_route_rule("demo/r#0", [(ix["v1"], 1)], **{side: edit})


def test_the_engines_own_500_502_and_504_are_not_counted_as_bad_requests(
        mesh: Mesh, app: FlakyApp) -> None:  # noqa: F811
    """A route timeout (504), a rule without a valid backend (500) and an app that failed
    (502) are counted by what they are, not as requests that were bad."""
    one_rule(mesh, timeout_s=0.2)
    assert get(mesh, "/slow?ms=1000&n=1")[0] == 504
    assert get(mesh, "/fail?code=0&n=1")[0] == 502
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/none#0", [(-1, 1)]))
    mesh.out_node.install(t)
    assert get(mesh, "/")[0] == 500
    stats = mesh.out_node.stats()
    assert stats["route_timeouts"] == 1 and stats["route_no_backend"] == 1
    assert stats["http_bad_request"] == 0
