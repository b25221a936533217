"""Rollouts through a running node (meshnode.rollout): a good canary promoted step by step,
one answering 5xx and one answering slowly rolled back, pause, resume and abort by hand,
and a control killed with SIGKILL mid-rollout resuming at its step.

Why: the controller decides from the node's own figures (the workers' health beats),
writes its HTTPRoute through the store and keeps its state on disk; only a real node
shows the three working together. One node serves every case (module-scoped): five
target Services, each with a stable (v1) and a canary (v2) Service, whose workloads are
small apps of this file that answer well, with 500s or slowly. Requests come from a
paced client through the node's outbound listener for the case's target only; the
rollouts check every second, so each case takes a few seconds.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataplanekit import certs_issued
from mnharness import WORKERS, Node, free_port_base, http_get, wait_for

pytestmark = pytest.mark.timeout(60)

BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"
PORT = 8080
SLOW_S = 0.3
TARGETS = {"good": "ok", "bad": "error", "slow": "slow", "hold": "ok", "kill": "ok"}
SERVICE = """\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  selector: {selector}
  ports: [{{name: http, port: 8080, protocol: HTTP}}]
"""
WORKLOAD = """\
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: demo}}
spec:
  address: 127.0.0.1
  ports: {{http: {port}}}
  labels: {{app: {app}, version: {version}}}
  serviceAccount: backend
"""
ROLLOUT = """\
apiVersion: meshnode.io/v1alpha1
kind: Rollout
metadata: {{name: {name}, namespace: demo}}
spec:
  targetRef: {{kind: Service, name: {name}}}
  service: {{port: 8080}}
  stable: {{name: {name}-v1}}
  canary: {{name: {name}-v2}}
  analysis:
    interval: 1s
    threshold: {threshold}
    stepWeights: {steps}
    minRequests: 3
    metrics:
    - name: request-success-rate
      thresholdRange: {{min: 99}}
    - name: request-duration
      thresholdRange: {{max: 250}}
      interval: 2s
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "slow":
            time.sleep(SLOW_S)
        status = 500 if mode == "error" else 200
        body = f"{mode}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _app(mode: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.mode = mode  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server


def _config(apps: dict[str, ThreadingHTTPServer]) -> str:
    docs = []
    for target, mode in TARGETS.items():
        docs.append(SERVICE.format(name=target, selector=f"{{app: {target}}}"))
        for version, app in (("v1", apps["ok"]), ("v2", apps[mode])):
            docs.append(SERVICE.format(name=f"{target}-{version}",
                                       selector=f"{{app: {target}, version: {version}}}"))
            docs.append(WORKLOAD.format(name=f"{target}-{version}", port=app.server_address[1],
                                        app=target, version=version))
    return "---\n".join(docs)


class Load:
    """Paced clients of one target Service through the node, until stopped (several, so
    that a slow canary still answers minRequests an interval)."""

    def __init__(self, node: Node, target: str, clients: int = 3) -> None:
        self.node, self.target = node, target
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.node.port_base + 1, timeout=10)
        while not self._stop.wait(0.05):
            try:
                conn.request("GET", "/", headers={"Host": f"{self.target}.demo:{PORT}"})
                resp = conn.getresponse()
                resp.read()
                self.statuses.append(resp.status)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.node.port_base + 1, timeout=10)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@pytest.fixture(scope="module")
def rollout_node() -> Iterator[Node]:
    apps = {mode: _app(mode) for mode in ("ok", "error", "slow")}
    workdir = Path(tempfile.mkdtemp(prefix="mn-ro-", dir="/tmp"))
    node = Node(workdir / "node", free_port_base(), WORKERS)
    node.runtime_dir.mkdir()
    (workdir / "config").mkdir()
    (workdir / "config" / "mesh.yaml").write_text(_config(apps))
    try:
        result = node.up("--config", str(workdir / "config"))
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        wait_for(lambda: certs_issued(node, BACKEND_ID), 20, "workers holding the certificate")
        yield node
    except BaseException:
        print(f"\n=== logs of node in {node.runtime_dir}\n{node.log_tails(40)}")
        raise
    finally:
        node.down()
        for app in apps.values():
            app.shutdown()
            app.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


def apply_rollout(node: Node, name: str, steps: list[int], threshold: int = 2) -> None:
    path = node.runtime_dir.parent / f"rollout-{name}.yaml"
    path.write_text(ROLLOUT.format(name=name, steps=steps, threshold=threshold))
    node.apply(path)


def rollout(node: Node, name: str, action: str = "status") -> dict[str, Any]:
    result = node.cli("rollout", action, name, "-n", "demo", "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_phase(node: Node, name: str, phase: str, timeout_s: float = 15) -> dict[str, Any]:
    return wait_for(lambda: (lambda s: s if s["phase"] == phase else None)(rollout(node, name)),
                    timeout_s, f"rollout {name} {phase}", interval_s=0.2)


def route_weights(node: Node, name: str) -> list[int]:
    result = node.cli("get", "httproute", f"rollout-{name}", "-n", "demo", "-o", "yaml")
    assert result.returncode == 0, result.stderr
    route = yaml.safe_load(result.stdout)
    assert route["metadata"]["labels"] == {"meshnode.io/rollout": name}
    return [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]]


