"""XBackendTrafficPolicy (Gateway API GEP-3388, experimental channel): the CRD's YAML taken
unchanged, its defaults, its bounds, refusals by name of what is not implemented, what a
Service's budget compiles to in the snapshot, the policy's status (TargetNotFound, the
oldest of two policies for one Service wins, the other Conflicted), and the store's round
trip."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from meshnode.config import ConfigError, Store, compile_snapshot, parse_text, to_dict, with_status

from routekit import SERVICES, resources_with, store_with

pytestmark = pytest.mark.timeout(60)


def policy(body: str = "", name: str = "budget", namespace: str = "shop",
           targets: str = '[{group: "", kind: Service, name: api}]') -> str:
    return (f"apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  targetRefs: {targets}\n"
            + textwrap.indent(textwrap.dedent(body).rstrip("\n") + "\n", "  ") * bool(body))


# The GEP's own example's retryConstraint (its sessionPersistence is refused below).
GEP_EXAMPLE = policy("""\
    retryConstraint:
      budget:
        percent: 20
        interval: 10s
      minRetryRate:
        count: 3
        interval: 1s
    """)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_text(text, "p.yaml")
    return [str(p) for p in err.value.problems]


def budget_of(resources: list, service: str = "api") -> dict | None:
    snap = compile_snapshot(resources, "node-a", 1)
    [svc] = [s for s in snap["services"] if s["name"] == service and s["namespace"] == "shop"]
    return svc.get("retry_budget")


def test_the_geps_example_applies_and_sets_the_services_budget() -> None:
    assert budget_of(resources_with(GEP_EXAMPLE)) == {
        "percent": 20, "interval_s": 10.0, "min_retries": 3, "min_retry_interval_s": 1.0}
    assert budget_of(resources_with(GEP_EXAMPLE), "api-v2") is None     # not targeted


@pytest.mark.parametrize("body", ["", "retryConstraint: {}",
                                  "retryConstraint: {budget: {}, minRetryRate: {}}"])
def test_what_is_left_out_takes_the_crds_defaults(body: str) -> None:
    resources = resources_with(policy(body))
    if body:
        assert budget_of(resources) == {"percent": 20, "interval_s": 10.0, "min_retries": 10,
                                        "min_retry_interval_s": 1.0}
    else:
        assert budget_of(resources) is None                 # no retryConstraint: sets nothing


def test_each_field_on_its_own() -> None:
    body = "retryConstraint: {budget: {percent: 0}, minRetryRate: {interval: 1h}}"
    assert budget_of(resources_with(policy(body))) == {
        "percent": 0, "interval_s": 10.0, "min_retries": 10, "min_retry_interval_s": 3600.0}
    body = "retryConstraint: {budget: {interval: 1m30s}, minRetryRate: {count: 1000000}}"
    assert budget_of(resources_with(policy(body))) == {
        "percent": 20, "interval_s": 90.0, "min_retries": 1000000, "min_retry_interval_s": 1.0}


@pytest.mark.parametrize("body, field, says", [
    ("retryConstraint: {budget: {percent: 101}}", "spec.retryConstraint.budget.percent",
     "between 0 and 100"),
    ("retryConstraint: {budget: {percent: -1}}", "spec.retryConstraint.budget.percent",
     "between 0 and 100"),
    ("retryConstraint: {budget: {percent: '20'}}", "spec.retryConstraint.budget.percent",
     "must be an integer"),
    ("retryConstraint: {budget: {interval: 500ms}}", "spec.retryConstraint.budget.interval",
     "less than one second"),
    ("retryConstraint: {budget: {interval: 61m}}", "spec.retryConstraint.budget.interval",
     "greater than one hour"),
    ("retryConstraint: {budget: {interval: 10}}", "spec.retryConstraint.budget.interval",
     "must be a string"),
    ("retryConstraint: {budget: {interval: '10'}}", "spec.retryConstraint.budget.interval",
     "GEP-2257"),
    ("retryConstraint: {budget: {interval: 1.5s}}", "spec.retryConstraint.budget.interval",
     "GEP-2257"),
    ("retryConstraint: {minRetryRate: {count: 0}}", "spec.retryConstraint.minRetryRate.count",
     "between 1 and 1000000"),
    ("retryConstraint: {minRetryRate: {count: 1000001}}", "spec.retryConstraint.minRetryRate.count",
     "between 1 and 1000000"),
    ("retryConstraint: {minRetryRate: {interval: 0s}}", "spec.retryConstraint.minRetryRate.interval",
     "cannot be 0s"),
    ("retryConstraint: {minRetryRate: {interval: 2h}}", "spec.retryConstraint.minRetryRate.interval",
     "greater than one hour"),
    ("retryConstraint: {budget: {ratio: 0.2}}", "spec.retryConstraint.budget.ratio", "unknown field"),
    ("retryConstraint: {retryBudget: {}}", "spec.retryConstraint.retryBudget", "unknown field"),
    ("retryConstraint: 20", "spec.retryConstraint", "must be a mapping"),
])
def test_bad_values_are_refused_naming_the_field(body: str, field: str, says: str) -> None:
    [found] = problems(policy(body))
    assert found.startswith(f"p.yaml: XBackendTrafficPolicy shop/budget: {field}: ") and says in found, found


def test_session_persistence_is_refused_by_name() -> None:
    [found] = problems(policy("sessionPersistence: {sessionName: foo, type: Cookie}"))
    assert "spec.sessionPersistence: sessionPersistence is not implemented yet" in found


@pytest.mark.parametrize("targets, field, says", [
    ("[]", "spec.targetRefs", "at least 1 item"),
    ('[{kind: Service, name: api}]', "spec.targetRefs[0].group", "required"),
    ('[{group: "", name: api}]', "spec.targetRefs[0].kind", "required"),
    ('[{group: multicluster.x-k8s.io, kind: ServiceImport, name: api}]', "spec.targetRefs[0]",
     "kind 'ServiceImport' is not implemented yet"),
    ('[{group: "", kind: Pod, name: api}]', "spec.targetRefs[0]", "kind 'Pod' is not implemented yet"),
    ('[{group: "", kind: Service, name: api}, {group: "", kind: Service, name: api}]',
     "spec.targetRefs[1].name", "a second targetRef to Service 'api'"),
    ("[" + ", ".join(f'{{group: "", kind: Service, name: s{i}}}' for i in range(17)) + "]",
     "spec.targetRefs", "at most 16"),
])
def test_target_refs_are_checked(targets: str, field: str, says: str) -> None:
    [found] = problems(policy("retryConstraint: {}", targets=targets))
    assert f": {field}: " in found and says in found, found


def test_the_document_is_checked_like_the_crd() -> None:
    missing = problems(policy().replace("  targetRefs:", "  other:"))
    assert any("spec.other: unknown field" in p for p in missing), missing
    assert any("spec.targetRefs: required" in p for p in missing), missing
    [version] = problems(GEP_EXAMPLE.replace("x-k8s.io/v1alpha1", "k8s.io/v1"))
    assert "apiVersion: must be 'gateway.networking.x-k8s.io/v1alpha1'" in version
    # A status (as `get -o yaml` prints it) is the controller's: ignored.
    with_status_doc = GEP_EXAMPLE + "status: {ancestors: []}\n"
    assert budget_of(resources_with(with_status_doc)) is not None


def status_of(store: Store, name: str) -> list[dict]:
    [p] = store.get("XBackendTrafficPolicy", name, "shop")
    return with_status(p, store.resources())["status"]["ancestors"]


def test_status_accepted_and_target_not_found(tmp_path: Path) -> None:
    store = store_with(tmp_path, policy("retryConstraint: {}", targets=(
        '[{group: "", kind: Service, name: api}, {group: "", kind: Service, name: gone}]')))
    api, gone = status_of(store, "budget")
    assert api["ancestorRef"] == {"group": "", "kind": "Service", "name": "api", "namespace": "shop"}
    assert api["controllerName"] == "meshnode.io/control"
    assert [(c["type"], c["status"], c["reason"]) for c in api["conditions"]] == [("Accepted", "True", "Accepted")]
    [cond] = gone["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "TargetNotFound")
    assert "Service shop/gone does not exist" in cond["message"]


def test_of_two_policies_for_one_service_the_oldest_wins(tmp_path: Path) -> None:
    """The newer policy is applied first under a name that sorts first: neither the order
    of names nor of documents decides, the creation time does."""
    old = policy("retryConstraint: {budget: {percent: 5}}", name="zz-old")
    new = policy("retryConstraint: {budget: {percent: 50}}", name="aa-new")
    store = store_with(tmp_path, old, new)
    assert budget_of(store.resources())["percent"] == 5
    [cond] = status_of(store, "aa-new")[0]["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "Conflicted")
    assert "XBackendTrafficPolicy shop/zz-old" in cond["message"]
    assert status_of(store, "zz-old")[0]["conditions"][0]["reason"] == "Accepted"
    # Applying the old one again keeps its creation time: it still wins.
    store.apply(parse_text(old.replace("percent: 5", "percent: 7"), "again.yaml"), "again.yaml")
    assert budget_of(store.resources())["percent"] == 7
    # Deleted, the other takes over.
    store.delete("XBackendTrafficPolicy", "zz-old", "shop")
    assert budget_of(store.resources())["percent"] == 50
    assert status_of(store, "aa-new")[0]["conditions"][0]["reason"] == "Accepted"


def test_a_policy_without_retry_constraint_conflicts_with_nothing(tmp_path: Path) -> None:
    store = store_with(tmp_path, policy(name="zz-empty"),
                       policy("retryConstraint: {budget: {percent: 50}}", name="aa-set"))
    assert budget_of(store.resources())["percent"] == 50
    assert status_of(store, "aa-set")[0]["conditions"][0]["reason"] == "Accepted"
    assert status_of(store, "zz-empty")[0]["conditions"][0]["reason"] == "Accepted"


def test_a_policy_in_another_namespace_does_not_reach_the_service() -> None:
    """targetRefs are local: the same name in another namespace is another Service."""
    other = policy("retryConstraint: {budget: {percent: 50}}", namespace="infra")
    assert budget_of(resources_with(other)) is None


def test_the_store_applies_gets_and_deletes_policies(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    version = store.apply(parse_text(SERVICES + "---\n" + GEP_EXAMPLE, "p.yaml"), "cli")
    reopened = Store(tmp_path / "state")        # read back from disk
    for kind in ("xbackendtrafficpolicies", "xbtrafficpolicy", "XBackendTrafficPolicy"):
        [got] = reopened.get(kind, namespace="shop")
    written = to_dict(got)
    assert written["metadata"].pop("creationTimestamp")
    assert written == yaml.safe_load(GEP_EXAMPLE)
    assert parse_text(yaml.safe_dump(to_dict(got)), "again.yaml") == [got]
    assert reopened.delete("xbtrafficpolicy", "budget", "shop") == version + 1
    assert reopened.get("XBackendTrafficPolicy") == []
