"""Opaque TCP through a real node's data plane (DESIGN §3; fastpath.engine, meshnode.dataplane).

Every test starts a node with two proxy workers whose config places an ``echo`` Service
with a TCP port and a local ``outboundPort``, backed by a Workload whose app runs on a
thread of this test. A connection to 127.0.0.1:outboundPort is accepted by one of the
workers (SO_REUSEPORT), relayed over mutual TLS to the node's inbound port
(port-base+6), accepted there by one of the workers again, and relayed to the app.
Nothing here sleeps to synchronise: each wait polls a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from dataplanekit import cert_of, certs_issued, metric_total, settle, worker_reports
from mnharness import CLI, Node, wait_for

pytestmark = pytest.mark.timeout(60)

ECHO_ID = "spiffe://cluster.local/ns/demo/sa/echo"
SNI = "outbound_.7000_._.echo.demo.svc.cluster.local"   # Istio's name of echo's port 7000
LEGACY_SNI = "tcp.echo.demo.svc"                          # the one older nodes send
IO_TIMEOUT_S = 20.0
# Istio's TCP families and the labels an echo connection has in them.
ISTIO_TCP_NAMES = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                   "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total")
ISTIO_TCP = {"request_protocol": "tcp", "response_flags": "-",
             "destination_service": "echo.demo.svc.cluster.local",
             "destination_principal": ECHO_ID, "destination_workload": "echo-1"}
READY_TIMEOUT_S = 20.0
CHUNK_BYTES = 64 * 1024

SERVICE_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: tcp, port: 7000, protocol: TCP{outbound}}}]
"""

WORKLOAD_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: echo-1, namespace: demo}}
spec:
  address: 127.0.0.1
  ports: {{tcp: {app_port}}}
  labels: {{app: echo}}
  serviceAccount: echo
