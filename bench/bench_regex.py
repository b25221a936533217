"""Micro benchmarks of fastpath.regex: fullmatch of route patterns on typical paths, timed in C.

Run: python -m pytest bench/bench_regex.py --benchmark-only
Each benchmark calls regex.bench_fullmatch, a loop in C that matches the same input N
times without the GIL, so a round measures the matcher rather than the Python call;
`ns_per_op` in extra_info (and the printed line) is the mean round over N. Patterns
with a compile-time DFA are timed on it and on the Pike VM (nfa=True), which is what a
pattern whose DFA would pass the size limits runs on.
"""

from __future__ import annotations

import pytest

from fastpath import regex
from fastpath.regex import Regex

N = 200_000

TEN_WAY = ("/(users|orders|carts|payments|invoices|products|reviews|search|auth|admin)"
           "/[0-9]+(/.*)?")

CASES = [
    # (label, pattern, input, expected match)
    ("api version", r"/api/v[0-9]+/users/[^/]+",
     b"/api/v2/users/8f14e45f-ceea-467f-a0e6-5b7c2a1d", True),
    ("api version, miss", r"/api/v[0-9]+/users/[^/]+",
     b"/api/v2/users/8f14e45f-ceea/467f-a0e6-5b7c2a1", False),
    ("static suffix", r".*\.(png|jpg)",
     b"/static/assets/images/products/2024/summer/banner-large.png", True),
    ("10 alternatives", TEN_WAY, b"/payments/7734120/refunds/2024-11-25/receipt.json", True),
    ("10 alternatives, miss", TEN_WAY,
     b"/shipments/7734120/refunds/2024-11-25/receipt.json", False),
    ("case-insensitive", r"(?i)/API/V[0-9]+/.*",
     b"/api/v1/Orders/12345/items?include=all&limit=20", True),
    ("word boundary", r".*\bMobile\b.*",
     b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile/15E148 Safari/604.1", True),
    # A DFA would need 2^13 states: this one always runs on the Pike VM.
    ("DFA too large", r"/(a|b)*a(a|b){12}", b"/abbabababbbababaabab" + b"a" + b"bababbabbbab", True),
]


@pytest.mark.parametrize("nfa", [False, True], ids=["dfa", "pike"])
@pytest.mark.parametrize("label,pattern,data,expected", CASES, ids=[c[0] for c in CASES])
def test_bench_fullmatch(benchmark, label, pattern, data, expected, nfa):
    rx = Regex(pattern)
    if not nfa and not rx.dfa_states:
        pytest.skip("no DFA for this pattern: see the pike row")
    assert rx.fullmatch(data) is expected and rx.fullmatch_nfa(data) is expected
    n = N if not nfa else N // 10
    benchmark.pedantic(regex.bench_fullmatch, args=(rx, data, n, nfa), rounds=10, iterations=1,
                       warmup_rounds=1)
    ns = benchmark.stats.stats.mean / n * 1e9
    benchmark.extra_info["ns_per_op"] = round(ns, 1)
    benchmark.extra_info["bytes"] = len(data)
    benchmark.extra_info["program_size"] = rx.program_size
    benchmark.extra_info["dfa_states"] = rx.dfa_states
    print("\n%s [%s]: %d bytes, %d instructions, %d DFA states, %.1f ns per match"
          % (label, "pike" if nfa else "dfa", len(data), rx.program_size, rx.dfa_states, ns))


@pytest.mark.parametrize("pattern", [r"/api/v[0-9]+/users/[^/]+", TEN_WAY, r"(?i)/API/V[0-9]+/.*"])
def test_bench_compile(benchmark, pattern):
    # Install-time cost: parse, compile and build the DFA (once per route table push).
    Regex(pattern)  # the case-folding table is built on first use; time what follows
    benchmark(Regex, pattern)
    print("\ncompile %r: %.1f us" % (pattern, benchmark.stats.stats.mean * 1e6))
