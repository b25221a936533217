"""The HTTPRoute tests' mesh: one real node fronting the Gateway API conformance backends,
and callers that are workloads of a given namespace.

The node starts (supervisord, two workers, its own runtime dir and port block) seeded
with data/gateway-api/base.yaml, the conformance suite's Services and pods as meshnode
resources; an echo server (tests.integration.echoapp) runs for each of its Workloads on
the Workload's loopback address. A test applies upstream HTTPRoute manifests with
`meshnode apply -f`, which returns once every worker has ACKed them, and deletes them
again when it ends, so one node serves a whole test module.

Requests go where a workload's requests go: to the node's HTTP outbound listener
(port-base+1) with the Host the conformance client would name (``echo`` for
``http://echo/``). GAMMA consumer routes apply by the caller's namespace, so who calls
matters: the node tells its local workloads' calls apart by source address (no Workload
names a ``spec.user``: DESIGN §4, meshnode.callers), and a ``Caller`` sends from its
workload's address, as the conformance suite execs its client inside a pod of that
namespace (echo.ConnectToAppInNamespace).
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from dataplanekit import certs_issued
from echoapp import EchoPod
from mnharness import Node, free_port_base, kill_leftovers, parse_version, wait_for

DATA = Path(__file__).parent / "data" / "gateway-api"
# The mesh profile's HTTPRoute manifests, verbatim: the repository's one copy, which the
# config tests apply too.
MESH_MANIFESTS = Path(__file__).parents[1] / "meshnode" / "config" / "data" / "gateway-api"
MESH_NS = "gateway-conformance-mesh"  # suite.MeshNamespace
CONSUMER_NS = "gateway-conformance-mesh-consumer"  # suite.MeshConsumerNamespace
INFRA_NS = "gateway-conformance-infra"  # suite.InfrastructureNamespace
PORT_PLACEHOLDER = "$port"
WORKERS = 2
IO_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 40.0


@dataclass(frozen=True)
class Caller:
    """A local workload that sends requests: its namespace, pod name and address."""

    namespace: str
    pod: str
    address: str


@dataclass
class Exchange:
    """One request's answer as the caller saw it."""

    status: int
    headers: dict[str, list[str]]  # lower-cased names, every field line's value
    body: bytes

    def header(self, name: str) -> str | None:
        """A response field's lines joined by "," (RFC 9110 §5.3), None when absent."""
        values = self.headers.get(name.lower())
        return ",".join(values) if values is not None else None

    @property
    def echo(self) -> dict[str, Any] | None:
        """What the echo backend said it received, None when no echo answered."""
        if "application/json" not in (self.header("content-type") or ""):
            return None
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and "pod" in doc else None

    def describe(self) -> str:
        echo = self.echo
        if echo is not None:
            return (f"{self.status} from pod {echo['pod']} ({echo['namespace']}), which got "
                    f"{echo['method']} {echo['path']} headers {echo['headers']}")
        return f"{self.status} {self.body[:200]!r} headers {self.headers}"


def open_connection(port: int, caller: Caller) -> http.client.HTTPConnection:
    """A connection to the node's HTTP outbound listener from the caller's address."""
    return http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S,
                                      source_address=(caller.address, 0))


def exchange(conn: http.client.HTTPConnection, method: str, host: str, path: str,
             headers: dict[str, str] | None = None) -> Exchange:
    """One request on ``conn`` with exactly the Host and fields given (names as written)."""
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    if method in ("POST", "PUT", "PATCH"):
        conn.putheader("Content-Length", "0")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    fields: dict[str, list[str]] = {}
    for name, value in response.getheaders():
        fields.setdefault(name.lower(), []).append(value)
    return Exchange(response.status, fields, body)


