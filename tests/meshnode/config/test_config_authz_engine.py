"""The contract between control and the engine: every authorization program control
compiles from Istio's own test policies (testdata/istio_authz) is one the engine's
RouteTable.set_inbound_authz takes whole (fastpath authz_table.pxi checks it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastpath import engine as fe
from fastpath import tls
from meshnode.identity import pki

from test_config_authz_istio import APPLICABLE, applied, programs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server_ctx() -> tls.TLSContext:
    root = pki.make_root("authz contract root", "cluster.local")
    cert, key = pki.make_issuer(*root, "node-a", 86400)
    wkey = pki.new_key()
    csr, _ = pki.csr_identity(pki.make_csr(wkey, "spiffe://cluster.local/ns/echo1/sa/b"))
    leaf = pki.sign_workload(csr, "spiffe://cluster.local/ns/echo1/sa/b", cert, key, 3600)
    return tls.TLSContext.for_mesh(True, pki.cert_pem(leaf) + pki.cert_pem(cert), pki.key_pem(wkey),
                                   pki.cert_pem(root[0]), [fe.ALPN_TCP])


@pytest.mark.parametrize("name", APPLICABLE)
def test_the_engine_takes_every_program_control_compiles(tmp_path: Path, name: str,
                                                          server_ctx: tls.TLSContext) -> None:
    taken = 0
    for entry in programs(applied(tmp_path, name)).values():
        if entry.get("authz") is None:
            continue
        table = fe.RouteTable()
        table.add_inbound_route("b.echo1.svc", server_ctx, "127.0.0.1", 18080)
        table.set_inbound_authz("b.echo1.svc", entry["authz"])
        taken += 1
    assert taken > 0
