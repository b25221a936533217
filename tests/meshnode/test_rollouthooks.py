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



class RawServer:
    """A listener that reads one request per connection and writes it the next queued
    answer (none left: it closes), recording what each connection sent."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answers: list[bytes] = []
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.seen.append(conn.recv(65536))
                if self.answers:
                    conn.sendall(self.answers.pop(0))


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.listener.close()


def test_an_answer_that_is_not_http_fails_the_hook(raw_server: RawServer) -> None:
    """http.client's own errors (a garbled status line, a header line past its limit)
    are a failed hook, never an exception out of the hook's thread: control's tick reads
    the stage's result and would die of it, at every restart."""
    url = f"http://127.0.0.1:{raw_server.port}/"
    raw_server.answers += [b"HELLO THERE\r\n\r\n",
                           b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n"]
    for _ in range(2):
        result = call(Webhook("garbled", "rollout", url, timeout="2s"), {"name": "x"})
        assert not result.ok and url in result.message


def test_a_port_that_is_not_a_number_fails_the_hook() -> None:
    result = call(Webhook("typo", "rollout", "http://127.0.0.1:80a/"), {"name": "x"})
    assert not result.ok and "port" in result.message


def test_a_redirect_is_followed_to_http_only(raw_server: RawServer) -> None:
    """urllib follows a redirect to ftp:// too; a hook's answer must be an HTTP one, so
    the redirect itself is the answer there (a 3xx: the hook fails) and the FTP URL is
    never called."""
    port = raw_server.port
    raw_server.answers += [
        f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/there\r\n"
        "Content-Length: 0\r\n\r\n".encode(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        f"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1:{port}/file\r\n"
        "Content-Length: 0\r\n\r\n".encode()]
    followed = call(Webhook("moved", "rollout", f"http://127.0.0.1:{port}/", timeout="2s"), {})
    assert followed.ok and raw_server.seen[-1].startswith(b"GET /there ")
    refused = call(Webhook("to-ftp", "rollout", f"http://127.0.0.1:{port}/", timeout="2s"), {})
    assert not refused.ok and "answered 302" in refused.message
    time.sleep(0.1)
    assert len(raw_server.seen) == 3  # nothing came to the "FTP" server after the redirect
