"""A TLS session's life: resumption ends a bounded time after the full handshake that
verified the peer, and at the latest when the peer's certificate expires; ticket keys
change every period, the previous one still opening tickets for one more.

The attacks replayed: a peer that resumes now and then keeps its session (and the
certificate check behind it) forever, since each resumption brought a fresh ticket; a
peer whose certificate has expired (or been replaced after a compromise) resumes with a
ticket from before; a ticket sealed long ago opens as long as the process lives.

Real handshakes over loopback sockets, OpenSSL on both ends: fastpath's TLSSession or
Python's ssl module (another OpenSSL client, whose own ticket handling we do not
control) as the client, the engine or a TLSSession as the server. Only the life and the
key period are shortened, to seconds; the clock is the real one.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from fastpath import tls
from fastpath.errors import TLSError

from test_tls_session import (FRONTEND_ID, PKI, SNI, Workload, _client_ctx,  # noqa: F401
                              _echo_client, _echo_server, _on_thread, _server_ctx, _workload,
                              pki, sockets)

pytestmark = pytest.mark.timeout(60)


def _wait_until(posix_s: float) -> None:
    """Sleep until the wall clock reads `posix_s` (the life under test is wall time)."""
    while (left := posix_s - time.time()) > 0:
        time.sleep(min(left, 0.5))


def _not_after(workload: Workload) -> float:
    from cryptography import x509
    return x509.load_pem_x509_certificate(workload.leaf_pem).not_valid_after_utc.timestamp()


def _connect(sockets, client_ctx: tls.TLSContext, server_ctx: tls.TLSContext,
             ticket: tls.TLSSessionTicket | None = None) -> tuple[tls.TLSSession, object]:
    """One connection: ping, pong, close. (client session, server outcome); the client
    raises TLSError if the server refused it."""
    s_sock, c_sock = sockets()
    server = tls.TLSSession(server_ctx, s_sock.fileno())
    client = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    if ticket is not None:
        client.set_session(ticket)
    done = _on_thread(_echo_server(server))
    try:
        _echo_client(client)
    finally:
        c_sock.shutdown(socket.SHUT_RDWR)      # a refused server thread ends too
    return client, (server, done())


# --- the server side: inbound sessions ------------------------------------------------------


def test_an_expired_client_certificate_does_not_resume(pki: PKI, sockets) -> None:
    """Default contexts (for_mesh): the client's certificate expires two seconds after
    its full handshake; once it has, its ticket must not stand in for it. OpenSSL's
    client still offers the ticket for about a second past the lifetime the server
    gave it (it rounds ages down), which is when this offers it: the server has to
    refuse on its own, and the full handshake then fails on the expired certificate."""
    short = _workload(pki.intermediate, FRONTEND_ID, not_after=datetime.timedelta(seconds=2))
    client_ctx, server_ctx = _client_ctx(pki, workload=short), _server_ctx(pki)
    first, _ = _connect(sockets, client_ctx, server_ctx)
    ticket = first.get_session()
    assert ticket is not None and not first.session_reused

    _wait_until(_not_after(short) + 1.05)   # X.509: valid through the notAfter second
    s_sock, c_sock = sockets()
    server = tls.TLSSession(server_ctx, s_sock.fileno())
    client = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    client.set_session(ticket)              # the server's certificate is fine
    done = _on_thread(_echo_server(server))
    with pytest.raises(TLSError):
        client.handshake()
        client.write(b"ping")
        client.read(1)
    assert not client.session_reused
    outcome = done()
    assert isinstance(outcome.error, TLSError), "the server resumed an expired peer"
    assert "certificate has expired" in str(outcome.error)


def test_a_peer_ignoring_the_ticket_lifetime_does_not_resume_past_the_life(pki: PKI,
                                                                          sockets) -> None:
    """Two workers with one key set: one issued the ticket under a long life, the other
    lives by a one-second life. A client does not have to honour the lifetime a ticket
    came with (its clock, its choice): the server counts from the full handshake."""
    keys = os.urandom(80)
    issuing, strict = _server_ctx(pki), _server_ctx(pki)
    for ctx in (issuing, strict):
        ctx.set_ticket_keys(keys)
    strict.set_session_life(1)
    client_ctx = _client_ctx(pki)
    first, _ = _connect(sockets, client_ctx, issuing)
    ticket = first.get_session()

    again, (server, outcome) = _connect(sockets, client_ctx, strict, ticket)
    assert again.session_reused and outcome.error is None      # within the life: resumes

    _wait_until(time.time() + 2.1)
    late, (server, outcome) = _connect(sockets, client_ctx, strict, ticket)
    assert outcome.error is None
    assert not late.session_reused and not server.session_reused
    assert server.peer_spiffe_id == FRONTEND_ID                # verified afresh


def _python_client(tmp_path: Path, pki: PKI) -> ssl.SSLContext:
    (tmp_path / "chain.pem").write_bytes(pki.frontend.chain_pem)
    (tmp_path / "key.pem").write_bytes(pki.frontend.key_pem)
    (tmp_path / "ca.pem").write_bytes(pki.bundle_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False              # SPIFFE IDs are URI SANs, not host names
    ctx.load_verify_locations(tmp_path / "ca.pem")
    ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    return ctx


def test_resuming_again_and_again_does_not_extend_a_session(pki: PKI, tmp_path: Path) -> None:
    """Python's ssl client resumes every half second, each time with the newest ticket
    the server gave it. Before, each resumption brought a ticket good for as long as the
    first (OpenSSL re-tickets with a fresh time): the session never ended. Now it ends
    three seconds after its full handshake, whatever the tickets since, and the next
    connection is a full handshake (which starts the next session)."""
    server_ctx = _server_ctx(pki)
    server_ctx.set_session_life(3)
    client_ctx = _python_client(tmp_path, pki)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    session = None
    reused: list[tuple[float, bool]] = []
    start = time.time()
    try:
        while time.time() - start < 6.5:
            c = socket.create_connection(listener.getsockname(), timeout=10)
            s, _ = listener.accept()
            s.settimeout(None)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
            server = tls.TLSSession(server_ctx, s.fileno())
            done = _on_thread(_echo_server(server))
            with client_ctx.wrap_socket(c, server_hostname=SNI, session=session) as tc:
                tc.sendall(b"ping")
                assert tc.recv(16) == b"PING"        # the tickets arrive with this read
                reused.append((time.time() - start, tc.session_reused))
                session = tc.session
                tc.unwrap()
            assert done().error is None
            s.close()
            time.sleep(0.5)
    finally:
        listener.close()
    assert not reused[0][1]
    assert sum(ok for _, ok in reused) >= 6, reused             # resumption works at all
    # Each session ends at most 3 s after its full handshake (OpenSSL counts whole
    # seconds: up to 1 s less), then the next attempt is a full handshake again.
    full = [at for at, ok in reused if not ok]
    assert len(full) >= 2, reused
    assert all(b - a <= 3 + 0.6 for a, b in zip(full, full[1:])), reused
    assert time.time() - start - full[-1] <= 3 + 0.6 + 0.6, reused


# --- the client side: outbound sessions -----------------------------------------------------


def test_a_client_does_not_offer_a_session_past_its_life(pki: PKI, sockets) -> None:
    client_ctx = _client_ctx(pki)
    client_ctx.set_session_life(1)
    server_ctx = _server_ctx(pki)
    first, _ = _connect(sockets, client_ctx, server_ctx)
    ticket = first.get_session()
    again, _ = _connect(sockets, client_ctx, server_ctx, ticket)
    assert again.session_reused
    # A ticket the resumption brought counts from the same full handshake.
    newer = again.get_session()
    _wait_until(time.time() + 2.1)
    s_sock, c_sock = sockets()
    client = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    assert client.set_session(newer) is False
    assert client.set_session(ticket) is False


def test_a_client_does_not_resume_with_a_server_whose_certificate_expired(pki: PKI,
                                                                          sockets) -> None:
    """The server's certificate expires two seconds after the full handshake; the server
    would still take the ticket (its own life is an hour). The client must not offer it:
    it never saw a valid certificate for what it would be talking to."""
    short = _workload(pki.intermediate, "spiffe://cluster.local/ns/demo/sa/backend",
                      not_after=datetime.timedelta(seconds=2))
    client_ctx, server_ctx = _client_ctx(pki), _server_ctx(pki, workload=short)
    first, _ = _connect(sockets, client_ctx, server_ctx)
    ticket = first.get_session()
    _wait_until(_not_after(short) + 1.05)
    s_sock, c_sock = sockets()
    server = tls.TLSSession(server_ctx, s_sock.fileno())
    client = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    client.set_session(ticket)
    done = _on_thread(lambda: server.handshake())
    with pytest.raises(TLSError, match="certificate has expired"):
        client.handshake()
    assert not client.session_reused
    c_sock.shutdown(socket.SHUT_RDWR)
    done()


# --- ticket keys: one per period ------------------------------------------------------------


def _period_start(period_s: int) -> int:
    """Wait for the start of the next key period (with room to act in it); its number."""
    now = time.time()
    number = int(now // period_s) + 1
    _wait_until(number * period_s + 0.05)
    return number


def test_ticket_keys_change_every_period_and_the_previous_one_still_opens(pki: PKI,
                                                                         sockets) -> None:
    """Two workers of a node (two contexts, one base key): a ticket one sealed opens on
    the other in its period and the next one, and not in the one after (a full
    handshake). Before, the keys never changed while the process lived."""
    period_s = 2
    keys = os.urandom(80)
    sealing, opening = _server_ctx(pki), _server_ctx(pki)
    for ctx in (sealing, opening):
        ctx.set_ticket_keys(keys, period_s)
    client_ctx = _client_ctx(pki)
    number = _period_start(period_s)
    first, _ = _connect(sockets, client_ctx, sealing)
    ticket = first.get_session()
    assert int(time.time() // period_s) == number, "the machine is too slow for this test"

    same, _ = _connect(sockets, client_ctx, opening, ticket)
    assert same.session_reused
    _wait_until((number + 1) * period_s + 0.05)
    next_period, _ = _connect(sockets, client_ctx, opening, ticket)
    assert next_period.session_reused
    _wait_until((number + 2) * period_s + 0.05)
    expired, (server, outcome) = _connect(sockets, client_ctx, opening, ticket)
    assert outcome.error is None
    assert not expired.session_reused and not server.session_reused


def test_other_keys_do_not_open_tickets(pki: PKI, sockets) -> None:
    """Another node (another base key) in the same period: a full handshake."""
    sealing, other = _server_ctx(pki), _server_ctx(pki)
    sealing.set_ticket_keys(os.urandom(80), 3600)
    other.set_ticket_keys(os.urandom(80), 3600)
    client_ctx = _client_ctx(pki)
    first, _ = _connect(sockets, client_ctx, sealing)
    second, _ = _connect(sockets, client_ctx, other, first.get_session())
    assert not second.session_reused


def test_session_life_and_key_period_are_checked(pki: PKI) -> None:
    with pytest.raises(ValueError, match="session life"):
        _server_ctx(pki).set_session_life(0)
    with pytest.raises(ValueError, match="session life"):
        _client_ctx(pki).set_session_life(8 * 86400)
    with pytest.raises(ValueError, match="period"):
        _server_ctx(pki).set_ticket_keys(os.urandom(80), 0)
