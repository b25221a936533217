"""The ca process: the node's certificate authority (``python -m meshnode.ca``).

This process will hold the node's issuing key, sign workers' CSRs for their SPIFFE IDs
and publish the trust bundle (DESIGN §4). At this stage it joins the bus, serves the
``ca`` request service and reports health, so the node's shape and supervision are
complete; it issues no certificate yet and its ``status`` answer says so.
"""

from __future__ import annotations

import sys
from typing import Any

from bus.envelope import Envelope

from .process import Process, base_parser

NAME = "ca"


def main(argv: list[str] | None = None) -> int:
    args = base_parser("meshnode.ca", "Run the node's certificate authority process.").parse_args(argv)
    proc = Process(NAME, args)
    srv = proc.server(NAME)

    def status(req: Envelope) -> dict[str, Any]:
        return {"issuer": None, "issuing": False}

    srv.register("status", status)
    proc.add_health(lambda: {"issuing": False})
    return proc.run()


if __name__ == "__main__":
    sys.exit(main())
