"""The HTTPRoute spec (Gateway API v1, GAMMA profile) as frozen dataclasses.

Field names follow the upstream Go types (apis/v1/httproute_types.go) in snake case.
The defaults are the spec's own (kubebuilder:default): what Kubernetes fills in when a
field is left out, so `meshnode get -o yaml` shows a route as a cluster would. Values are
kept as written (a duration stays "60s", a group stays "core"): GEP-2257 says an API
must not rewrite user input. Nothing here checks input; routeparse.py does.
"""
from __future__ import annotations

from dataclasses import dataclass

from .durations import parse_duration

GROUP = "gateway.networking.k8s.io"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1beta1")
"""v1beta1 serves the same schema as v1 (the Gateway API keeps both)."""

CORE_GROUPS = ("", "core")
"""How a reference names Kubernetes' core group: "" in the spec, "core" as Istio and
Linkerd accept too (the GAMMA docs' own examples write it)."""

CONTROLLER_NAME = "meshnode.io/control"
"""The controllerName of the status meshnode reports (RouteParentStatus)."""


@dataclass(frozen=True)
class ParentRef:
    """A parentRef: in a mesh, a Service (its frontend), optionally one port of it."""

    name: str
    group: str  # "" or "core", as written
    kind: str  # "Service"
    namespace: str | None = None  # None: the route's own
    section_name: str | None = None  # a Service port's name
    port: int | None = None


@dataclass(frozen=True)
class PathMatch:
    type: str = "PathPrefix"  # Exact | PathPrefix | RegularExpression
    value: str = "/"


@dataclass(frozen=True)
class ValueMatch:
    """A header or query parameter match."""

    name: str
    value: str
    type: str = "Exact"  # Exact | RegularExpression


@dataclass(frozen=True)
class RouteMatch:
    """One match: its conditions hold together (AND)."""

    path: PathMatch = PathMatch()
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True)
class HeaderModifier:
    """HTTPHeaderFilter: each header name takes one action at most."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mirror:
    """HTTPRequestMirrorFilter: a copy of numerator/denominator of the rule's requests
    goes to `backend` too (its answer dropped); `percent` p is p/100, neither is all."""

    backend: BackendRef  # a Service and its port; weight unused
    numerator: int = 100
    denominator: int = 100
    written: str = "none"  # which the document used: "percent", "fraction" or "none"


@dataclass(frozen=True)
class PathModifier:
    """HTTPPathModifier: the value replaces the whole path, or the rule's PathPrefix."""

    type: str  # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(frozen=True)
class RequestRedirect:
    """HTTPRequestRedirectFilter; None: unset (the request's scheme, host and path; the
    port by the spec's rules: routes.py)."""

    scheme: str | None = None  # http | https
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302  # 301 | 302 | 303 | 307 | 308


@dataclass(frozen=True)
class URLRewrite:
    """HTTPURLRewriteFilter: the Host and the path the backend gets."""

    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True)
class ExtensionRef:
    """An ExtensionRef filter's object (LocalObjectReference: the route's namespace)."""

    group: str
    kind: str
    name: str


@dataclass(frozen=True)
class RouteFilter:
    type: str  # an HTTPRouteFilter type (routeparse.FILTER_FIELDS); its field below
    headers: HeaderModifier | None = None
    mirror: Mirror | None = None  # RequestMirror
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    extension_ref: ExtensionRef | None = None  # ExtensionRef's (meshnode: a FaultInjection)


@dataclass(frozen=True)
class BackendRef:
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None  # None: the route's own
    port: int | None = None  # the Service port, not the target port
    weight: int = 1  # 0..1000000; 0 sends nothing
    # Applied only to the requests sent to this backend, after the rule's (header
    # modifiers only: routeparse.py refuses the other types here by name).
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    """GEP-2257 durations as written; "0s" turns a timeout off."""

    request: str | None = None
    backend_request: str | None = None

    @property
    def request_s(self) -> float | None:
        return _seconds(self.request)

    @property
    def backend_request_s(self) -> float | None:
        return _seconds(self.backend_request)


def _seconds(text: str | None) -> float | None:
    """None when unset or zero: both mean no timeout."""
    return (parse_duration(text) or None) if text is not None else None


@dataclass(frozen=True)
class Retry:
    """HTTPRouteRetry (GEP-1731) as written; what is left out is the implementation's
    to choose (meshnode: one retry, 25 ms, as Envoy's defaults; no codes: connection
    errors only)."""

    codes: tuple[int, ...] = ()
    attempts: int | None = None
    backoff: str | None = None

    @property
    def backoff_s(self) -> float | None:
        return parse_duration(self.backoff) if self.backoff is not None else None


@dataclass(frozen=True)
class RouteRule:
    name: str | None = None
    # Several matches are alternatives (OR). An empty tuple (`matches: []`) matches
    # every request, as the default does.
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None


@dataclass(frozen=True)
class HTTPRouteSpec:
    parent_refs: tuple[ParentRef, ...] = ()
    # Validated and kept, never used for routing: GAMMA implementations "SHOULD NOT
    # infer any functionality from the hostnames field" (GEP-1294); a mesh route
    # applies to its parent Service's traffic whatever Host says.
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = (RouteRule(),)