@dataclass
class ConformanceMesh:
    """The node, the echo pods by name, and the routes the running test applied."""

    node: Node
    pods: dict[str, EchoPod]
    workdir: Path
    applied: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)

    @property
    def port(self) -> int:
        """The node's HTTP outbound listener."""
        return self.node.port_base + 1

    def caller(self, namespace: str, app: str = "echo-v1") -> Caller:
        """The first pod of ``app`` in ``namespace`` (echo.ConnectToAppInNamespace)."""
        for name, pod in sorted(self.pods.items()):
            if pod.namespace == namespace and name.startswith(f"{app}-"):
                return Caller(namespace, name, pod.address)
        raise LookupError(f"no pod of {app} in {namespace}")

    def send(self, caller: Caller, host: str, path: str = "/", method: str = "GET",
             headers: dict[str, str] | None = None) -> Exchange:
        """One request on a fresh connection (either worker may take it)."""
        conn = open_connection(self.port, caller)
        try:
            return exchange(conn, method, host, path, headers)
        finally:
            conn.close()

    def apply(self, *paths: Path) -> int:
        """`meshnode apply -f` each file; the HTTPRoutes in them are deleted when the
        test ends. Returns the config version every worker has ACKed."""
        args = [arg for path in paths for arg in ("-f", str(path))]
        result = self.node.cli("apply", *args)
        assert result.returncode == 0, (f"apply {' '.join(p.name for p in paths)} failed "
                                        f"({result.returncode}): {result.stderr.strip()}")
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "HTTPRoute":
                    meta = doc["metadata"]
                    self.applied.append((meta.get("namespace", "default"), meta["name"]))
        version = parse_version(result.stdout)
        self.node.wait_version(version)
        return version

    def write(self, name: str, text: str) -> Path:
        """A resource file of the test's own, for apply()."""
        path = self.workdir / name
        path.write_text(text)
        return path

    def get_route(self, namespace: str, name: str) -> dict[str, Any]:
        """`meshnode get httproute NAME -n NS -o yaml`, parsed."""
        result = self.node.cli("get", "httproute", name, "-n", namespace, "-o", "yaml")
        assert result.returncode == 0, f"get httproute {namespace}/{name}: {result.stderr}"
        doc = yaml.safe_load(result.stdout)
        return doc[0] if isinstance(doc, list) else doc

    def condition(self, namespace: str, name: str, kind: str,
                  parent: str | None = None) -> tuple[str, str, str]:
        """(status, reason, message) of the route's ``kind`` condition ("Accepted",
        "ResolvedRefs") for its parentRef named ``parent`` (None: its only one), from
        the RouteParentStatus entries of its ``status.parents``."""
        route = self.get_route(namespace, name)
        parents = (route.get("status") or {}).get("parents") or []
        entries = [p for p in parents
                   if parent is None or (p.get("parentRef") or {}).get("name") == parent]
        assert len(entries) == 1, f"HTTPRoute {namespace}/{name}: status.parents {parents}"
        for cond in entries[0].get("conditions") or []:
            if cond.get("type") == kind:
                return (str(cond.get("status")), str(cond.get("reason")),
                        str(cond.get("message", "")))
        raise AssertionError(f"HTTPRoute {namespace}/{name}: no {kind} condition in {entries[0]}")

    def remove_routes(self) -> None:
        """Delete what apply() recorded, so the next test finds the base config."""
        problems = []
        version = None
        for namespace, name in dict.fromkeys(reversed(self.applied)):
            result = self.node.cli("delete", "httproute", name, "-n", namespace)
            if result.returncode != 0:
                problems.append(f"delete httproute {namespace}/{name}: {result.stderr.strip()}")
            else:
                version = parse_version(result.stdout)
        self.applied.clear()
        if version is not None:
            self.node.wait_version(version)
        assert not problems, "\n".join(problems)


