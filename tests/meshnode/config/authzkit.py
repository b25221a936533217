"""Shared by the AuthorizationPolicy and PeerAuthentication tests: a small mesh, policies
written as dicts, and what the snapshot's inbound routes carry for them."""
from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from meshnode.config import ConfigError, Resource, compile_snapshot, parse_text

# shop/api serves HTTP on 80 (the workload listens on 8080) and TCP on 5432; shop/web
# and infra/cache serve HTTP; api-2 runs on another node.
WORLD = textwrap.dedent("""\
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec:
      selector: {app: api}
      ports:
        - {name: http, port: 80, protocol: HTTP, targetPort: 8080}
        - {name: db, port: 5432, protocol: TCP}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      selector: {app: web}
      ports: [{name: http, port: 80, protocol: HTTP}]
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: cache, namespace: infra}
    spec:
      selector: {app: cache}
      ports: [{name: http, port: 80, protocol: HTTP}]
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: api-1, namespace: shop}
    spec: {address: 10.0.0.1, labels: {app: api, version: v1}, serviceAccount: api}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: api-2, namespace: shop}
    spec: {address: 10.0.0.2, labels: {app: api, version: v2}, serviceAccount: api, node: node-b}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: web-1, namespace: shop}
    spec: {address: 10.0.0.3, labels: {app: web}, serviceAccount: web}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: cache-1, namespace: infra}
    spec: {address: 10.0.1.1, labels: {app: cache}}
    """)


def doc(kind: str, spec: dict[str, Any] | None, name: str = "p", namespace: str = "shop",
        api: str = "security.istio.io/v1") -> str:
    out: dict[str, Any] = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}}
    if spec is not None:
        out["spec"] = spec
    return yaml.safe_dump(out, sort_keys=False)


def authz(spec: dict[str, Any] | None, **meta: Any) -> str:
    return doc("AuthorizationPolicy", spec, **meta)


def peer(spec: dict[str, Any] | None, **meta: Any) -> str:
    return doc("PeerAuthentication", spec, **meta)


def resources(*docs: str, world: str = WORLD) -> list[Resource]:
    """What `meshnode apply` reads: the world and `docs`, parsed together."""
    return parse_text("---\n".join([world, *docs]), "p.yaml")


def inbound(rs: list[Resource], node: str = "node-a", root_domain: str | None = None
            ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(service "ns/name", port name, workload "ns/name") -> its inbound entry."""
    snap = compile_snapshot(rs, node, 1, root_domain)
    return {(f"{s['namespace']}/{s['name']}", p["name"], w): entry
            for s in snap["services"] for p in s["ports"] for w, entry in (p.get("inbound") or {}).items()}


def policies(*docs: str, at: tuple[str, str, str] = ("shop/api", "http", "shop/api-1"),
             world: str = WORLD) -> list[dict[str, Any]]:
    return inbound(resources(*docs, world=world))[at]["authz"]["policies"]


def rules_of(spec: dict[str, Any], **meta: Any) -> list[dict[str, Any]]:
    [policy] = policies(authz(spec, **meta))
    return policy["rules"]


def problems(*docs: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        resources(*docs)
    return [str(p) for p in err.value.problems]
