"""The resource model: frozen dataclasses for Mesh, Node, Service, Workload, HTTPRoute,
DestinationRule, FaultInjection, XBackendTrafficPolicy, AuthorizationPolicy and
PeerAuthentication, RateLimitPolicy and Rollout, and their keys.

Objects here are already validated (see validate.py); nothing in this module checks input.
Map-valued fields are plain dicts so callers can read them naturally: treat them as
read-only. Resources compare by content (not by the file they came from) and are not
hashable; use `.key` when you need a dict key.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from ..ports import Ports
from .authz import DEFAULT_ROOT_NAMESPACE, AuthorizationPolicySpec, PeerAuthenticationSpec
from .backendtrafficpolicy import BackendTrafficPolicySpec
from .ratelimit import RateLimitPolicySpec
from .rollout import RolloutSpec
from .tracing import TracingSpec
from .destinationrule import DestinationRuleSpec
from .errors import NotFound, Problem
from .fault import FaultInjectionSpec
from .httproute import HTTPRouteSpec

API_VERSION = "meshnode.io/v1alpha1"

DEFAULT_TRUST_DOMAIN = "cluster.local"
"""The trust domain of a mesh whose Mesh names none under a root that names none."""

METRIC_NAMES = ("istio", "meshnode")
"""The names request metrics may be exported under (Mesh spec.telemetry.metricNames)."""

Key = tuple[str, str, str]
"""(kind, namespace, name); the namespace of a cluster-scoped kind (Mesh) is ""."""


@dataclass(frozen=True)
class Metadata:
    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MeshSpec:
    """Mesh-wide settings (Istio MeshConfig); the defaults apply when no Mesh exists."""

    # None (not named): the mesh root's, or DEFAULT_TRUST_DOMAIN under a root that names
    # none. A Mesh may name only its root's (DESIGN §4: the trust domain is the root's).
    trust_domain: str | None = None
    # Other trust domains whose identities are this one's (Istio's meshConfig
    # trustDomainAliases): an AuthorizationPolicy naming a principal of one of them, or of
    # "cluster.local", matches the same service account in each (authzprogram.py).
    trust_domain_aliases: tuple[str, ...] = ()
    # Where mesh-wide security policies live (Istio's meshConfig.rootNamespace): an
    # AuthorizationPolicy or PeerAuthentication there without a selector is mesh-wide.
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    # STRICT | PERMISSIVE: every port's mode where no PeerAuthentication says otherwise
    # (Istio's default is PERMISSIVE; meshnode's, DESIGN §4, STRICT).
    mtls_mode: str = "STRICT"
    workload_ttl_s: float = 86400.0  # lifetime of a workload certificate
    rotate_at: float = 0.5  # renew when this fraction of workload_ttl_s has passed
    issuer_ttl_s: float = 31536000.0  # lifetime of a node's issuer (intermediate) cert
    # Off by default, as in Istio's default profile (meshConfig.accessLogFile empty): a
    # line per request costs the node's CPU (README: access logs).
    access_log: bool = False  # (and the access_log_* fields below)
    # Which names the node's request metrics are exported under (spec.telemetry.
    # metricNames): "istio" (istio_requests_total… with Istio's whole label set, one
    # series per label set per node, so Istio's dashboards and Flagger's and Kiali's
    # queries work unchanged), "meshnode" (meshnode_requests_total… per worker, with
    # `route`), or both, the default. Metrics with no Istio counterpart are always
    # meshnode's.
    metric_names: tuple[str, ...] = METRIC_NAMES
    # The data plane's connections (spec.connections): the time a new connection has
    # to connect and finish its TLS handshake, and an HTTP client to send a whole
    # request head; and how long a connection may idle before it is closed.
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 300.0
    # How long a stopping worker drains (Istio's terminationDrainDuration): it accepts
    # nothing more, answers what is in flight and exits when nothing is left or at
    # this deadline. Also how long an opaque TCP connection whose destination left the
    # config goes on before it is closed.
    drain_duration_s: float = 5.0
    # Limits before authentication, per worker (DESIGN §3; the engine's ENGINE_* defaults):
    # inbound TLS handshakes under way at once, in all and from one source address,
    # inbound connections from one source address, and the inbound side's share of the
    # connection slots (outbound has the rest). Over one, a connection is closed at
    # accept, before any TLS, and counted.
    max_handshakes: int = 1024
    max_handshakes_per_source: int = 512
    max_connections_per_source: int = 2048
    inbound_share: float = 0.5
    # Overload defence (spec.overload; fastpath overload.pxi). HTTP requests in flight
    # at once node-wide (every worker together), and inbound from one calling workload's
    # address (its node carries it: source.ip) per worker; over either, a new request is answered 503 at once (response flag
    # "OM"). 0: no cap, the default: what is too many depends on the apps behind the
    # node, which a default cannot know (Envoy's overload manager likewise acts only on
    # thresholds it is given). A request head or body must come at slow_min_rate bytes
    # a second once slow_grace_s has passed (0: no least rate), else it is cut:
    # Apache mod_reqtimeout's defaults, on by default, since no healthy client sends
    # that slowly and a trickling one holds a slot, a buffer and an app connection.
    max_requests_in_flight: int = 0
    max_requests_per_source: int = 0
    slow_grace_s: float = 20.0
    slow_min_rate: int = 500
    # How every HTTP request's path is normalized, by the caller's node and by the
    # app's, before routes, AuthorizationPolicies and the app see it (Istio's
    # meshConfig.pathNormalization.normalization, in its names; DEFAULT is BASE).
    path_normalization: str = "DEFAULT"
    # Access logs (spec.telemetry; access_log above turns them on or off): one JSON line
    # per HTTP request and per TCP connection, on by default (DESIGN §1: the node reports
    # them; Istio's default profile leaves them off, but a mesh that must be asked for
    # its logs is first asked after the incident, and the file is bounded by its
    # rotation). `access_log_sampling_percent` of requests and connections are drawn;
    # with `access_log_min_status` (accessLogFilter "response.code >= N"; 0: no filter)
    # only requests answered N or above or with a response flag, and connections
    # refused or flagged, are written. The file, RUNTIME_DIR/logs/access.log, is rotated
    # at access_log_max_bytes, keeping access_log_backups older files.
    access_log_sampling_percent: float = 100.0
    access_log_min_status: int = 0
    access_log_max_bytes: int = 104857600
    access_log_backups: int = 5
    # Traces (spec.tracing, config/tracing.py): sampling, the collector, batching.
    tracing: TracingSpec = TracingSpec()

    @property
    def path_normalization_mode(self) -> str:
        """The engine's mode: Istio's DEFAULT named for what it is, BASE."""
        return "BASE" if self.path_normalization == "DEFAULT" else self.path_normalization


MAX_LIMIT = 1048576
"""The most any of the connection limits may be (the engine's most slots)."""


MAX_CAP = 0xFFFFFFFF
"""The most an overload cap or rate may be (the engine's counters are 32 bits)."""


MAX_DRAIN_DURATION_S = 30.0
"""The longest drainDuration a Mesh may set: supervisord's stop wait for a worker
(meshnode.supervise) is derived from it, so a draining worker is never SIGKILLed."""


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str = "auto"  # HTTP (framed) | TCP (opaque) | auto (the first bytes tell)
    # A number, or the name of a port in the selected workloads' `ports`; 0 (not given)
    # becomes `port`, as in Kubernetes.
    target_port: int | str = 0
    # A port on 127.0.0.1 where the node takes this service port's traffic from local
    # apps (0: none), as `protocol` says: TCP relayed opaque; HTTP framed always; auto
    # told by the first bytes (a request line: framed, else opaque).
    # HTTP also reaches every service through the shared outbound listener.
    outbound_port: int = 0

    def __post_init__(self) -> None:
        if self.target_port == 0:
            object.__setattr__(self, "target_port", self.port)


@dataclass(frozen=True)
class ServiceSpec:
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True)
class WorkloadSpec:
    address: str  # IPv4/IPv6 literal or hostname
    ports: dict[str, int] = field(default_factory=dict)  # port name -> port on `address`
    labels: dict[str, str] = field(default_factory=dict)  # what Service selectors match
    service_account: str = "default"
    node: str | None = None  # None: beside whichever node loads it
    weight: int = 1
    # The OS account it runs as (a uid, or a name the node resolves): its node then
    # knows its outbound connections by their sockets' owner (DESIGN §4). None: not said.
    user: int | str | None = None


