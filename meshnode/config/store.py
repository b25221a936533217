"""The resource store: the applied configuration on disk, versioned, written atomically.

Layout under state_dir (mode 0700; files 0600):

    resources.json   {"version": N, "resources": [to_dict...], "sources": {label: file}}
    history/N.json   the same document for each of the last HISTORY_KEEP versions

Every change is validated as a whole set (validate_set) before anything is written, and
memory is updated only after the disk is, so a refused or failed change leaves both as
they were. A store opened with the mesh root's trust domain also refuses a Mesh that
names another (trust_domain_problems), whether applied, seeded or already stored. A
change whose AuthorizationPolicies make some workload an authorization program over the
data plane's limits is refused too (authz_size_problems). One process (control) owns a
state dir; the lock only guards its threads.

The store stamps each HTTPRoute, DestinationRule, XBackendTrafficPolicy,
AuthorizationPolicy and PeerAuthentication with its creation time when it is first
created and keeps it through later applies (Kubernetes' creationTimestamp: the route
precedence orders equal matches oldest first; of several DestinationRules for one host,
the oldest's trafficPolicy wins; so does the oldest of several policies for one Service,
and of several PeerAuthentications of one scope for a workload).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .authzsize import authz_size_problems
from .errors import ConfigError, NotFound, Problem
from .load import load_path, to_dict
from .model import (KINDS, AuthorizationPolicy, DestinationRule, HTTPRoute, Key, PeerAuthentication,
                    RateLimitPolicy, Resource, Rollout, XBackendTrafficPolicy, key_label, resolve_kind, sort_key)
from .routeparse import format_timestamp
from .validate import duplicate_problems, parse_document, trust_domain_problems, validate_set

STATE_FILE = "resources.json"
HISTORY_DIR = "history"
HISTORY_KEEP = 10


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; an old dir may be wider


def _corrupt(path: Path, message: str) -> ConfigError:
    return ConfigError([Problem(str(path), "", "", f"corrupt store file: {message}")])


def read_state(path: Path) -> tuple[int, list[Resource]]:
    """Read a resources.json or history file; raise ConfigError naming it if it is not valid."""
    try:
        doc: Any = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError([Problem(str(path), "", "", f"cannot read: {exc.strerror or exc}")]) from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(path, f"invalid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _corrupt(path, "expected a JSON object")
    version, items, sources = doc.get("version"), doc.get("resources"), doc.get("sources", {})
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise _corrupt(path, f"'version' must be a non-negative integer, got {version!r}")
    if not isinstance(items, list):
        raise _corrupt(path, "'resources' must be a list")
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise _corrupt(path, "'sources' must map resource names to file names")
    resources: list[Resource] = []
    problems: list[Problem] = []
    for index, item in enumerate(items, start=1):
        resource, found = parse_document(item, str(path), index)
        problems += found
        if resource is not None:
            resources.append(resource)
    problems += duplicate_problems(resources)
    if problems:
        raise ConfigError(problems)
    validate_set(resources)  # problems name this file, where the bad state is
    return version, [replace(r, source=sources.get(r.label, "")) for r in resources]


def store_dir(runtime_dir: Path | str) -> Path:
    """Where a node's control keeps its store."""
    return Path(runtime_dir) / "state" / "config"


def _stored_domain_problems(path: Path, resources: list[Resource],
                            root_domain: str | None) -> list[Problem]:
    """trust_domain_problems of a stored config, named by the store file (and the file
    the Mesh was applied from)."""
    return [replace(p, file=f"{path} (the node's stored config"
                            + (f", applied from {p.file})" if p.file else ")"))
            for p in trust_domain_problems(resources, root_domain)]


def check_root_domain(state_dir: Path | str, seed: Path | str | None,
                       root_domain: str | None) -> None:
    """Refuse (ConfigError) what Store(state_dir, seed, root_domain) would refuse for its
    trust domain, without writing anything: the stored config when there is one, else
    the seed (`meshnode up` asks before it starts the node)."""
    path = Path(state_dir) / STATE_FILE
    if path.exists():
        problems = _stored_domain_problems(path, read_state(path)[1], root_domain)
    elif seed is not None:
        problems = trust_domain_problems(load_path(seed), root_domain)
    else:
        problems = []
    if problems:
        raise ConfigError(problems)


def _created(resource: Resource, previous: Resource | None, now: str) -> Resource:
    """`resource` with the creation time the store gives it: its previous version's, or
    `now` for a new one. What an applied document says there is replaced, as the API
    server ignores a creationTimestamp sent to it."""
    if not isinstance(resource, (HTTPRoute, DestinationRule, XBackendTrafficPolicy, AuthorizationPolicy,
                                 PeerAuthentication, RateLimitPolicy, Rollout)):
        return resource
    return replace(resource, created=previous.created if isinstance(previous, type(resource)) else now)


