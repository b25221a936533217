"""Who is calling, through a real node (DESIGN §4; meshnode.callers, fastpath/callers.pxi).

A node with two proxy workers fronts two local workloads: ``backend`` (the service the
callers ask for; its app runs on a thread of this test) and ``frontend``. Callers are
curl processes running as other OS users (the tests run as root), some bound to another
workload's address. What the app receives in x-forwarded-client-cert (URI=) is the
identity the node presented for the caller. The attacks replayed: a local process that
calls from another workload's address, or that is no workload at all and used to be
given "the first identity by name".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from dataplanekit import certs_issued, metric_total, settle, worker_reports
from httpapps import HTTPApp
from mnharness import Node, wait_for

from meshnode.callers import sock_diag_missing

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="callers as other users need root (setuid)"),
]

FRONTEND_ID = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"
NOBODY = 65534
UID_A = 4242
UID_STRANGER = 4343
READY_TIMEOUT_S = 30.0

CONFIG = """\
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
{backend_user}"""

FRONTEND = """\
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: frontend-v1, namespace: demo}}
spec:
  address: 127.0.0.2
  labels: {{app: frontend}}
  serviceAccount: frontend
{frontend_user}"""


def config(app: HTTPApp, backend_user: str | None = None, frontend: bool = True,
           frontend_user: str | None = None) -> str:
    text = CONFIG.format(app_port=app.port,
                         backend_user=f"  user: {backend_user}\n" if backend_user else "")
    if frontend:
        text += FRONTEND.format(
            frontend_user=f"  user: {frontend_user}\n" if frontend_user else "")
    return text


class Callers:
    """curl as another user against a node's HTTP outbound listener; each request has a
    path of its own, so what the app saw of it can be found."""

    def __init__(self, node: Node, app: HTTPApp) -> None:
        self.port = node.port_base + 1
        self.app = app
        self.n = 0

    def call(self, uid: int, source: str = "127.0.0.1") -> tuple[int, str, str | None]:
        """(status, body, the caller identity the app saw or None)."""
        self.n += 1
        path = f"/who-{self.n}"
        result = subprocess.run(
            ["curl", "-q", "-sS", "--max-time", "10", "--interface", source,
             "-H", "Host: backend.demo:8080", "-w", "\n%{http_code}",
             f"http://127.0.0.1:{self.port}{path}"],
            user=uid, group=uid, extra_groups=[], cwd="/", env={"PATH": os.defpath},
            capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        body, _, code = result.stdout.rpartition(b"\n")
        seen = [s for s in self.app.seen if s.target == path]
        xfcc = seen[0].headers.get("x-forwarded-client-cert", "") if seen else ""
        return int(code or 0), body.decode(errors="replace"), xfcc.rpartition("URI=")[2] or None


def status_text(node: Node) -> str:
    result = node.cli("status")
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(node: Node) -> int:
    settle(node)
    return sum(r["dataplane"]["callers_refused"] for r in worker_reports(node).values())


@pytest.fixture
def start(make_node: Callable[..., Node], resource_dir: Path) -> Callable[..., tuple[Node, Callers]]:
    apps: list[HTTPApp] = []

    def start_node(**options: object) -> tuple[Node, Callers]:
        app = HTTPApp("backend", 0)
        apps.append(app)
        config_dir = resource_dir / "config"
        config_dir.mkdir()
        (config_dir / "mesh.yaml").write_text(config(app, **options))  # type: ignore[arg-type]
        node = make_node()
        result = node.up("--config", str(config_dir))
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        wait_for(lambda: certs_issued(node, BACKEND_ID), READY_TIMEOUT_S, "backend certificates")
        return node, Callers(node, app)

    yield start_node
    for app in apps:
        app.stop()


def serving(callers: Callers, uid: int, source: str = "127.0.0.1") -> None:
    """Until six calls in a row, each on a fresh connection either worker may take, are
    answered by the app (both workers run the config with both identities)."""
    wait_for(lambda: all(callers.call(uid, source)[0] == 200 for _ in range(6)),
             READY_TIMEOUT_S, f"calls as uid {uid} answered")


@pytest.mark.skipif(sock_diag_missing() is not None, reason=str(sock_diag_missing()))
def test_callers_by_user_present_their_own_identity_and_others_are_refused(
        start: Callable[..., tuple[Node, Callers]]) -> None:
    node, callers = start(backend_user=str(UID_A), frontend_user="nobody")
    wait_for(lambda: certs_issued(node, FRONTEND_ID), READY_TIMEOUT_S, "frontend certificates")
    serving(callers, NOBODY)
    assert callers.call(NOBODY)[::2] == (200, FRONTEND_ID)
    # The backend's account, bound to the frontend's address: still the backend.
    assert callers.call(UID_A, source="127.0.0.2")[::2] == (200, BACKEND_ID)
    # No workload's account, from the frontend's address: refused, saying why.
    status, body, seen = callers.call(UID_STRANGER, source="127.0.0.2")
    assert (status, seen) == (403, None)
    assert body == f"caller refused: no local workload runs as uid {UID_STRANGER} (Workload spec.user)\n"
    # root (this test) is no workload's account either.
    assert callers.call(0)[0] == 403
    assert refused(node) == 2
    assert metric_total(node, "meshnode_dataplane_failures_total", direction="outbound",
                        reason="callers_refused") == 2
    assert "callers told apart by: user" in status_text(node)


def test_a_caller_at_no_workloads_address_is_refused_not_given_the_first_identity(
        start: Callable[..., tuple[Node, Callers]]) -> None:
    # No users declared: two workloads told apart by their addresses. A process calling
    # from an address neither has used to be given the first identity by name (the
    # backend's).
    node, callers = start()
    wait_for(lambda: certs_issued(node, FRONTEND_ID), READY_TIMEOUT_S, "frontend certificates")
    serving(callers, NOBODY, "127.0.0.2")
    assert callers.call(NOBODY, "127.0.0.2")[::2] == (200, FRONTEND_ID)
    assert callers.call(UID_STRANGER, "127.0.0.1")[::2] == (200, BACKEND_ID)
    status, body, seen = callers.call(UID_STRANGER, "127.0.0.3")
    assert (status, seen) == (403, None), body
    assert "no local workload calls from this address" in body
    assert refused(node) == 1
    assert "callers told apart by: address" in status_text(node)


def test_a_single_workload_is_every_local_caller_until_users_are_declared(
        start: Callable[..., tuple[Node, Callers]], resource_dir: Path) -> None:
    node, callers = start(frontend=False)
    serving(callers, UID_STRANGER, "127.0.0.9")
    assert callers.call(UID_STRANGER, "127.0.0.9")[::2] == (200, BACKEND_ID)
    assert "callers told apart by: single workload" in status_text(node)
    # A second workload comes, whose user is no account of this host: reported, and
    # its callers are refused; the backend's user is asked from now on.
    update = resource_dir / "update.yaml"
    update.write_text(config(callers.app, backend_user="nobody",
                             frontend_user="no-such-user-mn"))
    node.wait_version(node.apply(update))
    wait_for(lambda: "callers told apart by: user" in status_text(node), READY_TIMEOUT_S,
             "status to say callers are told apart by user")
    assert "user 'no-such-user-mn' is unknown on this host" in status_text(node)
    serving(callers, NOBODY)
    assert callers.call(NOBODY)[::2] == (200, BACKEND_ID)
    assert callers.call(UID_STRANGER, "127.0.0.9")[0] == 403
