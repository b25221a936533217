"""meshnode.demo.rollout: its Rollout is valid beside the demo's resources, and the
controller's events read as rows (the real run is in tests/integration/test_demo.py)."""

from __future__ import annotations

from meshnode.config import parse_text, validate_set
from meshnode.demo import rollout
from meshnode.demo.client import Sample
from meshnode.demo.run import render_resources


def test_the_rollout_applies_beside_the_demo_resources_and_canary_services() -> None:
    text = render_resources(41001, 41002, None, 41003) + "---\n" + rollout.ROLLOUT.read_text()
    resources = parse_text(text, "rollout.yaml")
    validate_set(resources)  # refuses a Rollout whose Services do not exist
    [doc] = [r for r in resources if r.kind == "Rollout"]
    assert (doc.spec.stable, doc.spec.canary) == ("backend-v1", "backend-v2")


def _event(reason: str, message: str = "") -> dict[str, str]:
    return {"reason": reason, "message": message}


def test_each_event_carries_v2s_weight_after_it() -> None:
    # A halt keeps the weight its check ran at, even when the rollback it caused is
    # already in the status (both come out of one check).
    weights, weight = [], 0
    for event in (_event("Synced"), _event("Advanced", "Advance demo/backend canary weight 10"),
                  _event("Halted", "Halt (1/2)"), _event("Advanced",
                                                         "Advance demo/backend canary weight 25 (x)"),
                  _event("Halted", "Halt (2/2)"), _event("Failed", "Rolling back")):
        weight = rollout.weight_after(event, weight)
        weights.append(weight)
    assert weights == [0, 10, 10, 25, 25, 0]
    assert rollout.weight_after(_event("Promoted"), 50) == 100


def test_a_halt_row_names_the_failed_check_and_its_figures() -> None:
    checks = [{"name": "request-count", "ok": True, "value": 45.0},
              {"name": "request-success-rate", "ok": False, "value": 95.556},
              {"name": "request-duration", "ok": True, "value": 7.73}]
    row, why = rollout.event_lines(_event("Halted", "Halt demo/backend advancement (1/2): "
                                                    "success rate 95.56% ..."), 10, checks, 3.1)
    assert row.split() == ["3.1s", "Halted", "10", "%", "45", "ok", "95.56", "%", "FAILED",
                           "7.73", "ms", "ok"]
    assert why.strip().startswith("Halt demo/backend advancement (1/2): success rate 95.56%")
    # No checks behind a step (the first one, before any interval): the figures stay empty.
    assert rollout.event_lines(_event("Advanced", "x"), 10, [], 0.2) == \
        ["  0.2s  Advanced   10 %"]


def test_the_share_of_answers_counts_each_version_and_its_statuses() -> None:
    samples = [Sample(200, 1, 200, version="v1")] * 3 + [Sample(502, 1, 500, version="v2"),
                                                         Sample(200, 1, 200, version="v2")]
    assert rollout.version_share(samples) == ["v1       3   60.0 %  200 x3",
                                              "v2       2   40.0 %  200 x1, 500 x1"]
