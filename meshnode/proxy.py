"""A proxy worker process (``python -m meshnode.proxy --worker N``).

The worker's agent installs the compiled config snapshot that control distributes on
``config.snapshot`` (Clone pattern: it survives control restarts and missed updates),
ACKs each version it carries out and NACKs, with the reason, one it cannot, and reports
the version it runs in its health beat. It also keeps the worker's TLS credentials
(``identity.creds``): one certificate per identity the snapshot places on this node,
renewed from the ca, and the trust bundle the ca publishes on ``cert.bundle``. A new
snapshot replaces the old one whole; a bad one is refused and the last good one stays.
A snapshot whose listener cannot bind (its port is taken) is installed without that
listener, so the rest goes on serving (as Envoy does), but it is NACKed and the worker
is not ready (state ``nacked``, the reason in ``config_problem``) until the listener is
bound: the agent tries again every second, and ACKs once it is. The fastpath engine
that forwards traffic runs beside this agent in the same process, on its own thread
(``dataplane``, DESIGN §3); the agent recompiles its route table whenever the
snapshot or a certificate changes.

On SIGTERM (supervisord stopping or restarting it, ``meshnode down``) the worker drains
(``WorkerDrain``, Istio's terminationDrainDuration): the engine stops accepting and the
listeners are closed as soon as it has let go of them, so the node's other workers take
every new connection; what is in flight is answered, keep-alive clients are told to go,
and the worker exits 0 once nothing is left, or at the installed Mesh's
``drainDuration`` (the engine then cuts what is left). Its agent stays on the bus
meanwhile (its health says ``draining``) but installs no new snapshot.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

from bus.clone import StateClient
from bus.envelope import Envelope

import fastpath.tls

from . import fdlimit, logs, sharedstate, ticketkeys
from .accesslog import Shipper
from .busnames import ACK_TOPIC, BUNDLE_KEY, BUNDLE_TOPIC, CA, CONTROL, SNAPSHOT_TOPIC, TAP_TOPIC
from .dataplane import BUFFER_BYTES, DataPlane
from .identity.creds import WorkerIdentity
from .process import Process, base_parser

# How long past the drain deadline a worker waits for its engine, which cuts what is
# left at the deadline itself, before it stops it outright. supervisord's stop wait
# (meshnode.supervise) covers the longest drain plus this and more.
DRAIN_MARGIN_S = 2.0
# How often a listener that could not bind is tried again (one bind() each: cheap).
REBIND_EVERY_S = 1.0
# How often a worker looks for sibling workers that died with requests in flight.
REAP_EVERY_S = 1.0
# How often the worker says its answer for the version it was given again: an ACK or a
# NACK is an event, and may miss a control that is restarting.
REANSWER_EVERY_S = 5.0


def check_snapshot(snapshot: object) -> str | None:
    """Why a snapshot cannot be installed, or None if it can."""
    if not isinstance(snapshot, dict):
        return f"snapshot is a {type(snapshot).__name__}, not a map"
    version = snapshot.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        return f"snapshot has no valid version: {version!r}"
    for key in ("services", "local"):
        if not isinstance(snapshot.get(key), list):
            return f"snapshot field {key!r} is not a list"
    if not isinstance(snapshot.get("mesh"), dict):
        return "snapshot field 'mesh' is not a map"
    return None


class Agent:
    """Installs snapshots for one worker and answers for them on the bus."""

    def __init__(self, proc: Process, worker: str, dataplane: DataPlane) -> None:
        self.proc, self.worker = proc, worker
        self.dataplane = dataplane
        self._routes_dirty = False
        self.snapshot: dict[str, Any] | None = None
        self.refused = 0
        # The last answer given on config.ack: (version, "ACK"|"NACK", reason).
        self.answer: tuple[int, str, str | None] | None = None
        # A worker without a snapshot has no routes and would refuse all traffic: it is
        # not ready until the first one is installed (as Envoy's /ready waits for its
        # initial config), so /ready and `meshnode up` never report a config-less node.
        proc.state = "syncing"
        self.state = StateClient(proc.client(), CONTROL, SNAPSHOT_TOPIC, self.on_state)
        proc.subscriber([SNAPSHOT_TOPIC], lambda topic, env: self.state.feed(env))
        proc.loop.every(0.2, self.state.tick)
        try:
            self.ticket_secret: bytes | None = ticketkeys.load(proc.runtime_dir)
        except ticketkeys.TicketKeysError as exc:
            # Still serves; peers resume only sessions this worker's current table issued.
            self.ticket_secret = None
            logs.event(proc.log, "tls.ticket_keys.unshared", logging.WARNING, reason=str(exc))
        self.identity = WorkerIdentity(proc.client(), proc.name,
                                       on_contexts=lambda identity, ctx: self._dirty())
        self.bundle = StateClient(proc.client(), CA, BUNDLE_TOPIC, self.on_bundle)
        proc.subscriber([BUNDLE_TOPIC], lambda topic, env: self.bundle.feed(env))
        proc.loop.every(0.2, self.bundle.tick)
        proc.loop.every(0.2, self.identity.tick)
        proc.add_health(self.health)
        proc.add_health(self.identity.health)
        proc.add_health(self.dataplane.health)
        # Certificates arrive in bursts (a new bundle rebuilds every context): compile
        # the route table once per burst, not once per context.
        proc.loop.every(0.2, self.refresh_routes)
        proc.loop.every(REANSWER_EVERY_S, self.reanswer, first_in_s=REANSWER_EVERY_S)
        proc.loop.every(REBIND_EVERY_S, self.rebind, first_in_s=REBIND_EVERY_S)
        # A sibling worker killed mid-request leaves its requests in the node's count
        # until one of the workers gives them back (fastpath overload.pxi).
        proc.loop.every(REAP_EVERY_S, self.dataplane.engine.overload_reap)

    @property
    def version(self) -> int | None:
        return None if self.snapshot is None else self.snapshot["version"]

    def health(self) -> dict[str, Any]:
        # The beat says which bundle and certificates this worker runs: compile pending
        # ones into the route table first, so what it reports is what the engine uses
        # (root rotation moves on by these reports).
        self.refresh_routes()
        nack = self.answer if self.answer is not None and self.answer[1] == "NACK" else None
        return {"worker": self.worker, "config_version": self.version,
                "config_synced": self.state.synced, "config_refused": self.refused,
                # The version given that is not carried out, and why (None: all is).
                "config_nacked": nack[0] if nack else None,
                "config_problem": nack[2] if nack else None,
                "openssl": fastpath.tls.openssl_version()}

    def on_state(self, items: dict[str, Any]) -> None:
        if self.dataplane.draining:
            return  # leaving: what is in flight finishes on the table it has
        snapshot = items.get(self.proc.node)
        if snapshot is None:
            return  # nothing compiled for this node (yet): keep what we have
        version = snapshot.get("version") if isinstance(snapshot, dict) else None
        if self.snapshot is not None and version == self.version:
            return  # a resync that brought nothing new
        reason = check_snapshot(snapshot)
        if reason is not None:
            self.refuse(version if isinstance(version, int) else -1, reason)
            return
        try:
            unbound = self.dataplane.install(snapshot)
        except (ValueError, OSError) as exc:  # e.g. an endpoint name that does not resolve
            self.refuse(version, f"route table: {exc}")
            return
        self.snapshot = snapshot
        self.identity.want({str(w["identity"]) for w in snapshot["local"]
                            if isinstance(w, dict) and "identity" in w},
                           rotate_at=float(snapshot["mesh"].get("rotate_at", 0.5)))
        logs.event(self.proc.log, "config.installed", version=version,
                   services=len(snapshot["services"]), unbound=sorted(unbound))
        self.report(unbound)

    def refuse(self, version: int, reason: str) -> None:
        """NACK a snapshot not installed at all: the last good one goes on serving."""
        self.refused += 1
        logs.event(self.proc.log, "config.refused", logging.WARNING, version=version,
                   reason=reason)
        self.give_answer(version, "NACK", reason)

    def report(self, unbound: dict[int, str]) -> None:
        """ACK the installed snapshot, or NACK it while a listener it names is unbound."""
        assert self.version is not None
        if unbound:
            reason = "; ".join(unbound[port] for port in sorted(unbound))
            self.give_answer(self.version, "NACK", reason)
        else:
            self.give_answer(self.version, "ACK")

    def give_answer(self, version: int, status: str, reason: str | None = None) -> None:
        """Say how the version given was carried out: a new answer is sent at once (and
        repeated by reanswer()); the worker is not ready while it is a NACK."""
        answer = (version, status, reason)
        self.proc.state = "ok" if status == "ACK" else "nacked"
        if answer == self.answer:
            return
        self.answer = answer
        if status == "NACK":
            logs.event(self.proc.log, "config.nacked", logging.WARNING, version=version,
                       reason=reason)
        self.ack(version, status, reason)

    def _dirty(self) -> None:
        self._routes_dirty = True

    def refresh_routes(self) -> None:
        self.dataplane.reap()
        if not self._routes_dirty or self.snapshot is None or self.dataplane.draining:
            return
        self._routes_dirty = False
        version = self.snapshot["version"]
        try:
            unbound = self.dataplane.install(self.snapshot)
        except (ValueError, OSError) as exc:
            logs.event(self.proc.log, "routes.failed", logging.ERROR, error=str(exc))
            if self.answer is None or self.answer[0] == version:
                self.give_answer(version, "NACK", f"route table: {exc}")
            return
        if self.answer is None or self.answer[0] == version:  # (a newer version
            self.report(unbound)                              # refused whole stays NACKed)

    def rebind(self) -> None:
        """Try the listeners the table lacks again; one bound makes a new table."""
        if self.dataplane.unbound and not self.dataplane.draining and self.dataplane.rebind():
            logs.event(self.proc.log, "listener.rebound", unbound=sorted(self.dataplane.unbound))
            self._dirty()

    def on_bundle(self, items: dict[str, Any]) -> None:
        bundle = items.get(BUNDLE_KEY)
        if isinstance(bundle, dict):
            self.identity.on_bundle(bundle)
            if self.ticket_secret is not None and self.identity.bundle_pem:
                # New trust, new ticket keys: no session resumes across a bundle change.
                keys = ticketkeys.derive(self.ticket_secret, self.identity.bundle_pem)
                if keys != self.dataplane.ticket_keys:
                    self.dataplane.ticket_keys = keys
                    self._dirty()

    def reanswer(self) -> None:
        if self.answer is not None:
            self.ack(*self.answer)

    def ack(self, version: int, status: str, reason: str | None = None) -> None:
        self.proc.publisher.publish(ACK_TOPIC, "ack", {"worker": self.proc.name,
                                                       "version": version, "status": status,
                                                       "reason": reason})


class WorkerDrain:
    """A worker's graceful drain (process.Drain), driven from the bus loop."""

    def __init__(self, proc: Process, dataplane: DataPlane) -> None:
        self.proc, self.dataplane = proc, dataplane
        self.deadline_s = dataplane.drain_s
        self.started = 0.0

    def _active(self) -> int:
        stats = self.dataplane.engine.stats()
        return int(stats["outbound_connections_active"] + stats["inbound_connections_active"])

    def begin(self) -> None:
        # The installed snapshot's drainDuration (the default before any).
        self.deadline_s = self.dataplane.drain_s
        self.started = time.monotonic()
        logs.event(self.proc.log, "drain.started", deadline_s=self.deadline_s,
                   connections=self._active())
        self.dataplane.drain(self.deadline_s)

    def step(self) -> bool:
        took = time.monotonic() - self.started
        if not self.dataplane.listeners_closed and self.dataplane.close_listeners():
            logs.event(self.proc.log, "drain.listeners_closed", after_s=round(took, 3))
        if self.dataplane.finished:
            stats = self.dataplane.engine.stats()
            logs.event(self.proc.log, "drain.finished", took_s=round(took, 3),
                       ended="deadline" if took >= self.deadline_s else "idle",
                       quiet_closed=stats["drain_closed"])
            return True
        if took > self.deadline_s + DRAIN_MARGIN_S:
            logs.event(self.proc.log, "drain.overran", logging.ERROR, took_s=round(took, 3),
                       deadline_s=self.deadline_s, connections=self._active())
            self.cut()
            if not self.dataplane.join(DRAIN_MARGIN_S):
                logs.event(self.proc.log, "drain.engine_stuck", logging.ERROR)
            return True
        return False

    def cut(self) -> None:
        self.dataplane.engine.stop()


