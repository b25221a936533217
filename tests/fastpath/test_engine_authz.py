"""Tests for fastpath.engine's AuthorizationPolicy stage (authz.pxi, authz_table.pxi): an
inbound route's program judged at the destination in Istio's order, every field and
condition, the request path normalized (and forwarded so), 403 `RBAC: access denied`
with the connection kept, opaque TCP pairs closed before the app sees a byte, a policy
pushed under open keep-alive connections and open TCP pairs (those it denies closed at
the swap, the others untouched), the decisions' figures, and malformed programs refused
whole.

The mesh is test_engine_routes.py's: the caller's node tells its local callers apart by
address (127.0.0.2 runs as spiffe://cluster.local/ns/demo/sa/frontend, 127.0.0.3 as
spiffe://cluster.local/ns/shop/sa/cart) and calls service "backend" over mutual TLS; the
app's node judges them by the program set on the v1 route. Real engines and sockets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from typing import Any

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, port_of, recv_all, wait_for
from test_engine import App as EchoApp
from test_engine_routes import (BACKEND_ID, FRONTEND_ID, OTHER_NS_ID, Mesh, client_ctx,  # noqa: F401
                                mesh, mesh_pki, request, server_ctx)

pytestmark = pytest.mark.timeout(120)

V1 = "http.backend-v1.demo.svc"
ISTIO_V1 = "outbound_.80_._.backend-v1.demo.svc.cluster.local"   # Istio's form of v1's name
FRONTEND = "127.0.0.2"      # cluster.local/ns/demo/sa/frontend
CART = "127.0.0.3"          # cluster.local/ns/shop/sa/cart
DENIED = b"RBAC: access denied"


def policy(name: str, action: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "action": action, "rules": list(rules)}


def rule(source: dict | None = None, operation: dict | None = None,
         when: list | None = None) -> dict[str, Any]:
    """One rule: a single SOURCE and OPERATION (None: that part absent)."""
    return {"from": None if source is None else [source],
            "to": None if operation is None else [operation], "when": when or []}


def values(*leaves: list) -> dict[str, Any]:
    return {"values": list(leaves), "not": None}


def nots(*leaves: list) -> dict[str, Any]:
    return {"values": None, "not": list(leaves)}


def install(m: Mesh, *policies: dict[str, Any], normalization: str = "BASE") -> None:
    """The app's node judges route v1 by `policies`; the caller's node tells callers apart."""
    t = m.inbound_table()
    t.set_inbound_authz(V1, {"policies": list(policies)})
    t.set_path_normalization(normalization)
    m.in_node.install(t)
    out, _ = m.outbound(callers=True)
    out.set_path_normalization(normalization)
    m.out_node.install(out)


def call(m: Mesh, path: str = "/", source: str = FRONTEND, **kw: Any) -> tuple[int, Any]:
    status, _, body = request(m.http(source), path, **kw)
    return status, body


def status_of(m: Mesh, path: str = "/", source: str = FRONTEND, **kw: Any) -> int:
    return call(m, path, source, **kw)[0]


# --- the caller ------------------------------------------------------------------------------


def test_allow_by_principal_and_namespace_refuses_the_others_403(mesh: Mesh) -> None:
    install(mesh, policy("demo/frontend-only", "ALLOW",
                         rule({"principals": values(["exact", "cluster.local/ns/demo/sa/frontend"])})))
    assert call(mesh, source=FRONTEND)[0] == 200
    status, body = call(mesh, source=CART)
    assert status == 403 and body == DENIED
    install(mesh, policy("demo/shop", "ALLOW", rule({"namespaces": values(["exact", "shop"])})))
    assert status_of(mesh, source=CART) == 200 and status_of(mesh, source=FRONTEND) == 403
    install(mesh, policy("demo/sa", "ALLOW",
                         rule({"principals": values(["suffix", "/sa/cart"])}),
                         rule({"namespaces": nots(["prefix", "d"])})))
    assert status_of(mesh, source=CART) == 200 and status_of(mesh, source=FRONTEND) == 403


def test_ip_blocks_judge_the_calling_workloads_address(mesh: Mesh) -> None:
    # Its own address, carried by its node in the ClientHello (caller_ext.pxi), not the
    # address of the node that connected (127.0.0.1).
    install(mesh, policy("demo/ips", "ALLOW", rule({"ipBlocks": values(["cidr", "10.0.0.0/8"],
                                                                         ["cidr", "::1/128"])})))
    assert status_of(mesh) == 403
    install(mesh, policy("demo/ips", "ALLOW", rule({"ipBlocks": values(["cidr", "127.0.0.2/32"])})))
    assert status_of(mesh, source=FRONTEND) == 200 and status_of(mesh, source=CART) == 403
    install(mesh, policy("demo/ips", "DENY", rule({"ipBlocks": values(["cidr", "127.0.0.1/32"])})))
    assert status_of(mesh, source=FRONTEND) == 200 and status_of(mesh, source=CART) == 200
    install(mesh, policy("demo/ips", "DENY", rule({"ipBlocks": values(["cidr", "127.0.0.3/32"])})))
    assert status_of(mesh, source=FRONTEND) == 200 and status_of(mesh, source=CART) == 403


def test_an_ipv6_block_holds_no_ipv4_caller(mesh: Mesh) -> None:
    """As Envoy's CIDR ranges: an address and a block of another version never match,
    not even "::/0" (all IPv6) or "::ffff:0:0/96" an IPv4 caller, which the engine keeps
    as ::ffff:a.b.c.d; so a DENY of every caller outside IPv6 refuses IPv4 ones."""
    for block in ("::/0", "::ffff:0:0/96"):
        install(mesh, policy("demo/v6-only", "DENY", rule({"ipBlocks": nots(["cidr", block])})))
        assert status_of(mesh) == 403, block
        install(mesh, policy("demo/v6", "ALLOW", rule({"ipBlocks": values(["cidr", block])})))
        assert status_of(mesh) == 403, block
    install(mesh, policy("demo/v4", "ALLOW", rule({"ipBlocks": values(["cidr", "0.0.0.0/0"])})))
    assert status_of(mesh) == 200


def test_remote_ip_blocks_take_the_last_forwarded_for_entry(mesh: Mesh) -> None:
    """Envoy's rule at a proxy trusting no hop in front of it: the rightmost entry, the
    one the nearest proxy appended; the ones left of it are the client's to write, so a
    caller cannot slip past a DENY by putting another address first."""
    install(mesh, policy("demo/remote", "DENY",
                         rule({"remoteIpBlocks": values(["cidr", "203.0.113.0/24"],
                                                        ["cidr", "2001:db8::/32"])})))
    assert status_of(mesh, headers={"X-Forwarded-For": "10.1.1.1, 203.0.113.9"}) == 403
    assert status_of(mesh, headers={"X-Forwarded-For": " 2001:db8::5 "}) == 403
    assert status_of(mesh, headers={"X-Forwarded-For": "203.0.113.9, 10.1.1.1"}) == 200
    assert status_of(mesh, headers={"X-Forwarded-For": "203.0.113.9,"}) == 200  # no address
    assert status_of(mesh) == 200                   # none: the caller's own address


# --- the request -----------------------------------------------------------------------------


def test_hosts_methods_paths_and_ports(mesh: Mesh) -> None:
    app_port = mesh.apps["v1"].port
    install(mesh, policy("demo/ops", "ALLOW",
                         rule(operation={"hosts": values(["exact", "backend"]),
                                         "methods": values(["exact", "GET"], ["exact", "HEAD"]),
                                         "paths": values(["prefix", "/api/"], ["exact", "/"],
                                                         ["template", "/files/{*}/raw"]),
                                         "ports": values(["port", app_port])})))
    assert status_of(mesh, "/api/x") == 200 and status_of(mesh, "/") == 200
    assert status_of(mesh, "/api/x", headers={"Host": "BACKEND"}) == 200   # no case
    assert status_of(mesh, "/api/x", headers={"Host": "backend.demo"}) == 403
    assert status_of(mesh, "/api/x", method="POST", body=b"x") == 403
    assert status_of(mesh, "/apix") == 403
    assert status_of(mesh, "/files/a/raw") == 200
    assert status_of(mesh, "/files/a/b/raw") == 403 and status_of(mesh, "/files//raw") == 403
    install(mesh, policy("demo/ops", "ALLOW", rule(operation={"ports": values(["port", 1])})))
    assert status_of(mesh, "/") == 403
    install(mesh, policy("demo/ops", "ALLOW",
                         rule(operation={"paths": values(["template", "/v1/{**}"]),
                                         "methods": nots(["exact", "DELETE"])},
                              )))
    assert status_of(mesh, "/v1/") == 200 and status_of(mesh, "/v1/a/b/c") == 200
    assert status_of(mesh, "/v1") == 403 and status_of(mesh, "/v1/a", method="DELETE") == 403
    # Istio's own cases (authz_test.go, path-templating): "{**}" may be followed by literals.
    install(mesh, policy("demo/store", "ALLOW",
                         rule(operation={"paths": values(["template", "/store/{**}/cart"],
                                                         ["template", "/foo/{*}/bar/{**}"])})))
    for path, status in (("/store//cart", 200), ("/store/cart", 403), ("/store/foo/cart", 200),
                         ("/store/foo/bar/cart", 200), ("/foo/buzz/bar/bat/fuzz.txt", 200),
                         ("/foo/bar/bat.txt", 403), ("/foo/buzz/bar", 403)):
        assert status_of(mesh, path) == status, path
    install(mesh, policy("demo/ops", "ALLOW",
                         rule(operation={"paths": values(["suffix", ".png"], ["any"])})),
            policy("demo/no-png", "DENY", rule(operation={"paths": values(["suffix", ".png"])})))
    assert status_of(mesh, "/a.png?x=1") == 403 and status_of(mesh, "/a.pngx") == 200


def test_when_conditions_all_hold(mesh: Mesh) -> None:
    app_port = mesh.apps["v1"].port
    install(mesh, policy("demo/when", "ALLOW", rule(when=[
        {"key": "request.headers[x-team]", "values": [["exact", "blue"]], "not": None},
        {"key": "source.principal", "values": [["prefix", "cluster.local/"]], "not": None},
        {"key": "source.namespace", "values": [["exact", "demo"]], "not": None},
        {"key": "source.ip", "values": [["cidr", "127.0.0.0/8"]], "not": None},
        {"key": "remote.ip", "values": None, "not": [["cidr", "192.0.2.0/24"]]},
        {"key": "destination.ip", "values": [["cidr", "127.0.0.1/32"]], "not": None},
        {"key": "destination.port", "values": [["port", app_port]], "not": None},
        {"key": "connection.sni", "values": [["exact", V1]], "not": None},
    ])))
    assert status_of(mesh, headers={"X-Team": "blue"}) == 200
    assert status_of(mesh, headers={"X-Team": "red"}) == 403
    assert status_of(mesh) == 403                   # absent: no value matches
    assert status_of(mesh, headers={"X-Team": "blue"}, source=CART) == 403
    assert status_of(mesh, headers={"X-Team": "blue", "X-Forwarded-For": "192.0.2.1"}) == 403


def test_a_header_named_twice_is_matched_on_its_values_joined(mesh: Mesh) -> None:
    install(mesh, policy("demo/h", "ALLOW", rule(when=[
        {"key": "request.headers[x-role]", "values": [["exact", "a,b"]], "not": None}])))
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S,
                                  source_address=(FRONTEND, 0)) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nX-Role: a\r\nx-role: b\r\n"
                  b"Connection: close\r\n\r\n")
        assert recv_all(c).startswith(b"HTTP/1.1 200")


def test_a_header_named_twice_past_eight_kib_joined_is_still_judged(mesh: Mesh) -> None:
    """Envoy's matchers see every field joined, however long: a DENY by prefix matches
    "admin,<long>", and an ALLOW by notValues refuses it; the field is not taken as
    absent (which lets the caller past both)."""
    long = b"x-user: " + b"a" * 4200 + b"\r\n"

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)),
                                      timeout=TIMEOUT_S, source_address=(FRONTEND, 0)) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nx-user: admin\r\n" + long + long
                      + b"Connection: close\r\n\r\n")
            return recv_all(c)

    install(mesh, policy("demo/no-admin", "DENY", rule(when=[
        {"key": "request.headers[x-user]", "values": [["prefix", "admin"]], "not": None}])))
    assert send().startswith(b"HTTP/1.1 403")
    install(mesh, policy("demo/not-admin", "ALLOW", rule(when=[
        {"key": "request.headers[x-user]", "values": None, "not": [["prefix", "admin"]]}])))
    assert send().startswith(b"HTTP/1.1 403")


def _plain(m: Mesh, target: bytes, host: bytes = b"backend") -> bytes:
    """GET `target` from the app's node itself, in plaintext (its route PERMISSIVE)."""
    with socket.create_connection(("127.0.0.1", port_of(m.in_sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host
                  + b"\r\nConnection: close\r\n\r\n")
        return recv_all(c)


def test_a_plaintext_caller_has_no_principal_so_an_allow_by_principal_refuses_it(
        mesh: Mesh) -> None:
    t = mesh.inbound_table()
    t.set_inbound_mtls(V1, "PERMISSIVE", hosts=["backend"])
    t.set_inbound_authz(V1, {"policies": [policy(
        "demo/callers", "ALLOW", rule({"principals": values(["any"])}),
        rule(operation={"paths": values(["exact", "/health"])}))]})
    mesh.in_node.install(t)
    assert _plain(mesh, b"/").startswith(b"HTTP/1.1 403") and _plain(mesh, b"/").endswith(DENIED)
    assert _plain(mesh, b"/health").startswith(b"HTTP/1.1 200")
    out, _ = mesh.outbound(callers=True)
    mesh.out_node.install(out)
    assert status_of(mesh) == 200                   # over mutual TLS: a principal


def test_a_plaintext_caller_named_no_sni(mesh: Mesh) -> None:
    """connection.sni is the name the caller's ClientHello gave (Envoy's
    requested_server_name): a plaintext caller gave none, though its Host picked the
    route, so an ALLOW by SNI refuses it as Istio's sidecar does, and a DENY of every
    other SNI holds for it."""
    by_sni = {"key": "connection.sni", "values": [["exact", V1]], "not": None}
    for action, when in (("ALLOW", by_sni), ("DENY", {**by_sni, "values": None, "not": by_sni["values"]})):
        t = mesh.inbound_table()
        t.set_inbound_mtls(V1, "PERMISSIVE", hosts=["backend"])
        t.set_inbound_authz(V1, {"policies": [policy("demo/sni", action, rule(when=[when]))]})
        mesh.in_node.install(t)
        assert _plain(mesh, b"/").startswith(b"HTTP/1.1 403"), action
        out, _ = mesh.outbound(callers=True)
        mesh.out_node.install(out)
        assert status_of(mesh) == 200, action      # over mutual TLS: the route's SNI


# --- a route's two names --------------------------------------------------------------------


def named_twice(m: Mesh, sni: str, alias: str, *policies: dict[str, Any]) -> fe.RouteTable:
    """The app's node: route v1 named `sni` and answering to `alias` too (the name older
    nodes send), judged by `policies`."""
    t = fe.RouteTable()
    t.set_inbound(m.in_sock.fileno())
    t.add_inbound_route(sni, server_ctx(m.pki), "127.0.0.1", m.apps["v1"].port,
                        service="demo/backend-v1:http", identity=BACKEND_ID, protocol="HTTP",
                        version="v1", alias=alias)
    t.set_inbound_authz(sni, {"policies": list(policies)})
    return t


def calling_by(m: Mesh, sni: str) -> fe.RouteTable:
    """The caller's node, naming service "backend" `sni` in its ClientHello."""
    t = fe.RouteTable()
    backend = t.add_service("demo/backend:http", sni, [BACKEND_ID],
                            [("127.0.0.1", port_of(m.in_sock))])
    t.add_host("backend", backend, 80)
    t.set_outbound_http(m.http_sock.fileno(), None, None)
    t.add_source(FRONTEND, client_ctx(m.pki), FRONTEND_ID)
    t.add_source(CART, client_ctx(m.pki, m.pki.other_ns), OTHER_NS_ID)
    return t


def test_either_name_reaches_the_one_route_and_its_one_program(mesh: Mesh) -> None:
    """A node of the older version (V1) and a newer one (Istio's form) reach the same
    app and are judged by the same program, compiled once: its figures count both."""
    mesh.in_node.install(named_twice(mesh, ISTIO_V1, V1, policy(
        "demo/frontend", "ALLOW", rule({"namespaces": values(["exact", "demo"])}))))
    for sni in (ISTIO_V1, V1):
        mesh.out_node.install(calling_by(mesh, sni))
        status, body = call(mesh, source=FRONTEND)
        assert status == 200 and body["version"] == "v1", sni
        assert call(mesh, source=CART) == (403, DENIED), sni
    figures = {(f["policy"], f["action"]): f for f in mesh.in_node.engine.authz_stats()}
    assert figures[("demo/frontend", "ALLOW")]["allowed"] == 2
    assert figures[("", "ALLOW")]["denied"] == 2
    assert mesh.in_node.stats()["tls_unknown_sni"] == 0


def test_connection_sni_is_the_name_the_caller_sent(mesh: Mesh) -> None:
    """Envoy's requested_server_name: an ALLOW of Istio's names lets in the caller that
    sent one, not the one that sent the route's other name, and the other way round."""
    istio = rule(when=[{"key": "connection.sni", "values": [["suffix", ".backend-v1.demo.svc.cluster.local"]],
                        "not": None}])
    older = rule(when=[{"key": "connection.sni", "values": [["exact", V1]], "not": None}])
    for when, allowed in ((istio, ISTIO_V1), (older, V1)):
        mesh.in_node.install(named_twice(mesh, ISTIO_V1, V1, policy("demo/sni", "ALLOW", when)))
        for sni in (ISTIO_V1, V1):
            mesh.out_node.install(calling_by(mesh, sni))
            assert status_of(mesh) == (200 if sni == allowed else 403), (allowed, sni)


def test_an_open_connection_keeps_the_name_it_came_by_across_pushes(mesh: Mesh) -> None:
    """A kept-alive pair that came by the alias is carried to the next table's route
    by that name, and its connection.sni stays that name: also when the push makes it
    the route's own name, and the other the alias."""
    by_older = policy("demo/sni", "ALLOW", rule(when=[
        {"key": "connection.sni", "values": [["exact", V1]], "not": None}]))
    mesh.in_node.install(named_twice(mesh, ISTIO_V1, V1))
    mesh.out_node.install(calling_by(mesh, V1))
    conn = mesh.http(FRONTEND)
    assert request(conn, "/")[0] == 200
    opened = mesh.in_node.stats()["inbound_connections_opened"]
    for sni, alias in ((ISTIO_V1, V1), (V1, ISTIO_V1), (ISTIO_V1, V1)):
        mesh.in_node.install(named_twice(mesh, sni, alias, by_older))
        assert request(conn, "/")[0] == 200, (sni, alias)
    mesh.in_node.install(named_twice(mesh, ISTIO_V1, V1, policy("demo/sni", "ALLOW", rule(when=[
        {"key": "connection.sni", "values": [["exact", ISTIO_V1]], "not": None}]))))
    assert request(conn, "/")[0] == 403
    assert mesh.in_node.stats()["inbound_connections_opened"] == opened    # the same pair


def test_a_name_names_one_route_and_settings_take_the_route_by_its_sni(mesh: Mesh) -> None:
    t = named_twice(mesh, ISTIO_V1, V1)
    ctx = server_ctx(mesh.pki)
    with pytest.raises(ValueError, match="is the route's sni"):
        t.add_inbound_route("other.demo.svc", ctx, "127.0.0.1", 1, alias="Other.demo.svc")
    for sni, alias in ((V1, None), ("other.demo.svc", ISTIO_V1), ("other.demo.svc", V1.upper())):
        with pytest.raises(ValueError, match="already names a route"):
            t.add_inbound_route(sni, ctx, "127.0.0.1", 1, alias=alias)
    with pytest.raises(ValueError, match="no inbound route"):
        t.set_inbound_authz(V1, {"policies": []})


# --- evaluation ------------------------------------------------------------------------------


def test_deny_wins_over_allow_and_an_empty_allow_denies_all(mesh: Mesh) -> None:
    install(mesh, policy("demo/all", "ALLOW", rule()),
            policy("demo/no-admin", "DENY", rule(operation={"paths": values(["prefix", "/admin"])})))
    assert status_of(mesh, "/admin/x") == 403 and status_of(mesh, "/x") == 200
    install(mesh, policy("demo/nothing", "ALLOW"))
    assert status_of(mesh) == 403 and status_of(mesh, source=CART) == 403
    install(mesh)                                   # no policy: everything goes
    assert status_of(mesh) == 200


def test_audit_is_counted_never_enforced_and_decisions_are_figured(mesh: Mesh) -> None:
    install(mesh, policy("demo/audit", "AUDIT", rule()),
            policy("demo/no-cart", "DENY", rule({"namespaces": values(["exact", "shop"])})))
    assert status_of(mesh) == 200 and status_of(mesh) == 200
    assert status_of(mesh, source=CART) == 403
    figures = {(f["policy"], f["action"]): f for f in mesh.in_node.engine.authz_stats()}
    assert figures[("demo/audit", "AUDIT")]["audited"] == 3
    assert figures[("demo/no-cart", "DENY")]["denied"] == 1
    assert figures[("", "NONE")]["allowed"] == 2
    install(mesh, policy("demo/frontend", "ALLOW", rule({"namespaces": values(["exact", "demo"])})))
    assert status_of(mesh) == 200 and status_of(mesh, source=CART) == 403
    figures = {(f["policy"], f["action"]): f for f in mesh.in_node.engine.authz_stats()}
    assert figures[("demo/frontend", "ALLOW")]["allowed"] == 1
    assert figures[("", "ALLOW")]["denied"] == 1    # no ALLOW matched
    stats = mesh.in_node.stats()
    assert stats["authz_denied_http"] == 2 and stats["authz_audited"] == 3
    assert stats["authz_allowed"] == 3


# --- answers and connections -----------------------------------------------------------------


def test_a_denied_request_keeps_the_connection_and_one_with_a_body_closes_it(mesh: Mesh) -> None:
    install(mesh, policy("demo/no-secret", "DENY",
                         rule(operation={"paths": values(["prefix", "/secret"])})))
    conn = mesh.http(FRONTEND)
    status, heads, body = request(conn, "/secret")
    assert status == 403 and body == DENIED and heads.get("connection") != "close"
    assert request(conn, "/open")[0] == 200         # the same connection goes on
    assert request(conn, "/secret")[0] == 403 and request(conn, "/open")[0] == 200
    assert request(conn, "/secret", method="HEAD")[:3:2] == (403, b"")     # no body to HEAD
    assert request(conn, "/open")[0] == 200
    status, heads, _ = request(conn, "/secret", method="POST", body=b"x" * 5000)
    assert status == 403 and heads.get("connection") == "close"
    stats = mesh.in_node.stats()
    assert stats["authz_denied_http"] == 4
    assert mesh.in_node.engine.request_stats()[0]["codes"].get(403) == 4


def test_pipelined_requests_are_answered_in_order(mesh: Mesh) -> None:
    install(mesh, policy("demo/no-secret", "DENY",
                         rule(operation={"paths": values(["prefix", "/secret"])})))
    with socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S,
                                  source_address=(FRONTEND, 0)) as c:
        c.sendall(b"GET /slow/200 HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /secret HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /secret/2 HTTP/1.1\r\nHost: backend\r\n\r\n"
                  b"GET /two HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        answers = recv_all(c)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"200", b"403", b"200", b"403", b"200"]
    assert b'"/slow/200"' in answers and answers.index(b'"/one"') < answers.index(b'"/two"')


# --- path normalization ----------------------------------------------------------------------


def _raw(m: Mesh, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port_of(m.http_sock)), timeout=TIMEOUT_S,
                                  source_address=(FRONTEND, 0)) as c:
        c.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        return recv_all(c)


def test_paths_are_judged_and_forwarded_normalized(mesh: Mesh) -> None:
    no_private = policy("demo/no-private", "DENY",
                        rule(operation={"paths": values(["exact", "/private"])}))
    install(mesh, no_private)
    # Istio's own cases (authz_test.go TestAuthz_PathNormalization), and a few more.
    for target in ("/private", "/public/../private", "/public/./../private",
                   "/public/.././private", "/public/%2E%2E/private", "/public/%2e%2e/private",
                   "/public/%2E/%2E%2E/private", "/public/%2e/%2e%2e/private",
                   "/public/%2E%2E/%2E/private", "/public/%2e%2e/%2e/private",
                   "/x/y/../../private", "/%70rivate", "/private?x=1"):
        assert status_of(mesh, target) == 403, target
    assert status_of(mesh, "/public/../public") == 200
    status, body = call(mesh, "/a/./b/../%63?q=%2E%2E")
    assert status == 200 and body["path"] == "/a/c?q=%2E%2E"     # the query as it came
    assert call(mesh, "/private%2Fx")[1]["path"] == "/private%2Fx"  # BASE keeps %2F
    assert status_of(mesh, "//private") == 200      # BASE keeps "//"
    assert call(mesh, "/private/.")[1]["path"] == "/private/"   # RFC 3986 §5.2.4
    assert _raw(mesh, b"/x/%00").startswith(b"HTTP/1.1 400")


def test_an_absolute_form_target_with_no_path_is_judged_as_slash(mesh: Mesh) -> None:
    """`GET http://backend HTTP/1.1` (sent straight to the app's node, as a plaintext
    caller may) asks for "/" (RFC 9110 §4.2.3; Envoy's :path is "/"): a DENY of "/"
    holds for it, not only for the origin form."""
    t = mesh.inbound_table()
    t.set_inbound_mtls(V1, "PERMISSIVE", hosts=["backend"])
    t.set_inbound_authz(V1, {"policies": [policy(
        "demo/no-root", "DENY", rule(operation={"paths": values(["exact", "/"])}))]})
    mesh.in_node.install(t)
    for target in (b"/", b"http://backend", b"http://backend?x=1"):
        assert _plain(mesh, target).startswith(b"HTTP/1.1 403"), target
    assert _plain(mesh, b"http://backend/x").startswith(b"HTTP/1.1 200")


def test_an_absolute_form_target_reaches_the_app_as_judged(mesh: Mesh) -> None:
    """Judged by its target's authority and normalized path, an absolute-form request
    goes on in origin form with that path and Host (as Envoy's :authority and :path):
    an app reading the Host the caller wrote, or the raw path, would serve a host or
    path the policy denies."""
    t = mesh.inbound_table()
    t.set_inbound_mtls(V1, "PERMISSIVE", hosts=["backend"])
    t.set_inbound_authz(V1, {"policies": [policy(
        "demo/no-admin", "DENY", rule(operation={"hosts": values(["exact", "admin.backend"])}),
        rule(operation={"paths": values(["prefix", "/admin"])}))]})
    mesh.in_node.install(t)
    answer = _plain(mesh, b"http://Backend/x/../a?q=1", host=b"admin.backend")
    assert answer.startswith(b"HTTP/1.1 200")
    seen = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert seen["path"] == "/a?q=1" and ["host", "Backend"] in seen["headers"]
    assert _plain(mesh, b"http://backend/x/../admin").startswith(b"HTTP/1.1 403")


def test_merge_slashes_and_decode_and_merge_slashes(mesh: Mesh) -> None:
    no_private = policy("demo/no-private", "DENY",
                        rule(operation={"paths": values(["exact", "/private"])}))
    install(mesh, no_private, normalization="MERGE_SLASHES")
    assert status_of(mesh, "//private") == 403 and status_of(mesh, "/a/..//private") == 403
    assert status_of(mesh, "/a//..//private") == 200   # merged after: "/a/private"
    assert status_of(mesh, "/%2Fprivate") == 200
    assert call(mesh, "/x//y")[1]["path"] == "/x/y"
    install(mesh, no_private, normalization="DECODE_AND_MERGE_SLASHES")
    assert status_of(mesh, "/%2Fprivate") == 403 and status_of(mesh, "/a%2F..%5Cprivate") == 403
    install(mesh, no_private, normalization="NONE")
    assert status_of(mesh, "/public/../private") == 200


# --- opaque TCP ------------------------------------------------------------------------------


class TcpPair:
    """The caller's node relays TCP for two local workloads (a listener each) to the app's
    node, whose route "tcp.echo.demo.svc" (declared TCP) leads to an echo app."""

    SNI = "tcp.echo.demo.svc"

    def __init__(self, m: Mesh) -> None:
        self.m = m
        self.app = EchoApp()
        self.front = socket.create_server(("127.0.0.1", 0))
        self.cart = socket.create_server(("127.0.0.1", 0))
        for s in (self.front, self.cart):
            s.setblocking(False)

    def install(self, *policies: dict[str, Any]) -> None:
        self.judge(*policies)
        out = fe.RouteTable()
        svc = out.add_service("demo/echo:tcp", self.SNI, [BACKEND_ID],
                              [("127.0.0.1", port_of(self.m.in_sock))])
        out.add_outbound_tcp(self.front.fileno(), svc, client_ctx(self.m.pki))
        out.add_outbound_tcp(self.cart.fileno(), svc, client_ctx(self.m.pki, self.m.pki.other_ns))
        self.m.out_node.install(out)

    def judge(self, *policies: dict[str, Any]) -> None:
        """The app's node alone gets a table whose route judges by `policies` (none: no
        program, as when the last policy is deleted)."""
        t = self.m.inbound_table()
        t.add_inbound_route(self.SNI, server_ctx(self.m.pki), "127.0.0.1", self.app.port,
                            service="demo/echo:tcp", identity=BACKEND_ID, protocol="tcp")
        if policies:
            t.set_inbound_authz(self.SNI, {"policies": list(policies)})
        self.m.in_node.install(t)

    def exchange(self, caller: socket.socket) -> bytes:
        with socket.create_connection(("127.0.0.1", port_of(caller)), timeout=TIMEOUT_S) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            return recv_all(c)

    def close(self) -> None:
        self.front.close()
        self.cart.close()
        self.app.close()


@pytest.fixture
def tcp(mesh: Mesh) -> Any:
    pair = TcpPair(mesh)
    yield pair
    pair.close()


def test_a_tcp_port_denied_is_closed_before_the_app_sees_a_byte(mesh: Mesh, tcp: TcpPair) -> None:
    tcp.install(policy("demo/tcp", "ALLOW",
                       rule({"principals": values(["exact", "cluster.local/ns/demo/sa/frontend"])})))
    assert tcp.exchange(tcp.front).startswith(b"hello")
    assert tcp.app.connections == 1
    assert tcp.exchange(tcp.cart) == b""
    assert mesh.in_node.wait_stat("authz_denied_tcp")["authz_denied_tcp"] == 1
    assert tcp.app.connections == 1                # never connected for the refused one


def test_http_only_rules_on_tcp_follow_istio(mesh: Mesh, tcp: TcpPair) -> None:
    # ALLOW: a rule naming an HTTP-only field matches nothing on TCP (the rule is dropped).
    tcp.install(policy("demo/get", "ALLOW",
                       rule({"namespaces": values(["exact", "demo"])},
                            {"methods": values(["exact", "GET"])})))
    assert tcp.exchange(tcp.front) == b""
    # DENY: the HTTP-only field is left out, the rule wider (model.go checkError): the
    # frontend is denied whatever the method, the cart not.
    tcp.install(policy("demo/all", "ALLOW", rule()),
                policy("demo/no-get", "DENY",
                       rule({"namespaces": values(["exact", "demo"])},
                            {"methods": values(["exact", "GET"]), "paths": values(["exact", "/"])},
                            when=[{"key": "request.headers[x-a]", "values": [["any"]],
                                   "not": None}])))
    assert tcp.exchange(tcp.front) == b""
    assert tcp.exchange(tcp.cart).startswith(b"hello")
    assert tcp.app.connections == 1


# --- policy changes --------------------------------------------------------------------------


def test_a_new_policy_judges_the_next_request_on_open_connections(mesh: Mesh) -> None:
    install(mesh)
    conns = [mesh.http(FRONTEND) for _ in range(3)]
    assert all(request(c, "/x")[0] == 200 for c in conns)
    opened = mesh.in_node.stats()["inbound_connections_opened"]
    t = mesh.inbound_table()
    t.set_inbound_authz(V1, {"policies": [policy("demo/no-x", "DENY",
                                                 rule(operation={"paths": values(["exact", "/x"])}))]})
    mesh.in_node.install(t)
    assert all(request(c, "/x")[0] == 403 for c in conns)
    assert all(request(c, "/y")[0] == 200 for c in conns)
    mesh.in_node.install(mesh.inbound_table())      # the policy goes: allowed again
    assert all(request(c, "/x")[0] == 200 for c in conns)
    stats = mesh.in_node.stats()
    assert stats["inbound_connections_opened"] == opened      # none dropped, none new
    assert stats["pairs_moved"] >= 6


class Flowing:
    """An open opaque pair through one caller's listener, its echo read on a thread of its
    own, so that bytes can be in flight across a push without backing up."""

    def __init__(self, caller: socket.socket) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port_of(caller)), timeout=TIMEOUT_S)
        self.sent = bytearray()
        self.got = bytearray()
        self.end: str | None = None     # how the reading ended: "eof", "reset", "timeout"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                self.end = "reset"
                return
            except socket.timeout:
                self.end = "timeout"
                return
            if not chunk:
                self.end = "eof"
                return
            self.got += chunk

    def send(self, n: int) -> None:
        data = os.urandom(n)
        self.sock.sendall(data)
        self.sent += data

    def echoed(self) -> None:
        """Everything sent so far came back: the pair is judged and relaying."""
        wait_for(lambda: len(self.got) >= len(self.sent), what="the echo")

    def cut(self) -> bool:
        """Did the pair end from the node's side, nothing of the caller's wanted?"""
        self.reader.join(TIMEOUT_S)
        return self.end in ("eof", "reset")

    def finish(self) -> bytes:
        """The caller's end: all that came back (the echo, then the app's goodbye)."""
        self.sock.shutdown(socket.SHUT_WR)
        self.reader.join(TIMEOUT_S)
        assert self.end == "eof", self.end
        return bytes(self.got)

    def close(self) -> None:
        self.sock.close()
        self.reader.join(TIMEOUT_S)


