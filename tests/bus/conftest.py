"""Fixtures for the bus tests: a broker in its own process, bus endpoints on threads.

The broker runs as a real process so that "the broker keeps running" is an observation,
not an assumption; it publishes its counters and live services on ``health.bus`` every
0.1 s, which the tests read to know what the broker has seen. Servers and state owners
run on their own threads, each with its own Loop, as they would in a node's process.
Helpers are handed out as fixtures because tests/bus is not a package.
"""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from bus.clone import StateServer
from bus.endpoints import Endpoints
from bus.loop import Loop
from bus.pubsub import Publisher, Subscriber
from bus.request import Server

NODE = "n1"
HEALTH_TOPIC = "health.bus"

# The broker process: what a node's bus process does, minus meshnode's logging.
BROKER_SCRIPT = r"""
import signal, sys, time
import zmq
from bus.broker import Broker
from bus.endpoints import Endpoints
from bus.envelope import Envelope

stopping = False
def on_term(signum, frame):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, on_term)

ctx = zmq.Context()
broker = Broker(ctx, Endpoints.for_runtime_dir(sys.argv[1]))
next_health = 0.0
while not stopping:
    broker.poll(50)
    now = time.monotonic()
    if now >= next_health:
        next_health = now + 0.1
        broker.publish("health.bus", Envelope(kind="health", body={
            "bus": broker.counters.snapshot(), "services": broker.services()}))
broker.close()
ctx.destroy(linger=0)
"""


def _eventually(fn: Callable[[], Any], timeout_s: float = 5.0, *, what: str = "",
                interval_s: float = 0.01) -> Any:
    """Call ``fn`` until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what or fn!r} (last: {last!r})")
        time.sleep(interval_s)  # a polling interval, not a synchronisation


@pytest.fixture
def eventually() -> Callable[..., Any]:
    return _eventually


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short on purpose: ipc paths must fit in sun_path (107 bytes), pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def endpoints(runtime_dir: Path) -> Endpoints:
    return Endpoints.for_runtime_dir(runtime_dir)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class BrokerProcess:
    """The broker running in a child process, stopped by SIGTERM at teardown."""

    def __init__(self, runtime_dir: Path, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.log_path = runtime_dir / "broker.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", BROKER_SCRIPT, str(runtime_dir)],
                                         stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_bound(self) -> None:
        socks = [self.endpoints.dir / n for n in
                 ("events-in.sock", "events-out.sock", "requests.sock")]

        def bound() -> bool:
            if not self.alive():
                raise AssertionError(f"broker exited {self.proc.returncode}: {self.log()}")
            return all(s.exists() for s in socks)

        _eventually(bound, 15.0, what="broker sockets bound")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not go; returns the exit code of a clean stop."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None


@pytest.fixture
def broker(runtime_dir: Path, endpoints: Endpoints) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(runtime_dir, endpoints)
    try:
        proc.wait_bound()
        yield proc
    finally:
        died_during_test = not proc.alive()
        rc = proc.stop()
    # Every test that used the broker also checks that nothing it did took it down.
    if died_during_test:
        pytest.fail(f"the broker died during the test (exit {rc}):\n{proc.log()}")
    if rc != 0:
        pytest.fail(f"the broker did not stop cleanly on SIGTERM (exit {rc}):\n{proc.log()}")


class Health:
    """The broker's health events: its frame counters and its live servers."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints) -> None:
        self.sub = Subscriber(ctx, endpoints, [HEALTH_TOPIC])
        self.latest: dict[str, Any] | None = None

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0,
             what: str = "") -> dict[str, Any]:
        """The first health body from now on that satisfies ``predicate``."""
        def check() -> dict[str, Any] | None:
            event = self.sub.recv(100)
            if event is None:
                return None
            self.latest = event[1].body
            return self.latest if predicate(self.latest) else None

        return _eventually(check, timeout_s, what=what or "broker health", interval_s=0)

    def dropped(self) -> dict[str, int]:
        assert self.latest is not None
        return self.latest["bus"]["dropped"]

    def wait_service(self, service: str, count: int, timeout_s: float = 5.0) -> None:
        """Until the broker reports exactly ``count`` live servers for ``service``."""
        self.wait(lambda h: h["services"].get(service, 0) == count, timeout_s,
                  what=f"{count} server(s) of {service!r} registered")


@pytest.fixture
def health(ctx: zmq.Context, broker: BrokerProcess, endpoints: Endpoints) -> Iterator[Health]:
    h = Health(ctx, endpoints)
    yield h
    h.sub.close()


def wait_subscribed(sub: Subscriber, probe: Callable[[Any], None], timeout_s: float = 5.0,
                    seen: list | None = None) -> None:
    """Publish probes until ``sub`` receives one: only then is its subscription live.

    PUB/SUB subscriptions travel to the publisher asynchronously (the slow joiner), so
    this is the one way to know. ``probe(token)`` must publish an event of kind "probe"
    with body ``token``. A last "fence" probe is then awaited, so that no probe is left
    in flight (one publisher's events arrive in order). Other events go to ``seen``.
    """
    def wait_for(token: Any, republish: bool) -> Callable[[], bool]:
        def check() -> bool:
            if republish:
                probe(token)
            for _ in range(50):
                event = sub.recv(20)
                if event is None:
                    return False
                if event[1].kind == "probe":
                    if event[1].body == token:
                        return True
                elif seen is not None:
                    seen.append(event)
            return False
        return check

    _eventually(wait_for("live", True), timeout_s, what="subscription live", interval_s=0)
    probe("fence")
    _eventually(wait_for("fence", False), timeout_s, what="fence probe", interval_s=0)


