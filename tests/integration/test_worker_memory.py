"""A proxy worker loads only what a worker runs: its memory budget starts at its imports.

Every proxy worker of a node is a process of its own, so what its import graph pulls in
is paid once per worker. The modules of the other processes (control's YAML loading and
config validation, the ca's issuing authority, telemetry's Prometheus client, the CLI)
must not come in with it, nor `cryptography` (about 11 MB with its own OpenSSL): a
worker makes its keys and CSRs with fastpath.keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

# Used by the other processes, never by a worker.
NOT_IN_A_WORKER = ["cryptography", "meshnode.identity.pki",  # keys and CSRs: fastpath.keys
                   "yaml", "prometheus_client", "meshnode.config", "meshnode.control",
                   "meshnode.ca", "meshnode.identity.authority", "meshnode.telemetry",
                   "meshnode.metrics", "meshnode.cli", "meshnode.nodectl", "supervisor"]


def test_worker_imports_nothing_of_the_other_processes() -> None:
    code = ("import json, sys, meshnode.proxy; "
            f"print(json.dumps(sorted(m for m in {NOT_IN_A_WORKER!r} if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
