"""A node's life through the CLI: up, status, ports, logs, down; a second up and a bad config refused."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path
from typing import Callable

import pytest

from mnharness import Node, cmdline_of, http_get, pids_of

pytestmark = pytest.mark.timeout(60)

# The module supervisord runs for each process of a two-worker node.
MODULES = {"bus": "meshnode.broker", "control": "meshnode.control", "ca": "meshnode.ca",
           "telemetry": "meshnode.telemetry", "proxy-0": "meshnode.proxy",
           "proxy-1": "meshnode.proxy"}


def test_up_starts_every_process_on_the_moved_ports(make_node: Callable[..., Node]) -> None:
    node = make_node()
    result = node.up()
    assert result.returncode == 0, result.stderr
    assert "ready" in result.stdout
    assert f"http://127.0.0.1:{node.port_base}/ready" in result.stdout

    status = node.status()
    assert sorted(status) == sorted(MODULES)
    for name, module in MODULES.items():
        proc = status[name]
        assert proc["state"] == "RUNNING", proc
        assert proc["healthy"] is True, proc
        assert isinstance(proc["pid"], int) and proc["pid"] > 0, proc
        # The pid is the real process supervisord runs for this node, not a stale number.
        cmdline = cmdline_of(proc["pid"])
        assert module in cmdline and str(node.runtime_dir) in cmdline, (name, cmdline)
        assert cmdline[cmdline.index("--port-base") + 1] == str(node.port_base)
    # Ready means every worker runs the config control holds, not merely that it beats.
    for name in ("proxy-0", "proxy-1"):
        assert status[name]["config_version"] == status["control"]["config_version"] == 1

    # The whole port block moved with --port-base: admin at +0, metrics at +90.
    assert node.port_base != 15000
    code, body = http_get(f"{node.admin_url}/ready")
    assert code == 200, body
    assert json.loads(body) == {"ready": True}
    code, body = http_get(node.metrics_url)
    assert code == 200
    assert b"meshnode_process_up" in body

    # Anyone who reaches the bus or supervisord controls the node: owner only.
    rd = node.runtime_dir
    assert stat.S_IMODE((rd / "bus").stat().st_mode) == 0o700
    sock = rd / "supervisor.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0, oct(sock.stat().st_mode)


def test_two_nodes_side_by_side_are_independent(make_node: Callable[..., Node],
                                                write_resources: Callable[..., Path]) -> None:
    first, second = make_node(), make_node()
    for node in (first, second):
        result = node.up()
        assert result.returncode == 0, result.stderr
    for node in (first, second):
        assert node.ready()[0] == 200
    before = second.versions()
    start = first.versions()["control"]

    version = first.apply(write_resources("orders"))
    assert version == start + 1
    first.wait_version(version)

    assert second.versions() == before
    result = second.cli("get", "service", "orders", "-n", "demo")
    assert result.returncode != 0
    assert "not found" in result.stderr
    assert first.cli("get", "service", "orders", "-n", "demo").returncode == 0


def test_down_leaves_nothing_running(node: Node) -> None:
    assert pids_of(node.runtime_dir)  # the scan sees the node while it runs

    result = node.down()
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert pids_of(node.runtime_dir) == []
    assert http_get(f"{node.admin_url}/ready")[0] == 0  # nothing answers any more

    again = node.down()
    assert again.returncode == 0, again.stderr
    assert "no node running" in again.stdout

    status = node.cli("status")
    assert status.returncode == 3
    assert "no node running" in status.stderr
    get = node.cli("get", "services")
    assert get.returncode == 3


def test_second_up_on_a_running_node_is_refused(node: Node, make_node: Callable[..., Node]) -> None:
    supervisord_pid = (node.runtime_dir / "supervisord.pid").read_text().strip()
    pids = {name: p["pid"] for name, p in node.status().items()}
    other_ports = make_node()  # a free block, so the refusal is not about ports

    for base in (node.port_base, other_ports.port_base):
        result = node.cli("up", "--port-base", str(base), "--workers", "2", "--timeout", "20")
        assert result.returncode == 1
        assert "already running" in result.stderr
        assert f"meshnode down --runtime-dir {node.runtime_dir}" in result.stderr

    # The running node is untouched.
    assert (node.runtime_dir / "supervisord.pid").read_text().strip() == supervisord_pid
    assert {name: p["pid"] for name, p in node.status().items()} == pids
    assert node.ready()[0] == 200


def test_up_with_a_broken_config_dir_starts_nothing(make_node: Callable[..., Node],
                                                   write_resources: Callable[..., Path]) -> None:
    node = make_node()
    bad = write_resources("orders")
    bad.write_text(bad.read_text().replace("  selector:", "  colour: blue\n  selector:", 1))

    result = node.up("--config", str(bad.parent))
    assert result.returncode == 78, result.stderr
    assert str(bad) in result.stderr
    assert "Service demo/orders" in result.stderr
    assert "spec.colour" in result.stderr
    assert not (node.runtime_dir / "supervisord.pid").exists()
    assert not (node.runtime_dir / "supervisord.conf").exists()
    assert pids_of(node.runtime_dir) == []


def test_up_with_a_config_dir_seeds_control(make_node: Callable[..., Node],
                                            write_resources: Callable[..., Path]) -> None:
    node = make_node()
    seed = write_resources("orders")

    result = node.up("--config", str(seed.parent))
    assert result.returncode == 0, result.stderr

    listed = node.cli("get", "services", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    names = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in json.loads(listed.stdout)]
    assert names == [("demo", "orders")]  # the seed replaces the embedded example mesh


def test_up_refuses_a_port_in_use(make_node: Callable[..., Node]) -> None:
    node = make_node()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", node.port_base + 90))
        sock.listen()
        result = node.up()
    assert result.returncode == 1
    assert f"port {node.port_base + 90} (metrics) is in use" in result.stderr
    assert not (node.runtime_dir / "supervisord.pid").exists()
    assert pids_of(node.runtime_dir) == []


def test_logs_print_json_lines(node: Node) -> None:
    result = node.cli("logs", "control", "-n", "0")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert entries
    assert all(e["process"] == "control" and "event" in e for e in entries)
    loaded = [e for e in entries if e["event"] == "config.loaded"]
    assert loaded and loaded[0]["version"] >= 1

    worker = node.cli("logs", "proxy-1")
    assert worker.returncode == 0, worker.stderr
    assert any(json.loads(line)["event"] == "config.installed"
               for line in worker.stdout.splitlines())


def test_logs_of_an_unknown_process_lists_the_known_ones(node: Node) -> None:
    result = node.cli("logs", "nosuch")
    assert result.returncode == 1
    assert "nosuch" in result.stderr
    known = result.stderr.split("known:", 1)[1]
    for name in ("bus", "control", "ca", "telemetry", "proxy-0", "proxy-1", "supervisord"):
        assert name in known
