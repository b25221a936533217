"""Access logs on a real node (Mesh spec.telemetry; fastpath accesslog.pxi, meshnode.accesslog):
requests through the node become JSON lines in RUNTIME_DIR/logs/access.log (mode 0600),
one per side, with Envoy's field names; the file rotates at the Mesh's maxBytes keeping
backupCount files; `meshnode logs access -f` streams lines as they are written; and
accessLogSampling 0 writes none where 100 writes all.

One node (one worker, so that the records of successive requests come in order) serves
every case; calls go through its HTTP outbound listener, over mutual TLS to its own
inbound port, to the tests.integration.httpapps server.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from httpapps import HTTPApp
from mnharness import CLI, Node, free_port_base, kill_leftovers, wait_for
from test_dataplane_http import HOST, service_yaml, workload_yaml

from meshnode.ports import Ports

pytestmark = pytest.mark.timeout(60)

MAX_BYTES = 8192
MESH = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec:
  telemetry:
    accessLog: true
    accessLogSampling: {percent}
    accessLogRotation: {{maxBytes: {max_bytes}, backupCount: 2}}
"""


class Logged:
    def __init__(self, node: Node, config: Path) -> None:
        self.node, self.config = node, config
        self.port = Ports(node.port_base).outbound
        self.log = node.runtime_dir / "logs" / "access.log"
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, request_id: str) -> None:
        r = self.session.get(f"http://127.0.0.1:{self.port}/items/{request_id}",
                             headers={"Host": HOST, "x-request-id": request_id}, timeout=20)
        assert r.status_code == 200, r.text

    def warm(self) -> bool:
        try:
            self.call("warm")
        except (requests.RequestException, AssertionError):
            return False
        return bool(self.lines("warm"))

    def sample(self, percent: int) -> None:
        (self.config / "mesh.yaml").write_text(MESH.format(percent=percent, max_bytes=MAX_BYTES))
        self.node.apply(self.config / "mesh.yaml")     # (returns once the worker ACKed)

    def lines(self, request_id: str) -> list[dict[str, Any]]:
        """The records of `request_id` in the log and its rotated files."""
        found = []
        for path in self.log.parent.glob("access.log*"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["request_id"] == request_id:
                    found.append(record)
        return found

    def both_sides(self, request_id: str) -> list[dict[str, Any]]:
        return wait_for(lambda: (lambda got: got if len(got) == 2 else None)(self.lines(request_id)),
                        10.0, f"both records of {request_id}")


@contextmanager
def backend_node(mesh_yaml: str) -> Iterator[tuple[Node, Path]]:
    """A one-worker node up with the backend service, its app and `mesh_yaml`; its
    resources' dir beside it. Everything it started is stopped and removed after."""
    rd = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    config = Path(tempfile.mkdtemp(prefix="mn-res-", dir="/tmp"))
    app = HTTPApp()
    node = Node(rd, free_port_base(), workers=1)
    (config / "backend.yaml").write_text(service_yaml() + "---\n" + workload_yaml(app.port))
    (config / "mesh.yaml").write_text(mesh_yaml)
    try:
        result = node.up("--config", str(config))
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        yield node, config
    finally:
        node.down()
        leftovers = kill_leftovers(rd)
        app.stop()
        shutil.rmtree(rd, ignore_errors=True)
        shutil.rmtree(config, ignore_errors=True)
        assert not leftovers


@pytest.fixture(scope="module")
def logged() -> Iterator[Logged]:
    with backend_node(MESH.format(percent=100, max_bytes=MAX_BYTES)) as (node, config):
        it = Logged(node, config)
        wait_for(it.warm, 15.0, "the node serving and logging")
        yield it


def test_each_request_is_a_json_line_per_side_in_a_private_file(logged: Logged) -> None:
    logged.call("fields-1")
    source, destination = sorted(logged.both_sides("fields-1"), key=lambda r: r["reporter"],
                                 reverse=True)
    for r in (source, destination):
        assert (r["method"], r["path"], r["protocol"], r["response_code"], r["response_flags"],
                r["authority"]) == ("GET", "/items/fields-1", "HTTP/1.1", 200, "-", HOST)
        assert r["start_time"].endswith("Z") and r["duration"] >= 0
        assert r["bytes_received"] > 0 and r["bytes_sent"] > 0
    assert source["reporter"] == "source" and destination["reporter"] == "destination"
    assert source["upstream_peer_uri_san"] == "spiffe://cluster.local/ns/demo/sa/backend"
    assert destination["connection_security_policy"] == "mutual_tls"
    assert stat.S_IMODE(logged.log.stat().st_mode) == 0o600


def test_the_file_rotates_at_max_bytes_keeping_backup_count(logged: Logged) -> None:
    for i in range(20):                 # ~0.8 KB a line, two a request: more than 3 files' worth
        logged.call(f"rotate-{i}")
    logged.both_sides("rotate-19")
    files = sorted(p.name for p in logged.log.parent.glob("access.log*"))
    assert files == ["access.log", "access.log.1", "access.log.2"]
    for name in files:
        assert (logged.log.parent / name).stat().st_size <= MAX_BYTES


def test_logs_follow_streams_lines_as_they_come(logged: Logged) -> None:
    follow = subprocess.Popen([*CLI, "logs", "access", "-n", "0", "-f", "--runtime-dir",
                               str(logged.node.runtime_dir)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)                 # (its first read is at the file's end)
        logged.call("follow-1")
        deadline = time.monotonic() + 10
        seen: list[str] = []
        while time.monotonic() < deadline and not any("follow-1" in s for s in seen):
            seen.append(follow.stdout.readline())  # type: ignore[union-attr]
        assert json.loads([s for s in seen if "follow-1" in s][0])["path"] == "/items/follow-1"
    finally:
        follow.kill()
        follow.wait()


def test_sampling_none_writes_nothing_and_all_writes_every_request(logged: Logged) -> None:
    logged.sample(0)
    for i in range(5):
        logged.call(f"none-{i}")
    logged.sample(100)
    for i in range(5):
        logged.call(f"all-{i}")
    logged.both_sides("all-4")
    assert all(len(logged.lines(f"all-{i}")) == 2 for i in range(5))
    assert not any(logged.lines(f"none-{i}") for i in range(5))
