"""The Mesh's telemetry.metricNames: which names request metrics are exported under
(istio, meshnode or both, the default); bad values refused by name; carried into the
snapshot telemetry reads, with every workload's identity and labels (metrics' peers)."""
from __future__ import annotations

import pytest

from meshnode.config import ConfigError, compile_snapshot, from_dict, parse_text, to_dict

pytestmark = pytest.mark.timeout(60)

MESH = ("apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
        "spec:\n  telemetry: {metricNames: %s}\n")


def test_metric_names_are_read_dumped_and_compiled() -> None:
    [mesh] = parse_text(MESH % "[istio]", "mesh.yaml")
    assert mesh.spec.metric_names == ("istio",)
    assert from_dict(to_dict(mesh)) == mesh
    assert to_dict(mesh)["spec"]["telemetry"]["metricNames"] == ["istio"]
    assert compile_snapshot([mesh], "n", 1)["mesh"]["metric_names"] == ["istio"]


def test_metric_names_default_to_both() -> None:
    assert compile_snapshot([], "n", 1)["mesh"]["metric_names"] == ["istio", "meshnode"]


@pytest.mark.parametrize("value, problem", [
    ("[]", "must be a list of one or both of istio, meshnode, got an empty list"),
    ("istio", "must be a list of one or both of istio, meshnode"),
    ("[istio, envoy]", "spec.telemetry.metricNames[1]: must be one of istio, meshnode"),
    ("[meshnode, meshnode]", "spec.telemetry.metricNames[1]: 'meshnode' is listed twice"),
])
def test_bad_metric_names_are_refused_by_field(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_text(MESH % value, "mesh.yaml")
    assert problem in str(err.value)


def test_the_snapshot_names_every_workload_of_the_mesh() -> None:
    resources = parse_text(
        "apiVersion: meshnode.io/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: ns}\n"
        "spec: {address: 10.0.0.9, ports: {http: 80}, labels: {app: a}, serviceAccount: sa,"
        " node: elsewhere}\n", "w.yaml")
    snapshot = compile_snapshot(resources, "here", 1)
    assert snapshot["local"] == []
    assert snapshot["workloads"] == [{"workload": "ns/w", "labels": {"app": "a"},
                                      "identity": "spiffe://cluster.local/ns/ns/sa/sa"}]
