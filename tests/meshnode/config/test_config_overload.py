"""The Mesh's overload defence (spec.overload): defaults, bad values refused by name,
carried into the snapshot under RouteTable.set_overload()'s argument names."""
from __future__ import annotations

import pytest

from fastpath.engine import RouteTable
from meshnode.config import ConfigError, compile_snapshot, from_dict, parse_text, to_dict

pytestmark = pytest.mark.timeout(60)

MESH = ("apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
        "spec:\n  overload: {maxRequestsInFlight: 300, maxRequestsPerSource: 30,\n"
        "             slowClients: {gracePeriod: 2s, minBytesPerSecond: 100}}\n")
SNAPSHOT_KEYS = ("max_requests_in_flight", "max_requests_per_source", "slow_grace_s",
                 "slow_min_rate")


def test_mesh_overload_is_read_dumped_and_compiled() -> None:
    [mesh] = parse_text(MESH, "mesh.yaml")
    spec = mesh.spec
    assert (spec.max_requests_in_flight, spec.max_requests_per_source, spec.slow_grace_s,
            spec.slow_min_rate) == (300, 30, 2.0, 100)
    assert from_dict(to_dict(mesh)) == mesh
    assert to_dict(mesh)["spec"]["overload"]["slowClients"] == {"gracePeriod": "2s",
                                                                "minBytesPerSecond": 100}
    snapshot = compile_snapshot([mesh], "n", 1)["mesh"]
    assert [snapshot[k] for k in SNAPSHOT_KEYS] == [300, 30, 2.0, 100]


def test_mesh_overload_defaults_no_caps_and_mod_reqtimeouts_rate() -> None:
    [mesh] = parse_text(MESH.split("spec:")[0] + "spec: {}\n", "mesh.yaml")
    assert (mesh.spec.max_requests_in_flight, mesh.spec.max_requests_per_source,
            mesh.spec.slow_grace_s, mesh.spec.slow_min_rate) == (0, 0, 20.0, 500)
    assert [compile_snapshot([], "n", 1)["mesh"][k] for k in SNAPSHOT_KEYS] == [0, 0, 20.0, 500]


def test_snapshot_keys_are_set_overload_arguments() -> None:
    """The data plane passes the snapshot's keys to RouteTable.set_overload() by name."""
    snapshot = compile_snapshot([], "n", 1)["mesh"]
    RouteTable().set_overload(**{k: snapshot[k] for k in SNAPSHOT_KEYS})   # no TypeError


@pytest.mark.parametrize("field, bad, path, message", [
    ("maxRequestsInFlight: 300", "maxRequestsInFlight: -1", "maxRequestsInFlight",
     "between 0 and 4294967295, got -1"),
    ("maxRequestsPerSource: 30", "maxRequestsPerSource: many", "maxRequestsPerSource",
     "must be an integer"),
    ("gracePeriod: 2s", "gracePeriod: 2h", "slowClients.gracePeriod", ""),
    ("minBytesPerSecond: 100", "minBytesPerSecond: 1.5", "slowClients.minBytesPerSecond",
     "must be an integer"),
    ("maxRequestsInFlight: 300", "maxRequestInFlight: 300", "maxRequestInFlight",
     "maxRequestsInFlight"),
])
def test_bad_overload_settings_are_refused_by_name(field: str, bad: str, path: str,
                                                   message: str) -> None:
    broken = MESH.replace(field, bad)
    assert broken != MESH
    with pytest.raises(ConfigError) as info:
        parse_text(broken, "mesh.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.resource, problem.field) == (
        "mesh.yaml", "Mesh default", f"spec.overload.{path}"), problem
    assert message in problem.message, problem.message
