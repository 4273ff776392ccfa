"""Keep CPython's cyclic garbage collector off the packet path.

The automatic collector runs after every ~700 net allocations and, every so often, walks every
tracked object; a capture keeps tens of thousands of flows, dissectors and facts alive, so those
walks cost ~8% of a full analysis (measured on the 1 M-packet benchmark: 14.7 s -> 13.5 s with the
collector off) while finding almost nothing, since the stages free their objects by reference
count. ``paused_collector`` switches automatic collection off for a block; its ``tick()`` (once
a batch in the pipeline and in each dissect worker) collects the young generations once
``young_objects`` container objects have been made and not freed since the last collection
(``gc.get_count()[0]``), and makes every ``full_every``-th of those collections a full one, so a
reference cycle made meanwhile (an exception's traceback, a parser's back-references) is still
freed during a long live capture, one that lived long enough to reach the old generation too.

The rule counts objects, not batches, so it bounds what cyclic garbage can hold whatever the
batch size (a live capture's batches are small) and costs nothing where nothing accumulates. A
young collection walks every object made since the last one that is still alive: collecting
every 16 batches (the rule until the twenty-third session) cost, on the 1 M-packet benchmark,
35-40 ms in a one-process run and 24-82 ms in each dissect worker and the reader of a
two-worker run, once near its end, and found nothing; on the capture 4.15x longer the
collections found 404 objects in the first (garbage of the start-up) and none in the seven
after. ``YOUNG_COLLECTION_OBJECTS`` container objects, at ~100-200 bytes each, hold ~25-50 MB
were every one of them garbage; the benchmark's processes reach 54-115 k of them in its 16
batches, so none of them collects.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Container objects made and not freed since the last collection that make a young-generation
#: collection due (checked once a batch).
YOUNG_COLLECTION_OBJECTS = 250_000
#: Every this many young collections, a full one instead.
FULL_COLLECTION_EVERY = 4


class _Ticker:
    __slots__ = ("young_objects", "full_every", "collections")

    def __init__(self, young_objects: int, full_every: int) -> None:
        self.young_objects = young_objects
        self.full_every = full_every
        self.collections = 0

    def tick(self) -> None:
        if gc.get_count()[0] < self.young_objects:
            return
        self.collections += 1
        if self.collections % self.full_every == 0:
            gc.collect()
        else:
            gc.collect(1)


@contextmanager
def paused_collector(
    young_objects: int = YOUNG_COLLECTION_OBJECTS, full_every: int = FULL_COLLECTION_EVERY
) -> Iterator[_Ticker]:
    """Automatic collection off inside the block (restored after, even on error); the objects
    alive at its end frozen first where the process allows it (``freeze_after_pause``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield _Ticker(young_objects, full_every)
    finally:
        if _freeze_after_pause:
            gc.freeze()
        if was_enabled:
            gc.enable()


#: Whether ``paused_collector`` freezes the objects alive at the end of its block
#: (``freeze_after_pause``).
_freeze_after_pause = False


def freeze_after_pause() -> None:
    """From now on, the objects alive when a ``paused_collector`` block ends are frozen
    (``gc.freeze``) before automatic collection resumes.

    Why: a block makes up to ``YOUNG_COLLECTION_OBJECTS`` container objects without a tick
    collecting them (the benchmark's processes make 54-115 k in their packet loops), and the
    first allocation after it, the collector back on, starts a young collection that walks every
    one: measured on the 1 M-packet benchmark, 27-33 ms once after the packet loop of a
    one-process run, 14-28 ms in each dissect worker and ~20 ms in the reader of a two-worker
    run, each finding a few hundred objects of garbage (the start-up's). Frozen, they are never
    walked again; what is made after the block is collected as before. Objects freed by
    reference count (nearly all: the stages hold no cycles) are freed as before.
    Weakness: cyclic garbage among the frozen objects is never collected, so this is for a
    process that ends when its run does (``cli.main``), not a library's host process.
    """
    global _freeze_after_pause
    _freeze_after_pause = True


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
