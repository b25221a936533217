"""GETs against a node's own loopback endpoints (admin /ready, metrics) while it starts.

Why not plain ``urllib``: polling a loopback port nobody listens on yet can connect the
socket to itself. When the kernel happens to pick the polled port as the ephemeral
source port (possible whenever the port lies in net.ipv4.ip_local_port_range), TCP's
simultaneous open joins the socket to itself; the "server" then answers with the
request it was sent (``GET /ready HTTP/1.1`` read back as a status line), and for as
long as it lives the socket holds the very port the node is about to bind. A probe
here notices that, resets itself at once (leaving the port free) and reports "nothing
listening", as for a refused connection; an answer that is not HTTP is reported as
such, never raised as a crash.
"""

from __future__ import annotations

import http.client
import socket
import struct
from urllib.parse import urlsplit


class NotListening(ConnectionRefusedError):
    """Nothing (but, perhaps, the probe's own socket) listens on the probed port."""


class BadAnswer(OSError):
    """Something listens but did not answer with HTTP."""


def is_self_connected(sock: socket.socket) -> bool:
    """True for a TCP socket whose peer is itself (local and remote address are equal)."""
    try:
        return sock.getsockname() == sock.getpeername()
    except OSError:
        return False


def reset(sock: socket.socket) -> None:
    """Close with a reset (linger 0), leaving no TIME_WAIT behind.

    A self-connected probe closed normally sits in TIME_WAIT on the very port it probed,
    and a TIME_WAIT socket that was not SO_REUSEADDR keeps anyone from binding that
    port until it expires (a minute): the node would fail to start.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        if is_self_connected(self.sock):
            reset(self.sock)
            self.sock = None
            raise NotListening(f"nothing listens on {self.host}:{self.port} "
                               "(the probe connected to itself)")


def get(url: str, timeout_s: float = 1.0) -> tuple[int, bytes]:
    """(status, body) of ``GET url`` (http only); OSError when nothing answers with HTTP.

    Raises NotListening for a refused or self-connected probe, BadAnswer for a reply
    that is not HTTP, and the socket's own OSError (timeout, reset) otherwise.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not a plain http URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn = _Connection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except ConnectionRefusedError as exc:
            raise NotListening(str(exc)) from None
        except http.client.HTTPException as exc:
            raise BadAnswer(f"{parts.hostname}:{parts.port} did not answer with HTTP: "
                            f"{exc!r}") from None
    finally:
        conn.close()
