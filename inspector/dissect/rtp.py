"""RTP and RTCP header parsing (RFC 3550, RFC 3551, RFC 4585, RFC 3611, RFC 5761, RFC 3711).

Facts: ../shared/research/protocol-facts.md §3.4 (header layout, RTCP packet types 200-207,
nDPI's PT ranges) and §3.1 (first-byte demultiplexing). SRTP leaves the RTP header and the first
8 bytes of every RTCP packet in clear, which is why these headers are readable in encrypted calls.

A single datagram that parses as RTP proves little (any byte string starting 0x80-0xBF with 12
bytes parses); ``inspector.dissect.detectors`` only trusts RTP seen over several packets.
Parsers take attacker-controlled bytes and return None (or an empty list); they never raise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from inspector.fastinit import frozen_init

RTP_VERSION: Final = 2
RTP_MIN_HEADER: Final = 12

RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
RTCP_APP: Final = 204
RTCP_RTPFB: Final = 205
RTCP_PSFB: Final = 206
RTCP_XR: Final = 207
RTCP_TYPES: Final = range(RTCP_SR, RTCP_XR + 1)
#: RFC 5761 §4: with RTP/RTCP multiplexing, byte 1 values 192-223 belong to RTCP, so RTP payload
#: types 64-95 are not used; a packet whose byte 1 falls there is not taken as RTP.
RTCP_CONFLICT_BYTE1: Final = range(192, 224)

#: SRTCP (RFC 3711 §3.4) appends E-flag/index (4 bytes) and an authentication tag (commonly 10
#: bytes for HMAC-SHA1-80, 4 for _32, 16 for GCM) after the compound packet.
MAX_SRTCP_TRAILER: Final = 4 + 16


@dataclass(frozen=True, slots=True, init=False)
class RtpHeader:
    """The clear-text RTP header (RFC 3550 §5.1).

    payload_type  7-bit PT; marker the M bit; sequence/timestamp/ssrc as on the wire
    csrc_count    CC; extension the X bit; header_len bytes up to the payload (fixed header,
                  CSRCs and extension); payload_len bytes after the header (incl. padding/tag)
    extension_profile  16-bit profile of the header extension (0xBEDE = RFC 8285 one-byte), or 0
    """

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    csrc_count: int
    padding: bool
    extension: bool
    extension_profile: int
    header_len: int
    payload_len: int

    def __init__(
        self,
        payload_type: int,
        marker: bool,
        sequence: int,
        timestamp: int,
        ssrc: int,
        csrc_count: int,
        padding: bool,
        extension: bool,
        extension_profile: int,
        header_len: int,
        payload_len: int,
    ) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.payload_type = payload_type  # type: ignore[misc]
        self.marker = marker  # type: ignore[misc]
        self.sequence = sequence  # type: ignore[misc]
        self.timestamp = timestamp  # type: ignore[misc]
        self.ssrc = ssrc  # type: ignore[misc]
        self.csrc_count = csrc_count  # type: ignore[misc]
        self.padding = padding  # type: ignore[misc]
        self.extension = extension  # type: ignore[misc]
        self.extension_profile = extension_profile  # type: ignore[misc]
        self.header_len = header_len  # type: ignore[misc]
        self.payload_len = payload_len  # type: ignore[misc]


frozen_init(RtpHeader)


def parse_rtp(data: bytes) -> RtpHeader | None:
    """Parse an RTP header; None unless version is 2 and the header fits.

    Also rejects byte-1 values that RFC 5761 reserves for RTCP (192-223), and headers whose
    extension or CSRC list overrun the datagram. Weakness: 2 bits of version are the only fixed
    field; callers must check SSRC/sequence continuity across packets.
    """
    if len(data) < RTP_MIN_HEADER or data[0] >> 6 != RTP_VERSION:
        return None
    if data[1] in RTCP_CONFLICT_BYTE1:
        return None
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", data, 0)
    csrc_count = first & 0x0F
    header_len = RTP_MIN_HEADER + 4 * csrc_count
    extension = bool(first & 0x10)
    profile = 0
    if extension:
        if header_len + 4 > len(data):
            return None
        profile, words = struct.unpack_from("!HH", data, header_len)
        header_len += 4 + 4 * words
    if header_len > len(data):
        return None
    return RtpHeader(
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrc_count=csrc_count,
        padding=bool(first & 0x20),
        extension=extension,
        extension_profile=profile,
        header_len=header_len,
        payload_len=len(data) - header_len,
    )


@dataclass(frozen=True, slots=True, init=False)
class ReportBlock:
    """An RTCP reception report block (RFC 3550 §6.4.1).

    ssrc                  source the report is about
    fraction_lost         lost fraction since the previous report, 0-255 (/256)
    cumulative_lost       packets lost since the start (signed 24-bit)
    highest_sequence      extended highest sequence number received
    jitter                interarrival jitter, in RTP timestamp units
    last_sr, delay_since_last_sr   LSR (middle 32 bits of NTP) and DLSR (1/65536 s)
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int

    def __init__(
        self,
        ssrc: int,
        fraction_lost: int,
        cumulative_lost: int,
        highest_sequence: int,
        jitter: int,
        last_sr: int,
        delay_since_last_sr: int,
    ) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.ssrc = ssrc  # type: ignore[misc]
        self.fraction_lost = fraction_lost  # type: ignore[misc]
        self.cumulative_lost = cumulative_lost  # type: ignore[misc]
        self.highest_sequence = highest_sequence  # type: ignore[misc]
        self.jitter = jitter  # type: ignore[misc]
        self.last_sr = last_sr  # type: ignore[misc]
        self.delay_since_last_sr = delay_since_last_sr  # type: ignore[misc]

    @property
    def fraction_lost_ratio(self) -> float:
        return self.fraction_lost / 256.0


