"""meshnode.files.open_private: a node secret or shared state file is opened only when it is
this user's own and no one else's to read (a file another user owns could be rewritten
under the node: a key swapped, the workers' shared outlier region truncated)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshnode.files import open_private


class Refused(Exception):
    pass


def test_a_private_file_of_this_user_opens(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"x")
    path.chmod(0o600)
    os.close(open_private(path, os.O_RDONLY, Refused))


def test_a_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"x")
    path.chmod(0o644)
    with pytest.raises(Refused, match="must be 0600"):
        open_private(path, os.O_RDONLY, Refused)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"x")
    path.chmod(0o600)
    os.chown(path, 4321, 4321)
    with pytest.raises(Refused, match="owned by uid 4321"):
        open_private(path, os.O_RDWR, Refused)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"x")
    target.chmod(0o600)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(Refused):
        open_private(tmp_path / "link", os.O_RDONLY, Refused)
