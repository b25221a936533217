"""HTTPRoute validation: every field of the v1 spec is implemented or refused by name, with the spec's
own limits; the canonical form reads back equal."""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshnode.config import ConfigError, HTTPRoute, Problem, from_dict, load_file, parse_text, to_dict
from meshnode.config.httproute import BackendRef, PathMatch, RouteMatch, RouteRule, ValueMatch
from meshnode.config.routeparse import NOT_IMPLEMENTED

pytestmark = pytest.mark.timeout(60)

LABEL = "HTTPRoute demo/web"

BASE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 8080}],
        "hostnames": ["web.demo.svc", "*.example.com"],
        "rules": [{
            "name": "main",
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                         "headers": [{"name": "x-canary", "value": "1"}],
                         "queryParams": [{"name": "q", "value": "v"}],
                         "method": "GET"}],
            "filters": [
                {"type": "RequestHeaderModifier",
                 "requestHeaderModifier": {"set": [{"name": "x-a", "value": "a"}],
                                           "add": [{"name": "x-b", "value": "b"}], "remove": ["x-c"]}},
                {"type": "ResponseHeaderModifier",
                 "responseHeaderModifier": {"set": [{"name": "x-d", "value": "d"}]}},
            ],
            "backendRefs": [{"name": "web", "port": 8080, "weight": 90},
                            {"name": "web-v2", "namespace": "canary", "port": 8080, "weight": 10}],
            "timeouts": {"request": "10s", "backendRequest": "2s"},
            "retry": {"codes": [500, 503], "attempts": 3, "backoff": "100ms"},
        }],
    },
}


def edited(edit: Callable[[dict[str, Any]], object]) -> str:
    doc = copy.deepcopy(BASE)
    edit(doc)
    return yaml.safe_dump(doc, sort_keys=False)


def rule0(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rules"][0]  # type: ignore[no-any-return]


def match0(doc: dict[str, Any]) -> dict[str, Any]:
    return rule0(doc)["matches"][0]  # type: ignore[no-any-return]


def problems(text: str, file: str = "route.yaml") -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, file)
    return info.value.problems


