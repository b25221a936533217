"""An AuthorizationPolicy compiled into the match program fastpath's authorization step
runs (the contract between control and the engine, summed up here).

    POLICY = {"name": "NAMESPACE/NAME", "action": "ALLOW" | "DENY" | "AUDIT", "rules": [RULE]}
    RULE   = {"from": [SOURCE] | None, "to": [OPERATION] | None, "when": [CONDITION],
              "http_only": bool}
    SOURCE / OPERATION = {FIELD: {"values": [LEAF] | None, "not": [LEAF] | None}}
    CONDITION = {"key": KEY, "values": [LEAF] | None, "not": [LEAF] | None}
    LEAF   = ["exact", s] | ["prefix", s] | ["suffix", s] | ["any"] | ["template", s]
             | ["cidr", "10.0.0.0/8"] | ["port", 8080]

Strings become leaves as Istio's matchers read them (pilot/pkg/security/authz/matcher
StringMatcherWithPrefix, HostMatcher): "*" any (for a caller's identity Istio's regex
".+": any caller that has one), "*x" a suffix, "x*" a prefix, else exact; a path with
{*} or {**} is a template. Addresses become CIDRs with their host bits cleared (Envoy
masks them too), a lone address a /32 or /128; ports numbers. A port (`ports`,
`destination.port`) is the one the workload listens on, as Istio's "destination.port"
at a sidecar's inbound listener: Istio's own tests write (.To.PortForName ...).
WorkloadPort, the Service's targetPort, not its port.

The caller's identity, as Istio compiles it (pilot/pkg/security/authz/model/model.go
MigrateTrustDomain, trustdomain/bundle.go):
- principals and `source.principal`: a principal whose trust domain is the mesh's, one
  of its aliases (Mesh trustDomainAliases) or "cluster.local" stands for the same
  namespace and service account in each of them (ReplaceTrustDomainAliases); others,
  and "*/ns/..." ones, are kept as written;
- serviceAccounts and `source.serviceAccount` ("sa" in the policy's namespace, or
  "ns/sa") match that account in any trust domain (Istio's regex
  spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?): the principal suffix "/ns/NS/sa/SA";
- trustDomains and `source.trustDomain`: the principal prefix "TD/" (a value that is
  the mesh's or an alias stands for all of them: ExpandTrustDomainAliases), "TD*" the
  prefix "TD", "*" any. "*TD" (Istio's regex on the trust domain part) is expanded here
  over the mesh's trust domain and its aliases, the only ones a caller's certificate
  can carry (DESIGN §4: identities are issued in the root's trust domain).
All three are "principals" leaves (SOURCE) or `source.principal` (CONDITION). A value
list that can match no caller (a "*TD" that names none of them) drops its source, and
a rule left with no source, or with a condition that can never hold, is dropped: the
rule could never match (a policy left with no rule keeps matching nothing).

HTTP-only fields on a TCP port. Istio compiles a policy twice, for HTTP filter chains
and for TCP ones (pilot/pkg/security/authz/builder/builder.go Builder.build, calling
model.Generate with forTCP). On TCP the generators of hosts, methods, paths and
request.headers[...] (and JWT's, refused here) fail ("is HTTP only":
model/generator.go hostGenerator, pathGenerator, methodGenerator,
requestHeaderGenerator), and model.go rule.checkError decides what the failure means:
- ALLOW: the error stands; Builder.build skips the whole rule ("skipped rule ... on TCP
  filter chain"): the rule matches nothing on a TCP port, so a policy of only such
  rules denies every TCP connection in its scope (builder testdata
  tcp/allow-only-http-out.yaml: an ALLOW RBAC with no policies);
- DENY and AUDIT: the error is dropped with the field: the rule is kept without its
  HTTP-only fields (values and notValues alike), so it matches more; a rule of only
  HTTP-only fields denies every TCP connection (tcp/deny-both-http-tcp-out.yaml:
  "permissions: any"; ValidateAuthorizationPolicy warns of it).
remoteIpBlocks, notRemoteIpBlocks and `remote.ip` are not HTTP-only in Istio
(remoteIPGenerator has no TCP check; on TCP the remote address is the connection's);
they are not marked. A rule naming any of the HTTP-only fields gets "http_only": true;
the engine applies the two readings above on an opaque TCP port.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .authz import Condition, Rule
from .authzparse import HEADER_KEY, TEMPLATE_ANY, TEMPLATE_ONE
from .model import DEFAULT_TRUST_DOMAIN, AuthorizationPolicy

Leaf = list[Any]
Match = dict[str, list[Leaf] | None]

HTTP_ONLY_FIELDS = frozenset({"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"})

# Every form of a source or operation field: (program field, values field, not field).
_SOURCE_MATCHES = (("namespaces", "namespaces", "notNamespaces"),
                   ("ipBlocks", "ipBlocks", "notIpBlocks"),
                   ("remoteIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"))
_OPERATION_MATCHES = (("hosts", "hosts", "notHosts"), ("ports", "ports", "notPorts"),
                      ("methods", "methods", "notMethods"), ("paths", "paths", "notPaths"))
# The fields naming the caller's identity, each compiled to principal leaves.
_IDENTITIES = (("principals", "notPrincipals"), ("serviceAccounts", "notServiceAccounts"),
               ("trustDomains", "notTrustDomains"))
IDENTITY_FIELDS = {"principals": "principal", "notPrincipals": "principal", "source.principal": "principal",
                   "serviceAccounts": "serviceAccount", "notServiceAccounts": "serviceAccount",
                   "source.serviceAccount": "serviceAccount", "trustDomains": "trustDomain",
                   "notTrustDomains": "trustDomain", "source.trustDomain": "trustDomain"}


class Never(Exception):
    """A value list that no caller can match: its source or rule is dropped."""


def string_leaf(value: str) -> Leaf:
    if value == "*":
        return ["any"]
    if value.startswith("*"):
        return ["suffix", value[1:]]
    if value.endswith("*"):
        return ["prefix", value[:-1]]
    return ["exact", value]


def _path_leaf(value: str) -> Leaf:
    if TEMPLATE_ONE in value or TEMPLATE_ANY in value:
        return ["template", value]
    return string_leaf(value)


def _cidr_leaf(value: str) -> Leaf:
    return ["cidr", str(ipaddress.ip_network(value, strict=False))]


def _port_leaf(value: str) -> Leaf:
    return ["port", int(value)]


def _unique(leaves: Iterable[Leaf]) -> list[Leaf]:
    out: list[Leaf] = []
    for leaf in leaves:
        if leaf not in out:
            out.append(leaf)
    return out


class Identities:
    """How the caller's identity fields become principal leaves, for a mesh whose trust
    domain and aliases are `bundle` (the mesh's first)."""

    def __init__(self, trust_domain: str, aliases: Sequence[str] = ()) -> None:
        self.bundle = [trust_domain, *(a for a in aliases if a != trust_domain)]

    def _known(self, domain: str) -> bool:
        """trustdomain.stringMatch: the domain and a bundle entry match either way round,
        exactly or by a '*' prefix or suffix pattern on one side."""
        def match(a: str, pattern: str) -> bool:
            return (a == pattern or pattern == "*" or (pattern.endswith("*") and a.startswith(pattern[:-1]))
                    or (pattern.startswith("*") and a.endswith(pattern[1:])))
        return any(match(domain, td) or match(td, domain) for td in self.bundle)

    def principals(self, values: Iterable[str]) -> list[Leaf]:
        """ReplaceTrustDomainAliases, then leaves."""
        out: list[str] = []
        for principal in values:
            parts = principal.split("/")
            if len(parts) != 5 or parts[0] == "*" or not (
                    self._known(parts[0]) or parts[0] == DEFAULT_TRUST_DOMAIN):
                out.append(principal)
                continue
            for td in self.bundle:
                keep = parts[0].startswith("*") and td.endswith(parts[0][1:])
                out.append(principal if keep else "/".join([td, *parts[1:]]))
        return _unique(string_leaf(p) for p in out)

    @staticmethod
    def service_accounts(values: Iterable[str], namespace: str) -> list[Leaf]:
        """"sa" (of `namespace`) or "ns/sa", in any trust domain."""
        out = []
        for value in values:
            ns, _, sa = value.rpartition("/")
            out.append(["suffix", f"/ns/{ns or namespace}/sa/{sa}"])
        return _unique(out)

    def trust_domains(self, values: Iterable[str]) -> list[Leaf]:
        """ExpandTrustDomainAliases, then leaves; "*TD" over the bundle (may be none)."""
        out: list[Leaf] = []
        for value in values:
            if value == "*":
                out.append(["any"])
            elif value.startswith("*"):
                out += [["prefix", f"{td}/"] for td in self.bundle if td.endswith(value[1:])]
            elif value.endswith("*"):
                out.append(["prefix", value[:-1]])
            else:
                domains = self.bundle if value in self.bundle else [value]
                out += [["prefix", f"{td}/"] for td in domains]
        return _unique(out)

    def leaves(self, field: str, values: Iterable[str], namespace: str) -> list[Leaf]:
        """The principal leaves of an identity field or `when` key (IDENTITY_FIELDS)."""
        kind = IDENTITY_FIELDS[field]
        if kind == "principal":
            return self.principals(values)
        if kind == "serviceAccount":
            return self.service_accounts(values, namespace)
        return self.trust_domains(values)


def _match(values: list[Leaf] | None, nots: list[Leaf] | None) -> Match:
    return {"values": values or None, "not": nots or None}


def _fields(part: dict[str, tuple[str, ...]], forms: Sequence[tuple[str, str, str]],
            leaves: dict[str, Callable[[str], Leaf]]) -> dict[str, Match]:
    """The program's fields of a source or operation: `forms` names each with its two
    spellings, `leaves` how its values become leaves."""
    out: dict[str, Match] = {}
    for name, given, negated in forms:
        if given in part or negated in part:
            out[name] = _match([leaves[name](v) for v in part.get(given, ())],
                               [leaves[name](v) for v in part.get(negated, ())])
    return out


_SOURCE_LEAVES = {"namespaces": string_leaf, "ipBlocks": _cidr_leaf, "remoteIpBlocks": _cidr_leaf}
_OPERATION_LEAVES = {"hosts": string_leaf, "methods": string_leaf, "paths": _path_leaf, "ports": _port_leaf}
_CONDITION_LEAVES = {"source.ip": _cidr_leaf, "remote.ip": _cidr_leaf, "destination.ip": _cidr_leaf,
                     "destination.port": _port_leaf}


def _source(source: dict[str, tuple[str, ...]], namespace: str, ids: Identities) -> dict[str, Match]:
    """A source's fields; raises Never when its identity values can match nobody."""
    values: list[Leaf] = []
    nots: list[Leaf] = []
    for given, negated in _IDENTITIES:
        if given in source:
            values = ids.leaves(given, source[given], namespace)
            if not values:
                raise Never(given)
        nots += ids.leaves(negated, source.get(negated, ()), namespace)
    out: dict[str, Match] = {}
    if values or nots:
        out["principals"] = _match(values, _unique(nots))
    out.update(_fields(source, _SOURCE_MATCHES, _SOURCE_LEAVES))
    return out


def _condition(condition: Condition, namespace: str, ids: Identities) -> dict[str, Any] | None:
    """A `when` entry; None when it always holds; raises Never when it cannot."""
    key = condition.key
    values, nots = condition.values or (), condition.not_values or ()
    if key.startswith(HEADER_KEY):
        # Header names are case-insensitive (RFC 9110 §5.1): the engine compares lower case.
        key, leaf = key.lower(), string_leaf
    elif key in IDENTITY_FIELDS:
        leaves = ids.leaves(key, values, namespace)
        if values and not leaves:
            raise Never(key)
        not_leaves = ids.leaves(key, nots, namespace)
        if not leaves and not not_leaves:
            return None
        return {"key": "source.principal", **_match(leaves, not_leaves)}
    else:
        leaf = _CONDITION_LEAVES.get(key, string_leaf)
    return {"key": key, **_match([leaf(v) for v in values], [leaf(v) for v in nots])}


def http_only(rule: Rule) -> bool:
    """The rule names a field Istio cannot compile for a TCP filter chain."""
    return (any(HTTP_ONLY_FIELDS & op.keys() for op in rule.operations or ())
            or any(c.key.startswith(HEADER_KEY) for c in rule.when or ()))


def _rule(rule: Rule, namespace: str, ids: Identities) -> dict[str, Any] | None:
    """The compiled rule, or None when it can never match."""
    try:
        when = [c for c in (_condition(c, namespace, ids) for c in rule.when or ()) if c is not None]
    except Never:
        return None
    sources = None
    if rule.sources is not None:
        sources = []
        for source in rule.sources:
            try:
                sources.append(_source(source, namespace, ids))
            except Never:
                continue
        if not sources:
            return None
    operations = None if rule.operations is None else [
        _fields(op, _OPERATION_MATCHES, _OPERATION_LEAVES) for op in rule.operations]
    return {"from": sources, "to": operations, "when": when, "http_only": http_only(rule)}


def compile_policy(policy: AuthorizationPolicy, ids: Identities) -> dict[str, Any]:
    """The POLICY entry of a program for `policy`."""
    rules = [_rule(rule, policy.namespace, ids) for rule in policy.spec.rules or ()]
    return {"name": f"{policy.namespace}/{policy.name}", "action": policy.spec.effective_action,
            "rules": [rule for rule in rules if rule is not None]}
