"""Tests for fastpath.engine's path normalization (normalize.pxi): every HTTP request's
path normalized in its head by the table's mode (Istio's meshConfig.pathNormalization,
Envoy's normalize_path, merge_slashes, path_with_escaped_slashes_action), on both sides
of a node, whether or not an AuthorizationPolicy applies: what the app receives, what
an HTTPRoute matches, the 400 for a path Envoy's normalization fails on, and what
Envoy leaves alone; and the compiled normalization held to the plain-Python reference
(fastpath.normalize_ref) on generated paths.

The mesh is test_engine_routes.py's: the caller's node (HTTP outbound listener, service
"backend" on route v1) and the app's node (inbound, one route per version, each app
reporting the path it received). Real engines and sockets.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import engine as fe
from fastpath import normalize_ref as ref

from enginekit import TIMEOUT_S, port_of, recv_all
from test_engine_routes import Mesh, mesh, mesh_pki  # noqa: F401

pytestmark = pytest.mark.timeout(120)

V1 = "http.backend-v1.demo.svc"
MODES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
DENY_PRIVATE = {"name": "demo/no-private", "action": "DENY",
                "rules": [{"from": None, "to": [{"paths": {"values": [["exact", "/private"]],
                                                           "not": None}}], "when": []}]}

# target -> the path the app receives under NONE, BASE, MERGE_SLASHES,
# DECODE_AND_MERGE_SLASHES (Istio's normalization table, and Envoy's behaviour).
RECEIVED = {
    "/a.b/c~d-e_f/;x=1,y!": ["/a.b/c~d-e_f/;x=1,y!"] * 4,          # nothing to change
    "/a/./b/../c": ["/a/./b/../c", "/a/c", "/a/c", "/a/c"],
    "/%61/%2e%2E/x/%7E": ["/%61/%2e%2E/x/%7E", "/x/~", "/x/~", "/x/~"],  # unreserved decoded
    "/a//b": ["/a//b", "/a//b", "/a/b", "/a/b"],
    "/a%2Fb%5cc": ["/a%2Fb%5cc", "/a%2Fb%5cc", "/a%2Fb%5cc", "/a/b/c"],
    "/a\\b": ["/a\\b", "/a/b", "/a/b", "/a/b"],                     # a backslash is a slash
    "/x/a/..//b": ["/x/a/..//b", "/x//b", "/x/b", "/x/b"],          # merged after
    "/a/../b?q=/../%2e&r=//": ["/a/../b?q=/../%2e&r=//"] + ["/b?q=/../%2e&r=//"] * 3,
    "/../../a": ["/../../a", "/a", "/a", "/a"],                     # none above the root
    "/a/%zz/%4/%": ["/a/%zz/%4/%"] * 4,                             # not escapes: kept
    "/x/.": ["/x/.", "/x/", "/x/", "/x/"],                          # RFC 3986 §5.2.4
}


def install(m: Mesh, inbound: str = "BASE", outbound: str = "BASE",
            program: dict[str, Any] | None = None) -> None:
    """The app's node normalizing by `inbound` (route v1 judged by `program`), the
    caller's by `outbound`."""
    t = m.inbound_table()
    t.set_path_normalization(inbound)
    if program is not None:
        t.set_inbound_authz(V1, program)
    m.in_node.install(t)
    out, _ = m.outbound()
    out.set_path_normalization(outbound)
    m.out_node.install(out)


def exchange(sock: socket.socket, *targets: bytes) -> list[tuple[int, Any]]:
    """GET each of `targets` on one connection, pipelined, the last closing it: each
    answer's status and what its app received (None: the node answered)."""
    heads = [b"GET " + target + b" HTTP/1.1\r\nHost: backend\r\n"
             + (b"Connection: close\r\n" if i == len(targets) - 1 else b"") + b"\r\n"
             for i, target in enumerate(targets)]
    with socket.create_connection(("127.0.0.1", port_of(sock)), timeout=TIMEOUT_S) as c:
        c.sendall(b"".join(heads))
        data = recv_all(c)
    out = []
    at = 0
    while (m := _ANSWER.match(data, at)) is not None:
        length = int(re.search(rb"content-length: (\d+)", m.group(2), re.I).group(1))
        body = data[m.end():m.end() + length]
        out.append((int(m.group(1)), json.loads(body) if body.startswith(b"{") else None))
        at = m.end() + length
    assert at == len(data), data[at:]
    return out


