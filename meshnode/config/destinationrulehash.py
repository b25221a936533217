"""DestinationRule's loadBalancer.consistentHash and its subsets: the model, the checks, and
how they are written back.

consistentHash (Istio's ConsistentHashLB) becomes the engine's ring or Maglev balancer
(fastpath RouteTable.set_hash): the key is one of httpHeaderName, httpCookie (name,
path, ttl: Istio requires the ttl; a request without the cookie gets one generated,
Max-Age the ttl, "0s" a session cookie, as Envoy does), useSourceIp,
httpQueryParameterName; none given (or useSourceIp false), every request is a random
pick, as Envoy picks with no hash. The table is ringHash (minimumRingSize, also Istio's
deprecated consistentHash.minimumRingSize) or maglev (tableSize, a prime), ring by
default as in Istio, each bounded so a worker's memory is (ring points 12 bytes each,
Maglev slots 4).

subsets (name, labels) are checked as Istio checks them (a DNS-1123 label each, unique,
labels of Kubernetes syntax), kept and shown. They route nothing by themselves: in
Istio only a VirtualService route naming a subset sends traffic to it, and a Gateway
API HTTPRoute names Services, never subsets (its backendRefs become the Service's own
cluster). meshnode routes by HTTPRoute alone, so a subset's trafficPolicy, which Istio
applies only to traffic routed to that subset, could never apply here: it is refused by
name, with the way to get its effect (a DestinationRule for a Service selecting the
subset's workloads, which is how an HTTPRoute reaches one version).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .durations import DurationError, parse_duration
from .validate import (_Doc, _bool, _describe, _dns_label, _fields, _int, _known_fields, _labels,
                       _string, join)

RING_DEFAULT = 1024            # Istio's and Envoy's minimumRingSize
RING_MAX = 1048576             # fastpath hashing.pxi HASH_RING_MAX: 12 MiB a service a worker
MAGLEV_DEFAULT = 65537         # Envoy's default table size
MAGLEV_MAX = 5000011           # Istio's (and hashing.pxi HASH_MAGLEV_MAX): 20 MiB
NAME_MAX_BYTES = 128           # hashing.pxi HASH_COOKIE_NAME_MAX
PATH_MAX_BYTES = 256           # hashing.pxi HASH_COOKIE_PATH_MAX
TTL_MAX_S = 2 ** 31

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")     # RFC 9110 §5.6.2

KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
FIELDS = KEYS + ("ringHash", "maglev", "minimumRingSize")
COOKIE_FIELDS = ("name", "path", "ttl")
NOT_IMPLEMENTED_COOKIE = ("attributes",)
SUBSET_FIELDS = ("name", "labels")
NOT_IMPLEMENTED_SUBSET = {
    "trafficPolicy": "a subset's policy applies only to traffic routed to that subset, "
                     "and meshnode routes by HTTPRoute, whose backendRefs name Services, "
                     "never subsets: it could never apply. Give the policy to a "
                     "DestinationRule for a Service that selects the subset's workloads",
}


@dataclass(frozen=True)
class ConsistentHash:
    """loadBalancer.consistentHash, as the engine takes it."""

    key: str | None                # "header", "cookie", "source-ip", "query"; None: random
    name: str = ""                 # header, cookie or query parameter name
    path: str = ""                 # httpCookie.path
    ttl_s: int | None = None       # httpCookie.ttl, whole seconds
    table: str = "ring-hash"       # the engine balancer: "ring-hash" or "maglev"
    size: int = RING_DEFAULT       # ring's least points, or Maglev's table size
    written: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def engine(self) -> dict[str, Any] | None:
        """RouteTable.set_hash()'s arguments (the snapshot carries them as they are);
        None: no key (the balancer picks at random, whatever its table)."""
        if self.key is None:
            return None
        out: dict[str, Any] = {"key": self.key, "slots": self.size}
        if self.key in ("header", "cookie", "query"):
            out["name"] = self.name
        if self.key == "cookie":
            out["path"] = self.path
            out["ttl_s"] = self.ttl_s
        return out


@dataclass(frozen=True)
class Subset:
    """spec.subsets[]: a named group of the host's workloads, by labels."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _name(d: _Doc, value: object, path: str, token: bool) -> str | None:
    text = _string(d, value, path)
    if text is None:
        return None
    size = len(text.encode())
    if not text or size > NAME_MAX_BYTES or "\0" in text:
        d.fail(path, f"must be 1..{NAME_MAX_BYTES} bytes, got {size}")
        return None
    if token and not _TOKEN.fullmatch(text):
        d.fail(path, f"{text!r} is not a token (letters, digits and !#$%&'*+-.^_`|~)")
        return None
    return text