"""


def service_yaml(outbound_port: int | None) -> str:
    return SERVICE_YAML.format(outbound=f", outboundPort: {outbound_port}" if outbound_port
                               else "")


def workload_yaml(app_port: int) -> str:
    return WORKLOAD_YAML.format(app_port=app_port)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the app behind the workload ---------------------------------------------------------

Handler = Callable[[socket.socket], None]


def echo(conn: socket.socket) -> None:
    while data := conn.recv(CHUNK_BYTES):
        conn.sendall(data)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(CHUNK_BYTES, n - got))
        if not data:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def recv_to_eof(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(CHUNK_BYTES):
        parts.append(data)
    return b"".join(parts)


class App:
    """A TCP server on 127.0.0.1, one thread per connection.

    ``handler`` serves the connections accepted from the moment it is set; ``stop()``
    closes the listener and every connection and joins every thread.
    """

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self.handler = handler
        self._listener = socket.create_server(("127.0.0.1", port), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self._accepted = 0
        self._cond = threading.Condition()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"app-{self.port}",
                                          daemon=True)
        self._acceptor.start()

    @property
    def accepted(self) -> int:
        with self._cond:
            return self._accepted

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # stop() shut the listener down
            conn.settimeout(IO_TIMEOUT_S)
            thread = threading.Thread(target=self._serve, args=(conn, self.handler),
                                      name=f"app-{self.port}-conn", daemon=True)
            with self._cond:
                self._accepted += 1
                self._conns.append(conn)
                self._threads.append(thread)
                self._cond.notify_all()
            thread.start()

    def _serve(self, conn: socket.socket, handler: Handler) -> None:
        try:
            handler(conn)
        except OSError as exc:
            if not self._stopping.is_set():
                self.errors.append(exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(5)
        with self._cond:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already
        for thread in threads:
            thread.join(5)
        alive = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        assert not alive, f"app threads did not stop: {alive}"


@pytest.fixture
def start_app() -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(handler: Handler = echo, port: int = 0) -> App:
        app = App(handler, port)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


# --- clients -------------------------------------------------------------------------------


def connect(port: int, timeout_s: float = IO_TIMEOUT_S) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def roundtrip(port: int, payload: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(payload)
        return recv_exactly(sock, len(payload))


def echoes(port: int, payload: bytes = b"ping") -> bool:
    try:
        with connect(port, timeout_s=5.0) as sock:
            sock.sendall(payload)
            return recv_exactly(sock, len(payload)) == payload
    except OSError:  # refused (not bound yet), reset, EOF or timed out: not serving yet
        return False


class Streamer:
    """One long-lived connection through the mesh that echoes chunks on a thread until
    ``stop()``; ``rounds`` counts the chunks that came back intact."""

    def __init__(self, port: int, chunk_bytes: int = 16 * 1024) -> None:
        self.sock = connect(port)
        self.chunk_bytes = chunk_bytes
        self.rounds = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(self.sock.getsockname()[1])
        try:
            while not self._stop.is_set():
                chunk = rng.randbytes(self.chunk_bytes)
                self.sock.sendall(chunk)
                back = recv_exactly(self.sock, len(chunk))
                if back != chunk:
                    raise AssertionError(f"round {self.rounds}: the echo differs")
                self.rounds += 1
        except (OSError, AssertionError) as exc:
            self.error = exc

    def check(self) -> None:
        assert self.error is None, (f"the long-lived connection broke after {self.rounds} "
                                    f"rounds: {self.error!r}")

    def advance(self, rounds: int, what: str, timeout_s: float = 10.0) -> None:
        """Until ``rounds`` more chunks went through from now."""
        target = self.rounds + rounds

        def advanced() -> bool:
            self.check()
            return self.rounds >= target

        wait_for(advanced, timeout_s,
                 f"{rounds} more echo rounds on the long-lived connection {what}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT_S)
        self.sock.close()
        assert not self._thread.is_alive(), "streamer thread hung"

    def stop(self) -> None:
        self.close()
        self.check()


@pytest.fixture
def start_streamer() -> Iterator[Callable[[int], Streamer]]:
    streamers: list[Streamer] = []

    def start(port: int) -> Streamer:
        streamer = Streamer(port)
        streamers.append(streamer)
        return streamer

    yield start
    for streamer in streamers:
        streamer.close()


# --- the node's view: /stats and /metrics ------------------------------------------------


def stats_total(node: Node, key: str) -> int:
    """Sum over the workers of one engine counter in their last health beats."""
    return sum(int((report.get("dataplane") or {}).get(key, 0))
               for report in worker_reports(node).values())


def echo_cert(report: dict[str, Any]) -> dict[str, Any]:
    """What a worker's beat says of its certificate for the echo workload."""
    return cert_of(report, ECHO_ID)


# --- the node -------------------------------------------------------------------------------


@dataclass
class Mesh:
    node: Node
    app: App
    outbound_port: int
    config_dir: Path

    def write(self, name: str, text: str) -> Path:
        """A resource file for `meshnode apply`, beside the seed config dir (not in it)."""
        path = self.config_dir.parent / name
        path.write_text(text)
        return path


