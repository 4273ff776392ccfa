"""Keep CPython's cyclic garbage collector off the packet path.

The automatic collector runs after every ~700 net allocations and, every so often, walks every
tracked object; a capture keeps tens of thousands of flows, dissectors and facts alive, so those
walks cost ~8% of a full analysis (measured on the 1 M-packet benchmark: 14.7 s -> 13.5 s with the
collector off) while finding almost nothing, since the stages free their objects by reference
count. ``paused_collector`` switches automatic collection off for a block and instead collects
the young generations every ``every`` calls of ``tick()`` (once a batch in the pipeline), so
reference cycles made meanwhile (an exception's traceback, a parser's back-references) are still
freed during a long live capture, and runs a full collection every ``full_every`` ticks, so a
cycle that lived long enough to reach the old generation is freed too (a live capture may run for
days). One full collection with ~10^5 live flows takes tens of milliseconds; once every 64 batches
of 64 Ki packets it is noise. A young collection walks every object made since the last one that
is still alive (the active flows' dissectors): every 4 batches that cost ~0.1 s of CPU per process
on the benchmark capture, every 16 a third of it. Cycles are rare here (the stages free their
objects by reference count), so waiting 16 batches (1 Mi packets) for them costs little memory.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Batches between two young-generation collections (64 Ki packets a batch by default).
YOUNG_COLLECTION_EVERY = 16
#: Batches between two full collections.
FULL_COLLECTION_EVERY = 64


class _Ticker:
    __slots__ = ("every", "full_every", "count")

    def __init__(self, every: int, full_every: int) -> None:
        self.every = every
        self.full_every = full_every
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count % self.full_every == 0:
            gc.collect()
        elif self.count % self.every == 0:
            gc.collect(1)


@contextmanager
def paused_collector(
    every: int = YOUNG_COLLECTION_EVERY, full_every: int = FULL_COLLECTION_EVERY
) -> Iterator[_Ticker]:
    """Automatic collection off inside the block (restored after, even on error)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield _Ticker(every, full_every)
    finally:
        if was_enabled:
            gc.enable()


#: Whether ``before_fork`` freezes the collector's objects (``freeze_at_fork``).
_freeze_at_fork = False


def freeze_at_fork() -> None:
    """From now on, the objects alive when ``forked.start`` forks a child are frozen
    (``gc.freeze``): moved out of the collector's generations, so the collections of the rest
    of the run never walk them again, and never write to their headers, which would copy each of
    their pages shared with the child (the use the Python documentation gives for
    ``gc.freeze``). Cyclic garbage among them is then never collected: for a program that ends
    when its run does (``cli.analyze``), not a library's host process. Measured on the benchmark
    with two workers, 10 alternating runs: 3.12 -> 3.06 s, CPU 5.64 -> 5.56 s (the reader's last
    young collection, after the input's hashing process is forked, then finds nothing to walk).
    """
    global _freeze_at_fork
    _freeze_at_fork = True


def before_fork() -> None:
    """Called by ``forked.start`` just before it forks (see ``freeze_at_fork``)."""
    if _freeze_at_fork:
        gc.freeze()


def return_free_memory() -> bool:
    """Hand the C allocator's free heap pages back to the system (glibc ``malloc_trim(0)``).

    The packet path allocates and frees many batch-sized numpy temporaries; glibc keeps the
    freed heap memory for reuse instead of returning it, so between the packet stage and the
    table building (which needs different sizes) ~25 MB of it sat idle in the process's resident
    set on the benchmark capture. Called at those stage boundaries; a no-op (False) where the C
    library has no ``malloc_trim`` (musl, macOS).
    """
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


_libc_functions: dict[str, Any] = {}


def _libc_function(name: str) -> Any:
    """The C library's function ``name`` through ctypes, or None where it has none (musl and
    macOS have neither ``malloc_trim`` nor ``mallopt``); looked up once."""
    if name not in _libc_functions:
        try:
            import ctypes

            _libc_functions[name] = getattr(ctypes.CDLL(None), name)
        except (OSError, AttributeError):
            _libc_functions[name] = None
    return _libc_functions[name]


#: glibc's ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks of at least this many bytes come from their own ``mmap`` (glibc's default 128 KiB,
#: raised by itself as blocks are freed, up to 32 MiB).
HEAP_MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap beyond this goes back to the system (default 128 KiB,
#: following the mmap threshold).
HEAP_TRIM_THRESHOLD = 256 * 1024 * 1024


def reuse_freed_heap() -> bool:
    """Have glibc's malloc keep freed memory for the next blocks instead of returning it.

    A batch's numpy temporaries are 64 Ki values, 512 KiB at 8 bytes: each came from its own
    ``mmap`` or from a heap top trimmed when it was freed, so the next one faulted its pages in
    again, ~2 µs a page on this VM. With fixed thresholds (``HEAP_MMAP_THRESHOLD``,
    ``HEAP_TRIM_THRESHOLD``) they reuse the heap; ``return_free_memory`` still hands it back at
    the stage boundaries. Measured on the benchmark with two workers, 10 alternating runs: page
    faults 167 k -> 138 k, 3.05 -> 3.00 s; peak memory +1 to +7 MB (the 5× capture in one
    process: 257 -> 265 MB). Called by the command line for its own process and the ones it
    forks; False where the C library has no ``mallopt``.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
