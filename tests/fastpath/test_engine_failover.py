"""Tests for the engine's endpoint failover: an outbound upstream whose setup fails on
one endpoint (refused connect, handshake timeout, wrong peer identity) is set up on the
service's next one, and the failed endpoint is passed over by the balancer for a
while (1 s after a first failure, doubling with each one in a row, 30 s at most). The
services here balance round robin, so which endpoint a connection tries is known.

Real engines, sockets and handshakes as in test_engine.py, whose fixtures these use:
a dead endpoint is a port nobody listens on, a silent one a listener that never speaks
TLS, an impostor an inbound engine presenting another workload's certificate.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from fastpath import engine as fe

from enginekit import listener, port_of, recv_all, wait_for
from test_engine import (SNI, Mesh, Node, closed_by_peer, make_mesh,  # noqa: F401
                         mesh_pki, roundtrip, server_ctx, settled)

MakeMesh = Callable[..., Mesh]


def dead_port() -> int:
    """A loopback port nobody listens on: connects to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return port_of(s)


def live(m: Mesh) -> tuple[str, int]:
    return ("127.0.0.1", m.in_port)


def mesh_after(make_mesh: MakeMesh, first_port: int, connect_timeout_s: float = 5.0) -> Mesh:
    """A mesh whose service has 127.0.0.1:`first_port` as its first endpoint (round
    robin tries it first) and the live backend node second."""
    m = make_mesh(out_options={"connect_timeout_s": connect_timeout_s}, install=False)
    m.in_node.install(m.inbound_table())
    m.out_node.install(m.outbound_table(balancer="round-robin", endpoints=[("127.0.0.1", first_port), live(m)]))
    return m


def test_a_dead_endpoint_is_failed_over_then_passed_over(make_mesh: MakeMesh) -> None:
    m = mesh_after(make_mesh, dead_port())
    for _ in range(10):                 # every connection gets through
        assert roundtrip(m) == b"bye:app"
    stats = settled(m.out_node)
    # The first connection found the dead endpoint and went on to the live one; the
    # next ones were not sent there (round robin alone would have sent 5 of 10).
    assert 1 <= stats["outbound_connect_failures"] <= 2   # 2: a stall of over 1 s
    assert stats["upstream_failovers"] == stats["outbound_connect_failures"]
    assert stats["endpoint_ejections"] == stats["outbound_connect_failures"]
    assert stats["outbound_connections_closed"] == 10
    assert m.app.eofs == 10


def test_every_endpoint_dead_tries_three_then_closes(make_mesh: MakeMesh) -> None:
    m = make_mesh(balancer="round-robin", endpoints=[("127.0.0.1", dead_port()) for _ in range(4)])
    c = m.client()
    c.sendall(b"nobody will read this")
    assert closed_by_peer(c)            # after three endpoints were tried
    stats = settled(m.out_node)
    assert stats["outbound_connect_failures"] == 3
    assert stats["upstream_failovers"] == 2
    assert stats["endpoint_ejections"] == 3


def test_one_endpoint_is_tried_once(make_mesh: MakeMesh) -> None:
    m = make_mesh(balancer="round-robin", endpoints=[("127.0.0.1", dead_port())])
    assert closed_by_peer(m.client())
    stats = settled(m.out_node)
    assert stats["outbound_connect_failures"] == 1
    assert stats["upstream_failovers"] == 0


