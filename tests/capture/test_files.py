"""Capture file readers: formats, gzip, bad files, truncation, batching, the shared captures."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import threading

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.capture.files import CaptureStats, open_capture
from inspector.capture.writer import PcapngWriter
from inspector.errors import CaptureError
from tests import craft

T0 = craft.T0_NS + 123_456_789  # 2023-11-14T22:13:20.123456789Z
FRAMES = [
    craft.ether(craft.udp4("10.0.0.1", "10.0.0.2", 5000, 53, b"query")),
    craft.ether(craft.tcp4("10.0.0.1", "93.184.216.34", 40000, 443, "S")),
    craft.ether(craft.udp6("2001:db8::1", "2001:db8::2", 1, 2, b"x" * 300), craft.ETH_IPV6, vlans=[7]),
]


def read_all(path, batch_size=65536):
    """(stats, [(ts_ns, linktype, wirelen, bytes), ...]) of a capture read to the end."""
    reader = open_capture(path, batch_size)
    out = []
    for b in reader.batches():
        assert len(b) <= batch_size
        for i in range(len(b)):
            out.append((int(b.ts_ns[i]), int(b.linktype[i]), int(b.wirelen[i]), b.packet(i)))
    return reader.stats, out


def put(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ classic pcap


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_round_trip(tmp_path, byteorder, nanosecond):
    packets = [(T0 + i * 1_000_001, f) for i, f in enumerate(FRAMES)]
    path = put(tmp_path, "x.bin", craft.pcap_bytes(packets, 1, nanosecond=nanosecond, byteorder=byteorder))
    stats, got = read_all(path)
    assert stats.format == ("pcap-ns" if nanosecond else "pcap")
    assert stats.compression == ""
    assert [g[3] for g in got] == FRAMES
    expected_ts = [t if nanosecond else t // 1000 * 1000 for t, _ in packets]
    assert [g[0] for g in got] == expected_ts
    assert {g[1] for g in got} == {1}
    assert stats.records_read == 3 and stats.records_skipped == {}
    assert stats.link_types == [1]
    assert (stats.first_ts_ns, stats.last_ts_ns) == (expected_ts[0], expected_ts[-1])
    assert not stats.truncated
    assert stats.size_bytes == os.path.getsize(path)
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pcap_hand_written_big_endian_ns(tmp_path):
    # a1b23c4d big-endian, version 2.4, snaplen 65535, LINKTYPE_RAW (101) with FCS bits set
    # in the high half of the link-type field (draft-ietf-opsawg-pcap §4: only the low 16 bits
    # are the link type); one record: 10 s + 5 ns, caplen 4, wirelen 60.
    data = (
        bytes.fromhex("a1b23c4d 0002 0004 00000000 00000000 0000ffff 10000065".replace(" ", ""))
        + bytes.fromhex("0000000a 00000005 00000004 0000003c".replace(" ", ""))
        + b"\x45\x00\x00\x3c"
    )
    reader = open_capture(put(tmp_path, "hand.pcap", data))
    (batch,) = list(reader.batches())
    assert batch.packet(0) == b"\x45\x00\x00\x3c"
    assert int(batch.ts_ns[0]) == 10_000_000_005
    assert int(batch.wirelen[0]) == 60 and int(batch.caplen[0]) == 4
    assert int(batch.linktype[0]) == 101
    assert reader.stats.format == "pcap-ns"


def test_pcap_caplen_over_snaplen_is_counted_and_skipped(tmp_path):
    # snaplen 8, then a record of 10 captured bytes (as a buggy capture tool writes)
    data = bytearray(craft.pcap_bytes([b"a" * 8], 101, snaplen=8))
    data += struct.pack("<IIII", 1_700_000_001, 0, 10, 10) + b"b" * 10
    data += struct.pack("<IIII", 1_700_000_002, 0, 8, 8) + b"c" * 8
    stats, got = read_all(put(tmp_path, "s.pcap", bytes(data)))
    assert [g[3] for g in got] == [b"a" * 8, b"c" * 8]
    assert stats.records_skipped == {"caplen_exceeds_snaplen": 1}
    assert stats.records_read == 3
    assert not stats.truncated


def test_pcap_absurd_caplen_is_reported_as_corruption(tmp_path):
    data = craft.pcap_bytes([b"a" * 20], 101)
    garbage_at = len(data)
    data += struct.pack("<IIII", 1, 0, 0x7FFFFFF0, 5) + b"z" * 100
    stats, got = read_all(put(tmp_path, "g.pcap", data))
    assert [g[3] for g in got] == [b"a" * 20]
    assert stats.truncated
    assert f"offset {garbage_at}" in stats.truncation_detail
    assert "cannot resynchronise" in stats.truncation_detail
    assert stats.records_skipped == {"caplen_absurd": 1} and stats.records_read == 2


def test_pcap_truncated_mid_record(tmp_path):
    full = craft.pcap_bytes([b"a" * 50, b"b" * 98], 1)
    cut = full[: -(98 - 21)]  # 16-byte header + 21 of 98 bytes of the last record
    stats, got = read_all(put(tmp_path, "t.pcap", cut))
    assert [g[3] for g in got] == [b"a" * 50]
    assert stats.truncated
    assert stats.truncation_detail == "file ends 37 bytes into a 114-byte record at offset 90"
    assert stats.records_read == 2 and stats.records_skipped == {"truncated_record": 1}


def test_pcap_truncated_mid_header(tmp_path):
    full = craft.pcap_bytes([b"a" * 50, b"b" * 98], 1)
    cut = full[: 24 + 66 + 7]
    stats, got = read_all(put(tmp_path, "h.pcap", cut))
    assert len(got) == 1
    assert stats.truncation_detail == "file ends 7 bytes into a 16-byte record header at offset 90"
    assert stats.records_read == 1 and stats.records_skipped == {}


def test_pcap_header_only_has_no_packets(tmp_path):
    stats, got = read_all(put(tmp_path, "e.pcap", craft.pcap_bytes([], 1)))
    assert got == [] and not stats.truncated and stats.first_ts_ns is None


# ------------------------------------------------------------------ pcapng


def _multi_section_pcapng() -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """Two sections (the second big-endian) with mixed interfaces and every packet block kind."""
    buf = io.BytesIO()
    expected = []
    w = PcapngWriter(buf, interfaces=[(1, 262144, 6), (113, 262144, 9), (101, 262144, 0x80 | 20)])
    eth = FRAMES[0]
    cooked = craft.sll(craft.udp4("10.0.0.3", "10.0.0.4", 1, 2, b"sll"))
    raw = craft.udp4("10.0.0.5", "10.0.0.6", 3, 4, b"raw")
    w.write_packet(0, T0, eth)
    expected.append((T0 // 1000 * 1000, 1, len(eth), eth))
    w.write_block(0x0BAD, b"unknown block body")  # skipped by its length
    w.write_packet(1, T0 + 5, cooked)
    expected.append((T0 + 5, 113, len(cooked), cooked))
    w.write_packet(2, craft.T0_NS + 500_000_000, raw)  # exactly 2^19 units of 2^-20 s
    expected.append((craft.T0_NS + 500_000_000, 101, len(raw), raw))
    # obsolete Packet Block (type 2): if 1, drops 0, ts in ns units
    units = T0 + 9
    body = struct.pack("<HHIIII", 1, 0, units >> 32, units & 0xFFFFFFFF, len(cooked), 999) + cooked
    w.write_block(2, body)
    expected.append((T0 + 9, 113, 999, cooked))
    # Interface Statistics Block (type 5) is not a packet: skipped
    w.write_block(5, struct.pack("<III", 0, 0, 0))
    # second section, big-endian, one interface with if_tsoffset = 100 s and default µs
    w2 = PcapngWriter(buf, interfaces=[], byteorder=">")
    idb = struct.pack(">HHI", 229, 0, 262144) + w2.option(14, struct.pack(">q", 100)) + w2.option(0, b"")
    w2.write_block(1, idb)
    w2.interfaces.append((229, 262144, 6))
    v6 = craft.udp6("2001:db8::1", "2001:db8::2", 5, 6, b"v6")
    w2.write_packet(0, 1_000_000, v6)
    expected.append((100_001_000_000, 229, len(v6), v6))
    # Simple Packet Block: interface 0, original length, no timestamp (gets the previous one)
    w2.write_block(3, struct.pack(">I", len(v6)) + v6)
    expected.append((100_001_000_000, 229, len(v6), v6))
    return buf.getvalue(), expected


def test_pcapng_multi_section_mixed_interfaces(tmp_path):
    data, expected = _multi_section_pcapng()
    stats, got = read_all(put(tmp_path, "m.pcapng", data))
    assert got == expected
    assert stats.format == "pcapng"
    assert stats.sections == 2
    assert stats.interfaces == 4
    assert stats.link_types == [1, 101, 113, 229]
    assert stats.records_read == 6 and stats.records_skipped == {}
    assert (stats.first_ts_ns, stats.last_ts_ns) == (100_001_000_000, craft.T0_NS + 500_000_000)
    assert not stats.truncated


def test_pcapng_spb_caplen_is_min_of_snaplen_and_original_length(tmp_path):
    buf = io.BytesIO()
    w = PcapngWriter(buf, interfaces=[(101, 4, 6)])
    w.write_packet(0, T0, b"abcdefgh")  # cut to 4 by the writer
    w.write_block(3, struct.pack("<I", 8) + b"ABCDEFGH")  # block holds 8 bytes, snaplen says 4
    w.write_block(3, struct.pack("<I", 2) + b"XYZW")  # original length 2 < padded data
    stats, got = read_all(put(tmp_path, "spb.pcapng", buf.getvalue()))
    assert [(g[2], g[3]) for g in got] == [(8, b"abcd"), (8, b"ABCD"), (2, b"XY")]
    assert [g[0] for g in got] == [T0 // 1000 * 1000] * 3


def test_pcapng_bad_records_are_counted(tmp_path):
    buf = io.BytesIO()
    w = PcapngWriter(buf, interfaces=[(1, 0, 6)])
    w.write_packet(0, T0, b"ok")
    # EPB on interface 5, which the section never described
    w.write_block(6, struct.pack("<IIIII", 5, 0, 0, 2, 2) + b"no")
    # EPB whose caplen (200) exceeds its block
    w.write_block(6, struct.pack("<IIIII", 0, 0, 0, 200, 200) + b"short")
    # EPB too short to hold its fixed fields (block length 16)
    w.write_block(6, b"\x00" * 4)
    w.write_packet(0, T0, b"ok2")
    stats, got = read_all(put(tmp_path, "bad.pcapng", buf.getvalue()))
    assert [g[3] for g in got] == [b"ok", b"ok2"]
    assert stats.records_skipped == {
        "unknown_interface": 1, "caplen_exceeds_record": 1, "block_too_short": 1,
    }
    assert stats.records_read == 5


def test_pcapng_impossible_block_length_is_recorded(tmp_path):
    data = craft.pcapng_bytes([b"first"], 101)
    bad_at = len(data)
    data += struct.pack("<II", 6, 7) + b"\x00" * 40  # length 7: not a multiple of 4, < 12
    stats, got = read_all(put(tmp_path, "c.pcapng", data))
    assert [g[3] for g in got] == [b"first"]
    assert stats.truncated
    assert f"at offset {bad_at} has an impossible length 7" in stats.truncation_detail


@pytest.mark.parametrize("compress", [False, True])
def test_pcapng_huge_block_length_is_corruption_not_a_wait(tmp_path, compress):
    data = craft.pcapng_bytes([b"first"], 101)
    bad_at = len(data)
    data += struct.pack("<II", 6, 0x7FFFFFF0) + b"\x00" * 100
    path = put(tmp_path, "huge.pcapng", gzip.compress(data) if compress else data)
    stats, got = read_all(path)
    assert [g[3] for g in got] == [b"first"]
    assert f"at offset {bad_at} has an impossible length {0x7FFFFFF0}" in stats.truncation_detail


def test_pcapng_truncated_mid_block_and_mid_header(tmp_path):
    data = craft.pcapng_bytes([b"a" * 40, b"b" * 40], 1)
    last_block = 32 + 40
    cut = data[: len(data) - last_block + 50]
    stats, got = read_all(put(tmp_path, "t1.pcapng", cut))
    assert [g[3] for g in got] == [b"a" * 40]
    start = len(data) - last_block
    assert stats.truncation_detail == f"file ends 50 bytes into a 72-byte block at offset {start}"
    assert stats.records_skipped == {"truncated_record": 1}
    stats, got = read_all(put(tmp_path, "t2.pcapng", data[: start + 5]))
    assert len(got) == 1
    assert stats.truncation_detail == f"file ends 5 bytes into a block header at offset {start}"


def test_pcapng_tsresol_variants(tmp_path):
    packets = [(0, T0, b"us"), (1, T0, b"ns"), (2, T0, b"p2"), (3, T0, b"ms")]
    interfaces = [(101, 0, 6), (101, 0, 9), (101, 0, 0x80 | 20), (101, 0, 3)]
    data = craft.pcapng_bytes(packets, interfaces=interfaces)
    _, got = read_all(put(tmp_path, "r.pcapng", data))
    units20 = (T0 << 20) // 1_000_000_000
    two20 = (units20 >> 20) * 1_000_000_000 + ((units20 & ((1 << 20) - 1)) * 1_000_000_000 >> 20)
    assert [g[0] for g in got] == [T0 // 1000 * 1000, T0, two20, T0 // 1_000_000 * 1_000_000]
    assert abs(two20 - T0) < 1000  # 2^-20 s is about 954 ns


# ------------------------------------------------------------------ gzip


@pytest.mark.parametrize("kind", ["pcap", "pcap-ns", "pcapng"])
def test_gzip_of_each_format(tmp_path, kind):
    if kind == "pcapng":
        plain, expected = _multi_section_pcapng()
    else:
        ns = kind == "pcap-ns"
        plain = craft.pcap_bytes([(T0, f) for f in FRAMES], 1, nanosecond=ns, byteorder=">")
        expected = [(T0 if ns else T0 // 1000 * 1000, 1, len(f), f) for f in FRAMES]
    path = put(tmp_path, "z.capture", gzip.compress(plain))
    stats, got = read_all(path, batch_size=2)
    assert got == expected
    assert stats.compression == "gzip" and stats.format == kind
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stats.size_bytes == len(path.read_bytes())
    assert not stats.truncated


def test_gzip_stream_over_several_chunks(tmp_path, monkeypatch):
    import inspector.capture.files as files

    monkeypatch.setattr(files, "GZIP_CHUNK", 1000)  # records straddle chunk boundaries
    frames = [bytes([i]) * (i * 7 % 300 + 1) for i in range(200)]
    path = put(tmp_path, "many.pcap.gz", gzip.compress(craft.pcap_bytes(frames, 101)))
    stats, got = read_all(path, batch_size=7)
    assert [g[3] for g in got] == frames
    assert not stats.truncated
    ng = put(tmp_path, "many.pcapng.gz", gzip.compress(craft.pcapng_bytes(frames, 101)))
    stats, got = read_all(ng, batch_size=7)
    assert [g[3] for g in got] == frames and not stats.truncated


def test_gzip_cut_short_yields_what_it_has(tmp_path):
    frames = [os.urandom(200) for _ in range(100)]  # incompressible, so the cut falls late
    packed = gzip.compress(craft.pcap_bytes(frames, 101))
    stats, got = read_all(put(tmp_path, "cut.pcap.gz", packed[: len(packed) // 2]))
    assert 0 < len(got) < 100
    assert [g[3] for g in got] == frames[: len(got)]
    assert stats.truncated
    assert "gzip" in stats.truncation_detail


def _inflaters():
    import zlib

    out = [pytest.param((zlib, (zlib.error,)), id="zlib")]
    try:
        from isal import isal_zlib
    except ImportError:
        out.append(pytest.param(None, id="isal", marks=pytest.mark.skip(reason="the isal package is not installed")))
    else:
        out.append(pytest.param((isal_zlib, (zlib.error, isal_zlib.error)), id="isal"))
    return out


@pytest.mark.parametrize("inflater", _inflaters())
def test_gunzip_gives_every_byte_before_the_end_or_the_damage(inflater, monkeypatch):
    """ISA-L's inflate where the isal package is installed, zlib's otherwise: the same bytes and
    the same verdicts. ISA-L takes input ahead of the output asked for, so a stream cut short
    still holds output when the file ends; it must come out too."""
    import inspector.capture.files as files

    monkeypatch.setattr(files, "_INFLATE", inflater[0])
    monkeypatch.setattr(files, "_INFLATE_ERRORS", inflater[1])

    def inflate(data: bytes) -> tuple[bytes, str]:
        gunzip, out = files._Gunzip(io.BytesIO(data)), []
        while not gunzip.done:
            out.append(gunzip.read(4096))
        return b"".join(out), gunzip.error

    plain = os.urandom(5000) + bytes(200_000) + os.urandom(3000)
    packed = gzip.compress(plain)
    assert inflate(packed) == (plain, "")
    assert inflate(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]) + bytes(8)) == (plain, "")
    assert inflate(packed + gzip.compress(b"a short last member")) == (plain + b"a short last member", "")
    assert inflate(packed + b"not another member") == (plain, "")
    got, error = inflate(packed[:-20])  # 8 bytes of trailer and 12 of the last block missing
    assert plain.startswith(got) and len(got) > len(plain) - 256
    assert error == "gzip stream ends before its end-of-stream marker"
    for damaged in (packed[:-8] + bytes([packed[-8] ^ 1]) + packed[-7:], packed[:40] + b"\xff" * 8 + packed[48:]):
        got, error = inflate(damaged)  # a wrong CRC-32; a broken block
        assert plain.startswith(got) and error.startswith("corrupt gzip data")


def test_gzip_is_read_with_zlib_where_isal_is_missing(tmp_path):
    """The isal package is only installed where it ships wheels: without it, the reader
    inflates with zlib (checked in a fresh interpreter where importing isal fails)."""
    import subprocess
    import sys

    frames = [os.urandom(120) for _ in range(30)]
    path = put(tmp_path, "z.pcap.gz", gzip.compress(craft.pcap_bytes(frames, 101)))
    script = (
        "import sys, zlib; sys.modules['isal'] = None\n"
        "from inspector.capture import files\n"
        "assert files._INFLATE is zlib and files._INFLATE_ERRORS == (zlib.error,)\n"
        f"reader = files.open_capture({str(path)!r})\n"
        "print(sum(len(b) for b in reader.batches()), reader.stats.truncated)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["30", "False"]


def test_gzip_truncated_inner_capture(tmp_path):
    full = craft.pcap_bytes([b"a" * 50, b"b" * 98], 1)
    stats, got = read_all(put(tmp_path, "t.gz", gzip.compress(full[:-77])))
    assert len(got) == 1
    assert stats.truncation_detail.startswith("file ends 37 bytes into a 114-byte record at offset 90")
    assert stats.records_skipped == {"truncated_record": 1}


def test_gzip_members_one_after_another_are_one_stream(tmp_path):
    plain = craft.pcap_bytes([b"a" * 40, b"b" * 40, b"c" * 40], 101)
    data = gzip.compress(plain[:50]) + gzip.compress(plain[50:]) + b"\x00" * 8  # trailing zeros
    path = put(tmp_path, "members.gz", data)
    stats, got = read_all(path)
    assert [g[3] for g in got] == [b"a" * 40, b"b" * 40, b"c" * 40]
    assert not stats.truncated
    assert stats.sha256 == hashlib.sha256(data).hexdigest()


def test_gzip_with_corrupt_inner_capture_still_hashes_the_whole_file(tmp_path, monkeypatch):
    import inspector.capture.files as files

    monkeypatch.setattr(files, "GZIP_CHUNK", 64)
    plain = craft.pcap_bytes([b"a" * 20], 101) + struct.pack("<IIII", 1, 0, 1 << 30, 5) + os.urandom(5000)
    path = put(tmp_path, "corrupt.pcap.gz", gzip.compress(plain))
    stats, got = read_all(path)
    assert len(got) == 1 and stats.truncated and "cannot resynchronise" in stats.truncation_detail
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_abandoned_gzip_read_can_start_again(tmp_path, monkeypatch):
    import inspector.capture.files as files

    monkeypatch.setattr(files, "GZIP_CHUNK", 256)
    frames = [os.urandom(100) for _ in range(50)]
    reader = open_capture(put(tmp_path, "a.pcap.gz", gzip.compress(craft.pcap_bytes(frames, 101))), 5)
    it = reader.batches()
    next(it)
    it.close()  # stops the decompressing thread
    assert [b.packet(i) for b in reader.batches() for i in range(len(b))] == frames


# ------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pcap"
    with pytest.raises(CaptureError, match="no such file") as e:
        open_capture(path)
    assert str(path) in str(e.value) and e.value.path == str(path)


def test_directory(tmp_path):
    with pytest.raises(CaptureError, match="is a directory") as e:
        open_capture(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_empty_file(tmp_path):
    path = put(tmp_path, "empty.pcap", b"")
    with pytest.raises(CaptureError, match="is empty") as e:
        open_capture(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (bytes(range(256)) * 4, "is not a pcap or pcapng capture (unknown magic 00010203)"),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "is not a pcap or pcapng capture"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "ends inside the 24-byte pcap file header"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "ends inside the pcapng section header"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x11\x22\x33\x44", "is not a pcap or pcapng capture"),
        (gzip.compress(b"just some text, compressed\n"), "is not a pcap or pcapng capture (gzip-compressed)"),
        (b"\x1f\x8b\x08\x00garbage that is not deflate", "corrupt gzip data"),
        (gzip.compress(b""), "is empty once decompressed (gzip)"),
    ],
    ids=["random", "text", "short-pcap-header", "short-shb", "shb-bad-bom", "gzip-text", "bad-gzip",
         "gzip-empty"],
)
def test_not_a_capture(tmp_path, content, reason):
    path = put(tmp_path, "capture.pcap", content)  # the name says pcap; the content decides
    with pytest.raises(CaptureError) as e:
        open_capture(path)
    assert str(e.value).startswith(f"{path}: ")
    assert reason in str(e.value)


def test_name_does_not_decide_format(tmp_path):
    path = put(tmp_path, "looks_like.pcap", craft.pcapng_bytes([b"p"], 101))
    assert open_capture(path).stats.format == "pcapng"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = put(tmp_path, "secret.pcap", craft.pcap_bytes([b"x"], 101))
    path.chmod(0)
    with pytest.raises(CaptureError, match="cannot read"):
        open_capture(path)


# ------------------------------------------------------------------ batching, progress


def test_batch_sizes_give_identical_packets(tmp_path):
    frames = [craft.ether(craft.udp4("10.0.0.1", "10.0.0.2", i, 53, bytes(i % 50))) for i in range(100)]
    for data in (craft.pcap_bytes(frames, 1), craft.pcapng_bytes(frames, 1)):
        path = put(tmp_path, "b.cap", data)
        results = []
        for size in (1, 7, 65536):
            reader = open_capture(path, size)
            batches = list(reader.batches())
            assert all(len(b) <= size for b in batches)
            assert [b.first_index for b in batches] == list(range(0, 100, size))[: len(batches)]
            results.append([(int(b.ts_ns[i]), b.packet(i)) for b in batches for i in range(len(b))])
        assert results[0] == results[1] == results[2]
        assert [p for _, p in results[0]] == frames


@pytest.mark.parametrize("compress", [False, True])
def test_a_smaller_first_batch_gives_the_same_packets(tmp_path, compress):
    """``first_batch_size``: the first batch holds that many packets, the rest ``batch_size``."""
    frames = [craft.ether(craft.udp4("10.0.0.1", "10.0.0.2", i, 53, bytes(i % 50))) for i in range(100)]
    data = craft.pcap_bytes(frames, 1)
    path = put(tmp_path, "f.pcap.gz" if compress else "f.pcap", gzip.compress(data) if compress else data)
    reader = open_capture(path, 40)
    reader.first_batch_size = 8
    batches = list(reader.batches())
    assert [len(b) for b in batches] == [8, 40, 40, 12]
    assert [b.first_index for b in batches] == [0, 8, 48, 88]
    assert [b.packet(i) for b in batches for i in range(len(b))] == frames
    reader.first_batch_size = 1000  # never more than batch_size
    assert [len(b) for b in reader.batches()] == [40, 40, 20]


def test_progress_reports_bytes_up_to_the_file_size(tmp_path):
    path = put(tmp_path, "p.pcap", craft.pcap_bytes([b"x" * 100] * 50, 101))
    seen = []
    reader = open_capture(path, 10)
    for _ in reader.batches(progress=seen.append):
        pass
    assert seen == sorted(seen) and seen[-1] == os.path.getsize(path)
    assert len(seen) >= 5


def test_batches_twice_reads_again_with_fresh_stats(tmp_path):
    path = put(tmp_path, "twice.pcap", craft.pcap_bytes(FRAMES, 1))
    reader = open_capture(path)
    first = sum(len(b) for b in reader.batches())
    second = sum(len(b) for b in reader.batches())
    assert first == second == 3 and reader.stats.records_read == 3


def _cut_capture(tmp_path):
    """A 10-batch capture (batch size 4) whose last record is cut short, and its bytes."""
    data = craft.pcap_bytes([bytes([i]) * (50 + i) for i in range(40)], 101)[:-7]
    return put(tmp_path, "h.pcap", data), data


def test_digest_made_by_a_thread_beside_the_reading(tmp_path, monkeypatch):
    """A mapped file is hashed by a thread at the lowest priority while it is read; ``sha256``
    is the file's digest, waited for when read, also for a truncated file."""
    from inspector.capture import files

    path, data = _cut_capture(tmp_path)
    started = {}

    def note_start(increment):  # the hashing thread's first step
        started["niceness"], started["thread"] = increment, threading.current_thread().name

    monkeypatch.setattr(files, "lower_thread_priority", note_start)
    reader = open_capture(path, 4)
    assert sum(1 for _ in reader.batches()) == 10 and reader.stats.truncated
    assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()  # read again: the same
    assert started == {"niceness": files.HASH_NICENESS, "thread": "capture-sha256"}


