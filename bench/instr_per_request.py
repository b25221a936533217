"""Instructions and system calls per keep-alive HTTP request through a pair of engines.

Why: on a shared 2-core machine the sidecar-pair benchmark's req/s move by 5-20 % from one
round to the next, so a few per cent added to the per-request path hide in the noise.
Counting does not: callgrind counts the engines' instructions and strace their system calls
for a fixed number of requests, with this build and with an older one::

    python bench/instr_per_request.py --compare /tmp/base/venv/bin/python --connections 16

(`--compare` measures again with that interpreter, e.g. a second venv with an older commit
installed (`pip install .`, not -e), and prints the ratio and the functions whose cost per
request differs most.) Kernel time is not counted: compare the system calls for that.

How: a process (`--engines`) runs the two nodes as two Engines on two threads (the HTTP
outbound listener of the caller's node → mTLS → the inbound listener of the app's node, the
port declared HTTP), first under `valgrind --tool=callgrind`, then bare with strace attached.
The app (a small keep-alive HTTP/1.1 server, answers shaped like nginx's) and the clients
(`--connections` keep-alive connections at once, as wrk's -c, wrk's request line) are other
processes, not counted. A warm-up of 25 requests per connection comes first (upstreams
pooled, sessions made); only the requests after it are counted.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/frontend"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/app"
SNI = "http.app.bench.svc"
HOST = "app.bench.svc:8080"
ROUTE_RULES = 10
REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
BODY = b"<html>hello from the app, an nginx-sized default page body</html>\n" * 9
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: app\r\nDate: Sun, 06 Dec 2026 00:00:00 GMT\r\n"
            b"Content-Type: text/html\r\nContent-Length: " + str(len(BODY)).encode()
            + b"\r\nConnection: keep-alive\r\nAccept-Ranges: bytes\r\n\r\n" + BODY)


# --- the app and the client: separate processes, not counted -----------------------------


def run_app(port_file: Path) -> None:
    """Answer every request head on every connection with RESPONSE, until killed."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=64)
    port_file.write_text(str(srv.getsockname()[1]))

    def serve(conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    conn.sendall(RESPONSE)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def run_client(port: int, requests: int, connections: int) -> None:
    """`requests` requests over `connections` keep-alive connections at once (as wrk's
    `-c`), each connection's in turn; each answer read whole."""
    errors: list[BaseException] = []

    def one(count: int) -> None:
        try:
            _requests_in_turn(port, count)
        except BaseException as exc:        # reported below, from the main thread
            errors.append(exc)

    shares = [requests // connections + (i < requests % connections) for i in range(connections)]
    threads = [threading.Thread(target=one, args=(n,)) for n in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"client failed: {errors[0]!r}")


def _requests_in_turn(port: int, requests: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        for _ in range(requests):
            c.sendall(REQUEST)
            got = b""
            while len(got) < len(RESPONSE) or b"\r\n\r\n" not in got:
                chunk = c.recv(65536)
                if not chunk:
                    raise SystemExit(f"connection closed; got {got[:200]!r}")
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or len(body) != len(BODY):
                raise SystemExit(f"unexpected answer {got[:300]!r}")


# --- the engines: the counted process -----------------------------------------------------


def _routes(outbound, svc: int, versions: list[int]) -> None:
    """ROUTE_RULES rules on the service, as bench/peers.py's meshnode-routes pair has them:
    path and header matches the load never meets, then a 90/10 split of every path."""
    s = outbound.add_route_set(svc)
    for i in range(ROUTE_RULES - 1):
        rule = outbound.add_route_rule(f"bench/split#{i}", [(versions[1], 1)])
        outbound.add_route_match(s, rule, path=("PathPrefix", f"/api/v{i}"),
                                 headers=[("Exact", "x-tenant", f"tenant-{i}")])
    rule = outbound.add_route_rule("bench/split#last", [(versions[0], 90), (versions[1], 10)])
    outbound.add_route_match(s, rule)


def run_engines(app_port: int, port_file: Path, routes: bool = False) -> None:
    """Two nodes as two Engines on two threads; the outbound port written to `port_file`;
    they run until stdin closes (the driver's clients come from outside). `routes`: the
    service's requests go through a ROUTE_RULES-rule route set to two version services
    (the same app)."""
    from fastpath import engine as fe
    from fastpath import tls
    from meshnode.identity import pki

    root = pki.make_root("instr bench root", TRUST_DOMAIN)
    issuer = pki.make_issuer(*root, "bench", 86400)
    bundle = pki.cert_pem(root[0])

    def creds(identity: str) -> tuple[bytes, bytes]:
        key = pki.new_key()
        csr, _ = pki.csr_identity(pki.make_csr(key, identity))
        leaf = pki.sign_workload(csr, identity, issuer[0], issuer[1], 3600)
        return pki.cert_pem(leaf) + pki.cert_pem(issuer[0]), pki.key_pem(key)

    alpn = [fe.ALPN_TCP, b"http/1.1"]
    fchain, fkey = creds(FRONTEND_ID)
    bchain, bkey = creds(BACKEND_ID)
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(256)
        s.setblocking(False)
        socks.append(s)
    out_sock, in_sock = socks
    engines = [fe.Engine(), fe.Engine()]
    threads = [threading.Thread(target=e.run, daemon=True) for e in engines]
    for t in threads:
        t.start()
    inbound = fe.RouteTable()
    inbound.set_inbound(in_sock.fileno())
    server_ctx = tls.TLSContext.for_mesh(True, bchain, bkey, bundle, alpn)
    try:        # a build that knows declared protocols: the port is declared HTTP
        inbound.add_inbound_route(SNI, server_ctx, "127.0.0.1", app_port,
                                  service="bench/app:http", identity=BACKEND_ID,
                                  protocol="HTTP")
    except TypeError:
        inbound.add_inbound_route(SNI, server_ctx, "127.0.0.1", app_port,
                                  service="bench/app:http", identity=BACKEND_ID)
    outbound = fe.RouteTable()
    svc = outbound.add_service("bench/app:http", SNI, [BACKEND_ID],
                               [("127.0.0.1", in_sock.getsockname()[1])])
    outbound.set_outbound_http(out_sock.fileno(),
                               tls.TLSContext.for_mesh(False, fchain, fkey, bundle, alpn))
    outbound.add_host("app.bench.svc", svc, 8080)
    if routes:
        versions = [outbound.add_service(f"bench/app-{v}:http", SNI, [BACKEND_ID],
                                         [("127.0.0.1", in_sock.getsockname()[1])])
                    for v in ("v1", "v2")]
        _routes(outbound, svc, versions)
    for engine, table in zip(engines, (outbound, inbound)):
        generation = engine.install(table)
        while engine.generation < generation:
            time.sleep(0.001)
    port_file.write_text(str(out_sock.getsockname()[1]))
    sys.stdin.read()
    for e in engines:
        e.stop()
    for t in threads:
        t.join(30)


# --- the driver ---------------------------------------------------------------------------


def _wait_file(path: Path, proc: subprocess.Popen, what: str) -> str:
    deadline = time.monotonic() + 300        # valgrind starts Python slowly
    while not path.exists() or not path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)
    return path.read_text()


def _client(port: int, requests: int, connections: int) -> None:
    subprocess.run([sys.executable, __file__, "--client", str(port), "--requests",
                    str(requests), "--connections", str(connections)], check=True)


def measure(python: str, app_port: int, requests: int, connections: int,
            workdir: Path, routes: bool = False) -> dict:
    """One build: warm up (every connection pooled and resumed), then count `requests`
    requests: their instructions under callgrind, and in a second run their system calls
    under strace attached for the measured requests only."""
    workdir.mkdir(parents=True, exist_ok=True)
    warmup = connections * 25
    out = workdir / "callgrind.out"
    port_file = workdir / "cg.port"
    engines = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         python, __file__, "--engines", str(port_file), "--app-port", str(app_port),
         *(["--routes"] if routes else [])],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=tempfile.gettempdir())
    try:
        port = int(_wait_file(port_file, engines, "the engines under callgrind"))
        _client(port, warmup, connections)
        subprocess.run(["callgrind_control", "-i", "on", str(engines.pid)], check=True,
                       capture_output=True)
        _client(port, requests, connections)
        subprocess.run(["callgrind_control", "-i", "off", str(engines.pid)], check=True,
                       capture_output=True)
    finally:
        _, err = engines.communicate(timeout=300)
    m = re.search(rb"Collected : (\d+)", err)
    if engines.returncode != 0 or not m:
        raise SystemExit(f"callgrind run failed:\n{err[-3000:].decode(errors='replace')}")
    ir = int(m.group(1))

    port_file = workdir / "st.port"
    summary = workdir / "strace.out"
    engines = subprocess.Popen([python, __file__, "--engines", str(port_file), "--app-port",
                                str(app_port), *(["--routes"] if routes else [])],
                               stdin=subprocess.PIPE, cwd=tempfile.gettempdir())
    try:
        port = int(_wait_file(port_file, engines, "the engines"))
        _client(port, warmup, connections)
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(summary), "-p",
                                   str(engines.pid)], stderr=subprocess.DEVNULL)
        time.sleep(1.0)         # strace attached to every thread
        _client(port, requests, connections)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)
    finally:
        engines.communicate(timeout=60)
    calls: dict[str, float] = {}
    for line in summary.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls[f[-1]] = round(int(f[3]) / requests, 3)
    return {"python": python, "ir_per_request": ir / requests,
            "functions": {k: v / requests for k, v in _functions(out).items()},
            "syscalls": {k: v for k, v in sorted(calls.items()) if v >= 0.01}}