def setter(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """An edit setting the field at a dotted path ("spec.rules.0.name") to `value` (an index one past
    a list's end appends)."""
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if isinstance(node, list) and int(last) == len(node):
            node.append(value)
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def dropper(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return edit


R = "spec.rules.0"
M = "spec.rules.0.matches.0"
F = "spec.rules.0.filters.0.requestHeaderModifier"
B = "spec.rules.0.backendRefs.0"

def _retry(field: str, value: object, message: str, at: str) -> tuple[str, Callable[[dict[str, Any]], None],
                                                                     str, str]:
    """A MISTAKES case: spec.rules[0].retry.`field` set to `value`, refused at that field
    (`at`: an item of it) with `message`."""
    return (f"retry {field} {value!r}", setter(f"{R}.retry.{field}", value), f"spec.rules[0].retry.{field}{at}",
            message)


# (case id, edit, field named, fragment of the message)
MISTAKES: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    ("apiVersion", setter("apiVersion", "gateway.networking.k8s.io/v1alpha2"), "apiVersion",
     "'gateway.networking.k8s.io/v1'"),
    ("no spec", dropper("spec"), "spec", "required"),
    ("metadata name", setter("metadata.name", "Web"), "metadata.name", "not a DNS subdomain"),
    ("metadata field", setter("metadata.uid", "1234"), "metadata.uid", "unknown field"),
    ("creationTimestamp", setter("metadata.creationTimestamp", "yesterday"), "metadata.creationTimestamp",
     "RFC 3339"),
    ("spec typo", setter("spec.parentRef", []), "spec.parentRef", "did you mean 'parentRefs'"),
    ("useDefaultGateways", setter("spec.useDefaultGateways", "All"), "spec.useDefaultGateways",
     "meshnode has no Gateways"),
    # parentRefs
    ("parent kind defaults to Gateway", setter("spec.parentRefs.0", {"name": "web"}), "spec.parentRefs[0].kind",
     "(kind defaults to Gateway)"),
    ("Gateway parent", setter("spec.parentRefs.0", {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                    "name": "gw"}),
     "spec.parentRefs[0].kind", "meshnode has no Gateways"),
    ("other parent kind", setter("spec.parentRefs.0.kind", "ServiceImport"), "spec.parentRefs[0].kind",
     "parent kind 'ServiceImport' is not supported"),
    ("Service parent needs the core group", dropper("spec.parentRefs.0.group"), "spec.parentRefs[0].group",
     "group defaults to gateway.networking.k8s.io"),
    ("parent in another group", setter("spec.parentRefs.0.group", "example.com"), "spec.parentRefs[0].group",
     "core group"),
    ("parent port", setter("spec.parentRefs.0.port", 0), "spec.parentRefs[0].port", "between 1 and 65535"),
    ("parent name", dropper("spec.parentRefs.0.name"), "spec.parentRefs[0].name", "required"),
    ("parent namespace", setter("spec.parentRefs.0.namespace", "Demo"), "spec.parentRefs[0].namespace",
     "not a DNS label"),
    ("parent sectionName", setter("spec.parentRefs.0.sectionName", "Bad_Name"), "spec.parentRefs[0].sectionName",
     "not a DNS subdomain"),
    ("parent field", setter("spec.parentRefs.0.colour", "red"), "spec.parentRefs[0].colour", "unknown field"),
    ("too many parents", setter("spec.parentRefs", [{"group": "", "kind": "Service", "name": f"s{i}"}
                                                    for i in range(33)]),
     "spec.parentRefs", "at most 32 items"),
    ("same parent twice", setter("spec.parentRefs.1", {"group": "core", "kind": "Service", "name": "web",
                                                       "namespace": "demo", "port": 8080}),
     "spec.parentRefs[1]", "must differ in sectionName or port"),
    ("one parent, port and no port", setter("spec.parentRefs.1", {"group": "", "kind": "Service", "name": "web"}),
     "spec.parentRefs[1]", "must all set sectionName or none, and port or none"),
    # hostnames
    ("hostname case", setter("spec.hostnames.0", "Web.demo"), "spec.hostnames[0]", "not a hostname"),
    ("hostname wildcard inside", setter("spec.hostnames.0", "a.*.com"), "spec.hostnames[0]", "not a hostname"),
    ("hostname IP", setter("spec.hostnames.0", "10.0.0.1"), "spec.hostnames[0]", "is an IP address"),
    ("too many hostnames", setter("spec.hostnames", [f"h{i}.example" for i in range(17)]), "spec.hostnames",
     "at most 16 items"),
    # rules
    ("no rules", setter("spec.rules", []), "spec.rules", "at least 1 rule"),
    ("too many rules", setter("spec.rules", [{} for _ in range(17)]), "spec.rules", "at most 16 items"),
    ("too many matches in all", setter("spec.rules", [{"matches": [{}] * 64}] * 3), "spec.rules",
     "at most 128"),
    ("too many matches in a rule", setter(f"{R}.matches", [{}] * 65), "spec.rules[0].matches", "at most 64"),
    ("rule name", setter(f"{R}.name", "Main"), "spec.rules[0].name", "not a DNS subdomain"),
    ("duplicate rule name", setter("spec.rules.1", {"name": "main"}), "spec.rules[1].name",
     "duplicate rule name 'main'"),
    # retry (HTTPRouteRetry's schema: GEP-1731)
    *(_retry(field, value, message, at) for field, value, at, message in (
        ("attempts", 0, "", "between 1 and"), ("attempts", "3", "", "must be an integer"),
        ("codes", [399], "[0]", "between 400 and 599"), ("codes", [500, 600], "[1]", "between 400 and 599"),
        ("codes", [503, 500, 503], "[2]", "duplicate code 503"), ("codes", 503, "", "must be a list"),
        ("backoff", "0.1s", "", "a Gateway API duration"), ("backoff", "25h", "", "longest backoff"),
        ("perTryTimeout", "1s", "", "unknown field"))),
    ("sessionPersistence", setter(f"{R}.sessionPersistence", {"type": "Cookie"}),
     "spec.rules[0].sessionPersistence", "sessionPersistence is not implemented yet"),
    ("rule field", setter(f"{R}.timeout", "1s"), "spec.rules[0].timeout", "did you mean 'timeouts'"),
    # matches: path
    ("path type", setter(f"{M}.path.type", "Prefix"), "spec.rules[0].matches[0].path.type",
     "must be one of Exact, PathPrefix, RegularExpression"),
    ("relative path", setter(f"{M}.path.value", "api"), "spec.rules[0].matches[0].path.value",
     "must be an absolute path"),
    ("path //", setter(f"{M}.path.value", "/a//b"), "spec.rules[0].matches[0].path.value", "'//'"),
    ("path /./", setter(f"{M}.path.value", "/a/./b"), "spec.rules[0].matches[0].path.value", "'/./'"),
    ("path /../", setter(f"{M}.path.value", "/a/../b"), "spec.rules[0].matches[0].path.value", "'/../'"),
    ("path %2f", setter(f"{M}.path.value", "/a%2fb"), "spec.rules[0].matches[0].path.value", "'%2f'"),
    ("path %2F", setter(f"{M}.path.value", "/a%2Fb"), "spec.rules[0].matches[0].path.value", "'%2F'"),
    ("path #", setter(f"{M}.path.value", "/a#b"), "spec.rules[0].matches[0].path.value", "'#'"),
    ("path ending /..", setter(f"{M}.path.value", "/a/.."), "spec.rules[0].matches[0].path.value",
     "must not end with '/..'"),
    ("path ending /.", setter(f"{M}.path.value", "/a/."), "spec.rules[0].matches[0].path.value",
     "must not end with '/.'"),
    ("path character", setter(f"{M}.path.value", "/a b"), "spec.rules[0].matches[0].path.value",
     "a character a path may not hold"),
    ("exact path character", setter(f"{M}.path", {"type": "Exact", "value": "/a?b"}),
     "spec.rules[0].matches[0].path.value", "a character a path may not hold"),
    ("long path", setter(f"{M}.path.value", "/" + "a" * 1024), "spec.rules[0].matches[0].path.value",
     "at most 1024"),
    ("path regex", setter(f"{M}.path", {"type": "RegularExpression", "value": "/a(b"}),
     "spec.rules[0].matches[0].path.value", "not a regular expression"),
    # matches: headers, query parameters, method
    ("header name", setter(f"{M}.headers.0.name", "x canary"), "spec.rules[0].matches[0].headers[0].name",
     "not a header name"),
    ("header value missing", dropper(f"{M}.headers.0.value"), "spec.rules[0].matches[0].headers[0].value",
     "required"),
    ("header value empty", setter(f"{M}.headers.0.value", ""), "spec.rules[0].matches[0].headers[0].value",
     "1 to 4096"),
    ("header value CRLF", setter(f"{M}.headers.0.value", "a\r\nx-b: c"),
     "spec.rules[0].matches[0].headers[0].value", "not a header value"),
    ("header match type", setter(f"{M}.headers.0.type", "Prefix"), "spec.rules[0].matches[0].headers[0].type",
     "must be one of Exact, RegularExpression"),
    ("header regex", setter(f"{M}.headers.0", {"type": "RegularExpression", "name": "x", "value": "[a"}),
     "spec.rules[0].matches[0].headers[0].value", "not a regular expression"),
    ("header twice", setter(f"{M}.headers", [{"name": "x-a", "value": "1"}, {"name": "x-a", "value": "2"}]),
     "spec.rules[0].matches[0].headers[1].name", "duplicate header name 'x-a'"),
    ("too many headers", setter(f"{M}.headers", [{"name": f"x-{i}", "value": "1"} for i in range(17)]),
     "spec.rules[0].matches[0].headers", "at most 16 items"),
    ("query name", setter(f"{M}.queryParams.0.name", "a=b"), "spec.rules[0].matches[0].queryParams[0].name",
     "not a header name"),
    ("query value", setter(f"{M}.queryParams.0.value", "v" * 1025),
     "spec.rules[0].matches[0].queryParams[0].value", "1 to 1024"),
    ("query value control character", setter(f"{M}.queryParams.0.value", "a\x01"),
     "spec.rules[0].matches[0].queryParams[0].value", "no control characters"),
    ("query twice", setter(f"{M}.queryParams", [{"name": "q", "value": "1"}, {"name": "q", "value": "2"}]),
     "spec.rules[0].matches[0].queryParams[1].name", "duplicate query parameter name 'q'"),
    ("query regex", setter(f"{M}.queryParams.0", {"type": "RegularExpression", "name": "q", "value": "*"}),
     "spec.rules[0].matches[0].queryParams[0].value", "not a regular expression"),
    ("method", setter(f"{M}.method", "get"), "spec.rules[0].matches[0].method", "must be one of GET, HEAD"),
    ("match field", setter(f"{M}.host", "a"), "spec.rules[0].matches[0].host", "unknown field"),
    # filters
    ("filter type", setter(f"{R}.filters.0.type", "HeaderModifier"), "spec.rules[0].filters[0].type",
     "must be one of RequestHeaderModifier"),
    ("filter settings missing", dropper(f"{F}"), "spec.rules[0].filters[0].requestHeaderModifier",
     "required when type is RequestHeaderModifier"),
    ("filter settings of another type", setter(f"{R}.filters.0.urlRewrite", {"hostname": "a"}),
     "spec.rules[0].filters[0].urlRewrite", "must be absent when type is RequestHeaderModifier"),
    ("filter repeated", setter(f"{R}.filters.1", {"type": "RequestHeaderModifier",
                                                  "requestHeaderModifier": {"remove": ["x-z"]}}),
     "spec.rules[0].filters[1].type", "RequestHeaderModifier filter cannot be repeated"),
    ("too many filters", setter(f"{R}.filters", [{"type": "RequestHeaderModifier",
                                                  "requestHeaderModifier": {}}] * 17),
     "spec.rules[0].filters", "at most 16 items"),
    ("header action twice", setter(f"{F}.add.0.name", "X-A"),
     "spec.rules[0].filters[0].requestHeaderModifier.add[0].name", "header 'X-A' already has an action"),
    ("header removed twice", setter(f"{F}.remove", ["x-c", "X-C"]),
     "spec.rules[0].filters[0].requestHeaderModifier.remove[1]", "already has an action"),
    ("set framing header", setter(f"{F}.set.0.name", "Content-Length"),
     "spec.rules[0].filters[0].requestHeaderModifier.set[0].name", "the node's to write"),
    ("remove Transfer-Encoding", setter(f"{F}.remove.0", "transfer-encoding"),
     "spec.rules[0].filters[0].requestHeaderModifier.remove[0]", "the node's to write"),
    ("set Host", setter(f"{F}.set.0.name", "Host"),
     "spec.rules[0].filters[0].requestHeaderModifier.set[0].name", "the node's to write"),
    ("set the client certificate header", setter(f"{F}.set.0.name", "X-Forwarded-Client-Cert"),
     "spec.rules[0].filters[0].requestHeaderModifier.set[0].name", "the node's to write"),
    ("header filter value CRLF", setter(f"{F}.set.0.value", "a\nb"),
     "spec.rules[0].filters[0].requestHeaderModifier.set[0].value", "not a header value"),
    ("header filter value missing", dropper(f"{F}.set.0.value"),
     "spec.rules[0].filters[0].requestHeaderModifier.set[0].value", "required"),
    ("too many sets", setter(f"{F}.set", [{"name": f"x-{i}", "value": "1"} for i in range(17)]),
     "spec.rules[0].filters[0].requestHeaderModifier.set", "at most 16 items"),
    # backendRefs
    ("Service backend without port", dropper(f"{B}.port"), "spec.rules[0].backendRefs[0].port",
     "required for a Service backend"),
    ("weight below 0", setter(f"{B}.weight", -1), "spec.rules[0].backendRefs[0].weight", "between 0 and 1000000"),
    ("weight above 1000000", setter(f"{B}.weight", 1_000_001), "spec.rules[0].backendRefs[0].weight",
     "between 0 and 1000000"),
    ("backend kind", setter(f"{B}.kind", "bad/kind"), "spec.rules[0].backendRefs[0].kind", "not a kind"),
    ("backend group", setter(f"{B}.group", "Example.com"), "spec.rules[0].backendRefs[0].group",
     "not an API group"),
    ("backend name", dropper(f"{B}.name"), "spec.rules[0].backendRefs[0].name", "required"),
    ("backend namespace", setter(f"{B}.namespace", "a.b"), "spec.rules[0].backendRefs[0].namespace",
     "not a DNS label"),
    ("too many backends", setter(f"{R}.backendRefs", [{"name": "web", "port": 80}] * 17),
     "spec.rules[0].backendRefs", "at most 16 items"),
    # timeouts
    ("timeout without unit", setter(f"{R}.timeouts.request", "10"), "spec.rules[0].timeouts.request",
     "not a Gateway API duration"),
    ("fractional timeout", setter(f"{R}.timeouts.request", "1.5s"), "spec.rules[0].timeouts.request",
     "not a Gateway API duration"),
    ("timeout in days", setter(f"{R}.timeouts.request", "1d"), "spec.rules[0].timeouts.request",
     "not a Gateway API duration"),
    ("timeout of six digits", setter(f"{R}.timeouts.request", "100000s"), "spec.rules[0].timeouts.request",
     "not a Gateway API duration"),
    ("timeout of five parts", setter(f"{R}.timeouts.request", "1h1m1s1ms1s"), "spec.rules[0].timeouts.request",
     "not a Gateway API duration"),
    ("timeout over a day", setter(f"{R}.timeouts", {"request": "24h1s"}), "spec.rules[0].timeouts.request",
     "longer than the longest timeout meshnode keeps, 24h"),
    ("backendRequest over request", setter(f"{R}.timeouts.backendRequest", "11s"),
     "spec.rules[0].timeouts.backendRequest", "cannot be longer than request timeout"),
    ("timeouts field", setter(f"{R}.timeouts.idle", "1s"), "spec.rules[0].timeouts.idle", "unknown field"),
]


@pytest.mark.parametrize("edit,field,fragment", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_resource_and_field(edit: Callable[[dict[str, Any]], object], field: str,
                                                    fragment: str) -> None:
    found = problems(edited(edit))
    matching = [p for p in found if p.field == field]
    assert matching, f"no problem at {field}: {found}"
    assert (matching[0].file, matching[0].resource) == ("route.yaml", LABEL if field != "metadata.name"
                                                        else "HTTPRoute demo/Web")
    assert fragment in matching[0].message, matching[0].message


@pytest.mark.parametrize("kind", NOT_IMPLEMENTED["filter types"])
def test_every_unimplemented_filter_type_is_refused_by_name(kind: str) -> None:
    member = {"URLRewrite": "urlRewrite", "RequestRedirect": "requestRedirect", "RequestMirror": "requestMirror",
              "ExtensionRef": "extensionRef", "CORS": "cors", "ExternalAuth": "externalAuth"}[kind]
    text = edited(setter(f"{R}.filters.1", {"type": kind, member: {}}))
    [problem] = problems(text)
    assert (problem.field, problem.message) == ("spec.rules[0].filters[1].type", f"{kind} is not implemented yet")


def test_the_base_route_is_valid_and_reads_back_equal() -> None:
    [route] = parse_text(edited(lambda doc: None), "route.yaml")
    assert isinstance(route, HTTPRoute) and route.label == LABEL
    rule = route.spec.rules[0]
    assert rule.matches == (RouteMatch(PathMatch("PathPrefix", "/api"), (ValueMatch("x-canary", "1"),),
                                       (ValueMatch("q", "v"),), "GET"),)
    assert rule.backend_refs[1] == BackendRef("web-v2", "", "Service", "canary", 8080, 10)
    assert rule.timeouts is not None and (rule.timeouts.request_s, rule.timeouts.backend_request_s) == (10.0, 2.0)
    assert rule.retry is not None and (rule.retry.codes, rule.retry.attempts, rule.retry.backoff_s) == (
        (500, 503), 3, 0.1)
    assert route.spec.hostnames == ("web.demo.svc", "*.example.com")
    again = from_dict(to_dict(route))
    assert again == route
    assert parse_text(yaml.safe_dump(to_dict(route)), "again.yaml") == [route]


def test_defaults_are_the_specs_and_are_shown() -> None:
    text = yaml.safe_dump({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "web"}],
                 "rules": [{"matches": [{"headers": [{"name": "x", "value": "1"}]}, {"path": {"type": "Exact"}}],
                            "backendRefs": [{"name": "web", "port": 80}]}]}})
    [route] = parse_text(text, "r.yaml")
    shown = to_dict(route)
    assert shown["apiVersion"] == "gateway.networking.k8s.io/v1"  # v1beta1 serves the same schema
    assert shown["metadata"] == {"name": "web", "namespace": "default"}
    assert shown["spec"]["parentRefs"] == [{"group": "core", "kind": "Service", "name": "web"}]  # as written
    assert shown["spec"]["rules"] == [{
        "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                     "headers": [{"type": "Exact", "name": "x", "value": "1"}]},
                    {"path": {"type": "Exact", "value": "/"}}],
        "backendRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 1}]}]
    # No rules at all: one rule matching every request, with no backends (every request 500).
    [bare] = parse_text(text.replace("rules:", "colour:").split("colour:")[0], "r.yaml")
    assert bare.spec.rules == (RouteRule(),)
    assert to_dict(bare)["spec"]["rules"] == [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]


def test_values_are_kept_as_written() -> None:
    # GEP-2257: an implementation must not rewrite a duration it was given.
    text = edited(setter(f"{R}.timeouts", {"request": "90s", "backendRequest": "0s"}))
    [route] = parse_text(text, "r.yaml")
    assert to_dict(route)["spec"]["rules"][0]["timeouts"] == {"request": "90s", "backendRequest": "0s"}
    assert route.spec.rules[0].timeouts.backend_request_s is None  # type: ignore[union-attr]  # 0s: off


def test_a_retry_keeps_what_was_left_out_left_out() -> None:
    # An empty retry is valid: the implementation's defaults (one retry on connection
    # errors after 25 ms) apply, and the route reads back without inventing fields.
    [route] = parse_text(edited(setter(f"{R}.retry", {})), "r.yaml")
    assert to_dict(route)["spec"]["rules"][0]["retry"] == {}
    assert from_dict(to_dict(route)) == route


def test_a_zero_request_timeout_allows_any_backend_timeout() -> None:
    [route] = parse_text(edited(setter(f"{R}.timeouts", {"request": "0s", "backendRequest": "1h"})), "r.yaml")
    timeouts = route.spec.rules[0].timeouts
    assert timeouts is not None and (timeouts.request_s, timeouts.backend_request_s) == (None, 3600.0)


def test_what_kubernetes_writes_is_ignored_on_input() -> None:
    # A `get -o yaml` output (status, creationTimestamp) applies again; both are ignored.
    def edit(doc: dict[str, Any]) -> None:
        doc["metadata"]["creationTimestamp"] = "2020-01-02T03:04:05Z"
        doc["status"] = {"parents": [{"anything": True}]}
    [route] = parse_text(edited(edit), "r.yaml")
    assert route.created == "2020-01-02T03:04:05.000000Z"  # read; the store replaces it
    [unquoted] = parse_text(edited(edit).replace("'2020-01-02T03:04:05Z'", "2020-01-02T03:04:05Z"), "r.yaml")
    assert unquoted.created == route.created


def test_accepted_beyond_what_meshnode_resolves() -> None:
    # Valid by the spec, resolved (or not) later: status says so, validation does not refuse.
    def edit(doc: dict[str, Any]) -> None:
        rule0(doc)["backendRefs"] = [{"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "x"},
                                     {"name": "gone", "port": 1, "weight": 0}]
        match0(doc)["headers"] = [{"name": "X-Canary", "value": "1"}, {"name": "x-canary", "value": "2"}]
        match0(doc)["path"] = {"type": "RegularExpression", "value": "/v[0-9]+/.*"}
    [route] = parse_text(edited(edit), "r.yaml")
    assert [b.kind for b in route.spec.rules[0].backend_refs] == ["ServiceImport", "Service"]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        match0(doc)["method"] = "FETCH"
        rule0(doc)["retry"] = {"attempts": 0}
        rule0(doc)["backendRefs"][1]["weight"] = -5
    path = tmp_path / "bad.yaml"
    path.write_text(edited(edit))
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert sorted(p.field for p in info.value.problems) == [
        "spec.rules[0].backendRefs[1].weight", "spec.rules[0].matches[0].method",
        "spec.rules[0].retry.attempts"]
    assert all(p.file == str(path) and p.resource == LABEL for p in info.value.problems)


def test_another_kinds_apiversion_is_refused_for_a_route() -> None:
    [problem] = problems(edited(setter("apiVersion", "meshnode.io/v1alpha1")))
    assert problem.field == "apiVersion" and "gateway.networking.k8s.io/v1" in problem.message


def test_a_match_type_in_the_not_implemented_list_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # The list shrinks and grows in one place: a match type put there is refused wherever used.
    monkeypatch.setitem(NOT_IMPLEMENTED, "match types", ("RegularExpression",))
    def edit(doc: dict[str, Any]) -> None:
        match0(doc)["path"] = {"type": "RegularExpression", "value": "/v[0-9]+"}
        match0(doc)["headers"][0]["type"] = "RegularExpression"
    assert [(p.field, p.message) for p in problems(edited(edit))] == [
        ("spec.rules[0].matches[0].path.type", "a RegularExpression match is not implemented yet"),
        ("spec.rules[0].matches[0].headers[0].type", "a RegularExpression match is not implemented yet")]
