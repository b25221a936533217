"""The sidecar-pair benchmark: meshnode against HAProxy and nginx pairs, on this machine, in one run.

    load (wrk, CPU 1) → outbound sidecar → TLS 1.3 + client cert → inbound sidecar → app (nginx)
                        └──────────── app and both sidecars on CPU 0 ────────────┘

Pairs: ``direct`` (wrk → app), ``haproxy`` (the reference), ``nginx``, ``meshnode``.
Scenarios: ``keepalive``, ``newconn`` (Connection: close), ``64k`` (MiB/s), ``unloaded``
(one connection). Rounds are interleaved (round → scenario → pair: a round starts
every pair fresh, runs each scenario on each pair in turn, then stops them; with
``--order pair``, round → pair → scenario, one pair running at a time), and the report
gives per-(pair, scenario) medians and their ratios to HAProxy measured in the same run. The shapes,
placement and load are those of ``../shared/peers/README.md``; see bench/README.md.

    python bench/sidecar_pair.py [--rounds 3] [--duration 8] [--pairs ...] [--json out.json]

With ``--baseline VENV`` the pair ``meshnode-base`` (the meshnode pair with the meshnode
installed in VENV, e.g. the commit before a change) runs in the same rounds, and the
report compares meshnode with it per metric.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as `python bench/sidecar_pair.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers  # noqa: E402
from bench.pki import TestPKI, make_pki  # noqa: E402
from meshnode import localprobe  # noqa: E402

EX_USAGE, EX_UNAVAILABLE, EX_INTERRUPTED = 64, 69, 130
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAIRS = ("direct", "haproxy", "nginx", "meshnode")  # the default set, in run order
REFERENCE = "haproxy"
START_TIMEOUT_S = 10.0
MESHNODE_UP_TIMEOUT_S = 60.0
# Issue "data plane", Performance: ratios to the HAProxy pair measured in the same run.
TARGETS = {"keepalive_rps": (">=", 1.25), "keepalive_p99_ms": ("<=", 1.0),
           "newconn_rps": (">=", 1.0), "64k_mib_s": (">=", 1.1)}
RSS_TARGET_MB = 40.0


class Unavailable(Exception):
    """A pair that cannot be measured; the message says why and goes into the report."""


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that every `finally` runs."""


# --- scenarios and placement --------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    threads: int
    connections: int
    close: bool = False  # Connection: close, a new connection per request


SCENARIOS = {s.name: s for s in (
    Scenario("keepalive", "/", 2, 64),
    Scenario("newconn", "/", 2, 64, close=True),
    Scenario("64k", "/64k", 2, 64),
    Scenario("unloaded", "/", 1, 1),
)}


@dataclass(frozen=True)
class Placement:
    """The system under test on one CPU, the load generator on another (peers/README.md)."""

    sut_cpu: int | None
    load_cpu: int | None
    note: str

    @classmethod
    def detect(cls) -> "Placement":
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, f"only {len(cpus)} CPU available to this process: nothing "
                       "pinned, the load generator shares the CPU with the system under test; "
                       "figures are not comparable to a 2-core placement")
        return cls(cpus[0], cpus[1], f"system under test (app + both sidecars) on CPU "
                   f"{cpus[0]}, wrk on CPU {cpus[1]} (taskset -c)")

    def sut(self, argv: list[str]) -> list[str]:
        return argv if self.sut_cpu is None else ["taskset", "-c", str(self.sut_cpu), *argv]

    def load(self, argv: list[str]) -> list[str]:
        return argv if self.load_cpu is None else ["taskset", "-c", str(self.load_cpu), *argv]


# --- processes ----------------------------------------------------------------------

class Launcher:
    """Starts every long-lived process in its own process group and stops each by that group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], timeout_s: float, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run to completion (bounded); its group is killed on timeout or interrupt."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, text=True,
                                cwd=cwd, env=env)
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(argv, -9, out, (err or "") + f"\n(killed after {timeout_s:g}s)")
        finally:
            if proc.poll() is None:  # interrupted
                self.stop(proc)
        self.procs.remove(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def stop(self, proc: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # A group can outlive its leader (an nginx worker whose master was killed).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their descendants that are alive now."""
    children = _children_map()
    seen: list[int] = []
    todo = [p for p in roots if Path(f"/proc/{p}").exists()]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo += children.get(pid, [])
    return seen


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mapped_engine(pid: int) -> str | None:
    """The fastpath engine extension a process has loaded (from /proc/PID/maps), or None."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(None, 5)[-1] if line.count(" ") >= 5 else ""
        if "/fastpath/engine." in path and path.endswith(".so"):
            return path
    return None


def cpu_busy_ticks(cpu: int | None) -> tuple[int, int]:
    """(busy, total) ticks of one CPU from /proc/stat; busy excludes idle and iowait."""
    label = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == label:
            values = [int(v) for v in parts[1:]]
            total = sum(values[:8])  # guest time is already inside user
            return total - values[3] - values[4], total
    return 0, 0


def wait_listening(port: int, proc: subprocess.Popen[Any] | None, what: str,
                   timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"{what} exited with status {proc.returncode} before listening")
        try:
            probe = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            if not localprobe.is_self_connected(probe):  # see meshnode/localprobe.py
                probe.close()
                return
            localprobe.reset(probe)
        except OSError:
            pass
        time.sleep(0.02)
    raise Unavailable(f"{what}: nothing listening on 127.0.0.1:{port} after {timeout_s:g}s")


def http_probe(launcher: Launcher, port: int, path: str, host: str | None) -> tuple[int, int, str]:
    """One request with curl: (status, body bytes, error text)."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
            "--max-time", "5", f"http://127.0.0.1:{port}{path}"]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    res = launcher.run(argv, timeout_s=10)
    code, _, size = res.stdout.strip().partition(" ")
    return (int(code) if code.isdigit() else 0, int(size) if size.isdigit() else 0,
            res.stderr.strip())


