"""Reading and writing RateLimitPolicy documents (the model: ratelimit.py).

Checks: targetRefs 1 to 16 (group, kind, name required, sectionName only on an
HTTPRoute; no two alike), Services and HTTPRoutes only; direction Inbound or Outbound,
Outbound for an HTTPRoute target; limits 1 to 16, names unique, each with exactly one of
tokenBucket (maxTokens 1..1e9 required, tokensPerFill 1..1e9, fillInterval a GEP-2257
duration of 1ms..24h required; an emptied bucket full again within 100 years) and rate
(requests 1..1e9, unit Second, Minute, Hour or Day); `key` Service or Route only over targets of that kind; maxKeys 1..65536 only with
a per-caller key. Every field not listed is refused by name.
"""
from __future__ import annotations

from typing import Any

from .durations import parse_duration
from .errors import Problem
from .model import RateLimitPolicy
from .ratelimit import (API_VERSION, DIRECTIONS, KEYS, KIND, MAX_FILL_S, MAX_KEYS, MAX_LIMITS,
                        MAX_REFILL_S, MAX_TARGET_REFS, MAX_TOKENS, MIN_FILL_S, ROUTE_GROUP, TARGET_KINDS,
                        UNITS, Limit, RateLimitPolicySpec, RateTargetRef, fill_tokens)
from .routeparse import (_gateway_duration, _group, _items, _kind, _object_name, _subdomain, _unrepeated,
                         metadata_dict, parse_policy)
from .validate import _Doc, _fields, _int, _opt, _string, join


def _one_of(d: _Doc, value: object, path: str, choices: tuple[str, ...] | list[str]) -> str | None:
    text = _string(d, value, path)
    if text is not None and text not in choices:
        d.fail(path, f"must be one of {', '.join(choices)}, got {text!r}")
        return None
    return text


def _target_ref(d: _Doc, value: object, path: str) -> RateTargetRef | None:
    fields = _fields(d, value, path, ("group", "kind", "name", "sectionName"),
                     required=("group", "kind", "name"))
    if fields is None or not {"group", "kind", "name"} <= fields.keys():
        return None
    group = _group(d, fields["group"], join(path, "group"))
    kind = _kind(d, fields["kind"], join(path, "kind"))
    name = _object_name(d, fields["name"], join(path, "name"))
    section = _opt(d, fields, path, "sectionName", _subdomain, None)
    if group is None or kind is None or name is None or ("sectionName" in fields and section is None):
        return None
    if (group, kind) not in TARGET_KINDS:
        d.fail(path, f"a target of group {group!r} kind {kind!r} is not implemented: a "
                     f"RateLimitPolicy targets Services (group \"\") and HTTPRoutes "
                     f"(group {ROUTE_GROUP!r})")
        return None
    if section is not None and kind != "HTTPRoute":
        d.fail(join(path, "sectionName"), "names an HTTPRoute's rule: a Service target takes "
                                          "no sectionName (a limit covers all its ports)")
        return None
    return RateTargetRef(group, kind, name, section)


def _token_bucket(d: _Doc, value: object, path: str) -> tuple[int, int | None, str] | None:
    fields = _fields(d, value, path, ("maxTokens", "tokensPerFill", "fillInterval"),
                     required=("maxTokens", "fillInterval"))
    if fields is None or not {"maxTokens", "fillInterval"} <= fields.keys():
        return None
    max_tokens = _int(d, fields["maxTokens"], join(path, "maxTokens"), 1, MAX_TOKENS)
    per_fill = _opt(d, fields, path, "tokensPerFill", lambda d, v, p: _int(d, v, p, 1, MAX_TOKENS), None)
    interval = _gateway_duration(d, fields["fillInterval"], join(path, "fillInterval"))
    if interval is not None and not MIN_FILL_S <= parse_duration(interval) <= MAX_FILL_S:
        d.fail(join(path, "fillInterval"), f"{interval!r}: must be from 1ms to 24h")
        return None
    if max_tokens is None or interval is None or ("tokensPerFill" in fields and per_fill is None):
        return None
    refill_s = max_tokens * parse_duration(interval) / fill_tokens(max_tokens, per_fill)
    if refill_s > MAX_REFILL_S:
        d.fail(join(path, "maxTokens"), f"{max_tokens} tokens take {refill_s / 86400 / 365:.0f} "
                                        f"years to fill again at this rate: at most 100")
        return None
    return max_tokens, per_fill, interval


def _rate(d: _Doc, value: object, path: str) -> tuple[int, str] | None:
    fields = _fields(d, value, path, ("requests", "unit"), required=("requests", "unit"))
    if fields is None or not {"requests", "unit"} <= fields.keys():
        return None
    requests = _int(d, fields["requests"], join(path, "requests"), 1, MAX_TOKENS)
    unit = _one_of(d, fields["unit"], join(path, "unit"), list(UNITS))
    if requests is None or unit is None:
        return None
    return requests, unit


