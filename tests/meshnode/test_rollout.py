"""The rollout controller (meshnode.rollout) on a real store and state dir: what it does
with a state file it cannot trust at control's start (corrupt, or written by another
version), where crashing would crash-loop control."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
import zmq

from bus.endpoints import Endpoints
from bus.pubsub import Publisher
from meshnode.config import Store, parse_text
from meshnode.config.load import DEFAULT_CONFIG
from meshnode.rollout import Controller, checksum

pytestmark = pytest.mark.timeout(30)

ROLLOUT: dict[str, Any] = {
    "apiVersion": "meshnode.io/v1alpha1", "kind": "Rollout",
    "metadata": {"name": "backend", "namespace": "demo"},
    "spec": {"targetRef": {"kind": "Service", "name": "backend"}, "service": {"port": 8080},
             "stable": {"name": "backend-v1"}, "canary": {"name": "backend-v2"},
             "analysis": {"interval": "1s", "stepWeight": 25, "maxWeight": 50}}}
VERSIONS = [{"apiVersion": "meshnode.io/v1alpha1", "kind": "Service",
             "metadata": {"name": f"backend-{v}", "namespace": "demo"},
             "spec": {"selector": {"app": "backend", "version": v},
                      "ports": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}
            for v in ("v1", "v2")]


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[Publisher]:
    """A publisher with no broker behind it: the controller's frames go nowhere."""
    ctx = zmq.Context()
    pub = Publisher(ctx, Endpoints.for_runtime_dir(tmp_path / "run"), node="n", src="control")
    yield pub
    pub.close()
    ctx.destroy(linger=0)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "store", DEFAULT_CONFIG)
    store.apply(parse_text(yaml.safe_dump_all([*VERSIONS, ROLLOUT]), "r.yaml"), source="r.yaml")
    return store


def controller(store: Store, state_dir: Path, publisher: Publisher) -> Controller:
    return Controller(store, state_dir, lambda: None, publisher, logging.getLogger("test"))


def saved_state(store: Store, **fields: Any) -> dict[str, Any]:
    """A state file's content for the store's Rollout, as this version writes it,
    changed by `fields`."""
    [rollout] = store.get("Rollout")
    return {"name": "backend", "namespace": "demo", "checksum": checksum(rollout),
            "phase": "Progressing", "weight": 25, "step": 0, "failed_checks": 0,
            "stable": "backend-v1", "paused": False, "next_check": 0.0, "transition": 0.0,
            "last_checks": [], "events": [], **fields}


@pytest.mark.parametrize("fields", [
    {"phase": "Promoting"},                 # a phase another version had (Flagger's)
    {"weight": "25"},
    {"weight": 250},
    {"step": 7},                            # past the rollout's last step
    {"next_check": None},
    {"failed_checks": -1},
    {"paused": "no"},
    {"events": {"not": "a list"}},
], ids=lambda f: ",".join(f"{k}={v!r}" for k, v in f.items()))
def test_a_state_file_it_cannot_trust_starts_the_rollout_afresh(
        tmp_path: Path, store: Store, publisher: Publisher, fields: dict[str, Any]) -> None:
    state_dir = tmp_path / "rollouts"
    state_dir.mkdir()
    (state_dir / "demo.backend.json").write_text(json.dumps(saved_state(store, **fields)))
    rollouts = controller(store, state_dir, publisher)
    rollouts.tick()
    status = rollouts.status("demo", "backend")
    assert (status["phase"], status["canaryWeight"]) == ("Progressing", 25)
    assert [e["reason"] for e in status["events"]][:1] == ["Synced"]
    assert rollouts.health()["rollouts"][0]["status"] == 0


def test_a_sound_state_file_resumes_the_rollout(tmp_path: Path, store: Store,
                                                publisher: Publisher) -> None:
    state_dir = tmp_path / "rollouts"
    state_dir.mkdir()
    (state_dir / "demo.backend.json").write_text(json.dumps(saved_state(
        store, weight=50, step=1, events=[{"reason": "Advanced"}])))
    status = controller(store, state_dir, publisher).status("demo", "backend")
    assert (status["phase"], status["canaryWeight"]) == ("Progressing", 50)
    assert [e["reason"] for e in status["events"]] == ["Advanced", "Resumed"]
