"""TLS handshake messages: ClientHello, ServerHello and Certificate, from untrusted bytes.

Wire formats follow RFC 8446 §4.1.2 (ClientHello), §4.1.3 (ServerHello), §4.4.2 (Certificate, 1.3)
and RFC 5246 §7.4.2 (Certificate, 1.2 and older); DTLS additions (12-byte handshake header, the
cookie field) follow RFC 6347 §4.2.2 / RFC 9147 §5.2. Extension numbers: RFC 6066 §3 (server_name 0),
RFC 5764 §4.1.1 (use_srtp 14), RFC 7301 §3.1 (ALPN 16), RFC 8446 §4.2.1 (supported_versions 43),
draft-ietf-tls-esni (ECH 0xfe0d, legacy ESNI 0xffce); see protocol-facts.md §3.3, §3.5, §3.7.

Every parser here raises only ``TlsError`` and never reads past the bytes it is given: each length
field is checked against the bytes that remain before it is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from inspector.fastinit import frozen_init, positional_constructor

HANDSHAKE_CLIENT_HELLO: Final = 1
HANDSHAKE_SERVER_HELLO: Final = 2
HANDSHAKE_CERTIFICATE: Final = 11

EXT_SERVER_NAME: Final = 0
EXT_USE_SRTP: Final = 14
EXT_ALPN: Final = 16
EXT_SUPPORTED_VERSIONS: Final = 43
EXT_ECH: Final = 0xFE0D
EXT_LEGACY_ESNI: Final = 0xFFCE

# TLS 1.3 ServerHello with this random is a HelloRetryRequest (RFC 8446 §4.1.3).
HELLO_RETRY_REQUEST_RANDOM: Final = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)

_VERSION_NAMES: Final = {
    0x0300: "ssl3",
    0x0301: "1.0",
    0x0302: "1.1",
    0x0303: "1.2",
    0x0304: "1.3",
    0xFEFF: "dtls1.0",
    0xFEFD: "dtls1.2",
    0xFEFC: "dtls1.3",
    0x0100: "dtls-cisco",  # OpenSSL DTLS1_BAD_VER (Cisco AnyConnect, pre-RFC 4347)
}


class TlsError(ValueError):
    """A TLS/DTLS handshake message is malformed; the reason is in ``.reason``.

    ``reason`` is a short snake_case word (``truncated``, ``bad_extension_length`` ...) that the
    caller counts in the run manifest.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Cursor:
    """Reads big-endian fields from a bytes slice; any over-read raises TlsError(reason)."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, reason: str = "truncated") -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise TlsError(reason)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int, reason: str = "truncated") -> int:
        pos = self.pos
        stop = pos + n
        if n < 0 or stop > self.end:
            raise TlsError(reason)
        self.pos = stop
        return int.from_bytes(self.data[pos:stop], "big")

    def vector(self, length_bytes: int, reason: str) -> bytes:
        """A length-prefixed opaque vector; a length beyond the remaining bytes raises ``reason``."""
        pos = self.pos + length_bytes
        if pos > self.end:
            raise TlsError(reason)
        stop = pos + int.from_bytes(self.data[self.pos : pos], "big")
        if stop > self.end:
            raise TlsError(reason)
        self.pos = stop
        return self.data[pos:stop]


def version_name(version: int) -> str:
    """``0x0304`` -> ``"1.3"``; unknown values (GREASE, drafts) as ``0x7f1c``."""
    return _VERSION_NAMES.get(version, f"0x{version:04x}")


def is_grease(value: int) -> bool:
    """GREASE values 0x?A?A with equal bytes (RFC 8701 §2) are sent to be ignored."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True, init=False)
