"""Tests for fastpath.engine: opaque TCP relayed over mutual TLS between two engines.

Each test builds two "nodes" in this process, each an Engine on its own thread: the
frontend's node (an outbound listener for service "backend") and the backend's node
(the inbound mTLS listener, routing by SNI to a plain TCP app on 127.0.0.1). Real
sockets, real OpenSSL, certificates from meshnode.identity.pki (the mesh's own PKI
code). Every socket has a timeout, every wait has a deadline, and the fixtures stop
the engines and close what the test opened.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls
from fastpath.errors import TLSError
from meshnode.identity import pki

from enginekit import Creds, issue, listener, port_of, recv_all, wait_for

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
BACKEND_V2_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend-v2"
OTHER_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/somebody-else"
SNI = "backend.demo.svc.cluster.local"
ALPN = [fe.ALPN_TCP]
TIMEOUT_S = 10.0


# --- PKI ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    bundle_pem: bytes
    root: tuple
    frontend: Creds
    backend: Creds
    stranger: Creds            # frontend's ID under a root nobody trusts


@pytest.fixture(scope="module")
def mesh_pki() -> PKI:
    root = pki.make_root("engine test root", TRUST_DOMAIN)
    issuer = pki.make_issuer(*root, "node-a", 86400)
    foreign = pki.make_root("somebody else's root")
    foreign_issuer = pki.make_issuer(*foreign, "node-x", 86400)
    return PKI(
        bundle_pem=pki.cert_pem(root[0]),
        root=root,
        frontend=issue(issuer, FRONTEND_ID),
        backend=issue(issuer, BACKEND_ID),
        stranger=issue(foreign_issuer, FRONTEND_ID),
    )


def client_ctx(p: PKI, creds: Creds | None = None) -> tls.TLSContext:
    c = creds or p.frontend
    return tls.TLSContext.for_mesh(False, c.chain_pem, c.key_pem, p.bundle_pem, ALPN)


def server_ctx(p: PKI, creds: Creds | None = None) -> tls.TLSContext:
    c = creds or p.backend
    return tls.TLSContext.for_mesh(True, c.chain_pem, c.key_pem, p.bundle_pem, ALPN)


# --- waiting, sockets, engines, apps ------------------------------------------------------


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(65536, n - len(out)))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def closed_by_peer(s: socket.socket) -> bool:
    """True when the peer closed (EOF or reset) without sending anything."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


class Node:
    """An Engine running on a thread of its own."""

    def __init__(self, **options) -> None:
        self.engine = fe.Engine(**options)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:
            self.error = exc

    def install(self, table: fe.RouteTable) -> int:
        generation = self.engine.install(table)
        wait_for(lambda: self.engine.generation >= generation, what="table swap")
        return generation

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    def wait_stat(self, name: str, at_least: int = 1) -> dict[str, int]:
        wait_for(lambda: self.stats()[name] >= at_least, what=f"{name} >= {at_least}")
        return self.stats()

    def stop(self) -> None:
        self.engine.stop()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "Engine.run() did not return after stop()"
        assert self.error is None, self.error


class App:
    """The local app behind the inbound side: echoes; after the client's EOF it sends
    b"bye:" + tag and closes. Thread per connection."""

    def __init__(self, tag: bytes = b"app") -> None:
        self.tag = tag
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = port_of(self.sock)
        self.connections = 0
        self.eofs = 0
        self.resets = 0
        self._stop = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(TIMEOUT_S * 3)
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            with self._lock:
                self.eofs += 1
            conn.sendall(b"bye:" + self.tag)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            with self._lock:
                self.resets += 1

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        with self._lock:
            for c in self._conns:
                c.close()


