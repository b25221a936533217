"""Tests for fastpath.engine's URLRewrite and RequestRedirect steps (route_filters.pxi) and
a backendRef's own header modifiers, byte by byte through real engines.

Why: these steps write the client's bytes (its path, its Host) into a head the app trusts
or into a Location the client follows; each edge here is one a hostile or careless
client reaches: a Host that is not a host, a path at the request-line limit, a head that
fills its buffer, an absolute-form target, a query, percent-encodings. The two "nodes"
and the echo apps are test_engine_routes.py's.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import pytest

from fastpath import engine as fe

from enginekit import TIMEOUT_S, listener, port_of, recv_all
from test_engine_routes import (VERSIONS, Mesh, client_ctx, mesh, mesh_pki,  # noqa: F401
                                request, routed_to, send)
from test_engine_mirror import (MIRROR_ANSWER, Mirrored, Recorder, mirrored, shadow,  # noqa: F401
                                spanless, wait_for)
from test_engine_routes_attack import exchange

pytestmark = pytest.mark.timeout(60)


def rules(m: Mesh, *specs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Requests to "backend" take the first of `specs`, (add_route_match options,
    add_route_rule options), that holds; each rule goes to v1 unless it says."""
    t, ix = m.outbound()
    s = t.add_route_set(ix["backend"])
    for i, (match, rule) in enumerate(specs):
        backends = rule.pop("backends", [(ix["v1"], 1)])
        t.add_route_match(s, t.add_route_rule(f"demo/r#{i}", backends, **rule), **match)
    m.out_node.install(t)


def redirect_of(answer: bytes) -> tuple[int, str | None]:
    """The status and Location of one answer."""
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in fields.items()}.get("location")


def get(m: Mesh, target: str, host: str = "backend", port: int | None = None) -> bytes:
    sock = port_of(m.http_sock) if port is None else port
    c = socket.create_connection(("127.0.0.1", sock), timeout=TIMEOUT_S)
    with c:
        c.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return recv_all(c)


def prefix(value: str, replacement: str) -> dict[str, Any]:
    return {"path": ("ReplacePrefixMatch", replacement), "prefix": value}


# --- RequestRedirect ---------------------------------------------------------------------------


def test_a_redirect_is_answered_by_the_node_with_the_location_the_spec_builds(mesh: Mesh) -> None:
    rules(mesh,
          ({"path": ("PathPrefix", "/status")}, {"backends": [], "redirect": {"status": 301}}),
          ({"path": ("PathPrefix", "/host")}, {"backends": [], "redirect": {
              "hostname": "example.org"}}),
          ({"path": ("PathPrefix", "/scheme")}, {"backends": [], "redirect": {
              "scheme": "https", "status": 308}}),
          ({"path": ("PathPrefix", "/port")}, {"backends": [], "redirect": {"port": 8083}}),
          ({"path": ("PathPrefix", "/old")}, {"backends": [], "redirect": prefix("/old", "/new")}),
          ({"path": ("PathPrefix", "/strip")}, {"backends": [], "redirect": prefix("/strip", "")}),
          ({"path": ("PathPrefix", "/full")}, {"backends": [], "redirect": {
              "path": ("ReplaceFullPath", "/whole"), "status": 307}}),
          ({}, {"backends": [], "redirect": {}}))
    assert redirect_of(get(mesh, "/status/x")) == (301, "http://backend/status/x")
    assert redirect_of(get(mesh, "/host?q=1&r")) == (302, "http://example.org/host?q=1&r")
    assert redirect_of(get(mesh, "/scheme")) == (308, "https://backend/scheme")
    assert redirect_of(get(mesh, "/port")) == (302, "http://backend:8083/port")
    assert redirect_of(get(mesh, "/old/a/b?x=%2F")) == (302, "http://backend/new/a/b?x=%2F")
    assert redirect_of(get(mesh, "/old/")) == (302, "http://backend/new/")
    assert redirect_of(get(mesh, "/old")) == (302, "http://backend/new")
    assert redirect_of(get(mesh, "/strip")) == (302, "http://backend/")
    assert redirect_of(get(mesh, "/strip/s%20t")) == (302, "http://backend/s%20t")
    assert redirect_of(get(mesh, "/full/a?k=v")) == (307, "http://backend/whole?k=v")
    assert redirect_of(get(mesh, "/a%2fb", host="Backend:80")) == (302, "http://backend/a%2fb")
    stats = mesh.out_node.stats()
    assert stats["route_redirects"] == 11
    assert stats["http_bad_request"] == 0 and stats["http_routed"] == 0   # no backend asked


