"""Istio's AuthorizationPolicy, parsed as `meshnode apply` parses it: each field accepted
and what it compiles to in the program an inbound route carries (the authz spec), each
refused field refused by name, Istio's validation, the scopes (mesh, namespace, selector,
targetRefs) and the order of policies, the store's round trip and `get`'s status."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshnode.config import Store, parse_text, to_dict, with_status

from authzkit import WORLD, authz, doc, inbound, policies, problems, resources, rules_of

pytestmark = pytest.mark.timeout(60)

SELECT_API = {"selector": {"matchLabels": {"app": "api"}}}


def m(values: list[Any] | None = None, nots: list[Any] | None = None) -> dict[str, Any]:
    return {"values": values, "not": nots}


def rule(**parts: Any) -> dict[str, Any]:
    return {"rules": [parts], **SELECT_API}


def source(**fields: list[str]) -> dict[str, Any]:
    return rule(**{"from": [{"source": fields}]})


def operation(**fields: list[str]) -> dict[str, Any]:
    return rule(to=[{"operation": fields}])


def when(*conditions: dict[str, Any]) -> dict[str, Any]:
    return rule(when=list(conditions))


def test_a_rule_compiles_to_the_specs_shape() -> None:
    assert policies(authz(source(principals=["cluster.local/ns/web/sa/web"]), name="allow-web")) == [
        {"name": "shop/allow-web", "action": "ALLOW",
         "rules": [{"from": [{"principals": m([["exact", "cluster.local/ns/web/sa/web"]])}],
                    "to": None, "when": [], "http_only": False}]}]


@pytest.mark.parametrize("fields, expected", [
    ({"principals": ["cluster.local/ns/a/sa/b", "cluster.local/ns/x/*", "*/sa/b", "*"]},
     {"principals": m([["exact", "cluster.local/ns/a/sa/b"], ["prefix", "cluster.local/ns/x/"],
                       ["suffix", "/sa/b"], ["any"]])}),
    ({"notPrincipals": ["*"]}, {"principals": m(None, [["any"]])}),
    ({"namespaces": ["shop", "dev-*"], "notNamespaces": ["*-test"]},
     {"namespaces": m([["exact", "shop"], ["prefix", "dev-"]], [["suffix", "-test"]])}),
    # Host bits are cleared (Envoy masks them); an address is a /32 or /128.
    ({"ipBlocks": ["10.1.2.3/8", "10.0.0.7"], "notIpBlocks": ["fd00::1"]},
     {"ipBlocks": m([["cidr", "10.0.0.0/8"], ["cidr", "10.0.0.7/32"]], [["cidr", "fd00::1/128"]])}),
    ({"remoteIpBlocks": ["192.168.4.0/23"], "notRemoteIpBlocks": ["172.23.240.0/22"]},
     {"remoteIpBlocks": m([["cidr", "192.168.4.0/23"]], [["cidr", "172.23.240.0/22"]])}),
    # serviceAccounts: that account in any trust domain; "sa" alone is the policy's namespace's.
    ({"serviceAccounts": ["web", "infra/cache"], "notServiceAccounts": ["shop/api"]},
     {"principals": m([["suffix", "/ns/shop/sa/web"], ["suffix", "/ns/infra/sa/cache"]],
                      [["suffix", "/ns/shop/sa/api"]])}),
    ({"trustDomains": ["cluster.local", "other.td", "corp*", "*"], "notTrustDomains": ["bad.example.com"]},
     {"principals": m([["prefix", "cluster.local/"], ["prefix", "other.td/"], ["prefix", "corp"], ["any"]],
                      [["prefix", "bad.example.com/"]])}),
    # A negative identity list of each kind merges into one `not`.
    ({"trustDomains": ["cluster.local"], "notServiceAccounts": ["web"], "notTrustDomains": ["x.td"]},
     {"principals": m([["prefix", "cluster.local/"]], [["suffix", "/ns/shop/sa/web"], ["prefix", "x.td/"]])}),
])
def test_each_source_field(fields: dict[str, list[str]], expected: dict[str, Any]) -> None:
    [compiled] = rules_of(source(**fields))
    assert compiled["from"] == [expected]
    assert compiled["http_only"] is False


@pytest.mark.parametrize("fields, expected, http", [
    ({"hosts": ["api.shop.svc", "*.shop.svc", "api.*"], "notHosts": ["*"]},
     {"hosts": m([["exact", "api.shop.svc"], ["suffix", ".shop.svc"], ["prefix", "api."]], [["any"]])}, True),
    ({"ports": ["8080"], "notPorts": ["5432", "1"]},
     {"ports": m([["port", 8080]], [["port", 5432], ["port", 1]])}, False),
    ({"methods": ["GET", "HEAD"], "notMethods": ["DELETE"]},
     {"methods": m([["exact", "GET"], ["exact", "HEAD"]], [["exact", "DELETE"]])}, True),
    ({"paths": ["/exact", "/admin/*", "*.css", "/store/{**}/cart", "/foo/{*}/bar/{**}"],
      "notPaths": ["/admin/public"]},
     {"paths": m([["exact", "/exact"], ["prefix", "/admin/"], ["suffix", ".css"],
                  ["template", "/store/{**}/cart"], ["template", "/foo/{*}/bar/{**}"]],
                 [["exact", "/admin/public"]])}, True),
])
def test_each_operation_field(fields: dict[str, list[str]], expected: dict[str, Any], http: bool) -> None:
    [compiled] = rules_of(operation(**fields))
    assert compiled["to"] == [expected]
    assert compiled["http_only"] is http


@pytest.mark.parametrize("condition, expected", [
    ({"key": "request.headers[X-Tenant]", "values": ["a", "b*"], "notValues": ["*-test"]},
     {"key": "request.headers[x-tenant]", **m([["exact", "a"], ["prefix", "b"]], [["suffix", "-test"]])}),
    ({"key": "source.ip", "values": ["10.0.0.1", "10.2.0.0/16"]},
     {"key": "source.ip", **m([["cidr", "10.0.0.1/32"], ["cidr", "10.2.0.0/16"]])}),
    ({"key": "remote.ip", "notValues": ["2001:db8::/32"]},
     {"key": "remote.ip", **m(None, [["cidr", "2001:db8::/32"]])}),
    ({"key": "destination.ip", "values": ["10.0.0.1"]}, {"key": "destination.ip", **m([["cidr", "10.0.0.1/32"]])}),
    ({"key": "destination.port", "values": ["8080"], "notValues": ["9090"]},
     {"key": "destination.port", **m([["port", 8080]], [["port", 9090]])}),
    ({"key": "source.namespace", "values": ["shop", "dev-*"]},
     {"key": "source.namespace", **m([["exact", "shop"], ["prefix", "dev-"]])}),
    ({"key": "source.principal", "values": ["cluster.local/ns/shop/sa/web"]},
     {"key": "source.principal", **m([["exact", "cluster.local/ns/shop/sa/web"]])}),
    ({"key": "source.serviceAccount", "values": ["infra/cache"], "notValues": ["web"]},
     {"key": "source.principal", **m([["suffix", "/ns/infra/sa/cache"]], [["suffix", "/ns/shop/sa/web"]])}),
    ({"key": "source.trustDomain", "values": ["cluster.local"]},
     {"key": "source.principal", **m([["prefix", "cluster.local/"]])}),
    ({"key": "connection.sni", "values": ["*.api.shop.svc"]},
     {"key": "connection.sni", **m([["suffix", ".api.shop.svc"]])}),
])
def test_each_when_key(condition: dict[str, Any], expected: dict[str, Any]) -> None:
    [compiled] = rules_of(when(condition))
    assert compiled["when"] == [expected]
    assert compiled["http_only"] is condition["key"].startswith("request.headers")


def test_parts_of_a_rule_and_of_a_policy() -> None:
    spec = {"action": "DENY", **SELECT_API, "rules": [
        {"from": [{"source": {"namespaces": ["dev"]}}, {"source": {"ipBlocks": ["10.9.0.0/16"]}}],
         "to": [{"operation": {"ports": ["5432"]}}, {"operation": {"methods": ["POST"]}}],
         "when": [{"key": "source.ip", "values": ["10.9.1.1"]}, {"key": "destination.port", "values": ["5432"]}]},
        {}]}
    [policy] = policies(authz(spec, name="d"))
    assert policy["action"] == "DENY"
    first, everything = policy["rules"]
    assert first["from"] == [{"namespaces": m([["exact", "dev"]])}, {"ipBlocks": m([["cidr", "10.9.0.0/16"]])}]
    assert first["to"] == [{"ports": m([["port", 5432]])}, {"methods": m([["exact", "POST"]])}]
    assert [c["key"] for c in first["when"]] == ["source.ip", "destination.port"]
    assert first["http_only"] is True          # methods, in one of its operations
    assert everything == {"from": None, "to": None, "when": [], "http_only": False}


@pytest.mark.parametrize("spec, action, rules", [
    ({}, "ALLOW", []),                                       # allow-nothing: denies all
    (None, "ALLOW", []),                                     # no spec at all: the same
    ({"rules": [{}]}, "ALLOW", [{"from": None, "to": None, "when": [], "http_only": False}]),
    ({"action": "AUDIT"}, "AUDIT", []),
    ({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}, "AUDIT",
     [{"from": None, "to": [{"paths": m([["exact", "/x"]])}], "when": [], "http_only": True}]),
])
def test_actions_and_empty_policies(spec: dict[str, Any] | None, action: str, rules: list[Any]) -> None:
    [policy] = policies(authz(spec))
    assert (policy["action"], policy["rules"]) == (action, rules)


@pytest.mark.parametrize("trust_domain, values, expected", [
    # The mesh's own trust domain, an alias and "cluster.local" stand for all three.
    ("new.td", ["cluster.local/ns/a/sa/b"], ["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]),
    ("new.td", ["old.td/ns/a/sa/b"], ["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]),
    # Another trust domain, and a principal that names any, are kept as written.
    ("new.td", ["other.td/ns/a/sa/b", "*/ns/a/sa/b"], ["other.td/ns/a/sa/b"]),
])
def test_principals_cover_the_trust_domain_aliases(trust_domain: str, values: list[str],
                                                  expected: list[str]) -> None:
    mesh = doc("Mesh", {"trustDomain": trust_domain, "trustDomainAliases": ["old.td"]}, name="default",
               api="meshnode.io/v1alpha1")
    [policy] = policies(mesh, authz(source(principals=values)))
    leaves = policy["rules"][0]["from"][0]["principals"]["values"]
    assert leaves[:len(expected)] == [["exact", p] for p in expected]
    if values[-1].startswith("*/"):
        assert leaves[-1] == ["suffix", "/ns/a/sa/b"]


def test_trust_domains_cover_the_aliases_and_a_suffix_matches_among_them() -> None:
    mesh = doc("Mesh", {"trustDomainAliases": ["old.td", "corp.td"]}, name="default", api="meshnode.io/v1alpha1")
    [policy] = policies(mesh, authz(source(trustDomains=["old.td", "*.td"])))
    assert policy["rules"][0]["from"][0]["principals"]["values"] == [
        ["prefix", "cluster.local/"], ["prefix", "old.td/"], ["prefix", "corp.td/"]]
    # A suffix no trust domain of the mesh has: that source matches no caller, and
    # the rule it stood alone in is dropped (the policy still applies: ALLOW denies).
    [policy] = policies(mesh, authz(rule(**{"from": [{"source": {"trustDomains": ["*.example"]}}]})))
    assert policy["rules"] == []
    spec = {**SELECT_API, "rules": [{"from": [{"source": {"trustDomains": ["*.example"]}},
                                              {"source": {"namespaces": ["shop"]}}]}]}
    [policy] = policies(mesh, authz(spec))
    assert policy["rules"][0]["from"] == [{"namespaces": m([["exact", "shop"]])}]
    [policy] = policies(mesh, authz(when({"key": "source.trustDomain", "notValues": ["*.example"]})))
    assert policy["rules"][0]["when"] == []          # excludes nobody: always holds


@pytest.mark.parametrize("spec, field, says", [
    ({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}, "spec.action",
     "CUSTOM (an external authorizer) is not implemented"),
    ({"provider": {"name": "ext"}}, "spec.provider", "provider (an external authorizer"),
    (source(requestPrincipals=["iss/sub"]), "spec.rules[0].from[0].source.requestPrincipals",
     "requestPrincipals needs a request's JWT"),
    (source(notRequestPrincipals=["*"]), "spec.rules[0].from[0].source.notRequestPrincipals",
     "needs a request's JWT"),
    (when({"key": "request.auth.claims[iss]", "values": ["x"]}), "spec.rules[0].when[0].key",
     "request.auth.claims[iss] needs a request's JWT"),
    (when({"key": "request.auth.principal", "values": ["x"]}), "spec.rules[0].when[0].key", "JWT"),
    (when({"key": "experimental.envoy.filters.a.b[c]", "values": ["x"]}), "spec.rules[0].when[0].key",
     "Envoy filter metadata is not implemented"),
    ({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]},
     "spec.targetRefs[0].kind", "a target of kind Gateway is not implemented"),
    ({"targetRef": {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "se"}},
     "spec.targetRef.kind", "a target of kind ServiceEntry is not implemented"),
    (source(principals=["cluster.local/ns/a/sa/b"], trustDomains=["cluster.local"]),
     "spec.rules[0].from[0].source.trustDomains", "trustDomains beside principals in one source is not implemented"),
    ({"rules": [{"to": [{"operation": {"paths": ["/"], "bogus": ["x"]}}]}]},
     'spec.rules[0].to[0].operation.bogus', "unknown field"),
    ({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]},
     "spec.rules[0].from[0].source.principal", "did you mean 'principals'"),
    ({"action": "ALLOW", "bogus": 1}, "spec.bogus", "unknown field"),
])
def test_refused_by_name(spec: dict[str, Any], field: str, says: str) -> None:
    found = problems(authz(spec))
    assert any(f"AuthorizationPolicy shop/p: {field}: " in p and says in p for p in found), found


def test_dry_run_is_refused_by_name() -> None:
    text = authz({"rules": [{}]}).replace("namespace: shop", "namespace: shop\n  annotations:\n"
                                                             "    istio.io/dry-run: 'true'")
    assert any('metadata.annotations["istio.io/dry-run"]: dry-run policies are not implemented' in p
               for p in problems(text))


@pytest.mark.parametrize("spec, field, says", [
    ({"selector": {"matchLabels": {"app": "api"}}, "targetRefs": [{"kind": "Service", "name": "api"}]},
     "spec.targetRefs", "only one of selector, targetRef and targetRefs"),
    ({"selector": {"matchLabels": {"app": "a*"}}}, "spec.selector.matchLabels.app", "not a label value"),
    ({"targetRefs": [{"kind": "Service", "name": "api", "namespace": "other"}]},
     "spec.targetRefs[0].namespace", "cross namespace referencing"),
    ({"targetRefs": [{"group": "apps", "kind": "Deployment", "name": "api"}]},
     "spec.targetRefs[0].kind", "must be to a Service"),
    ({"action": "DENY"}, "spec.rules", "a DENY policy without rules never matches"),
    ({"action": "deny", "rules": [{}]}, "spec.action", "must be one of ALLOW, DENY, AUDIT"),
    ({"rules": [None]}, "spec.rules[0]", "must not be null"),
    ({"rules": [{"from": []}]}, "spec.rules[0].from", "at least 1 item"),
    ({"rules": [{"to": []}]}, "spec.rules[0].to", "at least 1 item"),
    ({"rules": [{"from": [{}]}]}, "spec.rules[0].from[0].source", "required"),
    (source(), "spec.rules[0].from[0].source", "must not be empty"),
    (source(principals=[]), "spec.rules[0].from[0].source", "must not be empty"),
    (operation(), "spec.rules[0].to[0].operation", "must not be empty"),
    (source(principals=[""]), "spec.rules[0].from[0].source.principals[0]", "must not be empty"),
    (source(principals=["a*b"]), "spec.rules[0].from[0].source.principals[0]", "'*' stands only alone"),
    (source(namespaces=["*a*"]), "spec.rules[0].from[0].source.namespaces[0]", "'*' stands only alone"),
    (source(ipBlocks=["10.0.0.0/33"]), "spec.rules[0].from[0].source.ipBlocks[0]", "neither an IP address"),
    (source(notRemoteIpBlocks=["host.example"]), "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
     "neither an IP address"),
    (source(serviceAccounts=["a/b/c"]), "spec.rules[0].from[0].source.serviceAccounts[0]", "not a service account"),
    (source(serviceAccounts=["web*"]), "spec.rules[0].from[0].source.serviceAccounts[0]", "no '*'"),
    (source(serviceAccounts=[f"sa{i}" for i in range(17)]), "spec.rules[0].from[0].source.serviceAccounts",
     "at most 16"),
    (source(serviceAccounts=["web"], namespaces=["shop"]), "spec.rules[0].from[0].source.serviceAccounts",
     "cannot be set with namespaces"),
    (source(trustDomains=["a/b"]), "spec.rules[0].from[0].source.trustDomains[0]", "has no '/'"),
    (operation(ports=["0"]), "spec.rules[0].to[0].operation.ports[0]", "not a port"),
    (operation(notPorts=["65536"]), "spec.rules[0].to[0].operation.notPorts[0]", "not a port"),
    (rule(to=[{"operation": {"ports": [8080]}}]), "spec.rules[0].to[0].operation.ports[0]", "quote it"),
    (operation(paths=["/a/{**}/b/{*}"]), "spec.rules[0].to[0].operation.paths[0]", "must be the last template"),
    (operation(paths=["/a/{x}"]), "spec.rules[0].to[0].operation.paths[0]", "only in the templates"),
    (operation(paths=["/a/b{*}/c"]), "spec.rules[0].to[0].operation.paths[0]", "neither a template"),
    (operation(notPaths=["/a/*/{**}"]), "spec.rules[0].to[0].operation.notPaths[0]", "neither a template"),
    (when({"key": "source.ip"}), "spec.rules[0].when[0]", "give values or notValues"),
    (when({"values": ["x"]}), "spec.rules[0].when[0].key", "required"),
    (when({"key": "", "values": ["x"]}), "spec.rules[0].when[0].key", "must not be empty"),
    (when({"key": "request.headers[]", "values": ["x"]}), "spec.rules[0].when[0].key", "request.headers[NAME]"),
    (when({"key": "request.headers", "values": ["x"]}), "spec.rules[0].when[0].key", "request.headers[NAME]"),
    (when({"key": "source.ip", "values": ["nope"]}), "spec.rules[0].when[0].values[0]", "neither an IP"),
    (when({"key": "destination.port", "notValues": ["http"]}), "spec.rules[0].when[0].notValues[0]",
     "not a port"),
    (when({"key": "source.serviceAccount", "values": ["a/b/c"]}), "spec.rules[0].when[0].values[0]",
     "not a service account"),
    (when({"key": "destination.namespace", "values": ["x"]}), "spec.rules[0].when[0].key",
     "replaced by the metadata.namespace"),
    (when({"key": "destination.labels[app]", "values": ["x"]}), "spec.rules[0].when[0].key",
     "replaced by the workload selector"),
    (when({"key": "destination.user", "values": ["x"]}), "spec.rules[0].when[0].key", "only supported in v1alpha1"),
    (when({"key": "source.address", "values": ["x"]}), "spec.rules[0].when[0].key", "unknown attribute"),
])
def test_istios_validation(spec: dict[str, Any], field: str, says: str) -> None:
    found = problems(authz(spec))
    assert any(f"AuthorizationPolicy shop/p: {field}: " in p and says in p for p in found), found


def test_apiversion_v1beta1_is_istios_same_schema_and_others_are_refused() -> None:
    assert policies(authz({"rules": [{}]}, api="security.istio.io/v1beta1"))[0]["rules"]
    assert any("apiVersion: must be 'security.istio.io/v1' or 'security.istio.io/v1beta1'" in p
               for p in problems(authz({}, api="security.istio.io/v1alpha1")))


def reached(*docs: str) -> dict[str, list[str]]:
    """Each inbound route (service port on a local workload) -> its policies' names."""
    return {"|".join(at): [p["name"] for p in entry["authz"]["policies"]]
            for at, entry in inbound(resources(*docs)).items()}


