"""The bus process: runs the node's ZeroMQ broker (``python -m meshnode.broker``).

supervisord starts it first; every other process connects to its ipc sockets. It
reports its own health and frame counters on the bus like any other process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import zmq

from bus.broker import Broker
from bus.endpoints import Endpoints
from bus.envelope import Envelope
from bus.errors import RuntimeDirError

from . import logs
from .process import HEALTH_INTERVAL_S, base_parser

NAME = "bus"
log = logging.getLogger("meshnode.bus")


def main(argv: list[str] | None = None) -> int:
    args = base_parser("meshnode.broker", "Run the node's ZeroMQ bus broker.").parse_args(argv)
    logs.setup(NAME, args.log_level)
    endpoints = Endpoints.for_runtime_dir(args.runtime_dir)
    ctx = zmq.Context()
    try:
        broker = Broker(ctx, endpoints)
    except (RuntimeDirError, zmq.ZMQError) as exc:
        logs.event(log, "bus.failed", logging.ERROR, error=str(exc))
        ctx.destroy(linger=0)
        return 78
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logs.event(log, "bus.started", pid=os.getpid(), dir=str(endpoints.dir))
    next_health = 0.0
    try:
        while not stopping:
            try:
                broker.poll(200)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EINTR:
                    raise
            now = time.monotonic()
            if now >= next_health:
                next_health = now + HEALTH_INTERVAL_S
                broker.publish(f"health.{NAME}", Envelope(
                    kind="health", node=args.node, src=NAME,
                    body={"process": NAME, "pid": os.getpid(), "state": "ok",
                          "bus": broker.counters.snapshot(), "services": broker.services()}))
    finally:
        broker.close()
        ctx.destroy(linger=0)
    logs.event(log, "bus.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
