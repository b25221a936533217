"""Tests for fastpath.engine's limits before authentication (limits.pxi): each side's own
budget of slots, inbound TLS handshakes under way (in all and per source address), and
connections per source address, all enforced at accept, before any TLS work.

Real engines on threads of their own, real sockets on loopback (127.0.0.0/8 gives the
tests as many source addresses as they need), real OpenSSL handshakes; an HTTP/1.1 app
behind the inbound side. Every flood is bounded in count, every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import ssl
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls

from enginekit import TIMEOUT_S, listener, port_of, recv_all, wait_for
from test_engine_http import (BACKEND_ID, FRONTEND_ID, SNI, PKI, App, Node,  # noqa: F401
                              client_ctx, mesh_pki, server_ctx)

# The one slot pool every engine had before the sides got budgets of their own.
OLD_POOL = 4096
ATTACKER = "127.0.0.2"
# The engine's default: handshakes under way from one source address.
SOURCE_HANDSHAKES = 512


@dataclass
class Site:
    """Everything a test opened, closed by the fixture whatever happened."""
    pki: PKI
    app: App
    nodes: list[Node] = field(default_factory=list)
    socks: list[socket.socket] = field(default_factory=list)

    def node(self, **options) -> Node:
        n = Node(**options)
        self.nodes.append(n)
        return n

    def listener(self) -> socket.socket:
        s = listener()
        self.socks.append(s)
        return s

    def inbound_table(self, in_sock: socket.socket) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_inbound(in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(self.pki), "127.0.0.1", self.app.port)
        return t


@pytest.fixture
def site(mesh_pki: PKI) -> Iterator[Site]:
    s = Site(mesh_pki, App())
    yield s
    for n in s.nodes:
        n.stop()
    for sock in s.socks:
        sock.close()
    s.app.close()


# --- clients ------------------------------------------------------------------------------


def client_hello() -> bytes:
    """A real TLS 1.3 ClientHello naming the route: the server answers it (key exchange,
    its certificate, a certificate request), then waits for a client that never speaks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=SNI)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def idle_connect(port: int, source: str, hello: bytes | None = None) -> socket.socket:
    """A connection from `source` that never finishes a handshake: nothing sent, or a
    ClientHello and then silence. Non-blocking: a refused one is not waited for."""
    s = socket.socket()
    s.bind((source, 0))
    if hello is None:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    else:
        s.settimeout(TIMEOUT_S)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(hello)
        except (ConnectionResetError, BrokenPipeError):
            pass                        # refused at accept: closed_without_a_byte() says so
        s.setblocking(False)
    return s


def flood(port: int, n: int, source: str = ATTACKER, hellos: int = 0) -> list[socket.socket]:
    hello = client_hello() if hellos else None
    return [idle_connect(port, source, hello if i < hellos else None) for i in range(n)]


