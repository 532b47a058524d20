"""The hash grouping kernel against a plain Python grouping of the same keys."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymize._hashgroup import HASH_GROUP_MAX, hash_roll_up

Parts = tuple[list[npt.NDArray[Any]], list[npt.NDArray[np.int32]], list[int], npt.NDArray[np.int64]]


def reference(parts: Parts) -> tuple[list[int], list[int]]:
    """Each distinct key's first position and its weights' sum, in order of first appearance."""
    values, luts, cards, weights = parts
    first: dict[int, int] = {}
    totals: dict[int, int] = {}
    for position in range(weights.size):
        key = 0
        for part_values, lut, card in zip(values, luts, cards, strict=True):
            key = key * card + int(lut[part_values[position]])
        first.setdefault(key, position)
        totals[key] = totals.get(key, 0) + int(weights[position])
    return list(first.values()), list(totals.values())


def random_parts(rng: np.random.Generator, size: int, count: int, dtype: type[Any], card: int) -> Parts:
    """``count`` parts over ``size`` positions: chunk values below 500 and lookup tables onto ``card``
    labels, so that distinct chunk values share labels and keys repeat."""
    values = [rng.integers(0, 500, size).astype(dtype) for _ in range(count)]
    luts = [rng.integers(0, card, 500).astype(np.int32) for _ in range(count)]
    weights = rng.integers(1, 1000, size).astype(np.int64)
    return values, luts, [card] * count, weights


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(
    size=st.integers(0, 3000),
    count=st.integers(1, 4),
    card=st.integers(2, 40),
    narrow=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_groups_match_a_plain_grouping(size: int, count: int, card: int, narrow: bool, seed: int) -> None:
    parts = random_parts(np.random.default_rng(seed), size, count, np.int32 if narrow else np.intp, card)
    representative, totals = hash_roll_up(*parts)
    expected_first, expected_totals = reference(parts)
    assert representative.tolist() == expected_first
    assert totals.tolist() == expected_totals
    assert int(totals.sum()) == int(parts[3].sum())


def test_keys_up_to_63_bits_are_not_confused() -> None:
    # Two parts of 2^31 labels each, so keys reach 2^62: keys that differ only in their high or
    # their low half stay apart, and each keeps its own total.
    values = [np.array([0, 1, 0, 1, 2, 2], dtype=np.intp), np.array([0, 0, 1, 1, 2, 0], dtype=np.intp)]
    luts = [np.array([0, 2**31 - 1, 7], dtype=np.int32), np.array([0, 2**31 - 1, 7], dtype=np.int32)]
    weights = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    representative, totals = hash_roll_up(values, luts, [2**31, 2**31], weights)
    assert representative.tolist() == [0, 1, 2, 3, 4, 5]
    assert totals.tolist() == [1, 2, 3, 4, 5, 6]


def test_the_workspace_is_left_empty_between_calls_of_any_size() -> None:
    rng = np.random.default_rng(7)
    # Large first (the workspace grows), then small and large again: a slot a call left filled
    # would merge a later call's key into a group of the earlier one.
    for size in [20_000, 10, 5_000, 1, 20_000, 0, 300]:
        parts = random_parts(rng, size, 3, np.intp, 30)
        representative, totals = hash_roll_up(*parts)
        assert (representative.tolist(), totals.tolist()) == reference(parts)


def test_threads_group_concurrently_in_workspaces_of_their_own() -> None:
    rng = np.random.default_rng(11)
    inputs = [random_parts(rng, int(rng.integers(1000, 6000)), 2, np.intp, 40) for _ in range(24)]
    expected = [reference(parts) for parts in inputs]

    def group(parts: Parts) -> tuple[list[int], list[int]]:
        representative, totals = hash_roll_up(*parts)
        return representative.tolist(), totals.tolist()

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(group, inputs)) == expected


def test_no_part_or_parts_of_another_length_are_refused() -> None:
    # The kernel indexes without bounds checks: a part shorter than the weights would be read past
    # its end, and it reads the first part unconditionally.
    values = [np.zeros(3, dtype=np.intp), np.zeros(2, dtype=np.intp)]
    luts = [np.zeros(1, dtype=np.int32)] * 2
    with pytest.raises(ValueError, match="one value per position"):
        hash_roll_up(values, luts, [2, 2], np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="a lookup table and a card"):
        hash_roll_up(values[:1], luts, [2], np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="one part at least"):
        hash_roll_up([], [], [], np.ones(3, dtype=np.int64))


def test_more_positions_than_the_workspace_takes_are_refused() -> None:
    size = HASH_GROUP_MAX + 1
    values = [np.zeros(size, dtype=np.intp)]
    luts = [np.zeros(1, dtype=np.int32)]
    with pytest.raises(ValueError, match="at most"):
        hash_roll_up(values, luts, [2], np.ones(size, dtype=np.int64))


def test_numba_is_imported_only_when_a_roll_up_is_hashed() -> None:
    # Importing Numba costs a process about 85 MB; the service and exports that never hash must
    # not carry it.
    probe = (
        "import sys, numpy as np, api.app, anonymize\n"
        "from anonymize._hashgroup import hash_roll_up\n"
        "before = 'numba' in sys.modules\n"
        "hash_roll_up([np.arange(3)], [np.arange(3, dtype=np.int32)], [3], np.ones(3, dtype=np.int64))\n"
        "print(before, 'numba' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"]


def test_without_a_writable_cache_the_kernel_is_compiled_in_the_process() -> None:
    # A read-only install: neither the package's folder nor the home folder can be written, and
    # NUMBA_CACHE_DIR is not set. The tests run as root, who writes anyway, so Numba's refusal is
    # made the way it comes about: none of its cache locators finds a place.
    probe = (
        "import numpy as np\n"
        "import numba.core.caching as caching\n"
        "for locator in caching.CacheImpl._locator_classes:\n"
        "    locator.from_function = classmethod(lambda cls, py_func, py_file: None)\n"
        "from anonymize._hashgroup import hash_roll_up\n"
        "print(hash_roll_up([np.array([0, 1, 0])], [np.arange(2, dtype=np.int32)], [2],"
        " np.ones(3, dtype=np.int64))[1].tolist())\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=environment
    )
    assert result.stdout.split() == ["[2,", "1]"]
