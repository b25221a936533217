"""`meshnode demo`: start a node and two apps, send requests through the mesh, report, clean up.

With one ``--port-base`` one node fronts both apps; with two, each app has a node of its
own (as two hosts would), and the hop between them crosses from one node to the other.

The steps, each waiting for a condition the node reports (never for a fixed time):

1. each node starts in a fresh runtime dir, exactly as `meshnode up` starts one
   (supervisord, its five kinds of process), seeded with the demo's Mesh resource only.
   Two nodes share one mesh root that the demo makes, and each gets an issuer signed by
   it (as `meshnode ca sign-issuer` does), so each trusts the other's workloads;
2. the two apps (meshnode.demo.apps) start on their loopback addresses;
3. the demo's Services and Workloads (resources.yaml, the workloads' ports set to the
   apps'; with two nodes, each workload placed on its node and a Node resource telling
   where each node's inbound listener is) are applied through each node's control, and
   every worker ACKs that version;
4. every worker holds a certificate for each identity its node's snapshot places on it;
5. one warm-up request goes through the mesh until it gets a 2xx (the first table with
   certificates may land a few ms after the beat that reports them); it is left out of
   every count below, the mesh's included;
6. N requests go to the frontend over one keep-alive connection; for each, the frontend
   calls the backend through its node's HTTP outbound listener (port-base+1, Host
   ``backend.demo.svc:8080``): the node carries it over mutual TLS to the backend's
   node's inbound listener (port-base+6), which hands it to the backend;
7. the report: statuses, latency, the identities the backend saw (x-forwarded-client-cert)
   and those the calling side counted (meshnode_requests_total), the apps' and the
   mesh's counts side by side;
8. the apps and the nodes stop (unless --keep), and a runtime dir the demo made is
   removed when all went well (kept, with its logs, when not).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .. import nodectl, supervise
from ..identity import pki
from ..ports import Ports
from . import canary, probe, report, rollout
from .client import Client, Sample, warm_up
from .errors import AppFailed, DemoError
from .report import NOT_REPORTED, MeshCounts

RESOURCES = Path(__file__).resolve().parent / "resources.yaml"
NAMESPACE = "demo"
FRONTEND, BACKEND = "frontend", "backend"
# Each app on its own loopback address: the node tells its local callers apart by source
# address, so the frontend's calls carry the frontend's identity, not the backend's.
# The canary's backend v2 is an app of its own beside v1 ("backend"), on the node of v1.
BACKEND_V2 = "backend-v2"
APP_ADDRESS = {FRONTEND: "127.0.0.2", BACKEND: "127.0.0.1", BACKEND_V2: "127.0.0.3"}
ROLE_OF = {FRONTEND: FRONTEND, BACKEND: BACKEND, BACKEND_V2: BACKEND}
SERVICE_PORT = 8080  # the backend Service's port, in the Host the frontend sends
APP_START_TIMEOUT_S = 15.0
# The names of two nodes on one machine (one node keeps the host's name, as `up` does).
TWO_NODES = ("demo-a", "demo-b")
ISSUER_TTL_S = 7 * 86400.0  # a demo's nodes live minutes; their issuers a week


@dataclass(frozen=True)
class DemoOptions:
    runtime_dir: Path | None  # None: a fresh dir under /tmp, removed after a clean run
    port_bases: tuple[int, ...]  # one node per port base: one or two
    requests: int
    workers: int = 2
    keep: bool = False
    up_timeout_s: float = 60.0
    canary: bool = False  # backend v1 and v2, the traffic moved by HTTPRoute weights
    rollout: str | None = None  # "good", "errors" or "slow": v2 of that kind, moved by a Rollout


@dataclass(frozen=True)
class DemoNode:
    """One node the demo starts, and the app roles whose workloads it fronts."""

    name: str | None  # None: the host name, as `meshnode up` gives
    runtime_dir: Path
    ports: Ports
    roles: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.name or "the node"


def plan_nodes(runtime_dir: Path, port_bases: tuple[int, ...]) -> list[DemoNode]:
    """One node in `runtime_dir` fronting both apps, or two in sub-dirs, one app each."""
    if len(port_bases) == 1:
        return [DemoNode(None, runtime_dir, Ports(port_bases[0]), (FRONTEND, BACKEND))]
    if len(port_bases) != 2:
        raise DemoError(f"give one or two port bases, not {len(port_bases)}")
    a, b = port_bases
    if abs(a - b) < 100:
        raise DemoError(f"port bases {a} and {b} overlap: a node's block spans 100 ports")
    return [DemoNode(name, runtime_dir / name, Ports(base), (role,))
            for name, base, role in zip(TWO_NODES, port_bases, (FRONTEND, BACKEND))]


def node_of(nodes: list[DemoNode], role: str) -> DemoNode:
    return next(n for n in nodes if role in n.roles)


@dataclass
class Started:
    """What the demo started, so that exactly that is stopped."""

    runtime_dir: Path
    made_dir: bool
    nodes: list[Path] = field(default_factory=list)  # runtime dirs of the nodes started
    apps: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


class _Stop(Exception):
    """SIGTERM arrived: unwind like Ctrl-C does."""


# --- resources ---------------------------------------------------------------------------

def resource_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RESOURCES.read_text()) if d]


def render_resources(frontend_port: int, backend_port: int,
                     nodes: list[DemoNode] | None = None, canary_port: int | None = None) -> str:
    """resources.yaml with each workload's http port set to its app's; given several
    nodes, each workload placed on its app's node, and a Node resource for each node;
    given the canary's v2 port, canary.yaml's Services and Workload (not its route)."""
    ports = {FRONTEND: frontend_port, BACKEND: backend_port}
    docs = resource_docs()
    if canary_port is not None:
        ports[BACKEND_V2] = canary_port
        docs += canary.resource_docs()
    for doc in docs:
        name = doc["metadata"]["name"]
        app = name if name in ports else name.rsplit("-", 1)[0]
        if doc.get("kind") == "Workload" and app in ports:
            doc["spec"]["ports"]["http"] = ports[app]
            doc["spec"]["address"] = APP_ADDRESS[app]
            if nodes and len(nodes) > 1:
                doc["spec"]["node"] = node_of(nodes, ROLE_OF[app]).name
    if nodes and len(nodes) > 1:
        docs[1:1] = [{"apiVersion": docs[0]["apiVersion"], "kind": "Node",
                      "metadata": {"name": n.name},
                      "spec": {"address": "127.0.0.1", "inboundPort": n.ports.inbound}}
                     for n in nodes]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _trust_domain() -> str:
    mesh = next(d for d in resource_docs() if d.get("kind") == "Mesh")
    return str(mesh["spec"]["trustDomain"])


def _make_issuers(rd: Path, nodes: list[DemoNode]) -> dict[str, Path]:
    """A mesh root for the demo and an issuer for each node signed by it, in the dirs
    `meshnode up --ca-issuer` reads: the nodes trust each other, and neither holds the
    root's key."""
    pki_dir = rd / "demo" / "pki"
    pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    td = _trust_domain()
    root, root_key = pki.make_root(f"meshnode demo root ({td})", td)
    pki.write_private(pki_dir / "root.key", pki.key_pem(root_key))
    pki.write_public(pki_dir / "root.pem", pki.cert_pem(root))
    dirs: dict[str, Path] = {}
    for node in nodes:
        assert node.name is not None
        cert, key = pki.make_issuer(root, root_key, node.name, ISSUER_TTL_S)
        out = pki_dir / node.name
        out.mkdir(mode=0o700, exist_ok=True)
        pki.write_private(out / "issuer.key", pki.key_pem(key))
        pki.write_public(out / "issuer.pem", pki.cert_pem(cert))
        pki.write_public(out / "root.pem", pki.cert_pem(root))
        dirs[node.name] = out
    return dirs


