"""Access logs: a worker's shipper (its engine's records onto the bus) and telemetry's file.

The engine writes a record per HTTP answer and per opaque TCP connection into a ring
(fastpath accesslog.pxi); a worker's shipper thread drains it and publishes the records
in batches on ``access.<worker>``, through a socket of its own whose high-water mark
makes a send fail rather than wait: a slow telemetry costs records (counted), never the
worker's time. Telemetry writes them as JSON lines in Envoy's field names to
RUNTIME_DIR/logs/access.log (mode 0600), rotated by size as Python's
RotatingFileHandler does (access.log.1 is the newest old file), and counts the batches
the bus lost on the way from the running totals each batch carries. A batch also
carries the records the node's taps asked for (meshnode.tap), apart: telemetry hands
those to the tap sessions and writes only the access log's. Likewise the records of
sampled spans (the engine's lines with their nanosecond times: SPAN_MARK), parsed
here and carried apart for telemetry's span exporter (meshnode.tracing_export); a line
the engine kept for its span alone (span_only) is not the access log's.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import zmq

from bus.endpoints import Endpoints
from bus.envelope import Envelope
from bus.pubsub import Publisher

from .busnames import ACCESS_TOPIC
from .tap import WorkerTaps

SHIP_INTERVAL_S = 0.05
"""How often a shipper looks at its ring: at 50 ms a 4096-record ring holds a worker's
records up to ~80,000 requests a second."""

BATCH_RECORDS = 256
"""Records per bus message: one envelope's cost spread over many requests."""

SEND_HWM = 64
"""Batches the shipper's socket holds for the broker; past them a batch is dropped."""

SPAN_MARK = b'"duration_ns":'
"""In the lines of records drawn for the span exporter only (fastpath accessjson.pxi
_aj_span): a batch without it goes on unparsed."""

TAP_ONLY = b',"tap_only":true'
"""In the line of a record a tap wanted and the access log did not (accessjson.pxi):
found nowhere else, as the quotes of a request's texts are escaped."""


class Ring(Protocol):
    """What a shipper reads: fastpath's Engine."""

    def access_lines(self, limit: int = ...) -> tuple[bytes, int]: ...

    def access_dropped(self) -> dict[str, int]: ...

    def set_tap(self, on: bool) -> None: ...


