"""Attacks on the HTTP framing between a caller and an app, each replayed over real
engines, mutual TLS and sockets on loopback (the fixtures of test_engine_http.py).

What they have in common: a byte the node did not frame reaches an app on an HTTP port,
or a request reaches it with a header the node should have set (Host, the
x-forwarded-client-cert that names the caller). Each test is named after its attack and
failed on the code before its fix.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
import time

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, listener, port_of, recv_all, wait_for
from test_engine_http import (BACKEND_ID, FRONTEND_ID, SNI, App, Mesh, PKI, RawApp,  # noqa: F401
                              _read_head, client_ctx, mesh, mesh_pki, recv_until, server_ctx)

pytestmark = pytest.mark.timeout(60)

FORGED = "spiffe://cluster.local/ns/ops/sa/admin"
FORGED_XFCC = f"X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/demo/sa/backend;URI={FORGED}\r\n"
REAL_XFCC = f"x-forwarded-client-cert: By={BACKEND_ID};URI={FRONTEND_ID}"


def headers_request(host: str = "backend", extra: str = "") -> bytes:
    """A request for the app's /headers page (it answers with the fields it got)."""
    return f"GET /headers HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def read_answers(s: socket.socket, n: int) -> list[bytes]:
    """`n` answers with a Content-Length each (fewer if the connection ends first)."""
    out: list[bytes] = []
    data = b""
    s.settimeout(TIMEOUT_S)
    while len(out) < n:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) >= length:
                out.append(head + sep + rest[:length])
                data = rest[length:]
                continue
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            chunk = b""
        if not chunk:
            break
        data += chunk
    return out


def inbound_to(mesh: Mesh, app_port: int, other_sni: str | None = None) -> None:
    """The inbound node's table: demo/backend (and `other_sni`) served by `app_port`."""
    t = fe.RouteTable()
    t.set_inbound(mesh.in_sock.fileno())
    t.add_inbound_route(SNI, server_ctx(mesh.pki), "127.0.0.1", app_port,
                        service="demo/backend:http", identity=BACKEND_ID)
    if other_sni is not None:
        t.add_inbound_route(other_sni, server_ctx(mesh.pki), "127.0.0.1", app_port)
    mesh.in_node.install(t)


def app_hosts(answer: bytes) -> list[str]:
    """The Host lines the app's /headers page says it got."""
    body = answer.partition(b"\r\n\r\n")[2].decode()
    return [line for line in body.split("\n") if line.startswith("host:")]


def xfcc_lines(answer: bytes) -> list[str]:
    return [line for line in answer.decode(errors="replace").split("\n")
            if line.startswith("x-forwarded-client-cert:")]


# --- 1. a request behind an Upgrade (or CONNECT) the upstream refused --------------------


@pytest.mark.parametrize("first", [
    "GET /headers HTTP/1.1\r\nHost: backend\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "GET /headers HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade, keep-alive\r\n"
    "Upgrade: WebSocket, foo\r\n\r\n",
])
def test_smuggling_a_request_behind_a_refused_upgrade(mesh: Mesh, first: str) -> None:
    """The app answers the Upgrade with a plain 200: the request behind it is framed,
    routed and its x-forwarded-client-cert replaced like any other."""
    c = mesh.client()
    c.sendall(first.encode() + headers_request(extra=FORGED_XFCC))
    answers = read_answers(c, 2)
    assert len(answers) == 2, answers
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert xfcc_lines(answers[1]) == [REAL_XFCC]
    assert FORGED.encode() not in b"".join(answers)
    assert mesh.out_node.stats()["http_routed"] == 2


def test_smuggling_a_request_behind_a_connect(mesh: Mesh) -> None:
    """CONNECT is refused by the node (403, as Envoy answers an upgrade it has no config
    for): neither it nor the request behind it reaches the app."""
    c = mesh.client()
    c.sendall(b"CONNECT backend:8080 HTTP/1.1\r\nHost: backend:8080\r\n\r\n"
              + headers_request(extra=FORGED_XFCC))
    c.shutdown(socket.SHUT_WR)
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert FORGED.encode() not in reply
    assert mesh.out_node.stats()["http_upgrade_refused"] == 1


