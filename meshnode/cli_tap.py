"""``meshnode tap`` and ``meshnode top``: requests as they pass, and the busiest paths live.

Like ``linkerd viz tap`` and ``top``. Both open a tap session at the node's telemetry
(meshnode.tap) and poll it until it ends by itself: at --duration, or for tap at --max
records. They work whatever the access log's sampling: a session makes the workers
record every request while it lasts, and nothing it sees is written to access.log
unless the access log chose it too. Whoever can reach the node's bus (its runtime dir,
mode 0700) can tap: request paths and identities are what the node's own user sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import nodectl, tap
from .cli_stat import duration_arg

POLL_S = 0.2                        # how often a session is asked for what it gathered
REFRESH_S = 1.0                     # how often top redraws
TOP_PATHS = 500                     # paths top keeps figures for (its memory bound)
CLEAR = "\x1b[H\x1b[2J"
TOP_COLUMNS = ("SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST",
               "SUCCESS_RATE")




def _count(text: str) -> int:
    n = int(text)
    if not 0 < n <= tap.MAX_RECORDS:
        raise argparse.ArgumentTypeError(f"must be 1..{tap.MAX_RECORDS}")
    return n


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="svc|deploy[/NAME]",
                   help="a Service (svc) or a Workload (deploy), as `svc web` or `svc/web`; "
                        "default every request through the node")
    p.add_argument("name", nargs="?", help="its name (unless given as KIND/NAME)")
    p.add_argument("-n", "--namespace", default=None, help="the resource's namespace")
    p.add_argument("--duration", type=duration_arg(tap.MAX_DURATION_S), default=30.0,
                   help="how long the session lasts, e.g. 10s, 2m (default 30s, at most 10m)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")


def add_parsers(sub: Any, add_runtime_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("tap", help="requests as they pass through the node, filtered "
                       "(like `linkerd viz tap`); works with access logging off")
    add_runtime_dir(p)
    _add_target(p)
    p.add_argument("--path", default="", help="only paths starting with this")
    p.add_argument("--method", default="", help="only this HTTP method")
    p.add_argument("--authority", default="", help="only this authority (Host)")
    p.add_argument("--principal", default="",
                   help="only requests with this SPIFFE ID on either side")
    p.add_argument("--max", type=_count, default=None,
                   help="end after this many requests (default: at --duration)")
    p = sub.add_parser("top", help="the busiest paths through the node, live (like "
                       "`linkerd viz top`)")
    add_runtime_dir(p)
    _add_target(p)
    p.add_argument("--once", action="store_true",
                   help="print the table once, when the session ends (no redraws)")
    p.add_argument("--limit", type=int, default=20, help="rows shown (default 20)")


def _target(args: argparse.Namespace) -> dict[str, Any]:
    kind, _, name = (args.target or "").partition("/")
    name = name or args.name or ""
    if kind and kind not in tap.KINDS:
        raise nodectl.NodeError(f"no such kind {kind!r}: one of {', '.join(tap.KINDS)}")
    if kind and not name:
        raise nodectl.NodeError(f"{kind}: give its name")
    return {"kind": kind, "name": name, "namespace": args.namespace}


def records(rd: Path, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A session's records as they come, until it ends (stopped if the caller stops)."""
    sid = nodectl.call(rd, "telemetry", "tap.start", body)["session"]
    ended = None
    try:
        while ended is None:
            started = time.monotonic()
            reply = nodectl.call(rd, "telemetry", "tap.poll", {"session": sid})
            yield from reply["records"]
            ended = reply["ended"]
            if reply["dropped"]:
                print(f"(tap: {reply['dropped']} records dropped: the client was behind)",
                      file=sys.stderr)
            time.sleep(max(0.0, POLL_S - (time.monotonic() - started)))
    finally:
        if ended is None:
            nodectl.call(rd, "telemetry", "tap.stop", {"session": sid})


def run_tap(args: argparse.Namespace) -> int:
    body = {**_target(args), "path_prefix": args.path, "method": args.method.upper(),
            "authority": args.authority, "principal": args.principal,
            "duration_s": args.duration, "max": args.max}
    try:
        for i, rec in enumerate(records(args.runtime_dir.resolve(), body), 1):
            print(json.dumps(rec) if args.output == "json" else tap_lines(i, rec), flush=True)
            if args.max is not None and i >= args.max:
                break
    except KeyboardInterrupt:
        pass
    return 0


