"""batch.byte_rows: fixed-width byte windows of a buffer, one row per position."""

from __future__ import annotations

import numpy as np

from inspector.batch import byte_rows


def test_rows_are_the_bytes_at_each_position_up_to_the_last_whole_window():
    source = np.frombuffer(bytes(range(256)) * 3, dtype=np.uint8)
    for width in (1, 4, 14, 16, 28, 40):
        at = np.array([0, 1, 7, 255, 300, source.size - width, 5, 5], dtype=np.int64)
        rows = byte_rows(source, at, width)
        assert rows.shape == (at.size, width) and rows.dtype == np.uint8 and rows.flags.c_contiguous
        for i, p in enumerate(at.tolist()):
            assert rows[i].tobytes() == source[p : p + width].tobytes(), (width, p)
        # Contiguous rows read as big-endian words where the bytes are.
        if width == 16:
            words = rows.view(">u4")
            assert int(words[2, 1]) == int.from_bytes(source[11:15].tobytes(), "big")


def test_no_positions_or_a_buffer_shorter_than_the_window_give_an_empty_shaped_result():
    source = np.arange(10, dtype=np.uint8)
    assert byte_rows(source, np.zeros(0, dtype=np.int64), 4).shape == (0, 4)
    assert byte_rows(np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64), 4).shape == (0, 4)
    assert byte_rows(source, np.zeros(0, dtype=np.int64), 12).shape == (0, 12)


def test_a_slice_of_a_larger_buffer_and_a_strided_one_read_their_own_bytes():
    whole = np.frombuffer(bytes(range(200)), dtype=np.uint8)
    part = whole[37:150]
    at = np.array([0, 5, part.size - 8], dtype=np.int64)
    assert [r.tobytes() for r in byte_rows(part, at, 8)] == [part[p : p + 8].tobytes() for p in at.tolist()]
    strided = whole[::2]
    at = np.array([0, 5, strided.size - 4], dtype=np.int64)
    assert [r.tobytes() for r in byte_rows(strided, at, 4)] == [strided[p : p + 4].tobytes() for p in at.tolist()]