def _encode(version: int, resources: list[Resource]) -> bytes:
    doc = {
        "version": version,
        "resources": [to_dict(r) for r in resources],
        "sources": {r.label: r.source for r in resources if r.source},
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


class Store:
    """The applied resources of a mesh, persisted under `state_dir`.

    On opening, an existing resources.json wins over `seed` (a YAML file or directory),
    so applied changes survive a restart; without one, the seed is loaded, validated and
    written as version 1; with neither, the store is empty at version 0. `root_domain`:
    the mesh root's trust domain (None: the root names none). `clock` gives the time
    new routes are stamped with.
    """

    def __init__(self, state_dir: Path | str, seed: Path | str | None = None,
                 root_domain: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.root_domain = root_domain
        self._clock = clock
        self._lock = threading.RLock()
        self._version = 0
        self._resources: dict[Key, Resource] = {}
        _private_dir(self.state_dir)
        if self.path.exists():
            self._version, resources = read_state(self.path)
            problems = _stored_domain_problems(self.path, resources, root_domain)
            if problems:
                raise ConfigError(problems)
            self._resources = {r.key: r for r in sorted(resources, key=sort_key)}
        elif seed is not None:
            now = format_timestamp(self._clock())
            resources = [_created(r, None, now) for r in load_path(seed)]
            self._validate(resources)
            self._commit(1, resources)

    @classmethod
    def open(cls, state_dir: Path | str, seed_dir: Path | str | None = None,
             root_domain: str | None = None) -> Store:
        return cls(state_dir, seed_dir, root_domain)

    def _validate(self, resources: list[Resource]) -> None:
        validate_set(resources)
        problems = trust_domain_problems(resources, self.root_domain)
        # (In the trust domain the snapshots are compiled in, once it is known good.)
        problems = problems or authz_size_problems(resources, self.root_domain)
        if problems:
            raise ConfigError(problems)

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def version(self) -> int:
        return self._version

    def resources(self) -> list[Resource]:
        """Every resource, Mesh first, then by kind, namespace and name."""
        with self._lock:
            return list(self._resources.values())

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> list[Resource]:
        """Resources of `kind` ("Service", "services", "svc"...), optionally one name and/or namespace.

        Always a list (empty when nothing matches); the namespace of a Mesh is ignored.
        Raises NotFound for an unknown kind.
        """
        kind = resolve_kind(kind)
        return [r for r in self.resources() if r.kind == kind
                and (name is None or r.name == name)
                and (namespace is None or r.CLUSTER_SCOPED or r.namespace == namespace)]

    def history(self) -> list[int]:
        """The versions that rollback() can return to, oldest first."""
        directory = self.state_dir / HISTORY_DIR
        if not directory.is_dir():
            return []
        return sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit())

    def apply(self, resources: list[Resource], source: str) -> int:
        """Create or replace `resources`; return the version now in force.

        `source` names the file for resources that do not already carry one. Nothing
        changes (and the version stays) when the result equals the current set.
        """
        batch = [r if r.source else replace(r, source=source) for r in resources]
        problems = duplicate_problems(batch)
        if problems:
            raise ConfigError(problems)
        with self._lock:
            merged = dict(self._resources)
            now = format_timestamp(self._clock())
            for resource in batch:
                merged[resource.key] = _created(resource, self._resources.get(resource.key), now)
            return self._change(list(merged.values()))

    def delete(self, kind: str, name: str, namespace: str = "default") -> int:
        """Remove one resource; return the new version. Raises NotFound if it does not exist."""
        cls = KINDS[resolve_kind(kind)]
        key = (cls.KIND, "" if cls.CLUSTER_SCOPED else namespace, name)
        with self._lock:
            if key not in self._resources:
                elsewhere = sorted(k[1] for k in self._resources if k[0] == key[0] and k[2] == name)
                hint = f" (there is one in namespace {', '.join(elsewhere)})" if elsewhere else ""
                raise NotFound([Problem("", key_label(key), "", f"not found{hint}")])
            remaining = [r for k, r in self._resources.items() if k != key]
            return self._change(remaining)

    def rollback(self, version: int) -> int:
        """Make the resources of a kept `version` current again, as a new version; return it."""
        path = self.state_dir / HISTORY_DIR / f"{version}.json"
        with self._lock:
            if not path.is_file():
                raise NotFound([Problem(str(self.state_dir), "", "",
                                        f"version {version} is not in the history "
                                        f"(kept: {', '.join(map(str, self.history())) or 'none'})")])
            _, resources = read_state(path)
            return self._change(resources)

    def _change(self, resources: list[Resource]) -> int:
        self._validate(resources)
        if {r.key: r for r in resources} == self._resources:
            return self._version
        self._commit(self._version + 1, resources)
        return self._version

    def _commit(self, version: int, resources: list[Resource]) -> None:
        ordered = sorted(resources, key=sort_key)
        data = _encode(version, ordered)
        history = self.state_dir / HISTORY_DIR
        _private_dir(history)
        write_atomic(history / f"{version}.json", data)
        write_atomic(self.path, data)
        for old in self.history():
            if old <= version - HISTORY_KEEP:
                (history / f"{old}.json").unlink(missing_ok=True)
        self._version = version
        self._resources = {r.key: r for r in ordered}