def wait_serving(node: Node, port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until both workers hold the workload's certificate and the mesh echoes through
    ``port`` several times in a row (each connection may meet either worker twice)."""
    wait_for(lambda: certs_issued(node, ECHO_ID), timeout_s, "every worker to hold the echo certificate")
    wait_for(lambda: all(echoes(port) for _ in range(6)), timeout_s,
             f"echo through the mesh on 127.0.0.1:{port}")


@pytest.fixture
def mesh(make_node: Callable[..., Node], resource_dir: Path,
         start_app: Callable[..., App]) -> Mesh:
    app = start_app(echo)
    outbound_port = free_port()
    config_dir = resource_dir / "config"
    config_dir.mkdir()
    (config_dir / "echo.yaml").write_text(
        service_yaml(outbound_port) + "---\n" + workload_yaml(app.port))
    node = make_node()
    result = node.up("--config", str(config_dir))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    wait_serving(node, outbound_port)
    return Mesh(node, app, outbound_port, config_dir)


# --- 1. a round trip, and what the node counts -------------------------------------------------


def test_bytes_round_trip_through_the_mesh_and_are_counted(mesh: Mesh) -> None:
    node = mesh.node
    settle(node)
    names = ("meshnode_tcp_connections_opened_total", "meshnode_tls_handshakes_total",
             "meshnode_tcp_received_bytes_total", "meshnode_tcp_sent_bytes_total")
    before = {(name, side): metric_total(node, name, direction=side)
              for name in names for side in ("outbound", "inbound")}
    istio_before = {(name, reporter): metric_total(node, name, reporter=reporter, **ISTIO_TCP)
                    for name in ISTIO_TCP_NAMES for reporter in ("source", "destination")}
    accepted = mesh.app.accepted

    payload = os.urandom(256 * 1024)
    assert roundtrip(mesh.outbound_port, payload) == payload
    assert mesh.app.accepted == accepted + 1, "the connection did not reach the app once"

    def grown() -> dict[tuple[str, str], float] | None:
        delta = {(name, side): metric_total(node, name, direction=side) - value
                 for (name, side), value in before.items()}
        ok = all(delta[(name, side)] >= 1 for name in names[:2]
                 for side in ("outbound", "inbound"))
        ok = ok and all(delta[(name, side)] >= len(payload) for name in names[2:]
                        for side in ("outbound", "inbound"))
        return delta if ok else None

    wait_for(grown, 10.0, "connections, handshakes and bytes of both sides in /metrics")
    # The same counters, as the workers' beats carry them.
    for side in ("outbound", "inbound"):
        for key in ("bytes_received", "bytes_sent"):
            assert stats_total(node, f"{side}_{key}") >= len(payload)
        assert stats_total(node, f"{side}_tls_handshakes") >= 1
    # The pair is gone once both ends closed: nothing is left open in either engine.
    wait_for(lambda: all(metric_total(node, "meshnode_tcp_connections_active", direction=side)
                         == 0 for side in ("outbound", "inbound")),
             10.0, "no active data plane connections")
    # Istio's names, by both reporters, with its labels: this one pair, its bytes exactly
    # (the echo answers each byte; nothing else is sent on it).
    settle(node)
    istio = {key: metric_total(node, key[0], reporter=key[1], **ISTIO_TCP) - value
             for key, value in istio_before.items()}
    for reporter in ("source", "destination"):
        assert [istio[name, reporter] for name in ISTIO_TCP_NAMES] == [
            1, 1, len(payload), len(payload)], reporter


# --- 2. volume and backpressure -----------------------------------------------------------------


def test_reconnections_resume_whichever_worker_they_reach(mesh: Mesh) -> None:
    """Both workers share the inbound port and the node's ticket keys: a session one
    worker issued resumes on the other, so after each outbound worker's first full
    handshake, new connections resume (with per-worker keys about half would not)."""
    node = mesh.node
    keys = node.runtime_dir / "tls" / "ticket.secret"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and keys.stat().st_size == 32
    settle(node)
    full_before = metric_total(node, "meshnode_tls_handshakes_total", direction="inbound")
    resumed_before = metric_total(node, "meshnode_tls_resumed_handshakes_total",
                                  direction="inbound")
    for i in range(30):                 # a new mTLS connection each: TCP is not pooled
        payload = f"reconnect {i}".encode()
        assert roundtrip(mesh.outbound_port, payload) == payload
    settle(node)
    handshakes = metric_total(node, "meshnode_tls_handshakes_total",
                              direction="inbound") - full_before
    resumed = metric_total(node, "meshnode_tls_resumed_handshakes_total",
                           direction="inbound") - resumed_before
    assert handshakes == 30
    # Sessions were resumed before this test (its warm-up): at most a full handshake
    # per outbound worker is left to make.
    assert resumed >= handshakes - node.workers, (handshakes, resumed)


def test_8_mib_both_ways_with_a_slow_reader(mesh: Mesh) -> None:
    total = 8 * 1024 * 1024
    data = random.Random(2).randbytes(total)
    sent_digest = hashlib.sha256(data).hexdigest()
    written = [0]
    writer_error: list[BaseException] = []

    def read_all(sock: socket.socket, read_bytes: int, pause_every: int = 0) -> str:
        digest, got = hashlib.sha256(), 0
        while got < total:
            chunk = sock.recv(read_bytes)
            assert chunk, f"EOF after {got} of {total} bytes"
            digest.update(chunk)
            got += len(chunk)
            if pause_every and got % pause_every < len(chunk):
                time.sleep(0.02)  # pacing a slow reader, not synchronisation
        return digest.hexdigest()

    with connect(mesh.outbound_port) as sock:
        def write() -> None:
            try:
                for offset in range(0, total, CHUNK_BYTES):
                    sock.sendall(data[offset:offset + CHUNK_BYTES])
                    written[0] = offset + CHUNK_BYTES
            except OSError as exc:
                writer_error.append(exc)

        writer = threading.Thread(target=write, name="writer", daemon=True)
        writer.start()
        # Read nothing until the writer is done or held back (no progress for 0.5 s):
        # the echo app then blocks on its sends and stops reading, and every hop fills.
        # (Loopback socket buffers alone may hold the 8 MiB: whether the writer stalls
        # is not the point; what the engine holds meanwhile is, checked below.)
        seen = {"written": -1, "since": time.monotonic()}

        def done_or_stalled() -> bool:
            now = time.monotonic()
            if written[0] != seen["written"]:
                seen.update(written=written[0], since=now)
            return not writer.is_alive() or now - seen["since"] >= 0.5

        wait_for(done_or_stalled, 20.0, "the writer to finish or block", interval_s=0.05)
        # A slow reader: small reads with a pause every 256 KiB.
        assert read_all(sock, 4096, pause_every=256 * 1024) == sent_digest
        writer.join(IO_TIMEOUT_S)
        assert not writer.is_alive() and not writer_error, writer_error

        # Both directions at once, at full speed.
        writer = threading.Thread(target=write, name="writer-2", daemon=True)
        writer.start()
        assert read_all(sock, CHUNK_BYTES) == sent_digest
        writer.join(IO_TIMEOUT_S)
        assert not writer.is_alive() and not writer_error, writer_error
    assert not mesh.app.errors, mesh.app.errors

    # Backpressure, not buffering: a pair holds at most one pooled buffer per direction,
    # so a worker that carried this connection's outbound and inbound pairs (and the
    # readiness probes' before them, one at a time) peaked at a few buffers, not at the
    # 512 that 8 MiB in 16 KiB blocks would take.
    settle(mesh.node)
    peaks = {name: (report.get("dataplane") or {}).get("buffers_peak")
             for name, report in worker_reports(mesh.node).items()}
    assert len(peaks) == mesh.node.workers and all(
        isinstance(p, int) and p <= 8 for p in peaks.values()), peaks


# --- 3. half-close ---------------------------------------------------------------------------


def test_half_close_passes_eof_and_the_reply_still_flows(mesh: Mesh) -> None:
    request = os.urandom(100 * 1024)
    reply_body = os.urandom(1024 * 1024)
    saw_eof = threading.Event()
    received: list[bytes] = []

    def reply_after_eof(conn: socket.socket) -> None:
        received.append(recv_to_eof(conn))
        saw_eof.set()
        conn.sendall(hashlib.sha256(received[0]).digest() + reply_body)
        # _serve closes the connection: the client must then see EOF.

    mesh.app.handler = reply_after_eof
    with connect(mesh.outbound_port) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        assert saw_eof.wait(IO_TIMEOUT_S), "the app never saw the client's EOF"
        assert received == [request]
        reply = recv_to_eof(sock)  # the reply, then EOF (b""), not a reset
    assert reply == hashlib.sha256(request).digest() + reply_body
    assert not mesh.app.errors, mesh.app.errors


# --- 4. the inbound port wants a mesh certificate ---------------------------------------------


def s_client(port: int, servername: str) -> subprocess.CompletedProcess[str]:
    """A client with no certificate, speaking first (TLS 1.3 checks it after the handshake).

    -ign_eof keeps it reading after its input ends, until the server closes: otherwise it
    may quit before the server's alert arrives, which comes after the client's handshake."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername,
         "-alpn", "meshnode-tcp", "-ign_eof"],
        input="hello from a stranger\n", capture_output=True, text=True, timeout=15)


