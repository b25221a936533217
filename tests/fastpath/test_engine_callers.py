"""Who is calling (DESIGN §4; fastpath/callers.pxi): a local caller of a node's outbound
listeners presents its own workload's identity, and one that is no workload's is refused.

The attacks replayed: a process on the host connects to the node's outbound listeners
and hopes to be taken for another workload, by calling from that workload's address, or
by matching no workload at all (which used to mean the listener's default identity, "the
first by name"). Callers are real processes running as other OS users (localcaller.py);
the engines, the mutual TLS between them and the app behind the inbound side are
test_engine_http.py's, and what the app sees in x-forwarded-client-cert (URI=) is the
identity the caller's node presented.
"""

from __future__ import annotations

import os
import socket
from typing import Iterator

import pytest

from fastpath import engine as fe
from fastpath import tls

from enginekit import listener, port_of, wait_for
from localcaller import NOBODY, UID_A, UID_STRANGER, Caller, xfcc_uri
from meshnode.callers import sock_diag_missing
from test_engine_http import (ALPN, BACKEND_ID, FRONTEND_ID, SNI, Mesh,  # noqa: F401
                              client_ctx, mesh, mesh_pki)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="callers as other users need root (setuid)"),
    pytest.mark.skipif(sock_diag_missing() is not None, reason=str(sock_diag_missing())),
]


@pytest.fixture
def callers() -> Iterator[list[Caller]]:
    started: list[Caller] = []
    yield started
    for c in started:
        c.close()


def as_backend(m: Mesh) -> tls.TLSContext:
    """A client context holding the backend's identity: a second local workload."""
    return tls.TLSContext.for_mesh(False, m.pki.backend.chain_pem, m.pki.backend.key_pem,
                                   m.pki.bundle_pem, ALPN)


def by_user(m: Mesh) -> fe.RouteTable:
    """Two local workloads told apart by user: frontend runs as nobody, backend as
    UID_A; the listener has no identity of its own."""
    t = m.outbound_table()
    t.set_outbound_http(m.http_sock.fileno(), None)
    t.add_user(NOBODY, client_ctx(m.pki), FRONTEND_ID)
    t.add_user(UID_A, as_backend(m), BACKEND_ID)
    return t


def call(callers: list[Caller], uid: int, port: int, source: str = "127.0.0.1",
         host: str = "127.0.0.1") -> dict:
    c = Caller(uid, port, source, host)
    callers.append(c)
    return c.get()


def backend_connected(m: Mesh, callers: list[Caller]) -> Caller:
    """The backend's account connected (by_user), one request answered as the backend."""
    m.out_node.install(by_user(m))
    c = Caller(UID_A, m.http_port)
    callers.append(c)
    assert xfcc_uri(c.get()) == BACKEND_ID
    return c


def test_callers_by_user_each_present_their_own_workloads_identity(
        mesh: Mesh, callers: list[Caller]) -> None:
    mesh.out_node.install(by_user(mesh))
    seen = [call(callers, uid, mesh.http_port) for uid in (NOBODY, UID_A, NOBODY)]
    assert [a["status"] for a in seen] == [200, 200, 200]
    assert [xfcc_uri(a) for a in seen] == [FRONTEND_ID, BACKEND_ID, FRONTEND_ID]
    stats = mesh.out_node.stats()
    assert (stats["caller_lookups"], stats["caller_lookup_failures"]) == (3, 0)
    assert stats["callers_refused"] == 0


@pytest.mark.parametrize("uid", [UID_STRANGER, 0])
def test_a_caller_running_as_no_workloads_user_is_refused_403_saying_why(
        mesh: Mesh, callers: list[Caller], uid: int) -> None:
    mesh.out_node.install(by_user(mesh))
    answer = call(callers, uid, mesh.http_port)
    assert (answer["status"], answer["closed"]) == (403, True)
    assert answer["body"] == f"caller refused: no local workload runs as uid {uid} (Workload spec.user)\n"
    assert mesh.out_node.stats()["callers_refused"] == 1
    assert mesh.in_node.stats()["inbound_connections_opened"] == 0    # nothing went out


