"""The sidecar-pair benchmark's test PKI: one ECDSA P-256 CA, a server leaf and a client leaf.

The shape is the one ``../shared/peers/README.md`` asks of every peer: ECDSA P-256 leaves
under one test CA, the client leaf being the outbound side's identity. The CA comes from
``meshnode.identity.pki.make_root`` (the mesh's own root shape); the leaves are made here
because the peers need what a mesh workload certificate lacks: a DNS SAN equal to the
SNI, which HAProxy's ``verifyhost`` and nginx's ``proxy_ssl_verify`` check. Each leaf
also carries the SPIFFE ID it would have in the mesh, as a URI SAN.

Made fresh for every run, by code, never committed (STYLE.md, Tests).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshnode.identity import pki as mesh_pki

TRUST_DOMAIN = "cluster.local"
LEAF_TTL_S = 86400.0  # a day: longer than any run, short like a mesh workload certificate


@dataclass(frozen=True)
class TestPKI:
    """Paths of the files a run hands to the peers; ``*.pem`` = certificate then key (HAProxy)."""

    __test__ = False  # not a pytest test class despite its name

    ca_crt: Path
    server_crt: Path
    server_key: Path
    server_pem: Path
    client_crt: Path
    client_key: Path
    client_pem: Path
    sni: str
    server_id: str
    client_id: str


def _leaf(ca: x509.Certificate, ca_key: mesh_pki.PrivateKey, name: str, dns: list[str],
          spiffe_id: str) -> tuple[x509.Certificate, mesh_pki.PrivateKey]:
    key = mesh_pki.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans.append(x509.UniformResourceIdentifier(spiffe_id))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode bench"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=mesh_pki.CLOCK_SKEW_S))
            .not_valid_after(now + dt.timedelta(seconds=LEAF_TTL_S))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False))
    cert = mesh_pki.with_leaf_usages(cert, ca_key).sign(ca_key, hashes.SHA256())
    return cert, key


def make_pki(directory: Path, sni: str = "app.bench.svc", namespace: str = "bench",
             server_account: str = "app", client_account: str = "client") -> TestPKI:
    """Write a CA and two leaves into ``directory``; keys are mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = mesh_pki.make_root("meshnode bench CA", TRUST_DOMAIN)
    server_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{server_account}"
    client_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{client_account}"
    server, server_key = _leaf(ca, ca_key, sni, [sni], server_id)
    client, client_key = _leaf(ca, ca_key, f"{client_account}.{namespace}", [], client_id)
    out = TestPKI(ca_crt=directory / "ca.crt",
                  server_crt=directory / "server.crt", server_key=directory / "server.key",
                  server_pem=directory / "server.pem",
                  client_crt=directory / "client.crt", client_key=directory / "client.key",
                  client_pem=directory / "client.pem",
                  sni=sni, server_id=server_id, client_id=client_id)
    mesh_pki.write_public(out.ca_crt, mesh_pki.cert_pem(ca))
    for crt, key, pem, cert, private in ((out.server_crt, out.server_key, out.server_pem, server, server_key),
                                         (out.client_crt, out.client_key, out.client_pem, client, client_key)):
        mesh_pki.write_public(crt, mesh_pki.cert_pem(cert))
        mesh_pki.write_private(key, mesh_pki.key_pem(private))
        mesh_pki.write_private(pem, mesh_pki.cert_pem(cert) + mesh_pki.key_pem(private))
    return out
