"""Tests for the outlier region's slots (shared_slots.pxi): endpoints that come and go over
a node's life never fill the region for good. A slot no worker's table has used for the
region's lease is taken over by a new endpoint once the region is full; one still in a
worker's table, or ejected, or under another worker's lock, is not.

The farm of test_engine_outlier (outbound engines mapping one small region, endpoints
in front of apps), with a lease of a fraction of a second. Endpoints that only fill the
region are ports where nothing listens: no request is sent while they are in a table.
"""

from __future__ import annotations

import mmap
import socket
import struct
import time

import pytest

from enginekit import port_of, wait_for
from test_engine_http import mesh_pki  # noqa: F401 (the fixture)
from test_engine_outlier import Farm, MakeFarm, make_farm  # noqa: F401 (the fixture)

pytestmark = pytest.mark.timeout(60)

LEASE_S = 0.3
# Ejecting at the first 500; ejections shorter than the tests, or longer, as each needs.
DETECT = dict(consecutive_5xx=1, interval_s=0.02, max_ejection_percent=100)
# The region's lock in its header: the holder's CLOCK_MONOTONIC nanoseconds (shared_slots.pxi).
LOCK_AT = 16
# The region's layout (shared_slots.pxi, SharedSlot in engine.pxd): a header, then slots of
# 64 bytes with a slot's key, a service's announced ejections and when it was last seen.
HEADER_BYTES = SLOT_BYTES = 64
KEY_AT, EJECTING_AT, SEEN_AT = 0, 28, 40
ANNOUNCED_COUNT_BITS = 8                    # (outlier.pxi: the count, then since when in ms)
ANNOUNCED_MS_MASK = (1 << (32 - ANNOUNCED_COUNT_BITS)) - 1
MASK64 = (1 << 64) - 1


def unused_addresses(n: int) -> list[tuple[str, int]]:
    out = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            out.append(("127.0.0.1", port_of(s)))
    return out


def tracked(farm: Farm, out: int = 0) -> list[bool]:
    return [e["tracked"] for e in farm.outs[out][0].engine.outliers()]


def install(farm: Farm, addresses: list[tuple[str, int]], out: int = 0,
            base_ejection_s: float = 30.0, service: str = "demo/backend:http") -> None:
    farm.outs[out][0].install(farm.table(out, addresses, service,
                                         base_ejection_s=base_ejection_s, **DETECT))


def slot_keys(region: mmap.mmap) -> list[int]:
    slots = struct.unpack_from("<I", region, 8)[0]
    return [struct.unpack_from("<Q", region, HEADER_BYTES + i * SLOT_BYTES + KEY_AT)[0]
            for i in range(slots)]


def service_key(name: str) -> int:
    """The key of a service's own slot (shared_slots.pxi _shared_key: FNV-1a over the
    name and a NUL, then MurmurHash3's finalizer)."""
    h = 0xCBF29CE484222325
    for byte in name.encode() + b"\0":
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * multiplier) & MASK64
    return (h ^ (h >> 33)) or 1


