"""`meshnode demo --rollout`: the node's rollout controller moves backend to v2 by itself.

Where `--canary` moves the route's weights by hand, here the demo applies a Rollout
(rollout.yaml) and only watches: steady traffic goes client -> frontend -> mesh ->
backend v1 or v2 while control checks v2's own figures (success rate, p99 and request
count, as the frontend's node counted them) every interval and moves the weight
10 -> 25 -> 50 %, then promotes v2, or rolls it back after `threshold` failed checks.
The demo prints each of the controller's events as `meshnode rollout status` reports
it, with the checks that decided it, then the share of answers each version gave.

The end is checked, not only printed: once the rollout is over and every worker ACKs
its last route, a batch of requests must all reach the version the outcome names (v2
promoted, v1 after a rollback). A good v2 (`--rollout`) must be promoted; a bad one
(`--rollout-bad=errors`: 5 % of its answers 500s, `--rollout-bad=slow`: 5 % of them
half a second late) must be rolled back: that is the demo's expected outcome.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from . import probe, report
from .client import Client, Sample
from .errors import DemoError

ROLLOUT = Path(__file__).resolve().parent / "rollout.yaml"
BAD_KINDS = ("errors", "slow")  # --rollout-bad's choices (meshnode.demo.apps --bad)
# Steady traffic while the controller works: enough that v2's first step (10 %) gets
# minRequests in an interval even when the beat carrying them comes late.
CLIENTS = 4
RATE_PER_S = 200.0
# The rollout's whole course: three steps and a promotion at a 3 s interval take ~10 s;
# a rollback ~7 s.
ROLLOUT_TIMEOUT_S = 30.0
POLL_S = 0.2  # far below the interval: every event is seen with the checks behind it
DONE = ("Succeeded", "Failed")
EXPECTED = {"good": "Succeeded", **{kind: "Failed" for kind in BAD_KINDS}}


def rollout_doc() -> dict[str, Any]:
    return yaml.safe_load(ROLLOUT.read_text())


def rollout_yaml() -> str:
    """rollout.yaml as written, without its opening comment: what the demo prints."""
    return "\n".join(line for line in ROLLOUT.read_text().splitlines()
                     if not line.startswith("#")).strip() + "\n"


@dataclass(frozen=True)
class Hooks:
    """What the rollout demo needs of the running demo (meshnode.demo.run gives them)."""

    apply: Callable[[str], int]  # Rollout YAML -> the config version it made
    status: Callable[[], dict[str, Any]]  # `meshnode rollout status` of the demo's rollout
    settle: Callable[[], int]  # wait until every worker ACKs control's latest version
    client: Callable[[], Client]  # a fresh keep-alive connection to the frontend


class Traffic:
    """Paced clients of the frontend, each on its own connection, until stopped."""

    def __init__(self, client: Callable[[], Client], clients: int = CLIENTS,
                 rate_per_s: float = RATE_PER_S) -> None:
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._period_s = clients / rate_per_s
        self._threads = [threading.Thread(target=self._run, args=(client(),), daemon=True,
                                          name=f"demo-traffic-{i}") for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: Client) -> None:
        due, i = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                i += 1
                sample = client.call(i)
                with self._lock:
                    self.samples.append(sample)
                due += self._period_s
                self._stop.wait(max(0.0, due - time.monotonic()))
        finally:
            client.close()

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        with self._lock:
            return list(self.samples)


# --- printing: pure, so each line is tested on its own figures ----------------------------

CHECK_COLUMNS = (("request-count", "requests", "{:.0f}"),
                 ("request-success-rate", "success rate", "{:.2f} %"),
                 ("request-duration", "p99", "{:.2f} ms"))
HEAD = (f"{'time':>6}  {'event':<10} {'v2 weight':<10} "
        + "  ".join(f"{title:<16}" for _, title, _ in CHECK_COLUMNS)).rstrip()


def _check_cell(check: dict[str, Any] | None, fmt: str) -> str:
    if check is None:
        return ""
    value = "none" if check.get("value") is None else fmt.format(check["value"])
    return f"{value} {'ok' if check.get('ok') else 'FAILED'}"


def event_lines(event: dict[str, Any], weight: int, checks: Sequence[dict[str, Any]],
                elapsed_s: float) -> list[str]:
    """One controller event as a row: when, what, v2's weight, and the checks behind it
    (the figures that decided a step, a halt or the promotion), each failed one spelled out."""
    by_name = {c.get("name"): c for c in checks}
    row = f"{elapsed_s:>5.1f}s  {event['reason']:<10} {f'{weight} %':<10} " + "  ".join(
        f"{_check_cell(by_name.get(name), fmt):<16}" for name, _, fmt in CHECK_COLUMNS)
    lines = [row.rstrip()]
    if event["reason"] in ("Halted", "Failed", "Aborted", "RouteRefused"):
        lines.append(f"{'':8}{event['message']}")
    return lines


def version_share(samples: Sequence[Sample]) -> list[str]:
    """Who answered: each version's count, share and statuses (the frontend's view)."""
    by_version: dict[str, Counter[str]] = {}
    for s in samples:
        status = str(s.hop_status) if s.hop_status is not None else "no answer"
        by_version.setdefault(s.version or "none", Counter())[status] += 1
    total = len(samples) or 1
    return [f"{version}  {sum(codes.values()):>6}  {100 * sum(codes.values()) / total:5.1f} %  "
            f"{report.tally(codes)}" for version, codes in sorted(by_version.items())]


def _lines(label: str, rows: list[str]) -> Iterator[str]:
    for i, row in enumerate(rows):
        yield f"{label if i == 0 else '':<10}{row}"


# --- the run ------------------------------------------------------------------------------

def watch(status: Callable[[], dict[str, Any]], out: Callable[[str], None],
          timeout_s: float = ROLLOUT_TIMEOUT_S) -> dict[str, Any]:
    """Print each of the rollout's events as it comes; its status once it is over."""
    start, seen, weight = time.monotonic(), 0, 0
    out(HEAD)
    while True:
        now = status()
        events = now.get("events") or []
        checked = False
        for event in events[seen:]:
            # Two events of one check (a halt and the rollback it caused) share its figures.
            checks = [] if checked or event["reason"] in ("Synced", "Failed") \
                else now.get("lastChecks") or []
            checked = checked or bool(checks)
            weight = weight_after(event, weight)
            for line in event_lines(event, weight, checks, time.monotonic() - start):
                out(line)
        seen = len(events)
        if now.get("phase") in DONE:
            return now
        if time.monotonic() - start >= timeout_s:
            raise DemoError(f"the rollout did not end within {timeout_s:g}s: it is "
                            f"{now.get('phase')} at weight {now.get('canaryWeight')}")
        time.sleep(POLL_S)


