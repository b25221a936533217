"""meshnode.demo.canary: the canary's resources and routes, its binomial tolerance, and how
a step that is off is judged and reported (the real run is in tests/integration/test_demo.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from meshnode.config import compile_snapshot, parse_text, validate_set
from meshnode.demo import canary
from meshnode.demo.canary import Hooks, StepResult
from meshnode.demo.run import plan_nodes, render_resources


def _resources(percent: int, nodes: list | None = None) -> list:
    text = render_resources(41001, 41002, nodes, 41003) + "---\n" + canary.route_yaml(percent)
    resources = parse_text(text, "canary.yaml")
    validate_set(resources)
    return resources


@pytest.mark.parametrize("percent", canary.STEPS_PERCENT)
def test_each_step_route_applies_and_splits_backend_between_the_versions(percent: int) -> None:
    snap = compile_snapshot(_resources(percent), "n", 1)
    [route_set] = snap["http_routes"]
    assert (route_set["service"], route_set["port"]) == ("demo/backend", 8080)
    [rule] = route_set["rules"]
    # A weight of 0 sends nothing: the compiled rule leaves that backend out.
    want = [(s, w) for s, w in (("demo/backend-v1", 100 - percent),
                                ("demo/backend-v2", percent)) if w]
    assert [(b["service"], b["weight"]) for b in rule["backends"]] == want
    services = {s["name"]: s for s in snap["services"]}
    assert [e["address"] for e in services["backend"]["endpoints"]] == ["127.0.0.1", "127.0.0.3"]
    assert [e["address"] for e in services["backend-v1"]["endpoints"]] == ["127.0.0.1"]
    assert [e["address"] for e in services["backend-v2"]["endpoints"]] == ["127.0.0.3"]


def test_the_route_is_written_as_the_gateway_api_writes_it() -> None:
    doc = yaml.safe_load(canary.route_yaml(50))
    assert (doc["apiVersion"], doc["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert doc["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "backend",
                                          "port": 8080}]
    assert doc["spec"]["rules"][0]["backendRefs"] == [
        {"name": "backend-v1", "port": 8080, "weight": 50},
        {"name": "backend-v2", "port": 8080, "weight": 50}]
    # The packaged file (what a user reads) is the 10 % step, and the default demo's
    # resources do not carry the canary.
    assert yaml.safe_load_all(canary.CANARY.read_text())
    assert canary.route_doc(10) == canary.docs()[-1]
    assert "backend-v2" not in render_resources(41001, 41002)


def test_two_nodes_place_v2_beside_v1_on_the_backends_node() -> None:
    nodes = plan_nodes(Path("/tmp/x"), (21000, 21200))
    workloads = {r.name: r for r in _resources(10, nodes) if r.kind == "Workload"}
    assert {n: w.spec.node for n, w in workloads.items()} == {
        "frontend-v1": "demo-a", "backend-v1": "demo-b", "backend-v2": "demo-b"}
    assert workloads["backend-v2"].spec.ports == {"http": 41003}


@pytest.mark.parametrize("n, percent, low, high", [
    (200, 0, 0, 0), (200, 100, 200, 200),
    (200, 10, 4, 36),     # 20 +- 4 * sqrt(18) = 20 +- 16.97
    (200, 50, 72, 128),   # 100 +- 4 * sqrt(50) = 100 +- 28.28
    (500, 10, 24, 76), (20, 50, 2, 18)])
def test_bounds_are_four_standard_deviations_of_the_binomial(n: int, percent: int, low: int,
                                                             high: int) -> None:
    assert canary.bounds(n, percent) == (low, high)
    w = percent / 100
    assert high - n * w <= canary.Z * math.sqrt(n * w * (1 - w)) + 1e-9


def _step(percent: int, v1: int, v2: int, **kw: object) -> StepResult:
    fields = dict(v2_percent=percent, version=3, sent=v1 + v2, answered_2xx=v1 + v2,
                  apps={"v1": v1, "v2": v2}, answers={"v1": v1, "v2": v2},
                  mesh={"sent": {"v1": v1, "v2": v2}, "received": {"v1": v1, "v2": v2}})
    fields.update(kw)
    return StepResult(**fields)  # type: ignore[arg-type]


def test_a_step_within_its_tolerance_has_no_problem() -> None:
    assert _step(10, 180, 20).problems() == []
    assert _step(10, 164, 36).problems() == []
    assert _step(0, 200, 0).problems() == []
    assert _step(50, 100, 100, mesh={"sent": None, "received": None}).problems() == []


@pytest.mark.parametrize("step, says", [
    (_step(10, 163, 37), "step 10 %: v2 served 37 of 200, outside 4..36 (binomial"),
    (_step(10, 200, 0), "step 10 %: v2 served 0 of 200, outside 4..36"),
    (_step(0, 199, 1), "step 0 %: v2 served 1 of 200, outside 0"),
    (_step(100, 1, 199), "step 100 %: v2 served 199 of 200, outside 200"),
    (_step(50, 100, 100, answered_2xx=198), "step 50 %: 2 of 200 requests did not get a 2xx"),
    (_step(50, 100, 100, mesh={"sent": {"v1": 99, "v2": 100}, "received": None}),
     "step 50 %: the mesh sent v1 99, v2 100; the apps served v1 100, v2 100"),
    (_step(50, 100, 100, answers={"v1": 0, "v2": 0}), "step 50 %: the answers named v1 0"),
    (_step(50, 100, 100, apps={"v1": None, "v2": 100}), "step 50 %: an app did not answer"),
])
def test_a_step_off_says_how(step: StepResult, says: str) -> None:
    problems = step.problems()
    assert any(p.startswith(says) for p in problems), problems
    assert "OFF" in canary.format_table([step])[1]


@dataclass
class _Answer:
    status: int | None
    version: str | None


def test_run_steps_applies_each_weight_and_judges_what_was_served() -> None:
    """The steps against a split that ignores the route (every request to v1, as a mesh
    without routes would): each step but the first is off, and says so."""
    applied: list[int] = []
    served = {"v1": 0, "v2": 0}

    def apply(percent: int, text: str) -> int:
        applied.append(yaml.safe_load(text)["spec"]["rules"][0]["backendRefs"][1]["weight"])
        return len(applied)

    def send(n: int) -> list[_Answer]:
        served["v1"] += n
        return [_Answer(200, "v1")] * n

    def metrics(reporter: str) -> str:  # the node counted what the apps served
        return "# TYPE meshnode_requests_total counter\n" + "".join(
            f'meshnode_requests_total{{reporter="{reporter}",destination_service='
            f'"backend-{v}.demo.svc.cluster.local",response_code="200"}} {n}\n'
            for v, n in served.items())

    lines: list[str] = []
    n = canary.min_requests()
    results = canary.run_steps(Hooks(apply, send, lambda: dict(served), metrics), n,
                               lines.append)
    assert applied == list(canary.STEPS_PERCENT)
    assert [r.apps for r in results] == [{"v1": n, "v2": 0}] * 4
    assert [r.mesh for r in results] == [{"sent": {"v1": n, "v2": 0},
                                          "received": {"v1": n, "v2": 0}}] * 4
    assert [bool(r.problems()) for r in results] == [False, True, True, True]
    assert f"   10 % to v2: v1 served {n}, v2 served 0  (off)" in lines


def test_min_requests_is_the_least_that_tells_each_step_from_all_or_nothing() -> None:
    n = canary.min_requests()
    assert n == 145
    assert canary.bounds(n, 10)[0] == 1 and canary.bounds(n - 1, 10)[0] == 0
