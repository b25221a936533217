"""The trust domain is the mesh root's (DESIGN §4), through the CLI and a real node.

Before: ``meshnode ca init --trust-domain bar.example`` and ``meshnode up --ca-root``
issued ``spiffe://cluster.local/...`` identities under that root, because the Mesh's
default trust domain won silently. Now a Mesh that names none takes the root's, and one
that names another is refused with the reason: at apply, at up (from the seed config or
the node's stored one), and a root rotation keeps the trust domain.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from dataplanekit import certs_issued
from httpapps import HTTPApp
from mnharness import Node, http_get, pids_of, run_cli, wait_for

from meshnode.config import Store, parse_text, store_dir
from meshnode.identity.authority import ca_dir

pytestmark = pytest.mark.timeout(120)

ROOT_DOMAIN = "bar.example"
BACKEND = f"spiffe://{ROOT_DOMAIN}/ns/demo/sa/backend"
IO_TIMEOUT_S = 10.0

# One local workload: every local caller is it (DESIGN §4), so the request below
# carries its identity whatever tells callers apart.
CONFIG = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec: {{{mesh_spec}}}
---
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: backend, namespace: demo}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: 8080, protocol: HTTP}}]
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: backend-v1, namespace: demo}}
spec:
  address: 127.0.0.1
  ports: {{http: {app_port}}}
  labels: {{app: backend}}
  serviceAccount: backend
"""

