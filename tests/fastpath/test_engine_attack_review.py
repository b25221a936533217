"""A second reader's attacks on issue 10's data plane (identity and input holes), each
replayed over real engines, mutual TLS and sockets on loopback, and named after the
attack. Fixtures are those of test_engine_http.py; the app that shows what reached it
raw is test_engine_header_holes.py's EchoApp; every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, listener, port_of, recv_all
from test_engine_header_holes import EchoApp, read_request
from test_engine_http import (BACKEND_ID, FRONTEND_ID, SNI, Mesh, mesh, mesh_pki,  # noqa: F401
                              client_ctx, server_ctx)
from test_engine_smuggling import _tls_client

pytestmark = pytest.mark.timeout(60)

FORGED = b"spiffe://cluster.local/ns/ops/sa/admin"
FORGED_XFCC = b"X-Forwarded-Client-Cert: By=" + BACKEND_ID.encode() + b";URI=" + FORGED + b"\r\n"
REAL_XFCC = f"By={BACKEND_ID};URI={FRONTEND_ID}".encode()


def _echo_route(m: Mesh, app: EchoApp, protocol: str | None = None) -> None:
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno())
    kw = {} if protocol is None else {"protocol": protocol}
    t.add_inbound_route(SNI, server_ctx(m.pki), "127.0.0.1", app.port,
                        service="demo/backend:http", identity=BACKEND_ID, **kw)
    m.in_node.install(t)


@pytest.fixture
def echo_auto(mesh: Mesh):
    """The app behind the inbound port echoes each request raw; its port declares no
    protocol (detection from the first bytes)."""
    app = EchoApp()
    _echo_route(mesh, app)
    yield app
    app.close()


def as_mesh_peer(m: Mesh, payload: bytes, alpn: list[str] | None = None) -> bytes:
    """`payload` sent to the inbound port by a holder of a mesh certificate; all the
    answer until the node closes or TIMEOUT_S."""
    raw = socket.create_connection(("127.0.0.1", m.in_port), timeout=TIMEOUT_S)
    s = _tls_client(m.pki, alpn).wrap_socket(raw, server_hostname=SNI)
    with s:
        s.sendall(payload)
        return answer(s)


def answer(s: socket.socket, quiet_s: float = 1.0) -> bytes:
    """What `s` receives until it ends or stays quiet for `quiet_s` (the echo app keeps
    its connections open)."""
    out = bytearray()
    s.settimeout(quiet_s)
    try:
        while len(out) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (OSError, TimeoutError):
        pass
    return bytes(out)


# --- detection: what a lenient app takes for a request is framed ----------------------------


@pytest.mark.parametrize("alpn", [None, ["meshnode-tcp"]], ids=["no-alpn", "meshnode-tcp"])
def test_a_long_method_token_on_an_auto_port_is_not_relayed_raw(mesh: Mesh, echo_auto: EchoApp,
                                                                alpn) -> None:
    """Go's net/http and h11 take any token for a method, whatever its length: a request
    line whose method is longer than detection looked at (32 bytes) was judged "not
    HTTP" and relayed opaque, its forged x-forwarded-client-cert read by the app."""
    method = b"X" * 40
    reply = as_mesh_peer(mesh, method + b" /who HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC
                         + b"Connection: close\r\n\r\n", alpn)
    assert FORGED not in reply, reply
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert REAL_XFCC in reply


# --- a config push that declares a port HTTP, while a connection's first bytes are awaited ----


def test_a_silent_peer_during_a_push_that_declares_the_port_http_gets_no_raw_pipe(
        mesh: Mesh, echo_auto: EchoApp) -> None:
    """A mesh peer connects to a port with no declared protocol and says nothing; the
    operator then declares the port HTTP. At the detection deadline the silent pair
    was opened as opaque TCP on the new table, a raw pipe to a port declared HTTP, and
    the request sent after it reached the app with its forged identity."""
    raw = socket.create_connection(("127.0.0.1", mesh.in_port), timeout=TIMEOUT_S)
    s = _tls_client(mesh.pki, None).wrap_socket(raw, server_hostname=SNI)
    with s:
        _echo_route(mesh, echo_auto, "http")        # well inside the 200 ms deadline
        time.sleep(0.4)                             # the deadline passes
        s.sendall(b"GET /who HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC
                  + b"Connection: close\r\n\r\n")
        reply = answer(s)
    assert FORGED not in reply, reply


