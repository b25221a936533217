"""Reading and writing Istio PeerAuthentication documents (the model: authz.py).

The checks are Istio's (ValidatePeerAuthentication and the CRD): mtls.mode and each
portLevelMtls mode one of UNSET, STRICT, PERMISSIVE, DISABLE; portLevelMtls only under
a selector with labels (a mesh or namespace policy cannot name ports), not empty when
given, its keys ports 1-65535; a wildcard-free selector. Which policy decides for a
workload's port is inbound.py's.
"""
from __future__ import annotations

from typing import Any

from .authz import API_VERSIONS, MTLS_MODES, PeerAuthenticationSpec
from .authzparse import _selector, read_document
from .errors import Problem
from .model import PeerAuthentication
from .routeparse import metadata_dict
from .validate import _Doc, _choice, _fields, _opt, join

_mode = _choice(MTLS_MODES)


def _mtls(d: _Doc, value: object, path: str) -> tuple[bool, str | None]:
    """(ok, mode) of an `mtls` mapping; mode None when not written."""
    fields = _fields(d, value, path, ("mode",))
    if fields is None:
        return False, None
    mode = _opt(d, fields, path, "mode", _mode, "")
    return mode is not None, mode or None


def _port_key(d: _Doc, key: object, path: str) -> int | None:
    """A portLevelMtls key: a port number (YAML may read it as an int or a string)."""
    text = str(key)
    if isinstance(key, bool) or not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        d.fail(join(path, text), "port must be between 1-65535")
        return None
    return int(text)


def _port_modes(d: _Doc, value: object, path: str) -> dict[int, str | None] | None:
    if not isinstance(value, dict) or not value:
        d.fail(path, "port level mTLS, if defined, must have at least one element "
                     "(a mapping of port to {mode})")
        return None
    modes: dict[int, str | None] = {}
    for key, item in value.items():
        port = _port_key(d, key, path)
        ok, mode = _mtls(d, item, join(path, str(key)))
        if port is not None and port in modes:
            d.fail(join(path, str(key)), f"port {port} is given twice")
        elif port is not None and ok:
            modes[port] = mode
    return modes if len(modes) == len(value) else None


def _spec(d: _Doc, value: object) -> PeerAuthenticationSpec | None:
    spec = _fields(d, value, "spec", ("selector", "mtls", "portLevelMtls"))
    if spec is None:
        return None
    selector = _selector(d, spec["selector"], "spec.selector") if "selector" in spec else None
    ok, mode = _mtls(d, spec["mtls"], "spec.mtls") if "mtls" in spec else (True, None)
    ports = _port_modes(d, spec["portLevelMtls"], "spec.portLevelMtls") if "portLevelMtls" in spec else None
    if "portLevelMtls" in spec and not selector:
        d.fail("spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS: "
                                     "portLevelMtls requires a selector with labels")
    if d.problems or not ok:
        return None
    return PeerAuthenticationSpec(selector, mode, ports)


def parse_peer_authentication(doc: dict[str, Any], file: str, index: int
                              ) -> tuple[PeerAuthentication | None, list[Problem]]:
    """A PeerAuthentication document (kind already known), or what is wrong with it."""
    d, top, metadata, created = read_document(doc, file, index, "PeerAuthentication")
    if top is None:
        return None, d.problems
    spec = _spec(d, top["spec"]) if "spec" in top else PeerAuthenticationSpec()
    if d.problems or metadata is None or spec is None:
        return None, d.problems
    return PeerAuthentication(metadata=metadata, spec=spec, created=created, source=file), []


def peer_authentication_to_dict(policy: PeerAuthentication) -> dict[str, Any]:
    """The policy as written (fields left out stay out); parsed back equal."""
    s = policy.spec
    spec: dict[str, Any] = {}
    if s.selector is not None:
        spec["selector"] = {"matchLabels": dict(s.selector)} if s.selector else {}
    if s.mode is not None:
        spec["mtls"] = {"mode": s.mode}
    if s.port_modes is not None:
        spec["portLevelMtls"] = {port: ({"mode": mode} if mode else {})
                                 for port, mode in sorted(s.port_modes.items())}
    return {"apiVersion": API_VERSIONS[0], "kind": policy.KIND,
            "metadata": metadata_dict(policy.metadata, policy.created), "spec": spec}
