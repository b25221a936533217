"""A config a worker cannot carry out is NACKed with its reason, through a real node.

A Service whose ``outboundPort`` is taken (the node's own metrics port, or a port some
other process holds) used to be ACKed while its listener was missing, and the node said
ready. Now the worker installs the rest (Envoy: a listener that fails to bind is
rejected by NACK, the others serve), NACKs the version with the port, the service and
the error, ``meshnode apply`` exits 1 with that reason, and ``/ready`` and ``meshnode
status`` say the node is not ready and why, until the listener binds: the worker tries
again every second, and a config without the taken port is ACKed at once.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from mnharness import Node, parse_version, wait_for

pytestmark = pytest.mark.timeout(120)

IO_TIMEOUT_S = 10.0

SERVICE = """\
---
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: tcp, port: 7000, protocol: TCP, outboundPort: {outbound}}}]
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: {name}-1, namespace: demo}}
spec:
  address: 127.0.0.1
  ports: {{tcp: {app_port}}}
  labels: {{app: {name}}}
  serviceAccount: {name}
{user}"""


class EchoApp:
    """A TCP echo server on 127.0.0.1 (one thread per connection): the app behind a
    Workload, to show that what the config names besides the taken port is served."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT_S)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def app() -> Iterator[EchoApp]:
    echo = EchoApp()
    yield echo
    echo.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echoes(port: int) -> bool:
    """A round trip through 127.0.0.1:port (the node's outbound listener) to the app."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
            sock.sendall(b"ping")
            return sock.recv(4) == b"ping"
    except OSError:
        return False


def service(name: str, outbound: int, app_port: int) -> str:
    """A TCP service with one workload beside the node. The echo one runs as this test's
    user: the local callers (this test) are its own, told apart by their OS user from
    the others' on the same address (which take no local callers)."""
    user = f"  user: {os.getuid()}\n" if name == "echo" else ""
    return SERVICE.format(name=name, outbound=outbound, app_port=app_port, user=user)


def test_listeners_on_taken_ports_are_nacked_with_the_reason_and_the_rest_serves(
        node: Node, resource_dir: Path, app: EchoApp) -> None:
    metrics = node.port_base + 90  # the node's own Prometheus listener holds it
    held = socket.create_server(("127.0.0.1", 0))  # another process's port, as it were
    held_port = held.getsockname()[1]
    served = free_port()
    both = resource_dir / "taken.yaml"
    both.write_text(service("grabber", metrics, app.port) + service("squatter", held_port, app.port)
                    + service("echo", served, app.port))
    try:
        result = node.cli("apply", "-f", str(both))
        # Not "applied" and 0 as before: every worker NACKs, and apply says why.
        assert result.returncode == 1, (result.stdout, result.stderr)
        version = parse_version(result.stdout)
        for needle in (f"version {version} is not carried out by {', '.join(node.worker_names)}",
                       f"outboundPort {metrics} of Service port demo/grabber:tcp",
                       f"outboundPort {held_port} of Service port demo/squatter:tcp",
                       "Address already in use"):
            assert needle in result.stderr, (needle, result.stderr)

        # Not ready, and /ready says which workers and why (each beats once a second).
        def not_ready() -> dict | None:
            code, doc = node.ready()
            return doc if code == 503 and doc["not_ready"] == node.worker_names else None
        body = wait_for(not_ready, 10.0, "/ready to say 503 for every worker")
        for worker in node.worker_names:
            assert f"outboundPort {metrics} of Service port demo/grabber:tcp" \
                in body["problems"][worker], body
        shown = node.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert f"not ready: {', '.join(node.worker_names)}" in shown.stdout, shown.stdout
        assert f"proxy-0: config version {version} NACKed: " \
               f"outboundPort {metrics}" in shown.stdout, shown.stdout

        # The rest of the same snapshot is served meanwhile.
        wait_for(lambda: echoes(served), 20.0, "the echo service's listener to relay")
    finally:
        held.close()

    # The port is free now: the workers bind it within a second or two, and the one
    # still taken (the metrics port) is all that is NACKed.
    def only_metrics() -> dict | None:
        code, doc = node.ready()
        problems = doc.get("problems") or {}
        return doc if code == 503 and len(problems) == node.workers and all(
            str(held_port) not in p and str(metrics) in p for p in problems.values()) else None
    wait_for(only_metrics, 10.0, "the freed port to be bound, the metrics port still NACKed")
    wait_for(lambda: echoes(held_port), 10.0, "the freed port to relay")
    again = node.cli("apply", "-f", str(both))
    assert again.returncode == 1 and again.stdout.startswith("unchanged: "), again
    assert f"outboundPort {held_port}" not in again.stderr, again.stderr
    assert f"outboundPort {metrics}" in again.stderr, again.stderr

    # A config without the taken port is carried out: ACKed, ready.
    fixed = resource_dir / "fixed.yaml"
    fixed.write_text(service("grabber", free_port(), app.port))
    result = node.cli("apply", "-f", str(fixed))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    wait_for(lambda: node.ready()[0] == 200, 10.0, "/ready to say 200")
    shown = node.cli("status")
    assert "ready" in shown.stdout.splitlines() and "NACK" not in shown.stdout, shown.stdout
