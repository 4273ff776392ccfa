"""STUN/TURN parsing from byte literals (RFC 5389/8489, RFC 3489, RFC 5766, MS-TURN framing)."""

from __future__ import annotations

import struct
import zlib

import pytest

from inspector.dissect import stun

COOKIE = b"\x21\x12\xa4\x42"
TID = bytes(range(1, 13))


def attr(attr_type: int, value: bytes, pad: bool = True) -> bytes:
    body = struct.pack("!HH", attr_type, len(value)) + value
    return body + (b"\x00" * (-len(value) % 4) if pad else b"")


def build(message_type: int, attrs: bytes = b"", tid: bytes = TID, with_fingerprint: bool = False) -> bytes:
    """A cookie STUN message; FINGERPRINT = CRC-32 of the message so far XOR 0x5354554E."""
    if with_fingerprint:
        length = len(attrs) + 8
        prefix = struct.pack("!HH", message_type, length) + COOKIE + tid + attrs
        crc = (zlib.crc32(prefix) & 0xFFFFFFFF) ^ 0x5354554E
        return prefix + struct.pack("!HHI", 0x8028, 4, crc)
    return struct.pack("!HH", message_type, len(attrs)) + COOKIE + tid + attrs


# RFC 5769 §2.2 sample IPv4 response: SOFTWARE "test vector", XOR-MAPPED-ADDRESS
# 192.0.2.1:32853, MESSAGE-INTEGRITY and FINGERPRINT.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)


def test_rfc5769_ipv4_response_vector() -> None:
    message = stun.parse_stun(RFC5769_IPV4_RESPONSE)
    assert message is not None
    assert message.message_type == 0x0101
    assert message.method == stun.METHOD_BINDING
    assert message.message_class == "success"
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert not message.classic
    assert message.text(stun.ATTR_SOFTWARE) == "test vector"  # 11 bytes, then one 0x20 pad byte
    assert message.mapped_address == "192.0.2.1:32853"
    assert message.fingerprint_ok is True


def test_fingerprint_mismatch_is_reported_not_rejected() -> None:
    corrupted = bytearray(RFC5769_IPV4_RESPONSE)
    corrupted[-1] ^= 0xFF
    message = stun.parse_stun(bytes(corrupted))
    assert message is not None and message.fingerprint_ok is False


def test_built_fingerprint_round_trip() -> None:
    data = build(0x0001, attr(stun.ATTR_USERNAME, b"abcd:efgh"), with_fingerprint=True)
    message = stun.parse_stun(data)
    assert message is not None
    assert message.fingerprint_ok is True
    assert message.text(stun.ATTR_USERNAME) == "abcd:efgh"
    assert message.total_len == len(data)


@pytest.mark.parametrize(
    ("message_type", "method", "klass"),
    [
        (0x0001, 0x001, "request"),
        (0x0011, 0x001, "indication"),
        (0x0101, 0x001, "success"),
        (0x0111, 0x001, "error"),
        (0x0003, 0x003, "request"),
        (0x0113, 0x003, "error"),
        (0x0016, 0x006, "indication"),  # Send indication
        (0x0017, 0x007, "indication"),  # Data indication
        (0x0109, 0x009, "success"),  # ChannelBind success
    ],
)
def test_method_and_class_bits(message_type: int, method: int, klass: str) -> None:
    assert stun.method_of(message_type) == method
    assert stun.message_class_of(message_type) == klass


def test_turn_methods_mark_turn() -> None:
    allocate = stun.parse_stun(build(0x0003, attr(0x0019, b"\x11\x00\x00\x00")))
    binding = stun.parse_stun(build(0x0001))
    assert allocate is not None and allocate.is_turn
    assert binding is not None and not binding.is_turn


def test_xor_mapped_address_ipv6() -> None:
    # RFC 5389 §15.2: IPv6 address XORed with cookie || transaction id.
    address = bytes.fromhex("20010db8000000000000000000000001")
    key = COOKIE + TID
    xored = bytes(a ^ b for a, b in zip(address, key))
    value = b"\x00\x02" + struct.pack("!H", 443 ^ 0x2112) + xored
    message = stun.parse_stun(build(0x0101, attr(stun.ATTR_XOR_MAPPED_ADDRESS, value)))
    assert message is not None
    assert message.mapped_address == "[2001:db8::1]:443"


