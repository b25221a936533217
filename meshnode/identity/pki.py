"""The mesh's X.509 shapes: root, node issuer, workload certificates and CSRs.

Everything is ECDSA P-256 (DESIGN §4), made with the ``cryptography`` package. The
constraints follow the SPIFFE X.509-SVID spec and RFC 5280: a root may sign one level
of CA (path length 1), a node issuer may sign only leaves (path length 0), and a
workload certificate carries exactly one URI SAN (its SPIFFE ID), is not a CA, and is
usable as both TLS server and client certificate.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..files import write_atomic
from .errors import IdentityError

PrivateKey = ec.EllipticCurvePrivateKey
# Clocks of hosts in a mesh disagree by seconds; a certificate valid from a minute ago
# is not refused by a peer whose clock is a little behind.
CLOCK_SKEW_S = 60
ROOT_TTL_S = 10 * 365 * 86400
_SPIFFE = re.compile(r"^spiffe://([a-z0-9.\-_]+)/ns/([a-z0-9]([-a-z0-9]*[a-z0-9])?)"
                     r"/sa/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
# A trust domain as SPIFFE-ID §2.1 allows it: lowercase letters, digits, '.', '-', '_'.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9.\-_]{1,255}$")


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def parse_spiffe_id(uri: str) -> SpiffeId:
    match = _SPIFFE.match(uri)
    if not match:
        raise IdentityError(f"not a workload SPIFFE ID (spiffe://TD/ns/NS/sa/SA): {uri!r}")
    return SpiffeId(match.group(1), match.group(2), match.group(4))


def check_trust_domain(text: str) -> str:
    """`text` if it is a trust domain (SPIFFE-ID §2.1), else IdentityError saying why."""
    if not _TRUST_DOMAIN.match(text) or text.strip(".") != text or ".." in text:
        raise IdentityError(f"{text!r} is not a trust domain: use lowercase letters, digits, "
                            f"'-', '_' in labels joined by dots, such as 'cluster.local'")
    return text


def root_trust_domain(root: x509.Certificate, what: str = "root.pem") -> str | None:
    """The trust domain a mesh root is for: the authority of its SPIFFE URI SAN
    (``spiffe://TD``, as ``meshnode ca init --trust-domain`` writes it, and as the SPIFFE
    X.509-SVID spec lets a signing certificate carry); None for a root that names none,
    which then serves whatever trust domain the Mesh names. Every identity under a root
    that names one is in it (DESIGN §4)."""
    found = set()
    for uri in uri_sans(root):
        if uri.startswith("spiffe://"):
            found.add(uri[len("spiffe://"):].split("/", 1)[0])
    if len(found) > 1:
        raise IdentityError(f"{what}: the root names several trust domains: "
                            f"{', '.join(sorted(found))}")
    for domain in found:
        try:
            check_trust_domain(domain)
        except IdentityError as exc:
            raise IdentityError(f"{what}: {exc}") from None
    return next(iter(found), None)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, non-zero, 16 bytes at most (RFC 5280 4.1.2.2)


def _ca_builder(subject: x509.Name, issuer: x509.Name, public_key: Any, ttl_s: float,
                path_length: int, not_after_cap: dt.datetime | None) -> x509.CertificateBuilder:
    now = _now()
    not_after = now + dt.timedelta(seconds=ttl_s)
    if not_after_cap is not None:
        not_after = min(not_after, not_after_cap)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def make_root(name: str, trust_domain: str | None = None,
              ttl_s: float = ROOT_TTL_S) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed mesh root that may sign node issuers."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = _ca_builder(subject, subject, key.public_key(), ttl_s, 1, None)
    if trust_domain:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False)
    return builder.sign(key, hashes.SHA256()), key


def make_issuer(root: x509.Certificate, root_key: PrivateKey, node: str,
                ttl_s: float) -> tuple[x509.Certificate, PrivateKey]:
    """A node's intermediate CA: signs workload certificates only (path length 0)."""
    key = new_key()
    return sign_issuer(issuer_name(node), key.public_key(), root, root_key, ttl_s), key


def issuer_name(node: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"meshnode issuer {node}")])


