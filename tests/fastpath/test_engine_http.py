"""Tests for fastpath.engine's HTTP outbound listener: HTTP/1.1 routed by Host over mTLS.

Two "nodes" in this process, each an Engine on its own thread: the client's node (the
HTTP outbound listener, hosts of service "backend") and the backend's node (the inbound
mTLS listener, relaying to a threaded http.server app speaking HTTP/1.1). Real sockets,
real OpenSSL, certificates from meshnode.identity.pki. Every socket has a timeout, every
wait a deadline; fixtures stop the engines and close what the tests opened.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import engine as fe
from fastpath import tls
from meshnode.identity import pki

from enginekit import Creds, issue, listener, port_of, recv_all, wait_for

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
OTHER_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/somebody-else"
SNI = "http.backend.demo.svc"
ADMIN_SNI = "admin.backend.demo.svc"
OTHER_SNI = "http.other.demo.svc"     # a second service, served by the same app
HOSTS = ["backend", "backend.demo", "backend.demo.svc"]
ALPN = [fe.ALPN_TCP, b"http/1.1"]       # what meshnode's server contexts accept
TIMEOUT_S = 10.0


# --- PKI ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    bundle_pem: bytes
    frontend: Creds
    backend: Creds


@pytest.fixture(scope="module")
def mesh_pki() -> PKI:
    root = pki.make_root("engine http test root", TRUST_DOMAIN)
    issuer = pki.make_issuer(*root, "node-a", 86400)
    return PKI(pki.cert_pem(root[0]), issue(issuer, FRONTEND_ID), issue(issuer, BACKEND_ID))


def client_ctx(p: PKI) -> tls.TLSContext:
    return tls.TLSContext.for_mesh(False, p.frontend.chain_pem, p.frontend.key_pem,
                                   p.bundle_pem, ALPN)


def server_ctx(p: PKI) -> tls.TLSContext:
    return tls.TLSContext.for_mesh(True, p.backend.chain_pem, p.backend.key_pem,
                                   p.bundle_pem, ALPN)


# --- waiting, sockets, engines ------------------------------------------------------------


def recv_until(s: socket.socket, marker: bytes, have: bytes = b"") -> bytes:
    out = bytearray(have)
    while marker not in out:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {bytes(out)!r}")
        out += chunk
    return bytes(out)


class Node:
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

    def stop(self) -> None:
        self.engine.stop()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "Engine.run() did not return after stop()"
        assert self.error is None, self.error


# --- the app: HTTP/1.1 behind the inbound side ----------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ws":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:                 # a byte pipe from here: echo, upper-cased
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data.upper())
            self.close_connection = True
            return
        if self.path == "/die":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path == "/close":       # reads the request, answers nothing, closes
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"abc", b"x" * 70000, b"end"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
            return
        if self.path == "/eof":         # no length: the body runs until close
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until close")
            self.close_connection = True
            return
        if self.path.startswith("/big?n="):  # an answer of n bytes, with its length
            self._send(200, b"b" * int(self.path[7:]))
            return
        if self.path == "/sleep":       # a slow answer: time for the client to give up
            time.sleep(0.3)
            self._send(200, b"slept\n")
            return
        if self.path == "/headers":     # the fields as the app got them, one per line
            self._send(200, "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode(),
                       Connection="keep-alive")
            return
        if self.path.startswith("/status?c="):  # an answer with that status, a short body
            self._send(int(self.path[10:]), b"status\n")
            return
        if self.path in ("/204", "/304"):
            self.send_response(int(self.path[1:]))
            self.end_headers()
            return
        self._send(200, f"{self.command} {self.path} host={self.headers['Host']}\n".encode(),
                   X_Peer_Port=str(self.client_address[1]))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        body = self._body()
        self._send(200, f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode())


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection the engine reset (it passes a client's reset upstream) is no
        error of the app's; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionResetError):
            super().handle_error(request, client_address)


class App:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mesh:
    pki: PKI
    out_node: Node
    in_node: Node
    app: App
    http_sock: socket.socket
    in_sock: socket.socket
    clients: list[socket.socket] = field(default_factory=list)

    @property
    def http_port(self) -> int:
        return port_of(self.http_sock)

    @property
    def in_port(self) -> int:
        return port_of(self.in_sock)

    def outbound_table(self, identities: list[str] | None = None,
                       endpoints: list[tuple[str, int]] | None = None,
                       ctx: tls.TLSContext | None = None) -> fe.RouteTable:
        """`ctx`: the client identity to present (a fresh context of the frontend's
        certificate when None, as after a rotation)."""
        t = fe.RouteTable()
        eps = [("127.0.0.1", self.in_port)] if endpoints is None else endpoints
        http = t.add_service("demo/backend:http", SNI, identities or [BACKEND_ID], eps)
        admin = t.add_service("demo/backend:admin", ADMIN_SNI, identities or [BACKEND_ID], eps)
        empty = t.add_service("demo/nobody:http", "http.nobody.demo.svc", [BACKEND_ID], [])
        other = t.add_service("demo/other:http", OTHER_SNI, [BACKEND_ID],
                              [("127.0.0.1", self.in_port)])
        t.set_outbound_http(self.http_sock.fileno(), ctx or client_ctx(self.pki))
        for host in HOSTS:      # two HTTP ports: 8080 (the first, the default) and 9090
            t.add_host(host, http, 8080)
            t.add_host(host, admin, 9090)
        t.add_host("nobody", empty, 80)
        t.add_host("other", other, 80)
        t.add_host("other.demo", other, 80)
        return t

    def inbound_table(self) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_inbound(self.in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(self.pki), "127.0.0.1", self.app.port,
                            service="demo/backend:http", identity=BACKEND_ID)
        t.add_inbound_route(OTHER_SNI, server_ctx(self.pki), "127.0.0.1", self.app.port)
        return t

    def client(self) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", self.http_port), timeout=TIMEOUT_S)
        self.clients.append(c)
        return c

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=TIMEOUT_S)


@pytest.fixture
def mesh(mesh_pki: PKI) -> Iterator[Mesh]:
    m = Mesh(mesh_pki, Node(), Node(), App(), listener(), listener())
    m.in_node.install(m.inbound_table())
    m.out_node.install(m.outbound_table())
    yield m
    m.out_node.stop()
    m.in_node.stop()
    for c in m.clients:
        c.close()
    m.app.close()
    m.http_sock.close()
    m.in_sock.close()


def exchange(m: Mesh, request: bytes) -> bytes:
    """One raw request; everything the engine answers until it closes."""
    c = m.client()
    c.sendall(request)
    return recv_all(c)


def get(m: Mesh, host: str, path: str = "/x") -> tuple[int, bytes]:
    conn = m.http()
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["backend", "backend.demo", "backend.demo.svc",
                                  "backend.demo.svc:8080", "BACKEND.Demo.svc."])
def test_get_routed_by_host(mesh: Mesh, host: str) -> None:
    status, body = get(mesh, host)
    assert status == 200
    assert body == f"GET /x host={host}\n".encode()
    assert mesh.out_node.stats()["http_routed"] == 1
    assert mesh.in_node.stats()["inbound_tls_handshakes"] == 1


def test_the_host_port_picks_the_service_port(mesh: Mesh) -> None:
    """Port 9090 names the admin port's service (no inbound route for its SNI: refused
    once the upstream has seen our certificate, after the request went: a 502); no
    port or an unknown one means the first HTTP port."""
    assert get(mesh, "backend.demo:9090")[0] == 502
    assert get(mesh, "backend.demo:1234")[0] == 200
    assert mesh.in_node.stats()["tls_unknown_sni"] == 1


def test_absolute_form_through_curl_as_http_proxy(mesh: Mesh) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{mesh.http_port}",
         "http://backend.demo.svc:8080/x?y=1"],
        capture_output=True, timeout=TIMEOUT_S * 2, check=True)
    # The app sees origin-form; the Host curl derived from the URI.
    assert out.stdout == b"GET /x?y=1 host=backend.demo.svc:8080\n"


@pytest.mark.parametrize("target, path, host", [("http://backend", "/", "backend"),
                                                ("http://backend.demo?q=1", "/?q=1", "backend.demo"),
                                                ("http://backend.demo.svc:8080/a/b", "/a/b",
                                                 "backend.demo.svc:8080")])
def test_absolute_form_is_rewritten_to_origin_form(mesh: Mesh, target: str, path: str,
                                                   host: str) -> None:
    """The target goes upstream in origin-form and its authority as the Host (RFC 9112
    §3.2.2: the Host field the client sent is replaced)."""
    reply = exchange(mesh, f"GET {target} HTTP/1.1\r\nHost: ignored\r\n"
                           "Connection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(f"GET {path} host={host}\n".encode())


def test_unknown_host_is_404_naming_it(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET / HTTP/1.1\r\nHost: Nowhere.example:80\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"connection: close\r\n" in reply
    assert reply.endswith(b'\r\n\r\nno route to host "nowhere.example"\n')
    assert mesh.out_node.stats()["http_no_route"] == 1


def test_service_without_endpoints_is_503(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET / HTTP/1.1\r\nHost: nobody\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503 ")
    assert mesh.out_node.stats()["no_endpoint"] == 1


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                  # no Host
    (b"GET / HTTP/2.0\r\nHost: backend\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: backend\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: backend\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: backend\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
])
def test_bad_requests_are_answered(mesh: Mesh, request_bytes: bytes, status: int) -> None:
    reply = exchange(mesh, request_bytes)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:80]
    assert mesh.out_node.stats()["http_bad_request"] == 1


def test_a_head_bigger_than_a_buffer_is_431(mesh_pki: PKI) -> None:
    m = Mesh(mesh_pki, Node(buffer_bytes=2048), Node(), App(), listener(), listener())
    try:
        m.out_node.install(m.outbound_table())
        reply = exchange(m, b"GET / HTTP/1.1\r\nHost: backend\r\n" + b"X-A: bbbbbbbb\r\n" * 200)
        assert reply.startswith(b"HTTP/1.1 431 ")
    finally:
        m.out_node.stop()
        m.in_node.stop()
        for c in m.clients:
            c.close()
        m.app.close()
        m.http_sock.close()
        m.in_sock.close()


# --- failures toward the upstream ---------------------------------------------------------


def test_endpoint_node_down_is_503(mesh: Mesh) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = port_of(dead)
    dead.close()
    mesh.out_node.install(mesh.outbound_table(endpoints=[("127.0.0.1", port)]))
    assert get(mesh, "backend") == (503, b"upstream unavailable\n")
    assert mesh.out_node.stats()["outbound_connect_failures"] == 1
    assert mesh.out_node.stats()["http_unavailable"] == 1


def test_requests_fail_over_from_a_dead_endpoint(mesh: Mesh) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = port_of(dead)
    dead.close()
    mesh.out_node.install(mesh.outbound_table(endpoints=[("127.0.0.1", port),
                                                         ("127.0.0.1", mesh.in_port)]))
    body = os.urandom(3 << 20)          # waits in the client's socket while set up
    for _ in range(3):
        conn = mesh.http()
        try:
            conn.request("POST", "/upload", body=body, headers={"Host": "backend"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (
                200, f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode())
        finally:
            conn.close()
        assert get(mesh, "backend") == (200, b"GET /x host=backend\n")
    stats = mesh.out_node.stats()
    assert stats["http_unavailable"] == 0
    assert 1 <= stats["outbound_connect_failures"] <= 2     # then passed over (1 s)
    assert stats["upstream_failovers"] == stats["outbound_connect_failures"]


def test_identity_mismatch_is_503_and_counted(mesh: Mesh) -> None:
    mesh.out_node.install(mesh.outbound_table(identities=[OTHER_ID]))
    # The body says why, as every answer the engine makes itself does.
    assert get(mesh, "backend") == (503, b"upstream unavailable\n")
    stats = mesh.out_node.stats()
    assert stats["identity_mismatch"] == 1
    assert stats["http_unavailable"] == 1


def _get_pooled(m: Mesh, pooled_before: int) -> None:
    """A GET on a connection of its own; its upstream goes to the pool as it closes."""
    assert get(m, "backend") == (200, b"GET /x host=backend\n")
    wait_for(lambda: m.out_node.stats()["http_upstream_pooled"] > pooled_before,
             what="the upstream pooled")


def test_a_config_push_keeps_the_idle_upstreams_and_the_session(mesh: Mesh) -> None:
    ctx = client_ctx(mesh.pki)          # the identity stays: the push changes nothing else
    mesh.out_node.install(mesh.outbound_table(ctx=ctx))
    _get_pooled(mesh, 0)
    mesh.out_node.install(mesh.outbound_table(ctx=ctx))
    _get_pooled(mesh, 1)                # the pooled upstream, taken from the new table
    stats = mesh.out_node.stats()
    assert stats["http_upstream_reused"] == 1
    assert stats["outbound_tls_handshakes"] == 1
    # Two at once after another push: one takes the pooled upstream, the other opens
    # one and resumes the session the first handshake left.
    mesh.out_node.install(mesh.outbound_table(ctx=ctx))
    a, b = mesh.http(), mesh.http()
    try:
        for conn in (a, b):
            conn.request("GET", "/two", headers={"Host": "backend"})
        for conn in (a, b):
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"GET /two host=backend\n")
    finally:
        a.close()
        b.close()
    stats = mesh.out_node.stats()
    assert stats["http_upstream_reused"] == 2
    assert stats["outbound_tls_handshakes"] == 2
    assert stats["outbound_tls_resumed"] == 1
    assert mesh.in_node.stats()["inbound_tls_handshakes"] == 2


def test_a_failed_over_request_keeps_its_service_and_its_latency(mesh: Mesh) -> None:
    """An absolute-form target names the service (RFC 9112 §3.2.2: Host is ignored);
    the head goes upstream in origin-form. Set up again on the next endpoint after a
    silent one timed out, the request still goes to the target's service, not its
    Host's, and its latency counts the wait."""
    silent = socket.create_server(("127.0.0.1", 0))    # accepts; never speaks TLS
    try:
        t = fe.RouteTable()
        t.set_timeouts(0.3, 60.0)
        backend = t.add_service("demo/backend:http", SNI, [BACKEND_ID],
                                [("127.0.0.1", mesh.in_port)])
        # Round robin: the silent endpoint is tried first (the default balancer picks
        # either), so the request must fail over.
        other = t.add_service("demo/other:http", OTHER_SNI, [BACKEND_ID],
                              [("127.0.0.1", port_of(silent)), ("127.0.0.1", mesh.in_port)],
                              balancer="round-robin")
        t.set_outbound_http(mesh.http_sock.fileno(), client_ctx(mesh.pki))
        t.add_host("backend", backend, 80)
        t.add_host("other", other, 80)
        mesh.out_node.install(t)
        reply = exchange(mesh, b"GET http://other/x HTTP/1.1\r\nHost: backend\r\n"
                               b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert reply.endswith(b"GET /x host=other\n")        # origin-form, the target's Host
        stats = mesh.out_node.stats()
        assert stats["upstream_failovers"] == 1
        assert stats["outbound_tls_handshake_timeouts"] == 1
        assert stats["http_routed"] == 1                        # routed once, set up twice
        sent = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/other:http")
        assert sent["codes"] == {200: 1}
        bounds = fe.latency_bounds_us()
        slowest = max(i for i, n in enumerate(sent["latency_us"][200]) if n)
        assert bounds[slowest] >= 250_000                       # the 0.3 s wait included
        assert not [r for r in mesh.out_node.engine.request_stats()
                    if r["service"] == "demo/backend:http"]
    finally:
        silent.close()


@pytest.mark.parametrize("push", ["rotated certificate", "other identities"])
def test_a_push_that_changes_who_talks_drops_the_idle_upstreams(mesh: Mesh, push: str) -> None:
    ctx = client_ctx(mesh.pki)
    mesh.out_node.install(mesh.outbound_table(ctx=ctx))
    _get_pooled(mesh, 0)
    if push == "rotated certificate":   # a new client context: a new identity to present
        mesh.out_node.install(mesh.outbound_table())
    else:                               # the service may now run as another ID too
        mesh.out_node.install(mesh.outbound_table(identities=[BACKEND_ID, OTHER_ID], ctx=ctx))
    assert get(mesh, "backend") == (200, b"GET /x host=backend\n")
    stats = mesh.out_node.stats()
    assert stats["http_upstream_reused"] == 0
    assert stats["outbound_tls_handshakes"] == 2
    assert stats["outbound_tls_resumed"] == 0       # nor is the session carried over
    # The old table's idle upstream is closed with it (no connection holds it any more).
    wait_for(lambda: mesh.out_node.stats()["tables_live"] == 1, what="old tables freed")


def test_upstream_dying_mid_response_closes_the_client(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"GET /die HTTP/1.1\r\nHost: backend\r\n\r\n")
    reply = recv_all(c)                 # returns at EOF or reset: no hang
    # The reset may also discard what had arrived: b"" is fine, a whole body is not.
    assert reply == b"" or reply.startswith(b"HTTP/1.1 200 ")
    assert len(reply.partition(b"\r\n\r\n")[2]) < 100000


# --- bodies, keep-alive, pipelining ---------------------------------------------------------


def test_post_content_length_several_megabytes(mesh: Mesh) -> None:
    body = os.urandom(5 << 20)
    conn = mesh.http()
    conn.request("POST", "/upload", body=body, headers={"Host": "backend"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
    conn.close()


def test_post_chunked_several_megabytes(mesh: Mesh) -> None:
    parts = [os.urandom(n) for n in (1, 70000, 1 << 20, 3 << 20, 12345)]
    whole = b"".join(parts)
    conn = mesh.http()
    conn.request("POST", "/upload", body=iter(parts), headers={"Host": "backend"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == f"{len(whole)} {hashlib.sha256(whole).hexdigest()}\n".encode()
    conn.close()


def test_keep_alive_requests_share_one_upstream_connection(mesh: Mesh) -> None:
    conn = mesh.http()
    ports = set()
    for i in range(50):
        conn.request("GET", f"/r{i}", headers={"Host": "backend.demo"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == f"GET /r{i} host=backend.demo\n".encode()
        ports.add(resp.getheader("X-Peer-Port"))
    conn.close()
    assert len(ports) == 1              # one app connection
    assert mesh.out_node.stats()["outbound_tls_handshakes"] == 1
    assert mesh.in_node.stats()["inbound_connections_opened"] == 1


def test_pipelined_requests_in_one_write(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"GET /1 HTTP/1.1\r\nHost: backend\r\n\r\n"
              b"HEAD /2 HTTP/1.1\r\nHost: backend\r\n\r\n"
              b"POST /3 HTTP/1.1\r\nHost: backend\r\nContent-Length: 3\r\n\r\nabc"
              b"GET /4 HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    reply = recv_all(c)
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    assert b"GET /1 host=backend\n" in reply
    assert b"HEAD /2" not in reply
    assert f"3 {hashlib.sha256(b'abc').hexdigest()}\n".encode() in reply
    assert reply.endswith(b"GET /4 host=backend\n")


def test_a_request_sent_one_byte_at_a_time(mesh: Mesh) -> None:
    c = mesh.client()
    for b in b"GET /slow HTTP/1.1\r\nHost: backend.demo.svc\r\nConnection: close\r\n\r\n":
        c.send(bytes([b]))
        time.sleep(0.001)
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"GET /slow host=backend.demo.svc\n")


def test_head_204_and_304_have_no_body(mesh: Mesh) -> None:
    conn = mesh.http()
    for method, path, status in (("HEAD", "/h", 200), ("GET", "/204", 204),
                                 ("GET", "/304", 304), ("GET", "/after", 200)):
        conn.request(method, path, headers={"Host": "backend"})
        resp = conn.getresponse()
        assert resp.status == status
        body = resp.read()
        assert body == (b"GET /after host=backend\n" if path == "/after" else b"")
    conn.close()


def _bodiless(reply: bytes, status: int) -> None:
    """The engine's own answer to a HEAD: its status, its body's length, no body."""
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), reply
    assert b"\r\ncontent-length: 0\r\n" not in head + b"\r\n", reply
    assert b"\r\ncontent-length: " in head and rest == b"", reply


def test_the_engines_own_answers_to_head_have_no_body(mesh: Mesh) -> None:
    """RFC 9110 §9.3.2: the answers the engine makes itself (http_reply.pxi), as the app's,
    carry the body's length and no body when the request answered is a HEAD: a first
    request, one framed on a kept-alive connection, or one pending upstream."""
    _bodiless(exchange(mesh, b"HEAD / HTTP/1.1\r\nHost: nowhere\r\n\r\n"), 404)
    c = mesh.client()
    c.sendall(b"HEAD /x HTTP/1.1\r\nHost: backend\r\n\r\n")
    recv_until(c, b"\r\n\r\n")
    c.sendall(b"HEAD / HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
    _bodiless(recv_all(c), 403)
    t = mesh.outbound_table()
    t.add_route_match(t.add_route_set(0), t.add_route_rule("demo/r#0", [(0, 1)], timeout_s=0.1))
    mesh.out_node.install(t)
    _bodiless(exchange(mesh, b"HEAD /sleep HTTP/1.1\r\nHost: backend\r\n\r\n"), 504)


def test_a_head_that_did_not_parse_after_a_head_is_answered_with_a_body(mesh: Mesh) -> None:
    """What does not parse has no method, whatever the request before it was."""
    c = mesh.client()
    c.sendall(b"HEAD /x HTTP/1.1\r\nHost: backend\r\n\r\n")
    recv_until(c, b"\r\n\r\n")
    c.sendall(b"GARBAGE\r\n\r\n")
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.endswith(b"\r\n\r\nBad Request\n")


def test_expect_100_continue(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"POST /e HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n"
              b"Expect: 100-continue\r\n\r\n")
    interim = recv_until(c, b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 ")
    c.sendall(b"hello")
    reply = recv_until(c, b"\n", interim.partition(b"\r\n\r\n")[2])
    reply = recv_until(c, f"{hashlib.sha256(b'hello').hexdigest()}\n".encode(), reply)
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_upgrade_becomes_a_byte_pipe(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n\r\n")
    head = recv_until(c, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    got = bytearray(head.partition(b"\r\n\r\n")[2])
    for message in (b"hello", b"\x00\x01binary\xff", b"z" * 100000):
        c.sendall(message)
        while len(got) < len(message):
            chunk = c.recv(65536)
            assert chunk, "EOF in the middle of the upgraded stream"
            got += chunk
        assert bytes(got) == message.upper()
        got.clear()


# --- meshnode.dataplane: the HTTP listener from a config snapshot ---------------------------


def _free_port_pair() -> int:
    """An inbound port whose port-base+1 (inbound - 5) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = port_of(s)
        if port - 5 < 1024:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port - 5))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair")


def test_dataplane_serves_http_hosts_of_a_snapshot(mesh_pki: PKI) -> None:
    from meshnode.dataplane import DataPlane
    from meshnode.identity.creds import Contexts

    app = App()
    contexts = Contexts(server=server_ctx(mesh_pki), client=client_ctx(mesh_pki))
    inbound = _free_port_pair()
    dp = DataPlane("node-1", "127.0.0.1", inbound, lambda identity: contexts,
                   http_port=inbound - 5)
    dp.start()
    try:
        dp.update({
            "local": [{"identity": BACKEND_ID, "namespace": "demo", "address": "127.0.0.1"}],
            "services": [{
                "name": "backend", "namespace": "demo", "fqdn": "backend.demo.svc",
                "hosts": HOSTS,
                "ports": [{"name": "http", "port": 8080, "protocol": "HTTP",
                           "target_port": 8080, "outbound_port": None}],
                "endpoints": [{"node": "node-1", "address": "127.0.0.1",
                               "ports": {"http": app.port}, "identity": BACKEND_ID}],
                "identities": [BACKEND_ID],
            }],
        })
        wait_for(lambda: dp.engine.generation >= dp.generation, what="table swap")
        conn = http.client.HTTPConnection("127.0.0.1", dp.http_port, timeout=TIMEOUT_S)
        conn.request("GET", "/dp", headers={"Host": "backend.demo:8080"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"GET /dp host=backend.demo:8080\n")
        conn.close()
        assert dp.engine.stats()["http_routed"] == 1
        # The figures in Istio's terms: both sides of the one worker report the request.
        figures = {f["reporter"]: f for f in dp.request_figures()}
        assert figures["source"] == {
            "reporter": "source", "source_principal": BACKEND_ID,
            "destination_service": "backend.demo.svc", "destination_principal": BACKEND_ID,
            "route": "unknown", "destination_version": "unknown",
            "connection_security_policy": "unknown",
            "codes": {"200": 1}, "response_flags": {}, "latency": figures["source"]["latency"],
            # http.client's 72-byte request (in the (50, 100] bucket), its answer as sent.
            "request_bytes": {"200": {"counts": {"6": 1}, "sum": 72}},
            "response_bytes": figures["destination"]["response_bytes"], "tcp": {}}
        assert figures["destination"]["connection_security_policy"] == "mutual_tls"
        assert figures["destination"]["codes"] == {"200": 1}
        assert sum(figures["destination"]["latency"]["200"].values()) == 1
    finally:
        dp.stop()
        app.close()


# --- one client connection, several services ----------------------------------------------


def test_each_request_is_routed_by_its_own_host(mesh: Mesh) -> None:
    """A keep-alive client (an HTTP_PROXY user) asks several services on one connection:
    a request for another service pools the upstream and takes or opens one to the new
    service."""
    conn = mesh.http()
    ports = []
    for host in ("backend", "backend.demo", "other", "other.demo", "backend"):
        conn.request("GET", "/k", headers={"Host": host})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, f"GET /k host={host}\n".encode())
        ports.append(resp.getheader("X-Peer-Port"))
    conn.request("GET", "/k", headers={"Host": "nowhere"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (404, b'no route to host "nowhere"\n')
    conn.close()
    # Same service: same upstream (and app) connection; back to backend: from the pool.
    assert ports[0] == ports[1] == ports[4] != ports[2] == ports[3]
    stats = mesh.out_node.stats()
    assert stats["http_routed"] == 5
    assert stats["outbound_tls_handshakes"] == 2
    assert stats["http_upstream_reused"] == 1
    assert stats["outbound_connections_opened"] == 1


def test_curl_through_the_proxy_to_two_services_on_one_connection(mesh: Mesh) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{mesh.http_port}",
         "http://backend.demo.svc:8080/a", "http://other.demo/b", "http://backend/c"],
        capture_output=True, timeout=TIMEOUT_S * 2, check=True)
    assert out.stdout == (b"GET /a host=backend.demo.svc:8080\n"
                          b"GET /b host=other.demo\n"
                          b"GET /c host=backend\n")
    assert mesh.out_node.stats()["outbound_connections_opened"] == 1


def test_pipelined_requests_for_two_services(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"POST /1 HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n0\r\n\r\n"
              b"GET http://other/2 HTTP/1.1\r\nHost: other\r\n\r\n"
              b"GET /3 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
    reply = recv_all(c)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    first = reply.index(hashlib.sha256(b"abc").hexdigest().encode())
    assert first < reply.index(b"GET /2 host=other\n") < reply.index(b"GET /3 host=other\n")


def test_garbage_after_a_good_request_is_answered_400_after_its_answer(mesh: Mesh) -> None:
    """Nothing is owed when the garbage comes: its 400 is the next answer, then the end."""
    c = mesh.client()
    c.sendall(b"GET /ok HTTP/1.1\r\nHost: backend\r\n\r\n")
    first = recv_until(c, b"GET /ok host=backend\n")
    c.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    assert recv_all(c).startswith(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert mesh.out_node.stats()["http_bad_request"] == 1


# --- responses: framing, counters, latency ----------------------------------------------------


def test_responses_are_counted_by_class_with_latency(mesh: Mesh) -> None:
    conn = mesh.http()
    for i in range(20):
        conn.request("GET", f"/c{i}", headers={"Host": "backend"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()
    assert get(mesh, "nowhere")[0] == 404
    stats = mesh.out_node.stats()
    assert stats["http_responses_2xx"] == 20
    assert stats["http_responses_4xx"] == 1
    latency = stats["http_latency_us"]
    assert sum(latency) == 20                  # upstream answers only
    bounds = fe.latency_bounds_us()
    assert len(bounds) == len(latency)
    assert bounds == sorted(set(bounds))
    slowest = max(i for i, n in enumerate(latency) if n)
    assert 10 <= bounds[slowest] <= 10_000_000     # between 10 µs and 10 s


def test_upstream_closing_before_responding_is_502(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /close HTTP/1.1\r\nHost: backend\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    # The app's side found it (its node frames requests too) and answered for the app.
    assert mesh.in_node.stats()["http_bad_response"] == 1
    assert mesh.out_node.stats()["http_responses_5xx"] == 1


def test_a_502_before_pipelined_requests_counts_each_request_once(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /close HTTP/1.1\r\nHost: backend\r\n\r\n"
                           b"GET /x HTTP/1.1\r\nHost: backend\r\n\r\n"
                           b"GET /y HTTP/1.1\r\nHost: backend\r\n\r\n")
    # The app's node answers 502 for the app, with Connection: close, and closes: no
    # answer may follow that one, so the two requests behind it get none.
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert reply.count(b"HTTP/1.1 ") == 1
    # Every request the client sent is counted once: the 502, and as 0 each request
    # behind it that the closed connection left unanswered.
    wait_for(lambda: sum(_record(mesh.out_node.engine.request_stats(), "outbound",
                                 "demo/backend:http")["codes"].values()) >= 3,
             what="three requests counted")
    sent = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/backend:http")
    assert sent["codes"] == {502: 1, 0: 2}


def test_upstream_dying_mid_body_is_counted(mesh: Mesh) -> None:
    c = mesh.client()
    c.sendall(b"GET /die HTTP/1.1\r\nHost: backend\r\n\r\n")
    reply = recv_all(c)     # the reset may also discard what had arrived: b"" is fine
    assert reply == b"" or reply.startswith(b"HTTP/1.1 200 ")
    assert len(reply.partition(b"\r\n\r\n")[2]) < 100000     # never passed on as whole
    # Found where the app is: its node frames the answer and resets the pair.
    wait_for(lambda: mesh.in_node.stats()["http_bad_response"] == 1, what="bad response")


def test_chunked_and_until_close_responses(mesh: Mesh) -> None:
    conn = mesh.http()
    conn.request("GET", "/chunked", headers={"Host": "backend"})
    resp = conn.getresponse()
    assert resp.read() == b"abc" + b"x" * 70000 + b"end"
    conn.request("GET", "/after-chunked", headers={"Host": "backend"})
    assert conn.getresponse().read() == b"GET /after-chunked host=backend\n"
    conn.request("GET", "/eof", headers={"Host": "backend"})
    assert conn.getresponse().read() == b"until close"
    conn.close()
    assert mesh.out_node.stats()["http_responses_2xx"] == 3


def test_deeper_pipelining_than_the_ring_waits_and_completes(mesh: Mesh) -> None:
    n = 40
    c = mesh.client()
    c.sendall(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: backend\r\n\r\n".encode()
                       for i in range(n - 1))
              + f"GET /p{n - 1} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n".encode())
    reply = recv_all(c)
    positions = [reply.index(f"GET /p{i} host=backend\n".encode()) for i in range(n)]
    assert positions == sorted(positions)
    assert mesh.out_node.stats()["http_responses_2xx"] == n
    # The same, ended by the client's FIN instead of Connection: close: the requests
    # waiting beyond the ring are whole ones, served, not dropped as a cut request.
    c = mesh.client()
    c.sendall(b"".join(f"GET /q{i} HTTP/1.1\r\nHost: backend\r\n\r\n".encode() for i in range(n)))
    c.shutdown(socket.SHUT_WR)
    reply = recv_all(c)
    assert [reply.count(f"GET /q{i} host=backend\n".encode()) for i in range(n)] == [1] * n


# --- the upstream pool ----------------------------------------------------------------------


def test_client_connections_in_turn_reuse_one_pooled_upstream(mesh: Mesh) -> None:
    ports = set()
    for i in range(10):
        conn = mesh.http()
        conn.request("GET", f"/pool{i}", headers={"Host": "backend"})
        resp = conn.getresponse()
        assert resp.read() == f"GET /pool{i} host=backend\n".encode()
        ports.add(resp.getheader("X-Peer-Port"))
        conn.close()
        wait_for(lambda: mesh.out_node.stats()["outbound_connections_active"] == 0,
                 what="client connection closed")
    assert len(ports) == 1
    stats = mesh.out_node.stats()
    assert stats["outbound_tls_handshakes"] == 1
    assert stats["http_upstream_pooled"] == 10
    assert stats["http_upstream_reused"] == 9


def test_a_clients_connection_close_ends_its_connection_but_pools_the_upstream(mesh: Mesh) -> None:
    # Connection is hop-by-hop (RFC 9110 §7.6.1): the client's close is not the
    # upstream's, so a new connection per request still costs no new handshake.
    for _ in range(3):
        reply = exchange(mesh, b"GET /x HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert body == b"GET /x host=backend\n"
        assert b"\r\nConnection: close" in head        # the client is told it ends here
    stats = mesh.out_node.stats()
    assert stats["http_upstream_pooled"] == 3
    assert stats["http_upstream_reused"] == 2
    assert stats["outbound_tls_handshakes"] == 1


def test_the_answer_to_close_says_close_even_when_the_app_said_keep_alive(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /headers HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head
    assert b"keep-alive" not in head


def test_requests_after_one_that_said_close_are_not_forwarded(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /1 HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
                           b"GET /2 HTTP/1.1\r\nHost: backend\r\n\r\n")
    assert reply.endswith(b"GET /1 host=backend\n")
    assert b"GET /2" not in reply
    assert mesh.out_node.stats()["http_routed"] == 1


def test_hop_by_hop_fields_stay_on_the_clients_hop(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /headers HTTP/1.1\r\nHost: backend\r\n"
                           b"Connection: keep-alive, X-Hop, Content-Length, Host\r\n"
                           b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                           b"X-Hop: secret\r\nX-End: kept\r\nUpgrade: h2c\r\n"
                           b"Connection: close\r\n\r\n")
    got = reply.partition(b"\r\n\r\n")[2].decode()
    names = {line.split(":")[0] for line in got.splitlines()}
    assert names.isdisjoint({"connection", "keep-alive", "proxy-connection", "x-hop", "upgrade"})
    assert "x-end: kept" in got.splitlines()
    assert "host: backend" in got.splitlines()   # named by Connection, but routes the message


def test_an_http_1_0_request_is_forwarded_as_it_came_and_not_pooled(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /x HTTP/1.0\r\nHost: backend\r\n\r\n")
    assert reply.endswith(b"GET /x host=backend\n")
    assert b"Connection: close" in reply.partition(b"\r\n\r\n")[0]
    wait_for(lambda: mesh.out_node.stats()["outbound_connections_active"] == 0,
             what="client connection closed")
    assert mesh.out_node.stats()["http_upstream_pooled"] == 0


def test_chunked_body_then_close_is_forwarded_whole(mesh: Mesh) -> None:
    body = b"y" * 50000
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reply = exchange(mesh, b"POST /c HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n"
                           b"Connection: close\r\n\r\n" + chunked)
    assert reply.endswith(f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode())
    assert mesh.out_node.stats()["http_upstream_pooled"] == 1


def test_a_pooled_upstream_the_other_node_closed_is_not_used(mesh_pki: PKI) -> None:
    m = Mesh(mesh_pki, Node(), Node(idle_timeout_s=0.3), App(), listener(), listener())
    try:
        m.in_node.install(m.inbound_table())
        m.out_node.install(m.outbound_table())
        assert get(m, "backend")[0] == 200
        wait_for(lambda: m.out_node.stats()["http_upstream_pooled"] == 1, what="pooled")
        # The backend's node closes the idle connection (its idle timeout).
        wait_for(lambda: m.in_node.stats()["inbound_idle_timeouts"] == 1, what="idle close")
        assert get(m, "backend")[0] == 200
        stats = m.out_node.stats()
        assert stats["http_upstream_stale"] == 1
        assert stats["http_upstream_reused"] == 0
        assert stats["outbound_tls_handshakes"] == 2
    finally:
        m.out_node.stop()
        m.in_node.stop()
        m.app.close()
        m.http_sock.close()
        m.in_sock.close()


# --- raw upstreams: what http.server will not do --------------------------------------------


class RawApp:
    """An app that runs `serve(conn)` for each connection it accepts."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = port_of(self.sock)
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(TIMEOUT_S)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._serve(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("EOF")
        data += chunk
    return data


def _with_raw_app(m: Mesh, serve: Callable[[socket.socket], None]) -> RawApp:
    app = RawApp(serve)
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno())
    t.add_inbound_route(SNI, server_ctx(m.pki), "127.0.0.1", app.port)
    m.in_node.install(t)
    return app


def test_a_response_sent_one_byte_at_a_time(mesh: Mesh) -> None:
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n")

    def serve(conn: socket.socket) -> None:
        for _ in range(2):
            _read_head(conn)
            for b in response:
                conn.sendall(bytes([b]))
                time.sleep(0.0005)

    app = _with_raw_app(mesh, serve)
    try:
        conn = mesh.http()
        for _ in range(2):
            conn.request("GET", "/", headers={"Host": "backend"})
            assert conn.getresponse().read() == b"hello"
        conn.close()
        assert mesh.out_node.stats()["http_responses_2xx"] == 2
    finally:
        app.close()


@pytest.mark.parametrize("response", [
    b"NOT HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
])
def test_a_bad_response_head_is_502(mesh: Mesh, response: bytes) -> None:
    def serve(conn: socket.socket) -> None:
        _read_head(conn)
        conn.sendall(response)
        time.sleep(0.5)

    app = _with_raw_app(mesh, serve)
    try:
        reply = exchange(mesh, b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        # The app's node refused the answer and said so; the client's counted a 5xx.
        assert mesh.in_node.stats()["http_bad_response"] == 1
        assert mesh.out_node.stats()["http_responses_5xx"] == 1
    finally:
        app.close()


def _answer_once_then_drop(conn: socket.socket) -> None:
    """Answers the first request of a connection; closes at the second, unanswered
    (a server closing an idle keep-alive connection as the next request arrives)."""
    _read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
    _read_head(conn)


@pytest.mark.parametrize("method, retried", [("GET", True), ("POST", False)])
def test_the_keep_alive_race_retries_idempotent_requests(mesh: Mesh, method: str,
                                                          retried: bool) -> None:
    app = _with_raw_app(mesh, _answer_once_then_drop)
    try:
        assert get(mesh, "backend")[0] == 200           # leaves a pooled upstream
        wait_for(lambda: mesh.out_node.stats()["http_upstream_pooled"] == 1, what="pooled")
        conn = mesh.http()
        conn.request(method, "/again", headers={"Host": "backend", "Content-Length": "0"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        stats = mesh.out_node.stats()
        assert stats["http_upstream_reused"] == 1
        if retried:                                     # on a fresh upstream: answered
            assert (resp.status, body) == (200, b"first")
            assert stats["http_upstream_retried"] == 1
            assert stats["outbound_tls_handshakes"] == 2
        else:                                           # a POST is not sent twice
            assert resp.status == 502
            assert stats["http_upstream_retried"] == 0
    finally:
        app.close()


def test_route_table_checks_http_input(mesh_pki: PKI) -> None:
    t = fe.RouteTable()
    with pytest.raises(ValueError):
        t.add_host("backend", 0, 80)                    # no such service
    svc = t.add_service("b", SNI, [BACKEND_ID], [])
    for host, port in (("backend:80", 80), ("", 80), ("backend", 0), ("backend", 70000),
                       ("bäckend", 80)):
        with pytest.raises(ValueError):
            t.add_host(host, svc, port)
    with pytest.raises(ValueError):
        t.set_outbound_http(3, server_ctx(mesh_pki))    # a server context
    s = listener()
    try:
        t.set_outbound_http(s.fileno(), client_ctx(mesh_pki))
        with pytest.raises(ValueError):
            t.set_inbound(s.fileno())                   # already the HTTP listener
        t.add_host("Backend.", svc, 80)
        assert "hosts=1" in repr(t)
    finally:
        s.close()


# --- what the app is told, and the figures per service and peer --------------------------------


def _app_fields(reply: bytes) -> list[str]:
    return reply.partition(b"\r\n\r\n")[2].decode().splitlines()


def test_the_app_gets_the_callers_verified_identity_and_a_forged_one_is_dropped(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /headers HTTP/1.1\r\nHost: backend\r\n"
                           b"X-Forwarded-Client-Cert: By=spiffe://evil/x;URI=spiffe://evil/y\r\n"
                           b"Connection: close\r\n\r\n")
    xfcc = [f for f in _app_fields(reply) if f.startswith("x-forwarded-client-cert:")]
    assert xfcc == [f"x-forwarded-client-cert: By={BACKEND_ID};URI={FRONTEND_ID}"]


def test_a_route_without_identity_names_only_the_caller(mesh: Mesh) -> None:
    reply = exchange(mesh, b"GET /headers HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
    assert f"x-forwarded-client-cert: URI={FRONTEND_ID}" in _app_fields(reply)


def test_every_pipelined_request_is_told_the_caller_even_with_a_full_buffer(mesh: Mesh) -> None:
    # Heads that fill the inbound buffer many times over: the field still goes on each.
    n = 12
    pad = "p" * 6000
    c = mesh.client()
    c.sendall(b"".join(f"GET /headers HTTP/1.1\r\nHost: backend\r\nX-Pad: {pad}\r\n\r\n".encode()
                       for _ in range(n)))
    got = b""
    while got.count(b"x-forwarded-client-cert: By=") < n:
        data = c.recv(65536)
        assert data, "connection closed early"
        got += data
    assert got.count(f"URI={FRONTEND_ID}".encode()) == n


def _record(stats: list[dict], direction: str, service: str) -> dict:
    found = [r for r in stats if r["direction"] == direction and r["service"] == service]
    assert len(found) == 1, stats
    return found[0]


def test_request_figures_are_kept_per_service_and_peer_on_both_sides(mesh: Mesh) -> None:
    for path in ("/x", "/x", "/204"):
        assert get(mesh, "backend", path)[0] in (200, 204)
    assert get(mesh, "nowhere")[0] == 404
    out = mesh.out_node.engine.request_stats()
    sent = _record(out, "outbound", "demo/backend:http")
    assert sent["peer"] == BACKEND_ID                       # the destination, verified
    assert sent["codes"] == {200: 2, 204: 1}
    # Each code's answers timed apart (Istio's request duration carries response_code).
    assert {code: sum(counts) for code, counts in sent["latency_us"].items()} == {200: 2, 204: 1}
    assert _record(out, "outbound", "")["codes"] == {404: 1}  # named no service
    got = _record(mesh.in_node.engine.request_stats(), "inbound", "demo/backend:http")
    assert got["peer"] == FRONTEND_ID                       # the caller, verified
    assert got["codes"] == {200: 2, 204: 1}


def test_a_figure_times_its_first_five_codes_apart_and_the_rest_together(mesh: Mesh) -> None:
    """Istio's request duration carries response_code: a record's latency is kept per
    code for ENGINE_LATENCY_CODES - 1 codes, in a fixed allocation; further codes share
    the last histogram, under 0."""
    codes = (200, 201, 202, 203, 206, 207, 208)
    for code in codes:
        assert get(mesh, "backend", f"/status?c={code}")[0] == code
    assert get(mesh, "backend", "/status?c=200")[0] == 200
    sent = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/backend:http")
    assert sent["codes"] == {200: 2, **{code: 1 for code in codes[1:]}}
    assert {code: sum(counts) for code, counts in sent["latency_us"].items()} == {
        200: 2, 201: 1, 202: 1, 203: 1, 206: 1, 0: 2}


def test_503_without_an_endpoint_counts_for_the_service_named(mesh: Mesh) -> None:
    assert get(mesh, "nobody")[0] == 503
    rec = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/nobody:http")
    assert rec == {**rec, "peer": "", "codes": {503: 1}}
    assert rec["latency_us"] == {}                          # the engine's own answer


def test_an_inbound_route_identity_must_be_a_spiffe_id(mesh_pki: PKI) -> None:
    t = fe.RouteTable()
    with pytest.raises(ValueError, match="SPIFFE"):
        t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", 1, identity="spiffe://a/b;URI=x")


def test_a_local_workload_is_told_apart_by_its_source_address(mesh: Mesh) -> None:
    # Two apps on one node: the one calling from 127.0.0.2 is "backend", the one from
    # 127.0.0.1 "frontend" (an address neither has is refused: test_engine_callers.py).
    as_backend = tls.TLSContext.for_mesh(False, mesh.pki.backend.chain_pem,
                                         mesh.pki.backend.key_pem, mesh.pki.bundle_pem, ALPN)
    t = mesh.outbound_table()
    t.set_outbound_http(mesh.http_sock.fileno(), None)
    t.add_source("127.0.0.2", as_backend, identity=BACKEND_ID)
    t.add_source("127.0.0.1", client_ctx(mesh.pki), identity=FRONTEND_ID)
    mesh.out_node.install(t)

    def caller_seen(source: str) -> str:
        c = socket.create_connection(("127.0.0.1", mesh.http_port), timeout=TIMEOUT_S,
                                     source_address=(source, 0))
        mesh.clients.append(c)
        c.sendall(b"GET /headers HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        xfcc = [f for f in _app_fields(recv_all(c)) if f.startswith("x-forwarded-client-cert:")]
        return xfcc[0].rpartition("URI=")[2]

    assert [caller_seen(src) for src in ("127.0.0.2", "127.0.0.1", "127.0.0.2")] == \
        [BACKEND_ID, FRONTEND_ID, BACKEND_ID]
    stats = mesh.out_node.stats()
    # A pooled upstream is only reused by the identity that opened it.
    assert (stats["outbound_tls_handshakes"], stats["http_upstream_reused"]) == (2, 1)
    figures = {r["local"]: sum(r["codes"].values())
               for r in mesh.out_node.engine.request_stats() if r["service"]}
    assert figures == {BACKEND_ID: 2, FRONTEND_ID: 1}
    callers = {r["peer"]: sum(r["codes"].values())
               for r in mesh.in_node.engine.request_stats() if r["direction"] == "inbound"}
    assert callers == {BACKEND_ID: 2, FRONTEND_ID: 1}


def test_a_client_resetting_mid_request_leaves_its_upstream_pooled(mesh: Mesh) -> None:
    # The answer is read and dropped, the mTLS upstream kept: a client's abort costs
    # the next client no handshake (as HAProxy keeps a server connection).
    c = mesh.client()
    c.sendall(b"GET /sleep HTTP/1.1\r\nHost: backend\r\n\r\n")
    # Sent upstream (it reached the app's node) before the client goes.
    wait_for(lambda: mesh.in_node.stats()["inbound_bytes_received"] > 0, what="request sent")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()                                               # RST, the request unanswered
    wait_for(lambda: mesh.out_node.stats()["http_upstream_pooled"] == 1, what="upstream pooled")
    assert get(mesh, "backend") == (200, b"GET /x host=backend\n")
    stats = mesh.out_node.stats()
    assert (stats["outbound_tls_handshakes"], stats["http_upstream_reused"]) == (1, 1)
    assert stats["outbound_aborted"] == 1
    rec = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/backend:http")
    assert rec["codes"] == {0: 1, 200: 1}                  # 0: nobody got that answer


@pytest.mark.parametrize("drain_max, kept", [(64 << 20, True), (1 << 20, False)])
def test_a_client_leaving_mid_answer_leaves_its_upstream_pooled_unless_much_is_owed(
        mesh: Mesh, drain_max: int, kept: bool) -> None:
    # The client reads nothing of an 8 MB answer: the kernel's buffers toward it fill,
    # then the engine's, and only then does it reset. With at most drain_max bytes still
    # owed, the rest is read and dropped and the upstream pooled; with more, the
    # upstream is closed with the client. (A full buffer at the client's reset once
    # made the engine close the upstream whatever was owed.)
    mesh.out_node.stop()
    mesh.out_node = Node(drain_max_bytes=drain_max)
    mesh.out_node.install(mesh.outbound_table())
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(TIMEOUT_S)
    c.connect(("127.0.0.1", mesh.http_port))
    mesh.clients.append(c)
    c.sendall(b"GET /big?n=8000000 HTTP/1.1\r\nHost: backend\r\n\r\n")
    seen = {"sent": -1, "since": time.monotonic()}

    def stalled() -> bool:      # nothing more reached the client's socket for 0.3 s
        now = mesh.out_node.stats()["outbound_bytes_sent"]
        if now != seen["sent"]:
            seen.update(sent=now, since=time.monotonic())
        return now > 0 and time.monotonic() - seen["since"] >= 0.3
    wait_for(stalled, what="the answer to stall")
    assert seen["sent"] < 8_000_000 - (1 << 20)   # more than 1 MiB owed
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    if kept:
        wait_for(lambda: mesh.out_node.stats()["http_upstream_pooled"] == 1, what="upstream pooled")
        assert get(mesh, "backend") == (200, b"GET /x host=backend\n")
        stats = mesh.out_node.stats()
        assert (stats["outbound_tls_handshakes"], stats["http_upstream_reused"]) == (1, 1)
        assert mesh.in_node.stats()["inbound_aborted"] == 0  # the app's node saw nothing amiss
    else:
        wait_for(lambda: mesh.in_node.stats()["inbound_connections_closed"] == 1,
                 what="upstream closed")
        assert mesh.out_node.stats()["http_upstream_pooled"] == 0
        assert get(mesh, "backend") == (200, b"GET /x host=backend\n")
        assert mesh.out_node.stats()["outbound_tls_handshakes"] == 2
    assert mesh.out_node.stats()["outbound_aborted"] == 1
    rec = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/backend:http")
    # The 200 went out before the client left: counted as such (as Envoy keeps the code
    # of a response whose head was sent, flagged "downstream disconnected").
    assert rec["codes"] == {200: 2}


def test_a_client_ending_mid_request_passes_its_end_on_and_gets_the_apps_answer(mesh: Mesh) -> None:
    # 3 of 13 body bytes, then the client's FIN: both engines pass the end on (the
    # request cannot become whole), the app answers what it got, and the upstream,
    # carrying a cut request, is not pooled. (Waiting for the rest hung all three.)
    c = mesh.client()
    c.sendall(b"POST /p HTTP/1.1\r\nHost: backend\r\nContent-Length: 13\r\n\r\nabc")
    c.shutdown(socket.SHUT_WR)
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(
        b"3 " + hashlib.sha256(b"abc").hexdigest().encode() + b"\n")
    wait_for(lambda: mesh.in_node.stats()["inbound_connections_closed"] == 1, what="upstream closed")
    assert mesh.out_node.stats()["http_upstream_pooled"] == 0
    # A head never finished after a whole request: the whole one is answered, the rest
    # dropped, and the pair ends.
    c = mesh.client()
    c.sendall(b"GET /a HTTP/1.1\r\nHost: backend\r\n\r\nGET /b HTTP/1.1\r\nHo")
    c.shutdown(socket.SHUT_WR)
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"GET /a host=backend\n")
    assert get(mesh, "backend") == (200, b"GET /x host=backend\n")


# --- a service port's own listener: HTTP/1.1 or opaque TCP, told by the first bytes ----------


def _echo(conn: socket.socket) -> None:
    """A raw app that sends back what it gets."""
    while data := conn.recv(65536):
        conn.sendall(data)


def _sniffing(mesh: Mesh) -> socket.socket:
    """The outbound table plus a sniffing listener for demo/backend's http port."""
    sock = listener()
    t = mesh.outbound_table()
    index = t.add_service("demo/backend:http-own", SNI, [BACKEND_ID], [("127.0.0.1", mesh.in_port)])
    t.add_outbound_tcp(sock.fileno(), index, client_ctx(mesh.pki), protocol="auto")
    mesh.out_node.install(t)
    mesh.clients.append(sock)
    return sock


def test_a_sniffing_listener_takes_http_requests_as_http_whatever_their_host(mesh: Mesh) -> None:
    sock = _sniffing(mesh)
    conn = http.client.HTTPConnection("127.0.0.1", port_of(sock), timeout=TIMEOUT_S)
    for i in range(3):      # keep-alive, and a Host no route table names
        conn.request("GET", f"/s{i}", headers={"Host": "anything.example"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, f"GET /s{i} host=anything.example\n".encode())
    conn.close()
    stats = mesh.out_node.stats()
    assert (stats["sniffed_http"], stats["sniffed_tcp"], stats["http_routed"]) == (1, 0, 3)
    rec = _record(mesh.out_node.engine.request_stats(), "outbound", "demo/backend:http-own")
    assert rec["codes"] == {200: 3}


@pytest.mark.parametrize("first", [b"\x16\x03\x01\x00\x05hello", b"PING\r\n",
                                   b"SSH-2.0-OpenSSH_9.6\r\n", b"get /\r\n"])
def test_a_sniffing_listener_relays_anything_else_as_opaque_tcp(mesh: Mesh, first: bytes) -> None:
    app = _with_raw_app(mesh, _echo)
    try:
        c = socket.create_connection(("127.0.0.1", port_of(_sniffing(mesh))), timeout=TIMEOUT_S)
        mesh.clients.append(c)
        c.sendall(first)
        assert recv_until(c, first) == first
        c.sendall(b"more")
        assert recv_until(c, b"more") == b"more"
        assert mesh.out_node.stats()["sniffed_tcp"] == 1
    finally:
        app.close()


def test_a_silent_client_gets_the_server_speaking_first(mesh: Mesh) -> None:
    # A server-first protocol (SMTP, MySQL): nothing comes from the client, so after
    # the detection timeout the connection goes as opaque TCP and the banner arrives.
    def banner(conn: socket.socket) -> None:
        conn.sendall(b"220 ready\r\n")
        assert conn.recv(64) == b"QUIT\r\n"
        conn.sendall(b"221 bye\r\n")

    app = _with_raw_app(mesh, banner)
    try:
        c = socket.create_connection(("127.0.0.1", port_of(_sniffing(mesh))), timeout=TIMEOUT_S)
        mesh.clients.append(c)
        started = time.monotonic()
        assert recv_until(c, b"\r\n") == b"220 ready\r\n"
        assert 0.15 <= time.monotonic() - started < 2.0
        c.sendall(b"QUIT\r\n")
        assert recv_until(c, b"bye\r\n") == b"221 bye\r\n"
    finally:
        app.close()


# --- generated traffic through the whole path -------------------------------------------------

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=40)


@st.composite
def _requests(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """1-4 requests: (the request bytes, what the app answers to it)."""
    out = []
    for i in range(draw(st.integers(1, 4))):
        fields = "".join(f"X-{name}: {value}\r\n" for name, value in
                         draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=5)))
        if draw(st.booleans()):
            path = "/g" + draw(_TOKEN)
            out.append((f"GET {path} HTTP/1.1\r\nHost: backend\r\n{fields}\r\n".encode(),
                        f"GET {path} host=backend\n".encode()))
            continue
        body = draw(st.binary(max_size=3000))
        if draw(st.booleans()):
            framing, payload = f"Content-Length: {len(body)}\r\n", body
        else:
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
            parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            framing = "Transfer-Encoding: chunked\r\n"
        out.append((f"POST /p HTTP/1.1\r\nHost: backend\r\n{fields}{framing}\r\n".encode() + payload,
                    f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()))
    return out


def _read_answers(c: socket.socket, n: int) -> list[bytes]:
    """n Content-Length answers' bodies, in the order they come."""
    data, bodies = b"", []
    while len(bodies) < n:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if sep and length is not None and len(rest) >= length:
            assert head.startswith(b"HTTP/1.1 200 "), head
            bodies.append(rest[:length])
            data = rest[length:]
            continue
        chunk = c.recv(65536)
        assert chunk, f"closed after {len(bodies)} of {n} answers"
        data += chunk
    return bodies


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=_requests(), cuts=st.lists(st.integers(1, 20000), max_size=6))
def test_generated_pipelined_requests_arrive_whole_and_are_answered_in_order(
        mesh: Mesh, batch: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(request for request, _ in batch)
    c = mesh.client()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = 0
    for cut in sorted(set(min(x, len(stream)) for x in cuts)) + [len(stream)]:
        c.sendall(stream[start:cut])     # split anywhere: heads and bodies cut mid-way
        start = cut
    assert _read_answers(c, len(batch)) == [answer for _, answer in batch]
    c.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(junk=st.one_of(
    st.binary(min_size=1, max_size=600),
    st.builds(lambda head, cut, noise: head[:cut] + noise + head[cut:],
              st.sampled_from([b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n",
                               b"POST /p HTTP/1.1\r\nHost: backend\r\nContent-Length: 3\r\n\r\nabc",
                               b"POST /p HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
              st.integers(0, 60), st.binary(min_size=1, max_size=8))))
def test_generated_junk_gets_an_answer_or_a_close_and_the_engine_serves_on(
        mesh: Mesh, junk: bytes) -> None:
    c = mesh.client()
    try:
        c.sendall(junk)
        c.shutdown(socket.SHUT_WR)      # the client's end: nothing more comes
    except OSError:
        pass                            # the engine refused and closed already
    reply = recv_all(c)                 # within TIMEOUT_S, or the test fails
    assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    c.close()
    assert get(mesh, "backend") == (200, b"GET /x host=backend\n")


def test_the_benchmarks_route_as_the_engine_does(mesh: Mesh) -> None:
    # bench/bench_engine_micro.py times these loops; they must find what requests find.
    table = mesh.outbound_table()       # services: 0 backend:http (8080), 1 backend:admin (9090)
    assert fe.bench_route_lookup(table, b"Backend.Demo.:9090", 3) == 1
    assert fe.bench_route_lookup(table, b"backend", 3) == 0
    assert fe.bench_route_lookup(table, b"nowhere", 3) == -1
    assert fe.bench_buffer_pool(fe.Engine(max_connections=8), 1000, depth=16) == 0


def test_the_timeouts_come_with_the_table(mesh: Mesh) -> None:
    t = mesh.outbound_table()
    t.set_timeouts(0.3, 300)            # connect, and a client's whole request head
    mesh.out_node.install(t)
    wait_for(lambda: mesh.out_node.engine.generation == 2, what="table swap")
    c = mesh.client()
    started = time.monotonic()
    c.sendall(b"GET / HTTP/1.1\r\nHost: back")   # and nothing more
    reply = recv_all(c)
    assert reply.startswith(b"HTTP/1.1 408 ")
    # 0.3 s (the timer wheel fires within a tick): well under the default 5 s.
    assert 0.25 <= time.monotonic() - started < 1.5
    with pytest.raises(ValueError, match="connect_timeout_s"):
        t.set_timeouts(0, 300)
