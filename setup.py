"""Build: the package, plus its dissectors compiled with mypyc when that is possible.

Metadata lives in pyproject.toml. This file only adds the optional compiled modules
(``inspector/native.py`` says which and why). Compiling needs mypy (a build requirement in
pyproject.toml, which pip installs for the build) and a C compiler; if the compiler is missing
or compiling fails, the build says so and the package installs as plain Python, which behaves
the same, only slower. ``INSPECTOR_PURE=1`` at build time skips compiling.
"""

from __future__ import annotations

import ast
import compileall
import hashlib
import importlib.machinery
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


#: Commands that build the package; others (egg_info, dist_info, sdist) only need its metadata.
_BUILDING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop", "bdist_egg"}


class OptionalNativeBuild(build_ext):
    """build_ext that compiles NATIVE_MODULES with mypyc, falling back to pure Python.

    mypyc runs when this command is set up for a build, not when setup.py is loaded nor for the
    metadata steps: pip loads setup.py several times, and type-checking and generating C takes
    half a minute. Every build first removes what an earlier build left in the package
    (extensions, the digests file), so a pure install or a smaller set of compiled modules
    leaves no stale extension behind.
    """

    def finalize_options(self) -> None:
        self.extensions = self._native_extensions()
        self.distribution.ext_modules = self.extensions
        super().finalize_options()

    def _native_extensions(self) -> list:
        if not _BUILDING.intersection(self.distribution.commands):
            return []
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

    def _package_dir(self) -> Path:
        """Where this build puts the package's compiled files (in place for an editable
        install, else the build directory)."""
        return Path(self.get_ext_fullpath("inspector.native")).parent

    def _clear_previous_build(self) -> None:
        package_dir = self._package_dir()
        (package_dir / SOURCES_FILE).unlink(missing_ok=True)
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        for path in package_dir.rglob("*"):
            if path.name.endswith(suffixes) and path.is_file():
                path.unlink()

    def run(self) -> None:
        self._clear_previous_build()
        if not self.extensions:
            return
        try:
            super().run()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - no C compiler, or it failed
            self._fall_back(e)
            self._clear_previous_build()  # no partial build either
            return
        self._write_sources_file()

    def _write_sources_file(self) -> None:
        """``inspector/native.py`` runs the compiled modules only for this interpreter and while
        their sources still match these digests."""
        lines = [f"suffix {importlib.machinery.EXTENSION_SUFFIXES[0]}\n"] + [
            f"{m} {hashlib.sha256((ROOT / _source(m)).read_bytes()).hexdigest()}\n" for m in NATIVE_MODULES
        ]
        (self._package_dir() / SOURCES_FILE).write_text("".join(lines), encoding="utf-8")

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if self.extensions:
            outputs.append(str(self._package_dir() / SOURCES_FILE))
        return outputs


#: Shipped beside the code at the repository root; a wheel carries copies (inspector/bundled.py).
BUNDLED = ("signatures", "captures/sample-call.pcapng", "captures/README.md")


class BuildWithBundledFiles(build_py):
    """build_py that copies the signature set and the sample capture into a wheel's package
    (``inspector/_bundled/``). An editable install reads them where they are."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # The install imports the sources where they are. pip byte-compiles the files a
            # normal install copies; here that is the source tree's __pycache__, so a run does
            # not compile every module again where writing bytecode is off
            # (PYTHONDONTWRITEBYTECODE): ~0.07 s a run. Python checks each cached file against
            # its source's size and time, so an edited module is compiled afresh, never stale.
            compileall.compile_dir(str(ROOT / "inspector"), quiet=1)
            return
        target = Path(self.build_lib) / "inspector" / "_bundled"
        for relative in BUNDLED:
            source = ROOT / relative
            if source.is_dir():
                self.copy_tree(str(source), str(target / relative))
            elif source.is_file():
                self.mkpath(str((target / relative).parent))
                self.copy_file(str(source), str(target / relative))
            else:  # an sdist without them (MANIFEST.in) would make a wheel that cannot run
                raise FileNotFoundError(f"{source}: missing, and a wheel must carry it")


class BinaryDistribution(Distribution):
    """Always run build_ext: it decides whether to compile (the extension list is only known
    once mypyc has run), and clears what an earlier build left."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_ext": OptionalNativeBuild, "build_py": BuildWithBundledFiles}, distclass=BinaryDistribution)
