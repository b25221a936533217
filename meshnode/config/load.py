"""Reading resources from YAML text, files and directories, and writing their canonical form.

Parsing validates each resource (validate.py) and reports every problem of every file at
once; duplicates within what was loaded are refused too. Cross-resource rules that need
the whole configuration (validate_set) are left to the caller, usually the Store, because
a single file is often only part of it.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, ScalarNode

from .durations import format_duration
from .destinationruleparse import rule_to_dict
from .faultparse import fault_to_dict
from .backendtrafficpolicyparse import policy_to_dict
from .authzparse import policy_to_dict as authorization_policy_to_dict
from .peerauthparse import peer_authentication_to_dict
from .ratelimitparse import policy_to_dict as rate_limit_policy_to_dict
from .rolloutparse import rollout_to_dict
from .errors import ConfigError, Problem
from .model import (API_VERSION, AuthorizationPolicy, DestinationRule, FaultInjection, HTTPRoute, Mesh, MeshSpec,
                    Node, NodeSpec, PeerAuthentication, RateLimitPolicy, Resource, Rollout, Service, ServiceSpec,
                    Workload, WorkloadSpec, XBackendTrafficPolicy)
from .routeparse import route_to_dict
from .tracing import TracingSpec
from .validate import duplicate_problems, parse_document, validate_set

__all__ = ["DEFAULT_CONFIG", "parse_text", "load_file", "load_dir", "load_path", "from_dict", "to_dict",
           "validate_set"]

_MERGE_TAG = "tag:yaml.org,2002:merge"

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "default"
"""The embedded configuration `meshnode up` uses when given no --config."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML loaders silently overwrite."""


def _construct_mapping(loader: _Loader, node: MappingNode) -> Iterator[dict[Any, Any]]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
            continue  # "<<: *base" may legitimately be overridden by the keys after it
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    yield from SafeConstructor.construct_yaml_map(loader, node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(exc: yaml.YAMLError, filename: str, index: int) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        return Problem(filename, f"document #{index}", "",
                       f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}",
                       line=mark.line + 1)
    return Problem(filename, f"document #{index}", "", f"invalid YAML: {exc}")


def _parse(text: str, filename: str) -> tuple[list[Resource], list[Problem]]:
    resources: list[Resource] = []
    problems: list[Problem] = []
    index = 0
    try:
        for doc in yaml.load_all(text, Loader=_Loader):
            index += 1
            if doc is None:
                continue
            resource, found = parse_document(doc, filename, index)
            problems += found
            if resource is not None:
                resources.append(resource)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, filename, index + 1))
    except RecursionError:  # PyYAML composes recursively; hostile nesting must not crash control
        problems.append(Problem(filename, f"document #{index + 1}", "", "nested too deeply"))
    return resources, problems


def parse_text(text: str, filename: str) -> list[Resource]:
    """Parse every document of a multi-document YAML text; raise ConfigError listing all problems."""
    resources, problems = _parse(text, filename)
    problems += duplicate_problems(resources)
    if problems:
        raise ConfigError(problems)
    return resources


