"""The parser and engine suites again, against a debug build (MESHNODE_DEBUG=1: Cython
bounds and wraparound checks, C asserts, the engine's pool/refcount/slot invariants).

The release build the other tests use has the checks compiled out; a read past a buffer
there is silent. Here the whole fastpath package is built afresh from this checkout in
a scratch directory (the checkout's own build and generated C are left alone) and the
suites run in a child interpreter started there, so it imports that fastpath first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
          "tests/fastpath/test_engine_normalize.py"]

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def debug_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("debug-build")
    shutil.copy2(ROOT / "setup.py", where / "setup.py")
    shutil.copytree(ROOT / "fastpath", where / "fastpath",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__"))
    env = {**os.environ, "MESHNODE_DEBUG": "1"}
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=where, env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return where


def _env(build: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(build), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def test_the_child_imports_the_debug_build(debug_build: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import fastpath.engine as e, fastpath.http1 as h; "
         "print(e.__file__); print(e.DEBUG_BUILD and h.DEBUG_BUILD)"],
        cwd=debug_build, env=_env(debug_build), capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    where, debug = probe.stdout.split()
    assert Path(where).is_relative_to(debug_build) and debug == "True"


def test_the_parser_and_engine_suites_pass_with_checks_on(debug_build: Path) -> None:
    # Run from the build dir: it comes first on the child's sys.path, before the checkout.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
                          *(str(ROOT / suite) for suite in SUITES)],
                         cwd=debug_build, env=_env(debug_build), capture_output=True, text=True,
                         timeout=1500, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
