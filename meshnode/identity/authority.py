"""The node's certificate authority: mesh roots, the node issuer, signing and rotation.

State lives in ``RUNTIME_DIR/ca`` (dir 0700, keys 0600) so a restarted ca process keeps
the same root and issuer and every certificate it issued stays valid:

    root.pem, root.key     the active mesh root (made here, or copied from --ca-root once);
                           no root.key on a node whose issuer was signed from its CSR
                           by the root's holder (--ca-issuer): it can sign leaves only
    next-root.pem/.key     a root being rotated in (between ``add`` and ``switch``)
    issuer.pem, issuer.key the node issuer, signed by the active root
    bundle.json            the trust bundle: every root peers must accept, with generations

The trust domain is the root's (DESIGN §4): a root that names one (``spiffe://TD`` in its
SANs, ``meshnode ca init --trust-domain``) has identities signed in it alone, and a
rotation keeps it; control learns it before it starts (``planned_root``) and refuses a
Mesh that names another. A root that names none (the node's own) serves the Mesh's.

A root is rotated in three steps so that no handshake fails (DESIGN §4): ``add`` puts
the new root in the bundle next to the old one; ``switch`` makes it active, signs a new
issuer with it and bumps ``issuer_generation`` so workers re-issue at once; ``finish``
drops every other root from the bundle. Between steps the caller waits until every
worker has caught up.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from .. import logs
from . import pki
from .errors import IdentityError, NotReady, Refused

log = logging.getLogger("meshnode.ca")

DEFAULT_ISSUER_TTL_S = 365 * 86400
# An issuer with less than this share of its life left is replaced at start, so it
# never expires under the workload certificates it signed.
ISSUER_MIN_LIFE_SHARE = 0.2


def ca_dir(runtime_dir: Path | str) -> Path:
    """Where a node's ca keeps its state."""
    return Path(runtime_dir) / "ca"


def planned_root(directory: Path, seed_root: Path | None,
                 seed_issuer: Path | None = None) -> x509.Certificate | None:
    """The mesh root a node's ca runs under, known before it starts (the choice
    Authority.open makes): the one it keeps in `directory`, else the one it will import
    from `seed_issuer` or `seed_root`; None when it will make its own."""
    if (directory / "root.pem").exists():
        path = directory / "root.pem"
    elif seed_issuer is not None:
        path = seed_issuer / "root.pem"
    elif seed_root is not None:
        path = seed_root / "root.pem"
    else:
        return None
    try:
        return pki.load_cert(path.read_bytes(), str(path))
    except OSError as exc:
        raise IdentityError(f"cannot read the mesh root {path}: {exc}") from None


@dataclass
class Policy:
    """What control's snapshot tells the authority: who may get which identity."""

    trust_domain: str
    workload_ttl_s: float
    issuer_ttl_s: float
    local_identities: frozenset[str]

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> "Policy":
        mesh = snapshot.get("mesh") or {}
        local = snapshot.get("local") or []
        return cls(trust_domain=str(mesh.get("trust_domain", "cluster.local")),
                   workload_ttl_s=float(mesh.get("workload_ttl_s", 86400.0)),
                   issuer_ttl_s=float(mesh.get("issuer_ttl_s", DEFAULT_ISSUER_TTL_S)),
                   local_identities=frozenset(str(w["identity"]) for w in local
                                              if isinstance(w, dict) and "identity" in w))


@dataclass
class Bundle:
    roots: list[bytes]
    generation: int = 1
    issuer_generation: int = 1

    def to_state(self) -> dict[str, Any]:
        """The Clone-pattern value published on ``cert.bundle``."""
        return {"roots": [r.decode() for r in self.roots], "generation": self.generation,
                "issuer_generation": self.issuer_generation}


@dataclass
class Issued:
    worker: str
    cert: x509.Certificate


