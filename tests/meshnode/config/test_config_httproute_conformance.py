"""The Gateway API's mesh conformance manifests, unchanged: they apply (or are refused by name), and
compile to route sets that send each of the suite's requests where its Go test expects."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshnode.config import ConfigError, Store, compile_routes, parse_text
from routepick import backends, pick, route_set

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data" / "gateway-api"
NS = "gateway-conformance-mesh"
CONSUMER_NS = "gateway-conformance-mesh-consumer"


def _service(name: str, selector: str) -> str:
    # conformance/mesh/manifests.yaml's Services: appProtocol http is protocol HTTP here,
    # a port without appProtocol is left to detection (auto), as Kubernetes declares nothing.
    return textwrap.dedent(f"""\
        apiVersion: meshnode.io/v1alpha1
        kind: Service
        metadata: {{name: {name}, namespace: {NS}}}
        spec:
          selector: {selector}
          ports:
            - {{name: http, port: 80, protocol: HTTP, targetPort: 8080}}
            - {{name: http-alt, port: 8080, protocol: HTTP}}
            - {{name: https, port: 443, targetPort: 8443}}
            - {{name: tcp, port: 9090}}
            - {{name: grpc, port: 7070}}
        """)


SERVICES = "---\n".join([_service("echo", "{app: echo}"), _service("echo-v1", "{app: echo, version: v1}"),
                         _service("echo-v2", "{app: echo, version: v2}")])
ALL_PORTS = [80, 443, 7070, 8080, 9090]


def sets_for(*manifests: str, tmp_path: Path) -> list[dict]:
    """Apply the Services, then each manifest file as it is upstream; the snapshot's route sets."""
    store = Store(tmp_path / "state")
    store.apply(parse_text(SERVICES, "services.yaml"), "services.yaml")
    for name in manifests:
        path = DATA / name
        store.apply(parse_text(path.read_text(), str(path)), str(path))
    return compile_routes(store.resources())


def producer(sets: list[dict], service: str = "echo", port: int = 80) -> dict:
    chosen = route_set(sets, f"{NS}/{service}", port, NS)
    assert chosen is not None and chosen["consumer_namespace"] is None
    return chosen


def test_every_http_manifest_of_the_mesh_profile_is_here() -> None:
    # Names as the suite has them (conformance/tests/mesh/*.yaml but for GRPCRoute's).
    assert len(sorted(DATA.glob("*.yaml"))) == 19


def test_every_manifest_applies_unchanged_now_that_redirects_rewrites_and_backend_filters_are_built(
        ) -> None:
    """Each used to be refused by name (NOT_IMPLEMENTED): RequestRedirect, URLRewrite and
    a backendRef's filters."""
    for path in sorted(DATA.glob("*.yaml")):
        parse_text(path.read_text(), str(path))


REDIRECTS = {  # manifest: {request path: (status, scheme, hostname, port, path modifier)}
    "httproute-303-redirect.yaml": {"/redirect": (303, "http", None, None, None)},
    "httproute-redirect-host-and-status.yaml": {
        "/hostname-redirect": (302, "http", "example.org", None, None),
        "/host-and-status": (301, "http", "example.org", None, None)},
    "httproute-redirect-port.yaml": {"/port": (302, "http", None, 8083, None)},
    "httproute-redirect-scheme.yaml": {"/scheme": (302, "https", None, None, None)},
    "httproute-redirect-path.yaml": {
        "/original-prefix/lemon": (302, "http", None, None,
                                   {"type": "ReplacePrefixMatch", "value": "/replacement-prefix"}),
        "/full/path/original": (302, "http", None, None,
                                {"type": "ReplaceFullPath", "value": "/full-path-replacement"})},
}


@pytest.mark.parametrize("name", sorted(REDIRECTS))
def test_redirects_compile_with_their_location_parts_settled(name: str, tmp_path: Path) -> None:
    chosen = producer(sets_for(name, tmp_path=tmp_path))
    for target, (status, scheme, hostname, port, path) in REDIRECTS[name].items():
        rule = pick(chosen, target)
        assert rule is not None and rule["backends"] == [] and rule["rewrite"] is None
        got = rule["redirect"]
        assert (got["status"], got["scheme"], got["hostname"], got["port"], got["path"]) == (
            status, scheme, hostname, port, path), target
        assert got["prefix"] == ("/original-prefix" if target == "/original-prefix/lemon" else None)