def _limit(d: _Doc, value: object, path: str) -> Limit | None:
    fields = _fields(d, value, path, ("name", "key", "maxKeys", "tokenBucket", "rate"))
    if fields is None:
        return None
    name = _opt(d, fields, path, "name", _subdomain, None)
    key = _opt(d, fields, path, "key", lambda d, v, p: _one_of(d, v, p, list(KEYS)), None)
    max_keys = _opt(d, fields, path, "maxKeys", lambda d, v, p: _int(d, v, p, 1, MAX_KEYS), None)
    bucket = _opt(d, fields, path, "tokenBucket", _token_bucket, None)
    rate = _opt(d, fields, path, "rate", _rate, None)
    if ("tokenBucket" in fields) == ("rate" in fields):
        d.fail(path, "takes exactly one of tokenBucket (Envoy's maxTokens, tokensPerFill, "
                     "fillInterval) and rate (requests per unit)")
        return None
    if "maxKeys" in fields and key not in ("SourcePrincipal", "SourceIP"):
        d.fail(join(path, "maxKeys"), "bounds the callers told apart: only with key "
                                      "SourcePrincipal or SourceIP")
        return None
    if any(f in fields and v is None for f, v in (("name", name), ("key", key), ("maxKeys", max_keys),
                                                 ("tokenBucket", bucket), ("rate", rate))):
        return None
    return Limit(name, key, max_keys, bucket, rate)


def _check_keys(d: _Doc, spec: RateLimitPolicySpec) -> None:
    """`key` Service or Route says the target's kind: every target must be one."""
    kinds = {t.kind for t in spec.target_refs}
    for i, limit in enumerate(spec.limits):
        wanted = {"Service": "Service", "Route": "HTTPRoute"}.get(limit.key or "")
        if wanted is not None and kinds != {wanted}:
            d.fail(f"spec.limits[{i}].key", f"{limit.key}: a bucket per {wanted} target, but the "
                                            f"policy targets {', '.join(sorted(kinds))}")


def _spec(d: _Doc, value: object) -> RateLimitPolicySpec | None:
    spec = _fields(d, value, "spec", ("targetRefs", "direction", "limits"),
                   required=("targetRefs", "limits"))
    if spec is None or not {"targetRefs", "limits"} <= spec.keys():
        return None
    targets = _items(d, spec["targetRefs"], "spec.targetRefs", MAX_TARGET_REFS, _target_ref, min_items=1)
    if targets is not None and not _unrepeated(
            d, targets, "spec.targetRefs", "name",
            lambda t: f"{t.kind} {t.name!r}" + (f" sectionName {t.section_name!r}" if t.section_name else ""),
            lambda key: f"a second targetRef to {key}"):
        targets = None
    direction = _opt(d, spec, "spec", "direction", lambda d, v, p: _one_of(d, v, p, DIRECTIONS), None)
    limits = _items(d, spec["limits"], "spec.limits", MAX_LIMITS, _limit, min_items=1)
    if limits is not None and not _unrepeated(d, limits, "spec.limits", "name", lambda lim: lim.name,
                                              lambda name: f"a second limit named {name!r}"):
        limits = None
    if targets is None or limits is None or ("direction" in spec and direction is None):
        return None
    out = RateLimitPolicySpec(targets, limits, direction)
    if any(t.is_route for t in targets) and not out.outbound:
        d.fail("spec.direction", f"{direction or 'Inbound (the default)'}: an HTTPRoute's rules are "
                                 "matched at the caller's node, so its limits are enforced there: "
                                 "set direction: Outbound")
    _check_keys(d, out)
    return None if d.problems else out


def parse_rate_limit_policy(doc: dict[str, Any], file: str, index: int
                            ) -> tuple[RateLimitPolicy | None, list[Problem]]:
    """A RateLimitPolicy document (kind already known), or what is wrong with it."""
    return parse_policy(doc, file, index, RateLimitPolicy, API_VERSION, _spec)


def _limit_dict(limit: Limit) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if limit.name is not None:
        out["name"] = limit.name
    if limit.key is not None:
        out["key"] = limit.key
    if limit.max_keys is not None:
        out["maxKeys"] = limit.max_keys
    if limit.token_bucket is not None:
        max_tokens, per_fill, interval = limit.token_bucket
        out["tokenBucket"] = {"maxTokens": max_tokens,
                              **({"tokensPerFill": per_fill} if per_fill is not None else {}),
                              "fillInterval": interval}
    if limit.rate is not None:
        out["rate"] = {"requests": limit.rate[0], "unit": limit.rate[1]}
    return out


def policy_to_dict(policy: RateLimitPolicy) -> dict[str, Any]:
    """The policy as written (fields left out stay out); parsed back equal."""
    spec: dict[str, Any] = {
        "targetRefs": [{"group": t.group, "kind": t.kind, "name": t.name,
                        **({"sectionName": t.section_name} if t.section_name else {})}
                       for t in policy.spec.target_refs]}
    if policy.spec.direction is not None:
        spec["direction"] = policy.spec.direction
    spec["limits"] = [_limit_dict(limit) for limit in policy.spec.limits]
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": metadata_dict(policy.metadata, policy.created), "spec": spec}
