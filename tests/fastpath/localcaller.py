"""Local callers running as other OS users, for the caller-identity tests (callers.pxi).

A Caller is a real process running as another uid (the tests run as root: a fork that
setuid()s; the test's interpreter may sit where that user cannot read it, so nothing is
exec'd), connected to a node's outbound listener from a chosen loopback address. In
"http" mode it takes one request per command line ("PATH HOST") and sends it on its one
keep-alive connection (so a test can change the node's config between two requests of
one connection); each answer, or the connection's end, comes back as one JSON line. In
"raw" mode it sends the bytes it is given, half-closes, and answers with what came back
until the end.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
import traceback
from typing import Any, TextIO

TIMEOUT_S = 10.0
NOBODY = 65534          # its own group too
# Accounts no password entry names: setuid() takes any uid.
UID_A = 4242
UID_STRANGER = 4343


def _run(family: str, host: str, port: int, source: str, mode: str,
         commands: TextIO, answers: TextIO) -> None:
    """The caller's side, in the child process (already the other user)."""
    conn = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET)
    conn.settimeout(TIMEOUT_S)
    conn.bind((source, 0))
    conn.connect((host, port))
    if mode == "raw":
        got = bytearray()
        try:                            # (a refused caller finds its connection gone)
            conn.sendall(bytes.fromhex(commands.read().strip()))
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                got += chunk
        except OSError:                 # reset, or not connected any more
            pass
        answers.write(json.dumps({"bytes": got.hex()}) + "\n")
        return
    reader = conn.makefile("rb")
    for line in commands:
        path, host_field = line.split()
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_field}\r\n\r\n".encode())
        status_line = reader.readline()
        if not status_line:
            answers.write(json.dumps({"status": 0, "body": "", "closed": True}) + "\n")
            answers.flush()
            return
        length, close = 0, False
        while (field := reader.readline()) not in (b"\r\n", b""):
            name, _, value = field.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            if name.strip().lower() == "connection" and "close" in value.lower():
                close = True
        body = reader.read(length).decode("latin-1")
        answers.write(json.dumps({"status": int(status_line.split()[1]), "body": body,
                                  "closed": close}) + "\n")
        answers.flush()


class Caller:
    """One local caller process as `uid`, connected from `source` to (host, port).

    A fork of the test process that keeps only its two pipes (no copy of the engines'
    sockets, whose closing it would hold up) and drops to `uid` before it connects:
    the socket it makes is that user's."""

    def __init__(self, uid: int, port: int, source: str = "127.0.0.1",
                 host: str = "127.0.0.1", mode: str = "http") -> None:
        family = "6" if ":" in host else "4"
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                       # the caller
            code = 1
            try:
                os.dup2(in_r, 0)
                os.dup2(out_w, 1)
                os.closerange(3, 1 << 20)
                os.setgroups([])
                os.setgid(NOBODY if uid == NOBODY else uid)
                os.setuid(uid)
                with os.fdopen(0, "r") as commands, os.fdopen(1, "w") as answers:
                    _run(family, host, port, source, mode, commands, answers)
                code = 0
            except BaseException:
                os.write(2, traceback.format_exc().encode())
            finally:
                os._exit(code)
        os.close(in_r)
        os.close(out_w)
        self.stdin = os.fdopen(in_w, "w")
        self.stdout = os.fdopen(out_r, "r")
        self.returncode: int | None = None

    def get(self, path: str = "/headers", host: str = "backend") -> dict[str, Any]:
        """One request on the caller's connection: {"status", "body", "closed"}."""
        self.stdin.write(f"{path} {host}\n")
        self.stdin.flush()
        line = self._line()
        assert line, "the caller ended (its traceback is on stderr)"
        return json.loads(line)

    def raw(self, data: bytes) -> bytes:
        """Raw mode: send `data`, end, return what came back until the end."""
        self.stdin.write(data.hex())
        self.stdin.close()
        line = self._line()
        assert line, "the caller ended (its traceback is on stderr)"
        return bytes.fromhex(json.loads(line)["bytes"])

    def _line(self) -> str:
        if not select.select([self.stdout], [], [], TIMEOUT_S * 2)[0]:
            raise AssertionError("the caller said nothing in time")
        return self.stdout.readline()

    def close(self) -> None:
        """End the caller (its stdin closed: it has no more to ask) and reap it."""
        if self.returncode is not None:
            return
        if not self.stdin.closed:
            self.stdin.close()
        deadline = time.monotonic() + TIMEOUT_S
        while (done := os.waitpid(self.pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                done = os.waitpid(self.pid, 0)
                break
            time.sleep(0.01)
        self.returncode = os.waitstatus_to_exitcode(done[1])
        self.stdout.close()


def xfcc_uri(answer: dict[str, Any]) -> str | None:
    """The caller identity the backend saw (URI= of x-forwarded-client-cert), from a
    /headers answer (test_engine_http's app: one "name: value" line per field)."""
    for line in answer["body"].splitlines():
        if line.startswith("x-forwarded-client-cert:"):
            return line.rpartition("URI=")[2]
    return None