@pytest.mark.parametrize("upgrade", ["x", "TLS/1.2", "h2c-not, foo"])
def test_an_upgrade_other_than_websocket_is_refused(mesh: Mesh, upgrade: str) -> None:
    """Only WebSocket upgrades are carried (Istio's default): another Upgrade asked with
    "Connection: upgrade" is refused 403, never handed to the app to grant."""
    c = mesh.client()
    c.sendall(f"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: upgrade\r\n"
              f"Upgrade: {upgrade}\r\n\r\n".encode())
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 403 "), reply


def test_a_granted_upgrade_still_carries_bytes_sent_with_its_head(mesh: Mesh) -> None:
    """Bytes the client sent right behind its Upgrade head wait for the 101, then go."""
    c = mesh.client()
    c.sendall(b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n\r\nearly bytes")
    reply = recv_until(c, b"EARLY BYTES")
    assert reply.startswith(b"HTTP/1.1 101 ")


def test_a_101_to_a_request_that_asked_no_upgrade_opens_no_pipe(mesh: Mesh) -> None:
    """An app that answers 101 to a plain GET (to open a pipe the caller's node never
    agreed to) gets a 502 for it, and the bytes behind go nowhere raw."""
    seen: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
        conn.settimeout(1.0)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                seen.append(chunk)
        except socket.timeout:
            return

    app = RawApp(serve)
    try:
        inbound_to(mesh, app.port)
        c = mesh.client()
        c.sendall(headers_request() + headers_request(extra=FORGED_XFCC))
        c.shutdown(socket.SHUT_WR)
        reply = recv_all(c)
        assert reply.startswith(b"HTTP/1.1 502 ")
        assert b"101" not in reply.split(b"\r\n")[0]
        assert FORGED.encode() not in b"".join(seen)
    finally:
        app.close()


# --- 4. an absolute-form target with another Host ----------------------------------------


def test_absolute_form_target_with_another_host(mesh: Mesh) -> None:
    """Routed by the target's authority, so the app gets that authority as its Host
    (RFC 9112 §3.2.2), not the Host field the client added."""
    c = mesh.client()
    c.sendall(b"GET http://backend.demo.svc:8080/headers HTTP/1.1\r\nHost: other\r\n"
              b"Connection: close\r\n\r\n")
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert app_hosts(reply) == ["host: backend.demo.svc:8080"]


def test_absolute_form_target_with_no_host_field(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"GET http://backend/headers HTTP/1.0\r\n\r\n")
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.0 200 ") or reply.startswith(b"HTTP/1.1 200 ")
    assert app_hosts(reply) == ["host: backend"]


# --- 5. a close-delimited answer, then another service's answer --------------------------


@pytest.mark.parametrize("close_line", [b"", b"Connection: close\r\n"])
def test_close_delimited_answer_then_another_services_answer(mesh: Mesh, close_line: bytes) -> None:
    """Pipelined requests to two services, the first answered without a length: the
    client's connection ends with that answer (its end is the answer's end), so nothing
    of the second service's answer can pass as the rest of the first body."""
    def serve(conn: socket.socket) -> None:
        head = _read_head(conn)
        if b"/eof" in head.split(b"\r\n")[0]:
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + close_line + b"\r\nbody until close")
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nsecond body!")

    app = RawApp(serve)
    try:
        inbound_to(mesh, app.port, "http.other.demo.svc")
        c = mesh.client()
        c.sendall(b"GET /eof HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /next HTTP/1.1\r\nHost: other\r\n\r\n")
        reply = recv_all(c)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert reply.endswith(b"body until close")
    finally:
        app.close()


# --- 2. unframed bytes reaching an HTTP app --------------------------------------------