@dataclass
class Mesh:
    """Frontend node (outbound) → backend node (inbound) → app."""
    pki: PKI
    out_node: Node
    in_node: Node
    app: App
    out_sock: socket.socket
    in_sock: socket.socket
    clients: list[socket.socket] = field(default_factory=list)

    @property
    def out_port(self) -> int:
        return port_of(self.out_sock)

    @property
    def in_port(self) -> int:
        return port_of(self.in_sock)

    def outbound_table(self, identities: list[str] | None = None,
                       endpoints: list[tuple[str, int]] | None = None,
                       creds: Creds | None = None, balancer: str = "p2c-ewma") -> fe.RouteTable:
        t = fe.RouteTable()
        svc = t.add_service("backend", SNI, identities or [BACKEND_ID],
                            [("127.0.0.1", self.in_port)] if endpoints is None else endpoints,
                            balancer=balancer)
        t.add_outbound_tcp(self.out_sock.fileno(), svc, client_ctx(self.pki, creds))
        return t

    def inbound_table(self, creds: Creds | None = None, app_port: int | None = None,
                      ticket_keys: bytes | None = None) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_inbound(self.in_sock.fileno(), ticket_keys)
        t.add_inbound_route(SNI, server_ctx(self.pki, creds), "127.0.0.1", app_port or self.app.port,
                            protocol="tcp")
        return t

    def client(self) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", self.out_port), timeout=TIMEOUT_S)
        self.clients.append(c)
        return c

    def tls_client(self, ctx: tls.TLSContext, server_name: str | None = SNI) -> tls.TLSSession:
        """A raw mutual-TLS client straight to the inbound port (blocking, timeouts)."""
        s = socket.create_connection(("127.0.0.1", self.in_port), timeout=TIMEOUT_S)
        s.settimeout(None)
        tv = struct.pack("ll", int(TIMEOUT_S), 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.clients.append(s)
        return tls.TLSSession(ctx, s.fileno(), server_name=server_name)


@pytest.fixture
def make_mesh(mesh_pki: PKI) -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(out_options: dict | None = None, in_options: dict | None = None,
             install: bool = True, **outbound) -> Mesh:
        m = Mesh(mesh_pki, Node(**(out_options or {})), Node(**(in_options or {})), App(),
                 listener(), listener())
        made.append(m)
        if install:
            m.in_node.install(m.inbound_table())
            m.out_node.install(m.outbound_table(**outbound))
        return m

    yield make
    for m in made:
        m.out_node.stop()
        m.in_node.stop()
        for c in m.clients:
            c.close()
        m.app.close()
        m.out_sock.close()
        m.in_sock.close()


def roundtrip(m: Mesh, message: bytes = b"hello through the mesh") -> bytes:
    c = m.client()
    c.sendall(message)
    assert recv_exact(c, len(message)) == message
    c.shutdown(socket.SHUT_WR)
    return recv_all(c)


def settled(node: Node) -> dict[str, int]:
    """Stats once every connection pair has closed and returned its buffers."""
    wait_for(lambda: (node.stats()["outbound_connections_active"] == 0
                      and node.stats()["inbound_connections_active"] == 0
                      and node.stats()["buffers_in_use"] == 0), what="connections closed")
    return node.stats()


# --- the relay ----------------------------------------------------------------------------


def test_bytes_round_trip_outbound_mtls_inbound_app(make_mesh) -> None:
    m = make_mesh()
    assert roundtrip(m) == b"bye:app"

    out, inn = settled(m.out_node), settled(m.in_node)
    assert out["outbound_connections_opened"] == out["outbound_connections_closed"] == 1
    assert out["outbound_tls_handshakes"] == 1
    assert inn["inbound_connections_opened"] == inn["inbound_connections_closed"] == 1
    assert inn["inbound_tls_handshakes"] == 1
    n = len(b"hello through the mesh")
    assert out["outbound_bytes_received"] == n
    assert out["outbound_bytes_sent"] == n + len(b"bye:app")
    assert inn["inbound_bytes_received"] == n
    assert inn["inbound_bytes_sent"] == n + len(b"bye:app")
    for stats in (out, inn):
        assert stats["outbound_aborted"] == stats["inbound_aborted"] == 0
        assert stats["tables_live"] == 1 and stats["tables_installed"] == 1
    assert m.app.connections == 1 and m.app.eofs == 1


def test_opaque_pairs_are_counted_in_their_figure_with_their_bytes(make_mesh) -> None:
    """Istio's istio_tcp_*: each opaque pair, opened and closed, and its bytes from and
    to the accepted side, under its figure's key (direction, service, peer) on both
    sides; no request is counted for them."""
    m = make_mesh()
    assert roundtrip(m) == b"bye:app"
    assert roundtrip(m, b"x" * 50000) == b"bye:app"
    settled(m.out_node), settled(m.in_node)
    (out,) = m.out_node.engine.request_stats()
    assert (out["direction"], out["service"], out["peer"]) == ("outbound", "backend", BACKEND_ID)
    n = len(b"hello through the mesh") + 50000
    assert out["tcp"] == {"opened": 2, "closed": 2, "received": n, "sent": n + 2 * len(b"bye:app")}
    assert out["codes"] == {} and out["request_bytes"] == out["response_bytes"] == {}
    (inn,) = m.in_node.engine.request_stats()
    assert (inn["direction"], inn["peer"]) == ("inbound", FRONTEND_ID)
    assert inn["tcp"] == out["tcp"]


def test_one_engine_is_both_nodes(mesh_pki: PKI) -> None:
    """A node calling a service it hosts: outbound and inbound in one table, one loop."""
    node = Node()
    app = App(b"self")
    out_sock, in_sock = listener(), listener()
    try:
        t = fe.RouteTable()
        svc = t.add_service("backend", SNI, [BACKEND_ID], [("127.0.0.1", port_of(in_sock))])
        t.add_outbound_tcp(out_sock.fileno(), svc, client_ctx(mesh_pki))
        t.set_inbound(in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", app.port, protocol="tcp")
        node.install(t)
        with socket.create_connection(("127.0.0.1", port_of(out_sock)), timeout=TIMEOUT_S) as c:
            c.sendall(b"ping")
            assert recv_exact(c, 4) == b"ping"
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"bye:self"
        stats = settled(node)
        assert stats["outbound_tls_handshakes"] == stats["inbound_tls_handshakes"] == 1
    finally:
        node.stop()
        app.close()
        out_sock.close()
        in_sock.close()


def test_half_close_propagates_both_ways(make_mesh) -> None:
    """Client FIN → close_notify → app sees EOF; the app still answers; then its FIN
    comes back the same way."""
    m = make_mesh()
    c = m.client()
    c.sendall(b"first")
    assert recv_exact(c, 5) == b"first"
    c.shutdown(socket.SHUT_WR)
    wait_for(lambda: m.app.eofs == 1, what="app sees EOF")
    # The app's reply travels after the client's half-close.
    assert recv_all(c) == b"bye:app"
    out, inn = settled(m.out_node), settled(m.in_node)
    assert out["outbound_aborted"] == 0 and inn["inbound_aborted"] == 0


@pytest.mark.timeout(120)
def test_megabytes_both_ways_with_a_slow_reader_stay_within_two_buffers(make_mesh) -> None:
    """64 MiB echoed through both engines while the client first does not read at all,
    then reads slowly: the writer must stall (backpressure all the way back through
    the mesh) and each engine must hold at most one buffer per direction."""
    m = make_mesh()
    c = m.client()
    size = 64 * 1024 * 1024
    block = bytes(range(256)) * 256                  # 64 KiB
    sent = [0]
    failure: list[BaseException] = []

    def send() -> None:
        try:
            while sent[0] < size:
                c.sendall(block)
                sent[0] += len(block)
            c.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=send, daemon=True)
    writer.start()

    # Not reading: once kernel buffers and the engines' buffers are full, the writer stops.
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 0.5:
        if sent[0] != last:
            last, still_since = sent[0], time.monotonic()
        assert sent[0] < size, "the writer never stalled: no backpressure"
        time.sleep(0.02)
    assert not failure
    for node in (m.out_node, m.in_node):
        assert node.stats()["buffers_in_use"] <= 2

    received = hashlib.sha256()
    total = 0
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        received.update(chunk)
        total += len(chunk)
        if total % (8 << 20) < 65536:
            time.sleep(0.05)                           # and a slow reader
            assert m.out_node.stats()["buffers_in_use"] <= 2
            assert m.in_node.stats()["buffers_in_use"] <= 2
    writer.join(TIMEOUT_S)
    assert not failure, failure
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)
    expected.update(b"bye:app")
    assert total == size + len(b"bye:app")
    assert received.hexdigest() == expected.hexdigest()

    for node in (m.out_node, m.in_node):
        stats = settled(node)
        assert 1 <= stats["buffers_peak"] <= 2
        assert stats["buffers_in_use"] == 0