def check_path(launcher: Launcher, port: int, host: str | None, what: str) -> None:
    """The pair answers 200 "ok" at / and 64 KiB at /64k, or it is not measured."""
    for path, size in (("/", 2), ("/64k", peers.BODY_64K_BYTES)):
        code, got, err = http_probe(launcher, port, path, host)
        if code != 200 or got != size:
            hint = f": {err}" if err else ""
            raise Unavailable(f"GET {path} through {what} 127.0.0.1:{port} gave status "
                              f"{code or 'none'} ({got} bytes), not 200 ({size} bytes){hint}")


def _tls_request(port: int, ctx: ssl.SSLContext, sni: str) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            return str(tls.version()), tls.recv(64)


def check_mtls(port: int, pki: TestPKI | None, sni: str) -> dict[str, Any]:
    """The inbound side speaks TLS 1.3 with our client cert and refuses a client without one."""
    result: dict[str, Any] = {}
    if pki is not None:  # the peers use the test PKI; meshnode has its own mesh CA
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca_crt)
        ctx.load_cert_chain(pki.client_crt, pki.client_key)
        try:
            version, head = _tls_request(port, ctx, sni)
        except (OSError, ssl.SSLError) as exc:
            raise Unavailable(f"inbound 127.0.0.1:{port} refused the client certificate: {exc}") from None
        if not head.startswith(b"HTTP/1.1 200"):
            raise Unavailable(f"inbound 127.0.0.1:{port} answered {head[:20]!r} over mTLS")
        result["tls_version"] = version
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
    try:
        _, head = _tls_request(port, bare, sni)
        refused = not head.startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        refused = True  # TLS 1.3: the alert arrives on the first read after the handshake
    if not refused:
        raise Unavailable(f"inbound 127.0.0.1:{port} served a client without a certificate")
    result["refuses_client_without_cert"] = True
    return result


# --- the pairs ----------------------------------------------------------------------

@dataclass
class Target:
    port: int
    host: str | None = None  # Host header for the load, when routing needs it
    info: dict[str, Any] = field(default_factory=dict)


class Pair:
    name = ""
    description = ""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.info: dict[str, Any] = {}  # what start() checked, kept even if it then failed

    def start(self, workdir: Path) -> Target:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def cpu_roots(self) -> list[int]:
        """Processes whose CPU (with all descendants) is the pair's, both sides."""
        return []

    def rss_pids(self) -> list[int]:
        """The proxy processes whose peak RSS is reported."""
        return process_tree(self.cpu_roots())


class Direct(Pair):
    name = "direct"
    description = "wrk → app nginx, no sidecar"

    def start(self, workdir: Path) -> Target:
        return Target(self.ctx.app_port)


class ProxyPair(Pair):
    """Two proxy processes started from config files, killed by process group."""

    def __init__(self, ctx: "Context") -> None:
        super().__init__(ctx)
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn_both(self, workdir: Path, inbound: list[str], outbound: list[str],
                   ports: peers.PairPorts) -> Target:
        ctx = self.ctx
        for side, argv, port in (("inbound", inbound, ports.inbound),
                                 ("outbound", outbound, ports.outbound)):
            proc = ctx.launcher.spawn(ctx.placement.sut(argv), workdir / f"{self.name}-{side}.out")
            self.procs.append(proc)
            wait_listening(port, proc, f"{self.name} {side}")
        self.info.update(check_mtls(ports.inbound, ctx.pki, ctx.pki.sni))
        check_path(ctx.launcher, ports.outbound, None, f"{self.name} outbound")
        return Target(ports.outbound, info=self.info)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.ctx.launcher.stop(proc)
        self.procs.clear()

    def cpu_roots(self) -> list[int]:
        return [p.pid for p in self.procs]


class HAProxy(ProxyPair):
    name = "haproxy"
    description = "HAProxy 2.6 HTTP mode, mTLS hop pooled (http-reuse always): the reference"

    def start(self, workdir: Path) -> Target:
        ports = peers.PairPorts(peers.free_port(), peers.free_port())
        inbound, outbound = workdir / "haproxy-inbound.cfg", workdir / "haproxy-outbound.cfg"
        inbound.write_text(peers.haproxy_inbound(ports, self.ctx.app_port, self.ctx.pki))
        outbound.write_text(peers.haproxy_outbound(ports, self.ctx.pki))
        return self.spawn_both(workdir, ["haproxy", "-db", "-f", str(inbound)],
                               ["haproxy", "-db", "-f", str(outbound)], ports)


class Nginx(ProxyPair):
    name = "nginx"
    description = "nginx 1.22 HTTP mode, 1 worker each side, keepalive 256 upstream pools"

    def start(self, workdir: Path) -> Target:
        ports = peers.PairPorts(peers.free_port(), peers.free_port())
        argv = []
        for side, text in (("inbound", peers.nginx_inbound(workdir, ports, self.ctx.app_port, self.ctx.pki)),
                           ("outbound", peers.nginx_outbound(workdir, ports, self.ctx.pki))):
            conf = workdir / f"nginx-{side}.conf"
            conf.write_text(text)
            argv.append(["nginx", "-p", str(workdir), "-e", str(workdir / f"nginx-{side}.error.log"),
                         "-c", str(conf)])
        return self.spawn_both(workdir, argv[0], argv[1], ports)

    def rss_pids(self) -> list[int]:
        # The masters only supervise; a "proxy worker" is what carries the traffic.
        roots = set(self.cpu_roots())
        return [p for p in process_tree(self.cpu_roots()) if p not in roots]


