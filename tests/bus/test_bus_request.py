"""bus.request through a broker process: calls, errors, timeouts, and servers that come
and go (each server runs on its own thread with its own Loop)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import pytest
import zmq

from bus.endpoints import Endpoints
from bus.envelope import Envelope
from bus.errors import BusError, RemoteError, RequestTimeout, ServiceUnavailable
from bus.request import Client, Server

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def client(ctx: zmq.Context, broker, endpoints: Endpoints) -> Iterator[Client]:
    c = Client(ctx, endpoints, node="n1", src="test")
    yield c
    c.close()


def echo(env: Envelope) -> object:
    return env.body


def test_echo_round_trip(client: Client, threads, health) -> None:
    seen: list[Envelope] = []

    def record(env: Envelope) -> object:
        seen.append(env)
        return {"echo": env.body}

    threads.server("echo", {"echo": record})
    health.wait_service("echo", 1)
    body = {"text": "héllo", "bin": b"\x00\xff", "list": [1, 2.5, None], "nested": {"a": {}}}
    assert client.call("echo", "echo", body, timeout_s=5) == {"echo": body}
    assert len(seen) == 1
    assert (seen[0].kind, seen[0].node, seen[0].src, seen[0].seq) == ("echo", "n1", "test", 1)
    assert client.counters.frames_out == 1 and client.counters.frames_in == 1
    assert client.counters.dropped == {}


def test_many_sequential_calls(client: Client, threads, health) -> None:
    threads.server("echo", {"echo": echo})
    health.wait_service("echo", 1)
    for i in range(500):
        assert client.call("echo", "echo", i, timeout_s=5) == i
    assert client.counters.dropped == {}


def test_two_servers_share_the_calls_round_robin(client: Client, threads, health) -> None:
    threads.server("echo", {"who": lambda env: "a"}, name="a")
    threads.server("echo", {"who": lambda env: "b"}, name="b")
    health.wait_service("echo", 2)
    answers = [client.call("echo", "who", timeout_s=5) for _ in range(20)]
    assert set(answers) == {"a", "b"}
    # Strict alternation: heartbeats refresh a server without moving it in the rotation.
    assert all(x != y for x, y in zip(answers, answers[1:])), answers
    assert answers.count("a") == answers.count("b") == 10


def test_timeout_when_the_server_never_answers(ctx: zmq.Context, endpoints: Endpoints,
                                               client: Client, health) -> None:
    # Registered (the constructor says READY) but handle_ready is never called.
    mute = Server(ctx, endpoints, "mute", node="n1", src="mute")
    mute.register("status", echo)
    health.wait_service("mute", 1)
    start = time.monotonic()
    with pytest.raises(RequestTimeout) as info:
        client.call("mute", "status", timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 3.0  # poll works in whole milliseconds
    assert "'mute'" in str(info.value) and "'status'" in str(info.value)
    assert isinstance(info.value, BusError)
    assert mute.socket.poll(5000), "the call did reach the server"
    mute.close()


def test_service_unavailable_at_once_without_a_server(client: Client) -> None:
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="no server for service 'nobody'"):
        client.call("nobody", "status", timeout_s=10)
    assert time.monotonic() - start < 2.0, "the broker answers at once, no timeout"
    # The client is usable afterwards, and a later FAIL is not mistaken for anything.
    with pytest.raises(ServiceUnavailable):
        client.call("nobody", "status", timeout_s=10)


def test_handler_exception_is_an_internal_error_and_the_server_goes_on(
        client: Client, threads, health) -> None:
    def broken(env: Envelope) -> object:
        raise KeyError("missing")

    server = threads.server("svc", {"broken": broken, "echo": echo})
    health.wait_service("svc", 1)
    for _ in range(3):
        with pytest.raises(RemoteError) as info:
            client.call("svc", "broken", timeout_s=5)
        assert info.value.kind == "internal"
        assert "KeyError" in str(info.value) and "missing" in str(info.value)
        assert client.call("svc", "echo", "still here", timeout_s=5) == "still here"
    assert server.call(lambda: server.server.counters.frames_in) == 6


def test_remote_error_keeps_its_kind_and_details(client: Client, threads, health) -> None:
    def refuse(env: Envelope) -> object:
        raise RemoteError("route r1 is unknown", kind="not-found", details={"route": "r1"})

    threads.server("svc", {"refuse": refuse})
    health.wait_service("svc", 1)
    with pytest.raises(RemoteError) as info:
        client.call("svc", "refuse", timeout_s=5)
    assert (info.value.kind, str(info.value), info.value.details) == (
        "not-found", "route r1 is unknown", {"route": "r1"})


def test_unknown_kind_and_unserialisable_reply(client: Client, threads, health) -> None:
    threads.server("svc", {"bad-reply": lambda env: {1, 2, 3}})  # a set: not msgpack-able
    health.wait_service("svc", 1)
    with pytest.raises(RemoteError) as info:
        client.call("svc", "nope", timeout_s=5)
    assert info.value.kind == "unknown-request" and "'nope'" in str(info.value)
    with pytest.raises(RemoteError) as info:
        client.call("svc", "bad-reply", timeout_s=5)
    assert info.value.kind == "internal" and "not serialisable" in str(info.value)


def test_late_reply_is_not_the_answer_to_the_next_call(client: Client, threads,
                                                       health) -> None:
    release = threading.Event()

    def slow(env: Envelope) -> object:
        release.wait(10)  # answers only once the caller has given up
        return "late answer to the first call"

    threads.server("svc", {"slow": slow, "echo": echo})
    health.wait_service("svc", 1)
    try:
        with pytest.raises(RequestTimeout):
            client.call("svc", "slow", timeout_s=0.3)
    finally:
        release.set()
    # The server answers the first call, then this one; the client must skip the first.
    assert client.call("svc", "echo", "second", timeout_s=5) == "second"
    assert client.counters.dropped == {"stale": 1}
    assert client.call("svc", "echo", "third", timeout_s=5) == "third"


def test_calls_work_again_after_the_server_restarts(client: Client, threads, health,
                                                    eventually: Callable) -> None:
    first = threads.server("svc", {"who": lambda env: "first"}, name="first")
    health.wait_service("svc", 1)
    assert client.call("svc", "who", timeout_s=5) == "first"
    first.stop()
    threads.server("svc", {"who": lambda env: "second"}, name="second")

    def answered_by_second() -> bool:
        try:
            return client.call("svc", "who", timeout_s=0.5) == "second"
        except (RequestTimeout, ServiceUnavailable):
            return False  # the broker may not yet know the new one, or the old is gone

    eventually(answered_by_second, 10, what="the restarted server answers")
    # The dead server is forgotten: every call now reaches the new one.
    for _ in range(50):
        assert client.call("svc", "who", timeout_s=5) == "second"
    health.wait_service("svc", 1)


def test_calls_fail_fast_while_the_only_server_is_down(client: Client, threads, health,
                                                       eventually: Callable) -> None:
    server = threads.server("svc", {"echo": echo})
    health.wait_service("svc", 1)
    assert client.call("svc", "echo", 1, timeout_s=5) == 1
    server.stop()
    # The broker notices the disconnect (or the expiry) and says so at once.
    def unavailable() -> bool:
        try:
            client.call("svc", "echo", 2, timeout_s=0.5)
        except ServiceUnavailable:
            return True
        except RequestTimeout:
            return False
        raise AssertionError("a stopped server answered")

    eventually(unavailable, 10, what="ServiceUnavailable after the server stopped")
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        client.call("svc", "echo", 3, timeout_s=10)
    assert time.monotonic() - start < 2.0