@pytest.fixture
def flowing() -> Any:
    """Open pairs, by caller listener; closed after the test."""
    pairs: list[Flowing] = []

    def open_on(caller: socket.socket) -> Flowing:
        pair = Flowing(caller)
        pairs.append(pair)
        pair.send(5000)
        pair.echoed()
        return pair

    yield open_on
    for pair in pairs:
        pair.close()


NOT_SHOP = policy("demo/no-shop", "DENY", rule({"namespaces": values(["exact", "shop"])}))
CALLERS = policy("demo/callers", "ALLOW", rule({"namespaces": values(["exact", "demo"],
                                                                      ["exact", "shop"])}))


def test_a_deny_pushed_closes_the_open_tcp_pairs_of_the_callers_it_names(
        mesh: Mesh, tcp: TcpPair, flowing: Any) -> None:
    """An opaque pair is judged at accept and has no next request: a DENY pushed after
    it closes it at the swap (the app sees a reset, not an end), counted under the
    policy; the pair of a caller it does not name goes on, byte-exact across the push."""
    tcp.install(CALLERS)
    front, cart = flowing(tcp.front), flowing(tcp.cart)
    front.send(256 * 1024)              # (in flight as the table is swapped)
    tcp.judge(CALLERS, NOT_SHOP)
    assert cart.cut()
    front.send(256 * 1024)
    assert front.finish() == bytes(front.sent) + b"bye:app"
    stats = mesh.in_node.wait_stat("authz_revoked_tcp")
    assert stats["authz_revoked_tcp"] == 1 and stats["authz_denied_tcp"] == 1
    figures = {(f["policy"], f["action"]): f for f in mesh.in_node.engine.authz_stats()}
    assert figures[("demo/no-shop", "DENY")]["denied"] == 1
    assert wait_for(lambda: tcp.app.resets == 1, what="the app's side reset")
    assert tcp.app.eofs == 1                        # the frontend's, at its finish
    assert tcp.exchange(tcp.cart) == b""            # and refused at accept from now on
    assert tcp.app.connections == 2


