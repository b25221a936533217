"""What the CLI does to a node: start, wait for ready, stop, inspect, and bus calls.

Kept apart from argument parsing so tests and the demo can drive a node the same way
the CLI does. Every function takes the runtime dir: that dir *is* the node.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import xmlrpc.client
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import zmq

from bus.endpoints import Endpoints, prepare
from bus.errors import BusError, RemoteError, RequestTimeout, ServiceUnavailable
from bus.request import Client

from . import localprobe, sharedstate, supervise, ticketkeys
from .config import DEFAULT_CONFIG, check_root_domain, store_dir
from .identity import pki
from .identity.authority import ca_dir, planned_root
from .ports import Ports
from .supervise import NodeOptions


class NodeError(Exception):
    """Something the user must act on; the message says what."""


class NotRunning(NodeError):
    pass


class Unavailable(NodeError):
    pass


class Refused(NodeError):
    """A node process refused the request (kind: config, not-found, usage...)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def options(runtime_dir: Path, node: str | None, port_base: int, workers: int,
            config_dir: Path | None, log_level: str = "info",
            ca_root: Path | None = None, ca_issuer: Path | None = None) -> NodeOptions:
    return NodeOptions(runtime_dir=runtime_dir.resolve(), node=node or socket.gethostname(),
                       port_base=port_base, workers=workers,
                       config_dir=config_dir.resolve() if config_dir else None,
                       ca_root=ca_root.resolve() if ca_root else None,
                       ca_issuer=ca_issuer.resolve() if ca_issuer else None, log_level=log_level)


