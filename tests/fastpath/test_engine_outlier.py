"""Tests for outlier detection (outlier.pxi, DestinationRule outlierDetection): an
endpoint that answers 5xx (or gateway errors), or closes or resets its connections
without answering, so many times in a row gets no requests for its ejection time, then
is tried again; the bounds maxEjectionPercent and minHealthPercent put on that; and the
ejection shared by engines that map one region, as a node's workers do.

An outbound engine (the HTTP listener) and inbound engines, each its own endpoint in
front of an app that answers with its name and the status it is told to give (or
answers nothing and closes or resets the connection: CLOSE, RESET); an endpoint may
also be a node that does that itself (LeavingNode). Each request is its own client
connection, so the balancer (round robin: the order is known) picks at every request.
Durations are short (Istio's durations take milliseconds).
"""

from __future__ import annotations

import http.client
import mmap
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls

from enginekit import QuietHandler, http_server, listener, port_of, wait_for
from test_engine_http import (BACKEND_ID, SNI, TIMEOUT_S, Node, RawApp, client_ctx,  # noqa: F401
                              mesh_pki, server_ctx)

pytestmark = pytest.mark.timeout(60)

# What App.answer() takes besides a status: read the request, answer nothing, and close
# the connection (FIN) or reset it (RST: SO_LINGER 0).
CLOSE = -1
RESET = -2


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        server = self.server
        server.hits += 1                    # type: ignore[attr-defined]
        if server.status in (CLOSE, RESET):  # type: ignore[attr-defined]
            self.close_connection = True
            # (The descriptor goes once the handler's rfile lets go of it; the server's
            # own shutdown of it then finds it closed.)
            _leave(self.connection, server.status)  # type: ignore[attr-defined]
            return
        body = server.tag                   # type: ignore[attr-defined]
        if server.status == 0:              # type: ignore[attr-defined]
            time.sleep(0.4)                 # (a hung app: the route's timeout comes first)
        self.send_response(server.status or 200)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _leave(conn: socket.socket, how: int) -> None:
    """Close `conn` without answering: FIN (CLOSE), or RST (RESET: linger 0)."""
    if how == RESET:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class App:
    """An HTTP app answering every GET with its tag and `status` (0: after 0.4 s; CLOSE,
    RESET: no answer), counting them."""

    def __init__(self, tag: str, status: int) -> None:
        self.server = http_server(_Handler, tag=tag.encode(), status=status, hits=0)
        self.port = self.server.server_address[1]

    @property
    def hits(self) -> int:
        return self.server.hits             # type: ignore[attr-defined]

    def answer(self, status: int) -> None:
        self.server.status = status         # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LeavingNode:
    """An endpoint's node (the inbound side's mutual TLS, with the backend's identity)
    that reads each request and leaves without answering, as a node whose process dies
    under a request does: close_notify and FIN (CLOSE), or RST (RESET). Counts the
    requests."""

    def __init__(self, pki: object, how: int) -> None:
        self.ctx = server_ctx(pki)
        self.how = how
        self.hits = 0
        self.raw = RawApp(self._serve)
        self.port = self.raw.port

    def _serve(self, conn: socket.socket) -> None:
        # TLSSession blocks on the descriptor: bounded by socket options, not a timeout.
        conn.settimeout(None)
        bound = struct.pack("ll", int(TIMEOUT_S), 0)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
        session = tls.TLSSession(self.ctx, conn.fileno())
        session.handshake()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = session.read(65536)
            if not chunk:
                return                  # the caller left before its request was whole
            head += chunk
        self.hits += 1
        if self.how == CLOSE:
            session.shutdown()
        _leave(conn, self.how)

    def close(self) -> None:
        self.raw.close()


