"""bus.broker, running in its own process: garbage from any side is dropped and counted,
and the broker goes on routing events and requests for everyone else.

The ``broker`` fixture fails any test during which the broker process died, and checks
that it exits cleanly on SIGTERM; the counts come from its ``health.bus`` events.
"""

from __future__ import annotations

import random
import socket
from typing import Callable

import msgpack
import pytest
import zmq

from bus import protocol
from bus.endpoints import Endpoints
from bus.envelope import Envelope, pack
from bus.errors import ServiceUnavailable
from bus.pubsub import Publisher, Subscriber
from bus.request import Client, Server

pytestmark = pytest.mark.timeout(20)


def receives_after(sub: Subscriber, pub: Publisher, marker: str, timeout_s: float = 5.0) -> None:
    """``pub`` publishes a valid event and ``sub`` gets it; nothing else but the probes
    and the broker's health may arrive in between (so no garbage got through)."""
    pub.publish("t.after", "after", marker)
    others: list[str] = []
    while True:
        event = sub.recv(int(timeout_s * 1000))
        assert event is not None, f"no valid event after the garbage (got {others})"
        topic, env = event
        if env.kind == "after" and env.body == marker:
            break
        others.append(env.kind)
    assert set(others) <= {"probe", "health", "after"}, others


def check_still_routing(ctx: zmq.Context, endpoints: Endpoints, threads, health,
                        subscribed: Callable, marker: str) -> None:
    """A fresh publisher, subscriber, server and client all work through the broker."""
    pub = Publisher(ctx, endpoints, node="n1", src="later")
    sub = Subscriber(ctx, endpoints, ["t."])
    subscribed(sub, lambda token: pub.publish("t.probe", "probe", token))
    receives_after(sub, pub, marker)
    threads.server("echo-" + marker, {"echo": lambda env: env.body})
    health.wait_service("echo-" + marker, 1)
    client = Client(ctx, endpoints, node="n1", src="later")
    assert client.call("echo-" + marker, "echo", {"m": marker}, timeout_s=5) == {"m": marker}
    for s in (pub, sub, client):
        s.close()


def test_garbage_events_are_dropped_and_counted(ctx: zmq.Context, broker, endpoints: Endpoints,
                                                health, threads, subscribed: Callable) -> None:
    pub = Publisher(ctx, endpoints, node="n1", src="junk")
    narrow = Subscriber(ctx, endpoints, ["t."])
    everything = Subscriber(ctx, endpoints, [""])
    # Until the publisher has the subscriptions, its PUB would drop the garbage itself
    # and the broker would never see it.
    for sub in (narrow, everything):
        subscribed(sub, lambda token: pub.publish("t.probe", "probe", token))
    assert health.wait(lambda h: True)["bus"]["dropped"] == {}

    rng = random.Random(1234)
    garbage = [
        [rng.randbytes(40)],                                       # one frame of noise
        [b"t.x", pack(Envelope(kind="k")), b"extra"],              # three frames
        [b"t.x", b"a", b"b", b"c", b"d"],                          # five frames
        [b"t.x", b"\xc1" + rng.randbytes(40)],                     # envelope not msgpack
        [b"t.x", b""],                                             # empty envelope
        [b"t.x", msgpack.packb({"hello": "world"})],               # a map, not an envelope
        [b"t.x", msgpack.packb([1, 2, 3])],                        # not a map
        [b"t.x", msgpack.packb({"v": 2, "kind": "future"})],       # a newer version
        [b"t.\xff\xfe", pack(Envelope(kind="k"))],                 # topic not UTF-8
    ]
    expected = {"malformed": 3, "undecodable": 6}
    # And a burst of noise: random frame counts and bytes (never a valid envelope).
    for _ in range(500):
        n = rng.randint(1, 4)
        frames = [b"t." + rng.randbytes(rng.randint(0, 20))]
        frames += [b"\xc1" + rng.randbytes(rng.randint(0, 60)) for _ in range(n - 1)]
        garbage.append(frames)
        reason = "undecodable" if n == 2 else "malformed"
        expected[reason] += 1
    for frames in garbage:
        pub.send_raw(frames)

    # One publisher's frames stay in order: the valid event comes after all the garbage.
    receives_after(narrow, pub, "one")
    receives_after(everything, pub, "one")
    assert dict(narrow.counters.dropped) == {} and dict(everything.counters.dropped) == {}, \
        "the broker let garbage through to subscribers"
    health.wait(lambda h: h["bus"]["dropped"] == expected,
                what=f"broker counts drops {expected}")
    assert broker.alive()
    check_still_routing(ctx, endpoints, threads, health, subscribed, "two")
    receives_after(narrow, pub, "three")
    receives_after(everything, pub, "three")


