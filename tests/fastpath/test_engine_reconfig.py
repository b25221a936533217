"""Tests for a config push reaching connections that are already open (issue 9 §2,
Envoy's rule): every HTTP request is routed on the route table current when its head is
framed; an upstream (pooled or in use) to an endpoint that left the table takes no new
request and is closed once idle; an inbound pair whose app address changed takes its
next request to the new address; an opaque TCP pair whose destination left is closed
after the table's drain period; a push that changes nothing a pair uses leaves it alone
(no reset, no new handshake).

Real engines on threads, real sockets and mutual TLS, as in test_engine_http.py (whose
PKI and engine runner these use): a client's node (the HTTP outbound listener) and two
backend nodes, A and B, each an inbound mTLS listener in front of an HTTP app that names
itself in every answer ("a /path", "b /path"). A client's connection is a raw socket
kept open across the push, so "the same connection" is never a library's reconnect.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls

from enginekit import TIMEOUT_S, listener, port_of, wait_for
from test_engine import App as EchoApp
from test_engine import client_ctx as tcp_client_ctx
from test_engine import recv_exact
from test_engine import server_ctx as tcp_server_ctx
from test_engine_http import (BACKEND_ID, OTHER_SNI, PKI, SNI, Node, client_ctx,  # noqa: F401
                              mesh_pki, server_ctx)

pytestmark = pytest.mark.timeout(60)

UNRELATED_SNI = "http.unrelated.demo.svc"
# How long an engine may take to close what a push made useless (an idle upstream of a
# departed endpoint, an app connection of a moved app): the swap itself does it, so a
# second is ample even on a loaded machine, and short enough to fail fast.
CLOSE_WITHIN_S = 3.0
DRAIN_S = 1.0
DRAIN_SLACK_S = 1.5     # the timer wheel's tick and a loaded machine


# --- apps that say who they are ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(TIMEOUT_S * 3)

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        app = self.server.app
        app.count()
        if self.path == "/hold":        # answered once the test lets it go
            app.holding.set()
            app.release.wait(TIMEOUT_S)
        body = f"{app.name} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Peer-Port", str(self.client_address[1]))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: "NamedApp"

    def process_request(self, request: Any, client_address: Any) -> None:
        self.app.opened()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.app.closed()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass        # an engine closing an app connection is what some tests ask for


class NamedApp:
    """An HTTP/1.1 app on loopback answering GET PATH with b"<name> PATH\\n" and the port
    of the connection it came on (X-Peer-Port); counts requests and open connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.accepted = 0
        self.open = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.app = self
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    def opened(self) -> None:
        with self._lock:
            self.accepted += 1
            self.open += 1

    def closed(self) -> None:
        with self._lock:
            self.open -= 1

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# --- a keep-alive client on one socket --------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One TCP connection to the HTTP outbound listener, kept open: each request goes on
    it, and an answer is read off it framed by its Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.rfile = self.sock.makefile("rb")

    def send(self, path: str, host: str = "backend") -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    def answer(self) -> Answer:
        line = self.rfile.readline(8192)
        if not line:
            raise AssertionError("the engine closed the client's connection")
        status = int(line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := self.rfile.readline(8192)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", "0")))
        return Answer(status, headers, body)

    def get(self, path: str, host: str = "backend") -> Answer:
        self.send(path, host)
        return self.answer()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def from_app(answer: Answer, name: str, path: str) -> bool:
    return answer.status == 200 and answer.body == f"{name} {path}\n".encode()


# --- the rig: client's node → backend node A or B → app a or b --------------------------------


@dataclass
class Rig:
    pki: PKI
    out_node: Node
    node_a: Node
    node_b: Node
    app_a: NamedApp
    app_b: NamedApp
    http_sock: socket.socket
    sock_a: socket.socket
    sock_b: socket.socket
    # One context per side for the whole test, as a worker keeps them across pushes
    # while the certificates stay: a new one would be a new identity to present.
    out_ctx: tls.TLSContext
    srv_ctx_a: tls.TLSContext
    srv_ctx_b: tls.TLSContext
    clients: list[Client] = field(default_factory=list)

    @property
    def port_a(self) -> int:
        return port_of(self.sock_a)

    @property
    def port_b(self) -> int:
        return port_of(self.sock_b)

    def outbound_table(self, backend: list[int] | None, unrelated: bool = False
                       ) -> fe.RouteTable:
        """Host "backend" → service backend on the nodes listening on `backend` (None:
        the service is deleted); host "other" → service other on node B; `unrelated`:
        host "unrelated" → a service of its own on node A too."""
        t = fe.RouteTable()
        t.set_outbound_http(self.http_sock.fileno(), self.out_ctx)
        if backend is not None:
            svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID],
                                [("127.0.0.1", p) for p in backend])
            t.add_host("backend", svc, 80)
        other = t.add_service("demo/other:http", OTHER_SNI, [BACKEND_ID],
                              [("127.0.0.1", self.port_b)])
        t.add_host("other", other, 80)
        if unrelated:
            svc = t.add_service("demo/unrelated:http", UNRELATED_SNI, [BACKEND_ID],
                                [("127.0.0.1", self.port_a)])
            t.add_host("unrelated", svc, 80)
        return t

    def inbound_table(self, sock: socket.socket, ctx: tls.TLSContext, app_port: int,
                      unrelated: bool = False) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_inbound(sock.fileno())
        t.add_inbound_route(SNI, ctx, "127.0.0.1", app_port,
                            service="demo/backend:http", identity=BACKEND_ID)
        t.add_inbound_route(OTHER_SNI, ctx, "127.0.0.1", app_port)
        if unrelated:
            t.add_inbound_route(UNRELATED_SNI, ctx, "127.0.0.1", app_port)
        return t

    def table_a(self, app_port: int | None = None, unrelated: bool = False) -> fe.RouteTable:
        return self.inbound_table(self.sock_a, self.srv_ctx_a, app_port or self.app_a.port,
                                  unrelated)

    def client(self) -> Client:
        c = Client(port_of(self.http_sock))
        self.clients.append(c)
        return c


