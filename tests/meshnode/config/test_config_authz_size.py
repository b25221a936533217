"""The bound on an authorization program (the engine's AUTHZ_MAX_*, meshnode.config.
authzsize): a config whose AuthorizationPolicies make some workload's program over it is
refused at apply, naming the largest policy, the workload and the limit; the store
keeps what it had."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastpath.engine import AUTHZ_MAX_LEAVES, AUTHZ_MAX_POLICIES
from meshnode.config import ConfigError, Store, from_dict, parse_text

from authzkit import WORLD

pytestmark = pytest.mark.timeout(60)


def deny_paths(name: str, paths: list[str], selector: str = "api") -> Any:
    return from_dict({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                      "metadata": {"name": name, "namespace": "shop"},
                      "spec": {"selector": {"matchLabels": {"app": selector}}, "action": "DENY",
                               "rules": [{"to": [{"operation": {"paths": paths}}]}]}}, f"{name}.yaml")


def refused(store: Store, *policies: Any) -> list[str]:
    version = store.version
    with pytest.raises(ConfigError) as info:
        store.apply(list(policies), "p.yaml")
    assert store.version == version and not store.get("AuthorizationPolicy", "big")
    return [str(p) for p in info.value.problems]


def test_a_program_over_the_engines_bound_is_refused_at_apply(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.apply(parse_text(WORLD, "w.yaml"), "w.yaml")
    over = [f"/{i}" for i in range(AUTHZ_MAX_LEAVES + 1)]
    assert refused(store, deny_paths("big", over)) == [
        "big.yaml: AuthorizationPolicy shop/big: spec.rules: reaching Workload shop/api-1 behind "
        "Service shop/api, it makes an authorization program the data plane refuses: program: "
        f"{AUTHZ_MAX_LEAVES + 1} values, over the limit of {AUTHZ_MAX_LEAVES} (AUTHZ_MAX_LEAVES)"]
    # Two that are each within it, together over it for the workloads both reach: the
    # larger is named, with the other counted.
    half = AUTHZ_MAX_LEAVES // 2
    [problem] = refused(store, deny_paths("big", over[:half + 1]), deny_paths("small", over[:half]))
    assert problem.startswith("big.yaml: AuthorizationPolicy shop/big: spec.rules: reaching "
                              "Workload shop/api-1 behind Service shop/api with 1 other "
                              "AuthorizationPolicies")
    store.apply([deny_paths("big", over[:half + 1]), deny_paths("small", over[:half], "web")],
                "p.yaml")                           # each reaches its own workloads: taken


def test_too_many_policies_for_one_workload_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.apply(parse_text(WORLD, "w.yaml"), "w.yaml")
    found = refused(store, *(deny_paths(f"p{i:04d}", ["/x"]) for i in range(AUTHZ_MAX_POLICIES + 1)))
    assert len(found) == 1 and found[0].endswith(
        f"program: {AUTHZ_MAX_POLICIES + 1} policies, over the limit of {AUTHZ_MAX_POLICIES} "
        "(AUTHZ_MAX_POLICIES)"), found
