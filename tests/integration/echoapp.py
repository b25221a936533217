"""The echo backend of the HTTPRoute tests: what the Gateway API conformance suite's echo
server reports, from a real HTTP/1.1 server on a loopback address of its own.

Upstream, every "pod" of the conformance mesh runs an echo server that answers any
request with JSON saying what it received and who it is (echo-basic's
``RequestAssertions``: path, host, method, proto, headers, and the pod's namespace and
name), and the tests judge routing by those fields: ``pod`` says which backend served,
``headers`` what the filters did to the request. This server answers the same JSON,
with the two request controls the conformance tests use:

- ``?delay=DURATION`` (a Go duration: ``1s``, ``500ms``) waits that long before
  answering: the timeout tests' slow backend.
- ``X-Echo-Set-Header: Name:value,Name2:value2`` puts those fields in the response
  (names as written, a repeated name's values joined by a comma): what the response
  header modifier tests start from.
- ``?uuid=ID&succeedAfter=N[&responseCode=CODE][&delayRetry=DURATION]``: the retry
  tests' simulation (their ``retrySimulationConfig``): the first N requests carrying ID
  fail, each after DURATION, with CODE, or without one by closing the connection
  unanswered; later ones are answered as any other.

Every method is answered (a request body is read and dropped), so method matching can be
judged by the backend that answers. Each pod listens on its own address (a Workload's
``spec.address``, 127.0.0.x), as pods have their own IPs.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

IO_TIMEOUT_S = 20.0
# The longest ?delay= a test may ask for: a slow answer, never a hung test.
MAX_DELAY_S = 10.0
# Requests a pod keeps a record of (EchoPod.seen): a test's worth.
MAX_SEEN = 10000
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def go_duration_s(text: str) -> float:
    """A Go duration of ms/s/m parts (``1s``, ``1m30s``, ``250ms``) in seconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes (see httpapps)
    server: Any  # the ThreadingHTTPServer of an EchoPod, which it carries as .pod

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(IO_TIMEOUT_S)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        pass  # the JSON answer is the record

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        query = parse_qs(urlsplit(self.path).query)
        status = 200
        pod = self.server.pod
        try:
            if "delay" in query:
                time.sleep(min(go_duration_s(query["delay"][0]), MAX_DELAY_S))
            if "uuid" in query and "succeedAfter" in query and \
                    pod.count_try(query["uuid"][0]) <= int(query["succeedAfter"][0]):
                if "delayRetry" in query:
                    time.sleep(min(go_duration_s(query["delayRetry"][0]), MAX_DELAY_S))
                if "responseCode" not in query:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # no answer: a connection error
                    return
                status = int(query["responseCode"][0])
        except ValueError:
            status = 500  # echo-basic answers a bad delay with 500
        if len(pod.seen) < MAX_SEEN:
            # What the pod got, as echo-basic logs it: the RequestMirror tests read it.
            pod.seen.append((self.command, self.path, self.headers.get("Host", ""), length))
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"path": self.path, "host": self.headers.get("Host", ""),
                           "method": self.command, "proto": self.request_version,
                           "headers": headers, "namespace": pod.namespace,
                           "pod": pod.name}).encode()
        self.send_response(status)
        for name, value in _set_headers(self.headers.get_all("X-Echo-Set-Header") or []):
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _echo


def _set_headers(fields: list[str]) -> list[tuple[str, str]]:
    """The response fields ``X-Echo-Set-Header`` asks for, as echo-basic's
    writeEchoResponseHeaders makes them: one field per name, in the order first named."""
    merged: dict[str, str] = {}
    for field in fields:
        for pair in field.split(","):
            name, _, value = pair.strip().partition(":")
            if name:
                merged[name] = f"{merged[name]},{value.strip()}" if name in merged else value
    return list(merged.items())


class EchoPod:
    """One pod's echo server: ``name`` and ``namespace`` are what it reports, ``address``
    the loopback address it listens on (a free port).

    Its connections come from the node's inbound listener only, so a pod is stopped
    after its node: by then every connection is closed, and closing the server joins
    handler threads that have ended (each read is bounded by IO_TIMEOUT_S besides).
    """

    def __init__(self, name: str, namespace: str, address: str) -> None:
        self.name, self.namespace, self.address = name, namespace, address
        self.seen: list[tuple[str, str, str, int]] = []  # (method, path, Host, body bytes)
        self._tries: dict[str, int] = {}  # the retry simulation's count per uuid
        self._tries_lock = threading.Lock()
        self._server = ThreadingHTTPServer((address, 0), _Handler)
        self._server.daemon_threads = False
        self._server.block_on_close = True  # server_close() joins the handler threads
        self._server.pod = self  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"echo-{name}", daemon=True)
        self._thread.start()

    def count_try(self, uuid: str) -> int:
        """One more request of the retry simulation's `uuid`: how many so far."""
        with self._tries_lock:
            self._tries[uuid] = self._tries.get(uuid, 0) + 1
            return self._tries[uuid]

    def stop(self) -> None:
        """Close the listener; join the serving thread and every handler thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        assert not self._thread.is_alive(), f"echo pod {self.name} did not stop"