def test_binding_another_workloads_address_does_not_get_its_identity(
        mesh: Mesh, callers: list[Caller]) -> None:
    # The backend calls from 127.0.0.2, the frontend from 127.0.0.1; both declare users.
    # The frontend's account, and a stranger's, bind the backend's address.
    mesh.out_node.install(by_user(mesh))
    assert xfcc_uri(call(callers, NOBODY, mesh.http_port, source="127.0.0.2")) == FRONTEND_ID
    assert call(callers, UID_STRANGER, mesh.http_port, source="127.0.0.2")["status"] == 403
    assert xfcc_uri(call(callers, UID_A, mesh.http_port, source="127.0.0.2")) == BACKEND_ID


def test_a_caller_at_no_workloads_address_is_refused_not_given_the_listeners_identity(
        mesh: Mesh, callers: list[Caller]) -> None:
    # Told apart by address (no users): the listener's own identity is nobody's default.
    t = mesh.outbound_table()
    t.set_outbound_http(mesh.http_sock.fileno(), client_ctx(mesh.pki), identity=FRONTEND_ID)
    t.add_source("127.0.0.2", as_backend(mesh), identity=BACKEND_ID)
    mesh.out_node.install(t)
    answer = call(callers, NOBODY, mesh.http_port, source="127.0.0.3")
    assert answer["status"] == 403, answer
    assert "no local workload calls from this address" in answer["body"]
    assert xfcc_uri(call(callers, NOBODY, mesh.http_port, source="127.0.0.2")) == BACKEND_ID
    stats = mesh.out_node.stats()
    assert (stats["callers_refused"], stats["caller_lookups"]) == (1, 0)


def test_workloads_sharing_a_user_are_told_apart_by_address_within_it(
        mesh: Mesh, callers: list[Caller]) -> None:
    t = mesh.outbound_table()
    t.set_outbound_http(mesh.http_sock.fileno(), None)
    t.add_user(UID_A, client_ctx(mesh.pki), FRONTEND_ID, address="127.0.0.1")
    t.add_user(UID_A, as_backend(mesh), BACKEND_ID, address="127.0.0.2")
    mesh.out_node.install(t)
    assert xfcc_uri(call(callers, UID_A, mesh.http_port, source="127.0.0.1")) == FRONTEND_ID
    assert xfcc_uri(call(callers, UID_A, mesh.http_port, source="127.0.0.2")) == BACKEND_ID
    assert call(callers, UID_A, mesh.http_port, source="127.0.0.3")["status"] == 403
    assert call(callers, NOBODY, mesh.http_port, source="127.0.0.2")["status"] == 403


def test_a_single_local_workload_is_every_local_callers_identity_without_a_lookup(
        mesh: Mesh, callers: list[Caller]) -> None:
    # One workload per host (Istio's VM integration): the listener's identity, no
    # source, no user: whoever calls is that workload.
    t = mesh.outbound_table()
    t.set_outbound_http(mesh.http_sock.fileno(), client_ctx(mesh.pki), identity=FRONTEND_ID)
    mesh.out_node.install(t)
    for uid, source in ((NOBODY, "127.0.0.1"), (UID_STRANGER, "127.0.0.9")):
        assert xfcc_uri(call(callers, uid, mesh.http_port, source=source)) == FRONTEND_ID
    assert mesh.out_node.stats()["caller_lookups"] == 0


def test_the_callers_user_is_asked_once_per_connection_and_kept_across_a_config_push(
        mesh: Mesh, callers: list[Caller]) -> None:
    c = backend_connected(mesh, callers)
    assert xfcc_uri(c.get()) == BACKEND_ID
    mesh.out_node.install(by_user(mesh))            # a push: the pair moves to it
    assert xfcc_uri(c.get()) == BACKEND_ID
    stats = mesh.out_node.stats()
    assert stats["pairs_moved"] >= 1
    assert stats["caller_lookups"] == 1