def test_slots_of_endpoints_no_table_has_any_more_go_to_new_endpoints(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    farm = make_farm((500, 200), shared=True, slots=4, lease_s=LEASE_S, install=False)
    install(farm, unused_addresses(3))          # three endpoints and their service: full
    assert tracked(farm) == [True, True, True]
    install(farm, farm.addresses())
    # The others were in use a moment ago: no room for the new endpoints yet.
    assert tracked(farm) == [False, False]
    stats = farm.outs[0][0].stats()
    assert stats["outlier_no_slot"] == 2 and stats["outlier_slots_reclaimed"] == 0
    # Unused for the lease: the loop takes two of their slots over.
    wait_for(lambda: tracked(farm) == [True, True], 5, "the new endpoints' slots")
    assert farm.outs[0][0].stats()["outlier_slots_reclaimed"] == 2
    # They detect as any slot does, from a clean state.
    entries = farm.ejected()
    assert all(e["ejections"] == 0 and e["consecutive_5xx"] == 0 for e in entries.values())
    assert sorted(farm.spread(2).values()) == [1, 1]
    entries = farm.ejected()
    assert entries[farm.port(0)]["ejected"] and not entries[farm.port(1)]["ejected"]
    assert farm.spread(3) == {"app1": 3}


def test_a_slot_another_worker_still_uses_is_not_taken(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    farm = make_farm((200, 200), outs=2, shared=True, slots=4, lease_s=LEASE_S,
                     install=False)
    fillers = unused_addresses(3)
    install(farm, fillers, out=0)
    install(farm, fillers, out=1)
    install(farm, farm.addresses(), out=0)
    time.sleep(4 * LEASE_S)                     # worker 1 keeps them seen all along
    assert tracked(farm, 0) == [False, False]
    assert tracked(farm, 1) == [True, True, True]
    assert all(farm.outs[k][0].stats()["outlier_slots_reclaimed"] == 0 for k in (0, 1))
    install(farm, farm.addresses(), out=1)      # now no worker has them
    wait_for(lambda: tracked(farm, 0) == [True, True], 5, "the slots no worker uses")
    assert tracked(farm, 1) == [True, True]
    assert farm.spread(4, out=1) == {"app0": 2, "app1": 2}


def test_an_ejected_slot_is_kept_until_its_ejection_ends(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    """An ejection outlives the table (the endpoint may come back within it, and must
    still be ejected then): its slot is not taken over before the ejection ends."""
    farm = make_farm((500,), shared=True, slots=2, lease_s=LEASE_S, install=False)
    install(farm, farm.addresses(), base_ejection_s=2.0)    # the endpoint and its service
    assert farm.get() == (500, "app0")
    assert farm.ejected()[farm.port(0)]["ejected"]
    ejected_at = time.monotonic()
    install(farm, unused_addresses(1))
    time.sleep(3 * LEASE_S)
    assert tracked(farm) == [False]
    wait_for(lambda: tracked(farm) == [True], 10, "the slot after the ejection")
    assert time.monotonic() - ejected_at >= 2.0
    assert farm.outs[0][0].stats()["outlier_slots_reclaimed"] == 1


def test_a_slot_is_not_taken_under_another_workers_lock_until_the_lock_is_stale(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    """Taking a slot over is done under the region's lock. A worker killed holding it
    (it holds it for a scan of the region) must not stop every other for good: a lock
    held over a second is broken."""
    farm = make_farm((200, 200), shared=True, slots=4, lease_s=LEASE_S, install=False)
    region = farm.region
    assert region is not None
    install(farm, unused_addresses(3))
    locked_at = time.monotonic()
    struct.pack_into("<q", region, LOCK_AT, time.monotonic_ns())   # a worker taking over
    install(farm, farm.addresses())
    time.sleep(2 * LEASE_S)
    assert tracked(farm) == [False, False]
    wait_for(lambda: tracked(farm) == [True, True], 5, "the slots after the lock went stale")
    assert time.monotonic() - locked_at >= 1.0
    assert struct.unpack_from("<q", region, LOCK_AT)[0] == 0     # given back


def test_a_service_slot_a_killed_worker_left_announcing_in_is_taken_over(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    """A worker killed while it decided an ejection leaves its announcement in its
    service's own slot (outlier.pxi _outlier_announce), which later decisions drop once
    it is _ANNOUNCED_STALE_MS (10 s) old. Once the service has left every table, its
    slot is taken over like any other: read as a decision still being made, the dead
    announcement would keep the slot the service's for good."""
    farm = make_farm((), shared=True, slots=4, lease_s=LEASE_S, install=False)
    region = farm.region
    assert region is not None
    install(farm, unused_addresses(2), service="demo/gone:http")    # 3 slots of 4
    guard = slot_keys(region).index(service_key("demo/gone:http"))
    since_ms = (time.monotonic_ns() // 1000000 - 11000) & ANNOUNCED_MS_MASK
    struct.pack_into("<I", region, HEADER_BYTES + guard * SLOT_BYTES + EJECTING_AT,
                     since_ms << ANNOUNCED_COUNT_BITS | 1)          # one, 11 s ago
    install(farm, unused_addresses(4))          # the free slot, then the gone service's
    wait_for(lambda: tracked(farm) == [True] * 4, 5, "the gone service's slots")
    assert service_key("demo/gone:http") not in slot_keys(region)


def test_a_slot_a_killed_worker_claimed_but_never_marked_seen_is_taken_over(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    """A claim sets a slot's key, then marks it seen. A worker killed between the two
    leaves a slot never seen; the lease ages it from when a claim looking for a slot to
    take over first meets it: passed over as a claim still under way, it would be
    nobody's slot for good."""
    farm = make_farm((), shared=True, slots=4, lease_s=LEASE_S, install=False)
    region = farm.region
    assert region is not None
    struct.pack_into("<Q", region, HEADER_BYTES + KEY_AT, 0x5EED)   # its seen_ns stays 0
    install(farm, unused_addresses(2))          # two endpoints and their service: full
    install(farm, unused_addresses(3))
    wait_for(lambda: tracked(farm) == [True] * 3, 5, "the slot never seen")
    assert 0x5EED not in slot_keys(region)


def test_a_lock_a_killed_worker_holds_costs_a_keep_one_wait_not_one_per_endpoint(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    """A claim that needs a slot taken over waits for the region's lock a while
    (_SHARED_LOCK_TRIES), then gives up until the next keep. A lock held by a worker
    killed under it stays held for a second: were each endpoint without a slot to wait
    on its own, a keep would hold the loop, and every request of the worker, that many
    waits long. A full region that could not give one endpoint a slot gives none of the
    others one in the same keep either: they only look their keys up."""
    farm = make_farm((), shared=True, slots=4, lease_s=LEASE_S, install=False)
    region = farm.region
    assert region is not None
    out = farm.outs[0][0]
    install(farm, unused_addresses(3))          # full
    install(farm, unused_addresses(400))
    busy_before_us = out.stats()["loop_busy_max_us"]
    struct.pack_into("<q", region, LOCK_AT, time.monotonic_ns())   # its holder killed
    # Kept each quarter lease, by waits that give up, until the lock is a second old.
    wait_for(lambda: struct.unpack_from("<q", region, LOCK_AT)[0] == 0, 5,
             "the stale lock broken and given back")
    busy_us = out.stats()["loop_busy_max_us"]
    assert busy_us < busy_before_us + 200000, (busy_before_us, busy_us)
    assert sum(tracked(farm)) == 3              # the first ones' slots, taken over


def test_a_slot_a_worker_was_killed_taking_over_is_taken_again(
        make_farm: MakeFarm) -> None:  # noqa: F811 (the fixture)
    """A worker killed taking a slot over leaves the region's lock held and the slot
    keyed _SHARED_TAKING, no key's: once the lock is broken, the slot ages out by the
    lease as any other, and is not lost."""
    farm = make_farm((), shared=True, slots=4, lease_s=LEASE_S, install=False)
    region = farm.region
    assert region is not None
    install(farm, unused_addresses(3))          # full
    guard = slot_keys(region).index(service_key("demo/backend:http"))
    taken = (guard + 1) % 4                     # an endpoint's slot
    struct.pack_into("<Q", region, HEADER_BYTES + taken * SLOT_BYTES + KEY_AT, MASK64)
    struct.pack_into("<q", region, LOCK_AT, time.monotonic_ns())
    install(farm, unused_addresses(3))          # the two others', then the one left taking
    wait_for(lambda: tracked(farm) == [True] * 3, 5, "the slot left being taken over")
    assert MASK64 not in slot_keys(region)


def test_a_region_of_an_older_layout_is_refused(tmp_path) -> None:
    from fastpath import engine as fe
    region = bytearray(fe.shared_state_bytes(64))
    fe.shared_state_format(region, 64)
    region[0:8] = b"MNOUTLR1"                   # the layout without leases
    with pytest.raises(ValueError, match="not a shared outlier region"):
        fe.Engine().share_state(region)
    with pytest.raises(ValueError, match="lease_s"):
        fe.shared_state_format(bytearray(fe.shared_state_bytes(64)), 64, 0.0)
