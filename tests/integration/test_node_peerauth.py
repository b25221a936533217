"""Istio's PeerAuthentication enforced by a running node: its YAML applied unchanged,
curl in plaintext at the node's inbound port (port-base+6) is reset while the Mesh's
STRICT holds, served once a PERMISSIVE policy reaches the workload (no principal, the
client's x-forwarded-client-cert removed, `connection_security_policy="none"` in the
request metrics, the plaintext counted), and reset again once the policy is deleted;
mutual TLS through the node's HTTP outbound listener works all along."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from httpapps import HTTPApp
from mnharness import Node, http_get, parse_version, wait_for
from test_trust_domain import app, config_dir, through_the_mesh  # noqa: F401 (app: a fixture)

pytestmark = pytest.mark.timeout(120)

# From Istio's mTLS migration task (namespace foo there), unchanged but for the name.
PERMISSIVE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: demo
spec:
  mtls:
    mode: PERMISSIVE
"""
FORGED = "By=spiffe://cluster.local/ns/demo/sa/admin;URI=spiffe://cluster.local/ns/demo/sa/admin"


def curl(node: Node) -> subprocess.CompletedProcess[str]:
    """A plaintext client outside the mesh: curl at the inbound port, naming the service
    by Host, with a forged x-forwarded-client-cert."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-H", "Host: backend.demo:8080",
         "-H", f"X-Forwarded-Client-Cert: {FORGED}", "-w", " %{http_code}",
         f"http://127.0.0.1:{node.port_base + 6}/who"],
        capture_output=True, text=True, timeout=20)


def metric(node: Node, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry `labels` (0 when none does)."""
    code, body = http_get(node.metrics_url)
    assert code == 200
    total = 0.0
    for line in body.decode().splitlines():
        sample = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if sample and sample[1] == name and all(
                f'{k}="{v}"' in sample[2].split(",") for k, v in labels.items()):
            total += float(sample[3])
    return total


def test_plaintext_is_reset_under_strict_and_served_under_permissive(
        make_node: Callable[..., Node], resource_dir: Path, app: HTTPApp) -> None:
    node = make_node()
    up = node.up("--config", str(config_dir(resource_dir / "cfg", app.port)))
    assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
    wait_for(lambda: through_the_mesh(node)[0] == 200, 40, "a request through the node")

    seen = len(app.seen)
    strict = curl(node)
    assert strict.returncode == 56, (strict.returncode, strict.stdout, strict.stderr)  # reset
    assert len(app.seen) == seen        # nothing reached the app

    policy = resource_dir / "peerauthentication.yaml"
    policy.write_text(PERMISSIVE)
    version = node.apply(policy)
    node.wait_version(version)          # every worker installed the mode
    served = curl(node)
    assert (served.returncode, served.stdout) == (0, "backend GET /who 200"), served.stderr
    plain = app.seen[-1]
    assert plain.target == "/who" and "x-forwarded-client-cert" not in plain.headers
    assert through_the_mesh(node)[0] == 200            # mutual TLS as before
    assert "URI=spiffe://cluster.local/ns/demo/sa/backend" in \
        app.seen[-1].headers["x-forwarded-client-cert"]

    destination = {"reporter": "destination", "response_code": "200"}
    wait_for(lambda: metric(node, "meshnode_requests_total", connection_security_policy="none",
                            source_principal="unknown", **destination) == 1,
             15, "the plaintext request in the metrics")
    assert metric(node, "meshnode_requests_total", connection_security_policy="mutual_tls",
                  **destination) >= 1
    assert metric(node, "meshnode_plaintext_accepted_connections_total") == 1

    deleted = node.cli("delete", "peerauthentication", "default", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    node.wait_version(parse_version(deleted.stdout))
    again = curl(node)
    assert again.returncode == 56, (again.returncode, again.stdout, again.stderr)
    wait_for(lambda: metric(node, "meshnode_plaintext_refused_connections_total") == 2,
             15, "both refusals in the metrics")
