"""Istio's standard metric labels for a worker's request figure, named from the node's snapshot.

A figure (DataPlane.request_figures()) names its peers by SPIFFE ID and its service by
FQDN; Istio's dashboards, Kiali and Flagger select by workload, app, version and
service name. Istio learns those from peer metadata exchanged in the request; meshnode
knows them from the config: a principal (spiffe://TD/ns/NS/sa/SA) is the identity of the
Workloads with that service account in that namespace. Where the config cannot tell
(no such workload, or several that disagree), a label is "unknown", as Istio's are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .clusterdomain import CLUSTER_DOMAIN

# Istio's label names, in the order Istio's own exposition has them (response_code and
# response_flags follow, per answer).
LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal",
          "source_app", "source_version", "destination_workload",
          "destination_workload_namespace", "destination_principal", "destination_app",
          "destination_version", "destination_service", "destination_service_name",
          "destination_service_namespace", "request_protocol", "connection_security_policy")
UNKNOWN = "unknown"
# A workload's app and version, as Istio reads them: its `app` / `version` label, else
# the Kubernetes recommended labels.
_APP_LABELS = ("app", "app.kubernetes.io/name")
_VERSION_LABELS = ("version", "app.kubernetes.io/version")


@dataclass(frozen=True)
class Peer:
    """What Istio's labels say of one side of a request."""

    workload: str
    namespace: str
    app: str
    version: str


def _first(labels: Mapping[str, str], keys: tuple[str, ...]) -> str:
    return next((labels[k] for k in keys if labels.get(k)), UNKNOWN)


def _namespace_of(principal: str) -> str:
    """NS of spiffe://TD/ns/NS/sa/SA (DESIGN §4), else unknown."""
    parts = principal.removeprefix("spiffe://").split("/")
    return parts[2] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else UNKNOWN


def _agreed(values: Iterable[str]) -> str:
    """The one value every candidate has; unknown when they differ (or there are none)."""
    found = set(values)
    return found.pop() if len(found) == 1 else UNKNOWN


class Peers:
    """The node's snapshot indexed for naming a figure's peers (built per scrape: a
    snapshot changes only when control pushes one)."""

    def __init__(self, snapshot: Mapping[str, Any] | None) -> None:
        snapshot = snapshot or {}
        # identity -> [(namespace/name, labels)] of every workload in the mesh.
        self._by_identity: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for w in snapshot.get("workloads") or ():
            self._by_identity.setdefault(str(w["identity"]), []).append(
                (str(w["workload"]), dict(w.get("labels") or {})))
        self._local = {str(w["workload"]) for w in snapshot.get("local") or ()}
        # Service FQDN -> the workloads behind it.
        self._serving = {str(s["fqdn"]): {str(e["workload"]) for e in s.get("endpoints") or ()}
                         for s in snapshot.get("services") or ()}

    def labels(self, fig: Mapping[str, Any], protocol: str = "http") -> tuple[str, ...]:
        """LABELS' values for a figure (each the figure's own where it has one), its
        requests' `protocol` ("tcp" for its opaque connections)."""
        reporter = str(fig.get("reporter", UNKNOWN))
        service = str(fig.get("destination_service", UNKNOWN))
        source_id = str(fig.get("source_principal", UNKNOWN))
        dest_id = str(fig.get("destination_principal", UNKNOWN))
        version = str(fig.get("destination_version", UNKNOWN))
        # The side that reports is this node's: its workload is a local one.
        source = self.peer(source_id, local=reporter == "source")
        dest = self.peer(dest_id, local=reporter == "destination",
                         serving=self._serving.get(service), version=version)
        name, namespace = _service_name(service)
        return (reporter, source.workload, source.namespace, source_id, source.app,
                source.version, dest.workload, dest.namespace, dest_id, dest.app,
                version if version != UNKNOWN else dest.version,
                f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}" if name != UNKNOWN else UNKNOWN,
                name, namespace, protocol, str(fig.get("connection_security_policy", UNKNOWN)))

    def peer(self, principal: str, local: bool, serving: set[str] | None = None,
             version: str = UNKNOWN) -> Peer:
        """The workload(s) of `principal`, narrowed to this node's when `local`, to
        those behind the service when it is known, and to the version that answered
        when the engine saw it."""
        candidates = self._by_identity.get(principal, [])
        if local:
            candidates = [c for c in candidates if c[0] in self._local]
        if serving is not None:
            candidates = [c for c in candidates if c[0] in serving]
        if version != UNKNOWN:
            candidates = [c for c in candidates if _first(c[1], _VERSION_LABELS) == version]
        return Peer(workload=_agreed(ref.partition("/")[2] for ref, _ in candidates),
                    namespace=_namespace_of(principal),
                    app=_agreed(_first(labels, _APP_LABELS) for _, labels in candidates),
                    version=_agreed(_first(labels, _VERSION_LABELS) for _, labels in candidates))


def _service_name(fqdn: str) -> tuple[str, str]:
    """(name, namespace) of a figure's destination service, "name.ns.svc" (the
    snapshot's FQDN); unknown for what named no service."""
    parts = fqdn.split(".")
    if len(parts) == 3 and parts[2] == "svc" and all(parts):
        return parts[0], parts[1]
    return UNKNOWN, UNKNOWN
