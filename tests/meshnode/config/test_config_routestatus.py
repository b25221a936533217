"""An HTTPRoute's status, per parentRef, as Gateway API words it: Accepted and ResolvedRefs with the
spec's reasons, computed from the config in force."""
from __future__ import annotations

from typing import Any

import pytest

from meshnode.config import HTTPRoute, Resource, parse_text, route_status, to_dict, with_status
from routekit import SERVICES, backend, parent, resources_with, route

pytestmark = pytest.mark.timeout(60)


def status_of(text: str, *others: str) -> dict[str, Any]:
    resources = resources_with(text, *others)
    [found] = [r for r in resources if isinstance(r, HTTPRoute)][:1]
    return route_status(found, resources)


def conditions(status: dict[str, Any], parent_index: int = 0) -> dict[str, tuple[str, str, str]]:
    entry = status["parents"][parent_index]
    assert entry["controllerName"] == "meshnode.io/control"
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in entry["conditions"]}


def test_an_attached_route_with_resolved_backends() -> None:
    status = status_of(route("api", [{"backendRefs": [backend("api-v2")]}]))
    [entry] = status["parents"]
    assert entry["parentRef"] == {"group": "", "kind": "Service", "name": "api", "port": 80}  # as in the spec
    got = conditions(status)
    assert got["Accepted"][:2] == ("True", "Accepted")
    assert "producer route" in got["Accepted"][2] and "shop/api port 80" in got["Accepted"][2]
    assert got["ResolvedRefs"][:2] == ("True", "ResolvedRefs")


def test_a_consumer_route_says_whom_it_governs() -> None:
    text = route("api", [{"backendRefs": [backend("api", namespace="shop")]}], namespace="web",
                 parents=[parent(namespace="shop")])
    accepted = conditions(status_of(text))["Accepted"]
    assert accepted[:2] == ("True", "Accepted")
    assert accepted[2].startswith("consumer route: governs requests from namespace web to Service shop/api "
                                  "port 80, 8080")


PARENTS = [  # (parentRef, reason, fragment of the message)
    (parent("nothing"), "NoMatchingParent", "Service shop/nothing does not exist"),
    (parent(namespace="elsewhere"), "NoMatchingParent", "Service elsewhere/api does not exist"),
    (parent(port=9999), "NoMatchingParent", "Service shop/api has no port 9999 (its ports: 80 (http), "
                                            "8080 (admin), 5432 (db))"),
    (parent(sectionName="grpc"), "NoMatchingParent", "has no port named 'grpc'"),
    (parent(port=80, sectionName="admin"), "NoMatchingParent", "has no port 80 named 'admin'"),
    (parent(port=5432), "NotAllowedByListeners", "port 5432 (db) of Service shop/api is declared protocol TCP"),
    (parent("cache", namespace="infra", port=6379), "NotAllowedByListeners", "declared protocol TCP"),
]


@pytest.mark.parametrize("ref,reason,fragment", PARENTS, ids=[p[1] + ":" + p[2][:30] for p in PARENTS])
def test_a_parent_that_takes_no_route(ref: dict[str, Any], reason: str, fragment: str) -> None:
    text = route("api", [{"backendRefs": [backend()]}], parents=[ref])
    status, why, message = conditions(status_of(text))["Accepted"]
    assert (status, why) == ("False", reason)
    assert fragment in message


def test_each_parent_has_its_own_entry() -> None:
    text = route("api", [{"backendRefs": [backend()]}], parents=[parent(port=80), parent("gone")])
    status = status_of(text)
    assert [conditions(status, i)["Accepted"][1] for i in (0, 1)] == ["Accepted", "NoMatchingParent"]


BACKENDS = [  # (backendRef, reason, fragment of the message)
    (backend("nothing"), "BackendNotFound", "spec.rules[0].backendRefs[1]: Service shop/nothing does not exist"),
    (backend(port=81), "BackendNotFound", "Service shop/api has no port 81"),
    (backend("cache", namespace="infra", port=6379), "UnsupportedProtocol",
     "port 6379 of Service infra/cache is declared protocol TCP"),
    ({"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "api"}, "InvalidKind",
     "kind 'ServiceImport' of group 'multicluster.x-k8s.io' is not supported"),
    ({"group": "core", "kind": "Pod", "name": "api"}, "InvalidKind", "kind 'Pod' of group 'core'"),
]


@pytest.mark.parametrize("ref,reason,fragment", BACKENDS, ids=[b[1] + ":" + b[2][:30] for b in BACKENDS])
def test_a_backend_that_does_not_resolve(ref: dict[str, Any], reason: str, fragment: str) -> None:
    got = conditions(status_of(route("api", [{"backendRefs": [backend(), ref]}])))
    assert got["Accepted"][:2] == ("True", "Accepted")  # the route applies; that share answers 500
    status, why, message = got["ResolvedRefs"]
    assert (status, why) == ("False", reason)
    assert fragment in message


def test_the_first_unresolved_backend_gives_the_reason_and_every_one_is_named() -> None:
    text = route("api", [{"backendRefs": [backend("a-gone")]},
                         {"backendRefs": [backend(), {"kind": "Pod", "name": "p"}, backend("b-gone")]}])
    status, reason, message = conditions(status_of(text))["ResolvedRefs"]
    assert (status, reason) == ("False", "BackendNotFound")
    assert message == ("spec.rules[0].backendRefs[0]: Service shop/a-gone does not exist; "
                       "spec.rules[1].backendRefs[1]: kind 'Pod' of group '' is not supported: a backend is a "
                       "Service (group \"\"); spec.rules[1].backendRefs[2]: Service shop/b-gone does not exist")


def test_status_follows_the_config_in_force() -> None:
    text = route("api", [{"backendRefs": [backend("api-v3")]}])
    before = conditions(status_of(text))["ResolvedRefs"][1]
    v3 = SERVICES.split("---\n")[1].replace("api-v2", "api-v3").replace("v2", "v3")
    after = conditions(status_of(text, v3))["ResolvedRefs"][1]
    assert (before, after) == ("BackendNotFound", "ResolvedRefs")


def test_with_status_adds_a_status_to_routes_only() -> None:
    resources: list[Resource] = resources_with(route("api", [{"backendRefs": [backend()]}]))
    service, route_resource = resources[0], resources[-1]
    assert with_status(service, resources) == to_dict(service)
    shown = with_status(route_resource, resources)
    assert shown["status"] == route_status(route_resource, resources)  # type: ignore[arg-type]
    # What `get -o yaml` shows applies again: its status is ignored.
    import yaml
    assert parse_text(yaml.safe_dump(shown), "again.yaml") == [route_resource]
