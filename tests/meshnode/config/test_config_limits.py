"""The Mesh's limits before authentication (spec.connections): defaults, bad values refused
by name, carried into the snapshot under RouteTable.set_limits()'s argument names."""
from __future__ import annotations

import pytest

from fastpath.engine import RouteTable
from meshnode.config import ConfigError, compile_snapshot, from_dict, parse_text, to_dict

pytestmark = pytest.mark.timeout(60)

MESH = ("apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
        "spec:\n  connections: {maxHandshakes: 300, maxHandshakesPerSource: 30,\n"
        "                maxConnectionsPerSource: 500, inboundShare: 0.25}\n")
SNAPSHOT_KEYS = ("max_handshakes", "max_handshakes_per_source", "max_connections_per_source",
                 "inbound_share")


def test_mesh_connection_limits_are_read_dumped_and_compiled() -> None:
    [mesh] = parse_text(MESH, "mesh.yaml")
    spec = mesh.spec
    assert (spec.max_handshakes, spec.max_handshakes_per_source,
            spec.max_connections_per_source, spec.inbound_share) == (300, 30, 500, 0.25)
    assert from_dict(to_dict(mesh)) == mesh
    assert to_dict(mesh)["spec"]["connections"]["maxHandshakesPerSource"] == 30
    snapshot = compile_snapshot([mesh], "n", 1)["mesh"]
    assert [snapshot[k] for k in SNAPSHOT_KEYS] == [300, 30, 500, 0.25]


def test_mesh_connection_limits_default_to_the_engines() -> None:
    """No Mesh, or one that says nothing: the engine's own defaults (fastpath consts)."""
    [mesh] = parse_text(MESH.split("spec:")[0] + "spec: {}\n", "mesh.yaml")
    assert (mesh.spec.max_handshakes, mesh.spec.max_handshakes_per_source,
            mesh.spec.max_connections_per_source, mesh.spec.inbound_share) == (1024, 512, 2048, 0.5)
    assert [compile_snapshot([], "n", 1)["mesh"][k] for k in SNAPSHOT_KEYS] == [1024, 512, 2048, 0.5]


def test_snapshot_keys_are_set_limits_arguments() -> None:
    """The data plane passes the snapshot's keys to RouteTable.set_limits() by name."""
    snapshot = compile_snapshot([], "n", 1)["mesh"]
    RouteTable().set_limits(**{k: snapshot[k] for k in SNAPSHOT_KEYS})   # no TypeError


@pytest.mark.parametrize("field, bad, message", [
    ("maxHandshakes", "0", "between 1 and 1048576, got 0"),
    ("maxHandshakes", "2000000", "between 1 and 1048576, got 2000000"),
    ("maxHandshakesPerSource", "-3", "between 1 and 1048576, got -3"),
    ("maxHandshakesPerSource", "ten", "must be an integer"),
    ("maxConnectionsPerSource", "1.5", "must be an integer"),
    ("maxConnectionsPerSource", "true", "must be an integer"),
    ("inboundShare", "1", "strictly between 0 and 1, got 1"),
    ("inboundShare", "0", "strictly between 0 and 1, got 0"),
    ("inboundShare", "half", "must be a number between 0 and 1"),
])
def test_bad_connection_limits_are_refused_by_name(field: str, bad: str, message: str) -> None:
    good = {"maxHandshakes": "300", "maxHandshakesPerSource": "30",
            "maxConnectionsPerSource": "500", "inboundShare": "0.25"}[field]
    broken = MESH.replace(f"{field}: {good}", f"{field}: {bad}")
    assert broken != MESH
    with pytest.raises(ConfigError) as info:
        parse_text(broken, "mesh.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.resource, problem.field) == (
        "mesh.yaml", "Mesh default", f"spec.connections.{field}"), problem
    assert message in problem.message, problem.message


def test_an_unknown_connection_limit_is_refused_with_a_hint() -> None:
    broken = MESH.replace("maxHandshakes: 300", "maxHandshake: 300")
    with pytest.raises(ConfigError) as info:
        parse_text(broken, "mesh.yaml")
    [problem] = info.value.problems
    assert problem.field == "spec.connections.maxHandshake"
    assert "maxHandshakes" in problem.message
