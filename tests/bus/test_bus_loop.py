"""bus.loop: timers fire on time, readable sockets get their callback, stop() ends run()."""

from __future__ import annotations

import signal
import threading
import time
from typing import Iterator

import pytest
import zmq

from bus.loop import Loop

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pair(ctx: zmq.Context) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://loop-test")
    b.connect("inproc://loop-test")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)


def test_timer_fires_repeatedly_and_stop_ends_run() -> None:
    loop = Loop()
    fired: list[float] = []

    def tick() -> None:
        fired.append(time.monotonic())
        if len(fired) == 5:
            loop.stop()

    loop.every(0.02, tick)
    start = time.monotonic()
    loop.run(max_wait_s=1.0)  # the timer, not max_wait, must set the pace
    assert len(fired) == 5
    assert loop.stopping
    gaps = [b - a for a, b in zip(fired, fired[1:])]
    assert all(g >= 0.019 for g in gaps), gaps
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("with_socket", [True, False])
def test_an_idle_loop_waits_instead_of_spinning_before_a_timer(
        pair: tuple[zmq.Socket, zmq.Socket], with_socket: bool) -> None:
    # Ten 20 ms periods: a wait per period, not a burst of poll(0) calls in each
    # period's last millisecond (a wait rounded down to 0 ms); with no socket to poll
    # (zmq_poll would return at once) the loop sleeps.
    loop = Loop()
    if with_socket:
        loop.add_reader(pair[0], lambda: None)      # never readable: nobody sends
    fired: list[float] = []
    loop.every(0.02, lambda: fired.append(time.monotonic()), first_in_s=0.02)
    turns = 0
    while len(fired) < 10:
        loop.run_once(max_wait_s=1.0)
        turns += 1
    assert turns <= 2 * len(fired)


def test_timer_first_in_s_delays_the_first_call() -> None:
    loop = Loop()
    fired: list[float] = []
    loop.every(10.0, lambda: fired.append(time.monotonic()), first_in_s=0.1)
    start = time.monotonic()
    loop.run_once(max_wait_s=0)
    assert fired == []
    while not fired and time.monotonic() - start < 5:
        loop.run_once(max_wait_s=1.0)  # returns when the timer is due, not after 1 s
    assert fired and fired[0] - start >= 0.1
    assert fired[0] - start < 1.0


def test_timers_are_independent() -> None:
    loop = Loop()
    counts = {"fast": 0, "slow": 0}

    def fast() -> None:
        counts["fast"] += 1
        if counts["slow"] >= 2:
            loop.stop()

    loop.every(0.01, fast)
    loop.every(0.05, lambda: counts.__setitem__("slow", counts["slow"] + 1))
    loop.run()
    assert counts["fast"] > counts["slow"] >= 2


def test_reader_is_called_when_the_socket_is_readable(
        pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    a, b = pair
    loop = Loop()
    received: list[bytes] = []

    def on_readable() -> None:
        received.append(b.recv(zmq.NOBLOCK))
        if len(received) == 3:
            loop.stop()

    loop.add_reader(b, on_readable)
    loop.run_once(max_wait_s=0)
    assert received == []  # nothing to read: not called
    for msg in (b"one", b"two", b"three"):
        a.send(msg)
    loop.run(max_wait_s=1.0)
    assert received == [b"one", b"two", b"three"]


def test_reader_and_timer_share_the_loop(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    a, b = pair
    loop = Loop()
    received: list[bytes] = []
    loop.add_reader(b, lambda: received.append(b.recv()))
    sent = iter([b"x", b"y"])

    def send_next() -> None:
        msg = next(sent, None)
        if msg is None:
            loop.stop()
        else:
            a.send(msg)

    loop.every(0.02, send_next)
    loop.run()
    assert received == [b"x", b"y"]


def test_stop_from_another_thread_ends_run_within_max_wait() -> None:
    loop = Loop()
    done = threading.Event()

    def run() -> None:
        loop.run(max_wait_s=0.1)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert not done.wait(0.2)  # nothing stops it on its own
    loop.stop()
    assert done.wait(2.0)
    t.join(2.0)


def test_stop_from_a_signal_handler_ends_run() -> None:
    loop = Loop()
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: loop.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        start = time.monotonic()
        loop.run(max_wait_s=0.3)  # blocked in poll with no timer when the signal lands
        assert time.monotonic() - start < 2.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert loop.stopping
