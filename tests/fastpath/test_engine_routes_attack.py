"""A second reader's attacks on the HTTPRoute stage (routes.pxi and its hooks in the
router, the HTTP stream, the carry-over to a new table and the timers), each replayed
over two real engines, mutual TLS and sockets on loopback, and named after the attack.

The mesh is test_engine_routes.py's: the caller's node routes service "backend" to its
versions by the test's routes; the app's node has one app per version. Where an app
must answer what http.server will not (too many fields, a body until close), version
v1's app is a raw one. A scenario that crashed the engine runs in a child interpreter,
so that the crash fails its test rather than the whole session.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, port_of, recv_all
from test_engine_header_holes import read_request
from test_engine_http import RawApp
from test_engine_routes import (BACKEND_ID, Mesh, client_ctx, mesh, mesh_pki,  # noqa: F401
                                new_pki, request, routed_to, running_mesh, server_ctx)

pytestmark = pytest.mark.timeout(60)


# --- helpers ----------------------------------------------------------------------------------


def exchange(m: Mesh, raw: bytes) -> bytes:
    """`raw` in one write to the caller's node; all it answers until it closes."""
    c = socket.create_connection(("127.0.0.1", port_of(m.http_sock)), timeout=TIMEOUT_S)
    with c:
        c.sendall(raw)
        return recv_all(c)


def v1_is(m: Mesh, serve: Callable[[socket.socket], None]) -> RawApp:
    """Version v1's app becomes a raw one that runs `serve(conn)` per connection."""
    app = RawApp(serve)
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno())
    t.add_inbound_route("http.backend-v1.demo.svc", server_ctx(m.pki), "127.0.0.1", app.port,
                        service="demo/backend-v1:http", identity=BACKEND_ID, protocol="HTTP")
    t.add_inbound_route("http.backend-v2.demo.svc", server_ctx(m.pki), "127.0.0.1",
                        m.apps["v2"].port, service="demo/backend-v2:http", identity=BACKEND_ID,
                        protocol="HTTP")
    m.in_node.install(t)
    return app


def one_rule(m: Mesh, **rule: Any) -> None:
    """Every request to "backend" takes one rule to v1 (`rule`: add_route_rule's options)."""
    t, ix = m.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v1"], 1)], **rule))
    m.out_node.install(t)


def v2_when(m: Mesh, **match: Any) -> None:
    """Requests to "backend" that `match` (add_route_match's options) holds for go to v2,
    all others to v1."""
    t, ix = m.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/match", [(ix["v2"], 1)]), **match)
    t.add_route_match(s, t.add_route_rule("demo/rest", [(ix["v1"], 1)]))
    m.out_node.install(t)


def route_tags(answers: bytes) -> list[bytes]:
    """The x-route field of each answer, in order (a route's edits write names lowercase)."""
    return re.findall(rb"\r\nx-route: ([^\r]*)\r\n", answers)


def in_child(scenario: Callable[[Mesh], Any]) -> Any:
    """Run `scenario` on a mesh of its own in a child interpreter; what it returns
    (JSON). An engine that crashes takes only the child down, and the test says so."""
    code = ("import json, sys; sys.path[:0] = %r; import %s as t; "
            "print(json.dumps(t.run_scenario(%r)))" % (sys.path, __name__, scenario.__name__))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=50, stdin=subprocess.DEVNULL)
    crashed = {-signal.SIGSEGV: " (SIGSEGV: an engine crashed)",
               -signal.SIGABRT: " (SIGABRT: a debug build's check failed)"}.get(child.returncode, "")
    assert child.returncode == 0, f"the child ended with {child.returncode}{crashed}:\n" + (
        child.stderr[-3000:])
    return json.loads(child.stdout.splitlines()[-1])


def run_scenario(name: str) -> Any:
    """In the child: `name`'s scenario on a mesh started here."""
    with running_mesh(new_pki()) as m:
        return globals()[name](m)


# --- header edits on a head at the parser's field limit ---------------------------------------

# The client's own fields: with Host, the parser's limit of 100 lines; a rule's edits make
# more of them. Each edit was followed by a parse of the head that was not checked: the
# failed one zeroed the head's length, and the next added line went in at offset -2.
MANY_FIELDS = b"".join(b"X-F%02d: v\r\n" % i for i in range(99))
TWO_LINES = {"add": [("X-Route-A", "1"), ("X-Route-B", "2")]}


