"""Exceptions of the identity package."""


class IdentityError(Exception):
    """A certificate, key or CSR that cannot be used; the message says which and why."""


class Refused(IdentityError):
    """The authority refused to sign; ``reason`` is a short, bounded label for metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotReady(IdentityError):
    """The authority cannot sign yet (no config received); a retry will do."""