frozen_init(ReportBlock)


@dataclass(frozen=True, slots=True, init=False)
class RtcpPacket:
    """One packet of an RTCP compound (RFC 3550 §6.4).

    packet_type   200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP, 205 RTPFB, 206 PSFB, 207 XR
    count         the 5-bit RC/SC/FMT field
    length_bytes  bytes of this packet including its header
    ssrc          sender SSRC (first word after the header; 0 when absent)
    ntp_timestamp, rtp_timestamp, sender_packets, sender_octets   SR sender info, else None
    report_blocks reception report blocks of an SR or RR (may be empty: SRTCP can hide them)
    """

    packet_type: int
    count: int
    length_bytes: int
    ssrc: int
    ntp_timestamp: int | None = None
    rtp_timestamp: int | None = None
    sender_packets: int | None = None
    sender_octets: int | None = None
    report_blocks: tuple[ReportBlock, ...] = ()

    def __init__(
        self,
        packet_type: int,
        count: int,
        length_bytes: int,
        ssrc: int,
        ntp_timestamp: int | None = None,
        rtp_timestamp: int | None = None,
        sender_packets: int | None = None,
        sender_octets: int | None = None,
        report_blocks: tuple[ReportBlock, ...] = (),
    ) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.packet_type = packet_type  # type: ignore[misc]
        self.count = count  # type: ignore[misc]
        self.length_bytes = length_bytes  # type: ignore[misc]
        self.ssrc = ssrc  # type: ignore[misc]
        self.ntp_timestamp = ntp_timestamp  # type: ignore[misc]
        self.rtp_timestamp = rtp_timestamp  # type: ignore[misc]
        self.sender_packets = sender_packets  # type: ignore[misc]
        self.sender_octets = sender_octets  # type: ignore[misc]
        self.report_blocks = report_blocks  # type: ignore[misc]


frozen_init(RtcpPacket)