def _write_seed(dest: Path) -> Path:
    """A config dir holding only the demo's Mesh: the node starts without the example
    services, so everything it routes is what the demo applies."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.mkdir(mode=0o700, exist_ok=True)
    mesh = [d for d in resource_docs() if d.get("kind") == "Mesh"]
    (dest / "mesh.yaml").write_text(yaml.safe_dump_all(mesh, sort_keys=False))
    return dest


# --- the apps --------------------------------------------------------------------------

def _start_app(started: Started, node: DemoNode, app: str, extra: list[str], keep: bool) -> int:
    """Start one app (FRONTEND, BACKEND or BACKEND_V2) on its address; its port."""
    role = ROLE_OF[app]
    rd = node.runtime_dir  # its logs beside its node's: `meshnode logs demo-APP` finds them
    port_file = started.runtime_dir / "demo" / f"{app}.port"
    port_file.unlink(missing_ok=True)
    log_path = rd / "logs" / f"demo-{app}.log"  # `meshnode logs demo-backend` reads it
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "meshnode.demo.apps", role, "--runtime-dir", str(rd),
           "--port-file", str(port_file), "--address", APP_ADDRESS[app], *extra]
    if not keep:  # an app outlives a killed demo by at most half a second
        cmd += ["--parent", str(os.getpid())]
    with open(log_path, "ab") as log:
        # Its own session: Ctrl-C reaches the demo only, which stops the apps in order.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env={**os.environ,
                                                             "PYTHONUNBUFFERED": "1"})
    started.apps[app] = proc

    def listening() -> int | None:
        if proc.poll() is not None:
            raise AppFailed(f"the {app} app exited with {proc.returncode} before listening; "
                            f"see {log_path}")
        try:
            return int(json.loads(port_file.read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None
    return probe.wait(listening, APP_START_TIMEOUT_S, f"the {app} app to listen", 0.05)


def _stop_apps(started: Started) -> None:
    for proc in started.apps.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in started.apps.values():
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    started.apps.clear()


# --- the mesh's counts ---------------------------------------------------------------------

def _read_mesh(ports: Ports) -> MeshCounts:
    text = probe.get_text(f"http://127.0.0.1:{ports.metrics}/metrics")
    if text is None:
        return MeshCounts()
    try:
        return report.mesh_counts(text, BACKEND, NAMESPACE)
    except ValueError:  # an exposition we cannot parse reports nothing
        return MeshCounts()


def _settled(ports: Ports, at_least: int, before: MeshCounts | None = None) -> MeshCounts:
    """The mesh's counts once they include ``at_least`` requests (beyond ``before``)."""
    counts = probe.settle(lambda: _read_mesh(ports), lambda c: c.present and (
        c.minus(before) if before is not None else c).total() >= at_least)
    return counts.minus(before) if before is not None else counts


