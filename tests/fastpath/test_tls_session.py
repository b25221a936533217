"""Tests for fastpath.tls mutual TLS between workloads: mesh contexts, blocking sessions, SPIFFE IDs.

Both ends of every connection run in this process: the server on a thread, the client
on the test's thread. TLSSession's blocking calls release the GIL, which is what lets
them meet. Every socket gets SO_RCVTIMEO/SO_SNDTIMEO, so a bug shows as a TLSError
("timed out") instead of a hung test. Python's ssl module is the reference peer where a
behaviour must hold against an implementation other than ours.
"""

from __future__ import annotations

import datetime
import re
import os
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import tls
from fastpath.errors import TLSError

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
SNI = "backend.demo.svc.cluster.local"
SOCKET_TIMEOUT_S = 10
X509_V_ERR_CERT_HAS_EXPIRED = 10

T = TypeVar("T")


# --- test PKI: root → intermediate (path length 0) → workload leaves ------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)


def _authority(name: str, issuer: Authority | None = None,
               path_length: int | None = None) -> Authority:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    return Authority(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Workload:
    chain_pem: bytes      # leaf, then the intermediate that issued it
    key_pem: bytes
    leaf_pem: bytes


BOTH_ROLES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def _leaf_cert(issuer: Authority, sans: list[x509.GeneralName] | None,
               not_after: datetime.timedelta = datetime.timedelta(hours=24),
               key: ec.EllipticCurvePrivateKey | None = None,
               eku: tuple[x509.ObjectIdentifier, ...] = BOTH_ROLES) -> x509.Certificate:
    key = key or _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() + min(not_after, datetime.timedelta(0)) - datetime.timedelta(days=1))
        .not_valid_after(_now() + not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                       critical=False)
    )
    if sans is not None:
        # X509-SVID §2: the SAN is critical, since the subject is empty.
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    return builder.sign(issuer.key, hashes.SHA256())


def _workload(issuer: Authority, spiffe_id: str,
              not_after: datetime.timedelta = datetime.timedelta(hours=24),
              eku: tuple[x509.ObjectIdentifier, ...] = BOTH_ROLES) -> Workload:
    key = _key()
    leaf = _pem(_leaf_cert(issuer, [x509.UniformResourceIdentifier(spiffe_id)], not_after, key, eku))
    return Workload(chain_pem=leaf + issuer.pem, key_pem=_key_pem(key), leaf_pem=leaf)


@dataclass(frozen=True)
class PKI:
    bundle_pem: bytes            # the root only: the one anchor of trust
    intermediate: Authority
    frontend: Workload
    backend: Workload
    expired_frontend: Workload
    stranger: Workload           # frontend's ID, issued under another root
    stranger_backend: Workload
    other_bundle_pem: bytes


@pytest.fixture(scope="module")
def pki() -> PKI:
    root = _authority("meshnode test root")
    issuer = _authority("meshnode test node issuer", root, path_length=0)
    other_root = _authority("somebody else's root")
    other_issuer = _authority("somebody else's issuer", other_root, path_length=0)
    return PKI(
        bundle_pem=root.pem,
        intermediate=issuer,
        frontend=_workload(issuer, FRONTEND_ID),
        backend=_workload(issuer, BACKEND_ID),
        expired_frontend=_workload(issuer, FRONTEND_ID, not_after=-datetime.timedelta(hours=1)),
        stranger=_workload(other_issuer, FRONTEND_ID),
        stranger_backend=_workload(other_issuer, BACKEND_ID),
        other_bundle_pem=other_root.pem,
    )


def _server_ctx(pki: PKI, alpn: list[bytes] | None = None,
                workload: Workload | None = None) -> tls.TLSContext:
    w = workload or pki.backend
    return tls.TLSContext.for_mesh(True, w.chain_pem, w.key_pem, pki.bundle_pem, alpn)


def _client_ctx(pki: PKI, alpn: list[bytes] | None = None,
                workload: Workload | None = None, bundle_pem: bytes | None = None) -> tls.TLSContext:
    w = workload or pki.frontend
    return tls.TLSContext.for_mesh(False, w.chain_pem, w.key_pem, bundle_pem or pki.bundle_pem, alpn)


# --- transport: connected socket pairs and a two-sided runner ------------------------


