"""The parser and engine suites again, against a debug build (MESHNODE_DEBUG=1: Cython
bounds and wraparound checks, C asserts, the engine's pool/refcount/slot invariants).

The release build the other tests use has the checks compiled out; a read past a buffer
there is silent. The build and the suites run in the background from the start of the
session (tests/fastpath/debugbuild.py, started by tests/conftest.py); these tests, run
last, read the outcome.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from debugbuild import BUILD_FAILED, BUILD_TIMEOUT_S, SUITES_TIMEOUT_S, Run, child_env

WAIT_S = BUILD_TIMEOUT_S + SUITES_TIMEOUT_S
pytestmark = pytest.mark.timeout(WAIT_S + 120)


@pytest.fixture(scope="module")
def outcome(debug_run: Run) -> tuple[int, str]:
    return debug_run.wait(WAIT_S)


def test_the_child_imports_the_debug_build(debug_run: Run, outcome: tuple[int, str]) -> None:
    status, log = outcome
    assert status != BUILD_FAILED, log[-6000:]
    probe = subprocess.run(
        [sys.executable, "-c", "import fastpath.engine as e, fastpath.http1 as h; "
         "print(e.__file__); print(e.DEBUG_BUILD and h.DEBUG_BUILD)"],
        cwd=debug_run.where, env=child_env(debug_run.where), capture_output=True, text=True,
        timeout=60)
    assert probe.returncode == 0, probe.stderr
    where, debug = probe.stdout.split()
    assert Path(where).is_relative_to(debug_run.where) and debug == "True"


def test_the_parser_and_engine_suites_pass_with_checks_on(outcome: tuple[int, str]) -> None:
    status, log = outcome
    assert status == 0, log[-9000:]
