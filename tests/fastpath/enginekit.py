"""Helpers shared by the engine tests (TCP and HTTP): workload credentials from the
mesh's own PKI code, listeners made as a worker makes them, and bounded socket waits."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from meshnode.identity import pki

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Creds:
    chain_pem: bytes
    key_pem: bytes


def issue(issuer: tuple, identity: str) -> Creds:
    """A workload certificate for ``identity`` (chain: leaf + issuer) and its key."""
    cert, key = issuer
    wkey = pki.new_key()
    csr, _ = pki.csr_identity(pki.make_csr(wkey, identity))
    leaf = pki.sign_workload(csr, identity, cert, key, 3600)
    return Creds(pki.cert_pem(leaf) + pki.cert_pem(cert), pki.key_pem(wkey))


def wait_for(condition: Callable[[], object], timeout_s: float = TIMEOUT_S,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def listener() -> socket.socket:
    """A listening socket as a worker makes one: SO_REUSEPORT, non-blocking."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    s.setblocking(False)
    return s


def port_of(s: socket.socket) -> int:
    return s.getsockname()[1]


def recv_all(s: socket.socket, limit: int = 1 << 26) -> bytes:
    """Everything until EOF (a reset counts as the end too)."""
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 (keep-alive) handler that logs nothing: the base of the test apps'."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass


def http_server(handler: type[BaseHTTPRequestHandler], **attrs: object) -> ThreadingHTTPServer:
    """A threaded HTTP app on a free loopback port, serving from a daemon thread;
    `attrs` are set on the server, for its handler to read. Stop it with
    server.shutdown() and server.server_close()."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for name, value in attrs.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
