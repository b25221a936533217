"""Istio's own authorization test policies (testdata/istio_authz, from istio/istio's
tests/integration/security) apply unchanged: rendered with the values Istio's echo
deployment gives its templates, their security.istio.io documents go through the
parser `meshnode apply` uses and into the store, and compile to what their tests
expect of them (authz_test.go). Those that need a JWT or an external authorizer are
refused by name."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshnode.config import ConfigError, Store, parse_text

from authzkit import inbound

pytestmark = pytest.mark.timeout(60)

TESTDATA = Path(__file__).parent / "testdata" / "istio_authz"
SYSTEM = "istio-system"

# Istio's echo apps: b is called, a (echo1) is the allowed caller, c (echo2) the denied
# one; each port's service port and the port the workload listens on (WorkloadPort).
PORTS = {"http": (80, 18080, "HTTP"), "http2": (85, 18085, "HTTP"), "grpc": (7070, 17070, "auto"),
         "tcp": (9090, 19090, "TCP"), "https": (443, 18443, "TCP")}
APPS = {"a": ("echo1", "10.10.0.1"), "b": ("echo1", "10.10.0.2"), "c": ("echo2", "10.10.1.1"),
        "istio-ingressgateway": (SYSTEM, "10.10.9.1")}


@dataclass(frozen=True)
class Echo:
    """One of Istio's echo apps as the templates name it: its service (and service
    account), namespace, workload address, and its namespace's Prefix (Istio names a
    test namespace PREFIX-<random>)."""

    service: str
    namespace: str
    address: str
    prefix: str

    @property
    def spiffe(self) -> str:
        return f"cluster.local/ns/{self.namespace}/sa/{self.service}"

    @property
    def name(self) -> str:
        """As Istio's test output names it: "a.echo1"."""
        return f"{self.service}.{self.namespace}"


def world(apps: Iterable[Echo], outbound: dict[str, int] | None = None,
          labels: dict[str, dict[str, str]] | None = None) -> str:
    """The Services and Workloads of `apps`: each one's Service with Istio's echo ports,
    its Workload SERVICE-v1 labelled app=SERVICE (and with its `labels`) under service
    account SERVICE. `outbound` and `labels` are by app name ("SERVICE.NAMESPACE"); an
    app in `outbound` takes its tcp port's traffic from local apps at that port."""
    outbound, labels = outbound or {}, labels or {}
    docs = []
    for app in apps:
        ports = [{"name": n, "port": p, "targetPort": w, "protocol": proto} for n, (p, w, proto) in PORTS.items()]
        if app.name in outbound:
            next(p for p in ports if p["name"] == "tcp")["outboundPort"] = outbound[app.name]
        docs.append({"apiVersion": "meshnode.io/v1alpha1", "kind": "Service",
                     "metadata": {"name": app.service, "namespace": app.namespace},
                     "spec": {"selector": {"app": app.service}, "ports": ports}})
        docs.append({"apiVersion": "meshnode.io/v1alpha1", "kind": "Workload",
                     "metadata": {"name": f"{app.service}-v1", "namespace": app.namespace},
                     "spec": {"address": app.address, "serviceAccount": app.service,
                              "labels": {"app": app.service, **labels.get(app.name, {})}}})
    return yaml.safe_dump_all(docs, sort_keys=False)


WORLD = world(Echo(app, namespace, address, namespace) for app, (namespace, address) in APPS.items())


