"""AuthorizationPolicy through a real node (meshnode apply → control's program → the
proxy agent's table → the engine's authorization step): Istio's YAML applied unchanged
is enforced at the destination, and a change of policy reaches kept-alive connections.

The node and its backend app are test_dataplane_http.py's (Service backend.demo:8080,
Workload backend-v1 behind it, two proxy workers); its caller is the node's own
single-identity HTTP outbound listener."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from test_dataplane_http import HOST, IO_TIMEOUT_S, Mesh, app_says, mesh, start_app  # noqa: F401

pytestmark = pytest.mark.timeout(300)

DENY_ADMIN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/admin/*"]}}]
"""

ALLOW_NOBODY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: demo}
spec: {}
"""


# Policies that never refuse the load's GET /public, applied one after another while it runs.
ALLOW_PUBLIC = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public-only, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
    - to: [{operation: {methods: ["GET"], paths: ["/public", "/health"]}}]
"""
DENY_MORE = DENY_ADMIN.replace('paths: ["/admin/*"]', 'paths: ["/admin/*", "/secret"]')
# The load: LOAD_THREADS callers, each at most LOAD_MAX requests or LOAD_MAX_S seconds.
LOAD_THREADS = 4
LOAD_MAX = 5000
LOAD_MAX_S = 60.0


def ask(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers={"Host": HOST})
    response = conn.getresponse()
    return response.status, response.read()


def test_an_applied_policy_is_enforced_and_its_change_reaches_open_connections(mesh: Mesh) -> None:
    node = mesh.node
    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=IO_TIMEOUT_S)
    try:
        assert ask(conn, "/admin/x")[0] == 200
        node.wait_version(node.apply(mesh.write("deny.yaml", DENY_ADMIN)))
        # Every worker has the program once the version is in force; a fresh request on
        # the kept-alive connection is judged by it, as are ones on new connections.
        assert ask(conn, "/admin/x") == (403, b"RBAC: access denied")
        assert ask(conn, "/admin/%2E%2E/admin/y")[0] == 403
        assert ask(conn, "/public")[0] == 200
        node.wait_version(node.apply(mesh.write("nobody.yaml", ALLOW_NOBODY)))
        assert ask(conn, "/public")[0] == 403                 # ALLOW {} denies all
    finally:
        conn.close()


MERGE_SLASHES = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {name: default}
spec:
  pathNormalization: {normalization: MERGE_SLASHES}
"""


def test_the_meshs_path_normalization_reaches_every_request(mesh: Mesh) -> None:
    """With no policy at all, every request's path is normalized by the Mesh's mode
    (Istio's default BASE until one is set) before the app gets it."""
    node = mesh.node
    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=IO_TIMEOUT_S)
    try:
        assert ask(conn, "/a/./b/../c//d") == (200, app_says("/a/c//d"))
        node.wait_version(node.apply(mesh.write("mesh.yaml", MERGE_SLASHES)))
        assert ask(conn, "/a/./b/../c//d") == (200, app_says("/a/c/d"))
        assert ask(conn, "/a/%00")[0] == 400
    finally:
        conn.close()


def refused_now(mesh: Mesh, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=IO_TIMEOUT_S)
    try:
        return ask(conn, path) == (403, b"RBAC: access denied")
    finally:
        conn.close()


def test_policy_changes_under_load_fail_no_allowed_request(mesh: Mesh) -> None:
    """Istio's promise for a policy push: allowed traffic never sees it. Callers on
    kept-alive connections and on a new connection per request send GET /public while
    policies that all allow it are applied, changed and deleted: every answer is 200."""
    node = mesh.node
    stop = threading.Event()
    answers: list[list[int]] = [[] for _ in range(LOAD_THREADS)]
    errors: list[BaseException] = []

    def load(k: int) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=IO_TIMEOUT_S)
        try:
            while not stop.is_set() and len(answers[k]) < LOAD_MAX and time.monotonic() < deadline:
                if k % 2:                       # a new connection per request
                    conn.close()
                answers[k].append(ask(conn, "/public")[0])
        except BaseException as exc:            # reported below, with the answers so far
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        for name, text, refused in (("deny.yaml", DENY_ADMIN, "/admin/x"),
                                    ("allow.yaml", ALLOW_PUBLIC, "/private"),
                                    ("deny.yaml", DENY_MORE, "/secret"),
                                    ("deny.yaml", DENY_ADMIN, "/admin/y")):
            node.wait_version(node.apply(mesh.write(name, text)))
            assert refused_now(mesh, refused), f"{name}: {refused} served"
        for kind, name in (("authorizationpolicy", "public-only"),
                           ("authorizationpolicy", "no-admin")):
            deleted = node.cli("delete", kind, name, "-n", "demo")
            assert deleted.returncode == 0, deleted.stderr
    finally:
        stop.set()
        for thread in threads:
            thread.join(IO_TIMEOUT_S + LOAD_MAX_S)
    assert not errors, errors
    statuses = [status for per in answers for status in per]
    assert all(len(per) >= 20 for per in answers), [len(per) for per in answers]
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # The last one deleted, /admin is served again.
    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=IO_TIMEOUT_S)
    try:
        assert ask(conn, "/admin/x")[0] == 200
    finally:
        conn.close()
