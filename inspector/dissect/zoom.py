"""Zoom's UDP media encapsulation (server-relayed and peer-to-peer).

Facts: ../shared/research/protocol-facts.md §2 (Michel et al., "Enabling Passive Measurement of
Zoom Performance in Production Networks", IMC '22; zoom-analysis ``zoom.lua``/``zoom.cc`` offsets,
nDPI ``zoom.c``). Layout, 0-based offsets:

* server (SFU/MMR) flows: an outer header whose byte 0 is the SFU type (0x05 = media). In the 2022
  layout the outer header is 8 bytes (byte 7 = direction, 0x00 to Zoom, 0x04 from Zoom) and the
  inner media header starts at 8. The 2019-era client in the shared zoom.pcap uses a 1-byte outer
  header (inner type at byte 1; its RTCP at inner+16 = 17, matching Trevisan's 2020 "strip 20/21
  bytes" cleaner cited in the facts file's version-drift warning). Both are tried.
* P2P flows: no outer header, the inner header starts at byte 0.
* inner type (byte 0): 15 audio (RTP at 19), 16 video (RTP at 24 when inner byte 20 == 0x02, else
  20), 13 server screen share (RTP at 27 when inner byte 7 == 0x1E), 30 P2P screen share (RTP at
  20), 33-35 RTCP (at 16), 1 unknown RTP-carrying (RTP at 26).

Every embedded RTP/RTCP offset is validated by the RTP version bits (as nDPI does), because the
layout drifts between client versions. Weakness: the outer header has no magic beyond one type
byte, so one packet is never enough; the detector wants several validated packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from inspector.dissect.rtp import RtpHeader, is_rtcp, parse_rtp

SFU_MEDIA: Final = 0x05
SFU_OUTER_LEN: Final = 8
SFU_LEGACY_OUTER_LEN: Final = 1
DIRECTION_TO_SERVER: Final = 0x00
DIRECTION_FROM_SERVER: Final = 0x04

INNER_AUDIO: Final = 0x0F
INNER_VIDEO: Final = 0x10
INNER_SCREEN_SERVER: Final = 0x0D
INNER_SCREEN_P2P: Final = 0x1E
INNER_RTCP: Final = (0x21, 0x22, 0x23)
INNER_UNKNOWN_RTP: Final = 0x01

MEDIA_KIND_BY_INNER: Final = {
    INNER_AUDIO: "audio",
    INNER_VIDEO: "video",
    INNER_SCREEN_SERVER: "screen",
    INNER_SCREEN_P2P: "screen",
}


@dataclass(frozen=True, slots=True)
class ZoomMediaPacket:
    """A Zoom media packet whose embedded RTP/RTCP was found at the documented offset.

    layout        ``sfu`` (8-byte outer), ``sfu-legacy`` (1-byte outer) or ``p2p`` (no outer)
    inner_type    inner media type byte (15 audio, 16 video, 13/30 screen, 33-35 RTCP ...)
    media_kind    ``audio``, ``video``, ``screen`` or "" (RTCP and unknown types)
    to_server     True/False from the 2022 outer direction byte; None when not known
    rtp_offset    offset of the embedded RTP/RTCP from the start of the UDP payload
    rtp           the embedded RTP header, or None for RTCP
    """

    layout: str
    inner_type: int
    media_kind: str
    to_server: bool | None
    rtp_offset: int
    rtp: RtpHeader | None


def _inner_rtp_offset(inner: bytes) -> tuple[int, bool] | None:
    """(offset of the embedded RTP/RTCP inside the inner header, is_rtcp) for known types."""
    if not inner:
        return None
    kind = inner[0]
    if kind == INNER_AUDIO:
        return 19, False
    if kind == INNER_VIDEO:
        if len(inner) > 20 and inner[20] == 0x02:
            return 24, False
        return 20, False
    if kind == INNER_SCREEN_SERVER:
        if len(inner) > 7 and inner[7] == 0x1E:
            return 27, False
        return None
    if kind == INNER_SCREEN_P2P:
        return 20, False
    if kind in INNER_RTCP:
        return 16, True
    if kind == INNER_UNKNOWN_RTP:
        return 26, False
    return None


def parse_inner(inner: bytes, layout: str, outer_len: int, to_server: bool | None) -> ZoomMediaPacket | None:
    """Validate an inner media header: the embedded RTP/RTCP must carry version 2."""
    found = _inner_rtp_offset(inner)
    if found is None:
        return None
    offset, rtcp = found
    embedded = inner[offset:]
    if rtcp:
        if not is_rtcp(embedded):
            # Zoom appends its own bytes after the RTCP compound in some versions; accept a
            # first RTCP packet whose declared length fits.
            if len(embedded) < 8 or embedded[0] >> 6 != 2 or not 200 <= embedded[1] <= 207:
                return None
            if 4 * (struct.unpack_from("!H", embedded, 2)[0] + 1) > len(embedded):
                return None
        rtp = None
    else:
        rtp = parse_rtp(embedded)
        if rtp is None:
            return None
    return ZoomMediaPacket(
        layout=layout,
        inner_type=inner[0],
        media_kind=MEDIA_KIND_BY_INNER.get(inner[0], ""),
        to_server=to_server,
        rtp_offset=outer_len + offset,
        rtp=rtp,
    )


def parse_server_media(payload: bytes) -> ZoomMediaPacket | None:
    """A client<->server (SFU) media packet: outer type 0x05, 2022 layout first, then legacy."""
    if len(payload) < 2 or payload[0] != SFU_MEDIA:
        return None
    if len(payload) > SFU_OUTER_LEN and payload[7] in (DIRECTION_TO_SERVER, DIRECTION_FROM_SERVER):
        packet = parse_inner(payload[SFU_OUTER_LEN:], "sfu", SFU_OUTER_LEN, payload[7] == DIRECTION_TO_SERVER)
        if packet is not None:
            return packet
    return parse_inner(payload[SFU_LEGACY_OUTER_LEN:], "sfu-legacy", SFU_LEGACY_OUTER_LEN, None)


def parse_p2p_media(payload: bytes) -> ZoomMediaPacket | None:
    """A peer-to-peer media packet: the inner header at byte 0."""
    return parse_inner(payload, "p2p", 0, None)


def sfu_setup_id(payload: bytes, from_client: bool) -> bytes | None:
    """The 16-byte id of an SFU session-setup packet (outer type 1 from client, 2 from server).

    nDPI zoom.c accepts client ``01 00 02/03`` and server ``02 00 02/03`` first packets; the shared
    zoom.pcap shows the server answering ``02 00 01`` and echoing the client's 16 bytes at offsets
    3-18 (rtc_code zoom.lua: a transaction-id-like field). The detector requires that echo.
    Weakness: a different client version may change the echo; then only media packets count.
    """
    if len(payload) < 19 or payload[1] != 0x00:
        return None
    if from_client and payload[0] == 0x01 and payload[2] in (0x02, 0x03):
        return bytes(payload[3:19])
    if not from_client and payload[0] == 0x02 and payload[2] in (0x01, 0x02, 0x03):
        return bytes(payload[3:19])
    return None


def is_p2p_setup(payload: bytes) -> bool:
    """Zoom P2P setup packet (nDPI zoom.c; zoom_p2p.pcapng).

    Starts ``1F 02 01``, longer than 36 bytes, and at offset 24 carries a 4-byte big-endian length
    followed by that many ASCII characters of the peer's IP address (``192.168.1.226``). nDPI also
    notes the last 4 bytes are zero; the captures show that is not always so, so the address
    string is checked instead. Weakness: the format is reverse-engineered and version-dependent.
    """
    if len(payload) <= 36 or payload[:3] != b"\x1f\x02\x01":
        return False
    text_len = struct.unpack_from("!I", payload, 24)[0]
    if not 7 <= text_len <= 45 or 28 + text_len > len(payload):
        return False
    text = payload[28 : 28 + text_len]
    return all(chr(ch) in "0123456789abcdefABCDEF.:" for ch in text)
