"""Tests for RateLimitPolicy's token buckets in the engine (ratelimit.pxi): a burst, then
the rate; a bucket per caller (principal, address) with an overflow bucket past the
bound; engines mapping one region (a node's workers) sharing one limit; the 429 and its
Retry-After, RateLimit-Policy and RateLimit fields, byte for byte; requests pipelined
behind others answered in order; opaque pairs over the rate closed, both ways.

Real engines on loopback: an inbound engine in front of an app (HTTP, or a TCP echo),
outbound engines in front of it, each on its own thread, as a worker runs one. Rates are
slow (a token every few seconds) so that no token comes back during a test's burst,
except where the refill itself is what is tested.
"""

from __future__ import annotations

import http.client
import mmap
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls
from meshnode.identity import pki

from enginekit import QuietHandler, http_server, issue, listener, port_of, recv_all
from test_engine_http import ALPN, BACKEND_ID, FRONTEND_ID, OTHER_ID, SNI, TIMEOUT_S, Node

pytestmark = pytest.mark.timeout(60)

POLICY = "backend-limit"


@dataclass(frozen=True)
class Keys:
    bundle_pem: bytes
    creds: dict        # SPIFFE ID -> Creds


@pytest.fixture(scope="module")
def keys() -> Keys:
    root = pki.make_root("rate limit test root", "cluster.local")
    issuer = pki.make_issuer(*root, "node-a", 86400)
    return Keys(pki.cert_pem(root[0]),
                {i: issue(issuer, i) for i in (FRONTEND_ID, OTHER_ID, BACKEND_ID)})


