"""Debian tools the tests drive (deploy/install.sh --test installs them), found or the
test skipped; in CI a missing one fails instead, as the install step should have put it
there. Shared by every test folder (pyproject's pytest pythonpath)."""

from __future__ import annotations

import os
import shutil

import pytest


def tool(name: str, package: str) -> str:
    """The path of `name` (from Debian's `package`)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing in CI: deploy/install.sh --test installs {package}")
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path
