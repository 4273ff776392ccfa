"""DNS messages (RFC 1035 §4): header, questions and the answer section, from untrusted bytes.

Decodes the records that name servers: A (1), AAAA (28), CNAME (5), and HTTPS (65) / SVCB (64)
with their ipv4hint (4) / ipv6hint (6) SvcParams (RFC 9460 §2.2, §7.3; protocol-facts.md §3.8).
NS and PTR values are decoded as names for the evidence; other types keep an empty value.

Compression pointers (RFC 1035 §4.1.4) are followed with loop protection: every pointer must jump
strictly before the lowest offset the name has read from so far, so a name can never revisit a
byte, and a name is at most 255 bytes (RFC 1035 §3.1). Weakness: a (legal but unused in practice)
forward pointer is rejected as ``bad_pointer``. Authority and additional sections are not read.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

from inspector.fastinit import frozen_init, positional_constructor

TYPE_A: Final = 1
TYPE_NS: Final = 2
TYPE_CNAME: Final = 5
TYPE_PTR: Final = 12
TYPE_AAAA: Final = 28
TYPE_SVCB: Final = 64
TYPE_HTTPS: Final = 65

SVC_PARAM_IPV4HINT: Final = 4
SVC_PARAM_IPV6HINT: Final = 6

MAX_NAME_WIRE_LENGTH: Final = 255
HEADER_LENGTH: Final = 12


class DnsError(ValueError):
    """A DNS message is malformed; the short snake_case reason is in ``.reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, init=False)
class DnsQuestion:
    """name as sent (labels joined by ``.``, latin-1, no trailing dot; root is ""), qtype."""

    name: str
    type: int

    def __init__(self, name: str, type: int) -> None:
        # One per DNS message part: assigned field by field so that compiled this is native code.
        self.name = name  # type: ignore[misc]
        self.type = type  # type: ignore[misc]


frozen_init(DnsQuestion)


@dataclass(frozen=True, slots=True, init=False)
class DnsRecord:
    """One answer record.

    name       owner name, as sent
    type       RR type
    ttl_s      time to live in seconds
    value      A/AAAA: the address text; CNAME/NS/PTR: the target name; HTTPS/SVCB: the
               TargetName ("" = the owner itself, RFC 9460 §2.5); other types: ""
    addresses  HTTPS/SVCB ipv4hint then ipv6hint addresses; A/AAAA: (value,); else ()
    """

    name: str
    type: int
    ttl_s: int
    value: str
    addresses: tuple[str, ...] = ()

    def __init__(self, name: str, type: int, ttl_s: int, value: str, addresses: tuple[str, ...] = ()) -> None:
        # One per DNS message part: assigned field by field so that compiled this is native code.
        self.name = name  # type: ignore[misc]
        self.type = type  # type: ignore[misc]
        self.ttl_s = ttl_s  # type: ignore[misc]
        self.value = value  # type: ignore[misc]
        self.addresses = addresses  # type: ignore[misc]

    @property
    def ttl(self) -> int:
        """Alias of ``ttl_s`` (the issue text calls the field ``ttl``)."""
        return self.ttl_s


frozen_init(DnsRecord)


@dataclass(frozen=True, slots=True, init=False)
class DnsMessage:
    """A parsed DNS message: header fields, the questions and the answer section."""

    id: int
    is_response: bool
    rcode: int
    questions: tuple[DnsQuestion, ...]
    answers: tuple[DnsRecord, ...]

    def __init__(
        self,
        id: int,
        is_response: bool,
        rcode: int,
        questions: tuple[DnsQuestion, ...],
        answers: tuple[DnsRecord, ...],
    ) -> None:
        # One per DNS message part: assigned field by field so that compiled this is native code.
        self.id = id  # type: ignore[misc]
        self.is_response = is_response  # type: ignore[misc]
        self.rcode = rcode  # type: ignore[misc]
        self.questions = questions  # type: ignore[misc]
        self.answers = answers  # type: ignore[misc]


frozen_init(DnsMessage)


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    """Decodes the name at ``offset``; returns (name, offset just after it in the original place)."""
    labels: list[str] = []
    wire_length = 0
    position = offset
    lowest_read = offset  # pointers must go strictly below every byte read so far
    resume_at: int | None = None
    while True:
        if position >= len(message):
            raise DnsError("truncated_name")
        length = message[position]
        if length == 0:
            wire_length += 1
            position += 1
            break
        label_kind = length & 0xC0
        if label_kind == 0xC0:
            if position + 1 >= len(message):
                raise DnsError("truncated_name")
            target = ((length & 0x3F) << 8) | message[position + 1]
            if target >= lowest_read:
                raise DnsError("bad_pointer")
            if resume_at is None:
                resume_at = position + 2
            position = target
            lowest_read = target
            continue
        if label_kind != 0:
            raise DnsError("bad_label_type")
        end = position + 1 + length
        if end > len(message):
            raise DnsError("truncated_name")
        wire_length += 1 + length
        if wire_length >= MAX_NAME_WIRE_LENGTH:
            raise DnsError("name_too_long")
        labels.append(message[position + 1 : end].decode("latin-1"))
        position = end
    return ".".join(labels), (resume_at if resume_at is not None else position)


