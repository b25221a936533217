"""Request/reply over the broker's ROUTER: a blocking client and a handler server.

Replies carry the request's ``seq``, so a late answer to a call that already timed out
is recognised and discarded instead of being taken for the answer to the next call.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable

import zmq

from . import protocol
from .counters import Counters
from .endpoints import Endpoints
from .envelope import Envelope, pack, unpack
from .errors import DecodeError, RemoteError, RequestTimeout, ServiceUnavailable

log = logging.getLogger("bus")

Handler = Callable[[Envelope], Any]


class Client:
    """Calls named services; one call at a time per client."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, *, node: str, src: str,
                 counters: Counters | None = None) -> None:
        self.node, self.src = node, src
        self.counters = counters or Counters()
        self._seq = itertools.count(1)
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoints.requests)

    def call(self, service: str, kind: str, body: Any = None, *, timeout_s: float = 5.0) -> Any:
        """Send a request and return the reply body.

        Raises RequestTimeout when no answer comes in time, ServiceUnavailable when the
        broker has no server for ``service``, RemoteError when the server refused it.
        """
        seq = next(self._seq)
        env = Envelope(kind=kind, body=body, node=self.node, src=self.src, seq=seq,
                       ts=time.time())
        self._sock.send_multipart([protocol.CALL, service.encode(), pack(env)])
        self.counters.frames_out += 1
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._sock.poll(remaining_ms, zmq.POLLIN):
                raise RequestTimeout(
                    f"no answer from service {service!r} to {kind!r} within {timeout_s:g}s")
            frames = self._sock.recv_multipart(zmq.NOBLOCK)
            self.counters.frames_in += 1
            if len(frames) == 3 and frames[0] == protocol.FAIL:
                # The broker echoes the request's seq, so a late FAIL for a call that
                # already timed out is not taken as the answer to this one.
                if frames[2] not in (b"", str(seq).encode()):
                    self.counters.drop("stale")
                    continue
                raise ServiceUnavailable(frames[1].decode(errors="replace"))
            if len(frames) != 2 or frames[0] != protocol.ANSWER:
                self.counters.drop("malformed")
                continue
            try:
                reply = unpack(frames[1])
            except DecodeError:
                self.counters.drop("undecodable")
                continue
            if reply.seq != seq:
                self.counters.drop("stale")
                continue
            if reply.kind == "error":
                body = reply.body if isinstance(reply.body, dict) else {}
                raise RemoteError(str(body.get("message", reply.body)),
                                  kind=str(body.get("kind", "error")),
                                  details=body.get("details"))
            return reply.body

    def close(self) -> None:
        self._sock.close(linger=0)


class Server:
    """Serves one service name: dispatches requests by envelope kind to handlers.

    A handler returns the reply body, or raises RemoteError to answer with an error;
    any other exception is answered as an internal error and logged, never fatal.
    """

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, service: str, *, node: str,
                 src: str, counters: Counters | None = None) -> None:
        self.service, self.node, self.src = service, node, src
        self.counters = counters or Counters()
        self._handlers: dict[str, Handler] = {}
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoints.requests)
        self._last_ready = 0.0
        self.heartbeat()

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def heartbeat(self, now: float | None = None) -> None:
        """(Re-)register with the broker; call at least every protocol.HEARTBEAT_S."""
        now = time.monotonic() if now is None else now
        if now - self._last_ready >= protocol.HEARTBEAT_S / 2:
            self.socket.send_multipart([protocol.READY, self.service.encode()])
            self.counters.frames_out += 1
            self._last_ready = now

    def handle_ready(self, limit: int = 100) -> int:
        """Answer every queued request (at most ``limit``); returns how many."""
        handled = 0
        while handled < limit:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.counters.frames_in += 1
            if len(frames) != 3 or frames[0] != protocol.QUERY:
                self.counters.drop("malformed")
                continue
            client = frames[1]
            try:
                request = unpack(frames[2])
            except DecodeError:
                self.counters.drop("undecodable")
                continue
            self._answer(client, request)
            handled += 1
        return handled

    def _answer(self, client: bytes, request: Envelope) -> None:
        kind, body = "reply", None
        handler = self._handlers.get(request.kind)
        if handler is None:
            kind, body = "error", {"kind": "unknown-request",
                                   "message": f"service {self.service!r} does not handle "
                                              f"{request.kind!r}"}
        else:
            try:
                body = handler(request)
            except RemoteError as exc:
                kind, body = "error", {"kind": exc.kind, "message": str(exc),
                                       "details": exc.details}
            except Exception as exc:  # a handler bug must not take the process down
                log.exception("handler for %r failed", request.kind)
                kind, body = "error", {"kind": "internal",
                                       "message": f"{type(exc).__name__}: {exc}"}
        reply = Envelope(kind=kind, body=body, node=self.node, src=self.src,
                         seq=request.seq, ts=time.time())
        try:
            data = pack(reply)
        except (TypeError, ValueError) as exc:  # a handler returned something unpackable
            log.error("reply to %r is not serialisable: %s", request.kind, exc)
            data = pack(Envelope(kind="error", body={"kind": "internal",
                                                     "message": f"reply not serialisable: {exc}"},
                                 node=self.node, src=self.src, seq=request.seq))
        self.socket.send_multipart([protocol.REPLY, client, data])
        self.counters.frames_out += 1

    def close(self) -> None:
        self.socket.close(linger=0)