def test_digest_made_by_a_process_after_the_reading(tmp_path, monkeypatch):
    """``hash_after_reading`` (a parallel run's reader): a forked process hashes the file, started
    with the last batch, through a descriptor opened before the reading (so the file renamed
    meanwhile is still the one hashed); no thread of this process hashes it."""
    from inspector import forked
    from inspector.capture import files

    path, data = _cut_capture(tmp_path)
    parent = os.getpid()
    real_hash, real_start = files._sha256_of_file, forked.start
    batches_read: list[int] = []
    forks_after = []

    def in_child_only(source, size):
        if os.getpid() == parent:
            raise AssertionError("hashed in the reading process")
        return real_hash(source, size)

    def start(what, fn, *args):
        forks_after.append(len(batches_read))
        return real_start(what, fn, *args)

    monkeypatch.setattr(files, "_sha256_of_file", in_child_only)
    monkeypatch.setattr(forked, "start", start)
    monkeypatch.setattr(files, "lower_thread_priority", lambda n: pytest.fail("a hashing thread ran"))
    reader = open_capture(path, 4)
    reader.hash_after_reading = True
    for batch in reader.batches():
        if not batches_read:
            os.rename(path, tmp_path / "moved.pcap")
            path.write_bytes(b"another file now")
        batches_read.append(len(batch))
    assert len(batches_read) == 10 and reader.stats.truncated
    assert forks_after == [9]  # with the last batch, not before
    assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()


