"""What the demo saw, and how it is read and printed: peer identities, mesh counts, latency.

Pure functions with no I/O, so each reading is tested on its own text. Nothing here
derives a value from the configuration: an item the node did not report is printed as
``not reported by this node``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families

NOT_REPORTED = "not reported by this node"
XFCC = "x-forwarded-client-cert"
REQUESTS_SAMPLE = "meshnode_requests_total"


# --- the server side: the x-forwarded-client-cert header the backend received ------------

def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """The elements of an x-forwarded-client-cert value, Envoy's format.

    ``By=<server>;Hash=…;URI=<client>``, several elements comma-separated (one per
    proxy that appended one), values optionally double-quoted. Keys are lower-cased;
    of a key given twice in one element (URI for each URI SAN) the first is kept.
    """
    elements = []
    for raw in _split_outside_quotes(value, ","):
        element: dict[str, str] = {}
        for pair in _split_outside_quotes(raw, ";"):
            key, sep, val = pair.partition("=")
            if sep and key.strip():
                element.setdefault(key.strip().lower(), _unquote(val))
        if element:
            elements.append(element)
    return elements


def xfcc_of(headers: Iterable[Iterable[str]]) -> str | None:
    """The x-forwarded-client-cert value among (name, value) pairs; repeated lines joined."""
    values = [str(v) for k, v in (tuple(h) for h in headers) if str(k).lower() == XFCC]
    return ",".join(values) if values else None


def peers_from_xfcc(value: str | None) -> tuple[str | None, str | None]:
    """(server, client) SPIFFE IDs of the hop that delivered the request: the last element."""
    elements = parse_xfcc(value) if value else []
    if not elements:
        return None, None
    last = elements[-1]
    return last.get("by") or None, last.get("uri") or None


# --- the client side: meshnode_requests_total from the node's /metrics --------------------

@dataclass
class MeshCounts:
    """meshnode_requests_total as the calling side's proxy counted the demo's requests."""

    present: bool = False  # the sample exists at all
    codes: Counter[str] = field(default_factory=Counter)  # by response_code, when labelled
    classes: Counter[str] = field(default_factory=Counter)  # by response_class, when labelled
    destination_principals: Counter[str] = field(default_factory=Counter)
    source_principals: Counter[str] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.codes.values()) if self.codes else sum(self.classes.values())

    def minus(self, before: MeshCounts) -> MeshCounts:
        """What was counted since ``before`` (counters only grow; a reset reads as 0)."""
        return MeshCounts(self.present, self.codes - before.codes, self.classes - before.classes,
                          self.destination_principals - before.destination_principals,
                          self.source_principals - before.source_principals)


def _is_service(value: str, name: str, namespace: str) -> bool:
    """Whether a destination_service label names the service, in any of the usual spellings:
    ``backend.demo.svc.cluster.local`` (Istio), ``backend.demo.svc``, ``demo/backend``,
    with or without ``:port``."""
    v, name, namespace = value.strip().lower(), name.lower(), namespace.lower()
    if "/" in v:
        return v.split(":", 1)[0] == f"{namespace}/{name}"
    host = v.split(":", 1)[0]
    return host in (name, f"{name}.{namespace}") or host.startswith(f"{name}.{namespace}.")


def _principal(value: str | None) -> str | None:
    if not value or value.strip().lower() in ("unknown", "-"):
        return None
    return value.strip()


def mesh_counts(metrics_text: str, service: str, namespace: str,
                reporter: str = "source") -> MeshCounts:
    """The calling side's counts of requests to ``service``, summed over the node's workers
    (the receiving side's, given ``reporter="destination"``).

    A sample is the calling side's when ``reporter="source"`` (Istio's label); on a node
    that has no reporter label yet, when ``direction="outbound"`` (``inbound`` for the
    receiving side). When it has a ``destination_service`` label, only the named service
    counts.
    """
    direction = "outbound" if reporter == "source" else "inbound"
    counts = MeshCounts()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name != REQUESTS_SAMPLE:
                continue
            labels = sample.labels
            if "reporter" in labels:
                if labels["reporter"] != reporter:
                    continue
            elif labels.get("direction", "outbound") != direction:
                continue
            dest = labels.get("destination_service")
            if dest is not None and not _is_service(dest, service, namespace):
                continue
            counts.present = True
            value = int(sample.value)
            if labels.get("response_code"):
                counts.codes[labels["response_code"]] += value
            if labels.get("response_class"):
                counts.classes[labels["response_class"]] += value
            if (p := _principal(labels.get("destination_principal"))) is not None:
                counts.destination_principals[p] += value
            if (p := _principal(labels.get("source_principal"))) is not None:
                counts.source_principals[p] += value
    return counts


# --- latency and counts ----------------------------------------------------------------

def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile (no interpolation: a value that was measured)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f} ms"


def tally(counter: Counter[str] | dict[str, int]) -> str:
    """``200 x49, 503 x1``: most frequent first, then by code."""
    items = sorted(((str(k), v) for k, v in counter.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} x{v}" for k, v in items) if items else "none"


def most_common(counter: Counter[str]) -> str:
    """The value seen most, and how many others there were; NOT_REPORTED for none."""
    if not counter:
        return NOT_REPORTED
    (top, _), *others = counter.most_common()
    if not others:
        return top
    return f"{top} (and {len(others)} other{'s' if len(others) > 1 else ''}: " \
           f"{', '.join(k for k, _ in others)})"
