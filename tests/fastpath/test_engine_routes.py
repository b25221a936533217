"""Tests for fastpath.engine's HTTPRoute stage (routes.pxi): a service port's route sets,
their matches in precedence order, weighted backends, the engine's 404 and 500, header
edits both ways, and consumer routes by the caller's namespace.

Two "nodes" in this process, each an Engine on its own thread: the caller's node (the
HTTP outbound listener; service "backend" has routes to services "backend-v1" and
"backend-v2") and the app's node (the inbound listener, one route per version, each to
its own HTTP/1.1 app that reports what it received). Real sockets, real OpenSSL,
certificates from meshnode.identity.pki; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls
from meshnode.identity import pki

from enginekit import Creds, issue, listener, port_of, recv_all
from test_engine import Node

TRUST_DOMAIN = "cluster.local"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
OTHER_NS_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/cart"
BACKEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
ALPN = [fe.ALPN_TCP, b"http/1.1"]
TIMEOUT_S = 10.0
VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class PKI:
    bundle_pem: bytes
    frontend: Creds
    other_ns: Creds
    backend: Creds


def new_pki() -> PKI:
    root = pki.make_root("engine routes test root", TRUST_DOMAIN)
    issuer = pki.make_issuer(*root, "node-a", 86400)
    return PKI(pki.cert_pem(root[0]), issue(issuer, FRONTEND_ID), issue(issuer, OTHER_NS_ID),
               issue(issuer, BACKEND_ID))


@pytest.fixture(scope="module")
def mesh_pki() -> PKI:
    return new_pki()


def client_ctx(p: PKI, creds: Creds | None = None) -> tls.TLSContext:
    c = creds or p.frontend
    return tls.TLSContext.for_mesh(False, c.chain_pem, c.key_pem, p.bundle_pem, ALPN)


def server_ctx(p: PKI) -> tls.TLSContext:
    return tls.TLSContext.for_mesh(True, p.backend.chain_pem, p.backend.key_pem,
                                   p.bundle_pem, ALPN)


class _Echo(BaseHTTPRequestHandler):
    """Answers JSON naming the version that answered and what it received."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        if self.path.startswith("/slow/"):         # /slow/MS: answers MS ms late
            time.sleep(int(self.path.split("/")[2]) / 1000)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = json.dumps({"version": self.server.version, "method": self.command,
                          "path": self.path, "body_bytes": len(body),
                          "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-App-Note", "from-app")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer


class App:
    def __init__(self, version: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.server.daemon_threads = True
        self.server.version = version
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mesh:
    pki: PKI
    out_node: Node
    in_node: Node
    apps: dict[str, App]
    http_sock: socket.socket
    in_sock: socket.socket
    clients: list[Any] = field(default_factory=list)

    def inbound_table(self) -> fe.RouteTable:
        t = fe.RouteTable()
        t.set_inbound(self.in_sock.fileno())
        for v in VERSIONS:
            t.add_inbound_route(f"http.backend-{v}.demo.svc", server_ctx(self.pki), "127.0.0.1",
                                self.apps[v].port, service=f"demo/backend-{v}:http",
                                identity=BACKEND_ID, protocol="HTTP", version=v)
        return t

    def outbound(self, callers: bool = False, ctx: tls.TLSContext | None = None,
                 ) -> tuple[fe.RouteTable, dict[str, int]]:
        """A table with service "backend" (hosts backend, backend.demo[.svc], port 80)
        and its versions as services of their own (their endpoint labelled with the
        version); routes are the test's to add.
        `callers`: tell callers apart by address (127.0.0.2: demo, 127.0.0.3: shop).
        `ctx`: the frontend's client context (a node keeps one across pushes, and a
        pair then moves to the next table in place); a new one when None."""
        t = fe.RouteTable()
        ep = [("127.0.0.1", port_of(self.in_sock))]
        index = {"backend": t.add_service("demo/backend:http", "http.backend-v1.demo.svc",
                                          [BACKEND_ID], ep)}
        for v in VERSIONS:
            index[v] = t.add_service(f"demo/backend-{v}:http", f"http.backend-{v}.demo.svc",
                                     [BACKEND_ID], [(*ep[0], v)])
        for host in ("backend", "backend.demo", "backend.demo.svc"):
            t.add_host(host, index["backend"], 80)
        t.set_outbound_http(self.http_sock.fileno(),
                            None if callers else ctx or client_ctx(self.pki),
                            None if callers else FRONTEND_ID)
        if callers:
            t.add_source("127.0.0.2", client_ctx(self.pki), FRONTEND_ID)
            t.add_source("127.0.0.3", client_ctx(self.pki, self.pki.other_ns), OTHER_NS_ID)
        return t, index

    def http(self, source: str | None = None) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(self.http_sock), timeout=TIMEOUT_S,
                                          source_address=(source, 0) if source else None)
        self.clients.append(conn)
        return conn


@contextlib.contextmanager
def running_mesh(p: PKI) -> Iterator[Mesh]:
    """Both nodes running, the app's node routing to both versions' apps."""
    m = Mesh(p, Node(), Node(), {v: App(v) for v in VERSIONS}, listener(), listener())
    try:
        m.in_node.install(m.inbound_table())
        yield m
    finally:
        m.out_node.stop()
        m.in_node.stop()
        for c in m.clients:
            c.close()
        for app in m.apps.values():
            app.close()
        m.http_sock.close()
        m.in_sock.close()


@pytest.fixture
def mesh(mesh_pki: PKI) -> Iterator[Mesh]:
    with running_mesh(mesh_pki) as m:
        yield m


def request(conn: http.client.HTTPConnection, path: str = "/", method: str = "GET",
            headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    conn.request(method, path, body=body, headers={"Host": "backend", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    heads = {k.lower(): v for k, v in resp.getheaders()}
    if heads.get("content-type") == "application/json":
        return resp.status, heads, json.loads(data)
    return resp.status, heads, data


def send(m: Mesh, path: str = "/", **kw: Any) -> tuple[int, dict[str, str], Any]:
    """One request on a connection of its own."""
    return request(m.http(), path, **kw)


def routed_to(m: Mesh, path: str = "/", **kw: Any) -> str | int:
    status, _, body = send(m, path, **kw)
    return body["version"] if status == 200 else status


# --- matches ----------------------------------------------------------------------------------


def test_paths_exact_and_prefix_element_wise_and_404_when_nothing_matches(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    to_v1 = t.add_route_rule("demo/r#0", [(ix["v1"], 1)])
    to_v2 = t.add_route_rule("demo/r#1", [(ix["v2"], 1)])
    t.add_route_match(s, to_v2, path=("Exact", "/exact"))
    t.add_route_match(s, to_v2, path=("PathPrefix", "/v2/"))  # trailing slash: as "/v2"
    t.add_route_match(s, to_v1, path=("PathPrefix", "/api"))
    mesh.out_node.install(t)
    assert routed_to(mesh, "/exact") == "v2"
    assert routed_to(mesh, "/exact?x=1") == "v2"          # the query is not the path
    assert routed_to(mesh, "/exact/more") == 404
    assert routed_to(mesh, "/v2") == "v2"
    assert routed_to(mesh, "/v2/users") == "v2"
    assert routed_to(mesh, "/v2example") == 404           # not element-wise a prefix
    assert routed_to(mesh, "/api") == "v1"
    assert routed_to(mesh, "/api/") == "v1"
    assert routed_to(mesh, "/apix") == 404
    status, _, body = send(mesh, "/nothing")
    assert status == 404 and b"no route matches" in body
    stats = mesh.out_node.engine.stats()
    assert stats["route_no_match"] == 4 and stats["route_matched"] == 6


def test_method_headers_and_query_must_all_hold(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    to_v2 = t.add_route_rule("demo/r#0", [(ix["v2"], 1)])
    to_v1 = t.add_route_rule("demo/r#1", [(ix["v1"], 1)])
    t.add_route_match(s, to_v2, method="POST", headers=[("Exact", "X-Canary", "yes")],
                      query=[("Exact", "flag", "on")])
    t.add_route_match(s, to_v1)                           # everything else
    mesh.out_node.install(t)
    hit = dict(method="POST", headers={"x-canary": "yes"}, body=b"")
    assert routed_to(mesh, "/p?flag=on", **hit) == "v2"
    assert routed_to(mesh, "/p?a=b&flag=on&c", **hit) == "v2"
    assert routed_to(mesh, "/p?flag=on", method="PUT", headers={"x-canary": "yes"},
                     body=b"") == "v1"
    assert routed_to(mesh, "/p?flag=off", **hit) == "v1"
    assert routed_to(mesh, "/p?Flag=on", **hit) == "v1"   # query names are exact
    assert routed_to(mesh, "/p?flag=on&flag=off", **hit) == "v2"   # the first one decides
    assert routed_to(mesh, "/p?flag=on", method="POST", headers={"x-canary": "YES"},
                     body=b"") == "v1"                    # values are exact
    assert routed_to(mesh, "/p?flag=on", method="POST", body=b"") == "v1"


def test_a_repeated_header_is_matched_on_its_values_joined(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v2"], 1)]),
                      headers=[("Exact", "x-env", "a,b")])
    t.add_route_match(s, t.add_route_rule("demo/r#1", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    with c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nX-Env: a\r\nx-env: b\r\n"
                  b"Connection: close\r\n\r\n")
        answer = recv_all(c)
    assert b'"version": "v2"' in answer


def test_the_first_match_in_the_order_given_wins(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    to_v1 = t.add_route_rule("demo/r#0", [(ix["v1"], 1)])
    to_v2 = t.add_route_rule("demo/r#1", [(ix["v2"], 1)])
    t.add_route_match(s, to_v2, path=("PathPrefix", "/a/b"))
    t.add_route_match(s, to_v1, path=("PathPrefix", "/a"))
    mesh.out_node.install(t)
    assert routed_to(mesh, "/a/b/c") == "v2"
    assert routed_to(mesh, "/a/c") == "v1"


# --- backends ---------------------------------------------------------------------------------


def test_weights_split_requests_between_backends(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v1"], 80), (ix["v2"], 20)]))
    mesh.out_node.install(t)
    conn = mesh.http()
    seen = {"v1": 0, "v2": 0}
    for _ in range(500):                # one keep-alive connection: each request on its own
        status, _, body = request(conn)
        assert status == 200
        seen[body["version"]] += 1
    # 20 % of 500 is 100; the binomial's sd is ~9: ±30 is more than three of them.
    assert 70 <= seen["v2"] <= 130, seen


def test_a_rule_without_valid_backends_answers_500_and_an_invalid_share_too(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", []), path=("Exact", "/none"))
    t.add_route_match(s, t.add_route_rule("demo/r#1", [(ix["v1"], 0)]), path=("Exact", "/zero"))
    t.add_route_match(s, t.add_route_rule("demo/r#2", [(-1, 1)]), path=("Exact", "/invalid"))
    t.add_route_match(s, t.add_route_rule("demo/r#3", [(-1, 50), (ix["v1"], 50)]),
                      path=("Exact", "/half"))
    mesh.out_node.install(t)
    assert routed_to(mesh, "/none") == 500
    assert routed_to(mesh, "/zero") == 500
    assert routed_to(mesh, "/invalid") == 500
    outcomes = [routed_to(mesh, "/half") for _ in range(100)]
    assert set(outcomes) == {500, "v1"}
    assert 25 <= outcomes.count(500) <= 75, outcomes.count(500)


def test_requests_on_one_connection_and_pipelined_go_where_each_is_routed(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v2"], 1)]), path=("PathPrefix", "/two"))
    t.add_route_match(s, t.add_route_rule("demo/r#1", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    conn = mesh.http()
    order = ["/one", "/two", "/two/x", "/one", "/two"]
    assert [request(conn, p)[2]["version"] for p in order] == ["v1", "v2", "v2", "v1", "v2"]
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    with c:
        c.sendall(b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /two HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /one HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        answers = recv_all(c)
    assert answers.count(b"HTTP/1.1 200") == 3
    assert [a.split(b'"')[1] for a in answers.split(b'"version": ')[1:]] == [b"v1", b"v2", b"v1"]


def test_a_service_without_routes_is_routed_as_before(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    mesh.out_node.install(t)
    assert routed_to(mesh, "/anything") == "v1"   # the service itself (its SNI: v1's app)


# --- header edits -----------------------------------------------------------------------------


def test_request_and_response_header_edits(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    rule = t.add_route_rule(
        "demo/r#0", [(ix["v1"], 1)],
        request_headers={"set": [("X-Set", "new")], "add": [("X-Add", "more")],
                         "remove": ["X-Drop"]},
        response_headers={"set": [("X-App-Note", "from-route")], "add": [("X-Route", "r0")],
                          "remove": ["Content-Type"]})
    t.add_route_match(s, rule)
    mesh.out_node.install(t)
    conn = mesh.http()
    for _ in range(2):                  # and again on the same connection
        conn.request("GET", "/", headers={"Host": "backend", "X-Set": "old", "x-set": "older",
                                          "X-Add": "first", "X-Drop": "gone"})
        resp = conn.getresponse()
        seen = json.loads(resp.read())
        got = seen["headers"]
        assert ["x-set", "new"] in got and ["x-set", "old"] not in got
        assert ["x-set", "older"] not in got
        assert ["x-add", "first"] in got and ["x-add", "more"] in got
        assert all(name != "x-drop" for name, _ in got)
        assert resp.getheader("X-App-Note") == "from-route"
        assert resp.getheader("X-Route") == "r0"
        assert resp.getheader("Content-Type") is None


def test_request_edits_with_a_body_that_fills_the_buffer(mesh: Mesh) -> None:
    """Room for a rule's lines is kept: a head followed by more body than a buffer holds
    is edited, not refused."""
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule(
        "demo/r#0", [(ix["v1"], 1)], request_headers={"add": [("X-Big", "y" * 1000)]}))
    mesh.out_node.install(t)
    status, _, body = send(mesh, "/upload", method="POST", body=b"z" * 200_000)
    assert status == 200 and body["body_bytes"] == 200_000
    assert ["x-big", "y" * 1000] in body["headers"]


@pytest.mark.parametrize("name", ["Host", "Content-Length", "transfer-encoding", "Connection",
                                  "X-Forwarded-Client-Cert", "upgrade"])
def test_fields_the_node_owns_cannot_be_edited(mesh: Mesh, name: str) -> None:
    t, ix = mesh.outbound()
    with pytest.raises(ValueError, match="may not be edited"):
        t.add_route_rule("demo/r#0", [(ix["v1"], 1)], request_headers={"set": [(name, "x")]})


def test_bad_route_input_is_refused_by_name(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    r = t.add_route_rule("demo/r#0", [(ix["v1"], 1)])
    with pytest.raises(ValueError, match="method"):
        t.add_route_match(s, r, method="FETCH")
    with pytest.raises(ValueError, match="begin with /"):
        t.add_route_match(s, r, path=("Exact", "relative"))
    with pytest.raises(ValueError, match="match type 'Glob' is not one of Exact, PathPrefix"):
        t.add_route_match(s, r, path=("Glob", "/x"))
    with pytest.raises(ValueError, match="control characters"):
        t.add_route_match(s, r, headers=[("Exact", "x-a", "bad\r\nvalue")])
    with pytest.raises(ValueError, match="not an HTTP field name"):
        t.add_route_rule("demo/r#1", [(ix["v1"], 1)], request_headers={"add": [("bad name", "x")]})
    with pytest.raises(ValueError, match="add more than"):
        t.add_route_rule("demo/r#2", [(ix["v1"], 1)],
                         request_headers={"add": [(f"x-{i}", "v" * 400) for i in range(16)]})
    with pytest.raises(ValueError, match="already has a route set"):
        t.add_route_set(ix["backend"])
    with pytest.raises(ValueError, match="no service"):
        t.add_route_rule("demo/r#3", [(99, 1)])


# --- who is calling ---------------------------------------------------------------------------


def test_consumer_routes_govern_only_callers_of_their_namespace(mesh: Mesh) -> None:
    t, ix = mesh.outbound(callers=True)
    producer = t.add_route_set(ix["backend"])
    t.add_route_match(producer, t.add_route_rule("demo/producer#0", [(ix["v1"], 1)]))
    consumer = t.add_route_set(ix["backend"], "shop")
    t.add_route_match(consumer, t.add_route_rule("shop/consumer#0", [(ix["v2"], 1)]),
                      path=("PathPrefix", "/"))
    mesh.out_node.install(t)
    demo = mesh.http("127.0.0.2")
    shop = mesh.http("127.0.0.3")
    for _ in range(3):
        assert request(demo)[2]["version"] == "v1"
        assert request(shop)[2]["version"] == "v2"


def test_a_config_push_reroutes_the_next_request(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    conn = mesh.http()
    assert request(conn)[2]["version"] == "v1"
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v2"], 1)]))
    mesh.out_node.install(t)
    assert request(conn)[2]["version"] == "v2"


# --- timeouts ---------------------------------------------------------------------------------


def test_a_route_timeout_answers_504_before_a_late_answer(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v1"], 1)], timeout_s=0.3),
                      path=("PathPrefix", "/slow"))
    t.add_route_match(s, t.add_route_rule("demo/r#1", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    conn = mesh.http()
    assert request(conn, "/slow/10")[0] == 200         # in time, and the pair goes on
    started = time.monotonic()
    status, _, body = request(conn, "/slow/1500")
    took = time.monotonic() - started
    assert status == 504 and b"timeout" in body
    assert 0.25 <= took < 1.2, took
    assert mesh.out_node.engine.stats()["route_timeouts"] == 1
    assert routed_to(mesh, "/fast") == "v1"            # another rule: no timeout
    assert routed_to(mesh, "/slow/600") == 504         # a new connection: timed too


def test_a_rule_without_timeout_waits_for_its_answer(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    assert routed_to(mesh, "/slow/700") == "v1"


# --- regular expressions ----------------------------------------------------------------------


def test_regular_expressions_match_whole_paths_headers_and_query_values(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    to_v2 = t.add_route_rule("demo/r#0", [(ix["v2"], 1)])
    to_v1 = t.add_route_rule("demo/r#1", [(ix["v1"], 1)])
    t.add_route_match(s, to_v2, path=("RegularExpression", r"/api/v[0-9]+/users/[^/]+"))
    t.add_route_match(s, to_v2, headers=[("RegularExpression", "user-agent", r".*\bMobile\b.*")])
    t.add_route_match(s, to_v2, query=[("RegularExpression", "id", "[0-9]{3}")])
    t.add_route_match(s, to_v1)
    mesh.out_node.install(t)
    assert routed_to(mesh, "/api/v12/users/ann") == "v2"
    assert routed_to(mesh, "/api/v12/users/ann/x") == "v1"   # the whole path, not a part
    assert routed_to(mesh, "/xx/api/v1/users/b") == "v1"
    assert routed_to(mesh, "/", headers={"User-Agent": "Foo Mobile Safari"}) == "v2"
    assert routed_to(mesh, "/", headers={"User-Agent": "FooMobileSafari"}) == "v1"
    assert routed_to(mesh, "/?id=123") == "v2"
    assert routed_to(mesh, "/?id=1234") == "v1"


@pytest.mark.parametrize("pattern, says", [(r"(a)\1", "backreference"),
                                           (r"/x(?=y)", "look"), ("[a-", "")])
def test_patterns_re2_refuses_are_refused_naming_the_match(mesh: Mesh, pattern: str,
                                                           says: str) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    r = t.add_route_rule("demo/r#0", [(ix["v1"], 1)])
    with pytest.raises(ValueError, match="path: .*" + says):
        t.add_route_match(s, r, path=("RegularExpression", pattern))
