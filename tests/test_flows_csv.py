"""flows.csv formatted in a forked process before the session ids are known (flows_csv.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import inspector
from inspector import flows_csv, forked
from inspector.export import write_plain_csv
from inspector.flows_csv import EarlyFlowsCsv
from inspector.pipeline import AnalyzeOptions
from inspector.summarize import CaptureFlows, FinishedFlows
from tests.test_summarize import LABELS, _records


def _table(server_names=None) -> FinishedFlows:
    labels = dict(LABELS)
    labels["server_name"] = np.array(
        server_names if server_names is not None else [None, "@SUM(1)", 'a,"b"\nc'], dtype=object
    )
    return FinishedFlows([
        CaptureFlows("=cmd|' /C calc'!A0", _records(23, seed=1), labels),
        CaptureFlows("", _records(0, seed=2), labels),
        CaptureFlows('call,"one".pcap', _records(9, seed=3), labels),
    ])  # fmt: skip


def _set_sessions(table: FinishedFlows) -> None:
    table.parts[0].set_session_ids(np.array(["s1", ""], dtype=object), (np.arange(23, dtype=np.int32) % 4 == 0).astype(np.int32))
    table.parts[2].set_session_ids(np.array(["s1", "+s2;s3", ""], dtype=object), np.arange(9, dtype=np.int32) % 3)


@pytest.mark.parametrize("slice_rows", [1, 5, 4096])
@pytest.mark.parametrize("server_names", [None, ["x\x00y", "\x00", "plain"]])
def test_the_forked_rows_with_the_sessions_spliced_in_are_write_plain_csvs_bytes(tmp_path, monkeypatch, slice_rows, server_names):
    """Formatted before the sessions are known, the file is the one written after; also when a
    cell holds the mark itself (that slice is formatted again)."""
    monkeypatch.setattr(flows_csv, "SLICE_ROWS", slice_rows)
    table = _table(server_names)
    early = EarlyFlowsCsv.start(table)  # forked before the session ids exist, as in a run
    assert early is not None
    _set_sessions(table)
    early.send(tmp_path / "early.csv", table)
    early.finish()
    plain = write_plain_csv(table.plain_chunks(slice_rows), tmp_path / "plain.csv")
    assert (tmp_path / "early.csv").read_bytes() == plain.read_bytes()
    assert b"+s2;s3" in plain.read_bytes() and b"'+s2;s3" in plain.read_bytes()  # neutralised
    # The permissions any new file gets (the umask's), not a private temporary file's.
    assert (tmp_path / "early.csv").stat().st_mode == plain.stat().st_mode


def test_a_table_without_calls_or_rows_is_written_too(tmp_path):
    for table in (_table(), FinishedFlows([])):
        early = EarlyFlowsCsv.start(table)
        early.send(tmp_path / "early.csv", table)  # no session ids were ever set
        early.finish()
        plain = write_plain_csv(table.plain_chunks(4096), tmp_path / "plain.csv")
        assert (tmp_path / "early.csv").read_bytes() == plain.read_bytes()


def test_a_large_message_does_not_block_the_sender(tmp_path, monkeypatch):
    """The path and session codes (~4 bytes a flow) go from a thread: the process reads them
    only once its rows are formatted, and a pipe holds 64 KiB."""
    records = _records(40_000, seed=5)
    table = FinishedFlows([CaptureFlows("big.pcap", records, LABELS)])
    early = EarlyFlowsCsv.start(table)
    table.parts[0].set_session_ids(np.array(["s1", ""], dtype=object), (np.arange(40_000) % 2).astype(np.int32))
    early.send(tmp_path / "early.csv", table)
    early.finish()
    plain = write_plain_csv(table.plain_chunks(4096), tmp_path / "plain.csv")
    assert (tmp_path / "early.csv").read_bytes() == plain.read_bytes()


def test_discard_stops_the_process_and_leaves_nothing(tmp_path):
    table = _table()
    early = EarlyFlowsCsv.start(table)
    early.send(tmp_path / "flows.csv", table)
    early.discard()
    with pytest.raises(ProcessLookupError):
        os.kill(early.job.pid, 0)  # stopped and reaped
    assert not list(tmp_path.iterdir())  # neither flows.csv nor the part it was writing
    early = EarlyFlowsCsv.start(table)  # discarded before anything was sent
    command_fd = early.command_fd
    early.discard()
    with pytest.raises(OSError):
        os.fstat(command_fd)  # closed
    kept = os.open(os.devnull, os.O_RDONLY)  # may take the closed descriptor's number
    try:
        early.discard()  # again: closes nothing of anyone else's
        os.fstat(kept)
    finally:
        os.close(kept)


def test_the_process_formats_at_a_lower_priority_than_the_run():
    """The call stage beside it is the critical path: the formatting process lowers its own
    priority by FORMAT_NICENESS (and the run's stays as it was)."""
    import time

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    early = EarlyFlowsCsv.start(_table())
    try:
        wanted = min(mine + flows_csv.FORMAT_NICENESS, 19)
        deadline = time.monotonic() + 30
        # It waits for the command once its rows are formatted, so it is still there to ask.
        while os.getpriority(os.PRIO_PROCESS, early.job.pid) != wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, early.job.pid) == wanted
        assert os.getpriority(os.PRIO_PROCESS, 0) == mine
    finally:
        early.discard()