def test_two_hundred_concurrent_connections(make_mesh) -> None:
    m = make_mesh()
    clients = [m.client() for _ in range(200)]
    for i, c in enumerate(clients):
        c.sendall(b"client %03d" % i)
    for i, c in enumerate(clients):
        assert recv_exact(c, 10) == b"client %03d" % i
    stats = m.out_node.stats()
    assert stats["outbound_connections_active"] == 200
    assert m.in_node.stats()["inbound_connections_active"] == 200
    for c in clients:
        c.shutdown(socket.SHUT_WR)
    for c in clients:
        assert recv_all(c) == b"bye:app"
    out, inn = settled(m.out_node), settled(m.in_node)
    assert out["outbound_connections_closed"] == 200 and inn["inbound_connections_closed"] == 200
    assert out["outbound_aborted"] == inn["inbound_aborted"] == 0


def test_session_resumption_on_reconnects(make_mesh) -> None:
    m = make_mesh()
    for _ in range(4):
        assert roundtrip(m) == b"bye:app"
        settled(m.out_node)
    out, inn = settled(m.out_node), settled(m.in_node)
    assert out["outbound_tls_handshakes"] == 4
    # The first connection is a full handshake; its ticket lets later ones resume.
    assert out["outbound_tls_resumed"] >= 2
    assert inn["inbound_tls_resumed"] == out["outbound_tls_resumed"]


