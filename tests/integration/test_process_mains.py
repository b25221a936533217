"""The process mains on their own, as supervisord runs them: usage, JSON-lines logs, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from typing import Callable, Iterator

import pytest

from mnharness import ByHand, Node, Started, http_get, wait_for

pytestmark = pytest.mark.timeout(60)

MAINS = ["meshnode.broker", "meshnode.control", "meshnode.ca", "meshnode.telemetry",
         "meshnode.proxy"]


@pytest.mark.parametrize("module", MAINS)
def test_main_prints_usage(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {module} ")
    for option in ("--runtime-dir", "--node", "--port-base", "--log-level"):
        assert option in result.stdout


@pytest.fixture
def by_hand(make_node: Callable[..., Node]) -> Iterator[ByHand]:
    # make_node's teardown runs after this one and checks nothing of the dir is left.
    hand = ByHand(make_node())
    yield hand
    for proc in reversed(hand.started):
        proc.kill()


def check_json_lines(proc: Started, process: str) -> None:
    entries = proc.entries()
    assert entries, f"{proc.module} logged nothing"
    for entry in entries:
        assert {"event", "process", "level", "ts"} <= set(entry), entry
        assert entry["process"] == process


def test_broker_and_ca_by_hand_log_json_and_stop_on_sigterm(
        by_hand: ByHand) -> None:
    bus = by_hand.start("meshnode.broker")
    bus.wait_event("bus.started")
    ca = by_hand.start("meshnode.ca")
    started = ca.wait_event("process.started")
    assert started["node"] == "by-hand" and started["pid"] == ca.popen.pid

    assert ca.terminate() == 0
    assert ca.entries()[-1]["event"] == "process.stopped"
    check_json_lines(ca, "ca")

    assert bus.terminate() == 0
    assert bus.entries()[-1]["event"] == "bus.stopped"
    check_json_lines(bus, "bus")


def test_telemetry_by_hand_is_ready_when_what_it_expects_is_healthy(
        by_hand: ByHand) -> None:
    node = by_hand.node
    bus = by_hand.start("meshnode.broker")
    bus.wait_event("bus.started")
    telemetry = by_hand.start("meshnode.telemetry", "--expect", "bus,ca,telemetry")
    telemetry.wait_event("process.started")
    bound = {e["name"]: e["port"] for e in telemetry.entries() if e["event"] == "listener.bound"}
    assert bound == {"admin": node.port_base, "metrics": node.port_base + 90}

    # ca has not been started: the node is not ready, and /ready says why.
    code, doc = node.ready()
    assert code == 503 and "ca" in doc["not_ready"], (code, doc)

    ca = by_hand.start("meshnode.ca")
    wait_for(lambda: node.ready()[0] == 200, 30.0, "/ready once ca beats")
    assert http_get(f"{node.admin_url}/live")[0] == 200

    for proc, name in ((ca, "ca"), (telemetry, "telemetry"), (bus, "bus")):
        assert proc.terminate() == 0, proc.lines
        check_json_lines(proc, name)
