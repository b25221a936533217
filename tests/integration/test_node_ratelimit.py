"""RateLimitPolicy through a running node (DESIGN §5; fastpath/ratelimit.pxi, meshnode.
ratelimits, meshnode.sharedstate): a limit is the node's whatever `--workers` is, measured
over 10 s with one and with two proxy workers; its 429s carry Retry-After and the
RateLimit fields; a policy applied, changed and deleted takes effect on a running node
without dropping a kept-alive client; a limit on an HTTPRoute's rule takes that rule's
requests only; the decisions are in /metrics by policy and limit.

The node fronts the backend app (tests.integration.httpapps) as test_dataplane_http's
mesh does. The load is a bounded, paced loop on loopback (200 requests a second from four
clients), so that it measures the limit and not the machine: each run takes about 11 s of
load. For the measurement the limit is Outbound and every request a new client
connection, so that the kernel spreads the requests over the workers (SO_REUSEPORT) and
each worker decides on its share: an Inbound limit is decided by whichever worker
accepted the caller node's kept-alive mTLS connection, which may be one for all.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from dataplanekit import metric_total, settle, worker_reports
from httpapps import HTTPApp
from mnharness import Node, parse_version
from test_dataplane_http import HOST, service_yaml, start_app, wait_serving, workload_yaml  # noqa: F401

pytestmark = pytest.mark.timeout(180)

RATE = 50               # requests a second the limit lets through
OFFERED = 200           # requests a second the load offers (four clients of 50)
CLIENTS = 4
WARMUP_S = 1.0          # the first burst spent, the bucket at its steady state
WINDOW_S = 10.0
POLICY = """\
apiVersion: meshnode.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: backend-limit, namespace: demo}}
spec:
  targetRefs: [{{group: "", kind: Service, name: backend}}]
  direction: {direction}
  limits:
  - name: whole
    tokenBucket: {{maxTokens: {burst}, tokensPerFill: {tokens}, fillInterval: {interval}}}
"""


def policy(burst: int = 10, tokens: int = 10, interval: str = "200ms",
           direction: str = "Inbound") -> str:
    return POLICY.format(burst=burst, tokens=tokens, interval=interval, direction=direction)


def start_node(make_node: Callable[..., Node], start_app: Callable[..., HTTPApp],
               resource_dir: Path, workers: int) -> Node:
    app = start_app()
    config = resource_dir / "config"
    config.mkdir()
    (config / "backend.yaml").write_text(service_yaml() + "---\n" + workload_yaml(app.port))
    node = make_node(workers)
    result = node.up("--config", str(config))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    wait_serving(node, node.port_base + 1)
    return node


def apply(node: Node, resource_dir: Path, text: str) -> None:
    path = resource_dir / "ratelimit.yaml"
    path.write_text(text)
    node.wait_version(node.apply(path))


class PacedLoad:
    """CLIENTS threads, each sending GETs at OFFERED / CLIENTS a second for
    `duration_s`, each on a new connection; every answer's (time since start, status)
    kept, and one 429's fields."""

    def __init__(self, port: int, duration_s: float) -> None:
        self.port, self.duration_s = port, duration_s
        self.answers: list[tuple[float, int]] = []
        self.failures: list[str] = []
        self.limited_headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self.start = time.monotonic()
        threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration_s + 30)

    def _client(self, index: int) -> None:
        period = CLIENTS / OFFERED
        due = self.start + index * period / CLIENTS
        while due < self.start + self.duration_s:
            time.sleep(max(0.0, due - time.monotonic()))
            due += period
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/limited", headers={"Host": HOST, "Connection": "close"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            finally:
                conn.close()
            with self._lock:
                self.answers.append((time.monotonic() - self.start, resp.status))
                if resp.status == 429 and not self.limited_headers:
                    self.limited_headers = {k.lower(): v for k, v in resp.getheaders()}

    def served(self, since_s: float, until_s: float) -> int:
        return sum(1 for at, status in self.answers if status == 200 and since_s <= at < until_s)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_limit_is_the_nodes_whatever_the_number_of_workers(
        make_node: Callable[..., Node], start_app: Callable[..., HTTPApp], resource_dir: Path,
        workers: int) -> None:
    node = start_node(make_node, start_app, resource_dir, workers)
    apply(node, resource_dir, policy(direction="Outbound"))  # 50 a second, 10 at once
    load = PacedLoad(node.port_base + 1, WARMUP_S + WINDOW_S + 0.5)
    assert len(load.failures) <= len(load.answers) // 100, load.failures[:5]
    statuses = {status for _, status in load.answers}
    assert statuses == {200, 429}, statuses
    served = load.served(WARMUP_S, WARMUP_S + WINDOW_S)
    assert abs(served - RATE * WINDOW_S) <= 0.05 * RATE * WINDOW_S, (workers, served)
    # Its 429: a token is back within 20 ms: one second, rounded up.
    fields = load.limited_headers
    assert (fields["retry-after"], fields["ratelimit-policy"], fields["ratelimit"]) == (
        "1", '"demo/backend-limit/whole";q=50;w=1', '"demo/backend-limit/whole";r=0;t=1'), fields
    settle(node)
    reports = worker_reports(node)
    decided = {name: {e["policy"]: e for e in r.get("rate_limits") or ()} for name, r in reports.items()}
    allowed = [d["demo/backend-limit/whole"]["allowed"] for d in decided.values()
               if "demo/backend-limit/whole" in d]
    # Each worker decided on its share of the requests, on the one bucket of the node.
    assert len(allowed) == workers and all(allowed), decided
    limited = metric_total(node, "meshnode_ratelimit_decisions_total", policy="demo/backend-limit",
                           limit="whole", result="limited")
    assert limited == sum(1 for _, status in load.answers if status == 429)


