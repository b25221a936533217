"""`meshnode demo --canary`: the backend's traffic moved from v1 to v2 by HTTPRoute weights.

The canary as the Gateway API writes it (canary.yaml): backend v1 and v2 each a Workload
of its own (label ``version``), a Service per version besides ``backend`` selecting both,
and an HTTPRoute on ``backend`` whose weighted backendRefs name the versions' Services.
The steps send 0, 10, 50, then 100 % to v2: each applies the route with that step's
weights to every node, waits until every worker ACKs it, sends N requests through the
mesh, and reads what each version served, as the apps counted it and as the calling
side's node counted it (meshnode_requests_total by destination_service).

Each request goes to v2 on its own with the weight's probability (fastpath/routes.pxi
draws per request), so v2's count at a step is binomial(N, w). A step passes when that
count is within ``Z`` standard deviations of N·w; at 0 % and 100 % the other version
must serve nothing. Z = 4 makes a false failure about 1 in 16,000 per step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import yaml

from . import probe, report

CANARY = Path(__file__).resolve().parent / "canary.yaml"
STEPS_PERCENT = (0, 10, 50, 100)
VERSIONS = ("v1", "v2")
Z = 4.0  # the tolerance, in standard deviations of binomial(N, w)
TOLERANCE = (f"binomial: v2's count within {Z:g} sd of N*w, sd = sqrt(N*w*(1-w)); "
             f"none to the other version at 0 % and 100 %")


class Answer(Protocol):
    status: int | None
    version: str | None


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(CANARY.read_text()) if d]


def resource_docs() -> list[dict[str, Any]]:
    """canary.yaml's Services and Workload: applied with the demo's other resources."""
    return [d for d in docs() if d.get("kind") != "HTTPRoute"]


def _route() -> dict[str, Any]:
    return next(d for d in docs() if d.get("kind") == "HTTPRoute")


ROUTE_NAME = "{namespace}/{name}".format(**_route()["metadata"])
NAMESPACE = str(_route()["metadata"]["namespace"])


def service_of(version: str) -> str:
    """The Service that selects one version's workloads (a backendRef of the route)."""
    return next(str(ref["name"]) for ref in _route()["spec"]["rules"][0]["backendRefs"]
                if str(ref["name"]).endswith(f"-{version}"))


def route_doc(v2_percent: int) -> dict[str, Any]:
    """canary.yaml's HTTPRoute with the weights of a step sending v2_percent % to v2."""
    doc = copy.deepcopy(_route())
    weights = {"v1": 100 - v2_percent, "v2": v2_percent}
    for ref in doc["spec"]["rules"][0]["backendRefs"]:
        ref["weight"] = next(w for v, w in weights.items() if ref["name"] == service_of(v))
    return doc


def route_yaml(v2_percent: int) -> str:
    return yaml.safe_dump(route_doc(v2_percent), sort_keys=False)


# --- the judgement: pure, so each bound is tested on its own numbers ----------------------

def bounds(n: int, v2_percent: int) -> tuple[int, int]:
    """The least and most requests v2 may serve of n at a step, both inclusive."""
    w = v2_percent / 100
    spread = Z * math.sqrt(n * w * (1 - w))
    return max(0, math.ceil(n * w - spread)), min(n, math.floor(n * w + spread))


def min_requests() -> int:
    """The fewest requests a step may send: enough that each step between 0 and 100 %
    needs at least one request to each version (so a route not in force, or one that
    sends everything one way, is off). 145 for the 10 % step at Z = 4."""
    n = 1
    while not all(bounds(n, p)[0] >= 1 and bounds(n, p)[1] <= n - 1
                  for p in STEPS_PERCENT if 0 < p < 100):
        n += 1
    return n


def expected(n: int, v2_percent: int) -> str:
    low, high = bounds(n, v2_percent)
    return str(low) if low == high else f"{low}..{high}"


@dataclass
class StepResult:
    """What one step sent and what each version served, by each count."""

    v2_percent: int
    version: int  # the config version that carried the step's route
    sent: int
    answered_2xx: int
    apps: dict[str, int | None]  # served per version, as its app counted (/stats)
    answers: dict[str, int]  # per version, as the answers named it
    # The mesh's own figures per version's Service: the calling node's ("sent") and the
    # backends' node's ("received"); None when a node reports none.
    mesh: dict[str, dict[str, int] | None]

    def problems(self) -> list[str]:
        step = f"step {self.v2_percent} %"
        out = []
        if self.answered_2xx != self.sent:
            out.append(f"{step}: {self.sent - self.answered_2xx} of {self.sent} requests "
                       f"did not get a 2xx")
        if any(v is None for v in self.apps.values()):
            out.append(f"{step}: an app did not answer /stats")
            return out
        v1, v2 = (self.apps[v] or 0 for v in VERSIONS)
        if v1 + v2 != self.sent:
            out.append(f"{step}: the apps served {v1 + v2} requests of {self.sent} sent")
        low, high = bounds(self.sent, self.v2_percent)
        if not low <= v2 <= high:
            out.append(f"{step}: v2 served {v2} of {self.sent}, outside "
                       f"{expected(self.sent, self.v2_percent)} ({TOLERANCE})")
        served = {"v1": v1, "v2": v2}
        for what, counts in (("the answers named", self.answers), *(
                (f"the mesh {side}", c) for side, c in self.mesh.items())):
            if counts is not None and counts != served:
                out.append(f"{step}: {what} v1 {counts['v1']}, v2 {counts['v2']}; "
                           f"the apps served v1 {v1}, v2 {v2}")
        return out