# --- the report --------------------------------------------------------------------------

def _lines(label: str, rows: list[str]) -> Iterator[str]:
    for i, row in enumerate(rows):
        yield f"{label if i == 0 else '':<10}{row}"


def format_setup(*, nodes: list[tuple[str, DemoNode]], workers: int, app_ports: dict[str, int],
                 version: int, identities: list[str], canary_route: bool = False) -> list[str]:
    """The report's first part: the nodes, the apps, the config and the requests' path."""
    host = f"{BACKEND}.{NAMESPACE}.svc:{SERVICE_PORT}"
    out = []
    for name, node in nodes:
        ports = node.ports
        out += _lines("node", [
            f"{name}, runtime dir {node.runtime_dir}, {workers} proxy workers, "
            f"fronts {' and '.join(node.roles)}",
            f"admin http://127.0.0.1:{ports.admin}/ready   "
            f"metrics http://127.0.0.1:{ports.metrics}/metrics",
            f"outbound (HTTP) 127.0.0.1:{ports.outbound}   inbound (mTLS) :{ports.inbound}"])
    label = {BACKEND: "backend-v1"} if canary_route else {}  # v1 beside v2
    out += _lines("apps", ["   ".join(f"{label.get(app, app)} {APP_ADDRESS[app]}:{app_ports[app]}"
                                       for app in APP_ADDRESS if app in app_ports)])
    acked = f"ACKed by {', '.join(f'proxy-{i}' for i in range(workers))}"
    files = "resources.yaml" + (" and canary.yaml" if canary_route else "")
    out += _lines("config", [f"version {version} (meshnode/demo/{files}), {acked}"
                             f"{' of each node' if len(nodes) > 1 else ''}",
                             f"certificates for {', '.join(identities)}"])
    (fe_name, fe_node), (be_name, be_node) = (
        next((n, d) for n, d in nodes if role in d.roles) for role in (FRONTEND, BACKEND))
    where = f" ({be_name})" if len(nodes) > 1 else ""
    served = f"{BACKEND} v1 or v2, by the route's weights" if canary_route else BACKEND
    out += _lines("path", [f"client -> {FRONTEND} -> 127.0.0.1:{fe_node.ports.outbound} "
                           f"(Host: {host}) =mTLS=> :{be_node.ports.inbound}{where} -> {served}"])
    return out