def metric(node: Node, family: str, rollout_label: str) -> float | None:
    status, body = http_get(node.metrics_url)
    for line in body.decode().splitlines():
        if line.startswith(family + "{") and f'rollout="{rollout_label}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_good_canary_is_promoted_step_by_step(rollout_node: Node) -> None:
    load = Load(rollout_node, "good")
    try:
        apply_rollout(rollout_node, "good", [20, 50])
        done = wait_phase(rollout_node, "good", "Succeeded")
    finally:
        load.stop()
    advanced = [e["message"] for e in done["events"] if e["reason"] == "Advanced"]
    assert [m.split(" weight ")[1].split(" ")[0] for m in advanced] == ["20", "50"], advanced
    assert "success rate 100.00%" in advanced[1], advanced
    assert (done["canaryWeight"], done["stable"], done["failedChecks"]) == (100, "good-v2", 0), \
        done["events"]
    assert done["conditions"][0]["type"] == "Promoted"
    assert (done["conditions"][0]["status"], done["conditions"][0]["reason"]) == ("True", "Succeeded")
    assert route_weights(rollout_node, "good") == [0, 100]
    shown = yaml.safe_load(rollout_node.cli("get", "rollout", "good", "-n", "demo", "-o", "yaml").stdout)
    assert shown["status"]["phase"] == "Succeeded" and shown["spec"]["canary"] == {"name": "good-v2"}
    wait_for(lambda: metric(rollout_node, "meshnode_rollout_status", "demo/good") == 1.0, 5,
             "meshnode_rollout_status 1")
    assert metric(rollout_node, "meshnode_rollout_weight", "demo/good") == 100.0
    # A user's route on the rolled-out Service is refused: it would take its requests.
    path = rollout_node.runtime_dir.parent / "user-route.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "mine", "namespace": "demo"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "good"}],
                 "rules": [{"backendRefs": [{"name": "good-v1", "port": PORT}]}]}}))
    refused = rollout_node.cli("apply", "-f", str(path))
    assert refused.returncode == 78 and "is rolled out by Rollout demo/good" in refused.stderr


@pytest.mark.parametrize("target,why", [("bad", "success rate 0.00%"), ("slow", "p99 ")])
def test_a_bad_canary_is_rolled_back(rollout_node: Node, target: str, why: str) -> None:
    load = Load(rollout_node, target)
    try:
        apply_rollout(rollout_node, target, [50, 100], threshold=2)
        failed = wait_phase(rollout_node, target, "Failed")
    finally:
        load.stop()
    assert (failed["canaryWeight"], failed["failedChecks"], failed["stable"]) == (0, 2, f"{target}-v1")
    halted = [e["message"] for e in failed["events"] if e["reason"] == "Halted"]
    # The first check after a step may find the canary not called yet (the route reaches
    # the workers, and their figures control, within a second): that fails it too.
    assert len(halted) == 2 and why in halted[-1], halted
    assert all(why in m or "no values found" in m for m in halted), halted
    assert failed["conditions"][0]["status"] == "False"
    assert route_weights(rollout_node, target) == [100, 0]
    wait_for(lambda: metric(rollout_node, "meshnode_rollout_status", f"demo/{target}") == 2.0,
             5, "meshnode_rollout_status 2")


def test_a_rollout_paused_holds_its_weight_resumes_and_is_aborted(rollout_node: Node) -> None:
    load = Load(rollout_node, "hold")
    try:
        # threshold 5: a loaded machine's late beat may fail a check or two (too few
        # requests seen), which must not end the rollout before the test has paused it.
        apply_rollout(rollout_node, "hold", [30, 40, 50, 60, 70, 80, 90], threshold=5)
        wait_for(lambda: rollout(rollout_node, "hold")["canaryWeight"] >= 40, 10, "weight 40")
        paused = rollout(rollout_node, "hold", "pause")
        assert paused["paused"] and paused["conditions"][0]["reason"] == "Paused"
        time.sleep(2.5)  # two intervals and more: nothing may move
        assert rollout(rollout_node, "hold")["canaryWeight"] == paused["canaryWeight"]
        rollout(rollout_node, "hold", "resume")
        wait_for(lambda: rollout(rollout_node, "hold")["canaryWeight"] > paused["canaryWeight"], 10,
                 "the weight moving on")
        aborted = rollout(rollout_node, "hold", "abort")
    finally:
        load.stop()
    assert (aborted["phase"], aborted["canaryWeight"]) == ("Failed", 0)
    assert aborted["events"][-1]["reason"] == "Aborted"
    assert route_weights(rollout_node, "hold") == [100, 0]
    again = rollout_node.cli("rollout", "promote", "hold", "-n", "demo")
    assert again.returncode != 0 and "only a rollout under way" in again.stderr


def test_a_control_killed_mid_rollout_resumes_at_its_step(rollout_node: Node) -> None:
    load = Load(rollout_node, "kill")
    try:
        apply_rollout(rollout_node, "kill", [20, 40, 60, 80], threshold=5)
        wait_for(lambda: rollout(rollout_node, "kill")["canaryWeight"] >= 40, 10, "weight 40")
        pid = rollout_node.status()["control"]["pid"]
        os.kill(pid, signal.SIGKILL)
        at_kill = json.loads((rollout_node.runtime_dir / "state" / "rollouts" / "demo.kill.json")
                             .read_text())
        wait_for(lambda: rollout_node.status()["control"].get("pid") not in (None, pid), 15,
                 "control restarted")
        resumed = rollout(rollout_node, "kill")
        assert resumed["canaryWeight"] >= at_kill["weight"] >= 40
        assert any(e["reason"] == "Resumed" for e in resumed["events"])
        done = wait_phase(rollout_node, "kill", "Succeeded", 20)
    finally:
        load.stop()
    weights = [int(e["message"].split(" weight ")[1].split(" ")[0])
               for e in done["events"] if e["reason"] == "Advanced"]
    assert weights == [20, 40, 60, 80], weights  # no step again from 0, none skipped
