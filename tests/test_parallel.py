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


def test_a_parallel_run_hashes_its_capture_after_reading_it(ndpi_dir, monkeypatch, tmp_path):
    """The workers' reader hashes the file once its packets are read (``hash_after_reading``),
    ``Analysis.manifest`` fills in the digest when first read, and manifest.json holds it."""
    from inspector.capture import files
    from inspector.digest import sha256_file

    after = []
    real = files.open_capture

    def opened(*args, **kwargs):
        reader = real(*args, **kwargs)
        after.append(reader)
        return reader

    monkeypatch.setattr("inspector.parallel.open_capture", opened)
    path = ndpi_dir / "teams.pcap"
    analysis = inspector.analyze([path], AnalyzeOptions(workers=2))
    assert [r.hash_after_reading for r in after] == [True]
    # ... unless its processes leave a core idle after a batch (``idlecores``).
    from inspector.idlecores import IdleCores

    assert [type(r.hash_gate) for r in after] == [IdleCores]
    assert len(after[0].hash_gate.pids) == 2
    assert analysis._manifest["inputs"][0]["sha256"] == ""  # not read yet: not waited for
    assert analysis.manifest["inputs"][0]["sha256"] == sha256_file(path)
    analysis.write(tmp_path)
    import json

    assert json.loads((tmp_path / "manifest.json").read_text())["inputs"][0]["sha256"] == sha256_file(path)


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



def _two_hellos(path):
    """Two TLS flows: one ClientHello in a whole IPv4 datagram (its payload lies in the mapped
    file), one whose datagram arrives as two fragments (its payload is reassembled, so it lives
    outside the file). Returns the written path."""
    from tests.craft import PROTO_TCP, ether, ipv4, tcp, tcp4, write_pcap
    from tests.dissect.test_tls import client_hello, record, sni_extension

    def hello(name: bytes) -> bytes:
        return record(client_hello(sni_extension(name)))

    whole = ether(tcp4("10.0.0.2", "192.0.2.10", 50001, 443, "PA", hello(b"whole.example"), seq=1))
    segment = tcp(50002, 443, "PA", seq=1, payload=hello(b"fragmented.example"), src="10.0.0.2", dst="192.0.2.20")
    cut = 48  # a multiple of 8: the first fragment's payload length
    first = ether(ipv4("10.0.0.2", "192.0.2.20", PROTO_TCP, segment[:cut], ident=7, more_fragments=True))
    second = ether(ipv4("10.0.0.2", "192.0.2.20", PROTO_TCP, segment[cut:], ident=7, frag_offset=cut))
    return write_pcap(path, [whole, first, second])


def test_the_reader_starts_importing_pandas_after_its_first_batches(tmp_path, monkeypatch):
    """A parallel run's reader starts the tables' pandas import (``warmup.start``) once it has
    sent WARMUP_AFTER_BATCHES batches, not as the packets start: the import holds its GIL."""
    import multiprocessing
    import threading

    from inspector import parallel, warmup
    from inspector.capture.files import open_capture
    from inspector.pipeline import process_capture

    path = _two_hellos(tmp_path / "hellos.pcap")
    ours, theirs = multiprocessing.Pipe()
    drain = threading.Thread(target=lambda: list(iter(theirs.recv, None)))
    drain.start()
    shipper = parallel.PayloadShipper([ours])
    started_after = []
    monkeypatch.setattr(warmup, "start", lambda: started_after.append(shipper._batches_sent))
    process_capture(path, AnalyzeOptions(batch_size=1), None, shipper, reader=open_capture(path, 1))
    ours.send(None)
    drain.join()
    assert parallel.WARMUP_AFTER_BATCHES < 3  # the capture's three one-packet batches
    assert started_after == [parallel.WARMUP_AFTER_BATCHES]


def test_payloads_in_the_mapped_file_travel_as_offsets(tmp_path):
    """The reading process ships a payload that lies in the capture file's mapping as its offset
    (no bytes), a reassembled payload as bytes; the worker reads both, the names prove it."""
    import multiprocessing
    import threading

    from inspector.capture.files import open_capture
    from inspector.pipeline import process_capture

    path = _two_hellos(tmp_path / "hellos.pcap")
    reader = open_capture(path)
    file_bytes = reader.mapped_bytes()
    ours, theirs = multiprocessing.Pipe()
    messages = []
    drain = threading.Thread(target=lambda: messages.extend(iter(theirs.recv, None)))
    drain.start()
    from inspector.parallel import PayloadShipper

    shipper = PayloadShipper([ours], file_bytes)
    process_capture(path, AnalyzeOptions(), None, shipper, reader=reader)
    ours.send(None)
    drain.join()
    shipped = [m[3] for m in messages if m[3] is not None]
    assert len(shipped) == 1
    _fids, _from_client, _ts, _seqs, _b0, at, lengths, in_blob, blob = shipped[0]
    assert in_blob.tolist() == [False, True]
    # The file-backed payload is read where the offset says; the blob holds only the other one.
    whole = bytes(file_bytes[at[0] : at[0] + lengths[0]])
    assert b"whole.example" in whole and whole[0] == 0x16
    assert len(blob) == lengths[1] and b"fragmented.example" in blob

    for workers in (1, 2):
        flows = inspector.analyze([path], AnalyzeOptions(workers=workers)).flows
        assert sorted(flows.server_name) == ["fragmented.example", "whole.example"], workers


def test_the_mapping_is_the_batches_buffer_and_absent_for_gzip(ndpi_dir, tmp_path):
    import gzip

    from inspector.capture.files import open_capture

    reader = open_capture(ndpi_dir / "teams.pcap", batch_size=1000)
    file_bytes = reader.mapped_bytes()
    assert file_bytes is reader.mapped_bytes()
    assert all(batch.buffer is file_bytes for batch in reader.batches())
    packed = tmp_path / "teams.pcap.gz"
    packed.write_bytes(gzip.compress((ndpi_dir / "teams.pcap").read_bytes()))
    assert open_capture(packed).mapped_bytes() is None


def test_workers_read_a_gzip_capture_from_the_shipped_bytes(ndpi_dir, tmp_path):
    import gzip

    packed = tmp_path / "webex.pcap.gz"
    packed.write_bytes(gzip.compress((ndpi_dir / "webex.pcap").read_bytes()))
    one = inspector.analyze([packed], AnalyzeOptions(workers=1))
    two = inspector.analyze([packed], AnalyzeOptions(workers=2))
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(one, table), getattr(two, table), obj=table)
    assert one.flows.server_name.notna().sum() > 10


def test_workers_lower_their_priority_below_the_readers():
    """A worker raises its niceness by WORKER_NICENESS (the reader is the critical path); run in a
    fresh interpreter, since niceness cannot be lowered again without privilege."""
    import subprocess
    import sys

    code = ("import os; from inspector.parallel import lower_priority, WORKER_NICENESS as N; "
            "before = os.nice(0); print(before, lower_priority(N), os.nice(0), N)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, returned, after, increment = map(int, out.split())
    assert increment > 0
    assert returned == after == min(before + increment, 19)
