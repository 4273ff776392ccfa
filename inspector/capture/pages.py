"""Releasing the pages of a read-only file mapping from the process's resident set.

A page of a mapped file counts in the resident set of every process that has touched it, until
the process unmaps it. ``madvise(MADV_DONTNEED)`` on a shared file mapping only unmaps the pages
from this process: the page cache keeps them, and reading them again faults them back in, so
correctness never depends on it (Linux madvise(2)). The capture reader (``files.py``), its
workers (``parallel.py``) and the early hashing process (``prehash.py``) release what they have
read, so a process's memory is bounded by what it holds now, not by the file.
"""

from __future__ import annotations

import mmap


def drop_pages(mapping: mmap.mmap, start: int, end: int) -> None:
    """madvise(MADV_DONTNEED) the whole pages inside [start, end) of a read-only file mapping
    (a no-op where the platform has no MADV_DONTNEED)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    page = mmap.PAGESIZE
    lo = -(-start // page) * page  # whole pages only: a partial page may hold unread bytes
    hi = (end // page) * page
    if hi > lo:
        try:
            mapping.madvise(advice, lo, hi - lo)
        except (OSError, ValueError):
            pass
