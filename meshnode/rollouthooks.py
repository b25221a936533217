"""A rollout's webhooks, called over HTTP off control's loop.

Flagger's contract: each hook is POSTed a JSON payload (name, namespace, phase, checksum,
metadata) and passes when it answers 2xx within its timeout; anything else (another
status, a refused connection, the timeout) fails it. The calls run on a small thread
pool, so control goes on answering beats and the CLI while a slow hook waits; the
controller polls the Future on its tick.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .config.durations import parse_duration
from .config.rollout import Webhook

# Hooks of one stage run one after another; two stages of two rollouts may overlap.
POOL_THREADS = 2


@dataclass(frozen=True)
class HookResult:
    name: str
    type: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "ok": self.ok, "message": self.message}


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows a hook's redirect to another http(s) URL only, as Flagger's Go client
    does: urllib's own follows one to ftp:// too, whose answer has no HTTP status.
    Declined, the redirect is the hook's answer (a 3xx: it fails)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme not in ("http", "https"):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def call(hook: Webhook, payload: dict[str, Any]) -> HookResult:
    """POST Flagger's payload to one hook; a 2xx answer within its timeout passes.
    Whatever else happens is the hook's failure, never an exception: the controller
    reads the stage's results on control's loop."""
    body = json.dumps({**payload, "metadata": dict(hook.metadata)}).encode()
    request = urllib.request.Request(hook.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=parse_duration(hook.timeout)) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    # Refused, unreachable, timed out (OSError); a URL http.client cannot use or an
    # answer that is not HTTP/1.x (ValueError, HTTPException: a bad port, a garbled
    # status line, a header line past its limit).
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return HookResult(hook.name, hook.type, False, f"{hook.url}: {exc}")
    ok = 200 <= status < 300
    return HookResult(hook.name, hook.type, ok, f"{hook.url} answered {status}")


def _call_all(hooks: list[Webhook], payload: dict[str, Any]) -> list[HookResult]:
    return [call(hook, payload) for hook in hooks]


class Hooks:
    """Runs a stage's hooks off the loop; `start` gives a Future of their results."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="webhook")

    def start(self, hooks: list[Webhook], payload: dict[str, Any]) -> Future[list[HookResult]]:
        return self._pool.submit(_call_all, hooks, payload)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
