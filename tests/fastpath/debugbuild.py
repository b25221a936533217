"""The parser and engine suites against a debug build, run beside the rest of the suite.

A debug build (MESHNODE_DEBUG=1: Cython bounds and wraparound checks, C asserts, the
engine's pool/refcount/slot invariants) is made afresh from this checkout in a scratch
directory (the checkout's own build and generated C are left alone), and the suites run
in a child interpreter started there, so that it imports that fastpath first.

Build and run take a quarter of the whole suite's time, most of it waiting on sockets
and timers, so the root conftest starts them in the background as soon as the session
has collected (`start`), and tests/fastpath/test_debug_build.py, moved to the end of the
run, collects the outcome (`Run.wait`). Run as a script, this module does the work:
`python debugbuild.py DIR` builds into DIR, then runs the suites; its exit status is the
build's when that failed, else the suites'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/fastpath/test_http1.py", "tests/fastpath/test_keys.py",
          "tests/fastpath/test_engine.py", "tests/fastpath/test_engine_http.py",
          "tests/fastpath/test_engine_failover.py", "tests/fastpath/test_engine_timers.py",
          "tests/fastpath/test_engine_reconfig.py", "tests/fastpath/test_engine_drain.py",
          "tests/fastpath/test_engine_review.py", "tests/fastpath/test_engine_smuggling.py",
          "tests/fastpath/test_engine_header_holes.py", "tests/fastpath/test_engine_limits.py",
          "tests/fastpath/test_engine_routes.py", "tests/fastpath/test_engine_routes_attack.py",
          "tests/fastpath/test_engine_mirror.py", "tests/fastpath/test_engine_route_filters.py",
          "tests/fastpath/test_engine_hash.py", "tests/fastpath/test_engine_route_figures.py",
          "tests/fastpath/test_engine_retry.py", "tests/fastpath/test_engine_fault.py",
          "tests/fastpath/test_engine_retry_budget.py",
          "tests/fastpath/test_engine_outlier.py", "tests/fastpath/test_engine_pool.py",
          "tests/fastpath/test_engine_early_answer.py", "tests/fastpath/test_engine_plaintext.py",
          "tests/fastpath/test_engine_ratelimit.py", "tests/fastpath/test_engine_authz.py",
          "tests/fastpath/test_engine_caller_addr.py", "tests/fastpath/test_engine_overload.py",
          "tests/fastpath/test_engine_normalize.py", "tests/fastpath/test_engine_sizes.py",
          "tests/fastpath/test_engine_accesslog.py", "tests/fastpath/test_engine_tracing.py"]
BUILD_TIMEOUT_S = 600
SUITES_TIMEOUT_S = 1500
BUILD_FAILED = 90          # the script's exit status when the build failed


def child_env(build: Path) -> dict[str, str]:
    """The environment of a child that must import the debug build, not the checkout's."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(build), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


@dataclass
class Run:
    """The background build and run: its scratch dir, process and output."""

    where: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float) -> tuple[int, str]:
        """Its exit status and output, once it has finished."""
        status = self.proc.wait(timeout=timeout)
        return status, self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Kill what is left (an interrupted session) and remove the scratch dir."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.where, ignore_errors=True)


def start() -> Run:
    """Start the build and the suites in the background."""
    where = Path(tempfile.mkdtemp(prefix="meshnode-debug-build-"))
    log = where / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(where)],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Run(where, proc, log)


def build(where: Path) -> int:
    """Build fastpath with the checks on into `where` (the build's output goes to ours)."""
    shutil.copy2(ROOT / "setup.py", where / "setup.py")
    shutil.copytree(ROOT / "fastpath", where / "fastpath",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__"))
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=where, env={**os.environ, "MESHNODE_DEBUG": "1"},
                          timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL).returncode


def run_suites(where: Path) -> int:
    """The suites in a child started in `where`: it comes first on the child's sys.path,
    before the checkout."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
                           *(str(ROOT / suite) for suite in SUITES)],
                          cwd=where, env=child_env(where), timeout=SUITES_TIMEOUT_S,
                          stdin=subprocess.DEVNULL).returncode


def main(where: Path) -> int:
    sys.stdout.flush()
    if build(where) != 0:
        return BUILD_FAILED
    return run_suites(where)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
