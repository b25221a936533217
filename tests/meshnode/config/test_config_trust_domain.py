"""The trust domain is the mesh root's (DESIGN §4): a Mesh that names another is refused,
naming the file, resource and field, whether applied, seeded or already stored; a Mesh
that names none takes the root's, and cluster.local only under a root that names none."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from meshnode.config import (ConfigError, Store, check_root_domain, compile_snapshot,
                             parse_text, to_dict)

pytestmark = pytest.mark.timeout(60)

ROOT = "bar.example"


def mesh(trust_domain: str | None) -> str:
    named = f"trustDomain: {trust_domain}" if trust_domain else "mtls: {mode: STRICT}"
    return textwrap.dedent(f"""\
        apiVersion: meshnode.io/v1alpha1
        kind: Mesh
        metadata: {{name: default}}
        spec: {{{named}}}
        ---
        apiVersion: meshnode.io/v1alpha1
        kind: Workload
        metadata: {{name: web-1, namespace: demo}}
        spec: {{address: 127.0.0.1, serviceAccount: web}}
        """)


def refused_for_another_domain(error: ConfigError, file: str, named: str) -> None:
    [problem] = error.problems
    assert (problem.resource, problem.field) == ("Mesh default", "spec.trustDomain")
    assert file in problem.file
    assert f"{named!r} is not the mesh root's trust domain {ROOT!r}" in problem.message


def test_a_mesh_naming_another_trust_domain_than_the_roots_is_refused_at_apply(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "state", root_domain=ROOT)
    with pytest.raises(ConfigError) as refused:
        store.apply(parse_text(mesh("foo.example"), "mesh.yaml"), "mesh.yaml")
    refused_for_another_domain(refused.value, "mesh.yaml", "foo.example")
    assert store.version == 0 and not store.path.exists()
    # The root's own, or none, is taken.
    assert store.apply(parse_text(mesh(ROOT), "mesh.yaml"), "mesh.yaml") == 1
    assert store.apply(parse_text(mesh(None), "mesh.yaml"), "mesh.yaml") == 2


def test_a_mesh_naming_none_takes_the_roots_trust_domain(tmp_path: Path) -> None:
    resources = parse_text(mesh(None), "mesh.yaml")
    assert "trustDomain" not in to_dict(resources[0])["spec"]  # stored as not named
    under_root = compile_snapshot(resources, "n1", 1, ROOT)
    assert under_root["mesh"]["trust_domain"] == ROOT
    assert [w["identity"] for w in under_root["local"]] == [f"spiffe://{ROOT}/ns/demo/sa/web"]
    # A root that names none: the Mesh's, else cluster.local.
    assert compile_snapshot(resources, "n1", 1)["local"][0]["identity"] == \
        "spiffe://cluster.local/ns/demo/sa/web"
    named = parse_text(mesh("foo.example"), "mesh.yaml")
    assert compile_snapshot(named, "n1", 1)["local"][0]["identity"] == \
        "spiffe://foo.example/ns/demo/sa/web"


def test_a_seed_or_stored_mesh_naming_another_trust_domain_is_refused_before_start(
        tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(mesh("foo.example"))
    with pytest.raises(ConfigError) as refused:
        check_root_domain(tmp_path / "fresh", seed, ROOT)
    refused_for_another_domain(refused.value, str(seed), "foo.example")
    with pytest.raises(ConfigError):
        Store(tmp_path / "fresh", seed, root_domain=ROOT)
    check_root_domain(tmp_path / "fresh", seed, None)  # a root naming none: the Mesh's

    # A store written under a root that named none (or by an older meshnode, which
    # wrote the default cluster.local out) is refused under a root that names another,
    # naming the store file and the file the Mesh came from.
    Store(tmp_path / "state", seed)
    with pytest.raises(ConfigError) as stored:
        check_root_domain(tmp_path / "state", None, ROOT)
    refused_for_another_domain(stored.value, str(tmp_path / "state" / "resources.json"),
                               "foo.example")
    assert "the node's stored config, applied from" in stored.value.problems[0].file
    with pytest.raises(ConfigError):
        Store(tmp_path / "state", root_domain=ROOT)
    doc = json.loads((tmp_path / "state" / "resources.json").read_text())
    assert doc["version"] == 1  # refused, not rewritten
