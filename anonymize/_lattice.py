"""Optimal full-domain generalization: the lattice search.

A *node* (transformation) picks one generalization level per quasi-identifier; nodes form a lattice
ordered column by column (N ≤ N' iff every level of N is ≤ the level of N'; N' *generalizes* N).
The search returns the node of least ARX "Loss" among those that satisfy the privacy models within
the suppression limit. Ties: least loss, then lowest total level (height), then the smallest levels
in quasi-identifier order.

Working representation (the ideas of ARX's Flash)
--------------------------------------------------
* Values are integer-coded once; per column and level the hierarchy gives arrays label → parent, so
  generalizing a column is one array gather.
* The engine never touches rows during the search. A *table* holds the distinct combinations of
  (quasi-identifier labels, sensitive value) at some node with their record counts. Classes are the
  runs of equal quasi-identifier labels; sizes, distinct sensitive values and entropies come from
  segmented sums. Because hierarchies nest, the classes of N are unions of the classes of any
  specialization P ≤ N, so N's table is rolled up from the smallest table already computed for a
  node below it (the input's distinct combinations at worst).
* Grouping is a dense relabelling (O(u + K), no sort) when the key space K is small, else one sort
  of keys packed with their positions.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from time import perf_counter

import numpy as np
import numpy.typing as npt

from anonymize._errors import LatticeTooLarge, NoAnonymousTransformation

__all__ = ["Evaluation", "Problem", "SearchOutcome", "Table", "evaluate", "group_keys", "search"]

Int64Array = npt.NDArray[np.int64]
IntpArray = npt.NDArray[np.intp]
# Labels, sensitive values and entities in tables: 4 bytes each (every domain is int32-coded on input).
CodeArray = npt.NDArray[np.int32]

MAX_LATTICE_NODES = 1 << 20
CACHE_BUDGET = 1 << 21
CACHE_MAX_SHARE = 0.75
ENTROPY_TOLERANCE = 1e-9
LOSS_SLACK = 1e-9
_KEY_LIMIT = 1 << 62
_DENSE_MIN = 1 << 12
_DENSE_MAX = 1 << 26

_UNKNOWN, _ANONYMOUS, _NOT_ANONYMOUS = 0, 1, 2


def group_keys(keys: Int64Array, bound: int) -> tuple[IntpArray, Int64Array, IntpArray]:
    """Group non-negative ``keys`` (all < ``bound``).

    Returns ``(inverse, unique, representative)``: group number of each key, the distinct keys in
    ascending order (group numbers follow this order) and one position holding each.
    """
    size = int(keys.size)
    if bound <= max(_DENSE_MIN, 4 * size) and bound <= _DENSE_MAX:
        present = np.zeros(bound, dtype=np.bool_)
        present[keys] = True
        unique = np.flatnonzero(present).astype(np.int64)
        number = np.empty(bound, dtype=np.intp)
        number[unique] = np.arange(unique.size, dtype=np.intp)
        inverse = number[keys]
        representative = np.empty(unique.size, dtype=np.intp)
        representative[inverse] = np.arange(size, dtype=np.intp)
        return inverse, unique, representative
    shift = max(size - 1, 1).bit_length()
    if (bound - 1).bit_length() + shift <= 63:
        packed = (keys << shift) | np.arange(size, dtype=np.int64)
        packed.sort()
        order = (packed & ((1 << shift) - 1)).astype(np.intp, copy=False)
        sorted_keys = packed >> shift
        starts = np.empty(size, dtype=np.bool_)
        starts[:1] = True
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
        inverse = np.empty(size, dtype=np.intp)
        inverse[order] = np.cumsum(starts) - 1
        return inverse, sorted_keys[starts], order[starts]
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return (
        inverse.astype(np.intp, copy=False),
        unique.astype(np.int64, copy=False),
        first.astype(np.intp, copy=False),
    )


_TOP = object()


class Table:
    """Distinct (quasi-identifier labels, sensitive value, entity) combinations at one node, with counts.

    ``codes[q]`` is ``None`` for a column at its top level (one label); ``sensitive`` is ``None``
    when no l-diversity model is checked, ``entities`` when k counts records. A table rolled up
    during the search keeps only its counts and one representative position per combination in its
    source; its labels are gathered the first time it serves as a source itself (most never do).
    """

    __slots__ = (
        "_codes",
        "_entities",
        "_maps",
        "_representative",
        "_sensitive",
        "_source",
        "counts",
        "levels",
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
        self.counts = counts
        self._codes: tuple[CodeArray | None, ...] | None = codes
        self._sensitive = sensitive
        self._entities = entities
        self._source: Table | None = None
        self._representative: IntpArray | None = None
        self._maps: tuple[object, ...] = ()

    @classmethod
    def rolled_up(
        cls,
        source: Table,
        levels: tuple[int, ...],
        counts: Int64Array,
        representative: IntpArray,
        maps: tuple[object, ...],
    ) -> Table:
        """A table whose labels are ``maps[q]`` applied to ``source``'s at ``representative``."""
        table = cls(levels, (), None, counts)
        table._codes = None
        table._source, table._representative, table._maps = source, representative, maps
        return table

    def _materialize(self) -> tuple[CodeArray | None, ...]:
        source, representative = self._source, self._representative
        if source is None or representative is None:  # pragma: no cover -- set together by rolled_up
            raise RuntimeError("table without labels or source")
        codes: list[CodeArray | None] = []
        for q, mapping in enumerate(self._maps):
            source_codes = source.codes[q]
            if mapping is _TOP or source_codes is None:
                codes.append(None)
                continue
            picked = source_codes[representative]
            codes.append(picked if mapping is None else mapping[picked])  # type: ignore[index]
        sensitive, entities = source.sensitive, source.entities
        self._sensitive = None if sensitive is None else sensitive[representative]
        self._entities = None if entities is None else entities[representative]
        self._codes = tuple(codes)
        self._source = self._representative = None
        self._maps = ()
        return self._codes

    @property
    def codes(self) -> tuple[CodeArray | None, ...]:
        return self._codes if self._codes is not None else self._materialize()

    @property
    def sensitive(self) -> CodeArray | None:
        if self._codes is None:
            self._materialize()
        return self._sensitive

    @property
    def entities(self) -> CodeArray | None:
        if self._codes is None:
            self._materialize()
        return self._entities

    @property
    def size(self) -> int:
        return int(self.counts.size)


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

    @classmethod
    def build(
        cls,
        *,
        columns: Sequence[str],
        level_codes: Sequence[Sequence[npt.NDArray[np.intp]]],
        level_leaves: Sequence[Sequence[Int64Array]],
        base: Table,
        sensitive_values: int,
        k: int,
        l: int | None,  # noqa: E741 -- the model's name in the literature
        l_kind: str,
        max_suppressed: int,
        entity_values: int = 0,
    ) -> Problem:
        """Precompute maps and bounds. ``level_codes[q][h]`` maps leaf → label number at level h."""
        rows = int(base.counts.sum())
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
            leaf_codes = base.codes[q]
            marginal = (
                np.bincount(leaf_codes, weights=base.counts, minlength=domains[q]).astype(np.int64)
                if leaf_codes is not None
                else np.zeros(domains[q], dtype=np.int64)
            )
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
    """A node's classes: suppression, loss numerators and (optionally) its table and details."""

    levels: tuple[int, ...]
    suppressed: int
    numerators: tuple[int, ...]
    classes: int
    table: Table | None
    class_sizes: Int64Array | None = None
    class_failed: npt.NDArray[np.bool_] | None = None
    source_failed: npt.NDArray[np.bool_] | None = None
    class_entities: Int64Array | None = None


