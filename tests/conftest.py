"""Shared fixtures. Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector import native

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NDPI_DIR = SHARED / "captures" / "real" / "ndpi"


#: For tests that replace a module-level function of a dissector module: callers compiled with
#: mypyc (inspector.native) call it directly and never see the stand-in. scripts/test runs the
#: dissector tests a second time on the pure-Python modules, where these run.
pure_python_only = pytest.mark.skipif(
    native.mode == "compiled",
    reason="patches a function that the mypyc-compiled callers call directly; "
    "runs in the INSPECTOR_PURE=1 pass of scripts/test",
)


@pytest.fixture(scope="session")
def ndpi_dir() -> Path:
    """The real nDPI captures; skips the test when ../shared is not beside the repository."""
    if not NDPI_DIR.is_dir():
        pytest.skip(f"{NDPI_DIR} is absent: the shared captures are not beside this checkout")
    return NDPI_DIR


def pytest_addoption(parser):
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/<capture>.flows.csv from the current pipeline instead of comparing",
    )


@pytest.fixture(scope="session")
def ndpi_analyses(ndpi_dir):
    """capture file name -> flows DataFrame of the full pipeline (naming, classification), computed
    once per test session and shared by the accuracy and golden tests (~5 s for the whole set)."""
    import inspector

    return {path.name: inspector.analyze([path]).flows for path in sorted(ndpi_dir.glob("*.pcap*"))}


@pytest.fixture
def forked_starts(monkeypatch) -> list[str]:
    """What each ``forked.start`` of the test was asked to build, in order (the processes still
    run)."""
    from inspector import forked

    started: list[str] = []
    start = forked.start

    def counting(what, *args):
        started.append(what)
        return start(what, *args)

    monkeypatch.setattr(forked, "start", counting)
    return started
