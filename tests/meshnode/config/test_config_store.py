"""The store: versioned, atomic, validated as a whole; a refused change changes nothing."""
from __future__ import annotations

import json
import stat
import textwrap
from pathlib import Path

import pytest

from meshnode.config import ConfigError, NotFound, Store, parse_text
from meshnode.config.store import HISTORY_KEEP

pytestmark = pytest.mark.timeout(60)


def service(name: str = "web", port: int = 8080, namespace: str = "demo") -> str:
    return textwrap.dedent(f"""\
        apiVersion: meshnode.io/v1alpha1
        kind: Service
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          selector: {{app: {name}}}
          ports: [{{name: http, port: {port}}}]
        """)


def workload(name: str = "web-1", app: str = "web", port_name: str = "http") -> str:
    return textwrap.dedent(f"""\
        apiVersion: meshnode.io/v1alpha1
        kind: Workload
        metadata: {{name: {name}, namespace: demo}}
        spec:
          address: 10.0.0.1
          ports: {{{port_name}: 18080}}
          labels: {{app: {app}}}
        """)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_empty_store_is_version_zero_and_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    assert (store.version, store.resources()) == (0, [])
    assert not store.path.exists()
    assert mode(tmp_path / "state") == 0o700


def test_apply_bumps_version_and_persists_privately(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    assert store.apply(parse_text(service() + "---\n" + workload(), "app.yaml"), "cli") == 1
    assert store.version == 1 and mode(store.path) == 0o600
    saved = json.loads(store.path.read_text())
    assert saved["version"] == 1
    assert [r["kind"] for r in saved["resources"]] == ["Service", "Workload"]
    assert saved["sources"] == {"Service demo/web": "app.yaml", "Workload demo/web-1": "app.yaml"}
    assert mode(tmp_path / "state" / "history" / "1.json") == 0o600
    assert store.apply(parse_text(service("api", 9090), "x"), "api.yaml") == 2
    assert [r.name for r in store.get("services")] == ["api", "web"]


def test_identical_apply_does_not_bump(tmp_path: Path) -> None:
    store = Store(tmp_path)
    resources = parse_text(service(), "a.yaml")
    assert store.apply(resources, "a.yaml") == 1
    before = store.path.read_bytes()
    assert store.apply(parse_text(service(), "b.yaml"), "b.yaml") == 1
    assert store.path.read_bytes() == before


def test_bad_apply_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.apply(parse_text(service() + "---\n" + workload(), "app.yaml"), "app.yaml")
    before_bytes, before_resources = store.path.read_bytes(), store.resources()
    # Valid alone, but the workload's port name is unknown to the service selecting it.
    bad = parse_text(workload("web-2", port_name="admin") + "---\n" + service("api", 9090), "bad.yaml")
    with pytest.raises(ConfigError) as info:
        store.apply(bad, "bad.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.resource, problem.field) == ("bad.yaml", "Workload demo/web-2", "spec.ports.admin")
    assert store.version == 1 and store.resources() == before_resources
    assert store.path.read_bytes() == before_bytes
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == ["1.json"]
    with pytest.raises(ConfigError):  # the same key twice in one apply
        store.apply(parse_text(service(), "a") + parse_text(service(port=1), "b"), "x")
    assert store.version == 1


def test_second_mesh_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    mesh = "apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: %s}\n"
    store.apply(parse_text(mesh % "default", "m.yaml"), "m.yaml")
    with pytest.raises(ConfigError) as info:
        store.apply(parse_text(mesh % "other", "o.yaml"), "o.yaml")
    assert [(p.file, p.resource, p.field) for p in info.value.problems] == [("o.yaml", "Mesh other", "metadata.name")]


def test_reopen_gives_same_state_and_ignores_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "mesh.yaml").write_text(service() + "---\n" + workload())
    store = Store.open(tmp_path / "state", seed)
    assert store.version == 1 and len(store.resources()) == 2
    store.delete("workload", "web-1", "demo")
    again = Store.open(tmp_path / "state", seed)
    assert again.version == 2 and again.resources() == store.resources()
    assert again.get("svc", "web")[0].source == str(seed / "mesh.yaml")


def test_invalid_seed_is_refused_and_not_written(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(service().replace("8080", "0"))
    with pytest.raises(ConfigError):
        Store.open(tmp_path / "state", seed)
    assert not (tmp_path / "state" / "resources.json").exists()


def test_delete(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.apply(parse_text(service() + "---\n" + service("api", 9090), "a.yaml"), "a.yaml")
    assert store.delete("Service", "api", "demo") == 2
    assert [r.name for r in store.resources()] == ["web"]
    with pytest.raises(NotFound) as info:
        store.delete("service", "web")  # namespace defaults to "default"
    assert "namespace demo" in str(info.value)
    with pytest.raises(KeyError):
        store.delete("service", "nope", "demo")
    assert store.version == 2


def test_rollback_is_a_new_version(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.apply(parse_text(service(), "a.yaml"), "a.yaml")
    first = store.resources()
    store.apply(parse_text(service(port=9090), "a.yaml"), "a.yaml")
    assert store.rollback(1) == 3
    assert store.resources() == first and store.get("service")[0].source == "a.yaml"
    assert Store(tmp_path).resources() == first
    with pytest.raises(NotFound):
        store.rollback(42)


def test_history_keeps_the_last_versions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for port in range(1, HISTORY_KEEP + 4):
        store.apply(parse_text(service(port=port), "a.yaml"), "a.yaml")
    assert store.history() == list(range(4, HISTORY_KEEP + 4))


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": "1", "resources": []}',
                                     b'{"version": 1, "resources": [{"kind": "Service"}]}', b"\xff\xfe"])
def test_corrupt_store_is_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "resources.json").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Store(tmp_path, seed=tmp_path / "unused")
    assert all(p.file == str(tmp_path / "resources.json") for p in info.value.problems)
    assert (tmp_path / "resources.json").read_bytes() == content
