"""The node's TLS session ticket keys, shared by its proxy workers.

Why: each worker is a process of its own, and the inbound side's tickets are issued
and decrypted by its route table (fastpath.engine's dispatch context), with random
keys of each table's own. The workers share the inbound port (SO_REUSEPORT), so a peer
node's next connection lands on any of them: with N workers only about 1/N of
reconnections could resume, and none after a config push (a new table). The rest
paid full handshakes (two signatures, two chain checks). With one key set in every
worker's tables, any worker resumes a session any table issued. (HAProxy's
``tls-ticket-keys`` file and nginx's ``ssl_session_ticket_key`` share keys between
processes the same way.)

`meshnode up` writes a fresh node secret (mode 0600, in the runtime dir, itself 0700)
before it starts the workers, so tickets change with every start of the node. What
`derive` makes from that secret and the trust bundle is the base of the keys: a new
bundle (a root added or removed) means new keys, so no session verified under the old
trust resumes under the new one; a renewed certificate keeps them. The engine derives
from the base one key per period of the wall clock (fastpath.tls set_ticket_keys,
TLS_TICKET_PERIOD_S: an hour), so the keys rotate without a restart and every worker
holds the same ones without talking; a ticket opens in its period and the next. A
worker that finds no usable secret keeps per-table keys and says so in its log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from .files import open_private

KEYS_BYTES = 80  # fastpath.tls TLS_TICKET_KEYS_BYTES: name, HMAC key, AES key
SECRET_BYTES = 32
RELATIVE_PATH = Path("tls") / "ticket.secret"


class TicketKeysError(Exception):
    """The secret file is missing, the wrong size, or readable by others."""


def path_in(runtime_dir: str | os.PathLike[str]) -> Path:
    return Path(runtime_dir) / RELATIVE_PATH


def make(runtime_dir: str | os.PathLike[str]) -> Path:
    """Write a fresh node secret in `runtime_dir`, replacing any older one."""
    path = path_in(runtime_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # a worker reading meanwhile sees the old secret or the new, whole
    return path


def load(runtime_dir: str | os.PathLike[str]) -> bytes:
    """The node secret; TicketKeysError says why there is none to use."""
    path = path_in(runtime_dir)
    fd = open_private(path, os.O_RDONLY, TicketKeysError)
    try:
        data = os.read(fd, SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != SECRET_BYTES:
        raise TicketKeysError(f"{path}: {len(data)} bytes, not {SECRET_BYTES}")
    return data


def derive(secret: bytes, bundle_pem: bytes) -> bytes:
    """The ticket keys for the trust bundle `bundle_pem`: HMAC-SHA512 of the bundle's
    digest under the node secret, expanded to KEYS_BYTES (HKDF-expand style)."""
    info = b"meshnode ticket keys\x00" + hashlib.sha256(bundle_pem).digest()
    out, block, counter = b"", b"", 1
    while len(out) < KEYS_BYTES:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha512).digest()
        out += block
        counter += 1
    return out[:KEYS_BYTES]