def test_digest_after_reading_falls_back_to_a_thread_without_fork(tmp_path, monkeypatch):
    from inspector import forked

    path, data = _cut_capture(tmp_path)
    monkeypatch.setattr(forked, "start", lambda *args: None)  # as where os.fork is missing
    reader = open_capture(path, 4)
    reader.hash_after_reading = True
    assert sum(1 for _ in reader.batches()) == 10
    assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()


def _cut_capture_gzip(tmp_path):
    """``_cut_capture`` gzip-compressed, and the compressed bytes (what its digest covers)."""
    path, data = _cut_capture(tmp_path)
    packed = gzip.compress(data)
    return put(tmp_path, "h.pcap.gz", packed), packed


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("after_reading", [False, True])
def test_digest_taken_from_the_process_begun_at_the_start(tmp_path, monkeypatch, after_reading, compressed):
    """With ``prehash.start`` run first for the file, the reader hashes nothing itself: it takes
    that process's digest. A parallel run's reader (``hash_after_reading``) pauses it with its
    first batch and lets it go on with its last. A gzip file's process hashes its compressed
    bytes, which the reader then only counts."""
    from inspector import forked, prehash
    from inspector.capture import files

    path, data = _cut_capture_gzip(tmp_path) if compressed else _cut_capture(tmp_path)
    real_read = files._HashingReader.read

    def read_without_hashing(self, size=-1):
        if self.hashing:
            pytest.fail("the reader hashed the gzip file")
        return real_read(self, size)

    monkeypatch.setattr(files._HashingReader, "read", read_without_hashing)
    batches_read: list[int] = []
    told = []
    monkeypatch.setattr(prehash.EarlyHash, "pause", lambda self: told.append(("pause", len(batches_read))))
    real_resume = prehash.EarlyHash.resume
    monkeypatch.setattr(prehash.EarlyHash, "resume", lambda self: (told.append(("resume", len(batches_read))), real_resume(self)))
    monkeypatch.setattr(files, "lower_thread_priority", lambda n: pytest.fail("a hashing thread ran"))
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)
    try:
        prehash.start([path])  # forks the early process (``forked.start``)
        monkeypatch.setattr(forked, "start", lambda *args: pytest.fail("a hashing process was forked after the reading"))
        early = prehash._current
        assert early is not None
        reader = open_capture(path, 4)
        reader.hash_after_reading = after_reading
        for batch in reader.batches():
            batches_read.append(len(batch))
        assert len(batches_read) == 10 and prehash._current is None  # taken by the reader
        assert told == ([("pause", 0), ("resume", 9)] if after_reading else [("resume", 9)])
        assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()
        assert prehash._started == []  # its process reaped
    finally:
        prehash._stop_left_over()


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_hash_gate_lets_the_paused_hashing_process_go_on_while_it_says_so(tmp_path, monkeypatch, compressed):
    """A parallel run's reader asks its ``hash_gate`` after each batch: True resumes the paused
    hashing process, False pauses it again, None leaves it as it is; the digest is the file's."""
    from inspector import prehash

    path, data = _cut_capture_gzip(tmp_path) if compressed else _cut_capture(tmp_path)
    batches_read: list[int] = []
    told = []
    real_pause, real_resume = prehash.EarlyHash.pause, prehash.EarlyHash.resume
    monkeypatch.setattr(prehash.EarlyHash, "pause", lambda self: (told.append(("pause", len(batches_read))), real_pause(self)))
    monkeypatch.setattr(prehash.EarlyHash, "resume", lambda self: (told.append(("resume", len(batches_read))), real_resume(self)))
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)
    answers = iter([None, True, True, False, None, True, False, False] + [None] * 8)
    try:
        prehash.start([path])
        reader = open_capture(path, 4)
        reader.hash_after_reading = True
        reader.hash_gate = lambda: next(answers)
        for batch in reader.batches():
            batches_read.append(len(batch))
        assert len(batches_read) == 10
        assert told[:5] == [("pause", 0), ("resume", 2), ("pause", 4), ("resume", 6), ("pause", 7)]
        assert told[-1][0] == "resume"  # the digest is asked for with the last batch
        assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        prehash._stop_left_over()


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_reading_stopped_early_stops_the_paused_hashing_process(tmp_path, monkeypatch, compressed):
    """A parallel reader pauses the early hashing process; a consumer that stops reading (an
    error in the pipeline) leaves no process waiting for a resume that never comes."""
    from inspector import prehash

    path, _ = _cut_capture_gzip(tmp_path) if compressed else _cut_capture(tmp_path)
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)
    try:
        prehash.start([path])
        early = prehash._current
        reader = open_capture(path, 4)
        reader.hash_after_reading = True
        batches = reader.batches()
        next(batches)
        batches.close()
        assert early not in prehash._started
        with pytest.raises(ProcessLookupError):
            os.kill(early.pid, 0)  # killed and reaped
    finally:
        prehash._stop_left_over()


