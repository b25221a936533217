"""Helpers of the identity integration tests: in-process probe workers and mTLS handshakes.

A probe is a credential holder built from the product's own parts, the same ones a
proxy worker's agent uses (``bus.clone.StateClient`` on ``cert.bundle`` feeding
``identity.creds.WorkerIdentity``), run on a thread of the test process so the test
can use its TLS contexts directly. It beats on ``health.<name>`` like a worker, so the
node's telemetry sees its certificates and ``meshnode ca rotate-root`` waits for it.

ZeroMQ sockets are not thread-safe: every socket of a probe is made, used and closed
on the probe's thread, with its own zmq.Context. The test thread reads only whole
objects the probe swaps in: ``contexts()`` and ``view()``.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from prometheus_client.parser import text_string_to_metric_families

from bus.clone import StateClient
from bus.endpoints import Endpoints
from bus.pubsub import Publisher, Subscriber
from bus.request import Client
from fastpath.errors import TLSError
from fastpath.tls import TLSContext, TLSSession
from meshnode.identity import pki
from meshnode.identity.creds import Contexts, WorkerIdentity

from mnharness import http_get

TD = "cluster.local"
FRONTEND = f"spiffe://{TD}/ns/demo/sa/frontend"
BACKEND = f"spiffe://{TD}/ns/demo/sa/backend"
STRANGER = f"spiffe://{TD}/ns/demo/sa/stranger"
SNI = "backend.demo.svc"
TICK_S = 0.05
HEALTH_EVERY_S = 0.5
SOCKET_TIMEOUT_S = 5

# Frontend and backend placed on every node (no `node` field), with 10-second workload
# certificates renewed at half life, so renewal and expiry happen within one test.
MESH_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  trustDomain: cluster.local
  mtls:
    mode: STRICT
  certificates:
    workloadTTL: {ttl}
    rotateAt: 0.5
"""

SERVICE_YAML = """\
---
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata:
  name: {name}
  namespace: demo
spec:
  selector:
    app: {name}
  ports:
    - name: http
      port: 8080
      protocol: HTTP
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata:
  name: {name}-v1
  namespace: demo
spec:
  address: 127.0.0.1
  ports:
    http: {port}
  labels:
    app: {name}
    version: v1
  serviceAccount: {name}
"""


def write_config(directory: Path, ttl: str = "10s") -> Path:
    """A config dir for `meshnode up --config`: the Mesh, frontend and backend."""
    directory.mkdir(parents=True, exist_ok=True)
    text = MESH_YAML.format(ttl=ttl)
    text += SERVICE_YAML.format(name="frontend", port=18081)
    text += SERVICE_YAML.format(name="backend", port=18082)
    (directory / "mesh.yaml").write_text(text)
    return directory


# --- probe workers -----------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """One certificate the probe installed, as the probe saw it arrive."""

    at: float  # wall clock when the probe installed it
    chain_pem: bytes
    not_before: float
    not_after: float


@dataclass(frozen=True)
class View:
    """A consistent copy of the probe's state, swapped whole after every tick."""

    history: tuple[Issued, ...] = ()
    renewal_failures: int = 0
    bundle_pem: bytes = b""
    bundle_generation: int = 0
    issuer_generation: int = 0
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def current(self) -> Issued | None:
        return self.history[-1] if self.history else None


class Probe:
    """A worker-like holder of one identity's credentials, on its own thread."""

    def __init__(self, runtime_dir: Path, name: str, identity: str, *,
                 bundle_delay_s: float = 0.0) -> None:
        """``bundle_delay_s`` makes a slow worker: it applies each bundle that much late."""
        self.runtime_dir, self.name, self.identity = runtime_dir, name, identity
        self.bundle_delay_s = bundle_delay_s
        self.error: BaseException | None = None
        self.ctx_destroyed = False
        self._view = View()
        self._contexts: Contexts | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Probe":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"probe {self.name} did not stop"
        assert self.ctx_destroyed, f"probe {self.name} left its zmq.Context open"

    # --- what the test thread reads ---------------------------------------------

    def view(self) -> View:
        self.check()
        return self._view

    def contexts(self) -> Contexts | None:
        self.check()
        return self._contexts

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"probe {self.name} failed: {self.error!r}") from self.error

    # --- the probe's thread -------------------------------------------------------

    def _run(self) -> None:
        ctx = zmq.Context()
        sockets: list[Any] = []
        try:
            endpoints = Endpoints.for_runtime_dir(self.runtime_dir)
            node = socket.gethostname()
            client = Client(ctx, endpoints, node=node, src=self.name)
            sub = Subscriber(ctx, endpoints, ["cert.bundle"])
            pub = Publisher(ctx, endpoints, node=node, src=self.name)
            sockets += [client, sub, pub]
            identity = WorkerIdentity(client, self.name)
            pending: list[tuple[float, dict[str, Any]]] = []

            def on_bundle(items: dict[str, Any]) -> None:
                bundle = items.get("bundle")
                if isinstance(bundle, dict):
                    pending.append((time.monotonic() + self.bundle_delay_s, dict(bundle)))

            bundle = StateClient(client, "ca", "cert.bundle", on_bundle)
            identity.want({self.identity})
            next_beat = 0.0
            while not self._stop.is_set():
                for _, env in sub.drain():
                    bundle.feed(env)
                bundle.tick()
                while pending and pending[0][0] <= time.monotonic():
                    identity.on_bundle(pending.pop(0)[1])
                identity.tick()
                health = identity.health()
                now = time.monotonic()
                if now >= next_beat:
                    pub.publish(f"health.{self.name}", "health",
                                {"process": self.name, "pid": os.getpid(), "state": "ok",
                                 **health})
                    next_beat = now + HEALTH_EVERY_S
                self._publish_view(identity, health)
                sub.socket.poll(int(TICK_S * 1000))
        except BaseException as exc:  # shown to the test by check()
            self.error = exc
        finally:
            for sock in sockets:
                sock.close()
            ctx.destroy(linger=0)
            self.ctx_destroyed = ctx.closed

    def _publish_view(self, identity: WorkerIdentity, health: dict[str, Any]) -> None:
        self._contexts = identity.contexts(self.identity)
        cred = identity.creds.get(self.identity)
        history = self._view.history
        if cred is not None and cred.chain_pem is not None and (
                not history or history[-1].chain_pem != cred.chain_pem):
            history = (*history, Issued(time.time(), cred.chain_pem, cred.not_before,
                                        cred.not_after))
        self._view = View(history, identity.renewal_failures, identity.bundle_pem,
                          identity.bundle_generation, identity.issuer_generation, health)


