"""The demo's exceptions: each message says what went wrong and what to look at."""

from __future__ import annotations

from ..nodectl import NodeError


class DemoError(NodeError):
    """The demo could not run to its report (the CLI exits 1 with this message)."""


class AppFailed(DemoError):
    """One of the demo's two apps did not start or died."""