def _class_keys(
    problem: Problem, source: Table, levels: tuple[int, ...]
) -> tuple[Int64Array, int, tuple[object, ...], Int64Array | None, int]:
    """One integer key per combination of ``source`` at ``levels`` (sensitive value, then entity
    last), its bound, the maps that produce each column's generalized labels (``_TOP`` at the top)
    and, with entities, how to find the key of the quasi-identifiers alone (the class of each
    combination): ``key // divisor`` when the sensitive value and entity were appended without
    renumbering (no copy), else a copy of the class keys (``divisor`` 0). Labels are folded into the
    key column by column and not kept (``_labels`` recomputes them where needed)."""
    key: Int64Array | None = None
    bound = 1
    maps: list[object] = []
    for q, (level, codes) in enumerate(zip(levels, source.codes, strict=True)):
        if codes is None or level == problem.heights[q] - 1:
            maps.append(_TOP)
            continue
        mapping = problem.up[q][source.levels[q]][level]
        maps.append(mapping)
        key, bound = _extend_key(
            key, bound, codes if mapping is None else mapping[codes], problem.cardinality[q][level]
        )
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
    return key, bound, tuple(maps), class_key, divisor


def _labels(source: Table, q: int, mapping: object, rows: IntpArray) -> CodeArray:
    """Column q's generalized labels of ``source``'s combinations at ``rows`` (``mapping`` not top)."""
    codes = source.codes[q]
    if codes is None:  # pragma: no cover -- such a column's map is _TOP
        raise RuntimeError("no labels for a column at its top level")
    picked = codes[rows]
    return picked if mapping is None else mapping[picked]  # type: ignore[index]


