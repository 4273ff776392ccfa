"""Several captures with several processes (inspector/apart.py): the same tables as one process."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

import inspector
from inspector import apart
from inspector.collect import ActivityCollector, buckets_of_sorted_rows
from inspector.errors import CaptureError, InspectorError, SignatureError
from inspector.pipeline import AnalyzeOptions, process_capture

TABLES = ("flows", "sessions", "destinations", "media")
CAPTURES = ("teams.pcap", "zoom_p2p.pcapng", "webex.pcap", "wa_voice.pcap", "stun_signal.pcapng", "telegram_videocall.pcapng")


def test_a_file_is_read_alone_only_when_it_outweighs_the_rest():
    # Two processes: alone once the file is over 1.5 times all the others together.
    assert apart.alone_files([100, 10, 10], 2) == {0}
    assert apart.alone_files([30, 25, 20], 2) == set()
    assert apart.alone_files([10, 100, 10], 2) == {1}
    # The next largest is weighed against what is left after it: 100 against 20 is alone too.
    assert apart.alone_files([400, 100, 10, 10], 2) == {0, 1}
    # Once every larger file is read alone, the one left has every core to itself too.
    assert apart.alone_files([31, 20], 2) == {0, 1} and apart.alone_files([30, 20], 2) == set()
    # With three processes the other two share the rest: a larger file is still worth one.
    assert apart.alone_files([40, 30, 30], 3) == set()
    assert apart.alone_files([100, 30, 30, 30], 3) == {0}
    # One process reads everything itself.
    assert apart.alone_files([1, 2, 3], 1) == {0, 1, 2}


def _slow_square(x: int, delay: float) -> tuple[int, int]:
    time.sleep(delay)
    return x * x, os.getpid()


def test_processes_return_results_in_call_order_as_each_ends():
    arrived, started = [], []
    # The slow call lasts long enough for the second process to be forked (a copy of this whole
    # test process) and serve the four others even on a loaded machine: 0.3 s was not (CI).
    calls = [(k, 1.5 if k == 0 else 0.01) for k in range(5)]
    results = apart.map_in_processes(_slow_square, calls, 2, lambda i, value: arrived.append(i), lambda: started.append(True))
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    # Two processes besides this one served every call; the one busy with the slow first call
    # took no other: the second served calls 1-4 meanwhile, which arrived before it.
    pids = [r[1] for r in results]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert pids[0] not in pids[1:]
    assert started == [True]
    assert sorted(arrived) == [0, 1, 2, 3, 4] and arrived[-1] == 0


def _fail_on(x: int) -> int:
    if x == 2:
        raise CaptureError(f"file{x}.pcap", "not a capture file")
    time.sleep(0.05)
    return x


def test_a_process_error_is_raised_here_as_it_was_raised_there():
    with pytest.raises(CaptureError) as caught:
        apart.map_in_processes(_fail_on, [(k,) for k in range(5)], 2)
    assert caught.value.path == "file2.pcap" and caught.value.reason == "not a capture file"
    assert str(caught.value) == "file2.pcap: not a capture file"


def test_typed_errors_keep_their_fields_through_pickle():
    e = pickle.loads(pickle.dumps(CaptureError("a.pcap", "empty file")))
    assert (type(e), e.path, e.reason, str(e)) == (CaptureError, "a.pcap", "empty file", "a.pcap: empty file")
    s = pickle.loads(pickle.dumps(SignatureError("zoom.toml", "ranges", "bad prefix")))
    assert (s.path, s.key, s.reason, str(s)) == ("zoom.toml", "ranges", "bad prefix", "zoom.toml: ranges: bad prefix")


def test_buckets_travel_as_sorted_rows(ndpi_dir):
    collector = ActivityCollector()
    process_capture(ndpi_dir / "teams.pcap", AnalyzeOptions(), collectors=(collector,))
    rows = collector.buckets("teams.pcap").sorted_rows()
    again = buckets_of_sorted_rows("teams.pcap", pickle.loads(pickle.dumps(rows)))
    assert again.capture == "teams.pcap"
    assert (again.sorted_rows() == rows).all() and len(again) == rows.shape[0] > 0


def _assert_same(one, many, what):
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(one, table), getattr(many, table), obj=f"{what} {table}")
    assert one.manifest["inputs"] == many.manifest["inputs"], what
    assert one.warnings == many.warnings, what


def test_several_captures_with_several_processes_give_one_process_tables(ndpi_dir, tmp_path, monkeypatch):
    paths = [ndpi_dir / name for name in CAPTURES]
    apart_calls = []
    spread = apart.map_in_processes
    monkeypatch.setattr(apart, "map_in_processes", lambda fn, calls, *a: (apart_calls.append(len(calls)), spread(fn, calls, *a))[1])
    # A truncated copy: its warning and its flows read so far come back from its process too.
    cut = tmp_path / "cut.pcap"
    data = (ndpi_dir / "teams.pcap").read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    # A gzip-compressed capture (hashed as stored, read through its own path) and one with a
    # header and no packets.
    packed = tmp_path / "webex.pcap.gz"
    packed.write_bytes(gzip.compress((ndpi_dir / "webex.pcap").read_bytes()))
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(data[:24])
    paths += [cut, packed, empty]
    one = inspector.analyze(paths, AnalyzeOptions(workers=1))
    assert any("cut.pcap" in w for w in one.warnings)
    for workers in (2, 3):
        _assert_same(one, inspector.analyze(paths, AnalyzeOptions(workers=workers)), f"workers={workers}")
    merged = inspector.analyze(paths, AnalyzeOptions(workers=1, merge=True))
    _assert_same(merged, inspector.analyze(paths, AnalyzeOptions(workers=2, merge=True)), "merge")
    flows_only = inspector.analyze(paths, AnalyzeOptions(workers=1, inspect_payloads=False))
    _assert_same(flows_only, inspector.analyze(paths, AnalyzeOptions(workers=2, inspect_payloads=False)), "flows only")
    # Every run with several processes read the files apart, none alone (similar sizes).
    assert apart_calls == [len(paths)] * 4


def test_a_file_read_alone_beside_files_read_apart(ndpi_dir, monkeypatch):
    paths = [ndpi_dir / name for name in CAPTURES[:3]]
    one = inspector.analyze(paths, AnalyzeOptions(workers=1))
    monkeypatch.setattr(apart, "alone_files", lambda sizes, workers: {1})
    _assert_same(one, inspector.analyze(paths, AnalyzeOptions(workers=2)), "one alone")


def test_progress_reaches_every_file(ndpi_dir):
    paths = [ndpi_dir / name for name in CAPTURES[:3]]
    seen = {}
    inspector.analyze(paths, AnalyzeOptions(workers=2), progress=lambda p, done, total: seen.__setitem__(p, (done, total)))
    assert seen == {str(p): (p.stat().st_size, p.stat().st_size) for p in paths}


def test_a_bad_file_among_several_is_named(ndpi_dir, tmp_path):
    good = tmp_path / "good.pcap"
    shutil.copy(ndpi_dir / "teams.pcap", good)
    bad = tmp_path / "notes.pcap"
    bad.write_text("not a capture at all, just some words\n" * 10)
    with pytest.raises(CaptureError) as caught:
        inspector.analyze([good, bad, good], AnalyzeOptions(workers=2))
    assert caught.value.path == str(bad)


_NEW_MODULES = """
import sys
from pathlib import Path
from inspector import api
from inspector.pipeline import AnalyzeOptions
options = AnalyzeOptions(workers=1)
signatures = api._signature_set(options)
api.import_for_reading()
before = set(sys.modules)
for name in sys.argv[2:]:
    api._read_apart(Path(sys.argv[1]) / name, options, signatures)
new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("inspector", "pandas", "cryptography"))
print(",".join(new))
"""


def test_what_reading_imports_is_imported_before_the_processes_start(ndpi_dir):
    # Each process reading a capture apart inherits these instead of importing them itself
    # (~50 ms each); QUIC Initials, TLS certificates, DNS, STUN and RTP are read here.
    names = ["quic_frags_ch_out_of_order_same_packet_craziness.pcapng", "webex.pcap", "teams.pcap", "zoom_p2p.pcapng"]
    r = subprocess.run([sys.executable, "-c", _NEW_MODULES, str(ndpi_dir), *names], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported while reading: {r.stdout.strip()}"


def _die_on(x: int) -> int:
    if x == 1:
        os.kill(os.getpid(), 9)
    return x


def test_a_process_that_dies_is_an_error_naming_its_capture():
    with pytest.raises(InspectorError, match="calls-1.pcap: the process reading it stopped unexpectedly"):
        apart.map_in_processes(lambda name, x: _die_on(x), [(f"calls-{k}.pcap", k) for k in range(4)], 2)