def test_an_allow_narrowed_closes_the_open_tcp_pairs_it_no_longer_names(
        mesh: Mesh, tcp: TcpPair, flowing: Any) -> None:
    tcp.install(CALLERS)
    front, cart = flowing(tcp.front), flowing(tcp.cart)
    tcp.judge(policy("demo/callers", "ALLOW", rule({"namespaces": values(["exact", "demo"])})))
    assert cart.cut()
    front.send(64 * 1024)
    assert front.finish() == bytes(front.sent) + b"bye:app"
    figures = {(f["policy"], f["action"]): f for f in mesh.in_node.engine.authz_stats()}
    assert figures[("", "ALLOW")]["denied"] == 1   # no ALLOW matched it
    assert mesh.in_node.stats()["authz_revoked_tcp"] == 1


def test_a_policy_removed_or_pushed_again_closes_no_tcp_pair(
        mesh: Mesh, tcp: TcpPair, flowing: Any) -> None:
    """Pairs still allowed are untouched and not counted again (their decision was
    made at accept), whether the policy goes or comes back unchanged."""
    tcp.install(NOT_SHOP)
    assert tcp.exchange(tcp.cart) == b""            # refused at accept: not open
    front = flowing(tcp.front)
    allowed = mesh.in_node.stats()["authz_allowed"]
    tcp.judge()                                     # no policy: nothing to judge by
    front.send(64 * 1024)
    cart = flowing(tcp.cart)                        # allowed now
    tcp.judge(CALLERS)                              # both still allowed
    tcp.judge(CALLERS)
    for pair in (front, cart):
        pair.send(64 * 1024)
        assert pair.finish() == bytes(pair.sent) + b"bye:app"
    stats = mesh.in_node.stats()
    assert stats["authz_revoked_tcp"] == 0 and stats["authz_denied_tcp"] == 1
    assert stats["authz_allowed"] == allowed        # the cart's accept had no program
    assert tcp.app.resets == 0


