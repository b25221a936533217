"""Loading and validating resources: every problem is found and located by file, resource and field."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshnode.config import (
    ConfigError, Mesh, NotFound, Problem, Service, Workload, compile_snapshot, format_duration, from_dict,
    load_dir, load_file, parse_duration, parse_text, resolve_kind, to_dict, validate_set,
)
from meshnode.config.durations import DurationError

pytestmark = pytest.mark.timeout(60)

HEAD = "apiVersion: meshnode.io/v1alpha1\n"

SERVICE = HEAD + textwrap.dedent("""\
    kind: Service
    metadata: {name: web, namespace: demo}
    spec:
      selector: {app: web}
      ports:
        - {name: http, port: 8080}
    """)

WORKLOAD = HEAD + textwrap.dedent("""\
    kind: Workload
    metadata: {name: web-1, namespace: demo}
    spec:
      address: 10.0.0.1
      ports: {http: 18080}
      labels: {app: web, version: v1}
      serviceAccount: web
    """)

MESH = HEAD + textwrap.dedent("""\
    kind: Mesh
    metadata: {name: default}
    spec:
      trustDomain: example.org
      mtls: {mode: PERMISSIVE}
      certificates: {workloadTTL: 1h30m, rotateAt: 0.75, issuerTTL: 720h}
      telemetry: {accessLog: false}
    """)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(call: object) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        call()  # type: ignore[operator]
    return info.value.problems


# (case id, file text, expected resource, expected field, a fragment of the message)
MISTAKES = [
    ("bad port", SERVICE.replace("port: 8080", "port: 70000"),
     "Service demo/web", "spec.ports[0].port", "between 1 and 65535"),
    ("duplicate port name", SERVICE.replace("- {name: http, port: 8080}",
                                            "- {name: http, port: 8080}\n    - {name: http, port: 9090}"),
     "Service demo/web", "spec.ports[1].name", "duplicate port name 'http'"),
    ("unknown field typo", SERVICE.replace("  ports:", "  prots:"),
     "Service demo/web", "spec.prots", "did you mean 'ports'"),
    ("bad kind", SERVICE.replace("kind: Service", "kind: Servce"),
     "Servce demo/web", "kind", "did you mean 'Service'"),
    ("bad apiVersion", SERVICE.replace("meshnode.io/v1alpha1", "v1"),
     "Service demo/web", "apiVersion", "meshnode.io/v1alpha1"),
    ("bad name", SERVICE.replace("name: web,", "name: Web_1,"),
     "Service demo/Web_1", "metadata.name", "not a DNS label"),
    ("bad duration", MESH.replace("workloadTTL: 1h30m", "workloadTTL: 1day"),
     "Mesh default", "spec.certificates.workloadTTL", "'1day' is not a duration"),
    ("missing selector", SERVICE.replace("  selector: {app: web}\n", ""),
     "Service demo/web", "spec.selector", "required"),
    ("bad address", WORKLOAD.replace("10.0.0.1", "10.0.0.1:8080"),
     "Workload demo/web-1", "spec.address", "neither an IP address nor a hostname"),
    ("bad rotateAt", MESH.replace("rotateAt: 0.75", "rotateAt: 1.5"),
     "Mesh default", "spec.certificates.rotateAt", "between 0 and 1"),
    ("unquoted number label", WORKLOAD.replace("version: v1", "version: 2"),
     "Workload demo/web-1", "spec.labels.version", "quote it"),
]


@pytest.mark.parametrize("text,resource,field,fragment",
                         [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_resource_and_field(
        tmp_path: Path, text: str, resource: str, field: str, fragment: str) -> None:
    path = write(tmp_path, "mesh.yaml", text)
    problems = problems_of(lambda: load_file(path))
    matching = [p for p in problems if (p.resource, p.field) == (resource, field)]
    assert matching, f"no problem at {resource} {field}: {problems}"
    assert matching[0].file == str(path)
    assert fragment in matching[0].message
    assert str(matching[0]) == f"{path}: {resource}: {field}: {matching[0].message}"


def test_workload_port_unknown_to_its_service_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", SERVICE + "---\n" + WORKLOAD.replace("http: 18080", "admin: 19000"))
    resources = load_file(path)  # each resource is fine alone
    [problem] = problems_of(lambda: validate_set(resources))
    assert (problem.file, problem.resource, problem.field) == (str(path), "Workload demo/web-1", "spec.ports.admin")
    assert "Service demo/web" in problem.message


def test_named_target_port_must_exist_in_every_selected_workload(tmp_path: Path) -> None:
    svc = SERVICE.replace("{name: http, port: 8080}", "{name: http, port: 8080, targetPort: web}")
    second = WORKLOAD.replace("web-1", "web-2").replace("ports: {http: 18080}", "ports: {web: 18080}")
    path = write(tmp_path, "app.yaml", "---\n".join([svc, WORKLOAD.replace("http: 18080", "web: 1"), second]))
    validate_set(load_file(path))
    bad = write(tmp_path, "bad.yaml", "---\n".join([svc, WORKLOAD.replace("ports: {http: 18080}", "ports: {}")]))
    [problem] = problems_of(lambda: validate_set(load_file(bad)))
    assert (problem.resource, problem.field) == ("Service demo/web", "spec.ports[0].targetPort")
    assert "Workload demo/web-1" in problem.message


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = SERVICE + "---\n" + HEAD + "kind: Workload\nmetadata:\n  name: x\n   bad: indent\n"
    path = write(tmp_path, "broken.yaml", text)
    [problem] = problems_of(lambda: load_file(path))
    line = text.splitlines().index("   bad: indent") + 1
    assert (problem.file, problem.resource, problem.line) == (str(path), "document #2", line)
    assert f"line {line}" in problem.message and f"line {line}" in str(problem)


def test_duplicate_yaml_key_is_an_error_with_line(tmp_path: Path) -> None:
    text = SERVICE.replace("  selector: {app: web}\n", "  selector: {app: web}\n  selector: {app: api}\n")
    [problem] = problems_of(lambda: parse_text(text, "dup.yaml"))
    assert problem.file == "dup.yaml" and "duplicate key 'selector'" in problem.message
    assert problem.line == text.splitlines().index("  selector: {app: api}") + 1


def test_documents_without_a_name_are_numbered(tmp_path: Path) -> None:
    text = "- just\n- a list\n---\n" + HEAD + "kind: Service\nmetadata: {}\nspec: {}\n"
    problems = problems_of(lambda: parse_text(text, "f.yaml"))
    located = {(p.resource, p.field) for p in problems}
    assert ("document #1", "") in located
    assert ("document #2", "metadata.name") in located


def test_every_problem_in_a_file_is_reported(tmp_path: Path) -> None:
    text = "\n---\n".join([
        SERVICE.replace("port: 8080", "port: 0").replace("  selector: {app: web}\n", ""),
        WORKLOAD.replace("weight", "x").replace("serviceAccount: web", "serviceAccount: Web\n  wieght: 2"),
        MESH.replace("mode: PERMISSIVE", "mode: LOOSE").replace("720h", "1h"),
    ])
    problems = problems_of(lambda: parse_text(text, "many.yaml"))
    assert {(p.resource, p.field) for p in problems} == {
        ("Service demo/web", "spec.ports[0].port"),
        ("Service demo/web", "spec.selector"),
        ("Workload demo/web-1", "spec.serviceAccount"),
        ("Workload demo/web-1", "spec.wieght"),
        ("Mesh default", "spec.mtls.mode"),
        ("Mesh default", "spec.certificates.workloadTTL"),  # 1h30m outlives a 1h issuer
    }
    assert str(problems_of(lambda: parse_text(text, "many.yaml"))[0]).startswith("many.yaml: ")


def test_load_dir_reports_all_files_and_cross_file_duplicates(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", SERVICE)
    write(tmp_path, "b.yml", SERVICE)
    write(tmp_path, "c.yaml", WORKLOAD.replace("10.0.0.1", "not an address"))
    write(tmp_path, "ignored.txt", "not: yaml: at: all")
    problems = problems_of(lambda: load_dir(tmp_path))
    assert {(Path(p.file).name, p.resource, p.field) for p in problems} == {
        ("b.yml", "Service demo/web", "metadata.name"),
        ("c.yaml", "Workload demo/web-1", "spec.address"),
    }


def test_str_of_config_error_lists_one_problem_per_line() -> None:
    error = ConfigError([Problem("a.yaml", "Service x/y", "spec.ports", "required"),
                         Problem("b.yaml", "document #3", "", "must be a mapping")])
    assert str(error).splitlines() == ["a.yaml: Service x/y: spec.ports: required",
                                       "b.yaml: document #3: must be a mapping"]


def test_defaults_fill_in() -> None:
    text = HEAD + "kind: Mesh\nmetadata: {name: default, namespace: ignored}\n---\n" + SERVICE + "---\n" + \
        HEAD + "kind: Workload\nmetadata: {name: w}\nspec: {address: db.example.com}\n"
    mesh, service, workload = parse_text(text, "d.yaml")
    assert isinstance(mesh, Mesh) and mesh.key == ("Mesh", "", "default")
    assert (mesh.spec.trust_domain, mesh.spec.mtls_mode, mesh.spec.workload_ttl_s, mesh.spec.rotate_at,
            mesh.spec.issuer_ttl_s, mesh.spec.access_log) == (None, "STRICT", 86400.0, 0.5,
                                                               8760 * 3600.0, False)
    assert isinstance(service, Service)
    assert service.spec.ports[0].protocol == "auto" and service.spec.ports[0].target_port == 8080
    assert isinstance(workload, Workload) and workload.key == ("Workload", "default", "w")
    assert (workload.spec.service_account, workload.spec.weight, workload.spec.node) == ("default", 1, None)


def test_round_trip_through_canonical_form() -> None:
    text = "---\n".join([MESH, SERVICE.replace("port: 8080}", "port: 8080, targetPort: web, protocol: TCP}"),
                         WORKLOAD.replace("http: 18080", "web: 18080").replace("serviceAccount", "node: n1\n  serviceAccount"),
                         HEAD + "kind: Workload\nmetadata: {name: v6, labels: {team: a}, annotations: {note: hi there}}\n"
                         "spec: {address: '::1', weight: 3}\n"])
    resources = parse_text(text, "in.yaml")
    dumped = yaml.safe_dump_all([to_dict(r) for r in resources], sort_keys=False)
    again = parse_text(dumped, "out.yaml")
    assert again == resources
    assert [from_dict(to_dict(r)) for r in resources] == resources
    assert to_dict(resources[0])["spec"]["certificates"] == {"workloadTTL": "1h30m", "rotateAt": 0.75, "issuerTTL": "720h"}
    assert "namespace" not in to_dict(resources[0])["metadata"]


def test_resolve_kind_accepts_plurals_and_short_names() -> None:
    assert [resolve_kind(k) for k in ("Service", "services", "svc", "MESH", "meshes", "workloads")] == \
        ["Service", "Service", "Service", "Mesh", "Mesh", "Workload"]
    with pytest.raises(NotFound):
        resolve_kind("pods")


@pytest.mark.parametrize("text,seconds", [("24h", 86400.0), ("10s", 10.0), ("500ms", 0.5),
                                          ("1h30m", 5400.0), ("1.5h", 5400.0), ("0", 0.0), ("250us", 0.00025)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "-5s", "5 s", "1d", "h", "1.s", "s10", "1h 30m", 10, None, True])
def test_duration_garbage_is_refused(text: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=12)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" for p in exc.problems)


@given(st.sampled_from(["Mesh", "Node", "Service", "Workload"]), st.dictionaries(
    st.sampled_from(["selector", "ports", "address", "labels", "weight", "node", "serviceAccount",
                     "trustDomain", "mtls", "certificates", "telemetry", "inboundPort"]), _json, max_size=5))
def test_any_spec_builds_or_raises_config_error(kind: str, spec: dict) -> None:
    doc = {"apiVersion": "meshnode.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    try:
        resource = from_dict(doc)
    except ConfigError as exc:
        assert all(p.resource.startswith(kind) for p in exc.problems)
    else:
        assert from_dict(to_dict(resource)) == resource


def test_outbound_port_is_unique_and_an_http_port_may_have_one(tmp_path: Path) -> None:
    tcp = SERVICE.replace("{name: http, port: 8080}",
                          "{name: db, port: 5432, protocol: TCP, outboundPort: 25432}")
    [service] = parse_text(tcp, "db.yaml")
    assert service.spec.ports[0].outbound_port == 25432
    assert from_dict(to_dict(service)) == service
    # A port with no declared protocol (auto) tells HTTP/1.1 from anything else by the
    # first bytes; one declared HTTP is framed always.
    http = SERVICE.replace("{name: http, port: 8080}", "{name: http, port: 8080, outboundPort: 28080}")
    [service] = parse_text(http, "web.yaml")
    assert (service.spec.ports[0].protocol, service.spec.ports[0].outbound_port) == ("auto", 28080)
    declared = http.replace("outboundPort: 28080}", "outboundPort: 28080, protocol: HTTP}")
    [service] = parse_text(declared, "web.yaml")
    assert service.spec.ports[0].protocol == "HTTP"
    [problem] = problems_of(lambda: parse_text(http.replace("outboundPort: 28080}",
                                                            "protocol: GRPC}"), "g.yaml"))
    assert "protocol" in problem.field
    twice = "---\n".join([tcp, tcp.replace("name: web,", "name: web2,")])
    [problem] = problems_of(lambda: validate_set(parse_text(twice, "two.yaml")))
    assert (problem.resource, problem.field) == ("Service demo/web2", "spec.ports[0].outboundPort")
    assert "already the outboundPort of Service demo/web" in problem.message


def test_mesh_connections_timeouts(tmp_path: Path) -> None:
    text = ("apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
            "spec:\n  connections: {connectTimeout: 500ms, idleTimeout: 10m}\n")
    [mesh] = parse_text(text, "mesh.yaml")
    assert (mesh.spec.connect_timeout_s, mesh.spec.idle_timeout_s) == (0.5, 600.0)
    assert from_dict(to_dict(mesh)) == mesh
    for bad, field in (("connectTimeout: 1ms", "connectTimeout"), ("idleTimeout: soon", "idleTimeout"),
                       ("connectTimeout: 2d", "connectTimeout"), ("retries: 3", "retries")):
        broken = text.replace("{connectTimeout: 500ms, idleTimeout: 10m}", "{" + bad + "}")
        [problem] = problems_of(lambda: parse_text(broken, "mesh.yaml"))
        assert problem.field.startswith("spec.connections") and field in problem.field + problem.message


def test_mesh_drain_duration(tmp_path: Path) -> None:
    """spec.connections.drainDuration (Istio's terminationDrainDuration): 5 s by default,
    at most 30 s (supervisord's stop wait is derived from that bound); refused by name."""
    text = ("apiVersion: meshnode.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n"
            "spec:\n  connections: {drainDuration: 12s}\n")
    [mesh] = parse_text(text, "mesh.yaml")
    assert mesh.spec.drain_duration_s == 12.0
    assert from_dict(to_dict(mesh)) == mesh
    assert to_dict(mesh)["spec"]["connections"]["drainDuration"] == "12s"
    [default] = parse_text(text.replace("connections: {drainDuration: 12s}", "{}"), "mesh.yaml")
    assert default.spec.drain_duration_s == 5.0
    snapshot = compile_snapshot([mesh], "n", 1)
    assert snapshot["mesh"]["drain_duration_s"] == 12.0
    for bad, message in (("45s", "between 100ms and 30s, got '45s'"),
                         ("'0'", "between 100ms and 30s, got '0'"),
                         ("soon", "'soon' is not a duration"),
                         ("5", "must be a duration string"),
                         ("-1s", "is not a duration")):
        broken = text.replace("drainDuration: 12s", f"drainDuration: {bad}")
        [problem] = problems_of(lambda: parse_text(broken, "mesh.yaml"))
        assert (problem.file, problem.resource, problem.field) == (
            "mesh.yaml", "Mesh default", "spec.connections.drainDuration"), problem
        assert message in problem.message, problem.message


def test_node_places_a_nodes_inbound_listener(tmp_path: Path) -> None:
    text = HEAD + "kind: Node\nmetadata: {name: node-b, namespace: ignored}\nspec: {address: 127.0.0.1, inboundPort: 16006}\n"
    [node] = parse_text(text, "nodes.yaml")
    assert node.key == ("Node", "", "node-b")  # cluster-scoped, like Mesh
    assert (node.spec.address, node.spec.inbound_port) == ("127.0.0.1", 16006)
    assert from_dict(to_dict(node)) == node
    [default_port] = parse_text(HEAD + "kind: Node\nmetadata: {name: n}\nspec: {address: db.example.com}\n", "n.yaml")
    assert default_port.spec.inbound_port == 15006
    assert resolve_kind("nodes") == "Node"
    for bad, field, says in (("{address: '300.1.1.1'}", "spec.address", "neither an IP address"),
                             ("{address: 10.0.0.1, inboundPort: 0}", "spec.inboundPort", "between 1 and 65535"),
                             ("{inboundPort: 16006}", "spec.address", "required"),
                             ("{address: 10.0.0.1, port: 1}", "spec.port", "unknown field")):
        broken = text.replace("{address: 127.0.0.1, inboundPort: 16006}", bad)
        [problem] = problems_of(lambda: parse_text(broken, "nodes.yaml"))
        assert (problem.resource, problem.field) == ("Node node-b", field) and says in problem.message
    # Two nodes cannot share one inbound listener.
    twice = "---\n".join([text, text.replace("node-b", "node-c")])
    [problem] = problems_of(lambda: validate_set(parse_text(twice, "nodes.yaml")))
    assert (problem.resource, problem.field) == ("Node node-c", "spec.inboundPort")
    assert "already the inbound listener of Node node-b" in problem.message