def _functions(out: Path) -> dict[str, int]:
    """Self Ir per function, from callgrind_annotate."""
    res = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)],
                         capture_output=True, text=True, check=True)
    costs: dict[str, int] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
        if m and ":" in m.group(2):
            name = m.group(2).split(":", 1)[1].split(" [")[0]
            name = re.sub(r"\s*\(\d[\d,]*x\)\s*$", "", name).strip()
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000,
                   help="requests counted, after a warm-up (default 2000)")
    p.add_argument("--connections", type=int, default=1,
                   help="keep-alive connections at once, as wrk's -c (default 1)")
    p.add_argument("--routes", action="store_true",
                   help=f"compare this build with and without a {ROUTE_RULES}-rule route set "
                        "(path and header matches, then a 90/10 split) instead of two builds")
    p.add_argument("--compare", metavar="PYTHON",
                   help="also measure with this interpreter (an older build's venv)")
    p.add_argument("--top", type=int, default=25,
                   help="functions whose cost per request differs most (with --compare)")
    p.add_argument("--engines", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--client", type=int, help=argparse.SUPPRESS)
    p.add_argument("--app", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--app-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.app:
        run_app(args.app)
        return 0
    if args.client:
        run_client(args.client, args.requests, args.connections)
        return 0
    if args.engines:
        run_engines(args.app_port, args.engines, args.routes)
        return 0

    with tempfile.TemporaryDirectory(prefix="instr-") as tmp:
        work = Path(tmp)
        port_file = work / "app.port"
        app = subprocess.Popen([sys.executable, __file__, "--app", str(port_file)])
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline:
                    raise SystemExit("the app did not start")
                time.sleep(0.05)
            app_port = int(port_file.read_text())
            n, c = args.requests, args.connections
            if args.routes:
                runs = [measure(sys.executable, app_port, n, c, work / "routes", routes=True),
                        measure(sys.executable, app_port, n, c, work / "plain")]
            else:
                runs = [measure(sys.executable, app_port, n, c, work / "this")]
                if args.compare:
                    runs.append(measure(args.compare, app_port, n, c, work / "other"))
        finally:
            app.kill()
            app.wait()
    for r in runs:
        print(json.dumps({"python": r["python"], "ir_per_request": round(r["ir_per_request"]),
                          "syscalls_per_request": r["syscalls"]}))
    if len(runs) == 2:
        this, other = runs
        what = "with routes / without" if args.routes else "this / other"
        print(f"ratio {what}: {this['ir_per_request'] / other['ir_per_request']:.4f}")
        names = set(this["functions"]) | set(other["functions"])
        diff = sorted(names, key=lambda k: -abs(this["functions"].get(k, 0)
                                              - other["functions"].get(k, 0)))
        print(f"{'first':>10} {'second':>10} {'diff':>9}  function (Ir per request)")
        for k in diff[:args.top]:
            t, o = this["functions"].get(k, 0), other["functions"].get(k, 0)
            print(f"{t:10.0f} {o:10.0f} {t - o:+9.0f}  {k[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