def test_ticket_keys_resume_sessions_across_tables_and_engines(make_mesh) -> None:
    """Given the same ticket keys, a new table (a config push, a rotated certificate)
    and another engine on the same port (another worker) resume the sessions the first
    issued; other keys (a new trust bundle) mean a full handshake."""
    keys = os.urandom(80)
    m = make_mesh(install=False)
    m.in_node.install(m.inbound_table(ticket_keys=keys))
    m.out_node.install(m.outbound_table())
    assert roundtrip(m) == b"bye:app"           # full handshake: the ticket to resume
    m.in_node.install(m.inbound_table(ticket_keys=keys))
    assert roundtrip(m) == b"bye:app"
    assert settled(m.in_node)["inbound_tls_resumed"] == 1
    # Another worker: an engine of its own on the same port; this one steps aside.
    other = Node()
    try:
        other.install(m.inbound_table(ticket_keys=keys))
        m.in_node.install(fe.RouteTable())
        assert roundtrip(m) == b"bye:app"
        assert settled(other)["inbound_tls_resumed"] == 1
        other.install(m.inbound_table(ticket_keys=os.urandom(80)))
        assert roundtrip(m) == b"bye:app"
        stats = settled(other)
        assert stats["inbound_tls_handshakes"] == 2 and stats["inbound_tls_resumed"] == 1
    finally:
        other.stop()
    with pytest.raises(ValueError, match="80 bytes"):
        fe.RouteTable().set_inbound(m.in_sock.fileno(), b"short")


# --- refusals and failures ----------------------------------------------------------------


def test_peer_identity_mismatch_closes_the_client(make_mesh) -> None:
    m = make_mesh(identities=[OTHER_ID])
    c = m.client()
    c.sendall(b"is anybody there")
    assert closed_by_peer(c)
    stats = m.out_node.wait_stat("identity_mismatch")
    assert stats["identity_mismatch"] == 1
    assert stats["outbound_tls_handshakes"] == 1      # TLS itself was fine
    assert settled(m.out_node)["outbound_connections_active"] == 0


def test_any_of_several_identities_is_accepted(make_mesh) -> None:
    m = make_mesh(identities=[OTHER_ID, BACKEND_ID])
    assert roundtrip(m) == b"bye:app"
    assert m.out_node.stats()["identity_mismatch"] == 0


def test_inbound_refuses_a_client_without_certificate(make_mesh) -> None:
    m = make_mesh()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=m.pki.bundle_pem.decode())
    ctx.set_alpn_protocols(["meshnode-tcp"])
    raw = socket.create_connection(("127.0.0.1", m.in_port), timeout=TIMEOUT_S)
    m.clients.append(raw)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with ctx.wrap_socket(raw, server_hostname=SNI) as s:
            # TLS 1.3: the refusal arrives as an alert after the client's handshake.
            s.sendall(b"x")
            s.recv(1)
    stats = m.in_node.wait_stat("inbound_tls_failures_verify")
    assert stats["inbound_tls_failures_verify"] == 1
    assert m.app.connections == 0


