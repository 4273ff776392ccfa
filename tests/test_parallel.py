"""--workers: the tables are identical whatever the number of processes."""

from __future__ import annotations

import pandas as pd
import pytest

import inspector
from inspector.pipeline import AnalyzeOptions
from inspector.signatures import load_signatures

TABLES = ("flows", "sessions", "destinations", "media")


@pytest.mark.parametrize("name", ["teams.pcap", "zoom_p2p.pcapng", "webex.pcap", "quic_frags_ch_out_of_order_same_packet_craziness.pcapng"])
def test_workers_do_not_change_the_tables(ndpi_dir, name):
    one = inspector.analyze([ndpi_dir / name], AnalyzeOptions(workers=1))
    for workers in (2, 3):
        many = inspector.analyze([ndpi_dir / name], AnalyzeOptions(workers=workers))
        for table in TABLES:
            pd.testing.assert_frame_equal(getattr(one, table), getattr(many, table), obj=f"{name} {table} workers={workers}")
        for key in ("decode", "payload_packets_inspected", "dissect_errors"):
            assert many.manifest["inputs"][0][key] == one.manifest["inputs"][0][key], key


def test_workers_and_batch_size_together(ndpi_dir):
    base = inspector.analyze([ndpi_dir / "wa_voice.pcap"], AnalyzeOptions(workers=1))
    other = inspector.analyze([ndpi_dir / "wa_voice.pcap"], AnalyzeOptions(workers=2, batch_size=7))
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(base, table), getattr(other, table))


def test_ranks_count_earlier_masked_members_of_the_same_group():
    import numpy as np

    from inspector.parallel import _ranks

    groups = np.array([3, 1, 3, 3, 1, 2, 3])
    mask = np.array([True, True, False, True, True, True, True])
    ranks = _ranks(groups, mask)
    assert ranks[mask].tolist() == [0, 0, 1, 1, 0, 2]
    assert (ranks[~mask] > 1_000_000).all()
    assert (_ranks(groups, np.zeros(7, dtype=bool)) > 1_000_000).all()


def test_facts_cross_the_process_boundary_unchanged():
    from inspector.facts import DetectorHit, FlowFacts
    from inspector.facts import facts_from_row as _facts_from_row
    from inspector.facts import facts_to_row as _facts_row

    f = FlowFacts(
        "udp", "10.0.0.2", 50000, "170.114.9.9", 8801, "zoom-media", "zoom.us", "dns", "zoom.us",
        (DetectorHit("zoom-media", "zoom", "outer 0x05", 40), DetectorHit("stun")),
        (("stun_realm", "zoom.us"),), 1, 2,
    )
    assert _facts_from_row(_facts_row(f)) == f


def test_a_dead_worker_fails_the_run_instead_of_hanging(ndpi_dir, monkeypatch):
    import os

    from inspector import parallel
    from inspector.errors import InspectorError

    monkeypatch.setattr(parallel, "_dissect_worker", lambda *args: os._exit(3))
    with pytest.raises(InspectorError, match="dissect worker stopped"):
        parallel.process_capture_parallel(ndpi_dir / "teams.pcap", AnalyzeOptions(workers=2), 2, load_signatures(()))


def test_deferred_flows_come_back_from_workers_in_blocks(ndpi_dir, monkeypatch):
    """More deferred (cross-flow) flows per worker than one message holds, and more than the
    reading process's labeller keeps in memory: the labels equal one process's."""
    from inspector import labels, parallel, spill

    path = ndpi_dir / "telegram_videocall.pcapng"
    one = inspector.analyze([path], AnalyzeOptions(workers=1))
    monkeypatch.setattr(parallel, "DEFERRED_BLOCK_ROWS", 2)
    monkeypatch.setattr(spill, "DEFAULT_LIMIT_ITEMS", 3)
    blocks: list[int] = []
    defer_pickled_rows = labels.FlowLabeller.defer_pickled_rows

    def counting(self, count, blob):
        blocks.append(count)
        defer_pickled_rows(self, count, blob)

    monkeypatch.setattr(labels.FlowLabeller, "defer_pickled_rows", counting)
    many = inspector.analyze([path], AnalyzeOptions(workers=2))
    assert max(blocks) <= 2 and len(blocks) > 2 * 2 and sum(blocks) > 2 * 3
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(one, table), getattr(many, table), obj=table)

