"""The HTTP/1.1 app that the data-plane HTTP tests put behind a Workload.

A real server (http.server's ThreadingHTTPServer, HTTP/1.1, keep-alive) on 127.0.0.1
and a free port, one thread per connection, whose paths cover what the node must carry:

- ``GET|HEAD /anything``: 200, ``text/plain`` body ``<name> GET /anything`` (HEAD: the
  same headers, no body).
- ``GET /stream/N``: 200 with a chunked body of N bytes (``stream_bytes(N)``), in chunks
  of uneven sizes, so the node must frame a chunked response.
- ``POST /digest``: reads a Content-Length or chunked body (http.server decodes neither
  chunked nor trailers) and answers its sha256 and length as JSON, so a test compares
  digests instead of echoing megabytes back.
- ``GET /upgrade`` with ``Upgrade``: 101 Switching Protocols, then echoes raw bytes until
  the client ends (the WebSocket shape, without WebSocket framing).
- ``GET /die``: announces ``Content-Length: 100000``, sends 1000 bytes, and closes: an
  upstream that fails mid-response.
- ``GET /slow/MS/N``: waits MS milliseconds, then answers N bytes (``stream_bytes(N)``,
  Content-Length): a long request. ``GET /trickle/MS/N``: the head at once, then the
  same body in ten parts over MS milliseconds: an answer under way.
- ``GET /status/CODE``: answers CODE with a short body: an app's own error answer.

Every request is recorded (method, target as the app received it, headers), and
``stop()`` closes the listener and every connection and joins every thread.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IO_TIMEOUT_S = 20.0
DIE_ANNOUNCED_BYTES = 100_000
DIE_SENT_BYTES = 1000
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Seen:
    """One request as the app received it."""
    method: str
    target: str
    headers: dict[str, str]  # lower-cased names; a repeated field keeps its last value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100 Continue for Expect (RFC 9110 §10.1.1)
    # http.server writes a head and its body separately: with Nagle on, the body waits
    # for the ACK of the head, which the peer delays (~40 ms a response on Linux).
    disable_nagle_algorithm = True
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(IO_TIMEOUT_S)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        pass  # the tests assert on what the app saw, not on its log

    def _record(self) -> None:
        self.server.app.record(Seen(self.command, self.path,
                                    {k.lower(): v for k, v in self.headers.items()}))

    def _text(self, status: int, body: bytes, content_type: str = "text/plain",
              send_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        if self.path == "/upgrade" and self.headers.get("Upgrade"):
            self._upgrade()
        elif self.path == "/die":
            self._die()
        elif self.path.startswith("/stream/"):
            self._stream(int(self.path.rsplit("/", 1)[1]))
        elif self.path.startswith("/status/"):
            self._text(int(self.path.rsplit("/", 1)[1]), b"status")
        elif self.path.startswith(("/slow/", "/trickle/")):
            _, kind, ms, size = self.path.split("/")
            self._slow(int(ms) / 1000, int(size), trickle=kind == "trickle")
        else:
            self._text(200, f"{self.server.app.name} GET {self.path}".encode())

    def do_HEAD(self) -> None:
        self._record()
        self._text(200, f"{self.server.app.name} GET {self.path}".encode(), send_body=False)

    def do_POST(self) -> None:
        self._record()
        digest, size = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            for chunk in self._chunks():
                digest.update(chunk)
                size += len(chunk)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise ConnectionError(f"EOF with {left} body bytes to come")
                digest.update(chunk)
                size += len(chunk)
                left -= len(chunk)
        body = json.dumps({"sha256": digest.hexdigest(), "bytes": size}).encode()
        self._text(200, body, "application/json")

    def _chunks(self) -> Any:
        """The decoded chunks of a chunked body (RFC 9112 §7.1); trailers are dropped."""
        while True:
            size_line = self.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                chunk = self.rfile.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise ConnectionError("EOF inside a chunk")
                left -= len(chunk)
                yield chunk
            self.rfile.readline(2)

    def _stream(self, size: int) -> None:
        data = stream_bytes(size)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rng = random.Random(size)
        offset = 0
        while offset < size:
            chunk = data[offset:offset + rng.randrange(1, 100_000)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            offset += len(chunk)
        self.wfile.write(b"0\r\n\r\n")

    def _slow(self, seconds: float, size: int, trickle: bool) -> None:
        # A timed answer is what this path is for: the sleeps are the app's behaviour.
        data = stream_bytes(size)
        if not trickle:
            time.sleep(seconds)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        parts = 10 if trickle else 1
        step = -(-size // parts)
        for i in range(parts):
            if i:
                time.sleep(seconds / (parts - 1))
            self.wfile.write(data[i * step:(i + 1) * step])
            self.wfile.flush()

    def _upgrade(self) -> None:
        self.send_response(101)
        self.send_header("Upgrade", self.headers["Upgrade"])
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        # read1: what the client sent right after its head may sit in rfile's buffer.
        while data := self.rfile.read1(CHUNK_BYTES):
            self.connection.sendall(data)
        self.close_connection = True

    def _die(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(DIE_ANNOUNCED_BYTES))
        self.end_headers()
        self.wfile.write(b"x" * DIE_SENT_BYTES)
        self.wfile.flush()
        self.close_connection = True  # and http.server closes the socket: a FIN mid-body


BACKEND_HOST = "backend.demo:8080"
BACKEND_CONFIG = """\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports:
    - {name: http, port: 8080, protocol: HTTP}
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {name: backend-v1, namespace: demo}
spec:
  address: 127.0.0.1
  ports: {http: APP_PORT}
  labels: {app: backend, version: v1}
  serviceAccount: backend
"""


def backend_config(app_port: int) -> str:
    """A node's seed config putting an app on `app_port` behind Service demo/backend
    (HTTP port 8080, reached as ``Host: backend.demo:8080``)."""
    return BACKEND_CONFIG.replace("APP_PORT", str(app_port))


def stream_bytes(size: int) -> bytes:
    """The body of ``GET /stream/<size>``: reproducible, so a test can check its digest."""
    return random.Random(f"stream-{size}").randbytes(size)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the connection threads
    request_queue_size = 128
    app: "HTTPApp"

    def process_request(self, request: Any, client_address: Any) -> None:
        self.app.opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.app.closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None and not self.app.stopping:
            self.app.errors.append(exc)


class HTTPApp:
    """An HTTP/1.1 server on 127.0.0.1 (``port`` 0: a free one) serving on threads."""

    def __init__(self, name: str = "backend", port: int = 0) -> None:
        self.name = name
        self.errors: list[BaseException] = []
        self.stopping = False
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._conns: set[socket.socket] = set()
        self._accepted = 0
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.app = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"httpapp-{self.port}", daemon=True)
        self._thread.start()

    # --- what the app saw ---

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._accepted += 1
            self._conns.add(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    # --- lifetime ---

    def stop(self) -> None:
        self.stopping = True
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # wakes handlers blocked reading a keep-alive connection
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(5)
        assert not self._thread.is_alive(), "the app's serving thread did not stop"