def test_a_push_that_drops_the_callers_workload_leaves_it_no_identity(
        mesh: Mesh, callers: list[Caller]) -> None:
    c = backend_connected(mesh, callers)
    t = mesh.outbound_table()
    t.set_outbound_http(mesh.http_sock.fileno(), None)
    t.add_user(NOBODY, client_ctx(mesh.pki), FRONTEND_ID)   # UID_A's workload left
    mesh.out_node.install(t)
    # Its next request on the open connection is refused (the identity is not kept a
    # request longer), and so is a new connection; it never becomes the frontend.
    last = c.get()
    assert (last["status"], last["closed"]) == (403, True), last
    assert call(callers, UID_A, mesh.http_port)["status"] == 403
    assert mesh.out_node.stats()["caller_lookups"] == 2         # one per connection


def test_an_ipv6_caller_is_told_apart_by_user(mesh: Mesh, callers: list[Caller]) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("::1", 0))
    sock.listen(64)
    sock.setblocking(False)
    try:
        t = by_user(mesh)
        t.add_outbound_tcp(sock.fileno(), 0, None, protocol="http")  # demo/backend:http
        mesh.out_node.install(t)
        port = sock.getsockname()[1]
        assert xfcc_uri(call(callers, UID_A, port, source="::1", host="::1")) == BACKEND_ID
        assert call(callers, UID_STRANGER, port, source="::1", host="::1")["status"] == 403
        mesh.out_node.install(mesh.outbound_table())           # let go of the listener
    finally:
        sock.close()


@pytest.mark.parametrize("protocol", ["http", "auto"])
def test_an_http_outbound_port_refuses_a_caller_that_is_no_workload_with_403(
        mesh: Mesh, callers: list[Caller], protocol: str) -> None:
    port_sock = listener()
    try:
        t = by_user(mesh)
        t.add_outbound_tcp(port_sock.fileno(), 0, None, protocol=protocol)
        mesh.out_node.install(t)
        port = port_of(port_sock)
        assert xfcc_uri(call(callers, NOBODY, port)) == FRONTEND_ID
        answer = call(callers, UID_STRANGER, port)
        assert answer["status"] == 403 and "uid 4343" in answer["body"]
        mesh.out_node.install(mesh.outbound_table())
    finally:
        port_sock.close()


def test_an_opaque_caller_that_is_no_workload_is_closed(mesh: Mesh, callers: list[Caller]) -> None:
    port_sock = listener()
    request = b"GET /headers HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
    try:
        t = by_user(mesh)
        t.add_outbound_tcp(port_sock.fileno(), 0, None)            # opaque TCP
        mesh.out_node.install(t)
        port = port_of(port_sock)
        allowed = Caller(NOBODY, port, mode="raw")
        refused = Caller(UID_STRANGER, port, mode="raw")
        callers += [allowed, refused]
        assert allowed.raw(request).startswith(b"HTTP/1.1 200 ")
        assert refused.raw(request) == b""
        wait_for(lambda: mesh.out_node.stats()["callers_refused"] == 1, what="refusal counted")
        assert mesh.in_node.stats()["inbound_connections_opened"] == 1
        mesh.out_node.install(mesh.outbound_table())
    finally:
        port_sock.close()


def test_a_table_tells_callers_apart_one_way(mesh_pki) -> None:
    t = fe.RouteTable()
    with pytest.raises(ValueError, match="uid must be"):
        t.add_user(-1, client_ctx(mesh_pki), FRONTEND_ID)
    with pytest.raises(ValueError, match="uid must be"):
        t.add_user(1 << 32, client_ctx(mesh_pki), FRONTEND_ID)
    t.add_source("127.0.0.2", client_ctx(mesh_pki), FRONTEND_ID)
    with pytest.raises(ValueError, match="by address"):
        t.add_user(NOBODY, client_ctx(mesh_pki), FRONTEND_ID)
