"""Review of the config-push carry-over (carry.pxi), the drain (drain.pxi) and the filter
chain (filters.pxi): each test replays one way the new code goes wrong, over real
engines, sockets and mutual TLS (the fixtures of test_engine_http.py), loopback only,
every wait bounded.

A test here fails until the bug it names is fixed; it then stays as a regression test.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, listener, port_of, wait_for
from test_engine_http import (BACKEND_ID, OTHER_ID, OTHER_SNI, SNI, App, Mesh,  # noqa: F401
                              RawApp, _read_head, client_ctx, mesh, mesh_pki, recv_until,
                              server_ctx)

pytestmark = pytest.mark.timeout(60)


# --- helpers ----------------------------------------------------------------------------------


def read_for(s: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What `s` delivers within `seconds` (a reset counts as the end); and whether it ended."""
    out = bytearray()
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), False
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return bytes(out), False
        except ConnectionResetError:
            return bytes(out), True
        if not chunk:
            return bytes(out), True
        out += chunk


def inbound_table(m: Mesh, app_port: int, identity: str | None = BACKEND_ID,
                  with_sni: bool = True) -> fe.RouteTable:
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno())
    if with_sni:
        t.add_inbound_route(SNI, server_ctx(m.pki), "127.0.0.1", app_port,
                            service="demo/backend:http", identity=identity)
    t.add_inbound_route(OTHER_SNI, server_ctx(m.pki), "127.0.0.1", m.app.port)
    return t


def changed_destination(m: Mesh, **timeouts: float) -> fe.RouteTable:
    """The outbound table with demo/backend's allowed IDs changed: no open upstream of it
    may be kept (its identity was checked against the old set), so pairs switch."""
    t = m.outbound_table(identities=[BACKEND_ID, OTHER_ID])
    if timeouts:
        t.set_timeouts(**timeouts)
    return t


class HeldApp:
    """A raw app whose first connection reads one request head, says so (`got`), and
    answers only once `go` is set, with `first`; later requests on any connection get
    `later` (a whole keep-alive answer each)."""

    def __init__(self, first: bytes,
                 later: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlater!",
                 then_close: bool = True) -> None:
        self.got = threading.Event()
        self.go = threading.Event()
        self.first = first
        self.later = later
        self.then_close = then_close
        self._lock = threading.Lock()
        self._n = 0
        self.raw = RawApp(self._serve)
        self.port = self.raw.port

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._n += 1
            first_conn = self._n == 1
        if first_conn:
            _read_head(conn)
            self.got.set()
            self.go.wait(TIMEOUT_S)
            conn.sendall(self.first)
            if self.then_close:
                return
        while True:
            head = _read_head(conn)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = head.partition(b"\r\n\r\n")[2]
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            conn.sendall(self.later)

    def close(self) -> None:
        self.go.set()
        self.raw.close()


def sniffing_table(m: Mesh, fd: int, sni: str, name: str,
                   endpoints: list[tuple[str, int]] | None = None) -> fe.RouteTable:
    t = m.outbound_table()
    index = t.add_service(name, sni, [BACKEND_ID],
                          endpoints if endpoints is not None else [("127.0.0.1", m.in_port)])
    t.add_outbound_tcp(fd, index, client_ctx(m.pki), protocol="auto")
    return t


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = port_of(s)
    s.close()
    return port


# --- 1. a close-delimited answer, then a move: the next answer spliced into its body ---------


