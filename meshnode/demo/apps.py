"""The demo's two tiny HTTP apps (``python -m meshnode.demo.apps frontend|backend``).

Both are standard-library ``ThreadingHTTPServer``s on 127.0.0.1 speaking HTTP/1.1
(keep-alive), as plain as the services a mesh is meant to carry: they know nothing of
TLS or identities.

- backend: ``GET /echo`` answers JSON with the request line and every header it
  received, so the demo sees what the node's inbound side added (the
  ``x-forwarded-client-cert`` header naming both peers' SPIFFE IDs). Given
  ``--version`` (the canary runs v1 and v2), its answers and ``/stats`` name it, so
  each request tells which version served it. Given ``--bad errors`` or ``--bad
  slow`` (the rollout demo's bad v2), every ``BAD_EVERY``-th answer is a 500, or comes
  ``SLOW_S`` late: 5 %, spread evenly, so any ``BAD_EVERY`` answers in a row hold one.
- frontend: ``GET /call`` makes one request to the backend *through the node*: to the
  node's HTTP outbound listener with ``Host: backend.<ns>.svc:<port>``, on a persistent
  ``http.client`` connection per frontend connection. It times that hop itself and
  answers JSON with the backend's status, the hop's duration and the backend's answer.

Both answer ``GET /stats`` (what they counted) and ``GET /ready`` directly, never
through the mesh. Each writes ``{"app", "port", "pid"}`` to ``--port-file`` once it
listens (it binds port 0 unless told otherwise), logs JSON lines on stderr, and exits 0
on SIGTERM/SIGINT, or when the process named by ``--parent`` is gone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import logs

log = logging.getLogger("meshnode.demo")

HOP_TIMEOUT_S = 10.0  # one frontend -> backend request through the node
# A keep-alive connection the other side closed while idle fails on reuse with one of
# these, before any answer: the request is sent again once on a fresh connection (it
# is a GET, idempotent: RFC 9110 §9.2.2), as urllib3 and browsers do.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
# A bad backend's share of bad answers (1 in 20: 5 %) and a slow answer's delay.
BAD_EVERY = 20
SLOW_S = 0.5


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries every request
    server_version = "meshnode-demo"
    # Head and body go out in two writes: without TCP_NODELAY the second waits for the
    # peer's delayed ACK (40 ms on Linux), which would be most of what the demo measures.
    disable_nagle_algorithm = True
    app: App  # set on the subclass made per app

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._skip_body()
        path = urlsplit(self.path).path
        if path == "/ready":
            self._reply(200, {"app": self.app.role, "ready": True})
        elif path == "/stats":
            self._reply(200, self.app.stats())
        else:
            status, doc = self.app.handle(self, path)
            self._reply(status, doc)

    def _skip_body(self) -> None:
        """Read past a body the request carries (a GET may have one): left unread,
        http.server's keep-alive loop would take it for the next request, so a body
        written as a request, with a forged identity, would be served as one (a
        desync no proxy in front can see). A chunked one ends the connection instead."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 1 << 20:
            self.close_connection = True
            return
        self.rfile.read(length)

    def _reply(self, status: int, doc: Any) -> None:
        body = (json.dumps(doc) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # nothing is logged per request: the apps count instead


class App:
    role = "app"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def handle(self, req: _Handler, path: str) -> tuple[int, Any]:
        return 404, {"error": f"no such path {path!r}"}

    def stats(self) -> dict[str, Any]:
        return {"app": self.role}


class Backend(App):
    role = "backend"

    def __init__(self, version: str | None = None, bad: str | None = None) -> None:
        super().__init__()
        self.requests = 0
        self.codes: Counter[str] = Counter()
        self.version, self.bad = version, bad

    def handle(self, req: _Handler, path: str) -> tuple[int, Any]:
        if path != "/echo":
            return super().handle(req, path)
        with self._lock:
            self.requests += 1
            misbehave = self.bad is not None and self.requests % BAD_EVERY == 0
            status = 500 if misbehave and self.bad == "errors" else 200
            self.codes[str(status)] += 1
        if misbehave and self.bad == "slow":
            time.sleep(SLOW_S)
        # Pairs, not a dict: a header that came twice must show twice.
        return status, {"app": self.role, **self._version(), "method": req.command,
                        "path": req.path, "headers": [[k, v] for k, v in req.headers.items()]}

    def _version(self) -> dict[str, str]:
        return {"version": self.version} if self.version else {}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"app": self.role, **self._version(), "requests": self.requests,
                    "codes": dict(self.codes)}


