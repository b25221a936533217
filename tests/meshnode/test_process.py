"""meshnode.process: a process with a Drain drains on its first stop signal, ignores a
second SIGTERM, is cut by a SIGINT, and exits 0 (run as a real process: signals)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.timeout(60)

# A process whose drain never ends by itself: only a cut (or 30 s) ends it.
SCRIPT = """
import argparse, sys, time
from meshnode.process import Process

class Held:
    def __init__(self):
        self.began = self.cut_at = None
    def begin(self):
        self.began = time.monotonic()
    def step(self):
        return self.cut_at is not None or time.monotonic() - self.began > 30
    def cut(self):
        self.cut_at = time.monotonic()

args = argparse.Namespace(runtime_dir=sys.argv[1], node="t", port_base=15000, log_level="info")
proc = Process("proxy-9", args)
proc.drain_on_stop(Held())
sys.exit(proc.run())
"""


class Run:
    def __init__(self, runtime_dir: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-c", SCRIPT, runtime_dir],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "not-json", "line": line})
        return out

    def wait_event(self, name: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e["event"] == name]
            if found:
                return found[-1]
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {name} within {timeout_s} s: {self.lines}")


@pytest.fixture
def run() -> Iterator[Run]:
    runtime_dir = tempfile.mkdtemp(prefix="mn-p-", dir="/tmp")
    r = Run(runtime_dir)
    yield r
    if r.popen.poll() is None:
        r.popen.kill()
    r.popen.wait(10)
    r.reader.join(5)
    shutil.rmtree(runtime_dir, ignore_errors=True)


def test_sigterm_drains_a_second_sigterm_changes_nothing_and_sigint_cuts(run: Run) -> None:
    run.wait_event("process.started")
    run.popen.send_signal(signal.SIGTERM)
    assert run.wait_event("process.draining")["signal"] == "SIGTERM"
    run.popen.send_signal(signal.SIGTERM)
    assert run.wait_event("process.signal_ignored")["signal"] == "SIGTERM"
    assert run.popen.poll() is None, "a second SIGTERM ended the drain"
    run.popen.send_signal(signal.SIGINT)
    assert run.wait_event("process.drain_cut")["signal"] == "SIGINT"
    assert run.popen.wait(10) == 0
    run.reader.join(5)
    names = [e["event"] for e in run.events()]
    assert names[-1] == "process.stopped", names
    assert "not-json" not in names and not any(e["level"] == "error" for e in run.events()), \
        run.lines
