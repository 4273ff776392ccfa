"""Capture file readers: classic pcap (µs and ns), pcapng, either of them gzip-compressed.

``open_capture(path)`` checks the file and recognises its format from its first bytes (never from
its name); ``CaptureReader.batches()`` then yields ``PacketBatch`` columns (inspector/batch.py).

Formats (byte layouts from draft-ietf-opsawg-pcap and draft-ietf-opsawg-pcapng, the successors of
the libpcap and pcapng.github.io documents):

* pcap: a 24-byte file header whose magic 0xA1B2C3D4 (µs timestamps) or 0xA1B23C4D (ns) also tells
  the writer's byte order; then 16-byte record headers (ts_sec, ts_frac, caplen, wirelen), each
  followed by ``caplen`` bytes. Records carry no length check or marker, so a garbage header cannot
  be resynchronised: everything after it is reported as truncation.
* pcapng: blocks of (type, total length, body, total length). A Section Header Block (SHB) starts a
  section and fixes its byte order; Interface Description Blocks (IDB) define the interfaces of the
  section (link type, snaplen, if_tsresol option 9, if_tsoffset option 14); packets come in
  Enhanced Packet Blocks (EPB, type 6), Simple Packet Blocks (SPB, type 3, no timestamp, interface
  0) and the obsolete Packet Block (type 2). Other blocks are skipped by their length.
* gzip (RFC 1952, magic 1F 8B): decompressed as a stream in large chunks, same readers on top.

Speed: an uncompressed file is memory-mapped and each batch's ``buffer`` is a zero-copy view of the
whole mapping (``offset`` values are file offsets). A compiled loop (``chain.py``) only follows the
record chain and collects record offsets; the header fields are then gathered with numpy for the
whole batch at once. The SHA-256 of the file comes from the process ``prehash.start`` forked as
the command began, when there is one for this very file; otherwise it runs in a second thread
over the same mapping (hashlib releases the GIL), so reading and hashing overlap. A gzip file is
inflated in a second thread (which also hashes its compressed bytes unless ``prehash``'s process
does), 16 MiB of decompressed data at a time, while the reading thread walks the previous chunk; memory is bounded by a few chunks
whatever the compression ratio. The inflating is ISA-L's (the ``isal`` package) where installed,
zlib's otherwise: the same bytes either way.

Measured on the 998,739-packet benchmark (386 MB Ethernet pcap, 2-core VM, warm cache, SHA-256
included): pcap ~0.30 s (3.3 M packets/s), the same as pcapng ~0.34 s (2.9 M packets/s), gzip -1
of the pcap ~2.2 s with zlib (zlib alone takes 1.5-1.7 s; ISA-L's inflate 1.07 s); the stdlib
record walk of bench/baselines.py takes 0.21 s and computes nothing but the count.

Weaknesses: the pcap walk trusts any caplen up to 256 KiB, so a corrupt header with a plausible
length desynchronises the rest of the file silently (the pcap format gives no way to notice);
pcapng EPBs are not checked against their trailing length copy; SPB packets have no timestamp in
the format and get the timestamp of the packet before them; a file that another process shortens
while it is mapped kills the reader with SIGBUS (the price of mmap); the rare variants with other
magic numbers (Kuznetzov's 0xA1B2CD34 with 24-byte records, Navtel, IXIA) are rejected as unknown.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import stat
import struct
import threading
import types
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from inspector import prehash
from inspector.batch import PacketBatch, byte_rows
from inspector.capture.chain import record_offsets
from inspector.capture.pages import drop_pages
from inspector.digest import sha256_stream
from inspector.errors import CaptureError
from inspector.niceness import lower_priority, lower_thread_priority

__all__ = ["CaptureReader", "CaptureStats", "open_capture"]

_INFLATE: types.ModuleType = zlib
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
try:  # ISA-L's inflate (the ``isal`` package, a dependency); zlib's where it is not installed
    from isal import isal_zlib

    _INFLATE, _INFLATE_ERRORS = isal_zlib, (zlib.error, getattr(isal_zlib, "error"))
except ImportError:  # pragma: no cover - depends on what is installed
    pass

# A caplen above this is not a packet but a corrupt header: libpcap's own limit for reading is
# MAXIMUM_SNAPLEN = 262144 (pcap-int.h), the largest snaplen any of its capture paths uses.
MAX_PCAP_CAPLEN = 262144
# pcapng blocks may legitimately exceed a packet (name resolution, decryption secrets), but a block
# larger than this is treated as corruption; it also bounds what the gzip path buffers.
MAX_PCAPNG_BLOCK = 64 * 1024 * 1024
GZIP_CHUNK = 16 * 1024 * 1024
HASH_CHUNK = 8 * 1024 * 1024
#: How much lower the hashing of an uncompressed file runs than its reading (``niceness.py``): the
#: digest is needed only for the manifest, written last. A process forked as the command starts
#: (``prehash.py``) hashes a single capture file beside the imports; this reader takes its digest,
#: and lets it go on beside the reading or, with ``CaptureReader.hash_after_reading``, pauses it
#: until the packets are read, except while ``CaptureReader.hash_gate`` (a parallel run's
#: ``idlecores.IdleCores``) finds a core left idle after a batch. Without one, in a one-process run
#: a thread hashes the mapped file beside the reading, on the core it leaves idle; with
#: ``hash_after_reading`` (a parallel run, whose dissect workers and reader keep every core busy
#: while the packets are read) a forked process hashes it once they are read, taking what the serial
#: end of the run leaves. Measured on the benchmark capture (386 MB) with two workers on 2 cores,
#: 8-12 alternating runs each: a thread beside the reading 3.24 s, a thread after it 3.13 s at this
#: niceness (3.17 s at equal priority), a process after it 0.04 s below the thread (0.04 s less CPU
#: too), not hashing at all 3.01 s. Hashing beside the reading at this niceness still finishes early
#: and gains nothing: the cores it finds idle between batches were the workers' and the reader's.
#: Weakness: on a machine with no idle core the digest is made at the very end, and reading the
#: manifest (``Analysis.manifest``) waits for it.
HASH_NICENESS = prehash.HASH_NICENESS

_PCAP_MAGICS = {  # first four bytes -> (byte order, nanosecond timestamps)
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_SHB = 0x0A0D0D0A  # palindromic, so it reads the same in both byte orders
_PCAPNG_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}  # 0x1A2B3C4D as written
_GZIP_MAGIC = b"\x1f\x8b"
_INT64_MAX = (1 << 63) - 1


@dataclass
class CaptureStats:
    """What reading one capture file found; complete once ``batches()`` is exhausted.

    path              the path as given
    size_bytes        size of the file as stored
    sha256            SHA-256 of the file as stored (of the compressed bytes for gzip), hex; an
                      uncompressed file is hashed by the process ``prehash.start`` forked, a
                      background thread or, after the reading, a forked process, which reading
                      this property waits for the first time (``HASH_NICENESS``)
    format            ``pcap`` (µs), ``pcap-ns`` or ``pcapng``
    compression       ``gzip`` or ""
    records_read      packet records found; each is either yielded or counted in records_skipped
    records_skipped   reason -> count (``caplen_exceeds_snaplen``, ``caplen_exceeds_record``,
                      ``unknown_interface``, ``block_too_short``; ``truncated_record`` for the record
                      the end of the file cuts, ``caplen_absurd`` for the garbage pcap header that
                      ends reading)
    link_types        sorted LINKTYPE values of the packets yielded
    first_ts_ns, last_ts_ns   smallest and largest packet timestamp, ns since the epoch
    truncated         the file ends inside a record or block, or is corrupt from some point on
    truncation_detail where and how, in one line
    sections, interfaces      pcapng Section Header and Interface Description Blocks seen
    """

    path: str
    size_bytes: int
    sha256: str = ""  # a property once the class is made (below)
    format: str = ""
    compression: str = ""
    records_read: int = 0
    records_skipped: dict[str, int] = field(default_factory=dict)
    link_types: list[int] = field(default_factory=list)
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    truncated: bool = False
    truncation_detail: str = ""
    sections: int = 0
    interfaces: int = 0

    def _skip(self, reason: str, count: int = 1) -> None:
        self.records_skipped[reason] = self.records_skipped.get(reason, 0) + count
        self.records_read += count


def _stats_sha256(stats: CaptureStats) -> str:
    digest = stats.__dict__["_sha256"]
    if not isinstance(digest, str):  # the hashing thread's or process's result, waited for once
        digest = stats.__dict__["_sha256"] = digest()
    return digest


def _set_stats_sha256(stats: CaptureStats, digest: str | Callable[[], str]) -> None:
    stats.__dict__["_sha256"] = digest


# ``sha256`` stays a field (a constructor argument, in repr and ==) and is also a property: it
# may be set to a function that waits for a hashing thread or process, and reads as its result.
CaptureStats.sha256 = property(_stats_sha256, _set_stats_sha256)  # type: ignore[assignment]


# Walk results: why a walk over a buffer stopped.
_FULL = "full"  # the batch is full, or ends before a new pcapng section: call again at next_pos
_END = "end"  # the buffer ends exactly at a record boundary
_SHORT = "short"  # the buffer ends inside a record (more data needed, or truncation if final)
_CORRUPT = "corrupt"  # unreadable from next_pos on


@dataclass(slots=True)
class _Walk:
    """One walk over a buffer: the packet columns found and where and why it stopped."""

    offset: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    ts_ns: np.ndarray
    linktype: np.ndarray
    next_pos: int
    status: str
    detail: str = ""
    lost_record: str = ""  # when the walk ends the file: skip reason of the record it cut or rejected


def _empty_walk(pos: int, status: str, detail: str = "") -> _Walk:
    return _Walk(
        np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64),
        np.empty(0, np.uint16), pos, status, detail,
    )


class _PcapWalker:
    """Follows the record chain of a classic pcap file (draft-ietf-opsawg-pcap §4, §5)."""

    header_len = 24

    def __init__(self, header: bytes, stats: CaptureStats) -> None:
        self.endian, self.nanosecond = _PCAP_MAGICS[header[:4]]
        snaplen, network = struct.unpack_from(self.endian + "II", header, 16)
        # A snaplen of 0 is written by some tools for "no limit".
        self.snaplen = snaplen if snaplen else MAX_PCAP_CAPLEN
        # Only the low 16 bits are the link type; the high bits may carry the FCS length
        # (draft-ietf-opsawg-pcap §4, "LinkType and additional information").
        self.linktype = network & 0xFFFF
        self.stats = stats
        self._u4 = np.dtype(self.endian + "u4")

    def walk(self, mv: memoryview, arr: np.ndarray, pos: int, limit: int, base: int) -> _Walk:
        size = len(mv)
        # header_cut: fewer than 16 bytes left at `off` (end of data or a cut header).
        offsets, off, header_cut = record_offsets(mv, pos, limit, self.endian == ">", False)
        rec = np.array(offsets, dtype=np.int64)
        if rec.shape[0] == 0:
            return self._stop(pos, size, base)
        hdr = byte_rows(arr, rec, 16).view(self._u4)  # (n, 4): ts_sec, ts_frac, caplen, wirelen
        caplen = hdr[:, 2]
        absurd = np.flatnonzero(caplen > MAX_PCAP_CAPLEN)
        detail = lost = ""
        if absurd.shape[0]:
            k = int(absurd[0])
            status, next_pos = _CORRUPT, int(rec[k])
            detail = (
                f"record header at offset {base + next_pos} claims {int(caplen[k])} captured bytes "
                f"(more than {MAX_PCAP_CAPLEN}): corrupt from there on, pcap cannot resynchronise"
            )
            rec, hdr, caplen = rec[:k], hdr[:k], caplen[:k]
            lost = "caplen_absurd"
        elif int(rec[-1]) + 16 + int(caplen[-1]) > size:
            # Only the last record can run past the buffer: the walk stops right after it.
            status, next_pos = _SHORT, int(rec[-1])
            rec, hdr, caplen = rec[:-1], hdr[:-1], caplen[:-1]
        elif header_cut:
            status, next_pos = (_END if off == size else _SHORT), off
        else:
            status, next_pos = _FULL, off
        if status == _SHORT:
            detail = self._short_detail(mv, next_pos, size, base)
            lost = "truncated_record" if size - next_pos >= 16 else ""
        keep = caplen <= self.snaplen
        n_found = rec.shape[0]
        if not keep.all():
            self.stats._skip("caplen_exceeds_snaplen", int(n_found - np.count_nonzero(keep)))
            rec, hdr, caplen = rec[keep], hdr[keep], caplen[keep]
        n = rec.shape[0]
        self.stats.records_read += n
        ts_ns = hdr[:, 0].astype(np.int64) * 1_000_000_000
        frac = hdr[:, 1].astype(np.int64)
        ts_ns += frac if self.nanosecond else frac * 1000
        caplen32 = caplen.astype(np.int32)
        # wirelen below caplen breaks the batch invariant; a writer bug, so trust caplen then.
        wirelen = np.minimum(np.maximum(hdr[:, 3], caplen), 0x7FFFFFFF).astype(np.int32)
        return _Walk(
            rec + 16, caplen32, wirelen, ts_ns, np.full(n, self.linktype, np.uint16),
            next_pos, status, detail, lost,
        )

    def _stop(self, pos: int, size: int, base: int) -> _Walk:
        if pos == size:
            return _empty_walk(pos, _END)
        return _empty_walk(pos, _SHORT, self._short_detail(None, pos, size, base))

    def _short_detail(self, mv: memoryview | None, pos: int, size: int, base: int) -> str:
        have = size - pos
        if have < 16:
            return f"file ends {have} bytes into a 16-byte record header at offset {base + pos}"
        caplen = struct.unpack_from(self.endian + "I", mv, pos + 8)[0] if mv is not None else 0
        return f"file ends {have} bytes into a {16 + caplen}-byte record at offset {base + pos}"


@dataclass(slots=True)
class _Interface:
    """One pcapng interface: link type, snaplen and how to turn its timestamps into ns."""

    linktype: int
    snaplen: int
    tsresol: int = 6  # if_tsresol byte: 10^-n, or 2^-n when the top bit is set; default µs
    tsoffset_s: int = 0  # if_tsoffset: seconds added to every timestamp

    def to_ns(self, units: np.ndarray) -> np.ndarray:
        """Timestamps in this interface's units (uint64) -> int64 ns since the epoch."""
        units = units.astype(np.uint64)
        exp = self.tsresol & 0x7F
        if self.tsresol & 0x80 and exp > 63:  # finer than 2^-63 s: all of 64 bits is < 2 s
            ns = np.zeros_like(units)
        elif self.tsresol & 0x80:  # 2^-exp seconds per unit
            seconds = units >> np.uint64(exp)
            frac = units & np.uint64((1 << exp) - 1)
            # frac < 2^exp; keep frac * 1e9 below 2^64 by dropping low bits of very fine units.
            drop = max(0, exp - 34)
            frac_ns = ((frac >> np.uint64(drop)) * np.uint64(1_000_000_000)) >> np.uint64(exp - drop)
            ns = seconds * np.uint64(1_000_000_000) + frac_ns
        elif exp <= 9:
            ns = units * np.uint64(10 ** (9 - exp))
        elif exp - 9 <= 19:
            ns = units // np.uint64(10 ** (exp - 9))
        else:
            ns = np.zeros_like(units)
        out = ns.astype(np.int64)
        if self.tsoffset_s:
            out += np.int64(max(-_INT64_MAX, min(_INT64_MAX, self.tsoffset_s * 1_000_000_000)))
        return out

    def one_to_ns(self, units: int) -> int:
        return int(self.to_ns(np.array([units], dtype=np.uint64))[0])


