"""Tap sessions: what a tap asks for, the worker's matching, and telemetry's registry.

`meshnode tap` and `meshnode top` (meshnode.cli_tap) ask telemetry for a session over
the bus (``tap.start``) and poll it (``tap.poll``). Telemetry publishes the sessions
under way on ``tap.sessions`` (busnames.TAP_TOPIC); each worker's shipper (meshnode.accesslog) then turns its
engine's tap on (every request gets a record, whatever the access log's sampling) and
matches the records against the sessions' filters in its own thread, off the engine's:
matching is a few string compares on a record the reader has already made a dict, and
doing it there keeps the engine's change to one flag (no filter state to swap into the
hot path). Records no session wants and the access log did not choose are dropped in
the worker and never cross the bus. Matches travel with the access batch, flagged, so
telemetry writes to access.log only what the access log chose.

Every session ends by itself: at its duration (each worker keeps the deadline too, so a
tap outlives neither a gone telemetry nor a gone client), at its record count, or when
its client stops polling. Queues are bounded everywhere: what does not fit is dropped
and counted, never waited for.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from bus.errors import RemoteError

from .istiolabels import UNKNOWN

MAX_SESSIONS = 16                   # taps at once on a node; more are refused
MAX_DURATION_S = 600.0              # the longest a session lives
MAX_RECORDS = 100_000               # the most records one session delivers
QUEUE_RECORDS = 2_000               # records telemetry holds per session between polls
IDLE_S = 5.0                        # a session not polled this long lost its client
ENDED_KEEP_S = 10.0                 # an ended session waits this long for its last poll
PUBLISH_EVERY_S = 1.0               # sessions republished: a worker that missed one learns

KINDS = {"svc": "service", "service": "service", "deploy": "workload",
         "deployment": "workload", "workload": "workload", "wl": "workload"}


@dataclass(frozen=True)
class Filter:
    """What a session wants; empty fields match anything. `service` is "ns/name" or
    "name" (the record's destination service, any port); `identity` is the SPIFFE ID
    of the workload tapped (the node's side of the request, either way)."""

    service: str = ""
    identity: str = ""
    path_prefix: str = ""
    method: str = ""
    authority: str = ""
    principal: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Filter":
        """The filter fields of a body (missing or null: any). ValueError for one that is
        not text: read as text, a number or a list would match nothing, and 0 or []
        (empty) everything."""
        fields = {k: "" if body.get(k) is None else body.get(k) for k in cls.__dataclass_fields__}
        odd = sorted(k for k, v in fields.items() if not isinstance(v, str))
        if odd:
            raise ValueError(f"tap filter fields are text: not {', '.join(odd)}")
        return cls(**fields)

    def matches(self, rec: Mapping[str, Any]) -> bool:
        if self.method and rec.get("method") != self.method:
            return False
        if self.path_prefix and not str(rec.get("path") or "").startswith(self.path_prefix):
            return False
        if self.authority and _host(rec.get("authority")) != _host(self.authority):
            return False
        if self.principal and self.principal not in _peers(rec):
            return False
        if self.identity and self.identity != _local(rec):
            return False
        return not self.service or _service_matches(self.service, service_of(rec))


def _host(authority: object) -> str:
    return str(authority or "").lower().rsplit(":", 1)[0] if authority else ""


def _peers(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    return (rec.get("downstream_peer_uri_san"), rec.get("downstream_local_uri_san"),
            rec.get("upstream_peer_uri_san"), rec.get("upstream_local_uri_san"))


def _local(rec: Mapping[str, Any]) -> Any:
    """This node's side: the workload served (inbound) or calling (outbound)."""
    return rec.get("downstream_local_uri_san") or rec.get("upstream_local_uri_san")


def source_of(rec: Mapping[str, Any]) -> str:
    """The caller's SPIFFE ID, either way (inbound, the peer; outbound, the local one)."""
    return str((rec.get("downstream_peer_uri_san") if rec.get("reporter") == "destination"
                else rec.get("upstream_local_uri_san")) or UNKNOWN)


def service_of(rec: Mapping[str, Any]) -> str:
    """The record's destination service, "ns/name" (its port cut), or unknown."""
    cluster = str(rec.get("upstream_cluster") or "")
    return cluster.partition("|||")[2].rsplit(":", 1)[0] or UNKNOWN


def _service_matches(wanted: str, service: str) -> bool:
    return service == wanted if "/" in wanted else service.partition("/")[2] == wanted


# --- the worker's side: the shipper's thread ------------------------------------------------


class _Live:
    """One session as a worker holds it: its deadline and the records it may still send."""

    def __init__(self, sid: str, flt: Filter, deadline: float, left: int) -> None:
        self.sid, self.filter, self.deadline, self.left = sid, flt, deadline, left


def _announced(body: Any) -> list[tuple[str, Filter, float, int]] | None:
    """A ``tap.sessions`` body (Hub.announce's) as (id, filter, seconds left, records
    left) per session; None when it is not of that shape."""
    sessions = body.get("sessions") if isinstance(body, dict) else None
    if not isinstance(sessions, list):
        return None
    out = []
    for s in sessions:
        if not isinstance(s, dict):
            return None
        sid, flt, remaining, left = s.get("id"), s.get("filter"), s.get("remaining_s"), s.get("left")
        if not (isinstance(sid, str) and isinstance(flt, dict)
                and type(remaining) in (int, float) and math.isfinite(remaining)
                and type(left) is int):
            return None
        try:
            out.append((sid, Filter.from_body(flt), float(remaining), left))
        except ValueError:
            return None
    return out


class WorkerTaps:
    """The sessions a worker matches. `offer` is called from the bus loop's thread with
    each ``tap.sessions`` body; everything else runs in the shipper's thread, which
    takes the latest offer at its next pass (one reference swapped: no lock). A body
    is checked as it is offered: a garbled one raised in the shipper's thread would end
    it, and with it the worker's access log."""

    def __init__(self, set_tap: Callable[[bool], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._set_tap, self._clock = set_tap, clock
        self._offered: list[tuple[str, Filter, float, int]] | None = None
        self._live: dict[str, _Live] = {}
        self._on = False

    def offer(self, body: Any) -> bool:
        """Take `body` at the next pass; False (nothing taken, the sessions under way
        go on) when it is garbled."""
        sessions = _announced(body)
        if sessions is None:
            return False
        self._offered = sessions
        return True

    def sessions(self) -> list[str]:
        """The ids of the sessions matched now (the engine's tap is on with any)."""
        return list(self._live)

    def refresh(self) -> None:
        """Take the latest sessions, end those past their deadline or count, and turn
        the engine's tap on or off to match."""
        offered, self._offered = self._offered, None
        now = self._clock()
        if offered is not None:
            self._live = {s[0]: self._take(*s, now) for s in offered}
        self._live = {sid: s for sid, s in self._live.items() if s.deadline > now and s.left > 0}
        if bool(self._live) != self._on:
            self._on = bool(self._live)
            self._set_tap(self._on)

    def _take(self, sid: str, flt: Filter, remaining_s: float, left: int, now: float) -> _Live:
        known = self._live.get(sid)
        left = min(left, known.left if known else MAX_RECORDS)
        return _Live(sid, flt, now + min(remaining_s, MAX_DURATION_S), left)

    def live(self) -> bool:
        """Is a session under way (its records must be parsed and matched)?"""
        return bool(self._live)

    def split(self, lines: bytes) -> tuple[bytes, int, list[list[Any]]]:
        """The engine's JSON lines split: those for the access log (as they came, and
        their count), and [session ids, record] for the taps that match a record."""
        logged: list[bytes] = []
        tapped: list[list[Any]] = []
        for line in lines.splitlines(keepends=True):
            rec = json.loads(line)
            if not rec.pop("tap_only", False):
                logged.append(line)
            sids = [s.sid for s in self._live.values() if s.left > 0 and s.filter.matches(rec)]
            for sid in sids:
                self._live[sid].left -= 1
            if sids:
                tapped.append([sids, rec])
        return b"".join(logged), len(logged), tapped


# --- telemetry's side: the registry ---------------------------------------------------------


class _Session:
    def __init__(self, flt: Filter, duration_s: float, limit: int, now: float) -> None:
        self.filter, self.limit = flt, limit
        self.deadline, self.polled = now + duration_s, now
        self.delivered = 0
        self.queue: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.ended: str | None = None
        self.ended_at = 0.0

    def put(self, rec: dict[str, Any], now: float) -> None:
        if self.ended is not None:
            return
        if len(self.queue) >= QUEUE_RECORDS:
            self.dropped += 1
        else:
            self.queue.append(rec)
        self.delivered += 1
        if self.delivered >= self.limit:
            self.end("max", now)

    def end(self, reason: str, now: float) -> None:
        if self.ended is None:
            self.ended, self.ended_at = reason, now


class Hub:
    """Telemetry's sessions: started, polled and stopped over the bus, fed from the
    workers' access batches, published to the workers whenever they change."""

    def __init__(self, publish: Callable[[dict[str, Any]], None],
                 resolve: Callable[[str, str, str | None], dict[str, str]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish, self._resolve, self._clock = publish, resolve, clock
        self.sessions: dict[str, _Session] = {}
        self._published = 0.0

    def start(self, body: Any) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        live = [s for s in self.sessions.values() if s.ended is None]
        if len(live) >= MAX_SESSIONS:
            raise RemoteError(f"{MAX_SESSIONS} taps are under way on this node already",
                              kind="unavailable")
        duration = body.get("duration_s")
        limit = body.get("max") or MAX_RECORDS
        if not isinstance(duration, (int, float)) or not 0 < duration <= MAX_DURATION_S:
            raise RemoteError(f"duration must be over 0 and at most {MAX_DURATION_S:g}s",
                              kind="usage")
        if not isinstance(limit, int) or not 0 < limit <= MAX_RECORDS:
            raise RemoteError(f"max must be 1..{MAX_RECORDS}", kind="usage")
        target = self._resolve(str(body.get("kind") or ""), str(body.get("name") or ""),
                               body.get("namespace"))
        try:
            flt = Filter.from_body({**body, **target})
        except ValueError as exc:
            raise RemoteError(str(exc), kind="usage") from None
        sid = secrets.token_hex(8)
        self.sessions[sid] = _Session(flt, float(duration), limit, self._clock())
        self.announce()
        return {"session": sid, "filter": asdict(flt)}

    def poll(self, body: Any) -> dict[str, Any]:
        """What a session gathered since the last poll, and whether it has ended."""
        s = self._session(body)
        if s is None:
            raise RemoteError("no such tap session (it ended)", kind="not-found")
        s.polled = self._clock()
        records, s.queue = list(s.queue), deque()
        return {"records": records, "dropped": s.dropped, "ended": s.ended}

    def stop(self, body: Any) -> dict[str, Any]:
        s = self._session(body)
        if s is not None:
            s.end("stopped", self._clock())
            self.announce()
        return {"stopped": s is not None}

    def _session(self, body: Any) -> _Session | None:
        sid = body.get("session") if isinstance(body, dict) else None
        return self.sessions.get(sid) if isinstance(sid, str) else None

    def on_tapped(self, tapped: Any) -> bool:
        """A batch's [session ids, record] pairs (meshnode.tap.WorkerTaps.split); False,
        none taken, when they are garbled (an id that is not text raised on the bus
        loop and ended telemetry)."""
        if not _tapped_ok(tapped):
            return False
        now = self._clock()
        before = len(self.live())
        for sids, rec in tapped:
            for sid in sids:
                s = self.sessions.get(sid)
                if s is not None:
                    s.put(rec, now)
        if len(self.live()) != before:
            self.announce()
        return True

    def live(self) -> list[str]:
        return [sid for sid, s in self.sessions.items() if s.ended is None]

    def tick(self) -> None:
        """End sessions past their deadline or left by their client, forget ended ones
        whose last poll is past, and republish while any is under way."""
        now = self._clock()
        changed = False
        for sid, s in list(self.sessions.items()):
            if s.ended is None and (now >= s.deadline or now - s.polled > IDLE_S):
                s.end("duration" if now >= s.deadline else "idle", now)
                changed = True
            elif s.ended is not None and now - max(s.ended_at, s.polled) > ENDED_KEEP_S:
                del self.sessions[sid]
        if changed or (self.live() and now - self._published >= PUBLISH_EVERY_S):
            self.announce()

    def announce(self) -> None:
        now = self._clock()
        self._published = now
        self._publish({"sessions": [
            {"id": sid, "filter": asdict(s.filter), "remaining_s": max(0.0, s.deadline - now),
             "left": s.limit - s.delivered}
            for sid, s in self.sessions.items() if s.ended is None]})


def _tapped_ok(tapped: Any) -> bool:
    return isinstance(tapped, list) and all(
        isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
        and all(isinstance(sid, str) for sid in item[0]) and isinstance(item[1], dict)
        for item in tapped)


def resolver(snapshot: Callable[[], Mapping[str, Any] | None]) -> Callable[
        [str, str, str | None], dict[str, str]]:
    """A tap's resource as filter fields, from the node's snapshot: a service as
    "ns/name", a workload as its SPIFFE ID (the workloads sharing a service account
    share it, and are tapped together)."""
    def resolve(kind: str, name: str, namespace: str | None) -> dict[str, str]:
        if not kind:
            return {}
        what = KINDS.get(kind)
        if what is None:
            raise RemoteError(f"no such kind {kind!r}: one of {', '.join(KINDS)}", kind="usage")
        if what == "service":
            return {"service": f"{namespace}/{name}" if namespace else name}
        found = [w for w in (snapshot() or {}).get("workloads") or ()
                 if str(w.get("workload")).partition("/")[2] == name
                 and (namespace is None or str(w.get("workload")).partition("/")[0] == namespace)]
        if len({str(w.get("identity")) for w in found}) != 1:
            raise RemoteError(f"workload {name!r} is {'not in the mesh' if not found else 'ambiguous: give -n'}",
                              kind="not-found")
        return {"identity": str(found[0]["identity"])}
    return resolve
