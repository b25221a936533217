"""State distribution by the ZeroMQ guide's Clone pattern (DESIGN §6).

Pub/sub loses what was sent before a subscriber joined or while it was too slow, so
state that must arrive (config snapshots, trust bundles) is a numbered key/value map:
the owner publishes each change with the next sequence number and answers snapshot
requests; a subscriber starts from a snapshot and applies only the next number. A gap,
a heartbeat ("hugz") announcing a number it has not seen, or a new epoch (the owner
restarted) makes it ask for a fresh snapshot. While the owner is unreachable the
subscriber keeps the state it has: serving the last good config is the whole point.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Callable

from .envelope import Envelope
from .errors import BusError
from .pubsub import Publisher
from .request import Client, Server

log = logging.getLogger("bus")

UPDATE = "clone.update"
HUGZ = "clone.hugz"
HUGZ_INTERVAL_S = 1.0


def snapshot_kind(topic: str) -> str:
    return f"clone.snapshot:{topic}"


class StateServer:
    """The owner's side: a key/value map published as numbered updates on ``topic``."""

    def __init__(self, publisher: Publisher, server: Server, topic: str) -> None:
        self.topic = topic
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.items: dict[str, Any] = {}
        self._pub = publisher
        self._last_hugz = 0.0
        server.register(snapshot_kind(topic), self._on_snapshot)

    def set(self, key: str, value: Any) -> None:
        """Change one key (None deletes it) and publish the change."""
        self.seq += 1
        if value is None:
            self.items.pop(key, None)
        else:
            self.items[key] = value
        self._pub.publish(self.topic, UPDATE, {"epoch": self.epoch, "key": key, "value": value},
                          seq=self.seq)

    def tick(self, now: float | None = None) -> None:
        """Publish the heartbeat that lets subscribers notice a lost last update."""
        now = time.monotonic() if now is None else now
        if now - self._last_hugz >= HUGZ_INTERVAL_S:
            self._pub.publish(self.topic, HUGZ, {"epoch": self.epoch}, seq=self.seq)
            self._last_hugz = now

    def _on_snapshot(self, request: Envelope) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq, "items": self.items}


class StateClient:
    """The subscriber's side: mirrors the owner's map, resyncing on any doubt.

    The caller owns the Subscriber (subscribed to ``topic``) and feeds its events to
    ``feed``; ``tick`` retries a pending resync with backoff. ``on_change`` gets the
    whole map after every change.
    """

    def __init__(self, client: Client, service: str, topic: str,
                 on_change: Callable[[dict[str, Any]], None] | None = None, *,
                 timeout_s: float = 2.0) -> None:
        self.topic, self.service = topic, service
        self.epoch: str | None = None
        self.seq = 0
        self.items: dict[str, Any] = {}
        self.synced = False
        self.resyncs = 0
        self._client = client
        self._on_change = on_change
        self._timeout_s = timeout_s
        self._retry_at = 0.0
        self._backoff_s = 0.25

    def feed(self, env: Envelope) -> None:
        body = env.body if isinstance(env.body, dict) else {}
        epoch = body.get("epoch")
        if not self.synced:
            return  # the snapshot will cover it; the first tick asks for one
        if env.kind == HUGZ:
            if epoch != self.epoch or env.seq > self.seq:
                self._need_resync(f"heartbeat at {epoch}:{env.seq}, have {self.epoch}:{self.seq}")
        elif env.kind == UPDATE:
            if epoch != self.epoch:
                self._need_resync(f"new epoch {epoch}")
            elif env.seq <= self.seq:
                pass  # already covered by the snapshot
            elif env.seq == self.seq + 1 and isinstance(body.get("key"), str):
                self.seq = env.seq
                if body.get("value") is None:
                    self.items.pop(body["key"], None)
                else:
                    self.items[body["key"]] = body["value"]
                self._changed()
            else:
                self._need_resync(f"gap: got {env.seq}, expected {self.seq + 1}")

    def tick(self, now: float | None = None) -> bool:
        """Fetch a snapshot if one is due; returns True when in sync afterwards."""
        now = time.monotonic() if now is None else now
        if self.synced or now < self._retry_at:
            return self.synced
        try:
            snap = self._client.call(self.service, snapshot_kind(self.topic),
                                     timeout_s=self._timeout_s)
        except BusError as exc:
            self._retry_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, 5.0)
            log.debug("snapshot of %s from %s failed: %s", self.topic, self.service, exc)
            return False
        if not (isinstance(snap, dict) and isinstance(snap.get("items"), dict)
                and isinstance(snap.get("seq"), int)):
            self._retry_at = now + self._backoff_s
            log.warning("snapshot of %s from %s is malformed", self.topic, self.service)
            return False
        self.epoch, self.seq, self.items = snap.get("epoch"), snap["seq"], dict(snap["items"])
        self.synced = True
        self.resyncs += 1
        self._backoff_s = 0.25
        self._changed()
        return True

    def _need_resync(self, why: str) -> None:
        log.info("resync of %s: %s", self.topic, why)
        self.synced = False
        self._retry_at = 0.0

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.items)