class ClientHello:
    """What a ClientHello says about where the client is going.

    server_name         SNI host_name as sent (decoded latin-1), "" if absent
    alpn                ALPN protocol names in the client's order
    legacy_version      e.g. 0x0303 (TLS) / 0xfefd (DTLS)
    supported_versions  supported_versions extension list (GREASE kept), () if absent
    has_ech             ECH extension 0xfe0d (or legacy ESNI 0xffce) present; the SNI is then
                        the provider's public name, not the real destination
    use_srtp            DTLS-SRTP protection profiles (extension 14)
    extensions          extension types in order
    """

    server_name: str
    alpn: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    has_ech: bool
    use_srtp: tuple[int, ...]
    extensions: tuple[int, ...]

    def __init__(
        self,
        server_name: str,
        alpn: tuple[str, ...],
        legacy_version: int,
        supported_versions: tuple[int, ...],
        has_ech: bool,
        use_srtp: tuple[int, ...],
        extensions: tuple[int, ...],
    ) -> None:
        # One per ClientHello: assigned field by field so that compiled this is native code.
        self.server_name = server_name  # type: ignore[misc]
        self.alpn = alpn  # type: ignore[misc]
        self.legacy_version = legacy_version  # type: ignore[misc]
        self.supported_versions = supported_versions  # type: ignore[misc]
        self.has_ech = has_ech  # type: ignore[misc]
        self.use_srtp = use_srtp  # type: ignore[misc]
        self.extensions = extensions  # type: ignore[misc]


frozen_init(ClientHello)


def handshake_header_length(dtls: bool) -> int:
    """4 bytes for TLS (type, uint24 length); 12 for DTLS (+ message_seq, fragment offset/length)."""
    return 12 if dtls else 4


def _handshake_body(handshake: bytes, expected_type: int, dtls: bool) -> _Cursor:
    """Checks the handshake header and returns a cursor bounded to the message body.

    For DTLS the message must be whole (fragment_offset 0, fragment_length == length); the caller
    reassembles fragments first. Bytes after the declared length are ignored (the next message).
    """
    start, end = _handshake_bounds(handshake, expected_type, dtls)
    return _Cursor(handshake, start, end)


def _handshake_bounds(handshake: bytes, expected_type: int, dtls: bool) -> tuple[int, int]:
    """(start, end) of the message body after the checks ``_handshake_body`` documents."""
    available = len(handshake)
    if not available:
        raise TlsError("truncated")
    if handshake[0] != expected_type:
        raise TlsError("unexpected_handshake_type")
    if available < 4:
        raise TlsError("truncated")
    length = (handshake[1] << 16) | (handshake[2] << 8) | handshake[3]
    start = 4
    if dtls:
        # message_seq (2 bytes), then fragment_offset and fragment_length (3 bytes each).
        if available < 12:
            raise TlsError("truncated")
        fragment_offset = (handshake[6] << 16) | (handshake[7] << 8) | handshake[8]
        fragment_length = (handshake[9] << 16) | (handshake[10] << 8) | handshake[11]
        if fragment_offset != 0 or fragment_length != length:
            raise TlsError("fragmented")
        start = 12
    if available - start < length:
        raise TlsError("truncated")
    return start, start + length


def _parse_sni(data: bytes) -> str:
    """server_name extension (RFC 6066 §3): ServerNameList<1..2^16-1> of (name_type, HostName<1..>)."""
    end = len(data)
    # The list must fill the extension exactly.
    if end < 2 or (data[0] << 8 | data[1]) != end - 2:
        raise TlsError("bad_sni")
    pos = 2
    while pos < end:
        name_type = data[pos]
        if pos + 3 > end:
            raise TlsError("bad_sni")
        stop = pos + 3 + (data[pos + 1] << 8 | data[pos + 2])
        if stop > end:
            raise TlsError("bad_sni")
        if name_type == 0:
            return data[pos + 3 : stop].decode("latin-1")
        pos = stop
    return ""


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    """ALPN (RFC 7301 §3.1): ProtocolNameList<2..2^16-1> of ProtocolName<1..2^8-1>."""
    end = len(data)
    if end < 2 or (data[0] << 8 | data[1]) != end - 2:
        raise TlsError("bad_alpn")
    protocols: list[str] = []
    pos = 2
    while pos < end:
        length = data[pos]
        stop = pos + 1 + length
        if not length or stop > end:
            raise TlsError("bad_alpn")
        protocols.append(data[pos + 1 : stop].decode("latin-1"))
        pos = stop
    return tuple(protocols)


