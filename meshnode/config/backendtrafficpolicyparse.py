"""Reading and writing XBackendTrafficPolicy documents (the model: backendtrafficpolicy.py).

Checks the CRD's own rules (gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml):
targetRefs 1 to 16 (group, kind, name each required; no two alike), budget.percent
0..100, budget.interval a GEP-2257 duration from 1s to 1h, minRetryRate.count
1..1000000 and its interval above 0s and at most 1h; and names what meshnode does not
carry (sessionPersistence; targets other than a Service).
"""
from __future__ import annotations

from typing import Any

from .backendtrafficpolicy import (API_VERSION, IMPLEMENTED, MAX_BUDGET_INTERVAL_S, MAX_MIN_COUNT,
                                   MAX_MIN_INTERVAL_S, MAX_TARGET_REFS, MIN_BUDGET_INTERVAL_S, NOT_IMPLEMENTED,
                                   BackendTrafficPolicySpec, RetryConstraint, TargetRef)
from .durations import parse_duration
from .errors import Problem
from .model import XBackendTrafficPolicy
from .routeparse import (_gateway_duration, _group, _items, _kind, _object_name, _unrepeated, metadata_dict,
                         parse_policy)
from .validate import _Doc, _fields, _int, _known_fields, join


def _known(d: _Doc, value: object, path: str, level: str,
           required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    return _known_fields(d, value, path, IMPLEMENTED[level], NOT_IMPLEMENTED[level], required)


def _target_ref(d: _Doc, value: object, path: str) -> TargetRef | None:
    fields = _fields(d, value, path, ("group", "kind", "name"), required=("group", "kind", "name"))
    if fields is None or len(fields) < 3:
        return None
    group = _group(d, fields["group"], join(path, "group"))
    kind = _kind(d, fields["kind"], join(path, "kind"))
    name = _object_name(d, fields["name"], join(path, "name"))
    if group is None or kind is None or name is None:
        return None
    if (group, kind) != ("", "Service"):
        d.fail(path, f"a target of group {group!r} kind {kind!r} is not implemented yet: "
                     "meshnode's policies target Services (group \"\", kind Service)")
        return None
    return TargetRef(group, kind, name)


def _interval(d: _Doc, value: object, path: str, low_s: float, high_s: float, what: str) -> str | None:
    text = _gateway_duration(d, value, path)
    if text is None:
        return None
    seconds = parse_duration(text)
    if not (low_s <= seconds <= high_s) or seconds == 0:
        d.fail(path, f"{text!r}: {what}")
        return None
    return text


def _retry_constraint(d: _Doc, value: object, path: str) -> RetryConstraint | None:
    fields = _known(d, value, path, "retryConstraint")
    if fields is None:
        return None
    ok = True
    percent = interval = min_count = min_interval = None
    if "budget" in fields:
        where = join(path, "budget")
        budget = _known(d, fields["budget"], where, "budget")
        ok = budget is not None
        if budget is not None and "percent" in budget:
            percent = _int(d, budget["percent"], join(where, "percent"), 0, 100)
            ok = ok and percent is not None
        if budget is not None and "interval" in budget:
            interval = _interval(d, budget["interval"], join(where, "interval"), MIN_BUDGET_INTERVAL_S,
                                 MAX_BUDGET_INTERVAL_S, "interval cannot be greater than one hour "
                                                        "or less than one second")
            ok = ok and interval is not None
    if "minRetryRate" in fields:
        where = join(path, "minRetryRate")
        rate = _known(d, fields["minRetryRate"], where, "minRetryRate")
        ok = ok and rate is not None
        if rate is not None and "count" in rate:
            min_count = _int(d, rate["count"], join(where, "count"), 1, MAX_MIN_COUNT)
            ok = ok and min_count is not None
        if rate is not None and "interval" in rate:
            min_interval = _interval(d, rate["interval"], join(where, "interval"), 0.0,
                                     MAX_MIN_INTERVAL_S, "interval cannot be 0s or greater than one hour")
            ok = ok and min_interval is not None
    if not ok:
        return None
    return RetryConstraint("budget" in fields, percent, interval, "minRetryRate" in fields, min_count,
                           min_interval)


def _spec(d: _Doc, value: object) -> BackendTrafficPolicySpec | None:
    spec = _known(d, value, "spec", "spec", required=("targetRefs",))
    if spec is None or "targetRefs" not in spec:
        return None
    targets = _items(d, spec["targetRefs"], "spec.targetRefs", MAX_TARGET_REFS, _target_ref, min_items=1)
    if targets is not None and not _unrepeated(
            d, targets, "spec.targetRefs", "name", lambda t: f"{t.group}/{t.kind}/{t.name}",
            lambda key: f"a second targetRef to {key.split('/')[1]} {key.split('/')[2]!r}"):
        targets = None
    constraint = _retry_constraint(d, spec["retryConstraint"], "spec.retryConstraint") \
        if "retryConstraint" in spec else None
    if targets is None or ("retryConstraint" in spec and constraint is None) or d.problems:
        return None
    return BackendTrafficPolicySpec(targets, constraint)


def parse_backend_traffic_policy(doc: dict[str, Any], file: str, index: int
                                 ) -> tuple[XBackendTrafficPolicy | None, list[Problem]]:
    """An XBackendTrafficPolicy document (kind already known), or what is wrong with it."""
    return parse_policy(doc, file, index, XBackendTrafficPolicy, API_VERSION, _spec)


def _constraint_dict(c: RetryConstraint) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.budget_given:
        out["budget"] = {k: v for k, v in (("percent", c.percent), ("interval", c.interval))
                         if v is not None}
    if c.min_rate_given:
        out["minRetryRate"] = {k: v for k, v in (("count", c.min_count), ("interval", c.min_interval))
                               if v is not None}
    return out


def policy_to_dict(policy: XBackendTrafficPolicy) -> dict[str, Any]:
    """The policy as written (fields left out stay out); parsed back equal."""
    metadata = metadata_dict(policy.metadata, policy.created)
    spec: dict[str, Any] = {"targetRefs": [{"group": t.group, "kind": t.kind, "name": t.name}
                                           for t in policy.spec.target_refs]}
    if policy.spec.retry_constraint is not None:
        spec["retryConstraint"] = _constraint_dict(policy.spec.retry_constraint)
    return {"apiVersion": API_VERSION, "kind": policy.KIND, "metadata": metadata, "spec": spec}
