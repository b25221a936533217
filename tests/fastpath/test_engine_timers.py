"""Tests for the engine's timer wheel (fastpath/timers.pxi): a timeout fires at its
deadline, late by at most a tick (4.2 ms) and the loop's millisecond, where the scan it
replaced was up to 250 ms late; an idle timer waits for a pair's last byte; a shorter
idle timeout pushed with a table reaches open pairs; thousands of idle pairs each time
out.

Real engines, sockets and handshakes as in test_engine.py, whose fixtures these use;
loopback only. An endpoint that never answers a connect is a listener whose one-slot
accept queue is full (the kernel drops further SYNs); one that never answers a
handshake is a listener nobody reads.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from typing import Callable, Iterator

import pytest

from enginekit import TIMEOUT_S, port_of, wait_for
from test_engine import (Mesh, make_mesh, mesh_pki,  # noqa: F401
                         recv_exact, settled)

MakeMesh = Callable[..., Mesh]

# A timeout may fire this much after its deadline here: a tick (4.2 ms), epoll_wait's
# millisecond, and the scheduling of a machine whose cores the tests share. The scan the
# wheel replaced fired up to 250 ms late.
LATE_S = 0.1
# ... and never before it (less this much: the test's clock is read around the engine's).
EARLY_S = 0.005


def close_times(socks: list[socket.socket], timeout_s: float = TIMEOUT_S) -> list[float]:
    """When (time.monotonic()) each socket saw its peer close, EOF or reset."""
    sel = selectors.DefaultSelector()
    closed: dict[int, float] = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout_s
    try:
        while len(closed) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(socks) - len(closed)} of {len(socks)} "
                                     "connections still open")
            for key, _ in sel.select(min(left, 1.0)):
                closed[key.data] = _reap(sel, key)
    finally:
        sel.close()
    return [closed[i] for i in range(len(socks))]


def _reap(sel: selectors.BaseSelector, key: selectors.SelectorKey) -> float:
    at = time.monotonic()
    try:
        data = key.fileobj.recv(1)
    except ConnectionResetError:
        data = b""
    assert data == b"", f"a byte from a connection that should only close: {data!r}"
    sel.unregister(key.fileobj)
    return at


@pytest.fixture
def unanswered() -> Iterator[Callable[[str], int]]:
    """Ports of endpoints that never finish a setup: "connect" (SYNs dropped) or
    "handshake" (the kernel accepts, nobody speaks TLS)."""
    opened: list[socket.socket] = []

    def make(what: str) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        opened.append(s)
        if what == "handshake":
            s.listen(1024)
            return port_of(s)
        s.listen(0)
        filler = socket.socket()            # takes the one slot of the accept queue
        filler.setblocking(False)
        filler.connect_ex(s.getsockname())
        opened.append(filler)
        return port_of(s)

    yield make
    for s in opened:
        s.close()


@pytest.mark.parametrize("what, counter", [("connect", "outbound_connect_timeouts"),
                                           ("handshake", "outbound_tls_handshake_timeouts")])
def test_setup_timeouts_fire_at_their_deadline_not_a_scan_later(
        make_mesh: MakeMesh, unanswered: Callable[[str], int], what: str, counter: str) -> None:
    # Five setups started 50 ms apart: a periodic scan would find them at different
    # distances past their deadlines (some 100 ms or more); each must close within a
    # tick of its own.
    m = make_mesh(out_options={"connect_timeout_s": 0.3},
                  endpoints=[("127.0.0.1", unanswered(what))])
    begun: list[float] = []
    clients: list[socket.socket] = []
    start = time.monotonic()
    for i in range(5):
        wait_for(lambda: time.monotonic() >= start + 0.05 * i, what="the next start")
        begun.append(time.monotonic())
        clients.append(m.client())
    took = [end - began for began, end in zip(begun, close_times(clients))]
    assert all(0.3 - EARLY_S <= t < 0.3 + LATE_S for t in took), took
    stats = m.out_node.wait_stat(counter, 5)
    assert stats[counter] == 5
    assert settled(m.out_node)["outbound_idle_timeouts"] == 0


def test_an_idle_timer_waits_for_the_last_byte(make_mesh: MakeMesh) -> None:
    # Bytes every 0.1 s for a second: three idle timeouts' worth of time, none of it
    # idle. The pair's timer fires, finds it active and files itself again; the pair
    # closes 0.3 s after its last byte.
    m = make_mesh(out_options={"idle_timeout_s": 0.3})
    c = m.client()
    start = time.monotonic()
    sent = received = start
    for i in range(10):
        wait_for(lambda: time.monotonic() >= start + 0.1 * i, what="the next send")
        sent = time.monotonic()
        c.sendall(b"tick")
        assert recv_exact(c, 4) == b"tick"
        received = time.monotonic()
    [closed] = close_times([c])
    assert closed - sent >= 0.3 - EARLY_S
    assert closed - received < 0.3 + LATE_S
    assert m.out_node.wait_stat("outbound_idle_timeouts")["outbound_idle_timeouts"] == 1


def test_a_shorter_idle_timeout_from_a_new_table_reaches_open_pairs(make_mesh: MakeMesh) -> None:
    m = make_mesh()                         # idle timeout: 300 s
    c = m.client()
    c.sendall(b"once")
    assert recv_exact(c, 4) == b"once"
    quiet = time.monotonic()
    t = m.outbound_table()
    t.set_timeouts(5.0, 0.3)
    m.out_node.install(t)
    [closed] = close_times([c])
    assert 0.3 - EARLY_S <= closed - quiet < 0.3 + LATE_S
    assert m.out_node.wait_stat("outbound_idle_timeouts")["outbound_idle_timeouts"] == 1


class HoldingApp:
    """The local app of many idle pairs: the kernel accepts up to a deep backlog and
    this takes them off it (one thread for all), holds them, and never reads."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.sock.setblocking(False)
        self.port = port_of(self.sock)
        self.held: list[socket.socket] = []

    def take(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.mark.timeout(180)
def test_thousands_of_idle_pairs_each_time_out(make_mesh: MakeMesh) -> None:
    n = 2000
    idle_s = 1.5            # past level 0's 1.07 s: each timer cascades from level 1
    # Per pair: the client, the outbound engine's two sockets, the inbound engine's two
    # and the app's one.
    need = 6 * n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    app = HoldingApp()
    sel = selectors.DefaultSelector()
    try:
        m = make_mesh(out_options={"idle_timeout_s": idle_s}, install=False)
        m.in_node.install(m.inbound_table(app_port=app.port))
        m.out_node.install(m.outbound_table())
        begun: list[float] = []
        closed: dict[int, float] = {}
        for i in range(n):
            if i % 100 == 0:
                # Keep the listeners' backlogs (1024) from overflowing: a dropped SYN
                # costs its client a second.
                wait_for(lambda: m.out_node.stats()["outbound_connections_opened"] >= i - 300,
                         what="the engine accepting")
                app.take()
            begun.append(time.monotonic())
            c = m.client()
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, i)
            if i % 20 == 0:             # pairs open earliest close while others open
                for key, _ in sel.select(0):
                    closed[key.data] = _reap(sel, key)
        deadline = time.monotonic() + idle_s + 30
        while len(closed) < n and time.monotonic() < deadline:
            app.take()
            for key, _ in sel.select(0.05):
                closed[key.data] = _reap(sel, key)
        assert len(closed) == n, f"{n - len(closed)} of {n} idle connections still open"
        took = [closed[i] - begun[i] for i in range(n)]
        # Never early; late by the setup under this load (the idle time counts from
        # the pair's pipe, after its handshake) and by this loop's polling, not more.
        assert min(took) >= idle_s - EARLY_S, min(took)
        assert max(took) < idle_s + 5, max(took)
        stats = m.out_node.wait_stat("outbound_idle_timeouts", n)
        assert stats["outbound_idle_timeouts"] == n
        stats = settled(m.out_node)
        assert stats["outbound_connections_opened"] == stats["outbound_connections_closed"] == n
        assert stats["outbound_aborted"] == 0 and stats["outbound_connect_timeouts"] == 0
    finally:
        sel.close()
        app.close()
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