DEFAULT_INBOUND_PORT = Ports().inbound
"""Where a node takes mutual TLS from other nodes when no Node resource says otherwise."""


@dataclass(frozen=True)
class NodeSpec:
    """Where other nodes reach one node: the address and port of its inbound listener.

    A workload placed on a node (`Workload.spec.node`) is reached through that node's
    inbound listener. Without a Node resource of that name, other nodes dial the
    workload's own address on DEFAULT_INBOUND_PORT (the sidecar shape: one node per
    host, every node on the default port block).
    """

    address: str  # IPv4/IPv6 literal or hostname
    inbound_port: int = DEFAULT_INBOUND_PORT


@dataclass(frozen=True)
class Resource:
    """Base of every kind: metadata, plus the file it came from (for error messages only)."""

    KIND: ClassVar[str] = ""
    CLUSTER_SCOPED: ClassVar[bool] = False

    metadata: Metadata
    source: str = field(default="", compare=False, kw_only=True)

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> Key:
        return (self.KIND, self.metadata.namespace, self.metadata.name)

    @property
    def label(self) -> str:
        """How problems and the store name this resource: "Service demo/web", "Mesh default"."""
        return key_label(self.key)


@dataclass(frozen=True)
class Mesh(Resource):
    KIND: ClassVar[str] = "Mesh"
    CLUSTER_SCOPED: ClassVar[bool] = True
    spec: MeshSpec = field(default_factory=MeshSpec)