def test_rewrite_path_compiles_with_the_prefix_it_replaces(tmp_path: Path) -> None:
    chosen = producer(sets_for("httproute-rewrite-path.yaml", tmp_path=tmp_path))
    rule = pick(chosen, "/prefix/one/two")
    assert rule is not None and rule["redirect"] is None
    assert rule["rewrite"] == {"hostname": None, "prefix": "/prefix/one",
                               "path": {"type": "ReplacePrefixMatch", "value": "/one"}}
    full = pick(chosen, "/full/one/two")
    assert full is not None and full["rewrite"]["path"] == {"type": "ReplaceFullPath", "value": "/one"}
    assert full["rewrite"]["prefix"] is None


def test_backend_request_header_modifier_compiles_onto_its_backend(tmp_path: Path) -> None:
    chosen = producer(sets_for("httproute-request-header-modifier-backend.yaml", tmp_path=tmp_path))
    rule = pick(chosen, "/set")
    assert rule is not None and rule["request_headers"] is None
    [backend] = rule["backends"]
    assert backend["request_headers"] == {"set": [["X-Header-Set", "set-overwrites-values"]],
                                          "add": [], "remove": []}
    assert backend["response_headers"] is None


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.yaml")))
def test_the_other_manifests_apply_unchanged(name: str, tmp_path: Path) -> None:
    sets = sets_for(name, tmp_path=tmp_path)
    assert sets, f"{name} attached to nothing"


MATCHING = [  # httproute-matching.go: (path, headers, backend)
    ("/", {}, "echo-v1"), ("/example", {}, "echo-v1"), ("/", {"Version": "one"}, "echo-v1"),
    ("/v2", {}, "echo-v2"), ("/v2/example", {}, "echo-v2"), ("/", {"Version": "two"}, "echo-v2"),
    ("/v2/", {}, "echo-v2"), ("/v2example", {}, "echo-v1"), ("/foo/v2/example", {}, "echo-v1"),
]


@pytest.mark.parametrize("target,headers,backend", MATCHING)
def test_matching(target: str, headers: dict[str, str], backend: str, tmp_path: Path) -> None:
    chosen = producer(sets_for("httproute-matching.yaml", tmp_path=tmp_path))
    assert backends(pick(chosen, target, headers=headers)) == [f"{NS}/{backend}"]


QUERY = [  # httproute-query-param-matching.go: (target, headers, backend or 404)
    ("/?animal=whale", {}, "echo-v1"), ("/?animal=dolphin", {}, "echo-v2"),
    ("/?animal=whale&otherparam=irrelevant", {}, "echo-v1"), ("/?animal=dolphin&color=yellow", {}, "echo-v2"),
    ("/?color=blue", {}, 404), ("/?animal=dog", {}, 404), ("/?animal=whaledolphin", {}, 404), ("/", {}, 404),
    ("/path1?animal=whale", {}, "echo-v1"), ("/?animal=whale", {"version": "one"}, "echo-v2"),
    ("/path3?animal=shark", {}, "echo-v1"), ("/path4?animal=kraken", {"version": "three"}, "echo-v1"),
    ("/?animal=shark", {}, 404), ("/path4?animal=kraken", {}, 404), ("/path5?animal=hydra", {}, "echo-v1"),
]


@pytest.mark.parametrize("target,headers,backend", QUERY)
def test_query_param_matching(target: str, headers: dict[str, str], backend: str | int,
                              tmp_path: Path) -> None:
    chosen = producer(sets_for("httproute-query-param-matching.yaml", tmp_path=tmp_path))
    expected = 404 if backend == 404 else [f"{NS}/{backend}"]
    assert backends(pick(chosen, target, headers=headers)) == expected


def test_named_rule(tmp_path: Path) -> None:
    chosen = producer(sets_for("httproute-named-rule.yaml", tmp_path=tmp_path))
    named, unnamed = pick(chosen, "/named"), pick(chosen, "/unnamed")
    assert named is not None and unnamed is not None
    assert (named["name"], backends(named)) == ("named-rule", [f"{NS}/echo-v1"])
    assert (unnamed["name"], backends(unnamed)) == (None, [f"{NS}/echo-v2"])