# --- programs refused ------------------------------------------------------------------------


@pytest.mark.parametrize("program, names", [
    ({"policy": []}, "'policies' only"),
    ({"policies": [{"name": "a/b", "action": "CUSTOM", "rules": []}]}, "policies[0].action"),
    ({"policies": [{"name": "", "action": "ALLOW", "rules": []}]}, "policies[0].name"),
    ({"policies": [policy("a/b", "ALLOW", {"from": [{"users": values(["any"])}]})]},
     "policies[0].rules[0].from[0]: unknown field 'users'"),
    ({"policies": [policy("a/b", "DENY", rule({"ipBlocks": values(["cidr", "10.0.0.1/8"])}))]},
     "policies[0].rules[0].from[0].ipBlocks.values[0]"),
    ({"policies": [policy("a/b", "DENY", rule(operation={"ports": values(["port", 0])}))]},
     "policies[0].rules[0].to[0].ports.values[0]"),
    ({"policies": [policy("a/b", "DENY", rule(operation={"paths": values(["template", "/{**}/{*}"])}))]},
     "policies[0].rules[0].to[0].paths.values[0]"),
    ({"policies": [policy("a/b", "DENY", rule(operation={"methods": values(["regex", ".*"])}))]},
     "policies[0].rules[0].to[0].methods.values[0]"),
    ({"policies": [policy("a/b", "DENY", rule(when=[{"key": "request.auth.claims[iss]",
                                                      "values": [["any"]], "not": None}]))]},
     "policies[0].rules[0].when[0].key"),
    ({"policies": [policy("a/b", "DENY", rule(when=[{"key": "request.headers[X-A]",
                                                      "values": [["any"]], "not": None}]))]},
     "lowercase"),
    ({"policies": [policy("a/b", "DENY", {"from": None, "to": None, "when": [], "extra": 1})]},
     "policies[0].rules[0]: unknown key"),
])
def test_malformed_programs_are_refused_naming_the_part(mesh: Mesh, program: Any, names: str) -> None:
    t = mesh.inbound_table()
    good = {"policies": [policy("demo/none", "ALLOW")]}
    t.set_inbound_authz(V1, good)
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("]", r"\]")
                       .replace(".", r"\.").replace("*", r"\*").replace("{", r"\{")):
        t.set_inbound_authz(V1, program)
    mesh.in_node.install(t)
    out, _ = mesh.outbound(callers=True)
    mesh.out_node.install(out)
    assert status_of(mesh) == 403                   # the good program stayed