def _tls_client(pki: PKI, alpn: list[str] | None) -> ssl.SSLContext:
    """A caller holding a certificate under the mesh root (the frontend's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with tempfile.TemporaryDirectory() as d:
        chain, key = os.path.join(d, "chain.pem"), os.path.join(d, "key.pem")
        with open(chain, "wb") as f:
            f.write(pki.frontend.chain_pem)
        with open(key, "wb") as f:
            f.write(pki.frontend.key_pem)
        ctx.load_cert_chain(chain, key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _inbound_attempt(mesh: Mesh, alpn: list[str] | None, payload: bytes) -> bytes:
    raw = socket.create_connection(("127.0.0.1", mesh.in_port), timeout=TIMEOUT_S)
    try:
        s = _tls_client(mesh.pki, alpn).wrap_socket(raw, server_hostname=SNI)
    except (ssl.SSLError, ConnectionResetError):
        raw.close()
        return b""
    with s:
        try:
            s.sendall(payload)
            return b"".join(read_answers(s, 1))
        except (ssl.SSLError, OSError):
            return b""


def _inbound_http_table(mesh: Mesh, protocol: str | None) -> None:
    t = fe.RouteTable()
    t.set_inbound(mesh.in_sock.fileno())
    kw = {} if protocol is None else {"protocol": protocol}
    t.add_inbound_route(SNI, server_ctx(mesh.pki), "127.0.0.1", mesh.app.port,
                        service="demo/backend:http", identity=BACKEND_ID, **kw)
    mesh.in_node.install(t)


@pytest.mark.parametrize("alpn", [None, ["meshnode-tcp"]], ids=["no-alpn", "meshnode-tcp"])
@pytest.mark.parametrize("protocol", [None, "http"], ids=["auto", "http"])
def test_a_mesh_peer_without_http_alpn_gets_no_raw_pipe_to_an_http_app(
        mesh: Mesh, alpn: list[str] | None, protocol: str | None) -> None:
    """A peer with a certificate under the mesh root connects to the inbound port with no
    ALPN, or with the opaque protocol's, and sends a request carrying a forged
    x-forwarded-client-cert: the app never gets the forged one. On a port declared HTTP
    the request is framed (no ALPN) or refused and counted (an opaque ALPN); on a port
    with no declared protocol the first bytes say HTTP, so it is framed."""
    _inbound_http_table(mesh, protocol)
    before = mesh.in_node.stats()
    reply = _inbound_attempt(mesh, alpn, headers_request(extra=FORGED_XFCC))
    assert FORGED.encode() not in reply
    if alpn is None or protocol is None:
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert xfcc_lines(reply) == [REAL_XFCC]
    else:
        assert reply == b""
        wait_for(lambda: mesh.in_node.stats()["inbound_protocol_mismatch"]
                 == before.get("inbound_protocol_mismatch", 0) + 1, what="counted")


def own_port_client(mesh: Mesh, protocol: str) -> socket.socket:
    """A client of demo/backend's own outboundPort listener, its port declared `protocol`."""
    sock = listener()
    mesh.clients.append(sock)
    t = mesh.outbound_table()
    index = t.add_service(f"demo/backend:{protocol}-own", SNI, [BACKEND_ID],
                          [("127.0.0.1", mesh.in_port)])
    t.add_outbound_tcp(sock.fileno(), index, client_ctx(mesh.pki), protocol=protocol)
    mesh.out_node.install(t)
    c = socket.create_connection(("127.0.0.1", port_of(sock)), timeout=TIMEOUT_S)
    mesh.clients.append(c)
    return c


def test_a_bare_lf_request_on_a_port_declared_http_is_refused_not_relayed(mesh: Mesh) -> None:
    """Bare-LF line endings fail the strict parse; on a port declared HTTP that is a 400,
    never the opaque relay (whose app, lenient about LF, would read the forged field)."""
    c = own_port_client(mesh, "http")
    c.sendall(headers_request(extra=FORGED_XFCC).replace(b"\r\n", b"\n"))
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert FORGED.encode() not in reply
    assert mesh.out_node.stats()["sniffed_tcp"] == 0