def _parse_uint16_list(raw: bytes, reason: str) -> tuple[int, ...]:
    if len(raw) % 2:
        raise TlsError(reason)
    count = len(raw) // 2
    if count < len(_UINT16_LISTS):
        return _UINT16_LISTS[count].unpack(raw)
    return struct.unpack(f">{count}H", raw)


# Compiled layouts of short uint16 lists (supported_versions holds at most 127 values).
_UINT16_LISTS: Final = tuple(struct.Struct(f">{count}H") for count in range(128))


def _extension_spans(
    data: bytes, pos: int, end: int, lenient: bool
) -> list[tuple[int, int, int]]:
    """Extensions<0..2^16-1> in ``data[pos:end]`` as (type, start, stop) of each extension body;
    absent entirely when the message ends (allowed before TLS 1.2). Offsets, not copies, so
    extensions nobody reads cost no slicing. Bytes after the block are ignored.

    ``lenient``: a block length that overruns the message is cut to the message, and an
    extension whose length overruns the block ends the list (what was read before is kept).
    """
    if pos >= end:
        return []
    if pos + 2 > end:
        raise TlsError("bad_extensions_length")
    block_end = pos + 2 + (data[pos] << 8 | data[pos + 1])
    pos += 2
    if block_end > end:
        if not lenient:
            raise TlsError("bad_extensions_length")
        block_end = end
    spans: list[tuple[int, int, int]] = []
    append = spans.append
    while pos < block_end:
        # extension_type (2 bytes), extension_data<0..2^16-1>.
        start = pos + 4
        if start > block_end:
            if lenient:
                break
            raise TlsError("bad_extension_length")
        stop = start + (data[pos + 2] << 8 | data[pos + 3])
        if stop > block_end:
            if lenient:
                break
            raise TlsError("bad_extension_length")
        append((data[pos] << 8 | data[pos + 1], start, stop))
        pos = stop
    return spans


def parse_client_hello(handshake: bytes, dtls: bool = False) -> ClientHello:
    """Parses a ClientHello handshake message starting at its handshake header.

    ``handshake`` begins with the 4-byte header (type 1, uint24 length), or for DTLS the 12-byte
    header (RFC 6347 §4.2.2) of a whole, unfragmented message. Raises TlsError on anything
    malformed. Source: RFC 8446 §4.1.2, RFC 6347 §4.2.1 (cookie), protocol-facts.md §3.5.
    Weakness: with ECH (has_ech) the SNI is the outer, public name only.
    """
    return _parse_client_hello(handshake, dtls, lenient=False)


def parse_client_hello_lenient(handshake: bytes, dtls: bool = False) -> ClientHello:
    """Like parse_client_hello, but keeps what is well-formed in a damaged extension list.

    A malformed extension body is skipped, and an extension or block length that overruns ends
    the list; the fixed fields (version, random, session id, cipher suites, compression) must
    still be valid or TlsError is raised. nDPI reads names from such hellos too (its test
    capture ``tls_invalid_reads.pcap`` has a valid SNI before a garbage ALPN).
    Weakness: a name taken from a damaged hello is weaker evidence; callers should say so.
    """
    return _parse_client_hello(handshake, dtls, lenient=True)