def test_a_passed_over_endpoint_is_tried_again_later_and_back_when_it_answers(
        make_mesh: MakeMesh, mesh_pki) -> None:  # noqa: F811 (the fixture)
    revived_sock = listener()
    revived_port = port_of(revived_sock)
    revived_sock.close()                # dead for now; an engine listens there later
    m = mesh_after(make_mesh, revived_port)
    started = time.monotonic()
    for _ in range(3):
        assert roundtrip(m) == b"bye:app"
    assert m.out_node.stats()["outbound_connect_failures"] == 1
    # Passed over for 1 s after its first failure: tried again after that, fails, and
    # is passed over for 2 s.
    time.sleep(max(0.0, started + 1.3 - time.monotonic()))
    second = time.monotonic()
    for _ in range(4):
        assert roundtrip(m) == b"bye:app"
    assert m.out_node.stats()["outbound_connect_failures"] == 2
    time.sleep(max(0.0, second + 1.0 - time.monotonic()))   # within the 2 s
    for _ in range(4):
        assert roundtrip(m) == b"bye:app"
    assert m.out_node.stats()["outbound_connect_failures"] == 2
    # The endpoint comes back: once its time is up it is tried, answers, and takes
    # its turns again.
    back_sock = socket.create_server(("127.0.0.1", revived_port))
    back_sock.setblocking(False)
    back = Node()
    try:
        t = fe.RouteTable()
        t.set_inbound(back_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", m.app.port)
        back.install(t)
        time.sleep(max(0.0, second + 2.3 - time.monotonic()))
        for _ in range(6):
            assert roundtrip(m) == b"bye:app"
        assert m.out_node.stats()["outbound_connect_failures"] == 2
        assert back.stats()["inbound_tls_handshakes"] == 3      # every other connection
    finally:
        back.stop()
        back_sock.close()


def test_a_silent_endpoint_fails_over_at_the_handshake_timeout(make_mesh: MakeMesh) -> None:
    silent = socket.create_server(("127.0.0.1", 0))    # the kernel accepts; nobody speaks
    try:
        m = mesh_after(make_mesh, port_of(silent), 0.3)
        began = time.monotonic()
        assert roundtrip(m) == b"bye:app"
        assert 0.25 <= time.monotonic() - began < 5
        stats = settled(m.out_node)
        assert stats["outbound_tls_handshake_timeouts"] == 1
        assert stats["upstream_failovers"] == 1
        assert roundtrip(m) == b"bye:app"  # passed over now: no wait
        assert settled(m.out_node)["outbound_tls_handshake_timeouts"] == 1
    finally:
        silent.close()


def test_an_endpoint_with_the_wrong_identity_is_failed_over(make_mesh: MakeMesh,
                                                             mesh_pki) -> None:  # noqa: F811
    impostor_sock = listener()
    impostor = Node()
    try:
        t = fe.RouteTable()
        t.set_inbound(impostor_sock.fileno())
        # A certificate of the mesh's own root, for another workload than the service's.
        t.add_inbound_route(SNI, server_ctx(mesh_pki, mesh_pki.frontend), "127.0.0.1", 9)
        impostor.install(t)
        m = mesh_after(make_mesh, port_of(impostor_sock))
        for _ in range(4):
            assert roundtrip(m) == b"bye:app"
        stats = settled(m.out_node)
        assert stats["identity_mismatch"] == 1
        assert stats["upstream_failovers"] == 1
        assert stats["outbound_tls_handshakes"] == 5   # the impostor's, then 4 good ones
    finally:
        impostor.stop()
        impostor_sock.close()


def test_a_failed_endpoint_stays_passed_over_across_a_table_swap(make_mesh: MakeMesh) -> None:
    dead = ("127.0.0.1", dead_port())
    m = mesh_after(make_mesh, dead[1])
    assert roundtrip(m) == b"bye:app"
    assert m.out_node.stats()["outbound_connect_failures"] == 1
    m.out_node.install(m.outbound_table(balancer="round-robin", endpoints=[live(m), dead]))   # a config push
    for _ in range(4):
        assert roundtrip(m) == b"bye:app"
    stats = settled(m.out_node)
    assert stats["outbound_connect_failures"] == 1
    assert stats["tables_installed"] == 2
    wait_for(lambda: m.out_node.stats()["tables_live"] == 1, what="old table released")


def test_failures_of_setups_already_under_way_do_not_lengthen_the_pass_over(
        make_mesh: MakeMesh) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        m = mesh_after(make_mesh, port_of(silent), 0.3)
        # Four at once: round robin sends two to the silent endpoint before either
        # times out; the second timeout finds it passed over already.
        clients = [m.client() for _ in range(4)]
        for c in clients:
            c.sendall(b"ping")
        for c in clients:
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"pingbye:app"
        stats = settled(m.out_node)
        assert stats["outbound_tls_handshake_timeouts"] == 2
        assert stats["upstream_failovers"] == 2
        assert stats["endpoint_ejections"] == 1
    finally:
        silent.close()


def test_a_failure_found_on_the_old_table_passes_over_on_the_new_one(
        make_mesh: MakeMesh) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        m = make_mesh(out_options={"connect_timeout_s": 0.5}, install=False)
        m.in_node.install(m.inbound_table())
        endpoints = [("127.0.0.1", port_of(silent)), live(m)]
        m.out_node.install(m.outbound_table(balancer="round-robin", endpoints=endpoints))
        first = m.client()                  # set up toward the silent endpoint ...
        first.sendall(b"early")
        wait_for(lambda: m.out_node.stats()["outbound_connections_opened"] == 1,
                 what="the first connection accepted")
        m.out_node.install(m.outbound_table(balancer="round-robin", endpoints=endpoints))   # ... across a push
        first.shutdown(socket.SHUT_WR)
        assert recv_all(first) == b"earlybye:app"   # failed over after 0.5 s
        began = time.monotonic()
        for _ in range(3):                  # on the new table: the silent one is passed over
            assert roundtrip(m) == b"bye:app"
        assert time.monotonic() - began < 0.5 * 3
        stats = settled(m.out_node)
        assert stats["outbound_tls_handshake_timeouts"] == 1
        assert stats["upstream_failovers"] == 1
    finally:
        silent.close()
