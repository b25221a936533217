"""Tests for fastpath.engine's overload defence (overload.pxi): the node-wide cap on HTTP
requests in flight (engines sharing one region, a killed worker's share given back), the
cap on one inbound caller's concurrent requests (by its address), and slow clients'
heads and bodies cut at their deadline.

Real engines on threads of their own (and one in a child process, killed), real sockets on
loopback, real OpenSSL; an HTTP/1.1 app whose /hold requests wait until the test lets
them go, so that requests stay in flight exactly as long as a test needs. Every wait has
a deadline.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, QuietHandler, http_server, listener, port_of, recv_all, wait_for
from test_engine_http import (BACKEND_ID, HOSTS, PKI, SNI, Node, client_ctx,  # noqa: F401
                              mesh_pki, server_ctx)
from test_engine_limits import mtls

ATTACKER = "127.0.0.2"
OTHER = "127.0.0.3"


class HoldHandler(QuietHandler):
    """GET /hold waits until the app's gate opens (bounded); anything else answers at
    once; POST reads its whole body first."""

    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionResetError:
            pass                            # a pair the engine cut, as a test asked

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/hold":
            self.server.held += 1           # type: ignore[attr-defined]
            self.server.gate.wait(TIMEOUT_S)  # type: ignore[attr-defined]
        self._answer(f"GET {self.path}\n".encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(f"POST {len(body)}\n".encode())


@dataclass
class Site:
    """Engines, sockets and the app a test opened; closed by the fixture."""
    pki: PKI
    app: object = None
    gate: threading.Event = field(default_factory=threading.Event)
    nodes: list[Node] = field(default_factory=list)
    socks: list[socket.socket] = field(default_factory=list)

    @property
    def app_port(self) -> int:
        return self.app.server_address[1]   # type: ignore[attr-defined]

    def held(self) -> int:
        return self.app.held                # type: ignore[attr-defined]

    def sock(self, s: socket.socket) -> socket.socket:
        self.socks.append(s)
        return s

    def inbound(self, **overload) -> tuple[Node, int]:
        """An engine taking mTLS for SNI and relaying to the app, its overload set."""
        in_sock = self.sock(listener())
        t = fe.RouteTable()
        t.set_inbound(in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(self.pki), "127.0.0.1", self.app_port,
                            service="demo/backend:http", identity=BACKEND_ID)
        t.set_overload(**overload)
        node = Node()
        self.nodes.append(node)
        node.install(t)
        return node, port_of(in_sock)

    def outbound(self, in_port: int, region: object = None, request_headers: dict | None = None,
                 retry: dict | None = None, **overload) -> tuple[Node, int]:
        """An engine with an HTTP outbound listener for the backend's hosts, its
        requests in flight counted in `region` (else its own), and with
        `request_headers` or `retry` a route whose rule edits or retries every request
        so."""
        http_sock = self.sock(listener())
        t = fe.RouteTable()
        svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID], [("127.0.0.1", in_port)])
        t.set_outbound_http(http_sock.fileno(), client_ctx(self.pki))
        for host in HOSTS:
            t.add_host(host, svc, 8080)
        if request_headers is not None or retry is not None:
            t.add_route_match(t.add_route_set(svc), t.add_route_rule(
                "demo/r#0", [(svc, 1)], request_headers=request_headers, retry=retry))
        t.set_overload(**overload)
        node = Node()
        self.nodes.append(node)
        if region is not None:
            node.engine.share_overload(region)
        node.install(t)
        return node, port_of(http_sock)


@pytest.fixture
def site(mesh_pki: PKI) -> Iterator[Site]:
    s = Site(mesh_pki)
    s.app = http_server(HoldHandler, gate=s.gate, held=0)
    yield s
    s.gate.set()
    for n in s.nodes:
        n.stop()
    for sock in s.socks:
        sock.close()
    s.app.shutdown()                        # type: ignore[attr-defined]
    s.app.server_close()                    # type: ignore[attr-defined]


def send_get(port: int, path: str, keep_alive: bool = False) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: backend\r\n"
              f"{'' if keep_alive else 'Connection: close'}\r\n\r\n".encode())
    return c


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def region() -> bytearray:
    r = bytearray(fe.overload_region_bytes())
    fe.overload_region_format(r)
    return r


# --- the node's cap on requests in flight ---------------------------------------------------------


def test_requests_over_the_node_cap_are_shed_503_om_across_engines(site: Site) -> None:
    _, in_port = site.inbound()
    shared = region()
    a, a_port = site.outbound(in_port, shared, max_requests_in_flight=3)
    b, b_port = site.outbound(in_port, shared, max_requests_in_flight=3)
    held = [send_get(a_port, "/hold"), send_get(a_port, "/hold"), send_get(b_port, "/hold")]
    wait_for(lambda: site.held() == 3, what="three requests at the app")
    assert a.engine.overload()["node"] == 3 and b.engine.overload()["engine"] == 1
    # One more, through either engine: answered at once, without reaching the app.
    shed = send_get(b_port, "/x")
    reply = recv_all(shed)
    assert status_of(reply) == 503 and reply.endswith(b"overloaded: too many requests in flight\n")
    assert b.stats()["overload_shed"] == 1 and a.stats()["overload_shed"] == 0
    (fig,) = [r for r in b.engine.request_stats() if r["direction"] == "outbound"]
    assert fig["codes"] == {503: 1} and fig["shed"] == 1
    # The ones admitted are never dropped: all three are answered once the app goes on.
    site.gate.set()
    for c in held:
        assert status_of(recv_all(c)) == 200
    wait_for(lambda: a.engine.overload()["node"] == 0, what="every request given back")
    assert status_of(recv_all(send_get(b_port, "/x"))) == 200


def test_a_shed_request_says_overloaded_and_its_callers_node_does_not_retry_it(
        site: Site) -> None:
    """The 503 of a node's overload says so (`x-envoy-overloaded: true`, as Envoy's overload
    manager marks its local replies): the caller's node, whose route retries 503, does
    not send the request back into the overload (retry.pxi); its client gets the 503."""
    node, in_port = site.inbound(max_requests_in_flight=1)
    out, port = site.outbound(in_port, retry={"attempts": 2, "codes": [503], "backoff_s": 0.005})
    held = send_get(port, "/hold")
    wait_for(lambda: site.held() == 1, what="the request at the app")
    reply = recv_all(send_get(port, "/x"))
    assert status_of(reply) == 503 and b"\r\nx-envoy-overloaded: true\r\n" in reply, reply
    assert node.stats()["overload_shed"] == 1
    assert out.stats()["route_retries"] == 0
    site.gate.set()
    assert status_of(recv_all(held)) == 200


def test_a_shed_head_request_gets_no_body(site: Site) -> None:
    """The 503 answers the request being framed (nothing pending on its pair): to HEAD,
    its body's length and no body (RFC 9110 §9.3.2)."""
    _, port = site.outbound(site.inbound()[1], max_requests_in_flight=1)
    held = send_get(port, "/hold")
    wait_for(lambda: site.held() == 1, what="the request at the app")
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    c.sendall(b"HEAD /x HTTP/1.1\r\nHost: backend\r\n\r\n")
    head, _, body = recv_all(c).partition(b"\r\n\r\n")
    assert status_of(head) == 503 and b"\r\ncontent-length: 40\r\n" in head, head
    assert body == b""
    site.gate.set()
    assert status_of(recv_all(held)) == 200


