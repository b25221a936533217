"""Balancers under the same load with one endpoint made slow: p99 and req/s of each.

Why: issue 11 asks that peak-EWMA P2C (meshnode's default) keep a slow endpoint's latency
out of the tail: p99 at least 3x lower than round robin's with one endpoint of two made
~20 ms slower. Run by hand, not in CI::

    python bench/balance.py                         # round robin, p2c-ewma, least request
    python bench/balance.py --delay-ms 20 --duration 10 --warmup 20 --connections 16

How: this process runs an outbound engine (the HTTP outbound listener) and one inbound
engine per endpoint (each its own inbound port, so its own endpoint), each in front of
its own app: a small asyncio HTTP/1.1 server in a process of its own, the first one
answering `--delay-ms` late. wrk loads the outbound listener, by default with
`-H "Connection: close"` (a new client connection per request); `--keepalive` keeps its
connections open, so the balancer's per-request choice on a kept upstream is measured. Each balancer gets a fresh
outbound engine (no latency estimate carried from the run before), an unrecorded
`--warmup` (peak EWMA learns with a 10 s decay: the estimates start at the 30 ms default
RTT), then the recorded run. Each app counts what it served: the slow one's share is
printed too. Traffic goes to 127.0.0.1 only; every port comes from the kernel.

Reading the percentiles: wrk corrects its latencies for coordinated omission (its
stats_correct): a request that took n times the mean interval between a connection's
requests is recorded with n - 1 more samples spread below it, the ones an open-loop client
would have sent meanwhile. So at 40k req/s over 16 connections (a 0.4 ms interval) one 20 ms
answer weighs as about 50, and a slow share of 0.1 % already puts p99 near 20 ms: to be 3x
below round robin's p99, a balancer must send the slow endpoint well under 0.02 % of the
requests. p90 and p99.9 are printed besides p99 to show where the tail starts.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TRUST_DOMAIN = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
APP_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/app"
SNI = "http.app.bench.svc"
BALANCERS = ("round-robin", "p2c-ewma", "least-request")


# --- the apps: processes of their own ------------------------------------------------------


def run_app(delay_s: float) -> None:
    """Answer every request with a short body, `delay_s` late; GET /count (straight to
    the app) answers how many requests it served. Prints its port, then serves."""
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /count "):
                    body = str(served).encode()
                else:
                    served += 1
                    if delay_s:
                        await asyncio.sleep(delay_s)
                    body = b"ok\n"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def app_count(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /count HTTP/1.1\r\nHost: app\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
            data += s.recv(4096)
    return int(data.split(b"\r\n\r\n", 1)[1])


# --- the engines: this process ------------------------------------------------------------


class Mesh:
    """The inbound engines (one per app) and their credentials; outbound engines are
    made per balancer (fresh()."""

    def __init__(self, app_ports: list[int]) -> None:
        from fastpath import engine as fe
        from fastpath import tls
        from meshnode.identity import pki

        self.fe = fe
        root = pki.make_root("balance bench root", TRUST_DOMAIN)
        issuer = pki.make_issuer(*root, "bench", 86400)
        bundle = pki.cert_pem(root[0])
        alpn = [fe.ALPN_TCP, b"http/1.1"]

        def ctx(server: bool, identity: str):
            key = pki.new_key()
            csr, _ = pki.csr_identity(pki.make_csr(key, identity))
            leaf = pki.sign_workload(csr, identity, issuer[0], issuer[1], 3600)
            return tls.TLSContext.for_mesh(server, pki.cert_pem(leaf) + pki.cert_pem(issuer[0]),
                                           pki.key_pem(key), bundle, alpn)

        self.client_ctx = ctx(False, CLIENT_ID)
        server_ctx = ctx(True, APP_ID)
        self.running: list[tuple[object, threading.Thread]] = []
        self.socks: list[socket.socket] = []
        self.endpoints = []
        for port in app_ports:
            sock = self._listener()
            table = fe.RouteTable()
            table.set_inbound(sock.fileno())
            table.add_inbound_route(SNI, server_ctx, "127.0.0.1", port, protocol="http")
            self._start(table)
            self.endpoints.append(("127.0.0.1", sock.getsockname()[1]))

    def _listener(self) -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        s.setblocking(False)
        self.socks.append(s)
        return s

    def _start(self, table, engine=None):
        """Run `engine` (a new one when None) on a thread of its own with `table`."""
        engine = engine or self.fe.Engine()
        thread = threading.Thread(target=engine.run, daemon=True)
        thread.start()
        generation = engine.install(table)
        while engine.generation < generation:
            time.sleep(0.001)
        self.running.append((engine, thread))
        return engine

    def fresh(self, balancer: str) -> tuple[object, int]:
        """A new outbound engine balancing the app service with `balancer`; its port."""
        sock = self._listener()
        table = self.fe.RouteTable()
        svc = table.add_service("bench/app:http", SNI, [APP_ID], self.endpoints, balancer=balancer)
        table.set_outbound_http(sock.fileno(), self.client_ctx)
        table.add_host("app", svc, 80)
        return self._start(table), sock.getsockname()[1]

    def stop(self) -> None:
        for engine, thread in self.running:
            engine.stop()
            thread.join(30)
        for s in self.socks:
            s.close()


# --- the driver ---------------------------------------------------------------------------


# wrk's --latency prints no percentile between 99 and 100; this prints the ones we read.
_PERCENTILES_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("PCT %d %d %d %d\\n", latency:percentile(50), latency:percentile(90),
                         latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk(port: int, seconds: int, connections: int, keepalive: bool) -> dict[str, float]:
    close = [] if keepalive else ["-H", "Connection: close"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_PERCENTILES_LUA)
        script.flush()
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name,
             "-H", "Host: app", *close, f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    micros = re.search(r"^PCT (\d+) (\d+) (\d+) (\d+)$", out, re.M).groups()
    for name, us in zip(("p50_ms", "p90_ms", "p99_ms", "p999_ms"), micros):
        figures[name] = int(us) / 1000
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    figures["errors"] = errors.group(0) if errors else ""
    return figures


def openloop(port: int, seconds: int, connections: int, keepalive: bool,
             rate: float) -> dict[str, float]:
    """bench/openloop.py in a process of its own: `rate` requests/s, each timed from when
    it was due (no coordinated omission), percentiles over requests."""
    argv = [sys.executable, str(Path(__file__).with_name("openloop.py")), "--port", str(port),
            "--rate", str(rate), "--seconds", str(seconds), "--connections", str(connections)]
    out = subprocess.run(argv + ([] if keepalive else ["--close"]), capture_output=True,
                         text=True, timeout=seconds + 60, check=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--app", type=float, help=argparse.SUPPRESS)    # run an app (delay s)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="the slow app's added latency")
    ap.add_argument("--endpoints", type=int, default=2, help="endpoints, the first one slow")
    ap.add_argument("--duration", type=int, default=10, help="seconds of each recorded run")
    ap.add_argument("--warmup", type=int, default=20, help="unrecorded seconds before each")
    ap.add_argument("--connections", type=int, default=16,
                    help="wrk -c (with --rate: at most this many requests outstanding)")
    ap.add_argument("--rate", type=float,
                    help="offer this many requests/s open-loop (bench/openloop.py) instead of "
                         "wrk's closed loop: both balancers judged at one load")
    ap.add_argument("--balancers", default=",".join(BALANCERS))
    ap.add_argument("--keepalive", action="store_true",
                    help="keep client connections open (balanced per request, not per connection)")
    args = ap.parse_args(argv)
    if args.app is not None:
        run_app(args.app)
        return 0
    apps = [subprocess.Popen([sys.executable, __file__, "--app",
                              str(args.delay_ms / 1000 if i == 0 else 0.0)],
                             stdout=subprocess.PIPE, text=True)
            for i in range(args.endpoints)]
    mesh = None
    try:
        ports = [int(p.stdout.readline()) for p in apps]
        mesh = Mesh(ports)
        load = (f"open loop at {args.rate:g} req/s, at most {args.connections} outstanding"
                if args.rate else f"wrk -c{args.connections}")
        print(f"{args.endpoints} endpoints, the first +{args.delay_ms:g} ms; {load}, "
              f"{'kept-alive connections' if args.keepalive else 'a connection per request'}; "
              f"{args.warmup} s warm-up, {args.duration} s recorded")
        print(f"{'balancer':<14} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
              f"{'p99.9 ms':>9} {'slow share':>11}")
        results = {}
        for balancer in args.balancers.split(","):
            _, port = mesh.fresh(balancer)
            run = functools.partial(openloop, rate=args.rate) if args.rate else wrk
            if args.warmup:
                run(port, args.warmup, args.connections, args.keepalive)
            before = [app_count(p) for p in ports]
            figures = run(port, args.duration, args.connections, args.keepalive)
            served = [app_count(p) - b for p, b in zip(ports, before)]
            share = served[0] / max(1, sum(served))
            results[balancer] = figures
            print(f"{balancer:<14} {figures['rps']:>8.0f} {figures['p50_ms']:>8.2f} "
                  f"{figures['p90_ms']:>8.2f} {figures['p99_ms']:>8.2f} {figures['p999_ms']:>9.2f} "
                  f"{share:>10.2%} {figures['errors']}", flush=True)
        if "round-robin" in results and "p2c-ewma" in results:
            rr, p2c = results["round-robin"], results["p2c-ewma"]
            print(f"p99 round robin / p2c-ewma: {rr['p99_ms'] / p2c['p99_ms']:.1f}x; "
                  f"req/s p2c-ewma / round robin: {p2c['rps'] / rr['rps']:.2f}")
    finally:
        if mesh is not None:
            mesh.stop()
        for p in apps:
            p.terminate()
            p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