def test_garbage_requests_are_dropped_and_counted(ctx: zmq.Context, broker,
                                                  endpoints: Endpoints, health, threads,
                                                  subscribed: Callable) -> None:
    pub = Publisher(ctx, endpoints, node="n1", src="events")
    sub = Subscriber(ctx, endpoints, ["t."])
    subscribed(sub, lambda token: pub.publish("t.probe", "probe", token))
    threads.server("echo", {"echo": lambda env: env.body})
    health.wait_service("echo", 1)
    client = Client(ctx, endpoints, node="n1", src="client")
    assert client.call("echo", "echo", 1) == 1

    junk = ctx.socket(zmq.DEALER)
    junk.setsockopt(zmq.LINGER, 0)
    junk.connect(endpoints.requests)
    env = pack(Envelope(kind="echo", body="spoof"))
    malformed = [
        [b""], [b"junk"], [bytes(100)],
        [protocol.READY], [protocol.READY, b"svc", b"extra"],
        [protocol.CALL], [protocol.CALL, b"echo"], [protocol.CALL, b"echo", env, b"extra"],
        [protocol.REPLY, b"nobody"],
        [protocol.QUERY, b"id", env], [protocol.ANSWER, env], [protocol.FAIL, b"x"],
    ]
    rng = random.Random(99)
    for _ in range(300):  # random tags that are none of the protocol's
        tag = rng.choice([b"X", b"SS", b"\x00", b"c", rng.randbytes(3)])
        malformed.append([tag] + [rng.randbytes(rng.randint(0, 30))
                                  for _ in range(rng.randint(0, 3))])
    for frames in malformed:
        junk.send_multipart(frames)
    junk.send_multipart([protocol.CALL, b"echo", b"\xc1 not an envelope"])   # undecodable
    junk.send_multipart([protocol.REPLY, b"no-such-client", env])            # unroutable
    junk.send_multipart([protocol.CALL, b"nosuch", env])                     # no server

    # The broker answers a caller at once, even a misbehaving one, in order.
    answers = []
    for _ in range(2):
        assert junk.poll(5000), f"no answer to the junk dealer (got {answers})"
        answers.append(junk.recv_multipart())
    assert answers[0][0] == protocol.FAIL and b"request not decodable" in answers[0][1]
    # The FAIL echoes the request's seq (Envelope's default 0) so late ones are recognised.
    assert answers[1] == [protocol.FAIL, b"no server for service 'nosuch'", b"0"]
    assert not junk.poll(200), "no other answer: the undecodable call was never routed"

    health.wait(lambda h: h["bus"]["dropped"] == {"malformed": len(malformed),
                                                  "undecodable": 1, "unroutable": 1},
                what="broker counts the request garbage")
    assert broker.alive()
    assert client.call("echo", "echo", 2) == 2
    receives_after(sub, pub, "after-requests")
    check_still_routing(ctx, endpoints, threads, health, subscribed, "later")
    junk.close(linger=0)


def test_garbage_on_the_subscriber_side(ctx: zmq.Context, broker, endpoints: Endpoints,
                                        health, threads, subscribed: Callable) -> None:
    # An XSUB may send anything up to the XPUB; the broker passes it to the publishers'
    # side, where PUB sockets discard it.
    pub = Publisher(ctx, endpoints, node="n1", src="events")
    sub = Subscriber(ctx, endpoints, ["t."])
    subscribed(sub, lambda token: pub.publish("t.probe", "probe", token))
    rogue = ctx.socket(zmq.XSUB)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(endpoints.events_out)
    for frames in ([b"\x02junk"], [b"\x01t.", b"second part"], [b"\x00never subscribed"],
                   [b""], [b"plain", b"multi", b"part"], [b"\x01"], [b"\x00"]):
        rogue.send_multipart(frames)
    receives_after(sub, pub, "after-rogue")
    assert broker.alive()
    check_still_routing(ctx, endpoints, threads, health, subscribed, "rogue")
    rogue.close(linger=0)


def test_non_zeromq_bytes_on_the_socket_files(ctx: zmq.Context, broker, endpoints: Endpoints,
                                              health, threads, subscribed: Callable) -> None:
    rng = random.Random(5)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL" + bytes(16) + b"\x00" + bytes(31)
    payloads = [rng.randbytes(4096), b"\x00" * 64, greeting + rng.randbytes(512),
                greeting + b"\x06" + (2**62).to_bytes(8, "big")]  # a frame of 4 EiB
    for name in ("events-in.sock", "events-out.sock", "requests.sock"):
        for payload in payloads:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(endpoints.dir / name))
                try:
                    s.sendall(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # libzmq hung up on the garbage first: that is fine too
    assert broker.alive()
    check_still_routing(ctx, endpoints, threads, health, subscribed, "raw")


def test_silent_server_is_forgotten_after_expiry(ctx: zmq.Context, broker,
                                                 endpoints: Endpoints, health) -> None:
    # Still connected, but no heartbeat: only the expiry can tell it is gone.
    server = Server(ctx, endpoints, "quiet", node="n1", src="quiet")
    health.wait_service("quiet", 1)
    health.wait_service("quiet", 0, timeout_s=protocol.EXPIRY_S + 3)
    client = Client(ctx, endpoints, node="n1", src="client")
    with pytest.raises(ServiceUnavailable, match="no server for service 'quiet'"):
        client.call("quiet", "anything", timeout_s=5)
    # And a heartbeat brings it back.
    server.heartbeat()
    health.wait_service("quiet", 1)
    server.close()
    client.close()
