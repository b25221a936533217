"""The ``meshnode`` command: one entry point for the node's lifecycle and its config.

    meshnode up | down | status | logs        the node under supervisord
    meshnode apply | get | delete             resources, through control on the bus
    meshnode stat                             golden metrics per workload, service, edge
    meshnode tap | top                        requests as they pass; the busiest paths
    meshnode demo                             two apps through a fresh node, and a report
    meshnode check | proxy-config             preflight and node checks; what a worker runs

Exit codes follow STYLE.md: 0 done, 1 failed, 3 no node running, 64 usage error,
69 a node process is unavailable, 78 the configuration was refused. `apply` waits for
every proxy worker's answer (xDS's ACK/NACK): a worker that cannot carry the new config
out (a listener whose port is taken) NACKs it with the reason, and apply exits 1 with
it; the config stays applied, the rest of it is served, and the worker keeps trying.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from . import cli_check, cli_proxyconfig, cli_stat, cli_tap, nodectl, rotation
from .demo import run as demo
from .config import ConfigError, load_path, parse_duration
from .identity import pki
from .identity.authority import ca_dir
from .identity.errors import IdentityError
from .ports import DEFAULT_BASE

EX_FAIL, EX_NOT_RUNNING, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 1, 3, 64, 69, 78


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; STYLE says 64
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EX_USAGE)


def _default_runtime_dir() -> str:
    return os.environ.get("MESHNODE_RUNTIME_DIR") or str(Path.home() / ".meshnode")


def _add_runtime_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-dir", type=Path, default=Path(_default_runtime_dir()),
                   help="the node's runtime dir (default $MESHNODE_RUNTIME_DIR or ~/.meshnode)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshnode", description="A service mesh node: mTLS, routing, "
                     "golden metrics, for plain VMs and pods.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("up", help="start a node under supervisord and wait until it is ready")
    _add_runtime_dir(p)
    p.add_argument("--config", type=Path, help="dir of YAML resources that seeds the node "
                   "(default: the example mesh shipped with meshnode)")
    p.add_argument("--port-base", type=int, default=DEFAULT_BASE,
                   help="first port of the node's block: admin +0, outbound +1, inbound +6, "
                        "metrics +90 (default 15000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="proxy worker processes (default: CPU count)")
    p.add_argument("--node", default=None, help="node name (default: the host name)")
    p.add_argument("--ca-root", type=Path, help="dir with the mesh root (root.pem, root.key, "
                   "e.g. from `meshnode ca init`); default: the node makes its own root")
    p.add_argument("--ca-issuer", type=Path, help="dir with this node's issuer signed by the "
                   "root's holder (issuer.key, issuer.pem, root.pem): see `meshnode ca issuer-csr`")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for ready")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("down", help="stop the node and every process of it")
    _add_runtime_dir(p)

    p = sub.add_parser("status", help="each process's state, pid, health and config version")
    _add_runtime_dir(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("logs", help="print a process's log (JSON lines)")
    _add_runtime_dir(p)
    p.add_argument("process", help="bus, control, ca, telemetry, proxy-N, supervisord, "
                   "or access (the access log: a JSON line per request and TCP connection)")
    p.add_argument("-n", "--lines", type=int, default=50, help="last N lines (0: all)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then print lines as they are written (across rotations) until ^C")

    p = sub.add_parser("apply", help="create or update resources from YAML, and wait "
                       "until every proxy worker has carried them out (ACK) or said why "
                       "it cannot (NACK)")
    _add_runtime_dir(p)
    p.add_argument("-f", "--filename", required=True, action="append", type=Path,
                   help="a YAML file, a dir of them, or - for stdin (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the workers' answers (0: do not wait)")

    p = sub.add_parser("get", help="show resources")
    _add_runtime_dir(p)
    p.add_argument("kind", help="Mesh, Node, Service, Workload, HTTPRoute, DestinationRule, "
                   "FaultInjection, XBackendTrafficPolicy, AuthorizationPolicy, PeerAuthentication, "
                   "RateLimitPolicy, Rollout (plural and short forms work); an HTTPRoute, an "
                   "XBackendTrafficPolicy, an AuthorizationPolicy, a PeerAuthentication, a "
                   "RateLimitPolicy and a Rollout show their status")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")

    ca = sub.add_parser("ca", help="the mesh's certificate authority").add_subparsers(
        dest="ca_command", required=True, parser_class=_Parser)
    p = ca.add_parser("init", help="make a mesh root CA (ECDSA P-256) in a dir")
    p.add_argument("--trust-domain", required=True, help="e.g. cluster.local")
    p.add_argument("--out", type=Path, required=True, help="dir for root.pem and root.key")
    p.add_argument("--ttl", default="87600h", help="root lifetime (default 87600h, 10 years)")
    p.add_argument("--force", action="store_true", help="overwrite an existing root")
    p = ca.add_parser("issuer-csr", help="make this node's issuer key and a CSR for the "
                      "root's holder to sign (the key stays here, mode 0600)")
    p.add_argument("--node", required=True, help="the node's name")
    p.add_argument("--out", type=Path, required=True, help="dir for issuer.key and issuer.csr")
    p = ca.add_parser("sign-issuer", help="at the root's holder: sign a node's issuer CSR")
    p.add_argument("--ca-root", type=Path, required=True, help="dir with root.pem and root.key")
    p.add_argument("--csr", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="dir for issuer.pem and root.pem")
    p.add_argument("--ttl", default="8760h", help="issuer lifetime (default 8760h)")
    p = ca.add_parser("inspect", help="the chain, SANs and days left of the node's certificates")
    _add_runtime_dir(p)
    p.add_argument("--json", action="store_true")
    p = ca.add_parser("rotate-root", help="rotate the mesh root without an outage")
    _add_runtime_dir(p)
    p.add_argument("--new-root", type=Path, help="dir with the new root.pem and root.key "
                   "(default: the node makes one)")
    p.add_argument("--timeout", type=float, default=300.0)

    p = sub.add_parser("demo", help="start a node and two tiny apps, send requests from one "
                       "to the other through the mesh over mutual TLS, and report what it saw")
    p.add_argument("--runtime-dir", type=Path, default=None,
                   help="runtime dir of the demo's node, or of two nodes' dirs demo-a and demo-b "
                        "(default: a fresh dir under /tmp, removed after a clean run)")
    p.add_argument("--port-base", type=int, action="append", dest="port_bases",
                   help="first port of the node's block, as for `up` (default 15000); give it "
                        "twice for two nodes, one beside each app")
    p.add_argument("--requests", type=int, default=200,
                   help="requests to send (default 200; with --canary, at each step)")
    p.add_argument("--workers", type=int, default=2, help="proxy worker processes (default 2)")
    p.add_argument("--keep", action="store_true",
                   help="leave the node and the apps running afterwards")
    moves = p.add_mutually_exclusive_group()
    moves.add_argument("--canary", action="store_true",
                       help="run backend v1 and v2 and move 0, 10, 50, then 100 %% of its "
                            "traffic to v2 by HTTPRoute weights, checking each step's split")
    moves.add_argument("--rollout", action="store_true",
                       help="run backend v1 and a good v2 and let a Rollout promote v2 step by "
                            "step under steady traffic")
    moves.add_argument("--rollout-bad", nargs="?", const="errors", choices=demo.rollout.BAD_KINDS,
                       help="as --rollout with a bad v2, which the Rollout rolls back: 5 %% of "
                            "its answers 500s (errors, the default) or half a second late (slow)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node")

    cli_stat.add_parser(sub, _add_runtime_dir)
    cli_tap.add_parsers(sub, _add_runtime_dir)

    p = sub.add_parser("rollout", help="a Rollout under way: its status, or promote, abort, "
                       "pause or resume it")
    _add_runtime_dir(p)
    p.add_argument("action", choices=ROLLOUT_ACTIONS)
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-o", "--output", choices=["text", "yaml", "json"], default="text")

    p = sub.add_parser("delete", help="delete a resource")
    _add_runtime_dir(p)
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")

    cli_check.add_parser(sub, _add_runtime_dir)
    cli_proxyconfig.add_parser(sub, _add_runtime_dir)
    return parser


def _read_files(paths: list[Path]) -> list[dict[str, str]]:
    files: list[dict[str, str]] = []
    for path in paths:
        if str(path) == "-":
            files.append({"name": "<stdin>", "text": sys.stdin.read()})
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not found:
                raise UsageError(f"{path}: no .yaml or .yml files in this dir")
            files += [{"name": str(p), "text": p.read_text()} for p in found]
        else:
            try:
                files.append({"name": str(path), "text": path.read_text()})
            except OSError as exc:
                raise UsageError(f"{path}: {exc.strerror or exc}") from None
    return files


def cmd_up(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.config is not None:
        # Refuse a broken config before anything starts, with every problem listed.
        load_path(args.config)
    if args.ca_root is not None and args.ca_issuer is not None:
        raise UsageError("give --ca-root or --ca-issuer, not both")
    if args.ca_root is not None:
        pki.read_root_dir(args.ca_root)  # refuse a bad root before anything starts
    _check_root_kept(args.runtime_dir.resolve(), args.ca_root or args.ca_issuer)
    result = nodectl.up(nodectl.options(args.runtime_dir, args.node, args.port_base,
                                        args.workers, args.config, args.log_level,
                                        args.ca_root, args.ca_issuer),
                        timeout_s=args.timeout)
    print(result)
    return 0


def _check_root_kept(rd: Path, seed: Path | None) -> None:
    """A node's ca takes --ca-root/--ca-issuer at its first start only, and keeps that
    root after: another one given later would be ignored, and identities issued under
    a root the user did not mean. Say so instead."""
    kept = ca_dir(rd) / "root.pem"
    if seed is None or not kept.exists():
        return
    try:
        same = (seed / "root.pem").read_bytes() == kept.read_bytes()
    except OSError as exc:
        raise UsageError(f"{seed / 'root.pem'}: {exc.strerror or exc}") from None
    if not same:
        raise UsageError(f"the node in {rd} already runs under another mesh root ({kept}); "
                         f"--ca-root and --ca-issuer are taken at a node's first start only: "
                         f"move a running node to a new root with `meshnode ca rotate-root "
                         f"--new-root DIR`")


def cmd_down(args: argparse.Namespace) -> int:
    print(nodectl.down(args.runtime_dir.resolve()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = nodectl.status(args.runtime_dir.resolve())
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(nodectl.format_status(status))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    rd = args.runtime_dir.resolve()
    sys.stdout.write(nodectl.read_log(rd, args.process, args.lines))
    if args.follow:
        sys.stdout.flush()
        try:
            for line in nodectl.follow_log(rd, args.process):
                sys.stdout.write(line)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    rd = args.runtime_dir.resolve()
    files = _read_files(args.filename)
    since = time.time()
    reply = nodectl.call(rd, "control", "apply", {"files": files})
    what = ", ".join(reply.get("resources", []))
    state = "applied" if reply.get("changed") else "unchanged"
    version = reply["version"]
    print(f"{state}: version {version}: {what}", flush=True)
    if args.timeout <= 0:
        return 0
    answers, missing = nodectl.wait_answers(rd, version, since, args.timeout)
    nacks: dict[str, list[str]] = {}
    for worker, answer in sorted(answers.items()):
        if answer.get("status") == "NACK":
            nacks.setdefault(str(answer.get("reason") or "no reason given"), []).append(worker)
    for reason, workers in nacks.items():
        print(f"meshnode apply: version {version} is not carried out by {', '.join(workers)} "
              f"(NACK): {reason}", file=sys.stderr)
    if missing:
        print(f"meshnode apply: no answer to version {version} from {', '.join(missing)} "
              f"within {args.timeout:g}s: see `meshnode status`", file=sys.stderr)
    return EX_FAIL if nacks or missing else 0


def cmd_get(args: argparse.Namespace) -> int:
    reply = nodectl.call(args.runtime_dir.resolve(), "control", "get",
                         {"kind": args.kind, "name": args.name, "namespace": args.namespace})
    items: list[dict[str, Any]] = reply["items"]
    if args.output == "json":
        print(json.dumps(items if args.name is None else items[0], indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    else:
        print(_table(items))
    return 0


def _table(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no resources found"
    rows = [("KIND", "NAMESPACE", "NAME")]
    rows += [(i["kind"], i["metadata"].get("namespace", "") or "-", i["metadata"]["name"])
             for i in items]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


ROLLOUT_ACTIONS = ("status", "promote", "abort", "pause", "resume")


def cmd_rollout(args: argparse.Namespace) -> int:
    status = nodectl.call(args.runtime_dir.resolve(), "control", "rollout",
                          {"action": args.action, "name": args.name, "namespace": args.namespace})
    if args.output == "json":
        print(json.dumps(status, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(status, sort_keys=False), end="")
    else:
        print(_rollout_text(status))
    return 0


def _rollout_text(status: dict[str, Any]) -> str:
    """A rollout's state, its last checks and its recent events, for people."""
    condition = status["conditions"][0]
    lines = [f"{status['route']}: {status['phase']}{' (paused)' if status['paused'] else ''}, "
             f"canary {status['canary']} at {status['canaryWeight']}%, stable {status['stable']}, "
             f"failed checks {status['failedChecks']}",
             f"  {condition['reason']}: {condition['message']}"]
    lines += [f"  check {c['name']}: {'ok' if c['ok'] else 'FAILED'}: {c['message']}"
              for c in status["lastChecks"]]
    lines += [f"  {e['time']} {e['type']} {e['reason']}: {e['message']}" for e in status["events"][-10:]]
    return "\n".join(lines)