def _parse_client_hello(handshake: bytes, dtls: bool, lenient: bool) -> ClientHello:
    if lenient:
        header_length = handshake_header_length(dtls)
        declared = int.from_bytes(handshake[1:4], "big") if len(handshake) >= 4 else 0
        available = max(0, len(handshake) - header_length)
        if len(handshake) >= header_length and declared > available:
            # A message cut short: parse what is there as if that were all of it.
            header = bytearray(handshake[:header_length])
            header[1:4] = available.to_bytes(3, "big")
            if dtls:
                header[6:12] = (0).to_bytes(3, "big") + available.to_bytes(3, "big")
            handshake = bytes(header) + handshake[header_length:]
    data = handshake
    pos, end = _handshake_bounds(data, HANDSHAKE_CLIENT_HELLO, dtls)
    legacy_version, _random, pos = _hello_prefix(data, pos, end)
    if dtls:
        # cookie<0..2^8-1> (RFC 6347 §4.2.1).
        if pos >= end:
            raise TlsError("bad_cookie")
        pos += 1 + data[pos]
        if pos > end:
            raise TlsError("bad_cookie")
    # cipher_suites<2..2^16-2>: non-empty, whole uint16 values.
    if pos + 2 > end:
        raise TlsError("bad_cipher_suites")
    length = data[pos] << 8 | data[pos + 1]
    pos += 2 + length
    if pos > end or not length or length % 2:
        raise TlsError("bad_cipher_suites")
    # legacy_compression_methods<1..2^8-1>.
    if pos >= end:
        raise TlsError("bad_compression_methods")
    length = data[pos]
    pos += 1 + length
    if pos > end or not length:
        raise TlsError("bad_compression_methods")
    extensions = _extension_spans(data, pos, end, lenient)
    types = tuple([span[0] for span in extensions])
    distinct = set(types)
    values: dict[int, object] = {}
    if not distinct.isdisjoint(_CLIENT_EXTENSIONS_READ):
        # RFC 8446 §4.2 forbids repeating an extension; if a client does, the first one counts.
        spans = extensions if len(distinct) == len(types) else _first_of_each(extensions)
        for ext_type, start, stop in spans:
            if ext_type not in _CLIENT_EXTENSIONS_READ:
                continue
            try:
                parsed = _client_extension(ext_type, data[start:stop])
            except TlsError:
                if lenient:
                    continue
                raise
            if parsed is not None:
                values[ext_type] = parsed
    return _new_client_hello(
        values.get(EXT_SERVER_NAME, ""),
        values.get(EXT_ALPN, ()),
        legacy_version,
        values.get(EXT_SUPPORTED_VERSIONS, ()),
        EXT_ECH in distinct or EXT_LEGACY_ESNI in distinct,
        values.get(EXT_USE_SRTP, ()),
        types,
    )