def ctx(k: Keys, identity: str, server: bool = False) -> tls.TLSContext:
    c = k.creds[identity]
    return tls.TLSContext.for_mesh(server, c.chain_pem, c.key_pem, k.bundle_pem, ALPN)


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class EchoApp:
    """A TCP app that echoes each connection's bytes until its end."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = port_of(self.sock)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Farm:
    """One inbound engine (`inbound`) in front of an app, and outbound engines (`outs`)
    in front of it: the HTTP listener (Host "backend") and an opaque TCP listener."""
    keys: Keys
    protocol: str
    app_port: int
    inbound: tuple = None
    outs: list = field(default_factory=list)     # (Node, http listener, tcp listener)

    def inbound_table(self, **limit: object) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_inbound(self.inbound[1].fileno())
        t.add_inbound_route(SNI, ctx(self.keys, BACKEND_ID, True), "127.0.0.1", self.app_port,
                            service="backend", protocol=self.protocol)
        if limit:
            t.add_rate_limit(POLICY, inbound=[SNI], **limit)
        return t

    def outbound_table(self, out: int = 0, identity: str = FRONTEND_ID,
                       **limit: object) -> fe.RouteTable:
        node, http_sock, tcp_sock = self.outs[out]
        t = fe.RouteTable()
        svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID],
                            [("127.0.0.1", port_of(self.inbound[1]))])
        client = ctx(self.keys, identity)
        t.set_outbound_http(http_sock.fileno(), client, identity)
        t.add_host("backend", svc, 8080)
        t.add_outbound_tcp(tcp_sock.fileno(), svc, client)
        if limit:
            t.add_rate_limit(POLICY, services=[svc], **limit)
        return t

    def get(self, out: int = 0, source: str = "127.0.0.1",
            path: str = "/") -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(self.outs[out][1]),
                                          timeout=TIMEOUT_S, source_address=(source, 0))
        try:
            conn.request("GET", path, headers={"Host": "backend", "Connection": "close"})
            resp = conn.getresponse()
            resp.body = resp.read()
            return resp
        finally:
            conn.close()

    def statuses(self, n: int, out: int = 0, source: str = "127.0.0.1",
                 path: str = "/") -> list[int]:
        return [self.get(out, source, path).status for _ in range(n)]

    def echo(self, out: int = 0) -> bytes:
        """One opaque pair through engine `out`: what comes back for b"ping"."""
        with socket.create_connection(("127.0.0.1", port_of(self.outs[out][2])),
                                      timeout=TIMEOUT_S) as s:
            try:
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return b""              # closed already
            return recv_all(s)

    def counts(self, engine: fe.Engine) -> dict:
        return {e["policy"]: e for e in engine.rate_limits()}[POLICY]


MakeFarm = Callable[..., Farm]


@pytest.fixture
def make_farm(keys: Keys, tmp_path: Path) -> Iterator[MakeFarm]:
    nodes: list[Node] = []
    closing: list = []

    def make(outs: int = 1, protocol: str = "http", shared: bool = False,
             inbound_limit: dict | None = None, outbound_limit: dict | None = None,
             buffer_bytes: int = 16384) -> Farm:
        if protocol == "http":
            app = http_server(_Handler)
            closing.append(lambda: (app.shutdown(), app.server_close()))
            port = app.server_address[1]
        else:
            echo = EchoApp()
            closing.append(echo.close)
            port = echo.port
        farm = Farm(keys, protocol, port)
        node = Node()
        nodes.append(node)
        farm.inbound = (node, listener())
        closing.append(farm.inbound[1].close)
        node.install(farm.inbound_table(**(inbound_limit or {})))
        region = None
        if shared:                  # one file, mapped by every engine (a node's workers)
            path = tmp_path / "ratelimit.shm"
            path.write_bytes(b"\0" * fe.rate_region_bytes(1024))
            with path.open("r+b") as f:
                region = mmap.mmap(f.fileno(), 0)
            fe.rate_region_format(region, 1024)
        for k in range(outs):
            node = Node(buffer_bytes=buffer_bytes)
            nodes.append(node)
            if region is not None:
                node.engine.share_rate_limits(region)
            farm.outs.append((node, listener(), listener()))
            closing.extend([farm.outs[k][1].close, farm.outs[k][2].close])
            node.install(farm.outbound_table(k, **(outbound_limit or {})))
        return farm

    yield make
    for node in nodes:
        node.stop()
    for close in closing:
        close()


SLOW = {"tokens": 1, "interval_s": 30.0}     # no token comes back within a test


def test_a_burst_goes_through_then_requests_wait_for_the_rate(make_farm: MakeFarm) -> None:
    # Inbound (the destination's node, the default): 3 at once, then one every 0.4 s.
    farm = make_farm(inbound_limit={"tokens": 1, "interval_s": 0.4, "burst": 3})
    assert farm.statuses(4) == [200, 200, 200, 429]
    time.sleep(0.45)
    assert farm.statuses(2) == [200, 429]
    counts = farm.counts(farm.inbound[0].engine)
    assert (counts["allowed"], counts["limited"], counts["overflow"]) == (4, 2, 0)


def test_the_429_is_exact_with_retry_after_and_the_ratelimit_fields(make_farm: MakeFarm) -> None:
    # Outbound (the caller's node): the engine's own answer, as the client reads it.
    farm = make_farm(outbound_limit={"tokens": 10, "interval_s": 20.0, "burst": 1})
    assert farm.statuses(1) == [200]
    with socket.create_connection(("127.0.0.1", port_of(farm.outs[0][1])),
                                  timeout=TIMEOUT_S) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        answer = recv_all(s)
    # A token every 2 s: the next one in (2 s - a few ms), rounded up.
    assert answer == (b"HTTP/1.1 429 Too Many Requests\r\n"
                      b"content-type: text/plain\r\ncontent-length: 20\r\n"
                      b"connection: close\r\n"
                      b"retry-after: 2\r\n"
                      b'ratelimit-policy: "backend-limit";q=10;w=20\r\n'
                      b'ratelimit: "backend-limit";r=0;t=2\r\n'
                      b"\r\nrate limit exceeded\n")


@pytest.mark.parametrize("where", ["outbound", "inbound"])
def test_a_kept_alive_client_is_answered_429_in_place_and_goes_on(make_farm: MakeFarm,
                                                                   where: str) -> None:
    """Past a pair's first request, a 429 is its next answer and the pair stays: the
    client keeps its connection (inbound: the caller's node keeps its mTLS one)."""
    farm = make_farm(**{f"{where}_limit": {"tokens": 1, "interval_s": 0.4, "burst": 2}})
    conn = http.client.HTTPConnection("127.0.0.1", port_of(farm.outs[0][1]), timeout=TIMEOUT_S)
    answers = []
    for path in ("/1", "/2", "/3", "/4", "wait", "/5", "/6"):
        if path == "wait":
            time.sleep(0.45)
            continue
        conn.request("GET", path, headers={"Host": "backend"})
        resp = conn.getresponse()
        answers.append((resp.status, resp.read(), resp.will_close))
    conn.close()
    ok, limited = (200, b"ok", False), (429, b"rate limit exceeded\n", False)
    assert answers == [ok, ok, limited, limited, ok, limited]
    stats = farm.inbound[0].engine.stats()
    assert stats["inbound_tls_handshakes"] == 1       # one mTLS connection throughout


def test_the_longest_id_the_config_makes_is_taken_and_sent_whole(make_farm: MakeFarm) -> None:
    """A limit's id is its policy's NS/NAME/LIMIT: up to 63 + 253 + 253 characters and
    two slashes (Kubernetes names); both 429 fields carry it whole."""
    policy = "/".join(("n" * 63, "p" * 253, "l" * 253))
    farm = make_farm()
    t = farm.outbound_table(0)
    t.add_rate_limit(policy, services=[0], **SLOW, burst=1)
    farm.outs[0][0].install(t)
    assert farm.get().status == 200
    resp = farm.get()
    assert resp.status == 429
    assert resp.getheader("ratelimit-policy") == '"%s";q=1;w=30' % policy
    assert resp.getheader("ratelimit") == '"%s";r=0;t=30' % policy


def test_a_sub_second_fill_is_advertised_per_second_and_passed_on_from_the_destination(
        make_farm: MakeFarm) -> None:
    farm = make_farm(inbound_limit={"tokens": 1, "interval_s": 0.25, "burst": 1})
    assert farm.get().status == 200
    resp = farm.get()
    assert resp.status == 429 and resp.body == b"rate limit exceeded\n"
    assert resp.getheader("retry-after") == "1"
    assert resp.getheader("ratelimit-policy") == '"backend-limit";q=4;w=1'
    assert resp.getheader("ratelimit") == '"backend-limit";r=0;t=1'


def test_a_bucket_per_source_address_and_an_overflow_bucket_past_the_bound(
        make_farm: MakeFarm) -> None:
    farm = make_farm(outbound_limit={**SLOW, "burst": 2, "by": "source_ip", "max_keys": 2})
    assert farm.statuses(3, source="127.0.0.1") == [200, 200, 429]
    assert farm.statuses(3, source="127.0.0.2") == [200, 200, 429]
    # A third address finds no bucket of its own: it shares the overflow bucket.
    assert farm.statuses(3, source="127.0.0.3") == [200, 200, 429]
    assert farm.statuses(1, source="127.0.0.4") == [429]
    counts = farm.counts(farm.outs[0][0].engine)
    assert (counts["allowed"], counts["limited"], counts["overflow"]) == (6, 4, 4)


def test_at_the_destination_the_source_address_is_the_calling_workload_s(
        make_farm: MakeFarm) -> None:
    """Inbound, source_ip is the address the caller's node carried (caller_ext.pxi),
    not the node's own: two clients behind one node have a bucket each."""
    farm = make_farm(inbound_limit={**SLOW, "burst": 2, "by": "source_ip", "max_keys": 4})
    assert farm.statuses(3, source="127.0.0.2") == [200, 200, 429]
    assert farm.statuses(3, source="127.0.0.3") == [200, 200, 429]
    counts = farm.counts(farm.inbound[0].engine)
    assert (counts["allowed"], counts["limited"], counts["overflow"]) == (4, 2, 0)


def test_a_bucket_per_caller_principal_at_the_destination(make_farm: MakeFarm) -> None:
    farm = make_farm(outs=2, inbound_limit={**SLOW, "burst": 2, "by": "principal"})
    farm.outs[1][0].install(farm.outbound_table(1, identity=OTHER_ID))
    assert farm.statuses(3, out=0) == [200, 200, 429]
    assert farm.statuses(3, out=1) == [200, 200, 429]


def test_engines_mapping_one_region_share_one_limit(make_farm: MakeFarm) -> None:
    farm = make_farm(outs=2, shared=True, outbound_limit={**SLOW, "burst": 4})
    assert farm.statuses(2, out=0) == [200, 200]
    assert farm.statuses(2, out=1) == [200, 200]
    assert farm.statuses(1, out=0) == [429]
    assert farm.statuses(1, out=1) == [429]
    for k in (0, 1):
        counts = farm.counts(farm.outs[k][0].engine)
        assert (counts["allowed"], counts["limited"]) == (2, 1)


def test_engines_with_regions_of_their_own_limit_apart(make_farm: MakeFarm) -> None:
    farm = make_farm(outs=2, outbound_limit={**SLOW, "burst": 2})
    assert farm.statuses(3, out=0) == [200, 200, 429]
    assert farm.statuses(3, out=1) == [200, 200, 429]


def test_requests_pipelined_behind_another_are_answered_429_after_it(
        make_farm: MakeFarm) -> None:
    farm = make_farm(inbound_limit={**SLOW, "burst": 1})
    with socket.create_connection(("127.0.0.1", port_of(farm.outs[0][1])),
                                  timeout=TIMEOUT_S) as s:
        s.sendall(b"GET /1 HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /2 HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /3 HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        answer = recv_all(s)
    first, second, third = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"\r\n\r\nok")
    # In place (the pair goes on), then the last, closing one.
    assert second.startswith(b"429 Too Many Requests\r\n") and b"connection" not in second
    assert third.startswith(b"429 Too Many Requests\r\n") and b"connection: close" in third.lower()
    assert second.endswith(b"rate limit exceeded\n") and third.endswith(b"rate limit exceeded\n")


def test_a_policy_change_keeps_the_bucket_and_a_removed_one_limits_no_more(
        make_farm: MakeFarm) -> None:
    farm = make_farm(outbound_limit={**SLOW, "burst": 2})
    assert farm.statuses(3) == [200, 200, 429]
    node = farm.outs[0][0]
    node.install(farm.outbound_table(0, **SLOW, burst=2))   # a push, the limit unchanged
    assert farm.statuses(1) == [429]
    node.install(farm.outbound_table(0))
    assert farm.statuses(2) == [200, 200]


def test_a_push_raising_the_rate_frees_the_spent_callers_at_the_new_rate(
        make_farm: MakeFarm) -> None:
    """The bucket is kept across a push, but what was spent under the old, slower rate
    is no debt under the new one: at most an empty bucket of the new limit, refilled at
    its rate (not in the old limit's 30 s)."""
    farm = make_farm(outbound_limit={**SLOW, "burst": 1})
    assert farm.statuses(2) == [200, 429]
    farm.outs[0][0].install(farm.outbound_table(0, tokens=100, interval_s=1.0, burst=100))
    resp = farm.get()
    assert (resp.status, resp.getheader("retry-after")) == (429, "1")   # 10 ms, rounded up
    time.sleep(0.2)                 # 20 tokens at the new rate
    assert farm.statuses(3) == [200, 200, 200]


def test_a_push_adding_another_limit_before_it_neither_refills_nor_frees_the_bucket(
        make_farm: MakeFarm) -> None:
    """A limit's buckets stay where they were whatever else a new table holds: a new
    limit ahead of it (here a per-caller one, with a window of its own) must not hand
    it a full bucket elsewhere in the region."""
    farm = make_farm(outbound_limit={**SLOW, "burst": 2})
    assert farm.statuses(3) == [200, 200, 429]
    t = farm.outbound_table(0)
    t.add_rate_limit("a-new-limit", services=[0], by="source_ip", max_keys=64,
                     tokens=1000, interval_s=1.0, burst=1000)
    t.add_rate_limit(POLICY, services=[0], **SLOW, burst=2)
    farm.outs[0][0].install(t)
    assert farm.statuses(2) == [429, 429]


def test_a_route_rules_limit_takes_only_the_requests_its_rules_take(
        make_farm: MakeFarm) -> None:
    farm = make_farm()
    t = farm.outbound_table()
    routes = t.add_route_set(0)
    limited = [t.add_route_rule(f"demo/r#{name}", [(0, 1)]) for name in ("a", "a2")]
    free = t.add_route_rule("demo/r#b", [(0, 1)])
    t.add_route_match(routes, limited[0], path=("PathPrefix", "/a"))
    t.add_route_match(routes, limited[1], path=("PathPrefix", "/other-a"))
    t.add_route_match(routes, free, path=("PathPrefix", "/b"))
    t.add_rate_limit(POLICY, services=[0], rules=limited, **SLOW, burst=2)
    farm.outs[0][0].install(t)
    assert farm.statuses(1, path="/a") + farm.statuses(2, path="/other-a") == [200, 200, 429]
    assert farm.statuses(3, path="/b") == [200, 200, 200]
    counts = farm.counts(farm.outs[0][0].engine)
    assert (counts["allowed"], counts["limited"]) == (2, 1)


@pytest.mark.parametrize("where", ["outbound", "inbound"])
def test_an_opaque_pair_over_the_rate_is_closed_and_counted(make_farm: MakeFarm,
                                                            where: str) -> None:
    limit = {**SLOW, "burst": 2}
    farm = make_farm(protocol="tcp", **{f"{where}_limit": limit})
    assert [farm.echo() for _ in range(3)] == [b"ping", b"ping", b""]
    engine = farm.outs[0][0].engine if where == "outbound" else farm.inbound[0].engine
    counts = farm.counts(engine)
    assert (counts["allowed"], counts["refused"], counts["limited"]) == (2, 1, 0)


def test_bad_limits_are_refused_by_name() -> None:
    t = fe.RouteTable()
    svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID], [])
    with pytest.raises(ValueError, match="by must be one of"):
        t.add_rate_limit(POLICY, 1, 1.0, 1, by="header", services=[svc])
    with pytest.raises(ValueError, match="tokens must be"):
        t.add_rate_limit(POLICY, 0, 1.0, 1, services=[svc])
    with pytest.raises(ValueError, match="no inbound route for sni"):
        t.add_rate_limit(POLICY, 1, 1.0, 1, inbound=["nowhere.svc"])
    with pytest.raises(ValueError, match="name an inbound route or a service"):
        t.add_rate_limit(POLICY, 1, 1.0, 1)
    with pytest.raises(ValueError, match="no quote"):
        t.add_rate_limit('a"b', 1, 1.0, 1, services=[svc])
    # A bucket whose refill time (burst x interval_s / tokens) its int64 ns cannot hold.
    with pytest.raises(ValueError, match="the time to fill the bucket again"):
        t.add_rate_limit(POLICY, 1, 86400.0, 10**9, services=[svc])
    with pytest.raises(ValueError, match="not a rate-limit region"):
        fe.Engine().share_rate_limits(bytearray(fe.rate_region_bytes(1024)))


