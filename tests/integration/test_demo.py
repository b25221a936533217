"""`meshnode demo` as a user runs it (meshnode.demo): a real node, two apps, a report.

The demo is run as a subprocess of the real CLI on a free port block. One run with an
explicit runtime dir serves the report tests; a run with --keep and one interrupted by
Ctrl-C check that the demo leaves behind exactly what it says: nothing, or a node the
printed command stops. A two-node run is kept so that each node can be asked what it
carried: the requests must cross from the frontend's node to the backend's. The canary
runs (`--canary`, one node and two) move backend's traffic to v2 in four steps, each
judged on its table against its weight. The rollout runs (`--rollout`, `--rollout-bad`)
leave the steps to the node's rollout controller: a good v2 promoted step by step, one
answering 5 % errors rolled back, each judged on the events and checks the demo printed.
"""

from __future__ import annotations

import contextlib
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

    def assert_nothing_left(self) -> None:
        assert self.leftovers == [], f"processes of {self.runtime_dir} outlived the demo: " \
            f"{self.leftovers}\n{self.explain()}"

    def line(self, pattern: str) -> re.Match[str]:
        match = re.search(pattern, self.out, re.MULTILINE)
        assert match, f"no line matching {pattern!r} in the report:\n{self.explain()}"
        return match


def _scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))


@contextlib.contextmanager
def _demo_run(*args: str) -> Iterator[Run]:
    """`meshnode demo ARGS` in a runtime dir of ours; what was left after it."""
    rd = _scratch_dir()
    try:
        result = run_cli("demo", *args, "--runtime-dir", str(rd), timeout_s=DEMO_TIMEOUT_S)
        yield Run(rd, result, pids_of(rd))
    finally:
        kill_leftovers(rd)
        shutil.rmtree(rd, ignore_errors=True)


@pytest.fixture(scope="module")
def demo() -> Iterator[Run]:
    """One `meshnode demo --requests 50`."""
    with _demo_run("--requests", str(REQUESTS), "--port-base", str(free_port_base())) as run:
        yield run


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
    demo.assert_nothing_left()


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


# One row of the canary's table: step, v2 weight, config version, what v1 and v2 served
# (the apps' counts), v2's bounds, the mesh's counts sent and received (v1/v2), verdict.
CANARY_ROW = (r"^(\d)\s+(\d+) %\s+v\d+\s+(\d+)\s+(\d+)\s+(\d+)(?:\.\.(\d+))?\s+"
              r"(\d+)/(\d+)\s+(\d+)/(\d+)\s+(ok|OFF)$")
CANARY_REQUESTS = 150  # a step's least (meshnode.demo.canary.min_requests)


def _check_canary(run: Run, n: int) -> None:
    """Every step as the table shows it: v2's share is its weight's, within the bounds
    printed (4 sd of binomial(n, w)), and the apps and both sides of the mesh agree."""
    assert run.result.returncode == 0, run.explain()
    rows = re.findall(CANARY_ROW, run.out, re.MULTILINE)
    assert [int(r[1]) for r in rows] == [0, 10, 50, 100], run.explain()
    for step, weight, v1, v2, low, high, sent1, sent2, got1, got2, verdict in rows:
        v1_, v2_, w = int(v1), int(v2), int(weight) / 100
        assert v1_ + v2_ == n and verdict == "ok", run.explain()
        assert int(low) <= v2_ <= int(high or low), run.explain()
        assert abs(v2_ - n * w) <= 4 * (n * w * (1 - w)) ** 0.5, run.explain()
        assert (int(sent1), int(sent2)) == (int(got1), int(got2)) == (v1_, v2_), run.explain()
    # The 0 % and 100 % steps are exact; 10 % sends v2 some but not most.
    assert rows[0][3] == "0" and rows[3][2] == "0", run.explain()
    assert 0 < int(rows[1][3]) < n // 2, run.explain()
    run.line(r"^tolerance binomial: v2's count within 4 sd of N\*w")
    run.line(r"^ok: v2 took 0 % -> 10 % -> 50 % -> 100 % of backend's traffic")
    # What each step applied is the Gateway API's HTTPRoute, printed as a user writes it.
    assert "kind: HTTPRoute" in run.out and "name: backend-v2" in run.out, run.explain()


@pytest.mark.timeout(200)
def test_demo_canary_moves_backend_to_v2_step_by_step_by_route_weights() -> None:
    with _demo_run("--canary", "--requests", str(CANARY_REQUESTS), "--port-base",
                   str(free_port_base())) as run:
        rd = run.runtime_dir
        _check_canary(run, CANARY_REQUESTS)
        run.line(r"^apps\s+frontend 127\.0\.0\.2:\d+\s+backend-v1 127\.0\.0\.1:\d+\s+"
                 r"backend-v2 127\.0\.0\.3:\d+$")
        # Each step's route was applied as a config version that every worker ACKed.
        versions = [int(v) for v in re.findall(r"^applied config version (\d+) to the node: "
                                               r"HTTPRoute demo/backend-canary$", run.out,
                                               re.MULTILINE)]
        assert len(versions) == 4 and versions == sorted(set(versions)), run.explain()
        assert (rd / "demo" / "canary" / "route-v2-50.yaml").read_text().count("weight: 50") == 2
        run.assert_nothing_left()


