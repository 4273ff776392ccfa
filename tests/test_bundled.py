"""``bundled``: the signature set and sample capture, from a checkout or from a wheel."""

from __future__ import annotations

from pathlib import Path

from inspector.bundled import bundled
from inspector.cli import SAMPLE_CAPTURE
from inspector.signatures import BUILTIN_DIR

REPO = Path(__file__).resolve().parents[1]


def test_a_checkout_uses_its_own_files() -> None:
    assert BUILTIN_DIR == REPO / "signatures" and BUILTIN_DIR.is_dir()
    assert SAMPLE_CAPTURE == REPO / "captures" / "sample-call.pcapng" and SAMPLE_CAPTURE.is_file()


def test_an_installed_wheel_uses_the_copies_in_the_package(tmp_path: Path) -> None:
    # site-packages/inspector has no repository beside it: setup.py put the copies inside.
    package = tmp_path / "site-packages" / "inspector"
    (package / "_bundled" / "signatures").mkdir(parents=True)
    assert bundled("signatures", package) == package / "_bundled" / "signatures"
    assert bundled("captures/sample-call.pcapng", package) == package / "_bundled" / "captures" / "sample-call.pcapng"


def test_the_checkout_wins_over_a_copy(tmp_path: Path) -> None:
    package = tmp_path / "repo" / "inspector"
    (package / "_bundled" / "signatures").mkdir(parents=True)
    (tmp_path / "repo" / "signatures").mkdir()
    assert bundled("signatures", package) == tmp_path / "repo" / "signatures"
