"""FaultInjection (meshnode.io, Istio's HTTPFaultInjection fields) and the HTTPRoute
ExtensionRef filter that names it: Istio's fault YAML taken unchanged, Istio's checks,
refusals by name of what is not implemented, what a rule's fault compiles to in the
snapshot, the route's ResolvedRefs status when the filter names nothing, and the
store's round trip."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from meshnode.config import ConfigError, Store, compile_snapshot, parse_text, route_status, to_dict, validate_set
from meshnode.config.fault import NOT_IMPLEMENTED

from routekit import SERVICES

pytestmark = pytest.mark.timeout(60)


def fault(body: str, name: str = "flaky", namespace: str = "shop") -> str:
    return (f"apiVersion: meshnode.io/v1alpha1\nkind: FaultInjection\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
            + textwrap.indent(textwrap.dedent(body).rstrip("\n") + "\n", "  "))


# Istio's fault examples (VirtualService reference, HTTPFaultInjection), as the spec.
ISTIO_DELAY = fault("""\
    delay:
      percentage:
        value: 0.1
      fixedDelay: 5s
    """)
ISTIO_ABORT = fault("""\
    abort:
      percentage:
        value: 0.1
      httpStatus: 400
    """, name="abort")


def route(filter_ref: str = "{group: meshnode.io, kind: FaultInjection, name: flaky}") -> str:
    return textwrap.dedent(f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: api, namespace: shop}}
        spec:
          parentRefs: [{{group: "", kind: Service, name: api, port: 80}}]
          rules:
          - filters:
            - type: ExtensionRef
              extensionRef: {filter_ref}
            backendRefs: [{{name: api, port: 80}}]
          - matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
            backendRefs: [{{name: api, port: 80}}]
        """)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_set(parse_text(text, "f.yaml"))
    return [str(p) for p in info.value.problems]


def compiled_faults(*docs: str) -> list[object]:
    resources = parse_text("---\n".join((SERVICES, *docs)), "c.yaml")
    validate_set(resources)
    [route_set] = compile_snapshot(resources, "n1", 1)["http_routes"]
    return [rule["fault"] for rule in route_set["rules"]]


def resolved_refs(*docs: str) -> dict[str, str]:
    resources = parse_text("---\n".join((SERVICES, *docs)), "c.yaml")
    [found] = [r for r in resources if r.kind == "HTTPRoute"]
    [parent] = route_status(found, resources)["parents"]
    return parent["conditions"][1]


def test_istio_fault_examples_apply_unchanged_and_read_back_equal() -> None:
    resources = parse_text(ISTIO_DELAY + "---\n" + ISTIO_ABORT, "f.yaml")
    validate_set(resources)
    delay, abort = resources
    assert (delay.spec.delay.fixed_delay_s, delay.spec.delay.percentage, delay.spec.abort) == (5.0, 0.1, None)
    assert (abort.spec.abort.http_status, abort.spec.abort.percentage) == (400, 0.1)
    for r in resources:
        assert parse_text(yaml.safe_dump(to_dict(r)), "again") == [r]


def test_a_rules_fault_compiles_to_what_the_data_plane_draws() -> None:
    both = fault("delay: {fixedDelay: 250ms, percentage: {value: 50}}\n"
                 "abort: {httpStatus: 503, percentage: {value: 12.5}}")
    assert compiled_faults(route(), both) == [
        {"delay_s": 0.25, "delay_percent": 50.0, "abort_status": 503, "abort_percent": 12.5,
         "unresolved": False}, None]
    # A percentage left out: Istio's default, no request gets that fault.
    assert compiled_faults(route(), fault("abort: {httpStatus: 418}")) == [
        {"delay_s": 0.0, "delay_percent": 0.0, "abort_status": 418, "abort_percent": 0.0,
         "unresolved": False}, None]


@pytest.mark.parametrize("ref, reason, says", [
    ("{group: meshnode.io, kind: FaultInjection, name: missing}", "BackendNotFound",
     "FaultInjection shop/missing does not exist"),
    ("{group: example.com, kind: RateLimit, name: flaky}", "InvalidKind",
     "kind 'RateLimit' of group 'example.com' is not a filter meshnode has"),
    ("{group: '', kind: FaultInjection, name: flaky}", "InvalidKind", "of group ''")])
def test_a_filter_that_does_not_resolve_answers_500_and_says_why(ref: str, reason: str, says: str) -> None:
    ok = fault("abort: {httpStatus: 503, percentage: {value: 100}}")
    assert compiled_faults(route(ref), ok) == [{"unresolved": True}, None]
    condition = resolved_refs(route(ref), ok)
    assert (condition["status"], condition["reason"]) == ("False", reason)
    assert condition["message"].startswith("spec.rules[0].filters[0].extensionRef: ")
    assert says in condition["message"]


def test_a_filter_that_resolves_leaves_resolved_refs_true() -> None:
    condition = resolved_refs(route(), fault("delay: {fixedDelay: 1s}"))
    assert (condition["status"], condition["reason"]) == ("True", "ResolvedRefs")


def test_a_fault_in_another_namespace_is_not_the_routes() -> None:
    elsewhere = fault("delay: {fixedDelay: 1s}", namespace="infra")
    assert compiled_faults(route(), elsewhere) == [{"unresolved": True}, None]


