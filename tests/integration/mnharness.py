"""The integration tests' harness: real nodes under real supervisord, driven by the CLI.

Every node gets its own runtime dir (short, under /tmp: ipc paths are limited to 107
bytes) and its own port block picked at random and checked free, so these tests run
beside each other and beside a developer's own node. The fixtures that use this live
in conftest.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from meshnode import localprobe

CLI = [sys.executable, "-m", "meshnode.cli"]
WORKERS = 2
# Offsets of the port block a node binds or reserves (meshnode/ports.py).
PORT_OFFSETS = (0, 1, 6, 10, 90)
CLI_TIMEOUT_S = 45.0
UP_TIMEOUT_S = 30.0

T = TypeVar("T")

_bases_taken: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_base_range() -> range:
    """Port bases below the kernel's ephemeral range (net.ipv4.ip_local_port_range).

    A block inside that range can be taken by any client's source port, and a poll of a
    port nobody listens on yet can even connect to itself there; below it, neither.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low - max(PORT_OFFSETS) - 1, 11000)
    return range(10000, top, 100)


def free_port_base() -> int:
    """A port base whose whole block is free on 127.0.0.1 right now (see _port_base_range)."""
    rng = random.SystemRandom()
    bases = _port_base_range()
    if len(_bases_taken) >= len(bases) // 2:
        _bases_taken.clear()  # a long run may reuse blocks: each is checked free again
    for _ in range(500):
        base = rng.choice(bases)
        if base in _bases_taken:
            continue
        if all(_bindable(base + offset) for offset in PORT_OFFSETS):
            _bases_taken.add(base)
            return base
    raise RuntimeError(f"no free port block found in {bases.start}..{bases.stop}")


def wait_for(condition: Callable[[], T], timeout_s: float, what: str,
             interval_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} "
                                 f"(last value: {last!r})")
        time.sleep(interval_s)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MESHNODE_RUNTIME_DIR", None)  # every call names its runtime dir
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """The real `meshnode` CLI with this interpreter."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL, env=_env())


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    try:
        return localprobe.get(url, timeout_s)
    except OSError:
        return 0, b""


def pids_of(runtime_dir: Path) -> list[int]:
    """Live processes whose command line mentions the runtime dir (supervisord included)."""
    needle = os.fsencode(str(runtime_dir))
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        # The dir as a whole argument or as a path prefix, never a longer sibling's name.
        if needle + b"\0" in cmdline + b"\0" or needle + b"/" in cmdline:
            found.append(int(entry.name))
    return found


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(part) for part in raw.split(b"\0") if part]


class Node:
    """One node's runtime dir and port block, and the CLI calls that drive it."""

    def __init__(self, runtime_dir: Path, port_base: int, workers: int = WORKERS) -> None:
        self.runtime_dir = runtime_dir
        self.port_base = port_base
        self.workers = workers

    @property
    def names(self) -> list[str]:
        return ["bus", "control", "ca", "telemetry", *(f"proxy-{i}" for i in range(self.workers))]

    @property
    def worker_names(self) -> list[str]:
        return [f"proxy-{i}" for i in range(self.workers)]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.port_base}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port_base + 90}/metrics"

    def cli(self, command: str, *args: str,
            timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return run_cli(command, "--runtime-dir", str(self.runtime_dir), *args,
                       timeout_s=timeout_s)

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("up", "--port-base", str(self.port_base), "--workers", str(self.workers),
                        "--timeout", str(UP_TIMEOUT_S), *extra)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.cli("down")

    def status_doc(self, timeout_s: float = 15.0) -> dict[str, Any]:
        """`status --json` once telemetry has answered it.

        When telemetry does not answer within its 2 s (a loaded machine), status still
        succeeds but says nothing of health (``not_ready`` is null): ask again rather
        than read that as a process without a config.
        """
        def answered() -> dict[str, Any] | None:
            result = self.cli("status", "--json")
            assert result.returncode == 0, f"status failed ({result.returncode}): {result.stderr}"
            doc = json.loads(result.stdout)
            return doc if doc["not_ready"] is not None else None
        return wait_for(answered, timeout_s, "status with telemetry's health reports")

    def status(self) -> dict[str, dict[str, Any]]:
        """`status --json` with health, keyed by process name."""
        return {p["name"]: p for p in self.status_doc()["processes"]}

    def versions(self) -> dict[str, Any]:
        """Config version reported by control and each worker."""
        status = self.status()
        return {name: status[name]["config_version"] for name in ["control", *self.worker_names]}

    def wait_version(self, version: int, timeout_s: float = 20.0) -> dict[str, dict[str, Any]]:
        """Poll status until control and every worker report ``version``; return that status."""
        def at_version() -> dict[str, dict[str, Any]] | None:
            status = self.status()
            ok = all(status[n]["config_version"] == version
                     for n in ["control", *self.worker_names])
            return status if ok else None
        return wait_for(at_version, timeout_s, f"control and workers at config version {version}",
                        interval_s=0.2)

    def apply(self, path: Path) -> int:
        """Apply a file; return the version control answered with."""
        result = self.cli("apply", "-f", str(path))
        assert result.returncode == 0, f"apply failed ({result.returncode}): {result.stderr}"
        return parse_version(result.stdout)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        conf = self.runtime_dir / "supervisord.conf"
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf),
                               *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env=_env())

    def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = http_get(f"{self.admin_url}/ready")
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {"raw": body.decode(errors="replace")}
        return status, doc

    def log_tails(self, lines: int = 15) -> str:
        logs = self.runtime_dir / "logs"
        if not logs.is_dir():
            return f"(no logs in {self.runtime_dir})"
        out = []
        for log in sorted(logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log}\n" + "\n".join(text))
        return "\n".join(out)