def _sides(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(direction, source principal, destination principal) of a record."""
    if rec.get("reporter") == "destination":
        return "in", rec.get("downstream_peer_uri_san") or "-", rec.get("downstream_local_uri_san") or "-"
    return "out", rec.get("upstream_local_uri_san") or "-", rec.get("upstream_peer_uri_san") or "-"


def shown(text: str) -> str:
    """A caller's text as a terminal may print it: characters that are not printable
    (a newline, C0/C1 controls such as U+009B, the 8-bit CSI) as Python escapes, so a
    Host or path cannot move the cursor, recolour or forge a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def tap_lines(i: int, rec: dict[str, Any]) -> str:
    """linkerd's req and rsp lines for one record (an opaque pair's: one tcp line)."""
    rec = {key: shown(value) if isinstance(value, str) else value for key, value in rec.items()}
    direction, src, dst = _sides(rec)
    policy = rec.get("authorization_result") or "-"
    if rec.get("authorization_policy"):
        policy += f":{rec['authorization_policy']}"
    where = (f"id={i} proxy={direction} src={src} dst={tap.service_of(rec)} dst_principal={dst} "
             f"tls={str(rec.get('connection_security_policy') != 'none').lower()}")
    done = (f"latency={rec.get('duration')}ms bytes_in={rec.get('bytes_received')} "
            f"bytes_out={rec.get('bytes_sent')} route={rec.get('route_name') or '-'} "
            f"policy={policy} flags={rec.get('response_flags')}")
    if not rec.get("method"):
        return f"tcp {where} {done}"
    return (f"req {where} :method={rec['method']} :authority={rec.get('authority') or '-'} "
            f":path={rec.get('path')}\nrsp id={i} proxy={direction} :status={rec.get('response_code')} "
            f"{done}")


# --- top ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    count: int = 0
    ok: int = 0
    best_ms: int | None = None
    worst_ms: int | None = None
    last_ms: int | None = None

    def add(self, rec: dict[str, Any]) -> None:
        ms = int(rec.get("duration") or 0)
        code = int(rec.get("response_code") or 0)
        self.count += 1
        self.ok += 0 < code < 500       # linkerd's success: answered, not a 5xx
        self.best_ms = ms if self.best_ms is None else min(self.best_ms, ms)
        self.worst_ms = ms if self.worst_ms is None else max(self.worst_ms, ms)
        self.last_ms = ms


@dataclass
class Top:
    """Figures per (source, destination, method, path) for at most `capacity` paths: a
    new path past it takes the place of the least seen. A request this node saw at
    both ends (its caller and its server are local) counts once, by its server's
    record: a path's destination-side tally is shown when it has one."""

    capacity: int = TOP_PATHS
    paths: dict[tuple[str, str, str, str], dict[str, Tally]] = field(default_factory=dict)

    def add(self, rec: dict[str, Any]) -> None:
        if not rec.get("method"):
            return                      # an opaque pair: no path
        key = (_short(tap.source_of(rec)), tap.service_of(rec), str(rec["method"]),
               str(rec.get("path") or ""))
        if key not in self.paths and len(self.paths) >= self.capacity:
            del self.paths[min(self.paths, key=lambda k: self._shown(k).count)]
        side = str(rec.get("reporter") or "source")
        self.paths.setdefault(key, {}).setdefault(side, Tally()).add(rec)

    def _shown(self, key: tuple[str, str, str, str]) -> Tally:
        sides = self.paths[key]
        return sides.get("destination") or sides["source"]

    def rows(self, limit: int) -> list[dict[str, Any]]:
        """The busiest first (then by path, for a stable order)."""
        ranked = sorted(self.paths, key=lambda k: (-self._shown(k).count, k))[:limit]
        return [{"source": k[0], "destination": k[1], "method": k[2], "path": k[3],
                 "count": (t := self._shown(k)).count, "best_ms": t.best_ms,
                 "worst_ms": t.worst_ms, "last_ms": t.last_ms,
                 "success_rate": t.ok / t.count} for k in ranked]


def _short(principal: str) -> str:
    """spiffe://TD/ns/NS/sa/SA as NS/SA (what a terminal column has room for)."""
    parts = principal.removeprefix("spiffe://").split("/")
    return f"{parts[2]}/{parts[4]}" if len(parts) == 5 and parts[1] == "ns" else principal


def top_table(rows: list[dict[str, Any]]) -> str:
    lines = [TOP_COLUMNS] + [
        (shown(r["source"]), shown(r["destination"]), shown(r["method"]), shown(r["path"]),
         str(r["count"]),
         f"{r['best_ms']}ms", f"{r['worst_ms']}ms", f"{r['last_ms']}ms",
         f"{r['success_rate'] * 100:.2f}%") for r in rows]
    widths = [max(len(line[c]) for line in lines) for c in range(len(TOP_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in lines)


def run_top(args: argparse.Namespace) -> int:
    figures = Top()
    body = {**_target(args), "duration_s": args.duration}
    shown = time.monotonic()
    try:
        for rec in records(args.runtime_dir.resolve(), body):
            figures.add(rec)
            if not args.once and time.monotonic() - shown >= REFRESH_S:
                shown = time.monotonic()
                print(CLEAR + top_table(figures.rows(args.limit)), flush=True)
    except KeyboardInterrupt:
        pass
    rows = figures.rows(args.limit)
    print(json.dumps(rows, indent=2) if args.output == "json" else
          ("" if args.once else CLEAR) + top_table(rows))
    return 0