# --- CONNECT to an app that is no proxy ------------------------------------------------------


@pytest.mark.parametrize("app_answer", [None, b"HTTP/1.1 204 No Content\r\n\r\n"],
                         ids=["200-with-a-body", "204"])
def test_smuggling_behind_a_connect_that_a_catch_all_handler_answers(mesh: Mesh,
                                                                      app_answer) -> None:
    """An app whose catch-all handler answers every method 2xx (and goes on reading
    requests) "granted" a CONNECT by the engine's reading: the bytes behind went to it
    as a raw pipe, and the request there reached it with a forged identity. A 204 or a
    bare 200 is a tunnel by RFC 9110 §9.3.6, so CONNECT is refused 403 before any app
    (Envoy answers an upgrade it has no config for so); nothing reaches the app."""
    app = EchoApp() if app_answer is None else Recorder(lambda got: app_answer)
    try:
        if app_answer is None:
            _echo_route(mesh, app, "http")
        else:
            t = fe.RouteTable()
            t.set_inbound(mesh.in_sock.fileno())
            t.add_inbound_route(SNI, server_ctx(mesh.pki), "127.0.0.1", app.port,
                                service="demo/backend:http", identity=BACKEND_ID, protocol="http")
            mesh.in_node.install(t)
        c = mesh.client()
        c.sendall(b"CONNECT backend:8080 HTTP/1.1\r\nHost: backend:8080\r\n\r\n"
                  b"GET /who HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC + b"\r\n")
        reply = answer(c)
    finally:
        app.close()
    assert FORGED not in reply, reply
    assert reply.startswith(b"HTTP/1.1 403 "), reply
    assert mesh.out_node.stats()["http_upgrade_refused"] == 1
    if app_answer is not None:
        assert not any(FORGED in got for got in app.seen), app.seen


def test_connect_from_a_mesh_peer_is_refused_at_the_inbound_port(mesh: Mesh) -> None:
    """The same CONNECT sent straight to the inbound port by a mesh peer: 403 there."""
    app = EchoApp()
    try:
        _echo_route(mesh, app, "http")
        reply = as_mesh_peer(mesh, b"CONNECT backend:8080 HTTP/1.1\r\nHost: backend:8080\r\n\r\n"
                             b"GET /who HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC + b"\r\n",
                             ["http/1.1"])
    finally:
        app.close()
    assert FORGED not in reply, reply
    assert reply.startswith(b"HTTP/1.1 403 "), reply
    assert mesh.in_node.stats()["http_upgrade_refused"] == 1


# --- h2c: an upgrade to HTTP itself ------------------------------------------------------------


class Recorder(EchoApp):
    """Keeps each request it read (Recorder.seen) and answers it with `reply(request)`."""

    def __init__(self, reply: Callable[[bytes], bytes]) -> None:
        self.seen: list[bytes] = []
        self.reply = reply
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            got = read_request(conn, buf)
            self.seen.append(got)
            conn.sendall(self.reply(got))


def h2c_app() -> Recorder:
    """An app with an h2c handler (Go's h2c.NewHandler, a gRPC server in plaintext): it
    grants `Upgrade: h2c` with 101 and goes on reading requests over the pipe (HTTP/2
    frames in life; HTTP/1.1 heads here, which show the same thing: requests the node
    never framed, their identity fields as the client wrote them)."""
    def reply(got: bytes) -> bytes:
        granted = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                   b"Upgrade: h2c\r\n\r\n") if b"upgrade: h2c" in got.lower() else b""
        return granted + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    return Recorder(reply)


