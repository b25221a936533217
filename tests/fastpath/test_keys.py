"""fastpath.keys makes what the CA accepts and the data plane loads, without the
`cryptography` package in the worker: checked against meshnode.identity.pki (the CA's
side, on `cryptography`) and against real TLS contexts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from fastpath import keys, tls
from fastpath.errors import TLSError
from meshnode.identity import pki

IDENTITY = "spiffe://cluster.local/ns/demo/sa/frontend"


@pytest.fixture(scope="module")
def issuer() -> tuple:
    root = pki.make_root("keys test root", "cluster.local")
    return pki.make_issuer(*root, "node-a", 86400), pki.cert_pem(root[0])


def test_a_new_key_is_an_unencrypted_p256_pkcs8_key() -> None:
    pem = keys.new_key_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert keys.new_key_pem() != pem


def test_the_csr_is_what_the_ca_accepts(issuer: tuple) -> None:
    key_pem = keys.new_key_pem()
    csr, identity = pki.csr_identity(keys.make_csr_pem(key_pem, IDENTITY))
    assert identity == IDENTITY
    assert csr.is_signature_valid and len(csr.subject) == 0
    san = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert san.critical
    # The public key is the key's: what the CA signs, this key can use.
    public = serialization.load_pem_private_key(key_pem, None).public_key()
    assert csr.public_key().public_numbers() == public.public_numbers()


def test_the_issued_chain_and_the_key_make_mesh_contexts(issuer: tuple) -> None:
    (cert, ca_key), root_pem = issuer
    key_pem = keys.new_key_pem()
    csr, identity = pki.csr_identity(keys.make_csr_pem(key_pem, IDENTITY))
    leaf = pki.sign_workload(csr, identity, cert, ca_key, 600)
    chain = pki.cert_pem(leaf) + pki.cert_pem(cert)
    for server in (True, False):
        tls.TLSContext.for_mesh(server, chain, key_pem, root_pem, [b"http/1.1"])
    assert keys.chain_validity(chain) == (leaf.not_valid_before_utc.timestamp(),
                                          leaf.not_valid_after_utc.timestamp())


@pytest.mark.parametrize("identity", ["https://x/y", "spiffe://a/b,URI:spiffe://c/d",
                                      "spiffe://a/b c", "spiffe://" + "a" * 3000])
def test_a_csr_is_only_for_a_spiffe_id(identity: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE"):
        keys.make_csr_pem(keys.new_key_pem(), identity)


def test_a_key_that_does_not_parse_is_refused() -> None:
    with pytest.raises(TLSError, match="private key"):
        keys.make_csr_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                          IDENTITY)


@pytest.mark.parametrize("chain", [b"", b"not pem",
                                   b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_a_chain_that_does_not_parse_is_refused(chain: bytes) -> None:
    with pytest.raises(TLSError, match="chain"):
        keys.chain_validity(chain)


def test_a_bad_certificate_after_a_good_one_is_refused(issuer: tuple) -> None:
    (cert, _), _ = issuer
    bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(TLSError, match="chain"):
        keys.chain_validity(pki.cert_pem(cert) + bad)
