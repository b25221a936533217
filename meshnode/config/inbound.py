"""What a node's inbound side enforces on each local service port: the authorization
program of the AuthorizationPolicies that reach it, and the mTLS mode its
PeerAuthentications leave in force.

The snapshot carries them per inbound route: each service port lists, for every local
workload behind it (the node's own, as the inbound route serves them),

    port["inbound"] = {"NAMESPACE/WORKLOAD": {"authz": {"policies": [POLICY, ...]},
                                             "mtls": "STRICT" | "PERMISSIVE" | "DISABLE"}}

(POLICY: authzprogram.py). Policies are listed by namespace and name, so the same
resources give the same program. A config with no AuthorizationPolicy and no
PeerAuthentication leaves `inbound` out of every port: no policy, and the Mesh's
spec.mtls.mode (snapshot["mesh"]["mtls_mode"]) on every port.

Which AuthorizationPolicies reach a workload's service port (Istio's scopes):
- in the Mesh's rootNamespace (Istio's, default istio-system): without a selector,
  every workload of the mesh; with one, the workloads of every namespace it matches;
- elsewhere, without selector or targetRefs: every workload of its namespace; with a
  selector (matchLabels, {} matching all), the workloads of its namespace it matches;
- with targetRefs: the ports of the Services it names (of its own namespace), on every
  workload behind them.

The mTLS mode of a workload's port (Istio's ComposePeerAuthentication, pilot/pkg/
security/authn/policy_applier.go): the mesh-level policy (rootNamespace, no selector
labels), then the namespace-level one (the workload's namespace, no selector labels),
then the workload-level one (a selector whose labels the workload has, outside the root
namespace; Istio ignores one in it), each replacing its parent's mode unless UNSET;
then the workload-level policy's portLevelMtls entry for the workload's port (the
targetPort, as Istio's keys are container ports), UNSET inheriting. Of two policies of
one scope the oldest decides. Where none decides: the Mesh's spec.mtls.mode, STRICT by
default (DESIGN §4; Istio's is PERMISSIVE).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .authzprogram import Identities, compile_policy
from .model import AuthorizationPolicy, MeshSpec, PeerAuthentication, Resource, Service, Workload, selects


def _labels_match(selector: dict[str, str], workload: Workload) -> bool:
    return all(workload.spec.labels.get(k) == v for k, v in selector.items())


def reaches(policy: AuthorizationPolicy, workload: Workload, service: Service, root_namespace: str) -> bool:
    """Whether `policy` applies to `workload` serving `service` (the service selects it)."""
    spec = policy.spec
    if spec.target_refs:
        return policy.namespace == service.namespace and any(t.name == service.name for t in spec.target_refs)
    if policy.namespace != root_namespace and policy.namespace != workload.namespace:
        return False
    return spec.selector is None or _labels_match(spec.selector, workload)


def _age(policy: PeerAuthentication) -> tuple[str, str]:
    # An unstamped policy ("": not stored yet) counts as the newest.
    return (policy.created or "\uffff", policy.name)


def _oldest(policies: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
    return min(policies, key=_age, default=None)


class PeerModes:
    """The mTLS mode of each workload port under a config's PeerAuthentications."""

    def __init__(self, resources: Iterable[Resource], mesh: MeshSpec) -> None:
        self._policies = [r for r in resources if isinstance(r, PeerAuthentication)]
        self._root = mesh.root_namespace
        self._default = mesh.mtls_mode

    def deciding(self, workload: Workload) -> list[PeerAuthentication]:
        """The mesh-, namespace- and workload-level policies that decide for `workload`,
        widest first (each absent level left out)."""
        levels = [
            _oldest(p for p in self._policies if p.namespace == self._root and not p.spec.workload_level),
            _oldest(p for p in self._policies if p.namespace == workload.namespace != self._root
                    and not p.spec.workload_level),
            _oldest(p for p in self._policies if p.namespace == workload.namespace != self._root
                    and p.spec.workload_level and _labels_match(p.spec.selector or {}, workload)),
        ]
        return [p for p in levels if p is not None]

    def mode(self, workload: Workload, port: int) -> str:
        """The mode in force on `workload`'s `port` (the port the workload listens on)."""
        mode = self._default
        deciding = self.deciding(workload)
        for policy in deciding:
            if policy.spec.mode not in (None, "UNSET"):
                mode = policy.spec.mode
        ports = deciding[-1].spec.port_modes if deciding and deciding[-1].spec.workload_level else None
        port_mode = (ports or {}).get(port)
        return port_mode if port_mode not in (None, "UNSET") else mode  # type: ignore[return-value]


class Inbound:
    """Compiles the `inbound` entry of each local service port (see the module's doc)."""

    def __init__(self, resources: Sequence[Resource], mesh: MeshSpec, trust_domain: str) -> None:
        ids = Identities(trust_domain, mesh.trust_domain_aliases)
        self._root = mesh.root_namespace
        policies = sorted((r for r in resources if isinstance(r, AuthorizationPolicy)),
                          key=lambda p: (p.namespace, p.name))
        # Compiled once each: a policy's program does not depend on where it applies.
        self._policies = [(p, compile_policy(p, ids)) for p in policies]
        self._modes = PeerModes(resources, mesh)
        # A config without either kind leaves `inbound` out: no policy, the Mesh's mode.
        self.active = bool(self._policies) or any(isinstance(r, PeerAuthentication) for r in resources)

    def reaching(self, workload: Workload, service: Service) -> list[tuple[AuthorizationPolicy, dict[str, Any]]]:
        """The policies that reach `workload` serving `service`, each with its POLICY."""
        return [(policy, compiled) for policy, compiled in self._policies
                if reaches(policy, workload, service, self._root)]

    def program(self, workload: Workload, service: Service) -> dict[str, Any]:
        return {"policies": [compiled for _, compiled in self.reaching(workload, service)]}

    def entries(self, service: Service, local: Sequence[Workload],
                workload_port: Callable[[Workload], int]) -> dict[str, dict[str, Any]]:
        """port["inbound"] of one service port: its local workloads' program and mode.
        `workload_port(workload)` is where that workload takes the port's traffic."""
        return {f"{w.namespace}/{w.name}": {"authz": self.program(w, service),
                                            "mtls": self._modes.mode(w, workload_port(w))}
                for w in local if selects(service, w)}