def weight_after(event: dict[str, Any], weight: int) -> int:
    """v2's weight after one of the controller's events, given the weight before it: a
    step names its weight, a promotion is 100 %, a rollback 0 %, the rest leave it (the
    status's weight may already be a later event's)."""
    reason = event["reason"]
    if reason == "Advanced":
        return int(event["message"].split(" weight ", 1)[1].split(" ", 1)[0])
    return {"Synced": 0, "Promoted": 100, "Failed": 0, "Aborted": 0}.get(reason, weight)


def run(hooks: Hooks, kind: str, requests: int, out: Callable[[str], None]) -> bool:
    """The rollout of a good (`kind` "good") or bad v2, watched to its end; whether it
    ended as expected and every request after it reached the version it left in place."""
    doc = rollout_doc()
    analysis = doc["spec"]["analysis"]
    out(f"the Rollout (meshnode/demo/rollout.yaml), backend v2 {_v2_says(kind)}:\n"
        f"{rollout_yaml()}")
    traffic = Traffic(hooks.client)
    try:
        out(f"steady traffic: {CLIENTS} clients, {RATE_PER_S:g} requests/s in all, "
            f"client -> frontend -> mesh -> backend v1 or v2")
        hooks.apply(ROLLOUT.read_text())
        out(f"the controller checks v2 every {analysis['interval']}: "
            f"{' -> '.join(f'{w} %' for w in analysis['stepWeights'])}, then promotion; "
            f"rollback after {analysis['threshold']} failed checks")
        final = watch(hooks.status, out)
    finally:
        during = traffic.stop()
    version = hooks.settle()
    expected_phase = EXPECTED[kind]
    serving = "v2" if final["phase"] == "Succeeded" else "v1"
    client = hooks.client()
    try:
        after = [client.call(i) for i in range(1, requests + 1)]
    finally:
        client.close()
    out("")
    out(f"meshnode demo --rollout{'' if kind == 'good' else '-bad=' + kind}: "
        f"backend v1 -> v2 by the node's rollout controller")
    out("")
    for line in [*_lines("rollout", [f"{final['route']} {final['phase']}: v2 at "
                                     f"{final['canaryWeight']} %, stable {final['stable']}, "
                                     f"failed checks {final['failedChecks']}"]),
                 *_lines("during", [f"{len(during)} requests, answered by",
                                    *version_share(during)]),
                 *_lines("after", [f"{len(after)} requests once config v{version} was ACKed, "
                                   f"answered by", *version_share(after)])]:
        out(line)
    problems = _problems(final["phase"], expected_phase, serving, after)
    out("")
    if problems:
        out("FAILED: " + "; ".join(problems))
        return False
    outcome = "promoted step by step" if serving == "v2" else "rolled back, as a bad v2 must be"
    out(f"ok: backend v2 was {outcome}; all {len(after)} requests after it reached {serving}")
    return True


def _v2_says(kind: str) -> str:
    return {"good": "answering well", "errors": "answering 5 % of its requests with a 500",
            "slow": "answering 5 % of its requests half a second late"}[kind]


def _problems(phase: str, expected_phase: str, serving: str, after: Sequence[Sample]) -> list[str]:
    problems = []
    if phase != expected_phase:
        problems.append(f"the rollout ended {phase}, not {expected_phase}")
    elsewhere = [s for s in after if s.version != serving]
    if elsewhere:
        problems.append(f"{len(elsewhere)} of {len(after)} requests after it did not reach "
                        f"{serving}")
    bad = [s for s in after if s.status is None or not 200 <= s.status < 300]
    if bad:
        problems.append(f"{len(bad)} of {len(after)} requests after it did not get a 2xx")
    return problems