def _bound(sock: socket.socket, timeout_s: float = SOCKET_TIMEOUT_S) -> socket.socket:
    # Kernel timeouts keep the fd blocking (settimeout() would make it non-blocking).
    seconds = int(timeout_s)
    tv = struct.pack("ll", seconds, int((timeout_s - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    return sock


def _connected(kind: str) -> tuple[socket.socket, socket.socket]:
    """(server side, client side), both blocking with kernel timeouts."""
    if kind == "socketpair":
        a, b = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            b = socket.create_connection(listener.getsockname())
            a, _ = listener.accept()
    for s in (a, b):
        s.setblocking(True)
        _bound(s)
    return a, b


@pytest.fixture
def sockets() -> Iterator[Callable[..., tuple[socket.socket, socket.socket]]]:
    """A factory of connected pairs ("socketpair" or "tcp"); closes them all at teardown.

    Sockets stay open until the test ends: closing a TCP socket with unread data sends
    RST, which would race the TLS alert the other side is about to read.
    """
    made: list[socket.socket] = []

    def make(kind: str = "socketpair") -> tuple[socket.socket, socket.socket]:
        pair = _connected(kind)
        made.extend(pair)
        return pair

    yield make
    for s in made:
        s.close()


@dataclass
class Outcome:
    value: object = None
    error: BaseException | None = None


def _on_thread(fn: Callable[[], object]) -> Callable[[], Outcome]:
    """Start fn on a thread now; the returned function waits for its outcome."""
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.value = fn()
        except BaseException as exc:  # handed to the test thread
            outcome.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Outcome:
        thread.join(SOCKET_TIMEOUT_S * 3)
        assert not thread.is_alive(), "server thread did not finish"
        return outcome

    return join


def _attempt(fn: Callable[[], T]) -> Outcome:
    try:
        return Outcome(value=fn())
    except Exception as exc:
        return Outcome(error=exc)


def _echo_server(session: tls.TLSSession) -> Callable[[], object]:
    """Handshake, answer one message in upper case, then close when the client does."""
    def serve() -> tls.TLSSession:
        session.handshake()
        session.write(session.read(1024).upper())
        assert session.read(1024) == b""        # the client's close_notify
        session.shutdown()
        return session
    return serve


def _echo_client(session: tls.TLSSession, message: bytes = b"ping") -> None:
    session.handshake()
    assert session.write(message) == len(message)
    assert session.read(1024) == message.upper()
    session.shutdown()
    assert session.read(1024) == b""            # the server's close_notify


def _refused_client(session: tls.TLSSession) -> None:
    # TLS 1.3 (RFC 8446 §4.4.2.4): the client's handshake is over before the server
    # judges the client's certificate; the refusal arrives as an alert on the next read.
    session.handshake()
    session.read(1)


# --- mutual TLS ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
def test_mutual_handshake_identities_alpn_and_data(pki: PKI, sockets, kind: str) -> None:
    s_sock, c_sock = sockets(kind)
    server = tls.TLSSession(_server_ctx(pki, [b"h2", b"http/1.1"]), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki, [b"http/1.1"]), c_sock.fileno(), server_name=SNI)
    done = _on_thread(_echo_server(server))
    _echo_client(client)
    assert done().error is None

    assert server.peer_spiffe_id == FRONTEND_ID
    assert client.peer_spiffe_id == BACKEND_ID
    assert server.alpn == client.alpn == b"http/1.1"
    assert server.version == client.version == "TLSv1.3"
    assert server.server_name == client.server_name == SNI
    assert not server.session_reused and not client.session_reused
    assert server.server and not client.server


def test_large_payload_spans_many_records(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    payload = bytes(range(256)) * 1024          # 256 KiB: 16+ records, more than a socket buffer

    def serve() -> bytes:
        server.handshake()
        received = bytearray()
        while len(received) < len(payload):
            chunk = server.read(1 << 20)
            assert chunk, "stream ended early"
            assert len(chunk) <= 16384           # one record at most
            received += chunk
        server.write(b"done")
        return bytes(received)

    done = _on_thread(serve)
    client.handshake()
    assert client.write(payload) == len(payload)
    assert client.read(4) == b"done"
    outcome = done()
    assert outcome.error is None and outcome.value == payload


def test_without_alpn_nothing_is_negotiated(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki, [b"http/1.1"]), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    done = _on_thread(_echo_server(server))
    _echo_client(client)
    assert done().error is None
    assert server.alpn is None and client.alpn is None
    assert server.server_name is None


def test_alpn_without_common_protocol_is_refused(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki, [b"h2"]), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki, [b"http/1.1"]), c_sock.fileno())
    done = _on_thread(server.handshake)
    with pytest.raises(TLSError, match="no application protocol"):
        client.handshake()
    assert isinstance(done().error, TLSError)


# --- refusals ------------------------------------------------------------------------


def test_client_from_another_root_is_refused(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    # The stranger trusts our root, so it accepts our server; we must not accept it.
    client = tls.TLSSession(_client_ctx(pki, workload=pki.stranger), c_sock.fileno())
    done = _on_thread(server.handshake)
    client_outcome = _attempt(lambda: _refused_client(client))
    server_error = done().error

    assert isinstance(server_error, TLSError)
    assert "certificate verify failed" in str(server_error)
    assert "unable to get local issuer certificate" in str(server_error)
    assert server_error.verify_result is not None
    assert isinstance(client_outcome.error, TLSError)
    assert "alert" in str(client_outcome.error)
    # Never the stranger's claimed ID: no peer certificate kept, or one marked unverified.
    claimed = _attempt(lambda: server.peer_spiffe_id)
    assert claimed.value is None
    assert claimed.error is None or isinstance(claimed.error, TLSError)
    assert repr(server) == "<TLSSession server failed>"


def test_server_from_another_root_is_refused_by_the_client(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki, workload=pki.stranger_backend), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    done = _on_thread(server.handshake)
    with pytest.raises(TLSError) as err:
        client.handshake()
    assert "certificate verify failed" in str(err.value)
    assert "unable to get local issuer certificate" in str(err.value)
    assert isinstance(done().error, TLSError)


def test_intermediate_in_bundle_does_not_anchor_trust(pki: PKI, sockets) -> None:
    # X509_V_FLAG_PARTIAL_CHAIN stays off: only a self-signed root ends a chain.
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki, bundle_pem=pki.intermediate.pem), c_sock.fileno())
    done = _on_thread(server.handshake)
    with pytest.raises(TLSError, match="certificate verify failed"):
        client.handshake()
    assert isinstance(done().error, TLSError)


