"""inspector.analyze end to end on crafted captures: formats, accounting, bad input, batch sizes."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

import inspector
from inspector.errors import CaptureError
from inspector.pipeline import AnalyzeOptions
from inspector.schema import FLOW_COLUMN_NAMES, FLOW_DTYPES
from tests import craft as C

A, B_ = "10.0.0.1", "192.0.2.9"


def sample_packets():
    return [
        C.ether(C.tcp4(A, B_, 40000, 443, "S")),
        C.ether(C.tcp4(B_, A, 443, 40000, "SA")),
        C.ether(C.udp4(A, "192.0.2.53", 5353, 53, b"\x00" * 20), vlans=[5]),
        C.ether(C.ipv4(A, B_, 1, C.icmp())),
        C.ether(b"\x00" * 28, C.ETH_ARP),
        C.ether(C.tcp4(A, B_, 40000, 443, "PA", b"hello")),
    ]


def test_flows_frame_has_the_contract_columns_and_dtypes(tmp_path):
    path = C.write_pcap(tmp_path / "a.pcap", sample_packets())
    result = inspector.analyze([path])
    flows = result.flows
    assert tuple(flows.columns) == FLOW_COLUMN_NAMES
    assert {c: str(t) for c, t in flows.dtypes.items()} == {c: str(pd.Series([], dtype=t).dtype) for c, t in FLOW_DTYPES.items()}
    assert len(flows) == 3
    tcp = flows[flows.transport == "tcp"].iloc[0]
    assert (tcp.client_ip, tcp.client_port, tcp.server_ip, tcp.server_port) == (A, 40000, B_, 443)
    assert (tcp.client_to_server_packets, tcp.server_to_client_packets) == (2, 1)
    assert tcp.client_to_server_bytes == 40 + 45
    udp = flows[flows.transport == "udp"].iloc[0]
    assert udp.vlan_id == 5
    entry = result.manifest["inputs"][0]
    d = entry["decode"]
    assert entry["packets"] == 6
    assert d["packets_read"] == d["packets_decoded"] + d["packets_skipped"] == 6
    assert d["skipped_by_reason"] == {"non_ip": 1}


@pytest.mark.parametrize("writer", ["pcap", "pcap-ns-be", "pcapng", "pcapng-gz", "pcap-gz"])
def test_same_flows_whatever_the_container(tmp_path, writer):
    pkts = sample_packets()
    if writer == "pcap":
        data = C.pcap_bytes(pkts)
    elif writer == "pcap-ns-be":
        data = C.pcap_bytes(pkts, nanosecond=True, byteorder=">")
    elif writer == "pcapng":
        data = C.pcapng_bytes(pkts, tsresol=9)
    elif writer == "pcapng-gz":
        data = gzip.compress(C.pcapng_bytes(pkts))
    else:
        data = gzip.compress(C.pcap_bytes(pkts))
    path = tmp_path / "capture.bin"  # the name says nothing: detection is by content
    path.write_bytes(data)
    ref = inspector.analyze([C.write_pcap(tmp_path / "ref.pcap", pkts)]).flows.drop(columns="capture")
    got = inspector.analyze([path]).flows.drop(columns="capture")
    pd.testing.assert_frame_equal(got, ref)


def test_pcapng_with_mixed_interfaces(tmp_path):
    raw = C.udp4(A, B_, 40000, 2000, b"raw")
    eth = C.ether(C.udp4(A, B_, 40000, 2000, b"eth"))
    data = C.pcapng_bytes(
        [(0, C.T0_NS, raw), (1, C.T0_NS + 1000, eth), (0, C.T0_NS + 2000, raw)],
        interfaces=[(101, 65535, 6), (1, 65535, 9)],
    )
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(data)
    result = inspector.analyze([path])
    assert len(result.flows) == 1
    assert result.flows.iloc[0].client_to_server_packets == 3
    assert result.manifest["inputs"][0]["link_types"] == [1, 101]


def test_truncated_capture_keeps_flows_and_warns(tmp_path):
    data = C.pcap_bytes(sample_packets())
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-7])  # killed mid-record
    result = inspector.analyze([path])
    assert len(result.flows) == 3  # the last packet (a TCP segment of flow 1) is lost, flows are not
    entry = result.manifest["inputs"][0]
    assert entry["truncated"] is True and entry["truncation_detail"]
    assert result.warnings and "truncated" in result.warnings[0]


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("hello, this is text\n" * 20), p)[1], "not a"),
        (lambda p: (p.write_bytes(gzip.compress(b"plain text inside gzip" * 10)), p)[1], "not a"),
    ],
)
def test_bad_files_raise_one_capture_error_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path / "input.pcap")
    with pytest.raises(CaptureError) as e:
        inspector.analyze([path])
    assert str(path) in str(e.value)
    assert reason in str(e.value).lower()
    assert "\n" not in str(e.value)


def test_batch_size_does_not_change_the_csv(tmp_path, ndpi_dir):
    for name in ("zoom.pcap", "teams.pcap", "quic_frags_ch_out_of_order_same_packet_craziness.pcapng"):
        outputs = []
        for bs in (1, 7, 65536):
            out = tmp_path / f"{name}-{bs}"
            inspector.analyze([ndpi_dir / name], AnalyzeOptions(batch_size=bs)).write(out)
            outputs.append((out / "flows.csv").read_bytes())
        assert outputs[0] == outputs[1] == outputs[2], name


def test_write_csv_json_parquet_and_manifest(tmp_path):
    path = C.write_pcap(tmp_path / "a.pcap", sample_packets())
    result = inspector.analyze([path])
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / fmt
        written = result.write(out, fmt)
        names = sorted(p.name for p in written)
        assert f"flows.{fmt}" in names and "manifest.json" in names
        manifest = json.loads((out / "manifest.json").read_text())
        listed = {o["file"]: o["sha256"] for o in manifest["outputs"]}
        from inspector.export import sha256_file

        assert listed[f"flows.{fmt}"] == sha256_file(out / f"flows.{fmt}")
        assert manifest["inputs"][0]["sha256"] == sha256_file(path)
    back = pd.read_parquet(tmp_path / "parquet" / "flows.parquet")
    pd.testing.assert_frame_equal(back, result.flows)
    csv = pd.read_csv(tmp_path / "csv" / "flows.csv", keep_default_na=False)
    assert csv.first_seen.iloc[0].endswith("Z") and "T" in csv.first_seen.iloc[0]
    assert list(csv.columns) == list(FLOW_COLUMN_NAMES)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_flows_written_in_slices_equal_the_frame_written_whole(tmp_path, monkeypatch, fmt):
    """``write`` streams the flows table from its compact form (never making the frame); the file
    is the one the frame gives once ``Analysis.flows`` has been made."""
    from inspector import export

    path = C.write_pcap(tmp_path / "a.pcap", sample_packets())
    monkeypatch.setattr(export, "CHUNK_ROWS", 2)  # several slices even for a small capture
    result = inspector.analyze([path])
    result.write(tmp_path / "sliced", fmt)
    assert result._flows is None  # the frame was not made to write the table
    frame = result.flows
    result.write(tmp_path / "whole", fmt)
    sliced, whole = tmp_path / "sliced" / f"flows.{fmt}", tmp_path / "whole" / f"flows.{fmt}"
    if fmt == "parquet":  # one row group per slice: compare the tables read back
        pd.testing.assert_frame_equal(pd.read_parquet(sliced), pd.read_parquet(whole), check_exact=True)
        pd.testing.assert_frame_equal(pd.read_parquet(sliced), frame, check_exact=True)
    else:
        assert sliced.read_bytes() == whole.read_bytes()
    assert len(frame) > 2


@pytest.mark.parametrize("name", ["teams.pcap", "telegram_videocall.pcapng"])
def test_flows_csv_written_from_the_compact_table_equals_the_frames_csv(tmp_path, ndpi_dir, name):
    """flows.csv is formatted from the compact table (text once per distinct value); on real
    captures, with their calls' session ids, it is the file the DataFrame gives."""
    result = inspector.analyze([ndpi_dir / name])
    result.write(tmp_path / "compact")
    result.flows  # the frame: write() now writes it
    result.write(tmp_path / "frame")
    compact, frame = (tmp_path / d / "flows.csv" for d in ("compact", "frame"))
    assert compact.read_bytes() == frame.read_bytes()
    assert result.flows.session_id.ne("").any()  # both captures hold a call


