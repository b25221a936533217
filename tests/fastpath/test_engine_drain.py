"""Tests for the engine's graceful drain (Engine.drain): it stops accepting, answers what
is in flight, sends HTTP keep-alive clients away (`Connection: close` on their next
answer, quiet ones closed), and run() returns once nothing is left or at the deadline.

Real engines, sockets, mutual TLS and an HTTP app, as in test_engine_http.py and
test_engine.py, whose fixtures these use.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

from enginekit import TIMEOUT_S, port_of, recv_all, wait_for
from test_engine import make_mesh, recv_exact  # noqa: F401
from test_engine_http import Mesh, Node, client_ctx, mesh, mesh_pki, recv_until  # noqa: F401


def ended(node: Node, within_s: float) -> float:
    """Wait for node's run() to return by itself; how long that took."""
    start = time.monotonic()
    node.thread.join(within_s)
    assert not node.thread.is_alive(), f"run() still running {within_s} s into the drain"
    assert node.error is None, node.error
    return time.monotonic() - start


def sibling_listener(port: int) -> socket.socket:
    """A second listening socket on `port`, as a node's next worker has (SO_REUSEPORT)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    return s


def test_a_request_in_flight_is_answered_and_the_engine_ends_early(mesh: Mesh) -> None:
    conn = mesh.http()
    conn.request("GET", "/sleep", headers={"Host": "backend"})
    wait_for(lambda: mesh.out_node.stats()["http_routed"] == 1, what="request routed")
    mesh.out_node.engine.drain(5.0)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"slept\n")
    assert mesh.out_node.engine.draining
    # The client stays quiet: its connection is closed after the quiet second, and the
    # engine ends with nothing left, long before the 5 s deadline.
    took = ended(mesh.out_node, 4.0)
    assert took < 3.0
    stats = mesh.out_node.stats()
    assert stats["draining"] == 1
    assert stats["drain_closed"] == 1
    assert stats["http_responses_2xx"] == 1
    conn.close()


def test_a_keep_alive_client_is_told_to_go(mesh: Mesh) -> None:
    conn = mesh.http()
    conn.request("GET", "/x", headers={"Host": "backend"})
    first = conn.getresponse()
    assert (first.status, first.getheader("connection")) == (200, None)
    first.read()
    mesh.out_node.engine.drain(5.0)
    wait_for(lambda: mesh.out_node.engine.draining, what="listeners out")
    conn.request("GET", "/x", headers={"Host": "backend"})
    second = conn.getresponse()
    assert second.status == 200
    assert second.getheader("connection") == "close"
    assert second.read() == b"GET /x host=backend\n"
    assert ended(mesh.out_node, 4.0) < 1.0      # the close ended the last pair
    conn.close()


def test_the_inbound_side_sends_the_callers_node_away(mesh: Mesh) -> None:
    """Drained inbound: its answer says close to the caller's node, whose client
    connection sees that close after a whole answer."""
    c = mesh.client()
    c.sendall(b"GET /x HTTP/1.1\r\nHost: backend\r\n\r\n")
    answer = recv_until(c, b"GET /x host=backend\n")
    assert answer.startswith(b"HTTP/1.1 200")
    mesh.in_node.engine.drain(5.0)
    wait_for(lambda: mesh.in_node.engine.draining, what="listeners out")
    c.sendall(b"GET /x HTTP/1.1\r\nHost: backend\r\n\r\n")
    rest = recv_all(c)
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower()
    assert body == b"GET /x host=backend\n"
    assert ended(mesh.in_node, 4.0) < 1.0


def test_new_connections_go_to_a_sibling_sharing_the_port(mesh: Mesh) -> None:
    """Two engines on one SO_REUSEPORT port, as a node's workers are: once one drains
    and its socket is closed, every new connection reaches the other."""
    sibling_sock = sibling_listener(mesh.http_port)
    sibling = Node()
    try:
        table = mesh.outbound_table()
        table.set_outbound_http(sibling_sock.fileno(), client_ctx(mesh.pki))
        sibling.install(table)
        mesh.out_node.engine.drain(5.0)
        wait_for(lambda: mesh.out_node.engine.draining, what="listeners out")
        port = mesh.http_port
        mesh.http_sock.close()
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            conn.request("GET", "/x", headers={"Host": "backend"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"GET /x host=backend\n")
            conn.close()
        assert sibling.stats()["http_routed"] == 20
        assert mesh.out_node.stats()["http_routed"] == 0
        ended(mesh.out_node, 2.0)
    finally:
        sibling.stop()
        sibling_sock.close()


def test_an_opaque_pair_goes_on_until_the_deadline(make_mesh) -> None:  # noqa: F811
    m = make_mesh()
    c = m.client()
    c.sendall(b"before")
    assert recv_exact(c, 6) == b"before"
    start = time.monotonic()
    m.out_node.engine.drain(0.8)
    wait_for(lambda: m.out_node.engine.draining, what="listeners out")
    c.sendall(b"during")                # still carried: a drain does not cut TCP early
    assert recv_exact(c, 6) == b"during"
    ended(m.out_node, 3.0)
    assert time.monotonic() - start >= 0.75
    c.settimeout(TIMEOUT_S)
    assert recv_all(c) in (b"", b"bye:app")   # cut at the deadline (closed, not hung)


def test_drain_is_checked_and_idempotent(mesh: Mesh) -> None:
    for bad in (0.0, -1.0, 3601.0):
        try:
            mesh.out_node.engine.drain(bad)
        except ValueError:
            continue
        raise AssertionError(f"drain({bad}) accepted")
    mesh.out_node.engine.drain(5.0)
    mesh.out_node.engine.drain(0.001)    # a second call changes nothing
    assert ended(mesh.out_node, 4.0) < 1.0   # nothing open: ends at once


def test_a_table_installed_while_draining_does_not_reopen_the_listeners(mesh: Mesh) -> None:
    conn = mesh.http()
    conn.request("GET", "/sleep", headers={"Host": "backend"})
    wait_for(lambda: mesh.out_node.stats()["http_routed"] == 1, what="request routed")
    mesh.out_node.engine.drain(5.0)
    wait_for(lambda: mesh.out_node.engine.draining, what="listeners out")
    mesh.out_node.engine.install(mesh.outbound_table())
    result: list[int] = []
    probe = threading.Thread(target=lambda: result.append(_connect_and_wait(mesh)))
    probe.start()
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"slept\n")
    conn.close()
    probe.join(TIMEOUT_S)
    assert result == [0]                 # connected to the backlog, never answered
    assert mesh.out_node.stats()["http_routed"] == 1


def _connect_and_wait(m: Mesh) -> int:
    s = socket.create_connection(("127.0.0.1", port_of(m.http_sock)), timeout=TIMEOUT_S)
    try:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: backend\r\n\r\n")
        s.settimeout(0.5)
        try:
            return len(s.recv(100))
        except socket.timeout:
            return 0
    finally:
        s.close()


def test_a_drained_node_does_not_end_its_callers_client_connections(mesh: Mesh) -> None:
    """The inbound engine drains while a keep-alive client of the outbound side is
    quiet: its upstream is ended cleanly, and the client's connection goes on, its next
    request carried by a sibling inbound engine on the same port."""
    conn = mesh.http()
    conn.request("GET", "/x", headers={"Host": "backend"})
    first = conn.getresponse()
    assert (first.status, first.read()) == (200, b"GET /x host=backend\n")
    # (Bound only now: a listening socket with no engine behind it would take a share
    # of the first connections and leave them unanswered.)
    sibling_sock = sibling_listener(mesh.in_port)
    sibling = Node()
    try:
        table = mesh.inbound_table()
        table.set_inbound(sibling_sock.fileno())
        sibling.install(table)
        mesh.in_node.engine.drain(5.0)
        wait_for(lambda: mesh.in_node.engine.draining, what="listeners out")
        mesh.in_sock.close()
        ended(mesh.in_node, 4.0)             # the quiet pair was ended cleanly
        wait_for(lambda: mesh.out_node.stats()["outbound_connections_active"] == 1,
                 what="the client's pair still open")
        conn.request("GET", "/x", headers={"Host": "backend"})
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"GET /x host=backend\n")
        assert second.getheader("connection") is None
        stats = mesh.out_node.stats()
        assert stats["outbound_connections_opened"] == 1      # the same client connection
        assert sibling.stats()["inbound_connections_opened"] == 1
        conn.close()
    finally:
        sibling.stop()
        sibling_sock.close()
