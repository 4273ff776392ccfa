"""Zoom media encapsulation (facts §2; Michel et al. IMC '22) from crafted byte layouts."""

from __future__ import annotations

import struct

import pytest

from inspector.dissect import zoom


def rtp(pt: int = 113, seq: int = 7, ts: int = 0x11D810, ssrc: int = 0x01000802) -> bytes:
    return struct.pack("!BBHII", 0x90, pt, seq, ts, ssrc) + b"\xbe\xde\x00\x01\x50\xe4\x00\x68" + b"\x33" * 40


def inner(media_type: int, rtp_offset: int, body: bytes, fill: dict[int, int] | None = None) -> bytes:
    head = bytearray(rtp_offset)
    head[0] = media_type
    for index, value in (fill or {}).items():
        head[index] = value
    return bytes(head) + body


def outer(direction: int, payload: bytes) -> bytes:
    # type 0x05, sequence (2), unknown (4), direction (1)
    return b"\x05" + struct.pack("!H", 0x1234) + b"\x00\x00\x00\x00" + bytes([direction]) + payload


def test_server_audio_2022_layout() -> None:
    packet = zoom.parse_server_media(outer(0x00, inner(0x0F, 19, rtp())))
    assert packet is not None
    assert packet.layout == "sfu"
    assert packet.to_server is True
    assert packet.media_kind == "audio"
    assert packet.rtp_offset == 27  # facts §2.3: audio RTP at 27 from the UDP payload
    assert packet.rtp is not None and packet.rtp.sequence == 7 and packet.rtp.payload_type == 113


def test_server_video_with_frame_fields_from_server() -> None:
    packet = zoom.parse_server_media(outer(0x04, inner(0x10, 24, rtp(pt=98), {20: 0x02})))
    assert packet is not None
    assert packet.to_server is False
    assert packet.media_kind == "video"
    assert packet.rtp_offset == 32


def test_video_without_frame_marker_uses_offset_20() -> None:
    packet = zoom.parse_p2p_media(inner(0x10, 20, rtp()))
    assert packet is not None and packet.rtp_offset == 20


def test_server_screen_share_subtype() -> None:
    packet = zoom.parse_server_media(outer(0x00, inner(0x0D, 27, rtp(pt=99), {7: 0x1E})))
    assert packet is not None
    assert packet.media_kind == "screen"
    assert packet.rtp_offset == 35


def test_screen_share_without_subtype_has_no_known_offset() -> None:
    assert zoom.parse_server_media(outer(0x00, inner(0x0D, 27, rtp()))) is None


def test_rtcp_inner_type() -> None:
    sr = struct.pack("!BBHI", 0x80, 200, 6, 0x01000402) + bytes(20)
    packet = zoom.parse_server_media(outer(0x00, inner(0x21, 16, sr)))
    assert packet is not None
    assert packet.rtp is None
    assert packet.media_kind == ""
    assert packet.rtp_offset == 24


def test_legacy_one_byte_outer_header_from_capture() -> None:
    # zoom.pcap (2019 client): 05 | inner type 0x22 | ... RTCP SR at inner offset 16.
    data = bytes.fromhex(
        "05220100fb9009100000000000000000" "00" "80c8000601000402e13779d7e7ec12da0000091000000005000000b5"
        "81ca000201000402010000"
    )
    packet = zoom.parse_server_media(data)
    assert packet is not None
    assert packet.layout == "sfu-legacy"
    assert packet.rtp_offset == 17
    assert packet.to_server is None


def test_p2p_audio_from_capture() -> None:
    # zoom_p2p.pcapng: inner type 0x0f, RTP (0x90, PT 113) at offset 19.
    data = bytes.fromhex(
        "0f0100fb901611040300004909b64c000100489071190700" "11d81001000802bede000150e4006800"
    ) + bytes(40)
    packet = zoom.parse_p2p_media(data)
    assert packet is not None
    assert packet.media_kind == "audio"
    assert packet.rtp is not None
    assert (packet.rtp.payload_type, packet.rtp.sequence, packet.rtp.ssrc) == (113, 0x1907, 0x01000802)


@pytest.mark.parametrize(
    "data",
    [
        outer(0x00, inner(0x0F, 19, b"\x40" + rtp()[1:])),  # RTP version bits wrong at the offset
        outer(0x00, inner(0x0F, 18, rtp())),  # RTP one byte early
        outer(0x00, inner(0x15, 19, rtp())),  # unknown inner type 21
        b"\x05",
        b"\x05" + bytes(30),
    ],
)
def test_invalid_server_media(data: bytes) -> None:
    assert zoom.parse_server_media(data) is None


def test_plain_rtp_is_not_p2p_media() -> None:
    assert zoom.parse_p2p_media(rtp()) is None


def test_sfu_setup_echo() -> None:
    # zoom.pcap: client 01 00 02 + 16-byte id; server 02 00 01 echoes it.
    ident = bytes.fromhex("7d464d35fffda234495d0d6d3b51e896")
    client = b"\x01\x00\x02" + ident + bytes(20)
    server = b"\x02\x00\x01" + ident + bytes(10)
    assert zoom.sfu_setup_id(client, from_client=True) == ident
    assert zoom.sfu_setup_id(server, from_client=False) == ident
    assert zoom.sfu_setup_id(client, from_client=False) is None
    assert zoom.sfu_setup_id(client[:10], from_client=True) is None


def test_p2p_setup_packet() -> None:
    # zoom_p2p.pcapng: 1f 02 01 ..., at offset 24 a 4-byte length 13 and "192.168.1.226".
    head = bytes.fromhex("1f0201000800010004005c9b637b0000006400000062a04c")
    uuid = b"AF065D88-AA9B-4A81-" + bytes(17)
    data = head + struct.pack("!I", 13) + b"192.168.1.226" + struct.pack("!I", len(uuid)) + uuid
    assert zoom.is_p2p_setup(data)
    assert not zoom.is_p2p_setup(data[:30])
    broken = head + struct.pack("!I", 13) + b"not an ip!!!!" + bytes(40)
    assert not zoom.is_p2p_setup(broken)
