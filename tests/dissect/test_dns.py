"""DNS parsing from byte literals (RFC 1035 §4 layouts; RFC 9460 for HTTPS/SVCB)."""

from __future__ import annotations

import struct

import pytest

from inspector.dissect.dns import (
    DnsError,
    DnsQuestion,
    DnsRecord,
    parse_dns,
    split_tcp_messages,
)


def encode_name(name: str) -> bytes:
    if not name:
        return b"\x00"
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def header(message_id: int = 0x1234, flags: int = 0x8180, questions: int = 1,
           answers: int = 0) -> bytes:
    return struct.pack("!HHHHHH", message_id, flags, questions, answers, 0, 0)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


# Response for www.zoom.us: CNAME www.zoom.us -> zoom.cdn.example.net -> edge.cdn.example.net,
# then A 203.0.113.7 for the last name. Owners use compression pointers back into the message.
QUESTION = encode_name("www.zoom.us") + struct.pack("!HH", 1, 1)  # at offset 12
CNAME_CHAIN_RESPONSE = (
    header(answers=3)
    + QUESTION
    + rr(b"\xc0\x0c", 5, 300, encode_name("zoom.cdn.example.net"))  # target at offset 41
    + rr(b"\xc0\x29", 5, 60, b"\x04edge\xc0\x2e")  # edge + pointer to "cdn.example.net" (46)
    + rr(b"\xc0\x4b", 1, 30, bytes([203, 0, 113, 7]))  # owner: "edge..." at offset 75
)


def test_query() -> None:
    message = parse_dns(header(flags=0x0100) + QUESTION)
    assert message.id == 0x1234
    assert not message.is_response
    assert message.rcode == 0
    assert message.questions == (DnsQuestion("www.zoom.us", 1),)
    assert message.answers == ()


def test_cname_chain_with_compression() -> None:
    message = parse_dns(CNAME_CHAIN_RESPONSE)
    assert message.is_response
    assert message.answers == (
        DnsRecord("www.zoom.us", 5, 300, "zoom.cdn.example.net"),
        DnsRecord("zoom.cdn.example.net", 5, 60, "edge.cdn.example.net"),
        DnsRecord("edge.cdn.example.net", 1, 30, "203.0.113.7", ("203.0.113.7",)),
    )
    assert message.answers[2].ttl == 30


def test_aaaa_and_nxdomain_rcode() -> None:
    address = bytes.fromhex("20010db8000000000000000000000001")
    message = parse_dns(header(flags=0x8183, answers=1) + QUESTION + rr(b"\xc0\x0c", 28, 5, address))
    assert message.rcode == 3
    assert message.answers[0].value == "2001:db8::1"


def test_https_record_hints() -> None:
    params = struct.pack("!HH", 1, 3) + b"\x02h3"  # alpn (not decoded)
    params += struct.pack("!HH", 4, 8) + bytes([192, 0, 2, 1, 192, 0, 2, 2])
    params += struct.pack("!HH", 6, 16) + bytes.fromhex("20010db8000000000000000000000002")
    rdata = struct.pack("!H", 1) + b"\x00" + params  # priority 1, TargetName "." (root)
    question = encode_name("meet.example") + struct.pack("!HH", 65, 1)
    message = parse_dns(header(answers=1) + question + rr(b"\xc0\x0c", 65, 60, rdata))
    record = message.answers[0]
    assert record.type == 65
    assert record.value == ""
    assert record.addresses == ("192.0.2.1", "192.0.2.2", "2001:db8::2")


def test_bytes_after_the_answers_are_not_read() -> None:
    message = parse_dns(CNAME_CHAIN_RESPONSE + b"\xde\xad\xbe\xef")
    assert len(message.answers) == 3


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # A pointer to itself: the classic loop.
        (header(questions=1) + b"\xc0\x0c" + b"\x00\x01\x00\x01", "bad_pointer"),
        # Two names pointing at each other (offset 12 -> 14 -> 12): forward pointer refused.
        (header(questions=1) + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01", "bad_pointer"),
        # Label whose body runs over a later pointer that jumps back into the label.
        (header(questions=1) + b"\x01a\xc0\x0d\x00\x01\x00\x01", "bad_pointer"),
        (header(questions=1) + b"\x03ab", "truncated_name"),
        (header(questions=1) + b"\x40abc\x00\x00\x01\x00\x01", "bad_label_type"),
        (header(questions=1) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
         "name_too_long"),
        (header(questions=1) + encode_name("a.b"), "truncated_question"),
        (header(answers=1) + QUESTION + rr(b"\xc0\x0c", 1, 1, b"\x01\x02\x03"), "bad_rdata_a"),
        (header(answers=1) + QUESTION + rr(b"\xc0\x0c", 28, 1, b"\x00" * 4), "bad_rdata_aaaa"),
        (header(answers=1) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x09\x01",
         "truncated_rdata"),
        (header(answers=1) + QUESTION + rr(b"\xc0\x0c", 5, 1, b"\x01a\x00\x00"), "bad_rdata_name"),
        (header(answers=1) + QUESTION + rr(b"\xc0\x0c", 65, 1, b"\x00\x01\x00\x00\x04\x00\x09"),
         "bad_svcb"),
        (b"\x00" * 11, "truncated_header"),
    ],
)
def test_malformed_messages(message: bytes, reason: str) -> None:
    with pytest.raises(DnsError) as caught:
        parse_dns(message)
    assert caught.value.reason == reason


def test_every_truncation_raises_dns_error_only() -> None:
    for cut in range(len(CNAME_CHAIN_RESPONSE)):
        with pytest.raises(DnsError):
            parse_dns(CNAME_CHAIN_RESPONSE[:cut])


def test_huge_counts_do_not_loop_beyond_the_bytes() -> None:
    with pytest.raises(DnsError):
        parse_dns(header(questions=0xFFFF, answers=0xFFFF) + QUESTION)


def test_split_tcp_messages_several_and_partial() -> None:
    first = header(flags=0x0100) + QUESTION
    second = CNAME_CHAIN_RESPONSE
    stream = struct.pack("!H", len(first)) + first + struct.pack("!H", len(second)) + second
    messages, used = split_tcp_messages(stream[:-5])
    assert messages == [first]
    assert used == 2 + len(first)
    messages, used = split_tcp_messages(stream)
    assert messages == [first, second]
    assert used == len(stream)


@pytest.mark.parametrize("seed", range(10))
def test_a_record_text_is_the_ipaddress_text(seed: int) -> None:
    import ipaddress
    import random

    from inspector.dissect.dns import parse_dns

    rdata = random.Random(seed).randbytes(4)
    message = (
        struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
        + b"\x01a\x00" + struct.pack("!HH", 1, 1)
        + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + rdata
    )
    record = parse_dns(message).answers[0]
    assert record.value == str(ipaddress.IPv4Address(rdata))
    assert record.addresses == (record.value,)


def test_fast_constructors_fill_every_field_in_order() -> None:
    import dataclasses

    from inspector.dissect import dns

    for build, cls, values in (
        (dns._new_question, dns.DnsQuestion, ("a.example", 1)),
        (dns._new_record, dns.DnsRecord, ("a.example", 1, 60, "192.0.2.1", ("192.0.2.1",))),
        (dns._new_message, dns.DnsMessage, (7, True, 0, (), ())),
    ):
        built = build(*values)
        assert built == cls(*values)
        assert [getattr(built, f.name) for f in dataclasses.fields(cls)] == list(values)
