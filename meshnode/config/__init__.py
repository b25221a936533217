"""config: the mesh's declarative resources: model, loading and validation, the store, snapshots, routes."""
from .durations import DurationError, format_duration, parse_duration
from .errors import ConfigError, NotFound, Problem
from .load import DEFAULT_CONFIG, from_dict, load_dir, load_file, load_path, parse_text, to_dict
from .model import (
    API_VERSION,
    DEFAULT_TRUST_DOMAIN,
    KINDS,
    HTTPRoute,
    Key,
    Mesh,
    MeshSpec,
    Metadata,
    Node,
    NodeSpec,
    Resource,
    Service,
    ServicePort,
    ServiceSpec,
    Workload,
    WorkloadSpec,
    resolve_kind,
    selects,
)
from .routes import compile_routes
from .routestatus import route_status, with_status
from .snapshot import compile_snapshot, identity_for
from .store import Store, check_root_domain, store_dir
from .validate import trust_domain_problems, validate_set

__all__ = [
    "API_VERSION", "ConfigError", "DEFAULT_CONFIG", "DEFAULT_TRUST_DOMAIN", "DurationError", "HTTPRoute",
    "KINDS", "Key", "Mesh", "MeshSpec", "Metadata", "Node", "NodeSpec", "NotFound", "Problem", "Resource",
    "Service", "ServicePort", "ServiceSpec", "Store", "Workload", "WorkloadSpec", "check_root_domain",
    "compile_routes", "compile_snapshot", "format_duration", "from_dict", "identity_for", "load_dir",
    "load_file", "load_path", "parse_duration", "parse_text", "resolve_kind", "route_status", "selects",
    "store_dir", "to_dict", "trust_domain_problems", "validate_set", "with_status",
]
