"""Build: the package, plus its dissectors compiled with mypyc when that is possible.

Metadata lives in pyproject.toml. This file only adds the optional compiled modules
(``inspector/native.py`` says which and why). Compiling needs mypy (a build requirement in
pyproject.toml) and a C compiler; if either is missing or compiling fails, the build says so
and the package installs as plain Python, which behaves the same, only slower.
``INSPECTOR_PURE=1`` at build time skips compiling.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _native_constant(name: str):
    """A literal assigned in inspector/native.py, read without importing the package (its
    dependencies are not installed in the isolated build environment)."""
    tree = ast.parse((ROOT / "inspector" / "native.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.literal_eval(node.value)
    raise LookupError(f"inspector/native.py defines no {name}")


NATIVE_MODULES: tuple[str, ...] = _native_constant("NATIVE_MODULES")
SOURCES_FILE: str = _native_constant("SOURCES_FILE")
PURE_ENV: str = _native_constant("PURE_ENV")


def _source(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def _wanted() -> bool:
    return os.environ.get(PURE_ENV, "") in ("", "0")


class OptionalNativeBuild(build_ext):
    """build_ext that compiles NATIVE_MODULES with mypyc, falling back to pure Python.

    mypyc runs when this command is set up rather than when setup.py is loaded: pip loads
    setup.py several times (metadata, then the build), and type-checking and generating C takes
    half a minute.
    """

    def finalize_options(self) -> None:
        self.extensions = self._native_extensions()
        self.distribution.ext_modules = self.extensions
        super().finalize_options()

    def _native_extensions(self) -> list:
        if not _wanted():
            print(f"inspector: {PURE_ENV} is set: installing the pure-Python dissectors", file=sys.stderr)
            return []
        try:
            from mypyc.build import mypycify

            return mypycify(
                ["--ignore-missing-imports", "--follow-imports=silent"]
                + [str(_source(m)) for m in NATIVE_MODULES],
                opt_level="3",
                # The group's shared library goes inside the package, beside its modules.
                group_name="inspector._native_group",
                target_dir=str(ROOT / "build" / "mypyc"),
            )
        except (Exception, SystemExit) as e:  # noqa: BLE001 - mypyc exits on type errors
            return self._fall_back(e)

    def _fall_back(self, e: BaseException) -> list:
        print(
            f"inspector: compiling the dissectors failed ({type(e).__name__}: {e}); "
            "installing them as pure Python",
            file=sys.stderr,
        )
        self.extensions = []
        return []

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - no C compiler, or it failed
            self._fall_back(e)
            return
        self._write_sources_file()

    def _write_sources_file(self) -> None:
        """``inspector/native.py`` runs the compiled modules only while their sources still
        match these digests."""
        lines = [
            f"{m} {hashlib.sha256((ROOT / _source(m)).read_bytes()).hexdigest()}\n" for m in NATIVE_MODULES
        ]
        package_dir = Path(self.get_ext_fullpath(NATIVE_MODULES[0])).parent
        while package_dir.name != "inspector":
            package_dir = package_dir.parent
        (package_dir / SOURCES_FILE).write_text("".join(lines), encoding="utf-8")

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if self.extensions:
            package_dir = Path(self.get_ext_fullpath(NATIVE_MODULES[0])).parent
            while package_dir.name != "inspector":
                package_dir = package_dir.parent
            outputs.append(str(package_dir / SOURCES_FILE))
        return outputs


#: Shipped beside the code at the repository root; a wheel carries copies (inspector/bundled.py).
BUNDLED = ("signatures", "captures/sample-call.pcapng", "captures/README.md")


class BuildWithBundledFiles(build_py):
    """build_py that copies the signature set and the sample capture into a wheel's package
    (``inspector/_bundled/``). An editable install reads them where they are."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "inspector" / "_bundled"
        for relative in BUNDLED:
            source = ROOT / relative
            if source.is_dir():
                self.copy_tree(str(source), str(target / relative))
            elif source.is_file():
                self.mkpath(str((target / relative).parent))
                self.copy_file(str(source), str(target / relative))


class BinaryDistribution(Distribution):
    """Always run build_ext (it decides whether to compile): the extension list is only known
    once mypyc has run."""

    def has_ext_modules(self) -> bool:
        return _wanted()


setup(cmdclass={"build_ext": OptionalNativeBuild, "build_py": BuildWithBundledFiles}, distclass=BinaryDistribution)
