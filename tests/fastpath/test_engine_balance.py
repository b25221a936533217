"""Tests for the engine's balancers (balancer.pxi): which endpoint each new upstream of a
service goes to, as a user of the mesh sees it.

An outbound engine (the HTTP listener) and three inbound engines, each its own endpoint
(its own inbound port) in front of its own app that answers with its name; one app can
be made slow. Most requests are their own client connection (Connection: close), so each
is balanced at setup; the kept-alive tests check the per-request choice on a kept
upstream. The tests count which app answered. Real engines, sockets and mTLS as in
test_engine_http.py, whose PKI and Node these use.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from fastpath import engine as fe

from enginekit import QuietHandler, http_server, listener, port_of
from test_engine_http import (BACKEND_ID, SNI, TIMEOUT_S, Node, client_ctx,  # noqa: F401
                              mesh_pki, server_ctx)


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        server = self.server
        time.sleep(server.delay_s)          # type: ignore[attr-defined]
        body = server.tag                   # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class App:
    """An HTTP app answering every GET with its tag, after `delay_s`."""

    def __init__(self, tag: str, delay_s: float = 0.0) -> None:
        self.server = http_server(_Handler, tag=tag.encode(), delay_s=delay_s)
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Farm:
    """One client node and its endpoints: an inbound engine and app each."""

    pki: object
    out_node: Node
    http_sock: object
    endpoints: list[tuple[Node, object, App]] = field(default_factory=list)

    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port_of(sock)) for _, sock, _ in self.endpoints]

    def table(self, balancer: str, addresses: list[tuple[str, int]] | None = None,
              tcp_sock: socket.socket | None = None) -> fe.RouteTable:
        """`tcp_sock`: also a listener of the service's port declared TCP (opaque pairs)."""
        t = fe.RouteTable()
        svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID],
                            self.addresses() if addresses is None else addresses,
                            balancer=balancer)
        t.set_outbound_http(self.http_sock.fileno(), client_ctx(self.pki))
        if tcp_sock is not None:
            t.add_outbound_tcp(tcp_sock.fileno(), svc, client_ctx(self.pki), protocol="tcp")
        t.add_host("backend", svc, 8080)
        return t

    def get(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(self.http_sock), timeout=TIMEOUT_S)
        try:
            conn.request("GET", "/", headers={"Host": "backend", "Connection": "close"})
            resp = conn.getresponse()
            assert resp.status == 200
            return resp.read().decode()
        finally:
            conn.close()

    def spread(self, requests: int, clients: int = 1) -> Counter:
        """Which app answered each of `requests` requests, sent by `clients` at once."""
        served: Counter = Counter()
        lock = threading.Lock()
        errors: list[BaseException] = []

        def run(n: int) -> None:
            try:
                for _ in range(n):
                    tag = self.get()
                    with lock:
                        served[tag] += 1
            except BaseException as exc:   # reported by the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(requests // clients,)) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors
        return served


MakeFarm = Callable[..., Farm]


@pytest.fixture
def make_farm(mesh_pki) -> Iterator[MakeFarm]:  # noqa: F811 (the fixture)
    made: list[Farm] = []

    def make(balancer: str, delays: tuple[float, ...] = (0.0, 0.0, 0.0)) -> Farm:
        farm = Farm(mesh_pki, Node(), listener())
        made.append(farm)
        for i, delay in enumerate(delays):
            node, sock, app = Node(), listener(), App(f"app{i}", delay)
            farm.endpoints.append((node, sock, app))
            t = fe.RouteTable()
            t.set_inbound(sock.fileno())
            t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", app.port)
            node.install(t)
        farm.out_node.install(farm.table(balancer))
        return farm

    yield make
    for farm in made:
        farm.out_node.stop()
        farm.http_sock.close()
        for node, sock, app in farm.endpoints:
            node.stop()
            sock.close()
            app.close()


def test_round_robin_spreads_evenly(make_farm: MakeFarm) -> None:
    farm = make_farm("round-robin")
    assert farm.spread(30) == {"app0": 10, "app1": 10, "app2": 10}