@pytest.fixture
def rig(mesh_pki: PKI) -> Iterator[Rig]:
    r = Rig(mesh_pki, Node(), Node(), Node(), NamedApp("a"), NamedApp("b"),
            listener(), listener(), listener(),
            client_ctx(mesh_pki), server_ctx(mesh_pki), server_ctx(mesh_pki))
    r.node_a.install(r.table_a())
    r.node_b.install(r.inbound_table(r.sock_b, r.srv_ctx_b, r.app_b.port))
    r.out_node.install(r.outbound_table([r.port_a]))
    yield r
    for c in r.clients:
        c.close()
    for node in (r.out_node, r.node_a, r.node_b):
        node.stop()
    r.app_a.close()
    r.app_b.close()
    for s in (r.http_sock, r.sock_a, r.sock_b):
        s.close()


def active_in(node: Node) -> int:
    return node.stats()["inbound_connections_active"]


# --- HTTP: each request on the table current when its head is framed --------------------------


def test_a_keep_alive_clients_next_request_goes_to_the_endpoint_of_the_new_table(
        rig: Rig) -> None:
    c = rig.client()
    assert from_app(c.get("/1"), "a", "/1")
    rig.out_node.install(rig.outbound_table([rig.port_b]))    # backend moved to node B
    answer = c.get("/2")
    assert from_app(answer, "b", "/2"), answer      # today: "a /2", on the old table
    assert "connection" not in answer.headers       # and the client's connection goes on
    assert from_app(c.get("/3"), "b", "/3")
    # The upstream to A left the table: closed once idle, and A's app got nothing more.
    wait_for(lambda: active_in(rig.node_a) == 0, CLOSE_WITHIN_S, "the upstream to A closed")
    assert rig.app_a.requests == 1
    assert rig.out_node.stats()["outbound_connections_opened"] == 1


def test_a_request_in_flight_finishes_where_it_went_and_the_next_one_follows_the_push(
        rig: Rig) -> None:
    c = rig.client()
    c.send("/hold")
    assert rig.app_a.holding.wait(TIMEOUT_S), "the request did not reach app a"
    rig.out_node.install(rig.outbound_table([rig.port_b]))
    rig.app_a.release.set()
    assert from_app(c.answer(), "a", "/hold")       # routed on the old table: finished there
    answer = c.get("/after")
    assert from_app(answer, "b", "/after"), answer  # its head framed on the new table
    wait_for(lambda: active_in(rig.node_a) == 0, CLOSE_WITHIN_S,
             "the upstream to A closed once its answer was through")