def test_a_redirect_of_an_absolute_form_request_takes_its_target_authority(mesh: Mesh) -> None:
    rules(mesh, ({}, {"backends": [], "redirect": {}}))
    answer = exchange(mesh, b"GET http://backend.demo:80/abs?x=1 HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
    assert redirect_of(answer) == (302, "http://backend.demo/abs?x=1")
    answer = exchange(mesh, b"GET http://backend?q HTTP/1.1\r\nHost: backend\r\n\r\n")
    assert redirect_of(answer) == (302, "http://backend/?q")


@pytest.mark.parametrize("host", ["evil.com@backend", "backend/x", "[::1", "a%0d%0ab",
                                  "ba\tckend", "[fe80::1%25eth0]"])
def test_a_host_a_location_cannot_carry_is_answered_400_not_redirected(
        mesh: Mesh, host: str) -> None:
    """Through a service port's own listener, where Host does not route: whatever the
    client writes there reaches the redirect."""
    t, ix = mesh.outbound()
    fixed = listener()
    try:
        t.add_outbound_tcp(fixed.fileno(), ix["backend"], client_ctx(mesh.pki), protocol="http")
        s = t.add_route_set(ix["backend"])
        t.add_route_match(s, t.add_route_rule("demo/r#0", [], redirect={}))
        mesh.out_node.install(t)
        status, location = redirect_of(get(mesh, "/p", host=host, port=port_of(fixed)))
        assert (status, location) == (400, None)
        assert redirect_of(get(mesh, "/p", host="Elsewhere.Example:99",
                               port=port_of(fixed))) == (302, "http://elsewhere.example/p")
    finally:
        mesh.out_node.install(mesh.outbound()[0])
        fixed.close()


def test_a_location_over_its_bound_is_answered_414(mesh: Mesh) -> None:
    rules(mesh, ({}, {"backends": [], "redirect": {"hostname": "h" * 60}}))
    long = "/" + "a" * 8150             # within the request-line limit, not in a Location
    status, location = redirect_of(get(mesh, long))
    assert (status, location) == (414, None)
    assert redirect_of(get(mesh, "/short"))[0] == 302


# --- URLRewrite --------------------------------------------------------------------------------


SPEC_TABLE = [  # HTTPPathModifier.ReplacePrefixMatch: (path, prefix, replacement, becomes)
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"), ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"), ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"), ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"), ("/foo/", "/foo", "", "/"), ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"), ("/foo", "/foo", "/", "/"),
]


@pytest.mark.parametrize("path,match,replacement,becomes", SPEC_TABLE)
def test_prefix_rewrite_follows_the_spec_table(mesh: Mesh, path: str, match: str,
                                               replacement: str, becomes: str) -> None:
    rules(mesh, ({"path": ("PathPrefix", match)}, {"rewrite": prefix(match, replacement)}))
    status, _, body = send(mesh, path)
    assert status == 200 and body["path"] == becomes
    assert mesh.out_node.stats()["route_rewrites"] == 1


