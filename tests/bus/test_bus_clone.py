"""bus.clone: a StateClient ends up with exactly the owner's map whatever it missed.

The owner (Publisher + Server + StateServer) runs on its own thread with its own Loop,
as in its process, so it answers snapshot requests while the test thread plays the
subscribing process. Updates are lost for real: a small receive high-water mark, a
closed subscription, an owner that goes away.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest
import zmq

from bus.clone import HUGZ, UPDATE, StateClient, snapshot_kind
from bus.endpoints import Endpoints
from bus.envelope import Envelope
from bus.pubsub import Subscriber
from bus.request import Client

pytestmark = pytest.mark.timeout(20)

SERVICE, TOPIC = "cfg", "config.snapshot"


class Mirror:
    """The subscribing process: a Subscriber whose events it feeds to a StateClient."""

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, *, rcvhwm: int | None = None,
                 timeout_s: float = 2.0) -> None:
        self._ctx, self._endpoints, self._rcvhwm = ctx, endpoints, rcvhwm
        self.client = Client(ctx, endpoints, node="n1", src="mirror")
        self.changes: list[dict[str, Any]] = []
        self.state = StateClient(self.client, SERVICE, TOPIC,
                                 lambda items: self.changes.append(dict(items)),
                                 timeout_s=timeout_s)
        self.sub: Subscriber | None = None
        self.updates_fed = 0
        self.resync_causes: list[str] = []  # the kind of each event that caused a resync
        self.subscribe()

    def subscribe(self) -> None:
        self.sub = Subscriber(self._ctx, self._endpoints, [TOPIC], rcvhwm=self._rcvhwm)

    def unsubscribe(self) -> None:
        assert self.sub is not None
        self.sub.close()
        self.sub = None

    def feed(self, events: list[tuple[str, Envelope]]) -> None:
        for topic, env in events:
            assert topic == TOPIC
            was_synced = self.state.synced
            self.state.feed(env)
            if env.kind == UPDATE:
                self.updates_fed += 1
            if was_synced and not self.state.synced:
                self.resync_causes.append(env.kind)

    def pump(self, wait_ms: int = 20) -> int:
        """Feed what has arrived (waiting up to ``wait_ms`` for the first), then tick."""
        assert self.sub is not None
        events = []
        first = self.sub.recv(wait_ms)
        if first is not None:
            events = [first, *self.sub.drain(limit=100_000)]
        self.feed(events)
        self.state.tick()
        return len(events)

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
        self.client.close()


@pytest.fixture
def mirror_factory(ctx: zmq.Context, broker, endpoints: Endpoints) -> Iterator[Callable[..., Mirror]]:
    made: list[Mirror] = []

    def make(**kwargs: Any) -> Mirror:
        m = Mirror(ctx, endpoints, **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def connect(mirror: Mirror, owner, subscribed: Callable) -> None:
    """Make the mirror's subscription live, feeding whatever else arrives meanwhile."""
    seen: list = []
    subscribed(mirror.sub, owner.probe, seen=seen)
    mirror.feed(seen)


def in_sync_with(mirror: Mirror, owner) -> Callable[[], bool]:
    def check() -> bool:
        mirror.pump()
        epoch, seq, items = owner.snapshot()
        s = mirror.state
        return s.synced and s.epoch == epoch and s.seq == seq and s.items == items
    return check


def test_late_joiner_receives_the_current_state(threads, health, mirror_factory,
                                                subscribed: Callable) -> None:
    owner = threads.owner(SERVICE, TOPIC)
    owner.set_many({"a": 1, "b": {"nested": [1, 2]}, "c": "three"})
    owner.set("b", None)  # a delete is part of the state too
    health.wait_service(SERVICE, 1)

    mirror = mirror_factory()  # joins after every change
    connect(mirror, owner, subscribed)
    assert mirror.state.items == {} and not mirror.state.synced
    assert mirror.state.tick()
    epoch, seq, items = owner.snapshot()
    assert items == {"a": 1, "c": "three"}
    s = mirror.state
    assert (s.synced, s.epoch, s.seq, s.items, s.resyncs) == (True, epoch, 4, items, 1)
    assert mirror.changes == [items]


def test_updates_after_the_snapshot_apply_in_order(threads, health, mirror_factory,
                                                   subscribed: Callable,
                                                   eventually: Callable) -> None:
    owner = threads.owner(SERVICE, TOPIC)
    owner.set("a", 1)
    health.wait_service(SERVICE, 1)
    mirror = mirror_factory()
    connect(mirror, owner, subscribed)
    assert mirror.state.tick()
    for i in range(50):
        owner.set(f"k{i % 7}", i)
    owner.set("a", None)
    eventually(in_sync_with(mirror, owner), what="mirror applies every update")
    assert mirror.state.resyncs == 1, "in-order updates need no snapshot"
    assert "a" not in mirror.state.items
    assert len(mirror.changes) == 1 + 51  # the snapshot, then one call per update