def test_digest_of_a_file_changed_since_the_start_is_the_readers_own(tmp_path, monkeypatch):
    """The process begun at the start hashed the file as it was then: a reader of the file as it
    is now (another size and modification time) hashes it itself."""
    from inspector import prehash

    path, _ = _cut_capture(tmp_path)
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)
    try:
        prehash.start([path])
        data = craft.pcap_bytes([b"x" * 60, b"y" * 70], 101)
        path.write_bytes(data)
        reader = open_capture(path, 4)
        assert sum(len(b) for b in reader.batches()) == 2
        assert reader.stats.sha256 == hashlib.sha256(data).hexdigest()
        assert prehash._current is not None  # not taken; stopped at exit
    finally:
        prehash._stop_left_over()


def test_batch_buffer_is_a_view_of_the_file(tmp_path):
    path = put(tmp_path, "v.pcap", craft.pcap_bytes([b"hello"], 101))
    (batch,) = list(open_capture(path).batches())
    assert int(batch.offset[0]) == 24 + 16  # file offset of the packet bytes
    assert batch.buffer.shape[0] == os.path.getsize(path)
    assert batch.caplen.dtype == np.int32 and batch.ts_ns.dtype == np.int64
    assert batch.linktype.dtype == np.uint16 and batch.offset.dtype == np.int64


