"""HTTP/1.1 through a real node's outbound HTTP listener (DESIGN §3, §8; fastpath.engine,
meshnode.dataplane).

Why these tests: the engine frames every HTTP/1.1 message itself (Content-Length and
chunked bodies, pipelining, 100-continue, Upgrade, its own error answers) and unit
tests of the codec cannot show what a user of a running node sees. Here real clients
(curl, requests, http.client, raw sockets for what libraries never send) talk to a
real node and a real HTTP server, and each test asserts what the client receives.

Every test starts a node with two proxy workers whose config holds a ``backend``
Service (HTTP port 8080, namespace demo) backed by one Workload: the
tests.integration.httpapps server, on a free port of 127.0.0.1. A request to the
node's HTTP outbound listener (127.0.0.1:port-base+1) with ``Host: backend.demo:8080``
(or an absolute-form target, as HTTP_PROXY clients send) is accepted by one of the
workers, relayed over mutual TLS to the node's inbound port (port-base+6) and from
there in plaintext to the app. Nothing here sleeps to synchronise: each wait polls a
condition with a deadline, and every loop is bounded in count and time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pytest
import requests

from httpapps import DIE_ANNOUNCED_BYTES, DIE_SENT_BYTES, HTTPApp, stream_bytes
from dataplanekit import cert_of, certs_issued, metric_total, settle, worker_reports
from mnharness import CLI, Node, wait_for

from meshnode.dataplane import BUFFER_BYTES

pytestmark = pytest.mark.timeout(90)

BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"
SERVICE_PORT = 8080
HOST = f"backend.demo:{SERVICE_PORT}"
IO_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 20.0
# The engine bounds a request head by its connect timeout (fastpath.engine: 408 when no
# whole head arrives within connect_timeout_s). meshnode.dataplane builds Engine() with
# the default, 5 s, and no resource sets it; the engine's timer wheel fires it within a
# few milliseconds of that.
HEAD_TIMEOUT_S = 5.0
HEAD_TIMEOUT_SLACK_S = 3.0
MIB = 1024 * 1024
CHUNK_BYTES = 64 * 1024

SERVICE_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: backend, namespace: demo}}
spec:
  selector: {{app: backend}}
  ports:
    - {{name: http, port: {port}, protocol: HTTP}}
{extra_ports}"""

WORKLOAD_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: backend-v1, namespace: demo}}
spec:
  address: 127.0.0.1
  ports: {{http: {app_port}{alt}}}
  labels: {{app: backend{extra_labels}}}
  serviceAccount: backend
"""


def service_yaml(alt_port: int | None = None) -> str:
    extra = f"    - {{name: alt, port: {alt_port}, protocol: HTTP}}\n" if alt_port else ""
    return SERVICE_YAML.format(port=SERVICE_PORT, extra_ports=extra)


def workload_yaml(app_port: int, extra_labels: str = "", alt: bool = False) -> str:
    """The backend workload; ``alt``: it also serves the service's second port."""
    return WORKLOAD_YAML.format(app_port=app_port, extra_labels=extra_labels,
                                alt=f", alt: {app_port}" if alt else "")


# --- the app behind the workload --------------------------------------------------------------


@pytest.fixture
def start_app() -> Iterator[Callable[..., HTTPApp]]:
    apps: list[HTTPApp] = []

    def start(name: str = "backend", port: int = 0) -> HTTPApp:
        app = HTTPApp(name, port)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def app_says(path: str) -> bytes:
    """The body the app answers a GET of ``path`` with (httpapps)."""
    return f"backend GET {path}".encode()


def digest_of(data: bytes) -> dict[str, Any]:
    """What the app answers a POST /digest of ``data`` with."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


# --- clients ----------------------------------------------------------------------------------


def connect(port: int, timeout_s: float = IO_TIMEOUT_S) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def session() -> requests.Session:
    """A requests session that ignores the environment's proxies and netrc."""
    s = requests.Session()
    s.trust_env = False
    return s


def get(port: int, path: str = "/", host: str = HOST,
        timeout_s: float = IO_TIMEOUT_S) -> requests.Response:
    """One GET on a fresh connection to the node's HTTP listener."""
    with session() as s:
        return s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host},
                     timeout=timeout_s)


@dataclass
class CurlResult:
    rc: int
    status: int
    body: bytes
    stderr: str