ROUTES = ("shop/api|http|shop/api-1", "shop/api|db|shop/api-1", "shop/web|http|shop/web-1",
          "infra/cache|http|infra/cache-1")


def test_scopes() -> None:
    found = reached(
        authz({}, name="mesh", namespace="istio-system"),                        # every workload
        authz({"selector": {"matchLabels": {"app": "cache"}}}, name="mesh-cache", namespace="istio-system"),
        authz({}, name="ns", namespace="shop"),                                  # shop's workloads
        authz({"selector": {"matchLabels": {"version": "v1"}}}, name="v1", namespace="shop"),
        authz({"selector": {"matchLabels": {"app": "cache"}}}, name="no-cache-in-shop", namespace="shop"),
        authz({"selector": {}}, name="all-in-infra", namespace="infra"),
        authz({"targetRefs": [{"kind": "Service", "group": "", "name": "web"}]}, name="web-only", namespace="shop"),
        authz({"targetRef": {"kind": "Service", "name": "api"}}, name="api-only", namespace="shop"),
    )
    assert sorted(found) == sorted(ROUTES)       # api-2 is node-b's: not in node-a's snapshot
    assert found["shop/api|http|shop/api-1"] == ["istio-system/mesh", "shop/api-only", "shop/ns", "shop/v1"]
    assert found["shop/api|db|shop/api-1"] == ["istio-system/mesh", "shop/api-only", "shop/ns", "shop/v1"]
    assert found["shop/web|http|shop/web-1"] == ["istio-system/mesh", "shop/ns", "shop/web-only"]
    assert found["infra/cache|http|infra/cache-1"] == ["infra/all-in-infra", "istio-system/mesh",
                                                        "istio-system/mesh-cache"]


