"""The engine's TLS sessions end: inbound, a session resumes for a bounded time from its
full handshake; outbound, a cached session is not offered past its life or past the
upstream certificate's notAfter; the inbound ticket keys of a node's workers rotate
every period, and every worker opens what another sealed.

Real engines on threads, real OpenSSL; Python's ssl module as the outside client whose
resumption we observe (SSLSocket.session_reused). Life and period are shortened to
seconds; the clock is the real one.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from fastpath import engine as fe
from meshnode.identity import pki

from enginekit import Creds, recv_all, wait_for
from test_engine import (BACKEND_ID, SNI, TIMEOUT_S, Mesh, Node, client_ctx,  # noqa: F401
                         make_mesh, mesh_pki, roundtrip, server_ctx, settled)

pytestmark = pytest.mark.timeout(60)


def _wait_until(posix_s: float) -> None:
    while (left := posix_s - time.time()) > 0:
        time.sleep(min(left, 0.5))


def _inbound(m: Mesh, keys: bytes | None = None, **options) -> fe.RouteTable:
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno(), keys, **options)
    t.add_inbound_route(SNI, server_ctx(m.pki), "127.0.0.1", m.app.port)
    return t


def _python_client(m: Mesh, tmp_path: Path) -> ssl.SSLContext:
    (tmp_path / "chain.pem").write_bytes(m.pki.frontend.chain_pem)
    (tmp_path / "key.pem").write_bytes(m.pki.frontend.key_pem)
    (tmp_path / "ca.pem").write_bytes(m.pki.bundle_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False              # SPIFFE IDs are URI SANs, not host names
    ctx.load_verify_locations(tmp_path / "ca.pem")
    ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    ctx.set_alpn_protocols([fe.ALPN_TCP.decode()])
    return ctx


def _visit(m: Mesh, ctx: ssl.SSLContext, session: ssl.SSLSession | None
           ) -> tuple[bool, ssl.SSLSession]:
    """One connection to the inbound port through to the app and back: (resumed, the
    newest session)."""
    raw = socket.create_connection(("127.0.0.1", m.in_port), timeout=TIMEOUT_S)
    # Bytes that cannot begin an HTTP request: the app's port is opaque TCP.
    with ctx.wrap_socket(raw, server_hostname=SNI, session=session) as s:
        s.sendall(b"\x00ping")
        got = b""
        while len(got) < 5:
            chunk = s.recv(5 - len(got))     # the tickets are read with the answer
            assert chunk, "closed before the echo"
            got += chunk
        assert got == b"\x00ping"
        return s.session_reused, s.session


# --- inbound ----------------------------------------------------------------------------------


def test_a_peer_resuming_again_and_again_gets_a_full_handshake_at_the_sessions_life(
        make_mesh, tmp_path: Path) -> None:
    """Life 2 s: a peer that resumes every half second, each time with the newest
    ticket, gets a full handshake (its certificate verified again) within 2 s of the
    last one. Before, each resumption brought a ticket as good as the first: one full
    handshake, then none."""
    m = make_mesh(install=False)
    m.in_node.install(_inbound(m, session_life_s=2))
    ctx = _python_client(m, tmp_path)
    session = None
    seen: list[tuple[float, bool]] = []
    start = time.time()
    while time.time() - start < 5.0:
        reused, session = _visit(m, ctx, session)
        seen.append((time.time() - start, reused))
        time.sleep(0.5)
    full = [at for at, reused in seen if not reused]
    assert sum(reused for _, reused in seen) >= 4, seen
    assert len(full) >= 2, seen
    assert all(b - a <= 2 + 0.7 for a, b in zip(full, full[1:])), seen
    stats = settled(m.in_node)
    assert stats["inbound_tls_handshakes"] - stats["inbound_tls_resumed"] == len(full)


def test_workers_share_ticket_keys_that_rotate_every_period(make_mesh, tmp_path: Path) -> None:
    """Two workers (engines on one port, one base key), a 2 s period. A ticket the first
    sealed opens on the second in its period and the next; in the one after, the peer
    gets a full handshake."""
    period_s = 2
    keys = os.urandom(80)
    m = make_mesh(install=False)
    ctx = _python_client(m, tmp_path)
    number = int(time.time() // period_s) + 1
    _wait_until(number * period_s + 0.05)
    m.in_node.install(_inbound(m, keys, ticket_period_s=period_s))
    reused, ticket = _visit(m, ctx, None)
    assert not reused
    assert int(time.time() // period_s) == number, "the machine is too slow for this test"
    other = Node()
    try:
        other.install(_inbound(m, keys, ticket_period_s=period_s))
        m.in_node.install(fe.RouteTable())          # the first worker steps aside
        assert _visit(m, ctx, ticket)[0]
        _wait_until((number + 1) * period_s + 0.05)
        assert _visit(m, ctx, ticket)[0]            # the previous period's key opens it
        _wait_until((number + 2) * period_s + 0.05)
        assert not _visit(m, ctx, ticket)[0]        # two periods on: it does not
        stats = settled(other)
        assert stats["inbound_tls_handshakes"] == 3 and stats["inbound_tls_resumed"] == 2
    finally:
        other.stop()


def test_set_inbound_checks_period_and_life(make_mesh) -> None:
    m = make_mesh(install=False)
    with pytest.raises(ValueError, match="ticket_period_s"):
        fe.RouteTable().set_inbound(m.in_sock.fileno(), None, ticket_period_s=0)
    with pytest.raises(ValueError, match="session_life_s"):
        fe.RouteTable().set_inbound(m.in_sock.fileno(), None, session_life_s=0)


# --- outbound ---------------------------------------------------------------------------------


def _short_lived(m: Mesh, identity: str, ttl_s: float) -> Creds:
    issuer = pki.make_issuer(*m.pki.root, "node-short", 86400)
    wkey = pki.new_key()
    csr, _ = pki.csr_identity(pki.make_csr(wkey, identity))
    leaf = pki.sign_workload(csr, identity, issuer[0], issuer[1], ttl_s)
    return Creds(pki.cert_pem(leaf) + pki.cert_pem(issuer[0]), pki.key_pem(wkey))


def test_outbound_does_not_resume_with_an_upstream_whose_certificate_expired(make_mesh) -> None:
    """The upstream's certificate expires 2 s after the first connection; its node would
    still resume the session (an hour of life). The outbound side must not offer it:
    the next connection is a full handshake, refused for the expired certificate."""
    from cryptography import x509
    m = make_mesh(install=False)
    short = _short_lived(m, BACKEND_ID, 2)
    not_after = x509.load_pem_x509_certificate(short.chain_pem).not_valid_after_utc.timestamp()
    m.in_node.install(m.inbound_table(creds=short))
    m.out_node.install(m.outbound_table())
    assert roundtrip(m) == b"bye:app"
    assert roundtrip(m) == b"bye:app"
    assert settled(m.out_node)["outbound_tls_resumed"] == 1
    _wait_until(not_after + 1.05)
    c = m.client()
    try:
        c.sendall(b"late")
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass                        # refused already (the pair may close first)
    assert recv_all(c) == b""
    stats = settled(m.out_node)
    assert stats["outbound_tls_resumed"] == 1
    assert stats["outbound_tls_failures_verify"] == 1


def test_outbound_does_not_offer_a_session_past_its_life(make_mesh) -> None:
    """Life 1 s on the outbound side; the upstream's node would resume for an hour."""
    m = make_mesh(install=False)
    m.in_node.install(m.inbound_table())
    t = fe.RouteTable()
    svc = t.add_service("backend", SNI, [BACKEND_ID], [("127.0.0.1", m.in_port)])
    ctx = client_ctx(m.pki)
    ctx.set_session_life(1)
    t.add_outbound_tcp(m.out_sock.fileno(), svc, ctx)
    m.out_node.install(t)
    assert roundtrip(m) == b"bye:app"
    assert roundtrip(m) == b"bye:app"
    assert settled(m.out_node)["outbound_tls_resumed"] == 1
    _wait_until(time.time() + 2.1)
    assert roundtrip(m) == b"bye:app"
    stats = settled(m.out_node)
    assert stats["outbound_tls_handshakes"] == 3 and stats["outbound_tls_resumed"] == 1