def cmd_delete(args: argparse.Namespace) -> int:
    reply = nodectl.call(args.runtime_dir.resolve(), "control", "delete",
                         {"kind": args.kind, "name": args.name, "namespace": args.namespace})
    print(f"deleted: version {reply['version']}: {args.kind} {args.namespace}/{args.name}")
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    if args.ca_command == "init":
        return _ca_init(args)
    if args.ca_command == "issuer-csr":
        key = pki.new_key()
        pki.write_private(args.out / "issuer.key", pki.key_pem(key))
        pki.write_public(args.out / "issuer.csr", pki.make_issuer_csr(key, args.node))
        print(f"{args.out}/issuer.key (mode 0600, stays on this node) and {args.out}/issuer.csr: "
              f"have the root's holder run `meshnode ca sign-issuer`, then "
              f"`meshnode up --ca-issuer {args.out}` with issuer.pem and root.pem put there")
        return 0
    if args.ca_command == "sign-issuer":
        root, root_key = pki.read_root_dir(args.ca_root)
        try:
            ttl_s = parse_duration(args.ttl)
        except ValueError as exc:
            raise UsageError(f"--ttl: {exc}") from None
        try:
            csr_pem = args.csr.read_bytes()
        except OSError as exc:
            raise UsageError(f"{args.csr}: {exc.strerror or exc}") from None
        cert = pki.sign_issuer_csr(csr_pem, root, root_key, ttl_s)
        pki.write_public(args.out / "issuer.pem", pki.cert_pem(cert))
        pki.write_public(args.out / "root.pem", pki.cert_pem(root))
        print(f"issuer for {cert.subject.rfc4514_string()} in {args.out}/issuer.pem (with "
              f"root.pem), valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M}")
        return 0
    rd = args.runtime_dir.resolve()
    if args.ca_command == "rotate-root":
        rotation.rotate_root(rd, args.new_root, args.timeout, print)
        return 0
    report = nodectl.call(rd, "ca", "inspect", None)
    print(json.dumps(report, indent=2) if args.json else _format_inspect(report))
    return 0


