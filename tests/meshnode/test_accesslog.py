"""Telemetry's access log file (meshnode.accesslog.AccessLog) on a real directory: whole
lines, rotation at line boundaries, and a file removed or moved away under it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from meshnode.accesslog import AccessLog

pytestmark = pytest.mark.timeout(10)

LINE = b'{"path":"/x"}\n'


def test_a_file_removed_or_moved_away_under_it_is_made_again_at_its_name(tmp_path: Path) -> None:
    """Else its lines went on into a file nobody sees, and the next rotation, renaming a
    name that was gone, raised and ended telemetry."""
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(path, 10 * len(LINE), 2)
    log.write(LINE * 3)
    path.unlink()
    log.write(LINE)
    assert path.read_bytes() == LINE
    path.rename(tmp_path / "logs" / "access.log-moved")     # as logrotate does
    log.write(LINE * 2)
    assert path.read_bytes() == LINE * 2
    shutil.rmtree(tmp_path / "logs")
    log.write(LINE * 15)                                    # (and past a rotation)
    assert path.read_bytes() == LINE * 5
    assert (tmp_path / "logs" / "access.log.1").read_bytes() == LINE * 10
    assert os.stat(path).st_mode & 0o777 == 0o600
    log.close()


def test_a_line_longer_than_max_bytes_goes_alone_and_no_backup_keeps_none(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, 4, 0)
    log.write(LINE * 3)
    assert path.read_bytes() == LINE and sorted(os.listdir(tmp_path)) == ["access.log"]
    log.close()
