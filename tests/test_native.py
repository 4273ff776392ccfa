"""``inspector.native``: compiled modules run only when they match their sources, and give the
same tables as the pure-Python modules."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inspector import native

REPO = Path(__file__).resolve().parents[1]


SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _compile(package_dir: Path, module: str) -> Path:
    """A source and a (dummy) compiled file for ``module``."""
    source = native.source_path(module, package_dir)
    source.parent.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        source.write_text(f"# {module}\n", encoding="utf-8")
    compiled = source.with_suffix("")
    compiled.with_name(compiled.name + SUFFIX).write_bytes(b"")
    return source


def _fake_build(package_dir: Path, suffix: str = SUFFIX) -> None:
    """A package tree as setup.py leaves it: every listed module compiled, the group's shared
    library, and the build record."""
    lines = [f"suffix {suffix}\n"]
    for module in native.NATIVE_MODULES:
        source = _compile(package_dir, module)
        lines.append(f"{module} {native.source_digest(source)}\n")
    (package_dir / f"_native_group__mypyc{SUFFIX}").write_bytes(b"")
    (package_dir / native.SOURCES_FILE).write_text("".join(lines), encoding="utf-8")


def test_a_build_matching_its_sources_may_run(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    assert native.why_stale(tmp_path) == ""


def test_an_edited_source_makes_the_build_stale(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    native.source_path("inspector.dissect.stun", tmp_path).write_text("# edited\n", encoding="utf-8")
    assert native.why_stale(tmp_path) == "dissect/stun.py changed since the build"


def test_a_partial_build_is_stale(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    for path in (tmp_path / "dissect").glob("tls.*"):
        if path.suffix != ".py":
            path.unlink()
    assert native.why_stale(tmp_path) == "inspector.dissect.tls was not compiled"


def test_a_build_without_its_digests_is_stale(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    (tmp_path / native.SOURCES_FILE).unlink()
    assert native.why_stale(tmp_path) == f"{native.SOURCES_FILE} is missing"


def test_an_extension_the_build_did_not_make_is_stale(tmp_path: Path) -> None:
    # A module dropped from NATIVE_MODULES, or an older checkout beside a newer build: Python
    # would import the extension ahead of the source.
    _fake_build(tmp_path)
    _compile(tmp_path, "inspector.summarize")
    assert native.compiled_modules(tmp_path) == set(native.NATIVE_MODULES) | {"inspector.summarize"}
    assert native.why_stale(tmp_path) == "inspector.summarize is compiled but not part of the build"


def test_a_build_for_another_python_is_stale(tmp_path: Path) -> None:
    _fake_build(tmp_path, suffix=".cpython-399-x86_64-linux-gnu.so")
    assert native.why_stale(tmp_path) == "it was built for another Python (.cpython-399-x86_64-linux-gnu.so)"


def test_a_missing_source_is_stale_not_an_error(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    native.source_path("inspector.dissect.rtp", tmp_path).unlink()
    assert native.why_stale(tmp_path) == "dissect/rtp.py changed since the build"


def _module_files(env_pure: str | None) -> tuple[str, list[str]]:
    env = dict(os.environ)
    env.pop(native.PURE_ENV, None)
    if env_pure is not None:
        env[native.PURE_ENV] = env_pure
    code = (
        "import importlib, inspector.native as n\n"
        "print(n.mode)\n"
        "for m in n.NATIVE_MODULES: print(importlib.import_module(m).__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    mode, *files = out.stdout.splitlines()
    return mode, files


@pytest.mark.skipif(
    os.environ.get("INSPECTOR_EXPECT_COMPILED") != "1",
    reason="scripts/test sets INSPECTOR_EXPECT_COMPILED=1 when a C compiler is present",
)
def test_the_build_compiled_the_dissectors() -> None:
    assert native.mode == "compiled", f"dissectors: {native.mode} (see pip's build output)"


def test_inspector_pure_loads_every_module_from_source() -> None:
    mode, files = _module_files("1")
    assert mode in ("pure", f"pure ({native.PURE_ENV}=1)")
    assert len(files) == len(native.NATIVE_MODULES)
    assert all(f.endswith(".py") for f in files)


def test_the_mode_is_all_or_none() -> None:
    mode, files = _module_files(None)
    compiled = [not f.endswith(".py") for f in files]
    assert all(compiled) if mode == "compiled" else not any(compiled), (mode, files)


@pytest.mark.skipif(native.mode != "compiled", reason="the compiled modules are not in use (a pure-Python install or run)")
def test_compiled_and_pure_write_the_same_tables(ndpi_dir: Path, tmp_path: Path) -> None:
    # Every real capture: every dissector, with the quirks of real traffic.
    captures = [str(path) for path in sorted(ndpi_dir.glob("*.pcap*"))]
    assert len(captures) > 40
    outputs = {}
    for label, pure in (("compiled", None), ("pure", "1")):
        env = dict(os.environ)
        env.pop(native.PURE_ENV, None)
        if pure is not None:
            env[native.PURE_ENV] = pure
        out = tmp_path / label
        subprocess.run(
            [sys.executable, "-m", "inspector", "analyze", *captures, "-o", str(out), "-q", "-w", "1"],
            env=env, cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        outputs[label] = {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}
    assert set(outputs["compiled"]) == {"flows.csv", "sessions.csv", "destinations.csv", "media.csv"}
    for name, data in outputs["compiled"].items():
        assert data == outputs["pure"][name], name