def test_classic_rfc3489_zoom_request_from_capture() -> None:
    # zoom.pcap: classic Binding request (no cookie, 16-byte transaction id) with Zoom's 0x0101.
    data = bytes.fromhex(
        "00010018c15dae63585d14392e582c260403bf30"
        "0101001431323334353637383930313233343536373839" + "00"
    )
    message = stun.parse_stun(data)
    assert message is not None
    assert message.classic
    assert message.transaction_id == bytes.fromhex("c15dae63585d14392e582c260403bf30")
    assert stun.stun_service(message) == ("zoom", "stun attr=0x0101")


def test_classic_unknown_type_is_rejected() -> None:
    # No cookie and a type outside RFC 3489's set: not STUN.
    data = struct.pack("!HH", 0x0009, 0) + bytes(16)
    assert stun.parse_stun(data) is None


def test_classic_length_must_be_multiple_of_four() -> None:
    data = struct.pack("!HH", 0x0001, 6) + bytes(16) + bytes(6)
    assert stun.parse_stun(data) is None


def test_length_must_match_datagram() -> None:
    data = build(0x0001, attr(stun.ATTR_USERNAME, b"ab"))
    assert stun.parse_stun(data + b"\x00\x00\x00\x00") is None
    assert stun.parse_stun(data[:-4]) is None


def test_attribute_overrunning_length_is_rejected() -> None:
    bad = struct.pack("!HH", 0x0001, 8) + COOKIE + TID + struct.pack("!HH", 0x0006, 40) + b"abcd"
    assert stun.parse_stun(bad) is None


def test_whatsapp_unpadded_last_attribute() -> None:
    # wa_voice.pcap: Allocate with attribute 0x4000 of 102 bytes and no padding (length 0x6a).
    value = bytes(range(102))
    data = build(0x0003, attr(0x4000, value, pad=False))
    assert struct.unpack_from("!H", data, 2)[0] == 106
    message = stun.parse_stun(data)
    assert message is not None
    assert message.attribute(0x4000) == value
    assert stun.stun_service(message) == ("whatsapp", "stun attr=0x4000")


def test_microsoft_unpadded_error_code() -> None:
    # teams.pcap: Allocate error whose ERROR-CODE reason (61 bytes) is not padded.
    reason = b"\x00\x00\x04\x01" + b"The request did not contain a Message-Integrity attribute"
    assert len(reason) == 61
    attrs = attr(0x000F, b"\x72\xc6\x4b\xc6") + attr(0x0009, reason, pad=False) + attr(0x8070, b"\x00\x00\x00\x06")
    message = stun.parse_stun(build(0x0113, attrs))
    assert message is not None
    assert message.attribute(0x0009) == reason
    assert stun.stun_service(message) == ("teams", "stun attr=0x8070")


def test_whatsapp_message_types() -> None:
    message = stun.parse_stun(build(0x0801))
    assert message is not None
    assert message.method == 0
    assert stun.stun_service(message) == ("whatsapp", "stun type=0x0801")


@pytest.mark.parametrize(
    ("attrs", "service"),
    [
        (attr(stun.ATTR_REALM, b"signal.org"), "signal"),
        (attr(stun.ATTR_REALM, b"whispersystems.org"), "signal"),
        (attr(stun.ATTR_REALM, b"turn.l.google.com"), "google-meet"),
        (attr(stun.ATTR_REALM, b"telegram.org"), "telegram"),
        (attr(stun.ATTR_REALM, b"viber.com"), "viber"),
        (attr(stun.ATTR_REALM, b"star.facebook.com"), "messenger"),
        (attr(stun.ATTR_SOFTWARE, b"Google Inc. google.com"), "google-meet"),
        (attr(0xFF03, b"\x00\x00\x00\x01"), "google-meet"),
        (attr(0x8054, b"\x00\x00\x00\x01"), "teams"),
        (attr(0xC003, b"\x00\x00\x00\x01"), "webex"),
        (attr(0x0103, b"\x00\x01\xff\x75"), "zoom"),
        (attr(stun.ATTR_REALM, b"example.org"), ""),
        (b"", ""),
    ],
)
def test_vendor_attribution(attrs: bytes, service: str) -> None:
    message = stun.parse_stun(build(0x0101, attrs))
    assert message is not None
    assert stun.stun_service(message)[0] == service


