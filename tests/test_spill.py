"""Records parked on disk while a capture is read come back whole and in order."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from inspector.errors import InspectorError
from inspector.spill import PartitionedRecords

DTYPE = np.dtype([("a", "<i8"), ("b", "<u4")])


def _part(start: int, n: int) -> np.ndarray:
    part = np.zeros(n, dtype=DTYPE)
    part["a"] = np.arange(start, start + n)
    part["b"] = (np.arange(start, start + n) * 7) % 1000
    return part


def test_parts_beyond_the_limit_go_to_disk_and_come_back_in_order_per_key():
    store = PartitionedRecords(DTYPE, limit_bytes=1000)
    parts = [_part(i * 37, 37) for i in range(50)]
    for i, part in enumerate(parts):
        store.append(i % 3, part)
        assert store.held_bytes <= 1000  # a part of 444 bytes, at most two held at a time
    assert store.spilled >= 40 * 37 and len(store) == 50 * 37 and store.keys() == [0, 1, 2]
    for key in (2, 0, 1):
        expected = np.concatenate(parts[key::3]).tobytes()
        assert store.read(key).tobytes() == expected
        assert store.read(key).tobytes() == expected  # reading keeps them
    assert store.take(1).tobytes() == np.concatenate(parts[1::3]).tobytes()
    assert store.keys() == [0, 2] and store.read(1).size == 0  # taken: forgotten
    store.close()
    assert len(store) == 0 and store.keys() == []
    store.append(4, _part(5, 3))
    assert store.take(4)["a"].tolist() == [5, 6, 7]


def test_under_the_limit_nothing_is_written():
    store = PartitionedRecords(DTYPE, limit_bytes=1 << 20)
    store.append(0, _part(0, 10))
    store.append(0, np.zeros(0, dtype=DTYPE))
    assert store.spilled == 0 and store.take(0)["a"].tolist() == list(range(10))
    assert store.held_bytes == 0


def test_an_unwritable_temporary_directory_is_one_clear_error(monkeypatch, tmp_path):
    missing = tmp_path / "gone"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    store = PartitionedRecords(DTYPE, limit_bytes=10)
    with pytest.raises(InspectorError, match=f"{missing}: cannot write temporary data"):
        store.append(0, _part(0, 5))


def test_every_table_is_the_same_when_flows_and_buckets_wait_on_disk(ndpi_dir, monkeypatch):
    """A limit of a few records makes every capture spill, and small ranges of flow ids make the
    call stage read the buckets in many pieces; the tables must not change."""
    import pandas as pd

    from inspector import collect, spill
    from inspector.api import TABLES, analyze
    from inspector.collect import ActivityCollector
    from inspector.flowstore import RECORD_DTYPE, FlowStore
    from inspector.pipeline import AnalyzeOptions

    paths = [ndpi_dir / "zoom_p2p.pcapng", ndpi_dir / "teams.pcap"]
    options = AnalyzeOptions(batch_size=500, workers=1)
    whole = analyze(paths, options)
    monkeypatch.setattr(spill, "DEFAULT_LIMIT_BYTES", 2048)
    # Eight flows per range of flow ids: the call stage goes over many ranges, one at a time.
    monkeypatch.setattr(collect, "PARTITION_BITS", 3)
    store, collector = FlowStore(), ActivityCollector()
    assert store._stored.limit_bytes == 2048 and collector._store.limit_bytes == 2048
    spilled = analyze(paths, options)
    assert len(whole.flows) * RECORD_DTYPE.itemsize > 4 * 2048 and len(whole.sessions) >= 1
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(whole, table), getattr(spilled, table))


def test_items_beyond_the_limit_go_to_disk_and_come_back_in_order():
    from inspector.spill import SpilledItems

    store = SpilledItems(limit_items=10)
    items = [(i, ("udp", f"10.0.0.{i % 250}", i, (("stun", "", "", 1),))) for i in range(95)]
    for item in items:
        store.append(item)
    assert store.spilled == 88 and len(store) == 95  # 8 blocks of 11 written, 7 in memory
    assert store.take_all() == items
    assert len(store) == 0 and store.take_all() == []


def test_deferred_facts_wait_on_disk_and_resolve_the_same(ndpi_dir, monkeypatch):
    """The cross-flow flows of a P2P capture, deferred through a tiny in-memory limit, resolve to
    the labels classify_all gives over every flow (tests/test_labels.py's reference)."""
    from inspector import spill
    from inspector.api import _flows_frame, _labeller, _payload_stage, _signature_set
    from inspector.pipeline import AnalyzeOptions, process_capture

    options = AnalyzeOptions()
    path = ndpi_dir / "telegram_videocall.pcapng"
    frames = []
    for limit in (None, 3):
        monkeypatch.setattr(spill, "DEFAULT_LIMIT_ITEMS", 4096 if limit is None else limit)
        labeller = _labeller(_signature_set(options))
        result = process_capture(path, options, None, _payload_stage(options), (), labeller)
        if limit is not None:
            assert labeller._deferred.spilled > 0
        frames.append(_flows_frame(result))
    import pandas as pd

    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_items_come_back_block_by_block_and_move_between_stores_still_pickled():
    from inspector.spill import SpilledItems

    store = SpilledItems(limit_items=10)
    items = [(i, ("udp", str(i))) for i in range(95)]
    for item in items:
        store.append(item)
    blocks = store.take_blocks()
    assert len(store) == 0 and store.take_all() == []  # emptied when asked, before reading
    got = list(blocks)
    assert [len(block) for block in got] == [11] * 8 + [7]
    assert [item for block in got for item in block] == items
    for item in items:
        store.append(item)
    other = SpilledItems(limit_items=20)
    other.append("first")
    sizes = []
    for count, blob in store.take_pickled_blocks():
        sizes.append(count)
        other.append_pickled(count, blob)
    assert sizes == [11] * 8 + [7] and len(other) == 96 and len(store) == 0
    assert other.spilled == 96 - 7  # the first block fits in memory; then they go to the file
    assert other.take_all() == ["first", *items]
    small = SpilledItems(limit_items=10)
    small.append_pickled(*next(iter(_pickled([1, 2, 3]))))
    assert small.spilled == 0 and small.take_all() == [1, 2, 3]  # under the limit: no file


def _pickled(items: list):
    import pickle

    yield len(items), pickle.dumps(items)
