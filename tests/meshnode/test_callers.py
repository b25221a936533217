"""meshnode.callers: how a node tells its local workloads' callers apart (DESIGN §4)."""
from __future__ import annotations

from typing import Any

import pytest

from meshnode.callers import BY_ADDRESS, BY_USER, NONE, SINGLE, Caller, plan

pytestmark = pytest.mark.timeout(60)

A = "spiffe://cluster.local/ns/demo/sa/a"
B = "spiffe://cluster.local/ns/demo/sa/b"
ACCOUNTS = {"alice": 1001, "bob": 1002}


def w(name: str, identity: str, address: str = "127.0.0.1", user: Any = None) -> dict[str, Any]:
    return {"workload": f"demo/{name}", "identity": identity, "address": address, "user": user}


def resolve(user: int | str) -> int:
    return user if isinstance(user, int) else ACCOUNTS[user]


def of(*local: dict[str, Any], missing: str | None = None) -> Any:
    return plan(list(local), lambda address: {"localhost": "127.0.0.1"}.get(address, address),
                resolve, lambda: missing)


def test_one_identity_is_every_callers_however_many_workloads_have_it() -> None:
    assert of(w("a1", A), w("a2", A, "127.0.0.5")) == of(w("a", A))
    assert of(w("a", A)).by == SINGLE and of(w("a", A)).listener_identity == A
    assert of().by == NONE


def test_users_tell_callers_apart_first_and_the_listener_is_nobodys() -> None:
    p = of(w("a", A, user="alice"), w("b", B, user=1002))
    assert (p.by, p.listener_identity, p.problems) == (BY_USER, None, ())
    assert p.callers == (Caller(A, 1001), Caller(B, 1002))
    # A single workload that names its user is asked for it too (others are refused).
    assert of(w("a", A, user="alice")).callers == (Caller(A, 1001),)


def test_workloads_sharing_a_user_are_told_apart_by_address_within_it() -> None:
    p = of(w("a", A, "127.0.0.1", "alice"), w("b", B, "localhost", "alice"),
           w("c", B, "127.0.0.3", "alice"))
    assert p.callers == (Caller(B, 1001, "127.0.0.3"),)
    assert p.problems == ("Workload demo/a, Workload demo/b share address 127.0.0.1 and uid "
                          "1001: their callers are refused",)


def test_an_unknown_user_and_a_workload_naming_none_are_reported() -> None:
    p = of(w("a", A, user="mallory"), w("b", B, user="bob"), w("c", B, "127.0.0.9"))
    assert p.callers == (Caller(B, 1002),)
    assert p.problems == (
        "Workload demo/a: user 'mallory' is unknown on this host: its callers are refused",
        "Workload demo/c names no spec.user while others here do: its callers are refused")


def test_a_kernel_without_sock_diag_is_reported_where_users_are_declared() -> None:
    p = of(w("a", A, user="alice"), missing="the kernel has no NETLINK_SOCK_DIAG (x)")
    assert p.problems == ("the kernel has no NETLINK_SOCK_DIAG (x): every local caller is "
                          "refused",)
    assert of(w("a", A), w("b", B, "127.0.0.2"), missing="no").problems == ()


def test_without_users_addresses_tell_callers_apart_where_one_identity_has_one() -> None:
    p = of(w("a", A, "127.0.0.2"), w("b", B, "127.0.0.1"), w("c", A, "localhost"))
    assert p.by == BY_ADDRESS
    assert p.callers == (Caller(A, None, "127.0.0.2"),)
    assert p.problems == ("Workload demo/b, Workload demo/c share address 127.0.0.1 and name "
                          "no spec.user: their callers are refused",)
    assert p.status() == {"by": BY_ADDRESS, "identity": None, "problems": list(p.problems)}
