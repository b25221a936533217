"""Micro benchmark of fastpath.engine: the opaque-TCP relay over mutual TLS on loopback.

Two engines on two threads of this process play two nodes: a client → the frontend
node's outbound port → mTLS → the backend node's inbound port → a plain app. Measures

- ``upload``: MiB/s of one stream client → app (the app only counts);
- ``echo``: MiB/s each way of one stream the app echoes back (both directions busy);
- ``connect``: new connections per second, each one byte echoed, sequentially (with
  the session resumption the engine does after the first);

and prints one JSON object per measurement. Loopback on one host, every party sharing
its CPUs: compare runs with each other, not with numbers from another machine::

    python bench/bench_engine.py --mib 512 --connections 500
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/bench_engine.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastpath import engine as fe  # noqa: E402
from fastpath import tls  # noqa: E402
from meshnode.identity import pki  # noqa: E402

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/frontend"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/backend"
SNI = "backend.bench.svc"
CHUNK = 256 * 1024


def _creds(issuer, identity: str) -> tuple[bytes, bytes]:
    key = pki.new_key()
    csr, _ = pki.csr_identity(pki.make_csr(key, identity))
    leaf = pki.sign_workload(csr, identity, issuer[0], issuer[1], 3600)
    return pki.cert_pem(leaf) + pki.cert_pem(issuer[0]), pki.key_pem(key)


def _listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    s.setblocking(False)
    return s


class App:
    """mode "sink": read to EOF, answer the byte count; mode "echo": echo to EOF."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        total = 0
        with conn:
            try:
                while True:
                    data = conn.recv(CHUNK)
                    if not data:
                        break
                    total += len(data)
                    if self.mode == "echo":
                        conn.sendall(data)
                if self.mode == "sink":
                    conn.sendall(str(total).encode())
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class Pair:
    """Frontend node and backend node, each an Engine on its own thread."""

    def __init__(self, app_port: int, buffer_bytes: int) -> None:
        root = pki.make_root("bench root", TRUST_DOMAIN)
        issuer = pki.make_issuer(*root, "bench", 86400)
        bundle = pki.cert_pem(root[0])
        fchain, fkey = _creds(issuer, FRONTEND_ID)
        bchain, bkey = _creds(issuer, BACKEND_ID)
        self.out_sock, self.in_sock = _listener(), _listener()
        self.engines = [fe.Engine(buffer_bytes=buffer_bytes), fe.Engine(buffer_bytes=buffer_bytes)]
        self.threads = [threading.Thread(target=e.run, daemon=True) for e in self.engines]
        for t in self.threads:
            t.start()
        inbound = fe.RouteTable()
        inbound.set_inbound(self.in_sock.fileno())
        inbound.add_inbound_route(
            SNI, tls.TLSContext.for_mesh(True, bchain, bkey, bundle, [fe.ALPN_TCP]),
            "127.0.0.1", app_port)
        outbound = fe.RouteTable()
        svc = outbound.add_service("backend", SNI, [BACKEND_ID],
                                   [("127.0.0.1", self.in_sock.getsockname()[1])])
        outbound.add_outbound_tcp(
            self.out_sock.fileno(), svc,
            tls.TLSContext.for_mesh(False, fchain, fkey, bundle, [fe.ALPN_TCP]))
        for engine, table in zip(self.engines, (outbound, inbound)):
            generation = engine.install(table)
            while engine.generation < generation:
                time.sleep(0.001)

    def client(self) -> socket.socket:
        return socket.create_connection(self.out_sock.getsockname(), timeout=30)

    def close(self) -> None:
        for e in self.engines:
            e.stop()
        for t in self.threads:
            t.join(10)
        self.out_sock.close()
        self.in_sock.close()


def upload(pair: Pair, mib: int) -> dict:
    block = b"u" * CHUNK
    n = mib * 1024 * 1024 // CHUNK
    with pair.client() as c:
        started = time.perf_counter()
        for _ in range(n):
            c.sendall(block)
        c.shutdown(socket.SHUT_WR)
        answer = c.recv(64)
        elapsed = time.perf_counter() - started
    assert int(answer) == n * CHUNK, answer
    return {"bench": "upload", "mib": mib, "seconds": round(elapsed, 3),
            "mib_per_s": round(mib / elapsed, 1)}


def echo(pair: Pair, mib: int) -> dict:
    block = b"e" * CHUNK
    n = mib * 1024 * 1024 // CHUNK
    received = [0]

    with pair.client() as c:
        def read() -> None:
            while True:
                data = c.recv(1 << 20)
                if not data:
                    return
                received[0] += len(data)

        reader = threading.Thread(target=read)
        started = time.perf_counter()
        reader.start()
        for _ in range(n):
            c.sendall(block)
        c.shutdown(socket.SHUT_WR)
        reader.join()
        elapsed = time.perf_counter() - started
    assert received[0] == n * CHUNK, received[0]
    return {"bench": "echo", "mib_each_way": mib, "seconds": round(elapsed, 3),
            "mib_per_s_each_way": round(mib / elapsed, 1)}


def connect(pair: Pair, count: int) -> dict:
    before = pair.engines[0].stats()
    started = time.perf_counter()
    for _ in range(count):
        with pair.client() as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            c.shutdown(socket.SHUT_WR)
            c.recv(1)
    elapsed = time.perf_counter() - started
    after = pair.engines[0].stats()
    return {"bench": "connect", "connections": count, "seconds": round(elapsed, 3),
            "connections_per_s": round(count / elapsed, 1),
            "resumed": after["outbound_tls_resumed"] - before["outbound_tls_resumed"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per stream (default 256)")
    parser.add_argument("--connections", type=int, default=300,
                        help="sequential connections for the connect bench (default 300)")
    parser.add_argument("--buffer-bytes", type=int, default=16384,
                        help="Engine(buffer_bytes=) (default 16384)")
    args = parser.parse_args(argv)

    print(json.dumps({"openssl": tls.openssl_version(), "buffer_bytes": args.buffer_bytes}))
    for mode, run in (("sink", lambda p: upload(p, args.mib)),
                      ("echo", lambda p: echo(p, args.mib)),
                      ("echo", lambda p: connect(p, args.connections))):
        pair = Pair(App(mode).port, args.buffer_bytes)
        try:
            print(json.dumps(run(pair)), flush=True)
            stats = pair.engines[0].stats()
            assert stats["outbound_aborted"] == 0, stats
        finally:
            pair.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
