"""`meshnode check` and `meshnode proxy-config` against one real node (meshnode.cli_check,
meshnode.cli_proxyconfig).

Why: issue 13 asks for linkerd check's and istioctl proxy-config's answers from a
node's own figures: a check that names what is wrong (config accepted yet doing
nothing, a port taken, a runtime dir others can read) with a fix and a failing exit
code, and a view of what a worker runs (its listeners, routes and endpoints with their
ejection). Each case reads the CLI's JSON as a user's script would.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from bus.endpoints import Endpoints
from dataplanekit import backend_node, send, settle
from mnharness import Node, free_port_base, run_cli, wait_for

pytestmark = pytest.mark.timeout(60)

PROBLEMS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 8080}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      backendRefs: [{name: nowhere, port: 8080}]
    - backendRefs: [{name: backend, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v9, labels: {version: v9}}
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s,
                       maxEjectionPercent: 100}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ghost, namespace: demo}
spec:
  selector: {matchLabels: {app: ghost}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [demo]}}]}]
"""


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with backend_node() as n:
        yield n


def check(rd: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("check", "--runtime-dir", str(rd), "-o", "json", *args)
    return result.returncode, json.loads(result.stdout)


def failures(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in doc["checks"] if c["status"] != "ok"}


def apply_problems(node: Node) -> None:
    """Apply PROBLEMS (again: unchanged when the other test did)."""
    path = node.runtime_dir.parent / "problems.yaml"
    path.write_text(PROBLEMS)
    result = node.cli("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr


def proxy_config(node: Node, *args: str) -> dict[str, Any]:
    result = node.cli("proxy-config", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_passes_on_a_healthy_node_then_names_config_that_does_nothing(node: Node) -> None:
    code, doc = check(node.runtime_dir)
    assert (code, doc["passed"], failures(doc)) == (0, True, {})
    names = {c["check"] for c in doc["checks"]}
    assert {"python", "openssl", "pyzmq", "clock", "runtime dir", "proxy-0",
            "root certificate"} <= names
    apply_problems(node)
    code, doc = check(node.runtime_dir)
    found = failures(doc)
    assert code == 1 and not doc["passed"]
    route = found["HTTPRoute demo/split"]
    assert route["status"] == "fail" and "demo/nowhere" in route["message"] and route["fix"]
    subset = found["DestinationRule demo/backend"]
    assert subset["status"] == "fail" and "subset v9" in subset["message"]
    assert "subset v1" not in subset["message"]
    policy = found["AuthorizationPolicy demo/ghost"]
    assert policy["status"] == "warn" and "no workload" in policy["message"] and policy["fix"]
    table = run_cli("check", "--runtime-dir", str(node.runtime_dir))
    assert table.returncode == 1 and "[FAIL] HTTPRoute demo/split" in table.stdout
    assert "fix: " in table.stdout


def test_preflight_names_a_taken_port_and_a_runtime_dir_others_can_read() -> None:
    with tempfile.TemporaryDirectory(prefix="mn-ck-", dir="/tmp") as tmp:
        preflight_problems(Path(tmp))


def preflight_problems(rd: Path) -> None:
    base = free_port_base()
    bus_dir = Endpoints.for_runtime_dir(rd).dir
    bus_dir.mkdir(parents=True)
    os.chmod(bus_dir, 0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 90))
        taken.listen()
        code, doc = check(rd, "--port-base", str(base))
    found = failures(doc)
    assert code == 1
    assert found["ports"]["status"] == "fail" and f"{base + 90} (metrics)" in found["ports"]["message"]
    assert found["runtime dir"]["status"] == "fail" and "mode 755" in found["runtime dir"]["message"]
    assert found["node"]["status"] == "warn"  # no node: only preflight
    os.chmod(bus_dir, 0o700)
    code, doc = check(rd, "--port-base", str(free_port_base()))
    assert (code, set(failures(doc))) == (0, {"node"})


def test_proxy_config_shows_listeners_routes_and_an_ejected_endpoint(node: Node) -> None:
    """PROBLEMS' route and outlier detection (three 5xx in a row eject) in force."""
    apply_problems(node)
    view = proxy_config(node, "proxy-0", "all")
    assert view["config_version"] == view["control_version"]
    bound = {(s["direction"], s["protocol"], s["port"]) for s in view["listeners"] if s["bound"]}
    assert {("outbound", "HTTP", node.port_base + 1), ("inbound", "mTLS", node.port_base + 6)} <= bound
    routes = [(r["match"], r["route"], r["backends"]) for r in view["routes"]
              if r["service"] == "demo/backend:8080"]
    assert routes == [("PathPrefix /v2", "demo/split#0", ["(unresolved) w1"]),
                      ("PathPrefix /", "demo/split#1", ["demo/backend:8080 w1"])]
    (endpoint,) = view["endpoints"]
    assert (endpoint["workload"], endpoint["health"]) == ("demo/backend-v1", "healthy")
    assert send(node.port_base + 1, "/status/500", 3) == [500] * 3
    settle(node)

    def ejected() -> dict[str, Any] | None:
        (ep,) = proxy_config(node, "0", "endpoints")["endpoints"]
        return ep if ep["health"].startswith("EJECTED") else None
    ep = wait_for(ejected, 10.0, "the endpoint shown ejected")
    assert ep["ejections"] == 1
    table = node.cli("proxy-config", "listeners")
    assert table.returncode == 0 and f"127.0.0.1:{node.port_base + 1}" in table.stdout
    bad = node.cli("proxy-config", "proxy-7")
    assert bad.returncode == 1 and "proxy-0" in bad.stderr
