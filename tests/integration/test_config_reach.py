"""A config change reaches connections that are already open, through a real node
(issue 9 §2; DESIGN §3, §5).

Why these tests: an operator moves a workload or deletes a service and expects, once
every worker has ACKed the new snapshot, that no new request reaches the old place,
whatever the clients do: keep-alive clients whose connections began on the old table
included (Envoy routes every request on the table current when its head is framed).
Measured before this was built, 100 % of keep-alive traffic and about 90 % of
new-connection traffic still reached the old instance after the ACK.

Each test starts a node with two proxy workers whose config holds a ``backend`` Service
(HTTP port 8080, namespace demo) and its Workload ``backend-v1`` on an HTTP app of
tests.integration.httpapps ("old"), and runs a bounded load against the node's HTTP
outbound listener: two keep-alive clients and one that opens a connection per request,
each paced at PACE_PER_THREAD requests a second and capped in count and time. The apps
note when each request reaches them. Nothing sleeps to synchronise: waits poll a
condition with a deadline; the load's pacing is the only timed wait.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from dataplanekit import cert_of, certs_issued, worker_reports
from httpapps import HTTPApp, Seen
from mnharness import CLI, Node, parse_version, wait_for

BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"
HOST = "backend.demo:8080"
NO_ROUTE = b'no route to host "backend.demo"\n'     # the node's own 404 (fastpath)
IO_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 20.0
PACE_PER_THREAD = 60.0          # requests a second per load thread: ~180 in all
# Issue 9 §2: "within one second of the ACK no new request reaches the old place". The
# ACK's time is taken when wait_version() sees it (status polls), so at or after the
# workers' real ACK: the window checked is never shorter than a second.
REACH_S = 1.0
AFTER_REQUESTS = 30             # per load thread, sent after the ACK + REACH_S

SERVICE_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports:
    - {name: http, port: 8080, protocol: HTTP}
"""

WORKLOAD_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata: {{name: backend-v1, namespace: demo}}
spec:
  address: 127.0.0.1
  ports: {{http: {port}}}
  labels: {{app: backend}}
  serviceAccount: backend
"""

# Workload certificates of 10 s renewed at half life: each worker rotates its
# certificate every 5 s (as in identityharness).
SHORT_CERTS_YAML = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {name: default}
spec:
  certificates: {workloadTTL: 10s, rotateAt: 0.5}
"""


# --- apps that note when each request reached them --------------------------------------------


class TimedApp(HTTPApp):
    """httpapps.HTTPApp ("<name> GET <path>"), noting the monotonic time of each request."""

    def __init__(self, name: str) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self._arrivals_lock = threading.Lock()
        super().__init__(name)

    def record(self, seen: Seen) -> None:
        now = time.monotonic()
        with self._arrivals_lock:
            self.arrivals.append((now, seen.target))
        super().record(seen)

    def arrived_after(self, since: float) -> list[tuple[float, str]]:
        with self._arrivals_lock:
            return [a for a in self.arrivals if a[0] > since and a[1].startswith("/load/")]


def settled_after(outcomes: list, old: TimedApp, ack: float,
                  answered: Callable[[Any], bool]) -> list:
    """Checks what every config-reach test asks: no request failed (each `answered`),
    none reached the old app more than REACH_S after the ACK; the requests sent after
    that point, for the test's own check."""
    failed = [o for o in outcomes if not answered(o)]
    assert not failed, (f"{len(failed)} of {len(outcomes)} requests failed (times from the "
                        f"ACK): {describe(failed, ack)}")
    late = old.arrived_after(ack + REACH_S)
    assert not late, (f"{len(late)} requests reached the old app more than {REACH_S} s after "
                      f"the ACK: {arrivals(late, ack)}")
    return [o for o in outcomes if o.sent_at > ack + REACH_S]


@pytest.fixture
def start_app() -> Iterator[Callable[[str], TimedApp]]:
    apps: list[TimedApp] = []

    def start(name: str) -> TimedApp:
        app = TimedApp(name)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


# --- the load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    thread: int
    path: str
    sent_at: float
    status: int             # 0: no answer (error says why)
    body: bytes
    error: str = ""


class _Counted(http.client.HTTPConnection):
    """An HTTPConnection that counts its TCP connects (http.client reopens by itself
    after an answer that said close)."""

    connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