def sign_issuer(subject: x509.Name, public_key: Any, root: x509.Certificate,
                root_key: PrivateKey, ttl_s: float) -> x509.Certificate:
    builder = _ca_builder(subject, root.subject, public_key, ttl_s, 0, root.not_valid_after_utc)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def make_issuer_csr(key: PrivateKey, node: str) -> bytes:
    """The CSR a node sends to the root's holder for its issuer (the key stays on the node)."""
    csr = (x509.CertificateSigningRequestBuilder().subject_name(issuer_name(node))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_issuer_csr(csr_pem: bytes, root: x509.Certificate, root_key: PrivateKey,
                    ttl_s: float) -> x509.Certificate:
    """At the root's holder: sign a node's issuer CSR (path length 0, CA usages only)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise IdentityError(f"issuer CSR does not parse: {exc}") from None
    if not csr.is_signature_valid:
        raise IdentityError("issuer CSR signature is not valid")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError("issuer CSR key must be ECDSA P-256")
    return sign_issuer(csr.subject, key, root, root_key, ttl_s)


def make_csr(key: PrivateKey, identity: str) -> bytes:
    """A CSR for one SPIFFE ID, signed by the worker's own key (which stays with it)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_identity(csr_pem: bytes) -> tuple[x509.CertificateSigningRequest, str]:
    """Parse a CSR, check its self-signature, and return it with its single URI SAN."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise IdentityError(f"CSR does not parse: {exc}") from None
    if not csr.is_signature_valid:
        raise IdentityError("CSR signature is not valid")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey) or \
            not isinstance(csr.public_key().curve, ec.SECP256R1):
        raise IdentityError("CSR key must be ECDSA P-256")
    uris = uri_sans(csr)
    if len(uris) != 1:
        raise IdentityError(f"CSR must carry exactly one URI SAN, has {len(uris)}")
    parse_spiffe_id(uris[0])
    return csr, uris[0]


def uri_sans(obj: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    try:
        san = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def sign_workload(csr: x509.CertificateSigningRequest, identity: str, issuer: x509.Certificate,
                  issuer_key: PrivateKey, ttl_s: float) -> x509.Certificate:
    """A workload certificate (X.509-SVID) for ``identity``, capped at the issuer's expiry."""
    now = _now()
    not_after = min(now + dt.timedelta(seconds=ttl_s), issuer.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([]))
               .issuer_name(issuer.subject)
               .public_key(csr.public_key())
               .serial_number(_serial())
               .not_valid_before(now - dt.timedelta(seconds=min(CLOCK_SKEW_S, ttl_s / 10)))
               .not_valid_after(not_after)
               # Empty subject: the SAN must be critical (RFC 5280 4.2.1.6).
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier(identity)]), critical=True))
    return with_leaf_usages(builder, issuer_key).sign(issuer_key, hashes.SHA256())


def with_leaf_usages(builder: x509.CertificateBuilder,
                     issuer_key: PrivateKey) -> x509.CertificateBuilder:
    """The extensions of a leaf usable as TLS server and client certificate (not a CA)."""
    return (builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False))


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- PEM and files ---------------------------------------------------------------

def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError(f"{what}: not a PEM certificate: {exc}") from None


def load_certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise IdentityError(f"{what}: not PEM certificates: {exc}") from None
    return certs


def load_key(pem: bytes, what: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{what}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{what}: the key must be ECDSA")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, mode 0600 from the first byte (never world-readable)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data, 0o644)


def read_root_dir(directory: Path) -> tuple[x509.Certificate, PrivateKey]:
    """A root brought by the user (or made by ``meshnode ca init``): root.pem + root.key."""
    try:
        cert = load_cert((directory / "root.pem").read_bytes(), str(directory / "root.pem"))
        key = load_key((directory / "root.key").read_bytes(), str(directory / "root.key"))
    except OSError as exc:
        raise IdentityError(f"cannot read the mesh root in {directory}: {exc}") from None
    check_root(cert, key, str(directory))
    return cert, key


def check_root(cert: x509.Certificate, key: PrivateKey, what: str) -> None:
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise IdentityError(f"{what}: root.key does not match root.pem")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise IdentityError(f"{what}: root.pem is not a CA certificate") from None
    if not bc.ca or (bc.path_length is not None and bc.path_length < 1):
        raise IdentityError(f"{what}: root.pem must be a CA allowed to sign an intermediate "
                            f"(basicConstraints CA:TRUE, pathlen >= 1 or unset)")
    if cert.not_valid_after_utc <= _now():
        raise IdentityError(f"{what}: root.pem expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def describe(cert: x509.Certificate, role: str) -> dict[str, Any]:
    """What ``meshnode ca inspect`` shows of one certificate."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca, path_len = bc.ca, bc.path_length
    except x509.ExtensionNotFound:
        is_ca, path_len = False, None
    left = cert.not_valid_after_utc - _now()
    return {"role": role, "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(), "uri_sans": uri_sans(cert),
            "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "days_left": round(left.total_seconds() / 86400, 3),
            "ca": is_ca, "path_length": path_len,
            "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex()}
