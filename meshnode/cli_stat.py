"""``meshnode stat``: golden metrics per workload, service or edge, like ``linkerd viz stat``.

The figures are the node's own (telemetry's ring of its workers' figures, answered over
the bus: meshnode.golden), so the command needs nothing but a running node.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from . import golden, nodectl
from .config import parse_duration

COLUMNS = ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
           "TCP_CONN")
EDGE_COLUMNS = ("FROM", "TO", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
                "SEEN_BY")


def duration_arg(most_s: float) -> Callable[[str], float]:
    """An argparse type: a duration ("10s", "1m") as seconds, over 0 and at most `most_s`."""
    def seconds_of(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not 0 < seconds <= most_s:
            raise argparse.ArgumentTypeError(f"must be over 0 and at most {most_s:g}s")
        return seconds
    return seconds_of


_window = duration_arg(golden.HISTORY_S)       # --window: within what telemetry keeps


def add_parser(sub: Any, add_runtime_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("stat", help="success rate, requests per second, latency percentiles "
                       "and TCP connections per workload, service or edge, from the node's "
                       "own figures (like `linkerd viz stat`)")
    add_runtime_dir(p)
    p.add_argument("kind", nargs="?", default="deploy", choices=sorted(golden.KIND_NAMES),
                   metavar="KIND", help="deploy (a Workload), svc, or edge (workload -> "
                   "service); default deploy")
    p.add_argument("name", nargs="?", help="only this one (an edge: by its service)")
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument("--window", type=_window, default=golden.DEFAULT_WINDOW_S,
                   help="how far back the figures reach, e.g. 10s, 1m (default 1m; shorter "
                        "while the node is young, and the output says so)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    reply = nodectl.call(args.runtime_dir.resolve(), "telemetry", "stat",
                         {"kind": args.kind, "name": args.name, "namespace": args.namespace,
                          "window_s": args.window})
    if args.output == "json":
        print(json.dumps(reply, indent=2))
    elif not reply["rows"]:
        print(f"no {reply['kind']}s found")
    else:
        print(table(reply["kind"], reply["rows"], all_namespaces=args.namespace is None))
        if reply["window_s"] < args.window - 1:
            print(f"(the node has figures for the last {reply['window_s']:.0f}s only)")
    return 0


def table(kind: str, rows: list[dict[str, Any]], all_namespaces: bool) -> str:
    """Linkerd's columns; NAMESPACE first when the rows span every namespace."""
    if kind == "edge":
        head = EDGE_COLUMNS
        body = [(f"{r['source_namespace']}/{r['source']}", f"{r['namespace']}/{r['name']}",
                 *_golden(r), r["reporter"] or "-") for r in rows]
    else:
        head = (("NAMESPACE",) if all_namespaces else ()) + COLUMNS
        body = [((r["namespace"],) if all_namespaces else ()) + (r["name"], r["meshed"],
                 *_golden(r), "-" if r["tcp_connections"] is None else str(r["tcp_connections"]))
                for r in rows]
    lines = [head, *body]
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in lines)


def _golden(row: dict[str, Any]) -> tuple[str, ...]:
    rate = row["success_rate"]
    return ("-" if rate is None else f"{rate * 100:.2f}%",
            "-" if row["rps"] is None or not row["requests"] else f"{row['rps']:.1f}rps",
            *(_ms(row[f"latency_ms_p{q}"]) for q in (50, 95, 99)))


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}ms" if value < 10 else f"{value:.0f}ms"
