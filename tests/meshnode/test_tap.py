"""Tap sessions without a node (meshnode.tap): telemetry's Hub and a worker's WorkerTaps
wired to each other directly, on a test clock: filters, the bounds that end a session
by itself, and the split between the access log's records and the taps'."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bus.errors import RemoteError
from meshnode import cli_tap, tap

ME = "spiffe://cluster.local/ns/demo/sa/web"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(path: str, method: str = "GET", tap_only: bool = True, **extra: Any) -> dict[str, Any]:
    rec = {"method": method, "path": path, "authority": "backend.demo:8080",
           "reporter": "source", "upstream_cluster": "outbound|||demo/backend:http",
           "upstream_local_uri_san": ME, "upstream_peer_uri_san": None, **extra}
    return {**rec, "tap_only": True} if tap_only else rec


def lines(*records: dict[str, Any]) -> bytes:
    """Records as the engine's reader gives them: JSON lines."""
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.fixture
def wired() -> tuple[tap.Hub, tap.WorkerTaps, Clock, list[bool]]:
    clock = Clock()
    engine_tap: list[bool] = []
    worker = tap.WorkerTaps(engine_tap.append, clock)
    snapshot = {"workloads": [{"workload": "demo/web", "identity": ME}]}
    hub = tap.Hub(worker.offer, tap.resolver(lambda: snapshot), clock)
    return hub, worker, clock, engine_tap


def test_a_session_gets_what_its_filter_matches_and_the_log_only_its_own(wired) -> None:
    hub, worker, clock, engine_tap = wired
    sid = hub.start({"kind": "deploy", "name": "web", "path_prefix": "/a", "method": "GET",
                     "duration_s": 10})["session"]
    worker.refresh()
    assert engine_tap == [True]
    logged, count, tapped = worker.split(lines(
        record("/a/1"), record("/b"), record("/a/2", "POST"), record("/a/3", tap_only=False),
        record("/a/4", upstream_local_uri_san="spiffe://x")))
    assert (logged, count) == (lines(record("/a/3", tap_only=False)), 1)
    assert [(ids, r["path"]) for ids, r in tapped] == [([sid], "/a/1"), ([sid], "/a/3")]
    hub.on_tapped(tapped)
    assert [r["path"] for r in hub.poll({"session": sid})["records"]] == ["/a/1", "/a/3"]


def test_sessions_end_by_themselves_at_max_duration_and_idle(wired) -> None:
    hub, worker, clock, engine_tap = wired
    by_max = hub.start({"duration_s": 60, "max": 2})["session"]
    by_time = hub.start({"duration_s": 3})["session"]
    idle = hub.start({"duration_s": 60})["session"]
    worker.refresh()
    hub.on_tapped(worker.split(lines(record("/1"), record("/2"), record("/3")))[2])
    assert hub.poll({"session": by_max}) == {"records": [record("/1", tap_only=False),
                                                         record("/2", tap_only=False)],
                                             "dropped": 0, "ended": "max"}
    clock.now += 3
    hub.poll({"session": by_time})
    hub.tick()
    assert hub.poll({"session": by_time})["ended"] == "duration"
    clock.now += tap.IDLE_S             # `idle` not polled since it began
    hub.tick()
    assert hub.poll({"session": idle})["ended"] == "idle"
    worker.refresh()
    assert worker.sessions() == [] and engine_tap == [True, False]


def test_a_worker_ends_a_session_at_its_deadline_without_telemetry(wired) -> None:
    hub, worker, clock, engine_tap = wired
    hub.start({"duration_s": 5})
    worker.refresh()
    clock.now += 5
    worker.refresh()                    # (no word from the hub since)
    assert engine_tap == [True, False]


def test_bounds_are_refused(wired) -> None:
    hub = wired[0]
    for body in ({"duration_s": 0}, {"duration_s": tap.MAX_DURATION_S + 1},
                 {"duration_s": 1, "max": tap.MAX_RECORDS + 1},
                 {"duration_s": 1, "kind": "deploy", "name": "nobody"}):
        with pytest.raises(RemoteError):
            hub.start(body)
    for _ in range(tap.MAX_SESSIONS):
        hub.start({"duration_s": 1})
    with pytest.raises(RemoteError, match="under way"):
        hub.start({"duration_s": 1})


