"""DTLS 1.0/1.2 records and handshake reassembly (RFC 6347 §4.1, §4.2.2; protocol-facts.md §3.3).

A datagram holds one or more 13-byte-header records: content type, version (0xfeff DTLS 1.0,
0xfefd 1.2, 0xfefc 1.3), epoch, 48-bit sequence number, length. Epoch 0 records are in clear and
carry the handshake: ClientHello (with its cookie and use_srtp, RFC 5764 §4.1.1), ServerHello and,
up to DTLS 1.2, the server Certificate. Handshake messages carry a 12-byte header and may be
fragmented over records and datagrams; ``DtlsHandshakeCollector`` rebuilds them by offset.

Weakness: DTLS 1.3 (RFC 9147) encrypts the Certificate and uses a unified header for protected
records, so only its ClientHello/ServerHello are read; records with a connection ID (type 25) are
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from inspector.dissect import tls

RECORD_HEADER_LENGTH: Final = 13
HANDSHAKE_HEADER_LENGTH: Final = 12
# 0x0100 is the pre-RFC 4347 DTLS that Cisco AnyConnect still speaks (OpenSSL DTLS1_BAD_VER,
# OpenSSL test "Cisco DTLS1_BAD_VER session resume, as used by AnyConnect VPN protocol").
DTLS_BAD_VERSION: Final = 0x0100
DTLS_VERSIONS: Final = (0xFEFF, 0xFEFD, 0xFEFC, DTLS_BAD_VERSION)
# Bound on one reassembled handshake message and on messages in flight per direction.
MAX_MESSAGE_BYTES: Final = 65536
MAX_PENDING_MESSAGES: Final = 8


class DtlsError(ValueError):
    """A DTLS record or handshake message is malformed; the reason is in ``.reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DtlsRecord:
    """One DTLS record: content_type, version, epoch, sequence_number and the fragment bytes."""

    content_type: int
    version: int
    epoch: int
    sequence_number: int
    fragment: bytes


def looks_like_dtls(datagram: bytes) -> bool:
    """DTLS record start: content type 20..25, version 0xfeff/0xfefd/0xfefc (or Cisco's 0x0100).

    Source: RFC 9443 demultiplexing (first byte 20..63 is DTLS), pion/dtls version values.
    Weakness: three bytes; a random datagram matches with probability about 6/2^24.
    """
    return (
        len(datagram) >= RECORD_HEADER_LENGTH
        and 20 <= datagram[0] <= 25
        and int.from_bytes(datagram[1:3], "big") in DTLS_VERSIONS
    )


def parse_records(datagram: bytes) -> list[DtlsRecord]:
    """Splits a datagram into DTLS records. Raises DtlsError on a bad or truncated record."""
    records: list[DtlsRecord] = []
    position = 0
    while position < len(datagram):
        if position + RECORD_HEADER_LENGTH > len(datagram):
            raise DtlsError("truncated_record")
        header = datagram[position : position + RECORD_HEADER_LENGTH]
        version = int.from_bytes(header[1:3], "big")
        if header[0] < 20 or header[0] > 26 or version not in DTLS_VERSIONS:
            raise DtlsError("not_dtls_record")
        length = int.from_bytes(header[11:13], "big")
        end = position + RECORD_HEADER_LENGTH + length
        if end > len(datagram):
            raise DtlsError("truncated_record")
        records.append(
            DtlsRecord(
                content_type=header[0],
                version=version,
                epoch=int.from_bytes(header[3:5], "big"),
                sequence_number=int.from_bytes(header[5:11], "big"),
                fragment=datagram[position + RECORD_HEADER_LENGTH : end],
            )
        )
        position = end
    return records