def curl(*args: str, proxy_env: str | None = None,
         timeout_s: float = IO_TIMEOUT_S) -> CurlResult:
    """curl with the status code on stdout's last line; no proxy unless ``proxy_env``
    (then as the ``http_proxy`` variable, the way a user configures it)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    if proxy_env:
        env["http_proxy"] = proxy_env
    result = subprocess.run(["curl", "-sS", "--max-time", f"{timeout_s:g}",
                             "-w", "\n%{http_code}", *args],
                            capture_output=True, env=env, timeout=timeout_s + 10,
                            stdin=subprocess.DEVNULL)
    body, _, code = result.stdout.rpartition(b"\n")
    return CurlResult(result.returncode, int(code or 0), body,
                      result.stderr.decode(errors="replace"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConnectionError(f"EOF after {len(data)} of {n} body bytes")
    return data


def read_response(f: BinaryIO, method: str = "GET") -> Response:
    """One response off a raw connection's buffered reader, framed as RFC 9112 §6.3 says
    (the client side of pipelining: nothing of the next response is consumed)."""
    status_line = f.readline(8192)
    if not status_line:
        raise ConnectionError("EOF before a status line")
    version, code = status_line.split(b" ", 2)[:2]
    assert version == b"HTTP/1.1", status_line
    headers: dict[str, str] = {}
    while (line := f.readline(8192)) not in (b"\r\n", b"\n"):
        if not line:
            raise ConnectionError("EOF inside a response head")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(code)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int(f.readline(1024).split(b";")[0], 16):
            parts.append(_read_exactly(f, size))
            f.readline(2)
        while f.readline(8192) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return Response(status, headers, b"".join(parts))
    if "content-length" in headers:
        return Response(status, headers, _read_exactly(f, int(headers["content-length"])))
    return Response(status, headers, f.read())  # delimited by the close


def request_bytes(method: str, path: str, host: str = HOST, body: bytes = b"",
                  headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer has ended the connection (EOF, or a reset), without blocking;
    whatever it sent first (an error answer) is read and dropped."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionError:
            return True
    return False


# --- the node's view: /stats and /metrics -----------------------------------------------------


def backend_cert(report: dict[str, Any]) -> dict[str, Any]:
    return cert_of(report, BACKEND_ID)


# --- the node ---------------------------------------------------------------------------------


@dataclass
class Mesh:
    node: Node
    app: HTTPApp
    config_dir: Path

    @property
    def port(self) -> int:
        """The node's HTTP outbound listener."""
        return self.node.port_base + 1

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, name: str, text: str) -> Path:
        """A resource file for `meshnode apply`, beside the seed config dir (not in it)."""
        path = self.config_dir.parent / name
        path.write_text(text)
        return path


def serves(port: int) -> bool:
    try:
        response = get(port, "/ready-probe", timeout_s=5.0)
    except requests.RequestException:  # refused (not bound yet), reset, timed out
        return False
    return response.status_code == 200 and response.content == app_says("/ready-probe")


