"""Fault injection through a real node: an HTTPRoute whose rule has an ExtensionRef filter
naming a meshnode.io FaultInjection (Istio's fault fields), applied with `meshnode
apply`, installed by every worker, and changed by applying the FaultInjection alone.

The mesh is meshkit's (the Gateway API conformance backends behind one node); requests
go from the echo-v1 pod of the mesh namespace to Service echo.
"""

from __future__ import annotations

import time

import pytest
import yaml

from dataplanekit import metric_total
from meshkit import MESH_NS, ConformanceMesh, conformance_mesh, gw
from mnharness import parse_version, wait_for

__all__ = ["conformance_mesh", "gw"]  # the fixtures these tests use, from meshkit

pytestmark = pytest.mark.timeout(240)

ROUTE = f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-faults
  namespace: {MESH_NS}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /fault
    filters:
    - type: ExtensionRef
      extensionRef:
        group: meshnode.io
        kind: FaultInjection
        name: echo-fault
    backendRefs:
    - name: echo-v1
      port: 80
  - backendRefs:
    - name: echo-v2
      port: 80
"""


def fault(spec: str) -> str:
    return (f"apiVersion: meshnode.io/v1alpha1\nkind: FaultInjection\n"
            f"metadata:\n  name: echo-fault\n  namespace: {MESH_NS}\nspec:\n{spec}")


ABORT = fault("  abort:\n    httpStatus: 503\n    percentage:\n      value: 100\n")
DELAY = fault("  delay:\n    fixedDelay: 400ms\n    percentage:\n      value: 100\n")


def test_a_fault_injection_applies_changes_and_goes_through_a_node(gw: ConformanceMesh) -> None:
    caller = gw.caller(MESH_NS)
    gw.apply(gw.write("route.yaml", ROUTE))
    # The filter names an object not there: not skipped, every request it takes is 500.
    missing = gw.send(caller, "echo", "/fault/a")
    assert (missing.status, missing.body) == (500, b"route filter not resolved\n")
    assert gw.send(caller, "echo", "/other").echo["pod"].startswith("echo-v2-")
    status, reason, message = gw.condition(MESH_NS, "echo-faults", "ResolvedRefs")
    assert (status, reason) == ("False", "BackendNotFound")
    assert f"FaultInjection {MESH_NS}/echo-fault does not exist" in message

    gw.apply(gw.write("abort.yaml", ABORT))
    for _ in range(3):
        aborted = gw.send(caller, "echo", "/fault/b", method="POST")
        assert (aborted.status, aborted.body) == (503, b"fault filter abort\n"), aborted.describe()
    assert gw.condition(MESH_NS, "echo-faults", "ResolvedRefs")[:2] == ("True", "ResolvedRefs")

    gw.apply(gw.write("delay.yaml", DELAY))     # the route itself is not applied again
    started = time.monotonic()
    delayed = gw.send(caller, "echo", "/fault/c?x=1", headers={"X-Probe": "kept"})
    assert time.monotonic() - started >= 0.4
    assert delayed.status == 200 and delayed.echo["pod"].startswith("echo-v1-"), delayed.describe()
    assert delayed.echo["path"] == "/fault/c?x=1"

    # Counted by the workers, exported by telemetry.
    for name, at_least in (("meshnode_faults_aborted_total", 3), ("meshnode_faults_delayed_total", 1),
                           ("meshnode_route_filter_unresolved_total", 1)):
        wait_for(lambda: metric_total(gw.node, name) >= at_least, 10.0, f"{name} >= {at_least}")

    got = gw.node.cli("get", "faultinjection", "echo-fault", "-n", MESH_NS, "-o", "yaml")
    assert got.returncode == 0, got.stderr
    assert yaml.safe_load(got.stdout) == yaml.safe_load(DELAY)

    bad = gw.write("bad.yaml", fault("  abort:\n    grpcStatus: UNAVAILABLE\n"))
    refused = gw.node.cli("apply", "-f", str(bad))
    assert refused.returncode == 78, (refused.stdout, refused.stderr)
    assert (f"FaultInjection {MESH_NS}/echo-fault: spec.abort.grpcStatus: grpcStatus is not "
            "implemented") in refused.stderr

    deleted = gw.node.cli("delete", "faultinjection", "echo-fault", "-n", MESH_NS)
    assert deleted.returncode == 0, deleted.stderr
    gw.node.wait_version(parse_version(deleted.stdout))
    assert gw.send(caller, "echo", "/fault/d").status == 500
