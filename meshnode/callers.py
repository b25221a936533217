"""Who is calling: how a node tells the outbound connections of its local workloads apart.

A connection accepted on the node's outbound listeners presents the identity of the
local workload that made it (DESIGN §4). The source address alone proves nothing: any
local process can bind any 127.x address. So, in this order:

- by user: when a local workload names the OS account it runs as (``spec.user``), the
  engine asks the kernel who owns each calling socket (sock_diag, once per connection)
  and presents that user's workload; workloads sharing an account are then told apart
  by address within it. A workload without ``spec.user`` next to ones with it gets no
  local callers (it is reported).
- single workload: one local identity (Istio's VM integration: one workload per VM);
  every local caller is that workload, nothing to look up.
- by address: several identities, no users: the caller's address, where it is one
  workload's own; the node says so (``meshnode status``), as it is the weak way.

A caller that matches no workload is refused by the engine (HTTP 403, TCP closed) and
counted; it never borrows another workload's identity.
"""

from __future__ import annotations

import pwd
import socket
from dataclasses import dataclass
from typing import Any, Callable

BY_USER = "user"
BY_ADDRESS = "address"
SINGLE = "single workload"
NONE = "none"  # no local workload


@dataclass(frozen=True)
class Caller:
    """Local callers that present `identity`: by socket owner `uid` (None: by address
    only), from `address` (None: any)."""

    identity: str
    uid: int | None = None
    address: str | None = None


@dataclass(frozen=True)
class Plan:
    by: str
    # The identity of every local caller (SINGLE), else None: only `callers` match.
    listener_identity: str | None
    callers: tuple[Caller, ...]
    # What keeps some workload's callers refused, one sentence each.
    problems: tuple[str, ...]

    def status(self) -> dict[str, Any]:
        """What `meshnode status` says of it (through a worker's health beat)."""
        return {"by": self.by, "identity": self.listener_identity,
                "problems": list(self.problems)}


NETLINK_SOCK_DIAG = 4  # linux/netlink.h (the socket module names no netlink protocol)


def sock_diag_missing() -> str | None:
    """Why the engine cannot ask this kernel who owns a calling socket, or None."""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG).close()
    except OSError as exc:
        return f"the kernel has no NETLINK_SOCK_DIAG ({exc.strerror})"
    return None


def resolve_user(user: int | str) -> int:
    """A Workload's spec.user as a uid on this host (a name through the password
    database); KeyError names an unknown user."""
    if isinstance(user, int):
        return user
    return pwd.getpwnam(user).pw_uid


def _ref(w: dict[str, Any]) -> str:
    return f"Workload {w.get('workload') or w.get('identity')}"


def _by_address(workloads: list[dict[str, Any]], numeric: Callable[[str], str],
                uid: int | None = None) -> tuple[list[Caller], list[str]]:
    """Workloads told apart by address (within one user when `uid` is given): a Caller
    for each address that one identity has to itself, a problem for each shared one."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for w in workloads:
        groups.setdefault(numeric(w["address"]), []).append(w)
    callers: list[Caller] = []
    problems: list[str] = []
    for address, members in sorted(groups.items()):
        identities = {w["identity"] for w in members}
        if len(identities) == 1:
            callers.append(Caller(identities.pop(), uid, address))
            continue
        names = ", ".join(sorted(_ref(w) for w in members))
        problems.append(f"{names} share address {address} and "
                        + (f"uid {uid}" if uid is not None else "name no spec.user")
                        + ": their callers are refused")
    return callers, problems


def plan(local: list[dict[str, Any]], numeric: Callable[[str], str],
         resolve: Callable[[int | str], int] = resolve_user,
         diag_missing: Callable[[], str | None] = sock_diag_missing) -> Plan:
    """How the node tells apart the callers of `local` (the snapshot's local workloads);
    `numeric` turns an address into the IP literal the engine compares."""
    if not local:
        return Plan(NONE, None, (), ())
    identities = {w["identity"] for w in local}
    if all(w.get("user") is None for w in local):
        if len(identities) == 1:
            return Plan(SINGLE, next(iter(identities)), (), ())
        callers, problems = _by_address(local, numeric)
        return Plan(BY_ADDRESS, None, tuple(callers), tuple(problems))
    callers: list[Caller] = []
    problems: list[str] = []
    missing = diag_missing()
    if missing is not None:
        problems.append(f"{missing}: every local caller is refused")
    by_uid: dict[int, list[dict[str, Any]]] = {}
    for w in local:
        user = w.get("user")
        if user is None:
            problems.append(f"{_ref(w)} names no spec.user while others here do: "
                            "its callers are refused")
            continue
        try:
            by_uid.setdefault(resolve(user), []).append(w)
        except KeyError:
            problems.append(f"{_ref(w)}: user {user!r} is unknown on this host: "
                            "its callers are refused")
    for uid, members in sorted(by_uid.items()):
        if len({w["identity"] for w in members}) == 1:
            callers.append(Caller(members[0]["identity"], uid))
        else:
            more, why = _by_address(members, numeric, uid)
            callers += more
            problems += why
    return Plan(BY_USER, None, tuple(callers), tuple(problems))
