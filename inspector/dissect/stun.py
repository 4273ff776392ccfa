"""STUN (RFC 3489, RFC 5389/8489) and TURN (RFC 5766/8656) message parsing.

Facts: ../shared/research/protocol-facts.md §3.2 (header, class/method bits, attribute numbers,
FINGERPRINT, classic STUN, TCP framing), §1.2 (Microsoft attributes and the 0xFF10 MS-TURN framing),
§1.4 (Google), §1.13 (WhatsApp), §1.14 (Signal). Vendor attributions follow nDPI ``stun.c`` as cited
there and were checked against the shared nDPI captures (see tests/dissect/test_detectors.py).

Every parser takes attacker-controlled bytes and returns ``None`` for anything that is not a
well-formed message; none of them raises.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from inspector.fastinit import frozen_init, positional_constructor

MAGIC_COOKIE: Final = 0x2112A442
MAGIC_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
FINGERPRINT_XOR: Final = 0x5354554E  # RFC 5389 §15.5: CRC-32 of the message XOR "STUN"
HEADER_LEN: Final = 20

# Methods (RFC 5389 §18.1, RFC 5766 §13, RFC 6062 §6.1).
METHOD_BINDING: Final = 0x001
METHOD_NAMES: Final = {
    0x001: "binding",
    0x002: "shared-secret",  # RFC 3489 only
    0x003: "allocate",
    0x004: "refresh",
    0x006: "send",
    0x007: "data",
    0x008: "create-permission",
    0x009: "channel-bind",
    0x00A: "connect",
    0x00B: "connection-bind",
    0x00C: "connection-attempt",
}
#: Methods that only a TURN relay exchange uses (nDPI marks the flow TURN on any of them).
TURN_METHODS: Final = frozenset({0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x00A, 0x00B, 0x00C})
CLASS_NAMES: Final = ("request", "indication", "success", "error")

# Attributes kept as facts (RFC 5389 §18.2, RFC 5766 §14).
ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_USERNAME: Final = 0x0006
ATTR_MESSAGE_INTEGRITY: Final = 0x0008
ATTR_CHANNEL_NUMBER: Final = 0x000C
ATTR_DATA: Final = 0x0013
ATTR_REALM: Final = 0x0014
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
ATTR_XOR_MAPPED_ADDRESS_OLD: Final = 0x8020  # pre-RFC 5389 drafts; still sent by some stacks

# Vendor attributes (facts file §1.1, §1.2, §1.3, §1.4, §1.13; nDPI stun.c; rtc_code wasp.lua).
ZOOM_ATTRIBUTES: Final = frozenset({0x0101, 0x0103})
MS_ATTRIBUTES: Final = frozenset({0x8054, 0x24DF, 0x3802, 0x8036, 0x8095, 0x0800, 0x8006, 0x8070, 0x8055})
GOOGLE_ATTRIBUTES: Final = frozenset({0xFF03})
WEBEX_ATTRIBUTES: Final = frozenset({0xC000, 0xC003})
WHATSAPP_ATTRIBUTES: Final = frozenset(range(0x4000, 0x4008))
#: Non-standard message types WhatsApp uses for call control (facts §1.13).
WHATSAPP_MESSAGE_TYPES: Final = frozenset(range(0x0800, 0x0806))

#: Classic (RFC 3489) message types nDPI accepts without a magic cookie (facts §3.2).
CLASSIC_TYPES: Final = frozenset(
    {
        0x0001, 0x0101, 0x0111, 0x0002, 0x0102, 0x0112, 0x0003, 0x0103, 0x0113,
        0x0004, 0x0104, 0x0114, 0x0115, 0x0006, 0x0106, 0x0116,
    }
)  # fmt: skip

MAX_ATTRIBUTES: Final = 64  # a real message carries < 20; bounds the walk on hostile input


@dataclass(frozen=True, slots=True, init=False)
class StunMessage:
    """One STUN message.

    message_type    the 16-bit type field (0x0001 Binding request ...)
    method          12-bit method (``METHOD_NAMES``); 0 for WhatsApp's non-standard types
    message_class   ``request``, ``indication``, ``success`` or ``error``
    transaction_id  12 bytes (RFC 5389) or 16 bytes (classic RFC 3489, cookie folded in)
    classic         True when the magic cookie is absent (RFC 3489 framing)
    attributes      (type, value) pairs in wire order, value without padding
    total_len       bytes the message occupies including header and padding
    fingerprint_ok  True/False when a FINGERPRINT attribute is present, else None
    """

    message_type: int
    method: int
    message_class: str
    transaction_id: bytes
    classic: bool
    attributes: tuple[tuple[int, bytes], ...]
    total_len: int
    fingerprint_ok: bool | None = None

    def __init__(
        self,
        message_type: int,
        method: int,
        message_class: str,
        transaction_id: bytes,
        classic: bool,
        attributes: tuple[tuple[int, bytes], ...],
        total_len: int,
        fingerprint_ok: bool | None = None,
    ) -> None:
        # One per STUN message: assigned field by field so that compiled this is native code.
        self.message_type = message_type  # type: ignore[misc]
        self.method = method  # type: ignore[misc]
        self.message_class = message_class  # type: ignore[misc]
        self.transaction_id = transaction_id  # type: ignore[misc]
        self.classic = classic  # type: ignore[misc]
        self.attributes = attributes  # type: ignore[misc]
        self.total_len = total_len  # type: ignore[misc]
        self.fingerprint_ok = fingerprint_ok  # type: ignore[misc]

    def attribute(self, attr_type: int) -> bytes | None:
        """Value of the first attribute of this type, or None."""
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None

    @property
    def attribute_types(self) -> frozenset[int]:
        return frozenset(dict(self.attributes))  # the keys of the (type, value) pairs

    @property
    def is_turn(self) -> bool:
        """A TURN-only method (Allocate, Refresh, Send, Data, ChannelBind ...)."""
        return self.method in TURN_METHODS

    def text(self, attr_type: int) -> str:
        """A text attribute (USERNAME, REALM, SOFTWARE) decoded leniently, or ""."""
        value = self.attribute(attr_type)
        if value is None:
            return ""
        return _printable(value.decode("utf-8", errors="replace"))

    @property
    def mapped_address(self) -> str:
        """XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS) as ``ip:port`` / ``[ip6]:port``, or ""."""
        for attr_type in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD):
            value = self.attribute(attr_type)
            if value is not None and not self.classic:
                text = decode_address(value, self.transaction_id, xor=True)
                if text:
                    return text
        value = self.attribute(ATTR_MAPPED_ADDRESS)
        return decode_address(value, self.transaction_id, xor=False) if value is not None else ""


frozen_init(StunMessage)


def _printable(text: str) -> str:
    text = text.rstrip("\x00")
    if not text.isprintable():  # only then is each character looked at
        text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:128]


def decode_address(value: bytes, transaction_id: bytes, xor: bool) -> str:
    """Decode a (XOR-)MAPPED-ADDRESS value; "" when malformed.

    RFC 5389 §15.1/§15.2: 1 reserved byte, family (1 = IPv4, 2 = IPv6), port, address; XOR form
    XORs the port with the cookie's top 16 bits and the address with cookie || transaction id.
    """
    if len(value) < 8 or value[1] not in (1, 2):
        return ""
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0]
    raw = value[4:8] if family == 1 else value[4:20]
    if family == 2 and len(raw) < 16:
        return ""
    if xor:
        port ^= MAGIC_COOKIE >> 16
        key = struct.pack("!I", MAGIC_COOKIE) + transaction_id[-12:]
        size = min(len(raw), len(key))  # XOR over the shorter of the two, as zip pairs them
        raw = (int.from_bytes(raw[:size], "big") ^ int.from_bytes(key[:size], "big")).to_bytes(size, "big")
    if family == 1:
        if len(raw) == 4:
            return f"{socket.inet_ntoa(raw)}:{port}"  # dotted quad, as ipaddress writes it
        return f"{ipaddress.IPv4Address(raw)}:{port}"
    return f"[{ipaddress.IPv6Address(raw)}]:{port}"


def message_class_of(message_type: int) -> str:
    """Class from the C1 (0x0100) and C0 (0x0010) bits (RFC 5389 §6)."""
    return CLASS_NAMES[((message_type >> 7) & 0x2) | ((message_type >> 4) & 0x1)]


def method_of(message_type: int) -> int:
    """Method bits M0-M11 interleaved around the class bits (RFC 5389 §6)."""
    return (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)


def fingerprint(message_prefix: bytes | memoryview) -> int:
    """FINGERPRINT value for a message whose bytes before the attribute are given (§15.5)."""
    return (zlib.crc32(message_prefix) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def parse_stun(data: bytes, *, allow_trailing: bool = False) -> StunMessage | None:
    """Parse one STUN message at the start of ``data``; None if it is not one.

    The length field must match the datagram exactly (or, with
    ``allow_trailing``, fit inside it: stream transports carry several messages back to back),
    and the attribute walk must end exactly at the declared length. Without the magic cookie the
    message is accepted only for the classic RFC 3489 types listed in ``CLASSIC_TYPES`` and a
    length that is a multiple of 4.
    Weakness: a 20-byte message with no attributes is only 4 constrained bytes plus the cookie;
    classic messages have no cookie at all, so a single classic match is weak evidence.
    """
    if len(data) < HEADER_LEN:
        return None
    if type(data) is not bytes:
        data = bytes(data)  # memoryview / bytearray: one copy, then slices are bytes already
    # Message type, length, magic cookie (RFC 8489 §5), big-endian.
    message_type = (data[0] << 8) | data[1]
    length = (data[2] << 8) | data[3]
    classic = data[4:8] != MAGIC_COOKIE_BYTES
    # RFC 5389 §6: length is a multiple of 4. WhatsApp breaks this (unpadded last attribute,
    # wa_voice.pcap), so the rule is only enforced where no magic cookie vouches for STUN.
    if message_type & 0xC000 or (classic and length % 4):
        return None
    total = HEADER_LEN + length
    if total > len(data) or (not allow_trailing and total != len(data)):
        return None
    if classic and message_type not in CLASSIC_TYPES:
        return None
    transaction_id = data[4:20] if classic else data[8:20]
    walked = _walk_attributes(data, total, padded=True)
    if walked is None and not classic:
        # Microsoft's TURN servers (teams.pcap) send ERROR-CODE/NONCE values unpadded, as the
        # pre-RFC 5389 MS-TURN drafts did; a cookie message gets a second, unpadded walk.
        walked = _walk_attributes(data, total, padded=False)
    if walked is None:
        return None
    attributes, fingerprint_ok = walked
    if message_type in WHATSAPP_MESSAGE_TYPES:
        method, klass = 0, "indication"
    else:
        method, klass = _METHOD_AND_CLASS[message_type]
    return _new_message(
        message_type, method, klass, transaction_id, classic, attributes, total, fingerprint_ok
    )


#: ``StunMessage(...)`` at the cost of the fewest calls: a datagram flow's first packets are mostly
#: STUN, so this runs for most media packets (``fastinit``).
_new_message: Final = positional_constructor(StunMessage)


def _walk_attributes(
    data: bytes, total: int, padded: bool
) -> tuple[tuple[tuple[int, bytes], ...], bool | None] | None:
    """TLV walk from byte 20 to ``total``; None unless it ends exactly there."""
    attributes: list[tuple[int, bytes]] = []
    fingerprint_ok: bool | None = None
    pos = HEADER_LEN
    append = attributes.append
    while pos < total:
        if pos + 4 > total or len(attributes) >= MAX_ATTRIBUTES:
            return None
        # An attribute's type and length (RFC 8489 §14), big-endian: read byte by byte, which
        # compiled code does natively (a struct call per attribute cost more than the walk).
        attr_type = (data[pos] << 8) | data[pos + 1]
        attr_len = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 4 + attr_len
        if end > total:
            return None
        value = data[pos + 4 : end]
        if attr_type == ATTR_FINGERPRINT and attr_len == 4:
            fingerprint_ok = int.from_bytes(value, "big") == fingerprint(memoryview(data)[:pos])
        append((attr_type, value))
        # Padding to 4 bytes (RFC 5389 §15); WhatsApp omits it after the last attribute
        # (wa_voice.pcap Allocate requests), so a message may end right after the value.
        pos = end if (end == total or not padded) else end + (-attr_len % 4)
    if pos != total:
        return None
    return tuple(attributes), fingerprint_ok


# (method, class) of every message type whose two top bits are zero, as parse_stun accepts them.
_METHOD_AND_CLASS: Final = tuple((method_of(t), message_class_of(t)) for t in range(0x4000))


def parse_stun_stream(data: bytes, max_messages: int = 16) -> list[StunMessage]:
    """STUN messages in one TCP segment: RFC 5389 §7.2.2 (back to back) or RFC 4571 framing.

    RFC 4571 prefixes each message with a 2-byte length; plain STUN over TCP relies on the
    header's own length. Both are tried; the first layout that consumes the whole segment wins.
    Weakness: a segment that starts mid-message (capture began mid-stream) yields nothing.
    """
    for framed in (False, True):
        messages: list[StunMessage] = []
        pos = 0
        while pos < len(data) and len(messages) < max_messages:
            if framed:
                if pos + 2 > len(data):
                    break
                frame_len = struct.unpack_from("!H", data, pos)[0]
                message = parse_stun(data[pos + 2 : pos + 2 + frame_len])
                step = 2 + frame_len
            else:
                message = parse_stun(data[pos:], allow_trailing=True)
                step = message.total_len if message else 0
            if message is None:
                break
            messages.append(message)
            pos += step
        if messages and pos == len(data):
            return messages
    return []


# Microsoft multiplexed TURN (facts §1.2, nDPI stun.c citing [MS-TURN] §2.2.3): 0xFF10, a
# 2-byte length of what follows the first 4 bytes, then 8 more header bytes (session id).
MS_TURN_MAGIC: Final = 0xFF10
MS_TURN_HEADER_LEN: Final = 12


def strip_ms_turn(data: bytes) -> bytes | None:
    """Inner payload of a Microsoft multiplexed-TURN frame, or None if ``data`` is not one.

    Weakness: two fixed bytes and a length; a random datagram matches with probability ~2^-32.
    """
    if len(data) < MS_TURN_HEADER_LEN + 1:
        return None
    magic, length = struct.unpack_from("!HH", data, 0)
    if magic != MS_TURN_MAGIC or length + 4 != len(data):
        return None
    return bytes(data[MS_TURN_HEADER_LEN:])


def stun_service(
    message: StunMessage, attribute_types: frozenset[int] | None = None
) -> tuple[str, str]:
    """(service id, evidence detail) the message itself attributes, or ("", "").

    ``attribute_types`` is ``message.attribute_types`` when the caller has already built it.

    Rules (facts §3.2 "Vendor fingerprints", nDPI stun.c; checked against the shared captures):
    attributes 0x0101/0x0103 -> zoom (zoom.pcap, zoom_p2p.pcapng); Microsoft attributes -> teams
    (teams.pcap, skype-conference-call.pcap; nDPI says Skype_TeamsCall, Skype and Teams share the
    stack); WhatsApp attributes 0x4000-0x4007 or message types 0x0800-0x0805 -> whatsapp (all three
    WhatsApp captures carry 0x4000 in Allocate requests); 0xFF03 -> google-meet; 0xC000/0xC003
    -> webex; REALM/SOFTWARE text: google.com -> google-meet, signal.org/whispersystems.org ->
    signal, facebook -> messenger, telegram -> telegram, viber -> viber.
    Weakness: attributes are chosen by the client and trivially imitated; Meta's stack is shared
    by WhatsApp and Messenger, so the whatsapp/messenger split is only as good as these markers;
    nDPI's Signal/Telegram labels in the shared captures come from address caches, not text we
    can see (those flows carry no REALM naming the service).
    """
    types = message.attribute_types if attribute_types is None else attribute_types
    if (
        types.isdisjoint(_MARKED_ATTRIBUTES)
        and message.message_type not in WHATSAPP_MESSAGE_TYPES
    ):
        return "", ""  # no vendor attribute, type, REALM or SOFTWARE: plain ICE / Binding
    if types & ZOOM_ATTRIBUTES:
        return "zoom", f"stun attr=0x{min(types & ZOOM_ATTRIBUTES):04x}"
    if types & MS_ATTRIBUTES:
        return "teams", f"stun attr=0x{min(types & MS_ATTRIBUTES):04x}"
    if types & WHATSAPP_ATTRIBUTES:
        return "whatsapp", f"stun attr=0x{min(types & WHATSAPP_ATTRIBUTES):04x}"
    if message.message_type in WHATSAPP_MESSAGE_TYPES and not message.classic:
        return "whatsapp", f"stun type=0x{message.message_type:04x}"
    if types & GOOGLE_ATTRIBUTES:
        return "google-meet", "stun attr=0xff03"
    if types & WEBEX_ATTRIBUTES:
        return "webex", f"stun attr=0x{min(types & WEBEX_ATTRIBUTES):04x}"
    for attr_type, label in ((ATTR_REALM, "realm"), (ATTR_SOFTWARE, "software")):
        if attr_type not in types:
            continue
        text = message.text(attr_type).lower()
        if not text:
            continue
        for needle, service in _TEXT_SERVICES:
            if needle in text:
                return service, f"stun {label}={text[:48]}"
    return "", ""


# Every attribute ``stun_service`` looks at: the vendor sets and the two text attributes.
_MARKED_ATTRIBUTES: Final = (
    ZOOM_ATTRIBUTES
    | MS_ATTRIBUTES
    | WHATSAPP_ATTRIBUTES
    | GOOGLE_ATTRIBUTES
    | WEBEX_ATTRIBUTES
    | {ATTR_REALM, ATTR_SOFTWARE}
)

_TEXT_SERVICES: Final = (
    ("google.com", "google-meet"),
    ("signal.org", "signal"),
    ("whispersystems.org", "signal"),
    ("facebook", "messenger"),
    ("telegram", "telegram"),
    ("viber", "viber"),
)
