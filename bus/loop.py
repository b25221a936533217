"""A small single-threaded reactor over ZeroMQ sockets and periodic timers.

ZeroMQ sockets are not thread-safe, so each process keeps all of its bus sockets on one
thread and drives them from this loop; ``stop()`` may be called from a signal handler.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import zmq

log = logging.getLogger("bus")


@dataclass
class _Timer:
    interval_s: float
    callback: Callable[[], None]
    due: float


class Loop:
    """Calls a socket's callback when it is readable and each timer when it is due."""

    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._readers: dict[zmq.Socket, Callable[[], None]] = {}
        self._timers: list[_Timer] = []
        self._stopping = False

    def add_reader(self, socket: zmq.Socket, callback: Callable[[], None]) -> None:
        self._readers[socket] = callback
        self._poller.register(socket, zmq.POLLIN)

    def every(self, interval_s: float, callback: Callable[[], None], *,
              first_in_s: float = 0.0) -> None:
        self._timers.append(_Timer(interval_s, callback, time.monotonic() + first_in_s))

    def stop(self) -> None:
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self, max_wait_s: float = 0.5) -> None:
        while not self._stopping:
            self.run_once(max_wait_s)

    def run_once(self, max_wait_s: float = 0.5) -> None:
        now = time.monotonic()
        next_due = min((t.due for t in self._timers), default=now + max_wait_s)
        # Rounded up: rounded down, the last millisecond before a timer is due would be
        # spent in poll(0) calls, one after another.
        wait_ms = max(0, math.ceil(min(max_wait_s, next_due - now) * 1000))
        if not self._readers:  # zmq_poll over no socket returns at once: wait here
            time.sleep(wait_ms / 1000)
            ready = []
        else:
            try:
                ready = self._poller.poll(wait_ms)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EINTR:  # a signal arrived: let the caller see stop()
                    return
                raise
        for sock, _ in ready:
            self._readers[sock]()
        now = time.monotonic()
        for timer in self._timers:
            if now >= timer.due:
                timer.due = now + timer.interval_s
                timer.callback()