def test_the_root_namespace_is_the_meshs() -> None:
    mesh = doc("Mesh", {"rootNamespace": "mesh-root"}, name="default", api="meshnode.io/v1alpha1")
    found = reached(mesh, authz({}, name="a", namespace="mesh-root"), authz({}, name="b", namespace="istio-system"))
    assert all(found[route] == ["mesh-root/a"] for route in ROUTES)


def test_a_workload_on_another_node_gets_its_own_program() -> None:
    at = ("shop/api", "http", "shop/api-2")
    assert inbound(resources(authz({}, name="a")), node="node-b")[at]["authz"]["policies"][0]["name"] == "shop/a"


def test_no_policy_leaves_inbound_out_and_a_policy_elsewhere_gives_empty_programs() -> None:
    assert inbound(resources()) == {}
    found = inbound(resources(authz({}, name="a", namespace="infra")))
    assert found[("shop/api", "http", "shop/api-1")] == {"authz": {"policies": []}, "mtls": "STRICT"}


def test_the_program_is_the_same_whatever_order_the_resources_come_in() -> None:
    docs = [authz({}, name=n, namespace=ns) for n, ns in (("b", "shop"), ("a", "shop"), ("z", "istio-system"))]
    forward = inbound(resources(*docs))
    backward = inbound(resources(*reversed(docs)))
    assert forward == backward
    assert [p["name"] for p in forward[("shop/api", "http", "shop/api-1")]["authz"]["policies"]] == [
        "istio-system/z", "shop/a", "shop/b"]