def test_an_opaque_listener_never_reaches_a_port_declared_http(mesh: Mesh) -> None:
    """A TCP service port's listener whose upstream port is declared HTTP by the node that
    serves it: the opaque pair is refused at that node (ALPN meshnode-tcp to an HTTP
    port), and counted."""
    _inbound_http_table(mesh, "http")
    c = own_port_client(mesh, "tcp")
    c.sendall(headers_request(extra=FORGED_XFCC + "Connection: close\r\n"))
    reply = recv_all(c)
    assert FORGED.encode() not in reply
    assert reply == b""
    wait_for(lambda: mesh.in_node.stats()["inbound_protocol_mismatch"] == 1, what="counted")


def test_a_port_with_no_declared_protocol_frames_a_bare_lf_request(mesh: Mesh) -> None:
    """Detection (protocol omitted or auto) looks at how the first line begins: a request
    line with bare LF is HTTP, so it is framed and refused, not relayed opaque."""
    c = own_port_client(mesh, "auto")
    c.sendall(headers_request(extra=FORGED_XFCC).replace(b"\r\n", b"\n"))
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert FORGED.encode() not in reply


# --- 10. a head trickled in, line by line ---------------------------------------------------


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_a_head_trickled_a_line_per_write(mesh: Mesh, eol: bytes) -> None:
    """Each line in its own write (the engine looks for the head's end only in what is
    new): a whole CRLF head is routed once it ends; a bare-LF one is refused, not relayed."""
    c = mesh.client()
    lines = ([eol, b"GET /headers HTTP/1.1" + eol, b"Host: backend" + eol]
             + [b"X-Line-%d: %d" % (i, i) + eol for i in range(60)] + [eol])
    for line in lines:
        try:
            c.sendall(line)
        except OSError:
            break                   # refused as soon as a line could not be a head's
        time.sleep(0.001)
    [reply] = read_answers(c, 1)
    if eol == b"\r\n":
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert b"x-line-59: 59" in reply
    else:
        assert reply.startswith(b"HTTP/1.1 400 ")


def test_a_request_line_split_across_the_detection_deadline_is_framed(mesh: Mesh) -> None:
    """On a port with no declared protocol, a caller sends "GE", waits out the
    detection deadline, then the rest with a forged identity: still HTTP, framed."""
    _inbound_http_table(mesh, None)
    c = own_port_client(mesh, "auto")
    request = headers_request(extra=FORGED_XFCC)
    c.sendall(request[:2])
    time.sleep(0.5)                     # past ENGINE_SNIFF_TIMEOUT_MS
    c.sendall(request[2:])
    [reply] = read_answers(c, 1)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert xfcc_lines(reply) == [REAL_XFCC]
    assert mesh.out_node.stats()["sniffed_http"] == 1


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "http-alpn"])
def test_a_bare_lf_request_from_a_mesh_peer_to_an_http_port_gets_400(
        mesh: Mesh, alpn: list[str] | None) -> None:
    """Inbound, a port declared HTTP: a first request that does not parse is answered
    400 by the node; the app never sees it."""
    _inbound_http_table(mesh, "http")
    reply = _inbound_attempt(mesh, alpn, headers_request(extra=FORGED_XFCC).replace(b"\r\n", b"\n"))
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert FORGED.encode() not in reply


def test_absolute_form_with_hop_by_hop_fields_before_host(mesh: Mesh) -> None:
    """Hop-by-hop field lines before Host are removed first: the Host edit must work on
    the head as it is then (it read a stale place and crashed the worker)."""
    c = mesh.client()
    c.sendall(b"GET http://backend/headers HTTP/1.1\r\nKeep-Alive: timeout=5\r\n"
              b"Proxy-Connection: keep-alive\r\nHost: other\r\nConnection: close\r\n\r\n")
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert app_hosts(reply) == ["host: backend"]
    assert get_ok(mesh)


def get_ok(mesh: Mesh) -> bool:
    c = mesh.client()
    c.sendall(headers_request())
    return read_answers(c, 1)[0].startswith(b"HTTP/1.1 200 ")
