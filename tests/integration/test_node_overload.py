"""Overload defence on a real node (Mesh spec.overload; fastpath overload.pxi): idle and
slow connections from one source do not take a well-behaved caller's throughput, and a
burst over the node's cap on requests in flight is shed 503 at once, flagged "OM".

A node with two proxy workers, a ``backend`` Service (HTTP) and its Workload: the
tests.integration.httpapps server. Local calls go through the node's HTTP outbound
listener, over mutual TLS to the node's own inbound port, and to the app. The idle and
slow connections come from 127.0.0.2, in a process of their own. Throughput is compared
as counts of requests in one-second windows: rounds of a window without the flood and
one with it, the best window of each kind so far (the host is shared: a window may lose
time to other processes, never gain it, so the best of each converges on what the node
can do), until the best with the flood reaches 95 % of the best without, within a
bounded number of rounds. Every flood is bounded in count, every loop in time, every
wait has a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import requests

from dataplanekit import metric_total, settle, worker_reports
from httpapps import HTTPApp
from mnharness import Node, wait_for
from test_dataplane_http import service_yaml, workload_yaml

from meshnode.ports import Ports

pytestmark = pytest.mark.timeout(240)

ATTACKER = "127.0.0.2"
HOST = "backend.demo:8080"
IO_TIMEOUT_S = 20.0
WINDOW_S = 1.0          # a throughput window: a second of sequential requests
MIN_ROUNDS = 2          # rounds of a window without the flood, then one with it,
MAX_ROUNDS = 10         # until the best with it is 95 % of the best without
IDLE = 300              # connections from ATTACKER that send nothing at all
SLOW = 40               # connections from ATTACKER that trickle a second request's head

MESH = """\
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec:
  # Idle connections are held through the caller's window, not cut by the head timeout.
  connections: {{connectTimeout: 30s}}
  overload:
    maxRequestsInFlight: {cap}
    slowClients: {{gracePeriod: 6s, minBytesPerSecond: 200}}
"""


def total(node: Node, key: str) -> int:
    return sum(int((r.get("dataplane") or {}).get(key, 0)) for r in worker_reports(node).values())


def start(make_node: Callable[..., Node], resource_dir: Path, app: HTTPApp,
          cap: int) -> tuple[Node, int]:
    """The node up with the backend and the Mesh's overload settings; its HTTP port."""
    config = resource_dir / "config"
    config.mkdir()
    (config / "backend.yaml").write_text(service_yaml() + "---\n" + workload_yaml(app.port))
    (config / "mesh.yaml").write_text(MESH.format(cap=cap))
    node = make_node()
    result = node.up("--config", str(config))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    port = Ports(node.port_base).outbound
    wait_for(lambda: all(served(port, "/warm") for _ in range(6)), 30.0, "the node serving")
    return node, port


def served(port: int, path: str) -> bool:
    try:
        with requests.Session() as s:
            s.trust_env = False
            r = s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": HOST},
                      timeout=IO_TIMEOUT_S)
    except requests.RequestException:
        return False
    return r.status_code == 200


def window(session: requests.Session, port: int) -> int:
    """The well-behaved caller: sequential keep-alive requests, each answered 200; how
    many went through in WINDOW_S (a bounded loop)."""
    done = 0
    deadline = time.monotonic() + WINDOW_S
    while time.monotonic() < deadline:
        r = session.get(f"http://127.0.0.1:{port}/ok{done}", headers={"Host": HOST},
                        timeout=IO_TIMEOUT_S)
        assert r.status_code == 200, r.text
        done += 1
    return done


# The flood, in a process of its own (as an attacker is): its sockets and its trickle
# cost the caller's process nothing. argv: port, host. It opens IDLE connections that
# send nothing and SLOW ones whose first request goes well and whose next head then
# trickles a byte each half second (far below 200 B/s), says "ready", trickles until its
# stdin closes, then prints how many slow ones the node answered 408 before closing.
ATTACK = f"""
import socket, sys, threading
port, host = int(sys.argv[1]), sys.argv[2]
def connect():
    s = socket.socket()
    s.bind(("{ATTACKER}", 0))
    s.settimeout({IO_TIMEOUT_S})
    s.connect(("127.0.0.1", port))
    return s
idle = [connect() for _ in range({IDLE})]
slow = []
for _ in range({SLOW}):
    s = connect()
    s.sendall(("GET /first HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % host).encode())
    reply = b""
    while b"GET /first" not in reply:
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    s.sendall(b"GET /never-whole HTTP/1.1\\r\\n")
    slow.append(s)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
while not stop.wait(0.5):
    for s in slow:
        try:
            s.send(b"X")
        except OSError:
            pass
cut = 0
for s in slow:
    reply = b""
    try:
        while chunk := s.recv(65536):
            reply += chunk
    except OSError:
        pass
    cut += reply.startswith(b"HTTP/1.1 408")
print(cut, flush=True)
"""


