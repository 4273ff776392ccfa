"""RTP/RTCP header parsing from byte literals (RFC 3550, RFC 5761, RFC 3711)."""

from __future__ import annotations

import struct

import pytest

from inspector.dissect import rtp


def rtp_packet(pt: int = 111, seq: int = 1, ts: int = 160, ssrc: int = 0x11223344, *, marker: bool = False,
               csrcs: tuple[int, ...] = (), extension: bytes | None = None, payload: bytes = b"\xaa" * 20) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0)
    out = struct.pack("!BBHII", first, pt | (0x80 if marker else 0), seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        out += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    return out + payload


def test_basic_header() -> None:
    header = rtp.parse_rtp(rtp_packet(pt=0, seq=0xFFFF, ts=0xFFFFFFF0, ssrc=0xDEADBEEF, marker=True))
    assert header is not None
    assert (header.payload_type, header.marker, header.sequence) == (0, True, 0xFFFF)
    assert (header.timestamp, header.ssrc) == (0xFFFFFFF0, 0xDEADBEEF)
    assert header.header_len == 12
    assert header.payload_len == 20


def test_from_capture_sip_pcma() -> None:
    # sip.pcap: PCMA (PT 8), seq 0x6fae, ts 0x04d8, SSRC 0x3796cb71.
    data = bytes.fromhex("80086fae000004d83796cb71") + b"\xd5" * 160
    header = rtp.parse_rtp(data)
    assert header is not None
    assert (header.payload_type, header.sequence, header.timestamp, header.ssrc) == (8, 0x6FAE, 0x4D8, 0x3796CB71)


def test_csrc_and_one_byte_extension() -> None:
    data = rtp_packet(csrcs=(1, 2), extension=b"\x10\xff\x00\x00")
    header = rtp.parse_rtp(data)
    assert header is not None
    assert header.csrc_count == 2
    assert header.extension and header.extension_profile == 0xBEDE
    assert header.header_len == 12 + 8 + 4 + 4


def test_extension_overrun_is_rejected() -> None:
    data = struct.pack("!BBHII", 0x90, 111, 1, 1, 1) + struct.pack("!HH", 0xBEDE, 50) + b"\x00" * 8
    assert rtp.parse_rtp(data) is None


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("400000000000000000000000"),  # version 1
        bytes.fromhex("80c8000600000000000000000000"),  # byte 1 = 200: RTCP SR under RFC 5761
        bytes.fromhex("80df000000000000000000"),  # short and RTCP-range
        b"\x80\x60\x00",  # truncated
    ],
)
def test_not_rtp(data: bytes) -> None:
    assert rtp.parse_rtp(data) is None


def sender_report(ssrc: int, blocks: list[bytes]) -> bytes:
    body = struct.pack("!IQIII", ssrc, 0xE1377A0000000000, 1234, 10, 1600) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, (4 + len(body)) // 4 - 1) + body


def report_block(ssrc: int, fraction: int, cumulative: int, highest: int, jitter: int) -> bytes:
    word = (fraction << 24) | (cumulative & 0xFFFFFF)
    return struct.pack("!IIIIII", ssrc, word, highest, jitter, 0x11112222, 65536)


def sdes(ssrc: int, cname: bytes) -> bytes:
    chunk = struct.pack("!I", ssrc) + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def test_compound_sr_with_report_block_and_sdes() -> None:
    data = sender_report(0x5D931534, [report_block(0x01932DB4, 64, 5, 0x10005, 37)]) + sdes(0x5D931534, b"cname@host")
    packets = rtp.parse_rtcp_compound(data)
    assert [p.packet_type for p in packets] == [200, 202]
    sr = packets[0]
    assert sr.ssrc == 0x5D931534
    assert (sr.rtp_timestamp, sr.sender_packets, sr.sender_octets) == (1234, 10, 1600)
    (block,) = sr.report_blocks
    assert block.ssrc == 0x01932DB4
    assert block.fraction_lost == 64 and block.fraction_lost_ratio == 0.25
    assert block.cumulative_lost == 5
    assert block.highest_sequence == 0x10005
    assert block.jitter == 37
    assert block.delay_since_last_sr == 65536
    assert rtp.rtcp_coverage(data, packets) == 0
    assert rtp.is_rtcp(data)


def test_receiver_report_negative_cumulative_loss() -> None:
    # RFC 3550 §6.4.1: cumulative lost is signed 24-bit (duplicates can make it negative).
    block = report_block(7, 0, -3, 100, 0)
    data = struct.pack("!BBHI", 0x81, 201, 7, 99) + block
    (rr,) = rtp.parse_rtcp_compound(data)
    assert rr.packet_type == 201
    assert rr.report_blocks[0].cumulative_lost == -3


def test_capture_rr_packet() -> None:
    # rtcp_multiple_pkts_in_the_same_datagram.pcap: RR from 0x01932db4 about 0x5d931534.
    data = bytes.fromhex(
        "81c9000701932db45d931534000000010000bf8b00000006c1704d610004051c"
    )
    (rr,) = rtp.parse_rtcp_compound(data)
    block = rr.report_blocks[0]
    assert block.ssrc == 0x5D931534
    assert block.cumulative_lost == 1
    assert block.highest_sequence == 0xBF8B
    assert block.jitter == 6


def test_srtcp_trailer_is_tolerated() -> None:
    data = sender_report(1, []) + b"\x80\x00\x00\x05" + b"\x01" * 10  # E-flag/index + 80-bit tag
    packets = rtp.parse_rtcp_compound(data)
    assert len(packets) == 1
    assert rtp.rtcp_coverage(data, packets) == 14
    assert rtp.rtcp_layout(data) == ("srtcp", packets)
    assert rtp.is_rtcp(data)


def test_srtcp_with_encrypted_remainder_from_capture() -> None:
    # stun_signal.pcapng: RR header with RC=0 (8 bytes), then 48 bytes of encrypted packets,
    # SRTCP index and tag. Only the first packet is readable.
    data = bytes.fromhex("80c90001000003eb388191ccdece7f76537eaa2db7449849") + bytes(32)
    layout, packets = rtp.rtcp_layout(data)
    assert layout == "srtcp"
    assert [(p.packet_type, p.ssrc, p.length_bytes) for p in packets] == [(201, 0x3EB, 8)]


def test_plain_compound_layout() -> None:
    data = sender_report(1, []) + sender_report(2, [])
    layout, packets = rtp.rtcp_layout(data)
    assert layout == "plain" and len(packets) == 2


def test_rtcp_length_overrun_is_not_rtcp() -> None:
    data = struct.pack("!BBHI", 0x80, 200, 50, 1) + bytes(20)
    assert rtp.parse_rtcp_compound(data) == []
    assert not rtp.is_rtcp(data)


def test_rtcp_with_a_tail_too_short_for_an_srtcp_trailer_is_not_rtcp() -> None:
    data = sender_report(1, []) + bytes(4)
    assert rtp.rtcp_layout(data) == ("", [])
    assert not rtp.is_rtcp(data)