def _ca_init(args: argparse.Namespace) -> int:
    out: Path = args.out
    if (out / "root.key").exists() and not args.force:
        raise UsageError(f"{out / 'root.key'} exists; use --force to replace it")
    try:
        ttl_s = parse_duration(args.ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl: {exc}") from None
    try:
        pki.check_trust_domain(args.trust_domain)
    except IdentityError as exc:
        raise UsageError(f"--trust-domain: {exc}") from None
    cert, key = pki.make_root(f"meshnode root ({args.trust_domain})", args.trust_domain, ttl_s)
    pki.write_private(out / "root.key", pki.key_pem(key))
    pki.write_public(out / "root.pem", pki.cert_pem(cert))
    print(f"mesh root for trust domain {args.trust_domain} in {out}: root.pem, root.key "
          f"(mode 0600), valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    return 0


def _format_inspect(report: dict[str, Any]) -> str:
    def line(c: dict[str, Any]) -> str:
        sans = f"  SAN {', '.join(c['uri_sans'])}" if c["uri_sans"] else ""
        ca = f"  CA pathlen={c['path_length']}" if c["ca"] else ""
        return f"{c['subject'] or '(empty subject)'}{sans}{ca}  {c['days_left']:.2f} days left"
    root = report["root"]
    origin = ("made by this node (self-signed CA)" if root.get("self_made") else
              "brought by the user" if root.get("key_held", True) else
              "held by the root's holder: this node's issuer was signed from its CSR")
    rot = report["rotation"]
    domain = report.get("trust_domain") or "(no mesh config yet)"
    whose = ("the root's" if report.get("root_trust_domain") else
             "the Mesh's: the root names none")
    out = [f"node {report['node']}   trust domain {domain} ({whose})",
           f"root     {line(root)}\n         {origin}",
           f"issuer   {line(report['issuer'])}\n         issued by {report['issuer']['issuer']}",
           f"bundle   {len(report['bundle'])} root(s), generation {rot['generation']}"
           + ("  (rotation in progress)" if rot["pending"] else "")]
    out += [f"         {line(c)}" for c in report["bundle"]]
    out.append(f"workloads ({len(report['workloads'])})")
    out += [f"         {line(c)}  [{c['worker']}]" for c in report["workloads"]]
    return "\n".join(out)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.workers < 1:
        raise UsageError("--requests and --workers must be at least 1")
    if args.canary and args.requests < (least := demo.canary.min_requests()):
        raise UsageError(f"--canary needs --requests of at least {least}: with fewer, a step's "
                         f"tolerance ({demo.canary.TOLERANCE}) cannot tell its weight from "
                         f"0 % or 100 %")
    bases = tuple(args.port_bases or [DEFAULT_BASE])
    try:
        demo.plan_nodes(Path("."), bases)  # one or two blocks, in range, apart
    except (demo.DemoError, ValueError) as exc:
        raise UsageError(f"--port-base: {exc}") from None
    kind = "good" if args.rollout else args.rollout_bad
    if kind is not None and len(bases) > 1:
        raise UsageError("--rollout runs on one node (rollouts read the figures of the node "
                         "that calls the canary): give one --port-base")
    return demo.run(demo.DemoOptions(args.runtime_dir, bases, args.requests, args.workers,
                                     args.keep, args.timeout, args.canary, kind))


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "logs": cmd_logs,
            "apply": cmd_apply, "get": cmd_get, "delete": cmd_delete, "ca": cmd_ca,
            "demo": cmd_demo, "check": cli_check.cmd_check,
            "proxy-config": cli_proxyconfig.cmd_proxy_config, "stat": cli_stat.run,
            "rollout": cmd_rollout, "tap": cli_tap.run_tap, "top": cli_tap.run_top}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return EX_USAGE
    except ConfigError as exc:
        print(f"meshnode {args.command}: configuration refused:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except IdentityError as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return EX_CONFIG
    except nodectl.NotRunning as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return EX_NOT_RUNNING
    except nodectl.Unavailable as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except nodectl.Refused as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return EX_CONFIG if exc.kind == "config" else EX_FAIL
    except nodectl.NodeError as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return EX_FAIL


if __name__ == "__main__":
    sys.exit(main())