_ANSWER = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n(.*?)\r\n\r\n", re.S)


def paths(answers: list[tuple[int, Any]]) -> list[tuple[int, str | None]]:
    return [(status, seen and seen["path"]) for status, seen in answers]


def received(m: Mesh, target: str) -> tuple[int, str | None]:
    """Through both nodes: the status and the path the app received."""
    return paths(exchange(m.http_sock, target.encode()))[0]


# --- what the app receives ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_app_receives_the_path_normalized_by_the_mode_with_no_policy(
        mesh: Mesh, mode: str) -> None:
    """No AuthorizationPolicy on the route: Envoy's connection manager normalizes every
    request it carries all the same (Istio sets it on every HTTP listener)."""
    install(mesh, mode, mode)
    for target, paths in RECEIVED.items():
        assert received(mesh, target) == (200, paths[MODES.index(mode)]), target


@pytest.mark.parametrize("mode", MODES)
def test_a_policy_judges_the_path_the_app_receives(mesh: Mesh, mode: str) -> None:
    install(mesh, mode, mode, {"policies": [DENY_PRIVATE]})
    for target, paths in RECEIVED.items():
        assert received(mesh, target) == (200, paths[MODES.index(mode)]), target
    denied = {"NONE": ["/private", "/private?x"],
              "BASE": ["/a/../private", "/%70rivate", "/a\\..\\private"],
              "MERGE_SLASHES": ["//private", "/a/..//private"],
              "DECODE_AND_MERGE_SLASHES": ["/%2Fprivate", "/a%2F..%5Cprivate"]}
    for m in MODES[:MODES.index(mode) + 1]:
        for target in denied[m]:
            assert received(mesh, target)[0] == 403, target
    for target in sum((denied[m] for m in MODES[MODES.index(mode) + 1:]), []):
        assert received(mesh, target)[0] == 200, target


def test_each_side_normalizes_on_its_own(mesh: Mesh) -> None:
    """The caller's node (Istio: the outbound listeners' HCM too) and the app's node each
    apply their table's mode: either one alone is enough for the app."""
    install(mesh, inbound="NONE", outbound="MERGE_SLASHES")
    assert received(mesh, "/x/a/..//b") == (200, "/x/b")
    install(mesh, inbound="MERGE_SLASHES", outbound="NONE")
    assert received(mesh, "/x/a/..//b") == (200, "/x/b")
    install(mesh, inbound="NONE", outbound="NONE")
    assert received(mesh, "/x/a/..//b") == (200, "/x/a/..//b")


def test_a_plaintext_caller_reaches_the_app_normalized(mesh: Mesh) -> None:
    """Straight to the app's node (PERMISSIVE), with no caller's node in front."""
    t = mesh.inbound_table()
    t.set_inbound_mtls(V1, "PERMISSIVE", hosts=["backend"])
    mesh.in_node.install(t)
    assert paths(exchange(mesh.in_sock, b"/a/./b/../c", b"/x/%2e%2e/y")) == [
        (200, "/a/c"), (200, "/y")]


def test_nested_escapes_are_not_made_by_decoding(mesh: Mesh) -> None:
    """"%%34%31" decoded once would be "%41", an "A" to an app that decodes once more:
    Envoy escapes the '%' ("%25"), the engine keeps the escape that would complete it,
    so the path does not grow and both nodes leave it as the first did."""
    install(mesh)
    assert received(mesh, "/%%34%31") == (200, "/%%341")
    assert received(mesh, "/%4%31/%6%31") == (200, "/%4%31/%6%31")
    assert received(mesh, "/%%2e%2e") == (200, "/%..")     # ('.' is no hex digit)


# --- routing --------------------------------------------------------------------------------


