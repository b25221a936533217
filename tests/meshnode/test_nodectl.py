"""nodectl's host settings: net.ipv4.tcp_migrate_req, set where it may be, never fatal."""
from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.nodectl import migrate_queued_connections

pytestmark = pytest.mark.timeout(30)


def test_migrate_req_is_set_where_writable(tmp_path: Path) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    assert migrate_queued_connections(sysctl).startswith("set net.ipv4.tcp_migrate_req=1")
    assert sysctl.read_text().strip() == "1"
    assert migrate_queued_connections(sysctl).startswith("net.ipv4.tcp_migrate_req is 1")


def test_migrate_req_missing_or_read_only_is_said_not_fatal(tmp_path: Path) -> None:
    said = migrate_queued_connections(tmp_path / "absent")
    assert "not available" in said and "may be reset" in said
    # Readable, never writable (not even by root): as /proc/sys is in most containers.
    said = migrate_queued_connections(Path("/proc/version"))
    assert said.startswith("cannot set net.ipv4.tcp_migrate_req") and "may be reset" in said
