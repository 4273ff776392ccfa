"""Read capture records with dpkt, the independent reader the tests compare inspector against."""

from __future__ import annotations

import os
from collections.abc import Iterator

import dpkt

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def dpkt_frames(path: str | os.PathLike) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp in seconds, link type, frame bytes) of every record of a pcap or pcapng file
    (recognised by its first four bytes). dpkt reads pcapng files with one link type per file."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
        handle.seek(0)
        reader = dpkt.pcapng.Reader(handle) if magic == PCAPNG_MAGIC else dpkt.pcap.Reader(handle)
        link = reader.datalink()
        for ts, frame in reader:
            yield ts, link, frame
