"""Small media-path formats: TURN ChannelData, DTLS records, Discord voice IP discovery.

Facts: ../shared/research/protocol-facts.md §3.2 (ChannelData), §3.3 (DTLS record and handshake
headers), §1.11 (Discord IP discovery and keep-alive), §1.13 (WhatsApp media framing).
Parsers take attacker-controlled bytes and return None (or an empty tuple); they never raise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from inspector.fastinit import frozen_init

# --- TURN ChannelData (RFC 5766 §11.4, RFC 8656 §12.4) -------------------------------------

CHANNEL_MIN: Final = 0x4000
#: RFC 5766 allowed channels up to 0x7FFF; RFC 7983's first-byte table (64-79) means only
#: 0x4000-0x4FFF can share a port with STUN/DTLS/RTP, which is what clients use in practice.
CHANNEL_MAX: Final = 0x4FFF


@dataclass(frozen=True, slots=True)
class ChannelData:
    """One TURN ChannelData message: channel number and the application data it carries."""

    channel: int
    data: bytes
    total_len: int


def parse_channel_data(payload: bytes, *, stream: bool = False) -> ChannelData | None:
    """Parse a ChannelData message at the start of ``payload``.

    Over UDP the length must match the datagram, allowing the optional padding to 4 bytes
    (RFC 8656 §12.5); over a stream (``stream=True``) the message may be followed by more.
    Weakness: 4 bits of channel range and a 16-bit length; QUIC short headers also start 0x40-0x4F,
    so the detector wants a recurring channel over several packets or a ChannelBind first.
    """
    if len(payload) < 4:
        return None
    channel, length = struct.unpack_from("!HH", payload, 0)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        return None
    end = 4 + length
    padded = end + (-length % 4)
    if stream:
        if end > len(payload):
            return None
        total = min(padded, len(payload))
    else:
        if len(payload) not in (end, padded):
            return None
        total = len(payload)
    return ChannelData(channel, bytes(payload[4:end]), total)


# --- DTLS records (RFC 6347 §4.1, RFC 9147 §4) ---------------------------------------------

DTLS_CONTENT_TYPES: Final = frozenset({20, 21, 22, 23, 25, 26, 27})
#: 0xFEFF DTLS 1.0, 0xFEFD DTLS 1.2 (also the legacy record version of DTLS 1.3), 0xFEFC DTLS 1.3,
#: and 0x0100, OpenSSL's pre-RFC "DTLS1_BAD_VER" seen in dtls_old_version.pcapng.
DTLS_VERSIONS: Final = frozenset({0xFEFF, 0xFEFD, 0xFEFC, 0x0100})
DTLS_HEADER_LEN: Final = 13
CONTENT_HANDSHAKE: Final = 22
#: Handshake message types (RFC 6347 §4.3.2, RFC 8446 §4): hello_request 0 ... finished 20.
HANDSHAKE_TYPES: Final = frozenset({0, 1, 2, 3, 4, 8, 11, 12, 13, 14, 15, 16, 20, 24})
MAX_RECORDS: Final = 32


@dataclass(frozen=True, slots=True, init=False)
class DtlsRecord:
    """One DTLS record header.

    content_type  20 ccs, 21 alert, 22 handshake, 23 application data, 25 CID, 26 ACK ...;
                  for a DTLS 1.3 unified header (RFC 9147 §4) the first byte (0x20-0x3F)
    version       record version (0 for a DTLS 1.3 unified header, which has none)
    epoch         16-bit epoch (low 2 bits only for a unified header)
    length        fragment length; handshake_type the first handshake message type, or None
    """

    content_type: int
    version: int
    epoch: int
    length: int
    handshake_type: int | None = None

    def __init__(
        self,
        content_type: int,
        version: int,
        epoch: int,
        length: int,
        handshake_type: int | None = None,
    ) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.content_type = content_type  # type: ignore[misc]
        self.version = version  # type: ignore[misc]
        self.epoch = epoch  # type: ignore[misc]
        self.length = length  # type: ignore[misc]
        self.handshake_type = handshake_type  # type: ignore[misc]


frozen_init(DtlsRecord)


def _unified_header(payload: bytes, pos: int) -> tuple[DtlsRecord, int] | None:
    """DTLS 1.3 unified header ``001CSLEE`` (RFC 9147 §4), only with the L bit and without CID.

    Without the length bit the record runs to the end of the datagram and nothing is checkable;
    with a connection id its length is not knowable here. Both are refused.
    """
    first = payload[pos]
    if first & 0xE0 != 0x20 or first & 0x10 or not first & 0x04:
        return None
    seq_len = 2 if first & 0x08 else 1
    header_len = 1 + seq_len + 2
    if pos + header_len > len(payload):
        return None
    length = struct.unpack_from("!H", payload, pos + 1 + seq_len)[0]
    return DtlsRecord(first, 0, first & 0x03, length), header_len


def parse_dtls_records(payload: bytes) -> tuple[DtlsRecord, ...]:
    """All DTLS records of a datagram, or () unless the records cover it exactly.

    RFC 6347 §4.1.1: a datagram holds whole records. The 13-byte header gives type, version and
    length; every record must fit and the last must end at the datagram's end. Weakness: one
    record of application data is 3 constrained bytes plus a length; the detector wants a
    handshake or several packets.
    """
    records: list[DtlsRecord] = []
    pos = 0
    while pos < len(payload) and len(records) < MAX_RECORDS:
        if pos + DTLS_HEADER_LEN <= len(payload) and payload[pos] in DTLS_CONTENT_TYPES:
            content_type, version, epoch = struct.unpack_from("!BHH", payload, pos)
            if version not in DTLS_VERSIONS:
                return ()
            length = struct.unpack_from("!H", payload, pos + 11)[0]
            header_len = DTLS_HEADER_LEN
            record = DtlsRecord(content_type, version, epoch, length)
        else:
            unified = _unified_header(payload, pos)
            if unified is None:
                return ()
            record, header_len = unified
        body = pos + header_len
        end = body + record.length
        if end > len(payload) or record.length == 0:
            return ()
        if record.content_type == CONTENT_HANDSHAKE and record.epoch == 0 and record.length >= 12:
            # Handshake header (RFC 6347 §4.2.2): type, length(3), seq(2), offset(3), frag_len(3).
            msg_type = payload[body]
            msg_len = int.from_bytes(payload[body + 1 : body + 4], "big")
            frag_off = int.from_bytes(payload[body + 6 : body + 9], "big")
            frag_len = int.from_bytes(payload[body + 9 : body + 12], "big")
            if msg_type in HANDSHAKE_TYPES and frag_off + frag_len <= msg_len and 12 + frag_len <= record.length:
                record = DtlsRecord(record.content_type, record.version, record.epoch, record.length, msg_type)
        records.append(record)
        pos = end
    if pos != len(payload):
        return ()
    return tuple(records)


# --- Discord voice IP discovery (facts §1.11; nDPI discord.c; Discord voice-connections doc) --

DISCORD_DISCOVERY_LEN: Final = 74
DISCORD_DISCOVERY_BODY: Final = 70
DISCORD_KEEPALIVE: Final = b"\x13\x37\xca\xfe"


@dataclass(frozen=True, slots=True, init=False)
class DiscordDiscovery:
    """A Discord IP-discovery packet: 1 = request, 2 = response; ssrc; address/port (response)."""

    packet_type: int
    ssrc: int
    address: str
    port: int

    def __init__(self, packet_type: int, ssrc: int, address: str, port: int) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.packet_type = packet_type  # type: ignore[misc]
        self.ssrc = ssrc  # type: ignore[misc]
        self.address = address  # type: ignore[misc]
        self.port = port  # type: ignore[misc]


frozen_init(DiscordDiscovery)


def parse_discord_discovery(payload: bytes) -> DiscordDiscovery | None:
    """74 bytes: type (2) = 1 or 2, length (2) = 70, SSRC (4), address (64, NUL-padded ASCII),
    port (2). Requests carry an all-zero address; responses the client's public address.
    Weakness: 4 fixed bytes; the detector checks the address field's shape too.
    """
    if len(payload) != DISCORD_DISCOVERY_LEN:
        return None
    packet_type, length, ssrc = struct.unpack_from("!HHI", payload, 0)
    if packet_type not in (1, 2) or length != DISCORD_DISCOVERY_BODY:
        return None
    raw = payload[8:72]
    text = raw.split(b"\x00", 1)[0]
    if raw[len(text) :].strip(b"\x00"):
        return None
    if not all(chr(ch) in "0123456789abcdefABCDEF.:" for ch in text):
        return None
    if packet_type == 2 and not text:
        return None
    port = struct.unpack_from("!H", payload, 72)[0]
    return DiscordDiscovery(packet_type, ssrc, text.decode("ascii"), port)


def is_discord_keepalive(payload: bytes) -> bool:
    """Discord's 8-byte UDP keep-alive starting 0x1337CAFE (nDPI discord.c; discord.pcap).

    Weakness: 4 fixed bytes in an 8-byte datagram; accepted only when it recurs.
    """
    return len(payload) == 8 and payload[:4] == DISCORD_KEEPALIVE