def test_a_policy_applied_changed_and_deleted_on_a_running_node_keeps_the_client(
        make_node: Callable[..., Node], start_app: Callable[..., HTTPApp],
        resource_dir: Path) -> None:
    node = start_node(make_node, start_app, resource_dir, 1)
    conn = http.client.HTTPConnection("127.0.0.1", node.port_base + 1, timeout=10)

    def statuses(n: int) -> list[int]:
        out = []
        for _ in range(n):
            conn.request("GET", "/kept", headers={"Host": HOST})
            resp = conn.getresponse()
            resp.read()
            assert not resp.will_close, resp.getheaders()    # the client's connection stays
            out.append(resp.status)
        return out

    assert statuses(3) == [200] * 3
    apply(node, resource_dir, policy(burst=2, tokens=1, interval="1h"))
    assert statuses(3) == [200, 200, 429]
    apply(node, resource_dir, policy(burst=4, tokens=1, interval="1h"))   # the bucket stays
    assert statuses(3) == [200, 200, 429]
    deleted = node.cli("delete", "ratelimitpolicy", "backend-limit", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    node.wait_version(parse_version(deleted.stdout))
    assert statuses(3) == [200] * 3
    conn.close()


ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend-routes, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 8080}]
  rules:
  - name: search
    matches: [{path: {type: PathPrefix, value: /search}}]
    backendRefs: [{name: backend, port: 8080}]
  - backendRefs: [{name: backend, port: 8080}]
---
apiVersion: meshnode.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: search-limit, namespace: demo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: backend-routes,
                sectionName: search}]
  direction: Outbound
  limits: [{rate: {requests: 2, unit: Hour}}]
"""


def test_a_limit_on_an_http_routes_rule_takes_that_rules_requests_only(
        make_node: Callable[..., Node], start_app: Callable[..., HTTPApp],
        resource_dir: Path) -> None:
    node = start_node(make_node, start_app, resource_dir, 1)
    apply(node, resource_dir, ROUTE)
    conn = http.client.HTTPConnection("127.0.0.1", node.port_base + 1, timeout=10)

    def status(path: str) -> int:
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    assert [status(p) for p in ("/search/1", "/other", "/search/2", "/search/3", "/other")] == [
        200, 200, 200, 429, 200]
    conn.close()
