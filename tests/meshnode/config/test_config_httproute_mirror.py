"""HTTPRoute RequestMirror filters: checked as Gateway API v1 says (backendRef, percent or
fraction), repeatable up to the data plane's bound, read back as written, compiled into
the snapshot's rules, and an unresolved mirror reported in the route's status."""
from __future__ import annotations

from typing import Any

import pytest

from meshnode.config import compile_routes, parse_text, to_dict
from meshnode.config.routestatus import route_status
from routekit import backend, resources_with, route
from test_config_httproute import edited, problems, setter

pytestmark = pytest.mark.timeout(60)

R = "spec.rules.0"


def mirror(name: str = "api-v2", port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": name, "port": port}, **extra}}


def test_mirrors_with_percent_fraction_or_neither_read_back_as_written() -> None:
    filters = [mirror(percent=20), mirror("web", 8080, fraction={"numerator": 1, "denominator": 3}),
               mirror("web", 8080, fraction={"numerator": 5}), mirror("cache")]
    [parsed] = parse_text(edited(setter(f"{R}.filters", filters)), "route.yaml")
    got = [(f.mirror.backend.name, f.mirror.numerator, f.mirror.denominator)
           for f in parsed.spec.rules[0].filters]
    assert got == [("api-v2", 20, 100), ("web", 1, 3), ("web", 5, 100), ("cache", 100, 100)]
    written = to_dict(parsed)["spec"]["rules"][0]["filters"]
    assert written[0]["requestMirror"] == {"backendRef": {"group": "", "kind": "Service", "name": "api-v2",
                                                          "port": 80}, "percent": 20}
    assert written[2]["requestMirror"]["fraction"] == {"numerator": 5, "denominator": 100}
    assert "percent" not in written[3]["requestMirror"] and "fraction" not in written[3]["requestMirror"]


@pytest.mark.parametrize("fields, at, fragment", [
    ({"percent": 20, "fraction": {"numerator": 1}}, "", "percent and fraction are exclusive"),
    ({"percent": 101}, ".percent", "between 0 and 100"),
    ({"fraction": {"numerator": 4, "denominator": 3}}, ".fraction", "less than or equal to denominator"),
    ({"fraction": {"numerator": 1, "denominator": 0}}, ".fraction.denominator", "between 1 and"),
    ({"fraction": {"denominator": 3}}, ".fraction.numerator", "required"),
])
def test_bad_percentages_are_refused_naming_the_field(fields: dict[str, Any], at: str, fragment: str) -> None:
    [problem] = problems(edited(setter(f"{R}.filters", [mirror(**fields)])))
    assert problem.field == "spec.rules[0].filters[0].requestMirror" + at
    assert fragment in problem.message, problem.message


def test_a_mirror_backend_ref_has_no_weight_and_needs_its_port() -> None:
    with_weight = mirror()
    with_weight["requestMirror"]["backendRef"]["weight"] = 1
    [problem] = problems(edited(setter(f"{R}.filters", [with_weight])))
    assert problem.field == "spec.rules[0].filters[0].requestMirror.backendRef.weight"
    no_port = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "x"}}}
    [problem] = problems(edited(setter(f"{R}.filters", [no_port])))
    assert problem.field == "spec.rules[0].filters[0].requestMirror.backendRef.port"


def test_more_mirrors_than_the_data_plane_feeds_are_refused() -> None:
    [problem] = problems(edited(setter(f"{R}.filters", [mirror()] * 5)))
    assert problem.field == "spec.rules[0].filters[4].type"
    assert "at most 4 RequestMirror filters" in problem.message


def test_mirrors_compile_into_the_rule_and_an_unresolved_one_is_left_out_and_reported() -> None:
    text = route("api", rules=[{"filters": [mirror(percent=10), mirror("gone"),
                                            mirror(fraction={"numerator": 1, "denominator": 8})],
                                "backendRefs": [backend()]}])
    resources = resources_with(text)
    [chosen] = compile_routes(resources)
    assert chosen["rules"][0]["mirrors"] == [
        {"service": "shop/api-v2", "port": 80, "numerator": 10, "denominator": 100},
        {"service": "shop/api-v2", "port": 80, "numerator": 1, "denominator": 8}]
    [parent] = route_status(next(r for r in resources if r.kind == "HTTPRoute"), resources)["parents"]
    refs = next(c for c in parent["conditions"] if c["type"] == "ResolvedRefs")
    assert refs["status"] == "False" and refs["reason"] == "BackendNotFound"
    assert "spec.rules[0].filters[1].requestMirror.backendRef: Service shop/gone does not exist" in refs["message"]