class Meshnode(Pair):
    name = "meshnode"
    description = "one meshnode node, --workers 1: its outbound → its own inbound (mTLS)"

    def __init__(self, ctx: "Context") -> None:
        super().__init__(ctx)
        self.runtime_dir: Path | None = None
        self.port_base: int | None = None
        self.supervisord: int | None = None
        self.workers: list[int] = []

    # How `meshnode` is run. This pair: this interpreter, so the node runs the code next
    # to this file; the meshnode-base pair overrides these three.
    def _python(self) -> str:
        return sys.executable

    def _cwd(self) -> Path | None:
        return None  # the harness's own

    def _env(self) -> dict[str, str] | None:
        return None  # the harness's own

    def _cli(self, *args: str) -> list[str]:
        return [self._python(), "-m", "meshnode.cli", *args]

    def _extra_resources(self) -> str:
        return ""  # meshnode-routes adds its HTTPRoute

    def _run_cli(self, argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        return self.ctx.launcher.run(argv, timeout_s=timeout_s, cwd=self._cwd(), env=self._env())

    def start(self, workdir: Path) -> Target:
        ctx = self.ctx
        config = workdir / "meshnode-config"
        config.mkdir(exist_ok=True)
        (config / "bench.yaml").write_text(peers.meshnode_resources(ctx.app_port)
                                           + self._extra_resources())
        # Short and ours alone: the node's ipc sockets live under it (108-byte limit).
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mnb-", dir="/tmp"))
        # Not within 100 ports of another meshnode pair's block (meshnode-base runs beside).
        base = peers.meshnode_port_base(avoid=ctx.meshnode_bases)
        self.port_base = base
        ctx.meshnode_bases.add(base)
        up = ctx.placement.sut(self._cli("up", "--runtime-dir", str(self.runtime_dir),
                                         "--port-base", str(base), "--workers", "1",
                                         "--config", str(config),
                                         "--timeout", str(int(MESHNODE_UP_TIMEOUT_S))))
        (workdir / "meshnode-up.cmd").write_text(
            (f"cd {self._cwd()}\n" if self._cwd() else "") + " ".join(up) + "\n")
        res = self._run_cli(up, timeout_s=MESHNODE_UP_TIMEOUT_S + 30)
        (workdir / "meshnode-up.out").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            last = (res.stderr.strip() or res.stdout.strip()).splitlines()[:3]
            raise Unavailable(f"meshnode up exited {res.returncode}: {' | '.join(last)}")
        self._find_processes()
        # os.sched_getaffinity is what `taskset -p PID` reads.
        info = self.info
        info.update(port_base=base, runtime_dir=str(self.runtime_dir),
                    worker_affinity={str(p): sorted(os.sched_getaffinity(p)) for p in self.workers},
                    worker_engine={str(p): mapped_engine(p) for p in self.workers})
        self._check_build(info["worker_engine"])
        if ctx.placement.sut_cpu is not None:
            wrong = [p for p in self.workers if os.sched_getaffinity(p) != {ctx.placement.sut_cpu}]
            if wrong:
                raise Unavailable(f"proxy workers {wrong} are not pinned to CPU {ctx.placement.sut_cpu}")
        outbound, inbound = base + 1, base + 6
        code, _, err = http_probe(ctx.launcher, outbound, "/", peers.SNI)
        if code != 200:
            why = err or f"status {code}"
            raise Unavailable(f"no 200 through the outbound port 127.0.0.1:{outbound} "
                              f"(port-base+1) with Host: {peers.SNI}: {why}")
        check_path(ctx.launcher, outbound, peers.SNI, f"{self.name} outbound")
        info.update(check_mtls(inbound, None, peers.MESH_SNI))
        return Target(outbound, peers.SNI, info)

    def _check_build(self, engines: dict[str, str | None]) -> None:
        """Refuse workers of another build; this pair runs whatever this interpreter imports."""

    def _find_processes(self) -> None:
        assert self.runtime_dir is not None
        try:
            self.supervisord = int((self.runtime_dir / "supervisord.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.supervisord = None
        res = self._run_cli(self._cli("status", "--runtime-dir", str(self.runtime_dir), "--json"),
                            timeout_s=30)
        try:
            status = json.loads(res.stdout)
        except ValueError:
            raise Unavailable(f"meshnode status gave no JSON: {res.stderr.strip()[:200]}") from None
        self.workers = [p["pid"] for p in status["processes"]
                        if p["name"].startswith("proxy-") and p["pid"]]

    def stop(self) -> None:
        if self.runtime_dir is None:
            return
        rd = self.runtime_dir
        self._run_cli(self._cli("down", "--runtime-dir", str(rd)), timeout_s=60)
        # If `down` could not reach supervisord, kill what was started for this runtime dir
        # (ours alone: a fresh temp dir), by pid.
        marker = str(rd).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if marker + b"\0" in cmdline + b"\0" or marker + b"/" in cmdline:
                    try:
                        os.kill(int(entry.name), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        shutil.rmtree(rd, ignore_errors=True)
        self.ctx.meshnode_bases.discard(self.port_base)
        self.runtime_dir, self.port_base, self.supervisord, self.workers = None, None, None, []

    def cpu_roots(self) -> list[int]:
        # Every process of the node (control, ca, telemetry, bus too): its whole cost.
        return [self.supervisord] if self.supervisord else []

    def rss_pids(self) -> list[int]:
        return list(self.workers)


class MeshnodeBase(Meshnode):
    """The meshnode pair again, with the meshnode installed in another venv (--baseline).

    Started, placed, checked and measured exactly as ``meshnode``; only the interpreter
    differs (the venv's, so supervisord and every node process run the venv's code), and
    every `meshnode` command runs in the node's runtime dir with PYTHONPATH unset, so that
    the checkout's sources (``-m`` puts the cwd first on sys.path) cannot shadow it.
    """

    name = "meshnode-base"
    description = "the meshnode pair with the baseline venv's meshnode (--baseline)"

    def _python(self) -> str:
        assert self.ctx.baseline is not None
        return str(self.ctx.baseline.python)

    def _cwd(self) -> Path | None:
        return self.runtime_dir

    def _env(self) -> dict[str, str] | None:
        assert self.ctx.baseline is not None
        return self.ctx.baseline.env()

    def start(self, workdir: Path) -> Target:
        assert self.ctx.baseline is not None
        self.info.update(baseline=self.ctx.baseline.info)
        return super().start(workdir)

    def _check_build(self, engines: dict[str, str | None]) -> None:
        assert self.ctx.baseline is not None
        inside = os.path.realpath(self.ctx.baseline.venv) + os.sep
        wrong = {pid: so for pid, so in engines.items()
                 if so is None or not os.path.realpath(so).startswith(inside)}
        if wrong:
            raise Unavailable(f"proxy workers run another build than {self.ctx.baseline.venv}'s: "
                              + ", ".join(f"{pid}: {so or 'no fastpath engine mapped'}"
                                          for pid, so in wrong.items()))


class MeshnodeRoutes(Meshnode):
    """The meshnode pair with the service's traffic governed by an HTTPRoute of
    peers.ROUTE_RULES rules (path and header matches the load never meets, then a 90/10
    split): what routing costs, against the meshnode pair in the same rounds."""
    name = "meshnode-routes"
    description = (f"meshnode, the service under a {peers.ROUTE_RULES}-rule HTTPRoute "
                   "(header and path matches, a 90/10 split)")

    def _extra_resources(self) -> str:
        return peers.meshnode_routes()


class MeshnodeBaseRoutes(MeshnodeBase):
    """The meshnode-routes pair on the --baseline build: what a data-plane change did
    to routing's cost, against meshnode-routes in the same rounds."""
    name = "meshnode-base-routes"
    description = MeshnodeRoutes.description + ", the --baseline build"

    def _extra_resources(self) -> str:
        return peers.meshnode_routes()


class MeshnodeAuthz(Meshnode):
    """The meshnode pair with peers.AUTHZ_RULES AuthorizationPolicy rules (ALLOW and
    DENY) on the destination workload, the load allowed by the last one: what
    authorization costs, against the meshnode pair in the same rounds."""
    name = "meshnode-authz"
    description = (f"meshnode, the workload under {peers.AUTHZ_RULES} AuthorizationPolicy "
                   "rules (DENY and ALLOW; the load allowed by the last)")

    def _extra_resources(self) -> str:
        return peers.meshnode_authz()


class MeshnodeLog(Meshnode):
    """The meshnode pair with every request access-logged (Mesh spec.telemetry.accessLog:
    true; off by default): `meshnode-log / meshnode` is what access logging at 100 %
    costs (issue target: at most 10 % of keep-alive)."""
    name = "meshnode-log"
    description = "meshnode with every request access-logged"

    def _extra_resources(self) -> str:
        return peers.meshnode_access_log_on()


PAIR_CLASSES: dict[str, type[Pair]] = {c.name: c for c in (Direct, HAProxy, Nginx, Meshnode,
                                                            MeshnodeBase, MeshnodeRoutes,
                                                            MeshnodeBaseRoutes, MeshnodeAuthz,
                                                            MeshnodeLog)}
BASELINE = MeshnodeBase.name
# Pairs run on the --baseline build.
ON_BASELINE = (BASELINE, MeshnodeBaseRoutes.name)
# The comparisons reported (a / b), each when both pairs ran: a new build against the
# baseline, routes against none, routes on the new build against the baseline's,
# authorization against none, access logging against none.
COMPARISONS = (("meshnode", BASELINE), (MeshnodeRoutes.name, "meshnode"),
               (MeshnodeRoutes.name, MeshnodeBaseRoutes.name), (MeshnodeAuthz.name, "meshnode"),
               (MeshnodeLog.name, "meshnode"))


@dataclass
class Baseline:
    """A meshnode installed (not editable) in another venv: the build to compare against."""

    venv: Path
    python: Path
    info: dict[str, Any]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(self.venv)
        return env


_WHERE = """\
import importlib.metadata as md, json, sys
import meshnode, meshnode.cli, fastpath.engine
dist = md.distribution("meshnode")
print(json.dumps({"python": sys.executable, "meshnode": meshnode.__file__,
                  "fastpath_engine": fastpath.engine.__file__, "version": dist.version,
                  "direct_url": json.loads(dist.read_text("direct_url.json") or "null")}))
"""


def load_baseline(venv: Path) -> Baseline:
    """Check that `venv` holds its own meshnode build, and find which commit it came from.

    Raises Unavailable with the reason: no interpreter, meshnode not importable, or it
    imports from outside the venv (an editable install, or the checkout on sys.path).
    """
    venv = Path(os.path.abspath(venv))
    python = venv / "bin" / "python"
    if not python.exists():
        raise Unavailable(f"--baseline {venv}: no {python} (give a venv's directory)")
    probe_dir = Path(tempfile.mkdtemp(prefix="mnb-where-", dir="/tmp"))
    baseline = Baseline(venv, python, {})
    try:
        res = subprocess.run([str(python), "-c", _WHERE], cwd=probe_dir, env=baseline.env(),
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"--baseline {venv}: {python} did not run: {exc}") from None
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"--baseline {venv}: cannot import meshnode there: {last[0]}")
    where = json.loads(res.stdout.strip().splitlines()[-1])
    inside = os.path.realpath(venv) + os.sep
    outside = [k for k in ("meshnode", "fastpath_engine")
               if not os.path.realpath(where[k]).startswith(inside)]
    if outside:
        raise Unavailable(f"--baseline {venv}: {', '.join(where[k] for k in outside)} is not "
                          "inside the venv (install it there with `pip install .`, not -e)")
    url = (where.get("direct_url") or {}).get("url", "")
    source = url[len("file://"):] if url.startswith("file://") else None
    info: dict[str, Any] = {"venv": str(venv), **where, "source": source or url or None}
    if source:
        info["source_commit"] = _git(source, "rev-parse", "HEAD")
        info["source_dirty"] = bool(_git(source, "status", "--porcelain", "--untracked-files=no"))
    baseline.info = info
    return baseline


def stale_build(repo: Path) -> str | None:
    """Whether the checkout's compiled fastpath is older than its sources (not rebuilt)."""
    built = [f.stat().st_mtime for f in (repo / "fastpath").glob("*.so")]
    sources = [(f.stat().st_mtime, f.name) for ext in ("pyx", "pxd", "pxi")
               for f in (repo / "fastpath").glob(f"*.{ext}")]
    if not built or not sources or max(sources)[0] <= min(built):
        return None
    return (f"fastpath/{max(sources)[1]} is newer than the checkout's compiled fastpath: the "
            "meshnode pair runs the last build (rebuild: pip install -e . or "
            "python setup.py build_ext --inplace)")


def _git(where: str | Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


# --- the run ------------------------------------------------------------------------

@dataclass
class Context:
    workdir: Path
    placement: Placement
    launcher: Launcher
    pki: TestPKI
    app_port: int = 0
    app_proc: subprocess.Popen[bytes] | None = None
    lua: Path = Path()
    baseline: Baseline | None = None  # --baseline: the meshnode-base pair's build
    meshnode_bases: set[int] = field(default_factory=set)  # port bases of running nodes


WRK_DONE_LUA = """\
-- Print wrk's own totals as one JSON line the harness reads (latency in microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"bytes":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,' ..
    '"p999_us":%.1f,"mean_us":%.1f,"max_us":%.1f}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


def start_app(ctx: Context) -> None:
    peers.write_app_files(ctx.workdir)
    ctx.app_port = peers.free_port()
    conf = ctx.workdir / "app.conf"
    conf.write_text(peers.app_nginx(ctx.workdir, ctx.app_port))
    ctx.app_proc = ctx.launcher.spawn(
        ctx.placement.sut(["nginx", "-p", str(ctx.workdir), "-e", str(ctx.workdir / "app.error.log"),
                           "-c", str(conf)]), ctx.workdir / "app.out")
    wait_listening(ctx.app_port, ctx.app_proc, "app nginx")
    check_path(ctx.launcher, ctx.app_port, None, "app nginx")


def run_wrk(ctx: Context, target: Target, scenario: Scenario, duration_s: int) -> dict[str, Any]:
    # wrk reads whole seconds only.
    argv = ["wrk", f"-t{scenario.threads}", f"-c{scenario.connections}", f"-d{duration_s}s",
            "--latency", "-s", str(ctx.lua)]
    if target.host:
        argv += ["-H", f"Host: {target.host}"]
    if scenario.close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{target.port}{scenario.path}")
    res = ctx.launcher.run(ctx.placement.load(argv), timeout_s=duration_s + 30)
    for line in res.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise Unavailable(f"wrk gave no result (exit {res.returncode}): {res.stderr.strip()[:300]}")


def measure(ctx: Context, pair: Pair, target: Target, scenario: Scenario,
            duration_s: int) -> dict[str, Any]:
    """One wrk run with the CPU of the pair, the app and the SUT CPU sampled around it."""
    roots = pair.cpu_roots()
    app_roots = [ctx.app_proc.pid] if ctx.app_proc else []

    def sample(pids: list[int]) -> dict[int, int]:
        return {p: t for p in pids if (t := cpu_ticks(p)) is not None}

    sut_before, app_before = sample(process_tree(roots)), sample(process_tree(app_roots))
    cpu0_before = cpu_busy_ticks(ctx.placement.sut_cpu)
    cpu1_before = cpu_busy_ticks(ctx.placement.load_cpu)
    wrk_before = _children_cpu_s()
    t0 = time.monotonic()
    w = run_wrk(ctx, target, scenario, duration_s)
    elapsed = time.monotonic() - t0
    wrk_s = _children_cpu_s() - wrk_before  # wrk is the only child reaped in between
    cpu0_after = cpu_busy_ticks(ctx.placement.sut_cpu)
    cpu1_after = cpu_busy_ticks(ctx.placement.load_cpu)
    sut_after, app_after = sample(process_tree(roots)), sample(process_tree(app_roots))

    def delta(before: dict[int, int], after: dict[int, int]) -> int:
        return sum(max(0, t - before.get(p, 0)) for p, t in after.items())

    seconds = w["duration_us"] / 1e6
    requests = w["requests"]
    errors = {k: int(w[k]) for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    sut_ticks, app_ticks = delta(sut_before, sut_after), delta(app_before, app_after)
    busy = cpu0_after[0] - cpu0_before[0]
    per_req = (lambda ticks: round(ticks / CLK_TCK * 1e6 / requests, 1) if requests else None)
    return {
        "requests": int(requests), "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "mib_s": round(w["bytes"] / seconds / 2**20, 2) if seconds else 0.0,
        "p50_ms": round(w["p50_us"] / 1000, 3), "p90_ms": round(w["p90_us"] / 1000, 3),
        "p99_ms": round(w["p99_us"] / 1000, 3), "p999_ms": round(w["p999_us"] / 1000, 3),
        "max_ms": round(w["max_us"] / 1000, 3), "errors": errors,
        "cpu_us_per_req": per_req(sut_ticks) if roots else None,
        "app_cpu_us_per_req": per_req(app_ticks),
        # Busy time of the SUT CPU that neither the pair nor the app account for: other
        # processes on this machine, and softirq time not charged to a process.
        "sut_cpu_busy_pct": round(100 * busy / CLK_TCK / elapsed, 1),
        "sut_cpu_unattributed_pct": round(100 * max(0, busy - sut_ticks - app_ticks) / CLK_TCK / elapsed, 1),
        # The load generator's CPU and what else ran there: a wrk near 100% is the limit.
        "wrk_cpu_pct": round(100 * wrk_s / elapsed, 1),
        "load_cpu_unattributed_pct": round(max(0.0, 100 * (cpu1_after[0] - cpu1_before[0]) / CLK_TCK / elapsed
                                               - 100 * wrk_s / elapsed), 1),
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class PairResult:
    name: str
    description: str
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rss_mb: list[float] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)

    def median(self, scenario: str, key: str) -> float | None:
        values = [r[key] for r in self.runs.get(scenario, []) if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    def spread(self, scenario: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(scenario, []) if r.get(key) is not None]

    def summary(self) -> dict[str, float | None]:
        return {
            "keepalive_rps": self.median("keepalive", "rps"),
            "keepalive_p50_ms": self.median("keepalive", "p50_ms"),
            "keepalive_p99_ms": self.median("keepalive", "p99_ms"),
            "newconn_rps": self.median("newconn", "rps"),
            "newconn_p99_ms": self.median("newconn", "p99_ms"),
            "64k_mib_s": self.median("64k", "mib_s"),
            "unloaded_p50_ms": self.median("unloaded", "p50_ms"),
            "unloaded_p99_ms": self.median("unloaded", "p99_ms"),
            "keepalive_cpu_us_per_req": self.median("keepalive", "cpu_us_per_req"),
            "newconn_cpu_us_per_req": self.median("newconn", "cpu_us_per_req"),
            "64k_cpu_us_per_req": self.median("64k", "cpu_us_per_req"),
            "peak_rss_mb": round(statistics.median(self.rss_mb), 1) if self.rss_mb else None,
        }


def ratios(result: dict[str, float | None], ref: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in result.items():
        base = ref.get(key)
        out[key] = round(value / base, 3) if value is not None and base else None
    return out


def run(args: argparse.Namespace, ctx: Context, results: dict[str, PairResult],
         log: Callable[[str], None]) -> None:
    """Fill ``results`` in place, so that an interrupted run still reports what it measured."""
    start_app(ctx)
    log(f"app nginx on 127.0.0.1:{ctx.app_port} (pid {ctx.app_proc.pid if ctx.app_proc else '?'})")
    for rnd in range(1, args.rounds + 1):
        if args.wait_idle > 0:
            log(f"[round {rnd}/{args.rounds}] {wait_idle(args.wait_idle)}")
        if args.order == "pair":
            for name in args.pairs:
                _round(args, ctx, results, log, rnd, [name])
        else:
            _round(args, ctx, results, log, rnd, args.pairs)


def _round(args: argparse.Namespace, ctx: Context, results: dict[str, PairResult],
           log: Callable[[str], None], rnd: int, names: list[str]) -> None:
    """Start `names` fresh, run every scenario on each (scenario by scenario, the pairs
    in turn, so that the runs compared are seconds apart; who goes first rotates with
    the round), then stop them."""
    started: list[tuple[str, Pair, Target]] = []
    width = max(8, *(len(n) for n in names))
    try:
        for name in names:
            res = results[name]
            if res.unavailable and not res.runs:
                continue  # unavailable in its first round: said once, not retried
            pair = PAIR_CLASSES[name](ctx)
            pairdir = ctx.workdir / f"round{rnd}-{name}"
            pairdir.mkdir()
            try:
                target = pair.start(pairdir)
            except Unavailable as exc:
                _uninterruptible(pair.stop)
                res.unavailable.append(f"round {rnd}: {exc}")
                res.info.append(pair.info)
                log(f"[round {rnd}/{args.rounds}] {name}: unavailable: {exc}")
                continue
            started.append((name, pair, target))
            res.info.append(target.info)
        for name, pair, target in started:
            if args.warmup > 0:
                run_wrk(ctx, target, SCENARIOS["keepalive"], args.warmup)
        # The pairs take turns going first, round by round: a pair always measured right
        # after another (on a CPU the other just warmed, or just after its own start) is
        # biased by its place, and medians over rounds cancel that only if places rotate.
        turn = (rnd - 1) % max(1, len(started))
        in_turn = started[turn:] + started[:turn]
        for sc in args.scenarios:
            for name, pair, target in in_turn:
                m = measure(ctx, pair, target, SCENARIOS[sc], args.duration)
                results[name].runs.setdefault(sc, []).append(m)
                log(f"[round {rnd}/{args.rounds}] {name:{width}} {sc:9} " + _brief(sc, m))
        for name, pair, target in started:
            rss = [kib for p in pair.rss_pids() if (kib := peak_rss_kib(p)) is not None]
            if rss:
                results[name].rss_mb.append(round(max(rss) / 1024, 1))
    finally:
        for name, pair, target in reversed(started):
            _uninterruptible(pair.stop)


def wait_idle(limit_s: int, idle_pct: float = 80.0) -> str:
    """Wait (at most limit_s) for a second in which the machine's CPUs are mostly idle.

    On a shared machine other work on either CPU moves every figure; this does not make
    a busy machine quiet, it only avoids starting a round in the middle of a burst.
    """
    deadline = time.monotonic() + limit_s
    seen = 0.0
    while True:
        busy0, total0 = cpu_busy_ticks(None)
        time.sleep(1.0)
        busy1, total1 = cpu_busy_ticks(None)
        seen = 100.0 * (1 - (busy1 - busy0) / max(1, total1 - total0))
        if seen >= idle_pct:
            return f"machine {seen:.0f}% idle: starting"
        if time.monotonic() >= deadline:
            return f"machine only {seen:.0f}% idle after waiting {limit_s}s: starting anyway"


def _uninterruptible(fn: Callable[[], None]) -> None:
    """Run a cleanup that a second Ctrl-C must not cut short (a node left running)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        fn()
    finally:
        signal.signal(signal.SIGINT, old)


def _brief(scenario: str, m: dict[str, Any]) -> str:
    main = f"{m['mib_s']:8.1f} MiB/s" if scenario == "64k" else f"{m['rps']:9,.0f} req/s"
    cpu = "" if m["cpu_us_per_req"] is None else f"  cpu {m['cpu_us_per_req']:.1f} µs/req"
    err = f"  errors {m['errors']}" if m["errors"] else ""
    return (f"{main}  p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms{cpu}"
            f"  [SUT CPU {m['sut_cpu_busy_pct']:.0f}% busy, {m['sut_cpu_unattributed_pct']:.0f}% not ours;"
            f" wrk {m['wrk_cpu_pct']:.0f}%, {m['load_cpu_unattributed_pct']:.0f}% not ours]{err}")


# --- report -------------------------------------------------------------------------

COLUMNS = [  # (summary key, header, format); see LOWER_IS_BETTER
    ("keepalive_rps", "keep-alive req/s", "{:,.0f}"),
    ("keepalive_p99_ms", "p99 ms", "{:.2f}"),
    ("newconn_rps", "new-conn req/s", "{:,.0f}"),
    ("64k_mib_s", "64k MiB/s", "{:.1f}"),
    ("unloaded_p50_ms", "c1 p50 ms", "{:.3f}"),
    ("unloaded_p99_ms", "c1 p99 ms", "{:.3f}"),
    ("keepalive_cpu_us_per_req", "CPU µs/req ka", "{:.1f}"),
    ("newconn_cpu_us_per_req", "CPU µs/req nc", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}"),
]
LOWER_IS_BETTER = {"keepalive_p99_ms", "unloaded_p50_ms", "unloaded_p99_ms",
                   "keepalive_cpu_us_per_req", "newconn_cpu_us_per_req", "peak_rss_mb"}


def _table(rows: list[list[str]]) -> str:
    full = [r for r in rows if len(r) == len(rows[0])]
    widths = [max(len(r[i]) for r in full) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        if len(r) == 2 and r[1].startswith("unavailable"):
            lines.append(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def format_report(results: dict[str, PairResult], rounds: int) -> str:
    summaries = {n: r.summary() for n, r in results.items() if r.runs}
    header = ["pair"] + [c[1] for c in COLUMNS]
    rows = [header]
    for name, res in results.items():
        if not res.runs:
            rows.append([name, "unavailable: " + "; ".join(res.unavailable)])
            continue
        s = summaries[name]
        rows.append([name] + [("-" if s[k] is None else f.format(s[k])) for k, _, f in COLUMNS])
    out = [f"medians of {rounds} interleaved round(s); CPU µs/req = both sidecars (utime+stime); "
           "peak RSS = largest proxy process (VmHWM)", _table(rows)]
    partial = [f"  {n}: {'; '.join(r.unavailable)}" for n, r in results.items() if r.runs and r.unavailable]
    if partial:
        out.append("rounds lost:\n" + "\n".join(partial))
    errs = [f"  {n} {sc}: {m['errors']} in round {i + 1}" for n, r in results.items()
            for sc, ms in r.runs.items() for i, m in enumerate(ms) if m["errors"]]
    if errs:
        out.append("wrk errors (non-2xx or socket errors):\n" + "\n".join(errs))
    ref = summaries.get(REFERENCE)
    if ref:
        keys = [("keepalive_rps", "keep-alive req/s"), ("keepalive_p99_ms", "p99"),
                ("newconn_rps", "new-conn req/s"), ("64k_mib_s", "64k MiB/s"),
                ("keepalive_cpu_us_per_req", "CPU µs/req ka"), ("peak_rss_mb", "peak RSS")]
        rows = [["ratio to haproxy"] + [k[1] for k in keys]]
        for name, res in results.items():
            if name == REFERENCE:
                continue
            if not res.runs:
                rows.append([name, "unavailable"])
                continue
            r = ratios(summaries[name], ref)
            rows.append([name] + ["-" if r[k] is None else f"{r[k]:.2f}×" for k, _ in keys])
        rows.append(["meshnode target"] + [f"{TARGETS[k][0]} {TARGETS[k][1]:.2f}×" if k in TARGETS
                                           else "-" for k, _ in keys])
        out += ["", _table(rows), f"(and a proxy worker's peak RSS ≤ {RSS_TARGET_MB:g} MB)"]
        if "meshnode" in summaries:
            out.append(_verdict(ratios(summaries["meshnode"], ref), summaries["meshnode"]))
        if BASELINE in summaries:
            out.append(_verdict(ratios(summaries[BASELINE], ref), summaries[BASELINE], BASELINE))
    for a, b in COMPARISONS:
        if a in results and b in results:
            out += ["", _comparison(summaries, a, b)]
    return "\n".join(out)


def _comparison(summaries: dict[str, dict[str, float | None]], a: str, b: str) -> str:
    """Pair a's medians against pair b's (COMPARISONS), per metric, from the same
    interleaved rounds."""
    title = f"{a} / {b}"
    if a not in summaries or b not in summaries:
        missing = [n for n in (a, b) if n not in summaries]
        return f"{title}: no comparison, {' and '.join(missing)} not measured"
    r = ratios(summaries[a], summaries[b])
    rows = [[title] + [h for _, h, _ in COLUMNS],
            ["ratio"] + ["-" if r[k] is None else f"{r[k]:.3f}×" for k, _, _ in COLUMNS],
            ["better is"] + ["lower" if k in LOWER_IS_BETTER else "higher" for k, _, _ in COLUMNS]]
    return _table(rows)


def _verdict(r: dict[str, float | None], s: dict[str, float | None], name: str = "meshnode") -> str:
    parts = []
    for key, (op, target) in TARGETS.items():
        v = r.get(key)
        ok = v is not None and (v >= target if op == ">=" else v <= target)
        parts.append(f"{key} {'-' if v is None else f'{v:.2f}'} {'met' if ok else 'MISSED'}")
    rss = s.get("peak_rss_mb")
    parts.append(f"rss {rss} MB {'met' if rss is not None and rss <= RSS_TARGET_MB else 'MISSED'}")
    return f"{name} vs targets: " + ", ".join(parts)


def _version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def report_json(args: argparse.Namespace, ctx: Context, results: dict[str, PairResult],
                started: str, interrupted: bool) -> dict[str, Any]:
    ref = results.get(REFERENCE)
    ref_summary = ref.summary() if ref and ref.runs else None
    pairs: dict[str, Any] = {}
    for name, res in results.items():
        entry: dict[str, Any] = {"description": res.description}
        if not res.runs:
            entry.update(status="unavailable", reason="; ".join(res.unavailable) or "not run",
                         checks=res.info)
        else:
            s = res.summary()
            entry.update(status="ok", median=s,
                         ratio_to_haproxy=ratios(s, ref_summary) if ref_summary else None,
                         rounds_lost=res.unavailable, peak_rss_mb_per_round=res.rss_mb,
                         checks=res.info, runs=res.runs)
        pairs[name] = entry
    base = results.get(BASELINE)
    if base and base.runs and "meshnode" in pairs and pairs["meshnode"]["status"] == "ok":
        pairs["meshnode"]["ratio_to_baseline"] = ratios(results["meshnode"].summary(),
                                                        base.summary())
    return {
        "benchmark": "sidecar-pair", "started": started, "interrupted": interrupted,
        "command": " ".join([sys.argv[0], *sys.argv[1:]]),
        "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
        "wait_idle_s": args.wait_idle,
        "scenarios": {n: vars(SCENARIOS[n]) for n in args.scenarios},
        "machine": {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                    "kernel": platform.release(), "loadavg_at_start": args.loadavg_at_start,
                    "loadavg_at_end": os.getloadavg()},
        "placement": {"sut_cpu": ctx.placement.sut_cpu, "load_cpu": ctx.placement.load_cpu,
                      "note": ctx.placement.note},
        "versions": {"haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"]),
                     "wrk": _version(["wrk", "-v"]), "python_ssl": ssl.OPENSSL_VERSION},
        "targets": {"ratios_to_haproxy": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
                    "peak_rss_mb": f"<= {RSS_TARGET_MB}"},
        "checkout": args.checkout,
        "baseline": ctx.baseline.info if ctx.baseline else None,
        "pairs": pairs,
    }


# --- main ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # STYLE.md: usage errors exit 64
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EX_USAGE)


def _names(allowed: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return names
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench/sidecar_pair.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, default=8,
                   help="seconds per wrk run (default 8, as peers/README.md)")
    p.add_argument("--warmup", type=int, default=1,
                   help="seconds of unrecorded keep-alive load after a pair starts (default 1; 0: none)")
    p.add_argument("--pairs", type=_names(list(PAIR_CLASSES)), default=list(PAIRS),
                   help=f"comma-separated, in run order (rotated by one each round; default "
                        f"{','.join(PAIRS)}; "
                        f"{BASELINE} needs --baseline)")
    p.add_argument("--baseline", type=Path, metavar="VENV",
                   help=f"also run the pair {BASELINE}: the meshnode pair with the meshnode "
                        "installed (pip install ., not -e) in this venv, e.g. an older commit's "
                        f"build; it joins the same rounds right after meshnode, and the report "
                        f"adds meshnode / {BASELINE} per metric")
    p.add_argument("--scenarios", type=_names(list(SCENARIOS)), default=list(SCENARIOS),
                   help=f"comma-separated (default {','.join(SCENARIOS)})")
    p.add_argument("--order", choices=["scenario", "pair"], default="scenario",
                   help="within a round: every pair started, then each scenario on each pair in "
                        "turn (scenario, the default: compared runs are seconds apart), or one "
                        "pair at a time through every scenario (pair: one pair running at once)")
    p.add_argument("--wait-idle", type=int, default=0, metavar="S",
                   help="before each round wait up to S seconds for the CPUs to be 80%% idle "
                        "(shared machines; default 0: do not wait)")
    p.add_argument("--json", type=Path, help="write the full results (every run) as JSON here")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir (configs, PKI, logs) instead of deleting it")
    return p


def _missing_tools() -> list[str]:
    return [t for t in ("haproxy", "nginx", "wrk", "curl", "taskset") if shutil.which(t) is None]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.wait_idle < 0:
        print("bench/sidecar_pair.py: --rounds >= 1, --duration > 0, --warmup >= 0, --wait-idle >= 0",
              file=sys.stderr)
        return EX_USAGE
    needing = [n for n in ON_BASELINE if n in args.pairs]
    if needing and args.baseline is None:
        print(f"bench/sidecar_pair.py: the pairs {', '.join(needing)} need --baseline VENV",
              file=sys.stderr)
        return EX_USAGE
    if args.baseline is not None and BASELINE not in args.pairs:
        at = args.pairs.index("meshnode") + 1 if "meshnode" in args.pairs else len(args.pairs)
        args.pairs.insert(at, BASELINE)
    baseline = None
    if args.baseline is not None:
        try:
            baseline = load_baseline(args.baseline)
        except Unavailable as exc:
            print(f"bench/sidecar_pair.py: {exc}", file=sys.stderr)
            return EX_USAGE
    missing = _missing_tools()
    if missing:
        print(f"missing: {', '.join(missing)}; apt-get install -y haproxy nginx wrk curl util-linux",
              file=sys.stderr)
        return EX_UNAVAILABLE

    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    args.loadavg_at_start = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()

    def log(line: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s  {line}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="sidecar-pair-"))
    launcher = Launcher()
    placement = Placement.detect()
    log(f"placement: {placement.note}")
    log(f"work dir {workdir}; {args.rounds} round(s) × {len(args.pairs)} pairs × "
        f"{len(args.scenarios)} scenarios × {args.duration:g}s")
    repo = Path(__file__).resolve().parent.parent
    args.checkout = {"path": str(repo), "commit": _git(repo, "rev-parse", "HEAD"),
                     "dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))}
    if baseline is not None:
        b = baseline.info
        dirty = " + uncommitted changes"
        log(f"meshnode: {repo} at {(args.checkout['commit'] or '?')[:12]}"
            f"{dirty if args.checkout['dirty'] else ''} ({sys.executable})")
        log(f"{BASELINE}: {b['venv']} (meshnode {b['version']} from {b['source'] or '?'} at "
            f"{(b.get('source_commit') or '?')[:12]}{dirty if b.get('source_dirty') else ''})")
        stale = stale_build(repo)
        if stale:
            log(f"NOTE: {stale}")
    ctx = Context(workdir, placement, launcher, make_pki(workdir / "pki", peers.SNI),
                  baseline=baseline)
    ctx.lua = workdir / "done.lua"
    ctx.lua.write_text(WRK_DONE_LUA)
    results = {name: PairResult(name, PAIR_CLASSES[name].description) for name in args.pairs}
    interrupted = False
    rc = 0
    try:
        run(args, ctx, results, log)
    except (KeyboardInterrupt, Interrupted) as exc:
        interrupted, rc = True, EX_INTERRUPTED
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): stopping everything", file=sys.stderr)
    except Unavailable as exc:
        rc = EX_UNAVAILABLE
        print(f"cannot run: {exc}", file=sys.stderr)
    finally:
        _uninterruptible(launcher.stop_all)
    if any(r.runs or r.unavailable for r in results.values()):
        print()
        print(format_report(results, args.rounds))
        if placement.sut_cpu is None:
            print(f"NOTE: {placement.note}")
        noisy = [m["sut_cpu_unattributed_pct"] for r in results.values() for ms in r.runs.values()
                 for m in ms]
        if noisy and statistics.median(noisy) > 5:
            print(f"NOTE: median {statistics.median(noisy):.0f}% of the SUT CPU's busy time was not the "
                  "pair's nor the app's (other processes, softirq): figures are noisier")
        if args.json:
            args.json.write_text(json.dumps(report_json(args, ctx, results, started, interrupted),
                                            indent=2) + "\n")
            print(f"results written to {args.json}")
    if args.keep:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    log("done")
    return rc


if __name__ == "__main__":
    sys.exit(main())