def test_a_route_not_known_is_refused(mesh: Mesh) -> None:
    t = mesh.inbound_table()
    with pytest.raises(ValueError, match="no inbound route"):
        t.set_inbound_authz("nowhere.demo.svc", {"policies": []})


def _paths(n: int, length: int = 8) -> dict[str, Any]:
    """A policy denying `n` distinct paths of `length` bytes each."""
    return policy("demo/many", "DENY", rule(operation={"paths": values(
        *(["exact", f"/{i:0{length - 1}d}"] for i in range(n)))}))


@pytest.mark.parametrize("program, limit", [
    ({"policies": [policy(f"demo/p{i}", "AUDIT") for i in range(fe.AUTHZ_MAX_POLICIES + 1)]},
     "4097 policies, over the limit of 4096 (AUTHZ_MAX_POLICIES)"),
    ({"policies": [_paths(fe.AUTHZ_MAX_LEAVES + 1)]},
     "65537 values, over the limit of 65536 (AUTHZ_MAX_LEAVES)"),
    ({"policies": [policy("demo/rules", "DENY", *[rule() for _ in range(fe.AUTHZ_MAX_LEAVES + 1)])]},
     "65537 rules, over the limit of 65536 (AUTHZ_MAX_LEAVES)"),
    ({"policies": [_paths(1100, 4000)]},
     "bytes of names and values, over the limit of 4194304 (AUTHZ_MAX_TEXT_BYTES)"),
])
def test_a_program_over_its_bounds_is_refused_and_the_route_keeps_its_own(
        mesh: Mesh, program: dict[str, Any], limit: str) -> None:
    """What control may hand the engine is bounded (AUTHZ_MAX_*): a program over a bound
    is refused by name, as a malformed one, and the route keeps the program it had."""
    t = mesh.inbound_table()
    t.set_inbound_authz(V1, {"policies": [_paths(1)]})
    with pytest.raises(ValueError, match=re.escape(limit)):
        t.set_inbound_authz(V1, program)
    with pytest.raises(ValueError, match=re.escape(limit)):
        fe.check_authz_program(program)
    mesh.in_node.install(t)
    out, _ = mesh.outbound(callers=True)
    mesh.out_node.install(out)
    assert status_of(mesh, "/0000000") == 403 and status_of(mesh, "/0000001") == 200


def test_a_program_at_its_bounds_is_taken(mesh: Mesh) -> None:
    fe.check_authz_program({"policies": [policy(f"demo/p{i}", "AUDIT")
                                         for i in range(fe.AUTHZ_MAX_POLICIES)]})
    t = mesh.inbound_table()
    t.set_inbound_authz(V1, {"policies": [_paths(fe.AUTHZ_MAX_LEAVES)]})
    mesh.in_node.install(t)
    out, _ = mesh.outbound(callers=True)
    mesh.out_node.install(out)
    assert status_of(mesh, f"/{fe.AUTHZ_MAX_LEAVES - 1:07d}") == 403
    assert status_of(mesh, f"/{fe.AUTHZ_MAX_LEAVES:07d}") == 200