def test_server_certificate_needs_server_auth_purpose(pki: PKI, sockets) -> None:
    # Each side checks the other's extended key usage: workload certificates serve in
    # both roles, so the issuer must put serverAuth and clientAuth in every one.
    client_only = _workload(pki.intermediate, BACKEND_ID, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki, workload=client_only), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    done = _on_thread(server.handshake)
    with pytest.raises(TLSError, match="unsuitable certificate purpose"):
        client.handshake()
    assert isinstance(done().error, TLSError)


def test_expired_client_certificate_is_refused(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki, workload=pki.expired_frontend), c_sock.fileno())
    done = _on_thread(server.handshake)
    client_outcome = _attempt(lambda: _refused_client(client))
    server_error = done().error

    assert isinstance(server_error, TLSError)
    assert "certificate has expired" in str(server_error)
    assert server_error.verify_result == X509_V_ERR_CERT_HAS_EXPIRED
    assert isinstance(client_outcome.error, TLSError)
    assert "certificate expired" in str(client_outcome.error)     # the alert's name


def test_client_without_certificate_is_refused(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    anonymous = tls.TLSContext(server=False)
    anonymous.load_trust(pki.bundle_pem)
    anonymous.require_peer_cert()
    client = tls.TLSSession(anonymous, c_sock.fileno())
    done = _on_thread(server.handshake)
    client_outcome = _attempt(lambda: _refused_client(client))
    server_error = done().error

    assert isinstance(server_error, TLSError)
    assert "peer did not return a certificate" in str(server_error)
    assert isinstance(client_outcome.error, TLSError)
    assert "certificate required" in str(client_outcome.error)    # RFC 8446 alert 116
    assert server.peer_spiffe_id is None


def _python_client_context(pki: PKI, tmp_path: Path, workload: Workload) -> ssl.SSLContext:
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(workload.chain_pem)
    key.write_bytes(workload.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False                  # mesh peers are named by SPIFFE ID, not DNS
    ctx.load_verify_locations(cadata=pki.bundle_pem.decode())
    ctx.load_cert_chain(chain, key)
    return ctx


def test_tls12_client_is_refused(pki: PKI, sockets, tmp_path: Path) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    ctx = _python_client_context(pki, tmp_path, pki.frontend)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    done = _on_thread(server.handshake)
    wrapped = ctx.wrap_socket(c_sock.dup(), do_handshake_on_connect=False)
    try:
        with pytest.raises(ssl.SSLError, match="(?i)protocol version"):
            wrapped.do_handshake()
    finally:
        wrapped.close()
    server_error = done().error
    assert isinstance(server_error, TLSError)
    assert "unsupported protocol" in str(server_error)


def test_python_ssl_client_interoperates(pki: PKI, sockets, tmp_path: Path) -> None:
    # The reference peer: a TLS 1.3 client that is not ours gets the same treatment.
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki, [b"http/1.1"]), s_sock.fileno())
    ctx = _python_client_context(pki, tmp_path, pki.frontend)
    ctx.set_alpn_protocols(["http/1.1"])
    done = _on_thread(_echo_server(server))
    with ctx.wrap_socket(c_sock.dup(), server_hostname=SNI) as wrapped:
        assert wrapped.version() == "TLSv1.3"
        assert wrapped.selected_alpn_protocol() == "http/1.1"
        wrapped.sendall(b"hello")
        assert wrapped.recv(1024) == b"HELLO"
        wrapped.unwrap()
    assert done().error is None
    assert server.peer_spiffe_id == FRONTEND_ID
    assert server.server_name == SNI


