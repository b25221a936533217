"""The demo's own client: requests to the frontend app, each read back as a Sample.

The frontend answers each ``GET /call`` with what its request to the backend through
the mesh got: the hop's status and duration and the backend's answer, whose
x-forwarded-client-cert names both peers of the mutual-TLS hop and, in the canary,
whose ``version`` names the backend version that served it.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass

from . import report
from .errors import DemoError

WARMUP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 15.0


@dataclass
class Sample:
    """One request of the run, as the client and the frontend saw it."""

    status: int | None  # end to end: the frontend's answer to the client (None: no answer)
    e2e_us: int
    hop_status: int | None = None  # the backend's answer through the mesh, as the frontend got it
    hop_us: int | None = None
    server_id: str | None = None  # from the x-forwarded-client-cert the backend received
    client_id: str | None = None
    version: str | None = None  # the backend version that answered, when it names one
    error: str | None = None


class Client:
    """One keep-alive connection to the frontend app."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.conn: http.client.HTTPConnection | None = None

    def call(self, i: int) -> Sample:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.address, self.port,
                                                   timeout=REQUEST_TIMEOUT_S)
        start = time.perf_counter_ns()
        try:
            self.conn.request("GET", f"/call?i={i}")
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Sample(None, (time.perf_counter_ns() - start) // 1000,
                          error=f"frontend: {type(exc).__name__}: {exc}")
        e2e_us = (time.perf_counter_ns() - start) // 1000
        if resp.will_close:
            self.close()
        sample = Sample(resp.status, e2e_us)
        try:
            doc = json.loads(body)
        except ValueError:
            sample.error = f"frontend answered {resp.status} without JSON"
            return sample
        sample.hop_status, sample.hop_us, sample.error = doc.get("status"), doc.get("hop_us"), \
            doc.get("error")
        backend = doc.get("backend")
        if isinstance(backend, dict):
            xfcc = report.xfcc_of(backend.get("headers") or [])
            sample.server_id, sample.client_id = report.peers_from_xfcc(xfcc)
            sample.version = backend.get("version") if isinstance(backend.get("version"), str) \
                else None
        elif isinstance(backend, str) and sample.error is None:
            sample.error = f"mesh answered {sample.hop_status}: {backend.strip()[:120]}"
        return sample

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def warm_up(client: Client) -> int:
    """Requests until one gets a 2xx through the mesh; how many it took."""
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    sent = 0
    while True:
        sample = client.call(0)
        sent += 1
        if sample.status is not None and 200 <= sample.status < 300:
            return sent
        if time.monotonic() >= deadline:
            raise DemoError(f"no request got through the mesh within {WARMUP_TIMEOUT_S:g}s; "
                            f"the last one: {sample.error or sample.status}")
        time.sleep(0.1)