H2C = (b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
BEHIND = b"GET /who HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC + b"\r\n"


@pytest.fixture
def h2c(mesh: Mesh):
    app = h2c_app()
    _echo_route(mesh, app, "http")
    yield app
    app.close()


@pytest.mark.parametrize("upgrade", [b"Upgrade: h2c\r\n",
                                     b"Upgrade: websocket\r\nUpgrade: x, H2C\r\n"],
                         ids=["h2c", "h2c-on-a-second-line"])
def test_h2c_smuggling_through_the_outbound_listener(mesh: Mesh, h2c: Recorder,
                                                     upgrade: bytes) -> None:
    """`Upgrade: h2c` asks to go on in HTTP/2 over the same connection: granted, every
    request after it reaches the app unframed, a forged identity with it (the "h2c
    smuggling" of Bishop Fox, 2020). The mesh does not carry it: the upgrade is taken
    off the request, which the app answers in HTTP/1.1, and the next one is framed."""
    c = mesh.client()
    c.sendall(H2C.replace(b"Upgrade: h2c\r\n", upgrade) + BEHIND)
    reply = answer(c)
    assert not any(FORGED in got for got in h2c.seen), h2c.seen
    assert not any(b"h2c" in got.lower() or b"http2-settings" in got.lower()
                   for got in h2c.seen), h2c.seen
    assert reply.count(b"HTTP/1.1 200 OK") == 2, reply


@pytest.mark.parametrize("extra", [b"", b"traceparent: 00-not-a-trace\r\n"],
                         ids=["h2c", "with-a-malformed-traceparent"])
def test_h2c_smuggling_from_a_mesh_peer(mesh: Mesh, h2c: Recorder, extra: bytes) -> None:
    """The same from a holder of a mesh certificate straight to the inbound port: the
    app's 101 to a request the node does not let upgrade is a 502, no pipe. (The head
    is parsed again once its trace fields are edited, the x-forwarded-client-cert step's
    line or a malformed traceparent's going: that parse read `Upgrade: h2c` as an
    upgrade asked, and the app's 101 opened the pipe.)"""
    reply = as_mesh_peer(mesh, H2C.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n") + BEHIND,
                         ["http/1.1"])
    assert not any(FORGED in got for got in h2c.seen), h2c.seen
    assert FORGED not in reply
    assert reply.startswith(b"HTTP/1.1 502 "), reply


# --- detection against what Python's http.server takes for a request ------------------------


@pytest.mark.parametrize("line", [
    b"GET /headers\r\n",                    # HTTP/0.9's form: it still reads the fields
    b" GET /headers HTTP/1.1\r\n",          # whitespace before the method
    b"GET\x0b/headers\x0cHTTP/1.1\r\n",     # VT, FF between the parts (str.split())
    b"GET /headers\rHTTP/1.1\r\n",          # a bare CR between them
    b"GET\x1f/headers\xa0HTTP/1.1\r\n",     # what str.split() also splits latin-1 on
], ids=["http09", "leading-space", "vt-ff", "bare-cr", "unit-separator-nbsp"])
def test_a_request_line_python_http_server_accepts_is_not_relayed_raw_on_an_auto_port(
        mesh: Mesh, line: bytes) -> None:
    """Python's http.server (the demo backend's, and many small apps') splits a request
    line on any whitespace, skips it before the method, and takes "GET /path" for an
    HTTP/0.9 request whose fields it still reads. Detection judged such a line not
    HTTP: the pair went opaque to the app, which read the forged identity."""
    t = fe.RouteTable()
    t.set_inbound(mesh.in_sock.fileno())
    t.add_inbound_route(SNI, server_ctx(mesh.pki), "127.0.0.1", mesh.app.port,
                        service="demo/backend:http", identity=BACKEND_ID)
    mesh.in_node.install(t)
    reply = as_mesh_peer(mesh, line + b"Host: backend\r\n" + FORGED_XFCC + b"\r\n")
    assert FORGED not in reply, reply


def test_a_silent_caller_during_a_push_that_declares_its_service_port_http_is_framed(
        mesh: Mesh) -> None:
    """The outbound side of the same race: a local caller connects to a service port
    with no declared protocol and says nothing; the push declares the port HTTP. At
    the detection deadline the pair went opaque (ALPN meshnode-tcp), though its port
    is declared HTTP now; the request sent after it crossed unframed, and an inbound
    port that relays opaque handed the app the forged identity."""
    app = EchoApp()
    sock = listener()
    mesh.clients.append(sock)
    try:
        _echo_route(mesh, app, "tcp")

        def table(protocol: str) -> fe.RouteTable:
            t = mesh.outbound_table()
            index = t.add_service("demo/backend:own", SNI, [BACKEND_ID],
                                  [("127.0.0.1", mesh.in_port)])
            t.add_outbound_tcp(sock.fileno(), index, client_ctx(mesh.pki), protocol=protocol)
            return t

        mesh.out_node.install(table("auto"))
        declared = table("http")
        c = socket.create_connection(("127.0.0.1", port_of(sock)), timeout=TIMEOUT_S)
        mesh.clients.append(c)
        time.sleep(0.05)                            # accepted: its first bytes awaited
        mesh.out_node.install(declared)             # well inside the 200 ms deadline
        time.sleep(0.4)                             # the deadline passes
        c.sendall(b"GET /who HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC + b"\r\n")
        reply = answer(c)
    finally:
        app.close()
    assert FORGED not in reply, reply
    assert mesh.out_node.stats()["http_routed"] == 1


# --- who is calling: a caller that has closed its socket -------------------------------------


def _connect_send_close_as(uid: int, port: int, data: bytes) -> None:
    """A process running as `uid` connects to 127.0.0.1:`port`, writes `data` and closes
    at once (fire and forget), then exits; waited for."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.closerange(3, 1 << 20)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
            s.sendall(data)
            s.close()
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a caller as another user needs root (setuid)")
def test_a_caller_that_closed_before_the_accept_is_not_taken_for_root(mesh: Mesh) -> None:
    """Workloads told apart by user, one of them root's. Any local user connects, writes
    a request and closes before the node accepts: the kernel keeps its end as a
    time-wait socket (FIN_WAIT2 as sock_diag reports it), which no process owns and
    which sock_diag says belongs to uid 0. The request was sent as root's workload."""
    app = Recorder(lambda got: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    sock = listener()
    mesh.clients.append(sock)
    try:
        _echo_route(mesh, app, "http")
        t = mesh.outbound_table()
        t.set_outbound_http(mesh.http_sock.fileno(), None)
        t.add_user(0, client_ctx(mesh.pki), FRONTEND_ID)        # root's workload
        index = t.add_service("demo/backend:own", SNI, [BACKEND_ID],
                              [("127.0.0.1", mesh.in_port)])
        t.add_outbound_tcp(sock.fileno(), index, None, protocol="http")
        # Queued on the listener before the node takes it up: the caller is long gone
        # by the time it is accepted (as under load).
        _connect_send_close_as(4343, port_of(sock),
                               b"POST /delete-everything HTTP/1.1\r\nHost: backend\r\n"
                               b"Content-Length: 0\r\n\r\n")
        time.sleep(0.2)
        mesh.out_node.install(t)
        time.sleep(0.5)
    finally:
        app.close()
    assert app.seen == [], app.seen
    assert mesh.out_node.stats()["callers_refused"] == 1


# --- a body the app does not read: the demo backend --------------------------------------------


def test_a_request_in_a_get_body_reaches_the_demo_backend_as_a_request(mesh: Mesh) -> None:
    """The mesh frames a GET with a Content-Length body as one request; the demo backend
    (http.server) never read a GET's body, so its keep-alive loop took that body for
    the next request: one written with a forged identity, which /echo then showed as
    the caller's (a "CL.0" desync, behind a node that framed everything right)."""
    from http.server import ThreadingHTTPServer

    from meshnode.demo.apps import Backend, _Handler

    seen: list[str] = []

    class Watched(Backend):
        def handle(self, req, path):
            seen.append(req.headers.get("x-forwarded-client-cert", ""))
            return super().handle(req, path)

    handler = type("BackendHandler", (_Handler,), {"app": Watched()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        t = fe.RouteTable()
        t.set_inbound(mesh.in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(mesh.pki), "127.0.0.1", httpd.server_address[1],
                            service="demo/backend:http", identity=BACKEND_ID, protocol="http")
        mesh.in_node.install(t)
        inner = b"GET /echo HTTP/1.1\r\nHost: backend\r\n" + FORGED_XFCC + b"\r\n"
        c = mesh.client()
        c.sendall(b"GET /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(inner), inner) + b"GET /echo HTTP/1.1\r\nHost: backend\r\n\r\n")
        reply = answer(c)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not any(FORGED.decode() in xfcc for xfcc in seen), seen
    assert reply.count(b"HTTP/1.1 200 ") == 2, reply
