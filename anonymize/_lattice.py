"""Optimal full-domain generalization: the lattice search.

A *node* (transformation) picks one generalization level per quasi-identifier; nodes form a lattice
ordered column by column (N ≤ N' iff every level of N is ≤ the level of N'; N' *generalizes* N).
The search returns the node of least ARX "Loss" among those that satisfy the privacy models within
the suppression limit. Ties: least loss, then lowest total level (height), then the smallest levels
in quasi-identifier order.

Working representation (the ideas of ARX's Flash)
--------------------------------------------------
* Values are integer-coded once; per column and level the hierarchy gives arrays label → parent.
  Tables hold the label numbers packed by *chunks*, groups of columns (``Layout``: a chunk's
  value is the mixed-radix number of its labels, at most ``CHUNK_SPACE`` values), so generalizing
  a chunk's columns and numbering the result is one gather through a small lookup table. Every
  table of a search packs the labels of the input's combinations (a rolled-up table those of one
  input combination per combination of its own: hierarchies nest, so it generalizes to the same
  labels), so a lookup table depends only on the target levels and is built once per (chunk,
  target levels).
* The engine never touches rows during the search. A *table* holds the distinct combinations of
  (quasi-identifier labels, sensitive value) at some node with their record counts. Classes are the
  runs of equal quasi-identifier labels; sizes, distinct sensitive values and entropies come from
  segmented sums. Because hierarchies nest, the classes of N are unions of the classes of any
  specialization P ≤ N, so N's table is rolled up from the smallest table already computed for a
  node below it (the input's distinct combinations at worst).
* Grouping is a dense relabelling (O(u + K), no sort) when the key space K is small. Otherwise,
  where classes need no order (no sensitive column or entities, so a class is a group), the key is
  built and grouped in one pass of a hash table in native code (``_hashgroup``); where they do, a
  sort (of keys packed with their positions where NumPy sorts with SIMD, else a radix sort on
  16-bit digits), with class sizes summed over the sorted runs.
* The loss of an acceptable node is only computed exactly when the bound of rule 6 with its own
  suppression does not already put it above the best loss found so far.

Why the result is optimal
-------------------------
Let ``leaves_q(N, r)`` be the number of leaves under record r's label for column q at N, D_q the
column's domain size and n the number of records. ARX's Loss for q is
``L_q = (I_q/D_q - n/D_q) / (n - n/D_q)`` with the integer numerator
``I_q(N) = Σ_kept leaves_q(N, r) + Σ_suppressed D_q``, and the total is
``Π_q (1 + L_q)^(1/m) - 1``, increasing in every I_q.

1. *Lower bound.* ``leaves_q ≤ D_q``, so ``I_q(N) ≥ B_q(N) = Σ_all r leaves_q(N, r)``: the numerator
   had nothing been suppressed. ``B_q`` depends only on q's level and the column's value counts, not
   on the classes, so ``LB(N)`` (the loss of N without suppression) is computed for the whole lattice
   up front, and ``Loss(N) ≥ LB(N)``.
2. *The bound is monotone.* Hierarchies nest, so a label's leaf count never falls as the level
   rises: N ≤ N' ⇒ LB(N) ≤ LB(N'). In particular a node's loss is at least the loss without
   suppression of each of its specializations.
3. *Visit by ascending bound.* Nodes are taken in order of (LB, height, index). Once the next node's
   bound exceeds the best loss found so far (plus 1e-9 of slack for rounding), every remaining node
   has Loss ≥ LB > best and the search stops. Every node with LB ≤ best was evaluated exactly or
   excluded by rules 4 to 6 below, so nothing better can be missed even though Loss with
   suppression is not monotone (generalizing can cut suppression and lower the loss).
4. *Dominance.* If an anonymous P suppresses nothing, its loss equals LB(P), and every N' > P has
   Loss(N') ≥ LB(N') ≥ LB(P) = Loss(P) with a larger height, so it cannot win: P's strict
   generalizations are skipped.
5. *Monotone privacy models* (tagging). With suppression, k-anonymity is monotone: merging classes
   keeps a record in a class of ≥ k, so the suppressed set only shrinks as N is generalized; the
   same holds for distinct l-diversity (a merge loses no distinct value) and for k counted in distinct
   entities (a merged class holds every entity of its parts, so at least as many as its largest
   part, and a class that had k keeps them). So an anonymous node makes
   all its generalizations anonymous and a non-anonymous one all its specializations non-anonymous.
   Entropy l-diversity is monotone only without suppression (entropy is concave: a merged class is
   at least as diverse as its least diverse part); with suppression a failing class merged into a
   passing one can take its records down with it, so then the search uses no tagging and evaluates
   every node the bound does not exclude.
6. *Unavoidable suppression* (monotone models only). If a generalization G of N is anonymous and
   suppresses s records, N suppresses at least those records (5.), and each adds at least
   ``gap_q = D_q - (largest leaf count of a label present at N's level)`` to I_q. So
   ``Loss(N) ≥ total(B_q(N) + s·gap_q)``, a sharper bound used to skip N (never to stop the scan).

Tagging only decides *which* nodes need an evaluation; with monotone models an unknown node is
settled by a binary search along an upward path (its successor of least bound, repeatedly): the
first anonymous node on the path bounds it from above, the last non-anonymous one tags everything
below. The tests compare the result with the exhaustive evaluation of every node
(``tests/anonymize/test_lattice.py`` on random tables, ``test_adult.py`` on Adult) and with a naive
reimplementation of the definitions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt

from anonymize._errors import LatticeTooLarge, NoAnonymousTransformation
from anonymize._hashgroup import HASH_GROUP_MAX, hash_roll_up, prepare

__all__ = [
    "Evaluation",
    "NodeEvaluator",
    "Problem",
    "SearchOutcome",
    "Table",
    "evaluate",
    "group_keys",
    "leaf_counts",
    "search",
    "sum_by_key",
]

Int64Array = npt.NDArray[np.int64]
IntpArray = npt.NDArray[np.intp]
# Labels, sensitive values and entities in tables: 4 bytes each (every domain is int32-coded on input).
CodeArray = npt.NDArray[np.int32]
# Per-column label numbers as given (4-byte codes) or unpacked from chunk values (intp).
LabelArray = npt.NDArray[np.signedinteger[Any]]
# Grouping keys: 4 bytes below 2^31 (half the memory traffic in the search's gathers and sorts), else 8.
KeyArray = npt.NDArray[np.signedinteger[Any]]
# A digit of a node's label key (``_label_parts``): a chunk's lookup table, its values, its card.
LabelPart = tuple[CodeArray, LabelArray, int]

MAX_LATTICE_NODES = 1 << 20
CACHE_BUDGET = 1 << 21
CHUNK_SPACE = 1 << 12
CACHE_MAX_SHARE = 0.75
NARROW_CHUNKS_FROM = 1 << 17
ENTROPY_TOLERANCE = 1e-9
LOSS_SLACK = 1e-9
_KEY_LIMIT = 1 << 62
_DENSE_MIN = 1 << 12
_DENSE_MAX = 1 << 26

_UNKNOWN, _ANONYMOUS, _NOT_ANONYMOUS = 0, 1, 2

# Evaluates a node (its levels, the loss cap) or returns None to leave it to the search's tables.
NodeEvaluator = Callable[[tuple[int, ...], float], "Evaluation | None"]


def group_keys(keys: KeyArray, bound: int) -> tuple[IntpArray, KeyArray, IntpArray]:
    """Group non-negative ``keys`` (all < ``bound``).

    Returns ``(inverse, unique, representative)``: group number of each key, the distinct keys in
    ascending order (group numbers follow this order) and one position holding each.
    """
    unique, representative, _, inverse = _group(keys, bound, None, inverse=True)
    if inverse is None:  # pragma: no cover -- asked for
        raise RuntimeError("no inverse")
    return inverse, unique, representative


def sum_by_key(keys: KeyArray, bound: int, weights: Int64Array) -> tuple[IntpArray, Int64Array]:
    """Group non-negative ``keys`` (all < ``bound``): one position holding each distinct key, in
    ascending key order, and the sum of ``weights`` over each group."""
    _, representative, totals, _ = _group(keys, bound, weights, inverse=False)
    return representative, totals


def _group(
    keys: KeyArray, bound: int, weights: Int64Array | None, *, inverse: bool
) -> tuple[KeyArray, IntpArray, Int64Array, IntpArray | None]:
    """Group non-negative ``keys`` (all < ``bound``): ``(unique, representative, totals, inverse)``.

    ``unique`` are the distinct keys in ascending order, ``representative`` one position holding
    each, ``totals`` the sum of ``weights`` over each group (the group sizes without weights), and
    ``inverse`` each key's group number, computed only when asked for. Small key spaces are grouped
    by a dense relabelling (no sort); larger ones by a sort (``_sort``), whose totals come from
    segmented sums in sorted order.
    """
    size = int(keys.size)
    if size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.astype(np.intp), empty, empty.astype(np.intp) if inverse else None
    if _dense(size, bound):
        sums = np.bincount(keys, weights=weights, minlength=bound)
        unique = np.flatnonzero(sums)
        totals = sums[unique].astype(np.int64)
        slot = np.empty(bound, dtype=np.intp)
        slot[keys] = np.arange(size, dtype=np.intp)
        representative = slot[unique]
        numbers = None
        if inverse:
            slot[unique] = np.arange(unique.size, dtype=np.intp)
            numbers = slot[keys]
        return unique.astype(np.int64, copy=False), representative, totals, numbers
    ordered, order = _sort(keys, bound)
    starts_mask = np.empty(size, dtype=np.bool_)
    starts_mask[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_mask[1:])
    starts = starts_mask.nonzero()[0]
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = size
    if weights is None:
        totals = (ends - starts).astype(np.int64)
    else:
        ends -= 1
        totals = weights[order].cumsum()[ends]
        totals[1:] = totals[1:] - totals[:-1]
    numbers = None
    if inverse:
        numbers = np.empty(size, dtype=np.intp)
        numbers[order] = np.cumsum(starts_mask, dtype=np.intp) - 1
    return ordered[starts], order[starts], totals, numbers


def _dense(size: int, bound: int) -> bool:
    """Whether ``_group`` relabels ``size`` keys below ``bound`` densely, without sorting."""
    return bound <= max(_DENSE_MIN, 2 * size) and bound <= _DENSE_MAX


def _may_hash(problem: Problem, base: Table) -> bool:
    """Whether a roll-up of a search from ``base`` can be hashed (``evaluate``) at all: its key
    space is largest at ``base``'s own levels (generalizing only merges labels), and a roll-up
    whose key space is at most ``_DENSE_MIN`` is relabelled densely whatever its size; so a search
    of small domains never loads the kernel (nor Numba, about 85 MB in a process)."""
    bound = math.prod(problem.cardinality[q][level] for q, level in enumerate(base.packed_levels))
    return bound > _DENSE_MIN


def _hashing_wins(size: int, bound: int) -> bool:
    """Whether ``hash_roll_up`` takes ``size`` keys below ``bound`` rather than ``_group``: where
    ``_group`` would sort, for tables whose chunk values are 8 bytes (below ``NARROW_CHUNKS_FROM``
    combinations: the kernel's signatures ``search`` prepares) and within ``HASH_GROUP_MAX``."""
    return size < NARROW_CHUNKS_FROM and size <= HASH_GROUP_MAX and not _dense(size, bound)


def _sort(keys: KeyArray, bound: int) -> tuple[KeyArray, IntpArray]:
    """Non-negative ``keys`` (all < ``bound``) in ascending order, and the stable permutation that
    sorts them: by one sort of the keys packed with their positions in the low bits (distinct
    values, so the order is stable by construction) where that is the faster sort on this machine
    (``_packed_sort_wins``), else — or if a key and a position do not fit in 63 bits — by a radix
    sort (``_radix_order``)."""
    shift = max(int(keys.size) - 1, 1).bit_length()
    if max(bound - 1, 1).bit_length() + shift <= 63 and _packed_sort_wins():
        return _packed_sort(keys, shift)
    order = _radix_order(keys, bound)
    return keys[order], order


def _packed_sort(keys: KeyArray, shift: int) -> tuple[KeyArray, IntpArray]:
    packed = keys.astype(np.int64)
    packed <<= shift
    packed |= np.arange(keys.size, dtype=np.int64)
    packed.sort()
    order = (packed & ((1 << shift) - 1)).astype(np.intp, copy=False)
    packed >>= shift
    return packed, order


@functools.cache
def _packed_sort_wins() -> bool:
    """Whether the packed sort beats the radix sort on this machine, decided once per process by
    timing both (8 to 10 ms, first uses included) on keys like the search's: 16,384 keys of 26
    bits, the best of three runs each.

    Where NumPy dispatches its 8-byte integer sort to the x86-simd-sort kernels, the packed sort
    was 1.7 to 2.4 times faster than the radix sort at the search's sizes (an Intel Xeon with
    AVX-512, decision 58); where NumPy falls back to its introsort, 3 to 5 times slower. The CPU
    features NumPy reports do not tell which: on an AMD EPYC for which NumPy 2.4.6 reports AVX-512
    (``X86_V4``), the packed sort took 234 µs against the radix sort's 81 µs at 7,300 keys and
    5.8 ms against 1.3 ms at 100,000 — choosing by features took the slower one (decision 63).
    Both give the same order, so the choice changes the time only, never a result."""
    keys = np.random.default_rng(0).integers(0, 1 << 26, size=1 << 14).astype(np.int64)
    packed = radix = math.inf
    for _ in range(3):
        started = perf_counter()
        _packed_sort(keys, 14)
        packed = min(packed, perf_counter() - started)
        started = perf_counter()
        _ = keys[_radix_order(keys, 1 << 26)]  # with the gather `_sort` does after it
        radix = min(radix, perf_counter() - started)
    return packed < radix


def _radix_order(keys: KeyArray, bound: int) -> IntpArray:
    """The stable sorting permutation of non-negative ``keys`` (all < ``bound``): a least
    significant digit first radix sort on 16-bit digits (``np.lexsort`` sorts each digit with
    NumPy's radix sort for 16-bit integers). Stable, so the first position of each run of equal
    keys is the smallest. Where NumPy has no SIMD sort, about 4 times faster than sorting the
    keys packed with their positions at the search's table sizes (10^4 combinations, keys of 20 to
    30 bits), and 2 times at 10^6; where it has one, slower (``_packed_sort_wins``)."""
    bits = max(bound - 1, 1).bit_length()
    lowest = keys.astype(np.uint16)  # the cast keeps the low 16 bits
    if bits <= 16:
        return np.argsort(lowest, kind="stable")
    return np.lexsort([lowest, *((keys >> shift).astype(np.uint16) for shift in range(16, bits, 16))])


@dataclass(frozen=True)
class Layout:
    """How a table packs its quasi-identifiers' label numbers: columns are grouped into *chunks*,
    and a chunk's value is the mixed-radix number of its columns' labels, the radix of each column
    its domain size (a label number at any level is below it, since levels nest). One gather through
    a small lookup table then generalizes all the columns of a chunk at once."""

    chunks: tuple[tuple[int, ...], ...]
    radix: tuple[int, ...]
    domains: tuple[int, ...]

    @classmethod
    def build(cls, domains: Sequence[int], space: int = CHUNK_SPACE) -> Layout:
        """First fit, widest domain first: a column joins the first chunk whose value space stays
        ≤ ``space`` with it, else starts one (fewer chunks, fewer gathers per key)."""
        chunks: list[list[int]] = []
        spaces: list[int] = []
        for q in sorted(range(len(domains)), key=lambda q: (-domains[q], q)):
            domain = max(domains[q], 1)
            for c, current in enumerate(spaces):
                if current * domain <= space:
                    chunks[c].append(q)
                    spaces[c] = current * domain
                    break
            else:
                chunks.append([q])
                spaces.append(domain)
        chunks = sorted(sorted(chunk) for chunk in chunks)
        radix = [1] * len(domains)
        for chunk in chunks:
            multiplier = 1
            for q in reversed(chunk):
                radix[q] = multiplier
                multiplier *= max(domains[q], 1)
        return cls(tuple(tuple(chunk) for chunk in chunks), tuple(radix), tuple(domains))

    def unpack(self, chunks: Sequence[LabelArray]) -> tuple[LabelArray, ...]:
        """The per-column label numbers of chunk values (the inverse of ``pack``; 0 at the top)."""
        codes: list[LabelArray] = [np.zeros(0, dtype=np.intp)] * len(self.radix)
        for chunk, values in zip(self.chunks, chunks, strict=True):
            for q in chunk:
                codes[q] = values // self.radix[q] % max(self.domains[q], 1)
        return tuple(codes)

    def pack(self, codes: Sequence[LabelArray | None], size: int) -> tuple[LabelArray, ...]:
        """The chunk values of per-column label numbers (``None``: the top level, label 0), in
        ``chunk_dtype(size)``."""
        packed: list[LabelArray] = []
        dtype = chunk_dtype(size)
        for chunk in self.chunks:
            value = np.zeros(size, dtype=dtype)
            for q in chunk:
                column = codes[q]
                if column is not None:
                    value += column.astype(dtype, copy=False) * self.radix[q]
            packed.append(value)
        return tuple(packed)


def chunk_dtype(size: int) -> type[np.signedinteger[Any]]:
    """How a table of ``size`` combinations stores its chunk values (every one is below 2^31).

    NumPy gathers through an intp index array about 3 times faster than through an int32 one (it
    converts the latter), so small tables, where the gathers are much of the search's time, keep
    8 bytes; from ``NARROW_CHUNKS_FROM`` combinations on, 4 bytes: there memory is what matters, and
    the gathers are a small part of an evaluation (the sort dominates). Measured in
    docs/benchmarks.md.
    """
    return np.int32 if size >= NARROW_CHUNKS_FROM else np.intp


class Table:
    """Distinct (quasi-identifier labels, sensitive value, entity) combinations at one node, with counts.

    The input's table (``distinct_combinations``) is built from per-column label numbers
    (``codes``, ``None`` for a column at its top level); the search reads labels packed by chunks
    (``Layout``). ``sensitive`` is ``None`` when no l-diversity model is checked, ``entities`` when k
    counts records. A table rolled up during the search keeps only its counts and one representative
    position per combination in its source; its chunks are gathered the first time it serves as a
    source itself (most never do), and are those of the input's combinations it descends from:
    labels at ``packed_levels`` (the input's levels), which generalize to its own ``levels``.
    """

    __slots__ = (
        "_chunks",
        "_codes",
        "_entities",
        "_layout",
        "_representative",
        "_sensitive",
        "_side_source",
        "_source",
        "counts",
        "levels",
        "packed_levels",
    )

    def __init__(
        self,
        levels: tuple[int, ...],
        codes: tuple[CodeArray | None, ...],
        sensitive: CodeArray | None,
        counts: Int64Array,
        entities: CodeArray | None = None,
    ) -> None:
        self.levels = levels
        self.packed_levels = levels
        self.counts = counts
        self._codes: tuple[CodeArray | None, ...] | None = codes
        self._sensitive = sensitive
        self._entities = entities
        self._chunks: tuple[LabelArray, ...] | None = None
        self._layout: Layout | None = None
        self._source: Table | None = None
        self._side_source: Table | None = None
        self._representative: IntpArray | None = None

    @classmethod
    def rolled_up(
        cls, source: Table, levels: tuple[int, ...], counts: Int64Array, representative: IntpArray
    ) -> Table:
        """A table whose combinations are ``source``'s at ``representative``, generalized to ``levels``."""
        table = cls(levels, (), None, counts)
        table.packed_levels = source.packed_levels
        table._codes = None
        table._source = table._side_source = source
        table._representative = representative
        return table

    def chunks(self, problem: Problem) -> tuple[LabelArray, ...]:
        """The labels packed by ``problem.layout`` (gathered from the source on first use)."""
        layout = problem.layout
        if self._chunks is not None and (self._layout is layout or self._layout == layout):
            return self._chunks
        source, representative = self._source, self._representative
        if source is None or representative is None:
            # Packed, the per-column numbers are dropped: the chunks hold the same (``codes``).
            self._chunks, self._codes = layout.pack(self.codes, self.size), None
        else:
            dtype = chunk_dtype(self.size)
            self._chunks = tuple(
                values[representative].astype(dtype, copy=False) for values in source.chunks(problem)
            )
            self._source = None
            if self._side_source is None:
                self._representative = None
        self._layout = layout
        return self._chunks

    def _gather_side(self) -> None:
        source, representative = self._side_source, self._representative
        if source is None or representative is None:
            return
        sensitive, entities = source.sensitive, source.entities
        self._sensitive = None if sensitive is None else sensitive[representative]
        self._entities = None if entities is None else entities[representative]
        self._side_source = None
        if self._source is None:
            self._representative = None

    @property
    def codes(self) -> tuple[LabelArray | None, ...]:
        """Per-column label numbers at ``packed_levels`` (unpacked from the chunks once the table is
        packed; a rolled-up table must have served as a source first)."""
        if self._codes is not None:
            return self._codes
        if self._chunks is None or self._layout is None:
            raise RuntimeError("a rolled-up table has no labels before it serves as a source")
        return self._layout.unpack(self._chunks)

    @property
    def sensitive(self) -> CodeArray | None:
        self._gather_side()
        return self._sensitive

    @property
    def entities(self) -> CodeArray | None:
        self._gather_side()
        return self._entities

    @property
    def size(self) -> int:
        return int(self.counts.size)


def leaf_counts(table: Table, q: int, domain: int) -> Int64Array:
    """Column q's record count per leaf in a level-0 table (zeros for a column given at its top)."""
    leaf_codes = table.codes[q]
    if leaf_codes is None:
        return np.zeros(domain, dtype=np.int64)
    return np.bincount(leaf_codes, weights=table.counts, minlength=domain).astype(np.int64)


@dataclass(frozen=True)
class Problem:
    """Everything about one search that does not depend on the node.

    ``up[q][a][b]`` maps column q's label numbers at level a to level b (a < b); ``leaves[q][h]`` is
    the leaf count of each label; ``cardinality[q][h]`` the number of labels; ``entity_values`` the
    number of distinct entities (0 when k counts records); ``bound_numerator[q][h]``
    the integer B_q of the module docstring; ``gaps[q][h]`` the least that suppressing one record adds
    to I_q at level h (D_q minus the largest leaf count of a label present in the data).
    """

    columns: tuple[str, ...]
    heights: tuple[int, ...]
    domain_sizes: tuple[int, ...]
    cardinality: tuple[tuple[int, ...], ...]
    up: tuple[tuple[tuple[CodeArray | None, ...], ...], ...]
    leaves: tuple[tuple[Int64Array, ...], ...]
    bound_numerator: tuple[tuple[int, ...], ...]
    gaps: tuple[tuple[int, ...], ...]
    rows: int
    sensitive_values: int
    k: int
    l: int | None  # noqa: E741 -- the model's name in the literature
    l_kind: str
    max_suppressed: int
    entity_values: int = 0
    layout: Layout = field(default_factory=lambda: Layout((), (), ()))
    _luts: dict[tuple[object, ...], object] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        columns: Sequence[str],
        level_codes: Sequence[Sequence[npt.NDArray[np.intp]]],
        level_leaves: Sequence[Sequence[Int64Array]],
        base: Table | None,
        sensitive_values: int,
        k: int,
        l: int | None,  # noqa: E741 -- the model's name in the literature
        l_kind: str,
        max_suppressed: int,
        entity_values: int = 0,
        marginals: Sequence[Int64Array] | None = None,
    ) -> Problem:
        """Precompute maps and bounds. ``level_codes[q][h]`` maps leaf → label number at level h.

        The bounds need each column's record count per leaf: from ``base`` (the input's table), or
        given as ``marginals`` when the input is never one table (a partitioned search)."""
        if base is not None:
            rows = int(base.counts.sum())
            marginals = [leaf_counts(base, q, codes[0].size) for q, codes in enumerate(level_codes)]
        elif marginals is not None:
            rows = int(marginals[0].sum()) if marginals else 0
        else:
            raise ValueError("a problem needs the input's table or its marginals")
        heights, domains, cardinality, ups, leaves, bounds, gaps = [], [], [], [], [], [], []
        for q, codes in enumerate(level_codes):
            height = len(codes)
            heights.append(height)
            domains.append(int(codes[0].size))
            cardinality.append(tuple(int(level_leaves[q][h].size) for h in range(height)))
            maps: list[tuple[CodeArray | None, ...]] = []
            for low in range(height):
                row: list[CodeArray | None] = [None] * height
                for high in range(low + 1, height):
                    mapping = np.zeros(cardinality[q][low], dtype=np.int32)
                    mapping[codes[low]] = codes[high]
                    row[high] = mapping
                maps.append(tuple(row))
            ups.append(tuple(maps))
            leaves.append(tuple(level_leaves[q]))
            marginal = marginals[q]
            bounds.append(tuple(int(marginal @ level_leaves[q][h][codes[h]]) for h in range(height)))
            present = marginal > 0
            gaps.append(
                tuple(
                    domains[q] - int(level_leaves[q][h][codes[h][present]].max(initial=0))
                    for h in range(height)
                )
            )
        return cls(
            columns=tuple(columns),
            heights=tuple(heights),
            domain_sizes=tuple(domains),
            cardinality=tuple(cardinality),
            up=tuple(ups),
            leaves=tuple(leaves),
            bound_numerator=tuple(bounds),
            gaps=tuple(gaps),
            rows=rows,
            sensitive_values=sensitive_values,
            k=k,
            l=l,
            l_kind=l_kind,
            max_suppressed=max_suppressed,
            entity_values=entity_values,
            layout=Layout.build(domains),
        )

    def chunk_levels(self, levels: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        """``levels`` split by chunk (memoized: the same nodes come back again and again)."""
        cache_key = ("levels", levels)
        split = self._luts.get(cache_key)
        if split is None:
            split = tuple(tuple(levels[q] for q in chunk) for chunk in self.layout.chunks)
            self._luts[cache_key] = split
        return split  # type: ignore[return-value]

    def lift(self, q: int, low: int, high: int) -> IntpArray:
        """Column q's label number at level ``low`` → its label at ``high`` (``low ≤ high``), padded
        with zeros to the domain size so that any digit of a chunk value can index it."""
        cache_key = ("lift", q, low, high)
        lift = self._luts.get(cache_key)
        if lift is None:
            lift = np.zeros(max(self.domain_sizes[q], 1), dtype=np.intp)
            labels = self.cardinality[q][low]
            mapping = self.up[q][low][high]
            lift[:labels] = np.arange(labels, dtype=np.intp) if mapping is None else mapping
            self._luts[cache_key] = lift
        return lift  # type: ignore[return-value]

    def key_lut(self, c: int, lows: tuple[int, ...], highs: tuple[int, ...]) -> tuple[CodeArray, int]:
        """For chunk c of a table at ``lows``: chunk value → the dense number of its labels at
        ``highs`` (mixed radix of the label counts at ``highs``, columns at the top left out, in 4
        bytes), and the count of such numbers."""
        cache_key = ("key", c, lows, highs)
        hit = self._luts.get(cache_key)
        if hit is None:
            chunk = self.layout.chunks[c]
            lut: IntpArray | None = None
            card = 1
            for q, low, high in zip(chunk, lows, highs, strict=True):
                domain = max(self.domain_sizes[q], 1)
                if high == self.heights[q] - 1:
                    lut = np.zeros(domain, dtype=np.intp) if lut is None else np.repeat(lut, domain)
                    continue
                labels = self.lift(q, low, high)
                radix = self.cardinality[q][high]
                lut = labels.copy() if lut is None else (lut[:, None] * radix + labels[None, :]).ravel()
                card *= radix
            if lut is None:  # pragma: no cover -- a chunk has at least one column
                raise RuntimeError("an empty chunk")
            hit = (lut.astype(np.int32), card)
            self._luts[cache_key] = hit
        return hit  # type: ignore[return-value]

    def deficit_lut(self, c: int, lows: tuple[int, ...], highs: tuple[int, ...]) -> Int64Array:
        """For chunk c of a table at ``lows``: row j, chunk value → D_q - (leaves under the label at
        ``highs``) for the chunk's j-th column q, what suppressing one record adds to I_q."""
        cache_key = ("deficit", c, lows, highs)
        lut = self._luts.get(cache_key)
        if lut is None:
            chunk = self.layout.chunks[c]
            shape = tuple(max(self.domain_sizes[q], 1) for q in chunk)
            lut = np.empty((len(chunk), math.prod(shape)), dtype=np.int64)
            for j, (q, low, high) in enumerate(zip(chunk, lows, highs, strict=True)):
                deficit = self.domain_sizes[q] - self.leaves[q][high][self.lift(q, low, high)]
                axis = [1] * len(chunk)
                axis[j] = shape[j]
                lut[j].reshape(shape)[...] = deficit.reshape(axis)
            self._luts[cache_key] = lut
        return lut  # type: ignore[return-value]

    def suppression_bound(self, levels: Sequence[int], suppressed: int) -> float:
        """A lower bound on the loss of a node at ``levels`` that suppresses ``suppressed`` records:
        each adds at least ``gaps[q][level]`` to I_q (rule 6 of the module docstring). Computed with
        the same floating-point operations as the loss, which are monotone, so it never exceeds the
        computed loss."""
        return self.total_loss(
            [
                self.loss_term(q, self.bound_numerator[q][level] + suppressed * self.gaps[q][level])
                for q, level in enumerate(levels)
            ]
        )

    def loss_term(self, q: int, numerator: int) -> float:
        """L_q = (I_q - n) / (n·(D_q - 1)), the normalized Loss of column q (0 for a one-leaf domain)."""
        domain = self.domain_sizes[q]
        if domain <= 1 or self.rows == 0:
            return 0.0
        return (numerator - self.rows) / (self.rows * (domain - 1))

    def loss_terms(self, numerators: Sequence[int]) -> list[float]:
        """L_q for each column from its integer numerator I_q."""
        return [self.loss_term(q, numerator) for q, numerator in enumerate(numerators)]

    @staticmethod
    def total_loss(terms: Sequence[float]) -> float:
        """Π_q (1 + L_q)^(1/m) - 1, accumulated in column order like the lattice's bounds."""
        accumulated = 0.0
        for term in terms:
            accumulated += math.log1p(term)
        return math.expm1(accumulated / len(terms))


@dataclass(frozen=True)
class Evaluation:
    """A node's classes: suppression, loss numerators (``None`` when not computed, see ``evaluate``)
    and (optionally) its table and details."""

    levels: tuple[int, ...]
    suppressed: int
    numerators: tuple[int, ...] | None
    classes: int
    table: Table | None
    class_sizes: Int64Array | None = None
    class_failed: npt.NDArray[np.bool_] | None = None
    source_failed: npt.NDArray[np.bool_] | None = None
    class_entities: Int64Array | None = None

    def computed_numerators(self) -> tuple[int, ...]:
        """The numerators, which the caller knows were computed (an acceptable node below the cap)."""
        if self.numerators is None:  # pragma: no cover -- callers ask only for computed ones
            raise RuntimeError("the loss numerators of this evaluation were not computed")
        return self.numerators


def _class_keys(
    problem: Problem, source: Table, parts: list[LabelPart]
) -> tuple[KeyArray, int, KeyArray | None, int]:
    """One integer key per combination of ``source`` at the node of ``parts`` (quasi-identifiers, then the
    sensitive value, then the entity: classes are runs of keys), its bound, and, with entities, how
    to find the key of the quasi-identifiers alone (the class of each combination): ``key //
    divisor`` when the sensitive value and entity were appended without renumbering (no copy), else
    a copy of the class keys (``divisor`` 0)."""
    key, bound = _label_key(parts)
    entities, sensitive = source.entities, source.sensitive
    class_key, divisor = None, 0
    if entities is not None:
        tail = (problem.sensitive_values if sensitive is not None else 1) * problem.entity_values
        if bound * tail < _KEY_LIMIT:  # nothing is renumbered below: classes are key // tail
            divisor = tail
        else:
            class_key = np.zeros(source.size, dtype=np.int64) if key is None else key.copy()
    if sensitive is not None:
        key, bound = _extend_key(key, bound, sensitive, problem.sensitive_values)
    if entities is not None:
        key, bound = _extend_key(key, bound, entities, problem.entity_values)
    if key is None:
        key = np.zeros(source.size, dtype=np.int64)
    return key, bound, class_key, divisor


def _label_parts(problem: Problem, source: Table, levels: tuple[int, ...]) -> list[LabelPart]:
    """The digits of the key of the quasi-identifiers' labels at ``levels``: for each chunk not
    wholly at the top, its lookup table to the dense number of its labels at ``levels``, its
    values in ``source`` and the count of such numbers."""
    chunks = source.chunks(problem)
    parts: list[LabelPart] = []
    lows, highs = problem.chunk_levels(source.packed_levels), problem.chunk_levels(levels)
    for c in range(len(chunks)):
        lut, card = problem.key_lut(c, lows[c], highs[c])
        if card > 1:
            parts.append((lut, chunks[c], card))
    return parts


def _label_key(parts: list[LabelPart]) -> tuple[KeyArray | None, int]:
    """The key of the quasi-identifiers' labels from ``_label_parts`` (``None`` if all are at the
    top) and its bound: each part's dense number through its lookup table, in mixed radix (the
    last part least significant, by Horner's rule), in 4 bytes below 2^31."""
    key: KeyArray | None = None
    bound = math.prod(card for _, _, card in parts)
    if bound < _KEY_LIMIT:
        for lut, values, card in parts:
            piece = lut[values]
            if key is None:
                key = piece if bound < 1 << 31 else piece.astype(np.int64)
            else:
                key *= card
                key += piece
        return key, bound
    bound = 1
    for lut, values, card in parts:
        key, bound = _extend_key(key, bound, lut[values], card)
    return key, bound


def _extend_key(key: KeyArray | None, bound: int, labels: LabelArray, radix: int) -> tuple[KeyArray, int]:
    if key is None:
        return labels.astype(np.int64), radix
    if radix == 1:
        return key, bound
    if bound * radix >= _KEY_LIMIT:  # re-number the distinct keys so far to stay within 63 bits
        inverse, unique, _ = group_keys(key, bound)
        key, bound = inverse.astype(np.int64), int(unique.size)
    elif key.dtype != np.int64 and bound * radix >= 1 << 31:
        key = key.astype(np.int64)
    key *= radix
    key += labels
    return key, bound * radix


def _failing_classes(
    problem: Problem, counts: Int64Array, unique: KeyArray, diversity: bool
) -> tuple[IntpArray | None, Int64Array, npt.NDArray[np.bool_], IntpArray | None]:
    """Class starts (in groups), sizes, which fail k or l, and each group's class (with a sensitive
    column; otherwise classes are the groups, and starts and classes are ``None``)."""
    groups = int(unique.size)
    if not diversity:
        return None, counts, counts < problem.k, None
    class_keys = unique // problem.sensitive_values
    new_class = np.empty(groups, dtype=np.bool_)
    new_class[:1] = True
    np.not_equal(class_keys[1:], class_keys[:-1], out=new_class[1:])
    starts = np.flatnonzero(new_class)
    sizes = np.add.reduceat(counts, starts) if groups else counts
    failed = sizes < problem.k
    if problem.l is not None and problem.l > 1:
        if problem.l_kind == "distinct":
            failed |= np.diff(starts, append=groups) < problem.l
        else:
            spread = np.add.reduceat(counts * np.log(counts), starts)
            entropy = np.log(sizes) - spread / sizes
            failed |= entropy < math.log(problem.l) - ENTROPY_TOLERANCE
    return starts, sizes, failed, np.cumsum(new_class) - 1


def _failing_entity_classes(
    problem: Problem,
    counts: Int64Array,
    unique: KeyArray,
    group_class_key: KeyArray,
    group_entities: CodeArray,
    diversity: bool,
) -> tuple[IntpArray, Int64Array, npt.NDArray[np.bool_], IntpArray, Int64Array]:
    """``_failing_classes`` when k counts distinct entities: groups are (class, sensitive, entity)
    combinations in key order, so a class is a run of equal ``group_class_key`` and, within it, a
    sensitive value a run of equal ``unique // entity_values``. Also returns each class's distinct
    entities."""
    groups = int(unique.size)
    new_class = np.empty(groups, dtype=np.bool_)
    new_class[:1] = True
    np.not_equal(group_class_key[1:], group_class_key[:-1], out=new_class[1:])
    del group_class_key
    starts = np.flatnonzero(new_class)
    class_of_group = np.cumsum(new_class, dtype=np.intp)
    class_of_group -= 1
    sizes = np.add.reduceat(counts, starts) if groups else counts
    classes = int(starts.size)
    # Distinct (class, entity) pairs by one in-place sort: 9 bytes per group, where grouping the
    # pairs (group_keys) would allocate several arrays of 8.
    pairs = class_of_group.astype(np.int64)
    pairs *= problem.entity_values
    pairs += group_entities
    pairs.sort()
    new_pair = np.empty(groups, dtype=np.bool_)
    new_pair[:1] = True
    np.not_equal(pairs[1:], pairs[:-1], out=new_pair[1:])
    pairs //= problem.entity_values
    entities = np.bincount(pairs[new_pair], minlength=classes).astype(np.int64)
    del pairs, new_pair
    failed = entities < problem.k
    if diversity and problem.l is not None and problem.l > 1:
        prefix = unique // problem.entity_values  # (class, sensitive value), in key order
        new_value = new_class.copy()
        np.not_equal(prefix[1:], prefix[:-1], out=new_value[1:])
        new_value |= new_class
        value_starts = np.flatnonzero(new_value)
        value_class = class_of_group[value_starts]
        if problem.l_kind == "distinct":
            failed |= np.bincount(value_class, minlength=classes) < problem.l
        else:
            value_counts = np.add.reduceat(counts, value_starts).astype(np.float64)
            spread = np.bincount(value_class, weights=value_counts * np.log(value_counts), minlength=classes)
            entropy = np.log(sizes) - spread / sizes
            failed |= entropy < math.log(problem.l) - ENTROPY_TOLERANCE
    return starts, sizes, failed, class_of_group, entities


@dataclass(frozen=True, slots=True)
class _Classes:
    """A roll-up's groups (distinct combinations at the target node) and classes.

    ``representative`` holds one source position of each group and ``counts`` its records;
    ``starts`` each class's first group (``None`` when classes are the groups), ``sizes`` each
    class's records and ``failed`` which classes fail k or l; ``class_of_group`` each group's class
    (``None`` when classes are the groups), ``inverse`` each source combination's group (only when
    asked for) and ``class_entities`` each class's distinct entities (only when k counts them).
    """

    representative: IntpArray
    counts: Int64Array
    starts: IntpArray | None
    sizes: Int64Array
    failed: npt.NDArray[np.bool_]
    class_of_group: IntpArray | None = None
    inverse: IntpArray | None = None
    class_entities: Int64Array | None = None


def _hashed_classes(problem: Problem, source: Table, parts: list[LabelPart]) -> _Classes | None:
    """The classes by hashing (``hash_roll_up``, in no particular order), for a source without a
    sensitive value or entity, where classes are the groups; ``None`` where sorting is faster (a
    small key space, grouped densely) or hashing does not apply (a table of 4-byte chunk values,
    or a key of 63 bits or more)."""
    bound = math.prod(card for _, _, card in parts)
    if bound >= _KEY_LIMIT or not _hashing_wins(source.size, bound):
        return None
    luts, values, cards = zip(*parts, strict=True)
    representative, counts = hash_roll_up(values, luts, cards, source.counts)
    return _Classes(representative, counts, None, counts, counts < problem.k)


def _sorted_classes(problem: Problem, source: Table, parts: list[LabelPart], *, inverse: bool) -> _Classes:
    """The classes by ``_group``: groups in ascending key order, so a class is a run of groups."""
    key, bound, class_key, divisor = _class_keys(problem, source, parts)
    unique, representative, counts, numbers = _group(key, bound, source.counts, inverse=inverse)
    del key
    entities = source.entities
    if entities is None:
        starts, sizes, failed, class_of_group = _failing_classes(
            problem, counts, unique, source.sensitive is not None
        )
        return _Classes(representative, counts, starts, sizes, failed, class_of_group, numbers)
    starts, sizes, failed, class_of_group, class_entities = _failing_entity_classes(
        problem,
        counts,
        unique,
        unique // divisor if class_key is None else class_key[representative],
        entities[representative],
        source.sensitive is not None,
    )
    return _Classes(representative, counts, starts, sizes, failed, class_of_group, numbers, class_entities)


def evaluate(
    problem: Problem,
    source: Table,
    levels: tuple[int, ...],
    *,
    keep_table: bool,
    details: bool = False,
    loss_cap: float = math.inf,
    also_failing: npt.NDArray[np.bool_] | None = None,
) -> Evaluation:
    """Roll ``source`` (a table at a node ≤ ``levels``) up to ``levels`` and check the models.

    The loss numerators are computed only for an acceptable node whose suppression does not put its
    loss above ``loss_cap`` (``Problem.suppression_bound``), or with ``details``; otherwise they
    are ``None``. With ``details``, also return the class sizes, which classes fail, and, for each
    combination of ``source``, whether its records are suppressed. ``also_failing`` marks classes
    (in ascending order of their labels, as ``class_failed`` lists them) that fail a model checked
    elsewhere: another table of the same records with the same classes.
    """
    # Without a sensitive value or entity a class is a group, and unless its classes are listed
    # (details, or another table's failures matched to them) nothing reads them in key order.
    unordered = not details and also_failing is None and source.sensitive is None and source.entities is None
    parts = _label_parts(problem, source, levels)  # the same digits for either grouping
    classes = _hashed_classes(problem, source, parts) if unordered else None
    if classes is None:
        classes = _sorted_classes(problem, source, parts, inverse=details)
    representative, starts, sizes, failed = (
        classes.representative,
        classes.starts,
        classes.sizes,
        classes.failed,
    )
    if also_failing is not None:
        if also_failing.size != failed.size:
            raise RuntimeError("a model checked elsewhere saw other classes")
        failed = failed | also_failing
    suppressed = int(sizes @ failed)  # the failing classes' sizes summed (an integer product, no BLAS)

    numerators: list[int] | None = None
    wanted = suppressed <= problem.max_suppressed and (
        not suppressed or problem.suppression_bound(levels, suppressed) <= loss_cap
    )
    if wanted or details:
        numerators = [problem.bound_numerator[q][level] for q, level in enumerate(levels)]
        if suppressed:
            failed_classes = failed.nonzero()[0]
            failed_sizes = sizes[failed_classes]
            failed_rows = representative[failed_classes if starts is None else starts[failed_classes]]
            chunks = source.chunks(problem)
            lows, highs = problem.chunk_levels(source.packed_levels), problem.chunk_levels(levels)
            for c, chunk in enumerate(problem.layout.chunks):
                lut = problem.deficit_lut(c, lows[c], highs[c])
                values = chunks[c][failed_rows]
                if problem.rows < 1 << 53:  # the float sums of sizes per chunk value are exact
                    sizes_by_value = np.bincount(values, weights=failed_sizes, minlength=lut.shape[1])
                    # Integer product: exact, and no BLAS (whose threads would spin on a busy core).
                    added = lut @ sizes_by_value.astype(np.int64)
                else:
                    added = lut[:, values] @ failed_sizes
                for j, q in enumerate(chunk):
                    numerators[q] += int(added[j])

    table = Table.rolled_up(source, levels, classes.counts, representative) if keep_table else None
    totals = None if numerators is None else tuple(numerators)
    if not details:
        return Evaluation(levels, suppressed, totals, int(sizes.size), table)
    if classes.inverse is None:  # pragma: no cover -- asked for with details
        raise RuntimeError("no inverse")
    group_failed = failed if classes.class_of_group is None else failed[classes.class_of_group]
    return Evaluation(
        levels,
        suppressed,
        totals,
        int(sizes.size),
        table,
        class_sizes=sizes,
        class_failed=failed,
        source_failed=group_failed[classes.inverse],
        class_entities=classes.class_entities,
    )


@dataclass(frozen=True)
class SearchOutcome:
    """The optimal node and how the search went."""

    levels: tuple[int, ...]
    suppressed: int
    loss: float
    loss_terms: tuple[float, ...]
    nodes_checked: int
    lattice_size: int
    search_ms: float


class _Cache:
    """Tables of evaluated nodes to roll new nodes up from, oldest evicted first past ``budget``
    combinations (the base table always stays).

    A table is kept only if it has at most ``CACHE_MAX_SHARE`` of the combinations of the table it
    was rolled up from: a later node rolled up from it instead of from that source would save less
    than a quarter of the work, not worth its memory. (With k counted in entities nearly every
    record is a combination of its own at every node, and such tables are all of that kind.)
    """

    def __init__(self, base: Table, budget: int) -> None:
        self._tables: list[Table] = [base]
        self._levels = np.zeros((64, len(base.levels)), dtype=np.int64)
        self._sizes = np.full(64, np.inf)
        self._sizes[0] = base.size
        self._budget = budget
        self._used = base.size

    def source_for(self, levels: tuple[int, ...]) -> Table:
        """The smallest cached table at a node ≤ ``levels``."""
        count = len(self._tables)
        below = np.logical_and.reduce(self._levels[:count] <= levels, axis=1)
        return self._tables[int(np.where(below, self._sizes[:count], np.inf).argmin())]

    def add(self, table: Table, source: Table) -> bool:
        """Keep ``table`` (rolled up from ``source``) if it is worth its memory; say whether it was."""
        if table.size > self._budget // 2 or table.size > CACHE_MAX_SHARE * source.size:
            return False
        while self._used + table.size > self._budget and len(self._tables) > 1:
            self._used -= self._tables.pop(1).size
            count = len(self._tables)
            self._levels[1:count] = self._levels[2 : count + 1]
            self._sizes[1:count] = self._sizes[2 : count + 1]
        count = len(self._tables)
        if count == self._sizes.size:
            self._levels = np.concatenate([self._levels, np.zeros_like(self._levels)])
            self._sizes = np.concatenate([self._sizes, np.full(count, np.inf)])
        self._tables.append(table)
        self._levels[count] = table.levels
        self._sizes[count] = table.size
        self._used += table.size
        return True


def _monotone(problem: Problem) -> bool:
    entropy = problem.l is not None and problem.l > 1 and problem.l_kind == "entropy"
    return not (entropy and problem.max_suppressed > 0)


class _Lattice:
    """Node numbering (mixed radix, first column most significant), bounds, and the boxes that tag
    a node's generalizations or specializations: an array of one entry per node, reshaped to
    ``heights`` (one axis per column, the C order of the numbering), holds them as slices."""

    def __init__(self, problem: Problem) -> None:
        heights = problem.heights
        size = math.prod(heights)
        if size > MAX_LATTICE_NODES:
            raise LatticeTooLarge(
                f"the lattice has {size} nodes, more than {MAX_LATTICE_NODES}; use fewer levels or columns"
            )
        self.size = size
        self.heights = heights
        strides = [1] * len(heights)
        for q in range(len(heights) - 2, -1, -1):
            strides[q] = strides[q + 1] * heights[q + 1]
        self.strides = tuple(strides)
        self._levels_of: dict[int, tuple[int, ...]] = {}
        # Row q: every node's level of column q (contiguous, for the bounds below).
        columns = np.indices(heights, dtype=np.int32).reshape(len(heights), size)
        self.levels = columns.T
        self.height = columns.sum(axis=0)
        accumulated = np.zeros(size, dtype=np.float64)
        for q, numerators in enumerate(problem.bound_numerator):
            terms = np.asarray([math.log1p(problem.loss_term(q, value)) for value in numerators])
            accumulated += terms[columns[q]]
        self.bound = np.expm1(accumulated / len(heights))
        self.order = np.lexsort((self.height, self.bound))  # stable: ties in node order
        self.successor: list[int] = self._successors().tolist()

    def _successors(self) -> Int64Array:
        """Each node's direct generalization of least bound, ties to the smaller node number (-1 at
        the top): the upward path of ``_Search.settle``, for all nodes at once instead of one
        Python comparison of a node's options per step."""
        bound = self.by_levels(self.bound)
        number = self.by_levels(np.arange(self.size, dtype=np.int64))
        successor = np.full(self.heights, -1, dtype=np.int64)
        least = np.full(self.heights, np.inf)
        # Smallest stride first, so options come in increasing node number and a tie keeps the first.
        for q in reversed(range(len(self.heights))):
            below = tuple(slice(-1) if axis == q else slice(None) for axis in range(len(self.heights)))
            above = tuple(slice(1, None) if axis == q else slice(None) for axis in range(len(self.heights)))
            # Along column q, each node below its top level and the node one level up.
            better = bound[above] < least[below]
            successor[below] = np.where(better, number[above], successor[below])
            least[below] = np.where(better, bound[above], least[below])
        return successor.ravel()

    def levels_of(self, node: int) -> tuple[int, ...]:
        """The node's levels (memoized: the search asks for the same nodes again and again)."""
        levels = self._levels_of.get(node)
        if levels is None:
            levels = tuple(
                node // stride % height for stride, height in zip(self.strides, self.heights, strict=True)
            )
            self._levels_of[node] = levels
        return levels

    def by_levels(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A view of per-node ``values`` indexed by levels (one axis per column), where the
        indexes below select a node's generalizations or specializations."""
        return values.reshape(self.heights)

    @staticmethod
    def generalizations(levels: Sequence[int]) -> tuple[slice, ...]:
        """The nodes ≥ ``levels`` (the node included), an index of a ``by_levels`` view."""
        return tuple(slice(level, None) for level in levels)

    @staticmethod
    def specializations(levels: Sequence[int]) -> tuple[slice, ...]:
        """The nodes ≤ ``levels`` (the node included), an index of a ``by_levels`` view."""
        return tuple(slice(level + 1) for level in levels)


class _Search:
    """State of one search: node statuses, the cache, the best node so far (module docstring)."""

    def __init__(
        self, problem: Problem, base: Table, cache_budget: int, evaluator: NodeEvaluator | None = None
    ) -> None:
        self.problem = problem
        self.evaluator = evaluator
        self.lattice = lattice = _Lattice(problem)
        self.monotone = _monotone(problem)
        self.cache = _Cache(base, cache_budget)
        self.status = np.zeros(lattice.size, dtype=np.int8)
        self.done = np.zeros(lattice.size, dtype=np.bool_)  # evaluated, or dominated (rule 4)
        self.floor = np.zeros(lattice.size, dtype=np.int64)  # suppression known to be unavoidable
        # The same arrays indexed by levels, where tagging a node's generalizations or
        # specializations is one slice assignment.
        self.status_by_levels = lattice.by_levels(self.status)
        self.done_by_levels = lattice.by_levels(self.done)
        self.floor_by_levels = lattice.by_levels(self.floor)
        self.bounds: list[float] = lattice.bound.tolist()
        self.heights: list[int] = lattice.height.tolist()
        self.best: tuple[float, int, int] = (math.inf, 0, -1)
        self.best_evaluation: Evaluation | None = None
        self.checked = 0
        self.base_levels = base.levels
        self.last_from_base: tuple[int, ...] | None = None
        self.meets: set[tuple[int, ...]] = set()
        # Intermediate tables pay off only if the cache keeps them; with an input a sizeable share
        # of the cache, they would be evicted before their reuse.
        self.share_meets = base.size * 8 <= cache_budget

    def run(self) -> Evaluation:
        status, done, floor, bounds = self.status, self.done, self.floor, self.bounds
        for node in self.lattice.order.tolist():
            if bounds[node] > self.best[0] + LOSS_SLACK:
                break
            if done[node] or status[node] == _NOT_ANONYMOUS:
                continue
            if floor[node] and self.refined_bound(node) > self.best[0] + LOSS_SLACK:
                continue
            if self.monotone and status[node] == _UNKNOWN:
                self.settle(node)
                if done[node] or status[node] == _NOT_ANONYMOUS:
                    continue
                if floor[node] and self.refined_bound(node) > self.best[0] + LOSS_SLACK:
                    continue
            self.check(node)
        if self.best_evaluation is None:
            raise NoAnonymousTransformation(
                "no generalization satisfies the privacy models within the suppression limit"
            )
        return self.best_evaluation

    def check(self, node: int) -> None:
        """Evaluate ``node``, tag what it implies, and keep it if it is the best so far."""
        problem, lattice = self.problem, self.lattice
        levels = lattice.levels_of(node)
        loss_cap = self.best[0] + LOSS_SLACK
        outcome = None if self.evaluator is None else self.evaluator(levels, loss_cap)
        if outcome is None:
            source = self.source_for(levels)
            outcome = evaluate(problem, source, levels, keep_table=True, loss_cap=loss_cap)
            if outcome.table is not None:
                self.cache.add(outcome.table, source)
        self.checked += 1
        self.done[node] = True
        if outcome.suppressed > problem.max_suppressed:
            if self.monotone:
                self.status_by_levels[lattice.specializations(levels)] = _NOT_ANONYMOUS
            self.status[node] = _NOT_ANONYMOUS
            return
        above = lattice.generalizations(levels)
        if self.monotone:
            self.status_by_levels[above] = _ANONYMOUS
            if outcome.suppressed:
                below = self.floor_by_levels[lattice.specializations(levels)]
                np.maximum(below, outcome.suppressed, out=below)
        self.status[node] = _ANONYMOUS
        if outcome.suppressed == 0:
            self.done_by_levels[above] = True
        if outcome.numerators is None:  # its suppression alone puts it above the best so far
            return
        loss = problem.total_loss(problem.loss_terms(outcome.numerators))
        candidate = (loss, self.heights[node], node)
        if candidate < self.best:
            # Without its table: the best node's table is no source for others unless cached.
            self.best, self.best_evaluation = candidate, replace(outcome, table=None)

    def source_for(self, levels: tuple[int, ...]) -> Table:
        """The smallest cached table below ``levels``. When that is the input's table (the largest)
        and the input is small beside the cache budget, it is first rolled up to the meet of
        ``levels`` and the previous node evaluated from it (once per meet): nodes evaluated in turn
        tend to share levels, and the next ones can start from that smaller table. A meet's table
        the cache refuses (more than ``CACHE_MAX_SHARE`` of the input) is dropped and ends the
        sharing for this search. Only the cost changes, never a result: any table at a node ≤
        ``levels`` is a valid source."""
        source = self.cache.source_for(levels)
        if source.levels != self.base_levels or not self.share_meets:
            return source
        previous, self.last_from_base = self.last_from_base, levels
        if previous is None:
            return source
        meet = tuple(min(a, b) for a, b in zip(levels, previous, strict=True))
        if meet in (self.base_levels, levels) or meet in self.meets:
            return source
        self.meets.add(meet)
        shared = evaluate(self.problem, source, meet, keep_table=True, loss_cap=-math.inf).table
        if shared is None:  # pragma: no cover -- asked for with keep_table
            return source
        if self.cache.add(shared, source):
            return shared
        # Nearly as large as the input (with entities nearly every record stays a combination of
        # its own at every node): no cheaper source, and holding it beside the input would raise
        # the peak. Later meets would be alike; stop building them.
        self.share_meets = False
        return source

    def refined_bound(self, node: int) -> float:
        """LB(node) with the suppression its generalizations prove unavoidable (monotone models):
        each suppressed record adds at least ``gaps[q][level]`` to I_q."""
        return self.problem.suppression_bound(self.lattice.levels_of(node), int(self.floor[node]))

    def settle(self, node: int) -> None:
        """Decide ``node``'s status by a binary search along an upward path (monotone models)."""
        status, successor = self.status, self.lattice.successor
        path = [node]
        while status[path[-1]] != _ANONYMOUS:
            following = successor[path[-1]]
            if following < 0:
                break
            path.append(following)
        low, high = 0, len(path) - 1 if status[path[-1]] == _ANONYMOUS else len(path)
        while low < high:
            middle = (low + high) // 2
            if status[path[middle]] == _UNKNOWN:
                self.check(path[middle])
            if status[path[middle]] == _ANONYMOUS:
                high = middle
            else:
                low = middle + 1


def search(
    problem: Problem,
    base: Table,
    *,
    cache_budget: int | None = None,
    clock: Callable[[], float] = perf_counter,
    evaluator: NodeEvaluator | None = None,
) -> SearchOutcome:
    """Find the optimal node (see the module docstring); raises ``NoAnonymousTransformation``.

    ``cache_budget`` bounds the combinations kept in rolled-up tables (default ``CACHE_BUDGET``, 2^21:
    a fixed cap, so the cache does not grow with the input; a combination costs 16 bytes — int64
    count and representative — and, once its table serves as a source, an int64 count, 8 bytes per
    chunk of quasi-identifiers (4 from ``NARROW_CHUNKS_FROM`` combinations on) and 4 per sensitive
    value and entity instead). Tables that keep more than ``CACHE_MAX_SHARE`` of their source's
    combinations are not cached at all: with an entity column nearly every record is a combination
    of its own at every node, and such tables would be copies of the input that save no work.

    ``evaluator``, if given, evaluates the nodes it can (returning ``None`` for the others, which
    are evaluated from ``base`` and the cache as usual), with ``evaluate``'s meaning of the loss
    cap: a partitioned search evaluates there the nodes whose classes never span two partitions.
    """
    if base.sensitive is None and base.entities is None and _may_hash(problem, base):
        prepare(len(problem.layout.chunks))
    started = clock()
    budget = cache_budget if cache_budget is not None else CACHE_BUDGET
    state = _Search(problem, base, budget, evaluator)
    best = state.run()
    return SearchOutcome(
        levels=best.levels,
        suppressed=best.suppressed,
        loss=state.best[0],
        loss_terms=tuple(problem.loss_terms(best.computed_numerators())),
        nodes_checked=state.checked,
        lattice_size=state.lattice.size,
        search_ms=(clock() - started) * 1000.0,
    )


def exhaustive(problem: Problem, base: Table) -> list[tuple[tuple[int, ...], int, float]]:
    """Every node's (levels, suppressed, loss), evaluated from ``base``: the reference for tests."""
    lattice = _Lattice(problem)
    results = []
    for node in range(lattice.size):
        levels = tuple(int(level) for level in lattice.levels[node])
        outcome = evaluate(problem, base, levels, keep_table=False, details=True)
        loss = problem.total_loss(problem.loss_terms(outcome.computed_numerators()))
        results.append((levels, outcome.suppressed, loss))
    return results
