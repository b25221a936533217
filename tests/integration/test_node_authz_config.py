"""Istio's AuthorizationPolicy and PeerAuthentication through a running node: `meshnode
apply` takes them and every worker ACKs the snapshot that carries their program and mode
on the inbound route, `get` shows them with their status, `delete` removes them, and a
refused field is named with exit 78."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import yaml

from mnharness import Node, http_get, parse_version

pytestmark = pytest.mark.timeout(90)

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-readers, namespace: demo}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/web"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec:
  mtls: {mode: PERMISSIVE}
"""


def test_apply_get_delete(node: Node, write_resources: Callable[..., Path], resource_dir: Path) -> None:
    services = write_resources("orders", port=9090)
    assert node.cli("apply", "-f", str(services)).returncode == 0
    path = resource_dir / "policies.yaml"
    path.write_text(POLICIES)
    applied = node.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert "AuthorizationPolicy demo/orders-readers" in applied.stdout
    version = parse_version(applied.stdout)
    node.wait_version(version)                          # every worker ACKed it

    code, body = http_get(f"{node.admin_url}/config_dump")
    assert code == 200
    [orders] = [s for s in json.loads(body)["services"] if s["name"] == "orders"]
    [entry] = orders["ports"][0]["inbound"].values()
    assert entry["mtls"] == "PERMISSIVE"
    assert entry["authz"]["policies"][0]["name"] == "demo/orders-readers"
    assert entry["authz"]["policies"][0]["rules"][0]["http_only"] is True

    got = node.cli("get", "ap", "orders-readers", "-n", "demo", "-o", "yaml")
    assert got.returncode == 0, got.stderr
    policy = yaml.safe_load(got.stdout)
    assert policy["spec"]["rules"][0]["to"] == [{"operation": {"methods": ["GET"]}}]
    assert policy["status"]["conditions"][0]["message"].startswith("applies to 1 workload(s): demo/orders-v1")
    peer = json.loads(node.cli("get", "peerauthentication", "default", "-n", "demo", "-o", "json").stdout)
    assert peer["spec"] == {"mtls": {"mode": "PERMISSIVE"}}

    deleted = node.cli("delete", "authorizationpolicy", "orders-readers", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    node.wait_version(version + 1)
    assert node.cli("get", "ap", "orders-readers", "-n", "demo").returncode == 1

    path.write_text(POLICIES.replace('principals: ["cluster.local/ns/demo/sa/web"]',
                                     'requestPrincipals: ["issuer/subject"]'))
    refused = node.cli("apply", "-f", str(path))
    assert refused.returncode == 78
    assert ("AuthorizationPolicy demo/orders-readers: spec.rules[0].from[0].source.requestPrincipals: "
            "requestPrincipals needs a request's JWT") in refused.stderr