def failures(node: Node, reason: str) -> float:
    return metric_total(node, "meshnode_dataplane_failures_total", direction="inbound",
                        reason=reason)


def test_inbound_refuses_a_client_without_certificate_and_an_unknown_sni(mesh: Mesh) -> None:
    """By either name of the port's route (Istio's, and the one older nodes send) the
    route's certificate check refuses it (tls_failures_verify, not tls_unknown_sni)."""
    node = mesh.node
    inbound = node.port_base + 6
    settle(node)
    accepted = mesh.app.accepted
    verify_before = failures(node, "tls_failures_verify")
    sni_before = failures(node, "tls_unknown_sni")

    for k, name in enumerate((SNI, LEGACY_SNI), 1):
        result = s_client(inbound, name)
        # TLS 1.3 (RFC 8446 §4.4.2.4): the server answers an empty Certificate with this alert.
        assert "certificate required" in result.stderr, result.stdout + result.stderr
        wait_for(lambda k=k: failures(node, "tls_failures_verify") >= verify_before + k, 10.0,
                 f"the verify failure of a client without certificate naming {name} in /metrics")

    # An unknown name gets the same answer (not unrecognized_name, which would list the
    # node's services to a caller without a certificate), and is counted as before.
    result = s_client(inbound, "nosuch.echo.demo.svc")
    assert "certificate required" in result.stderr, result.stdout + result.stderr
    wait_for(lambda: failures(node, "tls_unknown_sni") > sni_before, 10.0,
             "the unknown SNI in /metrics")

    settle(node)  # every worker has reported since: no connection is still being set up
    assert mesh.app.accepted == accepted, "a refused client reached the app"
    assert failures(node, "tls_failures_verify") == verify_before + 2
    assert failures(node, "tls_unknown_sni") == sni_before + 1
    # The mesh itself still gets through.
    assert echoes(mesh.outbound_port)