def test_request_header_modifier(tmp_path: Path) -> None:
    chosen = producer(sets_for("httproute-request-header-modifier.yaml", tmp_path=tmp_path))
    edits = {path: pick(chosen, path)["request_headers"]  # type: ignore[index]
             for path in ("/set", "/add", "/remove", "/multiple", "/case-insensitivity")}
    assert edits["/set"] == {"set": [["X-Header-Set", "set-overwrites-values"]], "add": [], "remove": []}
    assert edits["/add"] == {"set": [], "add": [["X-Header-Add", "add-appends-values"]], "remove": []}
    assert edits["/remove"] == {"set": [], "add": [], "remove": ["X-Header-Remove"]}
    assert edits["/multiple"] == {
        "set": [["X-Header-Set-1", "header-set-1"], ["X-Header-Set-2", "header-set-2"]],
        "add": [["X-Header-Add-1", "header-add-1"], ["X-Header-Add-2", "header-add-2"],
                ["X-Header-Add-3", "header-add-3"]],
        "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]}
    assert edits["/case-insensitivity"] == {"set": [["X-Header-Set", "header-set"]],
                                            "add": [["X-Header-Add", "header-add"]],
                                            "remove": ["X-Header-Remove"]}
    assert pick(chosen, "/other") is None  # no rule: 404


def test_simple_same_namespace_and_weight(tmp_path: Path) -> None:
    simple = producer(sets_for("httproute-simple-same-namespace.yaml", tmp_path=tmp_path / "a"))
    assert pick(simple, "/")["backends"] == [  # type: ignore[index]
        {"service": f"{NS}/echo-v1", "port": 8080, "weight": 1}]
    weighted = producer(sets_for("httproute-weight.yaml", tmp_path=tmp_path / "b"))
    assert pick(weighted, "/anything")["backends"] == [  # type: ignore[index]
        {"service": f"{NS}/echo-v1", "port": 8080, "weight": 70},
        {"service": f"{NS}/echo-v2", "port": 8080, "weight": 30}]


def test_consumer_route_governs_only_its_namespace(tmp_path: Path) -> None:
    sets = sets_for("mesh-consumer-route.yaml", tmp_path=tmp_path)
    # No port in the parentRef: every port of echo-v1, for callers in the consumer namespace.
    assert [(s["service"], s["port"], s["consumer_namespace"]) for s in sets] == [
        (f"{NS}/echo-v1", port, CONSUMER_NS) for port in ALL_PORTS]
    consumer = route_set(sets, f"{NS}/echo-v1", 80, CONSUMER_NS)
    assert consumer is not None
    rule = pick(consumer, "/")
    assert rule is not None and rule["response_headers"]["set"] == [["X-Header-Set", "set"]]
    assert rule["backends"] == [{"service": f"{NS}/echo-v1", "port": 80, "weight": 1}]
    # A caller in the producer's namespace has no route: echo-v1 behaves as without routes.
    assert route_set(sets, f"{NS}/echo-v1", 80, NS) is None


def test_frontend_routes_apply_to_their_service_only(tmp_path: Path) -> None:
    sets = sets_for("mesh-frontend.yaml", tmp_path=tmp_path)
    assert {s["service"] for s in sets} == {f"{NS}/echo-v2"}
    assert pick(producer(sets, "echo-v2"), "/")["response_headers"]["set"] == [  # type: ignore[index]
        ["X-Header-Set", "set"]]


def test_ports(tmp_path: Path) -> None:
    sets = sets_for("mesh-ports.yaml", tmp_path=tmp_path)
    assert [(s["service"], s["port"]) for s in sets] == (
        [(f"{NS}/echo-v1", 80)] + [(f"{NS}/echo-v2", port) for port in ALL_PORTS])
    assert route_set(sets, f"{NS}/echo-v1", 8080, NS) is None  # the excluded port: no route
    for service, port, value in (("echo-v1", 80, "v1"), ("echo-v2", 80, "v2"), ("echo-v2", 8080, "v2")):
        rule = pick(producer(sets, service, port), "/")
        assert rule is not None and rule["response_headers"]["set"] == [["X-Header-Set", value]]


def test_split(tmp_path: Path) -> None:
    chosen = producer(sets_for("mesh-split.yaml", tmp_path=tmp_path))
    assert backends(pick(chosen, "/v1")) == [f"{NS}/echo-v1"]
    assert backends(pick(chosen, "/v2")) == [f"{NS}/echo-v2"]
    assert backends(pick(chosen, "/v3")) == 404
