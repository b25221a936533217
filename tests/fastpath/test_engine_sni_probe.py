"""The inbound port does not tell a caller without a mesh certificate which service names
it serves: an unknown name is refused only after the client's certificate has been
asked for and verified, so such a caller gets the same failure for every name.

The attack replayed: a scanner with no certificate (or one from another root) sends
ClientHellos naming guessed services. Before, a name with no route got an
unrecognized_name alert at once, while a served name went on to ask for a certificate:
the answers listed the node's services.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from fastpath import tls
from fastpath.errors import TLSError

from enginekit import TIMEOUT_S
from test_engine import (SNI, Mesh, client_ctx, make_mesh, mesh_pki,  # noqa: F401
                         roundtrip, settled)

pytestmark = pytest.mark.timeout(60)

UNKNOWN = "payments.prod.svc.cluster.local"


def _scanner(tmp_path: Path, creds=None) -> ssl.SSLContext:
    """A TLS 1.3 client that checks nothing; with `creds`, it shows that certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if creds is not None:
        (tmp_path / "chain.pem").write_bytes(creds.chain_pem)
        (tmp_path / "key.pem").write_bytes(creds.key_pem)
        ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    return ctx


def _probe(m: Mesh, ctx: ssl.SSLContext, name: str | None) -> str:
    """What the scanner learns from one ClientHello naming `name`: where it failed
    (handshake or first read) and the alert it got."""
    raw = socket.create_connection(("127.0.0.1", m.in_port), timeout=TIMEOUT_S)
    try:
        with ctx.wrap_socket(raw, server_hostname=name, do_handshake_on_connect=False) as s:
            stage = "handshake"
            try:
                s.do_handshake()
                stage = "read"
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                data = s.recv(1)
                return f"{stage}: {'eof' if not data else 'data'}"
            except ssl.SSLError as exc:
                return f"{stage}: {exc.reason}"
            except OSError as exc:
                return f"{stage}: {type(exc).__name__}"
    finally:
        raw.close()


@pytest.mark.parametrize("shown", ["no certificate", "a foreign root's certificate"])
def test_a_scanner_without_a_mesh_certificate_cannot_tell_served_names_from_others(
        make_mesh, tmp_path: Path, shown: str) -> None:
    m = make_mesh()
    ctx = _scanner(tmp_path, None if shown == "no certificate" else m.pki.stranger)
    served = _probe(m, ctx, SNI)
    assert served.startswith("read: "), served        # TLS 1.3: refused after its Finished
    assert _probe(m, ctx, UNKNOWN) == served
    assert _probe(m, ctx, None) == served
    stats = m.in_node.wait_stat("tls_unknown_sni", 2)
    assert stats["tls_unknown_sni"] == 2               # counted as before
    assert stats["inbound_tls_failures_verify"] == 1   # the served name's refusal
    assert m.app.connections == 0


def test_a_mesh_caller_naming_an_unknown_service_is_refused_after_its_certificate(
        make_mesh) -> None:
    m = make_mesh()
    session = m.tls_client(client_ctx(m.pki), server_name=UNKNOWN)
    session.handshake()
    with pytest.raises(TLSError, match="handshake failure"):
        session.read(1)
    stats = m.in_node.wait_stat("tls_unknown_sni")
    assert stats["tls_unknown_sni"] == 1
    assert stats["inbound_tls_failures_verify"] == stats["inbound_tls_failures_other"] == 0
    assert m.app.connections == 0


def test_a_resumed_session_cannot_name_an_unknown_service(make_mesh) -> None:
    """Resumption verifies no certificate: the name is checked after it all the same."""
    m = make_mesh()
    ctx = client_ctx(m.pki)
    first = m.tls_client(ctx)
    first.handshake()
    first.write(b"hi")
    assert first.read(2) == b"hi"                      # the app echoes
    ticket = first.get_session()
    assert ticket is not None
    first.shutdown()
    second = m.tls_client(ctx, server_name=UNKNOWN)
    second.set_session(ticket)
    second.handshake()
    assert second.session_reused
    second.write(b"hi")
    try:
        assert second.read(2) == b""
    except TLSError:
        pass                                           # closed without close_notify
    stats = m.in_node.wait_stat("tls_unknown_sni")
    assert stats["tls_unknown_sni"] == 1
    assert stats["inbound_tls_resumed"] == 1
    assert m.app.connections == 1                      # the first connection's only
