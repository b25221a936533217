"""XBackendTrafficPolicy (Gateway API GEP-3388) through a real node: the policy's YAML as
the Gateway API writes it, applied with `meshnode apply` beside the conformance suite's
HTTPRouteRetry route, bounds the retries toward its Service: a tight budget lets through
only its floor's retries (per worker) and passes the other failures on, counted in
meshnode_route_retries_over_budget_total; a loose one lets every retry through.

The mesh is meshkit's (the conformance backends behind one node, two workers); requests
carry the suite's retry simulation for the echo backend (a fresh uuid, `responseCode`,
`succeedAfter`): each one's first try fails with 500, its retry would get 200.
"""

from __future__ import annotations

from urllib.parse import urlencode
from uuid import uuid4

import pytest
import yaml

from conformance import Expect, converge
from dataplanekit import metric_total, settle
from meshkit import DATA, INFRA_NS, MESH_NS, WORKERS, ConformanceMesh, conformance_mesh, gw
from mnharness import parse_version

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)

HOST = f"infra-backend-v1.{INFRA_NS}:8080"
PATH = "/retry/code-all-attempts-2"         # retried on 500 (httproute-retry.yaml)
NAME = "infra-backend-v3-retry-budget"


def budget_policy(percent: int, count: int, interval: str) -> str:
    return f"""\
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata:
  name: {NAME}
  namespace: {INFRA_NS}
spec:
  targetRefs:
  - group: ""
    kind: Service
    name: infra-backend-v3
  retryConstraint:
    budget:
      percent: {percent}
      interval: 10s
    minRetryRate:
      count: {count}
      interval: {interval}
"""


def failing_once(gw: ConformanceMesh, n: int) -> list[int]:
    """`n` requests whose first try gets 500 and a retry 200: the statuses the caller got."""
    statuses = []
    for _ in range(n):
        query = urlencode({"uuid": uuid4().hex, "responseCode": "500", "succeedAfter": "1"})
        statuses.append(gw.send(gw.caller(MESH_NS), HOST, f"{PATH}?{query}").status)
    return statuses


def over_budget(gw: ConformanceMesh) -> float:
    settle(gw.node)
    return metric_total(gw.node, "meshnode_route_retries_over_budget_total")


def test_a_policys_budget_bounds_the_retries_toward_its_service(gw: ConformanceMesh) -> None:
    gw.apply(DATA / "core" / "httproute-retry.yaml")
    why = converge(gw, gw.caller(MESH_NS), Expect(host=HOST, path=PATH, backend="infra-backend-v3",
                                                   namespace=INFRA_NS))
    assert why is None, why
    try:
        # No share of the requests, one retry an hour by the floor: in each worker the
        # first failure is retried, every later one passed on as it came.
        before = over_budget(gw)
        gw.apply(gw.write("tight.yaml", budget_policy(0, 1, "1h")))
        tight = failing_once(gw, 3 * WORKERS)
        assert 1 <= tight.count(200) <= WORKERS and tight.count(500) == len(tight) - tight.count(200), tight
        assert over_budget(gw) - before == tight.count(500)

        got = gw.node.cli("get", "xbackendtrafficpolicy", NAME, "-n", INFRA_NS, "-o", "yaml")
        assert got.returncode == 0, got.stderr
        shown = yaml.safe_load(got.stdout)
        assert shown["spec"] == yaml.safe_load(budget_policy(0, 1, "1h"))["spec"]
        [ancestor] = shown["status"]["ancestors"]
        assert ancestor["ancestorRef"]["name"] == "infra-backend-v3"
        assert [(c["type"], c["status"]) for c in ancestor["conditions"]] == [("Accepted", "True")]

        # Loosened by applying the policy alone: every retry goes through again.
        before = over_budget(gw)
        gw.apply(gw.write("loose.yaml", budget_policy(100, 1000, "1s")))
        assert failing_once(gw, 3 * WORKERS) == [200] * (3 * WORKERS)
        assert over_budget(gw) == before
    finally:
        deleted = gw.node.cli("delete", "xbackendtrafficpolicy", NAME, "-n", INFRA_NS)
        if deleted.returncode == 0:
            gw.node.wait_version(parse_version(deleted.stdout))


def test_a_policy_with_session_persistence_is_refused_by_name(gw: ConformanceMesh) -> None:
    bad = gw.write("sticky.yaml", budget_policy(20, 10, "1s")
                   + "  sessionPersistence:\n    sessionName: foo\n    type: Cookie\n")
    refused = gw.node.cli("apply", "-f", str(bad))
    assert refused.returncode == 78, (refused.stdout, refused.stderr)
    assert (f"XBackendTrafficPolicy {INFRA_NS}/{NAME}: spec.sessionPersistence: "
            "sessionPersistence is not implemented yet") in refused.stderr
    assert gw.node.cli("get", "xbackendtrafficpolicy", "-n", INFRA_NS).stdout.strip() \
        == "no resources found"