def _pair(counts: dict[str, int] | None) -> str:
    return "/".join(str(counts[v]) for v in VERSIONS) if counts is not None else "-"


def format_table(results: Sequence[StepResult]) -> list[str]:
    head = ("step", "v2 weight", "config", "v1 served", "v2 served", "v2 expected",
            *(f"mesh {side} v1/v2" for side, _ in REPORTERS), "")
    rows = [head]
    for i, r in enumerate(results, 1):
        rows.append((str(i), f"{r.v2_percent} %", f"v{r.version}",
                     *(str(r.apps[v]) if r.apps[v] is not None else "-" for v in VERSIONS),
                     expected(r.sent, r.v2_percent),
                     *(_pair(r.mesh.get(side)) for side, _ in REPORTERS),
                     "ok" if not r.problems() else "OFF"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


# Each side's figures: meshnode_requests_total by Istio's reporter label.
REPORTERS = (("sent", "source"), ("received", "destination"))


def mesh_served(metrics_text: str | None, reporter: str) -> dict[str, int] | None:
    """Requests to each version's Service in a node's meshnode_requests_total as one
    side counted them (reporter "source": where the route chose; "destination": the
    node that handed them to the app), or None when it reports none."""
    if metrics_text is None:
        return None
    try:
        counts = {v: report.mesh_counts(metrics_text, service_of(v), NAMESPACE, reporter)
                  for v in VERSIONS}
    except ValueError:
        return None
    if not any(c.present for c in counts.values()):
        return None
    return {v: c.total() for v, c in counts.items()}


# --- the steps ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Hooks:
    """What the steps need of the running demo (meshnode.demo.run gives them)."""

    apply: Callable[[int, str], int]  # (v2 %, route YAML) -> the version every worker ACKed
    send: Callable[[int], Sequence[Answer]]  # N requests through the mesh
    served: Callable[[], dict[str, int | None]]  # per version, what its app served so far
    metrics: Callable[[str], str | None]  # reporter -> that side's node's /metrics


def _minus(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
    if after is None:
        return None
    return {v: after[v] - (before or {}).get(v, 0) for v in VERSIONS}


def _mesh(hooks: Hooks) -> dict[str, dict[str, int] | None]:
    return {side: mesh_served(hooks.metrics(reporter), reporter) for side, reporter in REPORTERS}


def _mesh_settled(hooks: Hooks, before: dict[str, dict[str, int] | None],
                  n: int) -> dict[str, dict[str, int] | None]:
    """The mesh's counts since `before` once each side's hold n requests."""
    def since() -> dict[str, dict[str, int] | None]:
        return {side: _minus(now, before[side]) for side, now in _mesh(hooks).items()}
    return probe.settle(since, lambda seen: all(
        c is not None and sum(c.values()) >= n for c in seen.values()))


def run_steps(hooks: Hooks, n: int, out: Callable[[str], None]) -> list[StepResult]:
    results = []
    for percent in STEPS_PERCENT:
        version = hooks.apply(percent, route_yaml(percent))
        apps_before, mesh_before = hooks.served(), _mesh(hooks)
        answers = hooks.send(n)
        apps_after = hooks.served()
        mesh = _mesh_settled(hooks, mesh_before, n)
        apps = {v: (apps_after[v] - b) if apps_after[v] is not None and
                (b := apps_before[v]) is not None else None for v in VERSIONS}
        result = StepResult(
            percent, version, n,
            sum(1 for a in answers if a.status is not None and 200 <= a.status < 300),
            apps, {v: sum(1 for a in answers if a.version == v) for v in VERSIONS}, mesh)
        results.append(result)
        out(f"  {percent:>3} % to v2: v1 served {apps['v1']}, v2 served {apps['v2']}"
            f"{'' if not result.problems() else '  (off)'}")
    return results


def format_report(results: Sequence[StepResult], n: int) -> Iterator[str]:
    yield f"route     HTTPRoute {ROUTE_NAME} on Service backend, as meshnode/demo/canary.yaml " \
          f"writes it (weights per step)"
    yield f"requests  {n} a step, over one keep-alive connection to the frontend"
    yield f"tolerance {TOLERANCE}"
    yield "counts    served: as each version's app counted (/stats); mesh: " \
          "meshnode_requests_total by destination_service,"
    yield "          sent on the frontend's node (reporter=source), received on the " \
          "backends' (reporter=destination)"
    yield ""
    yield from format_table(results)
