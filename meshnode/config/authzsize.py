"""The bound on an authorization program: a config whose AuthorizationPolicies make a
program the data plane would refuse for some workload's inbound route (over the
engine's AUTHZ_MAX_* limits: policies, rules, values, bytes of names and values) is
refused at apply, naming the largest policy in it, the workload, and the limit; not
left for every worker to NACK.

The check is the engine's own (fastpath.engine.check_authz_program), on each distinct
program the snapshots would carry (inbound.py), compiled in the trust domain the
snapshots use, so control refuses exactly what a worker would.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastpath.engine import check_authz_program

from .errors import Problem
from .inbound import Inbound
from .model import DEFAULT_TRUST_DOMAIN, Resource, Service, Workload, mesh_spec, selects


def _values(compiled: dict[str, Any]) -> int:
    """How many values a POLICY holds (the engine's leaves), to name the largest."""
    matches = [match for rule in compiled["rules"]
               for part in (rule["from"] or []) + (rule["to"] or []) for match in part.values()]
    matches += [condition for rule in compiled["rules"] for condition in rule["when"]]
    return sum(len(m["values"] or ()) + len(m["not"] or ()) for m in matches)


def authz_size_problems(resources: Sequence[Resource], root_domain: str | None) -> list[Problem]:
    """One problem per distinct program over the engine's limits (see the module's doc)."""
    mesh = mesh_spec(resources)
    inbound = Inbound(resources, mesh, root_domain or mesh.trust_domain or DEFAULT_TRUST_DOMAIN)
    services = [r for r in resources if isinstance(r, Service)]
    workloads = [r for r in resources if isinstance(r, Workload)]
    checked: set[tuple[Any, ...]] = set()
    problems: list[Problem] = []
    for service in services:
        for workload in (w for w in workloads if selects(service, w)):
            reaching = inbound.reaching(workload, service)
            key = tuple(policy.key for policy, _ in reaching)
            if not reaching or key in checked:
                continue
            checked.add(key)
            try:
                check_authz_program({"policies": [compiled for _, compiled in reaching]})
            except ValueError as e:
                largest, _ = max(reaching, key=lambda pair: _values(pair[1]))
                others = (f" with {len(reaching) - 1} other AuthorizationPolicies"
                          if len(reaching) > 1 else "")
                problems.append(Problem(
                    largest.source, largest.label, "spec.rules",
                    f"reaching {workload.label} behind {service.label}{others}, it makes an "
                    f"authorization program the data plane refuses: {e}"))
    return problems