@pytest.fixture
def subscribed() -> Callable[..., None]:
    return wait_subscribed


def recv_skipping_probes(sub: Subscriber, timeout_ms: int = 5000) -> tuple[str, Any] | None:
    """The next event that is not a probe (probes still in flight after wait_subscribed)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        event = sub.recv(max(0, int((deadline - time.monotonic()) * 1000)))
        if event is None or event[1].kind != "probe":
            return event


@pytest.fixture
def recv() -> Callable[..., tuple[str, Any] | None]:
    return recv_skipping_probes


class LoopThread:
    """Bus objects created, used and closed on one thread, driven by that thread's Loop.

    ``call(fn)`` runs ``fn`` on the thread and returns its result, so a test can act as
    the owning process would without sharing sockets across threads.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: Loop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def setup(self, loop: Loop) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def start(self) -> "LoopThread":
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError(f"{self.name} did not start")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = Loop()
        try:
            self.setup(loop)
            loop.every(0.005, self._run_calls)
            self._loop = loop
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            loop.run(max_wait_s=0.05)
        except BaseException as exc:
            self._error = exc
        finally:
            self.close()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def call(self, fn: Callable[[], Any], timeout_s: float = 15.0) -> Any:
        if not self._thread.is_alive():
            raise AssertionError(f"{self.name} is not running: {self._error!r}")
        fut: Future = Future()
        self._calls.put((fn, fut))
        return fut.result(timeout_s)

    def stop(self) -> None:
        if self._thread.is_alive():
            assert self._loop is not None
            self.call(self._loop.stop)
            self._thread.join(10)
            if self._thread.is_alive():
                raise AssertionError(f"{self.name} did not stop")
        if self._error is not None:
            raise AssertionError(f"{self.name} failed: {self._error!r}") from self._error


class ServerThread(LoopThread):
    """A request Server for ``service`` with ``handlers``, serving and heartbeating."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, service: str,
                 handlers: dict[str, Callable], name: str) -> None:
        super().__init__(name)
        self._ctx, self._endpoints = ctx, endpoints
        self.service, self.handlers = service, handlers
        self.server: Server | None = None

    def setup(self, loop: Loop) -> None:
        self.server = Server(self._ctx, self._endpoints, self.service, node=NODE, src=self.name)
        for kind, handler in self.handlers.items():
            self.server.register(kind, handler)
        loop.add_reader(self.server.socket, self.server.handle_ready)
        loop.every(0.1, self.server.heartbeat)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class OwnerThread(LoopThread):
    """A state owner: Publisher, Server and StateServer, publishing hugz when ``hugz``."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, service: str, topic: str,
                 *, hugz: bool, name: str) -> None:
        super().__init__(name)
        self._ctx, self._endpoints = ctx, endpoints
        self.service, self.topic, self.hugz = service, topic, hugz
        self.pub: Publisher | None = None
        self.server: Server | None = None
        self.state: StateServer | None = None

    def setup(self, loop: Loop) -> None:
        self.pub = Publisher(self._ctx, self._endpoints, node=NODE, src=self.name)
        self.server = Server(self._ctx, self._endpoints, self.service, node=NODE, src=self.name)
        self.state = StateServer(self.pub, self.server, self.topic)
        loop.add_reader(self.server.socket, self.server.handle_ready)
        loop.every(0.1, self.server.heartbeat)
        if self.hugz:
            loop.every(0.05, self.state.tick)

    def close(self) -> None:
        for sock in (self.server, self.pub):
            if sock is not None:
                sock.close()

    def set(self, key: str, value: Any) -> None:
        self.call(lambda: self.state.set(key, value))

    def set_many(self, items: dict[str, Any]) -> None:
        def run() -> None:
            for key, value in items.items():
                self.state.set(key, value)
        self.call(run)

    def probe(self, token: Any = None) -> None:
        """Publish an event of a kind state clients ignore (to check subscriptions)."""
        self.call(lambda: self.pub.publish(self.topic, "probe", token))

    def snapshot(self) -> tuple[str, int, dict[str, Any]]:
        """(epoch, seq, items) as the owner has them now."""
        return self.call(lambda: (self.state.epoch, self.state.seq, dict(self.state.items)))


class Threads:
    """Starts LoopThreads for a test and stops every one of them at teardown."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints) -> None:
        self._ctx, self._endpoints = ctx, endpoints
        self._started: list[LoopThread] = []

    def server(self, service: str, handlers: dict[str, Callable], *,
               name: str = "server") -> ServerThread:
        t = ServerThread(self._ctx, self._endpoints, service, handlers, name)
        self._started.append(t)
        t.start()
        return t

    def owner(self, service: str, topic: str, *, hugz: bool = True,
              name: str = "owner") -> OwnerThread:
        t = OwnerThread(self._ctx, self._endpoints, service, topic, hugz=hugz, name=name)
        self._started.append(t)
        t.start()
        return t

    def stop_all(self) -> None:
        errors = []
        for t in reversed(self._started):
            try:
                t.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        self._started.clear()
        if errors:
            raise AssertionError("; ".join(errors))


@pytest.fixture
def threads(ctx: zmq.Context, broker: BrokerProcess, endpoints: Endpoints) -> Iterator[Threads]:
    t = Threads(ctx, endpoints)
    yield t
    t.stop_all()