def _report_blocks(data: bytes, start: int, end: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for index in range(count):
        pos = start + 24 * index
        if pos + 24 > end:
            break
        ssrc, word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, pos)
        cumulative = word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        blocks.append(ReportBlock(ssrc, word >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def parse_rtcp_compound(payload: bytes, *, max_packets: int = 32) -> list[RtcpPacket]:
    """Parse an RTCP compound datagram into its packets; [] if it does not start as RTCP.

    Each packet needs version 2, a type in 200-207 and a length (32-bit words minus one) that
    fits. Parsing stops at the first packet that does not fit, which is where an SRTCP trailer
    (or SRTCP's encrypted remainder) starts; ``rtcp_layout`` tells plain RTCP from SRTCP. Report
    blocks of an SRTCP packet are ciphertext: the values are only meaningful for plain RTCP
    (``rtcp_coverage(...) == 0``), or must be checked for plausibility.
    """
    packets: list[RtcpPacket] = []
    pos = 0
    while pos + 4 <= len(payload) and len(packets) < max_packets:
        first, packet_type, words = struct.unpack_from("!BBH", payload, pos)
        length = 4 * (words + 1)
        if first >> 6 != RTP_VERSION or packet_type not in RTCP_TYPES:
            break
        if pos + length > len(payload):
            break
        count = first & 0x1F
        end = pos + length
        ssrc = struct.unpack_from("!I", payload, pos + 4)[0] if length >= 8 else 0
        if packet_type == RTCP_SR and length >= 28:
            ntp, rtp_ts, sent_packets, sent_octets = struct.unpack_from("!QIII", payload, pos + 8)
            blocks = _report_blocks(payload, pos + 28, end, count)
            packets.append(
                RtcpPacket(packet_type, count, length, ssrc, ntp, rtp_ts, sent_packets, sent_octets, blocks)
            )
        elif packet_type == RTCP_RR:
            blocks = _report_blocks(payload, pos + 8, end, count)
            packets.append(RtcpPacket(packet_type, count, length, ssrc, report_blocks=blocks))
        else:
            packets.append(RtcpPacket(packet_type, count, length, ssrc))
        pos = end
    return packets


def rtcp_coverage(payload: bytes, packets: list[RtcpPacket]) -> int:
    """Bytes left after the parsed compound: 0 for plain RTCP, ~14 for SRTCP, -1 if implausible."""
    used = sum(packet.length_bytes for packet in packets)
    rest = len(payload) - used
    return rest if packets and 0 <= rest <= MAX_SRTCP_TRAILER else -1


#: Shortest SRTCP trailer: the 4-byte E-flag/index and a 4-byte HMAC-SHA1-32 tag (RFC 3711 §4.2).
SRTCP_MIN_TRAILER: Final = 4 + 4


def rtcp_layout(payload: bytes) -> tuple[str, list[RtcpPacket]]:
    """("plain", packets) when the RTCP compound tiles the datagram exactly; ("srtcp", [first])
    when only the first packet is readable; ("", []) when the datagram is not RTCP.

    SRTCP (RFC 3711 §3.4) encrypts everything after the first 8 bytes of the compound, so only
    the first packet's header and sender SSRC are clear: its length covers itself, and the rest
    of the datagram (encrypted packets, index, tag) must be at least ``SRTCP_MIN_TRAILER``.
    Weakness: an SRTCP datagram is 2 fixed bits, a type byte and a length that fits; callers
    should want the sender SSRC to recur before trusting it (the ``rtcp`` detector does).
    """
    packets = parse_rtcp_compound(payload)
    if not packets:
        return "", []
    if sum(packet.length_bytes for packet in packets) == len(payload):
        return "plain", packets
    if len(payload) - packets[0].length_bytes >= SRTCP_MIN_TRAILER:
        return "srtcp", packets[:1]
    return "", []


def is_rtcp(payload: bytes) -> bool:
    """One datagram is RTCP: an exact compound (RFC 3550 §6.1; the first packet may be any type
    200-207, as reduced-size RTCP, RFC 5506, allows) or an SRTCP datagram (``rtcp_layout``).
    Weakness: one 8-byte packet is 2+8 fixed bits and a length; the detector asks for more.
    """
    return rtcp_layout(payload)[0] != ""