def _read(path: Path) -> tuple[list[Resource], list[Problem]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return [], [Problem(str(path), "", "", f"cannot read: {exc.strerror or exc}")]
    except UnicodeDecodeError as exc:
        return [], [Problem(str(path), "", "", f"not UTF-8 text (byte {exc.start})")]
    return _parse(text, str(path))


def load_file(path: Path | str) -> list[Resource]:
    """Load one YAML file; problems name it as `path` was given."""
    resources, problems = _read(Path(path))
    problems += duplicate_problems(resources)
    if problems:
        raise ConfigError(problems)
    return resources


def load_dir(path: Path | str) -> list[Resource]:
    """Load every *.yaml and *.yml file directly in `path`, in name order, reporting all problems."""
    directory = Path(path)
    try:
        files = sorted(p for p in directory.iterdir()
                       if p.suffix in (".yaml", ".yml") and p.is_file())
    except OSError as exc:
        raise ConfigError([Problem(str(directory), "", "",
                                   f"cannot list directory: {exc.strerror or exc}")]) from exc
    resources: list[Resource] = []
    problems: list[Problem] = []
    for file in files:
        found, bad = _read(file)
        resources += found
        problems += bad
    problems += duplicate_problems(resources)
    if problems:
        raise ConfigError(problems)
    return resources


def load_path(path: Path | str) -> list[Resource]:
    """load_dir for a directory, load_file otherwise (what `--config`/`-f` accept)."""
    return load_dir(path) if Path(path).is_dir() else load_file(path)


def from_dict(data: object, file: str = "") -> Resource:
    """Build one resource from its dict form (to_dict's output, or parsed JSON)."""
    resource, problems = parse_document(data, file, 1)
    if resource is None:
        raise ConfigError(problems)
    return resource


def _mesh_spec(spec: MeshSpec) -> dict[str, Any]:
    return {
        **({"trustDomain": spec.trust_domain} if spec.trust_domain else {}),
        **({"trustDomainAliases": list(spec.trust_domain_aliases)} if spec.trust_domain_aliases else {}),
        "rootNamespace": spec.root_namespace,
        "mtls": {"mode": spec.mtls_mode},
        "certificates": {
            "workloadTTL": format_duration(spec.workload_ttl_s),
            "rotateAt": spec.rotate_at,
            "issuerTTL": format_duration(spec.issuer_ttl_s),
        },
        "telemetry": {"accessLog": spec.access_log,
                      "accessLogSampling": spec.access_log_sampling_percent,
                      **({"accessLogFilter": {"expression": f"response.code >= {spec.access_log_min_status}"}}
                         if spec.access_log_min_status else {}),
                      "accessLogRotation": {"maxBytes": spec.access_log_max_bytes,
                                            "backupCount": spec.access_log_backups},
                      "metricNames": list(spec.metric_names)},
        "connections": {"connectTimeout": format_duration(spec.connect_timeout_s),
                        "idleTimeout": format_duration(spec.idle_timeout_s),
                        "drainDuration": format_duration(spec.drain_duration_s),
                        "maxHandshakes": spec.max_handshakes,
                        "maxHandshakesPerSource": spec.max_handshakes_per_source,
                        "maxConnectionsPerSource": spec.max_connections_per_source,
                        "inboundShare": spec.inbound_share},
        "overload": {"maxRequestsInFlight": spec.max_requests_in_flight,
                     "maxRequestsPerSource": spec.max_requests_per_source,
                     "slowClients": {"gracePeriod": format_duration(spec.slow_grace_s),
                                     "minBytesPerSecond": spec.slow_min_rate}},
        "pathNormalization": {"normalization": spec.path_normalization},
        "tracing": _tracing_spec(spec.tracing),
    }


def _tracing_spec(spec: TracingSpec) -> dict[str, Any]:
    return {
        "sampling": spec.sampling_percent,
        **({"collector": {spec.collector_kind: spec.collector_url}} if spec.collector_kind else {}),
        "serviceName": spec.service_name,
        "batchSize": spec.batch_spans,
        "flushInterval": format_duration(spec.flush_interval_s),
        "maxQueuedSpans": spec.max_queued_spans,
    }


def _node_spec(spec: NodeSpec) -> dict[str, Any]:
    return {"address": spec.address, "inboundPort": spec.inbound_port}


def _service_spec(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "selector": dict(spec.selector),
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol,
                   "targetPort": p.target_port,
                   **({"outboundPort": p.outbound_port} if p.outbound_port else {})}
                  for p in spec.ports],
    }


def _workload_spec(spec: WorkloadSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": spec.address,
        "ports": dict(spec.ports),
        "labels": dict(spec.labels),
        "serviceAccount": spec.service_account,
        "weight": spec.weight,
    }
    if spec.node is not None:
        out["node"] = spec.node
    if spec.user is not None:
        out["user"] = spec.user
    return out


def to_dict(resource: Resource) -> dict[str, Any]:
    """The canonical form (camelCase, defaults filled in) that from_dict/parse_text read back equal."""
    if isinstance(resource, HTTPRoute):
        return route_to_dict(resource)  # an upstream kind, in its own apiVersion
    if isinstance(resource, DestinationRule):
        return rule_to_dict(resource)  # Istio's kind, in its own apiVersion
    if isinstance(resource, FaultInjection):
        return fault_to_dict(resource)  # Istio's fields, values as written
    if isinstance(resource, XBackendTrafficPolicy):
        return policy_to_dict(resource)  # Gateway API's kind, in its own apiVersion
    if isinstance(resource, AuthorizationPolicy):
        return authorization_policy_to_dict(resource)  # Istio's kinds, as written
    if isinstance(resource, PeerAuthentication):
        return peer_authentication_to_dict(resource)
    if isinstance(resource, RateLimitPolicy):
        return rate_limit_policy_to_dict(resource)  # its fields as written
    if isinstance(resource, Rollout):
        return rollout_to_dict(resource)  # its defaults filled in
    metadata: dict[str, Any] = {"name": resource.name}
    if not resource.CLUSTER_SCOPED:
        metadata["namespace"] = resource.namespace
    if resource.metadata.labels:
        metadata["labels"] = dict(resource.metadata.labels)
    if resource.metadata.annotations:
        metadata["annotations"] = dict(resource.metadata.annotations)
    if isinstance(resource, Mesh):
        spec = _mesh_spec(resource.spec)
    elif isinstance(resource, Node):
        spec = _node_spec(resource.spec)
    elif isinstance(resource, Service):
        spec = _service_spec(resource.spec)
    elif isinstance(resource, Workload):
        spec = _workload_spec(resource.spec)
    else:
        raise TypeError(f"not a resource: {resource!r}")
    return {"apiVersion": API_VERSION, "kind": resource.kind, "metadata": metadata, "spec": spec}