def test_routes_match_the_normalized_path(mesh: Mesh) -> None:
    """An HTTPRoute's match sees the path after normalization (Istio: the route match
    comes after the connection manager's), on a first request and on those after it."""
    install(mesh)
    t, ix = mesh.outbound()
    s = t.add_route_set(ix["backend"])
    t.add_route_match(s, t.add_route_rule("demo/r#0", [(ix["v2"], 1)]), path=("Exact", "/v2"))
    t.add_route_match(s, t.add_route_rule("demo/r#1", [(ix["v1"], 1)]))
    mesh.out_node.install(t)
    seen = exchange(mesh.http_sock, b"/x/../v2", b"/v2/.", b"/%76%32", b"/v1/../v2")
    assert [(status, body["version"], body["path"]) for status, body in seen] == [
        (200, "v2", "/v2"), (200, "v1", "/v2/"), (200, "v2", "/v2"), (200, "v2", "/v2")]
    t.set_path_normalization("NONE")
    mesh.out_node.install(t)
    seen = exchange(mesh.http_sock, b"/x/../v2")    # the app's node normalizes it
    assert [(status, body["version"], body["path"]) for status, body in seen] == [
        (200, "v1", "/v2")]


# --- refused --------------------------------------------------------------------------------


def test_a_path_with_nul_is_answered_400_and_the_connection_goes_on(mesh: Mesh) -> None:
    """Envoy's path canonicalizer fails on %00: 400, no body, the connection kept for
    the next request (a pipelined one waits for the answers before it). A first
    request gets its 400 with the connection's end, as the engine's own answers do."""
    install(mesh, program={"policies": [DENY_PRIVATE]})
    before = mesh.out_node.stats()["http_bad_request"]
    seen = exchange(mesh.http_sock, b"/slow/100", b"/x/%00", b"/y/../private", b"/two")
    assert paths(seen) == [(200, "/slow/100"), (400, None), (403, None), (200, "/two")]
    assert exchange(mesh.http_sock, b"/%00/..", b"/never") == [(400, None)]
    assert mesh.out_node.stats()["http_bad_request"] == before + 2
    t = mesh.inbound_table()                        # the app's node, on its own
    t.set_inbound_mtls(V1, "PERMISSIVE", hosts=["backend"])
    mesh.in_node.install(t)
    assert paths(exchange(mesh.in_sock, b"/one", b"/%00", b"/three")) == [
        (200, "/one"), (400, None), (200, "/three")]


def test_none_passes_nul_on(mesh: Mesh) -> None:
    install(mesh, "NONE", "NONE")
    assert received(mesh, "/x/%00") == (200, "/x/%00")


def test_a_mode_not_known_is_refused() -> None:
    t = fe.RouteTable()
    for mode in ("DEFAULT", "DECODE", "base", ""):
        with pytest.raises(ValueError, match="path normalization must be one of"):
            t.set_path_normalization(mode)


# --- the compiled normalization against the reference ----------------------------------------


# What normalization looks at, and a few bytes it does not: paths that mostly do something.
_PIECES = ["/", "//", ".", "..", "/./", "/../", "\\", "%", "%2e", "%2E", "%2f", "%2F", "%5c",
           "%00", "%25", "%41", "%7e", "%3a", "%zz", "%4", "a", "b", "4", "1", "e", "?", "~"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=24), st.sampled_from(ref.MODES))
def test_the_engine_normalizes_as_the_reference(pieces: list[str], mode: str) -> None:
    target = "/" + "".join(pieces)
    try:
        expected: bytes | None = ref.normalize(target, mode).encode("latin-1")
    except ref.Refused:
        expected = None
    assert fe.normalize_path(target.encode("latin-1"), mode) == expected, (target, mode)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
       st.sampled_from(ref.MODES))
def test_any_visible_target_normalizes_as_the_reference(text: str, mode: str) -> None:
    try:
        expected: bytes | None = ref.normalize(text, mode).encode()
    except ref.Refused:
        expected = None
    assert fe.normalize_path(text.encode(), mode) == expected, (text, mode)


def test_what_is_normalized_is_left_so_by_a_second_node() -> None:
    """The caller's node and the app's both normalize: the second pass changes nothing
    for Istio's examples and the cases above."""
    for mode in MODES:
        for target in [*RECEIVED, "/%%34%31", "/a/%2e%2E/%2F..%5C/b", "/x//..//y/."]:
            once = fe.normalize_path(target.encode(), mode)
            assert once is not None and fe.normalize_path(once, mode) == once, (target, mode)
