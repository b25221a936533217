"""DestinationRule trafficPolicy.connectionPool: Istio's YAML applied unchanged, Istio's
defaults, what each port's snapshot entry gives the engine (RouteTable.set_connection_pool),
each worker's share of the limits, bad values and fields not implemented refused by name,
and the store's round trip."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from meshnode.config.destinationrulepool import NOT_IMPLEMENTED_HTTP, NOT_IMPLEMENTED_TCP
from meshnode.poolshare import UNLIMITED, worker_share

from test_config_destinationrule import (ISTIO_CIRCUIT_BREAKER, port_policy, problems, rule,
                                         stored_and_read_back)

pytestmark = pytest.mark.timeout(60)

pools = partial(port_policy, "connection_pool")


def test_no_rule_no_connection_pool() -> None:
    assert pools() == {80: None, 9080: None}


def test_istios_example_applies_unchanged() -> None:
    want = {"max_connections": 100, "max_pending_requests": 10,
            "max_requests_per_connection": 5, "connect_timeout_s": 0.03}
    got = pools(ISTIO_CIRCUIT_BREAKER)
    assert got == {80: want, 9080: want}


def test_an_empty_connection_pool_takes_every_default() -> None:
    got = pools(rule("host: ratings\ntrafficPolicy: {connectionPool: {}}"))[80]
    assert got == {"max_connections": 0, "max_pending_requests": UNLIMITED,
                   "max_requests_per_connection": 0, "connect_timeout_s": 0.0}


def test_zero_is_istios_unset_the_default() -> None:
    got = pools(rule("host: ratings\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: 0},"
                     " http: {http1MaxPendingRequests: 0, maxRequestsPerConnection: 0}}}"))[80]
    assert got is not None
    assert got["max_connections"] == 0 and got["max_pending_requests"] == UNLIMITED
    assert got["max_requests_per_connection"] == 0


@pytest.mark.parametrize("total, workers, shares", [
    (100, 4, [25, 25, 25, 25]),
    (10, 4, [3, 3, 2, 2]),          # the parts add up to the node's limit
    (1, 2, [1, 1]),                 # under the worker count: each worker may make one
    (7, 1, [7]),
])
def test_each_worker_takes_its_share_of_the_limits(total: int, workers: int,
                                                    shares: list[int]) -> None:
    policy = {"max_connections": total, "max_pending_requests": total,
              "max_requests_per_connection": 3, "connect_timeout_s": 0.5}
    got = [worker_share(policy, i, workers) for i in range(workers)]
    assert [g["max_connections"] for g in got] == shares
    assert [g["max_pending_requests"] for g in got] == shares
    assert all(g["max_requests_per_connection"] == 3 and g["connect_timeout_s"] == 0.5
               for g in got)


def test_no_limit_stays_no_limit_in_every_worker() -> None:
    policy = {"max_connections": 0, "max_pending_requests": UNLIMITED,
              "max_requests_per_connection": 0, "connect_timeout_s": 0.0}
    assert worker_share(policy, 1, 4) == policy


@pytest.mark.parametrize("field", NOT_IMPLEMENTED_TCP)
def test_tcp_fields_not_implemented_are_refused_by_name(field: str) -> None:
    value = "{time: 7200s}" if field == "tcpKeepalive" else "1h"
    found = problems(rule(f"host: ratings\ntrafficPolicy: {{connectionPool: "
                          f"{{tcp: {{{field}: {value}}}}}}}"))
    [line] = [p for p in found if f"{field} is not implemented yet" in p]
    assert f"spec.trafficPolicy.connectionPool.tcp.{field}: " in line


@pytest.mark.parametrize("field", NOT_IMPLEMENTED_HTTP)
def test_http_fields_not_implemented_are_refused_by_name(field: str) -> None:
    value = {"idleTimeout": "1h", "h2UpgradePolicy": "UPGRADE",
             "useClientProtocol": "true"}.get(field, "3")
    found = problems(rule(f"host: ratings\ntrafficPolicy: {{connectionPool: "
                          f"{{http: {{{field}: {value}}}}}}}"))
    [line] = [p for p in found if f"{field} is not implemented yet" in p]
    assert f"spec.trafficPolicy.connectionPool.http.{field}: " in line


@pytest.mark.parametrize("body, where, says", [
    ("tcp: {maxConnections: -1}", "tcp.maxConnections", "between 0 and 2147483647"),
    ("tcp: {maxConnections: '5'}", "tcp.maxConnections", "must be an integer"),
    ("tcp: {connectTimeout: 0s}", "tcp.connectTimeout", "must be between 1ms and"),
    ("tcp: {connectTimeout: 10}", "tcp.connectTimeout", "duration"),
    ("http: {http1MaxPendingRequests: 2147483648}", "http.http1MaxPendingRequests",
     "between 0 and 2147483647"),
    ("http: {maxRequestsPerConnection: 1.5}", "http.maxRequestsPerConnection",
     "must be an integer"),
    ("http: {maxRequestPerConnection: 1}", "http.maxRequestPerConnection", "unknown field"),
    ("udp: {}", "udp", "unknown field"),
    ("tcp: 5", "tcp", "must be a mapping"),
])
def test_bad_values_are_refused_naming_the_field(body: str, where: str, says: str) -> None:
    found = problems(rule(f"host: ratings\ntrafficPolicy: {{connectionPool: {{{body}}}}}"))
    assert any(f"spec.trafficPolicy.connectionPool.{where}: " in p and says in p
               for p in found), found


def test_the_store_gives_the_rule_back_as_written(tmp_path: Path) -> None:
    kept, read = stored_and_read_back(tmp_path / "state", ISTIO_CIRCUIT_BREAKER)
    assert read.spec.pool == kept.spec.pool