def test_tcp_back_to_back_messages() -> None:
    # stun_tcp_multiple_msgs_same_pkt.pcap: three Allocate requests in one segment, no framing.
    one = bytes.fromhex("000300082112a442704b6e453952586746596c590019000411000000")
    messages = stun.parse_stun_stream(one * 3)
    assert [m.method for m in messages] == [0x003, 0x003, 0x003]


def test_tcp_rfc4571_framing() -> None:
    one = build(0x0001)
    framed = struct.pack("!H", len(one)) + one + struct.pack("!H", len(one)) + one
    assert len(stun.parse_stun_stream(framed)) == 2


def test_tcp_stream_with_trailing_garbage_yields_nothing() -> None:
    assert stun.parse_stun_stream(build(0x0001) + b"\x17\x03\x03") == []


def test_ms_turn_framing() -> None:
    inner = build(0x0101, attr(0x8070, b"\x00\x00\x00\x07"))
    frame = struct.pack("!HH", 0xFF10, 8 + len(inner)) + bytes(8) + inner
    assert stun.strip_ms_turn(frame) == inner
    assert stun.strip_ms_turn(frame + b"\x00") is None
    assert stun.strip_ms_turn(b"\xff\x11" + frame[2:]) is None


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("7b5f01000001000000000000036c6f67047a6f6f6d0275730000010001"),  # DNS query
        bytes.fromhex("160301020001000200030300") + bytes(20),  # TLS ClientHello start
        bytes.fromhex("c3000000010844e9b4bf5fa0a8d6") + bytes(30),  # QUIC long header
        b"",
        b"\x00\x01",
    ],
)
def test_non_stun_is_none(payload: bytes) -> None:
    assert stun.parse_stun(payload) is None


def test_fast_message_constructor_fills_every_field_in_order() -> None:
    import dataclasses

    values = (0x0101, 0x001, "success", b"t" * 12, False, ((0x0020, b"v"),), 28, True)
    built = stun._new_message(*values)
    assert built == stun.StunMessage(*values)
    assert [getattr(built, f.name) for f in dataclasses.fields(stun.StunMessage)] == list(values)


@pytest.mark.parametrize("seed", range(20))
def test_decode_address_matches_ipaddress_formatting(seed: int) -> None:
    import ipaddress
    import random

    rng = random.Random(seed)
    transaction_id = rng.randbytes(12)
    value = b"\x00\x01" + rng.randbytes(2) + rng.randbytes(4)
    port = struct.unpack_from("!H", value, 2)[0]
    assert stun.decode_address(value, transaction_id, xor=False) == f"{ipaddress.IPv4Address(value[4:8])}:{port}"
    key = struct.pack("!I", stun.MAGIC_COOKIE) + transaction_id
    raw = bytes(a ^ b for a, b in zip(value[4:8], key))
    expected = f"{ipaddress.IPv4Address(raw)}:{port ^ (stun.MAGIC_COOKIE >> 16)}"
    assert stun.decode_address(value, transaction_id, xor=True) == expected


def test_plain_binding_has_no_service_and_marked_attributes_still_count() -> None:
    plain = stun.parse_stun(struct.pack("!HHI", 0x0001, 8, stun.MAGIC_COOKIE) + bytes(12) + struct.pack("!HH", 0x0024, 4) + bytes(4))
    assert plain is not None and stun.stun_service(plain) == ("", "")
    realm = b"signal.org\x00\x00"
    marked = stun.parse_stun(
        struct.pack("!HHI", 0x0003, 4 + len(realm), stun.MAGIC_COOKIE) + bytes(12) + struct.pack("!HH", stun.ATTR_REALM, 10) + realm
    )
    assert marked is not None and stun.stun_service(marked)[0] == "signal"