def test_inbound_refuses_a_certificate_from_a_foreign_root(make_mesh) -> None:
    m = make_mesh()
    session = m.tls_client(client_ctx(m.pki, m.pki.stranger))
    with pytest.raises(TLSError):
        session.handshake()
        session.read(1)
    stats = m.in_node.wait_stat("inbound_tls_failures_verify")
    assert stats["inbound_tls_failures_verify"] == 1
    assert m.app.connections == 0


@pytest.mark.parametrize("name", ["unknown.demo.svc.cluster.local", None])
def test_inbound_refuses_unknown_or_missing_sni(make_mesh, name: str | None) -> None:
    """Refused once the client's certificate has verified, not at the ClientHello (which
    would list the served names to anyone: test_engine_sni_probe)."""
    m = make_mesh()
    session = m.tls_client(client_ctx(m.pki), server_name=name)
    session.handshake()
    with pytest.raises(TLSError, match="handshake failure"):
        session.read(1)
    assert m.in_node.wait_stat("tls_unknown_sni")["tls_unknown_sni"] == 1
    assert m.in_node.stats()["inbound_tls_failures_other"] == 0
    assert m.app.connections == 0


def test_inbound_keeps_the_peer_identity_and_serves_a_direct_mesh_client(make_mesh) -> None:
    """A mesh client that is not an engine (TLSSession) gets through, ALPN agreed."""
    m = make_mesh()
    session = m.tls_client(client_ctx(m.pki))
    session.handshake()
    assert session.peer_spiffe_id == BACKEND_ID
    assert session.alpn == fe.ALPN_TCP
    session.write(b"direct")
    assert session.read(6) == b"direct"
    session.shutdown()
    assert session.read(64) == b"bye:app"
    assert session.read(64) == b""
    assert settled(m.in_node)["inbound_aborted"] == 0


def test_a_truncated_tls_stream_resets_the_app_connection(make_mesh) -> None:
    """A TLS peer that vanishes without close_notify must not look like a clean end of
    stream to the app: the engine resets the app's connection instead of sending FIN."""
    m = make_mesh()
    session = m.tls_client(client_ctx(m.pki))
    session.handshake()
    session.write(b"partial")
    assert session.read(7) == b"partial"
    m.clients[-1].close()                      # no close_notify
    stats = m.in_node.wait_stat("inbound_aborted")
    assert stats["inbound_aborted"] == 1
    settled(m.in_node)
    wait_for(lambda: m.app.resets == 1, what="the app sees a reset")
    assert m.app.eofs == 0


def test_connect_failure_to_a_dead_endpoint(make_mesh) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = port_of(dead)
    dead.close()                      # nothing listens there now
    m = make_mesh(endpoints=[("127.0.0.1", dead_port)])
    c = m.client()
    assert closed_by_peer(c)
    stats = m.out_node.wait_stat("outbound_connect_failures")
    assert stats["outbound_connect_failures"] == 1
    assert settled(m.out_node)["outbound_connections_closed"] == 1


def test_no_endpoint(make_mesh) -> None:
    m = make_mesh(endpoints=[])
    c = m.client()
    assert closed_by_peer(c)
    assert m.out_node.wait_stat("no_endpoint")["no_endpoint"] == 1


def test_connect_timeout(make_mesh) -> None:
    # A listener whose one-slot accept queue is full drops further SYNs: the engine's
    # connect stays pending.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.socket()
    filler.setblocking(False)
    filler.connect_ex(full.getsockname())
    try:
        m = make_mesh(out_options={"connect_timeout_s": 0.3},
                      endpoints=[("127.0.0.1", port_of(full))])
        started = time.monotonic()
        c = m.client()
        assert closed_by_peer(c)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 3
        assert m.out_node.wait_stat("outbound_connect_timeouts")["outbound_connect_timeouts"] == 1
    finally:
        filler.close()
        full.close()


def test_handshake_timeout_against_a_silent_endpoint(make_mesh) -> None:
    silent = socket.create_server(("127.0.0.1", 0))    # the kernel accepts; nobody speaks
    try:
        m = make_mesh(out_options={"connect_timeout_s": 0.3},
                      endpoints=[("127.0.0.1", port_of(silent))])
        c = m.client()
        assert closed_by_peer(c)
        stats = m.out_node.wait_stat("outbound_tls_handshake_timeouts")
        assert stats["outbound_tls_handshake_timeouts"] == 1
        assert stats["outbound_connect_timeouts"] == 0
    finally:
        silent.close()