@dataclass
class Farm:
    pki: object
    outs: list[tuple[Node, socket.socket]] = field(default_factory=list)
    endpoints: list[tuple[Node, socket.socket, App]] = field(default_factory=list)
    leaving: list[LeavingNode] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)   # ports where nothing listens
    region: mmap.mmap | None = None                 # the shared state (shared=True)

    def addresses(self) -> list[tuple[str, int]]:
        return ([("127.0.0.1", port_of(sock)) for _, sock, _ in self.endpoints]
                + [("127.0.0.1", node.port) for node in self.leaving]
                + [("127.0.0.1", p) for p in self.dead])

    def table(self, out: int = 0, addresses: list[tuple[str, int]] | None = None,
              service: str = "demo/backend:http", **outlier: object) -> fe.RouteTable:
        """The outbound table of engine `out`: the backend at `addresses` (default: the
        farm's own endpoints), named `service`, with outlier detection as `outlier` says."""
        t = fe.RouteTable()
        svc = t.add_service(service, SNI, [BACKEND_ID],
                            self.addresses() if addresses is None else addresses,
                            balancer="round-robin")
        t.set_outlier(svc, **outlier)
        t.set_outbound_http(self.outs[out][1].fileno(), client_ctx(self.pki))
        t.add_host("backend", svc, 8080)
        return t

    def get(self, out: int = 0) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(self.outs[out][1]),
                                          timeout=TIMEOUT_S)
        try:
            conn.request("GET", "/", headers={"Host": "backend", "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def kept_alive(self, n: int, out: int = 0) -> list[tuple[int, str]]:
        """n requests on one kept-alive client connection: (status, body) of each."""
        conn = http.client.HTTPConnection("127.0.0.1", port_of(self.outs[out][1]),
                                          timeout=TIMEOUT_S)
        try:
            answers = []
            for _ in range(n):
                conn.request("GET", "/", headers={"Host": "backend"})
                resp = conn.getresponse()
                answers.append((resp.status, resp.read().decode()))
            return answers
        finally:
            conn.close()

    def spread(self, n: int, out: int = 0) -> Counter:
        return Counter(self.get(out)[1] for _ in range(n))

    def ejected(self, out: int = 0) -> dict[int, dict]:
        """port -> its outlier entry, as engine `out` shows them."""
        return {e["port"]: e for e in self.outs[out][0].engine.outliers()}

    def port(self, i: int) -> int:
        return port_of(self.endpoints[i][1])


MakeFarm = Callable[..., Farm]


@pytest.fixture
def make_farm(mesh_pki, tmp_path: Path) -> Iterator[MakeFarm]:  # noqa: F811 (the fixture)
    made: list[Farm] = []
    maps: list[mmap.mmap] = []

    def make(statuses: tuple[int, ...], outs: int = 1, dead: int = 0, shared: bool = False,
             leaving: tuple[int, ...] = (), slots: int = 1024, lease_s: float = 180.0,
             install: bool = True, **outlier: object) -> Farm:
        farm = Farm(mesh_pki)
        made.append(farm)
        farm.leaving = [LeavingNode(mesh_pki, how) for how in leaving]
        for i, status in enumerate(statuses):
            node, sock, app = Node(), listener(), App(f"app{i}", status)
            farm.endpoints.append((node, sock, app))
            t = fe.RouteTable()
            t.set_inbound(sock.fileno())
            t.add_inbound_route(SNI, server_ctx(mesh_pki), "127.0.0.1", app.port)
            node.install(t)
        for _ in range(dead):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            farm.dead.append(port_of(s))
            s.close()                       # nothing listens there: connects are refused
        region = None
        if shared:                          # one file, mapped by every engine (proxy.py)
            path = tmp_path / "outlier.state"
            path.write_bytes(b"\0" * fe.shared_state_bytes(slots))
            with path.open("r+b") as f:
                region = mmap.mmap(f.fileno(), 0)
            fe.shared_state_format(region, slots, lease_s)
            maps.append(region)
            farm.region = region
        for k in range(outs):
            node = Node()
            if region is not None:
                node.engine.share_state(region)
            farm.outs.append((node, listener()))
            if install:
                node.install(farm.table(k, **outlier))
        return farm

    yield make
    for farm in made:
        for node, sock in farm.outs:
            node.stop()
            sock.close()
        for node, sock, app in farm.endpoints:
            node.stop()
            sock.close()
            app.close()
        for leaving in farm.leaving:
            leaving.close()


def test_an_endpoint_answering_5xx_is_ejected_after_n_in_a_row_then_tried_again(
        make_farm: MakeFarm) -> None:
    farm = make_farm((200, 500), consecutive_5xx=3, interval_s=0.02, base_ejection_s=1.0,
                     max_ejection_percent=100)
    bad = farm.endpoints[1][2]
    answers = Counter(farm.get() for _ in range(6))     # round robin: 3 each
    assert answers == {(200, "app0"): 3, (500, "app1"): 3}
    entry = farm.ejected()[farm.port(1)]
    assert entry["ejected"] and entry["ejections"] == 1, entry
    assert farm.outs[0][0].stats()["outlier_ejections"] == 1
    # Ejected: every request goes to the healthy one while the ejection lasts.
    assert farm.spread(10) == {"app0": 10}
    assert bad.hits == 3
    assert farm.ejected()[farm.port(1)]["ejected"]
    # Then it is tried again: now healthy, it takes its share.
    bad.answer(200)
    wait_for(lambda: not farm.ejected()[farm.port(1)]["ejected"], 3, "the ejection's end")
    assert farm.spread(4) == {"app0": 2, "app1": 2}


def test_the_second_ejection_in_a_row_lasts_twice_as_long(make_farm: MakeFarm) -> None:
    # (A sweep that finds it back lowers the multiple: the second ejection comes
    # within one interval of the first's end, so none does.)
    farm = make_farm((200, 500), consecutive_5xx=1, interval_s=0.2, base_ejection_s=0.4,
                     max_ejection_percent=100)
    farm.spread(2)
    first = farm.ejected()[farm.port(1)]
    assert first["ejected"] and 0.2 < first["ejected_for_s"] <= 0.6, first
    wait_for(lambda: not farm.ejected()[farm.port(1)]["ejected"], 3, "the first ejection's end")
    while farm.endpoints[1][2].hits < 2:    # (bounded: round robin reaches it in 2)
        farm.get()
    second = farm.ejected()[farm.port(1)]
    assert second["ejections"] == 2 and 0.6 < second["ejected_for_s"] <= 1.0, second


def test_a_success_resets_the_count(make_farm: MakeFarm) -> None:
    farm = make_farm((200, 500), consecutive_5xx=2, interval_s=0.02, base_ejection_s=1.0,
                     max_ejection_percent=100)
    bad = farm.endpoints[1][2]
    farm.spread(2)                          # app1: one 500
    bad.answer(200)
    farm.spread(2)                          # app1: a success, the count starts over
    bad.answer(500)
    farm.spread(2)                          # app1: one 500 again: not two in a row
    assert not farm.ejected()[farm.port(1)]["ejected"]
    assert farm.ejected()[farm.port(1)]["consecutive_5xx"] == 1
    farm.spread(2)
    assert farm.ejected()[farm.port(1)]["ejected"]


def test_gateway_errors_count_only_502_503_504(make_farm: MakeFarm) -> None:
    farm = make_farm((200, 500), consecutive_5xx=0, consecutive_gateway=2, interval_s=0.02,
                     base_ejection_s=1.0, max_ejection_percent=100)
    bad = farm.endpoints[1][2]
    farm.spread(8)                          # four 500s: not gateway errors, 5xx is off
    assert not farm.ejected()[farm.port(1)]["ejected"]
    bad.answer(503)
    farm.spread(4)
    assert farm.ejected()[farm.port(1)]["ejected"]
    assert farm.spread(4) == {"app0": 4}


def test_max_ejection_percent_keeps_endpoints_in_but_one_may_always_go(
        make_farm: MakeFarm) -> None:
    # Three endpoints all failing, 10 % at most: the first ejection goes through anyway
    # (Envoy's rule), the others are held back and counted.
    farm = make_farm((500, 500, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=5.0)
    statuses = Counter(farm.get()[0] for _ in range(9))
    assert statuses == {500: 9}
    assert sum(e["ejected"] for e in farm.ejected().values()) == 1
    stats = farm.outs[0][0].stats()
    assert stats["outlier_ejections"] == 1 and stats["outlier_ejections_overflow"] >= 6
    # 60 %: two of three (2/3 = 67 % would be over it: held back).
    farm2 = make_farm((500, 500, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=5.0,
                      max_ejection_percent=60)
    for _ in range(9):
        farm2.get()
    assert sum(e["ejected"] for e in farm2.ejected().values()) == 1
    farm3 = make_farm((500, 500, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=5.0,
                      max_ejection_percent=67)
    for _ in range(9):
        farm3.get()
    assert sum(e["ejected"] for e in farm3.ejected().values()) == 2


def test_below_min_health_percent_ejected_endpoints_take_traffic_again(
        make_farm: MakeFarm) -> None:
    farm = make_farm((200, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=5.0,
                     max_ejection_percent=100, min_health_percent=60)
    farm.spread(2)
    assert farm.ejected()[farm.port(1)]["ejected"]
    # One of two healthy (50 % < 60 %): outlier detection stands aside, all are used.
    assert farm.spread(4) == {"app0": 2, "app1": 2}
    farm2 = make_farm((200, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=5.0,
                      max_ejection_percent=100, min_health_percent=50)
    farm2.spread(2)
    assert farm2.spread(4) == {"app0": 4}   # 50 % is not below 50 %


def test_a_service_whose_every_endpoint_is_ejected_is_answered_503(make_farm: MakeFarm) -> None:
    """maxEjectionPercent 100 lets every endpoint go; with minHealthPercent 0 (Envoy's
    panic mode off) Envoy then has no healthy host: 503 "no healthy upstream", nothing
    sent to an ejected endpoint, counted."""
    farm = make_farm((500, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=30.0,
                     max_ejection_percent=100)
    assert [farm.get()[0] for _ in range(2)] == [500, 500]     # round robin: one each
    assert all(e["ejected"] for e in farm.ejected().values())
    assert [farm.get() for _ in range(3)] == [(503, "no healthy upstream\n")] * 3
    assert [app.hits for _, _, app in farm.endpoints] == [1, 1]
    assert farm.outs[0][0].stats()["outlier_none_healthy"] == 3


def test_every_endpoint_ejected_below_min_health_percent_all_take_traffic(
        make_farm: MakeFarm) -> None:
    """Below minHealthPercent (Envoy's panic threshold) ejections are ignored: with all
    ejected, every endpoint takes traffic again."""
    farm = make_farm((500, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=30.0,
                     max_ejection_percent=100, min_health_percent=50)
    farm.spread(2)
    assert all(e["ejected"] for e in farm.ejected().values())
    assert farm.spread(4) == {"app0": 2, "app1": 2}
    assert farm.outs[0][0].stats()["outlier_none_healthy"] == 0


def test_with_every_endpoint_down_one_only_passed_over_is_tried_before_an_ejected_one(
        make_farm: MakeFarm) -> None:
    """app0 ejected; the dead endpoint's ejection held back by maxEjectionPercent, so it
    is only passed over after its failed setup. Envoy counts it healthy and sends there
    (its connect fails: 503), never to the ejected one."""
    farm = make_farm((500,), dead=1, consecutive_5xx=1, interval_s=0.02, base_ejection_s=30.0,
                     max_ejection_percent=50)
    assert farm.get()[0] == 500                         # app0: ejected
    assert farm.get()[0] == 503                         # dead: passed over, not ejected
    entries = farm.ejected()
    assert entries[farm.port(0)]["ejected"] and not entries[farm.dead[0]]["ejected"]
    assert [farm.get()[0] for _ in range(4)] == [503] * 4
    assert farm.endpoints[0][2].hits == 1


def test_a_kept_alive_client_is_answered_503_once_every_endpoint_is_ejected(
        make_farm: MakeFarm) -> None:
    farm = make_farm((500, 500), consecutive_5xx=1, interval_s=0.02, base_ejection_s=30.0,
                     max_ejection_percent=100)
    answers = farm.kept_alive(3)
    assert answers[:2] == [(500, "app0"), (500, "app1")], answers   # moved off app0
    assert answers[2] == (503, "no healthy upstream\n"), answers
    assert [app.hits for _, _, app in farm.endpoints] == [1, 1]


# The region's layout (fastpath engine.pxd SharedSlot; its magic changes with it): a
# 64-byte header, then 64-byte slots, each its key first; a service's own slot is keyed
# by its name and a NUL, and holds at this offset the ejections being decided for it
# (the low 8 bits) and the monotonic milliseconds since when (the other 24, wrapping).
_HEADER_BYTES = _SLOT_BYTES = 64
_EJECTING_AT = 28


def _announced(count: int, age_s: float = 0.0) -> int:
    """`ejecting` for `count` decisions under way, the oldest announced age_s ago."""
    since = int((time.monotonic() - age_s) * 1000) & 0xFFFFFF
    return since << 8 | count


def _ejecting_at(region: mmap.mmap, service: bytes) -> int:
    """The offset of `service`'s `ejecting` count in the region (linear probing)."""
    slots = (len(region) - _HEADER_BYTES) // _SLOT_BYTES
    key = fe.hash_key(service + b"\0") or 1
    for n in range(slots):
        at = _HEADER_BYTES + ((key + n) % slots) * _SLOT_BYTES
        if struct.unpack_from("<Q", region, at)[0] == key:
            return at + _EJECTING_AT
    raise AssertionError("the service has no slot of its own")


def test_an_ejection_decided_by_another_worker_counts_toward_max_ejection_percent(
        make_farm: MakeFarm) -> None:
    """Workers eject concurrently: a decision under way in another worker (announced in
    the service's slot, not made yet) counts as an ejection, so the two cannot both let
    one more out. With Istio's 10 %, that one goes and this one is held back; once the
    other's decision is over (here: it held back), this one's next failure ejects."""
    farm = make_farm((500, 200), shared=True, consecutive_5xx=1, interval_s=0.02,
                     base_ejection_s=30.0)
    assert farm.region is not None
    ejecting = _ejecting_at(farm.region, b"demo/backend:http")
    other = _announced(1)
    struct.pack_into("<I", farm.region, ejecting, other)    # another worker, deciding
    assert farm.get() == (500, "app0")
    assert not farm.ejected()[farm.port(0)]["ejected"]
    assert farm.outs[0][0].stats()["outlier_ejections_overflow"] == 1
    assert struct.unpack_from("<I", farm.region, ejecting)[0] == other  # this one's withdrawn
    struct.pack_into("<I", farm.region, ejecting, 0)    # the other one's done
    farm.get()                                          # app1 (round robin)
    assert farm.get() == (500, "app0")
    assert farm.ejected()[farm.port(0)]["ejected"]


def test_an_announcement_left_by_a_worker_killed_while_deciding_expires(
        make_farm: MakeFarm) -> None:
    """A worker killed between announcing a decision and withdrawing it leaves the
    announcement behind (the region outlives workers until `meshnode up`). Counted for
    good, it would hold back every ejection of the service (with Istio's 10 % and two
    endpoints, the one Envoy always lets go too); a decision takes microseconds, so one
    announced more than ten seconds ago is dropped by the next decision."""
    farm = make_farm((500, 200), shared=True, consecutive_5xx=1, interval_s=0.02,
                     base_ejection_s=30.0)
    assert farm.region is not None
    ejecting = _ejecting_at(farm.region, b"demo/backend:http")
    struct.pack_into("<I", farm.region, ejecting, _announced(1, age_s=30.0))
    assert farm.get() == (500, "app0")
    assert farm.ejected()[farm.port(0)]["ejected"]
    assert farm.outs[0][0].stats()["outlier_ejections_overflow"] == 0
    assert struct.unpack_from("<I", farm.region, ejecting)[0] & 0xFF == 0   # none left


def test_a_full_region_leaves_the_service_without_its_slot_before_an_endpoint(
        make_farm: MakeFarm) -> None:
    """Two slots for two endpoints and their service: the endpoints keep theirs and
    are ejected; the service goes without (its ejections judged by this worker's
    count), counted."""
    farm = make_farm((500, 500), shared=True, slots=2, consecutive_5xx=1, interval_s=0.02,
                     base_ejection_s=30.0, max_ejection_percent=100)
    assert all(e["tracked"] for e in farm.ejected().values())
    assert farm.outs[0][0].stats()["outlier_no_slot"] == 1
    farm.spread(2)
    assert all(e["ejected"] for e in farm.ejected().values())


def test_an_ejection_is_shared_by_engines_mapping_one_region(make_farm: MakeFarm) -> None:
    # Two outbound engines (a node's two workers) and a dead endpoint besides two live
    # ones; two errors in a row eject. Each worker's connect to it fails once: the two
    # failures count together, so it is ejected for both, and neither tries it again.
    farm = make_farm((200, 200), outs=2, dead=1, shared=True, consecutive_5xx=2,
                     interval_s=0.02, base_ejection_s=5.0, max_ejection_percent=100)
    dead = farm.dead[0]
    assert [farm.get(0)[0] for _ in range(3)] == [200, 200, 200]   # failed over once
    assert farm.ejected(1)[dead]["consecutive_5xx"] == 1             # seen by the other
    assert not farm.ejected(1)[dead]["ejected"]
    assert [farm.get(1)[0] for _ in range(3)] == [200, 200, 200]
    for out in (0, 1):
        entry = farm.ejected(out)[dead]
        assert entry["ejected"] and entry["ejections"] == 1, entry
    assert (farm.outs[0][0].stats()["outlier_ejections"]
            + farm.outs[1][0].stats()["outlier_ejections"]) == 1
    before = [farm.outs[k][0].stats()["upstream_failovers"] for k in (0, 1)]
    assert before == [1, 1]
    for out in (0, 1):
        assert farm.spread(6, out=out) == {"app0": 3, "app1": 3}
    assert [farm.outs[k][0].stats()["upstream_failovers"] for k in (0, 1)] == before


def test_a_kept_alive_client_leaves_an_endpoint_once_it_is_ejected(make_farm: MakeFarm) -> None:
    """Round robin keeps a client connection's endpoint from request to request; an
    ejection still takes it off that endpoint at its next request (Envoy balances each
    request, so an ejected host gets none)."""
    farm = make_farm((500, 200), consecutive_5xx=2, interval_s=0.02, base_ejection_s=30.0,
                     max_ejection_percent=100)
    answers = farm.kept_alive(8)
    assert answers[:2] == [(500, "app0")] * 2, answers      # round robin's first pick
    assert answers[2:] == [(200, "app1")] * 6, answers
    assert farm.endpoints[0][2].hits == 2
    assert farm.outs[0][0].stats()["http_rebalanced"] >= 1


def test_an_endpoint_whose_requests_time_out_is_ejected(make_farm: MakeFarm) -> None:
    """A try the route's timeout ends counts as the 504 Envoy counts for it: an app that
    hangs is ejected as one that answers 5xx is."""
    farm = make_farm((200, 0), consecutive_5xx=2, interval_s=0.02, base_ejection_s=30.0,
                     max_ejection_percent=100)
    t = fe.RouteTable()
    svc = t.add_service("demo/backend:http", SNI, [BACKEND_ID], farm.addresses(),
                        balancer="round-robin")
    t.set_outlier(svc, consecutive_5xx=2, interval_s=0.02, base_ejection_s=30.0,
                  max_ejection_percent=100)
    t.set_outbound_http(farm.outs[0][1].fileno(), client_ctx(farm.pki))
    t.add_host("backend", svc, 8080)
    t.add_route_match(t.add_route_set(svc), t.add_route_rule("demo/r#0", [(svc, 1)], timeout_s=0.1))
    farm.outs[0][0].install(t)
    answers = Counter(farm.get()[0] for _ in range(4))  # round robin: 2 each
    assert answers == {200: 2, 504: 2}, answers
    assert farm.ejected()[farm.port(1)]["ejected"]
    assert farm.spread(6) == {"app0": 6}


@pytest.mark.parametrize("where", ["app", "node"])
@pytest.mark.parametrize("leaves", [CLOSE, RESET], ids=["close", "reset"])
@pytest.mark.parametrize("detector", ["consecutive_5xx", "consecutive_gateway"])
def test_an_endpoint_leaving_requests_unanswered_is_ejected(make_farm: MakeFarm, where: str,
                                                           leaves: int, detector: str) -> None:
    """An endpoint that closes or resets the connection under a request costs the client
    a 502, which each detector counts (Envoy counts a reset before the response head as
    a 5xx and a gateway error): whether its app does it (its node answers 502 for it) or
    its node itself (the caller's node does)."""
    policy = {"consecutive_5xx": 0, "consecutive_gateway": 0, detector: 3}
    if where == "app":
        farm = make_farm((200, leaves), **policy, interval_s=0.02, base_ejection_s=30.0,
                         max_ejection_percent=100)
        bad, port = farm.endpoints[1][2], farm.port(1)
    else:
        farm = make_farm((200,), leaving=(leaves,), **policy, interval_s=0.02,
                         base_ejection_s=30.0, max_ejection_percent=100)
        bad, port = farm.leaving[0], farm.leaving[0].port
    said = {CLOSE: "upstream closed before responding\n", RESET: "upstream connection failed\n"}
    failed = (502, said[leaves])
    assert Counter(farm.get() for _ in range(4)) == {(200, "app0"): 2, failed: 2}  # round robin
    entry = farm.ejected()[port]
    assert not entry["ejected"], entry
    assert entry["consecutive_5xx"] == entry["consecutive_gateway_errors"] == 2, entry
    assert Counter(farm.get() for _ in range(2)) == {(200, "app0"): 1, failed: 1}
    entry = farm.ejected()[port]
    assert entry["ejected"] and entry["ejections"] == 1, entry
    assert farm.outs[0][0].stats()["outlier_ejections"] == 1
    # Ejected: the other endpoint takes every request.
    assert farm.spread(6) == {"app0": 6}
    assert bad.hits == 3


def test_a_shared_region_cannot_be_unmapped_under_its_engine(tmp_path: Path) -> None:
    """The engine keeps an export of the mapping it was given: closing the mmap while the
    engine may still touch it is refused (it would leave the engine pointing at nothing)."""
    path = tmp_path / "outlier.state"
    path.write_bytes(b"\0" * fe.shared_state_bytes(64))
    with path.open("r+b") as f:
        region = mmap.mmap(f.fileno(), 0)
    fe.shared_state_format(region, 64)
    node = Node()
    try:
        node.engine.share_state(region)
        with pytest.raises(BufferError):
            region.close()
    finally:
        node.stop()
