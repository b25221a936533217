"""Validation: turns YAML documents into model objects and checks sets of them.

Every check records a Problem (file, resource, field path, message) and carries on, so
one run reports everything that is wrong; a document with any problem yields no resource.
A null value counts as absent, as in Kubernetes.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .durations import DurationError, format_duration, parse_duration
from .errors import ConfigError, Problem
from .tracing import COLLECTOR_KINDS, MAX_BATCH_SPANS, MAX_QUEUED_SPANS, SERVICE_NAMES, TracingSpec
from .model import (
    API_VERSION,
    KINDS,
    HTTPRoute,
    MAX_DRAIN_DURATION_S,
    MAX_CAP,
    MAX_LIMIT,
    METRIC_NAMES,
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
    key_label,
    selects,
)

T = TypeVar("T")
_MISSING: Any = object()

# RFC 1123 label as Kubernetes uses it for names: lowercase alnum and '-', at most 63.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
# Kubernetes label names and values: alnum ends, '-', '_', '.' inside, at most 63.
_LABEL_PART = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_NODE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.:]{0,251}[A-Za-z0-9])?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# A Service port's protocol (DESIGN §3): HTTP is framed always, TCP is opaque, and only
# "auto" (the default) is told by the first bytes.
_PROTOCOLS = ("HTTP", "TCP", "auto")
# An OS account name as useradd(8) takes one (and '.', as Debian allows), 32 at most.
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,30}[A-Za-z0-9_.$-]?")
MAX_UID = 4294967294  # uid_t's largest; (uid_t)-1 means "no user"
_MTLS_MODES = ("STRICT", "PERMISSIVE")
# Istio's MeshConfig.ProxyPathNormalization.NormalizationType values.
_PATH_NORMALIZATIONS = ("DEFAULT", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
MAX_WEIGHT = 1_000_000


class _Doc:
    """The problems found in one document, all tagged with its file and resource label."""

    def __init__(self, file: str, resource: str) -> None:
        self.file = file
        self.resource = resource
        self.problems: list[Problem] = []

    def fail(self, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.resource, field, message))


def join(path: str, key: str) -> str:
    """Extend a field path: join("spec", "ports") -> "spec.ports"; odd keys are quoted."""
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; expected one of: {', '.join(choices)}"


def _fields(
    d: _Doc, value: object, path: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict[str, Any] | None:
    """Check a mapping with a fixed set of fields; return the present, non-null ones."""
    if not isinstance(value, dict):
        d.fail(path, f"must be a mapping, got {_describe(value)}")
        return None
    present: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            d.fail(join(path, str(key)), "field names must be strings")
        elif key not in allowed:
            d.fail(join(path, key), "unknown field" + _did_you_mean(key, allowed))
        elif item is not None:
            present[key] = item
    for key in required:
        if key not in present:
            d.fail(join(path, key), "required")
    return present


def _known_fields(
    d: _Doc, value: object, path: str, implemented: Sequence[str], not_implemented: Sequence[str],
    required: Sequence[str] = (),
) -> dict[str, Any] | None:
    """_fields of an upstream kind's mapping: the fields meshnode does not implement of
    it are known, and each is refused by name (DESIGN §5: refused, never ignored)."""
    fields = _fields(d, value, path, (*implemented, *not_implemented), required)
    if fields is None:
        return None
    for key in not_implemented:
        if key in fields:
            d.fail(join(path, key), f"{key} is not implemented yet (meshnode takes "
                                    f"{', '.join(implemented)} here)")
    return fields


def _opt(
    d: _Doc, fields: dict[str, Any], path: str, key: str,
    check: Callable[[_Doc, Any, str], T | None], default: T,
) -> T | None:
    return check(d, fields[key], join(path, key)) if key in fields else default


def _string(d: _Doc, value: object, path: str) -> str | None:
    if not isinstance(value, str):
        d.fail(path, f"must be a string, got {_describe(value)}")
        return None
    return value


def _dns_label(d: _Doc, value: object, path: str) -> str | None:
    text = _string(d, value, path)
    if text is not None and not _DNS_LABEL.fullmatch(text):
        d.fail(path, f"{text!r} is not a DNS label: use at most 63 lowercase letters, digits "
                     "and '-', starting and ending with a letter or digit")
        return None
    return text


def _int(d: _Doc, value: object, path: str, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        d.fail(path, f"must be an integer, got {_describe(value)}")
        return None
    if not low <= value <= high:
        d.fail(path, f"must be between {low} and {high}, got {value}")
        return None
    return value


def _port(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 1, 65535)


def _weight(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 1, MAX_WEIGHT)


def _bool(d: _Doc, value: object, path: str) -> bool | None:
    if not isinstance(value, bool):
        d.fail(path, f"must be true or false, got {_describe(value)}")
        return None
    return value


def _choice(choices: Sequence[str]) -> Callable[[_Doc, Any, str], str | None]:
    def check(d: _Doc, value: object, path: str) -> str | None:
        if value not in choices or not isinstance(value, str):
            d.fail(path, f"must be one of {', '.join(choices)}, got {_describe(value)}")
            return None
        return value
    return check


def _duration(min_s: float, max_s: float | None = None) -> Callable[[_Doc, object, str], float | None]:
    """A checker of a duration field ("90s", "5m") within [min_s, max_s]."""
    def check(d: _Doc, value: object, path: str) -> float | None:
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            d.fail(path, str(exc))
            return None
        if max_s is None and seconds < min_s:
            d.fail(path, f"must be at least {format_duration(min_s)}, got {value!r}")
            return None
        if max_s is not None and not min_s <= seconds <= max_s:
            d.fail(path, f"must be between {format_duration(min_s)} and {format_duration(max_s)}, "
                   f"got {value!r}")
            return None
        return seconds
    return check


_positive_duration = _duration(1.0)


def _fraction(d: _Doc, value: object, path: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        d.fail(path, f"must be a number between 0 and 1, got {_describe(value)}")
        return None
    if not 0 < value < 1:
        d.fail(path, f"must be strictly between 0 and 1, got {value}")
        return None
    return float(value)


def _is_hostname(text: str) -> bool:
    labels = text.split(".")
    # RFC 1123 §2.1: a top-level label is never all digits, which is what tells
    # "300.1.1.1" (a bad IPv4 address) from a name.
    return (len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def _address(d: _Doc, value: object, path: str) -> str | None:
    text = _string(d, value, path)
    if text is None:
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _is_hostname(text):
            d.fail(path, f"{text!r} is neither an IP address nor a hostname "
                         "(give the port in `ports`, not in the address)")
            return None
    return text


def _trust_domain(d: _Doc, value: object, path: str) -> str | None:
    text = _string(d, value, path)
    if text is not None and (len(text) > 253 or not all(
            _DNS_LABEL.fullmatch(label) for label in text.split("."))):
        d.fail(path, f"{text!r} is not a trust domain: use lowercase DNS labels joined "
                     "by dots, such as 'cluster.local'")
        return None
    return text


def _node(d: _Doc, value: object, path: str) -> str | None:
    text = _string(d, value, path)
    if text is not None and not _NODE.fullmatch(text):
        d.fail(path, f"{text!r} is not a node name: use letters, digits, '-', '_', '.', ':'")
        return None
    return text


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and all(
            _DNS_LABEL.fullmatch(label) for label in prefix.split("."))):
        return False
    return bool(_LABEL_PART.fullmatch(name))


def _string_map(
    d: _Doc, value: object, path: str, check_value: Callable[[_Doc, Any, str], T | None]
) -> dict[str, T] | None:
    """A mapping from label-like keys to values checked by `check_value`."""
    if not isinstance(value, dict):
        d.fail(path, f"must be a mapping, got {_describe(value)}")
        return None
    result: dict[str, T] = {}
    ok = True
    for key, item in value.items():
        if not isinstance(key, str) or not _label_key_ok(key):
            d.fail(join(path, str(key)), f"{key!r} is not a valid key: use at most 63 letters, "
                                         "digits, '-', '_', '.', optionally after 'prefix/'")
            ok = False
            continue
        checked = check_value(d, item, join(path, key))
        if checked is None:
            ok = False
        else:
            result[key] = checked
    return result if ok else None


def _label_value(d: _Doc, value: object, path: str) -> str | None:
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
        d.fail(path, f"must be a string{hint}, got {_describe(value)}")
        return None
    if value and not _LABEL_PART.fullmatch(value):
        d.fail(path, f"{value!r} is not a label value: use at most 63 letters, digits, "
                     "'-', '_', '.', starting and ending with a letter or digit")
        return None
    return value


def _labels(d: _Doc, value: object, path: str) -> dict[str, str] | None:
    return _string_map(d, value, path, _label_value)


def _annotations(d: _Doc, value: object, path: str) -> dict[str, str] | None:
    return _string_map(d, value, path, _string)


def _metadata(d: _Doc, value: object, cluster_scoped: bool) -> Metadata | None:
    meta = _fields(d, value, "metadata", ("name", "namespace", "labels", "annotations"),
                   required=("name",))
    if meta is None:
        return None
    name = _opt(d, meta, "metadata", "name", _dns_label, None)
    namespace = _opt(d, meta, "metadata", "namespace", _dns_label, "default")
    labels = _opt(d, meta, "metadata", "labels", _labels, {})
    annotations = _opt(d, meta, "metadata", "annotations", _annotations, {})
    if name is None or namespace is None or labels is None or annotations is None:
        return None
    # Cluster-scoped kinds ignore a namespace, as Kubernetes does.
    return Metadata(name, "" if cluster_scoped else namespace, labels, annotations)


def _mesh_spec(d: _Doc, value: object) -> MeshSpec | None:
    base = MeshSpec()
    if value is _MISSING:
        return base
    spec = _fields(d, value, "spec", ("trustDomain", "trustDomainAliases", "rootNamespace", "mtls",
                                      "certificates", "telemetry", "connections", "overload",
                                      "pathNormalization", "tracing"))
    if spec is None:
        return None
    trust_domain = _opt(d, spec, "spec", "trustDomain", _trust_domain, "")  # "": not named
    aliases = _opt(d, spec, "spec", "trustDomainAliases", _trust_domains, ())
    root_namespace = _opt(d, spec, "spec", "rootNamespace", _dns_label, base.root_namespace)
    mtls = _fields(d, spec.get("mtls", {}), "spec.mtls", ("mode",)) or {}
    mode = _opt(d, mtls, "spec.mtls", "mode", _choice(_MTLS_MODES), base.mtls_mode)
    certs = _fields(d, spec.get("certificates", {}), "spec.certificates",
                    ("workloadTTL", "rotateAt", "issuerTTL")) or {}
    path = "spec.certificates"
    workload_ttl = _opt(d, certs, path, "workloadTTL", _positive_duration, base.workload_ttl_s)
    rotate_at = _opt(d, certs, path, "rotateAt", _fraction, base.rotate_at)
    issuer_ttl = _opt(d, certs, path, "issuerTTL", _positive_duration, base.issuer_ttl_s)
    if workload_ttl is not None and issuer_ttl is not None and workload_ttl >= issuer_ttl:
        d.fail(join(path, "workloadTTL"),
               f"must be shorter than issuerTTL ({format_duration(issuer_ttl)}): a "
               "certificate cannot outlive its issuer")
    telemetry = _fields(d, spec.get("telemetry", {}), "spec.telemetry",
                        ("accessLog", "accessLogSampling", "accessLogFilter", "accessLogRotation",
                         "metricNames")) or {}
    access_log = _opt(d, telemetry, "spec.telemetry", "accessLog", _bool, base.access_log)
    access = _access_log(d, telemetry, base)
    metric_names = _opt(d, telemetry, "spec.telemetry", "metricNames", _metric_names,
                        base.metric_names)
    path = "spec.connections"
    conns = _fields(d, spec.get("connections", {}), path,
                    ("connectTimeout", "idleTimeout", "drainDuration", "maxHandshakes",
                     "maxHandshakesPerSource", "maxConnectionsPerSource", "inboundShare")) or {}
    connect = _opt(d, conns, path, "connectTimeout", _duration(0.05, 86400.0), base.connect_timeout_s)
    idle = _opt(d, conns, path, "idleTimeout", _duration(0.05, 86400.0 * 365), base.idle_timeout_s)
    # Bounded above so that supervisord's stop wait, fixed when the node starts, always
    # outlasts a worker's drain (meshnode.supervise).
    drain = _opt(d, conns, path, "drainDuration", _duration(0.1, MAX_DRAIN_DURATION_S),
                 base.drain_duration_s)
    limits = _connection_limits(d, conns, path, base)
    overload = _overload(d, spec.get("overload", {}), base)
    path = "spec.pathNormalization"
    paths = _fields(d, spec.get("pathNormalization", {}), path, ("normalization",)) or {}
    normalization = _opt(d, paths, path, "normalization", _choice(_PATH_NORMALIZATIONS),
                         base.path_normalization)
    tracing = _tracing(d, spec.get("tracing", {}), base.tracing)
    if None in (trust_domain, aliases, root_namespace, mode, workload_ttl, rotate_at, issuer_ttl,
                access_log, metric_names, connect, idle,
                drain, normalization, tracing) or limits is None or overload is None or access is None:
        return None
    return MeshSpec(trust_domain or None, aliases, root_namespace, mode, workload_ttl,  # type: ignore[arg-type]
                    rotate_at, issuer_ttl, access_log, metric_names, connect, idle,  # type: ignore[arg-type]
                    drain, **limits, **overload, **access,  # type: ignore[arg-type]
                    path_normalization=normalization, tracing=tracing)  # type: ignore[arg-type]


def _tracing(d: _Doc, value: object, base: TracingSpec) -> TracingSpec | None:
    """spec.tracing (config/tracing.py): each field checked by name, an unknown one
    refused; a collector is one of COLLECTOR_KINDS with an http(s) URL."""
    path = "spec.tracing"
    fields = _fields(d, value, path, ("sampling", "collector", "serviceName", "batchSize",
                                      "flushInterval", "maxQueuedSpans"))
    if fields is None:
        return None
    kind, url = base.collector_kind, base.collector_url
    if "collector" in fields:
        collector = _fields(d, fields["collector"], join(path, "collector"), COLLECTOR_KINDS)
        if collector is None:
            return None
        if len(collector) != 1:
            d.fail(join(path, "collector"), f"must name one of {', '.join(COLLECTOR_KINDS)}")
            return None
        [(kind, url)] = collector.items()
        url = _collector_url(d, url, join(join(path, "collector"), kind))
    out = TracingSpec(
        _opt(d, fields, path, "sampling", _percent, base.sampling_percent),  # type: ignore[arg-type]
        kind, url,
        _opt(d, fields, path, "serviceName", _choice(SERVICE_NAMES), base.service_name),  # type: ignore[arg-type]
        _opt(d, fields, path, "batchSize", lambda d, v, p: _int(d, v, p, 1, MAX_BATCH_SPANS),
             base.batch_spans),  # type: ignore[arg-type]
        _opt(d, fields, path, "flushInterval", _duration(0.01, 3600.0), base.flush_interval_s),  # type: ignore[arg-type]
        _opt(d, fields, path, "maxQueuedSpans", lambda d, v, p: _int(d, v, p, 1, MAX_QUEUED_SPANS),
             base.max_queued_spans))  # type: ignore[arg-type]
    if None in (out.sampling_percent, out.service_name, out.batch_spans, out.flush_interval_s,
                out.max_queued_spans) or (kind is not None and url is None):
        return None
    return out


def _collector_url(d: _Doc, value: object, path: str) -> str | None:
    url = _string(d, value, path)
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        d.fail(path, f"must be an http:// or https:// URL with a host, got {url!r}")
        return None
    return url


_STATUS_FILTER = re.compile(r"\s*response\.code\s*>=\s*([0-9]{1,3})\s*")


def _access_log(d: _Doc, telemetry: dict[str, Any], base: MeshSpec) -> dict[str, Any] | None:
    """spec.telemetry's access log settings as MeshSpec fields: accessLogSampling (a
    percentage, as Istio's randomSamplingPercentage), accessLogFilter (the Telemetry
    API's filter shape; of its CEL, the one expression meshnode implements, `response.code
    >= N`, anything else refused by name) and accessLogRotation (as Python's
    RotatingFileHandler names them: maxBytes, backupCount)."""
    path = "spec.telemetry"
    out: dict[str, Any] = {
        "access_log_sampling_percent": _opt(d, telemetry, path, "accessLogSampling", _percent,
                                            base.access_log_sampling_percent),
        "access_log_min_status": base.access_log_min_status,
        "access_log_max_bytes": base.access_log_max_bytes,
        "access_log_backups": base.access_log_backups,
    }
    if "accessLogFilter" in telemetry:
        fpath = join(path, "accessLogFilter")
        filt = _fields(d, telemetry["accessLogFilter"], fpath, ("expression",), ("expression",))
        expression = _opt(d, filt or {}, fpath, "expression", _string, None)
        match = _STATUS_FILTER.fullmatch(expression) if expression is not None else None
        if expression is not None and (match is None or not 100 <= int(match[1]) <= 599):
            d.fail(join(fpath, "expression"), f"{expression!r} is not implemented: meshnode "
                   "takes only `response.code >= N` (N a status, 100..599)")
        out["access_log_min_status"] = int(match[1]) if match else None
    if "accessLogRotation" in telemetry:
        rpath = join(path, "accessLogRotation")
        rot = _fields(d, telemetry["accessLogRotation"], rpath, ("maxBytes", "backupCount")) or {}
        out["access_log_max_bytes"] = _opt(d, rot, rpath, "maxBytes",
                                           lambda d, v, p: _int(d, v, p, 1024, 1 << 40),
                                           base.access_log_max_bytes)
        out["access_log_backups"] = _opt(d, rot, rpath, "backupCount",
                                         lambda d, v, p: _int(d, v, p, 0, 100),
                                         base.access_log_backups)
    return None if None in out.values() else out


def _percent(d: _Doc, value: object, path: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        d.fail(path, f"must be a percentage, 0 to 100, got {_describe(value)}")
        return None
    return float(value)


def _metric_names(d: _Doc, value: object, path: str) -> tuple[str, ...] | None:
    """telemetry.metricNames: "istio", "meshnode" or both, each once (none would export
    no request metrics at all, which is never what is meant)."""
    what = f"one or both of {', '.join(METRIC_NAMES)}"
    if value == []:
        d.fail(path, f"must be a list of {what}, got an empty list")
        return None
    return _distinct(d, value, path, _choice(METRIC_NAMES), what)


def _trust_domains(d: _Doc, value: object, path: str) -> tuple[str, ...] | None:
    """trustDomainAliases: a list of distinct trust domains."""
    return _distinct(d, value, path, _trust_domain, "trust domains")


def _distinct(d: _Doc, value: object, path: str,
              check: Callable[[_Doc, Any, str], str | None], what: str) -> tuple[str, ...] | None:
    """A list of `what`, each checked by `check` and listed once."""
    if not isinstance(value, list):
        d.fail(path, f"must be a list of {what}, got {_describe(value)}")
        return None
    items = [check(d, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if None in items:
        return None
    for i, item in enumerate(items):
        if item in items[:i]:
            d.fail(f"{path}[{i}]", f"{item!r} is listed twice")
            return None
    return tuple(items)  # type: ignore[arg-type]


def _limit(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 1, MAX_LIMIT)


def _connection_limits(d: _Doc, conns: dict[str, Any], path: str,
                       base: MeshSpec) -> dict[str, Any] | None:
    """spec.connections' limits before authentication, as MeshSpec fields. Each is
    checked on its own: the engine holds a source to the lower of its own and the
    overall limit, so no combination of valid values is refused."""
    limits = {
        "max_handshakes": _opt(d, conns, path, "maxHandshakes", _limit, base.max_handshakes),
        "max_handshakes_per_source": _opt(d, conns, path, "maxHandshakesPerSource", _limit,
                                          base.max_handshakes_per_source),
        "max_connections_per_source": _opt(d, conns, path, "maxConnectionsPerSource", _limit,
                                           base.max_connections_per_source),
        # Strictly inside (0, 1): each side keeps a budget of its own.
        "inbound_share": _opt(d, conns, path, "inboundShare", _fraction, base.inbound_share),
    }
    return None if None in limits.values() else limits


def _cap(d: _Doc, value: object, path: str) -> int | None:
    return _int(d, value, path, 0, MAX_CAP)


def _overload(d: _Doc, value: object, base: MeshSpec) -> dict[str, Any] | None:
    """spec.overload as MeshSpec fields: the caps on requests in flight (0: none) and
    the least rate of a slow client's head or body (fastpath overload.pxi)."""
    path = "spec.overload"
    fields = _fields(d, value, path, ("maxRequestsInFlight", "maxRequestsPerSource",
                                      "slowClients"))
    if fields is None:
        return None
    slow_path = join(path, "slowClients")
    slow = _fields(d, fields.get("slowClients", {}), slow_path,
                   ("gracePeriod", "minBytesPerSecond"))
    if slow is None:
        return None
    out = {
        "max_requests_in_flight": _opt(d, fields, path, "maxRequestsInFlight", _cap,
                                       base.max_requests_in_flight),
        "max_requests_per_source": _opt(d, fields, path, "maxRequestsPerSource", _cap,
                                        base.max_requests_per_source),
        "slow_grace_s": _opt(d, slow, slow_path, "gracePeriod", _duration(0.001, 3600.0),
                             base.slow_grace_s),
        "slow_min_rate": _opt(d, slow, slow_path, "minBytesPerSecond", _cap, base.slow_min_rate),
    }
    return None if None in out.values() else out


def _node_spec(d: _Doc, value: object) -> NodeSpec | None:
    if value is _MISSING:
        d.fail("spec", "required")
        return None
    spec = _fields(d, value, "spec", ("address", "inboundPort"), required=("address",))
    if spec is None:
        return None
    address = _opt(d, spec, "spec", "address", _address, None)
    port = _opt(d, spec, "spec", "inboundPort", _port, NodeSpec.inbound_port)
    if address is None or port is None:
        return None
    return NodeSpec(address, port)


def _target_port(d: _Doc, value: object, path: str) -> int | str | None:
    if isinstance(value, str):
        return _dns_label(d, value, path)
    if isinstance(value, bool) or not isinstance(value, int):
        d.fail(path, f"must be a port number or a port name, got {_describe(value)}")
        return None
    return _port(d, value, path)


def _service_ports(d: _Doc, value: object, path: str) -> tuple[ServicePort, ...] | None:
    if not isinstance(value, list) or not value:
        d.fail(path, f"must be a non-empty list of ports, got {_describe(value)}")
        return None
    ports: list[ServicePort] = []
    names: dict[str, int] = {}
    numbers: dict[int, int] = {}
    for i, item in enumerate(value):
        at = f"{path}[{i}]"
        fields = _fields(d, item, at, ("name", "port", "protocol", "targetPort", "outboundPort"),
                         required=("name", "port"))
        if fields is None:
            continue
        name = _opt(d, fields, at, "name", _dns_label, None)
        port = _opt(d, fields, at, "port", _port, None)
        protocol = _opt(d, fields, at, "protocol", _choice(_PROTOCOLS), "auto")
        target = _opt(d, fields, at, "targetPort", _target_port, 0)
        # A local listener for this port alone: TCP relays it opaque, HTTP frames every
        # connection, auto tells an HTTP/1.1 client from anything else by its first
        # bytes (fastpath.engine).
        outbound = _opt(d, fields, at, "outboundPort", _port, 0)
        if name is not None:
            if name in names:
                d.fail(join(at, "name"), f"duplicate port name {name!r} (also {path}[{names[name]}])")
            names.setdefault(name, i)
        if port is not None:
            if port in numbers:
                d.fail(join(at, "port"), f"duplicate port {port} (also {path}[{numbers[port]}])")
            numbers.setdefault(port, i)
        if None not in (name, port, protocol, target, outbound):
            ports.append(ServicePort(name, port, protocol, target, outbound))  # type: ignore[arg-type]
    return tuple(ports) if len(ports) == len(value) else None


def _service_spec(d: _Doc, value: object) -> ServiceSpec | None:
    if value is _MISSING:
        d.fail("spec", "required")
        return None
    spec = _fields(d, value, "spec", ("selector", "ports"), required=("selector", "ports"))
    if spec is None:
        return None
    selector = _opt(d, spec, "spec", "selector", _labels, None)
    if selector == {}:
        d.fail("spec.selector", "must select at least one label")
    ports = _opt(d, spec, "spec", "ports", _service_ports, None)
    if not selector or ports is None:
        return None
    return ServiceSpec(selector, ports)


def _workload_spec(d: _Doc, value: object) -> WorkloadSpec | None:
    if value is _MISSING:
        d.fail("spec", "required")
        return None
    spec = _fields(d, value, "spec", ("address", "ports", "labels", "serviceAccount", "node",
                                      "weight", "user"), required=("address",))
    if spec is None:
        return None
    address = _opt(d, spec, "spec", "address", _address, None)
    ports = _opt(d, spec, "spec", "ports", _workload_ports, {})
    labels = _opt(d, spec, "spec", "labels", _labels, {})
    account = _opt(d, spec, "spec", "serviceAccount", _dns_label, "default")
    node = _opt(d, spec, "spec", "node", _node, None)
    weight = _opt(d, spec, "spec", "weight", _weight, 1)
    user = _opt(d, spec, "spec", "user", _user, None)
    if (None in (address, ports, labels, account, weight) or ("node" in spec and node is None)
            or ("user" in spec and user is None)):
        return None
    return WorkloadSpec(address, ports, labels, account, node, weight, user)  # type: ignore[arg-type]


def _user(d: _Doc, value: object, path: str) -> int | str | None:
    """The OS account a workload runs as: a uid, or a name the node resolves (the
    node tells its local callers apart by it: meshnode.callers)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(d, value, path, 0, MAX_UID)
    if isinstance(value, str) and _USER_NAME.fullmatch(value):
        return value
    d.fail(path, f"must be a user name (such as 'www-data') or a uid (0..{MAX_UID}), "
                 f"got {_describe(value)}")
    return None


def _workload_ports(d: _Doc, value: object, path: str) -> dict[str, int] | None:
    if not isinstance(value, dict):
        d.fail(path, f"must be a mapping of port name to port number, got {_describe(value)}")
        return None
    ports: dict[str, int] = {}
    for key, item in value.items():
        name = _dns_label(d, key, join(path, str(key)))
        port = _port(d, item, join(path, str(key)))
        if name is not None and port is not None:
            ports[name] = port
    return ports if len(ports) == len(value) else None


_SPECS: dict[str, Callable[[_Doc, object], Any]] = {
    "Mesh": _mesh_spec,
    "Node": _node_spec,
    "Service": _service_spec,
    "Workload": _workload_spec,
}


def document_label(doc: object, index: int) -> str:
    """Name a document for problems: "Service demo/web" if it says so, else "document #N"."""
    if isinstance(doc, dict):
        kind, meta = doc.get("kind"), doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(kind, str) and kind and isinstance(name, str) and name:
            cls = KINDS.get(kind)
            namespace = meta.get("namespace") if isinstance(meta, dict) else None
            if not isinstance(namespace, str) or not namespace:
                namespace = "default"
            return key_label((kind, "" if cls and cls.CLUSTER_SCOPED else namespace, name))
    return f"document #{index}"


def parse_document(doc: object, file: str, index: int) -> tuple[Resource | None, list[Problem]]:
    """Build the resource a parsed YAML/JSON document describes, or list what is wrong with it.

    `index` is the 1-based position of the document in its file, used to name documents
    that have no kind or name.
    """
    if isinstance(doc, dict) and doc.get("kind") == HTTPRoute.KIND:
        # An upstream kind with its own apiVersion and fields; routeparse builds on the
        # checks of this module, hence the import here.
        from .routeparse import parse_route
        return parse_route(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "DestinationRule":
        # Istio's kind, in its own apiVersion and fields; destinationruleparse builds
        # on the checks of this module, hence the import here.
        from .destinationruleparse import parse_destination_rule
        return parse_destination_rule(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "XBackendTrafficPolicy":
        # Gateway API's policy kind, in its own apiVersion and fields (backendtrafficpolicy.py).
        from .backendtrafficpolicyparse import parse_backend_traffic_policy
        return parse_backend_traffic_policy(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "AuthorizationPolicy":
        # Istio's kinds, in their own apiVersion and fields (authz.py).
        from .authzparse import parse_authorization_policy
        return parse_authorization_policy(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "PeerAuthentication":
        from .peerauthparse import parse_peer_authentication
        return parse_peer_authentication(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "RateLimitPolicy":
        # meshnode's kind with Envoy's token bucket and Gateway API's targetRefs (ratelimit.py).
        from .ratelimitparse import parse_rate_limit_policy
        return parse_rate_limit_policy(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "Rollout":
        # meshnode's kind in Flagger Canary's shape (rollout.py).
        from .rolloutparse import parse_rollout
        return parse_rollout(doc, file, index)
    if isinstance(doc, dict) and doc.get("kind") == "FaultInjection":
        # meshnode's kind with Istio's fields (fault.py), built on this module's checks.
        from .faultparse import parse_fault_injection
        return parse_fault_injection(doc, file, index)
    d = _Doc(file, document_label(doc, index))
    top = _fields(d, doc, "", ("apiVersion", "kind", "metadata", "spec"),
                  required=("apiVersion", "kind", "metadata"))
    if top is None:
        return None, d.problems
    if "apiVersion" in top and top["apiVersion"] != API_VERSION:
        d.fail("apiVersion", f"must be {API_VERSION!r}, got {_describe(top['apiVersion'])}")
    cls: type[Resource] | None = None
    if "kind" in top:
        kind = top["kind"]
        cls = KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            shown = repr(kind) if isinstance(kind, str) else _describe(kind)
            close = difflib.get_close_matches(kind, list(KINDS), n=1) if isinstance(kind, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            d.fail("kind", f"unknown kind {shown}{hint}; known kinds: {', '.join(KINDS)}")
    metadata = None
    if "metadata" in top:
        metadata = _metadata(d, top["metadata"], cls is not None and cls.CLUSTER_SCOPED)
    if cls is None:
        return None, d.problems
    spec = _SPECS[cls.KIND](d, top.get("spec", _MISSING))
    if d.problems or metadata is None or spec is None:
        return None, d.problems
    return cls(metadata=metadata, spec=spec, source=file), []  # type: ignore[call-arg]


def duplicate_problems(resources: Iterable[Resource]) -> list[Problem]:
    """One problem for every resource whose key an earlier one already has."""
    first: dict[Key, Resource] = {}
    problems: list[Problem] = []
    for resource in resources:
        if resource.key in first:
            where = f" (first in {first[resource.key].source})" if first[resource.key].source else ""
            problems.append(Problem(resource.source, resource.label, "metadata.name",
                                    f"{resource.label} is defined twice{where}"))
        else:
            first[resource.key] = resource
    return problems


def set_problems(resources: Sequence[Resource]) -> list[Problem]:
    """Every problem of a whole configuration: duplicates, meshes and cross-references."""
    from .rolloutparse import rollout_problems  # built on this module's checks
    problems = duplicate_problems(resources)
    first: dict[Key, Resource] = {}
    for resource in resources:
        first.setdefault(resource.key, resource)
    unique = list(first.values())
    meshes = [r for r in unique if isinstance(r, Mesh)]
    for extra in meshes[1:]:
        where = f" in {meshes[0].source}" if meshes[0].source else ""
        problems.append(Problem(extra.source, extra.label, "metadata.name",
                                f"only one Mesh is allowed and {meshes[0].label} is defined{where}"))
    problems += _node_problems([r for r in unique if isinstance(r, Node)])
    services = [r for r in unique if isinstance(r, Service)]
    workloads = [r for r in unique if isinstance(r, Workload)]
    for workload in workloads:
        selecting = [s for s in services if selects(s, workload)]
        if not selecting:
            continue  # nothing to check against; a lone workload is allowed
        known = {p.name for s in selecting for p in s.spec.ports}
        known |= {p.target_port for s in selecting for p in s.spec.ports
                  if isinstance(p.target_port, str)}
        for name in workload.spec.ports:
            if name not in known:
                problems.append(Problem(
                    workload.source, workload.label, join("spec.ports", name),
                    f"no port named {name!r} in the services selecting this workload "
                    f"({', '.join(s.label for s in selecting)}); they name: "
                    f"{', '.join(sorted(str(k) for k in known))}"))
    taken: dict[int, tuple[Service, int]] = {}
    for service in services:
        for i, port in enumerate(service.spec.ports):
            if port.outbound_port and port.outbound_port in taken:
                other, j = taken[port.outbound_port]
                problems.append(Problem(
                    service.source, service.label, f"spec.ports[{i}].outboundPort",
                    f"port {port.outbound_port} is already the outboundPort of "
                    f"{other.label} spec.ports[{j}]"))
            elif port.outbound_port:
                taken[port.outbound_port] = (service, i)
            if not isinstance(port.target_port, str):
                continue
            for workload in workloads:
                if selects(service, workload) and port.target_port not in workload.spec.ports:
                    where = f" ({workload.source})" if workload.source else ""
                    problems.append(Problem(
                        service.source, service.label, f"spec.ports[{i}].targetPort",
                        f"port name {port.target_port!r} is not in the ports of "
                        f"{workload.label}{where}"))
    return problems + rollout_problems(unique)


def _node_problems(nodes: Sequence[Node]) -> list[Problem]:
    """Two nodes cannot take inbound traffic at one address and port."""
    problems: list[Problem] = []
    taken: dict[tuple[str, int], Node] = {}
    for node in nodes:
        where = (node.spec.address, node.spec.inbound_port)
        if where in taken:
            problems.append(Problem(
                node.source, node.label, "spec.inboundPort",
                f"{node.spec.address} port {node.spec.inbound_port} is already the inbound "
                f"listener of {taken[where].label}"))
        else:
            taken[where] = node
    return problems


def trust_domain_problems(resources: Iterable[Resource], root_domain: str | None) -> list[Problem]:
    """A Mesh that names a trust domain other than its root's (DESIGN §4): identities
    are issued under the root, in the root's trust domain, so the Mesh may name that
    one or none (None: the root names none, and any is the Mesh's to choose)."""
    if root_domain is None:
        return []
    return [Problem(r.source, r.label, "spec.trustDomain",
                    f"{r.spec.trust_domain!r} is not the mesh root's trust domain "
                    f"{root_domain!r}: the trust domain is the root's; name "
                    f"{root_domain!r} or leave trustDomain out")
            for r in resources if isinstance(r, Mesh)
            and r.spec.trust_domain not in (None, root_domain)]


def validate_set(resources: Sequence[Resource]) -> None:
    """Check a whole configuration; raise ConfigError listing every problem."""
    problems = set_problems(resources)
    if problems:
        raise ConfigError(problems)
