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


def test_ticks_still_free_cycles_made_inside():
    with paused_collector(every=2) as collector:
        node = _Node()
        alive = weakref.ref(node)
        del node
        collector.tick()
        assert alive() is not None  # automatic collection is off and one tick is not enough
        collector.tick()
        assert alive() is None


def test_full_collections_free_cycles_that_reached_the_old_generation():
    with paused_collector(every=1, full_every=3) as collector:
        node = _Node()
        alive = weakref.ref(node)
        collector.tick()  # a young collection: the live cycle moves up a generation
        gc.collect(1)  # and once more: it is in the oldest generation now
        del node
        collector.tick()
        assert alive() is not None  # young collections do not look at the old generation
        collector.tick()  # the third tick is a full collection
        assert alive() is None


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