def format_report(*, nodes: list[tuple[str, DemoNode]], workers: int, app_ports: dict[str, int],
                  version: int, identities: list[str], warmups: int, samples: list[Sample],
                  apps_before: dict[str, dict[str, Any]], apps_after: dict[str, dict[str, Any]],
                  mesh: MeshCounts) -> str:
    n = len(samples)
    e2e = Counter(str(s.status) if s.status is not None else "no answer" for s in samples)
    hop = Counter(str(s.hop_status) if s.hop_status is not None else "no answer"
                  for s in samples)
    hop_us = [s.hop_us for s in samples if s.hop_us is not None]
    e2e_us = [s.e2e_us for s in samples if s.status is not None]
    out = ["meshnode demo: frontend -> backend through the mesh, over mutual TLS", ""]
    out += format_setup(nodes=nodes, workers=workers, app_ports=app_ports, version=version,
                        identities=identities)
    out.append("")
    warm = f" (after {warmups} warm-up request{'s' if warmups > 1 else ''}, not counted)"
    out += _lines("requests", [f"{n} sent{warm}"])
    out += _lines("status", [f"frontend -> backend  {report.tally(hop)}",
                             f"end to end           {report.tally(e2e)}"])
    out += _lines("latency", [
        f"frontend -> backend  p50 {report.ms(report.percentile(hop_us, 50))}"
        f"  p99 {report.ms(report.percentile(hop_us, 99))}   (measured by the frontend)",
        f"end to end           p50 {report.ms(report.percentile(e2e_us, 50))}"
        f"  p99 {report.ms(report.percentile(e2e_us, 99))}"])
    out.append("")
    servers = Counter(s.server_id for s in samples if s.server_id)
    clients = Counter(s.client_id for s in samples if s.client_id)
    out += _lines("identity", [
        f"backend saw client identity  {report.most_common(clients)}",
        f"backend presented            {report.most_common(servers)}",
        f"frontend's proxy verified    {report.most_common(mesh.destination_principals)}",
        f"frontend's proxy presented   {report.most_common(mesh.source_principals)}"])
    def delta(role: str, key: str) -> int | None:
        after, before = apps_after[role].get(key), apps_before[role].get(key)
        return after - before if isinstance(after, int) and isinstance(before, int) else None

    fe_line = "the frontend app did not answer /stats"
    if isinstance(apps_after[FRONTEND].get("codes"), dict):
        fe_codes = Counter(apps_after[FRONTEND]["codes"])
        fe_codes.subtract(Counter(apps_before[FRONTEND].get("codes") or {}))
        fe_line = f"{report.tally(+fe_codes)} from backend"
        for key, what in (("retries", "sent again on a fresh connection"),
                          ("errors", "without an answer")):
            if count := delta(FRONTEND, key):
                fe_line += f", {count} {what}"
    be_count = delta(BACKEND, "requests")
    be_line = str(be_count) if be_count is not None else "the backend app did not answer /stats"
    if mesh.codes:
        mesh_line = report.tally(mesh.codes)
    elif mesh.classes:
        mesh_line = (f"{report.tally(mesh.classes)} (by class; per-code counts "
                     f"{NOT_REPORTED})")
    else:
        mesh_line = "none" if mesh.present else NOT_REPORTED
    out += _lines("counts", [f"frontend got   {fe_line}",
                             f"backend served {be_line}",
                             f"mesh counted   {mesh_line}"])
    errors = Counter(s.error for s in samples if s.error)
    if errors:
        out.append("")
        out += _lines("errors", [f"{count} x {err}" for err, count in errors.most_common(5)])
    return "\n".join(out)