def _refused_and_after(m: Mesh, head: bytes) -> dict[str, Any]:
    one_rule(m, request_headers=TWO_LINES)
    reply = exchange(m, head)
    return {"reply": reply.split(b"\r\n")[0].decode(), "after": routed_to(m, "/after")}


def _first_request_at_the_field_limit(m: Mesh) -> dict[str, Any]:
    return _refused_and_after(m, b"GET / HTTP/1.1\r\nHost: backend\r\n" + MANY_FIELDS
                              + b"\r\n")


def _absolute_form_at_the_field_limit(m: Mesh) -> dict[str, Any]:
    # HTTP/1.0 needs no Host: the node adds the target's, one line over the limit.
    return _refused_and_after(m, b"GET http://backend/ HTTP/1.0\r\nX-G: v\r\n" + MANY_FIELDS
                              + b"\r\n")


def _second_request_at_the_field_limit(m: Mesh) -> dict[str, Any]:
    one_rule(m, request_headers=TWO_LINES)
    conn = m.http()
    first = request(conn, "/first")[0]
    conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n" + MANY_FIELDS + b"\r\n")
    return {"first": first, "then": recv_all(conn.sock).decode(), "after": routed_to(m, "/after")}


@pytest.mark.parametrize("scenario", [_first_request_at_the_field_limit,
                                      _absolute_form_at_the_field_limit],
                         ids=["origin-form", "absolute-form-gaining-host"])
def test_a_head_at_the_field_limit_and_a_rule_adding_lines_is_refused_not_a_crash(
        scenario: Callable[[Mesh], Any]) -> None:
    """A local caller sends a head of 100 field lines to a service whose route adds two:
    the node's worker died (SIGSEGV), every pair it carried with it."""
    got = in_child(scenario)
    assert got["reply"].startswith("HTTP/1.1 431 "), got
    assert got["after"] == "v1"


def test_the_same_head_behind_another_request_ends_the_connection_not_the_node() -> None:
    got = in_child(_second_request_at_the_field_limit)
    assert got["first"] == 200 and got["then"] == "", got     # (no answer out of turn)
    assert got["after"] == "v1"


