"""AuthorizationPolicy through a real node (meshnode apply → control's program → the
proxy agent's table → the engine's authorization step): Istio's YAML applied unchanged
is enforced at the destination, and a change of policy reaches kept-alive connections.

The node and its backend app are test_dataplane_http.py's (Service backend.demo:8080,
Workload backend-v1 behind it, two proxy workers); its caller is the node's own
single-identity HTTP outbound listener."""

from __future__ import annotations

import http.client

import pytest

from test_dataplane_http import HOST, IO_TIMEOUT_S, Mesh, mesh, start_app  # noqa: F401

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
