"""Istio's AuthorizationPolicy and PeerAuthentication (security.istio.io/v1): the model.

Users bring Istio's own YAML (DESIGN §5), so a policy is kept as written: its values are
the strings Istio's API takes (principals such as "cluster.local/ns/shop/sa/web", ports
as "8080", `*` as a prefix or suffix). What a policy compiles to for an inbound route is
authzprogram.py's; which policies reach which workload and service, and the mTLS mode
in force on a port, are inbound.py's. Objects here are already validated (authzparse.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .backendtrafficpolicy import TargetRef  # Istio's PolicyTargetReference is Gateway API's

GROUP = "security.istio.io"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1beta1")
"""v1 first (what to_dict writes back): Istio serves both with one schema, and its own
test manifests use either."""

DEFAULT_ROOT_NAMESPACE = "istio-system"
"""Istio's default meshConfig.rootNamespace: a policy there without a selector is mesh-wide."""

ACTIONS = ("ALLOW", "DENY", "AUDIT")
DEFAULT_ACTION = "ALLOW"

MTLS_MODES = ("UNSET", "STRICT", "PERMISSIVE", "DISABLE")

# Source fields meshnode matches, and the rule-level fields of each part, as Istio names them.
SOURCE_FIELDS = ("principals", "notPrincipals", "serviceAccounts", "notServiceAccounts",
                 "trustDomains", "notTrustDomains", "namespaces", "notNamespaces",
                 "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods",
                    "paths", "notPaths")
# What needs a request's JWT (RequestAuthentication, which meshnode does not take): refused
# by name, with the reason, never ignored (an ALLOW by JWT would otherwise allow anyone).
NEEDS_JWT = ("requestPrincipals", "notRequestPrincipals")

MAX_RULES = 512         # the CRD's maxItems for rules and for a rule's `from`
MAX_TARGET_REFS = 16
MAX_SERVICE_ACCOUNTS = 16


@dataclass(frozen=True)
class Condition:
    """One `when` entry: `key` as written, values and notValues (None: not given)."""

    key: str
    values: tuple[str, ...] | None = None
    not_values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rule:
    """One of a policy's rules. A field left out is None: any source (`from`), any
    operation (`to`), no condition (`when`). Each source and operation maps Istio's
    field names (SOURCE_FIELDS, OPERATION_FIELDS) to their non-empty value lists;
    an empty list is left out, as Istio reads it as not set."""

    sources: tuple[dict[str, tuple[str, ...]], ...] | None = None
    operations: tuple[dict[str, tuple[str, ...]], ...] | None = None
    when: tuple[Condition, ...] | None = None


@dataclass(frozen=True)
class AuthorizationPolicySpec:
    # At most one of selector and target_refs (Istio refuses both). selector None: not
    # given; {}: every workload of the scope.
    selector: dict[str, str] | None = None
    target_refs: tuple[TargetRef, ...] = ()
    single_target_ref: bool = False     # written as `targetRef` (Istio's older field)
    action: str | None = None           # None: not written, which is ALLOW
    rules: tuple[Rule, ...] | None = None   # None: not written; no rule matches nothing

    @property
    def effective_action(self) -> str:
        return self.action or DEFAULT_ACTION


@dataclass(frozen=True)
class PeerAuthenticationSpec:
    selector: dict[str, str] | None = None
    mode: str | None = None             # mtls.mode; None (not written) is UNSET
    # portLevelMtls: the workload's port -> its mode (None: `{}` written, UNSET).
    port_modes: dict[int, str | None] | None = None

    @property
    def workload_level(self) -> bool:
        """Istio's scopes: a selector with labels makes a workload-level policy; without
        one it is namespace-level (mesh-level in the root namespace)."""
        return bool(self.selector)
