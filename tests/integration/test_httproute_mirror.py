"""HTTPRoute RequestMirror through a real node, as the Gateway API conformance tests
HTTPRouteRequestMirror, HTTPRouteRequestMultipleMirrors and
HTTPRouteRequestPercentageMirror check it: the answer comes from the rule's backend, and
the mirror backend received the request too (upstream reads the mirror pod's log; here
the echo pod's record of what it got). The manifests follow upstream's
httproute-request-mirror*.yaml with the parentRef a GAMMA route needs (Service
infra-backend-v1 port 8080, as data/gateway-api/core/ does)."""

from __future__ import annotations

import pytest

from conformance import Expect, check
from meshkit import INFRA_NS, MESH_NS, ConformanceMesh, conformance_mesh, gw
from mnharness import wait_for

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)

HOST = f"infra-backend-v1.{INFRA_NS}:8080"
V1, V2, V3 = "infra-backend-v1", "infra-backend-v2", "infra-backend-v3"


def manifest(name: str, prefix: str, mirrors: list[tuple[str, str]]) -> str:
    """A route like upstream's: PathPrefix `prefix` to infra-backend-v1, mirrored to each
    (backend, extra requestMirror fields) of `mirrors`."""
    filters = "".join(f"""
    - type: RequestMirror
      requestMirror:
        backendRef: {{name: {backend}, namespace: {INFRA_NS}, port: 8080}}{extra}""" for backend, extra in mirrors)
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {INFRA_NS}}}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: infra-backend-v1, port: 8080}}
  rules:
  - matches:
    - path: {{type: PathPrefix, value: {prefix}}}
    filters:{filters}
    backendRefs:
    - {{name: infra-backend-v1, namespace: {INFRA_NS}, port: 8080}}
"""


def seen_by(gw: ConformanceMesh, backend: str, prefix: str) -> list[tuple[str, str, str, int]]:
    return [r for name, pod in gw.pods.items() if name.startswith(backend + "-")
            for r in pod.seen if r[1].startswith(prefix)]


def test_a_request_is_mirrored_to_every_mirror_and_answered_by_its_backend(gw: ConformanceMesh) -> None:
    gw.apply(gw.write("mirror.yaml", manifest("request-mirror", "/mirror", [(V2, "")]) + "---\n"
                      + manifest("request-multiple-mirrors", "/multi-mirror", [(V2, ""), (V3, "")])))
    check(gw, gw.caller(MESH_NS), [
        Expect(host=HOST, path="/mirror", backend=V1, namespace=INFRA_NS),
        Expect(host=HOST, path="/multi-mirror", backend=V1, namespace=INFRA_NS),
    ])
    got = wait_for(lambda: seen_by(gw, V2, "/mirror"), 10, "the copy at infra-backend-v2")
    # As Envoy: "-shadow" after the host name, before the port.
    assert got[0][:3] == ("GET", "/mirror", f"infra-backend-v1.{INFRA_NS}-shadow:8080")
    for backend in (V2, V3):
        wait_for(lambda: seen_by(gw, backend, "/multi-mirror"), 10, f"the copy at {backend}")
    assert not seen_by(gw, V3, "/mirror")


def test_percent_and_fraction_mirror_that_share_of_the_requests(gw: ConformanceMesh) -> None:
    gw.apply(gw.write("mirror-pct.yaml", manifest("mirror-percent", "/percent-mirror", [(V2, """
        percent: 20""")]) + "---\n" + manifest("mirror-fraction", "/fraction-mirror", [(V2, """
        fraction: {numerator: 50, denominator: 100}""")])))
    caller = gw.caller(MESH_NS)
    n = 200
    for i in range(n):
        for prefix in ("/percent-mirror", "/fraction-mirror"):
            got = gw.send(caller, HOST, f"{prefix}/{i}")
            assert got.status == 200 and got.echo["pod"].startswith(V1)
    # Binomial bounds, ±5 sd: 20 % of 200 is 40 (sd 5.7), 50 % is 100 (sd 7.1). The
    # copies are on their way when the answers are: counted once the count holds still.
    assert 12 <= settled(gw, "/percent-mirror") <= 68
    assert 65 <= settled(gw, "/fraction-mirror") <= 135


def settled(gw: ConformanceMesh, prefix: str) -> int:
    """How many copies infra-backend-v2 got, once two looks half a second apart agree."""
    counts: list[int] = []

    def steady() -> tuple[int] | None:
        counts.append(len(seen_by(gw, V2, prefix)))
        return (counts[-1],) if len(counts) > 1 and counts[-1] == counts[-2] else None
    return wait_for(steady, 10, f"copies of {prefix} in", interval_s=0.5)[0]
