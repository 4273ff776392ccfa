"""--workers: the tables are identical whatever the number of processes."""

from __future__ import annotations

import pandas as pd
import pytest

import inspector
from inspector.pipeline import AnalyzeOptions

TABLES = ("flows", "sessions", "destinations", "media")


@pytest.mark.parametrize("name", ["teams.pcap", "zoom_p2p.pcapng", "webex.pcap", "quic_frags_ch_out_of_order_same_packet_craziness.pcapng"])
def test_workers_do_not_change_the_tables(ndpi_dir, name):
    one = inspector.analyze([ndpi_dir / name], AnalyzeOptions(workers=1))
    for workers in (2, 3):
        many = inspector.analyze([ndpi_dir / name], AnalyzeOptions(workers=workers))
        for table in TABLES:
            pd.testing.assert_frame_equal(getattr(one, table), getattr(many, table), obj=f"{name} {table} workers={workers}")
        assert many.manifest["inputs"][0]["decode"] == one.manifest["inputs"][0]["decode"]


def test_workers_and_batch_size_together(ndpi_dir):
    base = inspector.analyze([ndpi_dir / "wa_voice.pcap"], AnalyzeOptions(workers=1))
    other = inspector.analyze([ndpi_dir / "wa_voice.pcap"], AnalyzeOptions(workers=2, batch_size=7))
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(base, table), getattr(other, table))
