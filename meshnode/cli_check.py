"""`meshnode check`: preflight and running-node checks, each with a one-line fix.

Like `linkerd check`: what a node needs of its host (Python, OpenSSL, pyzmq, free ports,
private runtime dirs, a sane clock), and what a running node says of itself (processes
up and healthy, workers that NACKed their config, certificate lifetimes, config that is
accepted yet does nothing: an HTTPRoute whose backend resolves to nothing, a
DestinationRule subset or an AuthorizationPolicy that selects no workload). Everything
is read from what the node already answers: supervisord, telemetry's health book,
control's `get` (with the statuses it computes) and ca's `inspect`.
"""

from __future__ import annotations

import argparse
import json
import re
import stat
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import zmq

import fastpath.tls
from bus.endpoints import Endpoints

from . import nodectl, supervise
from .identity import pki
from .identity.authority import ca_dir
from .ports import DEFAULT_BASE, Ports

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 11)          # pyproject's requires-python
MIN_OPENSSL = (1, 1, 1)       # TLS 1.3 (DESIGN §3)
MIN_PYZMQ = (25,)             # pyproject's pyzmq>=25
MIN_LIBZMQ = (4, 3)           # CURVE and the socket options the bus sets
# A root or issuer this close to its end should be replaced now (`ca rotate-root`).
CA_WARN_DAYS = 30.0
# No certificate can be valid before this: a clock behind it was reset.
CLOCK_FLOOR = time.mktime((2024, 1, 1, 0, 0, 0, 0, 0, -1))
# Resource kinds the config checks read through control.
KINDS = ("Service", "Workload", "HTTPRoute", "DestinationRule", "AuthorizationPolicy")


@dataclass(frozen=True)
class Result:
    group: str      # preflight, node or config
    check: str
    status: str     # ok, warn or fail
    message: str
    fix: str = ""   # one line: what to do (empty when nothing is to be done)


def _version(text: str) -> tuple[int, ...]:
    """(1, 1, 1) of "1.1.1w", "1.1.1" or "1.1": the leading digits of each part."""
    return tuple(int(re.match(r"\d*", p)[0] or 0) for p in text.split(".")[:3])


# --- preflight: the host --------------------------------------------------------------------


