"""DestinationRule (Istio, networking.istio.io): Istio's YAML applied unchanged, host
resolution relative to the rule's namespace, the balancer each service port gets in the
snapshot, refusals by name of what is not implemented, and the store's round trip."""
from __future__ import annotations

import textwrap
from functools import partial
from pathlib import Path

import pytest
import yaml

from meshnode.config import ConfigError, Store, compile_snapshot, parse_text, to_dict, validate_set
from meshnode.config.destinationrule import NOT_IMPLEMENTED

pytestmark = pytest.mark.timeout(60)

SERVICES = textwrap.dedent("""\
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: ratings, namespace: prod}
    spec:
      selector: {app: ratings}
      ports: [{name: http, port: 80, protocol: HTTP}, {name: admin, port: 9080, protocol: HTTP}]
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Workload
    metadata: {name: ratings-1, namespace: prod}
    spec:
      address: 10.0.0.1
      ports: {http: 8080, admin: 9080}
      labels: {app: ratings}
    """)

# Istio's documentation example (DestinationRule reference), as published.
ISTIO_EXAMPLE = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata:
      name: bookinfo-ratings-port
      namespace: prod
    spec:
      host: ratings.prod.svc.cluster.local
      trafficPolicy: # Apply to all ports
        portLevelSettings:
        - port:
            number: 80
          loadBalancer:
            simple: LEAST_REQUEST
        - port:
            number: 9080
          loadBalancer:
            simple: ROUND_ROBIN
    """)


# Istio's documentation example (DestinationRule reference, "circuit breaker"), as
# published: its connectionPool (test_config_destinationrule_pool.py) and
# outlierDetection (test_config_resilience.py).
ISTIO_CIRCUIT_BREAKER = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata:
      name: reviews-cb-policy
      namespace: prod
    spec:
      host: ratings.prod.svc.cluster.local
      trafficPolicy:
        connectionPool:
          tcp:
            maxConnections: 100
            connectTimeout: 30ms
          http:
            http1MaxPendingRequests: 10
            maxRequestsPerConnection: 5
        outlierDetection:
          consecutive5xxErrors: 7
          interval: 5m
          baseEjectionTime: 15m
    """)


def rule(body: str, name: str = "ratings", namespace: str = "prod",
         api_version: str = "networking.istio.io/v1") -> str:
    return (f"apiVersion: {api_version}\nkind: DestinationRule\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
            + textwrap.indent(textwrap.dedent(body).rstrip("\n") + "\n", "  "))


def port_policy(key: str, *docs: str) -> dict[int, object]:
    """Each port's snapshot entry `key` (None: not there) for the ratings service of
    SERVICES under the resources `docs`."""
    resources = parse_text("---\n".join((SERVICES, *docs)), "c.yaml")
    validate_set(resources)
    [svc] = compile_snapshot(resources, "n1", 1)["services"]
    return {p["port"]: p.get(key) for p in svc["ports"]}


balancers = partial(port_policy, "balancer")


def stored_and_read_back(state: Path, doc: str) -> tuple[object, object]:
    """The one DestinationRule of `doc` as a store at `state` keeps it (after SERVICES),
    checked to be shown back as written, and as a store reopened from disk reads it."""
    store = Store(state)
    store.apply(parse_text(SERVICES + "---\n" + doc, "c.yaml"), "cli")
    [kept] = [r for r in store.resources() if r.KIND == "DestinationRule"]
    shown = to_dict(kept)
    shown["metadata"].pop("creationTimestamp")
    assert shown == yaml.safe_load(doc)
    [read] = [r for r in Store(state).resources() if r.KIND == "DestinationRule"]
    return kept, read


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resources = parse_text(text, "dr.yaml")
        validate_set(resources)
    return [str(p) for p in info.value.problems]


def test_the_default_is_peak_ewma_p2c() -> None:
    assert balancers() == {80: "p2c-ewma", 9080: "p2c-ewma"}


