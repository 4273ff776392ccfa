"""Shared fixtures. Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NDPI_DIR = SHARED / "captures" / "real" / "ndpi"


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