# ------------------------------------------------------------------ fuzz


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["pcap", "pcapng"]),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 399), st.integers(0, 255)), max_size=6),
    batch_size=st.integers(1, 5),
    compress=st.booleans(),
)
def test_mangled_captures_never_raise(tmp_path, kind, cut, flips, batch_size, compress):
    frames = [b"a" * 30, b"b" * 61, b"c" * 7, b"d" * 90]
    data = bytearray(craft.pcap_bytes(frames, 1) if kind == "pcap" else _multi_section_pcapng()[0])
    for pos, value in flips:
        if 24 <= pos < len(data):  # keep the magic so the file is still recognised
            data[pos] = value
    data = bytes(data[: max(cut, 28)])
    path = put(tmp_path, "fuzz.bin", gzip.compress(data) if compress else data)
    try:
        reader = open_capture(path, batch_size)
    except CaptureError:
        return
    n = sum(len(b) for b in reader.batches())
    stats: CaptureStats = reader.stats
    assert n <= stats.records_read <= len(data) // 12
    assert stats.records_read == n + sum(stats.records_skipped.values())
    for b in open_capture(path, batch_size).batches():
        assert np.all(b.offset + b.caplen <= b.buffer.shape[0])
        assert np.all(b.caplen >= 0) and np.all(b.wirelen >= b.caplen)