# --- 5. the app goes away and comes back --------------------------------------------------------


def test_app_down_closes_the_client_and_the_node_recovers(mesh: Mesh,
                                                          start_app: Callable[..., App]) -> None:
    node = mesh.node
    settle(node)
    failed_before = metric_total(node, "meshnode_dataplane_failures_total",
                                 direction="inbound", reason="connect_failures")
    port = mesh.app.port
    mesh.app.stop()

    for _ in range(3):
        # The mesh closes the client as soon as the inbound side fails to reach the app;
        # on a busy machine that can come before connect() has read back its result, so
        # a reset at connect, send or read is the same close.
        try:
            with connect(mesh.outbound_port) as sock:
                sock.sendall(b"anyone there?")
                assert sock.recv(1024) == b"", "bytes came back from an app that is down"
        except (ConnectionResetError, BrokenPipeError):
            pass
    wait_for(lambda: metric_total(node, "meshnode_dataplane_failures_total", direction="inbound",
                                  reason="connect_failures") >= failed_before + 3,
             10.0, "the inbound connect failures in /metrics")

    app = start_app(echo, port)  # back at the same address
    wait_for(lambda: all(echoes(mesh.outbound_port) for _ in range(6)), READY_TIMEOUT_S,
             "echo through the mesh once the app is back")
    assert app.accepted >= 6


# --- 6. config change in place ------------------------------------------------------------------


# The Mesh's drainDuration when the test does not set one (Istio's default).
DEFAULT_DRAIN_S = 5.0


