"""DestinationRule consistentHash and subsets (destinationrulehash.py): Istio's YAML
applied unchanged, what the snapshot tells the engine, Istio's own checks, refusals by
name, and the store's round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshnode.config import Store, compile_snapshot, parse_text, to_dict, validate_set

from test_config_destinationrule import SERVICES, problems, rule

pytestmark = pytest.mark.timeout(60)


def ports(*docs: str) -> dict[int, tuple[str, dict | None]]:
    resources = parse_text("---\n".join((SERVICES, *docs)), "c.yaml")
    validate_set(resources)
    [svc] = compile_snapshot(resources, "n1", 1)["services"]
    return {p["port"]: (p["balancer"], p.get("hash")) for p in svc["ports"]}


# Istio's documentation examples (DestinationRule reference), as published.
ISTIO_COOKIE = """\
host: ratings.prod.svc.cluster.local
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie:
        name: user
        ttl: 0s
"""


def test_istio_cookie_example_hashes_on_a_ring_by_default() -> None:
    assert ports(rule(ISTIO_COOKIE))[80] == (
        "ring-hash", {"key": "cookie", "name": "user", "path": "", "ttl_s": 0, "slots": 1024})


@pytest.mark.parametrize("body, expected", [
    ("{httpHeaderName: x-user, maglev: {tableSize: 7}}",
     ("maglev", {"key": "header", "name": "x-user", "slots": 7})),
    ("{maglev: {}, useSourceIp: true}", ("maglev", {"key": "source-ip", "slots": 65537})),
    ("{httpQueryParameterName: 'user id', ringHash: {minimumRingSize: 64}}",
     ("ring-hash", {"key": "query", "name": "user id", "slots": 64})),
    # Istio's deprecated spelling of the ring's size.
    ("{httpHeaderName: x-user, minimumRingSize: 2048}",
     ("ring-hash", {"key": "header", "name": "x-user", "slots": 2048})),
    ("{httpCookie: {name: s, path: /a, ttl: 1h}}",
     ("ring-hash", {"key": "cookie", "name": "s", "path": "/a", "ttl_s": 3600, "slots": 1024})),
    # No key (or useSourceIp false): the ring picks at random, as Envoy's does.
    ("{useSourceIp: false}", ("ring-hash", None)),
    ("{ringHash: {minimumRingSize: 0}}", ("ring-hash", None)),
])
def test_consistent_hash_becomes_the_engines_hash(body: str, expected: tuple) -> None:
    doc = rule(f"host: ratings\ntrafficPolicy: {{loadBalancer: {{consistentHash: {body}}}}}")
    assert ports(doc)[80] == expected


def test_a_port_level_consistent_hash_wins_over_the_rules_simple() -> None:
    doc = rule("""\
        host: ratings
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN}
          portLevelSettings:
          - port: {number: 9080}
            loadBalancer: {consistentHash: {httpHeaderName: x-user}}
        """)
    assert ports(doc) == {80: ("round-robin", None),
                          9080: ("ring-hash", {"key": "header", "name": "x-user", "slots": 1024})}


@pytest.mark.parametrize("body, says", [
    ("{httpCookie: {name: s}}", "consistentHash.httpCookie.ttl: required (Istio requires it)"),
    ("{httpCookie: {ttl: 1s}}", "consistentHash.httpCookie.name: required"),
    ("{httpCookie: {name: 'a;b', ttl: 1s}}", "httpCookie.name: 'a;b' is not a token"),
    ("{httpCookie: {name: s, ttl: 1s, path: 'a;b'}}", "httpCookie.path: must be at most 256"),
    ("{httpCookie: {name: s, ttl: soon}}", "httpCookie.ttl: 'soon' is not a duration"),
    ("{httpCookie: {name: s, ttl: 1s, attributes: [{name: SameSite, value: Lax}]}}",
     "httpCookie.attributes: attributes is not implemented yet"),
    ("{httpHeaderName: 'x user'}", "httpHeaderName: 'x user' is not a token"),
    ("{httpHeaderName: x, useSourceIp: true}", "useSourceIp: give one hash key, not"),
    ("{httpHeaderName: x, maglev: {tableSize: 65536}}", "tableSize: must be a prime number up to"),
    ("{httpHeaderName: x, maglev: {tableSize: 5000081}}", "tableSize: must be a prime number"),
    ("{httpHeaderName: x, ringHash: {minimumRingSize: 2000000}}",
     "minimumRingSize: must be between 0 and 1048576"),
    ("{httpHeaderName: x, ringHash: {}, maglev: {}}", "give one of ringHash, maglev"),
    ("{httpHeaderName: x, minimumRingSize: 8, maglev: {}}", "give one of ringHash, maglev"),
    ("{httpHeader: x}", "consistentHash.httpHeader: unknown field"),
])
def test_bad_consistent_hashes_are_refused_naming_the_field(body: str, says: str) -> None:
    found = problems(rule(f"host: ratings\ntrafficPolicy: {{loadBalancer: "
                          f"{{consistentHash: {body}}}}}"))
    assert any("spec.trafficPolicy.loadBalancer.consistentHash." in p and says in p
               for p in found), found


def test_simple_and_consistent_hash_together_are_refused() -> None:
    found = problems(rule("host: ratings\ntrafficPolicy: {loadBalancer: {simple: RANDOM, "
                          "consistentHash: {useSourceIp: true}}}"))
    assert any("loadBalancer.consistentHash: give simple or consistentHash, not both" in p
               for p in found), found


SUBSETS = """\
host: ratings
subsets:
- name: v1
  labels: {version: v1}
