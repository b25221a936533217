"""Build of meshnode's compiled part: every fastpath/*.pyx becomes the extension fastpath.<name>.

Metadata lives in pyproject.toml; this file only exists because extension modules
need code. Switches, read from the environment at build time:

  MESHNODE_DEBUG=1     Cython bounds/wraparound/initialized checks on, C macro
                       MESHNODE_DEBUG=1, -O0 -g and assert() live (-UNDEBUG).
                       Default is the release build: checks off, cdivision, -O2.
  MESHNODE_ANNOTATE=1  also write fastpath/<name>.html (`cython -a`) to show where
                       generated code touches Python.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


DEBUG = _flag("MESHNODE_DEBUG")
ANNOTATE = _flag("MESHNODE_ANNOTATE")

if DEBUG:
    DIRECTIVES = {"boundscheck": True, "wraparound": True, "initializedcheck": True}
    MACROS = [("MESHNODE_DEBUG", "1")]
    # Later flags win over Python's own CFLAGS (-O3 -DNDEBUG in most builds).
    CFLAGS = ["-O0", "-g", "-UNDEBUG"]
else:
    DIRECTIVES = {"boundscheck": False, "wraparound": False, "cdivision": True,
                  "initializedcheck": False}
    MACROS = [("MESHNODE_DEBUG", "0")]
    CFLAGS = ["-O2"]

DIRECTIVES["language_level"] = 3

# setuptools wants sources relative to the project; pip runs us from its root.
EXTENSIONS = [
    Extension(
        f"fastpath.{pyx.stem}",
        [pyx.relative_to(ROOT).as_posix()],
        libraries=["ssl", "crypto"],
        define_macros=MACROS,
        extra_compile_args=CFLAGS,
    )
    for pyx in sorted((ROOT / "fastpath").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        # The project root, so `from fastpath.includes cimport openssl` resolves.
        include_path=[str(ROOT)],
        compiler_directives=DIRECTIVES,
        annotate=ANNOTATE,
        # Timestamps cannot tell a debug .c from a release one: always regenerate,
        # so switching MESHNODE_DEBUG never links stale code.
        force=True,
    ),
)
