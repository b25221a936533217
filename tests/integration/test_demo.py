"""`meshnode demo` as a user runs it (meshnode.demo): a real node, two apps, a report.

The demo is run as a subprocess of the real CLI on a free port block. One run with an
explicit runtime dir serves the report tests; a run with --keep and one interrupted by
Ctrl-C check that the demo leaves behind exactly what it says: nothing, or a node the
printed command stops. A two-node run is kept so that each node can be asked what it
carried: the requests must cross from the frontend's node to the backend's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from identityharness import metric_samples
from mnharness import CLI, free_port_base, http_get, kill_leftovers, pids_of, run_cli, wait_for

DEMO_TIMEOUT_S = 150.0
REQUESTS = 50
FRONTEND_ID = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"


class Run:
    def __init__(self, runtime_dir: Path, result: subprocess.CompletedProcess[str],
                 leftovers: list[int]) -> None:
        self.runtime_dir, self.result, self.leftovers = runtime_dir, result, leftovers

    @property
    def out(self) -> str:
        return self.result.stdout

    def explain(self) -> str:
        return f"exit {self.result.returncode}\n--- stdout\n{self.out}\n--- stderr\n{self.result.stderr}"

    def line(self, pattern: str) -> re.Match[str]:
        match = re.search(pattern, self.out, re.MULTILINE)
        assert match, f"no line matching {pattern!r} in the report:\n{self.explain()}"
        return match


def _scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))


@pytest.fixture(scope="module")
def demo() -> Iterator[Run]:
    """One `meshnode demo --requests 50` in a runtime dir of ours; what was left after it."""
    rd = _scratch_dir()
    try:
        result = run_cli("demo", "--requests", str(REQUESTS), "--port-base",
                         str(free_port_base()), "--runtime-dir", str(rd),
                         timeout_s=DEMO_TIMEOUT_S)
        yield Run(rd, result, pids_of(rd))
    finally:
        kill_leftovers(rd)
        shutil.rmtree(rd, ignore_errors=True)


@pytest.mark.timeout(200)
def test_demo_sends_every_request_through_the_mesh_and_cleans_up(demo: Run) -> None:
    assert demo.result.returncode == 0, demo.explain()
    demo.line(rf"^requests\s+{REQUESTS} sent\b")
    demo.line(rf"frontend -> backend\s+200 x{REQUESTS}$")
    demo.line(rf"end to end\s+200 x{REQUESTS}$")
    demo.line(rf"backend served {REQUESTS}$")
    for hop in ("frontend -> backend", "end to end"):
        m = demo.line(rf"{hop}\s+p50 ([0-9.]+) ms\s+p99 ([0-9.]+) ms")
        p50, p99 = float(m.group(1)), float(m.group(2))
        assert 0 < p50 <= p99, demo.explain()
    demo.line(rf"^ok: all {REQUESTS} requests got a 2xx")
    assert "stopped" in demo.out, demo.explain()
    assert demo.leftovers == [], f"processes of {demo.runtime_dir} outlived the demo: {demo.leftovers}"


@pytest.mark.timeout(200)
def test_demo_reports_both_peers_identities(demo: Run) -> None:
    # Read off the node: x-forwarded-client-cert on the backend's side, the labels of
    # meshnode_requests_total on the frontend's (which calls from its own address, so
    # the node presents the frontend's identity, not the first one it holds).
    assert demo.result.returncode == 0, demo.explain()
    assert demo.line(r"frontend's proxy presented\s+(\S+)").group(1) == FRONTEND_ID
    assert demo.line(r"backend saw client identity\s+(\S+)").group(1) == FRONTEND_ID
    assert demo.line(r"backend presented\s+(\S+)").group(1) == BACKEND_ID
    assert demo.line(r"frontend's proxy verified\s+(\S+)").group(1) == BACKEND_ID
    demo.line(rf"mesh counted\s+200 x{REQUESTS}$")


@pytest.mark.timeout(200)
def test_demo_keep_leaves_a_node_the_printed_command_stops() -> None:
    rd = _scratch_dir()
    base = free_port_base()
    try:
        result = run_cli("demo", "--requests", "5", "--port-base", str(base), "--runtime-dir",
                         str(rd), "--keep", timeout_s=DEMO_TIMEOUT_S)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert http_get(f"http://127.0.0.1:{base}/ready")[0] == 200
        apps = re.search(r"^\s+kill ([0-9 ]+); meshnode down --runtime-dir (\S+)$",
                         result.stdout, re.MULTILINE)
        assert apps and apps.group(2) == str(rd), result.stdout
        pids = [int(p) for p in apps.group(1).split()]
        assert len(pids) == 2 and set(pids) <= set(pids_of(rd))
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        down = run_cli("down", "--runtime-dir", str(rd))
        assert down.returncode == 0, down.stderr
        wait_for(lambda: not pids_of(rd), 10.0, "the kept node and apps to be gone")
    finally:
        kill_leftovers(rd)
        shutil.rmtree(rd, ignore_errors=True)


@pytest.mark.timeout(200)
def test_demo_interrupted_stops_everything_it_started() -> None:
    rd = _scratch_dir()
    # A shell's background job starts with SIGINT ignored; Ctrl-C must reach this one.
    proc = subprocess.Popen([*CLI, "demo", "--requests", "100000", "--port-base",
                             str(free_port_base()), "--runtime-dir", str(rd)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if k != "MESHNODE_RUNTIME_DIR"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:  # every started process of the demo is up by this line
            seen.append(line)
            if line.startswith("sending "):
                break
        else:
            pytest.fail("the demo ended before sending:\n" + "".join(seen))
        assert len(pids_of(rd)) >= 2 + 6  # the apps, supervisord and the node's processes
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, "".join(seen) + rest
        assert "interrupted" in rest
        assert pids_of(rd) == [], "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(rd)
        shutil.rmtree(rd, ignore_errors=True)


def _requests(metrics_url: str, reporter: str) -> float:
    return sum(value for labels, value in metric_samples(metrics_url, "meshnode_requests_total")
               if labels.get("reporter") == reporter
               and labels.get("destination_service", "").startswith("backend.demo"))


@pytest.mark.timeout(300)
def test_demo_with_two_port_bases_crosses_from_one_node_to_the_other() -> None:
    rd = _scratch_dir()
    base_a, base_b = free_port_base(), free_port_base()
    try:
        result = run_cli("demo", "--requests", "20", "--port-base", str(base_a), "--port-base",
                         str(base_b), "--runtime-dir", str(rd), "--keep", timeout_s=DEMO_TIMEOUT_S)
        run = Run(rd, result, [])
        assert result.returncode == 0, run.explain()
        assert run.line(r"^node\s+demo-a, .*fronts (\w+)$").group(1) == "frontend"
        assert run.line(r"^node\s+demo-b, .*fronts (\w+)$").group(1) == "backend"
        run.line(rf"=mTLS=> :{base_b + 6} \(demo-b\) -> backend$")
        assert run.line(r"backend saw client identity\s+(\S+)").group(1) == FRONTEND_ID
        assert run.line(r"frontend's proxy verified\s+(\S+)").group(1) == BACKEND_ID
        run.line(r"frontend -> backend\s+200 x20$")
        # Each node counted its side of the hop: demo-a sent, demo-b received; demo-a
        # fronts no backend, so nothing went through its own inbound listener.
        metrics_a = f"http://127.0.0.1:{base_a + 90}/metrics"
        metrics_b = f"http://127.0.0.1:{base_b + 90}/metrics"
        wait_for(lambda: _requests(metrics_b, "destination") >= 20, 10.0,
                 "demo-b to count the requests it received")
        assert _requests(metrics_a, "source") >= 20
        assert _requests(metrics_a, "destination") == 0
        assert _requests(metrics_b, "source") == 0
        # The nodes were told where each other's inbound listener is.
        nodes = run_cli("get", "nodes", "--runtime-dir", str(rd / "demo-a"), "-o", "json")
        assert nodes.returncode == 0, nodes.stderr
        assert {n["metadata"]["name"]: n["spec"]["inboundPort"] for n in json.loads(nodes.stdout)} \
            == {"demo-a": base_a + 6, "demo-b": base_b + 6}
        kept = re.search(r"^\s+kill ([0-9 ]+); meshnode down --runtime-dir (\S+); "
                         r"meshnode down --runtime-dir (\S+)$", result.stdout, re.MULTILINE)
        assert kept and {kept.group(2), kept.group(3)} == {str(rd / "demo-a"), str(rd / "demo-b")}, \
            result.stdout
        for pid in (int(p) for p in kept.group(1).split()):
            os.kill(pid, signal.SIGTERM)
        for node_dir in (kept.group(2), kept.group(3)):
            down = run_cli("down", "--runtime-dir", node_dir)
            assert down.returncode == 0, down.stderr
        wait_for(lambda: not pids_of(rd), 10.0, "both kept nodes and the apps to be gone")
    finally:
        kill_leftovers(rd)  # the nodes' dirs are inside it
        shutil.rmtree(rd, ignore_errors=True)


def test_demo_refuses_overlapping_or_too_many_port_bases() -> None:
    for bases, says in (([21000, 21050], "overlap"), ([21000, 21200, 21400], "one or two"),
                        ([80], "within 1024..65435")):
        args = [arg for base in bases for arg in ("--port-base", str(base))]
        result = run_cli("demo", *args, "--requests", "1")
        assert result.returncode == 64 and says in result.stderr, result.stderr  # EX_USAGE
