"""Google QUIC (gQUIC) client hellos sent in clear: the CHLO's SNI, version and user agent.

Before Google moved to TLS (T050/T051) and IETF QUIC, its clients opened a connection with a
CHLO ("client hello") crypto handshake message carried in clear, followed in the packet only by a
12-byte message hash. Two packet layouts carry it in clear:

- **Public header** (Q043 and older): public flags, 8-byte connection ID, version ("Q043") at
  offset 9, packet number, 12-byte message hash, for Q033 and older one private-flags byte, then
  frames — the layout nDPI ``quic.c`` reads (26-byte header for a 1-byte packet number,
  ``get_clear_payload``). Flag meanings (0x01 version present, 0x08 8-byte connection ID,
  0x30 packet-number length 1/2/4/6 bytes, 0x80 always 0) are from Google's gQUIC wire-layout
  document as remembered, not re-verified here; quic.pcap and youtube_quic.pcap agree.
- **Q046**: an IETF-like long header (0x80 form bit, version, one byte holding both CID lengths
  as nibbles n -> n+3 bytes, CIDs, a packet number whose length is in the low 2 bits of the
  first byte), then the 12-byte hash and frames (nDPI ``quic.c``: 0x50 lengths byte, payload at
  offset 30; checked against quic046.pcap).

The CHLO travels in a STREAM frame on stream 1 (type 1fdooossB: FIN 0x40, data-length present
0x20, offset length ooo, stream-ID length ss+1; nDPI ``get_crypto_data``); multi-byte frame
fields are little-endian before Q039 and big-endian from Q039 on (nDPI ``gquic_get_u16``). The
CHLO is a tag/value map: "CHLO", entry count (uint16 LE), 2 bytes padding, then per entry a
4-byte tag and the uint32 LE end offset of its value, then the values (nDPI ``process_chlo``;
visible in every gQUIC capture). ``SNI\\0`` holds the server name, ``UAID`` the user agent.

Q050 uses IETF-style Initial protection; ``quic.py`` removes it and calls ``parse_chlo`` here.

Everything here reads untrusted bytes: functions return None for "not gQUIC" and raise only
``GQuicError`` for a packet that claims to be gQUIC but is malformed.
Weaknesses: ACK frames before the CHLO (a retransmitted CHLO) end the walk; a CHLO split across
packets yields only the tags whose values arrived in the first packet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

VERSION_Q039: Final = 0x51303339
VERSION_Q046: Final = 0x51303436

# Real CHLOs carry 20-30 tags (the shared captures); anything past 256 is not a CHLO.
MAX_CHLO_ENTRIES: Final = 256
MESSAGE_HASH_LENGTH: Final = 12


class GQuicError(ValueError):
    """A packet that claims to be gQUIC is malformed; ``.reason`` is short snake_case."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class GQuicHello:
    """What a gQUIC CHLO says about the destination.

    server_name   value of the ``SNI\\0`` tag (latin-1), "" when the client sent none
    version       the QUIC version as its four ASCII characters ("Q043", "Q046", "Q050", "T051")
    user_agent    value of the ``UAID`` tag, "" when absent
    """

    server_name: str
    version: str
    user_agent: str


def is_gquic_version(version: int) -> bool:
    """Q020..Q059 and T050..T059: "Q" or "T" then three ASCII digits (nDPI ``is_version_gquic``)."""
    raw = version.to_bytes(4, "big")
    if raw[:1] == b"T":
        return raw[1:3] == b"05" and raw[3:].isdigit()
    return raw[:2] == b"Q0" and raw[2:3] in (b"2", b"3", b"4", b"5") and raw[3:].isdigit()


def version_name(version: int) -> str:
    """``0x51303433`` -> ``"Q043"``; non-printable values as 8 hex digits."""
    raw = version.to_bytes(4, "big")
    if all(0x21 <= b <= 0x7E for b in raw):
        return raw.decode("ascii")
    return f"{version:08x}"


def _gquic_version_number(version: int) -> int:
    """The three digits of a gQUIC version as an int (Q043 -> 43)."""
    digits = version.to_bytes(4, "big")[1:]
    return int(digits.decode("ascii"))


def public_header_version(datagram: bytes) -> int | None:
    """The version of a gQUIC public-header packet that carries one (flag 0x01, 8-byte CID)."""
    if len(datagram) < 13:
        return None
    flags = datagram[0]
    if flags & 0x80 or flags & 0x02 or not flags & 0x01 or not flags & 0x08:
        return None
    version = int.from_bytes(datagram[9:13], "big")
    return version if is_gquic_version(version) else None


def parse_cleartext(datagram: bytes) -> GQuicHello | None:
    """The CHLO of a cleartext gQUIC client packet (public header, or Q046); None if not one.

    Raises GQuicError when the packet has a gQUIC version but its header or frames are broken.
    Source: see the module docstring. Weakness: a client packet without the version flag (sent
    after version negotiation) is not recognised, as its version is unknown.
    """
    if len(datagram) < 5:
        return None
    version: int | None
    if datagram[0] & 0x80:
        version = int.from_bytes(datagram[1:5], "big")
        if version != VERSION_Q046:
            return None
        payload = _q046_payload(datagram)
    else:
        version = public_header_version(datagram)
        if version is None or _gquic_version_number(version) > 43:
            return None
        payload = _public_header_payload(datagram, version)
    stream = _crypto_stream_data(payload, version)
    return parse_chlo(stream, version_name(version))


