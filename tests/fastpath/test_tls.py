"""Tests for fastpath.tls: OpenSSL contexts loaded from in-memory PEM, and their errors."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastpath import tls
from fastpath.errors import FastpathError, TLSError

TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey,
             encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> Issued:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=24))
        # SPIFFE X509-SVID: the ID is the only URI SAN, critical since the subject is empty.
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                       critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class PKI:
    root_pem: bytes
    other_root_pem: bytes
    leaf: Issued
    stranger_key_pem: bytes


@pytest.fixture(scope="module")
def pki() -> PKI:
    root, root_key = _ca("meshnode test root")
    other_root, _ = _ca("meshnode test root (next)")
    leaf = _leaf(root, root_key, f"spiffe://{TRUST_DOMAIN}/ns/default/sa/web")
    return PKI(
        root_pem=root.public_bytes(serialization.Encoding.PEM),
        other_root_pem=other_root.public_bytes(serialization.Encoding.PEM),
        leaf=leaf,
        stranger_key_pem=_key_pem(_key()),
    )


@pytest.fixture(params=[True, False], ids=["server", "client"])
def ctx(request: pytest.FixtureRequest) -> tls.TLSContext:
    return tls.TLSContext(server=request.param)


# --- library ------------------------------------------------------------------


def test_openssl_version_is_3() -> None:
    assert tls.openssl_version().startswith("OpenSSL 3")


def test_openssl_version_number_matches_text() -> None:
    number = tls.openssl_version_number()
    assert number >> 28 == 3
    major_minor = f"{number >> 28}.{(number >> 20) & 0xFF}."
    assert tls.openssl_version().split()[1].startswith(major_minor)


def test_tls_error_is_a_fastpath_error() -> None:
    assert issubclass(TLSError, FastpathError)


# --- contexts -----------------------------------------------------------------


def test_context_role_is_kept() -> None:
    assert tls.TLSContext(server=True).server is True
    assert tls.TLSContext(server=False).server is False
    assert "server" in repr(tls.TLSContext(True))


def test_context_requires_role() -> None:
    with pytest.raises(TypeError):
        tls.TLSContext()  # type: ignore[call-arg]


def test_contexts_are_freed() -> None:
    # Create and drop many: a leak or double free in __dealloc__ shows here under ASan
    # or as a crash; the loop is cheap enough to run everywhere.
    for _ in range(2000):
        c = tls.TLSContext(server=True)
        c.set_alpn([b"h2"])
    del c


# --- certificate chain --------------------------------------------------------


def test_load_cert_chain(ctx: tls.TLSContext, pki: PKI) -> None:
    ctx.load_cert_chain(pki.leaf.cert_pem, pki.leaf.key_pem)


def test_load_cert_chain_with_intermediates(ctx: tls.TLSContext, pki: PKI) -> None:
    ctx.load_cert_chain(pki.leaf.cert_pem + pki.root_pem, pki.leaf.key_pem)


def test_load_cert_chain_twice_replaces(pki: PKI) -> None:
    ctx = tls.TLSContext(server=True)
    ctx.load_cert_chain(pki.leaf.cert_pem + pki.root_pem, pki.leaf.key_pem)
    ctx.load_cert_chain(pki.leaf.cert_pem, pki.leaf.key_pem)


def test_mismatched_key_names_openssl_reason(ctx: tls.TLSContext, pki: PKI) -> None:
    with pytest.raises(TLSError) as err:
        ctx.load_cert_chain(pki.leaf.cert_pem, pki.stranger_key_pem)
    assert "key values mismatch" in str(err.value)
    assert any("key values mismatch" in r for r in err.value.reasons)
    assert len(err.value.codes) == len(err.value.reasons) > 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello, I am not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
    ids=["empty", "text", "bad-base64", "bad-der"],
)
def test_garbage_cert_raises(ctx: tls.TLSContext, pki: PKI, garbage: bytes) -> None:
    with pytest.raises(TLSError, match="certificate chain"):
        ctx.load_cert_chain(garbage, pki.leaf.key_pem)


def test_garbage_after_leaf_raises(ctx: tls.TLSContext, pki: PKI) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(TLSError, match="certificate chain"):
        ctx.load_cert_chain(pki.leaf.cert_pem + broken, pki.leaf.key_pem)


def test_garbage_key_raises(ctx: tls.TLSContext, pki: PKI) -> None:
    with pytest.raises(TLSError, match="private key"):
        ctx.load_cert_chain(pki.leaf.cert_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TLSError, match="private key"):
        ctx.load_cert_chain(pki.leaf.cert_pem, b"not a key")


def test_encrypted_key_fails_without_prompting(ctx: tls.TLSContext, pki: PKI) -> None:
    # OpenSSL's default would ask for a passphrase on the terminal.
    key = serialization.load_pem_private_key(pki.leaf.key_pem, password=None)
    encrypted = _key_pem(key, serialization.BestAvailableEncryption(b"secret"))  # type: ignore[arg-type]
    with pytest.raises(TLSError, match="private key"):
        ctx.load_cert_chain(pki.leaf.cert_pem, encrypted)


def test_errors_do_not_leak_into_the_next_call(ctx: tls.TLSContext, pki: PKI) -> None:
    with pytest.raises(TLSError):
        ctx.load_cert_chain(pki.leaf.cert_pem, pki.stranger_key_pem)
    # The queue was drained: the next failure reports only its own reason...
    with pytest.raises(TLSError) as err:
        ctx.load_cert_chain(b"nothing", pki.leaf.key_pem)
    assert "mismatch" not in str(err.value)
    # ...and a good load after failures works.
    ctx.load_cert_chain(pki.leaf.cert_pem, pki.leaf.key_pem)


def test_pem_must_be_bytes(ctx: tls.TLSContext, pki: PKI) -> None:
    with pytest.raises(TypeError):
        ctx.load_cert_chain(pki.leaf.cert_pem.decode(), pki.leaf.key_pem)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.load_cert_chain(pki.leaf.cert_pem, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.load_trust(None)  # type: ignore[arg-type]


# --- trust --------------------------------------------------------------------


def test_load_trust_single_root(ctx: tls.TLSContext, pki: PKI) -> None:
    assert ctx.load_trust(pki.root_pem) == 1


def test_load_trust_bundle_of_two_roots(ctx: tls.TLSContext, pki: PKI) -> None:
    # During root rotation the bundle carries the old and the new root (DESIGN.md §4).
    assert ctx.load_trust(pki.root_pem + b"\n" + pki.other_root_pem) == 2


def test_load_trust_again_is_harmless(ctx: tls.TLSContext, pki: PKI) -> None:
    assert ctx.load_trust(pki.root_pem) == 1
    assert ctx.load_trust(pki.root_pem + pki.other_root_pem) == 2


@pytest.mark.parametrize("bundle", [b"", b"just text\n"], ids=["empty", "text"])
def test_load_trust_without_certs_raises(ctx: tls.TLSContext, bundle: bytes) -> None:
    with pytest.raises(TLSError, match="trust bundle"):
        ctx.load_trust(bundle)


def test_load_trust_with_broken_cert_raises(ctx: tls.TLSContext, pki: PKI) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(TLSError, match="trust bundle"):
        ctx.load_trust(pki.root_pem + broken)


# --- peer verification and ALPN ----------------------------------------------


def test_require_peer_cert(ctx: tls.TLSContext, pki: PKI) -> None:
    ctx.load_trust(pki.root_pem)
    ctx.require_peer_cert()


@pytest.mark.parametrize(
    "protocols",
    [[b"h2", b"http/1.1"], [b"http/1.1"], (b"x" * 255,), iter([b"h2"]), []],
    ids=["two", "one", "longest-name", "iterator", "off"],
)
def test_set_alpn(ctx: tls.TLSContext, protocols: object) -> None:
    ctx.set_alpn(protocols)


def test_set_alpn_replaces(ctx: tls.TLSContext) -> None:
    ctx.set_alpn([b"h2"])
    ctx.set_alpn([b"http/1.1", b"h2"])
    ctx.set_alpn([])


@pytest.mark.parametrize(
    ("protocols", "error"),
    [
        ([b""], ValueError),
        ([b"x" * 256], ValueError),
        ([b"x" * 255] * 257, ValueError),  # 257 * 256 bytes > 65535
        (["h2"], TypeError),
        ([bytearray(b"h2")], TypeError),
    ],
    ids=["empty-name", "name-too-long", "list-too-long", "str", "bytearray"],
)
def test_set_alpn_rejects(ctx: tls.TLSContext, protocols: list, error: type[Exception]) -> None:
    with pytest.raises(error):
        ctx.set_alpn(protocols)
