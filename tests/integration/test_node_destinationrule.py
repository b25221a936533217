"""A DestinationRule through a running node: Istio's YAML applied unchanged, installed
by every worker (each compiles the balancer into its engine's table, or the version is
not acknowledged), shown by get and config_dump, refused by name, deleted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import yaml

from mnharness import Node, http_get, parse_version

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
    subsets = write_resources(text=RULE + "  subsets: [{name: v1, labels: {version: v1}}]\n",
                              filename="subsets.yaml")
    refused = node.cli("apply", "-f", str(subsets))
    assert refused.returncode == 78 and "spec.subsets: subsets is not implemented yet" in refused.stderr
    assert node.versions()["control"] == version

    deleted = node.cli("delete", "destinationrule", "backend", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    node.wait_version(parse_version(deleted.stdout))
    assert balancers(node)["backend:8080"] == "p2c-ewma"