def check_port_free(port: int, what: str) -> None:
    """NodeError unless a node could listen on 127.0.0.1:`port` (`what` names it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the node's listeners bind: a port that only lingering TIME_WAIT connections
        # hold (an earlier run's, or a client's ephemeral port) is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise NodeError(f"port {port} ({what}) is in use; pick another --port-base") from None


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_queued_connections(path: Path = MIGRATE_REQ) -> str:
    """Set net.ipv4.tcp_migrate_req where this process may; say what holds either way.

    The workers share their listening ports (SO_REUSEPORT), and a stopping worker closes
    its listeners: with this sysctl at 1 (Linux 5.14+, per network namespace) the kernel
    hands the connections still in that worker's accept queue to a sibling; at 0 they
    are reset. Never fatal: the node works without it.
    """
    lost = "connections queued at a worker that stops or restarts may be reset"
    kept = "a stopping worker's queued connections go to its siblings"
    try:
        if path.read_text().strip() == "1":
            return f"net.ipv4.tcp_migrate_req is 1: {kept}"
    except OSError:
        return f"net.ipv4.tcp_migrate_req is not available in this kernel: {lost}"
    try:
        path.write_text("1\n")
    except OSError as exc:  # not root, or /proc/sys read-only (a container's netns)
        return f"cannot set net.ipv4.tcp_migrate_req ({exc.strerror or exc}): {lost}"
    return f"set net.ipv4.tcp_migrate_req=1: {kept}"


def root_domain(opts: NodeOptions) -> str | None:
    """The trust domain of the mesh root the node's ca will run under (None: it names
    none); refuse (ConfigError, naming the file, resource and field) a stored or seed
    config whose Mesh names another, before anything starts (DESIGN §4)."""
    root = planned_root(ca_dir(opts.runtime_dir), opts.ca_root, opts.ca_issuer)
    domain = None if root is None else pki.root_trust_domain(root)
    check_root_domain(store_dir(opts.runtime_dir), opts.config_dir or DEFAULT_CONFIG, domain)
    return domain


def up(opts: NodeOptions, timeout_s: float = 60.0) -> str:
    """Start the node and return a summary once /ready says 200; raise NodeError if not
    (ConfigError or IdentityError when the config or the root is refused)."""
    rd = opts.runtime_dir
    rd.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(rd, 0o700)
    pid = supervise.supervisord_pid(rd)
    if pid is not None:
        raise NodeError(f"a node is already running in {rd} (supervisord pid {pid}); "
                        f"run `meshnode down --runtime-dir {rd}` first")
    try:  # fail early, with the reason, on a runtime dir too deep for ipc sockets
        prepare(Endpoints.for_runtime_dir(rd))
    except BusError as exc:
        raise NodeError(str(exc)) from None
    ports = Ports(opts.port_base)
    for port, what in ((ports.admin, "admin"), (ports.metrics, "metrics")):
        check_port_free(port, what)
    opts = replace(opts, trust_domain=root_domain(opts))
    ticketkeys.make(rd)  # fresh for this start, before any worker reads it
    sharedstate.make(rd)  # no ejection outlives the node (outlier detection)
    sharedstate.make(rd, sharedstate.RATE_LIMITS)  # nor a spent token bucket
    sharedstate.make(rd, sharedstate.OVERLOAD)  # nor a request counted in flight
    migrate = migrate_queued_connections()
    try:
        supervise.start(opts)
    except Exception as exc:  # supervisord itself did not start: say why, with its output
        detail = getattr(exc, "stderr", b"") or b""
        raise NodeError(f"supervisord failed to start: {exc} {detail.decode(errors='replace')}"
                        f"\nread {rd}/logs/supervisord.log") from None
    deadline = time.monotonic() + timeout_s
    last_body = b""
    while time.monotonic() < deadline:
        failed = [p for p in _process_info(rd) if p["statename"] in ("FATAL", "EXITED")]
        if failed:
            _fail(rd, [p["name"] for p in failed], "exited and could not be restarted")
        try:
            status, last_body = localprobe.get(f"http://127.0.0.1:{ports.admin}/ready")
            if status == 200:
                return (f"node {opts.node} is ready in {rd}\n"
                        f"  admin    http://127.0.0.1:{ports.admin}/ready\n"
                        f"  metrics  http://127.0.0.1:{ports.metrics}/metrics\n"
                        f"  outbound 127.0.0.1:{ports.outbound}   inbound :{ports.inbound}\n"
                        f"  processes: {', '.join(opts.process_names())}\n"
                        f"  {migrate}")
        except OSError:
            pass  # telemetry is not listening (or answering) yet
        time.sleep(0.2)
    try:
        body = json.loads(last_body)
        pending, problems = body.get("not_ready", []), body.get("problems") or {}
    except (ValueError, AttributeError):
        pending, problems = ["telemetry"], {}
    said = "".join(f"\n  {name}: {problem}" for name, problem in sorted(problems.items()))
    _fail(rd, pending or ["telemetry"], f"not ready within {timeout_s:g}s", said)
    raise AssertionError("unreachable")


def _fail(rd: Path, names: list[str], why: str, said: str = "") -> None:
    """Stop the half-started node and raise with what its processes `said` (their
    config problems) and the logs to read."""
    tails = []
    for name in names:
        log = rd / "logs" / f"{name}.log"
        tails.append(f"--- {log} (last lines)\n{_tail(log, 8)}")
    # How each ended (exit status or signal): a process that died before it could log
    # says so only there.
    log = rd / "logs" / "supervisord.log"
    tails.append(f"--- {log} (last lines)\n{_tail(log, 8)}")
    down(rd)
    raise NodeError(f"node failed to start: {', '.join(names)} {why}; the node was stopped."
                    f"{said}\n" + "\n".join(tails))


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) if lines else text


def _process_info(rd: Path) -> list[dict[str, Any]]:
    try:
        return supervise.process_info(rd)
    except (OSError, xmlrpc.client.Fault):
        return []


def _leftovers(rd: Path) -> list[int]:
    """Pids of processes started for this runtime dir that are still alive."""
    marker = f"--runtime-dir\0{rd}\0".encode()
    pids = []
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # Only node processes (python -m meshnode.<process>), never this CLI itself.
        if marker in cmdline + b"\0" and b"-m\0meshnode." in cmdline and int(entry.name) != own:
            pids.append(int(entry.name))
    return pids


def down(rd: Path) -> str:
    if supervise.supervisord_pid(rd) is None and not _leftovers(rd):
        return f"no node running in {rd}"
    clean = supervise.stop(rd)
    # supervisord stops its children before it exits; anything still alive was
    # orphaned (e.g. supervisord was killed) and must not outlive the node.
    killed = _leftovers(rd)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    note = f" (killed {len(killed)} orphaned processes)" if killed else ""
    return f"node in {rd} stopped{note}" if clean else f"node in {rd}: supervisord did not stop in time{note}"


def call(rd: Path, service: str, kind: str, body: Any, timeout_s: float = 10.0) -> Any:
    """A bus request from the CLI; retries while the service is restarting."""
    if supervise.supervisord_pid(rd) is None:
        raise NotRunning(f"no node running in {rd} (start one with `meshnode up`)")
    ctx = zmq.Context()
    client = Client(ctx, Endpoints.for_runtime_dir(rd), node="cli", src=f"cli-{os.getpid()}")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                return client.call(service, kind, body, timeout_s=max(0.1, remaining))
            except ServiceUnavailable as exc:
                if remaining <= 0.3:
                    raise Unavailable(f"{exc} (is the {service} process running? "
                                      f"see `meshnode status`)") from None
                time.sleep(0.2)
            except RequestTimeout as exc:
                raise Unavailable(str(exc)) from None
            except RemoteError as exc:
                raise Refused(str(exc), exc.kind) from None
    finally:
        ctx.destroy(linger=0)


ANSWER_POLL_S = 0.1
# A NACK control recorded before an apply may be stale (the worker retries, and says
# its answer again every 5 s: meshnode.proxy.REANSWER_EVERY_S): wait this long for a
# fresh one before believing it.
STALE_NACK_S = 7.0


def wait_answers(rd: Path, version: int, since: float,
                 timeout_s: float) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Wait until every running proxy worker has answered config `version` (or a later
    one): its ACK, or its NACK with the reason. Returns (answers by worker, the workers
    that gave none within `timeout_s`). `since` (time.time() before the apply): a NACK
    control recorded earlier is taken only when no fresher answer comes."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        try:
            workers = sorted(p["name"] for p in supervise.process_info(rd)
                             if p["name"].startswith("proxy-")
                             and p["statename"] in ("RUNNING", "STARTING", "BACKOFF"))
        except (OSError, xmlrpc.client.Fault) as exc:
            raise Unavailable(f"cannot reach supervisord in {rd}: {exc}") from None
        acks = call(rd, "control", "status", None,
                    timeout_s=max(1.0, deadline - time.monotonic())).get("acks", {})
        now = time.monotonic()
        stale_ok = now - start >= STALE_NACK_S or now >= deadline
        answers = {}
        for worker in workers:
            ack = acks.get(worker)
            if not isinstance(ack, dict) or not isinstance(ack.get("version"), int) \
                    or ack["version"] < version:
                continue
            if ack.get("status") == "ACK" or stale_ok or float(ack.get("ts") or 0) >= since:
                answers[worker] = ack
        missing = [w for w in workers if w not in answers]
        if not missing or now >= deadline:
            return answers, missing
        time.sleep(ANSWER_POLL_S)


def status(rd: Path) -> dict[str, Any]:
    """Each process's supervisor state and pid, with its last health report."""
    if supervise.supervisord_pid(rd) is None:
        raise NotRunning(f"no node running in {rd}")
    try:
        info = supervise.process_info(rd)
    except (OSError, xmlrpc.client.Fault) as exc:
        raise Unavailable(f"cannot reach supervisord in {rd}: {exc}") from None
    try:
        health = call(rd, "telemetry", "processes", None, timeout_s=2.0)
    except NodeError:
        health = {"processes": {}, "not_ready": None}
    reports = health.get("processes", {})
    processes = []
    for p in info:
        report = reports.get(p["name"], {})
        processes.append({"name": p["name"], "state": p["statename"], "pid": p["pid"] or None,
                          "uptime_s": max(0, p["now"] - p["start"]) if p["pid"] else 0,
                          "healthy": report.get("healthy"),
                          "config_version": report.get("config_version"),
                          # A worker's NACK: the version it was given and why it is not
                          # carried out.
                          "config_nacked": report.get("config_nacked"),
                          "config_problem": report.get("config_problem")})
    # How the workers tell local callers apart (meshnode.callers): the same snapshot
    # gives every worker the same answer.
    callers = next((r["callers"] for _, r in sorted(reports.items())
                    if isinstance(r.get("callers"), dict)), None)
    return {"runtime_dir": str(rd), "processes": processes,
            "not_ready": health.get("not_ready"), "callers": callers}