@dataclass(frozen=True)
class Node(Resource):
    KIND: ClassVar[str] = "Node"
    CLUSTER_SCOPED: ClassVar[bool] = True
    spec: NodeSpec


@dataclass(frozen=True)
class Service(Resource):
    KIND: ClassVar[str] = "Service"
    spec: ServiceSpec


@dataclass(frozen=True)
class Workload(Resource):
    KIND: ClassVar[str] = "Workload"
    spec: WorkloadSpec


@dataclass(frozen=True)
class HTTPRoute(Resource):
    """A Gateway API HTTPRoute whose parents are Services (GAMMA); its spec: httproute.py."""

    KIND: ClassVar[str] = "HTTPRoute"
    spec: HTTPRouteSpec
    # metadata.creationTimestamp (RFC 3339, UTC): set by the store when the route is
    # first created and kept through every later apply, as Kubernetes keeps it; the
    # spec orders equal matches of different routes oldest first. "" until stored.
    created: str = ""


@dataclass(frozen=True)
class DestinationRule(Resource):
    """An Istio DestinationRule for one Service; its spec: destinationrule.py."""

    KIND: ClassVar[str] = "DestinationRule"
    spec: DestinationRuleSpec
    # metadata.creationTimestamp, as HTTPRoute's: of several rules for one host, the
    # oldest's trafficPolicy wins (Istio's merge).
    created: str = ""


@dataclass(frozen=True)
class FaultInjection(Resource):
    """meshnode's fault injection, named by HTTPRoute ExtensionRef filters; its spec: fault.py."""

    KIND: ClassVar[str] = "FaultInjection"
    spec: FaultInjectionSpec


@dataclass(frozen=True)
class XBackendTrafficPolicy(Resource):
    """A Gateway API XBackendTrafficPolicy: its Services' retry budget; its spec:
    backendtrafficpolicy.py."""

    KIND: ClassVar[str] = "XBackendTrafficPolicy"
    spec: BackendTrafficPolicySpec
    # metadata.creationTimestamp, as HTTPRoute's: of two policies for one Service, the
    # oldest wins (Gateway API policy conflict resolution).
    created: str = ""