def test_a_run_with_workers_builds_and_writes_in_a_second_process_the_same_files(tmp_path, ndpi_dir, monkeypatch, forked_starts):
    """With --workers above 1 the destinations are counted and most of flows.csv is written in
    forked processes (forked.py), the input hashed by the process begun as the run started
    (prehash.py), as with one; every file is the one a single process writes."""
    from inspector import api, export, prehash

    monkeypatch.setattr(export, "CHUNK_ROWS", 7)
    monkeypatch.setattr(api, "SPLIT_SLICE_ROWS", 7)  # several slices: flows.csv is split
    started = forked_starts
    path = ndpi_dir / "teams.pcap"
    answered: list[list[str]] = []  # what was written when the terminal answer would be printed

    def answer(out):
        return lambda: answered.append(sorted(p.name for p in out.iterdir()))

    claimed = []
    real_claim = prehash.claim

    def claim(st):
        early = real_claim(st)
        claimed.append(early is not None)
        return early

    monkeypatch.setattr(prehash, "claim", claim)
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)  # as on the 2-core machines here
    inspector.analyze([path], AnalyzeOptions(workers=1)).write(tmp_path / "one", while_writing=answer(tmp_path / "one"))
    # The only fork is the early hashing process (prehash.py), whose digest the reader took.
    assert started == [f"{path}: SHA-256"] and claimed == [True]
    inspector.analyze([path], AnalyzeOptions(workers=2)).write(tmp_path / "two", while_writing=answer(tmp_path / "two"))
    assert started == [f"{path}: SHA-256"] * 2 + ["destinations", "flows.csv"] and claimed == [True, True]
    # Called once per write, after the other tables and before the manifest; in the parallel
    # run before flows.csv is put together from this process's rows and the forked one's part.
    assert answered[0] == ["destinations.csv", "flows.csv", "media.csv", "sessions.csv"]
    parts = [n for n in answered[1] if n.startswith(".flows.csv.") and n.endswith(".part")]
    assert len(parts) == 1 and sorted(set(answered[1]) - set(parts)) == ["destinations.csv", "media.csv", "sessions.csv"]
    for name in ("flows.csv", "sessions.csv", "destinations.csv", "media.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two")]
    assert manifests[0]["outputs"] == manifests[1]["outputs"]


def test_a_failed_write_leaves_no_part_of_flows_csv_behind(tmp_path, ndpi_dir, monkeypatch):
    from inspector import api, export
    from inspector.errors import InspectorError

    monkeypatch.setattr(export, "CHUNK_ROWS", 7)
    monkeypatch.setattr(api, "SPLIT_SLICE_ROWS", 7)
    result = inspector.analyze([ndpi_dir / "teams.pcap"], AnalyzeOptions(workers=2))

    def full(frame, path, fmt):
        raise InspectorError(f"{path}: no space left on device")

    monkeypatch.setattr(api, "write_table", full)
    with pytest.raises(InspectorError, match="no space left"):
        result.write(tmp_path / "out")
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]
