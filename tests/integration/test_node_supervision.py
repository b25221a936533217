"""A node under trouble: metrics and readiness follow a stopped process; a killed control is
restarted by supervisord while the workers keep serving their config."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mnharness import Node, http_get, wait_for

pytestmark = pytest.mark.timeout(60)


def scrape(node: Node) -> dict[str, list[Any]]:
    """Samples of /metrics by metric family name."""
    code, body = http_get(node.metrics_url)
    assert code == 200
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def process_up(node: Node) -> dict[str, float]:
    return {s.labels["process"]: s.value for s in scrape(node)["meshnode_process_up"]}


def test_metrics_report_every_process(node: Node) -> None:
    def all_up() -> str | None:
        code, body = http_get(node.metrics_url)
        text = body.decode()
        up = [re.search(rf'^meshnode_process_up{{[^}}]*process="{re.escape(name)}"[^}}]*}} 1\.0$',
                        text, re.MULTILINE) for name in node.names]
        return text if code == 200 and all(up) else None

    # Every process has beaten within the window right after up; a poll rather than one
    # scrape, so that a single late beat on a loaded machine is not a failure.
    text = wait_for(all_up, 10.0, "meshnode_process_up 1.0 for every process")
    assert "meshnode_bus_frames_total{" in text

    families = {family.name: family.samples
                for family in text_string_to_metric_families(text)}
    frames = {(s.labels["process"], s.labels["direction"]): s.value
              for s in families["meshnode_bus_frames"] if s.name == "meshnode_bus_frames_total"}
    assert {p for p, _ in frames} == set(node.names)
    assert frames[("bus", "in")] > 0
    versions = {s.labels["process"]: s.value for s in families["meshnode_config_version"]}
    assert set(versions) == {"control", *node.worker_names}


def test_ready_follows_a_stopped_process(node: Node) -> None:
    stopped = node.supervisorctl("stop", "ca")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    def not_ready() -> dict[str, Any] | None:
        code, doc = node.ready()
        return doc if code == 503 and "ca" in doc.get("not_ready", []) else None

    wait_for(not_ready, 15.0, "/ready to answer 503 naming ca")
    assert process_up(node)["ca"] == 0.0
    assert node.status()["ca"]["state"] == "STOPPED"

    started = node.supervisorctl("start", "ca")
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: node.ready()[0] == 200, 15.0, "/ready to answer 200 again")
    assert process_up(node)["ca"] == 1.0


def test_killed_control_restarts_and_workers_keep_their_config(
        node: Node, write_resources: Callable[..., Path]) -> None:
    before = node.status()
    version = before["control"]["config_version"]
    workers = {name: before[name]["pid"] for name in node.worker_names}
    assert all(before[name]["config_version"] == version for name in workers)
    old_control = before["control"]["pid"]

    os.kill(old_control, signal.SIGKILL)

    def restarted() -> bool:
        status = node.status()
        control = status["control"]
        # While control is gone and coming back, the workers serve on undisturbed.
        for name, pid in workers.items():
            assert status[name]["state"] == "RUNNING", status[name]
            assert status[name]["pid"] == pid, status[name]
            assert status[name]["config_version"] == version, status[name]
        return control["state"] == "RUNNING" and control["pid"] not in (None, old_control)

    wait_for(restarted, 20.0, "supervisord to restart control", interval_s=0.05)

    # The new control serves the persisted store...
    got = node.cli("get", "service", "frontend", "-n", "demo", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert node.status()["control"]["config_version"] == version

    # ...and the workers follow its new epoch: a fresh apply reaches both of them.
    new_version = node.apply(write_resources("orders"))
    assert new_version == version + 1
    status = node.wait_version(new_version)
    assert {name: status[name]["pid"] for name in workers} == workers


def test_worker_without_config_is_not_ready(node: Node) -> None:
    version = node.status()["control"]["config_version"]
    assert node.supervisorctl("stop", "control").returncode == 0
    restarted = node.supervisorctl("restart", "proxy:proxy-0")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr

    # A fresh worker with no control to sync from has no routes: the node is not ready.
    def proxy_not_ready() -> dict[str, Any] | None:
        code, doc = node.ready()
        return doc if code == 503 and "proxy-0" in doc.get("not_ready", []) else None

    wait_for(proxy_not_ready, 15.0, "/ready to answer 503 naming proxy-0")
    status = node.status()
    assert status["proxy-0"]["state"] == "RUNNING"
    assert status["proxy-0"]["healthy"] is False and status["proxy-0"]["config_version"] is None
    assert status["proxy-1"]["config_version"] == version  # the other worker serves on

    assert node.supervisorctl("start", "control").returncode == 0
    wait_for(lambda: node.ready()[0] == 200, 20.0, "/ready once proxy-0 has its config")
    assert node.status()["proxy-0"]["config_version"] == version
