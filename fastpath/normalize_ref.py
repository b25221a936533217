"""fastpath.normalize_ref: the plain-Python path normalization that tests hold the engine's
(fastpath/normalize.pxi, through fastpath.engine.normalize_path) to.

It is written differently on purpose: escapes are tokens from a regular expression and
dot segments are removed by RFC 3986 §5.2.4's own input/output-buffer loop, where the
compiled one runs indexes over the buffer in place. Both follow Istio's normalizations
(meshConfig.pathNormalization) as Envoy applies them: escapes of unreserved characters
decoded once (%2F and %5C too under DECODE_AND_MERGE_SLASHES), a backslash read as a
slash, dot segments removed, then slashes merged (MERGE_SLASHES and after); %00 refused;
an escape that a '%' kept as it came would complete with the decoded character stays
encoded. Not for production: it copies freely.
"""

from __future__ import annotations

import re
import string

MODES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
_UNRESERVED = set(string.ascii_letters + string.digits + "-._~")
_TOKEN = re.compile(r"%[0-9A-Fa-f]{2}|.", re.S)


class Refused(Exception):
    """The path is refused: a request with it is answered 400."""


def _decoded(path: str, mode: str) -> str:
    out: list[str] = []
    for token in _TOKEN.findall(path):
        if len(token) == 1:
            out.append("/" if token == "\\" else token)
            continue
        char = chr(int(token[1:], 16))
        before = "".join(out[-2:])
        nests = char in string.hexdigits and (
            before.endswith("%") or (len(before) == 2 and before[0] == "%"
                                     and before[1] in string.hexdigits))
        if char == "\0":
            raise Refused(path)
        if char in _UNRESERVED and not nests:
            out.append(char)
        elif mode == "DECODE_AND_MERGE_SLASHES" and char in "/\\":
            out.append("/")
        else:
            out.extend(token)
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step (an output of "" is the root, "/")."""
    source, out = path, ""
    while source:
        if source.startswith(("../", "./")):
            source = source[source.index("/") + 1:]
        elif source.startswith("/./") or source == "/.":
            source = "/" + source[3:]
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:]
            out = out[:out.rfind("/")] if "/" in out else ""
        elif source in (".", ".."):
            source = ""
        else:
            cut = source.find("/", 1)
            cut = len(source) if cut < 0 else cut
            out, source = out + source[:cut], source[cut:]
    return out or "/"


def normalize(target: str, mode: str) -> str:
    """`target` (path and query) as a request goes on with it under `mode`; raises
    Refused. A target that is not an absolute path is kept."""
    if mode == "NONE" or not target.startswith("/"):
        return target
    path, mark, query = target.partition("?")
    path = remove_dot_segments(_decoded(path, mode))
    if mode != "BASE":
        path = re.sub("/{2,}", "/", path)
    return path + mark + query