def test_the_route_with_its_filter_reads_back_equal() -> None:
    [r] = parse_text(route(), "r.yaml")
    assert to_dict(r)["spec"]["rules"][0]["filters"] == [
        {"type": "ExtensionRef",
         "extensionRef": {"group": "meshnode.io", "kind": "FaultInjection", "name": "flaky"}}]
    assert parse_text(yaml.safe_dump(to_dict(r)), "again") == [r]


NOT_IMPLEMENTED_DOCS = {
    ("delay", "exponentialDelay"): "delay: {exponentialDelay: 1s}",
    ("delay", "percent"): "delay: {fixedDelay: 1s, percent: 10}",
    ("abort", "grpcStatus"): "abort: {grpcStatus: UNAVAILABLE}",
    ("abort", "http2Error"): "abort: {http2Error: CANCEL}",
}


def test_every_field_not_implemented_has_a_case_here() -> None:
    assert set(NOT_IMPLEMENTED_DOCS) == {(level, f) for level, fields in NOT_IMPLEMENTED.items()
                                         for f in fields}


@pytest.mark.parametrize("where", sorted(NOT_IMPLEMENTED_DOCS), ids="/".join)
def test_fields_not_implemented_are_refused_by_name(where: tuple[str, str]) -> None:
    found = problems(fault(NOT_IMPLEMENTED_DOCS[where]))
    assert any(p.startswith(f"f.yaml: FaultInjection shop/flaky: spec.{where[0]}.{where[1]}: "
                            f"{where[1]} is not implemented") for p in found), found


@pytest.mark.parametrize("body, field, says", [
    ("{}", "spec", "a delay, an abort or both"),
    ("delay: {percentage: {value: 5}}", "spec.delay.fixedDelay", "required"),
    ("delay: {fixedDelay: 500us}", "spec.delay.fixedDelay", "from 1ms to 24h"),
    ("delay: {fixedDelay: 1500us}", "spec.delay.fixedDelay", "whole milliseconds"),
    ("delay: {fixedDelay: 25h}", "spec.delay.fixedDelay", "from 1ms to 24h"),
    ("delay: {fixedDelay: soon}", "spec.delay.fixedDelay", "is not a duration"),
    ("abort: {httpStatus: 199}", "spec.abort.httpStatus", "between 200 and 599"),
    ("abort: {httpStatus: 600}", "spec.abort.httpStatus", "between 200 and 599"),
    ("abort: {httpStatus: 204}", "spec.abort.httpStatus", "an abort with 204 (an answer without "
                                                          "content) is not implemented"),
    ("abort: {httpStatus: '503'}", "spec.abort.httpStatus", "must be an integer"),
    ("abort: {httpStatus: 503, percentage: {value: 100.5}}", "spec.abort.percentage.value",
     "neither 0 nor from 0.0001 to 100"),
    ("abort: {httpStatus: 503, percentage: {value: 0.00001}}", "spec.abort.percentage.value",
     "neither 0 nor"),
    ("abort: {httpStatus: 503, percentage: {value: .nan}}", "spec.abort.percentage.value",
     "must be a number"),
    ("abort: {httpStatus: 503, percentage: {value: true}}", "spec.abort.percentage.value",
     "must be a number"),
    ("abort: {httpStatus: 503, percentage: 50}", "spec.abort.percentage", "must be a mapping"),
    ("abort: {httpStatus: 503}\nretries: 3", "spec.retries", "unknown field")])
def test_bad_faults_are_refused_naming_the_field(body: str, field: str, says: str) -> None:
    found = problems(fault(body))
    assert any(p.startswith(f"f.yaml: FaultInjection shop/flaky: {field}: ") and says in p
               for p in found), found


def test_an_extension_ref_names_group_kind_and_name_and_is_not_repeated_yet() -> None:
    [missing] = problems(route("{kind: FaultInjection, name: flaky}"))
    assert "spec.rules[0].filters[0].extensionRef.group: required" in missing
    twice = route().replace(
        "    backendRefs: [{name: api, port: 80}]\n",
        "    - type: ExtensionRef\n"
        "      extensionRef: {group: meshnode.io, kind: FaultInjection, name: other}\n"
        "    backendRefs: [{name: api, port: 80}]\n", 1)
    [found] = problems(twice)
    assert "spec.rules[0].filters[1].type" in found
    assert "a second ExtensionRef filter in one rule is not implemented yet" in found


def test_the_store_applies_gets_and_deletes_faults(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    version = store.apply(parse_text(ISTIO_DELAY + "---\n" + ISTIO_ABORT, "f.yaml"), "cli")
    reopened = Store(tmp_path / "state")        # read back from disk
    got = reopened.get("faultinjections", namespace="shop")
    assert [r.name for r in got] == ["abort", "flaky"]
    assert to_dict(got[1]) == {
        "apiVersion": "meshnode.io/v1alpha1", "kind": "FaultInjection",
        "metadata": {"name": "flaky", "namespace": "shop"},
        "spec": {"delay": {"fixedDelay": "5s", "percentage": {"value": 0.1}}}}
    assert reopened.delete("FaultInjection", "abort", "shop") == version + 1
    assert [r.name for r in reopened.get("FaultInjection")] == ["flaky"]