def test_rewrites_keep_the_query_and_percent_encodings_as_sent(mesh: Mesh) -> None:
    rules(mesh,
          ({"path": ("PathPrefix", "/p")}, {"rewrite": prefix("/p", "/q")}),
          ({"path": ("PathPrefix", "/full")}, {"rewrite": {"path": ("ReplaceFullPath", "/one")}}),
          ({"path": ("PathPrefix", "/host")}, {"rewrite": {"hostname": "rewritten.example"}}))
    # (Escapes of reserved characters: the ones the node's path normalization keeps.)
    assert send(mesh, "/p/%3a%40/a%2Fb?x=/p/&y")[2]["path"] == "/q/%3a%40/a%2Fb?x=/p/&y"
    assert send(mesh, "/full/x/y?k=%20")[2]["path"] == "/one?k=%20"
    assert send(mesh, "/full")[2]["path"] == "/one"
    status, _, body = send(mesh, "/host/z", headers={"Host": "backend:80"})
    assert status == 200 and body["path"] == "/host/z"
    assert [k for k, v in body["headers"] if k == "host"] == ["host"]
    assert ["host", "rewritten.example"] in body["headers"]


def test_a_rewrite_of_an_absolute_form_request_and_pipelined_ones(mesh: Mesh) -> None:
    rules(mesh, ({"path": ("PathPrefix", "/api")}, {"rewrite": {
        "hostname": "app.internal", **prefix("/api", "/v2")}}), ({}, {}))
    answers = exchange(mesh, b"GET http://backend/api/users?id=7 HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /api HTTP/1.1\r\nHost: backend\r\n\r\n"
                             b"GET /other HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
    assert answers.count(b"HTTP/1.1 200") == 3
    assert b'"path": "/v2/users?id=7"' in answers and b'"path": "/v2"' in answers
    assert b'"path": "/other"' in answers
    assert answers.count(b'["host", "app.internal"]') == 2


def test_a_rewrite_is_bounded_by_the_room_kept_for_it(mesh: Mesh) -> None:
    """What a rule's rewrite and header edits add is at most ROUTE_GROW_MAX, refused at
    install beyond it; a head that leaves it no room is refused 431, never overrun."""
    t, ix = mesh.outbound()
    with pytest.raises(ValueError, match="add more than %d bytes" % fe.ROUTE_GROW_MAX):
        t.add_route_rule("demo/r#0", [(ix["v1"], 1)],
                         rewrite={"path": ("ReplaceFullPath", "/" + "a" * 3000)},
                         request_headers={"add": [("X-Pad", "b" * 1100)]})
    grow = "/" + "g" * 3900
    rules(mesh, ({}, {"rewrite": {"path": ("ReplaceFullPath", grow), "hostname": "h.example"}}))
    status, _, body = send(mesh, "/x", headers={"X-Fill": "f" * 8000})
    assert status == 200 and body["path"] == grow
    # A head at the buffer's edge: the room kept for the rewrite is not the client's.
    c = socket.create_connection(("127.0.0.1", port_of(mesh.http_sock)), timeout=TIMEOUT_S)
    with c:
        c.sendall(b"GET /x HTTP/1.1\r\nHost: backend\r\n"
                  + b"".join(b"X-F%d: %s\r\n" % (i, b"f" * 8000) for i in range(2)) + b"\r\n")
        answer = recv_all(c)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:80]
    assert routed_to(mesh, "/after") == "v1"      # the node goes on


# --- backendRef filters ------------------------------------------------------------------------


