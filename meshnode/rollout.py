"""The rollout controller: runs each Rollout inside control (no process of its own).

For a Rollout it owns one HTTPRoute, ``rollout-NAME`` (label meshnode.io/rollout: NAME),
whose parent is the target Service and whose backendRefs are the stable and the canary
Services, and it moves the canary's weight as Flagger moves a Canary's:

    (applied, or its spec changed) Progressing, weight 0
       │ pre-rollout hooks (failing: a failed check)
       ▼
    each interval: rollout hooks, then the checks (rolloutanalysis) on the canary's figures
       ├─ any fails: failedChecks + 1; at `threshold`: rollback → Failed (weight 0)
       ├─ passed, below maxWeight: the next step's weight
       └─ passed at maxWeight: confirm-promotion hooks (failing: WaitingPromotion, and the
          checks go on) → promotion → Succeeded: all traffic to the canary
    post-rollout hooks after a promotion or a rollback (a failure is only logged)

Flagger rolls back at the start of the interval after the threshold is reached; this
controller does it as the check that reaches it fails, an interval sooner. Promotion
here is one step: the route sends 100 % to the canary Service, which is the stable one
from then on (status.stable names it); the Services stay as they are (meshnode deploys
nothing, so there is no primary to copy the canary's spec to, as Flagger does). Routes
are written through the store, so they are versioned and compiled like any apply.

Each rollout's state (phase, weight, step, failed checks, events) is written to
RUNTIME_DIR/state/rollouts/NAMESPACE.NAME.json atomically at every change, so a control
restart resumes it at its step; its first check after a restart waits a whole interval
to gather figures again (the running totals are memory only). Progress is published on
the bus (``rollout.NAME``), logged (``rollout.*`` events) and reported in control's
health beat (meshnode_rollout_weight, meshnode_rollout_status).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bus.envelope import Envelope
from bus.pubsub import Publisher

from . import logs
from .config import ConfigError, Metadata, NotFound, Store, to_dict
from .config.durations import parse_duration
from .config.httproute import BackendRef, HTTPRouteSpec, ParentRef, RouteRule
from .config.model import HTTPRoute, Rollout
from .config.rollout import OWNER_LABEL, route_name
from .files import write_atomic
from .rollouthooks import HookResult, Hooks
from .rolloutanalysis import CanaryFigures, Check, Window, analyse, canary_key, longest_window_s

TOPIC_PREFIX = "rollout."
EVENTS_KEPT = 50
ACTIVE = ("Progressing", "WaitingPromotion")
# Flagger's flagger_canary_status: 0 running, 1 successful, 2 failed.
STATUS_CODES = {"Progressing": 0, "WaitingPromotion": 0, "Succeeded": 1, "Failed": 2}
# Flagger's Promoted condition per phase: (status, reason, message).
CONDITIONS = {
    "Progressing": ("Unknown", "Progressing", "New revision detected, progressing canary analysis."),
    "WaitingPromotion": ("Unknown", "WaitingPromotion", "Canary analysis passed at maxWeight; "
                                                        "waiting for the confirm-promotion hooks."),
    "Succeeded": ("True", "Succeeded", "Canary analysis completed successfully, promotion finished."),
    "Failed": ("False", "Failed", "Canary analysis failed, traffic routed back to the stable Service."),
}


def checksum(rollout: Rollout) -> str:
    """The spec's digest (Flagger's lastAppliedSpec): a new one starts a new rollout."""
    text = json.dumps(to_dict(rollout)["spec"], sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


@dataclass
class State:
    """What a rollout keeps on disk."""

    name: str
    namespace: str
    checksum: str
    phase: str = "Progressing"
    weight: int = 0
    step: int = -1               # index of the weight reached; -1 before the first step
    failed_checks: int = 0
    stable: str = ""             # the Service serving as stable now
    paused: bool = False
    next_check: float = 0.0      # wall-clock time of the next check
    transition: float = 0.0
    last_checks: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    """A rollout under way: its resource, its state and what is in memory only."""

    rollout: Rollout
    state: State
    window: Window
    pending: Future[list[HookResult]] | None = None
    stage: str = ""              # the hooks' type `pending` runs

    @property
    def label(self) -> str:
        return f"{self.state.namespace}/{self.state.name}"


class Controller:
    """Every Rollout of the store, moved on by tick() from control's loop."""

    def __init__(self, store: Store, state_dir: Path, changed: Callable[[], None],
                 publisher: Publisher, log: logging.Logger,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.state_dir, self.changed = store, state_dir, changed
        self.publisher, self.log, self.clock = publisher, log, clock
        self.figures = CanaryFigures()
        self.hooks = Hooks()
        self.runs: dict[tuple[str, str], Run] = {}
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sync(resumed=True)

    # --- following the config -------------------------------------------------------------

    def sync(self, resumed: bool = False) -> None:
        """Start a rollout for each new or changed Rollout, forget deleted ones. On
        control's start (`resumed`), a rollout with a state file of the same spec goes
        on from it."""
        now = self.clock()
        rollouts = {(r.namespace, r.name): r for r in self.store.get("Rollout")}
        for key in [k for k in self.runs if k not in rollouts]:
            self._forget(self.runs.pop(key))
        for key, rollout in rollouts.items():
            run = self.runs.get(key)
            digest = checksum(rollout)
            if run is not None and run.state.checksum == digest:
                continue
            saved = self._load(rollout) if resumed else None
            if saved is not None and saved.checksum == digest:
                interval = parse_duration(rollout.spec.analysis.interval)
                saved.next_check = max(saved.next_check, now + interval)
                self.runs[key] = self._run(rollout, saved)
                self._event(self.runs[key], "Normal", "Resumed",
                            f"control restarted: resuming at weight {saved.weight}")
                continue
            state = State(rollout.name, rollout.namespace, digest, stable=rollout.spec.stable,
                          next_check=now, transition=now)
            self.runs[key] = run = self._run(rollout, state)
            self._event(run, "Normal", "Synced", f"New revision detected: {rollout.spec.canary} "
                                                 f"takes over {rollout.spec.target} from "
                                                 f"{rollout.spec.stable}")
            self._route(run)
        self.figures.keys = {self._key(r.rollout) for r in self.runs.values()}

    def _run(self, rollout: Rollout, state: State) -> Run:
        keep = longest_window_s(rollout.spec.analysis) + parse_duration(rollout.spec.analysis.interval)
        return Run(rollout, state, Window(keep))

    @staticmethod
    def _key(rollout: Rollout) -> tuple[str, str]:
        return canary_key(rollout.namespace, route_name(rollout.name), rollout.spec.canary)

    def _forget(self, run: Run) -> None:
        """A deleted Rollout: its route and state go; the target's own endpoints serve."""
        try:
            self.store.delete("HTTPRoute", route_name(run.state.name), run.state.namespace)
            self.changed()
        except NotFound:
            pass
        self._path(run.state.namespace, run.state.name).unlink(missing_ok=True)
        logs.event(self.log, "rollout.deleted", rollout=run.label)

    # --- the loop's side --------------------------------------------------------------------

    def on_beat(self, topic: str, env: Envelope) -> None:
        """A proxy worker's health beat: its request figures."""
        body = env.body if isinstance(env.body, dict) else {}
        self.figures.feed(topic.removeprefix("health."), body.get("pid"), body.get("requests"))

    def tick(self) -> None:
        now = self.clock()
        for run in list(self.runs.values()):
            run.window.sample(now, self.figures.total(self._key(run.rollout)))
            if run.pending is not None:
                if run.pending.done():
                    self._hooks_done(run, run.pending.result())
                continue
            state = run.state
            if state.phase in ACTIVE and not state.paused and now >= state.next_check:
                state.next_check = now + parse_duration(run.rollout.spec.analysis.interval)
                self._check(run)

    # --- the steps --------------------------------------------------------------------------

    def _check(self, run: Run) -> None:
        if run.rollout.spec.skip_analysis:
            self._promote(run, "skipAnalysis: promoted without analysis")
        elif run.state.step < 0:
            self._hooks_or(run, "pre-rollout", lambda: self._advance(run))
        else:
            self._hooks_or(run, "rollout", lambda: self._judge(run, []))

    def _hooks_or(self, run: Run, stage: str, then: Callable[[], None]) -> None:
        """Start the rollout's `stage` hooks, or go on with `then` if it has none."""
        hooks = [h for h in run.rollout.spec.analysis.webhooks if h.type == stage]
        if not hooks:
            then()
            return
        payload = {"name": run.state.name, "namespace": run.state.namespace,
                   "phase": run.state.phase, "checksum": run.state.checksum}
        run.pending, run.stage = self.hooks.start(hooks, payload), stage

    def _hooks_done(self, run: Run, results: list[HookResult]) -> None:
        run.pending = None
        failed = [r for r in results if not r.ok]
        for result in results:
            logs.event(self.log, "rollout.webhook", logging.INFO if result.ok else logging.WARNING,
                       rollout=run.label, **result.to_dict())
        if run.stage == "post-rollout":
            for result in failed:
                self._event(run, "Warning", "PostRolloutHookFailed", result.message)
        elif run.stage == "pre-rollout":
            if failed:
                self._failed_check(run, [f"pre-rollout hook {r.name}: {r.message}" for r in failed])
            else:
                self._advance(run)
        elif run.stage == "rollout":
            self._judge(run, [f"rollout hook {r.name}: {r.message}" for r in failed])
        elif run.stage == "confirm-promotion":
            if failed:
                self._phase(run, "WaitingPromotion")
                self._event(run, "Normal", "WaitingPromotion",
                            f"Halt {run.label} advancement: waiting for approval "
                            f"{', '.join(r.name for r in failed)}")
                self._save(run)
            else:
                self._promote(run, "confirm-promotion hooks passed")

    def _judge(self, run: Run, hook_failures: list[str]) -> None:
        """One interval's analysis at the current weight."""
        checks = analyse(run.rollout.spec.analysis, run.window, self.clock())
        run.state.last_checks = [c.to_dict() for c in checks]
        failed = hook_failures + [c.message for c in checks if not c.ok]
        if failed:
            self._failed_check(run, failed)
        elif run.state.weight < run.rollout.spec.analysis.promote_weight:
            self._advance(run, checks)
        else:
            self._hooks_or(run, "confirm-promotion", lambda: self._promote(run, _figures(checks)))

    def _failed_check(self, run: Run, why: list[str]) -> None:
        state = run.state
        state.failed_checks += 1
        threshold = run.rollout.spec.analysis.threshold
        self._event(run, "Warning", "Halted", f"Halt {run.label} advancement "
                                              f"({state.failed_checks}/{threshold}): {'; '.join(why)}")
        if state.failed_checks >= threshold:
            self._rollback(run, "Failed", f"Rolling back {run.label}: failed checks threshold "
                                          f"reached {state.failed_checks}")
        else:
            self._save(run)

    def _advance(self, run: Run, checks: list[Check] | None = None) -> None:
        state = run.state
        weights = run.rollout.spec.analysis.weights()
        state.step = min(state.step + 1, len(weights) - 1)
        state.weight = weights[state.step]
        self._phase(run, "Progressing")
        self._event(run, "Normal", "Advanced", f"Advance {run.label} canary weight {state.weight}"
                    + (f" ({_figures(checks)})" if checks else ""))
        self._route(run)

    def _promote(self, run: Run, why: str) -> None:
        state = run.state
        state.weight, state.stable = 100, run.rollout.spec.canary
        self._phase(run, "Succeeded")
        self._event(run, "Normal", "Promoted", f"Promotion completed! {run.rollout.spec.canary} "
                                               f"serves {run.rollout.spec.target} ({why})")
        self._route(run)
        self._hooks_or(run, "post-rollout", lambda: None)

    def _rollback(self, run: Run, reason: str, message: str) -> None:
        run.state.weight = 0
        self._phase(run, "Failed")
        self._event(run, "Warning", reason, message)
        self._route(run)
        self._hooks_or(run, "post-rollout", lambda: None)

    def _phase(self, run: Run, phase: str) -> None:
        if run.state.phase != phase:
            run.state.phase, run.state.transition = phase, self.clock()

    # --- by hand (meshnode rollout ...) -----------------------------------------------------

    def act(self, action: str, namespace: str, name: str) -> dict[str, Any]:
        """promote, abort, pause, resume or status of one rollout; its status after."""
        run = self.runs.get((namespace, name))
        if run is None:
            raise KeyError(f"Rollout {namespace}/{name} not found")
        active = run.state.phase in ACTIVE
        if action in ("promote", "abort", "pause", "resume") and not active:
            raise ValueError(f"Rollout {run.label} is {run.state.phase}: only a rollout under way "
                             f"can be told to {action}")
        if action == "promote":
            run.pending = None
            self._promote(run, "promoted by hand")
        elif action == "abort":
            run.pending = None
            self._rollback(run, "Aborted", f"Rolling back {run.label}: aborted by hand")
        elif action in ("pause", "resume"):
            run.state.paused = action == "pause"
            run.state.next_check = self.clock() + parse_duration(run.rollout.spec.analysis.interval)
            self._event(run, "Normal", "Paused" if run.state.paused else "Resumed",
                        f"{run.label} {action}d by hand at weight {run.state.weight}")
            self._save(run)
        elif action != "status":
            raise ValueError(f"unknown action {action!r}")
        return self.status(namespace, name)

    # --- what others see --------------------------------------------------------------------

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        """Flagger's Canary status (phase, canaryWeight, failedChecks, conditions...),
        with meshnode's stable, paused, lastChecks and events."""
        run = self.runs.get((namespace, name))
        if run is None:
            return {}
        state = run.state
        status, reason, message = CONDITIONS[state.phase]
        if state.paused:
            reason, message = "Paused", f"Paused at weight {state.weight}."
        return {"phase": state.phase, "canaryWeight": state.weight,
                "failedChecks": state.failed_checks, "iterations": 0,
                "lastAppliedSpec": state.checksum,
                "lastTransitionTime": _stamp(state.transition),
                "conditions": [{"type": "Promoted", "status": status, "reason": reason,
                                "message": message,
                                "lastTransitionTime": _stamp(state.transition)}],
                "stable": state.stable, "canary": run.rollout.spec.canary,
                "route": f"{namespace}/{route_name(name)}", "paused": state.paused,
                "lastChecks": list(state.last_checks), "events": list(state.events)}

    def health(self) -> dict[str, Any]:
        """Control's beat's share: every rollout's weight and status code."""
        return {"rollouts": [{"rollout": run.label, "phase": run.state.phase,
                              "weight": run.state.weight,
                              "status": STATUS_CODES[run.state.phase]}
                             for run in self.runs.values()]}

    def close(self) -> None:
        self.hooks.close()

    # --- writing --------------------------------------------------------------------------

    def _event(self, run: Run, kind: str, reason: str, message: str) -> None:
        run.state.events = [*run.state.events, {"time": _stamp(self.clock()), "type": kind,
                                                "reason": reason, "message": message}][-EVENTS_KEPT:]
        logs.event(self.log, f"rollout.{reason.lower()}",
                   logging.WARNING if kind == "Warning" else logging.INFO, rollout=run.label,
                   phase=run.state.phase, weight=run.state.weight,
                   failed_checks=run.state.failed_checks, message=message)

    def _route(self, run: Run) -> None:
        """Write the rollout's HTTPRoute at its weight, save and publish its state."""
        spec, state = run.rollout.spec, run.state
        stable = 100 - state.weight
        rule = RouteRule(backend_refs=(BackendRef(spec.stable, port=spec.port, weight=stable),
                                       BackendRef(spec.canary, port=spec.port, weight=state.weight)))
        route = HTTPRoute(
            metadata=Metadata(route_name(state.name), state.namespace, {OWNER_LABEL: state.name},
                              {"meshnode.io/rollout-weight": str(state.weight)}),
            spec=HTTPRouteSpec(parent_refs=(ParentRef(spec.target, "", "Service", port=spec.port),),
                               rules=(rule,)))
        try:
            version = self.store.apply([route], source=f"Rollout {run.label}")
        except ConfigError as exc:
            self._event(run, "Warning", "RouteRefused", str(exc))
        else:
            logs.event(self.log, "rollout.routed", rollout=run.label, version=version,
                       stable=spec.stable, canary=spec.canary, weight=state.weight)
            self.changed()
        self._save(run)

    def _save(self, run: Run) -> None:
        write_atomic(self._path(run.state.namespace, run.state.name),
                     json.dumps(asdict(run.state), indent=2).encode())
        self.publisher.publish(TOPIC_PREFIX + run.state.name, "rollout",
                               {"rollout": run.label, **self.status(run.state.namespace, run.state.name)})

    def _path(self, namespace: str, name: str) -> Path:
        return self.state_dir / f"{namespace}.{name}.json"

    def _load(self, rollout: Rollout) -> State | None:
        path = self._path(rollout.namespace, rollout.name)
        try:
            state = State(**json.loads(path.read_bytes()))
            _check_state(state, len(rollout.spec.analysis.weights()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            logs.event(self.log, "rollout.state_unreadable", logging.WARNING, path=str(path),
                       error=str(exc))
            return None
        return state


def _check_state(state: State, steps: int) -> None:
    """Raise ValueError unless a state read from disk is one this version could have
    written for a rollout of `steps` weights: a file left corrupt, or by a version with
    other phases, would otherwise fail control at its first beat or tick, at every
    restart; refused, the rollout starts afresh from weight 0."""
    def whole(value: object, low: int, high: float = math.inf) -> bool:
        return type(value) is int and low <= value <= high

    def moment(value: object) -> bool:
        return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]

    problems = [what for what, ok in (
        ("phase", state.phase in STATUS_CODES),
        ("weight", whole(state.weight, 0, 100)),
        ("step", whole(state.step, -1, steps - 1)),
        ("failed_checks", whole(state.failed_checks, 0)),
        ("paused", type(state.paused) is bool),
        ("names", all(isinstance(v, str) for v in (state.name, state.namespace,
                                                    state.checksum, state.stable))),
        ("times", moment(state.next_check) and moment(state.transition)),
        ("lists", all(isinstance(v, list) and all(isinstance(e, dict) for e in v)
                      for v in (state.last_checks, state.events))),
    ) if not ok]
    if problems:
        raise ValueError(f"not a state this version writes: bad {', '.join(problems)}")


def _figures(checks: list[Check] | None) -> str:
    """The figures that decided a step, for its event."""
    return "; ".join(c.message for c in checks or ())
