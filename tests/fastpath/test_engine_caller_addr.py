"""The calling workload's own address crosses the hop (caller_ext.pxi): the caller's node
says its client's address in its ClientHello, and the destination's node keeps it with
the pair (Conn.caller_addr, what source.ip and ipBlocks judge), not the address of the
node that connected. Seen here through Engine.inbound_callers().

Clients bind their own loopback addresses (127.0.0.2, 127.0.0.3, ::1) before they
connect to the outbound engine; the outbound engine itself connects from 127.0.0.1.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading

import pytest

from fastpath import tls

from enginekit import TIMEOUT_S, listener, port_of, recv_all, wait_for
from test_engine import (SNI, Mesh, client_ctx, closed_by_peer, make_mesh,  # noqa: F401
                         mesh_pki, recv_exact, roundtrip, settled)
from test_engine_pool import MakePool, make_pool  # noqa: F401

pytestmark = pytest.mark.timeout(60)

# The extension as the outbound engine writes it for an IPv4 client: type 0xFF4D,
# length 5, family 4 (then the address).
EXTENSION_V4 = b"\xff\x4d\x00\x05\x04"


def connect_from(source: str, port: int, family: int = socket.AF_INET,
                 to: str = "127.0.0.1") -> socket.socket:
    """A client bound to `source` before it connects."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    s.bind((source, 0))
    s.connect((to, port))
    return s


def open_pair(m: Mesh, c: socket.socket) -> socket.socket:
    """Send through c and read the echo: its pair is set up end to end."""
    m.clients.append(c)
    c.sendall(b"ping")
    assert recv_exact(c, 4) == b"ping"
    return c


def callers(m: Mesh, expected: dict[str, int]) -> dict[str, int]:
    return wait_for(lambda: m.in_node.engine.inbound_callers() == expected and expected,
                    what=f"inbound callers {expected}, have "
                         f"{m.in_node.engine.inbound_callers()}")


def test_each_client_is_seen_at_its_own_address_not_the_outbound_node(make_mesh) -> None:
    m = make_mesh()
    open_pair(m, connect_from("127.0.0.2", m.out_port))
    open_pair(m, connect_from("127.0.0.3", m.out_port))
    open_pair(m, connect_from("127.0.0.3", m.out_port))
    callers(m, {"127.0.0.2": 1, "127.0.0.3": 2})


def test_an_ipv6_client_and_an_ipv4_mapped_one(make_mesh) -> None:
    """A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d: it arrives as IPv4,
    so that an IPv4 block matches it whatever the listener's family."""
    m = make_mesh(install=False)
    m.in_node.install(m.inbound_table())
    t = m.outbound_table()
    v6 = mapped = None
    try:
        v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        mapped = socket.socket(socket.AF_INET6)
        mapped.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        mapped.bind(("::ffff:127.0.0.1", 0))
        mapped.listen(16)
    except OSError as exc:
        for s in (v6, mapped):
            if s is not None:
                s.close()
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        for s in (v6, mapped):
            s.setblocking(False)
            t.add_outbound_tcp(s.fileno(), 0, client_ctx(m.pki))
        m.out_node.install(t)
        open_pair(m, connect_from("::1", port_of(v6), socket.AF_INET6, "::1"))
        open_pair(m, connect_from("127.0.0.4", port_of(mapped)))
        callers(m, {"::1": 1, "127.0.0.4": 1})
    finally:
        for c in m.clients:
            c.close()
        m.clients.clear()
        settled(m.out_node)
        v6.close()
        mapped.close()


def test_a_resumed_handshake_carries_its_own_client(make_mesh) -> None:
    """The session of one client's connection resumes for another client's, and the
    destination hears the second client's address (every ClientHello carries one)."""
    m = make_mesh()
    first = connect_from("127.0.0.2", m.out_port)
    first.sendall(b"hello")
    assert recv_exact(first, 5) == b"hello"
    first.shutdown(socket.SHUT_WR)
    assert recv_all(first) == b"bye:app"       # the ticket came with the reads
    first.close()
    settled(m.out_node)
    open_pair(m, connect_from("127.0.0.3", m.out_port))
    callers(m, {"127.0.0.3": 1})
    assert m.in_node.stats()["inbound_tls_resumed"] == 1


