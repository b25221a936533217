"""Durable file writes for the node's state (config store, CA keys and certificates).

A node process can be killed at any instant (supervisord, kill -9, power loss), so
state files are replaced atomically: written to a temporary file in the same dir
(created 0600 by mkstemp, so a secret is never readable by others, not even briefly),
fsynced, renamed over the old file, and the dir fsynced so the rename itself is kept.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new bytes."""
    import tempfile  # here: a proxy worker imports this module and never writes (1.3 MB)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if mode != 0o600:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def open_private(path: Path, flags: int, error: type[Exception]) -> int:
    """Open a node secret or shared state file (no symlink followed) and return its
    descriptor; `error` says why not: missing, owned by another user (who could rewrite
    it), or readable by others than its owner."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        raise error(f"{path}: {exc.strerror}") from None
    st = os.fstat(fd)
    mode = st.st_mode
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise error(f"{path}: owned by uid {st.st_uid}, not this node's user ({os.geteuid()})")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.close(fd)
        raise error(f"{path}: mode {stat.S_IMODE(mode):o} lets others read it; it must be 0600")
    return fd
