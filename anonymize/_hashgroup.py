"""Grouping by hashing, in native code: the lattice search's roll-ups that need no order.

NumPy has no hash aggregation, so ``_lattice._group`` sorts: the keys built by a gather per chunk,
a SIMD sort of them packed with their positions, then run starts and segmented sums, a dozen
passes over the combinations. When a roll-up only needs each distinct key's record count and one
position holding it — k-anonymity counted in records, without a sensitive column: classes are then
the groups, in any order — one kernel builds the keys and groups them through an open addressing
hash table. On the search's tables it is 1.4 to 2.6 times faster than the sort's path (8,000 to
130,000 combinations), and it takes a quarter off the search of Adult's 100,000-row sample
(docs/benchmarks.md, decision 69).

The kernel is compiled by Numba, a JIT compiler for NumPy code used across the scientific Python
stack: NumPy cannot express a probe loop, and Numba keeps the loop here, readable as Python, with
no build step. Its machine code is cached on disk (``cache=True``): a process loads it in about
0.2 s on its first call instead of compiling it in about 0.5 s. Numba is imported on that first
call only (``_compiled``), which a search makes before its clock starts (``prepare``).

The table is a workspace kept per thread (reports run searches in worker threads) and reused from
one call to the next: a fresh table and fresh buffers for every call made the search 3 to 8 % slower
(cold memory). Only the slots a call filled are emptied after it, so a call costs O(its keys)
whatever the workspace's size. Keys are non-negative (``-1`` marks an empty slot); the hash is
Fibonacci hashing (the product with 2^64/φ, its top bits), with linear probing in a table at most
half full.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HASH_GROUP_MAX", "hash_roll_up", "prepare"]

# Bounds each thread's workspace to 8 MiB (2^18 slots and four buffers of 2^17); larger tables,
# which only a large input has, are grouped by sorting, whose memory is freed after each call.
HASH_GROUP_MAX = 1 << 17

_EMPTY = -1
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


def _roll_up_kernel(
    values: Any,
    luts: Any,
    cards: Any,
    weights: Any,
    bits: int,
    keys: Any,
    slot_keys: Any,
    slot_groups: Any,
    unique_slots: Any,
    representative: Any,
    totals: Any,
) -> int:  # pragma: no cover -- compiled by Numba (``_compiled``); its Python body never runs
    """Group the positions of ``values`` by their key (each part's ``luts[c][values[c][i]]``, in
    mixed radix ``cards``, the first part most significant) in the first 2^``bits`` slots; write
    each group's first position and total weight, in order of first appearance, and return the
    number of groups. Leaves the slots empty.

    Numba does not check indexes: the caller guarantees that every value indexes its lookup table
    and every label is in ``[0, card)`` (so every key is non-negative, never the empty slot's
    mark). ``_lattice`` builds them so: chunk values are below the chunk's value space, the size of
    each of its lookup tables, whose labels are dense numbers below the card."""
    size = weights.size
    # Part by part: a tuple indexed once per part, not once per position.
    first_values, first_lut = values[0], luts[0]
    for position in range(size):
        keys[position] = first_lut[first_values[position]]
    for part in range(1, len(values)):
        part_values, part_lut, card = values[part], luts[part], cards[part]
        for position in range(size):
            keys[position] = keys[position] * card + part_lut[part_values[position]]
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    groups = 0
    for position in range(size):
        key = keys[position]
        slot = np.intp((np.uint64(key) * _FIBONACCI) >> shift)
        while True:
            held = slot_keys[slot]
            if held == key:
                totals[slot_groups[slot]] += weights[position]
                break
            if held == _EMPTY:
                slot_keys[slot] = key
                slot_groups[slot] = groups
                unique_slots[groups] = slot
                representative[groups] = position
                totals[groups] = weights[position]
                groups += 1
                break
            slot = (slot + 1) & mask
    for group in range(groups):
        slot_keys[unique_slots[group]] = _EMPTY
    return groups


@functools.cache
def _compiled() -> Callable[..., int]:
    """The kernel in machine code, compiled (or loaded from Numba's cache) on first use. Numba is
    imported here, not with the module: importing it adds about 85 MB to a process (LLVM), which
    a process that never groups by hashing — the API serving requests, or exports whose searches
    all keep an order — need not carry.

    Where Numba finds no writable place for its cache (a read-only install, no writable home and
    no ``NUMBA_CACHE_DIR``), it refuses to cache; the kernel is then compiled in each process."""
    import numba

    kernel: Callable[..., int]
    try:
        kernel = numba.njit(nogil=True, cache=True)(_roll_up_kernel)
    except RuntimeError:  # "cannot cache function …: no locator available"
        kernel = numba.njit(nogil=True)(_roll_up_kernel)
    return kernel


class _Workspace(threading.local):
    """This thread's table and output buffers, grown on demand up to ``HASH_GROUP_MAX`` keys."""

    def __init__(self) -> None:
        self.capacity = 0
        self.keys = np.zeros(0, dtype=np.int64)
        self.slot_keys = np.zeros(0, dtype=np.int64)
        self.slot_groups = np.zeros(0, dtype=np.intp)
        self.unique_slots = np.zeros(0, dtype=np.intp)
        self.representative = np.zeros(0, dtype=np.intp)
        self.totals = np.zeros(0, dtype=np.int64)

    def reserve(self, size: int) -> None:
        if size <= self.capacity:
            return
        capacity = max(size, 1 << 12)
        slots = 1 << (2 * capacity - 1).bit_length()
        self.keys = np.zeros(capacity, dtype=np.int64)
        self.slot_keys = np.full(slots, _EMPTY, dtype=np.int64)
        self.slot_groups = np.zeros(slots, dtype=np.intp)
        self.unique_slots = np.zeros(capacity, dtype=np.intp)
        self.representative = np.zeros(capacity, dtype=np.intp)
        self.totals = np.zeros(capacity, dtype=np.int64)
        self.capacity = capacity


_workspace = _Workspace()


def prepare(parts: int) -> None:
    """Compile the kernel, or load it from Numba's cache, for 1 to ``parts`` parts of 8-byte values
    (the signatures a search uses; Numba makes one per tuple length and dtype on its first call).

    A search calls this before its clock starts, so ``search_ms`` is the search's own time in a
    new process too: the first call of a process takes about 0.2 s (importing Numba, loading the
    cached code), each further signature about 4 ms from the cache or 0.4 s to compile."""
    for count in range(1, parts + 1):
        values = tuple(np.zeros(1, dtype=np.intp) for _ in range(count))
        luts = tuple(np.zeros(1, dtype=np.int32) for _ in range(count))
        hash_roll_up(values, luts, (1,) * count, np.ones(1, dtype=np.int64))


def hash_roll_up(
    values: Sequence[npt.NDArray[np.signedinteger[Any]]],
    luts: Sequence[npt.NDArray[np.int32]],
    cards: Sequence[int],
    weights: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """Group positions (at most ``HASH_GROUP_MAX``) by the key ``Σ luts[c][values[c][i]]`` in mixed
    radix ``cards`` (the first part most significant; their product below 2^63): one position of
    each group and the sum of ``weights`` over it, in order of first appearance (not of the keys).

    ``values`` must share one dtype (a table's chunks do), as must ``luts``. Every value must index
    its lookup table, and every label be in ``[0, card)`` (see ``_roll_up_kernel``); no part, or
    parts of another length, raise ``ValueError``. (With no part every key is 0: ``_group``'s
    dense relabelling takes such a roll-up.)"""
    size = int(weights.size)
    if size > HASH_GROUP_MAX:
        raise ValueError(f"hash_roll_up takes at most {HASH_GROUP_MAX} positions, not {size}")
    if not values or len(luts) != len(values) or len(cards) != len(values):
        raise ValueError("hash_roll_up needs one part at least, each with a lookup table and a card")
    if any(part.size != size for part in values):
        raise ValueError("hash_roll_up needs one value per position in every part")
    workspace = _workspace
    workspace.reserve(size)
    groups = _compiled()(
        tuple(values),
        tuple(luts),
        np.asarray(cards, dtype=np.int64),
        weights,
        max(2 * size - 1, 1).bit_length(),
        workspace.keys,
        workspace.slot_keys,
        workspace.slot_groups,
        workspace.unique_slots,
        workspace.representative,
        workspace.totals,
    )
    return workspace.representative[:groups].copy(), workspace.totals[:groups].copy()