def start_pods(base: list[dict[str, Any]]) -> dict[str, EchoPod]:
    """An echo server for every Workload of the base config, its port written in."""
    pods: dict[str, EchoPod] = {}
    try:
        for doc in base:
            if doc["kind"] != "Workload":
                continue
            meta, spec = doc["metadata"], doc["spec"]
            pod = EchoPod(meta["name"], meta["namespace"], spec["address"])
            pods[pod.name] = pod
            spec["ports"] = {name: pod.port if value == PORT_PLACEHOLDER else value
                             for name, value in spec["ports"].items()}
    except BaseException:
        for pod in pods.values():
            pod.stop()
        raise
    return pods


def base_identities(base: list[dict[str, Any]]) -> set[str]:
    """The SPIFFE IDs of the base Workloads (each namespace's default service account)."""
    return {f"spiffe://cluster.local/ns/{d['metadata']['namespace']}/sa/"
            f"{d['spec'].get('serviceAccount', 'default')}"
            for d in base if d["kind"] == "Workload"}


def _serving(mesh: ConformanceMesh, caller: Caller, host: str, pod_prefix: str) -> bool:
    try:
        answers = [mesh.send(caller, host, "/ready-probe") for _ in range(4)]
    except OSError:
        return False
    return all(a.status == 200 and (a.echo or {}).get("pod", "").startswith(pod_prefix)
               for a in answers)


@contextmanager
def running_mesh(base: list[dict[str, Any]], prefix: str) -> Iterator[ConformanceMesh]:
    """A node seeded with `base` (its Workloads' "$port" the ports of their echo pods,
    started first), yielded once every worker holds each base workload's certificate;
    the node, then the pods, stopped after."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    node = Node(workdir / "node", 0, WORKERS)
    mesh = ConformanceMesh(node, {}, workdir)
    started = False
    try:
        mesh.pods.update(start_pods(base))
        (workdir / "config").mkdir()
        (workdir / "config" / "base.yaml").write_text(yaml.safe_dump_all(base, sort_keys=False))
        node.runtime_dir.mkdir()
        node.port_base = free_port_base()
        started = True
        result = node.up("--config", str(workdir / "config"))
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        for identity in sorted(base_identities(base)):
            wait_for(lambda: certs_issued(node, identity), READY_TIMEOUT_S,
                     f"every worker to hold the certificate of {identity}")
        yield mesh
    except BaseException:
        if started:
            print(f"\n=== logs of node in {node.runtime_dir}\n{node.log_tails()}")
        raise
    finally:
        _stop(mesh, started)


@pytest.fixture(scope="module")
def conformance_mesh() -> Iterator[ConformanceMesh]:
    """One node and the echo pods for a test module; everything stopped after it."""
    base = [d for d in yaml.safe_load_all((DATA / "base.yaml").read_text()) if d]
    with running_mesh(base, "mn-gw-") as mesh:
        for namespace in (MESH_NS, CONSUMER_NS):
            caller = mesh.caller(namespace)
            wait_for(lambda: _serving(mesh, caller, f"echo-v1.{MESH_NS}", "echo-v1-"),
                     READY_TIMEOUT_S, f"requests from {caller.pod} through the node")
        yield mesh


def _stop(mesh: ConformanceMesh, started: bool) -> None:
    """`meshnode down` (when `up` was run), then the pods; the node's files removed."""
    problems = []
    try:
        if started:
            result = mesh.node.down()
            if result.returncode != 0:
                problems.append(f"`meshnode down` exited {result.returncode}: {result.stderr}")
    finally:
        leftovers = kill_leftovers(mesh.node.runtime_dir)
        for pod in mesh.pods.values():
            pod.stop()
        shutil.rmtree(mesh.workdir, ignore_errors=True)
    if leftovers:
        problems.append(f"processes survived `meshnode down` (killed now): {leftovers}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def gw(conformance_mesh: ConformanceMesh) -> Iterator[ConformanceMesh]:
    """The module's mesh for one test: the HTTPRoutes it applies are deleted after it."""
    yield conformance_mesh
    conformance_mesh.remove_routes()
