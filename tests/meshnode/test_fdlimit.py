"""meshnode.fdlimit: a worker's descriptor limit raised to the hard one, and the engine's
slots sized from it (two descriptors a slot, a reserve kept, the pool within memory)."""
from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from meshnode import fdlimit

pytestmark = pytest.mark.timeout(60)

GIB = 1 << 30


def test_raise_nofile_reaches_the_hard_limit_in_a_process_started_low() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)

    def start_low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    child = subprocess.run(
        [sys.executable, "-c",
         "import json, resource; from meshnode import fdlimit;"
         "r = fdlimit.raise_nofile();"
         "print(json.dumps([r, resource.getrlimit(resource.RLIMIT_NOFILE)]))"],
        capture_output=True, text=True, timeout=30, preexec_fn=start_low, check=True)
    (before, now), limits = json.loads(child.stdout)
    expected = hard if hard != resource.RLIM_INFINITY else fdlimit._nr_open()
    assert before == low
    assert now == limits[0] == expected


def test_slots_are_two_descriptors_each_after_the_reserve() -> None:
    assert fdlimit.engine_slots(1024, 32768, ram_bytes=16 * GIB) == (1024 - 256) // 2
    assert fdlimit.engine_slots(20000, 32768, ram_bytes=16 * GIB) == (20000 - 2500) // 2
    # Room for every slot's two descriptors and the reserve, whatever the limit.
    for nofile in (300, 1024, 4096, 65536, 1048576):
        slots = fdlimit.engine_slots(nofile, 32768, ram_bytes=1 << 50)
        assert 2 * slots + max(256, nofile // 8) <= nofile or slots == fdlimit.MIN_SLOTS


def test_slots_keep_the_pool_within_a_quarter_of_memory() -> None:
    # 1 GiB: a quarter is 256 MiB, two 32 KiB buffers a slot -> 4096 slots.
    assert fdlimit.engine_slots(1048576, 32768, ram_bytes=GIB) == 4096


def test_slots_stay_within_the_engines_bounds() -> None:
    assert fdlimit.engine_slots(64, 32768, ram_bytes=16 * GIB) == fdlimit.MIN_SLOTS
    assert fdlimit.engine_slots(1 << 24, 1024, ram_bytes=1 << 50) == fdlimit.MAX_SLOTS
