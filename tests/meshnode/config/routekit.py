"""Shared by the route tests: a few Services, HTTPRoutes written as dicts, and a store with a clock."""
from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

import yaml

from meshnode.config import Resource, Store, parse_text

SERVICES = textwrap.dedent("""\
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec:
      selector: {app: api}
      ports:
        - {name: http, port: 80, protocol: HTTP}
        - {name: admin, port: 8080}
        - {name: db, port: 5432, protocol: TCP}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: api-v2, namespace: shop}
    spec:
      selector: {app: api, version: v2}
      ports:
        - {name: http, port: 80, protocol: HTTP}
    ---
    apiVersion: meshnode.io/v1alpha1
    kind: Service
    metadata: {name: cache, namespace: infra}
    spec:
      selector: {app: cache}
      ports:
        - {name: http, port: 80}
        - {name: redis, port: 6379, protocol: TCP}
    """)


def parent(name: str = "api", namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": name, **extra}
    if namespace is not None:
        ref["namespace"] = namespace
    return ref


def route(name: str, rules: list[dict[str, Any]] | None = None, namespace: str = "shop",
          parents: list[dict[str, Any]] | None = None, **spec: Any) -> str:
    doc: dict[str, Any] = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"parentRefs": parents if parents is not None else [parent(port=80)], **spec}}
    if rules is not None:
        doc["spec"]["rules"] = rules
    return yaml.safe_dump(doc, sort_keys=False)


def backend(name: str = "api", port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **extra}


class Clock:
    """Whole seconds from 1000, one step per reading: each apply is a second later."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self._ticks))


def store_with(tmp_path: Path, *batches: str) -> Store:
    """A store holding SERVICES, then each batch of YAML applied in turn (later ones are newer)."""
    store = Store(tmp_path / "state", clock=Clock())
    store.apply(parse_text(SERVICES, "services.yaml"), "services.yaml")
    for i, batch in enumerate(batches):
        store.apply(parse_text(batch, f"batch{i}.yaml"), f"batch{i}.yaml")
    return store


def resources_with(*texts: str) -> list[Resource]:
    """SERVICES and `texts` parsed, unstored (routes have no creation time)."""
    return parse_text("---\n".join([SERVICES, *texts]), "config.yaml")
