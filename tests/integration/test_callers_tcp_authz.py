"""Who is calling, judged by principal on an opaque TCP port, through a real node
(DESIGN §4 "Who is calling"; fastpath/callers.pxi, authz.pxi; issue 12).

Two local workloads, client-a and client-b, run as two OS users and call the same
opaque ``echo`` Service (a TCP port with an ``outboundPort``) on the node. Each caller
is a real process of its user (localcaller.py, raw mode: it sends its bytes,
half-closes and keeps what comes back). The node finds each caller's workload by the
owner of its socket and presents that workload's certificate on the mTLS hop to its
own inbound port, where the echo workload's AuthorizationPolicy judges the peer's
principal once per connection, before the app is connected. The app is an echo that
keeps what each connection brought, so "no byte reached it" is seen from its side.
A third user, no workload's, is refused at the outbound listener. The echo workload
names its user too (nobody): where some local workloads name theirs, one that does not
gets no local callers and is reported.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from dataplanekit import certs_issued, metric_total, settle
from localcaller import UID_A, UID_STRANGER, Caller
from meshnode.callers import sock_diag_missing
from mnharness import Node, wait_for
from test_dataplane_tcp import (CHUNK_BYTES, ECHO_ID, App, free_port, service_yaml,  # noqa: F401
                                start_app, stats_total, workload_yaml)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="callers as other users need root (setuid)"),
    pytest.mark.skipif(sock_diag_missing() is not None, reason=str(sock_diag_missing())),
]

UID_B = 4244
CLIENT_A = "cluster.local/ns/demo/sa/client-a"       # principals name IDs without spiffe://
CLIENT_B = "cluster.local/ns/demo/sa/client-b"
READY_TIMEOUT_S = 20.0

# A local workload that only calls (no ports), known by the user it runs as.
CLIENT_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: demo}}
spec:
  address: {address}
  labels: {{app: {name}}}
  serviceAccount: {name}
  user: {uid}
"""

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: callers, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: {action}
  rules:
    - from: [{{source: {{principals: ["{principal}"]}}}}]
"""


class Recorder:
    """The echo app's handler: echoes each connection and keeps what it brought."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        got = bytearray()
        try:
            while data := conn.recv(CHUNK_BYTES):
                got += data
                conn.sendall(data)
        finally:
            with self._lock:
                self.received.append(bytes(got))

    def saw(self, payload: bytes) -> bool:
        with self._lock:
            return any(payload in got for got in self.received)


@dataclass
class Mesh:
    """The node, its echo app and what the app kept; calls to the echo Service's
    outbound port by processes of given uids, each with a payload of its own, so the
    app's record tells whether it got there."""

    node: Node
    app: App
    recorder: Recorder
    port: int
    config_dir: Path
    made: int = 0

    def call(self, uid: int) -> tuple[bytes, bytes]:
        """(the payload sent, what came back before the connection ended)."""
        self.made += 1
        payload = f"call {self.made} as uid {uid}\n".encode()
        caller = Caller(uid, self.port, mode="raw")
        try:
            return payload, caller.raw(payload)
        finally:
            caller.close()

    def echoes(self, uid: int) -> bool:
        payload, back = self.call(uid)
        return back == payload

    def closed_unseen(self, uid: int, times: int) -> None:
        """`times` calls as `uid`: each is closed with nothing echoed, and (once every
        worker has reported since, so no connection is still on its way) the app
        accepted none of them and saw none of their bytes."""
        accepted = self.app.accepted
        sent = []
        for _ in range(times):
            payload, back = self.call(uid)
            assert back == b"", f"uid {uid}: {back!r} came back"
            sent.append(payload)
        settle(self.node)
        assert self.app.accepted == accepted, f"a connection of uid {uid} reached the app"
        assert not any(self.recorder.saw(payload) for payload in sent)

    def apply(self, text: str) -> None:
        path = self.config_dir.parent / "policy.yaml"
        path.write_text(text)
        self.node.wait_version(self.node.apply(path))


def policy(action: str, principal: str) -> str:
    return POLICY.format(action=action, principal=principal)


def config(outbound_port: int, app_port: int) -> str:
    """test_dataplane_tcp's echo Service and Workload (run as nobody), the two
    clients, and the DENY of client-a."""
    return "---\n".join([
        service_yaml(outbound_port), workload_yaml(app_port) + "  user: nobody\n",
        CLIENT_YAML.format(name="client-a", address="127.0.0.2", uid=UID_A),
        CLIENT_YAML.format(name="client-b", address="127.0.0.3", uid=UID_B),
        policy("DENY", CLIENT_A)])


def decisions(node: Node, action: str, policy_name: str, result: str) -> float:
    return metric_total(node, "meshnode_authz_decisions_total", action=action,
                        policy=policy_name, result=result)


@pytest.fixture
def mesh(make_node: Callable[..., Node], resource_dir: Path,
         start_app: Callable[..., App]) -> Mesh:
    """The node up with the three workloads and a DENY of client-a's principal, every
    identity's certificate issued, client-b's calls echoed six times in a row (each a
    new connection, which either worker may take on either side of the hop)."""
    recorder = Recorder()
    app = start_app(recorder)
    outbound_port = free_port()
    config_dir = resource_dir / "config"
    config_dir.mkdir()
    (config_dir / "mesh.yaml").write_text(config(outbound_port, app.port))
    node = make_node()
    result = node.up("--config", str(config_dir))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    for identity in (ECHO_ID, f"spiffe://{CLIENT_A}", f"spiffe://{CLIENT_B}"):
        wait_for(lambda: certs_issued(node, identity), READY_TIMEOUT_S, f"{identity} certificates")
    mesh = Mesh(node, app, recorder, outbound_port, config_dir)
    wait_for(lambda: all(mesh.echoes(UID_B) for _ in range(6)), READY_TIMEOUT_S,
             "client-b's calls echoed")
    return mesh


def test_a_tcp_policy_by_principal_judges_each_local_caller_by_its_user(mesh: Mesh) -> None:
    node = mesh.node
    # DENY client-a: its user's connections are closed at the echo's inbound port,
    # before the app is connected; client-b's user's are echoed.
    mesh.closed_unseen(UID_A, 4)
    assert mesh.echoes(UID_B)
    # A user that is no workload's: refused at the outbound listener, never given a
    # workload's identity.
    mesh.closed_unseen(UID_STRANGER, 2)              # (each closed_unseen settles the node)
    assert stats_total(node, "authz_denied_tcp") == 4
    assert decisions(node, "DENY", "demo/callers", "denied") == 4
    assert metric_total(node, "meshnode_dataplane_failures_total", direction="outbound",
                        reason="callers_refused") == 2

    # ALLOW client-a only: the reverse, for new connections.
    mesh.apply(policy("ALLOW", CLIENT_A))
    assert [mesh.echoes(UID_A) for _ in range(4)] == [True] * 4
    mesh.closed_unseen(UID_B, 4)
    mesh.closed_unseen(UID_STRANGER, 1)
    assert stats_total(node, "authz_denied_tcp") == 8
    assert decisions(node, "ALLOW", "demo/callers", "allowed") == 4
    assert decisions(node, "ALLOW", "", "denied") == 4
    assert metric_total(node, "meshnode_dataplane_failures_total", direction="outbound",
                        reason="callers_refused") == 3
    assert not mesh.app.errors, mesh.app.errors