@pytest.mark.timeout(300)
def test_demo_canary_with_two_port_bases_splits_on_the_callers_node() -> None:
    # demo-a picks the version of each request; demo-b, fronting both versions, hands
    # each to the one picked: the two nodes' counts agree with the apps' at every step.
    base_a, base_b = free_port_base(), free_port_base()
    with _demo_run("--canary", "--requests", str(CANARY_REQUESTS), "--port-base", str(base_a),
                   "--port-base", str(base_b)) as run:
        _check_canary(run, CANARY_REQUESTS)
        run.line(rf"=mTLS=> :{base_b + 6} \(demo-b\) -> backend v1 or v2, by the route's weights$")
        for node in ("demo-a", "demo-b"):
            assert len(re.findall(rf"^applied config version \d+ to {node}: HTTPRoute "
                                  rf"demo/backend-canary$", run.out, re.MULTILINE)) == 4, \
                run.explain()
        run.assert_nothing_left()


# --canary: fewer requests than a step needs to tell its weight from 0 % or 100 %.
# --rollout: the controller reads the figures of its own node, and with two nodes each
# running a controller of its own, the backends' would see no calls and roll back.
@pytest.mark.parametrize("args,says", [
    (["--canary", "--requests", "100", "--port-base", "21000"],
     "--canary needs --requests of at least 145"),
    (["--rollout", "--port-base", "21000", "--port-base", "21200"], "--rollout runs on one node")])
def test_demo_refuses_what_its_steps_could_not_judge(args: list[str], says: str) -> None:
    result = run_cli("demo", *args)
    assert result.returncode == 64, result.stderr  # EX_USAGE, before anything starts
    assert says in result.stderr, result.stderr


def test_demo_refuses_overlapping_or_too_many_port_bases() -> None:
    for bases, says in (([21000, 21050], "overlap"), ([21000, 21200, 21400], "one or two"),
                        ([80], "within 1024..65435")):
        args = [arg for base in bases for arg in ("--port-base", str(base))]
        result = run_cli("demo", *args, "--requests", "1")
        assert result.returncode == 64 and says in result.stderr, result.stderr  # EX_USAGE


# One row of the rollout's events: time, the controller's event, v2's weight after it,
# then the checks behind it (requests, success rate, p99), each "VALUE ok|FAILED".
ROLLOUT_ROW = (r"^\s*[0-9.]+s\s+(\w+)\s+(\d+) %(?:\s+(\d+) (ok|FAILED)\s+([0-9.]+) % (ok|FAILED)"
               r"\s+([0-9.]+) ms (ok|FAILED))?$")


def _rollout_rows(run: Run) -> list[tuple[str, ...]]:
    return re.findall(ROLLOUT_ROW, run.out, re.MULTILINE)


@pytest.mark.timeout(60)
def test_demo_rollout_promotes_a_good_v2_step_by_step() -> None:
    with _demo_run("--rollout", "--port-base", str(free_port_base())) as run:
        assert run.result.returncode == 0, run.explain()
        rows = _rollout_rows(run)
        steps = [(int(weight), figures) for event, weight, *figures in rows if event == "Advanced"]
        assert [w for w, _ in steps] == [10, 25, 50], run.explain()
        promoted = [r for r in rows if r[0] == "Promoted"]
        assert len(promoted) == 1 and promoted[0][1] == "100", run.explain()
        # Each step after the first, and the promotion, shows the passed checks behind it.
        for count, ok1, rate, ok2, p99, ok3 in [f for _, f in steps[1:]] + [promoted[0][2:]]:
            assert int(count) >= 10 and float(rate) >= 99 and float(p99) <= 200, run.explain()
            assert (ok1, ok2, ok3) == ("ok", "ok", "ok"), run.explain()
        assert not [r for r in rows if r[0] in ("Halted", "Failed")], run.explain()
        run.line(r"^rollout\s+demo/rollout-backend Succeeded: v2 at 100 %, stable backend-v2")
        # During the rollout both versions answered; after it, v2 alone.
        during = run.line(r"^\s+v2\s+(\d+)\s+[0-9.]+ %\s+200 x\d+$")
        assert int(during.group(1)) > 0, run.explain()
        run.line(r"^\s+v2\s+200\s+100\.0 %\s+200 x200$")
        run.line(r"^ok: backend v2 was promoted step by step; all 200 requests after it reached v2$")
        run.assert_nothing_left()


@pytest.mark.timeout(60)
def test_demo_rollout_bad_rolls_back_a_v2_answering_errors() -> None:
    with _demo_run("--rollout-bad", "--port-base", str(free_port_base())) as run:
        assert run.result.returncode == 0, run.explain()
        rows = _rollout_rows(run)
        assert not [r for r in rows if r[0] == "Promoted"], run.explain()
        halted = [r for r in rows if r[0] == "Halted"]
        assert len(halted) == 2, run.explain()
        # The failed check is the success rate, below the min of 99 (1 answer in 20 a 500).
        assert halted[-1][5] == "FAILED" and float(halted[-1][4]) < 99, run.explain()
        run.line(r"^\s+Halt demo/backend advancement \(2/2\): success rate [0-9.]+% over \d+ "
                 r"requests in 3s, outside min 99$")
        assert [r[1] for r in rows if r[0] == "Failed"] == ["0"], run.explain()
        run.line(r"^rollout\s+demo/rollout-backend Failed: v2 at 0 %, stable backend-v1, "
                 r"failed checks 2$")
        run.line(r"^\s+v2\s+\d+\s+[0-9.]+ %\s+.*500 x\d+")  # what v2 answered during it
        run.line(r"^\s+v1\s+200\s+100\.0 %\s+200 x200$")  # and after: all on v1
        run.line(r"^ok: backend v2 was rolled back, as a bad v2 must be; all 200 requests "
                 r"after it reached v1$")
        run.assert_nothing_left()