def test_the_process_ends_without_a_command_once_the_parent_closes_its_end():
    early = EarlyFlowsCsv.start(_table())
    os.close(early.command_fd)
    assert early.job.result() is None


def test_without_fork_the_caller_writes_flows_csv(monkeypatch):
    monkeypatch.setattr(forked, "start", lambda what, fn, *args: None)
    assert EarlyFlowsCsv.start(_table()) is None


def test_a_run_that_prepares_flows_csv_writes_the_files_a_single_process_writes(tmp_path, ndpi_dir, monkeypatch, forked_starts):
    """With ``prepare_flows_csv`` the rows are formatted in a process forked before the call
    stage (before the destinations' one); every file is the one a single process writes."""
    from inspector import prehash

    monkeypatch.setattr(flows_csv, "SLICE_ROWS", 7)
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)  # the input hashed by prehash.py's process
    started = forked_starts
    path = ndpi_dir / "teams.pcap"
    inspector.analyze([path], AnalyzeOptions(workers=1, prepare_flows_csv=True)).write(tmp_path / "one")
    assert started == [f"{path}: SHA-256"]  # one process: only the early hashing process forked
    answered: list[list[str]] = []
    two = inspector.analyze([path], AnalyzeOptions(workers=2, prepare_flows_csv=True))
    two.write(tmp_path / "two", while_writing=lambda: answered.append(sorted(p.name for p in (tmp_path / "two").iterdir())))
    assert started == [f"{path}: SHA-256"] * 2 + ["flows.csv", "destinations"]
    assert {"destinations.csv", "media.csv", "sessions.csv"} <= set(answered[0])
    for name in ("flows.csv", "sessions.csv", "destinations.csv", "media.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two")]
    assert manifests[0]["outputs"] == manifests[1]["outputs"]
    # The prepared rows serve one write: the next one writes flows.csv as a run without them.
    two.write(tmp_path / "again")
    assert (tmp_path / "again" / "flows.csv").read_bytes() == (tmp_path / "one" / "flows.csv").read_bytes()


def test_prepared_rows_are_dropped_for_another_format_or_a_failed_write(tmp_path, ndpi_dir, monkeypatch):
    from inspector import api
    from inspector.errors import InspectorError

    path = ndpi_dir / "teams.pcap"
    options = AnalyzeOptions(workers=2, prepare_flows_csv=True)
    result = inspector.analyze([path], options)
    early = result._early_flows_csv
    assert early is not None
    result.write(tmp_path / "json", "json")
    assert result._early_flows_csv is None
    with pytest.raises(InspectorError):
        early.job.result()  # discarded: its result is gone
    assert json.loads((tmp_path / "json" / "flows.json").read_text())

    result = inspector.analyze([path], options)

    def full(frame, path, fmt):
        raise InspectorError(f"{path}: no space left on device")

    monkeypatch.setattr(api, "write_table", full)
    with pytest.raises(InspectorError, match="no space left"):
        result.write(tmp_path / "out")
    assert result._early_flows_csv is None
    # The forked process was writing flows.csv beside it: stopped, and its part removed.
    assert not [p.name for p in (tmp_path / "out").iterdir() if "flows" in p.name]


def test_a_process_that_fails_leaves_no_part_and_raises(tmp_path, monkeypatch):
    table = _table()
    early = EarlyFlowsCsv.start(table)
    (tmp_path / "flows.csv").mkdir()  # the file cannot take flows.csv's place
    early.send(tmp_path / "flows.csv", table)
    with pytest.raises(OSError):
        early.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flows.csv"]