def test_workload_port_change_moves_new_connections_and_ends_old_ones_after_the_drain(
        mesh: Mesh, start_app: Callable[..., App],
        start_streamer: Callable[[int], Streamer]) -> None:
    """Envoy's rule for an opaque connection whose destination left the config: it goes
    on for the drain period, then is closed; new connections go to the new place."""
    old_app = mesh.app
    streamer = start_streamer(mesh.outbound_port)
    streamer.advance(20, "before the change")
    assert old_app.accepted >= 1
    new_app = start_app(echo)

    moved = mesh.write("moved.yaml", workload_yaml(new_app.port))
    # The drain runs from the swap on the streamer's worker: after this, and before the
    # last worker's ACK, which a loaded host may report seconds after the swap.
    applied = time.monotonic()
    version = mesh.node.apply(moved)
    mesh.node.wait_version(version)  # every worker ACKed: its engine has the new table
    streamer.advance(20, "after every worker runs the new config")   # not cut at once

    old_count, new_count = old_app.accepted, new_app.accepted
    for i in range(10):
        payload = f"new connection {i}".encode()
        assert roundtrip(mesh.outbound_port, payload) == payload
    assert new_app.accepted == new_count + 10, "a new connection did not reach the new app"
    assert old_app.accepted == old_count, "a new connection reached the old app"
    wait_for(lambda: streamer.error is not None, DEFAULT_DRAIN_S + 3.0,
             "the connection to the old place closed after the drain period")
    assert time.monotonic() - applied >= DEFAULT_DRAIN_S * 0.8
    assert isinstance(streamer.error, ConnectionError), repr(streamer.error)
    assert not new_app.errors, new_app.errors


# --- 7. certificate rotation in place ------------------------------------------------------------


def test_root_rotation_breaks_no_connection(mesh: Mesh,
                                            start_streamer: Callable[[int], Streamer]) -> None:
    node = mesh.node
    streamer = start_streamer(mesh.outbound_port)
    streamer.advance(20, "before the rotation")
    env = {k: v for k, v in os.environ.items() if k != "MESHNODE_RUNTIME_DIR"}
    cli = subprocess.Popen([*CLI, "ca", "rotate-root", "--runtime-dir", str(node.runtime_dir),
                            "--timeout", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, env=env)
    problems: list[str] = []
    done = 0
    try:
        deadline = time.monotonic() + 45.0
        while cli.poll() is None and time.monotonic() < deadline:
            payload = f"connection {done} during the rotation".encode()
            try:
                back = roundtrip(mesh.outbound_port, payload)
                if back != payload:
                    problems.append(f"#{done}: echoed {back!r}")
            except OSError as exc:
                problems.append(f"#{done}: {exc!r}")
            done += 1
    finally:
        if cli.poll() is None:
            cli.kill()
        out, err = cli.communicate(timeout=10)
    assert cli.returncode == 0, out + err
    assert "root rotation complete" in out, out
    assert not problems, f"{len(problems)} of {done} new connections failed: {problems[:5]}"
    assert done >= 20, f"only {done} connections during the rotation"

    # The workers run certificates of the new issuer now, and the mesh still works.
    reports = worker_reports(node)
    assert len(reports) == node.workers and all(
        echo_cert(r).get("issuer_generation") == 2 for r in reports.values()), reports
    for i in range(6):
        assert roundtrip(mesh.outbound_port, b"after %d" % i) == b"after %d" % i
    streamer.advance(20, "after the rotation")
    streamer.stop()
    assert not mesh.app.errors, mesh.app.errors


# --- 8. an outboundPort removed ----------------------------------------------------------------


def refused(port: int) -> bool:
    try:
        with connect(port, timeout_s=5.0):
            return False
    except ConnectionRefusedError:
        return True


def test_removing_the_outbound_port_closes_its_listener(
        mesh: Mesh, start_streamer: Callable[[int], Streamer]) -> None:
    streamer = start_streamer(mesh.outbound_port)
    streamer.advance(10, "before the change")

    without = mesh.write("without.yaml", service_yaml(None))
    version = mesh.node.apply(without)
    mesh.node.wait_version(version)
    wait_for(lambda: refused(mesh.outbound_port), 10.0,
             f"127.0.0.1:{mesh.outbound_port} to refuse connections")
    # A listener going away leaves the connections it accepted alone.
    streamer.advance(20, "after its listener closed")
    streamer.stop()

    # And the port comes back when the config names it again.
    version = mesh.node.apply(mesh.write("with.yaml", service_yaml(mesh.outbound_port)))
    mesh.node.wait_version(version)
    wait_for(lambda: all(echoes(mesh.outbound_port) for _ in range(6)), READY_TIMEOUT_S,
             "echo once the outboundPort is back")
