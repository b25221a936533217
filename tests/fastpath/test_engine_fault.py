"""Tests for fastpath.engine's fault injection (fault.pxi): a route rule's delay, held on
the timer wheel and then forwarded whole; its abort, answered without a backend; the
chance of each, drawn per request; and the 500 of a filter that did not resolve.

The mesh is test_engine_routes.py's: the caller's node routes service "backend" to its
versions by the test's routes, the app's node has one app per version that reports what
it received. Real engines, mutual TLS and sockets on loopback.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from enginekit import TIMEOUT_S, port_of, recv_all, wait_for
from test_engine_routes import Mesh, mesh, mesh_pki, request, send  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def faulted(m: Mesh, path: str = "/", **fault: object) -> None:
    """Install: requests under `path` go to v1 through a rule with `fault`
    (RouteTable.add_route_fault's arguments); the rest to v1 with none."""
    t, ix = m.outbound()
    s = t.add_route_set(ix["backend"])
    rule = t.add_route_rule("demo/faulty#0", [(ix["v1"], 1)])
    t.add_route_fault(rule, **fault)
    t.add_route_match(s, rule, path=("PathPrefix", path))
    t.add_route_match(s, t.add_route_rule("demo/faulty#1", [(ix["v1"], 1)]))
    m.out_node.install(t)


def backend_contacts(m: Mesh) -> int:
    return m.in_node.stats()["inbound_connections_opened"]


def test_a_delay_holds_the_request_then_it_arrives_whole(mesh: Mesh) -> None:
    faulted(mesh, "/held", delay_s=0.4, delay_percent=100)
    started = time.monotonic()
    status, _, body = send(mesh, "/held/x?q=1", method="POST", body=b"b" * 70_000,
                           headers={"X-Test": "kept"})
    took = time.monotonic() - started
    assert status == 200 and took >= 0.4, took
    assert body["path"] == "/held/x?q=1" and body["method"] == "POST"
    assert body["body_bytes"] == 70_000 and ["x-test", "kept"] in body["headers"]
    assert send(mesh, "/other")[0] == 200          # another rule: not held
    stats = mesh.out_node.stats()
    assert stats["faults_delayed"] == 1 and stats["faults_aborted"] == 0


def test_an_abort_answers_at_once_and_no_backend_is_contacted(mesh: Mesh) -> None:
    faulted(mesh, "/broken", abort_status=503, abort_percent=100)
    for _ in range(3):
        status, heads, body = send(mesh, "/broken", method="POST", body=b"x" * 1000)
        assert status == 503 and body == b"fault filter abort\n"
        assert heads["connection"] == "close"
    assert backend_contacts(mesh) == 0
    assert mesh.out_node.stats()["faults_aborted"] == 3
    assert send(mesh, "/fine")[0] == 200 and backend_contacts(mesh) == 1


def test_a_delay_and_an_abort_both_drawn_delay_then_abort(mesh: Mesh) -> None:
    faulted(mesh, delay_s=0.3, delay_percent=100, abort_status=429, abort_percent=100)
    started = time.monotonic()
    status, _, body = send(mesh, "/")
    assert status == 429 and body == b"fault filter abort\n"
    assert time.monotonic() - started >= 0.3
    assert backend_contacts(mesh) == 0


def test_each_fault_is_drawn_per_request_with_its_percentage(mesh: Mesh) -> None:
    # The Gateway API's conformance judges a split of 500 requests within 5 % of them;
    # at 10 % the binomial's sd is 6.7 requests, so ±25 is more than three of them.
    faulted(mesh, delay_s=0.001, delay_percent=10, abort_status=503, abort_percent=10)
    conn = mesh.http()                  # reopened by http.client after each abort
    outcomes = [request(conn)[0] for _ in range(500)]
    assert set(outcomes) == {200, 503}
    stats = mesh.out_node.stats()
    assert abs(outcomes.count(503) - 50) <= 25, outcomes.count(503)
    assert stats["faults_aborted"] == outcomes.count(503)
    assert abs(stats["faults_delayed"] - 50) <= 25, stats["faults_delayed"]


def test_zero_percent_never_faults(mesh: Mesh) -> None:
    faulted(mesh, delay_s=30, delay_percent=0, abort_status=500, abort_percent=0)
    conn = mesh.http()
    assert all(request(conn)[0] == 200 for _ in range(50))
    stats = mesh.out_node.stats()
    assert stats["faults_delayed"] == stats["faults_aborted"] == 0


def test_pipelined_requests_a_held_one_waits_and_an_aborted_one_ends_the_connection(
        mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    held = t.add_route_rule("demo/r#0", [(ix["v2"], 1)])
    t.add_route_fault(held, delay_s=0.3, delay_percent=100)
    aborted = t.add_route_rule("demo/r#1", [(ix["v2"], 1)])
    t.add_route_fault(aborted, abort_status=418, abort_percent=100)
    t.add_route_match(s, held, path=("PathPrefix", "/held"))
    t.add_route_match(s, aborted, path=("PathPrefix", "/abort"))
    t.add_route_match(s, t.add_route_rule("demo/r#2", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /held HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /abort HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /one HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        answers = recv_all(c)
    # In order: v1, the held one (v2), v1, then the abort; nothing after it.
    assert [a.split(b'"')[1] for a in answers.split(b'"version": ')[1:]] == [b"v1", b"v2", b"v1"]
    assert answers.count(b"HTTP/1.1 200") == 3
    assert answers.endswith(b"fault filter abort\n") and b"HTTP/1.1 418" in answers
    stats = mesh.out_node.stats()
    assert stats["faults_delayed"] == 1 and stats["faults_aborted"] == 1


def test_a_client_gone_during_the_delay_frees_everything(mesh: Mesh) -> None:
    faulted(mesh, delay_s=60, delay_percent=100)
    idle = mesh.out_node.stats()
    for held in range(1, 6):
        c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
        c.sendall(b"POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n\r\nhello")
        mesh.out_node.wait_stat("faults_delayed", held)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()                               # SO_LINGER 0: a reset
    # Long before the delay's end: slots, buffers and timers back, no backend reached.
    wait_for(lambda: mesh.out_node.stats()["outbound_connections_active"] == 0,
             what="held pairs closed")
    stats = mesh.out_node.stats()
    assert stats["buffers_in_use"] == idle["buffers_in_use"]
    assert backend_contacts(mesh) == 0


def test_a_client_that_half_closes_during_the_delay_gets_its_answer(mesh: Mesh) -> None:
    """A FIN after a whole request (HTTP/1.0 clients, `nc -q`) is no abort: the request
    goes on after its delay, as it would have without one."""
    faulted(mesh, delay_s=0.3, delay_percent=100)
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n\r\nhello")
        mesh.out_node.wait_stat("faults_delayed")
        c.shutdown(socket.SHUT_WR)
        answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b'"body_bytes": 5' in answer and backend_contacts(mesh) == 1


def test_a_client_that_half_closed_before_its_pipelined_request_is_held_gets_both_answers(
        mesh: Mesh) -> None:
    """A request pipelined behind another is held once the pair switches to it, after
    the first one's answer; the client's FIN was read before (as the first went on). It
    is no abort there either: the held request goes on after its delay."""
    faulted(mesh, "/held", delay_s=0.3, delay_percent=100)
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /held HTTP/1.1\r\nHost: backend\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
        answers = recv_all(c)
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers
    assert mesh.out_node.stats()["faults_delayed"] == 1


def test_a_held_request_goes_on_under_a_config_pushed_during_its_delay(mesh: Mesh) -> None:
    faulted(mesh, delay_s=0.5, delay_percent=100)
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        mesh.out_node.wait_stat("faults_delayed")
        t, ix = mesh.outbound()         # the same routes, no fault
        s = t.add_route_set(ix["backend"])
        t.add_route_match(s, t.add_route_rule("demo/faulty#0", [(ix["v2"], 1)]))
        mesh.out_node.install(t)
        answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 200") and b'"version": "v2"' in answer


def test_a_held_request_keeps_its_delay_and_deadline_across_config_pushes(mesh: Mesh) -> None:
    """Pushes of the same faulty route during a delay neither draw the fault again nor
    start the delay over: the request is released at the deadline it was given."""
    faulted(mesh, delay_s=0.8, delay_percent=100)
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        started = time.monotonic()
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        mesh.out_node.wait_stat("faults_delayed")
        for _ in range(3):
            faulted(mesh, delay_s=0.8, delay_percent=100)
        answer = recv_all(c)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert 0.8 <= took < 1.4, took
    assert mesh.out_node.stats()["faults_delayed"] == 1


def test_an_abort_drawn_with_a_delay_is_answered_after_a_push(mesh: Mesh) -> None:
    """The decision is the request's: a push to a route without faults during the delay
    still ends it with the abort drawn with it, and no backend is contacted."""
    faulted(mesh, delay_s=0.4, delay_percent=100, abort_status=503, abort_percent=100)
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        mesh.out_node.wait_stat("faults_delayed")
        faulted(mesh, delay_s=0.0)
        answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"fault filter abort\n")
    assert backend_contacts(mesh) == 0


def test_a_filter_that_did_not_resolve_answers_500(mesh: Mesh) -> None:
    faulted(mesh, "/ext", unresolved=True)
    status, _, body = send(mesh, "/ext")
    assert status == 500 and body == b"route filter not resolved\n"
    assert send(mesh, "/elsewhere")[0] == 200
    assert mesh.out_node.stats()["route_filter_unresolved"] == 1


def test_bad_fault_input_is_refused_by_name(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    rule = t.add_route_rule("demo/r#0", [(ix["v1"], 1)])
    with pytest.raises(ValueError, match="abort_status must be 200..599"):
        t.add_route_fault(rule, abort_status=99, abort_percent=100)
    with pytest.raises(ValueError, match="an abort with 304 .* is not implemented"):
        t.add_route_fault(rule, abort_status=304, abort_percent=100)
    with pytest.raises(ValueError, match="abort_percent must be 0..100"):
        t.add_route_fault(rule, abort_status=503, abort_percent=100.5)
    with pytest.raises(ValueError, match="delay_percent must be 0..100"):
        t.add_route_fault(rule, delay_s=1, delay_percent=float("nan"))
    with pytest.raises(ValueError, match="delay_s must be"):
        t.add_route_fault(rule, delay_s=-1)
    with pytest.raises(ValueError, match="no route rule 7"):
        t.add_route_fault(7, delay_s=1)


def test_a_delay_on_a_redirecting_rule_holds_then_redirects(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    rule = t.add_route_rule("demo/r#0", [], redirect={"hostname": "elsewhere.example"})
    t.add_route_fault(rule, delay_s=0.3, delay_percent=100)
    t.add_route_match(s, rule)
    mesh.out_node.install(t)
    started = time.monotonic()
    status, heads, _ = send(mesh, "/p")
    assert time.monotonic() - started >= 0.3
    assert (status, heads["location"]) == (302, "http://elsewhere.example/p")
    assert mesh.out_node.stats()["faults_delayed"] == 1 and backend_contacts(mesh) == 0


def test_an_abort_drawn_with_a_delay_on_a_redirecting_rule_answers_the_abort(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    rule = t.add_route_rule("demo/r#0", [], redirect={"hostname": "elsewhere.example"})
    t.add_route_fault(rule, delay_s=0.2, delay_percent=100, abort_status=503, abort_percent=100)
    t.add_route_match(s, rule)
    mesh.out_node.install(t)
    started = time.monotonic()
    status, heads, _ = send(mesh, "/p")
    # Held first, then the abort: not the redirect, and not the two statuses mixed.
    assert time.monotonic() - started >= 0.2
    assert status == 503 and "location" not in heads
    assert backend_contacts(mesh) == 0