def test_idle_timeout(make_mesh) -> None:
    m = make_mesh(out_options={"idle_timeout_s": 0.5})
    c = m.client()
    c.sendall(b"once")
    assert recv_exact(c, 4) == b"once"
    started = time.monotonic()
    assert closed_by_peer(c)
    assert 0.4 <= time.monotonic() - started < 3
    assert m.out_node.wait_stat("outbound_idle_timeouts")["outbound_idle_timeouts"] == 1


def test_connection_limit_rejects_and_counts(make_mesh) -> None:
    m = make_mesh(out_options={"max_connections": 4})     # outbound's budget: half
    held = [m.client(), m.client()]
    for c in held:
        c.sendall(b"hold")
        assert recv_exact(c, 4) == b"hold"
    extra = m.client()
    assert closed_by_peer(extra)
    assert m.out_node.wait_stat("outbound_rejected_limit")["outbound_rejected_limit"] == 1
    for c in held:                    # the two admitted still work
        c.sendall(b"more")
        assert recv_exact(c, 4) == b"more"


# --- config and certificates change in place --------------------------------------------------


@pytest.mark.timeout(120)
def test_new_table_with_rotated_certificates_while_a_connection_streams(make_mesh) -> None:
    m = make_mesh()
    old = m.client()
    old.sendall(b"before")
    assert recv_exact(old, 6) == b"before"

    # Keep the old connection busy across the swap.
    stop = threading.Event()
    streamed = [0]
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            block = b"s" * 4096
            while not stop.is_set():
                old.sendall(block)
                assert recv_exact(old, len(block)) == block
                streamed[0] += len(block)
        except BaseException as exc:
            failure.append(exc)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    wait_for(lambda: streamed[0] > 1 << 20 or failure, what="streaming")

    # Rotation: a new node issuer under the same root, new workload certificates,
    # and (to tell the tables apart) a new backend identity and a new app.
    issuer2 = pki.make_issuer(*m.pki.root, "node-a-rotated", 86400)
    frontend2, backend2 = issue(issuer2, FRONTEND_ID), issue(issuer2, BACKEND_V2_ID)
    app2 = App(b"app2")
    try:
        m.in_node.install(m.inbound_table(creds=backend2, app_port=app2.port))
        m.out_node.install(m.outbound_table(identities=[BACKEND_V2_ID], creds=frontend2))

        # New connections: new certificates (the v2 identity passes the check), new app.
        assert roundtrip(m) == b"bye:app2"
        assert m.out_node.stats()["identity_mismatch"] == 0

        # The old one kept going on the old table, through and after the swap.
        mark = streamed[0]
        wait_for(lambda: streamed[0] > mark + (1 << 20) or failure, what="streaming after swap")
        stop.set()
        streamer.join(TIMEOUT_S)
        assert not failure, failure
        for node in (m.out_node, m.in_node):
            assert node.stats()["tables_live"] == 2      # the old table lives on for it
        old.shutdown(socket.SHUT_WR)
        assert recv_all(old) == b"bye:app"
        for node in (m.out_node, m.in_node):
            stats = settled(node)
            assert stats["tables_live"] == 1 and stats["tables_installed"] == 2
            assert stats["outbound_aborted"] == stats["inbound_aborted"] == 0
    finally:
        stop.set()
        app2.close()


def test_a_listener_left_out_of_the_new_table_is_no_longer_served(make_mesh) -> None:
    m = make_mesh()
    second = listener()
    try:
        t = m.outbound_table()
        t2 = fe.RouteTable()
        svc = t2.add_service("backend", SNI, [BACKEND_ID], [("127.0.0.1", m.in_port)])
        t2.add_outbound_tcp(second.fileno(), svc, client_ctx(m.pki))
        m.out_node.install(t2)
        # The new listener serves; the old one is no longer accepted from.
        with socket.create_connection(("127.0.0.1", port_of(second)), timeout=TIMEOUT_S) as c:
            c.sendall(b"new")
            assert recv_exact(c, 3) == b"new"
        with socket.create_connection(("127.0.0.1", m.out_port), timeout=TIMEOUT_S) as c:
            c.settimeout(0.5)
            with pytest.raises(socket.timeout):
                c.recv(1)            # sits in the old listener's backlog: nobody accepts
        opened = m.out_node.stats()["outbound_connections_opened"]
        m.out_node.install(t)        # the old listener comes back: its backlog is served
        m.out_node.wait_stat("outbound_connections_opened", opened + 1)
    finally:
        m.out_node.stop()
        second.close()