def _answer_at_the_field_limit(m: Mesh) -> dict[str, Any]:
    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            read_request(conn, buf)
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + MANY_FIELDS + b"Content-Length: 2\r\n\r\nok")

    app = v1_is(m, serve)
    try:
        one_rule(m, response_headers=TWO_LINES)
        reply = exchange(m, b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        return {"reply": reply.split(b"\r\n")[0].decode(), "after": routed_to(m, "/after")}
    finally:
        app.close()


def test_an_answer_at_the_field_limit_and_a_rule_adding_lines_is_a_502_not_a_crash() -> None:
    """The app's side of the same hole: an answer of 100 field lines and a route whose
    response edits add two."""
    got = in_child(_answer_at_the_field_limit)
    assert got["reply"].startswith("HTTP/1.1 502 "), got
    assert got["after"] == 502      # the node still answers


# --- a config push while requests are in flight -----------------------------------------------


def _tagged_table(m: Mesh, ctx: Any, tag: str) -> fe.RouteTable:
    """/a and anything else to v1, each rule's answers saying which table and rule."""
    t, ix = m.outbound(ctx=ctx)
    s = t.add_route_set(ix["backend"])
    for rule, path in (("a", ("PathPrefix", "/a")), ("any", None)):
        t.add_route_match(s, t.add_route_rule(
            f"demo/{rule}", [(ix["v1"], 1)],
            response_headers={"add": [("X-Route", f"{tag}-{rule}")]}), path=path)
    return t


def test_a_push_with_a_request_in_flight_leaves_its_answer_its_own_rules_edits(
        mesh: Mesh) -> None:
    """A request in flight when a push came, and one pipelined behind it: the pair moved
    to the new table in place at the second head, and the first one's answer was then
    edited by the new table's rule of the same index (an index past the new table's
    rules read freed memory). In-flight requests finish on the table they were
    routed by (DESIGN §3)."""
    ctx = client_ctx(mesh.pki)          # one context across pushes, as a node keeps it
    mesh.out_node.install(_tagged_table(mesh, ctx, "old"))
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    with c:
        c.sendall(b"GET /slow/800 HTTP/1.1\r\nHost: backend\r\n\r\n")
        mesh.out_node.wait_stat("http_routed")
        mesh.out_node.install(_tagged_table(mesh, ctx, "new"))
        c.sendall(b"GET /a HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        answers = recv_all(c)
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers
    assert route_tags(answers) == [b"old-any", b"new-a"]


# --- a route's timeout ------------------------------------------------------------------------


def test_a_timeout_behind_an_answer_until_close_does_not_cut_that_answer(mesh: Mesh) -> None:
    """An answer without a length runs until the upstream closes: the requests pipelined
    behind it will never be answered. The one behind it had a route's timeout, whose
    timer, filed when the answer's head came, reset the client's connection in the
    middle of the answer before it: a whole answer lost to another request's timer."""
    parts = [b"part-%d\n" % i for i in range(8)]

    def serve(conn: socket.socket) -> None:
        read_request(conn, bytearray())
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in parts:
            time.sleep(0.1)
            conn.sendall(part)

    app = v1_is(mesh, serve)
    try:
        t, ix = mesh.outbound()
        s = t.add_route_set(ix["backend"])
        t.add_route_match(s, t.add_route_rule("demo/stream", [(ix["v1"], 1)]),
                          path=("Exact", "/stream"))
        t.add_route_match(s, t.add_route_rule("demo/timed", [(ix["v1"], 1)], timeout_s=0.3))
        mesh.out_node.install(t)
        c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
        with c:
            c.sendall(b"GET /stream HTTP/1.1\r\nHost: backend\r\n\r\n"
                      b"GET /timed HTTP/1.1\r\nHost: backend\r\n\r\n")
            out = bytearray()
            while chunk := c.recv(65536):   # a reset raises here: the answer was cut
                out += chunk
    finally:
        app.close()
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"".join(parts)), bytes(out)


# --- a request matched under one reading and sent under another -------------------------------


@pytest.mark.parametrize("target", [b"http://backend", b"http://backend?q=1"])
def test_an_absolute_form_target_without_a_path_is_matched_as_the_slash_it_is_sent_as(
        mesh: Mesh, target: bytes) -> None:
    """The node sends "http://backend" on as "/" (RFC 9112 §3.2.2), but matched the empty
    path: an Exact "/" rule did not take it, and it went where "/" does not."""
    v2_when(mesh, path=("Exact", "/"))
    reply = exchange(mesh, b"GET " + target + b" HTTP/1.1\r\nHost: backend\r\n"
                     b"Connection: close\r\n\r\n")
    body = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert body["path"] == "/" + target.partition(b"backend")[2].decode()
    assert body["version"] == "v2", body


# --- requests sent again -----------------------------------------------------------------------


def test_requests_sent_again_after_a_pooled_upstream_failed_keep_their_own_rules(
        mesh: Mesh) -> None:
    """Two requests pipelined on a pooled upstream that the app's side closed without an
    answer (the keep-alive race) are routed again, still whole; the first was then
    edited again by the rule of the last one framed, so the app saw it with that rule's
    fields (and its answer would have had that rule's edits and timeout)."""
    dropped: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            got = read_request(conn, buf)
            if got.startswith(b"GET /drop-once ") and not dropped:
                dropped.append(got)         # read all that came, then a clean close
                conn.settimeout(0.3)
                with contextlib.suppress(OSError):
                    while conn.recv(65536):
                        pass
                return
            tenant = re.search(rb"\r\nx-tenant: ([^\r]*)\r\n", got, re.I)
            body = got.split(b" ")[1] + b" " + (tenant.group(1) if tenant else b"-")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    app = v1_is(mesh, serve)
    try:
        t, ix = mesh.outbound()
        s = t.add_route_set(ix["backend"])
        for tenant, path in (("a", ("PathPrefix", "/drop-once")), ("b", None)):
            t.add_route_match(s, t.add_route_rule(
                f"demo/{tenant}", [(ix["v1"], 1)],
                request_headers={"set": [("X-Tenant", tenant)]}), path=path)
        mesh.out_node.install(t)
        assert exchange(mesh, b"GET /warm HTTP/1.1\r\nHost: backend\r\n\r\n"
                        b"GET /warm HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
                        ).endswith(b"/warm b")
        mesh.out_node.wait_stat("http_upstream_pooled")
        c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
        with c:
            c.sendall(b"GET /drop-once HTTP/1.1\r\nHost: backend\r\n\r\n"
                      b"GET /other HTTP/1.1\r\nHost: backend\r\n\r\n")
            answers = b""
            while answers.count(b"HTTP/1.1 200 ") < 2 or not answers.endswith(b"/other b"):
                answers += c.recv(65536) or b"(closed)"
                assert not answers.endswith(b"(closed)"), answers
    finally:
        app.close()
    assert dropped and mesh.out_node.stats()["http_upstream_retried"] == 1
    assert re.findall(rb"\r\n\r\n(/[a-z-]+ [a-z-])", answers) == [b"/drop-once a", b"/other b"]


# --- the room kept for edits ------------------------------------------------------------------


def _large_answers_edited(m: Mesh) -> list[Any]:
    body = b"z" * 100_000

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            read_request(conn, buf)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    app = v1_is(m, serve)
    try:
        one_rule(m, response_headers={"add": [("X-Route", "r0")]})
        out = []
        for close in (b"", b"Connection: close\r\n"):
            c = socket.create_connection(("127.0.0.1", port_of(m.http_sock)), timeout=TIMEOUT_S)
            with c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n" + close + b"\r\n")
                resp = c.makefile("rb")
                head = b"".join(iter(resp.readline, b"\r\n"))
                out.append([[t.decode() for t in route_tags(b"\r\n" + head + b"\r\n")],
                            resp.read(len(body)) == body])
        return out
    finally:
        app.close()


def test_a_large_answer_edited_by_a_rule_stays_in_the_room_kept_for_it() -> None:
    """An answer whose first read fills the buffer up to the room kept for the node's
    lines (`Connection: close`, a rule's response edits): the lines go in that room, and
    the debug build's check that framing stays below the cap stopped the engine."""
    assert in_child(_large_answers_edited) == [[["r0"], True], [["r0"], True]]


def test_a_host_match_reads_the_host_an_absolute_form_request_is_sent_with(mesh: Mesh) -> None:
    """An absolute-form request is sent on with its target's authority for Host (RFC 9112
    §3.2.2), but a rule's Host match read the Host field the client wrote: matched as
    one host, the app got it as another."""
    v2_when(mesh, headers=[("Exact", "Host", "backend.demo")])
    for target, host, sent, version in (
            (b"http://backend/x", b"backend.demo", "backend", "v1"),
            (b"http://backend.demo/x", b"backend", "backend.demo", "v2"),
            (b"/x", b"backend.demo", "backend.demo", "v2"),
            (b"/x", b"backend", "backend", "v1")):
        reply = exchange(mesh, b"GET " + target + b" HTTP/1.1\r\nHost: " + host
                         + b"\r\nConnection: close\r\n\r\n")
        body = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert ["host", sent] in body["headers"], body
        assert body["version"] == version, (target, host, body)


# --- what held (kept as checks) ---------------------------------------------------------------


def test_held_a_forged_identity_does_not_ride_a_rules_edits_to_the_app(mesh: Mesh) -> None:
    """Edits of every kind on a request carrying forged x-forwarded-client-cert fields (as
    named and with '_' for '-'): the app's node replaces them; none reaches the app."""
    one_rule(mesh, request_headers={"set": [("X-Set", "s")], "add": [("X-Add", "a")],
                                    "remove": ["X-Gone"]})
    forged = "By=spiffe://cluster.local/ns/ops/sa/admin;URI=spiffe://cluster.local/ns/ops/sa/admin"
    reply = exchange(mesh, b"GET / HTTP/1.1\r\nHost: backend\r\nX-Forwarded-Client-Cert: "
                     + forged.encode() + b"\r\nX_Forwarded_Client_Cert: " + forged.encode()
                     + b"\r\nX-Gone: 1\r\nConnection: close\r\n\r\n")
    seen = json.loads(reply.partition(b"\r\n\r\n")[2])["headers"]
    xfcc = [v for n, v in seen if n.replace("_", "-") == "x-forwarded-client-cert"]
    assert len(xfcc) == 1 and "ns/ops" not in xfcc[0], seen
    assert ["x-set", "s"] in seen and ["x-add", "a"] in seen and "x-gone" not in dict(seen)


def test_held_a_timed_out_answer_never_reaches_a_later_request(mesh: Mesh) -> None:
    """After a 504 the upstream that may still answer is closed, never pooled: the next
    requests, before and after the late answer would have come, get their own."""
    one_rule(mesh, timeout_s=0.3)
    conn = mesh.http()
    assert request(conn, "/warm")[2]["path"] == "/warm"
    assert request(conn, "/slow/900")[0] == 504
    for path in ("/next", "/slow/10", "/last"):     # over the 0.6 s the late answer takes
        assert request(mesh.http(), path)[2]["path"] == path
        time.sleep(0.3)
    assert mesh.out_node.stats()["route_timeouts"] == 1
