"""Istio's PeerAuthentication, parsed as `meshnode apply` parses it: the mTLS mode each
inbound route carries (workload > namespace > mesh in the root namespace, UNSET
inheriting, portLevelMtls by the workload's port, the oldest policy of a scope deciding,
the Mesh's mode by default), Istio's validation, the store and `get`'s status."""
from __future__ import annotations

from typing import Any

import pytest

from meshnode.config import Store, parse_text, with_status

from authzkit import WORLD, doc, inbound, peer, problems, resources

pytestmark = pytest.mark.timeout(60)

API_HTTP = ("shop/api", "http", "shop/api-1")     # the workload listens on 8080
API_DB = ("shop/api", "db", "shop/api-1")         # 5432
WEB = ("shop/web", "http", "shop/web-1")
CACHE = ("infra/cache", "http", "infra/cache-1")


def modes(*docs: str) -> dict[tuple[str, str, str], str]:
    return {at: entry["mtls"] for at, entry in inbound(resources(*docs)).items()}


def mode(mode: str | None = None, **spec: Any) -> dict[str, Any]:
    return {**({"mtls": {"mode": mode}} if mode else {}), **spec}


SELECT_API = {"selector": {"matchLabels": {"app": "api"}}}


def test_precedence_workload_over_namespace_over_mesh() -> None:
    found = modes(peer(mode("PERMISSIVE"), name="default", namespace="istio-system"),
                  peer(mode("DISABLE"), name="ns", namespace="infra"),
                  peer(mode("STRICT", **SELECT_API), name="api", namespace="shop"))
    assert found[API_HTTP] == found[API_DB] == "STRICT"        # workload-level
    assert found[WEB] == "PERMISSIVE"                           # mesh-level
    assert found[CACHE] == "DISABLE"                            # namespace-level


def test_without_any_policy_the_meshs_mode_holds() -> None:
    assert set(modes(peer(mode("DISABLE"), namespace="elsewhere")).values()) == {"STRICT"}
    mesh = doc("Mesh", {"mtls": {"mode": "PERMISSIVE"}}, name="default", api="meshnode.io/v1alpha1")
    assert set(modes(mesh, peer(mode("STRICT"), namespace="elsewhere")).values()) == {"PERMISSIVE"}


@pytest.mark.parametrize("levels, expected", [
    # UNSET (written or left out) takes its parent's mode, up to the Mesh's.
    ((("istio-system", "PERMISSIVE"), ("shop", "UNSET"), ("api", None)), "PERMISSIVE"),
    ((("istio-system", "UNSET"), ("shop", "DISABLE"), ("api", "UNSET")), "DISABLE"),
    ((("istio-system", None), ("shop", None), ("api", None)), "STRICT"),
])
def test_unset_inherits(levels: tuple[tuple[str, str | None], ...], expected: str) -> None:
    (root, root_mode), (ns, ns_mode), (_, workload_mode) = levels
    found = modes(peer(mode(root_mode), name="mesh", namespace=root),
                  peer(mode(ns_mode), name="ns", namespace=ns),
                  peer(mode(workload_mode, **SELECT_API), name="api", namespace="shop"))
    assert found[API_HTTP] == expected


def test_port_level_modes_name_the_workloads_port() -> None:
    spec = mode("PERMISSIVE", **SELECT_API, portLevelMtls={8080: {"mode": "DISABLE"}, "5432": {"mode": "UNSET"},
                                                           80: {"mode": "STRICT"}})
    found = modes(peer(spec, name="api"))
    assert found[API_HTTP] == "DISABLE"          # service port 80, targetPort 8080: 8080 decides
    assert found[API_DB] == "PERMISSIVE"         # UNSET: the workload policy's mode


def test_a_root_namespace_policy_with_a_selector_decides_nothing() -> None:
    # Istio's ComposePeerAuthentication skips workload-level policies in the root namespace.
    found = modes(peer(mode("DISABLE", **SELECT_API), name="api", namespace="istio-system"))
    assert found[API_HTTP] == "STRICT"


def test_a_selector_without_labels_is_namespace_level() -> None:
    found = modes(peer(mode("DISABLE", selector={}), name="all", namespace="shop"))
    assert found[API_HTTP] == found[WEB] == "DISABLE"
    assert found[CACHE] == "STRICT"


def test_of_two_policies_of_one_scope_the_oldest_decides(tmp_path: Any) -> None:
    store = Store(tmp_path / "state", clock=iter(range(1000, 2000)).__next__)
    store.apply(parse_text(WORLD, "w.yaml"), "w.yaml")
    store.apply(parse_text(peer(mode("DISABLE"), name="z-first", namespace="shop"), "a.yaml"), "a.yaml")
    store.apply(parse_text(peer(mode("PERMISSIVE"), name="a-second", namespace="shop"), "b.yaml"), "b.yaml")
    assert inbound(store.resources())[API_HTTP]["mtls"] == "DISABLE"
    first, second = store.get("pa", "z-first"), store.get("pa", "a-second")
    assert with_status(first[0], store.resources())["status"]["conditions"][0]["message"] == (
        "decides the mTLS mode of 3 workload(s): shop/api-1, shop/api-2, shop/web-1")
    assert with_status(second[0], store.resources())["status"]["conditions"][0]["message"] == (
        "decides the mTLS mode of no workload")
    # Applied again, a policy keeps its creation time: still the oldest.
    store.apply(parse_text(peer(mode("STRICT"), name="z-first", namespace="shop"), "a.yaml"), "a.yaml")
    assert inbound(store.resources())[API_HTTP]["mtls"] == "STRICT"


@pytest.mark.parametrize("spec, field, says", [
    (mode("STRICT", portLevelMtls={8080: {"mode": "DISABLE"}}), "spec.portLevelMtls",
     "portLevelMtls requires a selector with labels"),
    (mode("STRICT", selector={}, portLevelMtls={8080: {"mode": "DISABLE"}}), "spec.portLevelMtls",
     "requires a selector with labels"),
    (mode(**SELECT_API, portLevelMtls={}), "spec.portLevelMtls", "must have at least one element"),
    (mode(**SELECT_API, portLevelMtls={0: {"mode": "DISABLE"}}), 'spec.portLevelMtls["0"]',
     "port must be between 1-65535"),
    (mode(**SELECT_API, portLevelMtls={"65536": {}}), 'spec.portLevelMtls["65536"]', "between 1-65535"),
    (mode(**SELECT_API, portLevelMtls={"http": {}}), "spec.portLevelMtls.http", "between 1-65535"),
    (mode(**SELECT_API, portLevelMtls={80: {"mode": "strict"}}), 'spec.portLevelMtls["80"].mode', "must be one of"),
    (mode("OPTIONAL"), "spec.mtls.mode", "must be one of UNSET, STRICT, PERMISSIVE, DISABLE"),
    ({"selector": {"matchLabels": {"app": "*"}}}, "spec.selector.matchLabels.app", "not a label value"),
    ({"mtls": {"mode": "STRICT", "minProtocolVersion": "TLSV1_3"}}, "spec.mtls.minProtocolVersion", "unknown field"),
    ({"targetRefs": []}, "spec.targetRefs", "unknown field"),
])
def test_istios_validation(spec: dict[str, Any], field: str, says: str) -> None:
    found = problems(peer(spec))
    assert any(f"PeerAuthentication shop/p: {field}: " in p and says in p for p in found), found


def test_no_spec_is_unset_everywhere() -> None:
    assert set(modes(peer(None, name="empty", namespace="istio-system")).values()) == {"STRICT"}
