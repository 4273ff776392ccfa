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
