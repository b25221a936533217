"""Guards the one-way package dependencies of DESIGN.md §2: meshnode → bus, meshnode → fastpath.

Every .py, .pyx, .pxd and .pxi file under bus/, fastpath/ and meshnode/ is scanned:
Python files with ast, Cython files line by line (ast cannot read Cython).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = frozenset(sys.stdlib_module_names)

# Top-level names each package may import besides the standard library; None = anything.
ALLOWED: dict[str, frozenset[str] | None] = {
    # The C world only: Cython's own modules and the C declarations it ships.
    "fastpath": frozenset({"fastpath", "cython", "libc", "cpython", "posix"}),
    "bus": frozenset({"bus", "zmq", "msgpack"}),
    "meshnode": None,
}

CYTHON_SUFFIXES = (".pyx", ".pxd", ".pxi")
CYTHON_IMPORT = re.compile(r"^\s*(from|import|cimport)\s+(\w+)(.*)$")
# Docstrings and verbatim C blocks (`cdef extern from *: """..."""`) may hold lines
# starting with "from"/"import" that are prose or C, not imports.
TRIPLE_QUOTED = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'')


def python_imports(source: str, filename: str = "<src>") -> set[str]:
    """Top-level modules a Python source imports; relative imports are the package itself."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def cython_imports(source: str) -> set[str]:
    """Top-level modules a Cython source imports or cimports."""
    found: set[str] = set()
    for line in TRIPLE_QUOTED.sub("", source).splitlines():
        match = CYTHON_IMPORT.match(line)
        if not match:
            continue
        keyword, first, rest = match.groups()
        found.add(first)
        if keyword != "from":
            # `cimport a, b as c`: every name after a comma is a module too.
            for part in rest.split("#", 1)[0].split(",")[1:]:
                if part.strip():
                    found.add(part.split()[0].split(".")[0])
    return found


def imports_of(path: Path) -> set[str]:
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return python_imports(source, str(path))
    return cython_imports(source)


def sources(package: str) -> list[Path]:
    base = ROOT / package
    return sorted(
        p for p in base.rglob("*")
        if p.suffix in (".py", *CYTHON_SUFFIXES) and "__pycache__" not in p.parts
    )


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sources(package)
    if not files:
        pytest.skip(f"{package}/ has no sources yet")
    allowed = ALLOWED[package]
    imports = {path: imports_of(path) for path in files}   # every file must be readable
    if allowed is None:
        return
    violations = [
        f"{path.relative_to(ROOT)}: imports {name}"
        for path in files
        for name in sorted(imports[path])
        if name not in STDLIB and name not in allowed
    ]
    assert not violations, (
        f"{package} may import only the standard library and {sorted(allowed)} "
        "(DESIGN.md §2):\n" + "\n".join(violations)
    )


def test_fastpath_is_scanned() -> None:
    # Without this the guard would pass vacuously if the layout moved.
    suffixes = {p.suffix for p in sources("fastpath")}
    assert {".py", ".pyx", ".pxd"} <= suffixes


# --- the scanner itself -------------------------------------------------------


def test_python_scanner() -> None:
    src = "import os, zmq.sugar as z\nfrom msgpack import packb\nfrom . import sibling\nfrom .x import y\n"
    assert python_imports(src) == {"os", "zmq", "msgpack"}


def test_python_scanner_sees_nested_imports() -> None:
    assert python_imports("def f():\n    import meshnode.cli\n") == {"meshnode"}


def test_cython_scanner() -> None:
    src = '''
"""A docstring line that says
from memory, import nothing.
"""
from libc.string cimport memcpy
from fastpath.includes cimport openssl
cimport cython, cpython.buffer as buf
import zmq
from .includes cimport openssl
cdef extern from "openssl/ssl.h" nogil:
    pass
include "consts.pxi"
'''
    assert cython_imports(src) == {"libc", "fastpath", "cython", "cpython", "zmq"}


def test_forbidden_import_is_reported() -> None:
    allowed = ALLOWED["fastpath"]
    assert allowed is not None
    for name in ("bus", "meshnode", "zmq", "msgpack", "yaml", "cryptography"):
        assert name not in allowed and name not in STDLIB
    bus_allowed = ALLOWED["bus"]
    assert bus_allowed is not None
    for name in ("fastpath", "meshnode"):
        assert name not in bus_allowed and name not in STDLIB
