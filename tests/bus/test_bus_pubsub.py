"""bus.pubsub: events through the broker, topic filtering, and a Subscriber that drops
(and counts) whatever is not a ``[topic, envelope]`` frame."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import msgpack
import pytest
import zmq

from bus.endpoints import Endpoints, prepare
from bus.envelope import Envelope, pack
from bus.pubsub import Publisher, Subscriber

pytestmark = pytest.mark.timeout(20)


def test_event_round_trip_through_the_broker(ctx: zmq.Context, broker, endpoints: Endpoints,
                                             subscribed: Callable, recv: Callable) -> None:
    pub = Publisher(ctx, endpoints, node="n1", src="control")
    sub = Subscriber(ctx, endpoints, ["stats."])
    subscribed(sub, lambda token: pub.publish("stats.w1", "probe", token))
    pub.publish("stats.w1", "stats", {"requests": 3, "bytes": b"\x00\x01"}, seq=9)
    event = recv(sub)
    assert event is not None
    topic, env = event
    assert topic == "stats.w1"
    assert (env.kind, env.body, env.node, env.src, env.seq) == (
        "stats", {"requests": 3, "bytes": b"\x00\x01"}, "n1", "control", 9)
    assert pub.counters.frames_out >= 2 and sub.counters.frames_in >= 2
    assert sub.counters.dropped == {}


def test_subscriber_gets_only_its_topics(ctx: zmq.Context, broker, endpoints: Endpoints,
                                         subscribed: Callable, recv: Callable) -> None:
    pub = Publisher(ctx, endpoints, node="n1", src="w")
    stats = Subscriber(ctx, endpoints, ["stats."])
    both = Subscriber(ctx, endpoints, ["stats.", "access."])
    subscribed(stats, lambda token: pub.publish("stats.x", "probe", token))
    subscribed(both, lambda token: pub.publish("access.x", "probe", token))
    pub.publish("access.w1", "access", 1)
    pub.publish("stats.w1", "stats", 2)
    pub.publish("config.snapshot", "config", 3)
    pub.publish("stats.w1", "stats", 4)
    got_both = [recv(both) for _ in range(3)]
    assert [(t, e.body) for t, e in got_both] == [
        ("access.w1", 1), ("stats.w1", 2), ("stats.w1", 4)]
    got_stats = [recv(stats) for _ in range(2)]
    assert [(t, e.body) for t, e in got_stats] == [("stats.w1", 2), ("stats.w1", 4)]
    assert recv(stats, 100) is None and recv(both, 0) is None


def test_recv_times_out_with_none(ctx: zmq.Context, broker, endpoints: Endpoints) -> None:
    sub = Subscriber(ctx, endpoints, ["nothing."])
    assert sub.recv(0) is None
    assert sub.recv(50) is None
    assert sub.drain() == []


def test_drain_takes_at_most_limit(ctx: zmq.Context, broker, endpoints: Endpoints,
                                   subscribed: Callable, eventually: Callable) -> None:
    pub = Publisher(ctx, endpoints, node="n1", src="w")
    sub = Subscriber(ctx, endpoints, ["t"])
    subscribed(sub, lambda token: pub.publish("t", "probe", token))
    for i in range(10):
        pub.publish("t", "n", i)
    got: list = []
    batches: list[int] = []

    def all_ten() -> bool:
        batch = sub.drain(limit=4)
        if batch:
            batches.append(len(batch))
        got.extend(e for e in batch if e[1].kind != "probe")
        return len(got) >= 10

    eventually(all_ten, what="all ten events")
    assert all(n <= 4 for n in batches) and len(batches) >= 3, batches
    assert [e.body for _, e in got] == list(range(10))


# --- a Subscriber facing a sender that does not follow the protocol -------------------
# The broker filters garbage, so to see the Subscriber's own defence it is connected
# straight to a raw PUB bound where the broker's XPUB would be.

@pytest.fixture
def raw_pub(ctx: zmq.Context, runtime_dir: Path) -> Iterator[tuple[zmq.Socket, Endpoints]]:
    ep = Endpoints.for_runtime_dir(runtime_dir)
    prepare(ep)
    sock = ctx.socket(zmq.PUB)
    sock.bind(ep.events_out)
    yield sock, ep
    sock.close(linger=0)


def test_subscriber_drops_and_counts_garbage(ctx: zmq.Context, raw_pub, subscribed: Callable) -> None:
    pub, ep = raw_pub
    sub = Subscriber(ctx, ep, ["t"])
    subscribed(sub, lambda token: pub.send_multipart(
        [b"t", pack(Envelope(kind="probe", body=token))]))
    before = sub.counters.frames_in
    garbage = [
        [b"t-one-frame"],
        [b"t", pack(Envelope(kind="k")), b"third"],
        [b"t\xff\xfe", pack(Envelope(kind="k"))],  # topic not UTF-8
        [b"t", b"\xc1not msgpack"],
        [b"t", msgpack.packb([1, 2])],
        [b"t", msgpack.packb({"v": 99, "kind": "future"})],
        [b"t", b"\xc1" + os.urandom(63)],
    ]
    for frames in garbage:
        pub.send_multipart(frames)
    pub.send_multipart([b"t.ok", pack(Envelope(kind="good", body=1))])
    event = sub.recv(5000)  # skips every bad frame within the same wait
    assert event is not None and event[0] == "t.ok" and event[1].kind == "good"
    assert sub.counters.frames_in - before == len(garbage) + 1
    assert dict(sub.counters.dropped) == {"malformed": 2, "undecodable": 5}
    # And it goes on receiving after the garbage.
    pub.send_multipart([b"t.ok", pack(Envelope(kind="good", body=2))])
    pub.send_multipart([b"t.ok", pack(Envelope(kind="good", body=3))])
    got = [sub.recv(5000) for _ in range(2)]
    assert [e.body for _, e in got] == [2, 3]


def test_drain_also_drops_garbage(ctx: zmq.Context, raw_pub, subscribed: Callable,
                                  eventually: Callable) -> None:
    pub, ep = raw_pub
    sub = Subscriber(ctx, ep, [""])
    subscribed(sub, lambda token: pub.send_multipart(
        [b"p", pack(Envelope(kind="probe", body=token))]))
    pub.send_multipart([b"x"])
    pub.send_multipart([b"x", b"\xc1"])
    pub.send_multipart([b"x", pack(Envelope(kind="good"))])
    got: list = []
    eventually(lambda: got.extend(sub.drain()) or got, what="the good event")
    assert [(t, e.kind) for t, e in got] == [("x", "good")]
    assert dict(sub.counters.dropped) == {"malformed": 1, "undecodable": 1}
