"""The status `meshnode get` shows for an AuthorizationPolicy or a PeerAuthentication,
computed from the resources in force (nobody stores one), in Istio's shape
(istio.meta.v1alpha1.IstioStatus: `conditions`).

One condition, Accepted: True with the workloads the policy reaches (an
AuthorizationPolicy, inbound.reaches) or decides the mTLS mode of (a PeerAuthentication:
the one of its scope that decides, inbound.PeerModes); False with TargetNotFound for a
targetRef naming a Service that does not exist. A policy that reaches no workload is
Accepted all the same, as Istio accepts it: the message says so.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .inbound import PeerModes, reaches
from .model import AuthorizationPolicy, PeerAuthentication, Resource, Service, Workload, mesh_spec, selects


def _accepted(ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"conditions": [{"type": "Accepted", "status": "True" if ok else "False",
                            "reason": reason, "message": message}]}


def _listed(what: str, workloads: list[Workload]) -> str:
    if not workloads:
        return f"{what} no workload"
    return f"{what} {len(workloads)} workload(s): " + ", ".join(f"{w.namespace}/{w.name}" for w in workloads)


def authorization_status(policy: AuthorizationPolicy, resources: Sequence[Resource]) -> dict[str, Any]:
    services = [r for r in resources if isinstance(r, Service)]
    names = {(s.namespace, s.name) for s in services}
    missing = [t.name for t in policy.spec.target_refs if (policy.namespace, t.name) not in names]
    if missing:
        return _accepted(False, "TargetNotFound", "no Service " + ", ".join(
            f"{policy.namespace}/{name}" for name in missing))
    root = mesh_spec(resources).root_namespace
    workloads = sorted((r for r in resources if isinstance(r, Workload)), key=lambda w: (w.namespace, w.name))
    reached = [w for w in workloads
               if any(selects(s, w) and reaches(policy, w, s, root) for s in services)]
    return _accepted(True, "Accepted", _listed("applies to", reached))


def peer_status(policy: PeerAuthentication, resources: Sequence[Resource]) -> dict[str, Any]:
    modes = PeerModes(resources, mesh_spec(resources))
    workloads = sorted((r for r in resources if isinstance(r, Workload)), key=lambda w: (w.namespace, w.name))
    deciding = [w for w in workloads if any(p.key == policy.key for p in modes.deciding(w))]
    return _accepted(True, "Accepted", _listed("decides the mTLS mode of", deciding))
