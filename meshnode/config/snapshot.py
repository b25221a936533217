"""The snapshot compiler: turns the resource set into the plain dict one node's workers install.

A snapshot holds only str/int/float/bool/list/dict (it travels as msgpack), everything in
sorted order, so the same resources give an equal snapshot whatever order they came in.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .balancers import balancer_for, hash_for, outlier_for, pool_for, rules_by_service
from .inbound import Inbound
from .model import (DEFAULT_TRUST_DOMAIN, DestinationRule, Node, Resource, Service, ServicePort,
                    Workload, mesh_spec, selects)
from .ratelimitcompile import rate_limits
from .retrybudgets import retry_budgets
from .routes import compile_routes


def identity_for(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID of a workload (DESIGN §4)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def resolve_port(port: ServicePort, workload: Workload) -> int:
    """Where traffic for a service port goes on a workload, as Istio's WorkloadEntry decides.

    A named targetPort is looked up in the workload's ports (validate_set guarantees it
    is there); otherwise the workload's port named like the service port wins, else
    the numeric targetPort.
    """
    ports = workload.spec.ports
    if isinstance(port.target_port, str):
        return ports[port.target_port]
    return ports.get(port.name, port.target_port)


def _workload_ref(workload: Workload) -> str:
    return f"{workload.namespace}/{workload.name}"


def _endpoint(service: Service, workload: Workload, node: str, trust_domain: str) -> dict[str, Any]:
    return {
        "workload": _workload_ref(workload),
        "address": workload.spec.address,
        "ports": {p.name: resolve_port(p, workload) for p in service.spec.ports},
        # An unset node means "beside whichever node loads it", i.e. this one.
        "node": workload.spec.node or node,
        "labels": dict(sorted(workload.spec.labels.items())),
        "weight": workload.spec.weight,
        "identity": identity_for(trust_domain, workload.namespace, workload.spec.service_account),
    }


def _hash_entry(policy: dict[str, Any] | None) -> dict[str, Any]:
    return {"hash": policy} if policy is not None else {}


def _outlier_entry(policy: dict[str, Any] | None) -> dict[str, Any]:
    return {"outlier": policy} if policy is not None else {}


def _pool_entry(policy: dict[str, Any] | None) -> dict[str, Any]:
    return {"connection_pool": policy} if policy is not None else {}


def _service(service: Service, workloads: list[Workload], node: str, trust_domain: str,
             rules: dict[str, DestinationRule], budget: dict[str, Any] | None,
             inbound: Inbound) -> dict[str, Any]:
    name, namespace = service.name, service.namespace
    endpoints = [_endpoint(service, w, node, trust_domain) for w in workloads if selects(service, w)]
    local = [w for w in workloads if w.spec.node in (None, node)]
    return {
        "name": name,
        "namespace": namespace,
        "fqdn": f"{name}.{namespace}.svc",
        "hosts": [name, f"{name}.{namespace}", f"{name}.{namespace}.svc"],
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol,
                   "target_port": p.target_port, "outbound_port": p.outbound_port,
                   # How the port's connections pick an endpoint (DestinationRule).
                   "balancer": balancer_for(service, p.port, rules),
                   # What a hashing balancer hashes by (RouteTable.set_hash), if it does.
                   **_hash_entry(hash_for(service, p.port, rules)),
                   # outlierDetection (RouteTable.set_outlier), if its rule has one.
                   **_outlier_entry(outlier_for(service, rules)),
                   # connectionPool (RouteTable.set_connection_pool), if its rule has one.
                   **_pool_entry(pool_for(service, rules)),
                   # Per local workload serving it: the authorization program and the
                   # mTLS mode its inbound route enforces (inbound.py).
                   **({"inbound": inbound.entries(service, local, lambda w, p=p: resolve_port(p, w))}
                      if inbound.active else {})}
                  for p in sorted(service.spec.ports, key=lambda p: p.port)],
        "endpoints": endpoints,
        "identities": sorted({e["identity"] for e in endpoints}),
        # Its retry budget (RouteTable.set_retry_budget), when an XBackendTrafficPolicy
        # sets one; left out, the data plane's defaults (the same as the CRD's).
        **({"retry_budget": budget} if budget is not None else {}),
    }


def _local(workload: Workload, services: list[Service], trust_domain: str) -> dict[str, Any]:
    return {
        "workload": _workload_ref(workload),
        "namespace": workload.namespace,
        "name": workload.name,
        "services": [f"{s.namespace}/{s.name}" for s in services if selects(s, workload)],
        "identity": identity_for(trust_domain, workload.namespace, workload.spec.service_account),
        "address": workload.spec.address,
        "ports": dict(sorted(workload.spec.ports.items())),
        "labels": dict(sorted(workload.spec.labels.items())),
        "user": workload.spec.user,  # resolved on the node (meshnode.callers)
    }


def _peer(workload: Workload, trust_domain: str) -> dict[str, Any]:
    return {"workload": _workload_ref(workload),
            "identity": identity_for(trust_domain, workload.namespace, workload.spec.service_account),
            "labels": dict(sorted(workload.spec.labels.items()))}


def _by_name(resource: Resource) -> tuple[str, str]:
    return (resource.namespace, resource.name)


def compile_snapshot(resources: Iterable[Resource], node: str, version: int,
                     root_domain: str | None = None) -> dict[str, Any]:
    """The snapshot for `node` at config `version` (resources are assumed validate_set-clean).

    `local` lists the workloads this node fronts: those whose node is `node` or unset.
    `nodes` tells where the other nodes' inbound listeners are (the Node resources).
    Identities are in `root_domain`, the mesh root's trust domain, when it names one
    (a Mesh may name no other: trust_domain_problems), else in the Mesh's.
    `http_routes` holds the route sets of the HTTPRoutes (routes.py); each service
    port's `inbound`, what its inbound route enforces for each local workload
    (AuthorizationPolicy, PeerAuthentication: inbound.py).
    """
    resources = list(resources)
    mesh = mesh_spec(resources)
    services = sorted((r for r in resources if isinstance(r, Service)), key=_by_name)
    workloads = sorted((r for r in resources if isinstance(r, Workload)), key=_by_name)
    td = root_domain or mesh.trust_domain or DEFAULT_TRUST_DOMAIN
    rules = rules_by_service(resources)
    budgets = retry_budgets(resources)
    inbound = Inbound(resources, mesh, td)
    return {
        "version": version,
        "node": node,
        "mesh": {
            "trust_domain": td,
            "mtls_mode": mesh.mtls_mode,
            "workload_ttl_s": mesh.workload_ttl_s,
            "rotate_at": mesh.rotate_at,
            "issuer_ttl_s": mesh.issuer_ttl_s,
            "access_log": mesh.access_log,
            # RouteTable.set_access_log()'s, on both sides of every node; the writer's
            # rotation (telemetry).
            "access_log_sampling_percent": mesh.access_log_sampling_percent,
            "access_log_min_status": mesh.access_log_min_status,
            "access_log_max_bytes": mesh.access_log_max_bytes,
            "access_log_backups": mesh.access_log_backups,
            "metric_names": list(mesh.metric_names),
            "connect_timeout_s": mesh.connect_timeout_s,
            "idle_timeout_s": mesh.idle_timeout_s,
            "drain_duration_s": mesh.drain_duration_s,
            # Limits before authentication: RouteTable.set_limits() by these names.
            "max_handshakes": mesh.max_handshakes,
            "max_connections_per_source": mesh.max_connections_per_source,
            "max_handshakes_per_source": mesh.max_handshakes_per_source,
            "inbound_share": mesh.inbound_share,
            # Overload defence: RouteTable.set_overload() by these names.
            "max_requests_in_flight": mesh.max_requests_in_flight,
            "max_requests_per_source": mesh.max_requests_per_source,
            "slow_grace_s": mesh.slow_grace_s,
            "slow_min_rate": mesh.slow_min_rate,
            # RouteTable.set_path_normalization()'s mode, on both sides of every node.
            "path_normalization": mesh.path_normalization_mode,
            # Traces: RouteTable.set_tracing()'s sampling; telemetry's exporter, the rest.
            "tracing": mesh.tracing.snapshot(),
        },
        "nodes": {n.name: {"address": n.spec.address, "inbound_port": n.spec.inbound_port}
                  for n in sorted((r for r in resources if isinstance(r, Node)), key=_by_name)},
        "services": [_service(s, workloads, node, td, rules, budgets.get(_by_name(s)), inbound)
                     for s in services],
        "local": [_local(w, services, td) for w in workloads if w.spec.node in (None, node)],
        # Every workload's identity and labels: telemetry names a request's source and
        # destination workloads from the principals it counts them under (metrics.py).
        "workloads": [_peer(w, td) for w in workloads],
        "http_routes": compile_routes(resources),
        # RateLimitPolicy limits by target (ratelimitcompile.py); every node gets them
        # all, and applies those whose target it serves (inbound) or calls (outbound).
        "rate_limits": rate_limits(resources),
    }
