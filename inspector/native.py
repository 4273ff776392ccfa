"""Which modules are compiled to C, and the guard that never lets a stale build run.

The dissectors are per-packet Python: on the benchmark capture they are about 40% of a
one-process run, and what the dissect workers of a parallel run spend their time on. When the
package is built (``setup.py``), ``NATIVE_MODULES`` are compiled with mypyc, the mypy project's
compiler for type-annotated Python: the same source becomes a C extension that runs it 2-3x
faster and checks the annotations at run time. The build needs mypy and a C compiler; without
them, or if compiling fails, the package installs as plain Python, which stays the reference:
``INSPECTOR_PURE=1`` runs it, and the test suite runs the dissector tests both ways.

Next to the compiled files the build writes ``SOURCES_FILE``: each compiled module's source
SHA-256 at build time. ``select()`` (called once, when ``inspector`` is imported) uses the
compiled modules only when every one of them is there and every source is unchanged since the
build. Otherwise (an editable install whose sources were edited or checked out since, a partial
build) it loads all of them from source and says so once on stderr. It is all or none: mypyc
compiles the modules as one group whose calls between modules go straight to C.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

#: Modules compiled by ``setup.py``: the dissectors, and the per-flow and per-stream Python of
#: the flow table, the finished-flow store and the collectors.
NATIVE_MODULES = (
    "inspector.flows",
    "inspector.flowstore",
    "inspector.collect",
    "inspector.media_stats",
    "inspector.facts",
    "inspector.payloads",
    "inspector.naming",
    "inspector.dissect.detectors",
    "inspector.dissect.dns",
    "inspector.dissect.dtls",
    "inspector.dissect.gquic",
    "inspector.dissect.http",
    "inspector.dissect.media",
    "inspector.dissect.quic",
    "inspector.dissect.rtp",
    "inspector.dissect.stun",
    "inspector.dissect.tls",
    "inspector.dissect.whatsapp",
    "inspector.dissect.zoom",
)
#: Written by the build beside the compiled modules: "<module> <sha256 of its source>" per line.
SOURCES_FILE = "_native_sources.txt"
#: Set to 1 to run the pure-Python modules even when compiled ones are installed.
PURE_ENV = "INSPECTOR_PURE"

_PACKAGE_DIR = Path(__file__).resolve().parent
#: How this process runs NATIVE_MODULES, set by ``select()``: "compiled", "pure" (no compiled
#: build installed), "pure (INSPECTOR_PURE=1)" or "pure (stale build: ...)".
mode = "pure"


def source_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    """The ``.py`` file of one of ``NATIVE_MODULES``."""
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compiled_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path | None:
    base = source_path(module, package_dir).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def _recorded_digests(package_dir: Path) -> dict[str, str] | None:
    try:
        text = (package_dir / SOURCES_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    digests = {}
    for line in text.splitlines():
        module, _, digest = line.partition(" ")
        digests[module] = digest.strip()
    return digests


def why_stale(package_dir: Path = _PACKAGE_DIR) -> str:
    """Why the compiled modules installed in ``package_dir`` must not run ("" when they may)."""
    missing = [m for m in NATIVE_MODULES if _compiled_path(m, package_dir) is None]
    if missing:
        return f"{missing[0]} was not compiled"
    recorded = _recorded_digests(package_dir)
    if recorded is None:
        return f"{SOURCES_FILE} is missing"
    for module in NATIVE_MODULES:
        source = source_path(module, package_dir)
        if recorded.get(module) != source_digest(source):
            return f"{source.relative_to(package_dir)} changed since the build"
    return ""


class _FromSource:
    """A meta path finder that loads ``NATIVE_MODULES`` from their ``.py`` files."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None):
        if fullname not in NATIVE_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def select() -> str:
    """Decide, before any of them is imported, whether ``NATIVE_MODULES`` run compiled."""
    global mode
    if not any(_compiled_path(m) is not None for m in NATIVE_MODULES):
        mode = "pure"
        return mode
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        mode = f"pure ({PURE_ENV}=1)"
    else:
        why = why_stale()
        if not why:
            mode = "compiled"
            return mode
        mode = f"pure (stale build: {why})"
        sys.stderr.write(
            f"inspector: running the pure-Python dissectors: {why}; reinstall to rebuild "
            f"(pip install -e .)\n"
        )
    if not any(isinstance(finder, _FromSource) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FromSource())
    return mode
