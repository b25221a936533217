"""Limits before authentication on a real node (DESIGN §3; fastpath limits.pxi,
meshnode.fdlimit): a flood of connections that never finish a TLS handshake, from one
address, at a node's inbound port does not starve the node's local callers.

A node with two proxy workers, a ``backend`` Service (HTTP, with an outboundPort of its
own) and its Workload: the tests.integration.httpapps server. Local calls go through the
node's HTTP outbound listener and the service's outboundPort, over mutual TLS to the
node's own inbound port (from 127.0.0.1), and to the app. The flood comes from
127.0.0.2. Every flood is bounded in count, every wait has a deadline.
"""

from __future__ import annotations

import resource
import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from dataplanekit import metric_total, settle, worker_reports
from httpapps import HTTPApp
from mnharness import Node, cmdline_of, pids_of, wait_for
from test_dataplane_http import service_yaml, workload_yaml

from meshnode.ports import Ports

pytestmark = pytest.mark.timeout(240)

ATTACKER = "127.0.0.2"
# The one slot pool a worker's engine had before each side got its own budget.
OLD_POOL = 4096
# The engine's default: handshakes under way from one address, per worker.
SOURCE_HANDSHAKES = 512
# What the node is started under: a soft descriptor limit a worker must raise.
STARTED_SOFT_LIMIT = 4096
IO_TIMEOUT_S = 20.0

MESH = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {name: default}
spec:
  connections: {maxHandshakesPerSource: 4}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        return s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": "backend.demo:8080"},
                     timeout=IO_TIMEOUT_S)


def served(port: int, path: str) -> bool:
    try:
        r = get(port, path)
    except requests.RequestException:
        return False
    return r.status_code == 200 and r.content == f"backend GET {path}".encode()


def flood(port: int, n: int) -> list[socket.socket]:
    """`n` connections from ATTACKER that never send a byte (non-blocking connects)."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((ATTACKER, 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        out.append(s)
    return out


def total(node: Node, key: str) -> int:
    return sum(int((r.get("dataplane") or {}).get(key, 0)) for r in worker_reports(node).values())


def soft_nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


@pytest.fixture
def descriptors() -> Iterator[int]:
    """Room for the flood in this process; the hard limit the node's workers may reach."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * OLD_POOL + 2000
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_tls_flood_from_one_source_leaves_the_nodes_local_callers_served(
        make_node: Callable[..., Node], resource_dir: Path, descriptors: int) -> None:
    app = HTTPApp()
    try:
        own = free_port()
        config = resource_dir / "config"
        config.mkdir()
        service = service_yaml().replace("protocol: HTTP}",
                                         f"protocol: HTTP, outboundPort: {own}}}", 1)
        (config / "backend.yaml").write_text(service + "---\n" + workload_yaml(app.port))
        node = make_node()
        # Started under a low soft limit (inherited): each worker raises its own.
        hard = descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (STARTED_SOFT_LIMIT, hard))
        try:
            result = node.up("--config", str(config))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        http_port = Ports(node.port_base).outbound
        wait_for(lambda: all(served(http_port, "/warm") for _ in range(6)), 30.0,
                 "the node serving")

        workers = [pid for pid in pids_of(node.runtime_dir)
                   if "meshnode.proxy" in " ".join(cmdline_of(pid))]
        assert len(workers) == node.workers
        for pid in workers:
            assert soft_nofile(pid) == (hard, hard), f"worker {pid} kept its soft limit"

        # More idle connections than both workers' old pools held, from one address.
        n = 2 * OLD_POOL + 200
        held = flood(Ports(node.port_base).inbound, n)
        try:
            def reached() -> int:
                settle(node)
                return sum(total(node, key) for key in (
                    "inbound_connections_opened", "inbound_rejected_limit",
                    "inbound_accept_failures", "rejected_handshakes",
                    "rejected_source_conns", "rejected_source_handshakes"))
            # As many as both old pools held have reached the workers (taken or refused).
            wait_for(lambda: reached() >= 2 * OLD_POOL, 60.0, "the flood at the workers")
            for i in range(5):
                assert served(http_port, f"/http{i}"), "HTTP outbound listener starved"
                assert served(own, f"/own{i}"), "the service's outboundPort starved"
            # The whole flood: all but each worker's share of handshakes refused. A
            # handshake that timed out (5 s) gave its slot to a later flood connection:
            # on a loaded host the flood's SYNs may take longer than that to be accepted.
            wait_for(lambda: settle(node) or total(node, "rejected_source_handshakes")
                     + total(node, "inbound_tls_handshake_timeouts")
                     >= n - 2 * SOURCE_HANDSHAKES, 60.0, "the flood refused")
            assert total(node, "outbound_rejected_limit") == 0
            # Exported too: the inbound side's failures, by the limit met.
            wait_for(lambda: metric_total(node, "meshnode_dataplane_failures_total",
                                          direction="inbound", reason="rejected_source_handshakes")
                     == total(node, "rejected_source_handshakes"), 20.0, "the metric")
        finally:
            for s in held:
                s.close()

        # The Mesh's own limit reaches every worker's engine.
        version = node.apply(_write(resource_dir, "mesh.yaml", MESH))
        node.wait_version(version)
        wait_for(lambda: settle(node) or total(node, "handshakes_active") == 0, 30.0,
                 "the flood's handshakes given back")
        def ended() -> int:
            return (total(node, "rejected_source_handshakes")
                    + total(node, "inbound_tls_handshake_timeouts"))
        before = ended()
        held = flood(Ports(node.port_base).inbound, 100)
        try:
            wait_for(lambda: settle(node) or ended() + total(node, "handshakes_active")
                     >= before + 100, 30.0,
                     "the second flood counted")
            assert total(node, "handshakes_active") <= node.workers * 4
            assert served(http_port, "/after")
        finally:
            for s in held:
                s.close()
    finally:
        app.stop()


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path
