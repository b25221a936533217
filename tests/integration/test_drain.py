"""Graceful drain through a real node (issue 9 §3; meshnode.proxy, meshnode.supervise).

Why these tests: a worker that stops (SIGTERM from supervisord, a restart, `meshnode
down`) used to cut every request in flight on it within 0.2 s. Istio drains, and so
must a node: the worker stops accepting, its siblings take new connections, what is in
flight is answered whole, keep-alive clients are told to go (`Connection: close`), and
the worker exits 0 once nothing is left or at the Mesh's drainDuration. Each test
asserts what a client sees: statuses and whole bodies, or a clean refusal, never an
answer cut short.

Every test starts a node with two proxy workers and the ``backend`` Service of
test_dataplane_http (its ``mesh`` fixture) on an httpapps app, whose ``/slow/MS/N``
answers N bytes after MS ms and ``/trickle/MS/N`` sends them over MS ms. Requests go
to the node's HTTP outbound listener on 127.0.0.1. Nothing sleeps to synchronise:
waits poll a condition with a deadline, and every loop is bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from dataplanekit import settle, worker_reports
from httpapps import stream_bytes
from mnharness import Node, wait_for
from test_dataplane_http import HOST, Mesh, mesh, start_app, wait_serving  # noqa: F401

IO_TIMEOUT_S = 20.0
DEFAULT_DRAIN_S = 5.0           # the Mesh's drainDuration when none is set
LONG_MS = 4000                  # a long request: longer than finding its worker takes
BODY_BYTES = 200_000


# --- clients ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    path: str
    sent_at: float
    ended_at: float
    status: int             # 0: no status line came
    body: bytes
    error: str = ""         # what ended the exchange early, if anything
    closing: bool = False   # the answer said `Connection: close`

    @property
    def answered(self) -> bool:
        return self.status != 0

    @property
    def whole(self) -> bool:
        """A 200 with every byte the app sent."""
        return self.status == 200 and not self.error and self.body == expected_body(self.path)

    @property
    def cut(self) -> bool:
        """An answer began and did not end whole: what a drain must never cause."""
        return self.answered and (bool(self.error) or (self.status == 200 and not self.whole))

    def __str__(self) -> str:
        return (f"{self.path}: status {self.status}, {len(self.body)} bytes"
                f"{', ' + self.error if self.error else ''}")


def expected_body(path: str) -> bytes:
    """What the app answers ``path`` with (httpapps)."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] in ("slow", "trickle"):
        return stream_bytes(int(parts[3]))
    return f"backend GET {path}".encode()


