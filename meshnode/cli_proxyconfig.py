"""`meshnode proxy-config [WORKER] listeners|routes|endpoints|all`: what a worker runs.

Like `istioctl proxy-config`: the config version the worker carries out, the sockets it
listens on, the HTTP route tables and the endpoints it balances over with their
outlier-detection state. Read from the running node, nothing added to the workers'
path: the worker's last health beat (telemetry's health book: version, listeners,
outliers, upstream connections) and the snapshot control distributes (its Clone state,
the one the workers install). When the worker's version is not control's, the tables
shown are control's newer ones, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from bus.clone import snapshot_kind

from . import nodectl
from .busnames import CONTROL, SNAPSHOT_TOPIC

SECTIONS = ("listeners", "routes", "endpoints", "all")
EX_USAGE = 64


class UsageError(Exception):
    pass


def worker_view(rd: Path, worker: str) -> dict[str, Any]:
    """What the node says of `worker` ("proxy-N"), as one document."""
    reports = nodectl.call(rd, "telemetry", "processes", None)["processes"]
    report = reports.get(worker)
    if report is None or not worker.startswith("proxy-"):
        known = sorted(n for n in reports if n.startswith("proxy-"))
        raise nodectl.NodeError(f"no worker {worker!r}; the node's workers: {', '.join(known)}")
    items = nodectl.call(rd, CONTROL, snapshot_kind(SNAPSHOT_TOPIC), None)["items"]
    snapshot = next(iter(items.values()), None) or {"version": None, "services": []}
    return {"worker": worker, "healthy": report.get("healthy"),
            "config_version": report.get("config_version"),
            "control_version": snapshot.get("version"),
            "config_problem": report.get("config_problem"),
            "listeners": listeners(report, snapshot), "routes": routes(snapshot),
            "endpoints": endpoints(report, snapshot)}


def listeners(report: dict[str, Any], snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker's sockets, each with what it carries (a TCP one: its service)."""
    by_port = {p["outbound_port"]: f"{s['namespace']}/{s['name']}:{p['port']}"
               for s in snapshot["services"] for p in s["ports"] if p.get("outbound_port")}
    out = []
    for sock in report.get("listeners") or ():
        serves = ("every HTTP service (by Host)" if sock["protocol"] == "HTTP" else
                  "inbound mTLS from other nodes" if sock["direction"] == "inbound" else
                  by_port.get(sock["port"], "-"))
        out.append({**sock, "serves": serves})
    return out


def _match(entry: dict[str, Any]) -> str:
    parts = []
    if entry.get("path"):
        parts.append(f"{entry['path']['type']} {entry['path']['value']}")
    if entry.get("method"):
        parts.append(entry["method"])
    parts += [f"header {h.get('name')}" for h in entry.get("headers") or ()]
    parts += [f"query {q.get('name')}" for q in entry.get("query") or ()]
    return ", ".join(parts) or "*"


