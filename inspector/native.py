"""Which modules are compiled to C, and the guard that never lets a stale build run.

The dissectors are per-packet Python: on the benchmark capture they are about 40% of a
one-process run, and what the dissect workers of a parallel run spend their time on. When the
package is built (``setup.py``), ``NATIVE_MODULES`` are compiled with mypyc, the mypy project's
compiler for type-annotated Python: the same source becomes a C extension that runs it 2-3x
faster and checks the annotations at run time. The build needs mypy (pip installs it for the
build) and a C compiler; without the compiler, or if compiling fails, the package installs as
plain Python, which stays the reference: ``INSPECTOR_PURE=1`` runs it, and the test suite runs
the dissector tests both ways.

Next to the compiled files the build writes ``SOURCES_FILE``: the interpreter's extension suffix
and each compiled module's source SHA-256 at build time. ``select()`` (called once, when
``inspector`` is imported) uses the compiled modules only when they are exactly the ones the
build compiled, built for this interpreter, with every source unchanged since. Otherwise (an
editable install whose sources were edited or checked out since, a module dropped from the
list, a partial build, another Python) it loads every module that has an extension from
source and says so once on stderr. It is all or none: mypyc compiles the
modules as one group whose calls between modules go straight to C.

Compiled classes differ in one way the code must respect: they do not pickle or copy unless
they define ``__reduce__`` (``RunningStreams``). What crosses between processes is plain
tuples, lists and arrays (``flows.identity_columns`` for ended flows), or a class with its own
``__reduce__``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

#: Modules compiled by ``setup.py``: the record walk, the dissectors, and the per-flow and
#: per-stream Python of the flow table, the flows' facts, signature lookups and labels, the
#: finished-flow store, the collectors and the media table (``media``: 0.125 -> 0.094 s on the
#: benchmark capture).
NATIVE_MODULES = (
    "inspector.capture.chain",
    "inspector.facts",
    "inspector.classify",
    "inspector.signatures",
    "inspector.labels",
    "inspector.flows",
    "inspector.flowstore",
    "inspector.collect",
    "inspector.media_stats",
    "inspector.media",
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
#: Written by the build beside the compiled modules: "suffix <extension suffix>" (the
#: interpreter they were built for), then "<module> <sha256 of its source>" per compiled module.
SOURCES_FILE = "_native_sources.txt"
#: Set to 1 to run the pure-Python modules even when compiled ones are installed.
PURE_ENV = "INSPECTOR_PURE"

_PACKAGE_DIR = Path(__file__).resolve().parent
#: How this process runs NATIVE_MODULES, set by ``select()``: "compiled", "pure" (no compiled
#: build installed), "pure (INSPECTOR_PURE=1)" or "pure (stale build: ...)".
mode = "pure"


def source_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    """The ``.py`` file of a module of the package."""
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_modules(package_dir: Path = _PACKAGE_DIR) -> set[str]:
    """Every module of the package that has a compiled extension beside it, whether or not
    ``NATIVE_MODULES`` lists it now (Python imports an extension ahead of the ``.py``), the
    group's shared library aside."""
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    found = set()
    for path in package_dir.rglob("*"):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is None:
            continue
        stem = path.name[: -len(suffix)]
        if "." in stem or stem.endswith("__mypyc"):
            continue
        found.add(".".join(("inspector", *path.relative_to(package_dir).parent.parts, stem)))
    return found


def _build_record(package_dir: Path) -> tuple[str, dict[str, str]] | None:
    """(extension suffix, {module: source digest}) as the build wrote them; None if absent."""
    try:
        text = (package_dir / SOURCES_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    suffix, digests = "", {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "suffix":
            suffix = value.strip()
        elif key:
            digests[key] = value.strip()
    return suffix, digests


def why_stale(package_dir: Path = _PACKAGE_DIR) -> str:
    """Why the compiled modules installed in ``package_dir`` must not run ("" when they may):
    every module the build compiled, and only those, has its extension, built for this
    interpreter, and every one's source is unchanged since; ``NATIVE_MODULES`` are all among
    them."""
    record = _build_record(package_dir)
    if record is None:
        return f"{SOURCES_FILE} is missing"
    suffix, digests = record
    if suffix != importlib.machinery.EXTENSION_SUFFIXES[0]:
        return f"it was built for another Python ({suffix or 'unknown'})"
    present = compiled_modules(package_dir)
    for module in sorted(set(NATIVE_MODULES) | set(digests)):
        if module not in present:
            return f"{module} was not compiled"
    for module in sorted(present - set(digests)):
        return f"{module} is compiled but not part of the build"
    for module, digest in sorted(digests.items()):
        source = source_path(module, package_dir)
        try:
            same = source_digest(source) == digest
        except OSError:
            same = False
        if not same:
            return f"{source.relative_to(package_dir)} changed since the build"
    return ""


class _FromSource:
    """A meta path finder that loads the given modules from their ``.py`` files."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in self.modules:
            return None
        source = source_path(fullname)
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def select() -> str:
    """Decide, before any of them is imported, whether the compiled modules run."""
    global mode
    present = compiled_modules()
    if not present:
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
    # Only a module with an extension beside it needs redirecting: any other loads from source.
    if not any(isinstance(finder, _FromSource) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FromSource(present))
    return mode