def expressions(to: Echo, allowed: Echo, denied: Echo, namespace_prefix: str, mtls: str = "STRICT",
                override: str = "PERMISSIVE") -> dict[str, str]:
    """Each template expression, as written, and what Istio's framework renders it to when
    the policy is for `to`, `allowed` and `denied` are the callers the test tells apart,
    and the file is applied in the namespace whose Prefix is `namespace_prefix`."""
    fqdn = f"{to.service}.{to.namespace}.svc.cluster.local"
    out = {".To.ServiceName": to.service, ".To.NamespaceName": to.namespace, ".To.ClusterLocalFQDN": fqdn,
           ".Allowed.NamespaceName": allowed.namespace, ".Denied.NamespaceName": denied.namespace,
           ".Allowed.SpiffeIdentity": allowed.spiffe, ".Denied.SpiffeIdentity": denied.spiffe,
           ".Allowed.NamespacedName": f"{allowed.namespace}/{allowed.service}",
           ".To.MustWorkloads.Addresses | toJson": json.dumps([to.address]),
           ".Allowed.MustWorkloads.Addresses | toJson": json.dumps([allowed.address]),
           ".Denied.MustWorkloads.Addresses | toJson": json.dumps([denied.address]),
           ".To.Config.Namespace.Prefix": to.prefix, ".Namespace.Prefix": namespace_prefix,
           ".JWTServer.JwksURI": "http://jwt-server.istio-system.svc:8000/jwks",
           '.GatewayIstioLabel | default "istio-ingressgateway"': "istio-ingressgateway",
           '.GatewayIstioLabel | default "ingressgateway"': "ingressgateway",
           ".SystemNamespace.Name": SYSTEM, ".Provider.Name": "ext-authz",
           '(.To.PortForName "http").ServicePort': str(PORTS["http"][0]), ".MTLSMode": mtls,
           ".MTLSModeOverride": override}
    for name, (_, workload_port, _) in PORTS.items():
        out[f"(.To.PortForName `{name}`).WorkloadPort"] = str(workload_port)
        out[f"( .To.PortForName `{name}` ).WorkloadPort"] = str(workload_port)
    return out


def values(mtls: str = "STRICT", override: str = "PERMISSIVE") -> dict[str, str]:
    """The expressions for this file's world: b called, a allowed, c denied."""
    return expressions(Echo("b", "echo1", "10.10.0.2", "echo"), Echo("a", "echo1", "10.10.0.1", "echo"),
                       Echo("c", "echo2", "10.10.1.1", "echo"), "echo", mtls, override)


def render_with(name: str, table: dict[str, str]) -> str:
    """The template, each {{ expression }} replaced by its value in `table` (an unknown
    one fails the test)."""
    return re.sub(r"\{\{-?\s*(.*?)\s*-?\}\}", lambda m: table[m.group(1)],
                  (TESTDATA / f"{name}.yaml.tmpl").read_text())


def render(name: str, **given: str) -> str:
    return render_with(name, values(**given))


# Where Istio's tests apply each file: the called app's namespace, or the system one.
IN_SYSTEM = {"deny-global", "workload-system-ns", "global-peer-authn"}


def security_docs(name: str, **given: str) -> str:
    return security_only(render(name, **given), SYSTEM if name in IN_SYSTEM else "echo1")


def security_only(text: str, namespace: str) -> str:
    """A rendered file's AuthorizationPolicy and PeerAuthentication documents (its
    Gateways, VirtualServices and DestinationRules are other kinds' business), each in
    `namespace`, where Istio's framework applies it (kubectl apply -n), when it names none."""
    docs = []
    for item in yaml.safe_load_all(text):
        if item and item["kind"] in ("AuthorizationPolicy", "PeerAuthentication"):
            item["metadata"].setdefault("namespace", namespace)
            docs.append(item)
    return yaml.safe_dump_all(docs, sort_keys=False)


APPLICABLE = ["allow-namespace", "allow-principal", "allow-serviceaccount", "allow-trust-domain", "conditions",
              "deny-global", "deny-namespace", "deny-principal", "not-host", "not-method", "not-namespace",
              "not-port", "path-normalization", "path-precedence", "path-templating", "workload", "workload-ns",
              "workload-system-ns", "workload-bad", "ingress-gateway", "plaintext", "mtls", "global-peer-authn",
              "workload-peer-authn", "workload-peer-authn-port-override"]


def applied(tmp_path: Path, *names: str, **given: str) -> Store:
    store = Store(tmp_path / "state")
    store.apply(parse_text(WORLD, "world.yaml"), "world.yaml")
    for name in names:
        store.apply(parse_text(security_docs(name, **given), f"{name}.yaml"), f"{name}.yaml")
    return store


def programs(store: Store) -> dict[tuple[str, str, str], dict[str, Any]]:
    return inbound(store.resources(), node="node-a")


def named(store: Store, at: tuple[str, str, str], policy: str) -> dict[str, Any]:
    [found] = [p for p in programs(store)[at]["authz"]["policies"] if p["name"] == policy]
    return found


