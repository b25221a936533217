"""The admin port's dashboard: one self-contained page and the JSON document it polls.

The page (dashboard.html) loads nothing from anywhere else (inline style and script,
no CDN: the admin port is often reached through an SSH tunnel from a machine without
the internet, and a node must not make its operator's browser call out). Every name
on it comes from users' YAML, so the script writes them as text nodes only, never as
HTML; the page's Content-Security-Policy allows no script but its own (by hash), so a
name that slipped through as markup still could not run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from typing import Any, Callable, Mapping

from bus.errors import BusError, RemoteError
from bus.request import Client

from . import golden

ROLLOUT_KIND = "Rollout"
# The admin server answers from its own threads: control is asked with a short
# deadline so a control that is away slows one poll of the page, not the node.
CONTROL_TIMEOUT_S = 1.0


def _page() -> bytes:
    """dashboard.html with its Content-Security-Policy naming its one script's hash."""
    text = resources.files(__package__).joinpath("dashboard.html").read_text()
    script = re.search(r"<script>(.*?)</script>", text, re.S)
    if script is None:
        raise RuntimeError("dashboard.html has no inline script")
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    return text.replace("{{script_hash}}", f"sha256-{digest}").encode()


PAGE = _page()


def view(history: golden.History, snapshot: Mapping[str, Any] | None,
         rollouts: dict[str, Any]) -> dict[str, Any]:
    """/dashboard.json: the node, its services (golden figures, routes, endpoints), the
    edges between workloads and services, its workloads, and the rollouts."""
    window = history.window(golden.DEFAULT_WINDOW_S)
    snapshot = snapshot or {}
    services = {(s["namespace"], s["name"]): s for s in snapshot.get("services") or ()}
    routes = _routes(snapshot.get("http_routes") or ())
    return {"node": snapshot.get("node"), "version": snapshot.get("version"),
            "window_s": round(window.seconds, 3),
            "services": [{**row, "ports": _ports(services.get(key)),
                          "routes": routes.get(f"{row['namespace']}/{row['name']}", []),
                          "endpoints": _endpoints(services.get(key))}
                         for row in golden.rows(window, snapshot, "service")
                         for key in [(row["namespace"], row["name"])]],
            "edges": golden.rows(window, snapshot, "edge"),
            "workloads": golden.rows(window, snapshot, "workload"),
            "rollouts": rollouts}


def _ports(service: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"name": p["name"], "port": p["port"], "protocol": p.get("protocol")}
            for p in (service or {}).get("ports") or ()]


def _endpoints(service: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"workload": e["workload"], "address": e["address"], "node": e.get("node"),
             "ports": e.get("ports") or {}, "labels": e.get("labels") or {},
             "weight": e.get("weight")}
            for e in (service or {}).get("endpoints") or ()]


def _routes(route_sets: Any) -> dict[str, list[dict[str, Any]]]:
    """Each service's HTTPRoute rules (config.routes' route sets), as the page lists
    them: the port and callers they govern, each rule's matches and weighted backends."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rs in route_sets:
        for index, rule in enumerate(rs.get("rules") or ()):
            out.setdefault(str(rs["service"]), []).append({
                "route": rule.get("route"), "rule": rule.get("name") or rule.get("index", index),
                "port": rs.get("port"), "consumer_namespace": rs.get("consumer_namespace"),
                "matches": [_match(e) for e in rs.get("entries") or () if e.get("rule") == index],
                "backends": [{"service": b.get("service"), "port": b.get("port"),
                              "weight": b.get("weight")} for b in rule.get("backends") or ()],
                "redirect": bool(rule.get("redirect"))})
    return out


def _match(entry: Mapping[str, Any]) -> str:
    """One match in a line: "PathPrefix /api GET +2 headers"."""
    path = entry.get("path") or {}
    words = [f"{path.get('type', '')} {path.get('value', '')}".strip()]
    if entry.get("method"):
        words.append(str(entry["method"]))
    for what in ("headers", "query"):
        if entry.get(what):
            words.append(f"+{len(entry[what])} {what}")
    return " ".join(w for w in words if w)


def rollouts(client: Callable[[], Client]) -> dict[str, Any]:
    """The Rollout resources as control holds them ({"items": [...]}), or none and the
    reason ({"items": [], "reason": ...}): control knows no such kind, or is away."""
    bus = client()
    try:
        reply = bus.call("control", "get", {"kind": ROLLOUT_KIND}, timeout_s=CONTROL_TIMEOUT_S)
    except RemoteError as exc:
        return {"items": [], "reason": f"control keeps no {ROLLOUT_KIND} resources: {exc}"}
    except BusError as exc:
        return {"items": [], "reason": f"control did not answer: {exc}"}
    finally:
        bus.close()
    items = [_rollout(r) for r in reply.get("items") or () if isinstance(r, dict)]
    return {"items": items, **({} if items else {"reason": "no Rollout resources applied"})}


def _rollout(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows of a Rollout (Flagger Canary's status fields)."""
    meta, status = resource.get("metadata") or {}, resource.get("status") or {}
    conditions = status.get("conditions") or []
    last = conditions[-1] if conditions and isinstance(conditions[-1], dict) else {}
    return {"namespace": meta.get("namespace"), "name": meta.get("name"),
            "phase": status.get("phase"), "weight": status.get("canaryWeight"),
            "failed_checks": status.get("failedChecks"), "message": last.get("message")}
