"""config: the mesh's declarative resources: model, loading and validation, the store, snapshots."""
from .durations import DurationError, format_duration, parse_duration
from .errors import ConfigError, NotFound, Problem
from .load import DEFAULT_CONFIG, from_dict, load_dir, load_file, load_path, parse_text, to_dict
from .model import (
    API_VERSION,
    KINDS,
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
from .snapshot import compile_snapshot, identity_for
from .store import Store
from .validate import validate_set

__all__ = [
    "API_VERSION", "ConfigError", "DEFAULT_CONFIG", "DurationError", "KINDS", "Key", "Mesh",
    "MeshSpec", "Metadata", "Node", "NodeSpec", "NotFound", "Problem", "Resource", "Service", "ServicePort",
    "ServiceSpec", "Store", "Workload", "WorkloadSpec", "compile_snapshot", "format_duration",
    "from_dict", "identity_for", "load_dir", "load_file", "load_path", "parse_duration",
    "parse_text", "resolve_kind", "selects", "to_dict", "validate_set",
]