- name: v2
  labels: {version: v2, example.com/track: canary}
"""


def test_subsets_are_kept_and_shown_and_route_nothing(tmp_path: Path) -> None:
    assert ports(rule(SUBSETS)) == {80: ("p2c-ewma", None), 9080: ("p2c-ewma", None)}
    store = Store(tmp_path / "state")
    store.apply(parse_text(SERVICES + "---\n" + rule(SUBSETS), "x.yaml"), "cli")
    [got] = Store(tmp_path / "state").get("dr", "ratings", "prod")
    assert to_dict(got)["spec"] == yaml.safe_load(SUBSETS)
    assert parse_text(yaml.safe_dump(to_dict(got)), "again") == [got]


def test_a_hash_rule_round_trips_as_written(tmp_path: Path) -> None:
    body = ("host: ratings\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n"
            "      httpHeaderName: x-user\n      minimumRingSize: 2048\n")
    store = Store(tmp_path / "state")
    store.apply(parse_text(SERVICES + "---\n" + rule(body), "x.yaml"), "cli")
    [got] = Store(tmp_path / "state").get("dr", "ratings", "prod")
    assert to_dict(got)["spec"] == yaml.safe_load(body)


@pytest.mark.parametrize("subsets, says", [
    ("[{labels: {version: v1}}]", "spec.subsets[0].name: required"),
    ("[{name: V1}]", "spec.subsets[0].name: 'V1' is not a DNS label"),
    ("[{name: v1}, {name: v1}]", "spec.subsets[1].name: subset 'v1' is defined already"),
    ("[{name: v1, labels: {'bad key!': x}}]", "is not a valid key"),
    ("[{name: v1, labels: {version: 'v 1'}}]", "'v 1' is not a label value"),
    ("[{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]",
     "spec.subsets[0].trafficPolicy: trafficPolicy is not implemented: a subset's policy "
     "applies only to traffic routed to that subset"),
    ("{v1: {version: v1}}", "spec.subsets: must be a list"),
])
def test_bad_subsets_are_refused_naming_the_field(subsets: str, says: str) -> None:
    found = problems(rule(f"host: ratings\nsubsets: {subsets}"))
    assert any(says in p for p in found), found
