"""``inspector live``: the command, its live view and the streaming pipeline under it.

Most tests replay the bundled sample call (captures/sample-call.pcapng, a real aiortc call with a
telemetry request) through a stand-in for LiveCapture, so they run anywhere in a few seconds. The
tests on the loopback interface need root (a packet socket) and skip without it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import inspector
from inspector.api import analyze_batches
from inspector.capture.files import open_capture
from inspector.capture.live import LiveCaptureError, LiveStats
from inspector.capture.writer import PcapngWriter
from inspector.cli import app
from inspector.live_view import DestinationRow, LiveView, TelemetryRow, ViewSnapshot, render
from inspector.pipeline import AnalyzeOptions, process_batches
from inspector.signatures import load_signatures
from tests import craft

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "captures" / "sample-call.pcapng"
SAMPLE_PACKETS = 777  # captures/README.md
CALL_START_NS = 1795629405451340000  # A connected, captures/README.md (2026-11-25T17:56:45.451340Z)
CALL_END_NS = 1795629409963718000  # A hung up (2026-11-25T17:56:49.963718Z)
TABLES = ("flows", "sessions", "destinations", "media")

runner = CliRunner()


class ReplayCapture:
    """Stands in for LiveCapture: hands out the sample call's packets in small batches and writes
    them to the evidence file as it goes, as LiveCapture does."""

    instances: list["ReplayCapture"] = []

    def __init__(self, interface, bpf=None, duration_s=None, count=None, evidence_path=None, **_kw):
        self.interface = interface
        self.bpf = bpf
        self.evidence_path = Path(evidence_path)
        self.count = count
        self._captured = 0
        self._sha256 = ""
        self._first = self._last = 0
        self.stopped = False
        self.signal_after_batches: int | None = None
        ReplayCapture.instances.append(self)

    def stop(self) -> None:
        self.stopped = True

    def batches(self):
        reader = open_capture(SAMPLE, batch_size=64)
        with open(self.evidence_path, "wb") as f:
            writer = PcapngWriter(f, interfaces=[(1, 262144, 9)])
            for k, batch in enumerate(reader.batches()):
                if k == self.signal_after_batches:
                    os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from another terminal would
                if self.stopped:
                    break
                for i in range(len(batch)):
                    writer.write_packet(0, int(batch.ts_ns[i]), batch.packet(i), int(batch.wirelen[i]))
                writer.flush()
                if not self._captured:
                    self._first = int(batch.ts_ns[0])
                self._captured += len(batch)
                self._last = int(batch.ts_ns[-1])
                yield batch
        self._sha256 = hashlib.sha256(self.evidence_path.read_bytes()).hexdigest()

    @property
    def stats(self) -> LiveStats:
        return LiveStats(self._captured, 0, self._sha256, self._captured, self._first, self._last, 1, self.interface)


@pytest.fixture
def replay(monkeypatch):
    ReplayCapture.instances.clear()
    monkeypatch.setattr("inspector.capture.live.LiveCapture", ReplayCapture)
    return ReplayCapture


def _table(directory: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(directory / f"{name}.csv", keep_default_na=False)


# -- the command ---------------------------------------------------------------------------------


def test_live_writes_the_same_tables_as_analyze_of_its_evidence(replay, tmp_path):
    out = tmp_path / "live"
    done = runner.invoke(app, ["live", "--interface", "veth-test", "--out", str(out), "--no-view"])
    assert done.exit_code == 0, done.output
    evidence = out / "evidence.pcapng"
    assert evidence.is_file()
    again = tmp_path / "again"
    done2 = runner.invoke(app, ["analyze", str(evidence), "--out", str(again), "--quiet"])
    assert done2.exit_code == 0, done2.output
    for name in TABLES:
        pd.testing.assert_frame_equal(_table(out, name), _table(again, name), check_dtype=True, obj=name)
    flows = _table(out, "flows")
    assert len(flows) == 4
    sessions = _table(out, "sessions")
    assert list(sessions["service"]) == ["webrtc"]
    telemetry = flows[flows["server_name"] == "app-measurement.com"]
    assert set(telemetry["app_protocol"]) == {"dns", "tls"}
    assert telemetry[telemetry["app_protocol"] == "tls"]["kind"].tolist() == ["telemetry"]


def test_the_manifest_names_interface_filter_and_evidence_with_its_hash(replay, tmp_path):
    out = tmp_path / "o"
    evidence = tmp_path / "kept" / "call.pcapng"
    done = runner.invoke(app, ["live", "-i", "veth-test", "--filter", "udp or tcp", "--write", str(evidence),
                               "-o", str(out), "--no-view", "--quiet"])
    assert done.exit_code == 0, done.output
    assert done.output == ""
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["inputs"]
    digest = hashlib.sha256(evidence.read_bytes()).hexdigest()
    assert entry["source"] == "live"
    assert entry["interface"] == "veth-test"
    assert entry["filter"] == "udp or tcp"
    assert entry["evidence_path"] == str(evidence)
    assert entry["evidence_sha256"] == entry["sha256"] == digest
    assert entry["evidence_packets"] == entry["packets"] == SAMPLE_PACKETS
    assert entry["packets_dropped_by_kernel"] == 0
    assert entry["bytes"] == evidence.stat().st_size
    assert entry["name"] == "call.pcapng"
    assert entry["decode"]["packets_read"] == SAMPLE_PACKETS
    assert replay.instances[0].bpf == "udp or tcp"


def test_the_summary_names_the_evidence_and_the_call(replay, tmp_path):
    done = runner.invoke(app, ["live", "-i", "veth-test", "-o", str(tmp_path), "--no-view"])
    assert done.exit_code == 0, done.output
    digest = hashlib.sha256((tmp_path / "evidence.pcapng").read_bytes()).hexdigest()
    flat = " ".join(done.output.split())
    assert f"777 packets, sha256 {digest}" in flat
    assert "app-measurement.com" in flat


def test_sigterm_mid_capture_keeps_what_was_captured(monkeypatch, tmp_path):
    class Interrupted(ReplayCapture):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.signal_after_batches = 3

    monkeypatch.setattr("inspector.capture.live.LiveCapture", Interrupted)
    before = signal.getsignal(signal.SIGTERM)
    done = runner.invoke(app, ["live", "-i", "veth-test", "-o", str(tmp_path), "--no-view", "--quiet"])
    assert done.exit_code == 0, done.output
    assert signal.getsignal(signal.SIGTERM) is before  # the command put the handler back
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["inputs"][0]
    assert entry["packets"] == entry["evidence_packets"] == 3 * 64  # three batches of 64, then stop
    assert entry["decode"]["packets_read"] == 3 * 64
    flows = _table(tmp_path, "flows")
    in_flows = int((flows["client_to_server_packets"] + flows["server_to_client_packets"]).sum())
    assert in_flows == entry["decode"]["packets_decoded"] == 3 * 64 - entry["decode"]["packets_skipped"]
    again = tmp_path / "again"
    inspector.analyze([tmp_path / "evidence.pcapng"]).write(again)
    for name in TABLES:
        pd.testing.assert_frame_equal(_table(tmp_path, name), _table(again, name), obj=name)


@pytest.mark.parametrize("message", [
    "no permission to capture on 'eth9': run as root or grant CAP_NET_RAW: sudo setcap "
    "cap_net_raw,cap_net_admin+eip $(which python3)",
    "invalid filter 'udp port': can't parse filter expression: syntax error",
])
def test_a_capture_that_cannot_start_is_one_line_and_exit_2(monkeypatch, tmp_path, message):
    def refuse(*_a, **_kw):
        raise LiveCaptureError(message)

    monkeypatch.setattr("inspector.capture.live.LiveCapture", refuse)
    out = tmp_path / "never"
    done = runner.invoke(app, ["live", "-i", "eth9", "-o", str(out)])
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()  # nothing is created before the capture can start


def test_a_missing_interface_names_the_available_ones(tmp_path):
    done = runner.invoke(app, ["live", "-i", "no-such-if0", "-o", str(tmp_path / "o")])
    assert done.exit_code == 2
    (line,) = done.output.strip().splitlines()
    assert line.startswith("error: no interface 'no-such-if0'; available: ")
    assert "lo" in line.split("available: ")[1].split(", ")


def test_a_bad_format_is_a_usage_error(replay, tmp_path):
    done = runner.invoke(app, ["live", "-i", "veth-test", "-o", str(tmp_path), "--format", "xls"])
    assert done.exit_code == 2
    assert "--format 'xls': use one of" in done.output
    assert replay.instances == []


def test_a_bad_signature_directory_is_a_usage_error_before_capturing(replay, tmp_path):
    missing = tmp_path / "no-such-signatures"
    done = runner.invoke(app, ["live", "-i", "veth-test", "-o", str(tmp_path / "o"), "--signatures", str(missing)])
    assert done.exit_code == 2
    assert done.output.strip() == f"error: {missing}: signature directory does not exist"
    assert replay.instances == []


def test_an_existing_evidence_file_is_never_overwritten(replay, tmp_path):
    earlier = tmp_path / "evidence.pcapng"
    earlier.write_bytes(b"earlier evidence")
    done = runner.invoke(app, ["live", "-i", "veth-test", "-o", str(tmp_path)])
    assert done.exit_code == 2
    assert "already exists: name a new evidence file with --write" in done.output
    assert earlier.read_bytes() == b"earlier evidence"
    assert replay.instances == []


def test_the_evidence_path_must_not_be_a_directory(replay, tmp_path):
    done = runner.invoke(app, ["live", "-i", "veth-test", "-o", str(tmp_path), "--write", str(tmp_path)])
    assert done.exit_code == 2
    assert "is a directory" in done.output


# -- the streaming pipeline ----------------------------------------------------------------------


def _spread_flows(n_flows: int, gap_ns: int):
    """One short UDP exchange per flow, each ``gap_ns`` after the previous one, in batches of 10."""
    from inspector.batch import PacketBatch

    t0 = 1_700_000_000_000_000_000
    packets, stamps = [], []
    for i in range(n_flows):
        src, dst = f"10.0.{i // 250}.{i % 250 + 1}", "192.0.2.9"
        packets += [craft.ether(craft.udp4(src, dst, 40000, 9000, b"x" * 20)),
                    craft.ether(craft.udp4(dst, src, 9000, 40000, b"y" * 30))]
        stamps += [t0 + i * gap_ns, t0 + i * gap_ns + 1000]
    for k in range(0, len(packets), 10):
        yield PacketBatch.from_packets(packets[k:k + 10], stamps[k:k + 10], 1)


def test_finished_flows_leave_the_table_and_drop_their_dissection_state():
    seen_active, ended = [], []

    def watch(progress):
        seen_active.append(progress.table.active_count)
        ended.extend(progress.ended)

    options = AnalyzeOptions(idle_timeout_s=1.0)
    from inspector.payloads import PayloadStage

    result = process_batches(_spread_flows(400, 500_000_000), "x", "x", lambda: None, options, PayloadStage(),
                             on_batch=watch)
    assert len(result.flows) == 400
    # 2 flows start per second, idle 1 s, expiry swept every quarter timeout: a handful active.
    assert max(seen_active) <= 6
    assert len(ended) >= 390
    assert all(flow.state is None and facts is not None for flow, facts in ended)
    # Without a labeller the facts are kept; the flows themselves only as compact records.
    assert set(result.facts) == set(result.flows.records()["flow_id"].tolist()) == set(range(1, 401))


def test_analyze_batches_equals_analyze_whatever_the_batching():
    whole = inspector.analyze([SAMPLE])
    reader = open_capture(SAMPLE, batch_size=3)
    streamed = analyze_batches(reader.batches(), SAMPLE.name, lambda: reader.stats, path=str(SAMPLE))
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(streamed, name), getattr(whole, name), obj=name)
    assert streamed.manifest["inputs"] == whole.manifest["inputs"]


# -- the live view -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signatures():
    return load_signatures(())


def _view_over_sample(signatures, idle_timeout_s: float = 120.0) -> LiveView:
    view = LiveView("veth-test", signatures, min_interval_s=0)
    reader = open_capture(SAMPLE, batch_size=50)
    analyze_batches(reader.batches(), SAMPLE.name, lambda: reader.stats, AnalyzeOptions(idle_timeout_s=idle_timeout_s),
                    on_batch=view.update, signatures=signatures)
    return view


def test_the_view_shows_the_call_its_duration_and_the_telemetry_inside_it(signatures):
    snap = _view_over_sample(signatures).snapshot
    assert snap.packets == SAMPLE_PACKETS
    assert snap.call is not None and snap.call.service == "webrtc"
    # The media flow starts with ICE 34 ms before A reports "connected", and ends with the call.
    assert abs(snap.call.start_ns - CALL_START_NS) < 100_000_000
    assert abs(snap.call.last_media_ns - CALL_END_NS) < 100_000_000
    assert 4.3 < snap.call.duration_s < 4.8
    top = snap.destinations[0]
    assert (top.destination, top.service, top.kind) == ("10.77.0.2", "webrtc", "conferencing")
    assert top.sent_bytes > 150_000
    (tele,) = snap.telemetry
    assert (tele.destination, tele.service, tele.party, tele.during_call) == (
        "app-measurement.com", "google-analytics", "third", True)
    # The DNS query went to the resolver, not to the name it asked about.
    assert "10.77.0.53" in {d.destination for d in snap.destinations}


def test_the_view_keeps_flows_that_ended_during_the_capture(signatures):
    view = _view_over_sample(signatures, idle_timeout_s=0.5)
    snap = view.snapshot
    assert snap.ended_flows >= 2  # the DNS and HTTPS exchanges go idle mid-call
    assert {t.destination for t in snap.telemetry} == {"app-measurement.com"}
    assert snap.telemetry[0].during_call
    assert snap.call is not None and snap.call.service == "webrtc"


def test_the_view_throttles_its_rebuilds(signatures):
    ticks = iter([0.0, 0.1, 0.2, 0.6])
    view = LiveView("x", signatures, min_interval_s=0.5, clock=lambda: next(ticks))
    reader = open_capture(SAMPLE, batch_size=200)
    snaps = []

    def hook(progress):
        view.update(progress)
        snaps.append(view.snapshot)

    analyze_batches(reader.batches(), SAMPLE.name, lambda: reader.stats, on_batch=hook, signatures=signatures)
    assert [s.packets for s in snaps] == [200, 200, 200, 777]


def test_capture_strings_are_shown_literally_never_as_markup():
    from rich.console import Console

    evil = "[red]x[/red]evil.example"
    snap = ViewSnapshot("eth0", destinations=(DestinationRow(evil, "", "", "", 10, 0, 1, 0, 0),),
                        telemetry=(TelemetryRow(evil, "t", "[b]o[/b]", "third", 5, 0, 0, True),))
    console = Console(record=True, width=200)
    console.print(render(snap))
    text = console.export_text()
    assert evil in text
    assert "[b]o[/b]" in text


def test_the_view_works_without_payload_inspection():
    view = LiveView("x", None, min_interval_s=0)
    reader = open_capture(SAMPLE)
    analyze_batches(reader.batches(), SAMPLE.name, lambda: reader.stats, AnalyzeOptions(inspect_payloads=False),
                    on_batch=view.update)
    snap = view.snapshot
    assert snap.call is None
    assert snap.destinations[0].destination == "10.77.0.2"


# -- real captures on the loopback interface (root) ----------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a packet socket on lo")
_libc = ctypes.CDLL(None, use_errno=True)


def _start_live(tmp_path: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspector", "live", "-i", "lo", "--no-view", "-o", str(tmp_path / "out"), *extra],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    line = proc.stderr.readline()  # "capturing on lo ..." once the capture is about to start
    assert line.startswith("capturing on lo"), line + proc.stderr.read()
    time.sleep(0.5)  # the socket opens on the first step of the batch generator
    return proc


def _send_udp(port: int, n: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(i.to_bytes(4, "big") * 10, ("127.0.0.1", port))
            time.sleep(0.001)


@needs_root
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_capture_with_every_packet_in_evidence_and_tables(tmp_path, signum):
    port = 45000 + signum
    proc = _start_live(tmp_path, "--filter", f"udp port {port}")
    _send_udp(port, 150)
    time.sleep(0.3)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["inputs"]
    assert entry["evidence_packets"] == entry["packets"] == 150
    assert entry["evidence_sha256"] == hashlib.sha256((out / "evidence.pcapng").read_bytes()).hexdigest()
    flows = _table(out, "flows")
    (row,) = flows.itertuples()
    assert (row.transport, row.server_port, row.client_to_server_packets) == ("udp", port, 150)
    assert row.client_to_server_bytes == 150 * (20 + 8 + 40)
    again = tmp_path / "again"
    inspector.analyze([out / "evidence.pcapng"]).write(again)
    for name in TABLES:
        pd.testing.assert_frame_equal(_table(out, name), _table(again, name), obj=name)
    assert "wrote" in stdout


@needs_root
def test_count_ends_the_capture_by_itself(tmp_path):
    port = 45100
    proc = _start_live(tmp_path, "--filter", f"udp port {port}", "--count", "5")
    _send_udp(port, 20)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"][0]["packets"] == 5
    assert manifest["inputs"][0]["count_limit"] == 5


@needs_root
def test_an_invalid_filter_is_one_line_and_exit_2(tmp_path):
    done = runner.invoke(app, ["live", "-i", "lo", "--filter", "udp port", "-o", str(tmp_path / "o")])
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [
        "error: invalid filter 'udp port': can't parse filter expression: syntax error"]


def _drop_cap_net_raw() -> None:
    """In the child before exec: remove CAP_NET_RAW (13) from the bounding set (prctl
    PR_CAPBSET_DROP = 24), so even root runs the command without it (capabilities(7))."""
    if _libc.prctl(24, 13, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_RAW)")


@needs_root
def test_without_privilege_the_error_says_how_to_grant_it(tmp_path):
    done = subprocess.run([sys.executable, "-m", "inspector", "live", "-i", "lo", "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO),
                                                                              COLUMNS="300"),
                          preexec_fn=_drop_cap_net_raw, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: no permission to capture on 'lo': run as root or grant CAP_NET_RAW: "
        "sudo setcap cap_net_raw,cap_net_admin+eip $(which python3)"]
