"""The control process: owns the mesh configuration (``python -m meshnode.control``).

It keeps the applied resources in a versioned store in the runtime dir, compiles one
snapshot for this node after every change and distributes it by the Clone pattern on
``config.snapshot``, answers the CLI's apply/get/delete, and records the workers'
ACK/NACK of each version. It never touches traffic; when it is down, workers keep
serving the last snapshot they installed.

Identities are in the mesh root's trust domain (``--trust-domain``, which ``meshnode up``
reads from the root the ca runs under): a Mesh that names another is refused, one that
names none takes the root's (DESIGN §4).

It also runs the node's rollouts (meshnode.rollout): each Rollout's HTTPRoute is written
through the same store, its analysis reads the workers' health beats, and the CLI's
`meshnode rollout ...` is answered here.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from bus.clone import StateServer
from bus.envelope import Envelope
from bus.errors import RemoteError

from . import beatfigures, logs
from .config import (DEFAULT_CONFIG, ConfigError, NotFound, Store, compile_snapshot,
                     parse_text, store_dir, with_status)
from .busnames import ACK_TOPIC, SNAPSHOT_TOPIC
from .busnames import CONTROL as NAME
from .process import Process, base_parser
from .rollout import Controller

# One request carries at most this much YAML: a config, not a data dump.
MAX_APPLY_BYTES = 8 * 1024 * 1024
# How often rollouts are looked at: a check is due at most this late, and the canary's
# figures are sampled this often (an interval's window is read from these samples).
ROLLOUT_TICK_S = 0.25


def config_error(exc: ConfigError) -> RemoteError:
    """A refusal the CLI can print problem by problem."""
    kind = "not-found" if isinstance(exc, NotFound) else "config"
    details = [{"file": p.file, "resource": p.resource, "field": p.field,
                "message": p.message, "line": p.line} for p in exc.problems]
    return RemoteError(str(exc), kind=kind, details=details)


class Control:
    def __init__(self, proc: Process, store: Store) -> None:
        self.proc, self.store = proc, store
        self.acks: dict[str, dict[str, Any]] = {}
        srv = proc.server(NAME)
        self.state = StateServer(proc.publisher, srv, SNAPSHOT_TOPIC)
        srv.register("apply", self.on_apply)
        srv.register("get", self.on_get)
        srv.register("delete", self.on_delete)
        srv.register("status", self.on_status)
        srv.register("rollout", self.on_rollout)
        proc.subscriber([ACK_TOPIC], self.on_ack)
        proc.loop.every(0.2, self.state.tick)
        proc.add_health(lambda: {"config_version": self.store.version})
        self.publish()
        self.rollouts = Controller(store, Path(proc.runtime_dir) / "state" / "rollouts",
                                   self.publish, proc.publisher, proc.log)
        proc.subscriber(["health.proxy-"], self.on_beat)
        proc.loop.every(ROLLOUT_TICK_S, self.rollouts.tick)
        proc.add_health(self.rollouts.health)

    def publish(self) -> None:
        snapshot = compile_snapshot(self.store.resources(), self.proc.node, self.store.version,
                                    self.store.root_domain)
        self.state.set(self.proc.node, snapshot)
        logs.event(self.proc.log, "config.published", version=self.store.version,
                   services=len(snapshot.get("services", [])),
                   http_route_sets=len(snapshot.get("http_routes", [])))

    def on_apply(self, req: Envelope) -> dict[str, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        files = body.get("files")
        if not isinstance(files, list) or not files:
            raise RemoteError("apply needs 'files': [{name, text}, ...]", kind="usage")
        resources = []
        problems = []
        for item in files:
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                    and isinstance(item.get("text"), str)):
                raise RemoteError("each file needs a 'name' and a 'text'", kind="usage")
            if len(item["text"]) > MAX_APPLY_BYTES:
                raise RemoteError(f"{item['name']}: larger than {MAX_APPLY_BYTES} bytes",
                                  kind="usage")
            try:
                resources.extend(parse_text(item["text"], item["name"]))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise config_error(ConfigError(problems))
        before = self.store.version
        try:
            version = self.store.apply(resources, source=files[0]["name"])
        except ConfigError as exc:
            logs.event(self.proc.log, "config.refused", logging.WARNING, error=str(exc))
            raise config_error(exc) from None
        if version != before:
            logs.event(self.proc.log, "config.applied", version=version,
                       resources=[r.label for r in resources])
            self.publish()
            self.rollouts.sync()
        return {"version": version, "changed": version != before,
                "resources": [r.label for r in resources]}

    def on_get(self, req: Envelope) -> dict[str, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        try:
            found = self.store.get(str(body.get("kind", "")), body.get("name"),
                                   body.get("namespace"))
        except ConfigError as exc:
            raise config_error(exc) from None
        if body.get("name") and not found:
            ns = body.get("namespace")
            where = f" in namespace {ns}" if ns else ""
            raise RemoteError(f"{body.get('kind')} {body['name']!r} not found{where}",
                              kind="not-found")
        # An HTTPRoute's status is computed from the config in force (routestatus).
        everything = self.store.resources()
        items = [with_status(r, everything) for r in found]
        for resource, item in zip(found, items):
            if resource.kind == "Rollout":  # its status is its controller's
                item["status"] = self.rollouts.status(resource.namespace, resource.name)
        return {"version": self.store.version, "items": items}

    def on_delete(self, req: Envelope) -> dict[str, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        try:
            version = self.store.delete(str(body.get("kind", "")), str(body.get("name", "")),
                                        str(body.get("namespace") or "default"))
        except ConfigError as exc:
            raise config_error(exc) from None
        logs.event(self.proc.log, "config.deleted", version=version, kind=body.get("kind"),
                   name=body.get("name"))
        self.publish()
        self.rollouts.sync()
        return {"version": version}

    def on_rollout(self, req: Envelope) -> dict[str, Any]:
        """`meshnode rollout status|promote|abort|pause|resume NAME`."""
        body = req.body if isinstance(req.body, dict) else {}
        try:
            return self.rollouts.act(str(body.get("action", "")), str(body.get("namespace") or "default"),
                                     str(body.get("name", "")))
        except KeyError as exc:
            raise RemoteError(exc.args[0], kind="not-found") from None
        except ValueError as exc:
            raise RemoteError(str(exc), kind="usage") from None

    def on_beat(self, topic: str, env: Envelope) -> None:
        """A worker's health beat, for the rollouts' figures (one of another shape:
        dropped and counted, as telemetry does)."""
        body = env.body if isinstance(env.body, dict) else None
        if body is None or not beatfigures.well_formed(body.get("requests", [])):
            self.proc.counters.drop("bad-health")
            return
        self.rollouts.on_beat(topic, env)

    def on_status(self, req: Envelope) -> dict[str, Any]:
        return {"version": self.store.version, "acks": self.acks}

    def on_ack(self, topic: str, env: Envelope) -> None:
        body = env.body if isinstance(env.body, dict) else {}
        worker, version, status = body.get("worker"), body.get("version"), body.get("status")
        if not isinstance(worker, str) or not isinstance(version, int) or status not in ("ACK", "NACK"):
            self.proc.counters.drop("bad-ack")
            return
        self.acks[worker] = {"version": version, "status": status,
                             "reason": body.get("reason"), "ts": time.time()}
        if status == "NACK":
            logs.event(self.proc.log, "config.nack", logging.WARNING, worker=worker,
                       version=version, reason=body.get("reason"))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("meshnode.control", "Run the node's control process.")
    parser.add_argument("--config", type=Path, default=None,
                        help="dir of YAML resources that seeds an empty store "
                             "(default: the embedded example mesh)")
    parser.add_argument("--trust-domain", default=None,
                        help="the mesh root's trust domain: identities are in it, and a Mesh "
                             "that names another is refused (default: the root names none; "
                             "the Mesh's, else cluster.local)")
    args = parser.parse_args(argv)
    proc = Process(NAME, args)
    seed = args.config or DEFAULT_CONFIG
    try:
        store = Store.open(store_dir(proc.runtime_dir), seed, args.trust_domain)
    except ConfigError as exc:
        logs.event(proc.log, "config.invalid", logging.ERROR, error=str(exc))
        proc.ctx.destroy(linger=0)
        return 78
    logs.event(proc.log, "config.loaded", version=store.version, seed=str(seed),
               resources=len(store.resources()), root_trust_domain=args.trust_domain)
    control = Control(proc, store)
    try:
        return proc.run()
    finally:
        control.rollouts.close()


if __name__ == "__main__":
    sys.exit(main())