def wait_serving(node: Node, port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until both workers hold the backend's certificate and six GETs in a row, each on
    a fresh connection that either worker may accept, come back from the app."""
    wait_for(lambda: certs_issued(node, BACKEND_ID), timeout_s,
             "every worker to hold the backend certificate")
    wait_for(lambda: all(serves(port) for _ in range(6)), timeout_s,
             f"GETs through the mesh on 127.0.0.1:{port}")


@pytest.fixture
def mesh(make_node: Callable[..., Node], resource_dir: Path,
         start_app: Callable[..., HTTPApp]) -> Mesh:
    app = start_app()
    config_dir = resource_dir / "config"
    config_dir.mkdir()
    (config_dir / "backend.yaml").write_text(service_yaml() + "---\n" + workload_yaml(app.port))
    node = make_node()
    result = node.up("--config", str(config_dir))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    m = Mesh(node, app, config_dir)
    wait_serving(node, m.port)
    return m


# --- 1. routing by Host and by absolute URI; an unknown host ----------------------------------


def test_get_by_host_header_and_by_proxy_uri_and_404_for_an_unknown_host(
        mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{mesh.port}"
    result = curl("-H", "Host: backend.demo.svc:8080", f"{url}/hello?x=1")
    assert (result.rc, result.status, result.body) == (0, 200, app_says("/hello?x=1")), result
    # Every name the service answers to, with and without the port.
    for host in ("backend", "backend.demo", "backend.demo.svc", "BACKEND.Demo:8080"):
        response = get(mesh.port, "/by-host", host=host)
        assert (response.status_code, response.content) == (200, app_says("/by-host")), host

    # Absolute-form targets, as clients configured with a proxy send them; the app gets
    # origin-form (RFC 9112 §3.2.2: a server must accept absolute-form, an app behind a
    # proxy need not).
    result = curl("-x", mesh.proxy, "http://backend.demo:8080/via-x?q=2")
    assert (result.rc, result.status, result.body) == (0, 200, app_says("/via-x?q=2")), result
    result = curl("http://backend.demo.svc:8080/via-env", proxy_env=mesh.proxy)
    assert (result.rc, result.status, result.body) == (0, 200, app_says("/via-env")), result
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HTTP_PROXY", mesh.proxy)
    response = requests.get("http://backend:8080/via-requests", timeout=IO_TIMEOUT_S)
    assert (response.status_code, response.content) == (200, app_says("/via-requests"))
    seen = {s.target: s for s in mesh.app.seen}
    for target in ("/via-x?q=2", "/via-env", "/via-requests"):
        assert target in seen, f"the app did not get {target} in origin-form: {list(seen)}"
    assert seen["/via-x?q=2"].headers["host"] == "backend.demo:8080"

    # A host no service answers to: 404 from the node itself, naming the host.
    count = len(mesh.app.seen)
    result = curl("-H", "Host: nosuch.demo:8080", f"{url}/x")
    assert result.status == 404, result
    assert b"nosuch.demo" in result.body, result.body
    result = curl("-x", mesh.proxy, "http://elsewhere.example:8080/x")
    assert result.status == 404 and b"elsewhere.example" in result.body, result
    assert len(mesh.app.seen) == count, "a request for an unknown host reached the app"


# --- 2. large bodies --------------------------------------------------------------------------


def test_multi_mib_bodies_by_length_and_chunked_arrive_whole(mesh: Mesh,
                                                             resource_dir: Path) -> None:
    data = random.Random(2).randbytes(8 * MIB)
    body_file = resource_dir / "body.bin"
    body_file.write_bytes(data)
    url = f"http://127.0.0.1:{mesh.port}/digest"
    common = ("-H", f"Host: {HOST}", "-H", "Content-Type: application/octet-stream",
              "-H", "Expect:", "--data-binary", f"@{body_file}")  # Expect: test 4's business

    result = curl(*common, url)
    assert (result.rc, result.status) == (0, 200), result
    assert json.loads(result.body) == digest_of(data)

    result = curl(*common, "-H", "Transfer-Encoding: chunked", url)
    assert (result.rc, result.status) == (0, 200), result
    assert json.loads(result.body) == digest_of(data)

    # http.client's own chunked encoder, with uneven chunk sizes.
    rng = random.Random(3)

    def chunks() -> Iterator[bytes]:
        offset = 0
        while offset < len(data):
            size = rng.randrange(1, 200_000)
            yield data[offset:offset + size]
            offset += size

    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=IO_TIMEOUT_S)
    try:
        conn.request("POST", "/digest", body=chunks(), encode_chunked=True,
                     headers={"Host": HOST, "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == digest_of(data)
    finally:
        conn.close()

    posts = [s for s in mesh.app.seen if s.method == "POST"]
    assert [p.headers.get("transfer-encoding") for p in posts] == [None, "chunked", "chunked"]
    assert posts[0].headers["content-length"] == str(len(data))

    # And the other way: a chunked response of 8 MiB in uneven chunks, read as a stream.
    size = 8 * MIB
    want = hashlib.sha256(stream_bytes(size)).hexdigest()
    with session() as s:
        response = s.get(f"http://127.0.0.1:{mesh.port}/stream/{size}", headers={"Host": HOST},
                         stream=True, timeout=IO_TIMEOUT_S)
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        got = hashlib.sha256()
        for part in response.iter_content(CHUNK_BYTES):
            got.update(part)
        assert got.hexdigest() == want
    result = curl("-H", f"Host: {HOST}", f"http://127.0.0.1:{mesh.port}/stream/{size}")
    assert (result.rc, result.status) == (0, 200), result
    assert hashlib.sha256(result.body).hexdigest() == want
    assert not mesh.app.errors, mesh.app.errors


# --- 3. pipelining ----------------------------------------------------------------------------


def chunked(data: bytes, size: int) -> bytes:
    """``data`` as a chunked body (RFC 9112 §7.1) of ``size``-byte chunks."""
    parts = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
             for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_pipelined_requests_are_answered_in_order(mesh: Mesh) -> None:
    # A body larger than one of the node's 16 KiB buffers, and a chunked one, inside the
    # pipeline: framing must find each next request wherever the reads split them.
    big = random.Random(3).randbytes(100_000)
    small = b"pipelined, chunked body"
    pipeline = [("GET", "/p/0", b""), ("POST", "/digest", big), ("HEAD", "/p/2", b"")]
    raw = b"".join(request_bytes(method, path, body=data) for method, path, data in pipeline)
    raw += request_bytes("POST", "/digest", headers=("Transfer-Encoding: chunked",))
    raw += chunked(small, 7)
    raw += request_bytes("GET", "/p/4", headers=("Connection: close",))
    pipeline.append(("POST", "/digest", small))

    with connect(mesh.port) as sock:
        sock.sendall(raw)  # one write: the node gets all five at once
        f = sock.makefile("rb")
        answers = [read_response(f, method) for method, _, _ in pipeline]
        last = read_response(f)
        assert f.read() == b"", "bytes after the answer to a request with Connection: close"

    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert answers[0].body == app_says("/p/0")
    assert json.loads(answers[1].body) == digest_of(big)
    assert answers[2].body == b"" and answers[2].headers["content-length"] == str(
        len(app_says("/p/2")))
    assert json.loads(answers[3].body) == digest_of(small)
    assert (last.status, last.body) == (200, app_says("/p/4"))
    assert [(s.method, s.target) for s in mesh.app.seen[-5:]] == [
        *((m, p) for m, p, _ in pipeline), ("GET", "/p/4")]


# --- 4. Expect: 100-continue ------------------------------------------------------------------


def test_expect_100_continue_gets_the_interim_answer_and_the_body_goes_through(
        mesh: Mesh, resource_dir: Path) -> None:
    data = random.Random(4).randbytes(3 * MIB)
    body_file = resource_dir / "body.bin"
    body_file.write_bytes(data)
    # curl sends Expect: 100-continue by itself for a body this large; naming it keeps the
    # test independent of curl's threshold. With --expect100-timeout 10, a node that
    # swallowed the 100 would cost 10 s, and the "100 Continue" line would be missing.
    started = time.monotonic()
    result = curl("-v", "--expect100-timeout", "10", "-H", f"Host: {HOST}",
                  "-H", "Expect: 100-continue", "--data-binary", f"@{body_file}",
                  f"http://127.0.0.1:{mesh.port}/digest")
    elapsed = time.monotonic() - started
    assert (result.rc, result.status) == (0, 200), result
    assert "< HTTP/1.1 100 Continue" in result.stderr, result.stderr
    assert json.loads(result.body) == digest_of(data)
    assert elapsed < 8.0, f"the POST took {elapsed:.1f}s: was the 100 Continue late?"
    post = [s for s in mesh.app.seen if s.method == "POST"][-1]
    assert post.headers.get("expect", "").lower() == "100-continue"


# --- 5. Upgrade -------------------------------------------------------------------------------


def test_upgrade_turns_the_connection_into_a_byte_pipe_both_ways(mesh: Mesh) -> None:
    head = request_bytes("GET", "/upgrade", headers=("Connection: Upgrade",
                                                     "Upgrade: websocket"))
    rng = random.Random(5)
    with connect(mesh.port) as sock:
        sock.sendall(head)
        f = sock.makefile("rb")
        answer = read_response(f)
        assert answer.status == 101, answer
        assert answer.headers.get("upgrade") == "websocket"

        for size in (1, 2, 100, 4096, 16384, 65536, 100_000):
            payload = rng.randbytes(size)
            sock.sendall(payload)
            assert _read_exactly(f, size) == payload, f"a {size}-byte frame came back changed"

        # Both directions at once: a writer thread while this one reads the echo.
        data = rng.randbytes(4 * MIB)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                sock.sendall(data)
            except OSError as exc:
                errors.append(exc)

        writer = threading.Thread(target=write, name="upgrade-writer", daemon=True)
        writer.start()
        assert hashlib.sha256(_read_exactly(f, len(data))).digest() == \
            hashlib.sha256(data).digest()
        writer.join(IO_TIMEOUT_S)
        assert not writer.is_alive() and not errors, errors

        # The client's end passes to the app, whose end comes back as EOF.
        sock.shutdown(socket.SHUT_WR)
        assert f.read() == b""
    assert not mesh.app.errors, mesh.app.errors


# --- 6. a request one byte at a time ----------------------------------------------------------


def test_requests_sent_one_byte_at_a_time_get_their_answers(mesh: Mesh) -> None:
    body = b"hello, one byte at a time"
    sent = [(request_bytes("POST", "/digest", body=body), "POST"),
            (request_bytes("POST", "/digest", headers=("Transfer-Encoding: chunked",))
             + chunked(body, 5), "POST"),
            (request_bytes("GET", "/bytewise"), "GET")]
    answers = []
    with connect(mesh.port) as sock:
        # Every byte its own segment: the parser must resume at any split
        # (httptools' test_parser_request_fragmented_bytes, over a real socket).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb")
        for raw, method in sent:
            for i in range(len(raw)):
                sock.send(raw[i:i + 1])
                time.sleep(0.002)  # pacing, so each byte is its own read on the node
            answers.append(read_response(f, method))  # the request is whole: its answer
    assert [a.status for a in answers] == [200, 200, 200]
    assert json.loads(answers[0].body) == digest_of(body)
    assert json.loads(answers[1].body) == digest_of(body)
    assert answers[2].body == app_says("/bytewise")


# --- 7. slowloris -----------------------------------------------------------------------------


def test_unfinished_heads_are_closed_at_the_head_timeout_while_others_are_served(
        mesh: Mesh) -> None:
    node = mesh.node
    settle(node)
    timeouts_before = metric_total(node, "meshnode_dataplane_failures_total",
                                   reason="http_head_timeouts")
    seen_before = len(mesh.app.seen)
    partial = b"GET /slow HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Slow: "
    slow: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(20):
            sock = connect(mesh.port, timeout_s=HEAD_TIMEOUT_S + HEAD_TIMEOUT_SLACK_S + 5)
            sock.sendall(partial)
            slow.append(sock)

        # Meanwhile everyone else is served, quickly, on fresh connections (both workers).
        for i in range(10):
            started = time.monotonic()
            response = get(mesh.port, f"/during/{i}", timeout_s=5.0)
            assert (response.status_code, response.content) == (200, app_says(f"/during/{i}"))
            assert time.monotonic() - started < 2.0, "a normal GET waited behind the slow ones"
        if time.monotonic() - opened < HEAD_TIMEOUT_S - 1.0:
            assert not [s for s in slow if closed_by_peer(s)], "closed before the head timeout"

        # Then each slow client gets the node's 408 and the end of its connection.
        for sock in slow:
            answer = b""
            try:
                while data := sock.recv(4096):
                    answer += data
            except ConnectionResetError:
                pass  # a reset after the answer may discard it: the close is what counts
            elapsed = time.monotonic() - opened
            assert elapsed < HEAD_TIMEOUT_S + HEAD_TIMEOUT_SLACK_S, \
                f"a slow client was still open {elapsed:.1f}s after it started its head"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        for sock in slow:
            sock.close()
    assert len(mesh.app.seen) == seen_before + 10, "an unfinished head reached the app"
    wait_for(lambda: metric_total(node, "meshnode_dataplane_failures_total",
                                  reason="http_head_timeouts") >= timeouts_before + 20,
             10.0, "the 20 head timeouts in /metrics")
    assert serves(mesh.port)


# --- 8. the upstream dies mid-response --------------------------------------------------------


def fetch_die(port: int) -> BaseException | http.client.HTTPResponse:
    """GET /die; the exception the client saw, or the response if it came whole."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
    try:
        conn.request("GET", "/die", headers={"Host": HOST})
        response = conn.getresponse()
        response.read()
        return response
    except (http.client.IncompleteRead, ConnectionError) as exc:
        return exc  # TimeoutError is neither: a hung connection fails the test
    finally:
        conn.close()


def test_upstream_dying_mid_response_fails_the_client_and_the_next_request_works(
        mesh: Mesh) -> None:
    for _ in range(3):  # on fresh connections, so both workers likely meet it
        started = time.monotonic()
        outcome = fetch_die(mesh.port)
        assert isinstance(outcome, BaseException), \
            f"a truncated response passed as whole: {outcome.status} {outcome.headers}"
        if isinstance(outcome, http.client.IncompleteRead):
            assert len(outcome.partial) <= DIE_SENT_BYTES
        assert time.monotonic() - started < 10.0

    result = curl("-H", f"Host: {HOST}", f"http://127.0.0.1:{mesh.port}/die")
    # 18: "partial file" (EOF before Content-Length), 56: "failure receiving" (reset).
    assert result.rc in (18, 56), result
    assert len(result.body) < DIE_ANNOUNCED_BYTES

    # Fresh connections, and a keep-alive one, work at once.
    for i in range(4):
        response = get(mesh.port, f"/after/{i}")
        assert (response.status_code, response.content) == (200, app_says(f"/after/{i}"))
    with session() as s:
        for i in range(4):
            response = s.get(f"http://127.0.0.1:{mesh.port}/kept/{i}", headers={"Host": HOST},
                             timeout=IO_TIMEOUT_S)
            assert (response.status_code, response.content) == (200, app_says(f"/kept/{i}"))


# --- 9. config swap and certificate rotation under load ---------------------------------------


class LoadLoop:
    """``threads`` clients sending GETs through the mesh until ``stop()``, ``max_requests``
    in all, or ``max_s``. Thread 0 keeps one keep-alive connection (it stays on the table
    and certificates it started with); the others open a new connection every
    ``reconnect_every`` requests (they meet each new table)."""

    def __init__(self, port: int, threads: int = 2, max_requests: int = 200_000,
                 max_s: float = 45.0, reconnect_every: int = 10) -> None:
        self.port = port
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_s
        self.reconnect_every = reconnect_every
        self.done = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}",
                                          daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _more(self) -> bool:
        if self._stop.is_set() or time.monotonic() >= self.deadline:
            return False
        with self._lock:
            if self.done >= self.max_requests:
                return False
            self.done += 1
            return True

    @property
    def finished(self) -> bool:
        """Every thread ended (a bound was reached, or stop())."""
        return not any(t.is_alive() for t in self._threads)

    def more(self, count: int, what: str, timeout_s: float = 10.0) -> None:
        """Until ``count`` more requests were sent from now (or the loop ended)."""
        target = self.done + count
        wait_for(lambda: self.done >= target or self.failures or self.finished, timeout_s,
                 f"{count} more requests {what}")

    def _run(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while self._more():
            if conn is None or (index and sent % self.reconnect_every == 0):
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10.0)
            path = f"/load/{index}/{sent}"
            try:
                conn.request("GET", path, headers={"Host": HOST})
                response = conn.getresponse()
                body = response.read()
                if (response.status, body) != (200, app_says(path)):
                    self._fail(f"{path}: {response.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self._fail(f"{path}: {exc!r}")
                conn.close()
                conn = None
            sent += 1
        if conn is not None:
            conn.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        assert self.finished, "a load thread hung"

    def check(self, what: str, at_least: int) -> None:
        assert not self.failures, (f"{len(self.failures)} of {self.done} requests failed "
                                   f"{what}: {self.failures[:5]}")
        assert self.done >= at_least, f"only {self.done} requests {what}"


@pytest.mark.timeout(150)
def test_config_swap_and_root_rotation_under_load_fail_no_request(mesh: Mesh) -> None:
    node = mesh.node

    # Snapshot swaps: the workload gains a label; then the service a second port, which
    # the workload serves too (one file: each alone would not validate).
    load = LoadLoop(mesh.port, max_s=30.0)
    try:
        version = node.apply(mesh.write("workload-v2.yaml",
                                        workload_yaml(mesh.app.port, ", version: v2")))
        node.wait_version(version)
        version = node.apply(mesh.write("alt.yaml", service_yaml(alt_port=9090) + "---\n"
                                        + workload_yaml(mesh.app.port, ", version: v2", alt=True)))
        node.wait_version(version)
        load.more(200, "on the new config")
    finally:
        load.stop()
    load.check("during the config swap", 200)
    # The second port routes too (the Host's port picks it).
    response = get(mesh.port, "/alt", host="backend.demo:9090")
    assert (response.status_code, response.content) == (200, app_says("/alt"))

    # A certificate rotation: new root, new issuer, every workload certificate re-issued.
    env = {k: v for k, v in os.environ.items() if k != "MESHNODE_RUNTIME_DIR"}
    load = LoadLoop(mesh.port, max_s=60.0)
    cli = subprocess.Popen([*CLI, "ca", "rotate-root", "--runtime-dir", str(node.runtime_dir),
                            "--timeout", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        out, err = cli.communicate(timeout=55)
        load.more(200, "after the rotation")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate(timeout=10)
        load.stop()
    assert cli.returncode == 0, out + err
    assert "root rotation complete" in out, out
    load.check("during the root rotation", 200)
    reports = worker_reports(node)
    assert len(reports) == node.workers and all(
        backend_cert(r).get("issuer_generation") == 2 for r in reports.values()), reports
    assert not mesh.app.errors, mesh.app.errors


# --- 10. what the node counts -----------------------------------------------------------------


BACKEND_FQDN = "backend.demo.svc"


def test_requests_total_counts_2xx_and_4xx(mesh: Mesh) -> None:
    """Istio's standard request metric: each request the app answers is counted by the
    client's side (reporter "source") and by the app's side (reporter "destination");
    the node's own 404 only by the client's side, with no destination service."""
    node = mesh.node
    settle(node)

    def counts() -> dict[str, float]:
        def requests_total(**labels: str) -> float:
            return metric_total(node, "meshnode_requests_total", **labels)
        return {
            "source 200": requests_total(reporter="source", response_class="2xx",
                                         response_code="200", destination_service=BACKEND_FQDN),
            "source 404": requests_total(reporter="source", response_class="4xx",
                                         response_code="404"),
            "destination 2xx": requests_total(reporter="destination", response_class="2xx",
                                              destination_service=BACKEND_FQDN),
            "destination 4xx": requests_total(reporter="destination", response_class="4xx"),
            "source durations": metric_total(node, "meshnode_request_duration_milliseconds_count",
                                             reporter="source",
                                             destination_service=BACKEND_FQDN),
            "no route": metric_total(node, "meshnode_dataplane_failures_total",
                                     reason="http_no_route"),
        }

    before = counts()
    with session() as s:  # keep-alive: several requests on one connection count each
        for i in range(5):
            response = s.get(f"http://127.0.0.1:{mesh.port}/counted/{i}", headers={"Host": HOST},
                             timeout=IO_TIMEOUT_S)
            assert response.status_code == 200
    for i in range(2):
        assert get(mesh.port, f"/counted-fresh/{i}").status_code == 200
    for i in range(3):
        assert get(mesh.port, "/", host=f"nosuch-{i}.demo").status_code == 404

    expected = {"source 200": 7, "source 404": 3, "destination 2xx": 7, "destination 4xx": 0,
                "source durations": 7, "no route": 3}

    def delta() -> dict[str, float]:
        return {k: v - before[k] for k, v in counts().items()}

    wait_for(lambda: all(delta()[k] >= n for k, n in expected.items()), 10.0,
             f"{expected} more in /metrics")
    settle(node)  # every request is in the counters now: nothing more may appear
    assert delta() == expected


def dead_node_workload(mesh: Mesh) -> tuple[str, int]:
    """Resources of a second backend workload on a node nobody runs, and that node's
    inbound port (nobody listens there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead_node = ("apiVersion: meshnode.io/v1alpha1\nkind: Node\nmetadata: {name: gone}\n"
                 f"spec: {{address: 127.0.0.1, inboundPort: {dead_port}}}\n")
    workload = WORKLOAD_YAML.format(app_port=mesh.app.port, extra_labels="", alt="")
    workload = workload.replace("backend-v1", "backend-gone").replace(
        "  serviceAccount: backend\n", "  serviceAccount: backend\n  node: gone\n")
    return dead_node + "---\n" + workload, dead_port


def test_a_workload_on_a_dead_node_is_failed_over_and_counted(mesh: Mesh) -> None:
    """A second backend workload on a node nobody runs: requests still all reach the
    app (the setup moves on to the live endpoint), and /metrics says so."""
    node = mesh.node
    gone, _ = dead_node_workload(mesh)
    settle(node)
    before = metric_total(node, "meshnode_upstream_failovers_total")
    node.wait_version(node.apply(mesh.write("gone.yaml", gone)))
    for i in range(12):                 # fresh connections: each is routed afresh
        response = get(mesh.port, f"/failover/{i}")
        assert (response.status_code, response.content) == (200, app_says(f"/failover/{i}"))
    wait_for(lambda: metric_total(node, "meshnode_upstream_failovers_total") > before, 10.0,
             "meshnode_upstream_failovers_total to grow")
    assert metric_total(node, "meshnode_endpoint_ejections_total") >= 1
    assert metric_total(node, "meshnode_dataplane_failures_total", reason="http_unavailable") == 0


# --- 11. the node's own answers to bad requests -----------------------------------------------


def test_bad_requests_get_the_nodes_own_answer_and_a_close(mesh: Mesh) -> None:
    seen_before = len(mesh.app.seen)
    host = f"Host: {HOST}".encode()
    cases = {
        "a header line without a colon": (b"GET / HTTP/1.1\r\n" + host + b"\r\nNo colon\r\n\r\n",
                                          400),
        "both Content-Length and chunked (RFC 9112 §6.3: smuggling)": (
            b"POST /digest HTTP/1.1\r\n" + host + b"\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        "a 20 KB field line": (b"GET / HTTP/1.1\r\n" + host + b"\r\nX-Big: " + b"a" * 20_000
                               + b"\r\n\r\n", 431),
        "a head larger than the node's buffer": (
            b"GET / HTTP/1.1\r\n" + host + b"\r\n"
            + b"".join(b"X-Part-%d: %s\r\n" % (i, b"b" * 6000)
                       for i in range(BUFFER_BYTES // 6000 + 1)) + b"\r\n",
            431),
        "HTTP/2.0 in a request line": (b"GET / HTTP/2.0\r\n" + host + b"\r\n\r\n", 505),
    }
    for what, (raw, status) in cases.items():
        with connect(mesh.port) as sock:
            sock.sendall(raw)
            f = sock.makefile("rb")
            answer = read_response(f)
            assert answer.status == status, f"{what}: {answer}"
            assert answer.headers.get("connection") == "close", f"{what}: {answer.headers}"
            assert f.read() == b"", f"{what}: the connection stayed open"
    # A real client's oversized header gets the same.
    result = curl("-H", f"Host: {HOST}", "-H", "X-Big: " + "c" * 20_000,
                  f"http://127.0.0.1:{mesh.port}/")
    assert result.status == 431, result
    assert len(mesh.app.seen) == seen_before, "a bad request reached the app"
    assert serves(mesh.port)


# --- 12. a service port's own outboundPort: the declared protocol wins ------------------------


def test_an_http_ports_outbound_port_frames_everything(mesh: Mesh) -> None:
    """A port declared HTTP: every connection is framed (any Host: the port names the
    service); bytes that are no HTTP/1.1 request get the node's 400, never a relay."""
    node = mesh.node
    own = _own_port(mesh, "protocol: HTTP, outboundPort: {}}}")
    settle(node)
    before = metric_total(node, "meshnode_requests_total", reporter="source",
                          destination_service="backend.demo.svc", response_code="200")
    for i in range(5):
        response = get(own, f"/own{i}", host="anything")
        assert (response.status_code, response.content) == (200, app_says(f"/own{i}"))
    settle(node)
    assert metric_total(node, "meshnode_requests_total", reporter="source",
                        destination_service="backend.demo.svc", response_code="200") == before + 5
    assert _raw_exchange(own, b"\x00\x01 not http\r\n\r\n") == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n"
        b"connection: close\r\n\r\nBad Request\n")


def test_a_port_with_no_declared_protocol_relays_what_is_not_http(mesh: Mesh) -> None:
    """Protocol omitted (auto): a request line is framed; anything else is relayed as it
    is, so the app answers it (its own error page, not one of the node's answers)."""
    own = _own_port(mesh, "outboundPort: {}}}")
    reply = _raw_exchange(own, b"\x00\x01 not http\r\n\r\n")
    assert b"<title>Error response</title>" in reply and b"400" in reply


def _own_port(mesh: Mesh, port_fields: str) -> int:
    """Apply the backend service with its port's fields after the name and number made
    `port_fields` ("{}" for a free outboundPort); the port, once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        own = probe.getsockname()[1]
    text = service_yaml().replace("protocol: HTTP}", port_fields.format(own), 1)
    mesh.node.apply(mesh.write(f"own-{own}.yaml", text + "---\n" + workload_yaml(mesh.app.port)))
    wait_for(lambda: _status_or_none(own, "/own", "not.a.route.table.name") == 200, 20.0,
             "the service's own outbound port to answer")
    return own


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as c:
        c.sendall(data)
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    return reply


def _status_or_none(port: int, path: str, host: str) -> int | None:
    try:
        return get(port, path, host=host, timeout_s=2.0).status_code
    except requests.RequestException:
        return None


# --- 13. the Mesh's connection timeouts reach the data plane -----------------------------------


def test_the_meshs_connect_timeout_bounds_a_request_head(mesh: Mesh) -> None:
    node = mesh.node
    version = node.apply(mesh.write("mesh.yaml", (
        "apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
        "spec:\n  connections: {connectTimeout: 1s, idleTimeout: 5m}\n")))
    node.wait_version(version)
    with socket.create_connection(("127.0.0.1", mesh.port), timeout=IO_TIMEOUT_S) as c:
        started = time.monotonic()
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nX-Half: ")   # and nothing more
        reply = b""
        while data := c.recv(65536):
            reply += data
        took = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert 0.9 <= took < 3.0        # 1 s (and a tick), not the default 5 s