@pytest.mark.parametrize("close", [False, True], ids=["kept-alive", "closing"])
def test_a_head_waiting_for_room_for_its_edits_is_decided_once(make_farm: MakeFarm,
                                                              close: bool) -> None:
    """A route's request edits need room after the head: one that has it only at the
    buffer's start waits there until the bytes before it are moved away (routes.pxi
    _edits_wait), before anything of it is taken. Framed again then, it takes one token,
    not two (the second a 429), and its `Connection: close` is read once (read before
    the wait, the head was dropped as if it came after a request that said close)."""
    buffer = 4096
    pads = [("X-Pad-%d" % k, "p" * 1000) for k in range(3)]   # over half the buffer
    edits = sum(len(n) + len(v) + 4 for n, v in pads)        # a line each
    farm = make_farm(buffer_bytes=buffer)
    t = farm.outbound_table()
    routes = t.add_route_set(0)
    t.add_route_match(routes, t.add_route_rule("demo/r#a", [(0, 1)]), path=("PathPrefix", "/a"))
    t.add_route_match(routes, t.add_route_rule("demo/r#b", [(0, 1)], request_headers={
        "add": pads}), path=("PathPrefix", "/b"))
    t.add_rate_limit(POLICY, services=[0], **SLOW, burst=2)
    farm.outs[0][0].install(t)
    first = b"GET /a HTTP/1.1\r\nHost: backend\r\n\r\n"
    second = b"GET /b HTTP/1.1\r\nHost: backend\r\n%sX-Fill: %%s\r\n\r\n" % (
        b"Connection: close\r\n" if close else b"")
    # Behind the first, 30 bytes short of its edits' and the trace fields' room (11 once
    # `Connection: close` goes); at the buffer's start, within it.
    fill = buffer - edits - fe.TRACE_ROOM + 30 - len(first) - (len(second) - 2)
    second %= b"f" * fill
    with socket.create_connection(("127.0.0.1", port_of(farm.outs[0][1])),
                                  timeout=TIMEOUT_S) as s:
        # The second head's end comes once the first is answered: it is whole with
        # nothing owed before it, the first's bytes sent but still before it.
        s.sendall(first + second[:-30])
        answer = b""
        while not answer.endswith(b"\r\n\r\nok"):
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
        s.sendall(second[-30:])
        if not close:
            s.shutdown(socket.SHUT_WR)
        answer += recv_all(s)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer
    counts = farm.counts(farm.outs[0][0].engine)
    assert (counts["allowed"], counts["limited"]) == (2, 0)
