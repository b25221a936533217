"""An open-loop HTTP/1.1 load: requests at a fixed rate, each timed from when it was due.

Why: wrk is closed-loop (a connection sends its next request when the last is answered)
and corrects its percentiles for coordinated omission by the mean interval it achieved,
so two balancers with different throughputs are judged against different clocks (the
faster one's rare slow answer weighs more). Comparing balancers at one offered rate, as
Linkerd's and fortio's benchmarks do, asks the question users have: at this load, how
slow is the 99th request in a hundred? Each request is due at start + i / rate; its
latency runs from then to its answer's last byte, so time spent waiting for a free
connection counts (no coordinated omission), and percentiles are over requests.

Used by bench/balance.py (`--rate`); also by hand::

    python bench/openloop.py --port 8080 --host app --rate 2000 --seconds 10

Prints one JSON object: rps, p50_ms, p90_ms, p99_ms, p999_ms, errors. Traffic goes to
127.0.0.1 only; the run stops by itself (`--seconds`, then at most `GRACE_S` for answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

GRACE_S = 5.0       # after the last request is due, how long answers are awaited


class _Load:
    def __init__(self, port: int, host: str, keepalive: bool) -> None:
        self.port = port
        self.request = (f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                        + ("" if keepalive else "Connection: close\r\n") + "\r\n").encode()
        self.keepalive = keepalive
        self.latencies: list[float] = []
        self.errors = 0         # answered, not 2xx
        self.failed = 0         # no answer: the connection failed under it
        self.answered = 0

    async def _exchange(self, conn) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """One request and its whole answer on `conn` (opened when None); the connection
        to keep, or None."""
        if conn is None:
            conn = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if not head.startswith(b"HTTP/1.1 2"):
            self.errors += 1
        await reader.readexactly(length)
        if self.keepalive and b"connection: close" not in head.lower():
            return conn
        writer.close()
        return None

    async def _worker(self, due: asyncio.Queue) -> None:
        conn = None
        while True:
            at = await due.get()
            if at is None:
                return
            try:
                conn = await self._exchange(conn)
                self.latencies.append(time.monotonic() - at)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.failed += 1
                conn = None

    async def run(self, rate: float, seconds: float, connections: int) -> None:
        due: asyncio.Queue = asyncio.Queue()
        workers = [asyncio.create_task(self._worker(due)) for _ in range(connections)]
        start = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            at = start + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            due.put_nowait(at)
        for _ in workers:
            due.put_nowait(None)
        done, pending = await asyncio.wait(workers, timeout=GRACE_S)
        for task in pending:
            task.cancel()
        self.answered = len(self.latencies)
        unanswered = max(0, total - self.answered - self.failed)
        self.failed += unanswered
        # What was never answered counts as at least as slow as the wait it got.
        self.latencies += [time.monotonic() - start - seconds] * unanswered


def measure(port: int, host: str, rate: float, seconds: float, connections: int,
            keepalive: bool) -> dict[str, float | str]:
    load = _Load(port, host, keepalive)
    started = time.monotonic()
    asyncio.run(load.run(rate, seconds, connections))
    elapsed = time.monotonic() - started
    ms = sorted(x * 1000 for x in load.latencies) or [0.0]

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))]

    return {"rps": load.answered / elapsed, "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "p999_ms": pct(99.9),
            "errors": (f"not 2xx: {load.errors}, unanswered: {load.failed}"
                       if load.errors or load.failed else "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="app", help="the Host header")
    ap.add_argument("--rate", type=float, required=True, help="requests per second offered")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=16,
                    help="at most this many requests outstanding (kept-alive connections)")
    ap.add_argument("--close", action="store_true", help="a new connection per request")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.port, args.host, args.rate, args.seconds, args.connections,
                             not args.close)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