def test_istio_documentation_example_applies_unchanged() -> None:
    assert balancers(ISTIO_EXAMPLE) == {80: "least-request", 9080: "round-robin"}


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_every_version_istio_serves(version: str) -> None:
    doc = rule("host: ratings\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}",
               api_version=f"networking.istio.io/{version}")
    assert balancers(doc) == {80: "random", 9080: "random"}


@pytest.mark.parametrize("host", ["ratings", "ratings.prod", "ratings.prod.svc",
                                  "ratings.prod.svc.cluster.local"])
def test_host_resolves_relative_to_the_rules_namespace(host: str) -> None:
    doc = rule(f"host: {host}\ntrafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}")
    assert balancers(doc) == {80: "round-robin", 9080: "round-robin"}


@pytest.mark.parametrize("simple, balancer", [
    ("ROUND_ROBIN", "round-robin"), ("RANDOM", "random"), ("LEAST_REQUEST", "least-request"),
    ("LEAST_CONN", "least-request"), ("UNSPECIFIED", "p2c-ewma")])
def test_simple_names_the_engines_balancer(simple: str, balancer: str) -> None:
    doc = rule(f"host: ratings\ntrafficPolicy: {{loadBalancer: {{simple: {simple}}}}}")
    assert balancers(doc)[80] == balancer


def test_a_port_level_setting_wins_over_the_rules_own() -> None:
    doc = rule("""\
        host: ratings
        trafficPolicy:
          loadBalancer: {simple: RANDOM}
          portLevelSettings:
          - port: {number: 9080}
            loadBalancer: {simple: LEAST_REQUEST}
          - port: {number: 80}          # no loadBalancer: the rule's stands
        """)
    assert balancers(doc) == {80: "random", 9080: "least-request"}


def test_a_rule_for_a_service_that_does_not_exist_is_inert() -> None:
    doc = rule("host: nobody\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}")
    assert balancers(doc) == {80: "p2c-ewma", 9080: "p2c-ewma"}


def test_passthrough_is_refused_by_name() -> None:
    found = problems(rule("host: ratings\ntrafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}"))
    assert len(found) == 1
    assert found[0].startswith("dr.yaml: DestinationRule prod/ratings: "
                               "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH: ")
    assert "not implemented" in found[0]


def test_an_unknown_simple_is_refused_with_the_choices() -> None:
    [found] = problems(rule("host: ratings\ntrafficPolicy: {loadBalancer: {simple: FASTEST}}"))
    assert "spec.trafficPolicy.loadBalancer.simple" in found
    assert "ROUND_ROBIN" in found and "'FASTEST'" in found


NOT_IMPLEMENTED_DOCS = {
    ("spec", "exportTo"): "exportTo: ['.']",
    ("spec", "workloadSelector"): "workloadSelector: {matchLabels: {app: x}}",
    ("trafficPolicy", "tls"): "trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}",
    ("trafficPolicy", "tunnel"): "trafficPolicy: {tunnel: {targetHost: x, targetPort: 1}}",
    ("trafficPolicy", "proxyProtocol"): "trafficPolicy: {proxyProtocol: {version: V1}}",
    ("trafficPolicy", "retryBudget"): "trafficPolicy: {retryBudget: {percent: {value: 20}}}",
    ("loadBalancer", "localityLbSetting"):
        "trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: true}}}",
    ("loadBalancer", "warmupDurationSecs"):
        "trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 10s}}",
    ("loadBalancer", "warmup"): "trafficPolicy: {loadBalancer: {warmup: {duration: 10s}}}",
    ("portLevelSettings", "connectionPool"):
        "trafficPolicy: {portLevelSettings: [{port: {number: 80}, connectionPool: {}}]}",
    ("portLevelSettings", "outlierDetection"):
        "trafficPolicy: {portLevelSettings: [{port: {number: 80}, outlierDetection: {}}]}",
    ("portLevelSettings", "tls"):
        "trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: DISABLE}}]}",
}


def test_every_field_not_implemented_has_a_case_here() -> None:
    assert set(NOT_IMPLEMENTED_DOCS) == {(level, f) for level, fields in NOT_IMPLEMENTED.items()
                                         for f in fields}


