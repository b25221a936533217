"""meshnode.localprobe: the GET that `meshnode up` and the demo poll a starting node with.

The case it exists for — a poll connecting to itself on a port nobody listens on — is
made for real in a network namespace of the test's own whose ephemeral port range is
the single polled port, so the kernel has no other source port to pick.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from meshnode import localprobe


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = 200 if self.path == "/ready" else 503
        body = b'{"ready": %s}' % (b"true" if status == 200 else b"false")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_get_returns_status_and_body_of_any_answer(http_port: int) -> None:
    assert localprobe.get(f"http://127.0.0.1:{http_port}/ready") == (200, b'{"ready": true}')
    # A not-ready answer is an answer, not an error: the poller reads its body.
    assert localprobe.get(f"http://127.0.0.1:{http_port}/x?y=1") == (503, b'{"ready": false}')


def test_nothing_listening_is_not_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connects are refused
        with pytest.raises(localprobe.NotListening):
            localprobe.get(f"http://127.0.0.1:{port}/ready")


def _echo_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(4096))


def test_an_answer_that_is_not_http_is_a_bad_answer_not_a_crash() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_echo_once, args=(server,), daemon=True)
        thread.start()
        with pytest.raises(localprobe.BadAnswer, match="did not answer with HTTP"):
            localprobe.get(f"http://127.0.0.1:{server.getsockname()[1]}/ready", 5.0)
        thread.join(5)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError):
        localprobe.get("https://127.0.0.1:1/ready")


def test_is_self_connected_tells_a_socket_joined_to_itself() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.connect(sock.getsockname())  # TCP simultaneous open with itself
        assert localprobe.is_self_connected(sock)
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        assert not localprobe.is_self_connected(client)
    with socket.socket() as unconnected:
        assert not localprobe.is_self_connected(unconnected)


_IN_NAMESPACE = textwrap.dedent("""
    import fcntl, socket, struct
    from meshnode import localprobe
    PORT = 40000
    with socket.socket() as s:  # bring lo up (SIOCGIFFLAGS / SIOCSIFFLAGS, IFF_UP)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 1))
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(f"{PORT} {PORT}")
    try:
        print("answer", localprobe.get(f"http://127.0.0.1:{PORT}/ready"))
    except localprobe.NotListening as exc:
        print("not listening:", exc)
    with socket.socket() as node:  # the port is left free (no TIME_WAIT) for the node
        node.bind(("127.0.0.1", PORT))
        node.listen()
        print("node bound", PORT)
""")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) (util-linux)")
def test_a_poll_that_connects_to_itself_reports_not_listening() -> None:
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", _IN_NAMESPACE],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    # Plain urllib reads its own request back here ("BadStatusLine: GET /ready HTTP/1.1").
    expected = "not listening: nothing listens on 127.0.0.1:40000 (the probe connected to itself)"
    assert expected in proc.stdout, proc.stdout
    assert "node bound 40000" in proc.stdout