class Shipper:
    """A worker's thread moving its engine's access records onto the bus."""

    def __init__(self, endpoints: Endpoints, node: str, name: str, ring: Ring) -> None:
        self.topic = ACCESS_TOPIC + name
        self._ring = ring
        # A context of its own: the process's is destroyed as its loop ends, which
        # must not close this thread's socket under it.
        self._ctx = zmq.Context(io_threads=1)
        self._pub = Publisher(self._ctx, endpoints, node=node, src=name, sndhwm=SEND_HWM)
        self._stop = threading.Event()
        self.sent = 0                   # records published, a running total each batch says
        self.unsent = 0                 # records dropped at the send high-water mark
        self.taps = WorkerTaps(ring.set_tap)    # (offer() from the bus loop's thread)
        self._thread = threading.Thread(target=self._run, name="access-shipper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ship what is left and close the socket (its thread's, joined first)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._pub.close()
        self._ctx.term()

    def _run(self) -> None:
        while not self._stop.wait(SHIP_INTERVAL_S):
            self.ship()
        self.ship()

    def ship(self) -> None:
        """Publish what the ring holds, a batch at a time: the access log's records,
        and apart those the taps under way match (the rest a tap wanted go no further)."""
        self.taps.refresh()
        while True:
            lines, taken = self._ring.access_lines(BATCH_RECORDS)
            if not taken:
                return
            count, tapped, spans = taken, [], []
            if SPAN_MARK in lines:
                lines, count, spans = split_spans(lines)
            # No tap: the lines go as they came, unparsed, but for those of requests
            # drawn while a tap was on and answered after it ended (a slow one, or the
            # ring's last when a session ends): not the access log's.
            if self.taps.live() or TAP_ONLY in lines:
                lines, count, tapped = self.taps.split(lines)
            if count or tapped or spans:
                self._send(lines, count, tapped, spans)
            if taken < BATCH_RECORDS:
                return

    def _send(self, lines: bytes, count: int, tapped: list[list[Any]],
              spans: list[dict[str, Any]]) -> None:
        body = {"lines": lines, "count": count, "sent": self.sent + count, "tapped": tapped,
                "spans": spans}
        if self._pub.offer(self.topic, "access", body):
            self.sent += count
        else:
            self.unsent += count + len(tapped)

    def health(self) -> dict[str, Any]:
        """For the worker's beat: records lost, and the taps it is matching."""
        return {"accesslog_dropped": self.dropped(), "taps": self.taps.sessions()}

    def dropped(self) -> dict[str, int]:
        """Records lost by reason: the engine's ring full, no head free, the send mark."""
        return {**self._ring.access_dropped(), "send_hwm": self.unsent}


def split_spans(lines: bytes) -> tuple[bytes, int, list[dict[str, Any]]]:
    """The engine's JSON lines less those kept for a span alone (a tap's stay for the
    taps to split), their count, and the records of the spans, parsed."""
    kept: list[bytes] = []
    spans: list[dict[str, Any]] = []
    for line in lines.splitlines(keepends=True):
        if SPAN_MARK in line:
            spans.append(json.loads(line))
            if b'"span_only":true' in line and b'"tap_only":true' not in line:
                continue
        kept.append(line)
    return b"".join(kept), len(kept), spans


class AccessLog:
    """RUNTIME_DIR/logs/access.log: JSON lines, mode 0600, rotated past `max_bytes`
    keeping `backups` older files (0: the file is cut, none kept)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)            # an older file made with another mode
        return fd

    def write(self, lines: bytes) -> None:
        """Append whole JSON lines (the engine's, as they came), rotating first where the
        next line would take the file past max_bytes: one write a batch, more only at a
        rotation. A line longer than max_bytes goes alone into a file of its own."""
        self._follow()
        start = 0
        while start < len(lines):
            room = self.max_bytes - self._size
            if len(lines) - start <= room:
                end = len(lines)
            else:
                end = lines.rfind(b"\n", start, start + max(room, 0)) + 1
            if end <= start:                # not one more whole line fits
                if self._size > 0:
                    self._rotate()
                    continue
                end = lines.find(b"\n", start) + 1 or len(lines)
            self._write_all(memoryview(lines)[start:end])
            start = end

    def _follow(self) -> None:
        """Reopen the file when its name no longer leads to it (removed, or moved away
        by logrotate or by hand, its directory too): else lines would go on into a file
        nobody sees, and the next rotation, renaming a name that is gone, would raise
        and end telemetry. Two stats a batch, as logging's WatchedFileHandler makes."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        held = os.fstat(self._fd)
        if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            os.close(self._fd)
            self._fd = self._open()
            self._size = os.fstat(self._fd).st_size

    def _write_all(self, data: memoryview) -> None:
        while data:
            n = os.write(self._fd, data)
            self._size += n
            data = data[n:]

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)


class Collector:
    """Telemetry's side: each batch written, and the records the bus lost counted per
    worker from the running total a batch carries (the first batch seen from a worker
    is its baseline: telemetry may start after it)."""

    def __init__(self, log: AccessLog) -> None:
        self.log = log
        self._seen: dict[str, int] = {}     # worker -> records it had sent, as last seen
        self.lost = 0

    def on_access(self, topic: str, env: Envelope) -> None:
        body = env.body if isinstance(env.body, dict) else {}
        lines, count, sent = body.get("lines"), body.get("count"), body.get("sent")
        if (not isinstance(lines, bytes) or not isinstance(count, int)
                or not isinstance(sent, int) or not lines.endswith(b"\n")):
            return
        before = self._seen.get(env.src)
        if before is not None and sent - count > before:
            self.lost += sent - count - before
        self._seen[env.src] = sent
        self.log.write(lines)

    def configure(self, mesh: dict[str, Any]) -> None:
        """The snapshot's rotation (Mesh spec.telemetry.accessLogRotation)."""
        self.log.max_bytes = int(mesh.get("access_log_max_bytes", self.log.max_bytes))
        self.log.backups = int(mesh.get("access_log_backups", self.log.backups))