@pytest.mark.parametrize("where", sorted(NOT_IMPLEMENTED_DOCS), ids="/".join)
def test_fields_not_implemented_are_refused_by_name(where: tuple[str, str]) -> None:
    found = problems(rule("host: ratings\n" + NOT_IMPLEMENTED_DOCS[where]))
    [line] = [p for p in found if f"{where[1]} is not implemented yet" in p]
    assert line.startswith("dr.yaml: DestinationRule prod/ratings: spec.")
    assert f".{where[1]}: " in line or f"[0].{where[1]}: " in line


@pytest.mark.parametrize("host, says", [
    ("ratings.other", "a rule in another namespace than its Service's"),
    ("ratings.other.svc.cluster.local", "put it in 'other'"),
    ("*.prod.svc.cluster.local", "wildcard hosts are not implemented yet"),
    ("example.com.", "does not name a Service"),
    ("a.b.c", "does not name a Service")])
def test_hosts_that_name_no_service_here_are_refused(host: str, says: str) -> None:
    [found] = problems(rule(f"host: '{host}'"))
    assert "spec.host" in found and says in found


def test_a_wrong_api_version_and_missing_host_are_named() -> None:
    found = problems(rule("trafficPolicy: {}", api_version="networking.istio.io/v2"))
    assert any("apiVersion: must be one of networking.istio.io/v1, " in p for p in found)
    assert any("spec.host: required" in p for p in found)


def test_of_several_rules_for_one_host_the_oldest_traffic_policy_wins(tmp_path: Path) -> None:
    # Istio merges them: the oldest's top-level trafficPolicy wins, later ones' are dropped.
    ticks = iter(range(1_700_000_000, 1_800_000_000))
    store = Store(tmp_path / "state", clock=lambda: float(next(ticks)))
    store.apply(parse_text(SERVICES, "s.yaml"), "cli")

    def apply_rule(name: str, simple: str) -> None:
        store.apply(parse_text(rule(f"host: ratings\ntrafficPolicy: {{loadBalancer: "
                                    f"{{simple: {simple}}}}}", name=name), "dr.yaml"), "cli")

    def balancer() -> str:
        [svc] = compile_snapshot(store.resources(), "n1", store.version)["services"]
        return svc["ports"][0]["balancer"]

    apply_rule("zz-first", "RANDOM")
    apply_rule("aa-second", "ROUND_ROBIN")      # newer, though first by name
    assert balancer() == "random"
    apply_rule("zz-first", "LEAST_REQUEST")     # changed, still the oldest: it keeps its time
    assert balancer() == "least-request"
    first = store.get("dr", "zz-first", "prod")[0]
    assert to_dict(first)["metadata"]["creationTimestamp"] == "2023-11-14T22:13:21.000000Z"
    store.delete("DestinationRule", "zz-first", "prod")
    assert balancer() == "round-robin"
    # One without a trafficPolicy governs nothing, whatever its age.
    apply_rule("bb-third", "RANDOM")
    store.apply(parse_text(rule("host: ratings", name="a-older-empty"), "dr.yaml"), "cli")
    assert balancer() == "round-robin"


def test_the_store_keeps_applies_gets_and_deletes_rules(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    doc = rule("host: reviews\ntrafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}",
               name="reviews", api_version="networking.istio.io/v1beta1")
    version = store.apply(parse_text(SERVICES + "---\n" + doc + "---\n" + ISTIO_EXAMPLE, "x.yaml"),
                          "cli")
    reopened = Store(tmp_path / "state")        # read back from disk
    got = reopened.get("destinationrules", namespace="prod")
    assert [r.name for r in got] == ["bookinfo-ratings-port", "reviews"]
    assert reopened.get("dr", "reviews", "prod") == [got[1]]
    created = got[1].created
    assert created                              # stamped by the store
    assert to_dict(got[1]) == {
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "prod", "creationTimestamp": created},
        "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}}
    assert parse_text(yaml.safe_dump(to_dict(got[0])), "again") == [got[0]]
    assert reopened.delete("DestinationRule", "reviews", "prod") == version + 1
    assert [r.name for r in reopened.get("DestinationRule")] == ["bookinfo-ratings-port"]
