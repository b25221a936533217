"""Tests for connectionPool (pool.pxi, DestinationRule trafficPolicy.connectionPool): a
service's upstream connections limited (tcp.maxConnections) with requests over it waiting
(http.http1MaxPendingRequests) or answered 503 and counted, the requests one upstream
carries (http.maxRequestsPerConnection), and a service's own setup deadline
(tcp.connectTimeout).

An outbound engine (the HTTP listener, or for an opaque TCP port a listener of its own)
in front of one inbound engine and its app; the app can hold its answers until the test
lets them go, and says which of its own connections each request came on (the inbound
side opens one app connection per upstream, so the app sees the engine's upstreams).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from fastpath import engine as fe

from enginekit import QuietHandler, http_server, listener, port_of, recv_all, wait_for
from test_engine import closed_by_peer
from test_engine_http import (BACKEND_ID, SNI, TIMEOUT_S, Node, client_ctx,  # noqa: F401
                              mesh_pki, server_ctx)

pytestmark = pytest.mark.timeout(60)

SERVICE = "demo/backend:http"


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        server = self.server
        server.peers.append(self.client_address[1])     # type: ignore[attr-defined]
        if self.path == "/hold":
            server.release.wait(TIMEOUT_S)              # type: ignore[attr-defined]
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Pool:
    out: Node
    out_sock: socket.socket
    inbound: Node
    in_sock: socket.socket
    server: object
    ctx: object                 # the caller's identity: the same in every table, so
                                # idle upstreams move to the next one (carry.pxi)
    opaque: bool = False        # an opaque TCP port (both sides), not the HTTP listener
    made: list[threading.Thread] = field(default_factory=list)

    @property
    def peers(self) -> list[int]:
        """The app's connection (its peer port) of each request, in order."""
        return self.server.peers                        # type: ignore[attr-defined]

    def release(self) -> None:
        self.server.release.set()                       # type: ignore[attr-defined]

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port_of(self.out_sock), timeout=TIMEOUT_S)

    def get(self, path: str = "/") -> tuple[int, bytes]:
        """One request on a client connection of its own."""
        conn = self.client()
        try:
            return ask(conn, path, close=True)
        finally:
            conn.close()

    def get_later(self, path: str, into: list) -> threading.Thread:
        """get(path) on a thread of its own; its answer is appended to `into`."""
        thread = threading.Thread(target=lambda: into.append(self.get(path)), daemon=True)
        thread.start()
        self.made.append(thread)
        return thread

    def hold(self) -> list:
        """A request the app holds until release(), keeping its upstream taken; its
        answer is appended to the list returned."""
        held: list = []
        before = len(self.peers)
        self.get_later("/hold", held)
        wait_for(lambda: len(self.peers) > before, what="the held request at the app")
        return held

    def wait_in_line(self) -> list:
        """A request that waits for an upstream (http1MaxPendingRequests); its answer is
        appended to the list returned."""
        waiting: list = []
        before = self.upstreams()["pending"]
        self.get_later("/", waiting)
        wait_for(lambda: self.upstreams()["pending"] > before, what="the request waiting")
        return waiting

    def upstreams(self) -> dict:
        return self.out.engine.upstreams()[SERVICE]

    def stats(self) -> dict:
        return self.out.stats()


MakePool = Callable[..., Pool]


def ask(conn: http.client.HTTPConnection, path: str = "/",
        close: bool = False) -> tuple[int, bytes]:
    """One request on `conn`, kept alive unless `close`."""
    conn.request("GET", path, headers={"Host": "backend",
                                       **({"Connection": "close"} if close else {})})
    resp = conn.getresponse()
    return resp.status, resp.read()


def _table(p: Pool, addresses: list[tuple[str, int]], **pool: object) -> fe.RouteTable:
    t = fe.RouteTable()
    svc = t.add_service(SERVICE, SNI, [BACKEND_ID], addresses, balancer="round-robin")
    if pool:
        t.set_connection_pool(svc, **pool)
    if p.opaque:
        t.add_outbound_tcp(p.out_sock.fileno(), svc, p.ctx, protocol="tcp")
    else:
        t.set_outbound_http(p.out_sock.fileno(), p.ctx)
        t.add_host("backend", svc, 8080)
    return t