def _share(proc: Process, region: sharedstate.Region, share: Callable[[Any], None],
           event: str) -> None:
    """Hand the engine the node's `region`; say why not in the log when it cannot."""
    try:
        share(sharedstate.attach(proc.runtime_dir, region))
    except (sharedstate.SharedStateError, ValueError) as exc:
        logs.event(proc.log, event, logging.WARNING, reason=str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("meshnode.proxy", "Run one proxy worker of the node.")
    parser.add_argument("--worker", type=int, default=0, help="this worker's index")
    parser.add_argument("--workers", type=int, default=1,
                        help="the node's proxy workers (connectionPool limits are split among them)")
    parser.add_argument("--inbound-address", default="0.0.0.0",
                        help="address of the inbound mTLS listener (port-base+6)")
    args = parser.parse_args(argv)
    proc = Process(f"proxy-{args.worker}", args)
    # Descriptors first: the engine's slots (each side's budget) are sized from them.
    before, nofile = fdlimit.raise_nofile()
    slots = fdlimit.engine_slots(nofile, BUFFER_BYTES)
    logs.event(proc.log, "fd_limit.raised", before=before, now=nofile, slots=slots)
    try:
        dataplane = DataPlane(proc.node, args.inbound_address, proc.ports.inbound,
                              lambda identity: agent.identity.contexts(identity),
                              http_port=proc.ports.outbound, max_connections=slots,
                              worker=args.worker, workers=args.workers)
    except OSError as exc:
        logs.event(proc.log, "listener.failed", logging.ERROR, name="inbound",
                   port=proc.ports.inbound, error=str(exc))
        proc.ctx.destroy(linger=0)
        return 78
    # The node's shared state (before any table is installed). Without it a worker still
    # serves, on state of its own: ejections, rate limits and the cap on requests in
    # flight are then each worker's.
    engine = dataplane.engine
    _share(proc, sharedstate.OUTLIER, engine.share_state, "outlier.state.unshared")
    _share(proc, sharedstate.RATE_LIMITS, engine.share_rate_limits, "ratelimit.state.unshared")
    _share(proc, sharedstate.OVERLOAD, engine.share_overload, "overload.state.unshared")
    agent = Agent(proc, str(args.worker), dataplane)
    proc.drain_on_stop(WorkerDrain(proc, dataplane))
    shipper = Shipper(proc.endpoints, proc.node, proc.name, engine)
    proc.subscriber([TAP_TOPIC], lambda topic, env: _offer_taps(proc, shipper, env))
    proc.add_health(shipper.health)
    dataplane.start()
    shipper.start()
    try:
        return proc.run()
    finally:
        dataplane.stop()
        shipper.stop()                  # (after the engine: its last records go too)


def _offer_taps(proc: Process, shipper: Shipper, env: Envelope) -> None:
    """Telemetry's tap sessions to the shipper; a garbled body is dropped and counted
    (bad-tap), the sessions under way go on."""
    if not shipper.taps.offer(env.body):
        proc.counters.drop("bad-tap")


if __name__ == "__main__":
    sys.exit(main())
