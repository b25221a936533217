"""HTTPRoute `retry` (GEP-1731) through a real meshnode node: the Gateway API's
HTTPRouteRetry and HTTPRouteRetryWithTimeouts conformance tests
(conformance/tests/httproute-retry*.go), their manifests as the core ones are here
(data/gateway-api/core/, parentRefs naming Service infra-backend-v1 port 8080).

Each request carries the suite's retry simulation for the echo backend (a fresh uuid,
`responseCode`, `succeedAfter`, `delayRetry`): its first tries fail, and the test
asserts what the Go test asserts of the one answer the caller gets.
"""

from __future__ import annotations

from urllib.parse import urlencode
from uuid import uuid4

import pytest
import yaml

from conformance import Expect, converge, mismatch
from meshkit import DATA, INFRA_NS, MESH_NS, ConformanceMesh, conformance_mesh, gw

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)

CORE = DATA / "core"
HOST = f"infra-backend-v1.{INFRA_NS}:8080"
V3 = "infra-backend-v3"


def simulated(gw: ConformanceMesh, path: str, status: int, **config: str) -> str | None:
    """One request to `path` whose first tries fail as `config` says; why its answer is
    not `status` (from infra-backend-v3 when 200), None when it is."""
    query = urlencode({"uuid": uuid4().hex, **config})
    case = Expect(host=HOST, path=f"{path}?{query}", status=(status,),
                  backend=V3 if status == 200 else "", namespace=INFRA_NS if status == 200 else "")
    got = gw.send(gw.caller(MESH_NS), case.host, case.path)
    why = mismatch(case, got)
    return f"{path} {config}: {why}; got {got.describe()}" if why else None


def applied(gw: ConformanceMesh, manifest: str, probe: str) -> None:
    gw.apply(CORE / manifest)
    why = converge(gw, gw.caller(MESH_NS), Expect(host=HOST, path=probe, backend=V3,
                                                   namespace=INFRA_NS))
    assert why is None, why


def test_http_route_retry(gw: ConformanceMesh) -> None:
    """HTTPRouteRetry: retried on the listed codes up to `attempts`, the last failure
    passed on as it came; a code not listed is not retried."""
    applied(gw, "httproute-retry.yaml", "/retry/code-500-attempts-3")
    shown = yaml.safe_load(gw.node.cli("get", "httproute", "retries", "-n", INFRA_NS,
                                       "-o", "yaml").stdout)
    assert shown["spec"]["rules"][0]["retry"] == {"codes": [500], "attempts": 3}
    three, every = "/retry/code-500-attempts-3", "/retry/code-all-attempts-2"
    failures = [why for why in (
        simulated(gw, three, 200, responseCode="500", succeedAfter="2"),
        simulated(gw, three, 500, responseCode="500", succeedAfter="4"),
        simulated(gw, three, 503, responseCode="503", succeedAfter="2"),
        *(simulated(gw, every, 200, responseCode=code, succeedAfter="1")
          for code in ("500", "502", "503", "504")),
        *(simulated(gw, every, int(code), responseCode=code, succeedAfter="3")
          for code in ("500", "502", "503", "504")),
    ) if why]
    assert not failures, "\n".join(failures)


def test_http_route_retry_with_timeouts(gw: ConformanceMesh) -> None:
    """HTTPRouteRetryWithTimeouts: a try over backendRequest is retried like a connection
    error; timeouts.request spans the tries and their backoffs (504 when it comes)."""
    applied(gw, "httproute-retry-with-timeouts.yaml", "/retry/request-timeout-200ms")
    per_try, whole = "/retry/backend-request-timeout-200ms", "/retry/request-timeout-200ms"
    failures = [why for why in (
        simulated(gw, per_try, 200, responseCode="500", succeedAfter="2", delayRetry="300ms"),
        simulated(gw, per_try, 504, responseCode="500", succeedAfter="3", delayRetry="300ms"),
        simulated(gw, whole, 200, responseCode="500", succeedAfter="1"),
        simulated(gw, whole, 504, responseCode="500", succeedAfter="4", delayRetry="100ms"),
    ) if why]
    assert not failures, "\n".join(failures)


def test_http_route_retry_connection_error(gw: ConformanceMesh) -> None:
    """HTTPRouteRetryConnectionError: a backend that closes the connection unanswered is
    retried with no codes listed, up to `attempts`. Past them the caller gets the 502 the
    backend's node answered for it (upstream accepts 500 or 503 there: meshnode's nodes
    answer 502 for an app that closed before answering, retried or not)."""
    applied(gw, "httproute-retry-connection-error.yaml", "/retry/no-status-code-attempts-3")
    path = "/retry/no-status-code-attempts-3"
    failures = [why for why in (
        simulated(gw, path, 200, succeedAfter="2"),
        simulated(gw, path, 502, succeedAfter="4"),
    ) if why]
    assert not failures, "\n".join(failures)