B_HTTP = ("echo1/b", "http", "echo1/b-v1")
B_TCP = ("echo1/b", "tcp", "echo1/b-v1")


@pytest.mark.parametrize("name", APPLICABLE)
def test_istios_policy_applies_unchanged(tmp_path: Path, name: str) -> None:
    text = security_docs(name)
    assert text.strip(), name
    store = applied(tmp_path, name)
    kinds = {r.kind for r in store.resources()}
    assert kinds & {"AuthorizationPolicy", "PeerAuthentication"}


def test_a_jwt_policy_and_a_custom_one_are_refused_by_name() -> None:
    with pytest.raises(ConfigError) as err:
        parse_text(security_docs("jwt"), "jwt.yaml")
    found = "\n".join(map(str, err.value.problems))
    assert "AuthorizationPolicy echo1/b: spec.rules[0].from[0].source.requestPrincipals: requestPrincipals " \
           "needs a request's JWT" in found
    assert "spec.rules[1].when[0].key: request.auth.claims[groups] needs a request's JWT" in found
    with pytest.raises(ConfigError) as err:
        parse_text(security_docs("custom-provider"), "custom.yaml")
    found = "\n".join(map(str, err.value.problems))
    assert "spec.action: CUSTOM (an external authorizer) is not implemented" in found
    assert "spec.provider: provider (an external authorizer for action CUSTOM) is not implemented" in found


def test_allow_by_principal_service_account_and_namespace(tmp_path: Path) -> None:
    store = applied(tmp_path, "allow-principal")
    http, grpc, tcp = named(store, B_TCP, "echo1/b")["rules"]
    assert tcp == {"from": [{"principals": {"values": [["exact", "cluster.local/ns/echo1/sa/a"]], "not": None}}],
                   "to": [{"ports": {"values": [["port", 19090]], "not": None}}], "when": [], "http_only": False}
    assert http["to"][0]["ports"]["values"] == [["port", 18080], ["port", 18085]]
    assert http["http_only"] and grpc["http_only"]     # paths and methods: nothing on TCP for ALLOW
    store = applied(tmp_path / "sa", "allow-serviceaccount")
    assert named(store, B_HTTP, "echo1/b")["rules"][0]["from"] == [
        {"principals": {"values": [["suffix", "/ns/echo1/sa/a"]], "not": None}}]
    store = applied(tmp_path / "ns", "allow-namespace")
    assert named(store, B_HTTP, "echo1/b")["rules"][2]["from"] == [
        {"namespaces": {"values": [["exact", "echo1"]], "not": None}}]


def test_trust_domains(tmp_path: Path) -> None:
    rules = named(applied(tmp_path, "allow-trust-domain"), B_HTTP, "echo1/b")["rules"]
    assert [r["from"][0]["principals"] for r in rules[:4]] == [
        {"values": [["prefix", "cluster.local/"]], "not": None},
        {"values": [["prefix", "bad.example.com/"]], "not": None},
        {"values": None, "not": [["prefix", "cluster.local/"]]},
        {"values": None, "not": [["prefix", "bad.example.com/"]]}]


def test_scopes_of_istios_policies(tmp_path: Path) -> None:
    store = applied(tmp_path, "deny-global", "workload-system-ns", "workload-ns", "workload-bad", "workload")
    found = {at: [p["name"] for p in entry["authz"]["policies"]] for at, entry in programs(store).items()
             if at[1] == "http"}
    assert found[B_HTTP] == ["echo1/policy-b", "echo1/policy-echo-all", "istio-system/policy-deny-system",
                             "istio-system/policy-system-b"]
    assert found[("echo1/a", "http", "echo1/a-v1")] == ["echo1/policy-echo-all", "istio-system/policy-deny-system"]
    assert found[("echo2/c", "http", "echo2/c-v1")] == ["istio-system/policy-deny-system"]
    deny = named(store, B_HTTP, "istio-system/policy-deny-system")
    assert deny["action"] == "DENY"
    assert deny["rules"][0]["to"] == [{"ports": {"values": [["port", 18080], ["port", 18085]], "not": None},
                                       "paths": {"values": [["prefix", "/global-deny"]],
                                                 "not": [["exact", "/global-deny/allow"]]}}]


