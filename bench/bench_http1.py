"""Micro benchmarks of fastpath.http1: head parsing and chunked framing, timed in C.

Run: python -m pytest bench/bench_http1.py --benchmark-only
(bench/ is outside `testpaths` and its files are not test_*.py: `pytest tests` never
collects them.) Each benchmark calls a loop in C (http1.bench_*) that repeats the
parse N times without the GIL, so a round measures the parser rather than the Python
call; `ns_per_op` in extra_info (and the printed line) is the mean round over N.
"""

from __future__ import annotations

import pytest

from fastpath import http1

N = 100_000

# A typical proxied API call: 300 bytes, 7 fields.
REQUEST = (
    b"GET /api/v1/orders/12345?include=items&lim=2 HTTP/1.1\r\n"
    b"Host: orders.shop.svc.cluster.local:8080\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln\r\n"
    b"X-Request-Id: 5f0c2a8e-9b1d-4c3e-8f7\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 1342\r\n"
    b"Date: Tue, 25 Nov 2025 19:00:00 GMT\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Envoy-Upstream-Service-Time: 3\r\n"
    b"\r\n"
)

CHUNKED = b"".join(b"%x;i=%d\r\n%s\r\n" % (len(part), n, part)
                   for n, part in enumerate([b"x" * 512, b"y" * 100, b"z" * 4000])) + b"0\r\n\r\n"

# An incomplete head just under the 64 KiB limit: what one re-parse costs when a
# client trickles its head in (HTTP1_AGAIN each time).
TRICKLE = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Filler: " + b"v" * 8000 + b"\r\n"
TRICKLE = TRICKLE + (b"X-Filler: " + b"v" * 8000 + b"\r\n") * 7 + b"X-Last: " + b"v" * 400


def _run(benchmark, fn, data: bytes, expected: int, label: str, n: int = N) -> None:
    assert fn(data, 1) == expected
    benchmark.pedantic(fn, args=(data, n), rounds=15, iterations=1, warmup_rounds=2)
    ns = benchmark.stats.stats.mean / n * 1e9
    benchmark.extra_info["ns_per_op"] = round(ns, 1)
    benchmark.extra_info["bytes"] = len(data)
    print("\n%s: %d bytes, %.1f ns per parse (%.2f GB/s)" % (label, len(data), ns, len(data) / ns))


def test_bench_parse_request_head(benchmark):
    assert len(REQUEST) == 300
    _run(benchmark, http1.bench_parse_request, REQUEST, len(REQUEST), "parse_request_head")


def test_bench_parse_response_head(benchmark):
    _run(benchmark, http1.bench_parse_response, RESPONSE, len(RESPONSE), "parse_response_head")


def test_bench_chunked_framing(benchmark):
    _run(benchmark, http1.bench_chunked, CHUNKED, len(CHUNKED), "chunked_advance (framing)")


def test_bench_reparse_incomplete_64k_head(benchmark):
    assert 60_000 < len(TRICKLE) < 65_536
    _run(benchmark, http1.bench_parse_request, TRICKLE, 0, "parse_request_head, incomplete head",
         n=N // 100)


@pytest.mark.parametrize("data", [REQUEST], ids=["300B"])
def test_bench_python_wrapper(benchmark, data):
    # For scale only: the dict-building wrapper that tests and tools use.
    benchmark(http1.parse_request, data)
