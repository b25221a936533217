"""Rollout documents (meshnode.config.rolloutparse): what is read, what is written back,
and what is refused by name: Flagger's fields meshnode does not implement, bad values,
and a config where the rollout cannot route (a missing Service, a user's HTTPRoute on
its target)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from meshnode.config import ConfigError, from_dict, load_path, parse_text, to_dict, validate_set
from meshnode.config.load import DEFAULT_CONFIG

pytestmark = pytest.mark.timeout(30)

BASE: dict[str, Any] = {
    "apiVersion": "meshnode.io/v1alpha1", "kind": "Rollout",
    "metadata": {"name": "backend", "namespace": "demo"},
    "spec": {"targetRef": {"kind": "Service", "name": "backend"}, "service": {"port": 8080},
             "stable": {"name": "backend-v1"}, "canary": {"name": "backend-v2"},
             "analysis": {"interval": "1s", "threshold": 2, "stepWeight": 25, "maxWeight": 50,
                          "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}},
                                      {"name": "request-duration", "thresholdRange": {"max": 500},
                                       "interval": "30s"}],
                          "webhooks": [{"name": "smoke", "type": "pre-rollout",
                                        "url": "http://127.0.0.1:9/", "timeout": "2s"}]}}}
VERSIONS = "\n---\n".join(f"""\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata: {{name: backend-{v}, namespace: demo}}
spec:
  selector: {{app: backend, version: {v}}}
  ports: [{{name: http, port: 8080, protocol: HTTP}}]""" for v in ("v1", "v2"))


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(yaml.safe_dump(doc), "r.yaml")
    return [f"{p.field}: {p.message}" for p in info.value.problems]


def changed(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    at = doc
    for key in parents:
        at = at[int(key)] if key.isdigit() else at[key]
    at[last] = value
    return doc


def test_a_rollout_is_read_with_its_steps_and_written_back_equal() -> None:
    [rollout] = parse_text(yaml.safe_dump(BASE), "r.yaml")
    assert rollout.spec.analysis.weights() == (25, 50)
    assert rollout.spec.analysis.metrics[1].interval == "30s"
    assert rollout.spec.analysis.webhooks[0].timeout == "2s"
    assert from_dict(to_dict(rollout)) == rollout
    steps = changed("spec.analysis", {"stepWeights": [1, 5, 30]})
    [stepped] = parse_text(yaml.safe_dump(steps), "r.yaml")
    assert stepped.spec.analysis.weights() == (1, 5, 30) and stepped.spec.analysis.min_requests == 1


@pytest.mark.parametrize("path,value,expected", [
    ("spec.suspend", True, "spec.suspend: suspend is not implemented: pause and resume"),
    ("spec.analysis.iterations", 10, "spec.analysis.iterations: iterations is not implemented: Blue/Green"),
    ("spec.analysis.match", [], "spec.analysis.match: match is not implemented: A/B"),
    ("spec.analysis.mirror", True, "spec.analysis.mirror: mirror is not implemented"),
    ("spec.analysis.sessionAffinity", {}, "spec.analysis.sessionAffinity: sessionAffinity is not"),
    ("spec.canary", {"name": "backend", "subset": "v2"}, "spec.canary.subset: subset is not "
                                                         "implemented: DestinationRule subsets"),
    ("spec.analysis.metrics", [{"name": "error-rate", "thresholdRange": {"max": 1}}],
     "spec.analysis.metrics[0].name: 'error-rate' is not implemented"),
    ("spec.analysis.metrics", [{"name": "request-duration", "templateRef": {"name": "x"},
                                "thresholdRange": {"max": 1}}],
     "spec.analysis.metrics[0].templateRef: templateRef is not implemented"),
    ("spec.analysis.webhooks", [{"name": "x", "type": "confirm-rollout", "url": "http://a/"}],
     "spec.analysis.webhooks[0].type: confirm-rollout is meshnode deploys nothing"),
    ("spec.analysis.webhooks", [{"name": "x", "type": "rollout", "url": "ftp://a/"}],
     "spec.analysis.webhooks[0].url: 'ftp://a/' is not an http:// or https:// URL"),
    ("spec.analysis.webhooks", [{"name": "x", "type": "rollout", "url": "http://a:80a/"}],
     "spec.analysis.webhooks[0].url: 'http://a:80a/' is not an http:// or https:// URL"),
    ("spec.analysis.webhooks", [{"name": "x", "type": "rollout", "url": "http://a:65536/"}],
     "spec.analysis.webhooks[0].url: 'http://a:65536/' is not an http:// or https:// URL"),
    ("spec.analysis.stepWeights", [10, 5], "spec.analysis.stepWeights: must rise step by step"),
    ("spec.analysis.stepWeight", 60, "spec.analysis.stepWeight: 60 is above maxWeight (50)"),
    ("spec.analysis.maxWeight", 101, "spec.analysis.maxWeight: must be between 1 and 100"),
    ("spec.analysis.interval", "10ms", "spec.analysis.interval: must be between 100ms and 24h"),
    ("spec.analysis.metrics", [{"name": "request-success-rate", "thresholdRange": {"min": 120}}],
     "spec.analysis.metrics[0].thresholdRange: a success rate is a percentage"),
    ("spec.targetRef", {"kind": "Deployment", "name": "backend"}, "spec.targetRef.kind: must be Service"),
    ("spec.canary", {"name": "backend-v1"}, "spec.canary.name: 'backend-v1' is the stable Service"),
    ("spec.analysis.treshold", 1, "spec.analysis.treshold: unknown field (did you mean 'threshold'?)"),
])
def test_what_is_not_implemented_or_wrong_is_refused_by_name(path: str, value: Any, expected: str) -> None:
    found = problems(changed(path, value))
    assert any(p.startswith(expected) for p in found), found


def test_a_rollout_needs_its_services_and_no_other_route_on_its_target() -> None:
    base = load_path(DEFAULT_CONFIG)
    [rollout] = parse_text(yaml.safe_dump(BASE), "r.yaml")
    with pytest.raises(ConfigError) as info:
        validate_set([*base, rollout])
    assert "Service demo/backend-v1 does not exist" in str(info.value)
    versions = parse_text(VERSIONS, "v.yaml")
    validate_set([*base, *versions, rollout])
    user_route = parse_text(yaml.safe_dump({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "mine", "namespace": "demo"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "backend"}]}}), "u.yaml")
    with pytest.raises(ConfigError) as info:
        validate_set([*base, *versions, rollout, *user_route])
    assert "HTTPRoute demo/mine: spec.parentRefs: Service demo/backend is rolled out by " \
           "Rollout demo/backend" in str(info.value)
    second = from_dict({**BASE, "metadata": {"name": "other", "namespace": "demo"}})
    with pytest.raises(ConfigError) as info:
        validate_set([*base, *versions, rollout, second])
    assert "already the target of Rollout demo/backend" in str(info.value)