def test_subscriber_that_misses_updates_resyncs(threads, health, mirror_factory,
                                                subscribed: Callable) -> None:
    # No hugz: only a gap in the update numbers can reveal the loss here.
    owner = threads.owner(SERVICE, TOPIC, hugz=False)
    health.wait_service(SERVICE, 1)
    mirror = mirror_factory(rcvhwm=10)
    connect(mirror, owner, subscribed)
    assert mirror.state.tick() and mirror.state.resyncs == 1

    burst, padding = 10_000, "x" * 512
    # Far more than the socket buffers and high-water marks hold while the mirror is
    # not reading: ZeroMQ drops the rest.
    owner.call(lambda: [owner.state.set(f"k{i % 97}", f"{i}:{padding}") for i in range(burst)])

    nudges = 0
    last_nudge = 0.0
    deadline = time.monotonic() + 15
    while True:
        received = mirror.pump(50)
        epoch, seq, items = owner.snapshot()
        s = mirror.state
        if s.synced and s.seq == seq and s.items == items and s.resyncs >= 2:
            break
        assert time.monotonic() < deadline, (
            f"not resynced: resyncs={s.resyncs} seq={s.seq}/{seq} synced={s.synced} "
            f"updates fed={mirror.updates_fed}")
        # Once the backlog is read, one more update shows the gap (the tail of the
        # burst may have been dropped too, and then nothing else would).
        if received == 0 and time.monotonic() - last_nudge > 0.5:
            owner.set("nudge", nudges)
            nudges += 1
            last_nudge = time.monotonic()

    assert mirror.updates_fed < burst, "the mirror was meant to miss updates"
    assert mirror.resync_causes and set(mirror.resync_causes) == {UPDATE}
    assert mirror.state.items == owner.snapshot()[2]
    assert mirror.state.resyncs >= 2


def test_lost_last_update_is_found_by_the_heartbeat(ctx: zmq.Context, endpoints: Endpoints,
                                                     threads, health, mirror_factory,
                                                     subscribed: Callable,
                                                     eventually: Callable) -> None:
    owner = threads.owner(SERVICE, TOPIC)
    # The witness keeps the topic subscribed at the owner, and tells when an update has
    # gone through the broker.
    witness = Subscriber(ctx, endpoints, [TOPIC])
    subscribed(witness, owner.probe)
    owner.set("a", 1)
    health.wait_service(SERVICE, 1)
    mirror = mirror_factory()
    connect(mirror, owner, subscribed)
    eventually(in_sync_with(mirror, owner), what="initial sync")
    assert mirror.state.items == {"a": 1}

    mirror.unsubscribe()
    owner.set("b", 2)  # the last update for a while: no later one will show a gap

    def witness_saw_b() -> bool:
        event = witness.recv(100)
        return event is not None and event[1].kind == UPDATE and event[1].body["key"] == "b"

    eventually(witness_saw_b, what="update b went through the broker")
    mirror.subscribe()  # too late for b
    connect(mirror, owner, subscribed)
    assert mirror.state.items == {"a": 1} and mirror.state.synced

    def has_b() -> bool:
        mirror.pump()
        return mirror.state.items == {"a": 1, "b": 2}

    eventually(has_b, timeout_s=5, what="the heartbeat reveals b")
    assert mirror.resync_causes == [HUGZ]
    assert mirror.state.resyncs == 2 and mirror.updates_fed == 0
    witness.close()


def test_owner_restart_means_a_new_snapshot(threads, health, mirror_factory,
                                            subscribed: Callable,
                                            eventually: Callable) -> None:
    first = threads.owner(SERVICE, TOPIC, name="owner-1")
    first.set_many({"keep": 1, "gone": 2})
    health.wait_service(SERVICE, 1)
    mirror = mirror_factory()
    connect(mirror, first, subscribed)
    eventually(in_sync_with(mirror, first), what="sync with the first owner")
    first_epoch = mirror.state.epoch
    first.stop()

    second = threads.owner(SERVICE, TOPIC, name="owner-2")
    second.set_many({"keep": 10, "new": 3})  # numbered from 1 again, in a new epoch
    eventually(in_sync_with(mirror, second), timeout_s=10, what="sync with the new owner")
    s = mirror.state
    assert s.epoch != first_epoch
    assert s.items == {"keep": 10, "new": 3} and "gone" not in s.items
    assert s.resyncs >= 2
    assert mirror.changes[-1] == {"keep": 10, "new": 3}


def test_unreachable_owner_leaves_the_state_alone(threads, health, mirror_factory,
                                                  subscribed: Callable,
                                                  eventually: Callable) -> None:
    owner = threads.owner(SERVICE, TOPIC, name="owner-1")
    owner.set_many({"route": "r1", "weight": 5})
    health.wait_service(SERVICE, 1)
    mirror = mirror_factory()
    connect(mirror, owner, subscribed)
    eventually(in_sync_with(mirror, owner), what="initial sync")
    epoch, seq, items = owner.snapshot()
    changes = len(mirror.changes)
    owner.stop()

    # Silence longer than the heartbeat interval is not a reason to drop anything.
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        mirror.pump(50)
        s = mirror.state
        assert (s.synced, s.epoch, s.seq, s.items) == (True, epoch, seq, items)

    # A sign of change while the owner cannot be asked: the mirror wants a snapshot,
    # cannot get one, and goes on serving the last good state.
    mirror.feed([(TOPIC, Envelope(kind=HUGZ, body={"epoch": "somewhere-else"}, seq=99))])
    assert not mirror.state.synced
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        mirror.pump(50)
        s = mirror.state
        assert (s.synced, s.seq, s.items) == (False, seq, items)
    assert len(mirror.changes) == changes, "no change was reported while unreachable"

    back = threads.owner(SERVICE, TOPIC, name="owner-2")
    back.set_many({"route": "r2"})
    eventually(in_sync_with(mirror, back), timeout_s=10, what="sync once the owner is back")
    assert mirror.state.items == {"route": "r2"}


def test_malformed_snapshot_is_not_taken(threads, health, mirror_factory) -> None:
    threads.server(SERVICE, {snapshot_kind(TOPIC): lambda env: ["not", "a", "snapshot"]})
    health.wait_service(SERVICE, 1)
    mirror = mirror_factory()
    assert not mirror.state.tick()
    assert (mirror.state.synced, mirror.state.items, mirror.state.resyncs) == (False, {}, 0)