class Counted(http.client.HTTPConnection):
    """An HTTPConnection that counts its TCP connects (it reconnects by itself after
    an answer that said close)."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port, timeout=IO_TIMEOUT_S)
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


def exchange(conn: http.client.HTTPConnection, path: str) -> Result:
    """One GET on ``conn``, however it ends; the connection is closed after a failure."""
    sent = time.monotonic()
    status = 0
    try:
        conn.request("GET", path, headers={"Host": HOST})
        response = conn.getresponse()
        status = response.status
        body = response.read()
        return Result(path, sent, time.monotonic(), status, body,
                      closing=(response.getheader("connection") or "").lower() == "close")
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return Result(path, sent, time.monotonic(), status, b"", repr(exc))


def in_background(port: int, paths: list[str]) -> tuple[list[Result], list[threading.Thread]]:
    """Each path on its own connection, on its own thread; results in order of ending."""
    results: list[Result] = []

    def one(path: str) -> None:
        conn = Counted(port)
        try:
            results.append(exchange(conn, path))
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in paths]
    for t in threads:
        t.start()
    return results, threads


def join_all(threads: list[threading.Thread], timeout_s: float = IO_TIMEOUT_S + 5) -> None:
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client hung"


class Load:
    """``threads`` keep-alive clients sending ``path`` one after another (a new
    connection after an answer that said close, or after a failure), until stop(),
    ``max_s`` or ``max_per_thread`` requests each."""

    def __init__(self, port: int, path: str, threads: int = 2, max_s: float = 60.0,
                 max_per_thread: int = 1000) -> None:
        self.port, self.path = port, path
        self.deadline = time.monotonic() + max_s
        self.max_per_thread = max_per_thread
        self.results: list[list[Result]] = [[] for _ in range(threads)]
        self.connects = [0] * threads
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"load-{i}") for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, index: int) -> None:
        conn = Counted(self.port)
        for _ in range(self.max_per_thread):
            if self._stop.is_set() or time.monotonic() >= self.deadline:
                break
            result = exchange(conn, self.path)
            self.results[index].append(result)
            if not result.answered:
                # Refused (nothing listens): a client's back-off, not a synchronisation.
                self._stop.wait(0.05)
        self.connects[index] = conn.connects
        conn.close()

    def count(self, since: float = 0.0) -> int:
        """Requests sent after ``since`` by the thread that sent fewest."""
        return min(sum(1 for r in list(rs) if r.sent_at > since) for rs in self.results)

    def wait_count(self, count: int, since: float = 0.0, timeout_s: float = 30.0) -> None:
        wait_for(lambda: self.count(since) >= count, timeout_s,
                 f"{count} requests of every load thread")

    def stop(self) -> list[Result]:
        self._stop.set()
        join_all(self._threads)
        return [r for rs in self.results for r in rs]


# --- the node's side --------------------------------------------------------------------------


def pids(node: Node) -> dict[str, int]:
    return {name: p["pid"] for name, p in node.status().items() if p["pid"]}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return False


def busiest_worker(node: Node) -> str:
    """The worker holding the most client connections right now (its last beat)."""
    settle(node)
    active = {name: r["dataplane"]["outbound_connections_active"]
              for name, r in worker_reports(node).items()}
    name = max(active, key=lambda n: active[n])
    assert active[name] >= 1, f"no worker holds a client connection: {active}"
    return name


def events(node: Node, name: str, pid: int) -> list[dict[str, Any]]:
    """The JSON log lines of the run of worker ``name`` that had ``pid``."""
    lines = (node.runtime_dir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
    out: list[dict[str, Any]] = []
    mine = False
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == "process.started":
            mine = doc.get("pid") == pid
        if mine:
            out.append(doc)
    return out


def event(node: Node, name: str, pid: int, what: str) -> dict[str, Any] | None:
    return next((e for e in events(node, name, pid) if e.get("event") == what), None)


def exit_status(node: Node, name: str, nth: int = 1) -> int | None:
    """The exit status supervisord logged for the nth exit or stop of ``name``."""
    text = (node.runtime_dir / "logs" / "supervisord.log").read_text(errors="replace")
    found = re.findall(rf"(?:exited|stopped): {re.escape(name)} \(exit status (\d+)", text)
    return int(found[nth - 1]) if len(found) >= nth else None


def logged_exit(node: Node, name: str, nth: int = 1) -> int:
    """Wait for supervisord to log the nth exit of ``name``; its status."""
    wait_for(lambda: exit_status(node, name, nth) is not None, 5.0,
             f"supervisord to log exit {nth} of {name}")
    status = exit_status(node, name, nth)
    assert status is not None
    return status


def restarted(node: Node, name: str, old_pid: int) -> bool:
    status = node.status()[name]
    return status["state"] == "RUNNING" and status["pid"] not in (None, old_pid)


def drain_mesh(drain: str) -> str:
    return ("apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
            f"spec:\n  connections: {{drainDuration: {drain}}}\n")


# --- 1. a long request through a worker that gets SIGTERM -------------------------------------


@pytest.mark.timeout(120)
def test_long_requests_in_flight_through_a_worker_that_gets_sigterm_complete_whole(
        mesh: Mesh) -> None:
    node = mesh.node
    before = pids(node)
    paths = [f"/slow/{LONG_MS}/{BODY_BYTES}", f"/trickle/{LONG_MS}/{BODY_BYTES}"] * 2
    results, threads = in_background(mesh.port, paths)
    wait_for(lambda: sum(s.target in paths for s in mesh.app.seen) == len(paths), 10.0,
             "the long requests to reach the app")
    name = busiest_worker(node)
    pid = before[name]
    os.kill(pid, signal.SIGTERM)
    killed_at = time.monotonic()

    # Draining: the worker says so (the node is not ready meanwhile), and a second
    # SIGTERM changes nothing.
    wait_for(lambda: event(node, name, pid, "drain.started"), 5.0, f"{name} to start draining")
    wait_for(lambda: worker_reports(node).get(name, {}).get("state") == "draining", 5.0,
             f"{name}'s health to say draining")
    assert node.ready()[0] == 503
    os.kill(pid, signal.SIGTERM)

    join_all(threads)
    assert len(results) == len(paths)
    for r in results:
        assert r.whole, f"cut by the drain: {r}"
        assert r.ended_at > killed_at, f"ended before the SIGTERM, so never drained: {r}"

    # It exits 0 by itself once they are answered, well before the 5 s deadline.
    wait_for(lambda: not alive(pid), DEFAULT_DRAIN_S + 5.0, f"{name} (pid {pid}) to exit")
    started = event(node, name, pid, "drain.started")
    finished = event(node, name, pid, "drain.finished")
    assert started and started["deadline_s"] == DEFAULT_DRAIN_S, started
    assert finished and finished["ended"] == "idle", finished
    assert finished["took_s"] < DEFAULT_DRAIN_S, finished
    assert event(node, name, pid, "process.signal_ignored"), "the second SIGTERM was not seen"
    assert logged_exit(node, name) == 0

    # supervisord starts it again, and the node serves through both workers.
    wait_for(lambda: restarted(node, name, pid), 20.0, f"{name} to be restarted")
    wait_serving(node, mesh.port)


# --- 2. a keep-alive load through a worker's restart and through `meshnode down` --------------


@pytest.mark.timeout(120)
def test_keep_alive_load_through_a_supervisord_restart_of_a_worker_loses_nothing(
        mesh: Mesh) -> None:
    node = mesh.node
    before = pids(node)
    load = Load(mesh.port, "/trickle/100/20000", threads=3, max_s=60.0)
    try:
        load.wait_count(5)
        name = busiest_worker(node)       # holds one of the keep-alive clients at least
        result = node.supervisorctl("restart", f"proxy:{name}")
        assert result.returncode == 0, result.stdout + result.stderr
        restarted_at = time.monotonic()
        assert restarted(node, name, before[name])
        # The load goes on through the restarted worker's return.
        wait_serving(node, mesh.port)
        load.wait_count(10, since=restarted_at)
    finally:
        results = load.stop()

    failed = [r for r in results if not r.whole]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: " + \
        "; ".join(str(r) for r in failed[:5])
    # The restarted worker's clients were told to go, and went to its sibling.
    assert any(r.closing for r in results), "no answer said Connection: close"
    assert sum(load.connects) > len(load.connects), load.connects
    assert logged_exit(node, name) == 0
    finished = event(node, name, before[name], "drain.finished")
    assert finished and finished["ended"] == "idle", finished


@pytest.mark.timeout(120)
def test_meshnode_down_answers_what_is_in_flight_and_then_refuses_cleanly(mesh: Mesh) -> None:
    node = mesh.node
    paths = [f"/slow/{LONG_MS}/{BODY_BYTES}", f"/trickle/{LONG_MS}/{BODY_BYTES}"] * 2
    load = Load(mesh.port, "/trickle/100/20000", threads=2, max_s=60.0)
    long_results: list[Result] = []
    try:
        load.wait_count(5)
        long_results, threads = in_background(mesh.port, paths)
        wait_for(lambda: sum(s.target in paths for s in mesh.app.seen) == len(paths), 10.0,
                 "the long requests to reach the app")
        down_at = time.monotonic()
        result = node.down()
        down_took = time.monotonic() - down_at
        assert result.returncode == 0 and "stopped" in result.stdout, result.stdout + result.stderr
        join_all(threads)
        # Nothing listens any more: every new client is refused, no answer begins.
        load.wait_count(3, since=time.monotonic())
    finally:
        results = load.stop()

    kinds = {"whole": sum(r.whole for r in results), "refused": sum(not r.answered for r in results),
             "other": sum(r.answered and not r.whole for r in results)}
    print(f"load through `down` ({down_took:.1f} s): {kinds}; statuses after: "
          f"{sorted({r.status for r in results if r.sent_at >= down_at})}")
    assert len(long_results) == len(paths)
    for r in long_results:
        assert r.whole, f"in flight when `down` began, and cut: {r}"
    before = [r for r in results if r.sent_at < down_at]
    after = [r for r in results if r.sent_at >= down_at]
    bad = [r for r in before if not r.whole]
    assert not bad, f"{len(bad)} requests sent before `down` failed: " + \
        "; ".join(str(r) for r in bad[:5])
    # After: a whole answer (a 200, or the node's own whole 503 once no inbound
    # listener is left), or no answer at all; never one cut short.
    cut = [r for r in after if r.cut]
    assert not cut, f"{len(cut)} answers cut by `down`: " + "; ".join(str(r) for r in cut[:5])
    assert not after[-1].answered, f"answered after `down` returned: {after[-1]}"
    # The workers drained and ended early: `down` waited for nothing idle.
    assert down_took < DEFAULT_DRAIN_S + 10.0, f"`down` took {down_took:.1f} s"


# --- 3. an idle drain ends at once; drainDuration is the Mesh's --------------------------------


@pytest.mark.timeout(150)
def test_an_idle_worker_exits_at_once_and_drain_duration_comes_from_the_mesh(
        mesh: Mesh) -> None:
    node = mesh.node
    # Refused by name beyond the 30 s bound (supervisord's stop wait is derived from it).
    result = node.cli("apply", "-f", str(mesh.write("long-drain.yaml", drain_mesh("45s"))))
    assert result.returncode == 78, result.stdout + result.stderr
    assert "spec.connections.drainDuration" in result.stderr, result.stderr
    assert "between 100ms and 30s" in result.stderr, result.stderr
    version = node.apply(mesh.write("drain.yaml", drain_mesh("20s")))
    node.wait_version(version)
    before = pids(node)

    # Idle (the pooled connections between the workers aside): gone in far less than
    # the 20 s the Mesh allows.
    pid = before["proxy-0"]
    os.kill(pid, signal.SIGTERM)
    killed_at = time.monotonic()
    wait_for(lambda: not alive(pid), 10.0, f"proxy-0 (pid {pid}) to exit")
    took = time.monotonic() - killed_at
    assert took < 5.0, f"an idle worker took {took:.1f} s to drain"
    started = event(node, "proxy-0", pid, "drain.started")
    assert started and started["deadline_s"] == 20.0, started
    finished = event(node, "proxy-0", pid, "drain.finished")
    assert finished and finished["ended"] == "idle", finished
    assert logged_exit(node, "proxy-0") == 0
    wait_for(lambda: restarted(node, "proxy-0", pid), 20.0, "proxy-0 to be restarted")
    wait_serving(node, mesh.port)

    # A SIGINT during a drain cuts what is left at once (and the worker still exits 0).
    results, threads = in_background(mesh.port, [f"/slow/15000/{BODY_BYTES}"])
    wait_for(lambda: any(s.target.startswith("/slow/15000/") for s in mesh.app.seen),
             10.0, "the long request to reach the app")
    name = busiest_worker(node)         # the one whose client it is
    pid = pids(node)[name]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: event(node, name, pid, "drain.started"), 5.0, f"{name} to start draining")
    cut_at = time.monotonic()
    os.kill(pid, signal.SIGINT)
    wait_for(lambda: not alive(pid), 10.0, f"{name} (pid {pid}) to exit after SIGINT")
    assert time.monotonic() - cut_at < 5.0
    assert event(node, name, pid, "process.drain_cut")
    assert not any(e.get("level") == "error" for e in events(node, name, pid)), \
        events(node, name, pid)[-5:]
    join_all(threads)
    # Its client's connection ended with the cut, not 15 s later with an answer.
    [cut] = results
    assert cut.ended_at - cut_at < 5.0 and not cut.whole, str(cut)
    assert logged_exit(node, name, nth=2 if name == "proxy-0" else 1) == 0
