"""meshnode.ticketkeys: the node secret `meshnode up` writes and the ticket keys the
workers derive from it and the trust bundle."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshnode import ticketkeys


def test_make_writes_a_private_secret_fresh_each_time(tmp_path: Path) -> None:
    path = ticketkeys.make(tmp_path)
    assert path == tmp_path / "tls" / "ticket.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first = ticketkeys.load(tmp_path)
    assert len(first) == ticketkeys.SECRET_BYTES
    ticketkeys.make(tmp_path)                       # the next `meshnode up`
    assert ticketkeys.load(tmp_path) != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["ticket.secret"]


def test_load_refuses_a_missing_short_or_readable_secret(tmp_path: Path) -> None:
    with pytest.raises(ticketkeys.TicketKeysError, match="No such file"):
        ticketkeys.load(tmp_path)
    path = ticketkeys.make(tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(ticketkeys.TicketKeysError, match="must be 0600"):
        ticketkeys.load(tmp_path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ticketkeys.TicketKeysError, match="5 bytes"):
        ticketkeys.load(tmp_path)


def test_keys_follow_the_secret_and_the_trust_bundle() -> None:
    secret, other_secret = os.urandom(32), os.urandom(32)
    keys = ticketkeys.derive(secret, b"root A")
    assert len(keys) == ticketkeys.KEYS_BYTES == 80
    assert ticketkeys.derive(secret, b"root A") == keys            # every worker alike
    assert ticketkeys.derive(secret, b"root A\nroot B") != keys    # a new bundle: new keys
    assert ticketkeys.derive(other_secret, b"root A") != keys      # a restarted node