class _PcapngWalker:
    """Follows the block chain of a pcapng file (draft-ietf-opsawg-pcapng §3, §4)."""

    header_len = 0  # the first SHB is read as a block like any other

    def __init__(self, stats: CaptureStats) -> None:
        self.stats = stats
        self.endian = "<"
        self.interfaces: list[_Interface] = []
        self.last_ts_ns = 0
        self._lost = ""  # skip reason of a packet block cut by the end of the buffer
        self._set_endian("<")

    def _set_endian(self, endian: str) -> None:
        self.endian = endian
        self._tl = struct.Struct(endian + "II").unpack_from
        self._u4 = np.dtype(endian + "u4")

    def walk(self, mv: memoryview, arr: np.ndarray, pos: int, limit: int, base: int) -> _Walk:
        size = len(mv)
        self._lost = ""
        offsets = array("q")  # block offset of every packet record, in file order
        slow: dict[int, tuple | str] = {}  # index in offsets -> SPB/PB columns, or a skip reason
        off = pos
        status = detail = ""
        while not status:
            remaining = limit - len(offsets)
            if remaining <= 0:
                status = _FULL
                break
            # Fast path: a run of well-formed EPBs; the block that ends it is read below.
            run, off, header_cut = record_offsets(mv, off, remaining, self.endian == ">", True)
            offsets.extend(run)
            if len(run) == remaining:
                status = _FULL
                break
            if header_cut:  # fewer than 8 bytes at `off`
                break
            status, detail, off = self._slow_block(mv, off, size, base, offsets, slow)
        if not status:  # the fast path found fewer than 8 bytes at `off`
            if off == size:
                status = _END
            elif off < size:
                status, detail = _SHORT, self._cut(size - off, None, off, base)
            else:  # the last EPB runs past the end of the buffer; _columns reports it
                status = _SHORT
        return self._columns(mv, arr, offsets, slow, off, size, base, status, detail)

    def _slow_block(self, mv, off, size, base, offsets, slow) -> tuple[str, str, int]:
        """Handles the one block at ``off`` the fast path did not; returns (status, detail, next)."""
        have = size - off
        if have < 12:
            if have < 8:
                return "", "", off  # the caller reports the cut header
            return _SHORT, self._cut(have, None, off, base), off
        btype = struct.unpack_from(self.endian + "I", mv, off)[0]
        if btype == _PCAPNG_SHB:
            if offsets:  # a new section may change byte order and interfaces: end the batch here
                return _FULL, "", off
            endian = _PCAPNG_BOM.get(bytes(mv[off + 8 : off + 12]))
            if endian is None:
                return _CORRUPT, f"section header at offset {base + off} has no valid byte-order magic", off
            self._set_endian(endian)
        btype, blen = self._tl(mv, off)
        if blen < 12 or blen % 4 or blen > MAX_PCAPNG_BLOCK:
            return _CORRUPT, (
                f"block of type 0x{btype:08x} at offset {base + off} has an impossible length {blen}: "
                "corrupt from there on"
            ), off
        if blen > have:
            self._lost = "truncated_record" if btype in (2, 3, 6) else ""
            return _SHORT, self._cut(have, blen, off, base), off
        e = self.endian
        if btype == _PCAPNG_SHB:
            if blen < 28:
                return _CORRUPT, f"section header at offset {base + off} is {blen} bytes (< 28)", off
            self.interfaces = []
            self.stats.sections += 1
        elif btype == 1:  # IDB
            if blen < 20:
                # Interfaces are numbered by order, so a broken IDB still takes its number;
                # packets on it get link type 0xFFFF, which no decoder knows.
                self.interfaces.append(_Interface(0xFFFF, 0))
                self.stats.interfaces += 1
            else:
                linktype, _, snaplen = struct.unpack_from(e + "HHI", mv, off + 8)
                iface = _Interface(linktype, snaplen)
                self._read_idb_options(mv, off + 16, off + blen - 4, iface)
                self.interfaces.append(iface)
                self.stats.interfaces += 1
        elif btype == 6:  # EPB shorter than its fixed fields
            slow[len(offsets)] = "block_too_short"
            offsets.append(off)
        elif btype == 3:  # SPB: interface 0, no timestamp
            if blen < 16:
                slow[len(offsets)] = "block_too_short"
            elif not self.interfaces:
                slow[len(offsets)] = "unknown_interface"
            else:
                iface = self.interfaces[0]
                wirelen = struct.unpack_from(e + "I", mv, off + 8)[0]
                caplen = min(wirelen, blen - 16)
                if iface.snaplen:
                    caplen = min(caplen, iface.snaplen)
                slow[len(offsets)] = (off + 12, caplen, wirelen, self._previous_ts(mv, offsets, slow), iface.linktype)
            offsets.append(off)
        elif btype == 2:  # obsolete Packet Block: 16-bit interface id and drop count
            if blen < 32:
                slow[len(offsets)] = "block_too_short"
            else:
                ifid, _, ts_hi, ts_lo, caplen, wirelen = struct.unpack_from(e + "HHIIII", mv, off + 8)
                if ifid >= len(self.interfaces):
                    slow[len(offsets)] = "unknown_interface"
                elif caplen > blen - 32:
                    slow[len(offsets)] = "caplen_exceeds_record"
                else:
                    iface = self.interfaces[ifid]
                    ts = iface.one_to_ns((ts_hi << 32) | ts_lo)
                    slow[len(offsets)] = (off + 28, caplen, max(wirelen, caplen), ts, iface.linktype)
            offsets.append(off)
        # every other block type (ISB, NRB, DSB, custom...) is skipped by its length
        return "", "", off + blen

    def _previous_ts(self, mv, offsets, slow) -> int:
        """Timestamp of the packet before this one (an SPB has none of its own)."""
        if offsets:
            i = len(offsets) - 1
            prev = slow.get(i)
            if isinstance(prev, tuple):
                return prev[3]
            if prev is None:
                ifid, ts_hi, ts_lo = struct.unpack_from(self.endian + "III", mv, offsets[i] + 8)
                if ifid < len(self.interfaces):
                    return self.interfaces[ifid].one_to_ns((ts_hi << 32) | ts_lo)
        return self.last_ts_ns

    def _read_idb_options(self, mv, pos: int, end: int, iface: _Interface) -> None:
        """Reads if_tsresol (9) and if_tsoffset (14); each option is padded to 4 bytes."""
        opt = struct.Struct(self.endian + "HH").unpack_from
        while pos + 4 <= end:
            code, length = opt(mv, pos)
            if code == 0:  # opt_endofopt
                return
            value_at = pos + 4
            if value_at + length > end:
                return
            if code == 9 and length == 1:
                iface.tsresol = mv[value_at]
            elif code == 14 and length == 8:
                iface.tsoffset_s = struct.unpack_from(self.endian + "q", mv, value_at)[0]
            pos = value_at + ((length + 3) & ~3)

    @staticmethod
    def _cut(have: int, blen: int | None, off: int, base: int) -> str:
        if blen is None:
            return f"file ends {have} bytes into a block header at offset {base + off}"
        return f"file ends {have} bytes into a {blen}-byte block at offset {base + off}"

    def _columns(self, mv, arr, offsets, slow, off, size, base, status, detail) -> _Walk:
        blocks = np.frombuffer(offsets, dtype=np.int64)
        n = blocks.shape[0]
        is_epb = np.ones(n, dtype=bool)
        if slow:
            is_epb[list(slow)] = False
        epb = blocks[is_epb]
        if epb.shape[0] and int(epb[-1]) + int(self._tl(mv, int(epb[-1]))[1]) > size:
            # the fast path jumped past the end of the buffer after this EPB
            last = int(epb[-1])
            blen = self._tl(mv, last)[1]
            blocks, is_epb, epb = blocks[:-1], is_epb[:-1], epb[:-1]
            n -= 1
            if blen > MAX_PCAPNG_BLOCK:  # never buffered in full: the rest is unreadable
                status, off = _CORRUPT, last
                detail = (
                    f"block of type 0x00000006 at offset {base + last} has an impossible length "
                    f"{blen}: corrupt from there on"
                )
            else:
                status, off, detail = _SHORT, last, self._cut(size - last, blen, last, base)
                self._lost = "truncated_record"
        offset = np.empty(n, np.int64)
        caplen = np.empty(n, np.int64)
        wirelen = np.empty(n, np.int64)
        ts_ns = np.empty(n, np.int64)
        linktype = np.zeros(n, np.uint16)
        keep = np.ones(n, dtype=bool)
        if epb.shape[0]:
            f = byte_rows(arr, epb, 28).view(self._u4)  # type, len, ifid, ts_hi, ts_lo, caplen, wirelen
            e_caplen = f[:, 5].astype(np.int64)
            e_keep = e_caplen <= f[:, 1].astype(np.int64) - 32
            if not e_keep.all():
                self.stats._skip("caplen_exceeds_record", int(np.count_nonzero(~e_keep)))
            ifid = f[:, 2]
            known = ifid < len(self.interfaces)
            unknown = e_keep & ~known
            if unknown.any():
                self.stats._skip("unknown_interface", int(np.count_nonzero(unknown)))
            e_keep &= known
            units = (f[:, 3].astype(np.uint64) << np.uint64(32)) | f[:, 4].astype(np.uint64)
            e_ts = np.zeros(epb.shape[0], np.int64)
            e_lt = np.zeros(epb.shape[0], np.uint16)
            if len(self.interfaces) == 1:
                e_ts = self.interfaces[0].to_ns(units)
                e_lt[:] = self.interfaces[0].linktype
            else:
                for i, iface in enumerate(self.interfaces):
                    sel = ifid == i
                    if sel.any():
                        e_ts[sel] = iface.to_ns(units[sel])
                        e_lt[sel] = iface.linktype
            offset[is_epb] = epb + 28
            caplen[is_epb] = e_caplen
            wirelen[is_epb] = np.maximum(f[:, 6].astype(np.int64), e_caplen)
            ts_ns[is_epb] = e_ts
            linktype[is_epb] = e_lt
            keep[is_epb] = e_keep
        for i, rec in slow.items():
            if i >= n:
                continue
            if isinstance(rec, str):
                self.stats._skip(rec)
                keep[i] = False
            else:
                offset[i], caplen[i], wirelen[i], ts_ns[i], linktype[i] = rec
        if not keep.all():
            offset, caplen, wirelen, ts_ns, linktype = (
                offset[keep], caplen[keep], wirelen[keep], ts_ns[keep], linktype[keep]
            )
        if ts_ns.shape[0]:
            self.last_ts_ns = int(ts_ns[-1])
        self.stats.records_read += int(offset.shape[0])
        return _Walk(
            offset, caplen.astype(np.int32), np.minimum(wirelen, 0x7FFFFFFF).astype(np.int32),
            ts_ns, linktype, off, status, detail, self._lost if status == _SHORT else "",
        )


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte read through it, in order."""

    def __init__(self, raw, hashing: bool = True) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.consumed = 0
        #: False when the file's digest comes from elsewhere (``prehash``): only counted then.
        self.hashing = hashing

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.hashing:
            self.sha.update(data)
        self.consumed += len(data)
        return data

    def drain(self) -> None:
        while self.read(HASH_CHUNK):
            pass


class _Gunzip:
    """Streaming gzip decompression (RFC 1952, members one after another) with bounded output.

    zlib with wbits=31 parses each member's header and checks its CRC-32 and length trailer;
    ISA-L's ``isal_zlib`` (``_INFLATE``) does the same through zlib's interface. It takes input
    ahead of the output asked for, so once the file has ended the decompressor is asked for
    what it still holds before the stream is called cut short (a cut stream may then yield a
    byte or so less than zlib gives, of its last, incomplete block).
    ``read(n)`` returns at most ``n`` bytes, so a small compressed input that expands hugely
    never fills memory. Unlike gzip.GzipFile, a cut or corrupt stream still returns every byte
    decompressed before the damage; ``error`` then says what happened. Bytes after the last
    member that do not start another member are ignored, as gzip(1) does with trailing zeros.
    """

    def __init__(self, raw) -> None:
        self.raw = raw
        self._d = _INFLATE.decompressobj(31)
        self._fed = False  # whether the current member has received any input
        self._input = b""
        self._raw_ended = False
        self.done = False
        self.error = ""

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        have = 0
        while have < n and not self.done:
            if not self._input and not self._raw_ended:
                try:
                    self._input = self.raw.read(1 << 20)
                except OSError as e:
                    self.error = f"read error ({e.strerror or e})"
                    self.done = True
                    break
                self._raw_ended = not self._input
            if self._input:
                self._fed = True
            elif not self._fed:  # the file ends between members
                self.done = True
                break
            # With no input left (the file has ended) this asks for what the decompressor still
            # holds: ISA-L takes input ahead of the output asked for.
            chunk = self._inflate(self._input, n - have)
            if self.done:
                break
            if not self._input and not chunk and not self._d.eof:
                self.error = "gzip stream ends before its end-of-stream marker"
                self.done = True
                break
            self._input = self._d.unconsumed_tail
            if self._d.eof:
                rest = self._d.unused_data
                self._d = _INFLATE.decompressobj(31)
                self._fed = False
                self._input = rest
                if rest and not rest.startswith(_GZIP_MAGIC):
                    self.done = True
            out.append(chunk)
            have += len(chunk)
        return b"".join(out)

    def _inflate(self, data: bytes, max_length: int) -> bytes:
        """``decompress`` of the current member; b"" and ``done`` with ``error`` set when the
        stream is corrupt."""
        try:
            return self._d.decompress(data, max_length)
        except _INFLATE_ERRORS as e:
            self.error = f"corrupt gzip data ({e})"
            self.done = True
            return b""


def _digest_after_reading(source, size: int, hasher: threading.Thread, sha) -> Callable[[], str]:
    """A function returning the SHA-256 of the first ``size`` bytes of ``source`` (an open file),
    made by a forked process (``forked.py``) started now; where none can be forked, by the
    ``hasher`` thread feeding ``sha``. ``source`` is closed here (the child has its own)."""
    from inspector import forked

    with source:
        job = forked.start(f"{source.name}: SHA-256", _sha256_of_file, source, size)
    if job is None:
        hasher.start()
        return _waiting_digest(hasher, sha)
    return job.result


def _sha256_of_file(source, size: int) -> str:
    """``digest.sha256_stream`` of the first ``size`` bytes of ``source`` (an open file, read
    from its current position), in a process of its own at ``HASH_NICENESS``."""
    lower_priority(HASH_NICENESS)
    return sha256_stream(source, size)


def _early_digest(early: prehash.EarlyHash) -> Callable[[], str]:
    """``early``'s digest, waited for when first read; the process goes on hashing now (it may
    have been paused while the packets were read)."""
    early.resume()
    return early.digest


def _waiting_digest(hasher: threading.Thread, sha) -> Callable[[], str]:
    """A function returning ``sha``'s hex digest once the ``hasher`` thread has fed it all."""

    def digest() -> str:
        hasher.join()
        return sha.hexdigest()

    return digest


