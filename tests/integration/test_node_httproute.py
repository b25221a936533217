"""HTTPRoutes through a running node: apply, every worker's ACK, get with status, the snapshot's route
sets, a refusal naming the field, delete."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from mnharness import Node, http_get, parse_version

pytestmark = pytest.mark.timeout(60)

# The node's default config serves demo/frontend and demo/backend, port 8080 each.
ROUTE = textwrap.dedent("""\
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata:
      name: backend-split
      namespace: demo
    spec:
      parentRefs:
      - group: ""
        kind: Service
        name: backend
        port: 8080
      - group: ""
        kind: Service
        name: billing
      rules:
      - matches:
        - path:
            type: PathPrefix
            value: /v2
        backendRefs:
        - name: backend
          port: 8080
          weight: 90
        - name: backend-v2
          port: 8080
          weight: 10
        timeouts:
          request: 5s
    """)


def test_a_route_is_applied_shown_with_its_status_and_deleted(node: Node, resource_dir: Path) -> None:
    path = resource_dir / "route.yaml"
    path.write_text(ROUTE)
    result = node.cli("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert "HTTPRoute demo/backend-split" in result.stdout
    version = parse_version(result.stdout)
    node.wait_version(version)  # every worker ACKed the snapshot that carries it

    got = node.cli("get", "httproute", "backend-split", "-n", "demo", "-o", "yaml")
    assert got.returncode == 0, got.stderr
    shown = yaml.safe_load(got.stdout)
    assert shown["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert shown["metadata"]["creationTimestamp"].endswith("Z")
    assert shown["spec"]["rules"][0]["backendRefs"][0] == {"group": "", "kind": "Service", "name": "backend",
                                                           "port": 8080, "weight": 90}
    backend, billing = shown["status"]["parents"]
    assert backend["parentRef"] == {"group": "", "kind": "Service", "name": "backend", "port": 8080}
    assert backend["controllerName"] == "meshnode.io/control"
    conditions = {c["type"]: c for c in backend["conditions"]}
    assert (conditions["Accepted"]["status"], conditions["Accepted"]["reason"]) == ("True", "Accepted")
    assert (conditions["ResolvedRefs"]["status"], conditions["ResolvedRefs"]["reason"]) == \
        ("False", "BackendNotFound")
    assert "Service demo/backend-v2 does not exist" in conditions["ResolvedRefs"]["message"]
    accepted = {c["type"]: c for c in billing["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingParent")

    # What get printed applies again as it is: its status and creationTimestamp are ignored.
    again = resource_dir / "again.yaml"
    again.write_text(got.stdout)
    unchanged = node.cli("apply", "-f", str(again))
    assert unchanged.returncode == 0 and unchanged.stdout.startswith("unchanged: "), unchanged

    code, body = http_get(f"{node.admin_url}/config_dump")
    assert code == 200
    [route_set] = json.loads(body)["http_routes"]
    assert (route_set["service"], route_set["port"], route_set["consumer_namespace"]) == \
        ("demo/backend", 8080, None)
    assert route_set["rules"][0]["backends"] == [{"service": "demo/backend", "port": 8080, "weight": 90},
                                                 {"service": None, "port": None, "weight": 10}]
    assert route_set["rules"][0]["timeout_s"] == 5.0

    listed = node.cli("get", "httproutes")
    assert listed.returncode == 0 and "HTTPRoute  demo       backend-split" in listed.stdout, listed.stdout

    deleted = node.cli("delete", "httproute", "backend-split", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    node.wait_version(parse_version(deleted.stdout))
    gone = node.cli("get", "httproute", "backend-split", "-n", "demo")
    assert gone.returncode == 1 and "not found" in gone.stderr
    code, body = http_get(f"{node.admin_url}/config_dump")
    assert json.loads(body)["http_routes"] == []


def test_a_route_using_what_is_not_implemented_is_refused_by_name(node: Node, resource_dir: Path) -> None:
    path = resource_dir / "mirror.yaml"
    mirror = "    filters:\n    - type: CORS\n      cors: {}\n    timeouts:\n"
    assert "\n    timeouts:\n" in ROUTE
    path.write_text(ROUTE.replace("    timeouts:\n", mirror, 1))
    before = node.versions()
    result = node.cli("apply", "-f", str(path))
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert (f"{path}: HTTPRoute demo/backend-split: spec.rules[0].filters[0].type: CORS is not "
            "implemented yet") in result.stderr
    assert node.versions() == before