@pytest.mark.parametrize("client", ["keep-alive", "new connection per request"])
def test_the_inbound_side_takes_the_next_request_to_the_apps_new_address(
        rig: Rig, client: str) -> None:
    """Node A's app moved from app a's port to app b's (same service, same SNI). The
    client's node sees no change: its upstream to A (in use on a keep-alive client
    connection, or pooled between new ones) is right and is kept; the inbound pair on A
    carries the next request to the new address."""
    first = rig.client()
    assert from_app(first.get("/1"), "a", "/1")
    if client != "keep-alive":
        first.close()
        wait_for(lambda: rig.out_node.stats()["http_upstream_pooled"] == 1, TIMEOUT_S,
                 "the upstream pooled")
    rig.node_a.install(rig.table_a(app_port=rig.app_b.port))
    c = first if client == "keep-alive" else rig.client()
    answer = c.get("/2")
    assert from_app(answer, "b", "/2"), answer      # today: "a /2", piped to the old port
    assert from_app(c.get("/3"), "b", "/3")
    # One mutual-TLS connection between the nodes carried all of it.
    assert rig.out_node.stats()["outbound_tls_handshakes"] == 1
    assert rig.node_a.stats()["inbound_tls_handshakes"] == 1
    assert rig.node_a.stats()["inbound_connections_opened"] == 1
    # The connection to the old app address is closed.
    wait_for(lambda: rig.app_a.open == 0, CLOSE_WITHIN_S, "node A's connection to app a closed")
    assert rig.app_a.requests == 1


def test_a_pooled_upstream_to_an_endpoint_that_left_takes_no_request_and_is_closed(
        rig: Rig) -> None:
    """The client's connection asks backend (an upstream to A), then other (on B): the
    upstream to A goes to the pool. A push moves backend to B; the pooled upstream to A
    is closed (the client's connection, still open, began on the old table), and the
    client's next request for backend goes to B, not to the pooled upstream."""
    c = rig.client()
    assert from_app(c.get("/1"), "a", "/1")
    assert from_app(c.get("/2", host="other"), "b", "/2")
    before = rig.out_node.stats()
    assert before["http_upstream_pooled"] == 1
    rig.out_node.install(rig.outbound_table([rig.port_b]))
    wait_for(lambda: active_in(rig.node_a) == 0, CLOSE_WITHIN_S,
             "the pooled upstream to A closed")      # today: kept with the old table
    answer = c.get("/3")
    assert from_app(answer, "b", "/3"), answer
    after = rig.out_node.stats()
    assert after["http_upstream_reused"] == before["http_upstream_reused"]
    assert rig.app_a.requests == 1
    assert rig.node_a.stats()["inbound_connections_opened"] == 1


def test_a_deleted_services_next_request_on_an_open_connection_is_404(rig: Rig) -> None:
    c = rig.client()
    assert from_app(c.get("/1"), "a", "/1")
    rig.out_node.install(rig.outbound_table(None))            # service backend deleted
    answer = c.get("/2")
    assert (answer.status, answer.body) == (404, b'no route to host "backend"\n'), answer
    assert rig.app_a.requests == 1
    wait_for(lambda: active_in(rig.node_a) == 0, CLOSE_WITHIN_S, "the upstream to A closed")
    # What is still in the table is served, on a new connection.
    assert from_app(rig.client().get("/3", host="other"), "b", "/3")
    assert rig.out_node.stats()["http_no_route"] == 1


def test_when_the_last_service_goes_the_next_request_is_404_counted_for_no_service(
        rig: Rig) -> None:
    """A table with no service at all (the last one deleted): the keep-alive client's
    next request is routed on it and gets its 404. The pair's service index pointed
    into the old table; the answer was counted through it (a crash on a table with no
    services, seen as a worker's SIGSEGV in test_config_reach)."""
    c = rig.client()
    assert from_app(c.get("/1"), "a", "/1")
    empty = fe.RouteTable()
    empty.set_outbound_http(rig.http_sock.fileno(), rig.out_ctx)
    rig.out_node.install(empty)
    answer = c.get("/2")
    assert (answer.status, answer.body) == (404, b'no route to host "backend"\n'), answer
    by_service = {(r["direction"], r["service"]): r["codes"]
                  for r in rig.out_node.engine.request_stats()}
    assert by_service[("outbound", "")] == {404: 1}
    assert by_service[("outbound", "demo/backend:http")] == {200: 1}
    assert rig.out_node.engine.stats()["generation"] == rig.out_node.engine.generation


