"""Files the project ships beside the code: the built-in signature set and the sample capture.

In a checkout, and in an editable install, they sit at the repository root (``signatures/``,
``captures/``), where they are edited. A wheel (``pip install .``) carries copies inside the
package, in ``inspector/_bundled/`` (``setup.py`` copies them when it builds one).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled(relative: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    """The repository's ``relative`` path, or the wheel's copy when there is no checkout."""
    in_checkout = package_dir.parent / relative
    if in_checkout.exists():
        return in_checkout
    return package_dir / "_bundled" / relative
