"""The columns packets travel in, batch by batch (DESIGN.md §1: the packet path is columnar).

A reader yields ``PacketBatch`` objects: tens of thousands of packets as numpy columns over one
byte buffer. ``inspector.decode`` turns a batch into a ``DecodedBatch``: the L2-L4 facts of every
packet as further columns, computed for the whole batch at once. Nothing per-packet crosses a stage
boundary as a Python object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LINKTYPE_* values (tcpdump.org/linktypes.html). pcap headers and pcapng IDBs carry these.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_12 = 12  # raw IP on some BSDs (DLT_RAW there)
LINKTYPE_RAW_14 = 14  # raw IP on OpenBSD (DLT_RAW there)
LINKTYPE_PPP_HDLC = 50
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family, network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276


@dataclass(frozen=True, slots=True)
class PacketBatch:
    """Captured packets, as columns. All arrays have the same length ``n``.

    buffer    uint8[...]  the captured bytes of every packet of the batch, back to back
    offset    int64[n]    where packet i starts in ``buffer``
    caplen    int32[n]    bytes captured of packet i (what is in ``buffer``)
    wirelen   int32[n]    bytes packet i had on the wire (>= caplen when cut by a snaplen)
    ts_ns     int64[n]    capture time, nanoseconds since the Unix epoch, UTC
    linktype  uint16[n]   LINKTYPE_* of the interface packet i was captured on
    first_index           number of packet 0 within its capture (0-based), for error reports
    """

    buffer: np.ndarray
    offset: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    ts_ns: np.ndarray
    linktype: np.ndarray
    first_index: int = 0

    def __len__(self) -> int:
        return int(self.offset.shape[0])

    def packet(self, i: int) -> bytes:
        """The captured bytes of packet i (a copy; for slow paths and tests)."""
        start = int(self.offset[i])
        return self.buffer[start : start + int(self.caplen[i])].tobytes()

    @staticmethod
    def from_packets(
        packets: list[bytes],
        ts_ns: list[int] | np.ndarray,
        linktype: int | list[int],
        wirelen: list[int] | None = None,
        first_index: int = 0,
    ) -> "PacketBatch":
        """Build a batch from a list of packets (live capture, tests)."""
        n = len(packets)
        caplen = np.fromiter((len(p) for p in packets), dtype=np.int32, count=n)
        offset = np.zeros(n, dtype=np.int64)
        if n:
            np.cumsum(caplen[:-1], out=offset[1:])
        buffer = np.frombuffer(b"".join(packets), dtype=np.uint8)
        if isinstance(linktype, int):
            lt = np.full(n, linktype, dtype=np.uint16)
        else:
            lt = np.asarray(linktype, dtype=np.uint16)
        wl = caplen.copy() if wirelen is None else np.asarray(wirelen, dtype=np.int32)
        return PacketBatch(buffer, offset, caplen, wl, np.asarray(ts_ns, dtype=np.int64), lt, first_index)


def byte_rows(source: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """Bytes ``at[i]`` .. ``at[i] + width - 1`` of the uint8 buffer ``source`` as row i of a
    C-contiguous (n, width) uint8 array; every window must lie inside ``source``.

    One gather of ``width``-byte void items through an overlapping view (item i is bytes
    i .. i + width - 1): numpy copies each as one item, about as fast as a one-byte gather,
    where indexing rows of a 2-D strided view copies byte by byte (twice the time here).
    Record headers (``capture/files.py``) and the decoder's header and payload windows are read
    this way.
    """
    items = max(source.shape[0] - width + 1, 0)
    if at.shape[0] == 0 or items == 0:
        return np.zeros((at.shape[0], width), dtype=np.uint8)
    if not source.flags.c_contiguous:  # the overlapping view needs the bytes in one run
        source = np.ascontiguousarray(source)
    view = np.ndarray((items,), dtype=f"V{width}", buffer=source, offset=0, strides=(1,))
    return view[at].view(np.uint8).reshape(at.shape[0], width)
