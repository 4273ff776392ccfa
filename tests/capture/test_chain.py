"""Record chains of pcap and pcapng buffers (capture/chain.py) against a struct-based walk.

The buffers are byte strings built here: records of random lengths, some longer than the
module's copy window, so headers fall on both sides of every window boundary; cut at many
places near the end; in both byte orders.
"""

from __future__ import annotations

import random
import struct

import pytest

from inspector.capture import chain


def pcap_buffer(lengths: list[int], endian: str) -> bytes:
    parts = []
    for caplen in lengths:
        parts.append(struct.pack(endian + "IIII", 1, 2, caplen, caplen))
        parts.append(bytes([caplen & 0xFF]) * caplen)
    return b"".join(parts)


def expected_pcap(buf: bytes, pos: int, limit: int, endian: str) -> tuple[list[int], int, bool]:
    offsets, off = [], pos
    while len(offsets) < limit and off + 16 <= len(buf):
        offsets.append(off)
        off += 16 + struct.unpack_from(endian + "I", buf, off + 8)[0]
    return offsets, off, len(offsets) < limit


def pcap(buf, pos: int, limit: int, endian: str = "<") -> tuple[list[int], int, bool]:
    return chain.record_offsets(memoryview(buf), pos, limit, endian == ">", False)


def pcapng(buf, pos: int, limit: int, endian: str = "<") -> tuple[list[int], int, bool]:
    return chain.record_offsets(memoryview(buf), pos, limit, endian == ">", True)


def epb(body_len: int, endian: str, block_type: int = 6) -> bytes:
    total = 32 + body_len
    return struct.pack(endian + "IIIIIII", block_type, total, 0, 0, 0, body_len, body_len) + b"\x00" * body_len + struct.pack(endian + "I", total)


def expected_epbs(buf: bytes, pos: int, limit: int, endian: str) -> tuple[list[int], int, bool]:
    offsets, off = [], pos
    while len(offsets) < limit:
        if off + 8 > len(buf):
            return offsets, off, True
        block_type, length = struct.unpack_from(endian + "II", buf, off)
        if block_type != 6 or length < 32:
            return offsets, off, False
        offsets.append(off)
        off += length
    return offsets, off, False


def mixed_lengths(seed: int) -> list[int]:
    rng = random.Random(seed)
    lengths = [rng.choice((0, 1, 54, 60, 1514, 9000, rng.randrange(0, 70_000))) for _ in range(400)]
    # Records longer than a whole window, and enough bytes to cross several windows.
    lengths[50] = chain.WINDOW_BYTES + 3
    lengths[200] = 2 * chain.WINDOW_BYTES
    return lengths


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_records_match_a_struct_walk_across_windows_and_cuts(endian):
    buf = pcap_buffer(mixed_lengths(1), endian)
    assert len(buf) > 4 * chain.WINDOW_BYTES
    got = pcap(buf, 0, 1_000_000, endian)
    assert got == expected_pcap(buf, 0, 1_000_000, endian)
    assert len(got[0]) == 400 and got[1] == len(buf) and got[2]
    for limit in (1, 7, 399, 400, 401):
        assert pcap(buf, 0, limit, endian) == expected_pcap(buf, 0, limit, endian)
    start = got[0][123]  # a walk may begin at any record
    assert pcap(buf, start, 50, endian) == expected_pcap(buf, start, 50, endian)
    for cut in range(len(buf) - 40, len(buf)):  # the file ends inside the last records
        view = memoryview(buf)[:cut]
        assert pcap(view, 0, 1_000_000, endian) == expected_pcap(buf[:cut], 0, 1_000_000, endian)


def test_pcap_records_of_a_lying_length_jump_past_the_end():
    buf = pcap_buffer([10, 20], "<") + struct.pack("<IIII", 1, 2, 0xFFFFFFFF, 0) + b"tail"
    assert pcap(buf, 0, 100) == ([0, 26, 62], 62 + 16 + 0xFFFFFFFF, True)


def test_pcap_records_of_an_empty_or_headerless_buffer():
    assert pcap(b"", 0, 10) == ([], 0, True)
    assert pcap(b"\x00" * 15, 0, 10) == ([], 0, True)
    assert pcap(b"\x00" * 40, 0, 0) == ([], 0, False)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_packet_blocks_match_a_struct_walk_across_windows_and_cuts(endian):
    rng = random.Random(2)
    blocks = [epb(rng.choice((0, 60, 1514, 9000, rng.randrange(0, 70_000))) & ~3, endian) for _ in range(300)]
    blocks[40] = epb(chain.WINDOW_BYTES + 4, endian)
    buf = b"".join(blocks)
    got = pcapng(buf, 0, 10_000, endian)
    assert got == expected_epbs(buf, 0, 10_000, endian) and len(got[0]) == 300 and got[2]
    for limit in (1, 299, 300):
        assert pcapng(buf, 0, limit, endian) == expected_epbs(buf, 0, limit, endian)
    for cut in range(len(buf) - 12, len(buf)):
        view = memoryview(buf)[:cut]
        assert pcapng(view, 0, 10_000, endian) == expected_epbs(buf[:cut], 0, 10_000, endian)


@pytest.mark.parametrize(
    ("odd_block", "why"),
    [(epb(4, "<", block_type=3), "a simple packet block"), (struct.pack("<II", 6, 28) + b"\x00" * 20, "an EPB shorter than 32 bytes")],
)
def test_pcapng_run_stops_at_a_block_the_caller_must_read(odd_block, why):
    buf = epb(100, "<") + epb(8, "<") + odd_block + epb(100, "<")
    offsets, after, header_cut = pcapng(buf, 0, 100)
    assert (offsets, after, header_cut) == ([0, 132], 132 + 40, False), why
