"""HTTPRoute's RequestRedirect, URLRewrite and backendRef filters in config: the spec's checks and
CEL rules, what is refused by name, values that could split a head refused, the round trip, and the
snapshot's settled redirect port."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from meshnode.config import compile_routes, parse_text, to_dict
from meshnode.config.routeparse import NOT_IMPLEMENTED
from routekit import parent, resources_with, route
from test_config_httproute import BASE, LABEL, problems, rule0

pytestmark = pytest.mark.timeout(60)


def with_rule(**changes: Any) -> str:
    """The base route with its first rule changed (a None value drops the field)."""
    doc = copy.deepcopy(BASE)
    rule = rule0(doc)
    for key, value in changes.items():
        if value is None:
            rule.pop(key, None)
        else:
            rule[key] = value
    return yaml.safe_dump(doc, sort_keys=False)


def redirect(**fields: Any) -> dict[str, Any]:
    return {"type": "RequestRedirect", "requestRedirect": fields}


def rewrite(**fields: Any) -> dict[str, Any]:
    return {"type": "URLRewrite", "urlRewrite": fields}


PREFIX = {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}
ONE_PREFIX = [{"path": {"type": "PathPrefix", "value": "/api"}}]


def only(text: str) -> tuple[str, str]:
    [problem] = problems(text)
    assert (problem.file, problem.resource) == ("route.yaml", LABEL)
    return problem.field, problem.message


@pytest.mark.parametrize("changes,field,fragment", [
    ({"filters": [redirect()]}, "spec.rules[0].backendRefs",
     "RequestRedirect filter must not be used together with backendRefs"),
    ({"filters": [redirect(), rewrite()], "backendRefs": None}, "spec.rules[0].filters",
     "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite"),
    ({"filters": [rewrite(path=PREFIX)], "matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}]},
     "spec.rules[0].matches",
     "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match"),
    ({"filters": [rewrite(path=PREFIX)], "matches": ONE_PREFIX * 2}, "spec.rules[0].matches",
     "exactly one PathPrefix match"),
    ({"filters": [redirect(path=PREFIX)], "backendRefs": None,
      "matches": [{"path": {"type": "Exact", "value": "/api"}}]}, "spec.rules[0].matches",
     "When using RequestRedirect filter with path.replacePrefixMatch"),
    ({"filters": [redirect(statusCode=200)], "backendRefs": None},
     "spec.rules[0].filters[0].requestRedirect.statusCode", "301, 302, 303, 307, 308"),
    ({"filters": [redirect(scheme="ftp")], "backendRefs": None},
     "spec.rules[0].filters[0].requestRedirect.scheme", "http, https"),
    ({"filters": [redirect(port=0)], "backendRefs": None},
     "spec.rules[0].filters[0].requestRedirect.port", "between 1 and 65535"),
    ({"filters": [redirect(hostname="a.example\r\nX-Evil: 1")], "backendRefs": None},
     "spec.rules[0].filters[0].requestRedirect.hostname", "is not a hostname"),
    ({"filters": [redirect(hostname="*.example.com")], "backendRefs": None},
     "spec.rules[0].filters[0].requestRedirect.hostname", "no wildcard"),
    ({"filters": [rewrite(hostname="Web.example")]},
     "spec.rules[0].filters[0].urlRewrite.hostname", "is not a hostname"),
    ({"filters": [rewrite(path={"type": "ReplaceFullPath", "replaceFullPath": "/a\r\nX-Evil: 1"})]},
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath", "is not a path meshnode writes"),
    ({"filters": [rewrite(path={"type": "ReplaceFullPath", "replaceFullPath": "/a?b=c"})]},
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath", "the query stays the request's"),
    ({"filters": [rewrite(path={"type": "ReplaceFullPath", "replaceFullPath": ""})]},
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath", "is not a path"),
    ({"filters": [rewrite(path={"type": "ReplaceFullPath"})]},
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
     "replaceFullPath must be specified when type is set to 'ReplaceFullPath'"),
    ({"filters": [rewrite(path={"type": "ReplaceFullPath", "replaceFullPath": "/a",
                                "replacePrefixMatch": "/b"})]},
     "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
     "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set"),
    ({"filters": [rewrite(path={"type": "ReplaceQuery", "replaceFullPath": "/a"})]},
     "spec.rules[0].filters[0].urlRewrite.path.type", "ReplaceFullPath, ReplacePrefixMatch"),
    ({"filters": [rewrite(hostname="h" * 60, path={"type": "ReplaceFullPath", "replaceFullPath": "/" + "a" * 1023}),
                  {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                      "add": [{"name": f"x-pad{i}", "value": "b" * 1000} for i in range(3)]}}]},
     "spec.rules[0]", "would add up to"),
])
def test_the_specs_rules_for_redirects_and_rewrites(changes: dict[str, Any], field: str, fragment: str) -> None:
    got_field, message = only(with_rule(**changes))
    assert got_field == field and fragment in message, (got_field, message)


@pytest.mark.parametrize("kind", NOT_IMPLEMENTED["backendRef filter types"])
def test_a_backend_refs_filter_types_beyond_header_modifiers_are_refused_by_name(kind: str) -> None:
    member = {"URLRewrite": "urlRewrite", "RequestRedirect": "requestRedirect", "RequestMirror": "requestMirror",
              "ExtensionRef": "extensionRef", "CORS": "cors", "ExternalAuth": "externalAuth"}[kind]
    backend = {"name": "web", "port": 8080, "filters": [{"type": kind, member: {}}]}
    assert only(with_rule(backendRefs=[backend])) == (
        "spec.rules[0].backendRefs[0].filters[0].type", f"{kind} on a backendRef is not implemented yet")


def test_a_backend_refs_header_modifier_is_checked_as_a_rules_is() -> None:
    backend = {"name": "web", "port": 8080, "filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "Host", "value": "x"}]}}]}
    field, message = only(with_rule(backendRefs=[backend]))
    assert field == "spec.rules[0].backendRefs[0].filters[0].requestHeaderModifier.set[0].name"
    assert "the node's to write" in message
    twice = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x"]}}
    field, message = only(with_rule(backendRefs=[{"name": "web", "port": 8080, "filters": [twice, twice]}]))
    assert (field, message) == ("spec.rules[0].backendRefs[0].filters[1].type",
                                "ResponseHeaderModifier filter cannot be repeated (also "
                                "spec.rules[0].backendRefs[0].filters[0])")


def test_redirect_rewrite_and_backend_filters_read_back_equal() -> None:
    texts = [
        with_rule(filters=[redirect(scheme="https", hostname="example.org", port=8443, statusCode=301,
                                    path=PREFIX)], backendRefs=None, matches=ONE_PREFIX),
        with_rule(filters=[rewrite(hostname="app.internal", path={"type": "ReplaceFullPath",
                                                                  "replaceFullPath": "/x"})],
                  backendRefs=[{"name": "web", "port": 8080, "filters": [
                      {"type": "RequestHeaderModifier",
                       "requestHeaderModifier": {"add": [{"name": "x-v", "value": "1"}]}}]}]),
    ]
    for text in texts:
        [route] = parse_text(text, "route.yaml")
        again = to_dict(route)
        [back] = parse_text(yaml.safe_dump(again), "again.yaml")
        assert back.spec == route.spec
    [route] = parse_text(with_rule(filters=[redirect()], backendRefs=None), "route.yaml")
    assert to_dict(route)["spec"]["rules"][0]["filters"] == [
        {"type": "RequestRedirect", "requestRedirect": {"statusCode": 302}}]  # the default, shown


@pytest.mark.parametrize("fields,service_port,port,scheme", [
    ({}, 80, None, "http"),                               # the Service port, 80: http's own
    ({}, 8080, 8080, "http"),                             # the Service port: the listener's
    ({"scheme": "https"}, 8080, None, "https"),           # https's own port, 443
    ({"port": 80, "scheme": "https"}, 80, 80, "https"),
    ({"port": 443}, 80, 443, "http"),
    ({"port": 8083}, 80, 8083, "http"),
])
def test_a_redirects_port_is_settled_as_the_spec_says(fields: dict[str, Any], service_port: int,
                                                       port: int | None, scheme: str) -> None:
    text = route("r", rules=[{"filters": [redirect(**fields)]}], parents=[parent()])
    sets = compile_routes(resources_with(text))
    [rule] = [s["rules"][0] for s in sets if s["port"] == service_port]
    assert (rule["redirect"]["port"], rule["redirect"]["scheme"]) == (port, scheme)
    assert rule["backends"] == []
