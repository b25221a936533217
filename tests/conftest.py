"""Session-wide hooks: the debug-build run (tests/fastpath/debugbuild.py) starts in the
background as soon as its tests are collected, and those tests move to the end of the
run, so the build and its suites overlap the rest of the suite instead of following it."""

from __future__ import annotations

import pytest

import debugbuild

DEBUG_BUILD_TESTS = "tests/fastpath/test_debug_build.py::"
RUN = pytest.StashKey[debugbuild.Run]()


@pytest.hookimpl(trylast=True)      # after -k / -m have deselected what they do
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    later = [item for item in items if item.nodeid.startswith(DEBUG_BUILD_TESTS)]
    if not later:
        return
    items[:] = [item for item in items if item not in later] + later
    if not config.option.collectonly:       # (a listing runs nothing)
        config.stash[RUN] = debugbuild.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is not None:
        run.stop()


@pytest.fixture(scope="session")
def debug_run(request: pytest.FixtureRequest) -> debugbuild.Run:
    """The background debug-build run this session started."""
    return request.config.stash[RUN]