# --- the whole run -------------------------------------------------------------------------

def run(opts: DemoOptions, out: Callable[[str], None] = print) -> int:
    """Run the demo; 0 when every request got a 2xx, 1 when not, 130 when interrupted."""
    plan_nodes(Path("/"), opts.port_bases)  # refuse bad port bases before anything is made
    for base in opts.port_bases:
        ports = Ports(base)
        for port, what in ((ports.admin, "admin"), (ports.outbound, "outbound"),
                           (ports.inbound, "inbound"), (ports.metrics, "metrics")):
            probe.check_free(port, what)  # before anything is made, so a busy block leaves nothing
    if opts.runtime_dir is None:
        # Short on purpose: the bus's ipc socket paths must fit in 107 bytes.
        started = Started(Path(tempfile.mkdtemp(prefix="mn-demo-", dir="/tmp")), made_dir=True)
    else:
        rd = opts.runtime_dir.resolve()
        for node in plan_nodes(rd, opts.port_bases):
            if supervise.supervisord_pid(node.runtime_dir) is not None:
                raise DemoError(f"a node is already running in {node.runtime_dir}; the demo "
                                f"starts its own: give another --runtime-dir or leave it out")
        started = Started(rd, made_dir=False)

    def on_term(signum: int, frame: object) -> None:
        raise _Stop()
    previous = signal.signal(signal.SIGTERM, on_term), signal.getsignal(signal.SIGINT)
    ok, interrupted = False, False
    try:
        ok = _run(opts, started, plan_nodes(started.runtime_dir, opts.port_bases), out)
        return 0 if ok else 1
    except (KeyboardInterrupt, _Stop):
        interrupted = True
        out("\ninterrupted: stopping what the demo started")
        return 130
    finally:
        # A second Ctrl-C must not leave half a node behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _finish(opts.keep and not interrupted, started, ok, out)
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


