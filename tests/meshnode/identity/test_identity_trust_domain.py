"""The ca under a root that names a trust domain: it signs only identities in it, says it
before the node starts (planned_root), and a root rotation keeps it (DESIGN §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.identity import pki
from meshnode.identity.authority import Authority, Policy, planned_root
from meshnode.identity.errors import IdentityError, Refused

pytestmark = pytest.mark.timeout(60)

ROOT = "bar.example"


def user_root(directory: Path, trust_domain: str | None) -> Path:
    cert, key = pki.make_root(f"user root ({trust_domain})", trust_domain)
    pki.write_private(directory / "root.key", pki.key_pem(key))
    pki.write_public(directory / "root.pem", pki.cert_pem(cert))
    return directory


def policy(trust_domain: str, *identities: str) -> Policy:
    return Policy(trust_domain=trust_domain, workload_ttl_s=3600.0, issuer_ttl_s=86400.0,
                  local_identities=frozenset(identities))


def sign(auth: Authority, identity: str) -> dict:
    return auth.sign(pki.make_csr(pki.new_key(), identity), identity, "proxy-0")


def test_a_csr_outside_the_roots_trust_domain_is_refused_whatever_the_config_says(
        tmp_path: Path) -> None:
    auth = Authority.open(tmp_path / "ca", "n1", user_root(tmp_path, ROOT))
    assert pki.root_trust_domain(auth.root) == ROOT
    # A config that (before the fix, silently) named cluster.local does not get it signed.
    forged = "spiffe://cluster.local/ns/demo/sa/web"
    auth.set_policy(policy("cluster.local", forged))
    with pytest.raises(Refused, match="outside trust domain bar.example, the mesh root's"):
        sign(auth, forged)
    assert auth.refused["wrong-trust-domain"] == 1
    mine = f"spiffe://{ROOT}/ns/demo/sa/web"
    auth.set_policy(policy(ROOT, mine))
    assert sign(auth, mine)["chain"]


def test_planned_root_is_the_one_the_ca_runs_under(tmp_path: Path) -> None:
    seed = user_root(tmp_path / "seed", ROOT)
    assert planned_root(tmp_path / "ca", None) is None  # the ca will make its own
    assert pki.root_trust_domain(planned_root(tmp_path / "ca", seed)) == ROOT
    Authority.open(tmp_path / "ca", "n1", None)  # made its own: it is kept from now on
    kept = planned_root(tmp_path / "ca", seed)
    assert kept is not None and pki.root_trust_domain(kept) is None
    with pytest.raises(IdentityError, match="cannot read the mesh root"):
        planned_root(tmp_path / "other", tmp_path / "nowhere")


def test_a_rotation_to_a_root_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    auth = Authority.open(tmp_path / "ca", "n1", user_root(tmp_path, ROOT))
    auth.set_policy(policy(ROOT))
    for domain in ("foo.example", None):
        new = pki.make_root("new", domain)
        with pytest.raises(IdentityError, match="a root rotation keeps the trust domain"):
            auth.rotate_add(pki.cert_pem(new[0]), pki.key_pem(new[1]))
    assert len(auth.bundle.roots) == 1
    # A root the node makes for the rotation keeps the trust domain.
    auth.rotate_add(None, None)
    auth.rotate_switch()
    assert pki.root_trust_domain(auth.root) == ROOT


def test_a_trust_domain_that_is_not_one_is_refused() -> None:
    with pytest.raises(IdentityError, match="is not a trust domain"):
        pki.check_trust_domain("Bar.Example")
    root, _ = pki.make_root("odd", "bar..example")
    with pytest.raises(IdentityError, match="is not a trust domain"):
        pki.root_trust_domain(root)
