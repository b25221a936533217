"""What every node process shares: its arguments, bus sockets, health beat and shutdown.

Each process main builds one ``Process``, adds its sockets and timers to its loop, and
calls ``run()``. The loop owns every ZeroMQ socket of the process (one thread), the
health beat tells telemetry the process is alive once a second, and SIGTERM/SIGINT end
the loop so the process closes its sockets and exits 0, which supervisord expects.

A process that must finish work before it goes (a proxy worker's graceful drain) hands
a ``Drain`` to ``drain_on_stop()``: the first SIGTERM or SIGINT then begins it, and the
loop runs on (bus sockets, timers, health beats saying ``draining``) until the drain is
done. A second SIGTERM changes nothing (``meshnode down`` run twice must not cut a
drain); a SIGINT during a drain cuts what is left at once, as its deadline would.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
from typing import Any, Callable, Protocol

import zmq

from bus.counters import Counters
from bus.endpoints import Endpoints
from bus.loop import Loop
from bus.pubsub import Publisher, Subscriber
from bus.request import Client, Server

from . import logs
from .ports import DEFAULT_BASE, Ports

HEALTH_INTERVAL_S = 1.0
# How often a drain is looked at: the sooner a drained worker closes its listeners, the
# fewer new connections wait in its accept queue.
DRAIN_POLL_S = 0.02
# Time given to the last health beat (state "stopped", the final counters) to leave.
LAST_BEAT_LINGER_MS = 200


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every process takes; supervisord.conf passes them all."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--runtime-dir", default=os.environ.get("MESHNODE_RUNTIME_DIR"),
                        required="MESHNODE_RUNTIME_DIR" not in os.environ,
                        help="the node's runtime dir (bus sockets, state, logs); "
                             "default $MESHNODE_RUNTIME_DIR")
    parser.add_argument("--node", default=socket.gethostname(),
                        help="this node's name in the mesh (default: the host name)")
    parser.add_argument("--port-base", type=int, default=DEFAULT_BASE,
                        help="first port of the node's block (DESIGN §8), default 15000")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser


class Drain(Protocol):
    """Work a process finishes between its stop signal and its exit."""

    def begin(self) -> None:
        """Start draining (called once, from the loop's thread)."""

    def step(self) -> bool:
        """Move the drain on; True once it is over and the process may exit."""

    def cut(self) -> None:
        """End the drain now: whatever is left is cut (step() then soon says True)."""


class Process:
    """One node process on the bus: context, loop, publisher, health, signals."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        logs.setup(name, args.log_level)
        self.name = name
        self.node: str = args.node
        self.runtime_dir: str = os.path.abspath(args.runtime_dir)
        self.ports = Ports(args.port_base)
        self.log = logging.getLogger(f"meshnode.{name.split('-')[0]}")
        self.ctx = zmq.Context()
        self.endpoints = Endpoints.for_runtime_dir(self.runtime_dir)
        self.counters = Counters()
        self.loop = Loop()
        self.publisher = Publisher(self.ctx, self.endpoints, node=self.node, src=name,
                                   counters=self.counters)
        self.state = "ok"
        self._health_fields: list[Callable[[], dict[str, Any]]] = []
        self._drain: Drain | None = None
        # Set by the signal handler, read by the loop (a handler must not log or touch
        # a socket: it may run in the middle of either).
        self._signals: list[int] = []
        self.loop.every(HEALTH_INTERVAL_S, self.publish_health)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def subscriber(self, topics: list[str], on_event: Callable[[str, Any], None]) -> Subscriber:
        """A subscriber whose valid events are handed to ``on_event(topic, envelope)``."""
        sub = Subscriber(self.ctx, self.endpoints, topics, counters=self.counters)

        def drain() -> None:
            for topic, env in sub.drain():
                on_event(topic, env)

        self.loop.add_reader(sub.socket, drain)
        return sub

    def client(self) -> Client:
        return Client(self.ctx, self.endpoints, node=self.node, src=self.name,
                      counters=self.counters)

    def server(self, service: str) -> Server:
        """A request server for ``service``, answered from the loop."""
        srv = Server(self.ctx, self.endpoints, service, node=self.node, src=self.name,
                     counters=self.counters)
        self.loop.add_reader(srv.socket, srv.handle_ready)
        self.loop.every(0.5, srv.heartbeat)
        return srv

    def drain_on_stop(self, drain: Drain) -> None:
        """Drain with ``drain`` on the first SIGTERM or SIGINT, before exiting."""
        self._drain = drain

    def add_health(self, fields: Callable[[], dict[str, Any]]) -> None:
        """Extra fields this process reports in every health beat."""
        self._health_fields.append(fields)

    def publish_health(self) -> None:
        body: dict[str, Any] = {"process": self.name, "pid": os.getpid(), "state": self.state,
                                "bus": self.counters.snapshot()}
        for fields in self._health_fields:
            body.update(fields())
        self.publisher.publish(f"health.{self.name}", "health", body)

    def run(self) -> int:
        logs.event(self.log, "process.started", pid=os.getpid(), node=self.node,
                   runtime_dir=self.runtime_dir)
        self.publish_health()
        linger_ms = 0
        try:
            self.loop.run()
            if self._drain is not None and self._signals:
                self._run_drain(self._drain)
                linger_ms = LAST_BEAT_LINGER_MS
        finally:
            self.ctx.destroy(linger=linger_ms)
        logs.event(self.log, "process.stopped")
        return 0

    def _run_drain(self, drain: Drain) -> None:
        first = signal.Signals(self._signals[0]).name
        logs.event(self.log, "process.draining", signal=first)
        self.state = "draining"
        self.publish_health()
        drain.begin()
        seen, cut = 1, False
        while not drain.step():
            for signum in self._signals[seen:]:
                name = signal.Signals(signum).name
                if signum == signal.SIGINT and not cut:
                    logs.event(self.log, "process.drain_cut", logging.WARNING, signal=name)
                    drain.cut()
                    cut = True
                else:
                    logs.event(self.log, "process.signal_ignored", signal=name,
                               reason="draining")
            seen = len(self._signals)
            self.loop.run_once(DRAIN_POLL_S)
        # The last beat: the final counters, and a state that is not "ok".
        self.state = "stopped"
        self.publish_health()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)
        self.loop.stop()
