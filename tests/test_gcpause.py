from __future__ import annotations

import gc
import weakref

import pytest

from inspector.gcpause import paused_collector


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_automatic_collection_is_off_inside_and_restored_after():
    assert gc.isenabled()
    with paused_collector():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with paused_collector():
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with paused_collector():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("freeze", [False, True])
def test_what_a_block_kept_is_frozen_only_where_the_process_allows_it(monkeypatch, freeze):
    """With ``freeze_after_pause`` on (the command line), the objects alive when a block ends
    are frozen, so the first collection after it does not walk them; a library's host process
    (the default) keeps them in the collector's generations, and a cycle made there is freed."""
    from inspector import gcpause

    monkeypatch.setattr(gcpause, "_freeze_after_pause", freeze)
    gc.collect()
    frozen_before = gc.get_freeze_count()
    try:
        with paused_collector():
            kept = [[i] for i in range(5_000)]
            cycle = weakref.ref(_Node())
        assert gc.isenabled()
        if freeze:
            assert gc.get_freeze_count() - frozen_before >= len(kept)
            assert gc.get_count()[0] < 100  # nothing young left for the next collection to walk
            gc.collect()
            assert cycle() is not None  # frozen garbage stays: for a process that ends with its run
        else:
            assert gc.get_freeze_count() == frozen_before
            gc.collect()
            assert cycle() is None
    finally:
        gc.unfreeze()


def test_a_tick_collects_once_enough_objects_were_made():
    """A tick collects the young generations only once ``young_objects`` container objects were
    made and kept since the last collection, however many ticks (batches) that took."""
    gc.collect()  # the count starts from zero
    with paused_collector(young_objects=5000) as collector:
        node = _Node()
        alive = weakref.ref(node)
        del node
        for _ in range(20):
            collector.tick()
        assert alive() is not None  # automatic collection is off, and few objects were made
        kept = [[] for _ in range(6000)]
        collector.tick()
        assert alive() is None
        assert collector.collections == 1
        assert gc.get_count()[0] < 5000  # the count starts again from the collection
        del kept


def test_full_collections_free_cycles_that_reached_the_old_generation():
    with paused_collector(young_objects=1, full_every=3) as collector:
        node = _Node()
        alive = weakref.ref(node)
        collector.tick()  # a young collection: the live cycle moves up a generation
        gc.collect(1)  # and once more: it is in the oldest generation now
        del node
        _Node()  # one object made since: the next tick is due
        collector.tick()
        assert alive() is not None  # young collections do not look at the old generation
        _Node()
        collector.tick()  # the third collection is a full one
        assert alive() is None
        assert collector.collections == 3


def test_the_allocator_keeps_freed_heap_where_glibc_runs():
    """``reuse_freed_heap`` sets glibc's two thresholds (in a fresh interpreter: it changes the
    process for good); a C library without ``mallopt`` gets False, not an error."""
    import platform
    import subprocess
    import sys

    code = "from inspector import gcpause; print(gcpause.reuse_freed_heap())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("True" if platform.libc_ver()[0] == "glibc" else out)
    assert out in ("True", "False")