def _extend_key(key: Int64Array | None, bound: int, labels: CodeArray, radix: int) -> tuple[Int64Array, int]:
    if key is None:
        return labels.astype(np.int64), radix
    if radix == 1:
        return key, bound
    if bound * radix >= _KEY_LIMIT:  # re-number the distinct keys so far to stay within 63 bits
        inverse, unique, _ = group_keys(key, bound)
        key, bound = inverse.astype(np.int64), int(unique.size)
    key *= radix
    key += labels
    return key, bound * radix


def _failing_classes(
    problem: Problem, counts: Int64Array, unique: Int64Array, diversity: bool
) -> tuple[IntpArray, Int64Array, npt.NDArray[np.bool_], IntpArray | None]:
    """Class starts (in groups), sizes, which fail k or l, and each group's class (with a sensitive
    column; otherwise classes are the groups)."""
    groups = int(unique.size)
    if not diversity:
        return np.arange(groups, dtype=np.intp), counts, counts < problem.k, None
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
    unique: Int64Array,
    group_class_key: Int64Array,
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


def evaluate(
    problem: Problem, source: Table, levels: tuple[int, ...], *, keep_table: bool, details: bool = False
) -> Evaluation:
    """Roll ``source`` (a table at a node ≤ ``levels``) up to ``levels`` and check the models.

    The loss numerators are computed only for an acceptable node (or with ``details``). With
    ``details``, also return the class sizes, which classes fail, and, for each combination of
    ``source``, whether its records are suppressed.
    """
    key, bound, maps, class_key, divisor = _class_keys(problem, source, levels)
    inverse, unique, representative = group_keys(key, bound)
    del key
    counts = np.bincount(inverse, weights=source.counts, minlength=unique.size).astype(np.int64)
    source_entities = source.entities
    class_entities: Int64Array | None = None
    class_of_group: IntpArray | None
    if source_entities is not None:
        starts, sizes, failed, class_of_group, class_entities = _failing_entity_classes(
            problem,
            counts,
            unique,
            unique // divisor if class_key is None else class_key[representative],
            source_entities[representative],
            source.sensitive is not None,
        )
    else:
        starts, sizes, failed, class_of_group = _failing_classes(
            problem, counts, unique, source.sensitive is not None
        )
    failed_classes = np.flatnonzero(failed)
    failed_sizes = sizes[failed_classes]
    suppressed = int(failed_sizes.sum())

    numerators: list[int] = []
    if suppressed <= problem.max_suppressed or details:
        failed_rows = representative[starts[failed_classes]]
        for q, (level, mapping) in enumerate(zip(levels, maps, strict=True)):
            domain = problem.domain_sizes[q]
            if mapping is _TOP:
                numerators.append(problem.rows * domain)
                continue
            leaves = problem.leaves[q][level][_labels(source, q, mapping, failed_rows)]
            numerators.append(problem.bound_numerator[q][level] + int(failed_sizes @ (domain - leaves)))

    table = Table.rolled_up(source, levels, counts, representative, maps) if keep_table else None
    if not details:
        return Evaluation(levels, suppressed, tuple(numerators), int(starts.size), table)
    group_failed = failed if class_of_group is None else failed[class_of_group]
    return Evaluation(
        levels,
        suppressed,
        tuple(numerators),
        int(starts.size),
        table,
        class_sizes=sizes,
        class_failed=failed,
        source_failed=group_failed[inverse],
        class_entities=class_entities,
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
        below = (self._levels[:count] <= levels).all(axis=1)
        return self._tables[int(np.argmin(np.where(below, self._sizes[:count], np.inf)))]

    def add(self, table: Table, source: Table) -> None:
        if table.size > self._budget // 2 or table.size > CACHE_MAX_SHARE * source.size:
            return
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


def _monotone(problem: Problem) -> bool:
    entropy = problem.l is not None and problem.l > 1 and problem.l_kind == "entropy"
    return not (entropy and problem.max_suppressed > 0)


class _Lattice:
    """Node numbering (mixed radix, first column most significant), bounds, and the masks that tag
    a node's generalizations or specializations in a few vectorized ANDs."""

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
        index = np.arange(size, dtype=np.int64)
        self.levels = np.stack(
            [(index // stride) % height for stride, height in zip(strides, heights, strict=True)], axis=1
        ).astype(np.int32)
        self.height = self.levels.sum(axis=1)
        self._at_least = [[self.levels[:, q] >= h for h in range(height)] for q, height in enumerate(heights)]
        self._at_most = [[self.levels[:, q] <= h for h in range(height)] for q, height in enumerate(heights)]
        accumulated = np.zeros(size, dtype=np.float64)
        for q, numerators in enumerate(problem.bound_numerator):
            terms = np.asarray([math.log1p(problem.loss_term(q, value)) for value in numerators])
            accumulated += terms[self.levels[:, q]]
        self.bound = np.expm1(accumulated / len(heights))
        self.order = np.lexsort((index, self.height, self.bound))

    def levels_of(self, node: int) -> tuple[int, ...]:
        return tuple(
            node // stride % height for stride, height in zip(self.strides, self.heights, strict=True)
        )

    def generalizations(self, levels: Sequence[int]) -> npt.NDArray[np.bool_]:
        """Mask of the nodes ≥ ``levels`` (the node included)."""
        mask = np.ones(self.size, dtype=np.bool_)
        for q, level in enumerate(levels):
            if level:
                mask &= self._at_least[q][level]
        return mask

    def specializations(self, levels: Sequence[int]) -> npt.NDArray[np.bool_]:
        """Mask of the nodes ≤ ``levels`` (the node included)."""
        mask = np.ones(self.size, dtype=np.bool_)
        for q, level in enumerate(levels):
            if level < self.heights[q] - 1:
                mask &= self._at_most[q][level]
        return mask


class _Search:
    """State of one search: node statuses, the cache, the best node so far (module docstring)."""

    def __init__(self, problem: Problem, base: Table, cache_budget: int) -> None:
        self.problem = problem
        self.lattice = lattice = _Lattice(problem)
        self.monotone = _monotone(problem)
        self.cache = _Cache(base, cache_budget)
        self.status = np.zeros(lattice.size, dtype=np.int8)
        self.done = np.zeros(lattice.size, dtype=np.bool_)  # evaluated, or dominated (rule 4)
        self.floor = np.zeros(lattice.size, dtype=np.int64)  # suppression known to be unavoidable
        self.bounds: list[float] = lattice.bound.tolist()
        self.heights: list[int] = lattice.height.tolist()
        self.best: tuple[float, int, int] = (math.inf, 0, -1)
        self.best_evaluation: Evaluation | None = None
        self.checked = 0

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
        source = self.cache.source_for(levels)
        outcome = evaluate(problem, source, levels, keep_table=True)
        self.checked += 1
        self.done[node] = True
        if outcome.table is not None:
            self.cache.add(outcome.table, source)
        if outcome.suppressed > problem.max_suppressed:
            if self.monotone:
                self.status[lattice.specializations(levels)] = _NOT_ANONYMOUS
            self.status[node] = _NOT_ANONYMOUS
            return
        above = lattice.generalizations(levels)
        if self.monotone:
            self.status[above] = _ANONYMOUS
            if outcome.suppressed:
                below = lattice.specializations(levels)
                np.maximum(self.floor, outcome.suppressed, out=self.floor, where=below)
        self.status[node] = _ANONYMOUS
        if outcome.suppressed == 0:
            self.done[above] = True
        loss = problem.total_loss(problem.loss_terms(outcome.numerators))
        candidate = (loss, self.heights[node], node)
        if candidate < self.best:
            # Without its table: the best node's table is no source for others unless cached.
            self.best, self.best_evaluation = candidate, replace(outcome, table=None)

    def refined_bound(self, node: int) -> float:
        """LB(node) with the suppression its generalizations prove unavoidable (monotone models):
        each suppressed record adds at least ``gaps[q][level]`` to I_q."""
        problem = self.problem
        suppressed = int(self.floor[node])
        return problem.total_loss(
            [
                problem.loss_term(q, problem.bound_numerator[q][level] + suppressed * problem.gaps[q][level])
                for q, level in enumerate(self.lattice.levels_of(node))
            ]
        )

    def successor(self, node: int) -> int:
        """The direct generalization of ``node`` with the least bound (-1 at the top)."""
        lattice = self.lattice
        options = [
            node + stride
            for stride, level, height in zip(
                lattice.strides, lattice.levels_of(node), lattice.heights, strict=True
            )
            if level < height - 1
        ]
        return min(options, key=lambda option: (self.bounds[option], option)) if options else -1

    def settle(self, node: int) -> None:
        """Decide ``node``'s status by a binary search along an upward path (monotone models)."""
        status = self.status
        path = [node]
        while status[path[-1]] != _ANONYMOUS:
            following = self.successor(path[-1])
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
) -> SearchOutcome:
    """Find the optimal node (see the module docstring); raises ``NoAnonymousTransformation``.

    ``cache_budget`` bounds the combinations kept in rolled-up tables (default ``CACHE_BUDGET``, 2^21:
    a fixed cap, so the cache does not grow with the input; a combination costs 16 bytes — int64
    count and representative — and, once its table serves as a source, an int64 count and 4 bytes
    per quasi-identifier, sensitive value and entity instead). Tables that keep more than
    ``CACHE_MAX_SHARE`` of their source's combinations are not cached at all: with an entity column
    nearly every record is a combination of its own at every node, and such tables would be copies
    of the input that save no work.
    """
    started = clock()
    state = _Search(problem, base, cache_budget if cache_budget is not None else CACHE_BUDGET)
    best = state.run()
    return SearchOutcome(
        levels=best.levels,
        suppressed=best.suppressed,
        loss=state.best[0],
        loss_terms=tuple(problem.loss_terms(best.numerators)),
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
        loss = problem.total_loss(problem.loss_terms(outcome.numerators))
        results.append((levels, outcome.suppressed, loss))
    return results