class Load:
    """Threads 0 and 1 keep one connection each; thread 2 opens one per request. Each is
    paced at PACE_PER_THREAD requests a second, and stops at stop(), ``max_s`` or
    ``max_per_thread`` requests."""

    KEEP_ALIVE = (0, 1)
    THREADS = 3

    def __init__(self, port: int, max_s: float = 40.0, max_per_thread: int = 6000) -> None:
        self.port = port
        self.deadline = time.monotonic() + max_s
        self.max_per_thread = max_per_thread
        self.outcomes: list[Outcome] = []
        self.connects = [0] * self.THREADS
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}",
                                          daemon=True) for i in range(self.THREADS)]
        for t in self._threads:
            t.start()

    def _run(self, index: int) -> None:
        keep = index in self.KEEP_ALIVE
        conn: _Counted | None = None
        next_at = time.monotonic()
        for n in range(self.max_per_thread):
            if self._stop.is_set() or time.monotonic() >= self.deadline:
                break
            if conn is None or not keep:
                if conn is not None:
                    self.connects[index] += conn.connects
                    conn.close()
                conn = _Counted("127.0.0.1", self.port, timeout=IO_TIMEOUT_S)
            path = f"/load/{index}/{n}"
            sent = time.monotonic()
            try:
                conn.request("GET", path, headers={"Host": HOST})
                response = conn.getresponse()
                outcome = Outcome(index, path, sent, response.status, response.read())
            except (OSError, http.client.HTTPException) as exc:
                outcome = Outcome(index, path, sent, 0, b"", repr(exc))
                self.connects[index] += conn.connects
                conn.close()
                conn = None
            with self._lock:
                self.outcomes.append(outcome)
            # Pacing, not synchronisation; a thread that fell behind (a slow answer)
            # goes on at the pace rather than in a burst.
            next_at = max(next_at + 1.0 / PACE_PER_THREAD, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            self.connects[index] += conn.connects
            conn.close()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def sent_after(self, since: float) -> dict[int, int]:
        """Requests each thread sent after ``since`` and got an outcome for."""
        counts = {i: 0 for i in range(self.THREADS)}
        for o in self.snapshot():
            if o.sent_at > since:
                counts[o.thread] += 1
        return counts

    def wait_sent_after(self, since: float, count: int, what: str,
                        timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while min(self.sent_after(since).values()) < count and not self.finished:
            if time.monotonic() > deadline:
                break
            self._stop.wait(0.05)
        counts = self.sent_after(since)
        assert min(counts.values()) >= count, (
            f"not {count} requests of every load thread {what} within {timeout_s:g} s: "
            f"{counts}; each thread's last: {describe(self.last(), since)}")

    def last(self) -> list[Outcome]:
        """Each thread's last outcome."""
        last: dict[int, Outcome] = {}
        for o in self.snapshot():
            last[o.thread] = o
        return [last[i] for i in sorted(last)]

    @property
    def finished(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(IO_TIMEOUT_S + 5)
        assert self.finished, "a load thread hung"


def from_app(o: Outcome, name: str) -> bool:
    return o.status == 200 and o.body == f"{name} GET {o.path}".encode()


def arrivals(seen: list[tuple[float, str]], since: float, limit: int = 5) -> str:
    """The first few arrivals at an app, each with its time relative to ``since``."""
    return ", ".join(f"{target} at {at - since:+.3f} s" for at, target in seen[:limit])


def describe(outcomes: list[Outcome], since: float = 0.0, limit: int = 5) -> str:
    """The first few outcomes, each with its send time relative to ``since``."""
    return "; ".join(f"{o.path} sent at {o.sent_at - since:+.3f} s: {o.status} "
                     f"{o.body[:80]!r} {o.error}" for o in outcomes[:limit])


# --- the node ---------------------------------------------------------------------------------


@dataclass
class Setup:
    node: Node
    old: TimedApp
    dir: Path

    @property
    def port(self) -> int:
        """The node's HTTP outbound listener."""
        return self.node.port_base + 1

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path


def serves(port: int, name: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request("GET", "/ready-probe", headers={"Host": HOST})
        response = conn.getresponse()
        return (response.status, response.read()) == (200, f"{name} GET /ready-probe".encode())
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def start_node(make_node: Callable[..., Node], resource_dir: Path, app: TimedApp,
               extra: str = "") -> Setup:
    config = resource_dir / "config"
    config.mkdir()
    (config / "backend.yaml").write_text(
        extra + SERVICE_YAML + "---\n" + WORKLOAD_YAML.format(port=app.port))
    node = make_node()
    result = node.up("--config", str(config))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    setup = Setup(node, app, resource_dir)
    wait_for(lambda: certs_issued(node, BACKEND_ID), READY_TIMEOUT_S,
             "every worker to hold the backend certificate")
    # Fresh connections, which either worker may accept.
    wait_for(lambda: all(serves(setup.port, app.name) for _ in range(6)), READY_TIMEOUT_S,
             "GETs through the mesh")
    return setup


def acked(node: Node, version: int) -> float:
    """Wait until control and every worker report ``version``; when that was seen."""
    node.wait_version(version)
    return time.monotonic()


# --- 1. a workload moved to another port ------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_moved_workload_gets_no_request_a_second_after_the_ack_and_none_fails(
        make_node: Callable[..., Node], resource_dir: Path,
        start_app: Callable[[str], TimedApp]) -> None:
    old, new = start_app("old"), start_app("new")
    setup = start_node(make_node, resource_dir, old)
    load = Load(setup.port)
    try:
        load.wait_sent_after(0.0, 20, "before the move")
        version = setup.node.apply(setup.write("moved.yaml", WORKLOAD_YAML.format(port=new.port)))
        ack = acked(setup.node, version)
        load.wait_sent_after(ack + REACH_S, AFTER_REQUESTS, "a second after the ACK")
    finally:
        load.stop()
    outcomes = load.snapshot()
    after = settled_after(outcomes, old, ack,
                          lambda o: from_app(o, "old") or from_app(o, "new"))
    stale = [o for o in after if not from_app(o, "new")]
    assert not stale, \
        f"{len(stale)} of {len(after)} answered by the old app: {describe(stale, ack)}"
    # The keep-alive clients kept the connection they began on the old table, and
    # their later requests on it reached the new app.
    for i in Load.KEEP_ALIVE:
        mine = [o for o in outcomes if o.thread == i]
        assert from_app(mine[0], "old") and from_app(mine[-1], "new"), \
            describe(mine[:1] + mine[-1:], ack)
        assert load.connects[i] == 1, f"keep-alive thread {i} connected {load.connects[i]} times"
    assert not old.errors and not new.errors, (old.errors, new.errors)


# --- 2. a deleted service ---------------------------------------------------------------------

# A second Service on the same workload (its own port, 8081): deleting backend leaves the
# node an HTTP host to serve, as in any mesh with more than one service.
KEEPER_YAML = SERVICE_YAML.replace("name: backend,", "name: keeper,").replace(
    "port: 8080", "port: 8081")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("others", [
    "another service stays",
    "the last service",
])
def test_a_deleted_services_requests_get_404_a_second_after_the_ack_and_none_fails(
        make_node: Callable[..., Node], resource_dir: Path,
        start_app: Callable[[str], TimedApp], others: str) -> None:
    old = start_app("old")
    extra = KEEPER_YAML + "---\n" if others == "another service stays" else ""
    setup = start_node(make_node, resource_dir, old, extra=extra)
    load = Load(setup.port)
    try:
        load.wait_sent_after(0.0, 20, "before the delete")
        deleted = setup.node.cli("delete", "service", "backend", "-n", "demo")
        assert deleted.returncode == 0, deleted.stderr
        ack = acked(setup.node, parse_version(deleted.stdout))
        load.wait_sent_after(ack + REACH_S, AFTER_REQUESTS, "a second after the ACK")
    finally:
        load.stop()
    outcomes = load.snapshot()
    after = settled_after(outcomes, old, ack,
                          lambda o: from_app(o, "old") or (o.status, o.body) == (404, NO_ROUTE))
    not_404 = [o for o in after if o.status != 404]
    assert not not_404, \
        f"{len(not_404)} of {len(after)} requests after the ACK: {describe(not_404, ack)}"
    assert not old.errors, old.errors
    if others == "another service stays":
        response = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=IO_TIMEOUT_S)
        try:
            response.request("GET", "/keeper", headers={"Host": "keeper.demo:8081"})
            answer = response.getresponse()
            assert (answer.status, answer.read()) == (200, b"old GET /keeper")
        finally:
            response.close()


# --- 3. workload certificates and the root rotated --------------------------------------------


def renewals(node: Node, seen: dict[str, set[float]]) -> int:
    """Notes each worker's backend certificate (by its not_after); the fewest distinct
    certificates any worker has shown so far."""
    reports = worker_reports(node)
    for name, report in reports.items():
        not_after = cert_of(report, BACKEND_ID).get("not_after")
        if not_after:
            seen.setdefault(name, set()).add(not_after)
    return min((len(seen.get(name, ())) for name in node.worker_names), default=0)


@pytest.mark.timeout(150)
def test_rotating_workload_certificates_and_the_root_fails_no_request(
        make_node: Callable[..., Node], resource_dir: Path,
        start_app: Callable[[str], TimedApp]) -> None:
    old = start_app("old")
    setup = start_node(make_node, resource_dir, old, extra=SHORT_CERTS_YAML + "---\n")
    node = setup.node
    began = time.monotonic()
    load = Load(setup.port, max_s=100.0)
    try:
        # Workload certificates: every worker renews its own twice under the load.
        seen: dict[str, set[float]] = {}
        wait_for(lambda: renewals(node, seen) >= 3, 30.0,
                 "two renewals of every worker's backend certificate")
        # The root: new root, new issuer, every workload certificate re-issued.
        env = {k: v for k, v in os.environ.items() if k != "MESHNODE_RUNTIME_DIR"}
        cli = subprocess.Popen([*CLI, "ca", "rotate-root", "--runtime-dir",
                                str(node.runtime_dir), "--timeout", "50"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, env=env)
        try:
            out, err = cli.communicate(timeout=55)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate(timeout=10)
        assert cli.returncode == 0, out + err
        assert "root rotation complete" in out, out
        load.wait_sent_after(time.monotonic(), 20, "after the root rotation")
    finally:
        load.stop()
    outcomes = load.snapshot()
    failed = [o for o in outcomes if not from_app(o, "old")]
    assert not failed, (f"{len(failed)} of {len(outcomes)} requests failed (times from the "
                        f"load's start): {describe(failed, began)}")
    reports = worker_reports(node)
    assert len(reports) == node.workers and all(
        cert_of(r, BACKEND_ID).get("issuer_generation") == 2 for r in reports.values()), reports
