"""TURN ChannelData, DTLS records and Discord IP discovery from byte literals."""

from __future__ import annotations

import struct

import pytest

from inspector.dissect import media


# --- ChannelData -----------------------------------------------------------------------------


def test_channel_data_exact_and_padded() -> None:
    data = b"\x80\x78" + bytes(8)
    exact = struct.pack("!HH", 0x4001, len(data)) + data
    message = media.parse_channel_data(exact)
    assert message is not None and message.channel == 0x4001 and message.data == data
    padded = exact + b"\x00\x00"  # 10 data bytes padded to 12: RFC 8656 allows it over UDP
    assert media.parse_channel_data(padded) is not None


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("!HH", 0x4001, 10) + bytes(4),  # length larger than datagram
        struct.pack("!HH", 0x4001, 4) + bytes(12),  # datagram far longer than length + padding
        struct.pack("!HH", 0x3FFF, 4) + bytes(4),  # below the channel range
        struct.pack("!HH", 0x5000, 4) + bytes(4),  # above what RFC 7983 demux admits
        b"\x40\x00",
    ],
)
def test_channel_data_rejects(payload: bytes) -> None:
    assert media.parse_channel_data(payload) is None


def test_channel_data_stream_mode() -> None:
    first = struct.pack("!HH", 0x4002, 5) + b"abcde" + b"\x00\x00\x00"
    message = media.parse_channel_data(first + b"\x40\x02\x00\x00", stream=True)
    assert message is not None and message.total_len == 12 and message.data == b"abcde"


# --- DTLS ------------------------------------------------------------------------------------


def handshake_record(msg_type: int = 1, body_len: int = 40, version: int = 0xFEFD, epoch: int = 0) -> bytes:
    handshake = bytes([msg_type]) + body_len.to_bytes(3, "big") + b"\x00\x00" + bytes(3) + body_len.to_bytes(3, "big")
    fragment = handshake + bytes(body_len)
    return struct.pack("!BHH", 22, version, epoch) + bytes(6) + struct.pack("!H", len(fragment)) + fragment


def test_dtls_client_hello_record() -> None:
    (record,) = media.parse_dtls_records(handshake_record())
    assert (record.content_type, record.version, record.epoch) == (22, 0xFEFD, 0)
    assert record.handshake_type == 1


def test_dtls_several_records_in_one_datagram() -> None:
    ccs = struct.pack("!BHH", 20, 0xFEFD, 0) + bytes(6) + struct.pack("!H", 1) + b"\x01"
    encrypted = struct.pack("!BHH", 22, 0xFEFD, 1) + bytes(6) + struct.pack("!H", 48) + bytes(48)
    records = media.parse_dtls_records(handshake_record(msg_type=2) + ccs + encrypted)
    assert [r.content_type for r in records] == [22, 20, 22]
    assert records[0].handshake_type == 2
    assert records[2].handshake_type is None  # epoch 1: encrypted, header not checked


def test_dtls_from_capture_dtls_1_0_client_hello_header() -> None:
    # dtls.pcap: 16 feff epoch 0 seq 0 length 0x008e; handshake ClientHello (01), length 0x82.
    head = bytes.fromhex("16feff0000000000000000008e010000820000000000000082")
    data = head + bytes(0x8E - 12)
    (record,) = media.parse_dtls_records(data)
    assert record.version == 0xFEFF and record.handshake_type == 1


def test_dtls_unified_header_with_length() -> None:
    # RFC 9147 §4: 001CSLEE with S=1 (16-bit seq), L=1, epoch bits 3; no CID.
    first = 0x20 | 0x08 | 0x04 | 0x03
    data = bytes([first]) + b"\x00\x07" + struct.pack("!H", 30) + bytes(30)
    (record,) = media.parse_dtls_records(data)
    assert record.version == 0 and record.epoch == 3 and record.length == 30


@pytest.mark.parametrize(
    "payload",
    [
        handshake_record() + b"\x00",  # trailing byte
        handshake_record()[:-1],  # truncated
        handshake_record(version=0x0303),  # TLS version, not DTLS
        bytes([0x2C]) + b"\x00" + bytes(20),  # unified header with CID bit
        bytes([0x20 | 0x08]) + b"\x00\x01" + bytes(20),  # unified header without length
        bytes.fromhex("1703030020") + bytes(32),  # TLS application data record
    ],
)
def test_dtls_rejects(payload: bytes) -> None:
    assert media.parse_dtls_records(payload) == ()


def test_dtls_pre_rfc_version() -> None:
    # dtls_old_version.pcapng: OpenSSL's DTLS1_BAD_VER 0x0100.
    (record,) = media.parse_dtls_records(handshake_record(version=0x0100))
    assert record.version == 0x0100


# --- Discord ---------------------------------------------------------------------------------


def discovery(packet_type: int, ssrc: int, address: bytes, port: int) -> bytes:
    return struct.pack("!HHI", packet_type, 70, ssrc) + address.ljust(64, b"\x00") + struct.pack("!H", port)


def test_discord_request_and_response() -> None:
    request = media.parse_discord_discovery(discovery(1, 0xACE3, b"", 0))
    assert request is not None and request.packet_type == 1 and request.ssrc == 0xACE3 and request.address == ""
    response = media.parse_discord_discovery(discovery(2, 0xACE3, b"84.59.132.100", 50004))
    assert response is not None
    assert (response.address, response.port) == ("84.59.132.100", 50004)


@pytest.mark.parametrize(
    "payload",
    [
        discovery(3, 1, b"", 0),  # unknown type
        discovery(2, 1, b"", 0),  # response without address
        discovery(2, 1, b"not-an-ip", 1),
        discovery(2, 1, b"1.2.3.4\x00junk", 1),  # non-NUL after the string
        discovery(1, 1, b"", 0)[:73],
        struct.pack("!HHI", 1, 71, 1) + bytes(66),  # length field 71
    ],
)
def test_discord_rejects(payload: bytes) -> None:
    assert media.parse_discord_discovery(payload) is None


def test_discord_keepalive() -> None:
    assert media.is_discord_keepalive(bytes.fromhex("1337cafe0e000000"))
    assert not media.is_discord_keepalive(bytes.fromhex("1337cafe0e00000000"))
    assert not media.is_discord_keepalive(bytes.fromhex("1337cafd0e000000"))


# --- WhatsApp chat stream header (inspector/dissect/whatsapp.py) -------------------------------

from inspector.dissect.whatsapp import chat_stream_version  # noqa: E402


def test_whatsapp_chat_header_plain_and_after_edge_routing():
    # Both byte strings as they open chat connections in the shared WhatsApp captures.
    assert chat_stream_version(bytes.fromhex("5741010500001af80501a59189fc1269")) == "1.5"
    assert chat_stream_version(bytes.fromhex("45440001000004080508025741020100")) == "2.1"


def test_whatsapp_chat_header_rejects_lookalikes():
    assert chat_stream_version(b"WA") is None
    assert chat_stream_version(b"WA\x00\x05") is None  # major version 0
    assert chat_stream_version(b"WAIT FOR IT") is None  # 'I' = 0x49 is not a version 1-9
    assert chat_stream_version(b"ED\x00\x01\xff\xff\xff" + b"WA\x01\x05") is None  # absurd preamble
    assert chat_stream_version(b"GET / HTTP/1.1\r\n") is None
