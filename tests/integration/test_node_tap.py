"""`meshnode tap` and `meshnode top` on a real node with access logging off (meshnode.tap,
meshnode.cli_tap; fastpath Engine.set_tap): a tap shows the requests its filters match
and only those, ends by itself at --max or --duration, and writes nothing to access.log;
top ranks paths by count with their success rates.

One node (one worker, so that records come in order) serves every case; calls go
through its HTTP outbound listener, over mutual TLS to its own inbound port, to the
tests.integration.httpapps server.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import requests

from dataplanekit import worker_reports
from mnharness import CLI, Node, wait_for
from test_dataplane_http import BACKEND_ID, HOST
from test_node_accesslog import backend_node

from meshnode.ports import Ports

pytestmark = pytest.mark.timeout(60)

MESH = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {name: default}
spec:
  telemetry: {accessLog: false}
"""


class Tapped:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.port = Ports(node.port_base).outbound
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, method: str, path: str) -> int:
        return self.session.request(method, f"http://127.0.0.1:{self.port}{path}",
                                    headers={"Host": HOST}, timeout=20).status_code

    def start(self, command: str, *args: str) -> subprocess.Popen[str]:
        """`meshnode COMMAND ARGS`, once the worker matches its session (before that,
        requests pass untapped)."""
        before = set(self.taps())       # (an ended session may linger in a beat)
        proc = subprocess.Popen([*CLI, command, *args, "--runtime-dir",
                                 str(self.node.runtime_dir)], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: set(self.taps()) - before or proc.poll() is not None, 10.0,
                 "the worker matching the new tap session")
        return proc

    def taps(self) -> list[str]:
        return [t for report in worker_reports(self.node).values() for t in report.get("taps", ())]


@pytest.fixture(scope="module")
def tapped() -> Iterator[Tapped]:
    with backend_node(MESH) as (node, _):
        it = Tapped(node)
        wait_for(lambda: it.call("GET", "/warm") == 200, 15.0, "the node serving")
        yield it


def test_tap_shows_only_matching_requests_ends_at_max_and_logs_nothing(tapped: Tapped) -> None:
    began = time.monotonic()
    tap = tapped.start("tap", "svc", "backend", "-n", "demo", "--path", "/items/tap-",
                       "--method", "GET", "--principal", BACKEND_ID, "--max", "3",
                       "--duration", "30s", "-o", "json")
    assert tapped.call("POST", "/items/tap-post") == 200     # another method
    assert tapped.call("GET", "/other") == 200               # another path
    assert tapped.call("GET", "/items/tap-1") == 200         # two records: one per side
    assert tapped.call("GET", "/items/tap-2") == 200
    out, _ = tap.communicate(timeout=20)
    assert tap.returncode == 0 and time.monotonic() - began < 20   # --max, not --duration
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["method"], r["path"], r["reporter"]) for r in records] == [   # (the server
        ("GET", "/items/tap-1", "destination"), ("GET", "/items/tap-1", "source"),  # answers
        ("GET", "/items/tap-2", "destination")]                                     # first)
    assert all(r["response_code"] == 200 and "tap_only" not in r for r in records)
    assert records[1]["upstream_peer_uri_san"] == BACKEND_ID
    assert not (tapped.node.runtime_dir / "logs" / "access.log").read_text()


def test_tap_of_an_unknown_principal_shows_nothing_and_ends_at_its_duration(tapped: Tapped) -> None:
    began = time.monotonic()
    tap = tapped.start("tap", "--principal", "spiffe://cluster.local/ns/demo/sa/nobody",
                       "--duration", "2s")
    assert tapped.call("GET", "/items/unseen") == 200
    out, _ = tap.communicate(timeout=15)
    assert tap.returncode == 0 and out == ""
    assert 2 <= time.monotonic() - began < 10
    wait_for(lambda: not tapped.taps(), 5.0, "the worker ending the session by itself")


def test_a_request_drawn_by_a_tap_and_answered_after_it_ended_stays_out_of_access_log(
        tapped: Tapped) -> None:
    """Its records are the tap's alone (tap_only): with no session left, the worker
    shipped them unparsed, as the access log's, and access.log had them."""
    tap = tapped.start("tap", "--path", "/items/none", "--duration", "1s")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(tapped.call, "GET", "/slow/2000/10")   # past the session's end
        assert tap.communicate(timeout=15)[0] == ""
        assert slow.result(timeout=20) == 200
    # The ring is read in order: once a later request is tapped, the slow one's records
    # went by.
    barrier = tapped.start("tap", "--path", "/items/barrier", "--max", "1", "-o", "json")
    assert tapped.call("GET", "/items/barrier") == 200
    assert json.loads(barrier.communicate(timeout=15)[0])["path"] == "/items/barrier"
    assert not (tapped.node.runtime_dir / "logs" / "access.log").read_text()


def test_top_ranks_paths_by_count_with_their_success_rates(tapped: Tapped) -> None:
    top = tapped.start("top", "svc/backend", "--once", "--duration", "4s", "-o", "json")
    for path, times in (("/status/500", 2), ("/items/a", 4), ("/status/404", 3)):
        for _ in range(times):
            tapped.call("GET", path)
    out, _ = top.communicate(timeout=15)
    assert top.returncode == 0
    rows = json.loads(out)
    assert [(r["path"], r["count"], r["success_rate"]) for r in rows] == [
        ("/items/a", 4, 1.0), ("/status/404", 3, 1.0), ("/status/500", 2, 0.0)]
    assert {(r["source"], r["destination"], r["method"]) for r in rows} == {
        ("demo/backend", "demo/backend", "GET")}
    assert all(r["best_ms"] <= r["last_ms"] <= r["worst_ms"] for r in rows)