def test_random_spreads_within_tolerance(make_farm: MakeFarm) -> None:
    farm = make_farm("random")
    served = farm.spread(150)
    # 50 expected each; binomial sd ~5.8: 25..75 is more than 4 sd either way.
    assert set(served) == {"app0", "app1", "app2"}
    assert all(25 <= n <= 75 for n in served.values()), served


@pytest.mark.timeout(120)
def test_least_request_sends_most_requests_away_from_a_slow_endpoint(make_farm: MakeFarm) -> None:
    farm = make_farm("least-request", delays=(0.3, 0.0))
    served = farm.spread(80, clients=8)
    # Round robin sends half to the slow one (below); the one with fewer requests in
    # flight wins, and the slow one keeps its requests in flight. (Both idle is a tie:
    # the first drawn wins, so the slow one still gets some.)
    assert served["app0"] <= 26, served
    assert served["app0"] + served["app1"] == 80


def test_requests_cut_short_leave_no_load_behind(make_farm: MakeFarm) -> None:
    farm = make_farm("least-request", delays=(0.3, 0.3))
    for _ in range(6):                  # clients that leave before their answer (the
        # engine drains each upstream to its answer, which ends the request)
        c = socket.create_connection(("127.0.0.1", port_of(farm.http_sock)), timeout=TIMEOUT_S)
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        time.sleep(0.05)
        c.close()
    time.sleep(0.5)
    for _, _, app in farm.endpoints:
        app.server.delay_s = 0.0
    # Nothing is in flight now: were a left request still counted on an endpoint, the
    # other would win every pick.
    served = farm.spread(40)
    assert min(served["app0"], served["app1"]) >= 6, served


def test_p2c_weighs_open_opaque_connections(make_farm: MakeFarm) -> None:
    farm = make_farm("p2c-ewma", delays=(0.0, 0.0))
    tcp = listener()
    opened: list[socket.socket] = []
    try:
        farm.out_node.install(farm.table("p2c-ewma", tcp_sock=tcp))

        def connect() -> tuple[socket.socket, str]:
            c = socket.create_connection(("127.0.0.1", port_of(tcp)), timeout=TIMEOUT_S)
            opened.append(c)
            c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            answer = b""
            while not answer.endswith((b"app0", b"app1")):
                answer += c.recv(4096)
            return c, answer[-4:].decode()

        held = [connect() for _ in range(4)]
        assert sorted(tag for _, tag in held) == ["app0", "app0", "app1", "app1"]
        for c, tag in held:             # app0's connections end: app1 keeps two open
            if tag == "app0":
                c.close()
        time.sleep(0.2)
        # An opaque pair counts while it is open: the next two go where none is.
        assert [connect()[1] for _ in range(2)] == ["app0", "app0"]
    finally:
        for c in opened:
            c.close()
        tcp.close()


def test_round_robin_sends_a_slow_endpoint_its_share(make_farm: MakeFarm) -> None:
    # The reference for the tests around it: the same load, half to the slow one.
    farm = make_farm("round-robin", delays=(0.3, 0.0))
    assert farm.spread(16, clients=4) == {"app0": 8, "app1": 8}


def test_p2c_ewma_learns_a_slow_endpoint_one_request_at_a_time(make_farm: MakeFarm) -> None:
    farm = make_farm("p2c-ewma", delays=(0.1, 0.0, 0.0))
    served = farm.spread(60)
    # Nothing in flight at any pick: only the latency estimate tells them apart. The
    # slow one's first answer sets its estimate to its latency (peak), above the
    # others' (the 30 ms default, moving toward their few ms), and it loses every
    # comparison after that.
    assert served["app0"] <= 3, served
    assert served["app1"] + served["app2"] == 60 - served["app0"]


@pytest.mark.timeout(120)
def test_p2c_ewma_under_concurrent_load_spares_a_slow_endpoint(make_farm: MakeFarm) -> None:
    farm = make_farm("p2c-ewma", delays=(0.3, 0.0))
    served = farm.spread(80, clients=8)
    # Latency and requests in flight both weigh against the slow one.
    assert served["app0"] <= 12, served