# ------------------------------------------------------------------ shared real captures

# dpkt 1.9.8's pcapng reader applies the first interface's if_tsresol to every interface; these
# files mix a µs and a ns interface (capinfos lists both), so dpkt's timestamps are wrong there
# for the ns interface. tshark -T fields -e frame.time_epoch gives the values pinned below.
DPKT_MIXED_TSRESOL = {"dtls.pcap", "sites.pcapng", "viber.pcap"}
TSHARK_FIRST_LAST_TS = {"sites.pcapng": (1_595_957_694_169_758_000, 1_722_540_110_397_706_326)}


def _capture_files(ndpi_dir):
    return sorted(p for p in ndpi_dir.iterdir() if p.suffix in (".pcap", ".pcapng"))


def test_shared_captures_match_dpkt(ndpi_dir):
    files = _capture_files(ndpi_dir)
    assert len(files) >= 40
    for path in files:
        reader = open_capture(path)
        ours = [(int(b.ts_ns[i]), b.packet(i)) for b in reader.batches() for i in range(len(b))]
        with open(path, "rb") as f:
            dreader = dpkt.pcapng.Reader(f) if reader.stats.format == "pcapng" else dpkt.pcap.Reader(f)
            theirs = [(ts, bytes(buf)) for ts, buf in dreader]
        assert len(ours) == len(theirs), path.name
        assert reader.stats.records_read == len(ours) and not reader.stats.truncated, path.name
        assert [p for _, p in ours] == [p for _, p in theirs], path.name
        if path.name in DPKT_MIXED_TSRESOL:
            continue
        for (ns, _), (ts, _) in zip(ours, theirs):
            assert abs(ns / 1e9 - float(ts)) < 2e-6, path.name


def test_shared_captures_with_mixed_tsresol(ndpi_dir):
    reader = open_capture(ndpi_dir / "sites.pcapng")
    for _ in reader.batches():
        pass
    # the earliest (µs interface) and latest (ns interface) packets, as tshark reports them
    assert (reader.stats.first_ts_ns, reader.stats.last_ts_ns) == TSHARK_FIRST_LAST_TS["sites.pcapng"]
    assert reader.stats.interfaces == 22 and reader.stats.sections == 1
