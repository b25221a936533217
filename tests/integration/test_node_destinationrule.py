"""A DestinationRule through a running node: Istio's YAML applied unchanged, installed
by every worker (each compiles the balancer into its engine's table, or the version is
not acknowledged), shown by get and config_dump, refused by name, deleted."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Callable

import pytest
import yaml

from httpapps import HTTPApp
from mnharness import Node, http_get, parse_version, wait_for
from test_trust_domain import app, config_dir, through_the_mesh  # noqa: F401 (app: a fixture)

pytestmark = pytest.mark.timeout(90)

RULE = """\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: backend
  namespace: demo
spec:
  host: backend.demo.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 8080
      loadBalancer:
        simple: LEAST_REQUEST
"""


def balancers(node: Node) -> dict[str, str]:
    code, body = http_get(f"{node.admin_url}/config_dump")
    assert code == 200
    return {f"{s['name']}:{p['port']}": p["balancer"]
            for s in json.loads(body)["services"] for p in s["ports"]}


def test_a_destination_rule_is_installed_shown_refused_by_name_and_deleted(
        node: Node, write_resources: Callable[..., Path]) -> None:
    assert balancers(node)["backend:8080"] == "p2c-ewma"
    version = node.apply(write_resources(text=RULE, filename="dr.yaml"))
    node.wait_version(version)          # every worker installed it
    assert balancers(node)["backend:8080"] == "least-request"

    got = node.cli("get", "dr", "backend", "-n", "demo", "-o", "yaml")
    assert got.returncode == 0, got.stderr
    shown = yaml.safe_load(got.stdout)
    assert shown["metadata"].pop("creationTimestamp")      # the store's, as Kubernetes shows it
    assert shown == yaml.safe_load(RULE)

    bad = write_resources(text=RULE.replace("ROUND_ROBIN", "PASSTHROUGH"), filename="bad.yaml")
    refused = node.cli("apply", "-f", str(bad))
    assert refused.returncode == 78, (refused.stdout, refused.stderr)
    assert (f"{bad}: DestinationRule demo/backend: spec.trafficPolicy.loadBalancer.simple: "
            "PASSTHROUGH") in refused.stderr
    subsets = write_resources(text=RULE + "  subsets: [{name: v1, labels: {version: v1}, "
                                          "trafficPolicy: {}}]\n", filename="subsets.yaml")
    refused = node.cli("apply", "-f", str(subsets))
    assert refused.returncode == 78 and (
        "spec.subsets[0].trafficPolicy: trafficPolicy is not implemented" in refused.stderr)
    assert node.versions()["control"] == version

    deleted = node.cli("delete", "destinationrule", "backend", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    node.wait_version(parse_version(deleted.stdout))
    assert balancers(node)["backend:8080"] == "p2c-ewma"


HASHED = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: backend
  namespace: demo
spec:
  host: backend
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: affinity, path: /, ttl: 30s}
        maglev: {tableSize: 131}
  subsets:
  - name: v1
    labels: {app: backend}
"""


def test_a_consistent_hash_rule_reaches_every_worker_and_its_requests(
        make_node: Callable[..., Node], resource_dir: Path, app: HTTPApp) -> None:
    node = make_node()
    up = node.up("--config", str(config_dir(resource_dir / "cfg", app.port)))
    assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
    wait_for(lambda: through_the_mesh(node)[0] == 200, 40, "a request through the node")
    assert "set-cookie" not in _head(node).lower()
    path = resource_dir / "dr.yaml"
    path.write_text(HASHED)
    applied = node.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    node.wait_version(parse_version(applied.stdout))    # every worker installed it
    assert balancers(node)["backend:8080"] == "maglev"
    # A request without the cookie gets one, from whichever worker takes it.
    for _ in range(4):
        assert re.search(r'^set-cookie: affinity="[0-9a-f]{16}"; Max-Age=30; Path=/; HttpOnly$',
                         _head(node), re.MULTILINE), _head(node)
    got = node.cli("get", "dr", "backend", "-n", "demo", "-o", "yaml")
    shown = yaml.safe_load(got.stdout)
    shown["metadata"].pop("creationTimestamp")
    assert shown == yaml.safe_load(HASHED)


def _head(node: Node) -> str:
    """The head of the answer to GET / of the backend through the node."""
    with socket.create_connection(("127.0.0.1", node.port_base + 1), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: backend.demo:8080\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[0].decode("latin-1").replace("\r\n", "\n")