@dataclass
class Authority:
    dir: Path
    node: str
    root: x509.Certificate
    root_key: pki.PrivateKey | None  # None: the issuer came signed from the root's holder
    root_self_made: bool
    issuer: x509.Certificate
    issuer_key: pki.PrivateKey
    bundle: Bundle
    policy: Policy | None = None
    issued: dict[tuple[str, str], Issued] = field(default_factory=dict)
    certs_issued: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        pki.root_trust_domain(self.root, "the mesh root")  # one it can tell, or refused now

    # --- start ------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, node: str, seed_root: Path | None,
             seed_issuer: Path | None = None) -> "Authority":
        """Load (or make, on first start) the root, bundle and issuer of this node."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        root_pem = directory / "root.pem"
        if not root_pem.exists() and seed_issuer is not None:
            cls._import_issuer(directory, seed_issuer)
        if root_pem.exists() and not (directory / "root.key").exists():
            root = pki.load_cert(root_pem.read_bytes(), str(root_pem))
            issuer = pki.load_cert((directory / "issuer.pem").read_bytes(), "issuer.pem")
            issuer_key = pki.load_key((directory / "issuer.key").read_bytes(), "issuer.key")
            auth = cls(directory, node, root, None, False, issuer, issuer_key,
                       cls._read_bundle(directory, root))
            auth._save_bundle()
            return auth
        if root_pem.exists():
            root, root_key = pki.read_root_dir(directory)
            self_made = (directory / "root.self-made").exists()
        elif seed_root is not None:
            root, root_key = pki.read_root_dir(seed_root)
            cls._write_root(directory, "root", root, root_key)
            self_made = False
            logs.event(log, "ca.root.imported", source=str(seed_root))
        else:
            # Like Istio's self-signed CA: the embedded default needs no set-up step.
            root, root_key = pki.make_root(f"meshnode root (node {node})")
            cls._write_root(directory, "root", root, root_key)
            pki.write_public(directory / "root.self-made", b"made by this node's ca process\n")
            self_made = True
            logs.event(log, "ca.root.created", self_made=True)
        bundle = cls._read_bundle(directory, root)
        auth = cls(directory, node, root, root_key, self_made, *cls._issuer(directory, root,
                                                                             root_key, node),
                   bundle)
        auth._save_bundle()
        return auth

    @staticmethod
    def _import_issuer(directory: Path, source: Path) -> None:
        """Take an issuer signed from this node's CSR: issuer.key (made here by
        ``meshnode ca issuer-csr``), issuer.pem (signed by the root's holder), root.pem."""
        try:
            root = pki.load_cert((source / "root.pem").read_bytes(), str(source / "root.pem"))
            issuer = pki.load_cert((source / "issuer.pem").read_bytes(), str(source / "issuer.pem"))
            key = pki.load_key((source / "issuer.key").read_bytes(), str(source / "issuer.key"))
        except OSError as exc:
            raise IdentityError(f"cannot read the node issuer in {source}: {exc}") from None
        if issuer.public_key().public_numbers() != key.public_key().public_numbers():
            raise IdentityError(f"{source}: issuer.key does not match issuer.pem")
        if not pki.signed_by(issuer, root):
            raise IdentityError(f"{source}: issuer.pem is not signed by root.pem")
        pki.write_private(directory / "issuer.key", pki.key_pem(key))
        pki.write_public(directory / "issuer.pem", pki.cert_pem(issuer))
        pki.write_public(directory / "root.pem", pki.cert_pem(root))
        logs.event(log, "ca.issuer.imported", source=str(source),
                   not_after=issuer.not_valid_after_utc.isoformat())

    @staticmethod
    def _write_root(directory: Path, stem: str, cert: x509.Certificate,
                    key: pki.PrivateKey) -> None:
        pki.write_private(directory / f"{stem}.key", pki.key_pem(key))
        pki.write_public(directory / f"{stem}.pem", pki.cert_pem(cert))

    @staticmethod
    def _read_bundle(directory: Path, root: x509.Certificate) -> Bundle:
        path = directory / "bundle.json"
        active = pki.cert_pem(root)
        if not path.exists():
            return Bundle([active])
        try:
            doc = json.loads(path.read_text())
            bundle = Bundle([r.encode() for r in doc["roots"]], int(doc["generation"]),
                            int(doc["issuer_generation"]))
            for pem in bundle.roots:
                pki.load_cert(pem, str(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{path}: unreadable trust bundle: {exc}") from None
        if active not in bundle.roots:  # the active root is always trusted
            bundle.roots.append(active)
            bundle.generation += 1
        return bundle

    @staticmethod
    def _issuer(directory: Path, root: x509.Certificate, root_key: pki.PrivateKey, node: str,
                ttl_s: float = DEFAULT_ISSUER_TTL_S) -> tuple[x509.Certificate, pki.PrivateKey]:
        cert_path, key_path = directory / "issuer.pem", directory / "issuer.key"
        if cert_path.exists() and key_path.exists():
            cert = pki.load_cert(cert_path.read_bytes(), str(cert_path))
            key = pki.load_key(key_path.read_bytes(), str(key_path))
            life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
            left = cert.not_valid_after_utc.timestamp() - time.time()
            if pki.signed_by(cert, root) and left > ISSUER_MIN_LIFE_SHARE * life:
                return cert, key
            logs.event(log, "ca.issuer.replaced", reason="expiring or signed by another root")
        cert, key = pki.make_issuer(root, root_key, node, ttl_s)
        pki.write_private(key_path, pki.key_pem(key))
        pki.write_public(cert_path, pki.cert_pem(cert))
        logs.event(log, "ca.issuer.created", not_after=cert.not_valid_after_utc.isoformat())
        return cert, key

    def _save_bundle(self) -> None:
        doc = {"roots": [r.decode() for r in self.bundle.roots],
               "generation": self.bundle.generation,
               "issuer_generation": self.bundle.issuer_generation}
        pki.write_public(self.dir / "bundle.json", json.dumps(doc, indent=1).encode())

    def set_policy(self, policy: Policy) -> None:
        """Take control's config; an issuer made before it (at start, with the default
        lifetime) is replaced when it does not fit the configured ``issuerTTL``. Chains
        already issued keep verifying: the old issuer is still signed by the root."""
        self.policy = policy
        life = (self.issuer.not_valid_after_utc - self.issuer.not_valid_before_utc).total_seconds()
        left = self.issuer.not_valid_after_utc.timestamp() - time.time()
        # pki backdates not_before by the clock skew allowance; allow for it and a little more.
        if self.root_key is None:
            return  # the root's holder chose this issuer's lifetime
        if life > policy.issuer_ttl_s + 2 * pki.CLOCK_SKEW_S or \
                left < ISSUER_MIN_LIFE_SHARE * policy.issuer_ttl_s:
            self.issuer, self.issuer_key = pki.make_issuer(self.root, self.root_key, self.node,
                                                           policy.issuer_ttl_s)
            pki.write_private(self.dir / "issuer.key", pki.key_pem(self.issuer_key))
            pki.write_public(self.dir / "issuer.pem", pki.cert_pem(self.issuer))
            logs.event(log, "ca.issuer.created", reason="issuerTTL from config",
                       not_after=self.issuer.not_valid_after_utc.isoformat())

    # --- signing ----------------------------------------------------------------

    def sign(self, csr_pem: bytes, identity: str, worker: str) -> dict[str, Any]:
        """Sign a worker's CSR for ``identity`` if this node's config places it here."""
        if self.policy is None:  # the normal first second of a node: not a refusal
            raise NotReady("the ca has no mesh config yet; retry shortly")
        try:
            return self._sign(csr_pem, identity, worker)
        except Refused as exc:
            self.refused[exc.reason] += 1
            logs.event(log, "ca.csr.refused", logging.WARNING, identity=identity,
                       worker=worker, reason=exc.reason, error=str(exc))
            raise

    def _sign(self, csr_pem: bytes, identity: str, worker: str) -> dict[str, Any]:
        assert self.policy is not None
        try:
            csr, requested = pki.csr_identity(csr_pem)
        except IdentityError as exc:
            raise Refused(str(exc), "bad-csr") from None
        if requested != identity:
            raise Refused(f"CSR names {requested}, request names {identity}", "bad-csr")
        spiffe = pki.parse_spiffe_id(identity)
        if spiffe.trust_domain != self.policy.trust_domain:
            raise Refused(f"{identity} is outside trust domain {self.policy.trust_domain}",
                          "wrong-trust-domain")
        root_domain = pki.root_trust_domain(self.root)
        if root_domain is not None and spiffe.trust_domain != root_domain:
            raise Refused(f"{identity} is outside trust domain {root_domain}, the mesh "
                          f"root's", "wrong-trust-domain")
        if identity not in self.policy.local_identities:
            raise Refused(f"{identity} is not placed on node {self.node}: no Workload here "
                          f"runs as service account {spiffe.service_account} in namespace "
                          f"{spiffe.namespace}", "not-placed")
        cert = pki.sign_workload(csr, identity, self.issuer, self.issuer_key,
                                 self.policy.workload_ttl_s)
        self.certs_issued += 1
        self.issued[(identity, worker)] = Issued(worker, cert)
        logs.event(log, "ca.cert.issued", identity=identity, worker=worker,
                   serial=format(cert.serial_number, "x"),
                   not_after=cert.not_valid_after_utc.isoformat())
        return {"chain": (pki.cert_pem(cert) + pki.cert_pem(self.issuer)).decode(),
                "not_after": cert.not_valid_after_utc.timestamp(),
                "issuer_generation": self.bundle.issuer_generation}

    # --- rotation ---------------------------------------------------------------

    def rotate_add(self, root_pem: bytes | None, root_key_pem: bytes | None) -> dict[str, Any]:
        """Step 1: trust a new root next to the active one."""
        active = pki.root_trust_domain(self.root)
        if root_pem is not None and root_key_pem is not None:
            cert = pki.load_cert(root_pem, "new root")
            key = pki.load_key(root_key_pem, "new root key")
            pki.check_root(cert, key, "new root")
            self._check_successor(cert, active)
            (self.dir / "next-root.self-made").unlink(missing_ok=True)
        else:  # the node's own successor keeps the trust domain the active root names
            cert, key = pki.make_root(f"meshnode root (node {self.node}, "
                                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())})",
                                      active)
            pki.write_public(self.dir / "next-root.self-made", b"made by this node's ca process\n")
        self._write_root(self.dir, "next-root", cert, key)
        pem = pki.cert_pem(cert)
        if pem not in self.bundle.roots:
            self.bundle.roots.append(pem)
        self.bundle.generation += 1
        self._save_bundle()
        logs.event(log, "ca.rotate.added", generation=self.bundle.generation)
        return self.rotation_state()

    def _check_successor(self, cert: x509.Certificate, active: str | None) -> None:
        """A rotation keeps the trust domain, so every identity stays what it is."""
        new = pki.root_trust_domain(cert, "new root")
        if active is not None:
            if new != active:
                named = f"trust domain {new}" if new else "no trust domain"
                raise IdentityError(f"new root: it names {named}, the active root names "
                                    f"{active}: a root rotation keeps the trust domain")
        elif new is not None:
            if self.policy is None:
                raise IdentityError("new root: it names a trust domain and the ca has no mesh "
                                    "config to check it against yet; retry shortly")
            if new != self.policy.trust_domain:
                raise IdentityError(f"new root: it names trust domain {new}, the mesh's "
                                    f"identities are in {self.policy.trust_domain}: a root "
                                    f"rotation keeps the trust domain")

    def rotate_switch(self) -> dict[str, Any]:
        """Step 2: make the new root active, with a new issuer; workers re-issue."""
        next_pem = self.dir / "next-root.pem"
        if not next_pem.exists():
            raise IdentityError("no root is being rotated in: run the add step first")
        cert = pki.load_cert(next_pem.read_bytes(), str(next_pem))
        key = pki.load_key((self.dir / "next-root.key").read_bytes(), "next-root.key")
        ttl = self.policy.issuer_ttl_s if self.policy else DEFAULT_ISSUER_TTL_S
        issuer, issuer_key = pki.make_issuer(cert, key, self.node, ttl)
        # Order matters for a crash in between: the issuer files first, then the root;
        # at start an issuer not signed by root.pem is replaced anyway.
        pki.write_private(self.dir / "issuer.key", pki.key_pem(issuer_key))
        pki.write_public(self.dir / "issuer.pem", pki.cert_pem(issuer))
        self._write_root(self.dir, "root", cert, key)
        self_made = (self.dir / "next-root.self-made").exists()
        if self_made:
            (self.dir / "next-root.self-made").replace(self.dir / "root.self-made")
        else:
            (self.dir / "root.self-made").unlink(missing_ok=True)
        (self.dir / "next-root.pem").unlink()
        (self.dir / "next-root.key").unlink()
        self.root, self.root_key, self.root_self_made = cert, key, self_made
        self.issuer, self.issuer_key = issuer, issuer_key
        self.bundle.issuer_generation += 1
        self.bundle.generation += 1
        self._save_bundle()
        logs.event(log, "ca.rotate.switched", issuer_generation=self.bundle.issuer_generation)
        return self.rotation_state()

    def rotate_finish(self) -> dict[str, Any]:
        """Step 3: trust only the active root."""
        if (self.dir / "next-root.pem").exists():
            raise IdentityError("a new root was added but not switched to: run the switch step")
        self.bundle.roots = [pki.cert_pem(self.root)]
        self.bundle.generation += 1
        self._save_bundle()
        logs.event(log, "ca.rotate.finished", generation=self.bundle.generation)
        return self.rotation_state()

    def rotation_state(self) -> dict[str, Any]:
        return {"generation": self.bundle.generation,
                "issuer_generation": self.bundle.issuer_generation,
                "roots": len(self.bundle.roots),
                "pending": (self.dir / "next-root.pem").exists()}

    # --- views ------------------------------------------------------------------

    def inspect(self) -> dict[str, Any]:
        roots = [pki.describe(pki.load_cert(pem, "bundle"), "trusted root")
                 for pem in self.bundle.roots]
        active = pki.describe(self.root, "active root")
        active["self_made"] = self.root_self_made
        active["key_held"] = self.root_key is not None
        now = time.time()
        leaves = []
        for (identity, worker), issued in sorted(self.issued.items()):
            if issued.cert.not_valid_after_utc.timestamp() > now:
                leaves.append({**pki.describe(issued.cert, "workload"), "worker": worker})
        return {"node": self.node, "root": active, "bundle": roots,
                "trust_domain": self.policy.trust_domain if self.policy else None,
                "root_trust_domain": pki.root_trust_domain(self.root),
                "issuer": pki.describe(self.issuer, "node issuer"), "workloads": leaves,
                "rotation": self.rotation_state()}

    def health(self) -> dict[str, Any]:
        return {"issuing": self.policy is not None, "certs_issued": self.certs_issued,
                "csr_refused": dict(self.refused),
                "bundle_generation": self.bundle.generation,
                "issuer_not_after": self.issuer.not_valid_after_utc.timestamp(),
                "root_not_after": self.root.not_valid_after_utc.timestamp()}
