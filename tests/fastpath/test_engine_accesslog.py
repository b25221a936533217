"""Tests for fastpath.engine's access records (accesslog.pxi): one record per HTTP answer
on each side and one per opaque pair at its close, their fields (Envoy's JSON names), the
policy that decided a 403 or a refused pair, sampling and the errors-only filter, a path
longer than a record keeps, and a ring nobody reads: dropped and counted, never waited for.

The mesh is test_engine_routes.py's (a caller's node and an app's node, real engines and
sockets); each side reads its own engine's ring.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, port_of, recv_all, wait_for
from test_engine import Node
from test_engine_authz import TcpPair, V1, policy, rule, values
from test_engine_routes import (BACKEND_ID, FRONTEND_ID, Mesh, client_ctx, listener,  # noqa: F401
                                mesh_pki, request, running_mesh, server_ctx)

pytestmark = pytest.mark.timeout(60)

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def mesh(mesh_pki: Any) -> Any:
    with running_mesh(mesh_pki) as m:
        yield m


def logged(m: Mesh, *policies: dict[str, Any], sample: float = 100.0, min_status: int = 0,
           route: bool = True, route_name: str = "demo/r") -> None:
    """Both nodes keep access records as told; the app's node judges v1 by `policies`;
    the caller's routes every request of "backend" by HTTPRoute `route_name` to v1."""
    t = m.inbound_table()
    if policies:
        t.set_inbound_authz(V1, {"policies": list(policies)})
    t.set_access_log(True, sample, min_status)
    m.in_node.install(t)
    out, ix = m.outbound()
    if route:
        s = out.add_route_set(ix["backend"])
        out.add_route_match(s, out.add_route_rule(route_name + "#0", [(ix["v1"], 1)]),
                            path=("PathPrefix", "/"))
    out.set_access_log(True, sample, min_status)
    m.out_node.install(out)


def records(node: Node, n: int) -> list[dict[str, Any]]:
    """The node's next `n` records (waited for), and no more."""
    got: list[dict[str, Any]] = []
    wait_for(lambda: got.extend(node.engine.access_records()) or len(got) >= n,
             what=f"{n} access records")
    assert len(got) == n, got
    return got


def test_a_request_is_recorded_by_each_side_with_envoys_fields(mesh: Mesh) -> None:
    logged(mesh)
    status, _, _ = request(mesh.http(), "/a/b?x=1", method="POST", body=b"0123456789",
                           headers={"x-request-id": "rid-1", "traceparent": TRACE})
    assert status == 200
    [out] = records(mesh.out_node, 1)
    [inb] = records(mesh.in_node, 1)
    for r, traceparent in ((out, TRACE), (inb, f"{TRACE[:36]}{out['span_id']}-01")):
        # Each side's as it came: the app's node's, the caller's node's span its parent.
        assert (r["method"], r["path"], r["protocol"], r["response_code"], r["response_flags"],
                r["authority"], r["request_id"], r["traceparent"]) == (
            "POST", "/a/b?x=1", "HTTP/1.1", 200, "-", "backend", "rid-1", traceparent)
        assert r["bytes_received"] > 10 and r["bytes_sent"] > 0   # (head and body)
        assert 0 <= r["duration"] < TIMEOUT_S * 1000
        assert r["start_time"].endswith("Z") and "truncated" not in r
    assert out["reporter"] == "source" and inb["reporter"] == "destination"
    assert out["route_name"] == "demo/r" and out["upstream_cluster"] == "outbound|||demo/backend-v1:http"
    assert out["upstream_host"] == f"127.0.0.1:{port_of(mesh.in_sock)}"
    assert out["upstream_peer_uri_san"] == BACKEND_ID
    assert out["upstream_local_uri_san"] == FRONTEND_ID
    assert inb["downstream_peer_uri_san"] == FRONTEND_ID
    assert inb["downstream_local_uri_san"] == BACKEND_ID
    assert inb["upstream_host"] == f"127.0.0.1:{mesh.apps['v1'].port}"
    assert inb["connection_security_policy"] == "mutual_tls"
    assert inb["authorization_result"] is None          # no policy on the route