@dataclass(frozen=True)
class AuthorizationPolicy(Resource):
    """An Istio AuthorizationPolicy; its spec: authz.py."""

    KIND: ClassVar[str] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec
    # metadata.creationTimestamp, as HTTPRoute's (kept for `get`; no order hangs on it).
    created: str = ""


@dataclass(frozen=True)
class PeerAuthentication(Resource):
    """An Istio PeerAuthentication; its spec: authz.py."""

    KIND: ClassVar[str] = "PeerAuthentication"
    spec: PeerAuthenticationSpec
    # metadata.creationTimestamp, as HTTPRoute's: of two policies of one scope for a
    # workload, the oldest decides (Istio's ComposePeerAuthentication).
    created: str = ""


@dataclass(frozen=True)
class RateLimitPolicy(Resource):
    """meshnode's token-bucket rate limits on Services and HTTPRoutes; its spec: ratelimit.py."""

    KIND: ClassVar[str] = "RateLimitPolicy"
    spec: RateLimitPolicySpec
    # metadata.creationTimestamp, as HTTPRoute's (kept for `get`; no order hangs on it).
    created: str = ""


@dataclass(frozen=True)
class Rollout(Resource):
    """meshnode's progressive rollout of a Service, in Flagger Canary's analysis shape;
    its spec: rollout.py. Its status is its controller's (meshnode.rollout)."""

    KIND: ClassVar[str] = "Rollout"
    spec: RolloutSpec
    # metadata.creationTimestamp, as HTTPRoute's (kept for `get`; no order hangs on it).
    created: str = ""


KINDS: dict[str, type[Resource]] = {cls.KIND: cls for cls in (Mesh, Node, Service, Workload, HTTPRoute,
                                                              DestinationRule, FaultInjection,
                                                              XBackendTrafficPolicy, AuthorizationPolicy,
                                                              PeerAuthentication, RateLimitPolicy, Rollout)}
"""Every kind, in the order resources are listed (mesh first, then what depends on it)."""

# Short names and irregular plurals (the CRD's shortNames and plural).
_SHORT_NAMES = {"svc": "Service", "wl": "Workload", "dr": "DestinationRule",
                "xbtrafficpolicy": "XBackendTrafficPolicy",
                "xbackendtrafficpolicies": "XBackendTrafficPolicy",
                "ap": "AuthorizationPolicy", "authorizationpolicies": "AuthorizationPolicy",
                "pa": "PeerAuthentication", "rlp": "RateLimitPolicy",
                "ratelimitpolicies": "RateLimitPolicy", "ro": "Rollout"}


def key_label(key: Key) -> str:
    kind, namespace, name = key
    return f"{kind} {name}" if not namespace else f"{kind} {namespace}/{name}"


def sort_key(resource: Resource) -> tuple[int, str, str]:
    return (list(KINDS).index(resource.kind), resource.namespace, resource.name)


def resolve_kind(text: str) -> str:
    """Return the kind that `text` names: "services", "svc", "Service" -> "Service"."""
    lowered = text.lower()
    for kind in KINDS:
        if lowered in (kind.lower(), kind.lower() + "s", kind.lower() + "es"):
            return kind
    if lowered in _SHORT_NAMES:
        return _SHORT_NAMES[lowered]
    raise NotFound([Problem("", "", "kind", f"unknown kind {text!r}; known kinds: {', '.join(KINDS)}")])


def selects(service: Service, workload: Workload) -> bool:
    """True when the service's selector matches the workload (same namespace, as in Kubernetes)."""
    if service.namespace != workload.namespace:
        return False
    labels = workload.spec.labels
    return all(labels.get(k) == v for k, v in service.spec.selector.items())


def mesh_spec(resources: Iterable[Resource]) -> MeshSpec:
    """The mesh settings in force: the Mesh resource's, or the defaults when there is none."""
    for resource in resources:
        if isinstance(resource, Mesh):
            return resource.spec
    return MeshSpec()