def flood_during(node: Node, caller: requests.Session, port: int,
                 wait_cut: bool) -> tuple[int, int | None]:
    """The caller's window while the flood is on, once the node has taken it in (its
    accepts are not what is measured: the flood held is); and, when `wait_cut`, how many
    slow heads were cut 408 (at gracePeriod, 6 s: after the window). Otherwise the
    attacker is killed after the window, its connections closed with it."""
    attacker = subprocess.Popen([sys.executable, "-c", ATTACK, str(port), HOST],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout.readline().strip() == "ready"     # type: ignore[union-attr]
        wait_for(lambda: settle(node) or total(node, "outbound_connections_active")
                 >= IDLE + SLOW, 20.0, "the flood taken in")
        done = window(caller, port)
        if not wait_cut:
            return done, None
        out, _ = attacker.communicate("", timeout=2 * IO_TIMEOUT_S)
        return done, int(out.strip())
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait(IO_TIMEOUT_S)


def test_idle_and_slow_connections_from_one_source_leave_a_callers_throughput(
        make_node: Callable[..., Node], resource_dir: Path) -> None:
    app = HTTPApp()
    try:
        node, port = start(make_node, resource_dir, app, cap=0)
        baseline, during = 0, 0
        with requests.Session() as caller:
            caller.trust_env = False
            window(caller, port)        # warm: the first window after start is slow
            for rounds in range(1, MAX_ROUNDS + 1):
                # Each window starts alike: after a health beat, the node's connections
                # settled (here: the last round's flood gone).
                wait_for(lambda: settle(node) or total(node, "outbound_connections_active")
                         < 10, 20.0, "the flood gone")
                baseline = max(baseline, window(caller, port))
                done, cut = flood_during(node, caller, port, wait_cut=rounds == 1)
                during = max(during, done)
                if cut is not None:
                    # Every slow head was cut (408) at its deadline, long before the
                    # idle timeout.
                    assert cut == SLOW
                if rounds >= MIN_ROUNDS and during >= 0.95 * baseline:
                    break
        assert during >= 0.95 * baseline, (baseline, during, rounds)
    finally:
        app.stop()


def test_a_burst_over_the_cap_is_shed_at_once_and_counted(
        make_node: Callable[..., Node], resource_dir: Path) -> None:
    app = HTTPApp()
    try:
        node, port = start(make_node, resource_dir, app, cap=8)
        burst = 40

        def call(i: int) -> tuple[int, str, float]:
            began = time.monotonic()
            with requests.Session() as s:
                s.trust_env = False
                r = s.get(f"http://127.0.0.1:{port}/slow/1500/10", headers={"Host": HOST},
                          timeout=IO_TIMEOUT_S)
            return r.status_code, r.text, time.monotonic() - began

        with ThreadPoolExecutor(burst) as pool:
            answers = list(pool.map(call, range(burst)))
        shed = [a for a in answers if a[0] == 503]
        ok = [a for a in answers if a[0] == 200]
        assert len(shed) + len(ok) == burst, answers
        assert shed and ok, answers
        # Shed at once, with the reason; those admitted waited for the app and were served.
        assert all(a[1].startswith("overloaded: too many requests in flight") for a in shed)
        assert all(a[2] < 1.0 for a in shed), [a[2] for a in shed]
        assert all(a[2] >= 1.4 for a in ok)
        # Counted, and flagged in the request metrics as Envoy's overload manager does.
        settle(node)
        assert total(node, "overload_shed") == len(shed)
        wait_for(lambda: metric_total(node, "meshnode_requests_total", response_code="503",
                                      response_flags="OM") == len(shed), 20.0, "the OM flag")
        assert metric_total(node, "meshnode_overload_shed_requests_total") == len(shed)
        # Everything given back: the node serves again.
        wait_for(lambda: settle(node) or metric_total(node, "meshnode_requests_in_flight") == 0,
                 20.0, "nothing in flight")
        assert served(port, "/after")
    finally:
        app.stop()