def _first_of_each(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The first extension of each type, in wire order."""
    seen: set[int] = set()
    first = []
    for span in spans:
        if span[0] not in seen:
            seen.add(span[0])
            first.append(span)
    return first


#: ``ClientHello(...)`` at the cost of the fewest calls (``fastinit``): every TLS and QUIC flow
#: parses one hello.
_new_client_hello: Final = positional_constructor(ClientHello)


# The ClientHello extensions ``_client_extension`` decodes; the others are only listed.
_CLIENT_EXTENSIONS_READ: Final = frozenset((EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS, EXT_USE_SRTP))


def _client_extension(ext_type: int, ext_data: bytes) -> str | tuple[str, ...] | tuple[int, ...] | None:
    """The decoded value of a ClientHello extension this module reads, None for the others."""
    if ext_type == EXT_SERVER_NAME:
        # A server's empty server_name echo is legal; a client's must carry a list.
        return _parse_sni(ext_data) if ext_data else None
    if ext_type == EXT_ALPN:
        return _parse_alpn(ext_data)
    if ext_type == EXT_SUPPORTED_VERSIONS:
        # ProtocolVersion versions<2..254> (RFC 8446 §4.2.1): a one-byte length, then uint16s;
        # bytes after the vector are ignored.
        if not ext_data or 1 + ext_data[0] > len(ext_data):
            raise TlsError("bad_supported_versions")
        return _parse_uint16_list(ext_data[1 : 1 + ext_data[0]], "bad_supported_versions")
    if ext_type == EXT_USE_SRTP:
        srtp = _Cursor(ext_data)
        profiles = _parse_uint16_list(srtp.vector(2, "bad_use_srtp"), "bad_use_srtp")
        srtp.vector(1, "bad_use_srtp")  # srtp_mki
        return profiles
    return None


@dataclass(frozen=True, slots=True, init=False)
class ServerHello:
    """The server's choice: negotiated version and cipher suite.

    legacy_version      record-era version field (0x0303 for TLS 1.3, which hides behind it)
    selected_version    supported_versions value if present (RFC 8446 §4.2.1), else legacy_version
    cipher_suite        chosen cipher suite
    is_hello_retry      the special HelloRetryRequest random (RFC 8446 §4.1.3): not the final answer
    extensions          extension types in order
    """

    legacy_version: int
    selected_version: int
    cipher_suite: int
    is_hello_retry: bool
    extensions: tuple[int, ...]

    def __init__(
        self,
        legacy_version: int,
        selected_version: int,
        cipher_suite: int,
        is_hello_retry: bool,
        extensions: tuple[int, ...],
    ) -> None:
        # One per ServerHello: assigned field by field so that compiled this is native code.
        self.legacy_version = legacy_version  # type: ignore[misc]
        self.selected_version = selected_version  # type: ignore[misc]
        self.cipher_suite = cipher_suite  # type: ignore[misc]
        self.is_hello_retry = is_hello_retry  # type: ignore[misc]
        self.extensions = extensions  # type: ignore[misc]


frozen_init(ServerHello)


def _hello_prefix(data: bytes, pos: int, end: int) -> tuple[int, bytes, int]:
    """legacy_version (2 bytes), random (32 bytes) and legacy_session_id<0..32> (the ServerHello's
    session_id_echo), which both hellos open with (RFC 8446 §4.1.2-4.1.3, RFC 5246 §7.4.1.2-3).
    Returns (legacy_version, random, position after the session id)."""
    if pos + 34 > end:
        raise TlsError("truncated")
    legacy_version = data[pos] << 8 | data[pos + 1]
    random = data[pos + 2 : pos + 34]
    pos += 34
    if pos >= end:
        raise TlsError("bad_session_id")
    length = data[pos]
    pos += 1 + length
    if pos > end or length > 32:
        raise TlsError("bad_session_id")
    return legacy_version, random, pos


def parse_server_hello(handshake: bytes, dtls: bool = False) -> ServerHello:
    """Parses a ServerHello handshake message starting at its handshake header.

    Source: RFC 8446 §4.1.3, RFC 5246 §7.4.1.3 (no cookie in DTLS ServerHello, RFC 6347 §4.2.1).
    Weakness: a TLS 1.3 server that omits supported_versions is reported as its legacy version.
    """
    data = handshake
    pos, end = _handshake_bounds(data, HANDSHAKE_SERVER_HELLO, dtls)
    legacy_version, random, pos = _hello_prefix(data, pos, end)
    # cipher_suite (2 bytes) and legacy_compression_method (1 byte).
    if pos + 3 > end:
        raise TlsError("truncated")
    cipher_suite = data[pos] << 8 | data[pos + 1]
    extensions = _extension_spans(data, pos + 3, end, lenient=False)
    selected_version = legacy_version
    for ext_type, start, stop in extensions:
        if ext_type == EXT_SUPPORTED_VERSIONS:
            if stop - start != 2:
                raise TlsError("bad_supported_versions")
            selected_version = data[start] << 8 | data[start + 1]
    return ServerHello(
        legacy_version=legacy_version,
        selected_version=selected_version,
        cipher_suite=cipher_suite,
        is_hello_retry=random == HELLO_RETRY_REQUEST_RANDOM,
        extensions=tuple([span[0] for span in extensions]),
    )


def parse_certificate_list(handshake: bytes, dtls: bool = False) -> tuple[bytes, ...]:
    """DER certificates of a TLS 1.2-and-older (or DTLS 1.0/1.2) Certificate message, leaf first.

    Format: certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1> (RFC 5246 §7.4.2). TLS 1.3 sends
    Certificate encrypted, so a clear one is always this older form.
    Weakness: the certificate is what the server presented, not proof of who it is; nothing here
    validates the chain.
    """
    body = _handshake_body(handshake, HANDSHAKE_CERTIFICATE, dtls)
    certificates = _Cursor(body.vector(3, "bad_certificate_list"))
    chain: list[bytes] = []
    while certificates.remaining():
        der = certificates.vector(3, "bad_certificate_length")
        if not der:
            raise TlsError("bad_certificate_length")
        chain.append(der)
    return tuple(chain)


# TLS record content types (RFC 8446 §5.1, RFC 5246 §6.2.1).
CONTENT_CHANGE_CIPHER_SPEC: Final = 20
CONTENT_ALERT: Final = 21
CONTENT_HANDSHAKE: Final = 22
CONTENT_APPLICATION_DATA: Final = 23
CONTENT_HEARTBEAT: Final = 24

# RFC 8446 §5.1: a record's fragment is at most 2^14 bytes; protected records add up to 256.
# Older stacks add up to 2048 (RFC 5246 §6.2.3), the bound used here.
MAX_RECORD_LENGTH: Final = 2**14 + 2048


def looks_like_tls_record(data: bytes) -> bool:
    """Handshake record start: type 22 and major version 3 (SSL 3.0 to TLS 1.3)."""
    return len(data) >= 3 and data[0] == CONTENT_HANDSHAKE and data[1] == 3 and data[2] <= 4


class TlsHandshakeReader:
    """Extracts handshake messages from one direction's TLS record-layer byte stream.

    ``feed`` takes the contiguous stream from its first byte onwards (the caller reassembles TCP)
    and returns all complete handshake messages (header included) in order. Handshake messages can
    span records and records can hold several messages (RFC 8446 §5.1). Once a ChangeCipherSpec or
    application data record is seen the rest is encrypted and ``encrypted`` is set. Raises TlsError
    for a record that is not TLS. Memory: the handshake buffer is capped at ``max_bytes``.

    A handshake record is read as its bytes arrive, not once it is whole: the record layer only
    frames the handshake stream (RFC 8446 §5.1, RFC 5246 §6.2.1), and a TLS 1.2 server commonly
    sends ServerHello, Certificate and the rest of its first flight in one record of several
    kilobytes, so its ServerHello is complete in the first segment while the record ends three or
    four segments later.
    """

    __slots__ = ("_offset", "_record_left", "_record_type", "_handshake", "_emitted", "encrypted", "max_bytes")

    def __init__(self, max_bytes: int = 65536) -> None:
        self._offset = 0  # the next unread byte of the stream
        self._record_left = 0  # bytes of the current record not read yet (0: a header is next)
        self._record_type = 0
        # Immutable bytes: handshake data is a few records at most, so growing it by
        # concatenation costs little, and a message sliced out of it needs no second copy.
        self._handshake = b""
        self._emitted = 0
        self.encrypted = False
        self.max_bytes = max_bytes

    def feed(self, stream: bytes) -> list[bytes]:
        """``stream`` is the whole contiguous prefix seen so far (it only grows between calls)."""
        available = len(stream)
        while not self.encrypted:
            offset = self._offset
            if self._record_left == 0:
                if offset + 5 > available:
                    break
                # Record header: type (1), version major/minor (2), uint16 length (RFC 8446 §5.1).
                content_type = stream[offset]
                length = stream[offset + 3] << 8 | stream[offset + 4]
                if stream[offset + 1] != 3 or content_type not in (20, 21, 22, 23, 24):
                    raise TlsError("not_tls_record")
                if length > MAX_RECORD_LENGTH:
                    raise TlsError("bad_record_length")
                self._offset = offset + 5
                self._record_left = length
                self._record_type = content_type
                if content_type in (CONTENT_CHANGE_CIPHER_SPEC, CONTENT_APPLICATION_DATA):
                    self.encrypted = True
                continue
            take = min(self._record_left, available - offset)
            if take <= 0:
                break
            if self._record_type == CONTENT_HANDSHAKE:
                if len(self._handshake) + take > self.max_bytes:
                    raise TlsError("handshake_too_large")
                self._handshake += stream[offset : offset + take]
            self._offset = offset + take
            self._record_left -= take
        return self._complete_messages()

    def _complete_messages(self) -> list[bytes]:
        messages: list[bytes] = []
        buf = self._handshake
        while self._emitted + 4 <= len(buf):
            length = int.from_bytes(buf[self._emitted + 1 : self._emitted + 4], "big")
            end = self._emitted + 4 + length
            if end > len(buf):
                if 4 + length > self.max_bytes:
                    raise TlsError("handshake_too_large")
                break
            messages.append(buf if self._emitted == 0 and end == len(buf) else buf[self._emitted : end])
            self._emitted = end
        return messages