def _uint(message: bytes, offset: int, size: int, reason: str) -> int:
    if offset + size > len(message):
        raise DnsError(reason)
    return int.from_bytes(message[offset : offset + size], "big")


def _svcb_value(message: bytes, start: int, end: int) -> tuple[str, tuple[str, ...]]:
    """SVCB/HTTPS RDATA (RFC 9460 §2.2): SvcPriority, TargetName, SvcParams (key, length, value)."""
    _uint(message, start, 2, "bad_svcb")  # SvcPriority
    target, position = _read_name(message[:end], start + 2)
    ipv4: list[str] = []
    ipv6: list[str] = []
    while position < end:
        key = _uint(message, position, 2, "bad_svcb")
        length = _uint(message, position + 2, 2, "bad_svcb")
        value_start = position + 4
        value_end = value_start + length
        if value_end > end:
            raise DnsError("bad_svcb")
        value = message[value_start:value_end]
        if key == SVC_PARAM_IPV4HINT:
            if not value or len(value) % 4:
                raise DnsError("bad_svcb")
            ipv4.extend(str(ipaddress.IPv4Address(value[i : i + 4])) for i in range(0, len(value), 4))
        elif key == SVC_PARAM_IPV6HINT:
            if not value or len(value) % 16:
                raise DnsError("bad_svcb")
            ipv6.extend(
                str(ipaddress.IPv6Address(value[i : i + 16])) for i in range(0, len(value), 16)
            )
        position = value_end
    return target, tuple(ipv4 + ipv6)


def _record_value(message: bytes, rtype: int, start: int, end: int) -> tuple[str, tuple[str, ...]]:
    rdata = message[start:end]
    if rtype == TYPE_A:
        if len(rdata) != 4:
            raise DnsError("bad_rdata_a")
        address = socket.inet_ntoa(rdata)  # dotted quad, the text ipaddress.IPv4Address gives
        return address, (address,)
    if rtype == TYPE_AAAA:
        if len(rdata) != 16:
            raise DnsError("bad_rdata_aaaa")
        address = str(ipaddress.IPv6Address(rdata))
        return address, (address,)
    if rtype in (TYPE_CNAME, TYPE_NS, TYPE_PTR):
        # The name may point back into the message, but must end inside the RDATA.
        name, after = _read_name(message[:end], start)
        if after != end:
            raise DnsError("bad_rdata_name")
        return name, ()
    if rtype in (TYPE_HTTPS, TYPE_SVCB):
        return _svcb_value(message, start, end)
    return "", ()


def parse_dns(message: bytes) -> DnsMessage:
    """Parses one DNS message (without the TCP 2-byte length prefix).

    Reads the header, every question and every answer record; bytes after the answer section
    (authority, additional, garbage) are not read. Raises DnsError only.
    Source: RFC 1035 §4.1; RFC 9460 for HTTPS/SVCB. Weakness: see the module docstring.
    """
    if len(message) < HEADER_LENGTH:
        raise DnsError("truncated_header")
    message_id, flags, question_count, answer_count = _HEADER(message, 0)
    position = HEADER_LENGTH
    size = len(message)
    questions: list[DnsQuestion] = []
    for _ in range(question_count):
        name, position = _read_name(message, position)
        if position + 4 > size:  # QTYPE, QCLASS
            raise DnsError("truncated_question")
        qtype = message[position] << 8 | message[position + 1]
        position += 4
        questions.append(_new_question(name, qtype))
    answers: list[DnsRecord] = []
    for _ in range(answer_count):
        name, position = _read_name(message, position)
        if position + 10 > size:  # TYPE, CLASS, TTL, RDLENGTH
            raise DnsError("truncated_record")
        rtype, _rclass, ttl_s, rdlength = _RECORD_HEADER(message, position)
        start = position + 10
        end = start + rdlength
        if end > size:
            raise DnsError("truncated_rdata")
        value, addresses = _record_value(message, rtype, start, end)
        answers.append(_new_record(name, rtype, ttl_s, value, addresses))
        position = end
    return _new_message(message_id, bool(flags & 0x8000), flags & 0x000F, tuple(questions), tuple(answers))


_HEADER: Final = struct.Struct("!HHHH").unpack_from  # ID, flags, QDCOUNT, ANCOUNT (RFC 1035 §4.1.1)
_RECORD_HEADER: Final = struct.Struct("!HHIH").unpack_from  # TYPE, CLASS, TTL, RDLENGTH (§4.1.3)


# A DNS response builds a message, its questions and every record, for every answer in the
# capture: built at the cost of the fewest calls (``fastinit``).
_new_question: Final = positional_constructor(DnsQuestion)
_new_record: Final = positional_constructor(DnsRecord)
_new_message: Final = positional_constructor(DnsMessage)


def split_tcp_messages(stream: bytes) -> tuple[list[bytes], int]:
    """Splits DNS-over-TCP bytes into messages by their 2-byte length prefix (RFC 1035 §4.2.2).

    Returns the complete messages and how many bytes they used; a partial message at the end
    stays for the next segment. A zero length prefix is skipped as an empty message.
    """
    messages: list[bytes] = []
    position = 0
    while position + 2 <= len(stream):
        length = int.from_bytes(stream[position : position + 2], "big")
        if position + 2 + length > len(stream):
            break
        if length:
            messages.append(stream[position + 2 : position + 2 + length])
        position += 2 + length
    return messages, position