def _get_from(p, source: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(p.out_sock), timeout=TIMEOUT_S,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={"Host": "backend", "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_pooled_upstream_is_reused_only_by_a_client_at_its_address(
        make_pool: MakePool) -> None:  # noqa: F811 (the fixture)
    """An idle upstream told the other node its first client's address: another
    client's request opens its own; the first client's next request reuses it."""
    p = make_pool()
    assert _get_from(p, "127.0.0.2") == (200, b"ok")
    assert _get_from(p, "127.0.0.3") == (200, b"ok")
    assert p.stats()["http_upstream_reused"] == 0
    assert len(set(p.peers)) == 2               # one app connection per upstream
    assert _get_from(p, "127.0.0.2") == (200, b"ok")
    assert p.stats()["http_upstream_reused"] == 1
    assert p.peers[2] == p.peers[0]
    assert p.inbound.engine.inbound_callers() == {"127.0.0.2": 1, "127.0.0.3": 1}


class Tamper:
    """A TCP relay in front of the inbound port that sets the family byte of the
    caller address extension in the ClientHello it passes on (a node that says
    something that is not an address)."""

    def __init__(self, target_port: int, family: int) -> None:
        self.target_port = target_port
        self.family = family
        self.sock = listener()
        self.sock.setblocking(True)
        self.sock.settimeout(0.1)
        self.port = port_of(self.sock)
        self.found = 0
        self._stop = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                down, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            down.settimeout(TIMEOUT_S)
            up = socket.create_connection(("127.0.0.1", self.target_port), timeout=TIMEOUT_S)
            self._socks += [down, up]
            threading.Thread(target=self._relay, args=(down, up), daemon=True).start()

    def _relay(self, down: socket.socket, up: socket.socket) -> None:
        try:
            hello = recv_exact(down, 5)
            hello += recv_exact(down, struct.unpack("!H", hello[3:5])[0])
            at = hello.find(EXTENSION_V4)
            if at >= 0:
                self.found += 1
                hello = hello[:at + 4] + bytes([self.family]) + hello[at + 5:]
            up.sendall(hello)
            threading.Thread(target=self._pipe, args=(up, down), daemon=True).start()
            self._pipe(down, up)
        except (OSError, AssertionError):
            pass

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for s in self._socks:
            s.close()


@pytest.mark.parametrize("family", [5, 6], ids=["unknown-family", "family-6-with-4-bytes"])
def test_a_malformed_caller_address_fails_the_handshake_and_is_counted(
        make_mesh, family: int) -> None:
    m = make_mesh(install=False)
    m.in_node.install(m.inbound_table())
    tamper = Tamper(m.in_port, family)
    try:
        m.out_node.install(m.outbound_table(endpoints=[("127.0.0.1", tamper.port)]))
        c = connect_from("127.0.0.2", m.out_port)
        m.clients.append(c)
        c.sendall(b"ping")
        assert closed_by_peer(c)
        assert tamper.found == 1
        stats = m.in_node.wait_stat("caller_addr_malformed")
        assert stats["caller_addr_malformed"] == 1
        assert stats["inbound_tls_handshakes"] == 0
        assert m.app.connections == 0
    finally:
        tamper.close()


def test_a_peer_that_carries_no_address_is_seen_at_its_connected_address(make_mesh) -> None:
    """A node of an older version (here a mesh client that is not an engine) sends no
    extension: its own address stands for the caller."""
    m = make_mesh()
    s = connect_from("127.0.0.5", m.in_port)
    m.clients.append(s)
    s.settimeout(None)
    tv = struct.pack("ll", int(TIMEOUT_S), 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    session = tls.TLSSession(client_ctx(m.pki), s.fileno(), server_name=SNI)
    session.handshake()
    session.write(b"direct")
    assert session.read(6) == b"direct"
    callers(m, {"127.0.0.5": 1})
    assert m.in_node.stats()["caller_addr_malformed"] == 0