@pytest.mark.parametrize("side", ["inbound", "outbound"])
def test_a_move_after_a_close_delimited_answer_does_not_splice_the_next_answer(
        mesh: Mesh, side: str) -> None:
    """inbound: carry.pxi _inbound_move kept resp_phase (RESP_CLOSE) and dropped the
    app's end: the answer to the next request, from the app's new address, went on as
    more body of the close-delimited answer before it, and the caller's node (RESP_CLOSE
    too) passed it all to the client: two answers read as one. outbound: the same on
    the client's node (issue 10 item 5, reached by a config push with pipelined
    requests to ONE service): _rebind fails, `switching`, the upstream ends its
    close-delimited answer, _http_switch routed /two and its answer followed."""
    app_a = HeldApp(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst-body")
    node = mesh.in_node if side == "inbound" else mesh.out_node
    try:
        mesh.in_node.install(inbound_table(mesh, app_a.port))
        c = mesh.client()
        one = b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
        two = b"GET /two HTTP/1.1\r\nHost: backend\r\n\r\n"
        c.sendall(one)
        assert app_a.got.wait(TIMEOUT_S)
        # While /one is in flight, the app moves (same SNI, another address), or the
        # client's node gets a table where the destination changed.
        node.install(inbound_table(mesh, mesh.app.port) if side == "inbound"
                     else changed_destination(mesh))
        c.sendall(two)          # pipelined on the same upstream
        wait_for(lambda: node.stats()[f"{side}_bytes_received"] >= len(one) + len(two),
                 what="/two read by the node that took the push")
        app_a.go.set()
        data, ended = read_for(c, 3.0)
        assert data.startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst-body")
        assert data.count(b"HTTP/1.1 ") == 1, data     # no second answer inside the body
        assert ended            # the close-delimited answer ends with the connection
    finally:
        app_a.close()


# --- 2. a switch with no request waiting ------------------------------------------------------


def test_an_idle_keep_alive_client_is_not_sent_408_after_a_push(mesh: Mesh) -> None:
    """Regression test for 209ae39: _reach_open_pairs -> _http_move
    -> _http_switch parks an idle keep-alive pair in HTTP_HEAD; with the head deadline
    (connect_timeout) the scan answered 408 to a client that asked nothing."""
    t = mesh.outbound_table()
    t.set_timeouts(0.5, 300.0)
    mesh.out_node.install(t)
    c = mesh.client()
    c.sendall(b"GET /a HTTP/1.1\r\nHost: backend\r\n\r\n")
    recv_until(c, b"GET /a host=backend\n")
    mesh.out_node.install(changed_destination(mesh, connect_timeout_s=0.5, idle_timeout_s=300.0))
    unsolicited, _ = read_for(c, 1.5)       # three head timeouts, six scans
    assert unsolicited == b""
    stats = mesh.out_node.stats()
    assert stats["http_head_timeouts"] == 0
    c.sendall(b"GET /b HTTP/1.1\r\nHost: backend\r\n\r\n")
    assert recv_until(c, b"GET /b host=backend\n").startswith(b"HTTP/1.1 200")


def test_a_client_that_said_close_gets_its_end_after_a_push(mesh: Mesh) -> None:
    """A pair whose client said `Connection: close` and got its answer waits for the
    upstream's end (the answer said close too: not reusable). _between_requests takes
    it for a keep-alive pair between requests; the push switches it to HTTP_HEAD
    (d2u.eof stays set, the upstream and its coming end dropped) and it sits there
    until idle_timeout: the close its answer promised never comes."""
    def serve(conn: socket.socket) -> None:
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        time.sleep(2.0)         # a slow close (lingering app, busy node)

    app = RawApp(serve)
    try:
        mesh.in_node.install(inbound_table(mesh, app.port))
        c = mesh.client()
        c.sendall(b"GET /x HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        recv_until(c, b"\r\n\r\nok")
        time.sleep(0.1)
        mesh.out_node.install(changed_destination(mesh))
        rest, ended = read_for(c, 4.0)
        assert rest == b"" and ended, (rest, mesh.out_node.stats()["outbound_connections_active"])
    finally:
        app.close()


# --- 3. a listener's fd number reused: open pairs adopt the new listener ------------------------


def test_a_reused_listener_fd_does_not_take_over_open_pairs(mesh: Mesh) -> None:
    """Regression test for 30d3081. carry.pxi found a pair's listener in the new table
    by fd number (Conn.lfd). The agent closes a listener once the engine runs a table
    without it (dataplane.reap) and binds the next one new, which gets the lowest free
    fd: the same number. A sniffed HTTP client of service A's port then had its next
    request routed to service B (and sent as B's listener's identity)."""
    def serve_b(conn: socket.socket) -> None:
        while True:
            _read_head(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nservice-b")

    b_app = RawApp(serve_b)
    try:
        t = fe.RouteTable()
        t.set_inbound(mesh.in_sock.fileno())
        t.add_inbound_route(SNI, server_ctx(mesh.pki), "127.0.0.1", mesh.app.port)
        t.add_inbound_route(OTHER_SNI, server_ctx(mesh.pki), "127.0.0.1", b_app.port)
        mesh.in_node.install(t)

        l1 = listener()
        fd = l1.fileno()
        mesh.out_node.install(sniffing_table(mesh, fd, SNI, "demo/backend:own"))
        c = socket.create_connection(("127.0.0.1", port_of(l1)), timeout=TIMEOUT_S)
        mesh.clients.append(c)
        c.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert recv_until(c, b"GET /a host=a\n").startswith(b"HTTP/1.1 200")

        # Port A leaves the config; once the engine runs that table, its socket closes.
        mesh.out_node.install(mesh.outbound_table())
        l1.close()
        # Port B arrives: its new socket has the lowest free fd, A's old number.
        l2 = listener()
        mesh.clients.append(l2)
        if l2.fileno() != fd:
            os.dup2(l2.fileno(), fd)
            mesh.clients.append(socket.socket(fileno=fd))
        mesh.out_node.install(sniffing_table(mesh, fd, OTHER_SNI, "demo/other:own"))

        c.sendall(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _ = read_for(c, 2.0)
        assert b"service-b" not in data, data       # service A's client, served by B
    finally:
        b_app.close()


# --- 4. an inbound move connects without a setup deadline ------------------------------------


def test_a_moved_inbound_pairs_app_connect_gets_the_connect_timeout(mesh: Mesh) -> None:
    """_inbound_move connects to the app's new address without a new setup deadline:
    the pair's deadline_ns is still its accept's (long past on a keep-alive pair), so
    the next scan (within 250 ms) takes a connect still in progress for a timeout,
    answers 503 and closes the pair, instead of giving it connect_timeout (here: an
    app whose accept queue is full, so the SYN waits for a retransmission)."""
    def timed(port: int) -> fe.RouteTable:
        t = inbound_table(mesh, port)
        t.set_timeouts(1.0, 300.0)
        return t

    mesh.in_node.install(timed(mesh.app.port))
    c = mesh.client()
    c.sendall(b"GET /a HTTP/1.1\r\nHost: backend\r\n\r\n")
    recv_until(c, b"GET /a host=backend\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(0)
    fillers = []
    try:
        for _ in range(3):          # fill its accept queue: further SYNs are dropped
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port_of(busy)))
            fillers.append(f)
        time.sleep(1.3)             # the keep-alive pair is older than connect_timeout
        mesh.in_node.install(timed(port_of(busy)))
        time.sleep(0.6)             # two scans; the new connect has 1 s
        assert mesh.in_node.stats()["inbound_connect_timeouts"] == 0
    finally:
        for f in fillers:
            f.close()
        busy.close()


# --- 5. an inbound move that grows the identity header wedges a pipelined request -----------


def test_a_move_to_a_route_with_a_longer_identity_does_not_wedge_a_pipelined_post(
        mesh: Mesh) -> None:
    """_inbound_take_route raises head_reserve after d2u was filled to the old cap:
    the x-forwarded-client-cert step stops (no room) with f.head == 0 and fwd == 0,
    and nothing will ever make room. The POST waits until the idle timeout."""
    app = HeldApp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
                  later=b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npost", then_close=False)
    try:
        mesh.in_node.install(inbound_table(mesh, app.port))
        c = mesh.client()
        c.sendall(b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n")
        assert app.got.wait(TIMEOUT_S)
        longer = "spiffe://cluster.local/ns/demo/sa/backend-" + "x" * 200
        mesh.in_node.install(inbound_table(mesh, app.port, identity=longer))
        body = b"p" * 200000
        c.sendall(b"POST /two HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        time.sleep(0.2)
        app.go.set()
        data, _ = read_for(c, 4.0)
        assert data.count(b"HTTP/1.1 200") == 2, data[-200:]
        assert data.endswith(b"post")
    finally:
        app.close()


# --- 6. an opaque pair set up after a push on the old table ---------------------------------


def test_an_opaque_pair_set_up_after_a_push_does_not_reach_a_departed_endpoint(
        mesh: Mesh) -> None:
    """_reach_open_pairs only looks at pairs in PIPE. A pair still setting up at the
    swap (here: a sniffing listener's silent client) goes opaque afterwards on its old
    table: it connects to an endpoint that had left, and no drain period ever closes
    it (close_at_ns is set only at a swap)."""
    def echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)

    echo_app = RawApp(echo)
    try:
        mesh.in_node.install(inbound_table(mesh, echo_app.port))
        lsock = listener()
        mesh.clients.append(lsock)
        mesh.out_node.install(sniffing_table(mesh, lsock.fileno(), SNI, "demo/backend:own"))
        moved = sniffing_table(mesh, lsock.fileno(), SNI, "demo/backend:own",
                               endpoints=[("127.0.0.1", dead_port())])
        moved.set_timeouts(5.0, 300.0, drain_s=0.3)
        c = socket.create_connection(("127.0.0.1", port_of(lsock)), timeout=TIMEOUT_S)
        mesh.clients.append(c)
        wait_for(lambda: mesh.out_node.stats()["outbound_connections_opened"] == 1,
                 what="accepted")
        mesh.out_node.install(moved)            # within the 200 ms sniffing window
        wait_for(lambda: mesh.out_node.stats()["sniffed_tcp"] == 1, what="taken for TCP")
        time.sleep(1.0)                         # the drain period, and then some
        try:
            c.sendall(b"ping")
        except OSError:
            return
        data, _ = read_for(c, 1.0)
        assert data != b"ping", "bytes relayed to an endpoint that left the table"
    finally:
        echo_app.close()


def test_an_upgraded_tunnel_to_a_departed_endpoint_is_closed_after_the_drain_period(
        mesh: Mesh) -> None:
    """After a 101 the pair is an opaque byte pipe, but it keeps CONN_HTTP: at a swap
    _reach_open_pairs only moves HTTP pairs between requests and runs _opaque_check on
    non-HTTP ones, so a tunnel to an endpoint that left is never closed (it lives as
    long as it carries bytes)."""
    c = mesh.client()
    c.sendall(b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n\r\n")
    assert recv_until(c, b"\r\n\r\n").startswith(b"HTTP/1.1 101 ")
    gone = mesh.outbound_table(endpoints=[("127.0.0.1", dead_port())])
    gone.set_timeouts(5.0, 300.0, drain_s=0.3)
    mesh.out_node.install(gone)
    time.sleep(1.0)                             # the drain period, and then some
    try:
        c.sendall(b"abc")
    except OSError:
        return
    data, _ = read_for(c, 1.0)
    assert data != b"ABC", "a tunnel to an endpoint that left outlived the drain period"


# --- 7. the drain misses pairs that become HTTP after it began --------------------------------


def test_a_drain_tells_a_client_that_became_http_after_it_began_to_go(mesh: Mesh) -> None:
    """_drain_begin marks CONN_GOING_AWAY only on pairs already CONN_HTTP. A sniffing
    listener's client (or an inbound pair still in its handshake) becomes HTTP later:
    its answers never say close, it is never closed when quiet, and the drain lasts
    until the deadline, which then cuts whatever is in flight."""
    lsock = listener()
    mesh.clients.append(lsock)
    mesh.out_node.install(sniffing_table(mesh, lsock.fileno(), SNI, "demo/backend:own"))
    c = socket.create_connection(("127.0.0.1", port_of(lsock)), timeout=TIMEOUT_S)
    mesh.clients.append(c)
    wait_for(lambda: mesh.out_node.stats()["outbound_connections_opened"] == 1, what="accepted")
    start = time.monotonic()
    mesh.out_node.engine.drain(4.0)
    wait_for(lambda: mesh.out_node.engine.draining, what="listeners out")
    c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = recv_until(c, b"GET /x host=a\n")
    assert b"connection: close" in answer.lower(), answer
    mesh.out_node.thread.join(4.0)
    assert time.monotonic() - start < 3.0, "the drain ran to its deadline"


# --- 8. a swap while draining unwatches fds the caller closed and the engine reused ---------


def test_a_table_installed_while_draining_leaves_the_pairs_sockets_watched(mesh: Mesh) -> None:
    """Engine.drain's contract lets the caller close its listeners once `draining`. The
    engine then reuses their fd numbers for its own sockets (upstreams). A table
    installed during the drain runs _swap -> _listeners_unwatch(old): EPOLL_CTL_DEL by
    the old listeners' fd numbers removes the pair's upstream from the epoll set; its
    answer never arrives and the deadline cuts it."""
    c = mesh.client()
    c.sendall(b"GET /a HTTP/1.1\r\nHost: backend\r\n\r\n")
    recv_until(c, b"GET /a host=backend\n")
    mesh.out_node.engine.drain(6.0)
    wait_for(lambda: mesh.out_node.engine.draining, what="listeners out")
    fd = mesh.http_sock.fileno()
    mesh.http_sock.close()
    # Make the closed listener's number the lowest free one, as in a worker.
    held = []
    while True:
        probe = os.open("/dev/null", os.O_RDONLY)
        if probe >= fd:
            os.close(probe)
            break
        held.append(probe)
    try:
        c.sendall(b"GET /sleep HTTP/1.1\r\nHost: other\r\n\r\n")   # a new upstream
        wait_for(lambda: mesh.out_node.stats()["http_routed"] == 2, what="routed")
        assert os.path.exists(f"/proc/self/fd/{fd}")
        mesh.out_node.engine.install(mesh.outbound_table())
        wait_for(lambda: mesh.out_node.stats()["tables_installed"] == 2, what="swap")
        c.settimeout(3.0)
        assert recv_until(c, b"slept\n").startswith(b"HTTP/1.1 200")
    finally:
        for probe in held:
            os.close(probe)


# --- 9. an inbound route deleted with a request already received -------------------------------


def test_a_request_on_a_connection_whose_route_left_is_not_dropped(mesh: Mesh) -> None:
    """_http_frame's rebind fails for a route that left, sets `switching`, and
    _inbound_move ends the pair with the caller's request unread by any app: the
    caller's node answers 502 or resets its client (not a retryable pooled first)."""
    app = HeldApp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", then_close=False)
    try:
        mesh.in_node.install(inbound_table(mesh, app.port))
        c = mesh.client()
        one = b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
        two = b"GET /two HTTP/1.1\r\nHost: backend\r\n\r\n"
        c.sendall(one)
        assert app.got.wait(TIMEOUT_S)
        mesh.in_node.install(inbound_table(mesh, app.port, with_sni=False))
        c.sendall(two)
        wait_for(lambda: mesh.in_node.stats()["inbound_bytes_received"] >= len(one) + len(two),
                 what="/two read by the app's node")
        app.go.set()
        data, _ = read_for(c, 3.0)
        assert b"first" in data
        # /two came on a connection the route was serving: answered there (with close),
        # as Envoy drains a removed filter chain, not 502 or cut.
        assert data.count(b"HTTP/1.1 200 OK") == 2, data
    finally:
        app.close()