def test_a_caller_still_on_the_older_table_loses_no_request_when_the_service_leaves_a_node(
        rig: Rig) -> None:
    """Nodes, and a node's workers, take a push one after the other. Here node A has
    dropped the service (the workload stays, its app still runs) and the client's node
    has not yet: its next request on the open connection, routed to A as its table
    says, must not fail (no 503 from a new handshake A refuses, no 502 from a pair A
    ended under it); as Envoy drains a removed filter chain, A's open pair answers it.
    Seen through a real node (test_config_reach) as an odd 503 or 502 in a service's
    deletion under load: the node's two workers swap one after the other."""
    c = rig.client()
    assert from_app(c.get("/1"), "a", "/1")
    t = fe.RouteTable()                 # node A without service backend's route
    t.set_inbound(rig.sock_a.fileno())
    t.add_inbound_route(OTHER_SNI, rig.srv_ctx_a, "127.0.0.1", rig.app_a.port)
    rig.node_a.install(t)
    answer = c.get("/2")
    assert from_app(answer, "a", "/2"), answer  # at 35e83d8: 503 upstream unavailable


# --- a push that changes nothing a pair uses --------------------------------------------------


def test_a_push_that_changes_nothing_relevant_keeps_open_connections_and_handshakes(
        rig: Rig) -> None:
    """An unrelated service added on both sides (the most common push: somebody else's
    deployment): open keep-alive connections go on on the same upstream and the same
    app connection, with no new handshake, and pooled upstreams are reused."""
    c = rig.client()
    first = c.get("/1")
    assert from_app(first, "a", "/1")
    pooled = rig.client()
    assert from_app(pooled.get("/p1"), "a", "/p1")
    pooled.close()
    wait_for(lambda: rig.out_node.stats()["http_upstream_pooled"] == 1, TIMEOUT_S,
             "the second upstream pooled")
    out_before, a_before = rig.out_node.stats(), rig.node_a.stats()
    accepted_before = rig.app_a.accepted
    rig.node_a.install(rig.table_a(unrelated=True))
    rig.out_node.install(rig.outbound_table([rig.port_a], unrelated=True))
    for i in range(2, 6):
        answer = c.get(f"/{i}")
        assert from_app(answer, "a", f"/{i}"), answer
        assert answer.headers["x-peer-port"] == first.headers["x-peer-port"]
        assert "connection" not in answer.headers
    assert from_app(rig.client().get("/p2"), "a", "/p2")      # takes the pooled upstream
    out, a = rig.out_node.stats(), rig.node_a.stats()
    assert out["outbound_tls_handshakes"] == out_before["outbound_tls_handshakes"] == 2
    assert a["inbound_tls_handshakes"] == a_before["inbound_tls_handshakes"] == 2
    assert a["inbound_connections_opened"] == a_before["inbound_connections_opened"]
    assert out["http_upstream_reused"] == out_before["http_upstream_reused"] + 1
    assert rig.app_a.accepted == accepted_before == 2
    assert out["outbound_aborted"] == a["inbound_aborted"] == 0
    # And the new service is served (node A's new route).
    assert from_app(rig.client().get("/u", host="unrelated"), "a", "/u")


# --- opaque TCP: closed a drain period after its destination left -----------------------------


