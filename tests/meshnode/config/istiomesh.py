"""Istio's echo deployment on one meshnode data plane, for the cases of Istio's own
authorization tests (authz_test.go; test_authz_istio_cases.py holds them).

The apps are those the cases name: a in echo1 (the caller a test allows) and a in echo2
(the one it denies) call; b in echo1 and b in echo2 are called. Each b serves Istio's
echo ports on its own loopback address at Istio's own numbers (http 80 -> 18080, http2
85 -> 18085, grpc 7070 -> 17070, tcp 9090 -> 19090), because one of Istio's policies
names workload ports 18080 and 18085 outright (deny-global) and the rest name them
through the template; an echo app on each answers with its workload's name.

What carries the calls is the worker's own code: the resources go through the store
and control's snapshot compiler (meshnode.config), and meshnode.dataplane.DataPlane
installs the snapshot in a real engine, on real sockets, in this process. All four
workloads are local to that one node, which tells its callers apart by address (no
Workload names a spec.user: meshnode.callers), so a call leaves the caller's address
for the node's HTTP outbound listener (or the tcp port's outboundPort listener), goes
over mutual TLS under the caller's SPIFFE identity to the node's own inbound listener,
and is judged there by the program compiled for b's port: the path between two nodes,
at the cost of one engine. Swapping policies is one apply and one table swap.

A plaintext caller (Istio's sidecar told by a DestinationRule to DISABLE TLS, which
meshnode's DestinationRule refuses: a node always speaks mutual TLS) is a client
sending plaintext straight to the inbound listener, as one without a node would.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fastpath import tls
from meshnode.config import Store, compile_snapshot, parse_text
from meshnode.dataplane import DataPlane
from meshnode.identity import pki
from meshnode.identity.creds import ALPN, Contexts

from enginekit import issue, wait_for
from test_config_authz_istio import PORTS, Echo, world

NODE = "node-1"
TRUST_DOMAIN = "cluster.local"
IO_TIMEOUT_S = 10.0
DENIED_BODY = b"RBAC: access denied"   # Istio's (Envoy RBAC filter's) 403 body
# What a gRPC unary call to Istio's echo asks for: its method's path, by POST.
GRPC_PATH = "/proto.EchoTestService/Echo"
# The ports an app listens on: every one a case calls (https is never called).
SERVED = ("http", "http2", "grpc", "tcp")


@dataclass(frozen=True)
class App(Echo):
    """An echo app of the mesh: Echo, with its SPIFFE ID and Workload."""

    @property
    def identity(self) -> str:
        return f"spiffe://{self.spiffe}"

    @property
    def workload(self) -> str:
        """Its Workload, as "NAMESPACE/NAME": what its echo apps answer with."""
        return f"{self.namespace}/{self.service}-v1"


@dataclass(frozen=True)
class Outcome:
    """What a caller saw: allowed (the target's app answered), denied (a 403 "RBAC: access
    denied", or a TCP connection closed before a byte came back), or something else."""

    allowed: bool
    denied: bool
    detail: str


def _apps(subnet: str) -> dict[str, App]:
    """The four apps on loopback addresses of `subnet` ("127.X.Y")."""
    return {name: App(service, namespace, f"{subnet}.{host}", namespace)
            for name, (service, namespace, host) in {
                "a.echo1": ("a", "echo1", 1), "b.echo1": ("b", "echo1", 2),
                "a.echo2": ("a", "echo2", 11), "b.echo2": ("b", "echo2", 12)}.items()}


# --- the apps --------------------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers any request 200 with JSON naming the workload and what it received."""

    protocol_version = "HTTP/1.1"
    server: Any   # an _HttpEcho

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"workload": self.server.workload, "method": self.command,
                           "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


class _HttpEcho(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], workload: str) -> None:
        self.workload = workload
        super().__init__(address, _EchoHandler)


class _TcpEchoHandler(socketserver.BaseRequestHandler):
    """Sends the workload's name and a colon, then echoes every byte until EOF."""

    server: Any   # a _TcpEcho

    def handle(self) -> None:
        self.request.settimeout(IO_TIMEOUT_S)
        self.request.sendall(self.server.workload.encode() + b":")
        while chunk := self.request.recv(65536):
            self.request.sendall(chunk)


class _TcpEcho(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], workload: str) -> None:
        self.workload = workload
        super().__init__(address, _TcpEchoHandler)


