"""digest.py: SHA-256 of a file, or of what an open file reads, in READ_CHUNK pieces."""

from __future__ import annotations

import hashlib
import io

import pytest

from inspector.digest import READ_CHUNK, sha256_file, sha256_stream

DATA = bytes(range(256)) * (2 * READ_CHUNK // 256) + b"tail"  # two chunks and a bit


@pytest.mark.parametrize("size", [None, 0, 1, READ_CHUNK - 1, READ_CHUNK, READ_CHUNK + 1, len(DATA), len(DATA) + 9])
def test_a_stream_is_hashed_to_its_end_or_its_first_size_bytes(size):
    stream = io.BytesIO(DATA)
    expected = DATA if size is None else DATA[:size]
    assert sha256_stream(stream, size) == hashlib.sha256(expected).hexdigest()
    assert stream.tell() == len(expected)  # no byte read past the size


def test_a_stream_is_read_from_where_it_stands():
    stream = io.BytesIO(DATA)
    stream.seek(100)
    assert sha256_stream(stream, 50) == hashlib.sha256(DATA[100:150]).hexdigest()


def test_a_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert sha256_file(path) == hashlib.sha256(DATA).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