def test_without_a_cap_nothing_is_counted_or_shed(site: Site) -> None:
    _, in_port = site.inbound()
    out, port = site.outbound(in_port)
    held = [send_get(port, "/hold") for _ in range(4)]
    wait_for(lambda: site.held() == 4, what="four requests at the app")
    assert out.engine.overload() == {"node": 0, "engine": 0, "max_requests_in_flight": 0,
                                     "max_requests_per_source": 0}
    site.gate.set()
    assert [status_of(recv_all(c)) for c in held] == [200] * 4
    assert out.stats()["overload_shed"] == 0


def test_a_pair_reset_mid_request_gives_its_request_back(site: Site) -> None:
    """A kept-alive client that resets its connection before its answer is gone: its
    request no longer counts. (One that only sent FIN may have half-closed to read the
    answer; one whose request said `Connection: close` is not read after it: either
    request counts until the app answers, as it is still at the app.)"""
    _, in_port = site.inbound()
    out, port = site.outbound(in_port, max_requests_in_flight=1)
    c = send_get(port, "/hold", keep_alive=True)
    wait_for(lambda: site.held() == 1, what="the request at the app")
    assert status_of(recv_all(send_get(port, "/x"))) == 503
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()                               # RST: the client leaves before its answer
    wait_for(lambda: out.engine.overload()["node"] == 0, what="its request given back")
    site.gate.set()
    assert status_of(recv_all(send_get(port, "/x"))) == 200


