"""bus.endpoints: a private socket dir, and ipc paths that fit in sun_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from bus.broker import Broker
from bus.endpoints import Endpoints, prepare
from bus.errors import BusError, RuntimeDirError

pytestmark = pytest.mark.timeout(10)

SUN_PATH_MAX = 107
LONGEST_NAME = "/bus/events-out.sock"  # the longest of the three addresses


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def runtime_dir_of_length(base: Path, length: int, char: str = "d") -> Path:
    """A runtime dir under ``base`` whose path is exactly ``length`` bytes long."""
    pad = length - len(os.fsencode(base)) - 1
    assert pad > 0, "base dir too long for this test"
    name = char * (pad // len(char.encode()))
    assert len(os.fsencode(base / name)) == length
    return base / name


def test_addresses_are_ipc_files_in_the_bus_dir(runtime_dir: Path) -> None:
    ep = Endpoints.for_runtime_dir(runtime_dir)
    assert ep.dir == runtime_dir.resolve() / "bus"
    assert ep.events_in == f"ipc://{ep.dir}/events-in.sock"
    assert ep.events_out == f"ipc://{ep.dir}/events-out.sock"
    assert ep.requests == f"ipc://{ep.dir}/requests.sock"


def test_relative_runtime_dir_is_resolved(runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(runtime_dir)
    assert Endpoints.for_runtime_dir("run").dir == runtime_dir.resolve() / "run" / "bus"


def test_prepare_creates_the_bus_dir_private(runtime_dir: Path) -> None:
    ep = Endpoints.for_runtime_dir(runtime_dir / "a" / "b")  # parents created too
    old_umask = os.umask(0)  # a permissive umask must not loosen the dir
    try:
        prepare(ep)
    finally:
        os.umask(old_umask)
    assert ep.dir.is_dir()
    assert mode_of(ep.dir) == 0o700


@pytest.mark.parametrize("existing_mode", [0o755, 0o777, 0o500])
def test_prepare_tightens_an_existing_dir(runtime_dir: Path, existing_mode: int) -> None:
    ep = Endpoints.for_runtime_dir(runtime_dir)
    ep.dir.mkdir()
    os.chmod(ep.dir, existing_mode)
    prepare(ep)
    assert mode_of(ep.dir) == 0o700
    prepare(ep)  # idempotent
    assert mode_of(ep.dir) == 0o700


def test_broker_makes_the_dir_private(runtime_dir: Path, ctx: zmq.Context) -> None:
    ep = Endpoints.for_runtime_dir(runtime_dir)
    ep.dir.mkdir(mode=0o755)
    os.chmod(ep.dir, 0o755)
    broker = Broker(ctx, ep)
    try:
        assert mode_of(ep.dir) == 0o700
        assert {p.name for p in ep.dir.iterdir()} == {
            "events-in.sock", "events-out.sock", "requests.sock"}
    finally:
        broker.close()


def test_too_long_runtime_dir_is_refused_clearly(runtime_dir: Path) -> None:
    deep = runtime_dir_of_length(runtime_dir, SUN_PATH_MAX - len(LONGEST_NAME) + 1)
    ep = Endpoints.for_runtime_dir(deep)
    with pytest.raises(RuntimeDirError) as info:
        prepare(ep)
    message = str(info.value)
    assert str(deep) in message
    assert "too deep" in message and "108 > 107" in message and "shorter path" in message
    assert not deep.exists(), "nothing is created for a refused dir"
    assert isinstance(info.value, BusError)


def test_longest_path_that_fits_really_binds(runtime_dir: Path, ctx: zmq.Context) -> None:
    # The limit is ZeroMQ's: at exactly 107 bytes the broker must bind for real.
    ep = Endpoints.for_runtime_dir(runtime_dir_of_length(runtime_dir,
                                                         SUN_PATH_MAX - len(LONGEST_NAME)))
    assert len(os.fsencode(ep.events_out)) - len("ipc://") == SUN_PATH_MAX
    broker = Broker(ctx, ep)
    broker.close()


def test_non_ascii_runtime_dir_is_measured_in_bytes(runtime_dir: Path, ctx: zmq.Context) -> None:
    # Few enough characters to pass a character count, too many bytes for sun_path:
    # it must be refused by prepare, not fail later inside ZeroMQ's bind.
    deep = runtime_dir_of_length(runtime_dir, SUN_PATH_MAX - len(LONGEST_NAME) + 2, "é")
    ep = Endpoints.for_runtime_dir(deep)
    assert len(ep.events_out) - len("ipc://") <= SUN_PATH_MAX < len(os.fsencode(ep.events_out))
    with pytest.raises(RuntimeDirError, match="too deep"):
        Broker(ctx, ep)


def test_unusable_runtime_dir_is_a_runtime_dir_error(runtime_dir: Path) -> None:
    blocker = runtime_dir / "file"
    blocker.write_text("not a dir")
    with pytest.raises(RuntimeDirError, match="cannot prepare bus dir"):
        prepare(Endpoints.for_runtime_dir(blocker))
