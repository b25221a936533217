"""The node under supervisord: writing its config, starting it, talking XML-RPC to it.

One runtime dir = one node = one supervisord, reached only through the unix socket in
that dir (mode 0700), so several nodes on one machine never mix and no TCP port is
opened for control. The bus is started first (lowest priority number); everything
else reconnects to it by itself, so the order of the rest does not matter.

Stopping goes the other way round: the proxy workers first, each draining gracefully
(meshnode.proxy: up to the Mesh's drainDuration, at most MAX_DRAIN_DURATION_S), while
the bus, control and telemetry still run, then the rest. supervisord's own shutdown
(on its SIGTERM, e.g. from systemd) keeps that order too: it stops groups from the
highest priority number down. A worker's stop wait outlasts its longest drain, so
supervisord never SIGKILLs a draining worker.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from .config.model import MAX_DRAIN_DURATION_S

CONF = "supervisord.conf"
SOCK = "supervisor.sock"
PIDFILE = "supervisord.pid"
PROXY_GROUP = "proxy"
STOP_WAIT_S = 10
# A worker ends its drain by the Mesh's drainDuration (at most MAX_DRAIN_DURATION_S),
# gives its engine 2 s more (meshnode.proxy.DRAIN_MARGIN_S) and exits: 10 s of slack on
# a loaded machine before supervisord would SIGKILL it.
PROXY_STOP_WAIT_S = int(MAX_DRAIN_DURATION_S) + 10


@dataclass(frozen=True)
class NodeOptions:
    runtime_dir: Path
    node: str
    port_base: int
    workers: int
    config_dir: Path | None = None
    ca_root: Path | None = None
    ca_issuer: Path | None = None
    log_level: str = "info"
    trust_domain: str | None = None  # the mesh root's (None: it names none)

    def process_names(self) -> list[str]:
        return ["bus", "control", "ca", "telemetry",
                *(f"proxy-{i}" for i in range(self.workers))]


def _program(name: str, module: str, opts: NodeOptions, priority: int,
             extra: list[str] | None = None, numprocs: int = 0,
             stop_wait_s: int = STOP_WAIT_S) -> str:
    """One [program:x] section; numprocs > 0 makes a group of workers x-0, x-1, ..."""
    rd = opts.runtime_dir
    args = [sys.executable, "-m", module, "--runtime-dir", str(rd), "--node", opts.node,
            "--port-base", str(opts.port_base), "--log-level", opts.log_level, *(extra or [])]
    # supervisord expands %(...)s in a command, so a literal % is doubled.
    command = " ".join(shlex.quote(a).replace("%", "%%") for a in args)
    lines = [f"[program:{name}]", f"priority={priority}",
             "autostart=true", "autorestart=true", "startsecs=1", "startretries=5",
             "stopsignal=TERM", f"stopwaitsecs={stop_wait_s}",
             "stopasgroup=true", "killasgroup=true",
             "redirect_stderr=true", "stdout_logfile_maxbytes=10MB",
             "stdout_logfile_backups=3", f"directory={rd}",
             'environment=PYTHONUNBUFFERED="1"']
    if numprocs:
        lines += [f"command={command} --worker %(process_num)d", f"numprocs={numprocs}",
                  "process_name=%(program_name)s-%(process_num)d",
                  f"stdout_logfile={rd}/logs/%(program_name)s-%(process_num)d.log"]
    else:
        lines += [f"command={command}", f"stdout_logfile={rd}/logs/{name}.log"]
    return "\n".join(lines) + "\n"


def render_conf(opts: NodeOptions) -> str:
    rd = opts.runtime_dir
    expect = ",".join(opts.process_names())
    control_extra = ["--config", str(opts.config_dir)] if opts.config_dir else []
    if opts.trust_domain:
        control_extra += ["--trust-domain", opts.trust_domain]
    return "\n".join([
        "; written by `meshnode up`; edits are overwritten at the next `up`",
        "[unix_http_server]", f"file={rd}/{SOCK}", "chmod=0700", "",
        "[supervisord]", f"logfile={rd}/logs/supervisord.log", f"pidfile={rd}/{PIDFILE}",
        f"directory={rd}", f"identifier=meshnode-{opts.node}", "nodaemon=false",
        f"childlogdir={rd}/logs", "logfile_maxbytes=10MB", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{rd}/{SOCK}", "",
        _program("bus", "meshnode.broker", opts, 10),
        _program("control", "meshnode.control", opts, 20, control_extra),
        _program("ca", "meshnode.ca", opts, 20,
                 [*(["--ca-root", str(opts.ca_root)] if opts.ca_root else []),
                  *(["--ca-issuer", str(opts.ca_issuer)] if opts.ca_issuer else [])]),
        _program("telemetry", "meshnode.telemetry", opts, 20, ["--expect", expect]),
        _program(PROXY_GROUP, "meshnode.proxy", opts, 30, ["--workers", str(opts.workers)],
                 numprocs=opts.workers,
                 stop_wait_s=PROXY_STOP_WAIT_S),
    ])


def rpc(runtime_dir: Path) -> Any:
    """An XML-RPC proxy to the node's supervisord over its unix socket."""
    url = f"unix://{runtime_dir}/{SOCK}"
    return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                     transport=SupervisorTransport(None, None, url))


def supervisord_pid(runtime_dir: Path) -> int | None:
    """The pid of this node's running supervisord, or None."""
    try:
        pid = int((runtime_dir / PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def start(opts: NodeOptions) -> None:
    """Write supervisord.conf and start supervisord (it daemonises itself)."""
    rd = opts.runtime_dir
    (rd / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = rd / CONF
    conf.write_text(render_conf(opts))
    os.chmod(conf, 0o600)
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def process_info(runtime_dir: Path) -> list[dict[str, Any]]:
    return list(rpc(runtime_dir).supervisor.getAllProcessInfo())


def stop(runtime_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop every process and supervisord itself; True when nothing is left running.

    The workers go first and this waits for their drains (bounded by their stop wait);
    `timeout_s` bounds what comes after: the rest of the node and supervisord's exit.
    """
    pid = supervisord_pid(runtime_dir)
    if pid is None:
        return True
    try:
        server = rpc(runtime_dir)
        # Returns once every worker has exited: a draining worker's last answers are
        # counted by telemetry, and none loses its bus while it drains.
        server.supervisor.stopProcessGroup(PROXY_GROUP)
        server.supervisor.stopAllProcesses()
        server.supervisor.shutdown()
    except (OSError, xmlrpc.client.Fault):
        # The socket is gone or refuses us: fall back to supervisord's own signal,
        # on which it stops its children too (workers first, draining).
        os.kill(pid, signal.SIGTERM)
        timeout_s += PROXY_STOP_WAIT_S
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # supervisord removes its pidfile on the way out, before it has exited: the
        # node is down when the process is gone, not when the file is.
        if supervisord_pid(runtime_dir) is None and not _running(pid):
            return True
        time.sleep(0.1)
    return False


def _running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not reaped yet) has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # gone meanwhile; or no procfs, where kill's answer stands
        return not Path("/proc/self").exists()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold ")".
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
