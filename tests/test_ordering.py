"""inspector.ordering: stable orders and uniques of integer keys, equal to numpy's own."""

import numpy as np
import pytest

from inspector import ordering
from inspector.ordering import (
    SMALL_KEYS, index_bits, run_changes, run_first_positions, run_starts, sorted_runs, stable_argsort, unique_first,
    unique_inverse,
)  # fmt: skip

DTYPES = (np.int64, np.uint64, np.int32, np.uint32, np.int16, np.uint8)


def _keys(rng, n: int, dtype, highest: int, negative: bool = False) -> np.ndarray:
    info = np.iinfo(dtype)
    highest = min(highest, int(info.max))
    lowest = max(-highest, int(info.min)) if negative else 0
    return rng.integers(lowest, highest, n, endpoint=True, dtype=np.int64 if highest < 2**63 else np.uint64).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_argsort_is_numpys_stable_argsort(dtype):
    # Sizes on both sides of SMALL_KEYS and of a 16-bit index; keys from all-equal to 62 bits.
    for n in (0, 1, 2, SMALL_KEYS - 1, SMALL_KEYS, 5000, 70000):
        for highest in (1, 40, 2**20, 2**45, 2**62):
            rng = np.random.default_rng(n * 7 + highest % 1000)
            keys = _keys(rng, n, dtype, highest)
            got = stable_argsort(keys)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"), err_msg=f"n={n} highest={highest}")


def test_keys_too_wide_or_negative_fall_back_with_the_same_answer():
    rng = np.random.default_rng(3)
    n = 4096  # index_bits 12: keys from 2**52 on leave no room for the index
    wide = rng.integers(2**52, 2**63, n, dtype=np.int64)
    wide[::3] = wide[0]  # ties, which must stay in row order
    np.testing.assert_array_equal(stable_argsort(wide), np.argsort(wide, kind="stable"))
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    hashes[1::2] = hashes[0]
    np.testing.assert_array_equal(stable_argsort(hashes), np.argsort(hashes, kind="stable"))
    negative = rng.integers(-50, 50, n)
    np.testing.assert_array_equal(stable_argsort(negative), np.argsort(negative, kind="stable"))


def test_the_widest_key_that_fits_beside_the_index():
    n = 1024
    bits = index_bits(n)
    assert bits == 10
    top = (1 << (64 - bits)) - 1
    keys = np.array([top, 0, top, 1, top - 1, 0] * (n // 6) + [top] * (n % 6), dtype=np.uint64)
    np.testing.assert_array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))


def test_index_bits():
    assert [index_bits(n) for n in (0, 1, 2, 3, 4, 5, 65536, 65537)] == [1, 1, 1, 2, 2, 3, 16, 17]


def test_non_integer_keys_are_argsorted_as_numpy_does():
    keys = np.array([0.5, -1.0, 0.5, 2.0] * 300)
    np.testing.assert_array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))


def test_uniques_are_numpys():
    for n in (0, 1, 7, 3000, 20000):
        rng = np.random.default_rng(n)
        keys = rng.integers(0, max(1, n // 5), n)
        values, first = unique_first(keys)
        want_values, want_first = np.unique(keys, return_index=True)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(first, want_first)
        values, inverse = unique_inverse(keys)
        want_values, want_inverse = np.unique(keys, return_inverse=True)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(inverse, want_inverse.reshape(-1))
        np.testing.assert_array_equal(values[inverse], keys)


def test_sorted_runs_mark_where_each_key_begins():
    keys = np.array([5, 3, 5, 3, 9, 3] * 200)
    order, new_value = sorted_runs(keys)
    np.testing.assert_array_equal(keys[order][new_value], [3, 5, 9])
    assert np.flatnonzero(new_value).tolist() == [0, 600, 1000]
    np.testing.assert_array_equal(order[:3], [1, 3, 5])  # ties in row order


def test_the_composite_sort_is_what_runs_for_keys_that_fit(monkeypatch):
    # The point of the module: no stable argsort where the composite fits (and one where not).
    calls = []
    real = np.argsort

    def counting_argsort(a, *args, **kwargs):
        calls.append(kwargs.get("kind"))
        return real(a, *args, **kwargs)

    monkeypatch.setattr(ordering.np, "argsort", counting_argsort)
    keys = np.arange(SMALL_KEYS * 4, dtype=np.int64)[::-1] % 97
    np.testing.assert_array_equal(stable_argsort(keys), real(keys, kind="stable"))
    assert calls == []
    stable_argsort(keys + (1 << 60))  # wider than the 64 - 11 bits an index of 2048 leaves
    assert calls == ["stable"]


def test_run_first_positions_give_each_element_its_rank_within_its_key():
    keys = np.array([7, 2, 7, 7, 2, 9, 7])
    order, new_value = sorted_runs(keys)
    first = run_first_positions(new_value)
    assert first.tolist() == [0, 0, 2, 2, 2, 2, 6]
    rank = np.empty(keys.size, dtype=np.int64)
    rank[order] = np.arange(keys.size) - first
    assert rank.tolist() == [0, 0, 1, 2, 1, 0, 3]  # earlier equal keys in row order


def test_run_starts_begin_each_run_of_equal_key_tuples():
    rng = np.random.default_rng(3)
    a = np.sort(rng.integers(0, 4, 200))
    b = rng.integers(0, 2, 200)
    expected = [k for k in range(200) if k == 0 or (a[k], b[k]) != (a[k - 1], b[k - 1])]
    assert run_starts(a, b).tolist() == expected
    assert np.flatnonzero(run_changes(a, b)).tolist() == expected
    assert run_starts(a).tolist() == [k for k in range(200) if k == 0 or a[k] != a[k - 1]]
    empty = np.zeros(0, dtype=np.int64)
    assert run_starts(empty, empty).tolist() == [] and run_changes(empty).tolist() == []
