"""Exceptions of the bus package: one hierarchy, so callers can catch BusError."""


class BusError(Exception):
    """Base of every error the bus raises."""


class DecodeError(BusError):
    """A frame that is not a valid envelope (dropped and counted by receivers)."""


class RequestTimeout(BusError):
    """A request got no answer within its deadline."""


class ServiceUnavailable(BusError):
    """The broker knows no live server for the requested service."""


class RemoteError(BusError):
    """The server answered, but with an error; `kind` says what class of error."""

    def __init__(self, message: str, kind: str = "error", details: object = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


class RuntimeDirError(BusError):
    """The runtime dir cannot hold the bus sockets (permissions, path length)."""
