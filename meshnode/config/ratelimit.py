"""RateLimitPolicy (meshnode.io/v1alpha1): token buckets on a Service's or an HTTPRoute's
requests and new opaque connections, node-wide.

Envoy's local rate limit (its token bucket: maxTokens, tokensPerFill, fillInterval), or
Envoy Gateway's plain rate (requests per unit: a bucket of that many refilled over the
unit), attached as Gateway API policies attach (GEP-713: targetRefs in the policy's
namespace, an HTTPRoute's rule by its name in sectionName):

    apiVersion: meshnode.io/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: api-limits, namespace: shop}
    spec:
      targetRefs: [{group: "", kind: Service, name: api}]
      direction: Inbound            # at the destination's node (default), or Outbound
      limits:
      - name: per-caller
        key: SourcePrincipal        # a bucket per calling workload's SPIFFE ID
        maxKeys: 1024               # callers told apart; more share one overflow bucket
        tokenBucket: {maxTokens: 20, tokensPerFill: 10, fillInterval: 1s}
      - rate: {requests: 6000, unit: Minute}   # the whole Service's

Each limit is its targets' own: one bucket per target (a Service, with all its ports;
an HTTPRoute, all its rules or the one sectionName names), or per caller of a target
(`key` SourcePrincipal: the caller's verified identity; SourceIP: the address that
connected). A request takes a token from every limit that applies; one with none left
is answered 429 (Retry-After, RateLimit-Policy and RateLimit fields), a new connection
on an opaque port is closed after its handshake. Inbound, the destination's node holds
the buckets, so the limit is the service's on that node whatever its callers; Outbound,
every caller's node holds its own, so each node's callers get the limit. An HTTPRoute's
rules are matched where they route, at the caller's node: its limits are Outbound.
Either way a node's workers share the buckets (fastpath/ratelimit.pxi).
"""
from __future__ import annotations

from dataclasses import dataclass

from .durations import parse_duration

API_VERSION = "meshnode.io/v1alpha1"
KIND = "RateLimitPolicy"

DIRECTIONS = ("Inbound", "Outbound")
# `key`: the target's one bucket (Service, Route: the target's kind), or one per caller.
KEYS = {"Service": "none", "Route": "none", "SourcePrincipal": "principal", "SourceIP": "source_ip"}
UNITS = {"Second": 1.0, "Minute": 60.0, "Hour": 3600.0, "Day": 86400.0}
ROUTE_GROUP = "gateway.networking.k8s.io"
TARGET_KINDS = {("", "Service"), (ROUTE_GROUP, "HTTPRoute")}

MAX_TARGET_REFS = 16
MAX_LIMITS = 16
MAX_TOKENS = 1_000_000_000
DEFAULT_MAX_KEYS = 1024
MAX_KEYS = 65536                       # the engine's RATE_MAX_KEYS
MIN_FILL_S, MAX_FILL_S = 0.001, 86400.0
# The longest an emptied bucket may take to fill again (maxTokens tokens at the rate):
# the engine keeps it as nanoseconds ahead of a CLOCK_MONOTONIC time in an int64, whose
# bound (RATE_MAX_REFILL_NS, 2^62 ns: about 146 years) this keeps well under.
MAX_REFILL_S = 100 * 365 * 86400.0


@dataclass(frozen=True)
class RateTargetRef:
    """A LocalPolicyTargetReferenceWithSectionName: a Service, or an HTTPRoute (and
    one of its rules by name), of the policy's namespace."""

    group: str
    kind: str
    name: str
    section_name: str | None = None

    @property
    def is_route(self) -> bool:
        return self.kind == "HTTPRoute"


def fill_tokens(max_tokens: int, per_fill: int | None) -> int:
    """The tokens a fill interval really brings: Envoy's bucket holds at most maxTokens,
    so a fill of more tokensPerFill than that is cut to maxTokens (maxTokens 1 with
    tokensPerFill 10 every second lets one request a second through, not ten)."""
    return min(per_fill or 1, max_tokens)


@dataclass(frozen=True)
class Limit:
    """One limit as written: `token_bucket` (maxTokens, tokensPerFill or None, the
    fillInterval text) or `rate` (requests, unit)."""

    name: str | None = None
    key: str | None = None                       # None: the target's one bucket
    max_keys: int | None = None
    token_bucket: tuple[int, int | None, str] | None = None
    rate: tuple[int, str] | None = None

    def bucket(self) -> dict[str, float | int]:
        """RouteTable.add_rate_limit's tokens, interval_s and burst."""
        if self.token_bucket is not None:
            max_tokens, per_fill, interval = self.token_bucket
            return {"tokens": fill_tokens(max_tokens, per_fill), "interval_s": parse_duration(interval),
                    "burst": max_tokens}
        requests, unit = self.rate  # type: ignore[misc]
        return {"tokens": requests, "interval_s": UNITS[unit], "burst": requests}

    def by(self) -> str:
        return KEYS[self.key] if self.key is not None else "none"


@dataclass(frozen=True)
class RateLimitPolicySpec:
    target_refs: tuple[RateTargetRef, ...]
    limits: tuple[Limit, ...]
    direction: str | None = None                 # None: Inbound

    @property
    def outbound(self) -> bool:
        return self.direction == "Outbound"