def test_conditions(tmp_path: Path) -> None:
    store = applied(tmp_path, "conditions")
    def conditions(policy: str) -> list[dict[str, Any]]:
        return [c for r in named(store, B_HTTP, f"echo1/b-{policy}")["rules"] for c in r["when"]]
    assert conditions("request-headers") == [
        {"key": "request.headers[x-foo]", "values": [["exact", "foo"]], "not": None},
        {"key": "request.headers[x-foo]", "values": None, "not": [["exact", "bar"]]}]
    assert conditions("source-ip") == [{"key": "source.ip", "values": [["cidr", "10.10.0.1/32"]], "not": None},
                                       {"key": "source.ip", "values": None, "not": [["cidr", "10.10.1.1/32"]]}]
    assert conditions("source-trust-domain")[0] == {"key": "source.principal",
                                                    "values": [["prefix", "cluster.local/"]], "not": None}
    assert conditions("destination-port")[0]["values"] == [["port", 18080]]
    assert conditions("connection-sni")[0]["values"] == [["suffix", ".b.echo1.svc.cluster.local"]]


def test_paths_hosts_and_remote_addresses(tmp_path: Path) -> None:
    store = applied(tmp_path, "path-templating", "ingress-gateway", "not-host")
    [templates] = named(store, B_HTTP, "echo1/b")["rules"]
    assert templates["to"][0]["paths"]["values"] == [
        ["template", "/allow/admin/{**}"], ["template", "/foo/{*}/bar/{**}"], ["template", "/store/{**}/cart"]]
    assert named(store, B_HTTP, "echo1/allow-b")["rules"][0]["to"] == [
        {"hosts": {"values": None, "not": [["exact", "deny.b.com"]]}}]
    gateway = ("istio-system/istio-ingressgateway", "http", "istio-system/istio-ingressgateway-v1")
    hosts, split, remote, not_remote, attr = named(store, gateway, "istio-system/policy-b")["rules"]
    assert hosts["to"][0]["hosts"]["values"] == [["exact", "deny.b.com"], ["suffix", ".suffix.b.com"],
                                                 ["prefix", "prefix.b."]]
    assert [list(op) for op in split["to"]] == [["hosts"], ["paths"]]
    assert remote["from"] == [{"remoteIpBlocks": {"values": [["cidr", "172.17.72.46/32"],
                                                              ["cidr", "192.168.4.0/23"]], "not": None}}]
    assert not_remote["from"][0]["remoteIpBlocks"]["not"] == [["cidr", "172.23.240.0/22"]]
    assert attr["when"] == [{"key": "remote.ip", "values": [["cidr", "10.242.5.7/32"], ["cidr", "10.124.99.0/24"]],
                             "not": None}]


def test_plaintext_permissive_namespace_and_deny_without_principal(tmp_path: Path) -> None:
    store = applied(tmp_path, "plaintext")
    assert programs(store)[B_HTTP]["mtls"] == "PERMISSIVE"
    assert programs(store)[("echo2/c", "http", "echo2/c-v1")]["mtls"] == "STRICT"
    assert named(store, B_HTTP, "echo1/b")["rules"] == [
        {"from": [{"principals": {"values": None, "not": [["any"]]}}], "to": None, "when": [], "http_only": False}]


@pytest.mark.parametrize("mtls, override", [("STRICT", "PERMISSIVE"), ("PERMISSIVE", "DISABLE"),
                                            ("DISABLE", "UNSET")])
def test_istios_peer_authentication_reachability_policies(tmp_path: Path, mtls: str, override: str) -> None:
    found = {at: e["mtls"] for at, e in programs(applied(tmp_path, "global-peer-authn", mtls=mtls)).items()}
    assert set(found.values()) == {mtls}
    store = applied(tmp_path / "w", "workload-peer-authn-port-override", mtls=mtls, override=override)
    found = {at: e["mtls"] for at, e in programs(store).items()}
    expected = mtls if override == "UNSET" else override
    assert {found[("echo1/b", port, "echo1/b-v1")] for port in PORTS} == {expected}
    assert found[("echo1/a", "http", "echo1/a-v1")] == "STRICT"


def test_the_renderer_knows_every_expression_of_the_copied_files() -> None:
    for path in sorted(TESTDATA.glob("*.yaml.tmpl")):
        assert "{{" not in render(path.name.removesuffix(".yaml.tmpl")), path.name