def test_a_backend_refs_header_modifiers_apply_only_when_it_is_chosen(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    both = {"set": [("X-Rule", "rule"), ("X-Mine", "rule")], "add": [("X-Both", "rule")]}
    rule = t.add_route_rule("demo/r#0", [
        (ix["v1"], 1, {"set": [("X-Mine", "v1")], "add": [("X-Both", "v1")]},
         {"add": [("X-Served", "v1")]}),
        (ix["v2"], 1, {"remove": ["X-Rule"]}, None)],
        request_headers=both, response_headers={"set": [("X-Route", "r0")]})
    t.add_route_match(s, rule)
    mesh.out_node.install(t)
    seen = {}
    conn = mesh.http()
    for _ in range(40):
        status, heads, body = request(conn)
        assert status == 200 and heads["x-route"] == "r0"
        got = body["headers"]
        seen[body["version"]] = (sorted(h for h in got if h[0] in ("x-both", "x-mine", "x-rule")),
                                 heads.get("x-served"))
    assert seen["v1"] == ([["x-both", "rule"], ["x-both", "v1"], ["x-mine", "v1"],
                           ["x-rule", "rule"]], "v1")
    assert seen["v2"] == ([["x-both", "rule"], ["x-mine", "rule"]], None)
    assert set(seen) == set(VERSIONS)


# --- refused at install ------------------------------------------------------------------------


@pytest.mark.parametrize("option,value,message", [
    ("redirect", {"hostname": "a\r\nX-Evil: 1"}, "not a hostname"),
    ("redirect", {"path": ("ReplaceFullPath", "/a\r\nX-Evil: 1")}, "a path starts with /"),
    ("rewrite", {"path": ("ReplaceFullPath", "/a b")}, "a path starts with /"),
    ("rewrite", {"hostname": "Upper.example"}, "not a hostname"),
    ("rewrite", {"path": ("ReplacePrefixMatch", "/x"), "prefix": "/p\n"}, "a path starts"),
    ("rewrite", {"path": ("ReplacePrefixMatch", "/x")}, "needs the rule's PathPrefix"),
    ("rewrite", {"path": ("ReplaceFullPath", "/x?y=1")}, "a path starts with /"),
    ("redirect", {"status": 200}, "status 200"),
    ("redirect", {"scheme": "ftp"}, "scheme 'ftp'"),
    ("redirect", {"port": 70000}, "port 70000"),
    ("redirect", {"hostnam": "x"}, "'hostnam' is not one of"),
])
def test_bad_filter_values_are_refused_at_install_naming_the_rule(
        mesh: Mesh, option: str, value: dict[str, Any], message: str) -> None:
    t, ix = mesh.outbound()
    with pytest.raises(ValueError, match=message) as info:
        t.add_route_rule("demo/r#0", [(ix["v1"], 1)], **{option: value})
    assert "demo/r#0" in str(info.value)


def test_a_backend_refs_edits_of_fields_the_node_owns_are_refused(mesh: Mesh) -> None:
    t, ix = mesh.outbound()
    with pytest.raises(ValueError, match="may not be edited"):
        t.add_route_rule("demo/r#0", [(ix["v1"], 1, {"set": [("Host", "x")]}, None)])
    with pytest.raises(ValueError, match="control characters"):
        t.add_route_rule("demo/r#0", [(ix["v1"], 1, None, {"set": [("X-A", "b\r\nc: d")]})])


def test_a_request_to_a_backend_with_its_own_filters_is_mirrored_as_edited_for_it(
        mirrored: Callable[..., Mirrored]) -> None:
    """The rule as that backend is chosen is another compiled rule (its edits merged):
    it carries the rule's RequestMirror filters too."""
    m = mirrored(Recorder(MIRROR_ANSWER))
    t = m.table
    s = t.add_route_set(m.ix["backend"])
    rule = t.add_route_rule("demo/r#0", [(m.ix["rec"], 1, {"set": [("x-backend", "rec")]}, None)])
    t.add_route_mirror(rule, m.ix["mirror0"])
    t.add_route_match(s, rule)
    m.mesh.out_node.install(t)
    assert request(m.mesh.http(), "/p")[:3:2] == (200, b"real")
    wait_for(lambda: len(m.mirrors[0].requests) == 1, "the copy")
    assert b"\r\nx-backend: rec\r\n" in m.real.requests[0]
    assert [spanless(shadow(r)) for r in m.real.requests] == [
        spanless(r) for r in m.mirrors[0].requests]
