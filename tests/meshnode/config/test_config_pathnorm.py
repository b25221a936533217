"""The Mesh's spec.pathNormalization (Istio's meshConfig.pathNormalization): its values
accepted in Istio's names and carried into the snapshot as the engine's mode, others
refused by name."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from fastpath.engine import RouteTable
from meshnode.config import ConfigError, compile_snapshot, parse_text, to_dict

from authzkit import doc

pytestmark = pytest.mark.timeout(60)


def mesh(spec: dict[str, Any]) -> str:
    return doc("Mesh", spec, name="default", api="meshnode.io/v1alpha1")


@pytest.mark.parametrize("given, mode", [
    ("DEFAULT", "BASE"), ("NONE", "NONE"), ("BASE", "BASE"), ("MERGE_SLASHES", "MERGE_SLASHES"),
    ("DECODE_AND_MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"),
])
def test_each_of_istios_values_is_kept_and_compiled_to_the_engines_mode(given: str, mode: str) -> None:
    [m] = parse_text(mesh({"pathNormalization": {"normalization": given}}), "m.yaml")
    assert m.spec.path_normalization == given
    assert to_dict(m)["spec"]["pathNormalization"] == {"normalization": given}
    assert parse_text(yaml.safe_dump(to_dict(m)), "again.yaml") == [m]
    snapshot = compile_snapshot([m], "n", 1)["mesh"]
    assert snapshot["path_normalization"] == mode
    RouteTable().set_path_normalization(snapshot["path_normalization"])    # taken


def test_the_default_is_istios_base() -> None:
    """No Mesh, a Mesh that says nothing, or an empty pathNormalization: DEFAULT (BASE)."""
    assert compile_snapshot([], "n", 1)["mesh"]["path_normalization"] == "BASE"
    for spec in ({}, {"pathNormalization": {}}):
        [m] = parse_text(mesh(spec), "m.yaml")
        assert m.spec.path_normalization == "DEFAULT"
        assert compile_snapshot([m], "n", 1)["mesh"]["path_normalization"] == "BASE"


@pytest.mark.parametrize("spec, field, says", [
    ({"pathNormalization": {"normalization": "DECODE"}}, "spec.pathNormalization.normalization",
     "must be one of DEFAULT, NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES, got a string ('DECODE')"),
    ({"pathNormalization": {"normalization": "base"}}, "spec.pathNormalization.normalization",
     "got a string ('base')"),
    ({"pathNormalization": {"normalization": 1}}, "spec.pathNormalization.normalization",
     "must be one of"),
    ({"pathNormalization": {"mode": "BASE"}}, "spec.pathNormalization.mode",
     "unknown field"),
    ({"pathNormalization": "BASE"}, "spec.pathNormalization", "must be a mapping"),
])
def test_other_values_are_refused_by_name(spec: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(mesh(spec), "m.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.resource, problem.field) == ("m.yaml", "Mesh default", field)
    assert says in problem.message, problem.message
