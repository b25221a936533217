"""Walking a mesh root rotation from the CLI, waiting for every worker between steps.

Each step is one request to the ca (``identity.authority`` says what it does); between
steps the walk watches the health beats (through telemetry) of every live holder of
workload certificates (the proxy workers, and any other process on the bus that
reports ``certs``) until each runs the new trust bundle, or holds certificates from the
new issuer. Moving on earlier would let a peer meet a certificate it cannot verify yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from . import nodectl


def _workers(rd: Path) -> dict[str, dict[str, Any]]:
    """Live processes holding workload certificates; a dead one cannot be waited for."""
    view = nodectl.call(rd, "telemetry", "processes", None, timeout_s=5.0)["processes"]
    return {name: report for name, report in view.items()
            if report.get("healthy") and isinstance(report.get("certs"), dict)}


def _wait(rd: Path, what: str, done: Callable[[dict[str, Any]], bool], deadline: float) -> None:
    lagging: list[str] = []
    while time.monotonic() < deadline:
        workers = _workers(rd)
        lagging = sorted(name for name, report in workers.items() if not done(report))
        if workers and not lagging:
            return
        time.sleep(0.2)
    raise nodectl.NodeError(f"root rotation stopped: {', '.join(lagging) or 'no worker'} "
                            f"did not {what} in time; the bundle still trusts both roots, "
                            f"so nothing breaks; run rotate-root again to resume")


def _bundle_at(generation: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: int(r.get("bundle_generation") or 0) >= generation


def _reissued(issuer_generation: int) -> Callable[[dict[str, Any]], bool]:
    def check(report: dict[str, Any]) -> bool:
        certs = report.get("certs") or {}
        return all(c.get("issued") and int(c.get("issuer_generation", 0)) >= issuer_generation
                   for c in certs.values())
    return check


def rotate_root(rd: Path, new_root: Path | None, timeout_s: float,
                say: Callable[[str], None]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    state = nodectl.call(rd, "ca", "rotate.state", None)
    if not state["pending"]:  # a walk that stopped after this step resumes below it
        body: dict[str, Any] = {}
        if new_root is not None:
            body = {"root_pem": (new_root / "root.pem").read_text(),
                    "root_key_pem": (new_root / "root.key").read_text()}
        state = nodectl.call(rd, "ca", "rotate.add", body)
        say(f"1/3 new root added to the trust bundle (generation {state['generation']})")
    _wait(rd, "install the bundle with both roots", _bundle_at(state["generation"]), deadline)
    say("    every worker trusts both roots")
    state = nodectl.call(rd, "ca", "rotate.switch", None)
    say(f"2/3 new root active, new node issuer (issuer generation {state['issuer_generation']})")
    _wait(rd, "re-issue under the new issuer", _reissued(state["issuer_generation"]), deadline)
    say("    every worker holds certificates from the new issuer")
    state = nodectl.call(rd, "ca", "rotate.finish", None)
    say(f"3/3 old root removed from the trust bundle (generation {state['generation']})")
    _wait(rd, "install the bundle without the old root", _bundle_at(state["generation"]), deadline)
    say("root rotation complete")
    return state