def _serve(app: App, port: str) -> socketserver.BaseServer:
    address = (app.address, PORTS[port][1])
    server = _TcpEcho(address, app.workload) if port == "tcp" else _HttpEcho(address, app.workload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the mesh --------------------------------------------------------------------------------


class IstioMesh:
    """The node and its apps; apply() swaps the config, call() makes one of Istio's calls."""

    def __init__(self, state: Path) -> None:
        self._state = state
        self.apps, self._servers = self._start_apps()
        root = pki.make_root("istio authz cases root", TRUST_DOMAIN)
        issuer = pki.make_issuer(*root, NODE, 86400)
        bundle = pki.cert_pem(root[0])
        self._contexts = {app.identity: self._issue(issuer, bundle, app.identity)
                          for app in self.apps.values()}
        self.inbound_port = _free_port()
        self._outbound = {name: _free_port() for name, app in self.apps.items() if app.service == "b"}
        self.dp = DataPlane(NODE, "127.0.0.1", self.inbound_port, self._contexts.get,
                            http_port=_free_port())
        self.dp.start()
        self.applied: object = None
        self._applies = 0

    def _start_apps(self) -> tuple[dict[str, App], list[socketserver.BaseServer]]:
        """The apps on a loopback subnet of their own where Istio's fixed ports are free
        (another run of these tests may hold one)."""
        for _ in range(20):
            apps = _apps(f"127.{random.randint(64, 250)}.{random.randint(1, 250)}")
            servers: list[socketserver.BaseServer] = []
            try:
                for app in apps.values():
                    for port in SERVED if app.service == "b" else ():
                        servers.append(_serve(app, port))
                return apps, servers
            except OSError:
                for server in servers:
                    server.shutdown()
                    server.server_close()
        raise AssertionError("no loopback subnet with Istio's echo ports free")

    @staticmethod
    def _issue(issuer: tuple, bundle: bytes, identity: str) -> Contexts:
        creds = issue(issuer, identity)
        return Contexts(*(tls.TLSContext.for_mesh(server, creds.chain_pem, creds.key_pem, bundle, ALPN)
                          for server in (True, False)))

    def close(self) -> None:
        self.dp.stop()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def apply(self, key: object, files: list[str], labels: dict[str, dict[str, str]] | None = None) -> None:
        """Install the world (with `labels` added to the named apps' Workloads) and the
        YAML `files` as `meshnode apply` would, one after another (a resource applied
        twice is replaced, as kubectl's): into a store, compiled into this node's
        snapshot, installed by the data plane. Nothing is done when `key` is applied."""
        if key == self.applied:
            return
        self._applies += 1
        store = Store(self._state / str(self._applies))
        store.apply(parse_text(world(self.apps.values(), self._outbound, labels), "world.yaml"), "world.yaml")
        for k, text in enumerate(files):
            if text.strip():
                store.apply(parse_text(text, f"{k}.yaml"), f"{k}.yaml")
        self.dp.update(compile_snapshot(store.resources(), NODE, store.version, store.root_domain))
        wait_for(lambda: self.dp.engine.generation >= self.dp.generation, IO_TIMEOUT_S, "the table swap")
        self.applied = key

    def call(self, caller: App, target: App, port: str, path: str = "/", method: str = "GET",
             headers: dict[str, str] | None = None, plaintext: bool = False) -> Outcome:
        """One call as Istio's echo client makes it: from `caller`'s address to `target`'s
        service port (over mutual TLS through the node, or in `plaintext` straight to its
        inbound listener). A gRPC call is its unary request's head over HTTP/1.1."""
        if port == "tcp":
            return self._tcp(caller, target, plaintext)
        if port == "grpc":
            path, method, headers = GRPC_PATH, "POST", {"Content-Type": "application/grpc"}
        where = self.inbound_port if plaintext else self.dp.http_port
        conn = http.client.HTTPConnection("127.0.0.1", where, timeout=IO_TIMEOUT_S,
                                          source_address=(caller.address, 0))
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{target.name}:{PORTS[port][0]}")
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if method in ("POST", "PUT"):
                conn.putheader("Content-Length", "0")
            conn.endheaders()
            response = conn.getresponse()
            status, body = response.status, response.read()
        except (ConnectionError, http.client.RemoteDisconnected) as exc:
            return Outcome(False, False, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        served_by = json.loads(body).get("workload") if status == 200 else None
        return Outcome(status == 200 and served_by == target.workload,
                       status == 403 and body == DENIED_BODY,
                       f"{status} {body[:200]!r}")

    def _tcp(self, caller: App, target: App, plaintext: bool) -> Outcome:
        """Istio's TCP call: a message sent, its echo expected; a refused connection
        is closed (or reset) with nothing said."""
        where = self.inbound_port if plaintext else self._outbound[target.name]
        message = b"istio authz test\n"
        got = bytearray()
        with socket.create_connection(("127.0.0.1", where), timeout=IO_TIMEOUT_S,
                                      source_address=(caller.address, 0)) as c:
            try:
                c.sendall(message)
                c.shutdown(socket.SHUT_WR)
                while chunk := c.recv(65536):
                    got += chunk
            except OSError:
                pass   # reset (ENOTCONN when it came before our shutdown): refused
        answer = bytes(got)
        return Outcome(answer == target.workload.encode() + b":" + message, answer == b"",
                       f"tcp {answer[:200]!r}")
