"""The ca process: the node's certificate authority (``python -m meshnode.ca``).

It holds the node issuer (an intermediate under the mesh root), signs workers' CSRs
for the SPIFFE IDs that control's config places on this node, publishes the trust
bundle on ``cert.bundle`` by the Clone pattern, and walks root rotations step by step
for ``meshnode ca rotate-root``. It never hands out a private key: workers make their
own. Its state is on disk, so a restart changes nothing for issued certificates.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from bus.clone import StateClient, StateServer
from bus.envelope import Envelope
from bus.errors import RemoteError

from . import logs
from .busnames import BUNDLE_KEY, BUNDLE_TOPIC, CONTROL, SNAPSHOT_TOPIC
from .busnames import CA as NAME
from .identity.authority import Authority, Policy, ca_dir
from .identity.errors import IdentityError, NotReady, Refused
from .process import Process, base_parser



def _body(req: Envelope) -> dict[str, Any]:
    return req.body if isinstance(req.body, dict) else {}


def _bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise RemoteError(f"{what} must be a PEM string", kind="usage")


class CA:
    def __init__(self, proc: Process, auth: Authority) -> None:
        self.proc, self.auth = proc, auth
        srv = proc.server(NAME)
        self.bundle = StateServer(proc.publisher, srv, BUNDLE_TOPIC)
        self.config = StateClient(proc.client(), CONTROL, SNAPSHOT_TOPIC, self.on_config)
        proc.subscriber([SNAPSHOT_TOPIC], lambda topic, env: self.config.feed(env))
        proc.loop.every(0.2, self.config.tick)
        proc.loop.every(0.2, self.bundle.tick)
        srv.register("sign", self.on_sign)
        srv.register("inspect", lambda req: self.auth.inspect())
        srv.register("status", lambda req: self.auth.health())
        srv.register("rotate.add", self.on_rotate_add)
        srv.register("rotate.switch", lambda req: self._rotate(self.auth.rotate_switch))
        srv.register("rotate.finish", lambda req: self._rotate(self.auth.rotate_finish))
        srv.register("rotate.state", lambda req: self.auth.rotation_state())
        proc.add_health(self.auth.health)
        self.publish_bundle()

    def publish_bundle(self) -> None:
        self.bundle.set(BUNDLE_KEY, self.auth.bundle.to_state())

    def on_config(self, items: dict[str, Any]) -> None:
        snapshot = items.get(self.proc.node)
        if isinstance(snapshot, dict):
            self.auth.set_policy(Policy.from_snapshot(snapshot))

    def on_sign(self, req: Envelope) -> dict[str, Any]:
        body = _body(req)
        identity, worker = body.get("identity"), body.get("worker")
        if not isinstance(identity, str) or not isinstance(worker, str):
            raise RemoteError("sign needs 'identity', 'worker' and 'csr'", kind="usage")
        try:
            return self.auth.sign(_bytes(body.get("csr"), "csr"), identity, worker)
        except Refused as exc:
            raise RemoteError(str(exc), kind="refused", details={"reason": exc.reason}) from None
        except NotReady as exc:
            raise RemoteError(str(exc), kind="not-ready") from None

    def on_rotate_add(self, req: Envelope) -> dict[str, Any]:
        body = _body(req)
        root, key = body.get("root_pem"), body.get("root_key_pem")
        if (root is None) != (key is None):
            raise RemoteError("give both the new root's certificate and key, or neither",
                              kind="usage")
        return self._rotate(lambda: self.auth.rotate_add(
            None if root is None else _bytes(root, "root_pem"),
            None if key is None else _bytes(key, "root_key_pem")))

    def _rotate(self, step: Any) -> dict[str, Any]:
        try:
            state = step()
        except IdentityError as exc:
            raise RemoteError(str(exc), kind="rotation") from None
        self.publish_bundle()
        return state


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("meshnode.ca", "Run the node's certificate authority process.")
    parser.add_argument("--ca-root", type=Path, default=None,
                        help="dir with the mesh root (root.pem, root.key) to sign this node's "
                             "issuer with; copied into the runtime dir on first start. "
                             "Default: a root made by this node (self-signed CA)")
    parser.add_argument("--ca-issuer", type=Path, default=None,
                        help="dir with this node's issuer signed by the root's holder "
                             "(issuer.key from `meshnode ca issuer-csr`, issuer.pem, root.pem); "
                             "the node then holds no root key")
    args = parser.parse_args(argv)
    proc = Process(NAME, args)
    try:
        auth = Authority.open(ca_dir(proc.runtime_dir), proc.node, args.ca_root,
                              args.ca_issuer)
    except IdentityError as exc:
        logs.event(proc.log, "ca.failed", logging.ERROR, error=str(exc))
        proc.ctx.destroy(linger=0)
        return 78
    CA(proc, auth)
    return proc.run()


if __name__ == "__main__":
    sys.exit(main())
