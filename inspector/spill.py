"""Records and facts parked on disk while a capture is read.

Finished flows (``flowstore.FlowStore``) and activity buckets (``collect.ActivityCollector``) are
kept until the tables are built at the end of the run, and both grow with the capture's length:
~300 bytes per flow on the benchmark. A live capture that runs for hours, or a day-long file,
would hold them all in memory. Instead each keeps at most ``limit_bytes`` in memory and appends
the rest, as raw little-endian records under an integer key (``PartitionedRecords``: the flow
store uses one key, the buckets one per range of flow ids), to an anonymous temporary file (``tempfile``: in
``$TMPDIR``, removed by the OS when closed or when the process dies). The records come back
once, in the order written, when the tables are built. ``SpilledItems`` does the same for the
facts of the flows the classifier's cross-flow rules wait for (``labels.FlowLabeller``), as
pickled blocks of plain tuples.

Weakness: the tables are still built from every record at the end (the flows table holds one
row per flow), so the end of a run needs memory in proportion to its flows; what is bounded is
the memory held while packets are read.
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile

import numpy as np

from inspector.errors import InspectorError

#: What a store keeps in memory before it writes to its spill file (per store, per capture).
DEFAULT_LIMIT_BYTES = 8 << 20


class SpillFile:
    """An append-only file of ``dtype`` records; opened on the first write."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._file = None
        self.count = 0

    def append(self, records: np.ndarray) -> int:
        """Write the records at the end; returns the number of the first of them."""
        start = self.count
        if records.shape[0] == 0:
            return start
        if self._file is None:
            self._file = _temporary_file()
        try:
            self._file.write(np.ascontiguousarray(records, dtype=self.dtype).tobytes())
        except OSError as e:
            raise _cannot_write(e) from e
        self.count += records.shape[0]
        return start

    def read_range(self, start: int, out: np.ndarray) -> None:
        """Fill ``out`` with the records from number ``start`` on.

        Positional reads: the file's offset, which a forked child shares (``forked.py``),
        stays where the appends left it."""
        if out.shape[0] == 0:
            return
        self._file.flush()
        _read_at(self._file.fileno(), start * self.dtype.itemsize, out.view(np.uint8).reshape(-1))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.count = 0


def _read_at(fd: int, offset: int, into: np.ndarray) -> None:
    """Fill the byte array ``into`` from ``fd`` at ``offset`` (``os.preadv``: no seek)."""
    view = memoryview(into)
    done = 0
    while done < view.nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise InspectorError(f"temporary file: read {done} of {view.nbytes} bytes back")
        done += got