def _cookie(d: _Doc, value: object, path: str) -> tuple[str, str, int] | None:
    cookie = _known_fields(d, value, path, COOKIE_FIELDS, NOT_IMPLEMENTED_COOKIE)
    if cookie is None:
        return None
    # Istio's own validation: both required ("name required for HttpCookie", "ttl ...").
    for key in ("name", "ttl"):
        if key not in cookie:
            d.fail(join(path, key), "required (Istio requires it)")
    name = _name(d, cookie["name"], join(path, "name"), True) if "name" in cookie else None
    cookie_path = ""
    if "path" in cookie:
        cookie_path = _string(d, cookie["path"], join(path, "path")) or ""
        if len(cookie_path.encode()) > PATH_MAX_BYTES or any(
                ch < " " or ch > "~" or ch == ";" for ch in cookie_path):
            d.fail(join(path, "path"), f"must be at most {PATH_MAX_BYTES} printable ASCII "
                                       f"bytes without ';'")
    ttl = None
    if "ttl" in cookie:
        try:
            seconds = parse_duration(cookie["ttl"])
        except DurationError as exc:
            d.fail(join(path, "ttl"), str(exc))
        else:
            if seconds > TTL_MAX_S:
                d.fail(join(path, "ttl"), f"at most {TTL_MAX_S}s")
            else:
                ttl = int(seconds)   # Envoy takes the whole seconds
    if name is None or ttl is None or d.problems:
        return None
    return name, cookie_path, ttl


def _size(d: _Doc, fields: dict[str, Any], path: str) -> tuple[str, int] | None:
    """The table: ringHash / maglev / the deprecated minimumRingSize (one of them)."""
    given = [k for k in ("ringHash", "maglev", "minimumRingSize") if k in fields]
    if len(given) > 1:
        d.fail(join(path, given[1]), f"give one of ringHash, maglev and minimumRingSize "
                                     f"(deprecated), not {' and '.join(given)}")
        return None
    table, size_field, default = (("maglev", "tableSize", MAGLEV_DEFAULT) if "maglev" in fields
                                  else ("ringHash", "minimumRingSize", RING_DEFAULT))
    if table in fields:
        where = join(path, table)
        inner = _fields(d, fields[table], where, (size_field,))
        if inner is None:
            return None
        size, where = inner.get(size_field, default), join(where, size_field)
    else:
        size, where = fields.get("minimumRingSize", RING_DEFAULT), join(path, "minimumRingSize")
    if table == "maglev":
        if isinstance(size, bool) or not isinstance(size, int) or not (
                _is_prime(size) and size <= MAGLEV_MAX):
            d.fail(where, f"must be a prime number up to {MAGLEV_MAX} (Istio's limit), "
                          f"got {_describe(size)}")
            return None
        return "maglev", size
    # 0 is protobuf's unset: the default.
    size = _int(d, size, where, 0, RING_MAX)
    return None if size is None else ("ring-hash", size or RING_DEFAULT)


def parse_consistent_hash(d: _Doc, value: object, path: str) -> ConsistentHash | None:
    """loadBalancer.consistentHash at `path`, or None (problems in `d`)."""
    fields = _fields(d, value, path, FIELDS)
    if fields is None:
        return None
    before = len(d.problems)
    keys = [k for k in KEYS if k in fields]
    if len(keys) > 1:
        d.fail(join(path, keys[1]), f"give one hash key, not {' and '.join(keys)}")
    key: str | None = None
    name, cookie_path, ttl = "", "", None
    if "httpHeaderName" in fields:
        key, name = "header", _name(d, fields["httpHeaderName"], join(path, "httpHeaderName"), True)
    elif "httpQueryParameterName" in fields:
        key = "query"
        name = _name(d, fields["httpQueryParameterName"], join(path, "httpQueryParameterName"), False)
    elif "httpCookie" in fields:
        cookie = _cookie(d, fields["httpCookie"], join(path, "httpCookie"))
        key = "cookie"
        if cookie is not None:
            name, cookie_path, ttl = cookie
    elif "useSourceIp" in fields:
        # false: the oneof is set, to no key (Envoy's source_ip false: no hash).
        key = "source-ip" if _bool(d, fields["useSourceIp"], join(path, "useSourceIp")) else None
    table = _size(d, fields, path)
    if len(d.problems) > before or table is None:
        return None
    return ConsistentHash(key, name or "", cookie_path, ttl, table[0], table[1], dict(fields))


def parse_subsets(d: _Doc, value: object, path: str) -> tuple[Subset, ...]:
    """spec.subsets: Istio's checks (a DNS-1123 label name, unique; labels of Kubernetes
    syntax); a subset's trafficPolicy is refused by name (NOT_IMPLEMENTED_SUBSET)."""
    if not isinstance(value, list):
        d.fail(path, f"must be a list, got {_describe(value)}")
        return ()
    out: list[Subset] = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        fields = _fields(d, item, where, SUBSET_FIELDS + tuple(NOT_IMPLEMENTED_SUBSET),
                         required=("name",))
        if fields is None:
            continue
        for key, why in NOT_IMPLEMENTED_SUBSET.items():
            if key in fields:
                d.fail(join(where, key), f"{key} is not implemented: {why}")
        name = _dns_label(d, fields["name"], join(where, "name")) if "name" in fields else None
        labels = _labels(d, fields["labels"], join(where, "labels")) if "labels" in fields else {}
        if name is None or labels is None:
            continue
        if any(s.name == name for s in out):
            d.fail(join(where, "name"), f"subset {name!r} is defined already")
            continue
        out.append(Subset(name, tuple(sorted(labels.items()))))
    return tuple(out)