def wait_issued(*probes: Probe, timeout_s: float = 15.0) -> None:
    """Until every probe holds a certificate and contexts built with the bundle."""
    deadline = time.monotonic() + timeout_s
    for probe in probes:
        while probe.contexts() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"probe {probe.name} got no certificate in {timeout_s:g}s "
                                     f"(view: {probe.view()!r})")
            time.sleep(TICK_S)


# --- mutual TLS over loopback ------------------------------------------------------


@dataclass
class Handshake:
    """What each side of one connection saw."""

    client_peer: str | None = None
    server_peer: str | None = None
    reply: bytes | None = None
    client_error: BaseException | None = None
    server_error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None

    def describe(self) -> str:
        return (f"client error: {self.client_error!r}; server error: {self.server_error!r}; "
                f"peers {self.client_peer!r} / {self.server_peer!r}; reply {self.reply!r}")


def _blocking(sock: socket.socket) -> None:
    # TLSSession needs a truly blocking fd: a Python-level timeout makes it non-blocking
    # underneath, so the bound on every call is the kernel's SO_RCVTIMEO/SO_SNDTIMEO.
    sock.settimeout(None)
    timeval = struct.pack("ll", SOCKET_TIMEOUT_S, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def handshake(client_ctx: TLSContext, server_ctx: TLSContext,
              request: bytes = b"ping") -> Handshake:
    """One connection on a loopback listener (port 0): request one way, reply the other."""
    result = Handshake()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(SOCKET_TIMEOUT_S)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                result.server_error = exc
                return
            with conn:
                try:
                    _blocking(conn)
                    session = TLSSession(server_ctx, conn.fileno())
                    session.handshake()
                    result.server_peer = session.peer_spiffe_id
                    got = session.read(1024)
                    session.write(b"pong:" + got)
                    session.shutdown()
                except (TLSError, OSError, ValueError) as exc:
                    result.server_error = exc

        server = threading.Thread(target=serve, name="tls-server", daemon=True)
        server.start()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                _blocking(sock)
                sock.connect(listener.getsockname())
                try:
                    session = TLSSession(client_ctx, sock.fileno(), server_name=SNI)
                    session.handshake()
                    result.client_peer = session.peer_spiffe_id
                    session.write(request)
                    # TLS 1.3: the server judges our certificate after our handshake
                    # is done; a refusal arrives here, as an alert or a close.
                    result.reply = session.read(1024)
                    if not result.reply:
                        raise TLSError("connection closed before the reply")
                    session.shutdown()
                except (TLSError, OSError, ValueError) as exc:
                    result.client_error = exc
        finally:
            server.join(SOCKET_TIMEOUT_S * 3)
    assert not server.is_alive(), "the TLS server thread hung"
    return result


def probe_handshake(client: Probe, server: Probe) -> Handshake:
    """A connection from ``client``'s client context to ``server``'s server context."""
    client_ctx, server_ctx = client.contexts(), server.contexts()
    assert client_ctx is not None and server_ctx is not None, "a probe has no contexts"
    return handshake(client_ctx.client, server_ctx.server)


def assert_mutual(result: Handshake, client_id: str, server_id: str) -> None:
    assert result.ok, result.describe()
    assert result.client_peer == server_id, result.describe()
    assert result.server_peer == client_id, result.describe()
    assert result.reply == b"pong:ping", result.describe()


# --- certificates and metrics --------------------------------------------------------


def openssl_verify(root: Path, cert: Path,
                   untrusted: Path | None = None) -> subprocess.CompletedProcess[str]:
    """OpenSSL's own verdict on ``cert`` under ``root``, via ``untrusted`` intermediates."""
    via = ["-untrusted", str(untrusted)] if untrusted is not None else []
    return subprocess.run(["openssl", "verify", "-CAfile", str(root), *via, str(cert)],
                          capture_output=True, text=True, timeout=10)


def split_chain(chain_pem: bytes) -> list[bytes]:
    return [pki.cert_pem(c) for c in pki.load_certs(chain_pem, "chain")]


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` on a /metrics page ([] if down)."""
    status, body = http_get(url)
    if status != 200:
        return []
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(body.decode())
            for s in family.samples if s.name == name]


def metric_value(url: str, name: str, **labels: str) -> float | None:
    for sample_labels, value in metric_samples(url, name):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None