MESH = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec: {{trustDomain: {domain}}}
"""


@pytest.fixture
def app() -> Iterator[HTTPApp]:
    backend = HTTPApp("backend")
    yield backend
    backend.stop()


def ca_init(directory: Path, domain: str) -> Path:
    made = run_cli("ca", "init", "--trust-domain", domain, "--out", str(directory))
    assert made.returncode == 0, made.stderr
    assert f"trust domain {domain}" in made.stdout
    return directory


def config_dir(directory: Path, app_port: int, mesh_spec: str = "mtls: {mode: STRICT}") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mesh.yaml").write_text(CONFIG.format(mesh_spec=mesh_spec, app_port=app_port))
    return directory


def ca_cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """`meshnode ca COMMAND --runtime-dir RD ARGS` (the runtime dir follows the subcommand)."""
    return run_cli("ca", args[0], "--runtime-dir", str(node.runtime_dir), *args[1:])


def through_the_mesh(node: Node) -> tuple[int, bytes]:
    """GET /who of the backend through the node's HTTP outbound listener (port-base+1)."""
    try:
        with socket.create_connection(("127.0.0.1", node.port_base + 1),
                                      timeout=IO_TIMEOUT_S) as sock:
            sock.sendall(b"GET /who HTTP/1.1\r\nHost: backend.demo:8080\r\n"
                         b"Connection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


def refused_naming(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 78, (result.returncode, result.stdout, result.stderr)
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_identities_under_a_bar_example_root_are_bar_example_and_a_foo_example_mesh_is_refused(
        make_node: Callable[..., Node], resource_dir: Path, app: HTTPApp) -> None:
    root = ca_init(resource_dir / "root", ROOT_DOMAIN)
    node = make_node()
    up = node.up("--ca-root", str(root), "--config", str(config_dir(resource_dir / "cfg", app.port)))
    assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"

    # The snapshot and the certificates are in the root's trust domain.
    code, body = http_get(f"{node.admin_url}/config_dump")
    assert code == 200
    dump = json.loads(body)
    assert dump["mesh"]["trust_domain"] == ROOT_DOMAIN
    assert [w["identity"] for w in dump["local"]] == [BACKEND]
    wait_for(lambda: certs_issued(node, BACKEND), 20.0, "every worker to hold the backend's certificate")
    inspected = ca_cli(node, "inspect", "--json")
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert (report["trust_domain"], report["root_trust_domain"]) == (ROOT_DOMAIN, ROOT_DOMAIN)
    assert {uri for c in report["workloads"] for uri in c["uri_sans"]} == {BACKEND}
    assert f"trust domain {ROOT_DOMAIN} (the root's)" in ca_cli(node, "inspect").stdout

    # Through the mesh: the backend's node presents (and names in XFCC) a bar.example
    # identity, verified by mutual TLS under the bar.example root.
    status, _ = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(through_the_mesh(node)),
                         20.0, "a request through the mesh")
    xfcc = app.seen[-1].headers.get("x-forwarded-client-cert", "")
    assert f"By={BACKEND}" in xfcc and f"URI={BACKEND}" in xfcc, xfcc
    assert "cluster.local" not in xfcc

    # A Mesh naming another trust domain is refused at apply, with the reason.
    before = node.versions()
    foo = resource_dir / "foo-mesh.yaml"
    foo.write_text(MESH.format(domain="foo.example"))
    refused_naming(node.cli("apply", "-f", str(foo)), str(foo), "Mesh default", "spec.trustDomain",
                   f"'foo.example' is not the mesh root's trust domain '{ROOT_DOMAIN}'")
    assert node.versions() == before
    # The root's own is taken (and changes no identity).
    own = resource_dir / "own-mesh.yaml"
    own.write_text(MESH.format(domain=ROOT_DOMAIN))
    assert node.cli("apply", "-f", str(own)).returncode == 0

    # A root rotation keeps the trust domain: a foo.example root is refused at its first step.
    foo_root = ca_init(resource_dir / "foo-root", "foo.example")
    rotated = ca_cli(node, "rotate-root", "--new-root", str(foo_root), "--timeout", "20")
    assert rotated.returncode != 0, rotated.stdout
    assert "names trust domain foo.example, the active root names bar.example: a root rotation " \
           "keeps the trust domain" in rotated.stderr, rotated.stderr


def test_up_refuses_a_mesh_naming_another_trust_domain_than_the_roots(
        make_node: Callable[..., Node], resource_dir: Path) -> None:
    root = ca_init(resource_dir / "root", ROOT_DOMAIN)

    # In the config it seeds the node with: refused before anything starts.
    node = make_node()
    seed = config_dir(resource_dir / "foo-cfg", 18082, "trustDomain: foo.example")
    refused_naming(node.up("--ca-root", str(root), "--config", str(seed)),
                   str(seed / "mesh.yaml"), "Mesh default", "spec.trustDomain",
                   f"'foo.example' is not the mesh root's trust domain '{ROOT_DOMAIN}'")
    assert not pids_of(node.runtime_dir)

    # In the config the node stored (as a meshnode before this one wrote the Mesh's
    # default trust domain out) under the bar.example root it runs under: refused at up,
    # naming the store file, instead of issuing cluster.local identities under that root.
    stored = make_node()
    ca_dir(stored.runtime_dir).mkdir(mode=0o700)
    (ca_dir(stored.runtime_dir) / "root.pem").write_bytes((root / "root.pem").read_bytes())
    Store(store_dir(stored.runtime_dir)).apply(
        parse_text(MESH.format(domain="cluster.local"), "mesh.yaml"), "mesh.yaml")
    refused_naming(stored.up(), str(store_dir(stored.runtime_dir) / "resources.json"),
                   "the node's stored config, applied from mesh.yaml", "Mesh default",
                   "spec.trustDomain",
                   f"'cluster.local' is not the mesh root's trust domain '{ROOT_DOMAIN}'")
    assert not pids_of(stored.runtime_dir)

    # Another root given to a node that already has one would be ignored: refused.
    other = ca_init(resource_dir / "other-root", "baz.example")
    again = stored.up("--ca-root", str(other))
    assert again.returncode == 64, (again.stdout, again.stderr)
    assert "already runs under another mesh root" in again.stderr
    assert "meshnode ca rotate-root" in again.stderr
    assert not pids_of(stored.runtime_dir)