def _kept_alive_tags(farm: Farm, slow_after_first: float, requests: int) -> list[str]:
    """The apps that answered `requests` requests on one kept-alive client connection;
    the app answering the first turns `slow_after_first` s slow from the second on."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(farm.http_sock), timeout=TIMEOUT_S)
    tags = []
    try:
        for _ in range(requests):
            conn.request("GET", "/", headers={"Host": "backend"})
            resp = conn.getresponse()
            assert resp.status == 200
            tags.append(resp.read().decode())
            if len(tags) == 1:
                farm.endpoints[int(tags[0][3:])][2].server.delay_s = slow_after_first
    finally:
        conn.close()
    return tags


def test_p2c_ewma_moves_a_kept_alive_connection_off_an_endpoint_turned_slow(
        make_farm: MakeFarm) -> None:
    farm = make_farm("p2c-ewma", delays=(0.0, 0.0))
    tags = _kept_alive_tags(farm, 0.2, 8)
    # Its first slow answer makes the endpoint's estimate 200 ms, far above the other's:
    # the next request leaves for the other endpoint, and the rest stay there.
    assert tags[1] == tags[0] and set(tags[2:]) == {"app1" if tags[0] == "app0" else "app0"}, tags
    assert farm.out_node.stats()["http_rebalanced"] == 1


def test_round_robin_keeps_a_kept_alive_connection_where_it_was_sent(make_farm: MakeFarm) -> None:
    farm = make_farm("round-robin", delays=(0.0, 0.0))
    tags = _kept_alive_tags(farm, 0.05, 4)
    assert set(tags) == {tags[0]}, tags
    assert farm.out_node.stats()["http_rebalanced"] == 0


def test_p2c_ewma_is_the_default(make_farm: MakeFarm, mesh_pki) -> None:  # noqa: F811
    farm = make_farm("p2c-ewma", delays=(0.1, 0.0, 0.0))
    t = fe.RouteTable()
    svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID], farm.addresses())
    t.set_outbound_http(farm.http_sock.fileno(), client_ctx(mesh_pki))
    t.add_host("backend", svc, 8080)
    farm.out_node.install(t)
    assert farm.spread(40)["app0"] <= 3


def test_the_latency_estimate_outlives_a_config_push(make_farm: MakeFarm) -> None:
    farm = make_farm("p2c-ewma", delays=(0.1, 0.0))
    farm.spread(10)                     # the slow one was tried and is known slow
    farm.out_node.install(farm.table("p2c-ewma"))
    assert farm.spread(20).get("app0", 0) == 0


def test_an_address_given_twice_is_one_endpoint(make_farm: MakeFarm) -> None:
    # Two workloads on one node: one endpoint (the node's inbound port), not two turns.
    farm = make_farm("round-robin", delays=(0.0, 0.0))
    a, b = farm.addresses()
    farm.out_node.install(farm.table("round-robin", [a, a, b]))
    assert farm.spread(20) == {"app0": 10, "app1": 10}


def test_a_dead_endpoint_stays_passed_over_whatever_the_balancer(make_farm: MakeFarm) -> None:
    farm = make_farm("p2c-ewma", delays=(0.0, 0.0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = ("127.0.0.1", port_of(s))
    for balancer in ("p2c-ewma", "least-request", "random", "round-robin"):
        farm.out_node.install(farm.table(balancer, [dead] + farm.addresses()))
        before = farm.out_node.stats()["outbound_connect_failures"]
        served = farm.spread(12)
        assert sum(served.values()) == 12
        # Tried once, failed over, then passed over for a second at least.
        assert farm.out_node.stats()["outbound_connect_failures"] - before <= 1, balancer


def test_an_unknown_balancer_is_refused_by_name() -> None:
    t = fe.RouteTable()
    with pytest.raises(ValueError, match="'LEAST_CONN'.*p2c-ewma, round-robin, random, "
                                         "least-request, ring-hash, maglev"):
        t.add_service("demo/x:http", "http.x.demo.svc", [BACKEND_ID], [], balancer="LEAST_CONN")
    assert sorted(fe.BALANCERS) == ["least-request", "maglev", "p2c-ewma", "random",
                                    "ring-hash", "round-robin"]