def test_the_store_keeps_it_as_written_and_get_shows_where_it_applies(tmp_path: Any) -> None:
    spec = {"selector": {"matchLabels": {"app": "api"}}, "action": "DENY", "rules": [
        {"from": [{"source": {"notNamespaces": ["shop"]}}], "to": [{"operation": {"paths": ["/admin*"]}}],
         "when": [{"key": "request.headers[X-A]", "notValues": ["1"]}]}]}
    store = Store(tmp_path / "state")
    store.apply(parse_text(WORLD + "---\n" + authz(spec, name="deny-admin"), "a.yaml"), "a.yaml")
    [policy] = Store(tmp_path / "state").get("ap")                    # read back from disk
    written = to_dict(policy)
    assert written["spec"] == spec
    assert parse_text(yaml.safe_dump(written), "again.yaml")[0] == policy
    status = with_status(policy, store.resources())["status"]
    assert status["conditions"] == [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                     "message": "applies to 2 workload(s): shop/api-1, shop/api-2"}]
    store.apply(parse_text(authz({"targetRefs": [{"kind": "Service", "group": "", "name": "gone"}]}, name="t"),
                           "t.yaml"), "t.yaml")
    [target] = store.get("authorizationpolicies", "t")
    assert with_status(target, store.resources())["status"]["conditions"][0]["reason"] == "TargetNotFound"
    store.delete("AuthorizationPolicy", "deny-admin", "shop")
    assert [p.name for p in store.get("AuthorizationPolicy")] == ["t"]