# --- resumption ----------------------------------------------------------------------


def test_session_resumption(pki: PKI, sockets) -> None:
    server_ctx, client_ctx = _server_ctx(pki), _client_ctx(pki)

    s_sock, c_sock = sockets()
    first_server = tls.TLSSession(server_ctx, s_sock.fileno())
    first = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    done = _on_thread(_echo_server(first_server))
    first.handshake()
    # TLS 1.3 tickets come after the handshake and are only processed by a read.
    assert first.get_session() is None
    first.write(b"ping")
    assert first.read(1024) == b"PING"
    ticket = first.get_session()
    assert isinstance(ticket, tls.TLSSessionTicket)
    first.shutdown()
    assert first.read(1024) == b""
    assert done().error is None
    assert not first.session_reused

    s_sock, c_sock = sockets("tcp")
    second_server = tls.TLSSession(server_ctx, s_sock.fileno())
    second = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    second.set_session(ticket)
    done = _on_thread(_echo_server(second_server))
    _echo_client(second)
    assert done().error is None
    assert second.session_reused and second_server.session_reused
    # The identities come from the session: a resumed connection still knows its peer.
    assert second_server.peer_spiffe_id == FRONTEND_ID
    assert second.peer_spiffe_id == BACKEND_ID


def _ticket_then_resume(sockets, client_ctx: tls.TLSContext, issuing: tls.TLSContext,
                        resuming: tls.TLSContext) -> tuple[tls.TLSSession, tls.TLSSession]:
    """A full handshake with `issuing` for a ticket, then a connection offering it to
    `resuming`: that second (client, server) pair, both ends done."""
    s_sock, c_sock = sockets()
    first = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    done = _on_thread(_echo_server(tls.TLSSession(issuing, s_sock.fileno())))
    _echo_client(first)
    assert done().error is None
    ticket = first.get_session()
    assert ticket is not None

    s_sock, c_sock = sockets()
    server = tls.TLSSession(resuming, s_sock.fileno())
    second = tls.TLSSession(client_ctx, c_sock.fileno(), server_name=SNI)
    second.set_session(ticket)
    done = _on_thread(_echo_server(server))
    _echo_client(second)
    assert done().error is None
    return second, server


def test_ticket_from_a_rotated_server_context_means_full_handshake(pki: PKI, sockets) -> None:
    # Each server context has its own ticket keys: after a rotation (a new context) old
    # tickets do not decrypt and peers fall back to a full, freshly verified handshake.
    second, rotated = _ticket_then_resume(sockets, _client_ctx(pki), _server_ctx(pki),
                                          _server_ctx(pki))
    assert not second.session_reused and not rotated.session_reused