def _detect(head: bytes) -> str | None:
    """Format of a capture from its first bytes: ``pcap``, ``pcap-ns``, ``pcapng`` or None."""
    if head[:4] in _PCAP_MAGICS:
        return "pcap-ns" if _PCAP_MAGICS[head[:4]][1] else "pcap"
    if len(head) >= 12 and head[:4] == b"\x0a\x0d\x0d\x0a" and head[8:12] in _PCAPNG_BOM:
        return "pcapng"
    return None


class CaptureReader:
    """Reads one capture file as ``PacketBatch`` objects; ``stats`` describes what was read."""

    def __init__(self, path: str, batch_size: int, fmt: str, compression: str, size: int) -> None:
        self.path = path
        self.batch_size = batch_size
        self.stats = CaptureStats(path=path, size_bytes=size, format=fmt, compression=compression)
        self._mapping: mmap.mmap | None = None
        self._mapped_bytes: np.ndarray | None = None
        self._mapped_stat: os.stat_result | None = None
        #: Hash an uncompressed file once its packets are read rather than beside the reading
        #: (``HASH_NICENESS``): for a run whose other processes keep every core busy meanwhile.
        self.hash_after_reading = False
        #: With ``hash_after_reading``: called after each batch, True to let the hashing process go
        #: on (the run left a core idle, ``idlecores.IdleCores``), False to pause it again, None to
        #: leave it as it is. None (no gate): paused until the packets are read.
        self.hash_gate: Callable[[], bool | None] | None = None
        #: Packets in the first batch, when fewer than ``batch_size`` (None: ``batch_size``). A
        #: parallel run's dissect workers idle until the reader ships its first batch, so a small
        #: one sets them going sooner (``parallel.FIRST_BATCH_PACKETS``).
        self.first_batch_size: int | None = None

    def mapped_bytes(self) -> np.ndarray | None:
        """The whole uncompressed file as a read-only uint8 array over a shared mapping, made on
        the first call (None for a compressed file, whose batches are decompressed copies).

        Every batch of an uncompressed file has this very array as its ``buffer`` (packet
        offsets are file offsets), so a process forked after this call reads the same bytes
        through the mapping it inherits, without copying them (``parallel.py``); it releases
        what it has read with ``release_pages``.
        """
        if self.stats.compression:
            return None
        if self._mapped_bytes is None:
            with self._open_raw() as f:
                try:
                    mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    self._mapped_stat = os.fstat(f.fileno())
                except (OSError, ValueError) as e:
                    raise CaptureError(self.path, f"cannot map the file: {e}") from e
            self._mapping = mapping
            self._mapped_bytes = np.frombuffer(mapping, dtype=np.uint8)
        return self._mapped_bytes

    def release_pages(self, start: int, end: int) -> None:
        """Unmap the whole pages of [start, end) of ``mapped_bytes`` from this process's resident
        set (the page cache keeps them; reading them again faults them back in)."""
        if self._mapping is not None:
            drop_pages(self._mapping, start, end)

    def _first_size(self) -> int:
        first = self.first_batch_size
        return self.batch_size if first is None else max(1, min(first, self.batch_size))

    def _new_walker(self, head: bytes):
        if self.stats.format == "pcapng":
            return _PcapngWalker(self.stats)
        return _PcapWalker(head, self.stats)

    def batches(self, progress: Callable[[int], None] | None = None) -> Iterator[PacketBatch]:
        """Yields the packets in file order, at most ``batch_size`` per batch.

        ``progress`` is called with the number of file bytes consumed so far after each batch.
        Calling ``batches()`` again reads the file again from the start and resets ``stats``.
        """
        s = self.stats
        self.stats = CaptureStats(
            path=s.path, size_bytes=s.size_bytes, format=s.format, compression=s.compression
        )
        link_types: set[int] = set()
        first_index = 0
        source = self._gzip_walks() if self.stats.compression else self._mmap_walks()
        for buffer, walk, consumed in source:
            n = walk.offset.shape[0]
            if n:
                kinds = walk.linktype
                # Nearly every capture has one link type: one comparison pass, no sort.
                link_types.update([int(kinds[0])] if (kinds == kinds[0]).all() else np.unique(kinds).tolist())
                lo, hi = int(walk.ts_ns.min()), int(walk.ts_ns.max())
                st = self.stats
                st.first_ts_ns = lo if st.first_ts_ns is None else min(st.first_ts_ns, lo)
                st.last_ts_ns = hi if st.last_ts_ns is None else max(st.last_ts_ns, hi)
                self.stats.link_types = sorted(link_types)
                yield PacketBatch(
                    buffer, walk.offset, walk.caplen, walk.wirelen, walk.ts_ns, walk.linktype,
                    first_index,
                )
                first_index += n
            if progress is not None:
                progress(consumed)

    def _truncate(self, detail: str) -> None:
        self.stats.truncated = True
        self.stats.truncation_detail = detail

    def _open_raw(self):
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise CaptureError(self.path, f"cannot open: {e.strerror or e}") from e

    def _mmap_walks(self):
        # The mapping stays open as long as a batch's buffer or this reader refers to it.
        arr = self.mapped_bytes()
        mapping = self._mapping
        mv = memoryview(mapping)
        sha = hashlib.sha256()

        def hash_all() -> None:
            # Large chunks: hashlib releases the GIL for each call, and few calls means few waits
            # for the walking thread to hand the GIL back. Each hashed chunk is dropped from this
            # process's resident set (the page cache keeps it), so hashing a large file does not
            # make the whole file resident at once; pages the walk dropped first fault back in.
            lower_thread_priority(HASH_NICENESS)
            for start in range(0, len(mv), HASH_CHUNK):
                sha.update(mv[start : start + HASH_CHUNK])
                drop_pages(mapping, start, min(start + HASH_CHUNK, len(mv)))

        hasher = threading.Thread(target=hash_all, name="capture-sha256", daemon=True)
        early = self._claim_early(self._mapped_stat) if self._mapped_stat is not None else None
        source = None
        if early is None:
            # Hashed after reading, the file is read through a descriptor opened now, so that it
            # is the very file mapped even if its path is replaced meanwhile.
            source = self._open_raw() if self.hash_after_reading else None
            if source is None:
                hasher.start()
        walker = self._new_walker(bytes(mv[:24]))
        pos = walker.header_len
        dropped_to = 0
        digest_taken = False
        hashing = early is not None and not self.hash_after_reading  # paused by ``_claim_early``
        size = self._first_size()
        try:
            while True:
                walk = walker.walk(mv, arr, pos, size, 0)
                size = self.batch_size
                pos = walk.next_pos
                done = walk.status != _FULL
                if done:
                    self._finish(walk)
                    if early is not None:
                        self.stats.sha256 = _early_digest(early)
                        digest_taken = True
                    elif source is not None:
                        self.stats.sha256 = _digest_after_reading(source, len(mv), hasher, sha)
                    else:
                        self.stats.sha256 = _waiting_digest(hasher, sha)
                yield arr, walk, min(pos, len(mv)) if not done else len(mv)
                if not done:
                    hashing = self._gate_hash(early, hashing)
                # The consumer asked for the next batch: every byte before ``pos`` has been read
                # (the pipeline copies what it keeps). Drop those pages from the resident set, so
                # memory is bounded by the batch, not the file (a touched mapped page counts as
                # resident).
                end = min(pos, len(mv))
                drop_pages(mapping, dropped_to - dropped_to % mmap.PAGESIZE, end)
                dropped_to = end
                if done:
                    return
        finally:
            if early is not None and not digest_taken:
                # The reading stopped before its end (an error, a consumer that stopped): nobody
                # will ask for the digest, and a paused process would wait for ever.
                early.discard()

    def _claim_early(self, st: os.stat_result) -> prehash.EarlyHash | None:
        """The hashing process begun as the command started (``prehash.py``) when it hashes this
        very file (``st``); paused when this reading keeps every core busy
        (``hash_after_reading``), else left going beside it. Its digest is taken once the
        packets are read (``_early_digest``); a reading that stops before then discards it."""
        early = prehash.claim(st)
        if early is not None and self.hash_after_reading:
            early.pause()
        return early

    def _gate_hash(self, early: prehash.EarlyHash | None, hashing: bool) -> bool:
        """After a batch: pause or resume the claimed hashing process ``early`` as ``hash_gate``
        says, when this reading pauses it (``hash_after_reading``); whether it now runs."""
        if early is None or not self.hash_after_reading or self.hash_gate is None:
            return hashing
        wanted = self.hash_gate()
        if wanted is None or wanted == hashing:
            return hashing
        if wanted:
            early.resume()
        else:
            early.pause()
        return wanted

    def _finish(self, walk: _Walk) -> None:
        if walk.status in (_SHORT, _CORRUPT):
            self._truncate(walk.detail)
            if walk.lost_record:
                self.stats._skip(walk.lost_record)

    def _gzip_chunks(self, raw, hashing: bool):
        """Decompressed chunks of up to GZIP_CHUNK bytes of the open file ``raw`` (closed here),
        produced by a second thread that also hashes its bytes if ``hashing``.

        zlib and hashlib release the GIL, so decompressing and hashing the compressed bytes
        overlap with walking the previous chunk. Yields (chunk, last, gunzip, reader, skip_rest).
        """
        reader = _HashingReader(raw, hashing)
        gunzip = _Gunzip(reader)
        chunks: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        skip_rest = threading.Event()  # set by the reader: only hash what is left, do not inflate

        def hand_over(item: tuple) -> None:
            while not stop.is_set():  # the reader may have stopped reading
                try:
                    chunks.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                while not stop.is_set():
                    if skip_rest.is_set():
                        chunk, last = b"", True
                    else:
                        chunk = gunzip.read(GZIP_CHUNK)
                        last = gunzip.done
                    if last and reader.hashing:
                        try:
                            reader.drain()  # the hash covers the whole file, trailing bytes too
                        except OSError:
                            pass  # already reported as a read error by _Gunzip, or hash incomplete
                    hand_over((chunk, last, None))
                    if last:
                        return
            except BaseException as e:  # handed to the reading thread, which re-raises it
                hand_over((b"", True, e))
            finally:
                raw.close()

        worker = threading.Thread(target=produce, name="capture-gunzip", daemon=True)
        worker.start()
        try:
            while True:
                chunk, last, error = chunks.get()
                if error is not None:
                    raise error
                yield chunk, last, gunzip, reader, skip_rest
                if last:
                    return
        finally:
            stop.set()

    def _gzip_walks(self):
        walker = None
        pending = b""  # decompressed bytes not yet walked
        base = 0  # offset of pending[0] in the decompressed stream
        final = None  # the last walk, once the inner capture is read or found corrupt
        size = self._first_size()
        raw = self._open_raw()
        # The compressed bytes are only counted when the process begun at the start hashes them.
        early = self._claim_early(os.fstat(raw.fileno()))
        digest_taken = False
        hashing = early is not None and not self.hash_after_reading  # paused by ``_claim_early``
        try:
            for chunk, eof, gunzip, reader, skip_rest in self._gzip_chunks(raw, hashing=early is None):
                if final is not None:  # corrupt inner capture: the rest of the file is only hashed
                    continue
                pending = pending + chunk if pending else chunk
                if walker is None:
                    if len(pending) < 24 and not eof:
                        continue
                    walker = self._new_walker(pending[:24])
                    pos = walker.header_len
                else:
                    pos = 0
                mv = memoryview(pending)
                arr = np.frombuffer(pending, dtype=np.uint8)
                while True:
                    walk = walker.walk(mv, arr, pos, size, base)
                    size = self.batch_size
                    pos = walk.next_pos
                    if walk.status == _CORRUPT or eof and walk.status != _FULL:
                        if walk.status in (_SHORT, _CORRUPT):
                            detail = walk.detail + " (offsets in the decompressed stream)"
                            self._truncate(detail + (f"; {gunzip.error}" if gunzip.error else ""))
                            if walk.lost_record:
                                self.stats._skip(walk.lost_record)
                        elif gunzip.error:
                            self._truncate(gunzip.error)
                        final = (arr, walk)
                        skip_rest.set()
                        break
                    yield arr, walk, reader.consumed
                    hashing = self._gate_hash(early, hashing)
                    if walk.status != _FULL:
                        break
                del mv
                pending = pending[pos:]
                base += pos
            if final is not None:
                if early is not None:
                    self.stats.sha256 = _early_digest(early)
                    digest_taken = True
                else:
                    self.stats.sha256 = reader.sha.hexdigest()
                yield final[0], final[1], reader.consumed
        finally:
            if early is not None and not digest_taken:
                # The reading stopped before its end (an error, a consumer that stopped): nobody
                # will ask for the digest, and a paused process would wait for ever.
                early.discard()


