"""Small, correct pcap and pcapng writers (tests, live-capture evidence files, scripts).

Layouts follow draft-ietf-opsawg-pcap (24-byte file header, 16-byte record headers) and
draft-ietf-opsawg-pcapng (SHB, IDB with if_tsresol option 9, EPB; every block padded to 4 bytes
and closed by a copy of its length). Both writers take timestamps as int64 ns since the epoch and
round them down to the file's resolution.

Weakness: the writers do not check that packets fit the declared snaplen beyond truncating
``data`` to it (the real length is kept as ``wirelen``), and they never seek: a stream killed
mid-write leaves a truncated last record, which the readers report as truncation.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Sequence

_PAD = b"\x00\x00\x00"


def _ts_units(ts_ns: int, tsresol: int) -> int:
    """ns -> units of an if_tsresol byte (10^-n, or 2^-n when the top bit is set)."""
    exp = tsresol & 0x7F
    if tsresol & 0x80:
        return (ts_ns << exp) // 1_000_000_000
    if exp <= 9:
        return ts_ns // 10 ** (9 - exp)
    return ts_ns * 10 ** (exp - 9)


class PcapWriter:
    """Writes a classic pcap file: one link type, µs or ns timestamps, chosen byte order."""

    def __init__(
        self,
        fileobj: BinaryIO,
        linktype: int,
        nanosecond: bool = False,
        byteorder: str = "<",
        snaplen: int = 262144,
    ) -> None:
        if byteorder not in ("<", ">"):
            raise ValueError("byteorder must be '<' or '>'")
        self._f = fileobj
        self._e = byteorder
        self._ns = nanosecond
        self.snaplen = snaplen
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        fileobj.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        self._record = struct.Struct(byteorder + "IIII")

    def write_packet(self, ts_ns: int, data: bytes, wirelen: int | None = None) -> None:
        """Appends one packet; ``data`` beyond the snaplen is cut, ``wirelen`` defaults to len(data)."""
        wirelen = len(data) if wirelen is None else wirelen
        data = bytes(data[: self.snaplen]) if self.snaplen else bytes(data)
        seconds, rest = divmod(ts_ns, 1_000_000_000)
        frac = rest if self._ns else rest // 1000
        self._f.write(self._record.pack(seconds & 0xFFFFFFFF, frac, len(data), wirelen) + data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class PcapngWriter:
    """Writes one pcapng section with the given interfaces, packets as Enhanced Packet Blocks.

    ``interfaces`` is a list of ``(linktype, snaplen, tsresol)``: tsresol is the if_tsresol byte,
    6 for µs (the pcapng default), 9 for ns, ``0x80 | 20`` for 2^-20 s.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        interfaces: Sequence[tuple[int, int, int]] = ((1, 262144, 9),),
        byteorder: str = "<",
        shb_options: bytes = b"",
    ) -> None:
        if byteorder not in ("<", ">"):
            raise ValueError("byteorder must be '<' or '>'")
        self._f = fileobj
        self._e = byteorder
        self.interfaces = list(interfaces)
        self._write_block(0x0A0D0D0A, struct.pack(byteorder + "IHHq", 0x1A2B3C4D, 1, 0, -1) + shb_options)
        for linktype, snaplen, tsresol in self.interfaces:
            options = b""
            if tsresol != 6:
                options = self.option(9, bytes([tsresol])) + self.option(0, b"")
            self._write_block(1, struct.pack(byteorder + "HHI", linktype, 0, snaplen) + options)

    def option(self, code: int, value: bytes) -> bytes:
        """One option, padded to 4 bytes, in this file's byte order (code 0 = opt_endofopt)."""
        return struct.pack(self._e + "HH", code, len(value)) + value + _PAD[: -len(value) % 4]

    def _write_block(self, btype: int, body: bytes) -> None:
        body += _PAD[: -len(body) % 4]
        total = len(body) + 12
        self._f.write(struct.pack(self._e + "II", btype, total) + body + struct.pack(self._e + "I", total))

    def write_block(self, btype: int, body: bytes) -> None:
        """Writes any block (for tests: SPB, obsolete PB, custom blocks); pads ``body`` to 4 bytes."""
        self._write_block(btype, body)

    def write_packet(self, interface_id: int, ts_ns: int, data: bytes, wirelen: int | None = None) -> None:
        """Appends one EPB; ``data`` beyond the interface's snaplen is cut."""
        _, snaplen, tsresol = self.interfaces[interface_id]
        wirelen = len(data) if wirelen is None else wirelen
        data = bytes(data[:snaplen]) if snaplen else bytes(data)
        units = _ts_units(ts_ns, tsresol)
        head = struct.pack(
            self._e + "IIIII", interface_id, (units >> 32) & 0xFFFFFFFF, units & 0xFFFFFFFF, len(data), wirelen
        )
        self._write_block(6, head + data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()