def parse_version(stdout: str) -> int:
    """The version in "applied: version 7: ..." / "deleted: version 8: ..."."""
    for line in stdout.splitlines():
        head, sep, rest = line.partition(": version ")
        if sep and head in ("applied", "unchanged", "deleted"):
            return int(rest.split(":", 1)[0])
    raise AssertionError(f"no version in CLI output: {stdout!r}")


def kill_leftovers(runtime_dir: Path) -> list[str]:
    """SIGKILL every process still mentioning the runtime dir; describe what was found."""
    leftovers = pids_of(runtime_dir)
    described = [f"{pid}: {' '.join(cmdline_of(pid))}" for pid in leftovers]
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leftovers:
        wait_for(lambda: not pids_of(runtime_dir), 10.0, "killed leftovers to exit")
    return described


ORDERS = """\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata:
  name: {name}
  namespace: demo
spec:
  selector:
    app: {name}
  ports:
    - name: http
      port: {port}
      protocol: HTTP
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata:
  name: {name}-v1
  namespace: demo
spec:
  address: 127.0.0.1
  ports:
    http: 19090
  labels:
    app: {name}
    version: v1
  serviceAccount: {name}
"""


class Started:
    """A process main started by hand, its stderr collected line by line as it comes."""

    def __init__(self, module: str, node: Node, *extra: str) -> None:
        self.module = module
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, "--runtime-dir", str(node.runtime_dir),
             "--port-base", str(node.port_base), "--node", "by-hand", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_event(self, event: str, timeout_s: float = 15.0) -> dict[str, Any]:
        def logged() -> dict[str, Any] | None:
            if self.popen.poll() is not None and not any(event in line for line in self.lines):
                raise AssertionError(f"{self.module} exited {self.popen.returncode}: {self.lines}")
            return next((e for e in self.entries() if e["event"] == event), None)
        return wait_for(logged, timeout_s, f"{self.module} to log {event}")

    def terminate(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, and the exit code once it has exited (within ``timeout_s``)."""
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=timeout_s)
        self._reader.join(timeout=5.0)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


class ByHand:
    """Process mains started in one fresh runtime dir, killed at teardown if still running."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.started: list[Started] = []

    def start(self, module: str, *extra: str) -> Started:
        proc = Started(module, self.node, *extra)
        self.started.append(proc)
        return proc