def open_capture(path: str | os.PathLike, batch_size: int = 65536) -> CaptureReader:
    """Checks a capture file and returns its reader; raises CaptureError when it cannot be read.

    The format is recognised from the content: pcap (µs or ns, either byte order), pcapng, and
    either of them gzip-compressed. Missing files, directories, empty files, unreadable files and
    anything else raise ``CaptureError(path, reason)``.
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    try:
        st = os.stat(name)
    except FileNotFoundError as e:
        raise CaptureError(name, "no such file") from e
    except OSError as e:
        raise CaptureError(name, f"cannot stat: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise CaptureError(name, "is a directory, not a capture file")
    if not stat.S_ISREG(st.st_mode):
        raise CaptureError(name, "is not a regular file")
    if st.st_size == 0:
        raise CaptureError(name, "is empty")
    try:
        with open(name, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CaptureError(name, f"cannot read: {e.strerror or e}") from e
    compression = ""
    if head[:2] == _GZIP_MAGIC:
        compression = "gzip"
        try:
            with open(name, "rb") as f:
                gunzip = _Gunzip(f)
                head = gunzip.read(64)
        except OSError as e:
            raise CaptureError(name, f"cannot read: {e.strerror or e}") from e
        if not head:
            reason = gunzip.error or "is empty once decompressed"
            raise CaptureError(name, f"{reason} (gzip)")
    fmt = _detect(head)
    suffix = " (gzip-compressed)" if compression else ""
    if fmt is None and head[:4] == b"\x0a\x0d\x0d\x0a" and len(head) < 12:
        raise CaptureError(name, f"ends inside the pcapng section header{suffix}")
    if fmt is None:
        raise CaptureError(name, f"is not a pcap or pcapng capture{suffix} (unknown magic {head[:4].hex()})")
    if fmt != "pcapng" and len(head) < 24:
        raise CaptureError(name, f"ends inside the 24-byte pcap file header{suffix}")
    return CaptureReader(name, batch_size, fmt, compression, st.st_size)