def routes(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per match of every HTTP route table, in the order the engine tries them."""
    out = []
    for table in snapshot.get("http_routes") or ():
        rules = {rule["index"]: rule for rule in table["rules"]}
        for entry in table["entries"]:
            rule = rules.get(entry["rule"], {})
            out.append({"service": f"{table['service']}:{table['port']}",
                        "from_namespace": table.get("consumer_namespace") or "*",
                        "match": _match(entry),
                        "route": f"{rule.get('route')}#{entry['rule']}",
                        "backends": [f"{b['service']}:{b['port']} w{b['weight']}"
                                     if b.get("service") else f"(unresolved) w{b['weight']}"
                                     for b in rule.get("backends") or ()]})
    routed = {r["service"] for r in out}
    for svc in snapshot["services"]:
        for port in svc["ports"]:
            key = f"{svc['namespace']}/{svc['name']}:{port['port']}"
            if port.get("protocol") != "TCP" and key not in routed:
                out.append({"service": key, "from_namespace": "*", "match": "*",
                            "route": "(no HTTPRoute)", "backends": [f"{key} w1"]})
    return out


def endpoints(report: dict[str, Any], snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """Every endpoint of every service port, with the engine's outlier state for it.

    The engine keeps one endpoint per snapshot endpoint, in the snapshot's order
    (dataplane._endpoints), and reports outlier state for ports that have outlier
    detection: the n-th entry of a port is its n-th endpoint."""
    outliers: dict[str, list[dict[str, Any]]] = {}
    for entry in report.get("outliers") or ():
        outliers.setdefault(entry["service"], []).append(entry)
    pools = report.get("upstreams") or {}
    out = []
    for svc in snapshot["services"]:
        for port in svc["ports"]:
            key = f"{svc['namespace']}/{svc['name']}:{port['name']}"
            states = outliers.get(key, [])
            for i, ep in enumerate(svc["endpoints"]):
                state = states[i] if len(states) == len(svc["endpoints"]) else None
                health = ("no outlier detection" if state is None else
                          f"EJECTED for {state['ejected_for_s']:.0f}s" if state["ejected"] else
                          "healthy")
                out.append({"service": f"{svc['namespace']}/{svc['name']}:{port['port']}",
                            "workload": ep["workload"], "node": ep["node"],
                            "address": f"{ep['address']}:{ep['ports'].get(port['name'], '-')}",
                            "weight": ep.get("weight", 1), "health": health,
                            "ejections": state["ejections"] if state else 0,
                            "consecutive_5xx": state["consecutive_5xx"] if state else 0,
                            "pool_connections": (pools.get(key) or {}).get("connections", 0)})
    return out


def _table(rows: Iterable[dict[str, Any]], columns: list[tuple[str, Callable[[dict[str, Any]], Any]]]) -> str:
    lines = [tuple(name for name, _ in columns)]
    lines += [tuple(str(get(row)) for _, get in columns) for row in rows]
    widths = [max(len(line[c]) for line in lines) for c in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


TABLES: dict[str, list[tuple[str, Callable[[dict[str, Any]], Any]]]] = {
    "listeners": [("DIRECTION", lambda r: r["direction"]), ("PROTOCOL", lambda r: r["protocol"]),
                  ("ADDRESS", lambda r: f"{r['address']}:{r['port']}"),
                  ("BOUND", lambda r: "yes" if r["bound"] else f"no: {r.get('problem')}"),
                  ("SERVES", lambda r: r["serves"])],
    "routes": [("SERVICE", lambda r: r["service"]), ("FROM", lambda r: r["from_namespace"]),
               ("MATCH", lambda r: r["match"]), ("ROUTE", lambda r: r["route"]),
               ("BACKENDS", lambda r: ", ".join(r["backends"]))],
    "endpoints": [("SERVICE", lambda r: r["service"]), ("WORKLOAD", lambda r: r["workload"]),
                  ("NODE", lambda r: r["node"]), ("ADDRESS", lambda r: r["address"]),
                  ("WEIGHT", lambda r: r["weight"]), ("HEALTH", lambda r: r["health"]),
                  ("EJECTIONS", lambda r: r["ejections"])],
}


def format_view(view: dict[str, Any], section: str) -> str:
    head = f"{view['worker']}: config version {view['config_version']}"
    if view["config_version"] != view["control_version"]:
        head += (f" (control has version {view['control_version']}: the tables below are "
                 f"control's, not yet this worker's)")
    if view.get("config_problem"):
        head += f"\nNACKed: {view['config_problem']}"
    parts = [head]
    for name in TABLES if section == "all" else (section,):
        parts.append(f"\n{name.upper()}\n{_table(view[name], TABLES[name])}")
    return "\n".join(parts)


def add_parser(sub: Any, add_runtime_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("proxy-config", help="what a proxy worker runs: its listeners, HTTP "
                       "route tables and endpoints with their health")
    add_runtime_dir(p)
    p.add_argument("args", nargs="*", metavar="[WORKER] SECTION",
                   help=f"a worker (proxy-N or N; default proxy-0) and one of {', '.join(SECTIONS)} "
                        f"(default all)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")


def parse_args(args: list[str]) -> tuple[str, str]:
    """(worker, section) from `[WORKER] SECTION`, either left out."""
    if len(args) > 2:
        raise UsageError(f"at most a worker and a section, not {' '.join(args)}")
    section = args[-1] if args and args[-1] in SECTIONS else "all"
    rest = args[:-1] if args and args[-1] in SECTIONS else args
    if len(rest) > 1 or (rest and rest[0] in SECTIONS):
        raise UsageError(f"sections are {', '.join(SECTIONS)}")
    worker = rest[0] if rest else "proxy-0"
    return (f"proxy-{worker}" if worker.isdigit() else worker), section


def cmd_proxy_config(args: argparse.Namespace) -> int:
    try:
        worker, section = parse_args(args.args)
    except UsageError as exc:
        print(f"meshnode proxy-config: {exc}", file=sys.stderr)
        return EX_USAGE
    view = worker_view(args.runtime_dir.resolve(), worker)
    if args.output == "json":
        print(json.dumps(view if section == "all" else
                         {k: view[k] for k in ("worker", "config_version", "control_version", section)},
                         indent=2))
    else:
        print(format_view(view, section))
    return 0