@pytest.fixture
def make_pool(mesh_pki) -> Iterator[MakePool]:  # noqa: F811 (the fixture)
    made: list[Pool] = []
    extra: list[socket.socket] = []

    def make(dead: bool = False, opaque: bool = False, **pool: object) -> Pool:
        server = http_server(_Handler, peers=[], release=threading.Event())
        inbound, in_sock = Node(), listener()
        t = fe.RouteTable()
        t.set_inbound(in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", server.server_address[1],
                            protocol="tcp" if opaque else "auto")
        inbound.install(t)
        p = Pool(Node(), listener(), inbound, in_sock, server, client_ctx(mesh_pki), opaque)
        made.append(p)
        address = ("127.0.0.1", port_of(in_sock))
        if dead:
            # Accepts TCP (the kernel does, into the backlog) and never answers TLS.
            silent = socket.socket()
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            extra.append(silent)
            address = ("127.0.0.1", port_of(silent))
        p.out.install(_table(p, [address], **pool))
        return p

    make.table = lambda p, **pool: _table(p, [("127.0.0.1", port_of(p.in_sock))],
                                          **pool)  # type: ignore[attr-defined]
    yield make
    for p in made:
        p.release()
        for thread in p.made:
            thread.join(TIMEOUT_S)
        for node, sock in ((p.out, p.out_sock), (p.inbound, p.in_sock)):
            node.stop()
            sock.close()
        p.server.shutdown()                             # type: ignore[attr-defined]
        p.server.server_close()                         # type: ignore[attr-defined]
    for s in extra:
        s.close()


def test_under_max_connections_every_request_succeeds_on_the_few_upstreams(
        make_pool: MakePool) -> None:
    p = make_pool(max_connections=1, max_pending_requests=0)
    answers = [p.get() for _ in range(6)]
    assert answers == [(200, b"ok")] * 6
    assert len(set(p.peers)) == 1               # one upstream, pooled between clients
    assert p.upstreams()["connections"] == 1    # idle in the pool: it still counts
    assert p.stats()["pool_overflow_connections"] == 0


def test_over_max_connections_a_request_is_answered_503_and_counted(make_pool: MakePool) -> None:
    p = make_pool(max_connections=1, max_pending_requests=0)
    held = p.hold()
    status, body = p.get()
    assert status == 503
    assert b"connection pool overflow" in body
    assert p.stats()["pool_overflow_connections"] == 1
    assert p.stats()["http_responses_5xx"] == 1
    assert p.upstreams()["connections"] == 1
    p.release()
    wait_for(lambda: held, what="the held answer")
    assert held == [(200, b"ok")]
    assert p.get() == (200, b"ok")              # room again: the pooled upstream serves it


def test_an_opaque_pair_over_max_connections_is_closed_and_counted(make_pool: MakePool) -> None:
    """An opaque TCP port has no request to hold back: a pair over tcp.maxConnections is
    closed at once and counted (Envoy's tcp_proxy: upstream_cx_overflow; the node's
    meshnode_pool_overflows_total, reason max_connections), the pair that holds the
    upstream goes on, and once it ends the next one gets through. (HTTP requests go
    through the opaque pairs as bytes: the app tells their upstreams apart.)"""
    p = make_pool(opaque=True, max_connections=1)
    first = p.client()
    try:
        assert ask(first) == (200, b"ok")       # kept alive: its pair holds the upstream
        with socket.create_connection(("127.0.0.1", port_of(p.out_sock)),
                                      timeout=TIMEOUT_S) as second:
            second.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            assert closed_by_peer(second)
        stats = p.stats()
        assert stats["pool_overflow_connections"] == 1
        assert stats["outbound_connect_failures"] == stats["upstream_failovers"] == 0
        assert p.upstreams() == {"connections": 1, "pending": 0, "limited": True}
        assert ask(first) == (200, b"ok")       # the first pair goes on
        assert len(p.peers) == 2 and p.peers[0] == p.peers[1]  # the second never got there
    finally:
        first.close()
    wait_for(lambda: p.upstreams()["connections"] == 0, what="the first pair's upstream closed")
    assert p.get() == (200, b"ok")
    assert len(set(p.peers)) == 2
    assert p.stats()["pool_overflow_connections"] == 1


def test_a_pending_request_is_served_when_an_upstream_frees(make_pool: MakePool) -> None:
    p = make_pool(max_connections=1, max_pending_requests=1)
    held = p.hold()
    waiting = p.wait_in_line()
    # A third finds http1MaxPendingRequests waiting already: 503 at once.
    status, body = p.get()
    assert status == 503 and b"http1MaxPendingRequests" in body
    assert p.stats()["pool_overflow_pending"] == 1
    assert waiting == [] and len(p.peers) == 1
    p.release()
    wait_for(lambda: len(held) == 1 and len(waiting) == 1, what="both answers")
    assert held == [(200, b"ok")] and waiting == [(200, b"ok")]
    assert p.stats()["pool_waited"] == 1
    assert p.upstreams() == {"connections": 1, "pending": 0, "limited": True}