def format_status(status: dict[str, Any]) -> str:
    rows = [("PROCESS", "STATE", "PID", "UPTIME", "HEALTHY", "CONFIG")]
    for p in status["processes"]:
        healthy = {True: "yes", False: "no", None: "?"}[p["healthy"]]
        version = "-" if p["config_version"] is None else str(p["config_version"])
        rows.append((p["name"], p["state"], str(p["pid"] or "-"), f"{p['uptime_s']}s",
                     healthy, version))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    for p in status["processes"]:
        if p.get("config_problem"):
            lines.append(f"{p['name']}: config version {p.get('config_nacked')} NACKed: "
                         f"{p['config_problem']}")
    if status.get("not_ready") is None:
        lines.append("telemetry unreachable: health unknown")
    elif status["not_ready"]:
        lines.append(f"not ready: {', '.join(status['not_ready'])}")
    else:
        lines.append("ready")
    callers = status.get("callers")
    if callers:
        by = callers.get("by", "?")
        if by == "single workload" and callers.get("identity"):
            by += f" (every local caller is {callers['identity']})"
        elif by == "address":
            by += " (no workload here names its spec.user: any local process may bind an address)"
        lines.append(f"callers told apart by: {by}")
        lines.extend(f"  {problem}" for problem in callers.get("problems") or ())
    return "\n".join(lines)


