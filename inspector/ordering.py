"""Stable orderings of integer keys through one plain sort.

numpy's stable argsort of 32- and 64-bit integers is a timsort (radix sort only for types of 16
bits or less), while ``np.sort`` of the same values takes its default quicksort kind, which on
x86 machines with AVX-512 or AVX2 is a vectorised sort (numpy 2's x86-simd-sort). Measured on
this project's 2-core benchmark VM (AVX-512), 60,000 flow-key hashes of ~4,000 flows: stable
argsort 4.6 ms, ``np.sort`` of the composite keys below, index read back included, 1.0 ms.

When a key leaves enough of a 64-bit word free for a row index, sorting ``key << bits | index``
gives the stable order at once: the composite values are all distinct, so their order is the
only one, and the index (the low ``bits``), which breaks ties in row order, is the answer.
Weakness: a key too wide for the bits the index leaves (more than ``64 - bits`` bits) falls back
to the stable argsort itself, as fast as before; on a machine without the vectorised sort both
are comparison sorts and the gain is smaller. Keys that arrive as a few long sorted runs are
the timsort's best case (near-linear): measured on the benchmark's own arrays, the finished
flows' ids (0.1 ms against 0.5 ms), the activity buckets' ranges (0.4 against 2.5 ms over a run)
and the RTP jitter queue (equal) keep ``np.argsort(kind="stable")``; the flow table's hashes
(31 -> 9 ms over a run), the payload packets' flow slots (21 -> 6 ms), the flows' first payload
packets (``np.unique`` with ``return_index`` 45 -> 12 ms) and the activity buckets' (flow, bucket)
keys (``np.unique`` with ``return_inverse`` 52 -> 37 ms) come in no order and use this module.
"""

from __future__ import annotations

import numpy as np

#: Below this many keys the stable argsort is called as it is: the composite's extra passes
#: cost more than they save.
SMALL_KEYS = 512


def index_bits(n: int) -> int:
    """Bits that hold every row index 0 .. n - 1 (at least one)."""
    return max(1, (n - 1).bit_length())


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` (int64) of a 1-D array of integer keys."""
    n = keys.shape[0]
    if n < SMALL_KEYS or keys.dtype.kind not in "iu":
        return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    bits = index_bits(n)
    lowest, highest = int(keys.min()), int(keys.max())
    if lowest < 0 or highest >= 1 << (64 - bits):
        return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    composite = keys.astype(np.uint64)
    composite <<= np.uint64(bits)
    composite |= np.arange(n, dtype=np.uint64)
    composite.sort()
    composite &= np.uint64((1 << bits) - 1)
    return composite.view(np.int64)  # indices below 2**bits: the same values as int64


def sorted_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, new_value) of integer ``keys``: ``order`` their stable argsort, ``new_value``
    (bool, in that order) True where a key value begins its run of equal keys."""
    order = stable_argsort(keys)
    ordered = keys[order]
    new_value = np.empty(ordered.shape[0], dtype=bool)
    new_value[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_value[1:])
    return order, new_value


def run_first_positions(new_value: np.ndarray) -> np.ndarray:
    """For each position of a ``sorted_runs`` order, the position where its run of equal keys
    begins (``position - run_first_positions(...)`` is an element's rank within its key)."""
    positions = np.arange(new_value.shape[0])
    return np.maximum.accumulate(np.where(new_value, positions, 0))


def unique_first(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True)`` of integer ``keys``: the distinct values in
    ascending order and where each first occurs (int64)."""
    order, new_value = sorted_runs(keys)
    first = order[new_value]
    return keys[first], first


def unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` of 1-D integer ``keys``: the distinct values in
    ascending order and each key's position among them (int64)."""
    order, new_value = sorted_runs(keys)
    inverse = np.empty(order.shape[0], dtype=np.int64)
    inverse[order] = np.cumsum(new_value) - 1
    return keys[order[new_value]], inverse


def run_changes(*keys: np.ndarray) -> np.ndarray:
    """True where a row's tuple of ``keys`` differs from the row before it, and at row 0: the
    first row of each run of equal consecutive tuples (rows already grouped)."""
    change = np.zeros(keys[0].shape[0], dtype=bool)
    if keys[0].shape[0]:
        change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return change


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal consecutive tuples of ``keys`` (``run_changes``)."""
    return np.flatnonzero(run_changes(*keys))


__all__ = [
    "SMALL_KEYS", "index_bits", "run_changes", "run_first_positions", "run_starts", "sorted_runs",
    "stable_argsort", "unique_first", "unique_inverse",
]  # fmt: skip
