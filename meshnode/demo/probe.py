"""What the demo reads off its nodes and apps, and how it waits for it: each wait is for
a condition the node reports, with a deadline, never for a fixed time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from .. import localprobe, nodectl
from ..ports import Ports
from .errors import DemoError

ACK_TIMEOUT_S = 30.0
CERTS_TIMEOUT_S = 30.0
# Workers report their counters in their health beat, once a second (meshnode.process).
METRICS_SETTLE_S = 5.0

T = TypeVar("T")


def wait(condition: Callable[[], T | None], timeout_s: float, what: str,
         interval_s: float = 0.1) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    """(status, decoded JSON) of a GET; (0, None) when nothing answers."""
    try:
        status, body = localprobe.get(url, timeout_s)
    except OSError:
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def get_text(url: str, timeout_s: float = 2.0) -> str | None:
    try:
        status, body = localprobe.get(url, timeout_s)
    except OSError:
        return None
    return body.decode(errors="replace") if status == 200 else None


def check_free(port: int, what: str) -> None:
    """A port the demo's node will bind is free, or a DemoError saying which is taken."""
    try:
        nodectl.check_port_free(port, what)
    except nodectl.NodeError as exc:
        raise DemoError(str(exc)) from None


def wait_acked(rd: Path, version: int, workers: list[str]) -> None:
    """Wait until every worker of the node in `rd` ACKs config `version`; a NACK fails."""
    def acked() -> bool:
        acks = nodectl.call(rd, "control", "status", None, timeout_s=5.0).get("acks", {})
        for worker in workers:
            ack = acks.get(worker) or {}
            if ack.get("version") == version and ack.get("status") == "NACK":
                raise DemoError(f"{worker} refused config version {version}: {ack.get('reason')}")
        return all((acks.get(w) or {}).get("version") == version
                   and acks[w].get("status") == "ACK" for w in workers)
    wait(acked, ACK_TIMEOUT_S, f"every worker to ACK config version {version}", 0.2)


def wait_certs(ports: Ports, version: int, workers: list[str]) -> list[str]:
    """Wait until every worker holds a certificate for each identity the node's snapshot
    places on it; return those identities."""
    admin = f"http://127.0.0.1:{ports.admin}"

    def placed() -> list[str] | None:
        status, snapshot = get_json(f"{admin}/config_dump")
        if status != 200 or not isinstance(snapshot, dict) or snapshot.get("version") != version:
            return None
        return sorted({str(w["identity"]) for w in snapshot.get("local", []) if "identity" in w})
    identities = wait(placed, CERTS_TIMEOUT_S, f"config version {version} in /config_dump")

    def issued() -> bool:
        status, book = get_json(f"{admin}/stats")
        if status != 200 or not isinstance(book, dict):
            return False
        for worker in workers:
            certs = (book.get(worker) or {}).get("certs") or {}
            if not all((certs.get(i) or {}).get("issued") for i in identities):
                return False
        return True
    wait(issued, CERTS_TIMEOUT_S, "every worker's certificates for " + ", ".join(identities),
         0.2)
    return identities


def settle(read: Callable[[], T], enough: Callable[[T], bool]) -> T:
    """What ``read`` gives once ``enough`` holds for it, or whatever it gives after
    METRICS_SETTLE_S: the mesh's counters reach /metrics a beat after the requests."""
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        value = read()
        if enough(value) or time.monotonic() >= deadline:
            return value
        time.sleep(0.2)
