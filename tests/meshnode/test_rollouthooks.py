"""A rollout's webhooks (meshnode.rollouthooks) against a real HTTP server on loopback:
Flagger's payload is POSTed, a 2xx passes, another status, a refused connection and a
timeout fail, and the calls run off the caller's thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from meshnode.config.rollout import Webhook
from meshnode.rollouthooks import Hooks, call

pytestmark = pytest.mark.timeout(30)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(body)  # type: ignore[attr-defined]
        if self.path == "/slow":
            time.sleep(0.5)
        self.send_response(int(self.path.strip("/")) if self.path.strip("/").isdigit() else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_2xx_passes_and_anything_else_fails(server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    payload = {"name": "backend", "namespace": "demo", "phase": "Progressing", "checksum": "c"}
    ok = call(Webhook("smoke", "pre-rollout", f"{url}/204", metadata={"cmd": "test"}), payload)
    assert ok.ok and "answered 204" in ok.message
    assert server.seen[0] == {**payload, "metadata": {"cmd": "test"}}  # type: ignore[attr-defined]
    assert not call(Webhook("gate", "confirm-promotion", f"{url}/403"), payload).ok
    assert not call(Webhook("slow", "rollout", f"{url}/slow", timeout="100ms"), payload).ok
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = call(Webhook("gone", "rollout", f"http://127.0.0.1:{unused.getsockname()[1]}/"), payload)
    assert not refused.ok


def test_hooks_run_off_the_callers_thread(server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/slow"
    hooks = Hooks()
    try:
        started = time.monotonic()
        future = hooks.start([Webhook("slow", "rollout", url)], {"name": "x"})
        assert time.monotonic() - started < 0.2 and not future.done()
        assert [r.ok for r in future.result(timeout=5)] == [True]
    finally:
        hooks.close()