class _PendingMessage:
    __slots__ = ("msg_type", "length", "body", "ranges")

    def __init__(self, msg_type: int, length: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.body = bytearray(length)
        self.ranges: list[tuple[int, int]] = []

    def add(self, offset: int, data: bytes) -> bool:
        """Stores a fragment; True once bytes 0..length are all covered."""
        self.body[offset : offset + len(data)] = data
        # Keep the covered ranges merged so retransmitted fragments do not grow the list.
        merged: list[tuple[int, int]] = []
        for start, end in sorted([*self.ranges, (offset, offset + len(data))]):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.ranges = merged
        return merged[0][0] == 0 and merged[0][1] >= self.length


class DtlsHandshakeCollector:
    """Rebuilds one direction's clear (epoch 0) handshake messages from datagrams.

    ``feed`` returns newly completed messages, each with a 12-byte header rewritten as an
    unfragmented message (fragment_offset 0, fragment_length = length), ready for
    ``tls.parse_client_hello(..., dtls=True)``. Retransmitted messages are returned once.
    Memory: at most MAX_PENDING_MESSAGES messages of MAX_MESSAGE_BYTES each.
    """

    __slots__ = ("_pending", "_done")

    def __init__(self) -> None:
        self._pending: dict[int, _PendingMessage] = {}
        self._done: set[int] = set()

    def feed(self, datagram: bytes) -> list[bytes]:
        """Raises DtlsError on a malformed record or handshake fragment."""
        complete: list[bytes] = []
        for record in parse_records(datagram):
            if record.content_type != tls.CONTENT_HANDSHAKE or record.epoch != 0:
                continue
            fragment = record.fragment
            position = 0
            while position < len(fragment):
                if position + HANDSHAKE_HEADER_LENGTH > len(fragment):
                    raise DtlsError("truncated_handshake_header")
                header = fragment[position : position + HANDSHAKE_HEADER_LENGTH]
                msg_type = header[0]
                length = int.from_bytes(header[1:4], "big")
                message_seq = int.from_bytes(header[4:6], "big")
                fragment_offset = int.from_bytes(header[6:9], "big")
                fragment_length = int.from_bytes(header[9:12], "big")
                start = position + HANDSHAKE_HEADER_LENGTH
                end = start + fragment_length
                if end > len(fragment):
                    raise DtlsError("truncated_handshake_fragment")
                if length > MAX_MESSAGE_BYTES:
                    raise DtlsError("handshake_too_large")
                if fragment_offset + fragment_length > length:
                    raise DtlsError("bad_fragment_offset")
                position = end
                message = self._add(msg_type, length, message_seq, fragment_offset,
                                    fragment[start:end])
                if message is not None:
                    complete.append(message)
        return complete

    def _add(self, msg_type: int, length: int, message_seq: int, offset: int,
             data: bytes) -> bytes | None:
        if message_seq in self._done:
            return None
        pending = self._pending.get(message_seq)
        if pending is None:
            if len(self._pending) >= MAX_PENDING_MESSAGES:
                raise DtlsError("too_many_pending_messages")
            pending = self._pending[message_seq] = _PendingMessage(msg_type, length)
        elif pending.msg_type != msg_type or pending.length != length:
            raise DtlsError("inconsistent_fragments")
        if not pending.add(offset, data):
            return None
        del self._pending[message_seq]
        self._done.add(message_seq)
        header = (
            bytes([msg_type]) + length.to_bytes(3, "big") + message_seq.to_bytes(2, "big")
            + (0).to_bytes(3, "big") + length.to_bytes(3, "big")
        )
        return header + bytes(pending.body)


def parse_client_hello(message: bytes) -> tls.ClientHello:
    """A reassembled DTLS ClientHello (12-byte header); raises DtlsError with the TLS reason."""
    try:
        return tls.parse_client_hello(message, dtls=True)
    except tls.TlsError as exc:
        raise DtlsError(exc.reason) from exc


def parse_server_hello(message: bytes) -> tls.ServerHello:
    """A reassembled DTLS ServerHello; raises DtlsError with the TLS reason."""
    try:
        return tls.parse_server_hello(message, dtls=True)
    except tls.TlsError as exc:
        raise DtlsError(exc.reason) from exc


def parse_certificate_list(message: bytes) -> tuple[bytes, ...]:
    """DER certificates of a reassembled DTLS 1.0/1.2 Certificate, leaf first; raises DtlsError."""
    try:
        return tls.parse_certificate_list(message, dtls=True)
    except tls.TlsError as exc:
        raise DtlsError(exc.reason) from exc
