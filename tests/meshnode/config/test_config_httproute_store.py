"""HTTPRoutes in the store: kept, listed and deleted as the other kinds, each with the creation time
the store gave it when it was first created (Kubernetes' creationTimestamp)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshnode.config import HTTPRoute, Store, parse_text
from routekit import SERVICES, Clock, backend, route, store_with

pytestmark = pytest.mark.timeout(60)

FIRST = "1970-01-01T00:16:41.000000Z"  # Clock's second reading (1001 s): the services took 1000


def stored_route(store: Store, name: str = "api") -> HTTPRoute:
    [found] = store.get("httproutes", name, "shop")
    assert isinstance(found, HTTPRoute)
    return found


def test_a_new_route_is_stamped_and_keeps_its_time(tmp_path: Path) -> None:
    text = route("api", [{"backendRefs": [backend()]}])
    store = store_with(tmp_path, text)
    version = store.version
    assert stored_route(store).created == FIRST
    # The same route again: nothing changes, no version is spent.
    assert store.apply(parse_text(text, "again.yaml"), "again.yaml") == version
    # A changed route keeps its creation time, as Kubernetes keeps creationTimestamp.
    changed = route("api", [{"backendRefs": [backend("api-v2")]}])
    assert store.apply(parse_text(changed, "changed.yaml"), "changed.yaml") == version + 1
    assert stored_route(store).created == FIRST
    assert stored_route(store).spec.rules[0].backend_refs[0].name == "api-v2"


def test_a_creation_time_in_the_document_is_ignored(tmp_path: Path) -> None:
    text = route("api").replace("namespace: shop\n",
                                "namespace: shop\n  creationTimestamp: '2001-01-01T00:00:00Z'\n")
    assert parse_text(text, "r.yaml")[0].created == "2001-01-01T00:00:00.000000Z"  # it parses
    store = store_with(tmp_path, text)
    assert stored_route(store).created == FIRST  # the store's own


def test_deleted_and_created_again_is_new(tmp_path: Path) -> None:
    text = route("api")
    store = store_with(tmp_path, text)
    store.delete("httproute", "api", "shop")
    assert store.get("httproutes") == []
    store.apply(parse_text(text, "r.yaml"), "r.yaml")
    assert stored_route(store).created > FIRST


def test_the_time_survives_a_restart(tmp_path: Path) -> None:
    store = store_with(tmp_path, route("api"))
    saved = json.loads(store.path.read_text())
    [doc] = [r for r in saved["resources"] if r["kind"] == "HTTPRoute"]
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert doc["metadata"]["creationTimestamp"] == FIRST
    again = Store(tmp_path / "state", clock=Clock())
    assert again.resources() == store.resources()
    assert stored_route(again).created == FIRST


def test_a_seed_stamps_its_routes(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "mesh.yaml").write_text(SERVICES + "---\n" + route("api"))
    store = Store(tmp_path / "state", seed, clock=Clock())
    assert (store.version, stored_route(store).created) == (1, "1970-01-01T00:16:40.000000Z")
    assert [r.kind for r in store.resources()][-1] == "HTTPRoute"  # listed after the other kinds
