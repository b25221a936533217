"""control and telemetry, started by hand on one bus, against what a hostile or broken
peer sends them: health beats whose request figures are garbled, tap records and tap
requests of the wrong shape, and admin requests that a web page would make through DNS
rebinding.

Why: a beat is read on each process's one loop (control folds a worker's figures into
its rollouts' totals, telemetry samples them every second), so a figure of the wrong
shape that raised there ended the process; it must be dropped and counted. The admin
port answers on loopback, which a page whose name was rebound to 127.0.0.1 reaches as
its own origin: the port must refuse a Host that is not a loopback name or an address.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from bus.endpoints import Endpoints
from bus.errors import RemoteError
from bus.pubsub import Publisher
from bus.request import Client
from meshnode.config.load import DEFAULT_CONFIG
from mnharness import ByHand, Node, Started, free_port_base, http_get, wait_for

pytestmark = pytest.mark.timeout(60)

VERSIONS = "".join(f"""\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: backend-{v}, namespace: demo}}
spec:
  selector: {{app: backend, version: {v}}}
  ports: [{{name: http, port: 8080, protocol: HTTP}}]
---
""" for v in ("v1", "v2"))
ROLLOUT = VERSIONS + """\
apiVersion: meshnode.io/v1alpha1
kind: Rollout
metadata: {name: backend, namespace: demo}
spec:
  targetRef: {kind: Service, name: backend}
  service: {port: 8080}
  stable: {name: backend-v1}
  canary: {name: backend-v2}
  analysis: {interval: 1h}
"""
# A figure of the rollout's canary traffic (what control keeps), each field of which
# the cases below garble in turn.
CANARY = {"reporter": "source", "route": "demo/rollout-backend",
          "destination_service": "backend-v2.demo.svc.cluster.local",
          "codes": {"200": 3}, "latency": {"200": {"4": 3}}}
GARBLED = [5, "figures", [7], [{**CANARY, "codes": [200]}], [{**CANARY, "codes": {"200": "3"}}],
           [{**CANARY, "response_flags": ["OM"]}], [{**CANARY, "latency": {"200": [3]}}],
           [{**CANARY, "latency": ["200"]}], [{**CANARY, "request_bytes": {"200": 3}}],
           [{**CANARY, "tcp": {"opened": "1"}}]]


class Processes:
    def __init__(self, node: Node, hand: ByHand, control: Started, telemetry: Started) -> None:
        self.node, self.hand, self.control, self.telemetry = node, hand, control, telemetry


@pytest.fixture(scope="module")
def procs() -> Iterator[Processes]:
    work = Path(tempfile.mkdtemp(prefix="mn-hostile-", dir="/tmp"))
    node = Node(work / "node", free_port_base(), workers=0)
    node.runtime_dir.mkdir()
    hand = ByHand(node)
    try:
        hand.start("meshnode.broker").wait_event("bus.started")
        shutil.copytree(DEFAULT_CONFIG, work / "config")
        (work / "config" / "rollout.yaml").write_text(ROLLOUT)
        control = hand.start("meshnode.control", "--config", str(work / "config"))
        control.wait_event("process.started")
        telemetry = hand.start("meshnode.telemetry", "--expect", "bus,control,telemetry")
        telemetry.wait_event("process.started")
        yield Processes(node, hand, control, telemetry)
    finally:
        for proc in reversed(hand.started):
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def dropped(node: Node, process: str, reason: str = "bad-health") -> int:
    """`process`'s drops for `reason` as its latest beat, in telemetry's /stats, says."""
    code, body = http_get(f"{node.admin_url}/stats")
    assert code == 200, body
    return int(json.loads(body)[process].get("bus", {}).get("dropped", {}).get(reason, 0))


def test_garbled_request_figures_in_a_beat_are_dropped_and_counted(procs: Processes) -> None:
    ctx = zmq.Context()
    publisher = Publisher(ctx, Endpoints.for_runtime_dir(procs.node.runtime_dir),
                          node="by-hand", src="proxy-7")
    try:
        time.sleep(0.3)  # a PUB socket's first frames go before it has joined: wait
        for requests in GARBLED:
            publisher.publish("health.proxy-7", "health", {"process": "proxy-7", "pid": 1,
                                                          "state": "ok", "requests": requests})
        # Not request figures: an upstream's connections that are not a count are skipped.
        publisher.publish("health.proxy-7", "health", {
            "process": "proxy-7", "pid": 1, "state": "ok", "requests": [],
            "upstreams": {"demo/backend:8080": {"connections": "many"}}})
        wait_for(lambda: dropped(procs.node, "telemetry") >= len(GARBLED)
                 and dropped(procs.node, "control") >= len(GARBLED), 10.0,
                 "control and telemetry to count the garbled beats")
        time.sleep(1.2)  # telemetry's sample of the figures, once a second
    finally:
        publisher.close()
        ctx.destroy(linger=0)
    for proc in (procs.control, procs.telemetry):
        assert proc.popen.poll() is None, proc.lines[-5:]
    assert http_get(procs.node.metrics_url)[0] == 200
    assert http_get(f"{procs.node.admin_url}/dashboard.json")[0] == 200


def test_garbled_tap_records_and_requests_are_refused_and_counted(procs: Processes) -> None:
    """A worker's batch whose tap records name a session by a list raised on
    telemetry's loop (an unhashable key) and ended it; so did a poll naming one so."""
    ctx = zmq.Context()
    endpoints = Endpoints.for_runtime_dir(procs.node.runtime_dir)
    publisher = Publisher(ctx, endpoints, node="by-hand", src="proxy-7")
    client = Client(ctx, endpoints, node="by-hand", src="cli-7")
    garbled = [[[[["s"]], {}]], [[[{}], {}]], [[[7], {}]], [["s", {}]], "tapped"]
    try:
        sid = client.call("telemetry", "tap.start", {"duration_s": 30})["session"]
        time.sleep(0.3)  # a PUB socket's first frames go before it has joined: wait
        for tapped in garbled:
            publisher.publish("access.proxy-7", "access",
                              {"lines": b"", "count": 0, "sent": 0, "tapped": tapped})
        wait_for(lambda: dropped(procs.node, "telemetry", "bad-tap") >= len(garbled), 10.0,
                 "telemetry to count the garbled tap records")
        for body in ({"session": [sid]}, {"session": {"id": sid}}, [sid]):
            with pytest.raises(RemoteError, match="no such tap session"):
                client.call("telemetry", "tap.poll", body)
        assert client.call("telemetry", "tap.poll", {"session": sid})["ended"] is None
        client.call("telemetry", "tap.stop", {"session": sid})
    finally:
        client.close()
        publisher.close()
        ctx.destroy(linger=0)
    assert procs.telemetry.popen.poll() is None, procs.telemetry.lines[-5:]


def admin_get(node: Node, path: str, host: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", node.port_base, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["rebound.example.com", "rebound.example.com:{port}",
                                  "127.0.0.1.nip.io:{port}", "localhost.example:{port}", ""])
def test_the_admin_port_refuses_a_host_that_is_not_loopback_or_an_address(
        procs: Processes, host: str) -> None:
    for path in ("/config_dump", "/dashboard.json", "/dashboard", "/stats"):
        assert admin_get(procs.node, path, host.format(port=procs.node.port_base)) == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost",
                                  "[::1]:{port}", "10.1.2.3:{port}", None])
def test_the_admin_port_answers_a_loopback_name_or_an_address(
        procs: Processes, host: str | None) -> None:
    assert admin_get(procs.node, "/config_dump",
                     host and host.format(port=procs.node.port_base)) == 200