def test_a_callers_texts_are_escaped_into_valid_json_lines(mesh: Mesh) -> None:
    """Field values are a caller's bytes: quotes, backslashes, a tab and obs-text reach
    the line escaped (a line stays one JSON value, valid UTF-8, on one line); valid
    UTF-8 passes as it is, a byte that is not becomes U+FFFD."""
    logged(mesh)
    rid = b'a"b\\c\td\xc3\xa9\x80\xff}{"x":1\\'
    raw = (b"GET /q HTTP/1.1\r\nHost: backend\r\nx-request-id: " + rid
           + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(raw)
        assert recv_all(c).startswith(b"HTTP/1.1 200")
    lines: list[bytes] = []
    wait_for(lambda: lines.extend(mesh.out_node.engine.access_lines()[0].splitlines()) or lines,
             what="a line")
    [line] = lines
    line.decode("utf-8")                                  # strict: valid UTF-8
    record = json.loads(line)
    assert record["request_id"] == 'a"b\\c\td\u00e9\ufffd\ufffd}{"x":1\\'
    assert "x" not in record and record["path"] == "/q"


def test_every_text_at_its_cap_in_its_worst_escape_stays_one_line_within_the_bound(
        mesh: Mesh) -> None:
    """The reader sizes its buffer by _aj_bound (1536 bytes besides the texts, each text
    byte at most 6): a line past it would overrun the buffer. Each text here is at its
    cap (method 16, path 256, x-request-id and traceparent 64) in the longest escape its
    bytes may take (a quote: 2, HTAB: 6, a byte that is not UTF-8: 3), and
    the route's name is control bytes (6 each)."""
    route = "".join(chr(b) for b in range(1, 32) if b != 9) * 6      # (no HTAB: a field)
    logged(mesh, route_name=route)
    method = b"M!#$%&'*+-.^_`|~"
    path = b"/" + b'"' * 300                       # (a backslash is normalized to "/")
    rid = b"a" + b"\t\xff" * 40
    trace = b"b" + b"\t" * 80 + b"b"
    raw = (method + b" " + path + b" HTTP/1.1\r\nHost: backend\r\nx-request-id: " + rid
           + b"\r\ntraceparent: " + trace + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(raw)
        assert recv_all(c).startswith(b"HTTP/1.1 ")
    lines: list[bytes] = []
    wait_for(lambda: lines.extend(mesh.out_node.engine.access_lines()[0].splitlines(True))
             or lines, what="a line")
    [line] = lines
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    r = json.loads(line.decode("utf-8"))                # strict: valid UTF-8
    assert (r["method"], r["path"], r["route_name"]) == (
        method.decode(), path[:256].decode(), route)
    assert r["request_id"] == rid[:64].decode("utf-8", "replace")
    assert r["traceparent"] == trace[:64].decode()
    assert r["truncated"] == ["path", "request_id", "traceparent"]
    texts = (len(method) + 256 + len("backend") + 64 + 64 + len(route)
             + len("demo/backend-v1:http") + len(BACKEND_ID) + len(FRONTEND_ID))
    assert len(line) <= 1536 + 6 * texts


def test_a_requests_bytes_are_its_sizes_each_way(mesh: Mesh) -> None:
    """As istio_request_bytes and istio_response_bytes count them: its head and body as
    the client sent them, its answer as the client got it."""
    logged(mesh)
    raw = b"POST /sized HTTP/1.1\r\nHost: backend\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(raw)
        answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 200")
    [r] = records(mesh.out_node, 1)
    assert (r["bytes_received"], r["bytes_sent"]) == (len(raw), len(answer))


def test_a_403_names_the_policy_that_decided(mesh: Mesh) -> None:
    logged(mesh, policy("demo/no-admin", "DENY", rule(operation={"paths": values(["prefix", "/admin"])})),
           policy("demo/audit-all", "AUDIT", rule()))
    assert request(mesh.http(), "/admin/x")[0] == 403
    assert request(mesh.http(), "/ok")[0] == 200
    denied, allowed = records(mesh.in_node, 2)
    assert (denied["response_code"], denied["authorization_policy"],
            denied["authorization_result"], denied.get("authorization_audited")) == (
        403, "demo/no-admin", "deny", True)
    assert denied["upstream_host"] is None              # the app never saw it
    assert (allowed["response_code"], allowed["authorization_result"],
            allowed["authorization_policy"]) == (200, "allow", None)
    assert [r["response_code"] for r in records(mesh.out_node, 2)] == [403, 200]


def test_an_opaque_pair_is_one_record_at_its_close_and_a_refused_one_names_its_policy(
        mesh: Mesh) -> None:
    tcp = TcpPair(mesh)
    try:
        frontend_only = policy("demo/tcp", "ALLOW", rule({"principals": values(
            ["exact", "cluster.local/ns/demo/sa/frontend"])}))
        tcp.install(frontend_only)
        t = mesh.inbound_table()            # TcpPair.judge's table, recording
        t.add_inbound_route(tcp.SNI, server_ctx(mesh.pki), "127.0.0.1", tcp.app.port,
                            service="demo/echo:tcp", identity=BACKEND_ID, protocol="tcp")
        t.set_inbound_authz(tcp.SNI, {"policies": [frontend_only]})
        t.set_access_log(True)
        mesh.in_node.install(t)
        assert tcp.exchange(tcp.front).startswith(b"hello")
        assert tcp.exchange(tcp.cart) == b""
        allowed, refused = records(mesh.in_node, 2)
        assert (allowed["protocol"], allowed["method"], allowed["response_code"]) == (None, None, 0)
        assert allowed["bytes_received"] == 5 and allowed["bytes_sent"] >= 5
        assert (allowed["authorization_policy"], allowed["authorization_result"]) == (
            "demo/tcp", "allow")
        assert allowed["upstream_host"] == f"127.0.0.1:{tcp.app.port}"
        assert allowed["upstream_cluster"] == "inbound|||demo/echo:tcp"
        assert allowed["downstream_peer_uri_san"] == FRONTEND_ID
        assert (refused["authorization_policy"], refused["authorization_result"]) == (None, "deny")
        assert refused["bytes_received"] == 0 and refused["upstream_host"] is None
    finally:
        tcp.close()


def test_sampling_none_and_all_and_errors_only(mesh: Mesh) -> None:
    logged(mesh, sample=0.0)
    for _ in range(20):
        assert request(mesh.http(), "/")[0] == 200
    assert mesh.out_node.engine.access_records() == []
    logged(mesh, sample=100.0)
    conn = mesh.http()
    for _ in range(20):
        assert request(conn, "/")[0] == 200
    assert len(records(mesh.out_node, 20)) == 20
    logged(mesh, min_status=400, route=False)
    assert request(mesh.http(), "/", headers={"Host": "nowhere"})[0] == 404
    assert request(mesh.http(), "/")[0] == 200
    [r] = records(mesh.out_node, 1)
    assert (r["response_code"], r["response_flags"], r["authority"]) == (404, "NR", "nowhere")


def test_a_huge_path_is_cut_and_flagged(mesh: Mesh) -> None:
    logged(mesh)
    path = "/" + "p" * 6000
    assert request(mesh.http(), path, headers={"x-request-id": "i" * 100})[0] == 200
    [r] = records(mesh.out_node, 1)
    assert r["path"] == path[:256] and r["request_id"] == "i" * 64
    assert r["truncated"] == ["path", "request_id"]


def test_a_full_ring_drops_and_counts_and_never_blocks(mesh_pki: Any) -> None:
    """A ring of 4 nobody reads: every request is answered, four are kept, the rest
    counted; once read, records are kept again."""
    node = Node(access_records=4)
    lsock = listener()
    try:
        t = fe.RouteTable()
        t.set_outbound_http(lsock.fileno(), client_ctx(mesh_pki), FRONTEND_ID)
        t.set_access_log(True)
        node.install(t)

        def ask(path: str) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port_of(lsock), timeout=TIMEOUT_S)
            conn.request("GET", path, headers={"Host": "nowhere"})
            assert conn.getresponse().status == 404
            conn.close()

        for i in range(10):
            ask(f"/{i}")
        wait_for(lambda: node.engine.access_dropped()["ring_full"] == 6, what="6 dropped")
        assert [r["path"] for r in node.engine.access_records()] == ["/0", "/1", "/2", "/3"]
        ask("/again")
        assert [r["path"] for r in records(node, 1)] == ["/again"]
    finally:
        node.stop()
        lsock.close()
