"""The node's message hub: an XSUB/XPUB event forwarder and a ROUTER for requests.

It never interprets a message beyond what routing needs: the frame count, the service
name, and that the envelope decodes (so one bad sender cannot make every subscriber
drop the same garbage). Whatever does not fit is dropped and counted, never fatal.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import zmq

from . import protocol
from .counters import Counters
from .endpoints import Endpoints, prepare
from .envelope import Envelope, pack, unpack
from .errors import DecodeError


class Broker:
    """Binds the three broker sockets; call ``poll`` in a loop to move frames."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints) -> None:
        prepare(endpoints)
        self.counters = Counters()
        self._xsub = ctx.socket(zmq.XSUB)
        self._xpub = ctx.socket(zmq.XPUB)
        self._router = ctx.socket(zmq.ROUTER)
        # Unroutable replies raise EHOSTUNREACH instead of vanishing, so a dead
        # server is noticed and the next one is tried.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for sock in (self._xsub, self._xpub, self._router):
            sock.setsockopt(zmq.LINGER, 0)
        self._xsub.bind(endpoints.events_in)
        self._xpub.bind(endpoints.events_out)
        self._router.bind(endpoints.requests)
        # service -> {server identity: last heard (monotonic)}, in round-robin order
        self._servers: dict[bytes, OrderedDict[bytes, float]] = {}
        self._poller = zmq.Poller()
        for sock in (self._xsub, self._xpub, self._router):
            self._poller.register(sock, zmq.POLLIN)

    def close(self) -> None:
        for sock in (self._xsub, self._xpub, self._router):
            sock.close(linger=0)

    def services(self) -> dict[str, int]:
        """Live servers per service, for health reports."""
        self._expire(time.monotonic())
        return {name.decode(errors="replace"): len(ids) for name, ids in self._servers.items()}

    def publish(self, topic: str, env: Envelope) -> None:
        """Send the broker's own event (its health) straight to subscribers."""
        self._xpub.send_multipart([topic.encode(), pack(env)])
        self.counters.frames_out += 1

    def poll(self, timeout_ms: int) -> None:
        """Move every frame that is ready, waiting at most ``timeout_ms`` for the first."""
        for sock, _ in self._poller.poll(timeout_ms):
            # Drain a bounded batch per socket so one busy side cannot starve another.
            for _ in range(256):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.counters.frames_in += 1
                if sock is self._xsub:
                    self._on_event(frames)
                elif sock is self._xpub:
                    self._on_subscription(frames)
                else:
                    self._on_request(frames)

    def _on_event(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.counters.drop("malformed")
            return
        try:
            frames[0].decode()  # every subscriber would drop a topic that is not text
            unpack(frames[1])
        except (DecodeError, UnicodeDecodeError):
            self.counters.drop("undecodable")
            return
        self._xpub.send_multipart(frames)
        self.counters.frames_out += 1

    def _on_subscription(self, frames: list[bytes]) -> None:
        # (Un)subscribe messages flow upstream so publishers' XSUB filtering works.
        self._xsub.send_multipart(frames)
        self.counters.frames_out += 1

    def _on_request(self, frames: list[bytes]) -> None:
        now = time.monotonic()
        if len(frames) < 2:
            self.counters.drop("malformed")
            return
        ident, tag, rest = frames[0], frames[1], frames[2:]
        if tag == protocol.READY and len(rest) == 1:
            servers = self._servers.setdefault(rest[0], OrderedDict())
            servers[ident] = now
        elif tag == protocol.CALL and len(rest) == 2:
            self._route_call(ident, rest[0], rest[1], now)
        elif tag == protocol.REPLY and len(rest) == 2:
            self._send(rest[0], [protocol.ANSWER, rest[1]], "unroutable")
        else:
            self.counters.drop("malformed")

    def _route_call(self, client: bytes, service: bytes, envelope: bytes, now: float) -> None:
        try:
            seq = str(unpack(envelope).seq).encode()
        except DecodeError as exc:
            self.counters.drop("undecodable")
            self._send(client, [protocol.FAIL, f"request not decodable: {exc}".encode(), b""],
                       "unroutable")
            return
        self._expire(now)
        servers = self._servers.get(service)
        while servers:
            ident, _ = next(iter(servers.items()))
            servers.move_to_end(ident)  # round robin across a service's servers
            if self._send(ident, [protocol.QUERY, client, envelope], None):
                return
            del servers[ident]  # gone without saying goodbye: forget it, try the next
        name = service.decode(errors="replace")
        self._send(client, [protocol.FAIL, f"no server for service {name!r}".encode(), seq],
                   "unroutable")

    def _send(self, ident: bytes, frames: list[bytes], drop_reason: str | None) -> bool:
        try:
            self._router.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            if drop_reason:
                self.counters.drop(drop_reason)
            return False
        self.counters.frames_out += 1
        return True

    def _expire(self, now: float) -> None:
        for name in list(self._servers):
            servers = self._servers[name]
            for ident in [i for i, seen in servers.items() if now - seen > protocol.EXPIRY_S]:
                del servers[ident]
            if not servers:
                del self._servers[name]