def closed_without_a_byte(s: socket.socket) -> bool:
    """The engine closed the connection without a byte: no TLS was spent on it."""
    s.settimeout(TIMEOUT_S)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def mtls(port: int, ctx: tls.TLSContext, source: str) -> tuple[socket.socket, tls.TLSSession]:
    """A mutual-TLS client from `source` straight to an inbound port, handshake done."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S,
                                 source_address=(source, 0))
    s.settimeout(None)
    tv = struct.pack("ll", int(TIMEOUT_S), 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    session = tls.TLSSession(ctx, s.fileno(), server_name=SNI)
    session.handshake()
    return s, session


def answered(path: str) -> bytes:
    """What the app (test_engine_http's) answers a GET of `path` with."""
    return f"GET {path} host=web\n".encode()


def get_over(session: tls.TLSSession, path: str) -> bytes:
    session.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    out = bytearray()
    while answered(path) not in out:
        chunk = session.read(65536)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def http_get(port: int, path: str) -> bytes:
    """One request over a plain local connection (an outbound listener), answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
        return recv_all(c)


def refusals(stats: dict) -> int:
    """Inbound connections the engine took off its listener, admitted or not."""
    return sum(stats.get(k, 0) for k in (
        "inbound_connections_opened", "inbound_rejected_limit", "inbound_accept_failures",
        "rejected_handshakes", "rejected_source_conns", "rejected_source_handshakes"))


# --- the attack ---------------------------------------------------------------------------


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for the flood's sockets on both ends, in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * OLD_POOL
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(120)
def test_idle_tls_flood_from_one_source_leaves_local_outbound_served(
        site: Site, descriptors: None) -> None:
    """More idle connections than the old shared pool held, from one address, to a node's
    inbound port (raw connects that say nothing, and ClientHellos that stall): the
    node's local callers are still served through its HTTP outbound listener and a TCP
    outboundPort, and another node still gets its handshake done on the inbound port."""
    b_in = site.listener()
    b = site.node()
    b.install(site.inbound_table(b_in))

    a_in, a_tcp, a_http = site.listener(), site.listener(), site.listener()
    # The attack holds what it takes for the whole test: a long setup deadline.
    a = site.node(connect_timeout_s=60.0)
    t = site.inbound_table(a_in)
    web = t.add_service("demo/web:http", SNI, [BACKEND_ID], [("127.0.0.1", port_of(b_in))])
    t.add_outbound_tcp(a_tcp.fileno(), web, client_ctx(site.pki))
    t.set_outbound_http(a_http.fileno(), client_ctx(site.pki), FRONTEND_ID)
    t.add_host("web", web, 80)
    a.install(t)
    assert a.engine.max_connections == OLD_POOL

    n = OLD_POOL + 200
    held = flood(port_of(a_in), n, hellos=100)
    try:
        # As many as the old pool held have reached the engine (taken or refused).
        wait_for(lambda: refusals(a.stats()) >= OLD_POOL, 30.0, "the flood at the engine")

        for i in range(5):
            assert answered(f"/tcp{i}") in http_get(port_of(a_tcp), f"/tcp{i}")
            assert answered(f"/http{i}") in http_get(port_of(a_http), f"/http{i}")
        s, session = mtls(port_of(a_in), client_ctx(site.pki), "127.0.0.1")
        try:
            assert answered("/peer") in get_over(session, "/peer")
        finally:
            s.close()

        # The whole flood: all but one source's handshakes refused at accept.
        stats = wait_for(lambda: (st := a.stats())["rejected_source_handshakes"]
                         >= n - SOURCE_HANDSHAKES and st, 30.0, "the flood refused")
        assert stats["outbound_rejected_limit"] == 0
        assert stats["handshakes_active"] <= SOURCE_HANDSHAKES
        assert stats["inbound_connections_active"] <= SOURCE_HANDSHAKES + 1
    finally:
        for s in held:
            s.close()


# --- each limit -----------------------------------------------------------------------------


def limited_node(site: Site, **limits) -> tuple[Node, socket.socket]:
    options = {"max_handshakes": 64, "max_connections_per_source": 1024,
               "max_handshakes_per_source": 64, "inbound_share": 0.5}
    options.update(limits)
    in_sock = site.listener()
    # Idle connections stay for the whole test: a long setup deadline.
    node = site.node(max_connections=options.pop("max_connections", 256), connect_timeout_s=60.0)
    t = site.inbound_table(in_sock)
    t.set_limits(**options)
    node.install(t)
    return node, in_sock


def test_one_source_gets_only_its_handshakes_and_others_still_handshake(site: Site) -> None:
    node, in_sock = limited_node(site, max_handshakes_per_source=4)
    held = flood(port_of(in_sock), 10, hellos=2)
    try:
        stats = wait_for(lambda: (s := node.stats())["rejected_source_handshakes"] == 6 and s,
                         what="six refused")
        assert stats["handshakes_active"] == 4 and stats["inbound_connections_active"] == 4
        assert stats["sources_active"] == 1
        # A refused connection got no TLS byte: closed at accept.
        extra = idle_connect(port_of(in_sock), ATTACKER, client_hello())
        assert closed_without_a_byte(extra)
        extra.close()
        # Another address is not held to the first one's handshakes.
        s, session = mtls(port_of(in_sock), client_ctx(site.pki), "127.0.0.3")
        assert answered("/other") in get_over(session, "/other")
        s.close()
    finally:
        for s in held:
            s.close()
    # Closed, they give their handshakes back: the address is welcome again.
    wait_for(lambda: node.stats()["sources_active"] == 0, what="the source's entry freed")
    s, session = mtls(port_of(in_sock), client_ctx(site.pki), ATTACKER)
    assert answered("/again") in get_over(session, "/again")
    s.close()
    assert node.stats()["handshakes_active"] == 0


def test_one_source_gets_only_its_connections_once_handshaken(site: Site) -> None:
    node, in_sock = limited_node(site, max_connections_per_source=3)
    ctx = client_ctx(site.pki)
    open_ = [mtls(port_of(in_sock), ctx, ATTACKER) for _ in range(3)]
    try:
        # (The client is done before the server has read its Finished.)
        wait_for(lambda: node.stats()["handshakes_active"] == 0, what="handshakes over")
        assert node.stats()["inbound_connections_active"] == 3
        extra = idle_connect(port_of(in_sock), ATTACKER, client_hello())
        assert closed_without_a_byte(extra)
        extra.close()
        assert node.stats()["rejected_source_conns"] == 1
        s, session = mtls(port_of(in_sock), ctx, "127.0.0.3")
        assert answered("/other") in get_over(session, "/other")
        s.close()
        for _, session in open_:          # the three admitted still work
            assert answered("/held") in get_over(session, "/held")
    finally:
        for s, _ in open_:
            s.close()


def test_handshakes_in_all_are_capped_across_sources(site: Site) -> None:
    node, in_sock = limited_node(site, max_handshakes=5)
    held = [idle_connect(port_of(in_sock), f"127.0.1.{i}") for i in range(1, 6)]
    try:
        wait_for(lambda: node.stats()["handshakes_active"] == 5, what="five handshakes")
        extra = idle_connect(port_of(in_sock), "127.0.1.9", client_hello())
        assert closed_without_a_byte(extra)
        extra.close()
        stats = node.stats()
        assert stats["rejected_handshakes"] == 1 and stats["sources_active"] == 5
    finally:
        for s in held:
            s.close()
    wait_for(lambda: node.stats()["handshakes_active"] == 0, what="handshakes given back")
    s, session = mtls(port_of(in_sock), client_ctx(site.pki), "127.0.1.9")
    assert answered("/x") in get_over(session, "/x")
    s.close()


def test_each_side_has_its_own_budget(site: Site) -> None:
    """Inbound full (from many sources, no per-source limit met): outbound accepts its
    own share, and the inbound side refuses by its budget."""
    node, in_sock = limited_node(site, max_connections=8, inbound_share=0.25)
    out_sock = site.listener()
    t = site.inbound_table(in_sock)
    svc = t.add_service("demo/web:http", SNI, [BACKEND_ID], [("127.0.0.1", port_of(in_sock))])
    t.add_outbound_tcp(out_sock.fileno(), svc, client_ctx(site.pki))
    t.set_limits(64, 1024, 64, 0.25)
    node.install(t)
    stats = node.stats()
    assert (stats["inbound_budget"], stats["outbound_budget"]) == (2, 6)
    held = [idle_connect(port_of(in_sock), f"127.0.2.{i}") for i in range(1, 5)]
    try:
        wait_for(lambda: node.stats()["inbound_rejected_limit"] == 2, what="two refused")
        assert node.stats()["inbound_connections_active"] == 2
    finally:
        for s in held:
            s.close()
    wait_for(lambda: node.stats()["inbound_connections_active"] == 0, what="inbound closed")
    # Outbound pairs take outbound slots; their upstreams land on the inbound side.
    assert answered("/out") in http_get(port_of(out_sock), "/out")


def test_sources_come_and_go_without_a_stale_entry(site: Site) -> None:
    """Many addresses opening and closing in random order through a small table (16
    slots, 14 of them inbound: the per-source table is nearly half full, so probe runs
    form and entries move back when one is freed). Each address is held to its own
    count, never to a stale or a neighbour's one."""
    node, in_sock = limited_node(site, max_connections=16, inbound_share=0.9,
                                 max_connections_per_source=2, max_handshakes_per_source=2)
    rng = random.Random(1)
    addresses = [f"127.0.{rng.randrange(3, 250)}.{rng.randrange(1, 250)}" for _ in range(40)]
    open_: dict[str, list[socket.socket]] = {}
    expected_refused = 0
    try:
        for _ in range(120):
            addr = rng.choice(addresses)
            have = open_.setdefault(addr, [])
            total = sum(len(v) for v in open_.values())
            if have and rng.random() < 0.4:
                have.pop(rng.randrange(len(have))).close()
                wait_for(lambda: node.stats()["inbound_connections_active"] == total - 1,
                         what="a close counted")
                continue
            if total >= 14:
                continue
            s = idle_connect(port_of(in_sock), addr)
            if len(have) == 2:
                expected_refused += 1
                assert closed_without_a_byte(s), f"{addr} admitted over its limit"
                s.close()
                continue
            have.append(s)
            wait_for(lambda: node.stats()["inbound_connections_active"] == total + 1,
                     what=f"{addr} admitted")
            stats = node.stats()
            assert stats["sources_active"] == sum(1 for v in open_.values() if v)
        assert node.stats()["rejected_source_conns"] == expected_refused
    finally:
        for socks in open_.values():
            for s in socks:
                s.close()
    wait_for(lambda: node.stats()["sources_active"] == 0, what="every entry freed")


def test_set_limits_refuses_bad_values_by_name() -> None:
    t = fe.RouteTable()
    for kwargs, name in (({"max_handshakes": 0}, "max_handshakes"),
                         ({"max_connections_per_source": -1}, "max_connections_per_source"),
                         ({"max_handshakes_per_source": 0}, "max_handshakes_per_source"),
                         ({"inbound_share": 1.0}, "inbound_share"),
                         ({"inbound_share": 0.0}, "inbound_share")):
        args = {"max_handshakes": 8, "max_connections_per_source": 8,
                "max_handshakes_per_source": 8, "inbound_share": 0.5, **kwargs}
        with pytest.raises(ValueError, match=name):
            t.set_limits(**args)


# --- out of descriptors ---------------------------------------------------------------------

# Runs in a child process (its descriptor limit is lowered): an engine with one outbound
# listener, and every descriptor it could get taken, so that a connection the parent
# queues on it fails accept4() with EMFILE and the spare cannot be opened again. Prints
# what the loop did over one second, then gives the descriptors back and prints once
# the waiting connection was taken.
_EMFILE_CHILD = r'''
import json, os, resource, socket, sys, threading, time
from fastpath import engine as fe, tls

def null_fds():
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/null":
                out.add(int(name))
        except OSError:
            pass
    return out

before = null_fds()
engine = fe.Engine(max_connections=16)
spare = max(null_fds() - before)           # the engine's spare descriptor
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
lsock.setblocking(False)
t = fe.RouteTable()
svc = t.add_service("svc", "svc.example", ["spiffe://cluster.local/ns/a/sa/b"], [])
t.add_outbound_tcp(lsock.fileno(), svc, tls.TLSContext(False))
engine.install(t)
thread = threading.Thread(target=engine.run, daemon=True)
thread.start()
while engine.generation < 1:
    time.sleep(0.005)
port = lsock.getsockname()[1]

# Every number below the spare's taken, and the limit at the spare: closing the spare
# frees a number the kernel may not hand out, so it cannot be reopened.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (spare, hard))
fillers = []
while True:
    try:
        fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
print(port, flush=True)
sys.stdin.readline()                       # the parent's connection is queued

def iterations():
    return sum(engine.stats()["loop_busy_us"])

start_cpu = resource.getrusage(resource.RUSAGE_SELF)
start = iterations()
time.sleep(1.0)
end_cpu = resource.getrusage(resource.RUSAGE_SELF)
stats = engine.stats()
report = {"iterations": iterations() - start,
          "cpu_s": (end_cpu.ru_utime + end_cpu.ru_stime) - (start_cpu.ru_utime + start_cpu.ru_stime),
          "accept_failures": stats["outbound_accept_failures"],
          "accept_paused": stats.get("accept_paused", 0)}
for fd in fillers:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(json.dumps(report), flush=True)
deadline = time.monotonic() + 10
while engine.stats()["no_endpoint"] < 1 and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"served": engine.stats()["no_endpoint"]}), flush=True)
engine.stop()
thread.join(10)
'''


@pytest.mark.timeout(60)
def test_out_of_descriptors_with_no_spare_does_not_spin_the_loop() -> None:
    """EMFILE on accept, and the spare descriptor lost: the listener stays readable, so
    a level-triggered loop would come back to it at once, forever (a core at 100%).
    The engine takes its listeners out of the loop for a while instead, and once
    descriptors are free again it takes the waiting connection."""
    child = subprocess.Popen([sys.executable, "-c", _EMFILE_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        port = int(child.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as waiting:
            child.stdin.write("go\n")
            child.stdin.flush()
            report = json.loads(child.stdout.readline())
            # Paused for ENGINE_ACCEPT_PAUSE_MS at a time: about ten tries a second, not
            # hundreds of thousands of turns.
            assert report["iterations"] < 200, report
            assert report["cpu_s"] < 0.3, report
            assert report["accept_paused"] >= 1 and report["accept_failures"] < 200, report
            # Descriptors back: the connection is taken (no endpoint: closed and counted).
            assert json.loads(child.stdout.readline())["served"] == 1
            assert closed_without_a_byte(waiting)
        assert child.wait(TIMEOUT_S) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