# --- engine life ------------------------------------------------------------------------------


def test_stop_ends_run_promptly_and_closes_everything(make_mesh) -> None:
    m = make_mesh()
    c = m.client()
    c.sendall(b"x")
    assert recv_exact(c, 1) == b"x"
    started = time.monotonic()
    m.out_node.stop()
    m.in_node.stop()
    assert time.monotonic() - started < 2
    assert closed_by_peer(c)
    for node in (m.out_node, m.in_node):
        stats = node.stats()
        assert stats["outbound_connections_active"] == stats["inbound_connections_active"] == 0
        assert stats["buffers_in_use"] == 0
        assert stats["tables_live"] == 0
    with pytest.raises(RuntimeError):
        m.out_node.engine.install(m.outbound_table())
    with pytest.raises(RuntimeError):
        m.out_node.engine.run()


def test_stop_before_run_and_install_before_run(mesh_pki: PKI) -> None:
    engine = fe.Engine(max_connections=8)
    t = fe.RouteTable()
    t.add_service("backend", SNI, [BACKEND_ID], [])
    assert engine.install(t) == 1
    assert engine.install(t) == 2        # replaces the first, never used
    engine.stop()
    engine.run()                          # returns at once
    assert engine.stats()["tables_live"] == 0


def test_engine_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        fe.Engine(max_connections=0)
    with pytest.raises(ValueError):
        fe.Engine(buffer_bytes=10)
    with pytest.raises(ValueError):
        fe.Engine(connect_timeout_s=0)
    with pytest.raises(ValueError):
        fe.Engine(idle_timeout_s=-1)
    e = fe.Engine(max_connections=16, buffer_bytes=4096)
    assert e.max_connections == 16 and e.buffer_bytes == 4096 and e.generation == 0
    assert e.stats()["buffers_total"] == 2 * (16 + e.stats()["mirror_slots"])  # mirrors: own slots


def test_route_table_checks_its_input(mesh_pki: PKI) -> None:
    t = fe.RouteTable()
    out_sock, in_sock, blocking = listener(), listener(), socket.create_server(("127.0.0.1", 0))
    out_fd, in_fd = out_sock.fileno(), in_sock.fileno()
    with pytest.raises(ValueError):
        t.add_service("s", "", [BACKEND_ID], [])
    with pytest.raises(ValueError):
        t.add_service("s", SNI, [], [])
    with pytest.raises(ValueError):
        t.add_service("s", SNI, ["https://not-spiffe"], [])
    with pytest.raises(ValueError, match="does not resolve"):
        t.add_service("s", SNI, [BACKEND_ID], [("localhost", 1)])
    with pytest.raises(ValueError):
        t.add_service("s", SNI, [BACKEND_ID], [("127.0.0.1", 0)])
    svc = t.add_service("s", SNI, [BACKEND_ID], [("::1", 15006), ("10.0.0.1", 15006)])
    assert svc == 0
    with pytest.raises(ValueError):
        t.add_outbound_tcp(out_fd, 1, client_ctx(mesh_pki))
    with pytest.raises(ValueError):
        t.add_outbound_tcp(out_fd, svc, server_ctx(mesh_pki))
    t.add_outbound_tcp(out_fd, svc, client_ctx(mesh_pki))
    with pytest.raises(ValueError):
        t.set_inbound(out_fd)             # already a listener
    t.set_inbound(in_fd)
    with pytest.raises(ValueError):
        t.add_inbound_route(SNI, client_ctx(mesh_pki), "127.0.0.1", 8080)
    t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", 8080)
    with pytest.raises(ValueError):
        t.add_inbound_route(SNI.upper(), server_ctx(mesh_pki), "127.0.0.1", 8081)
    # A blocking listener would stall the loop in accept().
    with pytest.raises(ValueError, match="blocking"):
        fe.RouteTable().set_inbound(blocking.fileno())
    for sock in (out_sock, in_sock, blocking):
        sock.close()