def test_pipelined_requests_over_the_cap_wait_for_the_answers_before_them(site: Site) -> None:
    """A request behind others on its connection cannot be answered 503 before them: it
    waits, unframed, until they are answered, then is counted (or shed) as any other. Were
    it admitted, each connection could hold ENGINE_HTTP_PIPELINE_MAX requests past the cap."""
    _, in_port = site.inbound()
    out, port = site.outbound(in_port, max_requests_in_flight=2)
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    c.sendall(b"".join(b"GET /hold HTTP/1.1\r\nHost: backend\r\nX-N: %d\r\n\r\n" % i
                       for i in range(4)))
    # The app has the first: every request that came with it was framed before it left.
    wait_for(lambda: site.held() == 1, what="the first request at the app")
    assert out.engine.overload()["node"] == 2
    site.gate.set()
    reply = b""
    while reply.count(b"GET /hold\n") < 4:
        chunk = c.recv(65536)
        assert chunk, reply
        reply += chunk
    assert reply.count(b"HTTP/1.1 200 ") == 4
    wait_for(lambda: out.engine.overload()["node"] == 0, what="every request given back")
    assert out.stats()["overload_shed"] == 0
    c.close()


def test_a_pipelined_head_waiting_for_room_for_its_edits_is_counted_once(site: Site) -> None:
    """A route's request edits wait for room when the heads before them filled the buffer
    (routes.pxi _request_edits): the head is framed again then, and counted only then."""
    _, in_port = site.inbound()
    pad = 1000
    out, port = site.outbound(in_port, request_headers={"add": [("X-Pad", "p" * pad)]},
                              max_requests_in_flight=100)
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    # Two heads in one read, within the room kept for one head's edits (16 KiB buffer),
    # but not for both heads' edits: the second waits until the first is sent.
    fill = (16384 - 2 * pad) // 2 - 20
    for _ in range(3):
        c.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: backend\r\nX-Fill: %s\r\n\r\n"
                           % (i, b"f" * fill) for i in range(2)))
        reply = b""
        while b"GET /1\n" not in reply:
            chunk = c.recv(65536)
            assert chunk, reply
            reply += chunk
        assert reply.count(b"HTTP/1.1 200 ") == 2
    # Answered, on a connection still open: nothing of them is left in flight.
    wait_for(lambda: out.engine.overload()["node"] == 0, what="every request given back")
    c.close()


CHILD = """
import mmap, os, sys
from fastpath import engine as fe, tls
from test_engine_http import SNI
region, chain, key, bundle, app_port = sys.argv[1:6]
fd = os.open(region, os.O_RDWR)
shared = mmap.mmap(fd, fe.overload_region_bytes(), mmap.MAP_SHARED)
ctx = tls.TLSContext.for_mesh(True, open(chain, "rb").read(), open(key, "rb").read(),
                              open(bundle, "rb").read(), [fe.ALPN_TCP, b"http/1.1"])
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
s.setblocking(False)
engine = fe.Engine()
engine.share_overload(shared)
t = fe.RouteTable()
t.set_inbound(s.fileno())
t.add_inbound_route(SNI, ctx, "127.0.0.1", int(app_port), protocol="http")
t.set_overload(max_requests_in_flight=100)
engine.install(t)
print(s.getsockname()[1], flush=True)
engine.run()
"""


def test_a_killed_workers_requests_in_flight_are_given_back(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "overload.shm"
    path.write_bytes(bytes(region()))
    for name, pem in (("chain", site.pki.backend.chain_pem), ("key", site.pki.backend.key_pem),
                      ("bundle", site.pki.bundle_pem)):
        (tmp_path / name).write_bytes(pem)
    fd = os.open(path, os.O_RDWR)
    shared = mmap.mmap(fd, fe.overload_region_bytes(), mmap.MAP_SHARED)
    os.close(fd)
    here = Path(__file__).parent
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(tmp_path / "chain"), str(tmp_path / "key"),
         str(tmp_path / "bundle"), str(site.app_port)],
        stdout=subprocess.PIPE, cwd=here,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])})
    try:
        child_port = int(child.stdout.readline())   # type: ignore[union-attr]
        # This process's engine shares the region with the child's.
        out, port = site.outbound(child_port, shared, max_requests_in_flight=100)
        held = [send_get(port, "/hold") for _ in range(2)]
        wait_for(lambda: site.held() == 2, what="two requests at the app")
        # Counted twice each: by the child (inbound) and by this engine (outbound).
        wait_for(lambda: out.engine.overload()["node"] == 4, what="four in flight")
        assert out.engine.overload_reap() == 0      # the child is alive: nothing to reap
        child.send_signal(signal.SIGKILL)
        child.wait(TIMEOUT_S)
        for c in held:
            assert status_of(recv_all(c)) in (0, 502, 503)   # its upstream died under it
        wait_for(lambda: out.engine.overload()["node"] == 2, what="this engine's given back")
        assert out.engine.overload_reap() == 1
        assert out.engine.overload()["node"] == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(TIMEOUT_S)


