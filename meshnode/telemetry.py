"""The telemetry process: the node's window to the outside (``python -m meshnode.telemetry``).

It collects every process's health beat from the bus and serves, on loopback unless
told otherwise, Prometheus ``/metrics`` (port-base+90) and the admin endpoints
(port-base+0): ``/ready`` (200 only when every expected process is healthy), ``/live``,
``/stats`` (the health book as JSON), ``/config_dump`` (the snapshot this node runs) and
the dashboard (``/dashboard``, fed by ``/dashboard.json``: meshnode.dashboard). It keeps
a ring of the workers' figures (meshnode.golden) and answers ``stat`` on the bus from it,
and holds the node's tap sessions (meshnode.tap: ``tap.start``, ``tap.poll``, ``tap.stop``).
HTTP is served from threads so a slow scraper never stalls the bus loop. The admin port
answers only a Host that is an address or a loopback name (local_host: DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bus.clone import StateClient
from bus.envelope import Envelope
from bus.request import Client

from . import beatfigures, dashboard, golden, logs, tap
from .accesslog import AccessLog, Collector
from .busnames import ACCESS_TOPIC, CONTROL, SNAPSHOT_TOPIC, TAP_TOPIC
from .config.model import MeshSpec
from .health import HealthBook
from .metrics import NodeCollector
from .process import Process, base_parser
from .tracing_export import Spans

NAME = "telemetry"

Route = Callable[[], tuple[int, str, bytes]]


def _json(status: int, doc: Any) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(doc, indent=2, default=str) + "\n").encode()


def local_host(host: str | None) -> bool:
    """Whether a request's Host names this machine as only a local caller would: a
    loopback name (localhost, *.localhost: RFC 6761's, which no DNS can hand out) or an
    address, with any port, or no Host at all (HTTP/1.0). A browser sends the name its
    page was loaded from: a page whose name an attacker rebound to 127.0.0.1 (DNS
    rebinding) reaches the admin port as its own origin, and would read /config_dump."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name, _, rest = name[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    elif ":" in name:
        name, _, port = name.rpartition(":")
        if not port.isdigit():
            return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def serve(address: str, port: int, routes: dict[str, Route], log: logging.Logger,
          name: str, host_ok: Callable[[str | None], bool] = lambda host: True,
          ) -> ThreadingHTTPServer:
    """Serve GET ``routes`` on a daemon thread; anything else is 404 or 405, and a
    request whose Host ``host_ok`` refuses is 403."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "meshnode"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            route = routes.get(self.path.split("?", 1)[0])
            host = self.headers.get("Host")
            if not host_ok(host):
                status, ctype, body = 403, "text/plain", (
                    f"Host {host!r} is not a loopback name or an address: "
                    "ask by address (127.0.0.1) or as localhost\n").encode()
            elif route is None:
                status, ctype, body = 404, "text/plain", f"no such endpoint; try {sorted(routes)}\n".encode()
            else:
                status, ctype, body = route()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            self.send_error(405, "read-only endpoint")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not log events

    httpd = ThreadingHTTPServer((address, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name=name, daemon=True).start()
    logs.event(log, "listener.bound", name=name, address=address, port=port)
    return httpd


class Telemetry:
    def __init__(self, proc: Process, expected: list[str]) -> None:
        self.proc = proc
        self.book = HealthBook(expected)
        self.snapshot: dict[str, Any] | None = None
        self._snapshot_lock = threading.Lock()
        proc.subscriber(["health."], self.on_health)
        self.config = StateClient(proc.client(), CONTROL, SNAPSHOT_TOPIC, self.on_config)
        proc.subscriber([SNAPSHOT_TOPIC], lambda topic, env: self.config.feed(env))
        proc.loop.every(0.5, self.config.tick)
        # Access logs (meshnode.accesslog): the workers' records, written as they come,
        # and their sampled spans exported (meshnode.tracing_export).
        self.spans = Spans(proc.log)
        self.access = Collector(AccessLog(Path(proc.runtime_dir) / "logs" / "access.log",
                                          MeshSpec.access_log_max_bytes,
                                          MeshSpec.access_log_backups))
        proc.subscriber([ACCESS_TOPIC], self.on_access)
        proc.add_health(lambda: {"accesslog_dropped": {"bus": self.access.lost},
                                 "trace_spans": self.spans.counts()})
        srv = proc.server(NAME)
        srv.register("processes", lambda req: {"processes": self.book.view(),
                                               "not_ready": self.book.not_ready()})
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(self.book, proc.node, self.current_snapshot))
        self.history = golden.History(self.book)
        proc.loop.every(golden.SAMPLE_INTERVAL_S, self.history.sample)
        srv.register("stat", self.on_stat)
        # Taps: sessions announced to the workers, fed from their access batches.
        self.taps = tap.Hub(lambda body: proc.publisher.publish(TAP_TOPIC, "tap", body),
                            tap.resolver(self.current_snapshot))
        srv.register("tap.start", lambda req: self.taps.start(req.body))
        srv.register("tap.poll", lambda req: self.taps.poll(req.body))
        srv.register("tap.stop", lambda req: self.taps.stop(req.body))
        proc.loop.every(0.2, self.taps.tick)

    def on_access(self, topic: str, env: Envelope) -> None:
        """A worker's batch: the access log's records to the file, the taps' to them."""
        self.access.on_access(topic, env)
        if isinstance(env.body, dict):
            if not self.taps.on_tapped(env.body.get("tapped")):
                self.proc.counters.drop("bad-tap")
            if isinstance(env.body.get("spans"), list):
                self.spans.offer(env.body["spans"])

    def on_health(self, topic: str, env: Envelope) -> None:
        body = env.body if isinstance(env.body, dict) else None
        name = topic.removeprefix("health.")
        if body is None or not name or body.get("process") != name \
                or not beatfigures.well_formed(body.get("requests", [])):
            self.proc.counters.drop("bad-health")
            return
        self.book.record(name, body)

    def on_config(self, items: dict[str, Any]) -> None:
        with self._snapshot_lock:
            self.snapshot = items.get(self.proc.node)
        if self.snapshot is not None:
            self.access.configure(self.snapshot.get("mesh") or {})
            self.spans.configure(self.snapshot)

    def current_snapshot(self) -> dict[str, Any] | None:
        with self._snapshot_lock:
            return self.snapshot

    def on_stat(self, req: Envelope) -> dict[str, Any]:
        """`meshnode stat`: golden rows of a kind over a window (meshnode.cli_stat)."""
        return golden.stat_request(self.history, self.current_snapshot(), req.body)

    def dashboard_json(self) -> tuple[int, str, bytes]:
        return _json(200, dashboard.view(self.history, self.current_snapshot(),
                                         dashboard.rollouts(self._http_client)))

    def _http_client(self) -> Client:
        """A bus client for an HTTP thread: sockets are one thread's, and so are the
        process's bus counters (the loop's), which this one leaves alone."""
        return Client(self.proc.ctx, self.proc.endpoints, node=self.proc.node, src=NAME)

    def ready(self) -> tuple[int, str, bytes]:
        body = self.book.readiness()
        return _json(200 if body["ready"] else 503, body)

    def metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def config_dump(self) -> tuple[int, str, bytes]:
        snapshot = self.current_snapshot()
        if snapshot is None:
            return _json(503, {"error": "no config snapshot received yet"})
        return _json(200, snapshot)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("meshnode.telemetry", "Run the node's telemetry process.")
    parser.add_argument("--expect", default="bus,control,ca,telemetry",
                        help="comma-separated processes that must be healthy for /ready")
    parser.add_argument("--admin-address", default="127.0.0.1",
                        help="address of the admin listener (default loopback only)")
    parser.add_argument("--metrics-address", default="127.0.0.1",
                        help="address of the /metrics listener (default loopback only)")
    args = parser.parse_args(argv)
    proc = Process(NAME, args)
    telemetry = Telemetry(proc, [p for p in args.expect.split(",") if p])
    servers = []
    try:
        servers.append(serve(args.metrics_address, proc.ports.metrics,
                             {"/metrics": telemetry.metrics}, proc.log, "metrics"))
        servers.append(serve(args.admin_address, proc.ports.admin, {
            "/ready": telemetry.ready,
            "/live": lambda: _json(200, {"live": True}),
            "/stats": lambda: _json(200, telemetry.book.view()),
            "/config_dump": telemetry.config_dump,
            "/dashboard": lambda: (200, "text/html; charset=utf-8", dashboard.PAGE),
            "/dashboard.json": telemetry.dashboard_json,
        }, proc.log, "admin", host_ok=local_host))
    except OSError as exc:
        logs.event(proc.log, "listener.failed", logging.ERROR, error=str(exc))
        for httpd in servers:
            httpd.shutdown()
        proc.ctx.destroy(linger=0)
        return 78
    try:
        return proc.run()
    finally:
        telemetry.spans.close()
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())
