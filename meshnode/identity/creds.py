"""A worker's TLS credentials: its keys, its certificates, the trust bundle, renewal.

For every identity the worker serves it makes a private key in memory (it never leaves
the process), sends a CSR to the node's ca over the bus, and turns the answer and the
trust bundle into mutual-TLS server and client contexts for the data plane. It renews
at ``rotate_at`` of the lifetime with jitter (so the workers of a node do not all call
at once), retries with backoff while the ca is away, and keeps serving with what it
has until expiry; a certificate close to expiry without renewal is logged and shown in
the health beat (and so in metrics) long before it fails.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bus.errors import BusError, RemoteError
from bus.request import Client

from fastpath.engine import ALPN_TCP
from fastpath.errors import TLSError
from fastpath.keys import chain_validity, make_csr_pem, new_key_pem
from fastpath.tls import TLSContext

from .. import logs

log = logging.getLogger("meshnode.identity")

# Offered by clients and accepted by servers between nodes: opaque TCP now, HTTP/1.1 next.
ALPN = [ALPN_TCP, b"http/1.1"]
# Renewal jitter as a share of the lifetime, either side of rotate_at.
JITTER_SHARE = 0.05
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0
# Warn when this share of the lifetime is left and renewal has not succeeded.
WARN_SHARE = 0.2


@dataclass
class Contexts:
    """What the data plane loads for one identity; replaced whole, never mutated."""

    server: TLSContext
    client: TLSContext


@dataclass
class Credential:
    identity: str
    key_pem: bytes = field(default_factory=new_key_pem)
    chain_pem: bytes | None = None
    not_before: float = 0.0
    not_after: float = 0.0
    issuer_generation: int = 0
    renew_at: float = 0.0  # wall clock; 0 = now
    failures: int = 0
    retry_at: float = 0.0
    warned_at: float = 0.0
    contexts: Contexts | None = None


def _iso(posix: float) -> str:
    return dt.datetime.fromtimestamp(posix, dt.timezone.utc).isoformat()


def build_contexts(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> Contexts:
    """Server and client mTLS contexts (TLS 1.3, peer cert required, bundle as trust)."""
    return Contexts(
        server=TLSContext.for_mesh(True, chain_pem, key_pem, bundle_pem, ALPN),
        client=TLSContext.for_mesh(False, chain_pem, key_pem, bundle_pem, ALPN))


class WorkerIdentity:
    """The credentials of one worker, driven from its agent loop by ``tick``."""

    def __init__(self, client: Client, worker: str, *, rotate_at: float = 0.5,
                 on_contexts: Callable[[str, Contexts | None], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.worker = client, worker
        self.rotate_at = rotate_at
        self.creds: dict[str, Credential] = {}
        self.bundle_pem: bytes = b""
        self.bundle_generation = 0
        self.issuer_generation = 0
        self.renewal_failures = 0
        self._on_contexts = on_contexts
        self._clock = clock

    # --- inputs -----------------------------------------------------------------

    def want(self, identities: set[str], rotate_at: float | None = None) -> None:
        """The identities this worker serves now (from the config snapshot)."""
        if rotate_at is not None:
            self.rotate_at = rotate_at
        for identity in identities - set(self.creds):
            self.creds[identity] = Credential(identity)
        for identity in set(self.creds) - identities:
            del self.creds[identity]
            if self._on_contexts:
                self._on_contexts(identity, None)

    def on_bundle(self, state: dict[str, Any]) -> None:
        """A new trust bundle: rebuild every context; a new issuer: re-issue now."""
        roots = state.get("roots")
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            logs.event(log, "cert.bundle.refused", logging.WARNING, reason="malformed")
            return
        self.bundle_pem = "".join(roots).encode()
        self.bundle_generation = int(state.get("generation", 0))
        issuer_generation = int(state.get("issuer_generation", 0))
        if issuer_generation > self.issuer_generation:
            self.issuer_generation = issuer_generation
            for cred in self.creds.values():
                if cred.issuer_generation < issuer_generation:
                    cred.renew_at, cred.retry_at = 0.0, 0.0  # re-issue under the new issuer
        for cred in self.creds.values():
            self._install(cred)
        logs.event(log, "cert.bundle.installed", generation=self.bundle_generation,
                   roots=len(roots))

    # --- the loop ---------------------------------------------------------------

    def tick(self) -> None:
        now = self._clock()
        for cred in list(self.creds.values()):
            if now >= cred.renew_at and now >= cred.retry_at:
                self._renew(cred, now)
            self._warn_if_expiring(cred, now)

    def _renew(self, cred: Credential, now: float) -> None:
        # A fresh key per certificate: a stolen old key dies with its cert. Made with
        # fastpath.keys (OpenSSL), not `cryptography`: a worker does not load it.
        key_pem = new_key_pem()
        csr = make_csr_pem(key_pem, cred.identity)
        try:
            reply = self.client.call("ca", "sign", {"identity": cred.identity, "csr": csr.decode(),
                                                    "worker": self.worker}, timeout_s=2.0)
            chain = str(reply["chain"]).encode()
            not_before, not_after = chain_validity(chain)
        except (BusError, KeyError, TypeError, TLSError) as exc:
            cred.failures += 1
            self.renewal_failures += 1
            backoff = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(cred.failures - 1, 10))
            if cred.not_after:  # never wait past a tenth of what is left
                backoff = min(backoff, max(BACKOFF_MIN_S, (cred.not_after - now) / 10))
            cred.retry_at = now + backoff * random.uniform(0.8, 1.2)
            refused = isinstance(exc, RemoteError) and exc.kind == "refused"
            logs.event(log, "cert.renewal.failed", logging.WARNING if refused else logging.INFO,
                       identity=cred.identity, error=str(exc), retry_in_s=round(backoff, 2))
            return
        cred.key_pem, cred.chain_pem = key_pem, chain
        cred.not_before, cred.not_after = not_before, not_after
        cred.issuer_generation = int(reply.get("issuer_generation", 0))
        cred.failures, cred.retry_at, cred.warned_at = 0, 0.0, 0.0
        life = cred.not_after - now
        share = self.rotate_at + random.uniform(-JITTER_SHARE, JITTER_SHARE)
        cred.renew_at = now + life * min(max(share, 0.1), 0.9)
        self._install(cred)
        logs.event(log, "cert.rotated", identity=cred.identity,
                   not_after=_iso(not_after),
                   renew_in_s=round(cred.renew_at - now, 1))

    def _install(self, cred: Credential) -> None:
        if cred.chain_pem is None or not self.bundle_pem:
            return
        try:
            cred.contexts = build_contexts(cred.chain_pem, cred.key_pem, self.bundle_pem)
        except Exception as exc:  # a context that cannot be built keeps the previous one
            logs.event(log, "cert.install.failed", logging.ERROR, identity=cred.identity,
                       error=f"{type(exc).__name__}: {exc}")
            return
        if self._on_contexts:
            self._on_contexts(cred.identity, cred.contexts)

    def _warn_if_expiring(self, cred: Credential, now: float) -> None:
        if not cred.not_after:
            return
        life = cred.not_after - cred.not_before
        left = cred.not_after - now
        if left < WARN_SHARE * life and now - cred.warned_at >= max(1.0, life / 20):
            cred.warned_at = now
            logs.event(log, "cert.expiring", logging.WARNING, identity=cred.identity,
                       seconds_left=round(left, 1), renewal_failures=cred.failures)

    # --- views ------------------------------------------------------------------

    def contexts(self, identity: str) -> Contexts | None:
        cred = self.creds.get(identity)
        return cred.contexts if cred else None

    def health(self) -> dict[str, Any]:
        now = self._clock()
        certs = {}
        for identity, cred in sorted(self.creds.items()):
            if not cred.not_after:
                certs[identity] = {"issued": False}
                continue
            life = cred.not_after - cred.not_before
            certs[identity] = {"issued": True, "not_after": cred.not_after,
                               "issuer_generation": cred.issuer_generation,
                               "expiring": cred.not_after - now < WARN_SHARE * life,
                               "expired": now >= cred.not_after}
        return {"bundle_generation": self.bundle_generation,
                "issuer_generation": self.issuer_generation, "certs": certs,
                "cert_renewal_failures": self.renewal_failures}