def _run(opts: DemoOptions, started: Started, nodes: list[DemoNode],
         out: Callable[[str], None]) -> bool:
    rd = started.runtime_dir
    workers = [f"proxy-{i}" for i in range(opts.workers)]
    seed = _write_seed(rd / "demo" / "seed")
    issuers = _make_issuers(rd, nodes) if len(nodes) > 1 else {}
    names: list[tuple[str, DemoNode]] = []
    for node in nodes:
        node_opts = nodectl.options(node.runtime_dir, node.name, node.ports.base, opts.workers,
                                    seed, ca_issuer=issuers.get(node.name or ""))
        out(f"starting node {node_opts.node} in {node.runtime_dir} (port base "
            f"{node.ports.base}, {opts.workers} workers)...")
        started.nodes.append(node.runtime_dir)
        nodectl.up(node_opts, timeout_s=opts.up_timeout_s)
        names.append((node_opts.node, node))
    source = node_of(nodes, FRONTEND)
    two_versions = opts.canary or opts.rollout is not None
    backends = [(BACKEND, ["--version", "v1"] if two_versions else [])]
    if two_versions:
        bad = ["--bad", opts.rollout] if opts.rollout in rollout.BAD_KINDS else []
        backends.append((BACKEND_V2, ["--version", "v2", *bad]))
    app_ports = {app: _start_app(started, node_of(nodes, BACKEND), app, extra, opts.keep)
                 for app, extra in backends}
    app_ports[FRONTEND] = _start_app(started, source, FRONTEND, [
        "--mesh", f"127.0.0.1:{source.ports.outbound}",
        "--upstream-host", f"{BACKEND}.{NAMESPACE}.svc:{SERVICE_PORT}"], opts.keep)
    text = render_resources(app_ports[FRONTEND], app_ports[BACKEND], nodes,
                            app_ports.get(BACKEND_V2))
    version = _apply(nodes, RESOURCES, text, out)
    identities: list[str] = []
    for node in nodes:
        probe.wait_acked(node.runtime_dir, version, workers)
        identities += probe.wait_certs(node.ports, version, workers)
    ports = source.ports  # the calling side reports the requests it sent
    client = Client(APP_ADDRESS[FRONTEND], app_ports[FRONTEND])
    setup = {"nodes": names, "workers": opts.workers, "app_ports": app_ports,
             "version": version, "identities": identities}
    try:
        warmups = warm_up(client)
        if opts.canary:
            return _canary(opts, rd, nodes, client, setup, out)
        if opts.rollout is not None:
            return _rollout(opts, source, app_ports[FRONTEND], setup, out)
        mesh_before = _settled(ports, warmups)
        apps_before = {role: probe.get_json(f"http://{APP_ADDRESS[role]}:{port}/stats")[1] or {}
                       for role, port in app_ports.items()}
        out(f"sending {opts.requests} requests: client -> frontend -> mesh -> backend...")
        samples = [client.call(i) for i in range(1, opts.requests + 1)]
    finally:
        client.close()
    apps_after = {role: probe.get_json(f"http://{APP_ADDRESS[role]}:{port}/stats")[1] or {}
                  for role, port in app_ports.items()}
    mesh = _settled(ports, opts.requests, mesh_before)
    out("")
    out(format_report(**setup, warmups=warmups, samples=samples, apps_before=apps_before,
                      apps_after=apps_after, mesh=mesh))
    bad = [s for s in samples if s.status is None or not 200 <= s.status < 300]
    out("")
    if bad:
        out(f"FAILED: {len(bad)} of {len(samples)} requests did not get a 2xx "
            f"({report.tally(Counter(str(s.status or 'no answer') for s in bad))})")
        return False
    out(f"ok: all {len(samples)} requests got a 2xx through the mesh")
    return True


def _apply(nodes: list[DemoNode], path: Path, text: str, out: Callable[[str], None]) -> int:
    """Apply one file to every node; the config version it made (the same on each: the
    nodes were seeded alike and take the same applies)."""
    versions = set()
    for node in nodes:
        reply = nodectl.call(node.runtime_dir, "control", "apply",
                             {"files": [{"name": str(path), "text": text}]})
        versions.add(int(reply["version"]))
        out(f"applied config version {reply['version']} to {node.label}: "
            f"{', '.join(reply.get('resources', []))}")
    return max(versions)