def test_share_overload_refuses_a_foreign_region_and_comes_before_install(site: Site) -> None:
    e = fe.Engine()
    with pytest.raises(ValueError, match="not a region"):
        e.share_overload(bytearray(fe.overload_region_bytes()))
    e.install(fe.RouteTable())
    with pytest.raises(RuntimeError, match="before the first install"):
        e.share_overload(region())


def test_set_overload_refuses_bad_values_by_name() -> None:
    t = fe.RouteTable()
    with pytest.raises(ValueError, match="max_requests_in_flight"):
        t.set_overload(max_requests_in_flight=-1)
    with pytest.raises(ValueError, match="slow_grace_s"):
        t.set_overload(slow_grace_s=0)


# --- one source's concurrent requests -------------------------------------------------------------


def get_over(session, path: str) -> None:
    session.write(f"GET {path} HTTP/1.1\r\nHost: backend\r\n\r\n".encode())


def read_reply(session) -> bytes:
    """One answer over a TLS session: its head and its Content-Length body."""
    out = bytearray()
    while True:
        end = out.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for line in bytes(out[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(out) >= end + 4 + length:
                return bytes(out)
        chunk = session.read(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def test_one_source_gets_only_its_concurrent_requests_inbound(site: Site) -> None:
    node, in_port = site.inbound(max_requests_per_source=2)
    ctx = client_ctx(site.pki)
    held = [mtls(in_port, ctx, ATTACKER) for _ in range(2)]
    for _, session in held:
        get_over(session, "/hold")
    wait_for(lambda: site.held() == 2, what="two requests from one source at the app")
    s, session = mtls(in_port, ctx, ATTACKER)
    get_over(session, "/x")
    reply = read_reply(session)
    assert status_of(reply) == 503 and b"from one source" in reply
    s.close()
    assert node.stats()["overload_source_shed"] == 1
    # Another source is not held to the first one's count.
    s, session = mtls(in_port, ctx, OTHER)
    get_over(session, "/x")
    assert status_of(read_reply(session)) == 200
    s.close()
    site.gate.set()
    for s, session in held:
        assert status_of(read_reply(session)) == 200
    # Answered, they are given back: the source may send again.
    s, session = mtls(in_port, ctx, ATTACKER)
    get_over(session, "/x")
    assert status_of(read_reply(session)) == 200
    s.close()
    for s, _ in held:
        s.close()


def get_from(port: int, source: str, path: str) -> socket.socket:
    """A local client at `source` sends a GET through an outbound port."""
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S,
                                 source_address=(source, 0))
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n".encode())
    return c


def test_callers_behind_one_node_each_have_their_own_count(site: Site) -> None:
    """Between nodes the connected address is the caller's node: the source a request
    counts for is the calling workload's own address its node carries (caller_ext.pxi),
    as authorization's source.ip and a rate limit by source IP take it. Counted by the
    node's address, one caller's requests in flight got every other caller on its node
    shed."""
    node, in_port = site.inbound(max_requests_per_source=2)
    _, port = site.outbound(in_port)
    held = [get_from(port, ATTACKER, "/hold") for _ in range(2)]
    wait_for(lambda: site.held() == 2, what="two requests from one caller at the app")
    # Another caller behind the same node goes on; the first one's next is shed.
    assert status_of(recv_all(get_from(port, OTHER, "/x"))) == 200
    reply = recv_all(get_from(port, ATTACKER, "/x"))
    assert status_of(reply) == 503 and b"from one source" in reply
    assert node.stats()["overload_source_shed"] == 1
    site.gate.set()
    assert [status_of(recv_all(c)) for c in held] == [200, 200]
    # The callers' entries go with their last request; the node's pooled connections'
    # entry stays.
    wait_for(lambda: node.stats()["sources_active"] == 1, what="the callers' entries freed")


# --- slow clients ---------------------------------------------------------------------------------


def keep_alive_client(port: int) -> socket.socket:
    """A client whose first request was answered: the next head is read in the pipe."""
    c = send_get(port, "/first", keep_alive=True)
    reply = b""
    while b"GET /first\n" not in reply:
        reply += c.recv(65536)
    return c


def test_a_head_trickled_below_the_rate_is_answered_408(site: Site) -> None:
    _, in_port = site.inbound()
    out, port = site.outbound(in_port, slow_grace_s=0.3, slow_min_rate=100)
    c = keep_alive_client(port)
    c.sendall(b"GET /slow HTTP/1.1\r\nHo")
    started = time.monotonic()
    reply = recv_all(c)
    assert status_of(reply) == 408 and reply.endswith(b"request head too slow\n")
    assert 0.25 <= time.monotonic() - started < 5.0
    assert out.stats()["slow_heads_cut"] == 1


def test_a_head_at_the_rate_goes_on(site: Site) -> None:
    _, in_port = site.inbound()
    out, port = site.outbound(in_port, slow_grace_s=0.3, slow_min_rate=100)
    c = keep_alive_client(port)
    head = b"GET /steady HTTP/1.1\r\nHost: backend\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    for i in range(0, len(head), 10):       # 10 bytes each 40 ms: 250 bytes a second
        c.sendall(head[i:i + 10])
        time.sleep(0.04)
    reply = b""
    while b"GET /steady\n" not in reply:
        chunk = c.recv(65536)
        assert chunk, reply
        reply += chunk
    assert out.stats()["slow_heads_cut"] == 0


def test_a_body_trickled_below_the_rate_closes_the_pair(site: Site) -> None:
    node, in_port = site.inbound(slow_grace_s=5.0)
    out, port = site.outbound(in_port, slow_grace_s=0.3, slow_min_rate=100)
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    c.sendall(b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    try:
        assert c.recv(65536) == b""
    except ConnectionResetError:
        pass
    assert 0.25 <= time.monotonic() - started < 5.0
    assert out.stats()["slow_bodies_cut"] == 1
    c.close()


def test_the_inbound_side_cuts_a_slow_head_too(site: Site) -> None:
    node, in_port = site.inbound(slow_grace_s=0.3, slow_min_rate=100)
    s, session = mtls(in_port, client_ctx(site.pki), ATTACKER)
    session.write(b"GET /x HTTP/1.1\r\nHo")
    reply = read_reply(session)
    assert status_of(reply) == 408
    assert node.stats()["slow_heads_cut"] == 1
    s.close()


def test_sources_come_and_go_without_a_stale_request_count(site: Site) -> None:
    """Entries of the per-source table move when others are freed (limits.pxi's
    backward shift): a hole a moved entry left carries no requests over to the next
    source that lands there. A small table (16 entries), so that sources collide."""
    node = Node(max_connections=8)
    site.nodes.append(node)
    in_sock = site.sock(listener())
    t = fe.RouteTable()
    t.set_inbound(in_sock.fileno())
    t.add_inbound_route(SNI, server_ctx(site.pki), "127.0.0.1", site.app_port)
    t.set_limits(max_handshakes=8, max_connections_per_source=8, max_handshakes_per_source=8,
                 inbound_share=0.9)
    t.set_overload(max_requests_per_source=1)
    node.install(t)
    port, ctx = port_of(in_sock), client_ctx(site.pki)
    for r in range(8):
        held = [mtls(port, ctx, f"127.0.{10 + r}.{i}") for i in range(1, 6)]
        for _, session in held:
            get_over(session, "/hold")
        wait_for(lambda: site.held() == 5 * (r + 1), what="five held requests")
        for s, _ in held[:3]:
            s.close()                   # their entries freed: later ones may move
        wait_for(lambda: node.stats()["sources_active"] == 2, what="three sources gone")
        for i in range(1, 3):
            s, session = mtls(port, ctx, f"127.0.{100 + r}.{i}")
            get_over(session, "/x")
            assert status_of(read_reply(session)) == 200, (r, i)
            s.close()
        for s, _ in held[3:]:
            s.close()
        wait_for(lambda: node.stats()["sources_active"] == 0, what="every source gone")
    assert node.stats()["overload_source_shed"] == 0