def _public_header_payload(datagram: bytes, version: int) -> bytes:
    flags = datagram[0]
    pn_length = (1, 2, 4, 6)[(flags >> 4) & 0x03]
    pos = 1 + 8 + 4 + pn_length + MESSAGE_HASH_LENGTH
    if _gquic_version_number(version) <= 33:
        pos += 1  # private flags (entropy bit, FEC group), dropped in Q034
    if pos >= len(datagram):
        raise GQuicError("truncated")
    return datagram[pos:]


def _q046_payload(datagram: bytes) -> bytes:
    if len(datagram) < 6:
        raise GQuicError("truncated")
    lengths = datagram[5]
    dcid_len = (lengths >> 4) + 3 if lengths >> 4 else 0
    scid_len = (lengths & 0x0F) + 3 if lengths & 0x0F else 0
    pn_length = (datagram[0] & 0x03) + 1
    pos = 6 + dcid_len + scid_len + pn_length + MESSAGE_HASH_LENGTH
    if pos >= len(datagram):
        raise GQuicError("truncated")
    return datagram[pos:]


def _uint(data: bytes, pos: int, length: int, big_endian: bool) -> int:
    if pos + length > len(data):
        raise GQuicError("truncated_frame")
    return int.from_bytes(data[pos : pos + length], "big" if big_endian else "little")


def _crypto_stream_data(payload: bytes, version: int) -> bytes:
    """Data of the first STREAM frame on stream 1 (the crypto stream) at offset 0.

    Skips PADDING (0x00, runs to the end), PING (0x07) and STOP_WAITING (0x06; its least-unacked
    delta has the packet-number length, which this reader does not track, so only the 1-byte form
    of a first packet is accepted). Raises GQuicError("no_chlo_stream") when none is found.
    """
    big_endian = version >= VERSION_Q039
    pos = 0
    while pos < len(payload):
        frame_type = payload[pos]
        pos += 1
        if frame_type & 0x80:
            has_length = bool(frame_type & 0x20)
            offset_code = (frame_type >> 2) & 0x07
            offset_length = offset_code + 1 if offset_code else 0
            stream_id_length = (frame_type & 0x03) + 1
            stream_id = _uint(payload, pos, stream_id_length, big_endian)
            pos += stream_id_length
            offset = _uint(payload, pos, offset_length, big_endian) if offset_length else 0
            pos += offset_length
            if has_length:
                data_length = _uint(payload, pos, 2, big_endian)
                pos += 2
                if data_length > len(payload) - pos:
                    raise GQuicError("bad_stream_length")
            else:
                data_length = len(payload) - pos
            if stream_id == 1 and offset == 0:
                return payload[pos : pos + data_length]
            pos += data_length
        elif frame_type == 0x00:
            break
        elif frame_type == 0x07:
            continue
        elif frame_type == 0x06:
            pos += 1
        else:
            raise GQuicError("unexpected_frame")
    raise GQuicError("no_chlo_stream")


def chlo_length(message: bytes) -> int | None:
    """Total length of the tag/value message starting ``message`` (header, table, values), or
    None while its entry table has not fully arrived. Raises GQuicError for an absurd entry
    count. Source: the CHLO layout in the module docstring."""
    if len(message) < 8:
        return None
    entries = int.from_bytes(message[4:6], "little")
    if entries > MAX_CHLO_ENTRIES:
        raise GQuicError("too_many_chlo_entries")
    values_start = 8 + 8 * entries
    if len(message) < values_start:
        return None
    if not entries:
        return values_start
    return values_start + int.from_bytes(message[values_start - 4 : values_start], "little")


def parse_chlo(message: bytes, version: str) -> GQuicHello | None:
    """SNI and UAID from a CHLO tag/value map; None when ``message`` is not a CHLO.

    Tags whose values run past the end of ``message`` (a CHLO split across packets) are skipped.
    Raises GQuicError for an entry table that does not fit or offsets that go backwards.
    Source: nDPI ``quic.c`` ``process_chlo``; layout visible in the shared gQUIC captures.
    """
    if len(message) < 8 or message[:4] != b"CHLO":
        return None
    entries = int.from_bytes(message[4:6], "little")
    if entries > MAX_CHLO_ENTRIES:
        raise GQuicError("too_many_chlo_entries")
    values_start = 8 + 8 * entries
    if values_start > len(message):
        raise GQuicError("truncated_chlo")
    server_name = ""
    user_agent = ""
    previous_end = 0
    for index in range(entries):
        entry = 8 + 8 * index
        tag = message[entry : entry + 4]
        end = int.from_bytes(message[entry + 4 : entry + 8], "little")
        if end < previous_end:
            raise GQuicError("bad_chlo_offsets")
        value_start, value_end = values_start + previous_end, values_start + end
        previous_end = end
        if value_end > len(message):
            continue
        if tag == b"SNI\x00":
            server_name = message[value_start:value_end].decode("latin-1")
        elif tag == b"UAID":
            user_agent = message[value_start:value_end].decode("latin-1")
    return GQuicHello(server_name=server_name, version=version, user_agent=user_agent)
