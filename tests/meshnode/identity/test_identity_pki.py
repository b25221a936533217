"""The mesh's certificate shapes, checked by OpenSSL's own verifier and by inspection."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshnode.identity import pki
from meshnode.identity.authority import Authority, Policy
from meshnode.identity.errors import IdentityError, NotReady, Refused

TD = "cluster.local"
FRONTEND = f"spiffe://{TD}/ns/demo/sa/frontend"
STRANGER = f"spiffe://{TD}/ns/demo/sa/stranger"


def _policy(ttl_s: float = 3600.0) -> Policy:
    return Policy(trust_domain=TD, workload_ttl_s=ttl_s, issuer_ttl_s=86400.0 * 30,
                  local_identities=frozenset({FRONTEND}))


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    auth = Authority.open(tmp_path / "ca", "node-a", None)
    auth.policy = _policy()
    return auth


def _issue(auth: Authority, identity: str = FRONTEND) -> tuple[x509.Certificate, bytes]:
    key = pki.new_key()
    reply = auth.sign(pki.make_csr(key, identity), identity, "proxy-0")
    chain = reply["chain"].encode()
    return pki.load_certs(chain, "chain")[0], chain


def test_issued_chain_verifies_with_openssl(authority: Authority, tmp_path: Path) -> None:
    leaf, chain = _issue(authority)
    certs = pki.load_certs(chain, "chain")
    (tmp_path / "leaf.pem").write_bytes(pki.cert_pem(certs[0]))
    (tmp_path / "issuer.pem").write_bytes(pki.cert_pem(certs[1]))
    (tmp_path / "root.pem").write_bytes(pki.cert_pem(authority.root))
    for purpose in ("sslserver", "sslclient"):
        out = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile",
                              str(tmp_path / "root.pem"), "-untrusted",
                              str(tmp_path / "issuer.pem"), str(tmp_path / "leaf.pem")],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(": OK")


def test_foreign_root_does_not_verify(authority: Authority, tmp_path: Path) -> None:
    _, chain = _issue(authority)
    certs = pki.load_certs(chain, "chain")
    other, _ = pki.make_root("someone else")
    (tmp_path / "leaf.pem").write_bytes(pki.cert_pem(certs[0]))
    (tmp_path / "issuer.pem").write_bytes(pki.cert_pem(certs[1]))
    (tmp_path / "other.pem").write_bytes(pki.cert_pem(other))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "other.pem"),
                          "-untrusted", str(tmp_path / "issuer.pem"), str(tmp_path / "leaf.pem")],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0


def test_workload_certificate_shape(authority: Authority) -> None:
    leaf, _ = _issue(authority)
    assert pki.uri_sans(leaf) == [FRONTEND]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # empty subject: RFC 5280 4.2.1.6
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    life = leaf.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=59) < life <= dt.timedelta(hours=1)


def test_ca_path_lengths_and_usages(authority: Authority) -> None:
    root_bc = authority.root.extensions.get_extension_for_class(x509.BasicConstraints).value
    issuer_bc = authority.issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (root_bc.ca, root_bc.path_length) == (True, 1)
    assert (issuer_bc.ca, issuer_bc.path_length) == (True, 0)
    for cert in (authority.root, authority.issuer):
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert pki.signed_by(authority.issuer, authority.root)
    assert authority.issuer.not_valid_after_utc <= authority.root.not_valid_after_utc


def test_keys_are_private_and_state_survives_restart(authority: Authority, tmp_path: Path) -> None:
    for name in ("root.key", "issuer.key"):
        assert (tmp_path / "ca" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    leaf, _ = _issue(authority)
    again = Authority.open(tmp_path / "ca", "node-a", None)
    # Same issuer after a restart: what was issued before stays valid.
    assert again.issuer.fingerprint(pki.hashes.SHA256()) == \
        authority.issuer.fingerprint(pki.hashes.SHA256())
    assert pki.signed_by(leaf, again.issuer)
    assert again.root_self_made


def test_csr_for_identity_not_placed_is_refused_and_counted(authority: Authority) -> None:
    with pytest.raises(Refused, match="not placed on node node-a") as err:
        _issue(authority, STRANGER)
    assert err.value.reason == "not-placed"
    assert authority.refused["not-placed"] == 1
    assert authority.certs_issued == 0


def test_csr_must_match_requested_identity(authority: Authority) -> None:
    key = pki.new_key()
    with pytest.raises(Refused, match="CSR names"):
        authority.sign(pki.make_csr(key, STRANGER), FRONTEND, "proxy-0")
    with pytest.raises(Refused, match="CSR does not parse"):
        authority.sign(b"garbage", FRONTEND, "proxy-0")
    assert authority.refused["bad-csr"] == 2


def test_wrong_trust_domain_refused(authority: Authority) -> None:
    other = "spiffe://example.org/ns/demo/sa/frontend"
    with pytest.raises(Refused, match="outside trust domain"):
        _issue(authority, other)


def test_no_config_yet_is_not_ready_and_not_a_refusal(tmp_path: Path) -> None:
    auth = Authority.open(tmp_path / "ca", "node-a", None)
    with pytest.raises(NotReady):
        _issue(auth)
    assert not auth.refused


def test_brought_root_is_used_and_checked(tmp_path: Path) -> None:
    root, key = pki.make_root("user root", TD)
    pki.write_private(tmp_path / "mine" / "root.key", pki.key_pem(key))
    pki.write_public(tmp_path / "mine" / "root.pem", pki.cert_pem(root))
    auth = Authority.open(tmp_path / "ca", "node-a", tmp_path / "mine")
    assert not auth.root_self_made
    assert pki.signed_by(auth.issuer, root)
    other, _ = pki.make_root("other")
    pki.write_public(tmp_path / "mine" / "root.pem", pki.cert_pem(other))
    with pytest.raises(IdentityError, match="does not match"):
        pki.read_root_dir(tmp_path / "mine")


def test_rotation_steps_keep_both_roots_until_finish(authority: Authority) -> None:
    old_root = pki.cert_pem(authority.root)
    old_leaf, _ = _issue(authority)
    state = authority.rotate_add(None, None)
    assert state["roots"] == 2 and state["pending"]
    with pytest.raises(IdentityError, match="not switched"):
        authority.rotate_finish()
    state = authority.rotate_switch()
    assert state["issuer_generation"] == 2 and not state["pending"]
    assert authority.root_self_made  # the node made the new root too
    new_leaf, _ = _issue(authority)
    assert pki.signed_by(new_leaf, authority.issuer)
    assert pki.signed_by(authority.issuer, authority.root)
    assert old_root in authority.bundle.roots  # old leaves still verify mid-rotation
    state = authority.rotate_finish()
    assert authority.bundle.roots == [pki.cert_pem(authority.root)]
    assert not pki.signed_by(old_leaf, authority.issuer)
    with pytest.raises(IdentityError, match="add step first"):
        authority.rotate_switch()


def test_spiffe_ids_are_validated() -> None:
    assert str(pki.parse_spiffe_id(FRONTEND)) == FRONTEND
    for bad in ("spiffe://td/ns/x", "http://td/ns/a/sa/b", "spiffe://td/ns/A/sa/b",
                "spiffe://td/ns/a/sa/b/extra"):
        with pytest.raises(IdentityError):
            pki.parse_spiffe_id(bad)


def test_issuer_follows_configured_issuer_ttl(tmp_path: Path) -> None:
    auth = Authority.open(tmp_path / "ca", "node-a", None)  # made with the default: a year
    auth.set_policy(Policy(trust_domain=TD, workload_ttl_s=600.0, issuer_ttl_s=7200.0,
                           local_identities=frozenset({FRONTEND})))
    life = auth.issuer.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=119) < life <= dt.timedelta(hours=2)
    assert pki.signed_by(auth.issuer, auth.root)
    reopened = Authority.open(tmp_path / "ca", "node-a", None)
    assert reopened.issuer.serial_number == auth.issuer.serial_number  # persisted
    before = auth.issuer.serial_number
    auth.set_policy(auth.policy)  # fits now: kept
    assert auth.issuer.serial_number == before


def test_issuer_signed_from_the_nodes_csr_without_the_root_key(tmp_path: Path) -> None:
    root, root_key = pki.make_root("holder root", TD)
    issuer_key = pki.new_key()  # made on the node; only the CSR travels
    csr = pki.make_issuer_csr(issuer_key, "node-a")
    issuer = pki.sign_issuer_csr(csr, root, root_key, 86400.0 * 30)
    bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (bc.ca, bc.path_length) == (True, 0) and pki.signed_by(issuer, root)
    given = tmp_path / "given"
    pki.write_private(given / "issuer.key", pki.key_pem(issuer_key))
    pki.write_public(given / "issuer.pem", pki.cert_pem(issuer))
    pki.write_public(given / "root.pem", pki.cert_pem(root))
    auth = Authority.open(tmp_path / "ca", "node-a", None, given)
    assert auth.root_key is None and not (tmp_path / "ca" / "root.key").exists()
    auth.set_policy(_policy())  # keeps the issuer the holder signed
    leaf, _ = _issue(auth)
    assert pki.signed_by(leaf, issuer)
    again = Authority.open(tmp_path / "ca", "node-a", None)  # restart: same issuer, no root key
    assert again.issuer.serial_number == issuer.serial_number and again.root_key is None
    other, _ = pki.make_root("other")
    pki.write_public(given / "root.pem", pki.cert_pem(other))
    with pytest.raises(IdentityError, match="not signed by root.pem"):
        Authority.open(tmp_path / "ca2", "node-a", None, given)
