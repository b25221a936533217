"""fastpath.errors: the exceptions the data plane raises at its Python boundary."""

from __future__ import annotations


class FastpathError(Exception):
    """Root of every error fastpath raises to Python."""


class TLSError(FastpathError):
    """OpenSSL refused an operation; carries the drained error queue.

    ``reasons`` holds one ``"<library>: <reason>"`` string per queued OpenSSL error,
    oldest first; ``codes`` holds the packed ``ERR_get_error()`` values, for callers
    that match on a specific library/reason instead of on text. ``verify_result`` is
    the X509_V_* code of a failed peer certificate verification (10 is
    X509_V_ERR_CERT_HAS_EXPIRED), None when no verification failed.
    """

    def __init__(
        self,
        message: str,
        reasons: tuple[str, ...] = (),
        codes: tuple[int, ...] = (),
        verify_result: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reasons: tuple[str, ...] = tuple(reasons)
        self.codes: tuple[int, ...] = tuple(codes)
        self.verify_result: int | None = verify_result


class HTTPError(FastpathError):
    """The HTTP/1 codec refused a message.

    ``status`` is the HTTP status to answer with (400, 413, 414, 431, 501, 505 for a
    request; 502 for an upstream's response), ``code`` the codec's return code name
    (``"EPARSE"``, ``"ELENGTH"``...), which tells apart refusals sharing a status.
    """

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status: int = status
        self.message: str = message
        self.code: str = code