@pytest.mark.parametrize("spec, field, says", [
    ({"trustDomainAliases": ["old.td", "old.td"]}, "spec.trustDomainAliases[1]", "listed twice"),
    ({"trustDomainAliases": ["Old_TD"]}, "spec.trustDomainAliases[0]", "is not a trust domain"),
    ({"trustDomainAliases": "old.td"}, "spec.trustDomainAliases", "must be a list of trust domains"),
    ({"rootNamespace": "Istio-System"}, "spec.rootNamespace", "is not a DNS label"),
])
def test_the_meshs_root_namespace_and_aliases_are_checked(spec: dict[str, Any], field: str, says: str) -> None:
    found = problems(doc("Mesh", spec, name="default", api="meshnode.io/v1alpha1"))
    assert any(f"Mesh default: {field}: " in p and says in p for p in found), found


def test_the_meshs_root_namespace_and_aliases_round_trip() -> None:
    [mesh] = parse_text(doc("Mesh", {"rootNamespace": "mesh-root", "trustDomainAliases": ["a.td", "b.td"]},
                            name="default", api="meshnode.io/v1alpha1"), "m.yaml")
    written = to_dict(mesh)["spec"]
    assert (written["rootNamespace"], written["trustDomainAliases"]) == ("mesh-root", ["a.td", "b.td"])
    assert parse_text(yaml.safe_dump(to_dict(mesh)), "again.yaml") == [mesh]
    [default] = parse_text(doc("Mesh", {}, name="default", api="meshnode.io/v1alpha1"), "m.yaml")
    assert (default.spec.root_namespace, default.spec.trust_domain_aliases) == ("istio-system", ())