def test_read_timeout_is_an_error_and_the_session_survives_it(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    _bound(c_sock, 0.2)
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    go = threading.Event()

    def serve() -> None:
        server.handshake()
        assert go.wait(SOCKET_TIMEOUT_S)
        server.write(b"late")

    done = _on_thread(serve)
    client.handshake()
    with pytest.raises(TLSError, match="timed out"):
        client.read(16)
    go.set()
    assert client.read(16) == b"late"
    assert done().error is None


def test_concurrent_use_is_refused(pki: PKI, sockets) -> None:
    # An SSL is not thread-safe; while one thread is blocked in it, others are turned away.
    s_sock, c_sock = sockets()
    _bound(s_sock, 0.05)
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    done = _on_thread(server.handshake)
    client.handshake()
    assert done().error is None
    stop = threading.Event()

    def keep_reading() -> None:
        while not stop.is_set():
            try:
                server.read(1)              # nothing comes: times out after 50 ms
            except (TLSError, RuntimeError):
                pass

    reader = _on_thread(keep_reading)
    refused = False
    deadline = time.monotonic() + SOCKET_TIMEOUT_S
    while not refused and time.monotonic() < deadline:
        try:
            server.read(1)
        except RuntimeError as exc:
            refused = "another thread" in str(exc)
        except TLSError:
            pass                            # this thread got in first and timed out
    stop.set()
    assert reader().error is None
    assert refused


def test_session_requires_a_handshake_first(pki: PKI, sockets) -> None:
    _, c_sock = sockets()
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    assert repr(client) == "<TLSSession client new>"
    with pytest.raises(ValueError, match="handshake"):
        client.read(1)
    with pytest.raises(ValueError, match="open session"):
        client.write(b"x")
    client.shutdown()                       # nothing to close yet: a no-op
    assert client.peer_spiffe_id is None
    assert client.alpn is None
    assert client.session_reused is False
    assert client.get_session() is None


def test_handshake_runs_once(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    done = _on_thread(_echo_server(server))
    _echo_client(client)
    assert done().error is None
    with pytest.raises(ValueError, match="once"):
        client.handshake()
    with pytest.raises(ValueError, match="open session"):
        client.write(b"after shutdown")
    with pytest.raises(ValueError, match="before handshake"):
        client.set_session(client.get_session())


def test_peer_closing_without_close_notify_is_truncation(pki: PKI, sockets) -> None:
    s_sock, c_sock = sockets()
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(_client_ctx(pki), c_sock.fileno())
    done = _on_thread(server.handshake)
    client.handshake()
    assert done().error is None
    c_sock.shutdown(socket.SHUT_RDWR)       # the TCP-level end, with no TLS close_notify
    with pytest.raises(TLSError, match="unexpected eof"):
        server.read(16)


def test_role_specific_calls(pki: PKI, sockets) -> None:
    s_sock, _ = sockets()
    server_ctx = _server_ctx(pki)
    with pytest.raises(ValueError, match="clients"):
        tls.TLSSession(server_ctx, s_sock.fileno(), server_name=SNI)
    server = tls.TLSSession(server_ctx, s_sock.fileno())
    with pytest.raises(ValueError, match="clients"):
        server.get_session()


@pytest.mark.parametrize("name", ["", "x" * 256, "bad\0name", "bücher.example"],
                         ids=["empty", "too-long", "nul", "non-ascii"])
def test_bad_server_name(pki: PKI, sockets, name: str) -> None:
    _, c_sock = sockets()
    with pytest.raises(ValueError):
        tls.TLSSession(_client_ctx(pki), c_sock.fileno(), server_name=name)


def test_bad_fd_and_ticket(pki: PKI) -> None:
    with pytest.raises(ValueError):
        tls.TLSSession(_client_ctx(pki), -1)
    with pytest.raises(TypeError):
        tls.TLSSession(_client_ctx(pki), "3")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tls.TLSSessionTicket()
    with pytest.raises(TypeError):
        tls.TLSSession(_client_ctx(pki), 0).set_session(None)  # type: ignore[arg-type]


def test_sessions_are_freed(pki: PKI, sockets) -> None:
    # Many SSL objects on one context, dropped: a leak or double free shows here.
    _, c_sock = sockets()
    ctx = _client_ctx(pki)
    for _ in range(2000):
        s = tls.TLSSession(ctx, c_sock.fileno(), server_name=SNI)
    del s


def test_unverified_peer_has_no_usable_identity(pki: PKI, sockets) -> None:
    # A client context without SSL_VERIFY_PEER completes the handshake whatever the
    # server's chain; the ID it claims must not be reported as if it were proven.
    s_sock, c_sock = sockets()
    lax = tls.TLSContext(server=False)
    lax.load_cert_chain(pki.frontend.chain_pem, pki.frontend.key_pem)
    lax.load_trust(pki.other_bundle_pem)
    server = tls.TLSSession(_server_ctx(pki), s_sock.fileno())
    client = tls.TLSSession(lax, c_sock.fileno())
    done = _on_thread(_echo_server(server))
    _echo_client(client)
    assert done().error is None
    assert server.peer_spiffe_id == FRONTEND_ID
    with pytest.raises(TLSError, match="did not verify"):
        client.peer_spiffe_id


# --- building mesh contexts ----------------------------------------------------------


def test_for_mesh_builds_both_roles(pki: PKI) -> None:
    server = _server_ctx(pki, [b"http/1.1"])
    client = _client_ctx(pki)
    assert isinstance(server, tls.TLSContext) and server.server
    assert isinstance(client, tls.TLSContext) and not client.server


def test_for_mesh_refuses_a_leaf_without_spiffe_id(pki: PKI) -> None:
    key = _key()
    leaf = _pem(_leaf_cert(pki.intermediate, [x509.DNSName("backend.demo")], key=key))
    with pytest.raises(TLSError, match="the leaf.*no SPIFFE ID"):
        tls.TLSContext.for_mesh(True, leaf + pki.intermediate.pem, _key_pem(key), pki.bundle_pem)


def test_for_mesh_reports_bad_inputs(pki: PKI) -> None:
    w = pki.backend
    with pytest.raises(TLSError, match="key values mismatch"):
        tls.TLSContext.for_mesh(True, w.chain_pem, pki.frontend.key_pem, pki.bundle_pem)
    with pytest.raises(TLSError, match="trust bundle"):
        tls.TLSContext.for_mesh(False, w.chain_pem, w.key_pem, b"")
    with pytest.raises(ValueError):
        tls.TLSContext.for_mesh(False, w.chain_pem, w.key_pem, pki.bundle_pem, [b""])
    with pytest.raises(TypeError):
        tls.TLSContext.for_mesh(False, w.chain_pem, None, pki.bundle_pem)  # type: ignore[arg-type]


# --- SPIFFE IDs from certificates ----------------------------------------------------


def _cert_with(pki: PKI, sans: list[x509.GeneralName] | None) -> bytes:
    return _pem(_leaf_cert(pki.intermediate, sans))


def _uris(*values: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(v) for v in values]


def test_spiffe_id_of_workload_certificates(pki: PKI) -> None:
    assert tls.spiffe_id_of_pem(pki.frontend.leaf_pem) == FRONTEND_ID
    assert tls.spiffe_id_of_pem(pki.backend.chain_pem) == BACKEND_ID     # first cert: the leaf


@pytest.mark.parametrize(
    "sans",
    [None, [x509.DNSName("backend.demo")], _uris("https://backend.demo/")],
    ids=["no-san", "dns-only", "https-uri"],
)
def test_no_spiffe_id_is_none(pki: PKI, sans: list[x509.GeneralName] | None) -> None:
    assert tls.spiffe_id_of_pem(_cert_with(pki, sans)) is None


def test_no_spiffe_id_in_a_ca_certificate(pki: PKI) -> None:
    assert tls.spiffe_id_of_pem(pki.bundle_pem) is None


def test_spiffe_id_next_to_dns_names(pki: PKI) -> None:
    # X509-SVID §2: exactly one URI SAN; other SAN types may sit beside it.
    sans = [x509.DNSName("backend.demo"), *_uris(BACKEND_ID), x509.DNSName("b.demo")]
    assert tls.spiffe_id_of_pem(_cert_with(pki, sans)) == BACKEND_ID


@pytest.mark.parametrize(
    ("uris", "problem"),
    [
        ((FRONTEND_ID, BACKEND_ID), "more than one URI SAN"),
        ((BACKEND_ID, "https://backend.demo/"), "more than one URI SAN"),
        (("spiffe://cluster.local/ns/demo/sa/" + "x" * 3000,), "longer than 2048"),
        (("spiffe://cluster.local/ns/../sa/backend",), "valid SPIFFE ID"),
        (("spiffe://Cluster.local/ns/demo/sa/backend",), "valid SPIFFE ID"),
        (("spiffe://cluster.local/ns/demo/sa/backend/",), "valid SPIFFE ID"),
        (("spiffe:///ns/demo/sa/backend",), "valid SPIFFE ID"),
        (("spiffe://cluster.local:8443/ns/demo",), "valid SPIFFE ID"),
        (("spiffe://cluster.local/ns/demo?x=1",), "valid SPIFFE ID"),
    ],
    ids=["two-spiffe", "spiffe-and-https", "too-long", "dot-segment", "uppercase-domain",
         "trailing-slash", "empty-domain", "port", "query"],
)
def test_unusable_spiffe_id_raises(pki: PKI, uris: tuple[str, ...], problem: str) -> None:
    with pytest.raises(TLSError, match=problem):
        tls.spiffe_id_of_pem(_cert_with(pki, _uris(*uris)))


@pytest.mark.parametrize(
    "garbage", [b"", b"text", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_spiffe_id_of_garbage_raises(garbage: bytes) -> None:
    with pytest.raises(TLSError, match="certificate"):
        tls.spiffe_id_of_pem(garbage)


# The reference: SPIFFE ID spec §2 as a regular expression, checked against the C parser.
_REFERENCE = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def _reference_spiffe_id(uri: str) -> str | None | type[TLSError]:
    if not uri.startswith("spiffe://"):
        return None
    if len(uri.encode()) > 2048:
        return TLSError
    if not _REFERENCE.fullmatch(uri) or any(seg in (".", "..") for seg in uri[9:].split("/")[1:]):
        return TLSError
    return uri


def _spiffe_uris(trust_domain_chars: str, segment_chars: str) -> st.SearchStrategy[str]:
    return st.builds(lambda td, segs: "spiffe://" + td + "".join("/" + s for s in segs),
                     st.text(trust_domain_chars, max_size=8),
                     st.lists(st.text(segment_chars, max_size=6), max_size=4))


_uri_text = st.one_of(
    _spiffe_uris("az09.-_", "aZ09.-_"),                  # mostly valid: dot segments, empties
    _spiffe_uris("abcAZ09.-_:@%", "aZ09.-_/%? "),          # bad characters mixed in
    st.text("spifeSPIFE:/abc.", max_size=14),             # scheme variations
)


@settings(max_examples=150, deadline=None)
@given(uri=_uri_text)
def test_spiffe_syntax_matches_reference(pki: PKI, uri: str) -> None:
    expected = _reference_spiffe_id(uri)
    pem = _cert_with(pki, _uris(uri))
    if expected is TLSError:
        with pytest.raises(TLSError):
            tls.spiffe_id_of_pem(pem)
    else:
        assert tls.spiffe_id_of_pem(pem) == expected


def test_server_contexts_sharing_ticket_keys_resume_each_others_sessions(pki: PKI,
                                                                          sockets) -> None:
    # Two workers of one node: each its own certificate (and key) for the same
    # identity, one key set for their tickets, so a ticket from one resumes on the other.
    keys = os.urandom(80)
    issuing, resuming = _server_ctx(pki), _server_ctx(pki, workload=_workload(
        pki.intermediate, BACKEND_ID))
    for ctx in (issuing, resuming):
        ctx.set_ticket_keys(keys)
    second, other_server = _ticket_then_resume(sockets, _client_ctx(pki), issuing, resuming)
    assert second.session_reused and other_server.session_reused
    assert other_server.peer_spiffe_id == FRONTEND_ID


def test_ticket_keys_are_a_servers_and_eighty_bytes(pki: PKI) -> None:
    with pytest.raises(ValueError, match="server"):
        _client_ctx(pki).set_ticket_keys(os.urandom(80))
    with pytest.raises(ValueError, match="80 bytes"):
        _server_ctx(pki).set_ticket_keys(os.urandom(48))