def test_a_pending_request_is_judged_by_the_limits_of_a_config_pushed_while_it_waits(
        make_pool: MakePool) -> None:
    """maxConnections raised by a push: the request waiting under the old limit goes
    on at once, as new ones do, not when an upstream frees."""
    p = make_pool(max_connections=1, max_pending_requests=1)
    held = p.hold()
    waiting = p.wait_in_line()
    p.out.install(make_pool.table(p, max_connections=2, max_pending_requests=1))
    wait_for(lambda: waiting, what="the waiting request's answer")
    assert waiting == [(200, b"ok")] and held == []
    assert p.upstreams()["pending"] == 0 and p.upstreams()["connections"] == 2


def test_a_pending_request_waits_past_connect_timeout_for_its_turn(make_pool: MakePool) -> None:
    """connectTimeout bounds a connection's setup, not a request's wait for one (Envoy:
    only the route's timeout ends it; Istio's example sets connectTimeout to 30 ms)."""
    p = make_pool(max_connections=1, max_pending_requests=5, connect_timeout_s=0.05)
    held = p.hold()
    waiting = p.wait_in_line()
    time.sleep(0.3)                                     # six connectTimeouts
    assert waiting == [] and p.upstreams()["pending"] == 1
    p.release()
    wait_for(lambda: len(held) == 1 and len(waiting) == 1, what="both answers")
    assert held == [(200, b"ok")] and waiting == [(200, b"ok")]


def test_kept_alive_clients_take_turns_on_one_connection(make_pool: MakePool) -> None:
    """maxConnections 1 and two keep-alive clients asking one after the other: the
    upstream goes back to the pool after each answer, so the quiet one does not keep it
    from the other (Istio's circuit-breaking example: two fortio connections)."""
    p = make_pool(max_connections=1, max_pending_requests=1)
    a, b = p.client(), p.client()
    try:
        for k in range(6):
            assert ask((a, b)[k % 2]) == (200, b"ok"), k
    finally:
        a.close()
        b.close()
    assert len(set(p.peers)) == 1, p.peers              # one upstream, passed between them
    assert p.stats()["pool_overflow_connections"] == 0


def test_a_client_leaving_while_pending_stops_waiting(make_pool: MakePool) -> None:
    p = make_pool(max_connections=1)
    held = p.hold()
    conn = p.client()
    conn.request("GET", "/", headers={"Host": "backend"})
    wait_for(lambda: p.upstreams()["pending"] == 1, what="the request waiting")
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()                                # SO_LINGER 0: a reset
    wait_for(lambda: p.upstreams()["pending"] == 0, what="the wait ended")
    p.release()
    wait_for(lambda: held, what="the held answer")
    assert len(p.peers) == 1                    # the one that left never reached the app