GOOD = {"id": "s1", "filter": {"path_prefix": "/a"}, "remaining_s": 5.0, "left": 3}
GARBLED_SESSIONS = [None, 5, {"sessions": "s1"}, {"sessions": [5]},
                    {"sessions": [{**GOOD, "id": 7}]}, {"sessions": [{**GOOD, "filter": "x"}]},
                    {"sessions": [{**GOOD, "filter": {"method": ["GET"]}}]},
                    {"sessions": [{**GOOD, "left": "3"}]}, {"sessions": [{**GOOD, "left": None}]},
                    {"sessions": [{**GOOD, "left": 1e400}]},
                    {"sessions": [{**GOOD, "remaining_s": "5"}]},
                    {"sessions": [{**GOOD, "remaining_s": float("inf")}]},
                    {"sessions": [GOOD, {**GOOD, "id": "s2", "remaining_s": None}]}]


def test_a_garbled_sessions_body_is_refused_and_the_sessions_under_way_go_on() -> None:
    """The shipper's thread takes the body: a field of another type that raised there
    ended it, and with it the worker's access log."""
    clock, engine_tap = Clock(), []
    worker = tap.WorkerTaps(engine_tap.append, clock)
    assert worker.offer({"sessions": [GOOD]})
    worker.refresh()
    for body in GARBLED_SESSIONS:
        assert not worker.offer(body), body
        worker.refresh()
    assert worker.sessions() == ["s1"] and engine_tap == [True]
    assert [r["path"] for _, r in worker.split(lines(record("/a/1"), record("/b")))[2]] == ["/a/1"]


def test_garbled_taps_and_requests_are_refused_at_telemetry(wired) -> None:
    """A session id that is not text raised in telemetry's loop (unhashable) and ended
    it; a filter field that is not text matched everything (0) or nothing (a list)."""
    hub, worker, clock, _ = wired
    sid = hub.start({"duration_s": 10})["session"]
    for tapped in (5, [5], [[sid, {}]], [[[sid], "rec"]], [[[[sid]], {}]], [[[{}], {}]],
                   [[[sid], {"path": "/ok"}], [[7], {}]]):
        assert not hub.on_tapped(tapped), tapped
    assert hub.on_tapped([[[sid, "gone"], {"path": "/ok"}]])
    for body in ({"session": []}, {"session": {}}, {"session": 7}, ["session"]):
        with pytest.raises(RemoteError) as raised:
            hub.poll(body)
        assert raised.value.kind == "not-found"
        assert hub.stop(body) == {"stopped": False}
    assert hub.poll({"session": sid})["records"] == [{"path": "/ok"}]
    for odd in ({"path_prefix": 0}, {"method": ["GET"]}, {"principal": {"a": 1}}):
        with pytest.raises(RemoteError, match="text"):
            hub.start({"duration_s": 10, **odd})


def test_a_callers_texts_cannot_drive_the_terminal_of_whoever_taps() -> None:
    """Host and path are the caller's: C1 controls (U+009B is an 8-bit CSI), escapes
    and newlines are printed escaped, in tap's lines and in top's table."""
    rec = record("/a\n/b", authority="evil\x9b31m\x1b[2J", tap_only=False)
    rec.update({"response_code": 200, "duration": 1})
    text = cli_tap.tap_lines(1, rec)
    assert all(c.isprintable() for line in text.split("\n") for c in line)
    assert ":authority=evil\\x9b31m\\x1b[2J" in text and ":path=/a\\n/b" in text
    assert len(text.split("\n")) == 2                     # req and rsp, no forged third
    table = cli_tap.top_table([{"source": "s", "destination": "d", "method": "GET",
                                "path": "/x\x9b", "count": 1, "best_ms": 1, "worst_ms": 1,
                                "last_ms": 1, "success_rate": 1.0}])
    assert "/x\\x9b" in table and "\x9b" not in table