def log_path(rd: Path, process: str) -> Path:
    """RUNTIME_DIR/logs/PROCESS.log (PROCESS "access": the access log)."""
    if "/" in process or process.startswith("."):
        raise NodeError(f"no such process {process!r}")
    path = rd / "logs" / f"{process}.log"
    if not path.exists():
        known = sorted(p.stem for p in (rd / "logs").glob("*.log")) if (rd / "logs").is_dir() else []
        raise NodeError(f"no log for {process!r} in {rd / 'logs'}; known: {', '.join(known) or 'none'}")
    return path


def read_log(rd: Path, process: str, lines: int) -> str:
    text = _tail(log_path(rd, process), lines)
    return text if text.endswith("\n") or not text else text + "\n"


FOLLOW_POLL_S = 0.2


def follow_log(rd: Path, process: str) -> Iterator[str]:
    """The log's lines from its end on, as they are written, across rotations (as
    `tail -F`: a file renamed away is read to its end, then the new one from its start).
    Never ends by itself."""
    path = log_path(rd, process)
    f = path.open("rb")
    f.seek(0, os.SEEK_END)
    partial = b""
    while True:
        try:
            rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            rotated = False             # between the rename and the new file
        # Read before switching: the old file may have had lines added since the last read.
        partial += f.read()
        *whole, partial = partial.split(b"\n")
        for line in whole:
            yield line.decode(errors="replace") + "\n"
        if rotated:
            f.close()
            f = path.open("rb")
        elif not whole:
            time.sleep(FOLLOW_POLL_S)