@dataclass
class TcpRig:
    out_node: Node
    in_node: Node
    app: EchoApp
    other_app: EchoApp
    leaving: socket.socket      # outbound listener of service "leaving"
    staying: socket.socket      # outbound listener of service "staying"
    in_sock: socket.socket
    out_ctx: tls.TLSContext
    srv_ctx: tls.TLSContext
    clients: list[socket.socket] = field(default_factory=list)

    def outbound_table(self, leaving_port: int) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_timeouts(5.0, 60.0, drain_s=DRAIN_S)
        inbound = ("127.0.0.1", port_of(self.in_sock))
        leaving = t.add_service("leaving", SNI, [BACKEND_ID], [("127.0.0.1", leaving_port)])
        staying = t.add_service("staying", OTHER_SNI, [BACKEND_ID], [inbound])
        t.add_outbound_tcp(self.leaving.fileno(), leaving, self.out_ctx)
        t.add_outbound_tcp(self.staying.fileno(), staying, self.out_ctx)
        return t

    def inbound_table(self, app_port: int) -> fe.RouteTable:
        """SNI (service "leaving") to `app_port`; OTHER_SNI ("staying") to the app."""
        t = fe.RouteTable()
        t.set_timeouts(5.0, 60.0, drain_s=DRAIN_S)
        t.set_inbound(self.in_sock.fileno())
        t.add_inbound_route(SNI, self.srv_ctx, "127.0.0.1", app_port)
        t.add_inbound_route(OTHER_SNI, self.srv_ctx, "127.0.0.1", self.app.port)
        return t

    def client(self, sock: socket.socket) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", port_of(sock)), timeout=TIMEOUT_S)
        self.clients.append(c)
        return c


@pytest.fixture
def tcp_rig(mesh_pki: PKI) -> Iterator[TcpRig]:
    r = TcpRig(Node(), Node(), EchoApp(), EchoApp(b"other"), listener(), listener(),
               listener(), tcp_client_ctx(mesh_pki), tcp_server_ctx(mesh_pki))
    r.in_node.install(r.inbound_table(r.app.port))
    r.out_node.install(r.outbound_table(port_of(r.in_sock)))
    yield r
    for c in r.clients:
        c.close()
    r.out_node.stop()
    r.in_node.stop()
    r.app.close()
    r.other_app.close()
    for s in (r.leaving, r.staying, r.in_sock):
        s.close()


def echoes(c: socket.socket, message: bytes) -> bool:
    c.sendall(message)
    return recv_exact(c, len(message)) == message


def ended(c: socket.socket, within_s: float) -> bool:
    """Whether the engine ends `c` (EOF or reset, nothing else sent) within `within_s`."""
    ready, _, _ = select.select([c], [], [], within_s)
    if not ready:
        return False
    try:
        return c.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("side", ["outbound", "inbound"])
def test_an_opaque_pair_whose_destination_left_is_closed_after_the_drain_period(
        tcp_rig: TcpRig, side: str) -> None:
    """outbound: service "leaving" gets another endpoint on the client's node;
    inbound: the backend node's route for its SNI gets another app. Either way its open
    relay goes on for the table's drain_s, then is closed; the relay of service
    "staying", whose destination did not change, stays open long after."""
    r = tcp_rig
    going, kept = r.client(r.leaving), r.client(r.staying)
    assert echoes(going, b"before the push")
    assert echoes(kept, b"before the push")
    if side == "outbound":
        with socket.socket() as s:          # a port nobody listens on: the new endpoint
            s.bind(("127.0.0.1", 0))
            gone = port_of(s)
        r.out_node.install(r.outbound_table(gone))
    else:
        r.in_node.install(r.inbound_table(r.other_app.port))
    pushed = time.monotonic()
    assert echoes(going, b"during the drain")       # not cut at the push
    assert ended(going, DRAIN_S + DRAIN_SLACK_S), \
        f"the relay to the departed destination still open {DRAIN_S + DRAIN_SLACK_S} s on"
    took = time.monotonic() - pushed
    assert took >= DRAIN_S * 0.8, f"closed {took:.2f} s after the push, before drain_s"
    # The other relay: still carried a whole drain period and its slack after the push.
    assert not ended(kept, max(0.0, pushed + DRAIN_S + DRAIN_SLACK_S - time.monotonic()))
    assert echoes(kept, b"after the drain")
    kept.shutdown(socket.SHUT_WR)
    assert recv_exact(kept, len(b"bye:app")) == b"bye:app"


def test_drain_s_is_checked(mesh_pki: PKI) -> None:
    t = fe.RouteTable()
    t.set_timeouts(5.0, 60.0, drain_s=0.25)
    t.set_timeouts(5.0, 60.0)                       # the engine's own period
    for bad in (-1.0, 3601.0):
        with pytest.raises(ValueError):
            t.set_timeouts(5.0, 60.0, drain_s=bad)

