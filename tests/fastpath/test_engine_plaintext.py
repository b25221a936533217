"""PeerAuthentication on the inbound port (fastpath plaintext.pxi, Istio's mtls.mode):
a PERMISSIVE route takes plaintext HTTP beside mutual TLS, routed by its Host, served
with no principal and no x-forwarded-client-cert but the removal of the client's own;
plaintext for a STRICT route, for no route, or that is no HTTP at all is reset and
counted; TLS goes on as before on both; a mode pushed while pairs are open reaches them.

One engine (the destination node) on its thread, its inbound listener, a threaded
http.server app; the TLS caller is Python's ssl with a workload certificate from the
mesh's own PKI code, the plaintext caller a bare socket. Real sockets, real OpenSSL.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls
from meshnode.identity import pki

from enginekit import (TIMEOUT_S, Creds, QuietHandler, http_server, issue, listener,
                       port_of, recv_all, wait_for)

pytestmark = pytest.mark.timeout(60)

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
OPEN_SNI = "http.backend.demo.svc"        # the route made PERMISSIVE
STRICT_SNI = "http.ledger.demo.svc"       # a STRICT route beside it
ADMIN_SNI = "admin.backend.demo.svc"      # the open service's STRICT port (portLevelMtls)
TCP_SNI = "db.backend.demo.svc"           # a PERMISSIVE route declared TCP
OPEN_HOSTS = ["backend", "backend.demo", "backend.demo.svc"]
STRICT_HOSTS = ["ledger", "ledger.demo", "ledger.demo.svc"]
ALPN = [fe.ALPN_TCP, b"http/1.1"]
FORGED = "By=spiffe://cluster.local/ns/demo/sa/ledger;URI=spiffe://cluster.local/ns/demo/sa/admin"


class Fields(QuietHandler):
    """Answers every GET with the request's fields as the app got them, one a line; a
    POST with its body's length (after a 100 Continue when asked); grants a WebSocket
    upgrade and echoes the tunnel's bytes."""

    def do_GET(self) -> None:
        if self.headers.get("Upgrade") == "websocket":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "websocket")
            self.end_headers()
            while chunk := self.rfile.read1(65536):
                self.wfile.write(chunk)
            self.close_connection = True
            return
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = str(len(self.rfile.read(int(self.headers["Content-Length"])))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Node:
    engine: fe.Engine
    thread: threading.Thread
    inbound: socket.socket
    server: tls.TLSContext
    app_port: int
    client_dir: Path
    pki_bundle: bytes
    frontend: Creds

    @property
    def port(self) -> int:
        return port_of(self.inbound)

    def table(self, mode: str, tcp_mode: str = "PERMISSIVE") -> fe.RouteTable:
        """The routes: OPEN_SNI (port 8080) in `mode`, ADMIN_SNI (its service's port
        9090) and STRICT_SNI strict, TCP_SNI in `tcp_mode`."""
        t = fe.RouteTable()
        t.set_inbound(self.inbound.fileno())
        t.add_inbound_route(OPEN_SNI, self.server, "127.0.0.1", self.app_port,
                            service="demo/backend:http", identity=BACKEND_ID, protocol="http")
        t.add_inbound_route(STRICT_SNI, self.server, "127.0.0.1", self.app_port,
                            service="demo/ledger:http", identity=BACKEND_ID, protocol="http")
        t.add_inbound_route(ADMIN_SNI, self.server, "127.0.0.1", self.app_port,
                            service="demo/backend:admin", identity=BACKEND_ID,
                            protocol="http")
        t.add_inbound_route(TCP_SNI, self.server, "127.0.0.1", self.app_port,
                            service="demo/backend:db", identity=BACKEND_ID, protocol="tcp")
        t.set_inbound_mtls(OPEN_SNI, mode, hosts=OPEN_HOSTS, port=8080)
        t.set_inbound_mtls(STRICT_SNI, "STRICT", hosts=STRICT_HOSTS, port=8080)
        t.set_inbound_mtls(ADMIN_SNI, "STRICT", hosts=OPEN_HOSTS, port=9090)
        t.set_inbound_mtls(TCP_SNI, tcp_mode, hosts=OPEN_HOSTS, port=5432)
        return t

    def install(self, mode: str, tcp_mode: str = "PERMISSIVE") -> None:
        generation = self.engine.install(self.table(mode, tcp_mode))
        wait_for(lambda: self.engine.generation >= generation, what="table swap")

    def tls_client(self, sni: str) -> ssl.SSLSocket:
        """A mesh caller: the frontend's certificate, the bundle's trust, ALPN http/1.1."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False      # a workload certificate names a SPIFFE ID only
        ctx.load_verify_locations(cadata=self.pki_bundle.decode())
        (self.client_dir / "chain.pem").write_bytes(self.frontend.chain_pem)
        (self.client_dir / "key.pem").write_bytes(self.frontend.key_pem)
        ctx.load_cert_chain(self.client_dir / "chain.pem", self.client_dir / "key.pem")
        ctx.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S)
        return ctx.wrap_socket(raw, server_hostname=sni)

    def plain(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = pki.make_root("plaintext test root", TRUST_DOMAIN)
    issuer = pki.make_issuer(*root, "node-a", 86400)
    bundle = pki.cert_pem(root[0])
    backend = issue(issuer, BACKEND_ID)
    server = tls.TLSContext.for_mesh(True, backend.chain_pem, backend.key_pem, bundle, ALPN)
    # The TLS callers end without close_notify, so the node resets the app's side: the
    # app's handler threads say nothing of it.
    app = http_server(Fields, handle_error=lambda request, address: None)
    engine = fe.Engine(max_connections=64, buffer_bytes=16384)
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    n = Node(engine, thread, listener(), server, app.server_address[1], tmp_path, bundle,
             issue(issuer, FRONTEND_ID))
    try:
        n.install("PERMISSIVE")
        yield n
    finally:
        engine.stop()
        thread.join(TIMEOUT_S)
        n.inbound.close()
        app.shutdown()
        app.server_close()
    assert not thread.is_alive()


def request(host: str, extra: str = "") -> bytes:
    return f"GET /fields HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def answer(s: socket.socket) -> tuple[int, list[str]]:
    """One answer on a keep-alive connection: its status and the body's lines."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split()[1]), body.decode().splitlines()


def refused(s: socket.socket) -> bool:
    """Did the node reset the connection (or end it) without a byte of answer?"""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def xfcc(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("x-forwarded-client-cert:")]


def test_plaintext_to_a_permissive_route_is_served_by_host_with_no_principal(node: Node) -> None:
    with node.plain() as s:
        s.sendall(request("backend.demo:8080", f"X-Forwarded-Client-Cert: {FORGED}\r\n"))
        status, lines = answer(s)
        assert status == 200
        assert xfcc(lines) == []        # the client's goes, none comes: it has no principal
        s.sendall(request("backend", f"x-forwarded-client-cert: {FORGED}\r\n"))
        status, lines = answer(s)       # keep-alive: the next request framed as well
        assert (status, xfcc(lines)) == (200, [])
    stats = node.engine.stats()
    assert (stats["plaintext_accepted"], stats["plaintext_refused"]) == (1, 0)
    figures = [r for r in node.engine.request_stats() if r["service"] == "demo/backend:http"]
    assert [(r["plaintext"], r["peer"], r["codes"]) for r in figures] == [(True, "", {200: 2})]


def test_a_plaintext_caller_is_judged_at_its_own_address(node: Node) -> None:
    """No node vouches for a plaintext caller: Conn.caller_addr (source.ip) is the
    address it connected from (caller_ext.pxi)."""
    with socket.socket() as s:
        s.settimeout(TIMEOUT_S)
        s.bind(("127.0.0.6", 0))
        s.connect(("127.0.0.1", node.port))
        s.sendall(request("backend"))
        assert answer(s)[0] == 200
        assert node.engine.inbound_callers() == {"127.0.0.6": 1}


def test_plaintext_sent_a_byte_at_a_time_is_served(node: Node) -> None:
    """The first byte alone (peeked, then waited past), then the request line and the
    head in pieces: told, sniffed and framed as they come."""
    with node.plain() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in request("backend.demo.svc"):
            s.sendall(bytes([byte]))
        assert answer(s)[0] == 200
    assert node.engine.stats()["plaintext_accepted"] == 1


def test_tls_still_works_on_permissive_and_strict_routes(node: Node) -> None:
    for sni in (OPEN_SNI, STRICT_SNI):
        with node.tls_client(sni) as s:
            s.sendall(request("backend", f"X-Forwarded-Client-Cert: {FORGED}\r\n"))
            status, lines = answer(s)
            assert (status, xfcc(lines)) == (
                200, [f"x-forwarded-client-cert: By={BACKEND_ID};URI={FRONTEND_ID}"])
    assert {(r["service"], r["plaintext"], r["peer"]) for r in node.engine.request_stats()} == {
        ("demo/backend:http", False, FRONTEND_ID), ("demo/ledger:http", False, FRONTEND_ID)}
    stats = node.engine.stats()
    assert (stats["plaintext_accepted"], stats["plaintext_refused"]) == (0, 0)


@pytest.mark.parametrize("sent", [
    request("ledger.demo"),                       # a STRICT route's Host
    request("backend.demo:9090"),                 # the open service's STRICT port
    request("backend.demo:5432"),                 # its PERMISSIVE port declared TCP
    request("payments.prod"),                     # a Host naming no route
    b"\x00\x01binary protocol hello\r\n\r\n",     # opaque: no Host to route it by
], ids=["strict", "strict-port", "tcp-port", "unknown-host", "opaque"])
def test_plaintext_the_node_does_not_take_is_reset_and_counted(node: Node, sent: bytes) -> None:
    with node.plain() as s:
        s.sendall(sent)
        assert refused(s)
    stats = wait_for(lambda: (st := node.engine.stats())["plaintext_refused"] == 1 and st,
                     what="the refusal counted")
    assert stats["plaintext_accepted"] == 0
    assert not [r for r in node.engine.request_stats() if r["codes"]]   # the app saw nothing


def test_a_host_with_no_port_never_means_a_tcp_port(node: Node) -> None:
    """The service's port declared TCP listed first: a Host naming its port is refused,
    one naming no port (or a port the service lacks) goes to its HTTP port, as a TCP
    port never takes plaintext."""
    t = fe.RouteTable()
    t.set_inbound(node.inbound.fileno())
    for sni, protocol, port in ((TCP_SNI, "tcp", 5432), (OPEN_SNI, "http", 8080)):
        t.add_inbound_route(sni, node.server, "127.0.0.1", node.app_port,
                            service=f"demo/backend:{port}", identity=BACKEND_ID,
                            protocol=protocol)
        t.set_inbound_mtls(sni, "PERMISSIVE", hosts=OPEN_HOSTS, port=port)
    generation = node.engine.install(t)
    wait_for(lambda: node.engine.generation >= generation, what="table swap")
    for host in ("backend.demo", "backend.demo:1234"):
        with node.plain() as s:
            s.sendall(request(host))
            assert answer(s)[0] == 200
    with node.plain() as s:
        s.sendall(request("backend.demo:5432"))
        assert refused(s)


@pytest.mark.parametrize("sent", [
    b"GET /fields HTTP/1.1\r\nHost: backend\r\nno colon here\r\n\r\n",
    b"GET /fields HTTP/1.1\r\n\r\n",            # HTTP/1.1 without Host (RFC 9112 3.2)
], ids=["bad-field", "no-host"])
def test_plaintext_that_does_not_parse_gets_a_4xx(node: Node, sent: bytes) -> None:
    """Framed as HTTP, a head that does not parse is answered 400 by the node, never
    handed to an app as it came."""
    with node.plain() as s:
        s.sendall(sent)
        assert recv_all(s).startswith(b"HTTP/1.1 400 ")


def test_plaintext_counts_as_a_handshake_until_its_host_routes_it(node: Node) -> None:
    """Limits before authentication: until its Host names a route that takes it, a
    plaintext connection is no more authenticated than a TLS handshake, and as cheap
    to hold open, so its sniff and its head count against the handshake caps: slow
    plaintext heads from one source hold no more than its handshakes (2 here), the
    next connection from it is refused at accept; routed, they count no more."""
    table = node.table("PERMISSIVE")
    table.set_limits(max_handshakes=64, max_connections_per_source=64,
                     max_handshakes_per_source=2, inbound_share=0.5)
    generation = node.engine.install(table)
    wait_for(lambda: node.engine.generation >= generation, what="table swap")
    slow = [node.plain(), node.plain()]
    try:
        for s in slow:
            s.sendall(b"GET /fields HTTP/1.1\r\nHost: backend\r\n")   # its end to come
        wait_for(lambda: node.engine.stats()["sniffed_http"] == 2, what="both sniffed")
        assert node.engine.stats()["handshakes_active"] == 2
        try:
            node.plain().close()
        except ConnectionResetError:
            pass                        # refused before connect() returned
        wait_for(lambda: node.engine.stats()["rejected_source_handshakes"] == 1,
                 what="a third connection refused")
        for s in slow:
            s.sendall(b"\r\n")
            assert answer(s)[0] == 200
        assert node.engine.stats()["handshakes_active"] == 0
    finally:
        for s in slow:
            s.close()
    with node.plain() as s:
        s.sendall(request("backend"))
        assert answer(s)[0] == 200


def test_a_strict_table_does_not_look_at_the_first_byte(node: Node) -> None:
    """With no route that takes plaintext, a connection goes straight to its handshake:
    plaintext HTTP is refused by OpenSSL, and then reset and counted as a STRICT route's
    plaintext is; other bytes are a handshake that failed, as before PeerAuthentication."""
    node.install("STRICT", tcp_mode="STRICT")
    before = node.engine.stats()["inbound_tls_failures_other"]
    with node.plain() as s:
        s.sendall(request("backend"))
        assert refused(s)
    wait_for(lambda: node.engine.stats()["plaintext_refused"] == 1, what="the refusal counted")
    with node.plain() as s:
        s.sendall(b"\x00\x01binary protocol hello\r\n\r\n")
        assert refused(s)
    wait_for(lambda: node.engine.stats()["inbound_tls_failures_other"] == before + 1,
             what="a failed handshake")
    assert node.engine.stats()["plaintext_refused"] == 1


def test_a_mode_pushed_while_pairs_are_open_reaches_them(node: Node) -> None:
    """STRICT pushed: an open plaintext pair is closed (between requests; its next
    request is not served), new plaintext is refused, an open TLS pair goes on.
    PERMISSIVE again: plaintext is served again."""
    plain, secure = node.plain(), node.tls_client(OPEN_SNI)
    try:
        plain.sendall(request("backend"))
        assert answer(plain)[0] == 200
        secure.sendall(request("backend"))
        assert answer(secure)[0] == 200
        node.install("STRICT")
        assert refused(plain)
        secure.sendall(request("backend"))
        assert answer(secure)[0] == 200
    finally:
        plain.close()
        secure.close()
    with node.plain() as s:
        s.sendall(request("backend"))
        assert refused(s)
    assert wait_for(lambda: node.engine.stats()["plaintext_refused"] == 2,
                    what="both refusals counted")
    node.install("DISABLE")             # plaintext again, and mutual TLS still
    with node.plain() as s:
        s.sendall(request("backend"))
        assert answer(s)[0] == 200
    with node.tls_client(OPEN_SNI) as s:
        s.sendall(request("backend"))
        assert answer(s)[0] == 200


def test_a_plaintext_pair_whose_service_left_is_not_served_once_it_is_back_strict(
        node: Node) -> None:
    """A push takes the open service off the node (the pair goes away, on its table, as
    a TLS pair does), the next brings it back STRICT: the pair's next request is not
    served by the table it went away on."""
    with node.plain() as s:
        s.sendall(request("backend"))
        assert answer(s)[0] == 200
        gone = fe.RouteTable()
        gone.set_inbound(node.inbound.fileno())
        gone.add_inbound_route(STRICT_SNI, node.server, "127.0.0.1", node.app_port,
                               service="demo/ledger:http", identity=BACKEND_ID,
                               protocol="http")
        generation = node.engine.install(gone)
        wait_for(lambda: node.engine.generation >= generation, what="table swap")
        node.install("STRICT")
        s.sendall(request("backend"))
        assert refused(s)
    assert node.engine.stats()["plaintext_refused"] == 1


def interim(s: socket.socket) -> bytes:
    """A head that has no body to follow (101, 100): read up to its empty line."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        byte = s.recv(1)
        assert byte, f"closed in a head: {data!r}"
        data += byte
    return data


def test_a_mode_pushed_cuts_plaintext_in_the_middle_of_a_message(node: Node) -> None:
    """STRICT pushed while a plaintext request's body is under way, and over a WebSocket
    tunnel, where no request boundary may ever come: both are reset as it lands, so no
    byte the client sends after it reaches the app, and counted."""
    tunnel, upload = node.plain(), node.plain()
    try:
        tunnel.sendall(b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\n")
        assert interim(tunnel).startswith(b"HTTP/1.1 101 ")
        tunnel.sendall(b"ping")
        assert tunnel.recv(4) == b"ping"
        upload.sendall(b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\n"
                       b"Expect: 100-continue\r\n\r\n")
        assert interim(upload).startswith(b"HTTP/1.1 100 ")    # the app awaits the body
        node.install("STRICT")
        for s in (tunnel, upload):
            try:
                s.sendall(b"late")
            except OSError:
                pass                    # (reset already)
            assert refused(s)
    finally:
        tunnel.close()
        upload.close()
    assert node.engine.stats()["plaintext_refused"] == 2


def test_a_mode_pushed_reaches_a_plaintext_head_that_nearly_fills_the_buffer(node: Node) -> None:
    """A plaintext pair between requests whose next head, not whole yet, nearly fills
    its buffer meets a push that keeps its route, then one that makes it STRICT: the
    head, once whole, is not served (plaintext makes no room for an identity field, so
    the first push moves the pair in place, and the second reaches it)."""
    with node.plain() as s:
        s.sendall(request("backend"))
        assert answer(s)[0] == 200
        before = node.engine.stats()["inbound_bytes_received"]
        # 16370 bytes (of the 16384 the buffer holds) less the room every head keeps for
        # trace fields, in two fields under the parser's limit for one; all but its last
        # 4 bytes sent.
        size = (16370 - fe.TRACE_ROOM - len(request("backend"))) // 2 - len("X-Filler-0: \r\n")
        head = request("backend", "".join(f"X-Filler-{i}: {'f' * size}\r\n" for i in range(2)))
        s.sendall(head[:-4])
        wait_for(lambda: node.engine.stats()["inbound_bytes_received"] == before + len(head) - 4,
                 what="the head's bytes read")
        node.install("PERMISSIVE")
        node.install("STRICT")
        try:
            s.sendall(head[-4:])
        except OSError:
            pass                        # (closed already)
        assert refused(s)
    assert node.engine.stats()["plaintext_refused"] == 1


def test_the_mode_is_checked_as_the_other_setters_check() -> None:
    t = fe.RouteTable()
    ctx = tls.TLSContext(True)
    with pytest.raises(ValueError, match="add_inbound_route"):
        t.set_inbound_mtls(OPEN_SNI, "PERMISSIVE", hosts=OPEN_HOSTS)
    t.add_inbound_route(OPEN_SNI, ctx, "127.0.0.1", 8080)
    with pytest.raises(ValueError, match="STRICT, PERMISSIVE, DISABLE"):
        t.set_inbound_mtls(OPEN_SNI, "permissive")
    with pytest.raises(ValueError, match="without a port"):
        t.set_inbound_mtls(OPEN_SNI, "PERMISSIVE", hosts=["backend:8080"])
    with pytest.raises(TypeError, match="list of names"):
        t.set_inbound_mtls(OPEN_SNI, "PERMISSIVE", hosts="backend")
    with pytest.raises(ValueError, match="port must be"):
        t.set_inbound_mtls(OPEN_SNI, "PERMISSIVE", hosts=OPEN_HOSTS, port=0)
    t.set_inbound_mtls(OPEN_SNI, "DISABLE", hosts=OPEN_HOSTS)