class Frontend(App):
    role = "frontend"

    def __init__(self, mesh_host: str, mesh_port: int, upstream_host: str,
                 address: str = "127.0.0.1") -> None:
        super().__init__()
        self.mesh_host, self.mesh_port, self.upstream_host = mesh_host, mesh_port, upstream_host
        self.address = address  # its calls leave from its own address: the node knows it by it
        self.codes: Counter[str] = Counter()
        self.errors = 0
        self.retries = 0
        self._local = threading.local()  # one mesh connection per frontend connection

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.mesh_host, self.mesh_port,
                                              timeout=HOP_TIMEOUT_S,
                                              source_address=(self.address, 0))
            self._local.conn = conn
            self._local.used = False
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def call_backend(self, target: str) -> tuple[int, bytes, int]:
        """(status, body, duration in µs) of one request to the backend through the node."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = bool(getattr(self._local, "used", False))
            start = time.perf_counter_ns()
            try:
                # An explicit Host makes http.client leave out its own (127.0.0.1:port):
                # the node routes by this name, as it would for any mesh client.
                conn.request("GET", target, headers={"Host": self.upstream_host})
                resp = conn.getresponse()
                body = resp.read()
            except _STALE:
                self._drop_connection()
                if reused and attempt == 1:
                    with self._lock:
                        self.retries += 1
                    continue
                raise
            except (OSError, http.client.HTTPException):
                self._drop_connection()
                raise
            elapsed_us = (time.perf_counter_ns() - start) // 1000
            self._local.used = True
            if resp.will_close:
                self._drop_connection()
            return resp.status, body, elapsed_us
        raise AssertionError("unreachable")

    def handle(self, req: _Handler, path: str) -> tuple[int, Any]:
        if path != "/call":
            return super().handle(req, path)
        query = urlsplit(req.path).query
        try:
            status, body, hop_us = self.call_backend(f"/echo?{query}" if query else "/echo")
        except (OSError, http.client.HTTPException) as exc:
            with self._lock:
                self.errors += 1
            return 502, {"status": None, "hop_us": None,
                         "error": f"{type(exc).__name__}: {exc}", "backend": None}
        with self._lock:
            self.codes[str(status)] += 1
        try:
            backend: Any = json.loads(body)
        except ValueError:  # the node's own answers (404, 503...) are plain text
            backend = body.decode(errors="replace")
        return (200 if 200 <= status < 300 else 502), {"status": status, "hop_us": hop_us,
                                                        "error": None, "backend": backend}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"app": self.role, "codes": dict(self.codes), "errors": self.errors,
                    "retries": self.retries}


def _write_port_file(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, path)  # the demo never reads half a file


def _parent_gone(pid: int) -> bool:
    if os.getppid() != pid:  # re-parented: ours exited
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshnode.demo.apps",
                                     description="One of the demo's two tiny HTTP apps.")
    parser.add_argument("role", choices=["frontend", "backend"])
    parser.add_argument("--runtime-dir", required=True,
                        help="the demo node's runtime dir (names the processes it owns)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="the loopback address it listens on and calls from")
    parser.add_argument("--port", type=int, default=0, help="port on --address (0: any free)")
    parser.add_argument("--port-file", type=Path, required=True,
                        help="where to write {app, port, pid} once listening")
    parser.add_argument("--mesh", default="127.0.0.1:15001",
                        help="frontend: the node's HTTP outbound listener, HOST:PORT")
    parser.add_argument("--upstream-host", default="backend.demo.svc:8080",
                        help="frontend: the Host of its requests to the backend")
    parser.add_argument("--version", default=None,
                        help="backend: the version label it runs as (its answers name it)")
    parser.add_argument("--bad", choices=["errors", "slow"], default=None,
                        help=f"backend: answer every {BAD_EVERY}th request with a 500 (errors) "
                             f"or {SLOW_S:g} s late (slow)")
    parser.add_argument("--parent", type=int, default=0,
                        help="exit when this pid is gone (0: live on alone)")
    args = parser.parse_args(argv)
    logs.setup(f"demo-{args.role}")

    app: App
    if args.role == "backend":
        app = Backend(args.version, args.bad)
    else:
        host, _, port = args.mesh.rpartition(":")
        app = Frontend(host or "127.0.0.1", int(port), args.upstream_host, args.address)
    handler = type(f"{args.role.title()}Handler", (_Handler,), {"app": app})
    httpd = ThreadingHTTPServer((args.address, args.port), handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    server = threading.Thread(target=httpd.serve_forever, name=args.role, daemon=True)
    server.start()
    _write_port_file(args.port_file, {"app": args.role, "port": port, "pid": os.getpid()})
    logs.event(log, "app.listening", app=args.role, address=args.address, port=port)
    while not stop.wait(0.5):
        if args.parent and _parent_gone(args.parent):
            logs.event(log, "app.orphaned", logging.WARNING, parent=args.parent)
            break
    httpd.shutdown()
    httpd.server_close()
    logs.event(log, "app.stopped", app=args.role, stats=app.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