def versions() -> list[Result]:
    py = sys.version_info[:3]
    out = [Result("preflight", "python", OK if py >= MIN_PYTHON else FAIL,
                  f"Python {'.'.join(map(str, py))}",
                  "" if py >= MIN_PYTHON else f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer")]
    # The OpenSSL the data plane links (fastpath.tls), which may not be the ssl module's.
    linked = fastpath.tls.openssl_version()
    ok = _version(linked.split()[1] if len(linked.split()) > 1 else "") >= MIN_OPENSSL
    out.append(Result("preflight", "openssl", OK if ok else FAIL, linked, "" if ok else
                      "install OpenSSL 1.1.1 or newer (TLS 1.3), then reinstall meshnode"))
    good = _version(zmq.pyzmq_version()) >= MIN_PYZMQ and _version(zmq.zmq_version()) >= MIN_LIBZMQ
    curve = zmq.has("curve")
    out.append(Result("preflight", "pyzmq", OK if good and curve else FAIL,
                      f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, "
                      f"CURVE {'yes' if curve else 'no'}",
                      "" if good and curve else "pip install -U 'pyzmq>=25' (its wheels bundle libzmq with CURVE)"))
    return out


def ports_free(port_base: int) -> list[Result]:
    ports = Ports(port_base)
    named = {"admin": ports.admin, "outbound": ports.outbound, "inbound": ports.inbound,
             "control plane": ports.control_plane, "metrics": ports.metrics}
    taken = []
    for what, port in named.items():
        try:
            nodectl.check_port_free(port, what)
        except nodectl.NodeError:
            taken.append(f"{port} ({what})")
    if taken:
        return [Result("preflight", "ports", FAIL, f"in use: {', '.join(taken)}",
                       "stop what holds them, or give `meshnode up --port-base` another block")]
    return [Result("preflight", "ports", OK, f"{port_base}..{port_base + 90} free")]


def private_dirs(rd: Path) -> list[Result]:
    """The bus sockets, the ca's keys and the logs must be the node's user's alone."""
    problems = []
    for path in (Endpoints.for_runtime_dir(rd).dir, ca_dir(rd), rd / "logs"):
        if path.is_dir() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            problems.append(f"{path} is mode {stat.S_IMODE(path.stat().st_mode):o}")
    for key in sorted(ca_dir(rd).glob("*.key")) if ca_dir(rd).is_dir() else ():
        if stat.S_IMODE(key.stat().st_mode) & 0o077:
            problems.append(f"{key} is mode {stat.S_IMODE(key.stat().st_mode):o}")
    if problems:
        return [Result("preflight", "runtime dir", FAIL, "; ".join(problems),
                       f"chmod go-rwx the paths named (dirs 0700, keys 0600) under {rd}")]
    return [Result("preflight", "runtime dir", OK, f"{rd}: private (or not made yet)")]


def clock(rd: Path) -> list[Result]:
    now = time.time()
    root = ca_dir(rd) / "root.pem"
    not_before = None
    if root.exists():
        not_before = pki.load_cert(root.read_bytes(), str(root)).not_valid_before_utc.timestamp()
    if now < CLOCK_FLOOR or (not_before is not None and now < not_before):
        return [Result("preflight", "clock", FAIL, f"the clock says {time.ctime(now)}, before "
                       + ("the mesh root's start" if not_before and now >= CLOCK_FLOOR else "2024"),
                       "set the clock (enable NTP: timedatectl set-ntp true): TLS refuses "
                       "certificates that are not yet valid")]
    return [Result("preflight", "clock", OK, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))]


# --- a running node ------------------------------------------------------------------------


def processes(status: dict[str, Any]) -> list[Result]:
    out = []
    for p in status["processes"]:
        name = p["name"]
        if p["state"] != "RUNNING":
            out.append(Result("node", name, FAIL, f"{p['state']}",
                              f"meshnode logs {name}; then meshnode up again"))
        elif p.get("config_problem"):
            out.append(Result("node", name, FAIL, f"config version {p.get('config_nacked')} "
                              f"NACKed: {p['config_problem']}",
                              "fix what the reason names, then meshnode apply again"))
        elif p["healthy"] is False:
            out.append(Result("node", name, FAIL, "running but not healthy",
                              f"meshnode logs {name}"))
        else:
            version = p.get("config_version")
            out.append(Result("node", name, OK, f"running, pid {p['pid']}"
                              + (f", config version {version}" if version is not None else "")))
    if status.get("not_ready") is None:
        out.append(Result("node", "telemetry", FAIL, "health unknown: telemetry does not answer",
                          "meshnode logs telemetry"))
    return out


def ca_lifetimes(report: dict[str, Any]) -> list[Result]:
    out = []
    for what in ("root", "issuer"):
        days = float(report[what]["days_left"])
        status = FAIL if days <= 0 else WARN if days < CA_WARN_DAYS else OK
        fix = {FAIL: "the mesh's identities are invalid: meshnode ca rotate-root --new-root DIR",
               WARN: "rotate it before it ends: meshnode ca rotate-root", OK: ""}[status]
        out.append(Result("node", f"{what} certificate", status, f"{days:.1f} days left", fix))
    return out


def workload_certs(reports: dict[str, dict[str, Any]]) -> list[Result]:
    """Each worker's own view of its certificates (renewed at half life)."""
    out = []
    for worker, report in sorted(reports.items()):
        for identity, cert in sorted((report.get("certs") or {}).items()):
            if cert.get("expired") or not cert.get("issued"):
                out.append(Result("node", f"{worker} certificate", FAIL,
                                  f"{identity}: {'expired' if cert.get('issued') else 'not issued'}",
                                  f"meshnode logs ca; meshnode logs {worker}"))
            elif cert.get("expiring"):
                out.append(Result("node", f"{worker} certificate", WARN,
                                  f"{identity}: past its renewal time, not renewed",
                                  "meshnode logs ca (is the ca process up?)"))
    if not out:
        out.append(Result("node", "workload certificates", OK,
                          f"{sum(len(r.get('certs') or {}) for r in reports.values())} issued, "
                          f"none past renewal"))
    return out


# --- config that is accepted yet does nothing -----------------------------------------------


def _conditions(resource: dict[str, Any]) -> Iterable[dict[str, Any]]:
    status = resource.get("status") or {}
    yield from status.get("conditions") or ()
    for parent in status.get("parents") or ():
        yield from parent.get("conditions") or ()


def _label(resource: dict[str, Any]) -> str:
    meta = resource["metadata"]
    return f"{resource['kind']} {meta.get('namespace', 'default')}/{meta['name']}"


def _matches(labels: dict[str, Any], selector: dict[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def route_problems(routes: list[dict[str, Any]]) -> list[Result]:
    out = []
    for route in routes:
        for cond in _conditions(route):
            if cond.get("status") == "False":
                out.append(Result("config", _label(route), FAIL,
                                  f"{cond['type']} {cond.get('reason')}: {cond.get('message', '')}",
                                  "point the backendRef at an existing Service and port, or "
                                  "apply that Service"))
    return out


def _service_of(host: str, namespace: str, services: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Service a DestinationRule's host names (short, namespaced or FQDN)."""
    for suffix in (".svc.cluster.local", ".svc"):
        host = host.removesuffix(suffix)
    name, _, ns = host.partition(".")
    return next((s for s in services if s["metadata"]["name"] == name
                 and s["metadata"].get("namespace", "default") == (ns or namespace)), None)


def subset_problems(rules: list[dict[str, Any]], services: list[dict[str, Any]],
                    workloads: list[dict[str, Any]]) -> list[Result]:
    out = []
    for rule in rules:
        ns = rule["metadata"].get("namespace", "default")
        spec = rule.get("spec") or {}
        service = _service_of(str(spec.get("host", "")), ns, services)
        if service is None:
            out.append(Result("config", _label(rule), FAIL, f"host {spec.get('host')} is no Service",
                              "set spec.host to a Service's name (or apply the Service)"))
            continue
        svc_ns = service["metadata"].get("namespace", "default")
        selector = (service.get("spec") or {}).get("selector") or {}
        members = [w for w in workloads if w["metadata"].get("namespace", "default") == svc_ns
                   and _matches((w.get("spec") or {}).get("labels") or {}, selector)]
        for subset in spec.get("subsets") or ():
            if not any(_matches((w.get("spec") or {}).get("labels") or {}, subset.get("labels") or {})
                       for w in members):
                out.append(Result("config", _label(rule), FAIL,
                                  f"subset {subset.get('name')} ({subset.get('labels')}) selects "
                                  f"no workload of Service {svc_ns}/{service['metadata']['name']}",
                                  "fix the subset's labels, or label a workload with them"))
    return out


def policy_problems(policies: list[dict[str, Any]]) -> list[Result]:
    """control's status says whom a policy reaches (config.authzstatus)."""
    out = []
    for policy in policies:
        for cond in _conditions(policy):
            if cond.get("status") == "False":
                out.append(Result("config", _label(policy), FAIL, str(cond.get("message")),
                                  "point targetRefs at an existing Service"))
            elif "no workload" in str(cond.get("message")):
                out.append(Result("config", _label(policy), WARN, "selects no workload: it decides nothing",
                                  "fix spec.selector.matchLabels (or targetRefs) to name a workload"))
    return out


def config_problems(items: dict[str, list[dict[str, Any]]]) -> list[Result]:
    out = (route_problems(items["HTTPRoute"])
           + subset_problems(items["DestinationRule"], items["Service"], items["Workload"])
           + policy_problems(items["AuthorizationPolicy"]))
    return out or [Result("config", "resources", OK, f"{sum(map(len, items.values()))} resources, "
                          "every route resolves, every subset and policy selects a workload")]


# --- the command -------------------------------------------------------------------------------


def running_checks(rd: Path) -> list[Result]:
    status = nodectl.status(rd)
    out = processes(status)
    call: Callable[..., Any] = lambda service, kind, body=None: nodectl.call(rd, service, kind, body)
    out += ca_lifetimes(call("ca", "inspect"))
    reports = call("telemetry", "processes")["processes"]
    out += workload_certs({n: r for n, r in reports.items() if n.startswith("proxy-")})
    out += config_problems({kind: call("control", "get", {"kind": kind})["items"] for kind in KINDS})
    return out


def checks(rd: Path, port_base: int) -> list[Result]:
    running = supervise.supervisord_pid(rd) is not None
    out = versions() + (ports_free(port_base) if not running else []) + private_dirs(rd) + clock(rd)
    if not running:
        return out + [Result("node", "node", WARN, f"no node running in {rd}: only preflight checked",
                             "meshnode up")]
    try:
        return out + running_checks(rd)
    except nodectl.NodeError as exc:
        return out + [Result("node", "node", FAIL, str(exc), "meshnode status; meshnode logs PROCESS")]


MARK = {OK: "[ok]  ", WARN: "[warn]", FAIL: "[FAIL]"}


def format_results(results: list[Result]) -> str:
    lines, group = [], None
    for r in results:
        if r.group != group:
            group = r.group
            lines.append(f"{group}\n{'-' * len(group)}")
        lines.append(f"{MARK[r.status]} {r.check}: {r.message}")
        if r.fix:
            lines.append(f"       fix: {r.fix}")
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    lines.append(f"\n{'FAILED' if failed else 'passed'}: {failed} failed, {warned} warnings, "
                 f"{len(results)} checks")
    return "\n".join(lines)


def add_parser(sub: Any, add_runtime_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("check", help="preflight and running-node checks, each with a fix "
                       "(exit 1 when one fails)")
    add_runtime_dir(p)
    p.add_argument("--port-base", type=int, default=DEFAULT_BASE,
                   help="the port block a node would take (checked free when none runs)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")


def cmd_check(args: argparse.Namespace) -> int:
    results = checks(args.runtime_dir.resolve(), args.port_base)
    if args.output == "json":
        print(json.dumps({"passed": not any(r.status == FAIL for r in results),
                          "checks": [asdict(r) for r in results]}, indent=2))
    else:
        print(format_results(results))
    return 1 if any(r.status == FAIL for r in results) else 0