def _canary(opts: DemoOptions, rd: Path, nodes: list[DemoNode], client: Client,
            setup: dict[str, Any], out: Callable[[str], None]) -> bool:
    """The canary's steps (meshnode.demo.canary) and their report; whether every step
    was within its tolerance."""
    routes = rd / "demo" / "canary"
    routes.mkdir(mode=0o700, parents=True, exist_ok=True)
    workers = [f"proxy-{i}" for i in range(opts.workers)]

    def apply(percent: int, text: str) -> int:
        path = routes / f"route-v2-{percent}.yaml"  # what was applied, as a user would
        path.write_text(text)
        out(f"step: {percent} % to v2 ({path})")
        version = _apply(nodes, path, text, out)
        for node in nodes:
            probe.wait_acked(node.runtime_dir, version, workers)
        return version

    def served() -> dict[str, int | None]:
        counts: dict[str, int | None] = {}
        for version, app in (("v1", BACKEND), ("v2", BACKEND_V2)):
            url = f"http://{APP_ADDRESS[app]}:{setup['app_ports'][app]}/stats"
            count = (probe.get_json(url)[1] or {}).get("requests")
            counts[version] = count if isinstance(count, int) else None
        return counts

    # Each side's figures from its node: the frontend's sends, the backends' receives.
    metrics = {reporter: f"http://127.0.0.1:{node_of(nodes, role).ports.metrics}/metrics"
               for reporter, role in (("source", FRONTEND), ("destination", BACKEND))}
    out(f"the route, as each step applies it (the 10 % step; meshnode/demo/canary.yaml):\n"
        f"{canary.route_yaml(10)}")
    results = canary.run_steps(canary.Hooks(
        apply, lambda n: [client.call(i) for i in range(1, n + 1)], served,
        lambda reporter: probe.get_text(metrics[reporter])), opts.requests, out)
    out("")
    out("meshnode demo --canary: backend v1 -> v2 by HTTPRoute weights, through the mesh")
    out("")
    for line in [*format_setup(**setup, canary_route=True), "",
                 *canary.format_report(results, opts.requests)]:
        out(line)
    problems = [p for r in results for p in r.problems()]
    out("")
    if problems:
        out(f"FAILED: the canary's steps are off ({len(problems)} "
            f"problem{'s' if len(problems) > 1 else ''}):")
        for problem in problems:
            out(f"  {problem}")
        return False
    steps = " -> ".join(f"{p} %" for p in canary.STEPS_PERCENT)
    out(f"ok: v2 took {steps} of backend's traffic, each step within its tolerance")
    return True


def _rollout(opts: DemoOptions, node: DemoNode, frontend_port: int, setup: dict[str, Any],
             out: Callable[[str], None]) -> bool:
    """The rollout demo (meshnode.demo.rollout) on its one node; whether it ended as
    expected."""
    rd, meta = node.runtime_dir, rollout.rollout_doc()["metadata"]
    workers = [f"proxy-{i}" for i in range(opts.workers)]

    def settle() -> int:
        version = int(nodectl.call(rd, "control", "status", None)["version"])
        probe.wait_acked(rd, version, workers)
        return version

    for line in format_setup(**setup, canary_route=True):
        out(line)
    out("")
    assert opts.rollout is not None
    return rollout.run(rollout.Hooks(
        apply=lambda text: _apply([node], rollout.ROLLOUT, text, out),
        status=lambda: nodectl.call(rd, "control", "rollout", {
            "action": "status", "name": meta["name"], "namespace": meta["namespace"]}),
        settle=settle,
        client=lambda: Client(APP_ADDRESS[FRONTEND], frontend_port)), opts.rollout,
        opts.requests, out)


def _finish(keep: bool, started: Started, ok: bool, out: Callable[[str], None]) -> None:
    rd = started.runtime_dir
    running = [d for d in started.nodes if supervise.supervisord_pid(d) is not None]
    if keep and running:
        pids = " ".join(str(p.pid) for p in started.apps.values() if p.poll() is None)
        downs = "; ".join(f"meshnode down --runtime-dir {d}" for d in running)
        out(f"kept running in {rd}: the node{'s' if len(running) > 1 else ''} and the apps; "
            f"stop them with\n  {f'kill {pids}; ' if pids else ''}{downs}")
        return
    _stop_apps(started)
    for node_dir in reversed(started.nodes):
        said = nodectl.down(node_dir)
        if not said.startswith("no node running"):  # up failed and stopped it already
            out(said)
    with_logs = [d for d in (started.nodes or [rd])
                 if (d / "logs").is_dir() and any((d / "logs").iterdir())]
    if started.made_dir and (ok or not with_logs):
        shutil.rmtree(rd, ignore_errors=True)
    elif with_logs and not ok:
        for d in with_logs:
            out(f"logs kept in {d / 'logs'} (meshnode logs PROCESS --runtime-dir {d})")