class PartitionedRecords:
    """Records appended in parts under integer keys (``collect.ActivityCollector``: one key per
    range of flow ids; ``flowstore.FlowStore``: one key), the newest up to ``limit_bytes`` in memory, the older ones in one
    ``SpillFile`` with an index of each key's blocks. ``read(key)`` returns one key's records in
    the order appended and keeps them, so a caller can go over the keys one at a time, twice,
    and never hold every record at once."""

    def __init__(self, dtype: np.dtype, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self.dtype = np.dtype(dtype)
        self.limit_bytes = limit_bytes
        self._spill = SpillFile(self.dtype)
        self._blocks: dict[int, list[tuple[int, int]]] = {}
        self._parts: dict[int, list[np.ndarray]] = {}
        self._counts: dict[int, int] = {}
        self._held = 0

    def __len__(self) -> int:
        return sum(self._counts.values())

    @property
    def spilled(self) -> int:
        """Records written to the file so far."""
        return self._spill.count

    @property
    def held_bytes(self) -> int:
        """Bytes of records held in memory now."""
        return self._held

    def keys(self) -> list[int]:
        return sorted(self._counts)

    def append(self, key: int, part: np.ndarray) -> None:
        if part.shape[0] == 0:
            return
        self._parts.setdefault(key, []).append(part)
        self._counts[key] = self._counts.get(key, 0) + part.shape[0]
        self._held += part.nbytes
        if self._held > self.limit_bytes:
            for k, parts in self._parts.items():
                for held in parts:
                    self._blocks.setdefault(k, []).append((self._spill.append(held), held.shape[0]))
            self._parts, self._held = {}, 0

    def take(self, key: int) -> np.ndarray:
        """``read(key)``, then forget the key (its parts in memory are released; its blocks stay
        in the file until ``close``)."""
        out = self.read(key)
        self._held -= sum(p.nbytes for p in self._parts.pop(key, ()))
        self._blocks.pop(key, None)
        self._counts.pop(key, None)
        return out

    def read(self, key: int) -> np.ndarray:
        """Every record of ``key`` (file blocks first: they were appended before the parts still
        in memory), as a new array."""
        out = np.empty(self._counts.get(key, 0), dtype=self.dtype)
        at = 0
        for start, count in self._blocks.get(key, ()):
            self._spill.read_range(start, out[at : at + count])
            at += count
        for part in self._parts.get(key, ()):
            out[at : at + part.shape[0]] = part
            at += part.shape[0]
        return out

    def close(self) -> None:
        self._spill.close()
        self._blocks, self._parts, self._counts, self._held = {}, {}, {}, 0


#: Items a ``SpilledItems`` keeps in memory before it writes them to its file.
DEFAULT_LIMIT_ITEMS = 4096
#: A pickled block in a ``SpilledItems`` file: its size in bytes and its number of items.
_BLOCK_HEADER = struct.Struct("<QQ")


def _cannot_write(e: OSError) -> InspectorError:
    return InspectorError(
        f"{tempfile.gettempdir()}: cannot write temporary data ({e.strerror}); set TMPDIR to a disk with room"
    )


def _temporary_file():
    try:
        return tempfile.TemporaryFile(prefix="inspector-spill-")
    except OSError as e:
        raise _cannot_write(e) from e


class SpilledItems:
    """Picklable items (plain tuples of str and int pickle fast) appended one by one: the newest
    ``limit_items`` in memory, older ones written to a temporary file in pickled blocks.
    ``take_all`` returns them all, in the order appended; ``take_blocks`` one block at a time.
    ``take_pickled_blocks`` and ``append_pickled`` move them to another store (a parallel
    worker's to the reading process's) as the pickled blocks they already are."""

    def __init__(self, limit_items: int | None = None) -> None:
        self.limit_items = DEFAULT_LIMIT_ITEMS if limit_items is None else limit_items
        self._items: list = []
        self._file = None
        self.spilled = 0

    def __len__(self) -> int:
        return self.spilled + len(self._items)

    def append(self, item) -> None:
        self._items.append(item)
        if len(self._items) > self.limit_items:
            self._write()

    def append_pickled(self, count: int, blob: bytes) -> None:
        """Append ``count`` items given as one pickled list (a block of ``take_pickled_blocks``),
        after every item appended before: kept in memory while the store stays within
        ``limit_items``, else written to the file as they are (never unpickled)."""
        if len(self._items) + count <= self.limit_items:
            self._items.extend(pickle.loads(blob))
            return
        if self._items:
            self._write()
        self._write_blob(count, blob)

    def _write(self) -> None:
        self._write_blob(len(self._items), pickle.dumps(self._items, protocol=pickle.HIGHEST_PROTOCOL))
        self._items = []

    def _write_blob(self, count: int, blob: bytes) -> None:
        if self._file is None:
            self._file = _temporary_file()
        try:
            self._file.write(_BLOCK_HEADER.pack(len(blob), count))
            self._file.write(blob)
        except OSError as e:
            raise _cannot_write(e) from e
        self.spilled += count

    def take_all(self) -> list:
        """Every item, the store emptied."""
        out: list = []
        for block in self.take_blocks():
            out.extend(block)
        return out

    def take_blocks(self):
        """Every item, in the order appended, as lists: the file's blocks, then the items held in
        memory. The store is emptied now; the file is read one block as each list is asked for,
        so a caller that handles a list before taking the next never holds every item."""
        file, held = self._detach()
        return _blocks(file, held)

    def take_pickled_blocks(self):
        """``take_blocks`` as (number of items, pickled list): the file's blocks as written, the
        items held in memory pickled last (at most ``limit_items + 1`` items a block)."""
        file, held = self._detach()
        return _pickled_blocks(file, held)

    def _detach(self) -> tuple:
        file, held = self._file, self._items
        self._file, self._items, self.spilled = None, [], 0
        return file, held


def _file_blocks(file):
    if file is None:
        return
    file.flush()
    file.seek(0)
    try:
        while header := file.read(_BLOCK_HEADER.size):
            size, count = _BLOCK_HEADER.unpack(header)
            yield count, file.read(size)
    finally:
        file.close()


def _blocks(file, held: list):
    for _, blob in _file_blocks(file):
        yield pickle.loads(blob)
    if held:
        yield held


def _pickled_blocks(file, held: list):
    yield from _file_blocks(file)
    if held:
        yield len(held), pickle.dumps(held, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = [
    "DEFAULT_LIMIT_BYTES", "DEFAULT_LIMIT_ITEMS", "PartitionedRecords", "SpillFile", "SpilledItems",
]  # fmt: skip
