"""Event publishing and subscription through the broker's XSUB/XPUB pair.

Events are fire-and-forget: what is published before a subscriber joins, or past a
high-water mark, is lost. State that must not be lost goes through ``bus.clone``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import zmq

from .counters import Counters
from .endpoints import Endpoints
from .envelope import Envelope, pack, unpack
from .errors import DecodeError

log = logging.getLogger("bus")


class Publisher:
    """Publishes ``[topic, envelope]`` frames as one named source of one node."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, *, node: str, src: str,
                 counters: Counters | None = None, sndhwm: int | None = None) -> None:
        self.node, self.src = node, src
        self.counters = counters or Counters()
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 200)
        if sndhwm is not None:
            # At the mark a send says so (offer() returns False) instead of dropping
            # silently, so that the sender can count what it lost.
            self._sock.setsockopt(zmq.SNDHWM, sndhwm)
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        self._sock.connect(endpoints.events_in)

    def publish(self, topic: str, kind: str, body: Any = None, *, seq: int = 0) -> None:
        env = Envelope(kind=kind, body=body, node=self.node, src=self.src, seq=seq,
                       ts=time.time())
        self.send_raw([topic.encode(), pack(env)])

    def offer(self, topic: str, kind: str, body: Any = None, *, seq: int = 0) -> bool:
        """publish() that never waits: False when the send high-water mark is reached
        (with ``sndhwm``; the frame is not sent)."""
        env = Envelope(kind=kind, body=body, node=self.node, src=self.src, seq=seq,
                       ts=time.time())
        try:
            self._sock.send_multipart([topic.encode(), pack(env)], zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.counters.frames_out += 1
        return True

    def send_raw(self, frames: list[bytes]) -> None:
        """Send frames as they are (tests use it to send garbage on purpose)."""
        self._sock.send_multipart(frames)
        self.counters.frames_out += 1

    def close(self) -> None:
        self._sock.close()


class Subscriber:
    """Receives events whose topic starts with one of ``topics``."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, topics: Iterable[str],
                 *, counters: Counters | None = None, rcvhwm: int | None = None) -> None:
        self.counters = counters or Counters()
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.socket.connect(endpoints.events_out)

    def recv(self, timeout_ms: int = 0) -> tuple[str, Envelope] | None:
        """The next valid event, or None when none arrives within ``timeout_ms``.

        Frames that are not ``[topic, envelope]`` are dropped and counted, and the
        wait goes on within the same deadline.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.socket.poll(remaining, zmq.POLLIN):
                return None
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
            self.counters.frames_in += 1
            event = self._decode(frames)
            if event is not None:
                return event

    def drain(self, limit: int = 1000) -> list[tuple[str, Envelope]]:
        """Every event already queued (at most ``limit``), without waiting."""
        out: list[tuple[str, Envelope]] = []
        while len(out) < limit:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.counters.frames_in += 1
            event = self._decode(frames)
            if event is not None:
                out.append(event)
        return out

    def _decode(self, frames: list[bytes]) -> tuple[str, Envelope] | None:
        if len(frames) != 2:
            self.counters.drop("malformed")
            return None
        try:
            return frames[0].decode(), unpack(frames[1])
        except (DecodeError, UnicodeDecodeError) as exc:
            self.counters.drop("undecodable")
            log.debug("dropped undecodable event: %s", exc)
            return None

    def close(self) -> None:
        self.socket.close(linger=0)
