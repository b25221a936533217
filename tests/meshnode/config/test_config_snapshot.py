"""Snapshots: deterministic, plain data, with the endpoints and identities the proxies need."""
from __future__ import annotations

import json
import textwrap

import pytest

from meshnode.config import DEFAULT_CONFIG, compile_snapshot, identity_for, load_dir, parse_text, validate_set

pytestmark = pytest.mark.timeout(60)

CONFIG = textwrap.dedent("""\
    apiVersion: meshnode.io/v1alpha1
    kind: Mesh
    metadata: {name: default}
    spec: {trustDomain: example.org}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec:
      selector: {app: api}
      ports:
        - {name: http, port: 80, targetPort: web}
        - {name: grpc, port: 9000, protocol: TCP}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: api-v2, namespace: shop}
    spec: {address: 10.0.0.2, ports: {web: 8082}, labels: {app: api, version: v2}, serviceAccount: api, node: n2, weight: 10}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: api-v1, namespace: shop}
    spec: {address: 10.0.0.1, ports: {web: 8081, grpc: 9001}, labels: {app: api, version: v1}, serviceAccount: api}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: batch, namespace: shop}
    spec: {address: batch.internal, labels: {app: batch}, node: n1}
    """)


def test_identity_for() -> None:
    assert identity_for("cluster.local", "demo", "web") == "spiffe://cluster.local/ns/demo/sa/web"


def test_snapshot_endpoints_identities_and_local() -> None:
    resources = parse_text(CONFIG, "c.yaml")
    validate_set(resources)
    snap = compile_snapshot(resources, "n1", 7)
    assert (snap["version"], snap["node"], snap["mesh"]["trust_domain"]) == (7, "n1", "example.org")
    [api] = snap["services"]
    assert (api["fqdn"], api["hosts"]) == ("api.shop.svc", ["api", "api.shop", "api.shop.svc"])
    assert api["ports"] == [
        {"name": "http", "port": 80, "protocol": "auto", "target_port": "web", "outbound_port": 0,
         "balancer": "p2c-ewma"},
        {"name": "grpc", "port": 9000, "protocol": "TCP", "target_port": 9000, "outbound_port": 0,
         "balancer": "p2c-ewma"}]
    assert [(e["workload"], e["node"], e["ports"], e["weight"]) for e in api["endpoints"]] == [
        ("shop/api-v1", "n1", {"http": 8081, "grpc": 9001}, 1),  # unset node: beside this node
        ("shop/api-v2", "n2", {"http": 8082, "grpc": 9000}, 10),  # grpc falls back to targetPort
    ]
    assert api["identities"] == ["spiffe://example.org/ns/shop/sa/api"]
    assert [(w["workload"], w["services"], w["identity"]) for w in snap["local"]] == [
        ("shop/api-v1", ["shop/api"], "spiffe://example.org/ns/shop/sa/api"),
        ("shop/batch", [], "spiffe://example.org/ns/shop/sa/default"),
    ]
    assert [w["workload"] for w in compile_snapshot(resources, "n2", 7)["local"]] == ["shop/api-v1", "shop/api-v2"]


def test_snapshot_places_other_nodes_by_their_node_resources() -> None:
    nodes = ("---\napiVersion: meshnode.io/v1alpha1\nkind: Node\nmetadata: {name: n2}\n"
             "spec: {address: 10.1.0.2, inboundPort: 16006}\n")
    resources = parse_text(CONFIG + nodes, "c.yaml")
    validate_set(resources)
    snap = compile_snapshot(resources, "n1", 1)
    assert snap["nodes"] == {"n2": {"address": "10.1.0.2", "inbound_port": 16006}}
    assert compile_snapshot(parse_text(CONFIG, "c.yaml"), "n1", 1)["nodes"] == {}


def test_snapshot_is_deterministic_and_plain() -> None:
    resources = parse_text(CONFIG, "c.yaml")
    snap = compile_snapshot(resources, "n1", 3)
    assert compile_snapshot(list(reversed(resources)), "n1", 3) == snap
    assert json.loads(json.dumps(snap)) == snap  # only plain JSON/msgpack types


def test_no_mesh_means_defaults() -> None:
    resources = parse_text(CONFIG.split("---\n", 1)[1], "c.yaml")
    mesh = compile_snapshot(resources, "n1", 1)["mesh"]
    assert (mesh["trust_domain"], mesh["mtls_mode"], mesh["workload_ttl_s"], mesh["rotate_at"]) == \
        ("cluster.local", "STRICT", 86400.0, 0.5)


def test_embedded_default_loads_and_compiles() -> None:
    resources = load_dir(DEFAULT_CONFIG)
    validate_set(resources)
    snap = compile_snapshot(resources, "local", 1)
    assert [s["fqdn"] for s in snap["services"]] == ["backend.demo.svc", "frontend.demo.svc"]
    assert sorted(w["identity"] for w in snap["local"]) == [
        "spiffe://cluster.local/ns/demo/sa/backend", "spiffe://cluster.local/ns/demo/sa/frontend"]
    assert {s["name"]: s["endpoints"][0]["ports"] for s in snap["services"]} == \
        {"backend": {"http": 18082}, "frontend": {"http": 18081}}
