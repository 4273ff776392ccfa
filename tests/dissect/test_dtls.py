"""DTLS records and handshake reassembly (RFC 6347 §4.1, §4.2.2; RFC 5764 use_srtp)."""

from __future__ import annotations

import struct

import pytest

from inspector.dissect import dtls
from inspector.dissect.dtls import DtlsError, DtlsHandshakeCollector, parse_records
from inspector.dissect.x509names import certificate_names
from tests.dissect.test_tls import (
    certificate_message,
    client_hello,
    make_certificate,
    server_hello,
    use_srtp_extension,
)


def dtls_record(payload: bytes, content_type: int = 22, epoch: int = 0, seq: int = 0,
                version: int = 0xFEFD) -> bytes:
    return (
        struct.pack("!BHH", content_type, version, epoch)
        + seq.to_bytes(6, "big")
        + struct.pack("!H", len(payload))
        + payload
    )


def fragment(message: bytes, offset: int, length: int) -> bytes:
    """Re-cuts a whole 12-byte-header DTLS handshake message into one fragment."""
    body = message[12:]
    return message[:6] + offset.to_bytes(3, "big") + length.to_bytes(3, "big") + \
        body[offset : offset + length]


WEBRTC_HELLO = client_hello(
    use_srtp_extension(0x0007, 0x0008, 0x0001),
    version=0xFEFD,
    dtls=True,
    cookie=b"\x5a" * 32,
)


def test_client_hello_with_cookie_and_use_srtp() -> None:
    collector = DtlsHandshakeCollector()
    messages = collector.feed(dtls_record(WEBRTC_HELLO, version=0xFEFF))
    assert messages == [WEBRTC_HELLO]
    hello = dtls.parse_client_hello(messages[0])
    assert hello.use_srtp == (0x0007, 0x0008, 0x0001)
    assert hello.legacy_version == 0xFEFD
    assert hello.server_name == ""


def test_fragments_out_of_order_across_datagrams_and_retransmission() -> None:
    body_length = len(WEBRTC_HELLO) - 12
    third = body_length // 3
    pieces = [
        fragment(WEBRTC_HELLO, 2 * third, body_length - 2 * third),
        fragment(WEBRTC_HELLO, 0, third + 5),  # overlaps the middle piece
        fragment(WEBRTC_HELLO, third, third),
    ]
    collector = DtlsHandshakeCollector()
    assert collector.feed(dtls_record(pieces[0], seq=3)) == []
    assert collector.feed(dtls_record(pieces[1], seq=1)) == []
    assert collector.feed(dtls_record(pieces[2], seq=2)) == [WEBRTC_HELLO]
    # A retransmitted flight is not reported twice.
    assert collector.feed(dtls_record(WEBRTC_HELLO, seq=4)) == []


def test_server_flight_in_one_datagram_gives_certificate_names() -> None:
    der = make_certificate("turn.example.net", ("turn.example.net", "relay.example.net"))
    flight = (
        dtls_record(server_hello(version=0xFEFD, dtls=True, message_seq=0))
        + dtls_record(certificate_message(der, dtls=True, message_seq=1), seq=1)
        + dtls_record(b"\x01", content_type=20, seq=2)
        + dtls_record(b"\x00" * 40, epoch=1, seq=0)  # encrypted Finished: skipped
    )
    messages = DtlsHandshakeCollector().feed(flight)
    assert [m[0] for m in messages] == [2, 11]
    assert dtls.parse_server_hello(messages[0]).selected_version == 0xFEFD
    chain = dtls.parse_certificate_list(messages[1])
    assert certificate_names(chain[0]) == ("turn.example.net", "relay.example.net")


def test_records_split() -> None:
    records = parse_records(dtls_record(b"ab", seq=7) + dtls_record(b"c", content_type=23, epoch=1))
    assert [(r.content_type, r.epoch, r.sequence_number, r.fragment) for r in records] == [
        (22, 0, 7, b"ab"),
        (23, 1, 0, b"c"),
    ]


def test_looks_like_dtls() -> None:
    assert dtls.looks_like_dtls(dtls_record(b"x"))
    assert not dtls.looks_like_dtls(b"\x16\x03\x01" + b"\x00" * 20)  # TLS, not DTLS
    assert not dtls.looks_like_dtls(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 12)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (dtls_record(b"abc")[:-1], "truncated_record"),
        (b"\x16\xfe\xfd" + b"\x00" * 5, "truncated_record"),
        (dtls_record(b"x") + b"\x17\x03\x03" + b"\x00" * 10, "not_dtls_record"),
        (dtls_record(b"\x01\x00\x00\x10"), "truncated_handshake_header"),
        (dtls_record(WEBRTC_HELLO[:-1]), "truncated_handshake_fragment"),
        (dtls_record(b"\x01\x00\x00\x04\x00\x00\x00\x00\x03\x00\x00\x02ab"), "bad_fragment_offset"),
        (dtls_record(b"\x01\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00"), "handshake_too_large"),
    ],
)
def test_malformed(datagram: bytes, reason: str) -> None:
    with pytest.raises(DtlsError) as caught:
        DtlsHandshakeCollector().feed(datagram)
    assert caught.value.reason == reason


def test_pending_messages_are_bounded() -> None:
    collector = DtlsHandshakeCollector()
    partials = b"".join(
        dtls_record(bytes([1]) + (100).to_bytes(3, "big") + struct.pack("!H", seq)
                    + (0).to_bytes(3, "big") + (1).to_bytes(3, "big") + b"x", seq=seq)
        for seq in range(dtls.MAX_PENDING_MESSAGES)
    )
    assert collector.feed(partials) == []
    with pytest.raises(DtlsError, match="too_many_pending_messages"):
        collector.feed(dtls_record(bytes([1]) + (100).to_bytes(3, "big") + b"\x00\x63"
                                   + (0).to_bytes(3, "big") + (1).to_bytes(3, "big") + b"x"))


def test_tls_reason_is_carried_in_dtls_error() -> None:
    broken = bytearray(WEBRTC_HELLO)
    broken[12 + 2 + 32] = 0xFF  # session_id length far beyond the message
    with pytest.raises(DtlsError, match="bad_session_id"):
        dtls.parse_client_hello(bytes(broken))


def test_cisco_pre_standard_version_is_dtls() -> None:
    # AnyConnect's DTLS uses record and hello version 0x0100 (OpenSSL DTLS1_BAD_VER).
    hello = client_hello(version=0x0100, dtls=True)
    datagram = dtls_record(hello, version=0x0100)
    assert dtls.looks_like_dtls(datagram)
    messages = DtlsHandshakeCollector().feed(datagram)
    assert dtls.parse_client_hello(messages[0]).legacy_version == 0x0100
