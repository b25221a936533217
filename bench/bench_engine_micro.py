"""Micro benchmarks of fastpath.engine's per-request pieces besides the parser: the route
lookup of a request's authority, and the buffer pool, each timed in a C loop.

Run: python -m pytest bench/bench_engine_micro.py --benchmark-only
(The parser has bench/bench_http1.py; the whole path has bench/sidecar_pair.py.)
`ns_per_op` in extra_info (and the printed line) is the mean round over N.
"""

from __future__ import annotations

import pytest

from fastpath import engine as fe

N = 200_000
ID = "spiffe://cluster.local/ns/shop/sa/orders"


def _table(services: int) -> fe.RouteTable:
    """`services` services with the three names a request may use for each, as the
    node's data plane adds them (svc, svc.ns, svc.ns.svc), one HTTP port each."""
    t = fe.RouteTable()
    for i in range(services):
        index = t.add_service(f"shop/svc{i}:http", f"http.svc{i}.shop.svc", [ID],
                              [("127.0.0.1", 15006)])
        for host in (f"svc{i}", f"svc{i}.shop", f"svc{i}.shop.svc"):
            t.add_host(host, index, 8080)
    return t


def _report(benchmark, label: str, n: int) -> None:
    ns = benchmark.stats.stats.mean / n * 1e9
    benchmark.extra_info["ns_per_op"] = round(ns, 1)
    print(f"\n{label}: {ns:.1f} ns per op")


@pytest.mark.parametrize("services", [10, 1000])
def test_bench_route_lookup(benchmark, services: int) -> None:
    table = _table(services)
    authority = f"svc{services // 2}.shop.svc:8080".encode()
    assert fe.bench_route_lookup(table, authority, 1) == services // 2
    benchmark.pedantic(fe.bench_route_lookup, args=(table, authority, N), rounds=10,
                       iterations=1, warmup_rounds=1)
    _report(benchmark, f"route lookup among {services} services ({3 * services} names)", N)


def test_bench_route_lookup_miss(benchmark) -> None:
    table = _table(1000)
    assert fe.bench_route_lookup(table, b"nowhere.example:80", 1) == -1
    benchmark.pedantic(fe.bench_route_lookup, args=(table, b"nowhere.example:80", N),
                       rounds=10, iterations=1, warmup_rounds=1)
    _report(benchmark, "route lookup, unknown host (404)", N)


def test_bench_buffer_pool(benchmark) -> None:
    engine = fe.Engine(max_connections=4096)
    assert fe.bench_buffer_pool(engine, 1) == 0
    benchmark.pedantic(fe.bench_buffer_pool, args=(engine, N), rounds=10, iterations=1,
                       warmup_rounds=1)
    _report(benchmark, "buffer pool: take two buffers and give them back", N)