def test_a_client_that_half_closes_while_pending_gets_its_answer(make_pool: MakePool) -> None:
    """A FIN after a whole request (HTTP/1.0 clients, `nc -q`) is no abort: the request
    goes on when its turn comes, as it would have without waiting."""
    p = make_pool(max_connections=1)
    p.hold()
    with socket.create_connection(("127.0.0.1", port_of(p.out_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        wait_for(lambda: p.upstreams()["pending"] == 1, what="the request waiting")
        c.shutdown(socket.SHUT_WR)
        time.sleep(0.05)                        # a dozen ticks of the wait
        assert p.upstreams()["pending"] == 1
        p.release()
        answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok"), answer
    assert len(p.peers) == 2


def test_max_requests_per_connection_closes_the_upstream_after_n(make_pool: MakePool) -> None:
    p = make_pool(max_requests_per_connection=2)
    # A keep-alive client: its third request goes on a new upstream.
    conn = p.client()
    for _ in range(5):
        assert ask(conn) == (200, b"ok")
    conn.close()
    peers = p.peers
    assert peers[0] == peers[1] and peers[2] == peers[3] and peers[1] != peers[2]
    assert peers[4] not in peers[:4]
    # Clients one after another, through the pool: the upstream the last request went
    # on (one request so far) carries one more, then each new one two.
    for _ in range(4):
        assert p.get() == (200, b"ok")
    assert p.peers[5] == peers[4]
    assert p.peers[6] == p.peers[7] and p.peers[8] not in p.peers[:8]
    assert max(p.peers.count(x) for x in p.peers) == 2
    assert p.stats()["pool_spent"] >= 3
    wait_for(lambda: p.upstreams()["connections"] <= 1, what="spent upstreams closed")


def test_connect_timeout_bounds_a_setup_the_peer_never_answers(make_pool: MakePool) -> None:
    # The engine's own connect timeout is 10 s; the service's is 0.3 s.
    p = make_pool(dead=True, connect_timeout_s=0.3)
    start = time.monotonic()
    status, body = p.get()
    took = time.monotonic() - start
    assert status == 503 and b"upstream unavailable" in body
    assert took < 3.0, took
    assert p.stats()["outbound_tls_handshake_timeouts"] >= 1
    wait_for(lambda: p.upstreams()["connections"] == 0, what="the failed upstream uncounted")


def test_counts_follow_idle_upstreams_to_a_new_table(make_pool: MakePool) -> None:
    p = make_pool(max_connections=1, max_pending_requests=0)
    assert p.get() == (200, b"ok")
    assert p.upstreams()["connections"] == 1
    # A config push: the idle upstream moves to the new table and still counts, so the
    # limit holds across it; the same upstream serves on.
    p.out.install(make_pool.table(p, max_connections=1, max_pending_requests=0))
    assert p.upstreams()["connections"] == 1
    held = p.hold()
    assert p.peers[0] == p.peers[1]
    assert p.get()[0] == 503
    p.release()
    wait_for(lambda: held, what="the held answer")
    # Without a limit the count goes on: the same upstream, nothing reopened.
    p.out.install(make_pool.table(p))
    assert p.upstreams() == {"connections": 1, "pending": 0, "limited": False}


def test_counts_of_services_no_table_names_any_more_go_to_new_services(
        make_pool: MakePool) -> None:
    """A worker counts upstreams for UPSTREAM_COUNTS services at once. Services come and
    go with config pushes: the count of one no table names any more (its last table
    freed, its last upstream closed) is taken by a new one, so a node that has seen
    more services over its life than that still limits every one of them."""
    p = make_pool(max_connections=1, max_pending_requests=0)

    def table(others: str) -> fe.RouteTable:
        t = make_pool.table(p, max_connections=1, max_pending_requests=0)  # type: ignore[attr-defined]
        for i in range(fe.UPSTREAM_COUNTS - 1):
            svc = t.add_service(f"demo/{others}{i}:http", SNI, [BACKEND_ID],
                                [("127.0.0.1", port_of(p.in_sock))])
            t.set_connection_pool(svc, max_connections=1, max_pending_requests=0)
        return t

    assert p.get() == (200, b"ok")
    p.out.install(table("first"))               # every count taken
    assert p.stats()["pool_no_slot"] == 0
    p.out.install(make_pool.table(p, max_connections=1,   # type: ignore[attr-defined]
                                  max_pending_requests=0))
    # (The loop frees the first table right after it made the new one current.)
    wait_for(lambda: p.stats()["tables_live"] == 1, what="the first table freed")
    p.out.install(table("second"))              # the first ones' counts, taken over
    assert p.stats()["pool_no_slot"] == 0
    assert p.stats()["pool_counts_reused"] == fe.UPSTREAM_COUNTS - 1
    counts = p.out.engine.upstreams()
    assert len(counts) == fe.UPSTREAM_COUNTS
    assert all(c["connections"] == 0 and c["limited"] for name, c in counts.items()
               if name != SERVICE)
    # The service that stayed kept its count (its pooled upstream) and its limit.
    assert p.upstreams()["connections"] == 1
    held = p.hold()
    assert p.get()[0] == 503
    p.release()
    wait_for(lambda: held, what="the held answer")


def test_bad_arguments_are_refused(make_pool: MakePool) -> None:
    t = fe.RouteTable()
    svc = t.add_service(SERVICE, SNI, [BACKEND_ID], [("127.0.0.1", 1)])
    with pytest.raises(ValueError):
        t.set_connection_pool(svc, max_connections=-1)
    with pytest.raises(ValueError):
        t.set_connection_pool(svc, max_pending_requests=2**32)
    with pytest.raises(ValueError):
        t.set_connection_pool(svc, connect_timeout_s=-1)
    with pytest.raises(IndexError):
        t.set_connection_pool(svc + 1, max_connections=1)
