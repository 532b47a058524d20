"""The search for an input that is never held whole: partitions kept on disk, evaluated in turn.

``plan_release`` holds the input's distinct combinations in memory, and with k counted in entities
nearly every record is one: memory then grows with the records. ``plan_partitioned_release`` takes
the records as *partitions* of one quasi-identifier, ``by``, such that no label of ``by`` below its
top level has records in two partitions (for dates: partitions by year, since days, weeks, months
and quarters all lie within a year). Then the classes of a node at which ``by`` is below its top
never span two partitions, and such a node is evaluated partition by partition, summing what the
search needs — suppressed records, loss numerators — and failing as soon as the suppression
limit is passed. The nodes at which ``by`` is at its top are evaluated from tables merged across
the partitions with ``by`` left out (``_Collapsed``, ``_Top``): one table when only one of a
sensitive column and an entity column is checked, evaluated by the search's usual machinery (its
cache included); two — (other columns, entity) and (other columns, sensitive value) — when both
are, since one table of both would again hold about a combination per record. The result is the
same transformation, suppression and guarantee that ``plan_release`` returns for all the
partitions' records together (tested against it, node by node).

Memory: each partition's distinct combinations and its records' combination numbers are written
to a temporary folder as they are built and read back one partition at a time; what stays is the
merged tables, the per-leaf record counts, and the suppressed flag of each record (1 byte each,
the release's answer). The merged tables have one entry per distinct combination of the other
columns with an entity or a sensitive value: with ``by`` a date they stop growing with the period
once every entity (and every combination of the other columns) has appeared.

Cost: every evaluation below the top reads the partitions back (from the page cache, in practice)
and the partitions are evaluated without a cache of rolled-up tables.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import numpy.typing as npt

from anonymize._config import AnonymizationConfig
from anonymize._engine import (
    EncodedTable,
    ReleasePlan,
    _check_encoded,
    _empty_guarantee,
    _search_inputs,
    build_problem,
    checks_diversity,
    combination_key,
    distinct_combinations,
    release_guarantee,
)
from anonymize._errors import InvalidConfig
from anonymize._lattice import (
    Evaluation,
    Problem,
    Table,
    evaluate,
    leaf_counts,
    search,
    sum_by_key,
)

__all__ = ["plan_partitioned_release"]

_ARRAYS = ("counts", "sensitive", "entities", "inverse")
KEYED_LIMIT = 1 << 62


@dataclass(frozen=True)
class _Part:
    """One partition on disk: its level-0 table's arrays and its records' combination numbers."""

    folder: Path
    number: int
    columns: int

    def _path(self, name: str) -> Path:
        return self.folder / f"{self.number}-{name}.npy"

    @classmethod
    def save(cls, folder: Path, number: int, table: Table, inverse: npt.NDArray[np.signedinteger]) -> _Part:
        part = cls(folder, number, len(table.levels))
        arrays = {f"codes{q}": codes for q, codes in enumerate(table.codes)}
        arrays.update(zip(_ARRAYS, (table.counts, table.sensitive, table.entities, inverse), strict=True))
        for name, values in arrays.items():
            if values is not None:
                np.save(part._path(name), values)
        return part

    def _load(self, name: str) -> npt.NDArray[np.signedinteger] | None:
        path = self._path(name)
        return np.load(path) if path.exists() else None

    def table(self) -> Table:
        codes = tuple(self._load(f"codes{q}") for q in range(self.columns))
        counts = self._load("counts")
        if counts is None:  # pragma: no cover -- every part saves its counts
            raise RuntimeError("a partition lost its counts")
        return Table((0,) * self.columns, codes, self._load("sensitive"), counts, self._load("entities"))

    def inverse(self) -> npt.NDArray[np.signedinteger]:
        inverse = self._load("inverse")
        if inverse is None:  # pragma: no cover -- every part saves its inverse
            raise RuntimeError("a partition lost its records")
        return inverse


class _Collapsed:
    """The distinct combinations of every partition with column ``by`` left out, merged partition by
    partition, keeping the sensitive values and/or the entities as asked.

    Held as the sorted mixed-radix keys of the combinations with their record counts (16 bytes
    each), into which each partition's distinct keys are merged by a binary search: the transient
    memory of a merge is about the merged table's size again, where regrouping the concatenated
    combinations would sort them all (about 60 bytes each). Keys wider than ``KEYED_LIMIT`` (many
    wide columns) fall back to that regrouping.
    """

    def __init__(self, columns: int, by: int, domains: list[int], *, sensitive: bool, entities: bool) -> None:
        self.columns = columns
        self.by = by
        self.domains = domains
        self.keep_sensitive = sensitive
        self.keep_entities = entities
        self.radices: list[int] = []
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.regrouped: Table | None = None  # the fallback's merged table

    def _digits(self, table: Table) -> list[npt.NDArray[np.int32]]:
        """The table's columns that make a combination, in key order (most significant first)."""
        digits = [codes for q, codes in enumerate(table.codes) if q != self.by and codes is not None]
        if self.keep_sensitive and table.sensitive is not None:
            digits.append(table.sensitive)
        if self.keep_entities and table.entities is not None:
            digits.append(table.entities)
        return digits

    def add(self, table: Table, sensitive_values: int, entity_values: int) -> None:
        if not self.radices:
            self.radices = [max(self.domains[q], 1) for q in range(self.columns) if q != self.by]
            self.radices += [max(sensitive_values, 1)] * self.keep_sensitive
            self.radices += [max(entity_values, 1)] * self.keep_entities
        digits = self._digits(table)
        if math.prod(self.radices) >= KEYED_LIMIT:
            self._regroup(digits, table.counts)
            return
        key, bound = combination_key([*zip(digits, self.radices, strict=True)], table.size)
        representative, totals = sum_by_key(key, bound, table.counts)
        unique = key[representative]
        del key, representative
        at = np.searchsorted(self.keys, unique)
        found = at < self.keys.size
        found[found] = self.keys[at[found]] == unique[found]
        self.counts[at[found]] += totals[found]  # distinct keys, so distinct positions
        new = ~found
        self.keys = np.insert(self.keys, at[new], unique[new])
        self.counts = np.insert(self.counts, at[new], totals[new])

    def _regroup(self, digits: list[npt.NDArray[np.int32]], counts: npt.NDArray[np.int64]) -> None:
        if self.regrouped is not None:
            mine = self._digits(self.regrouped)
            digits = [np.concatenate([a, b]) for a, b in zip(mine, digits, strict=True)]
            counts = np.concatenate([self.regrouped.counts, counts])
        key, bound = combination_key([*zip(digits, self.radices, strict=True)], int(counts.size))
        representative, totals = sum_by_key(key, bound, counts)
        del key
        self.regrouped = self._table((0,) * self.columns, [d[representative] for d in digits], totals)

    def _table(
        self, levels: tuple[int, ...], digits: list[npt.NDArray[np.int32]], counts: npt.NDArray[np.int64]
    ) -> Table:
        columns = iter(digits)
        codes = tuple(None if q == self.by else next(columns) for q in range(self.columns))
        sensitive = next(columns) if self.keep_sensitive else None
        entities = next(columns) if self.keep_entities else None
        return Table(levels, codes, sensitive, counts, entities)

    def table(self, levels: tuple[int, ...]) -> Table:
        """The merged combinations as a table at ``levels`` (``by`` at its top, the rest leaves)."""
        if self.regrouped is not None:
            return self._table(levels, self._digits(self.regrouped), self.regrouped.counts)
        if not self.radices:  # nothing added
            width = self.columns - 1 + self.keep_sensitive + self.keep_entities
            return self._table(levels, [np.zeros(0, dtype=np.int32)] * width, self.counts)
        digits: list[npt.NDArray[np.int32]] = []
        rest = self.keys.copy()
        for radix in reversed(self.radices):
            digits.append((rest % radix).astype(np.int32))
            rest //= radix
        return self._table(levels, digits[::-1], self.counts)


class _Top:
    """The nodes at which ``by`` is at its top, evaluated from the collapsed tables.

    With both a sensitive column and entities, one table of (other columns, sensitive value,
    entity) would hold about a combination per record again (an entity's records seldom share a
    sensitive value and all their labels); so two are kept, *people* (other columns, entity) and
    *values* (other columns, sensitive value), each with record counts. Both hold the same records,
    hence the same classes in the same order: the values table decides which classes fail l (and
    k in records, which implies failing k in entities), and the people table evaluates the node
    with those classes failing too. With only one of the two columns, the one table is small, and
    the search's own machinery (its cache of rolled-up tables) evaluates these nodes from it.
    """

    def __init__(self, problem: Problem, by: int, people: _Collapsed, values: _Collapsed | None) -> None:
        self.problem = problem
        self.levels = tuple(problem.heights[q] - 1 if q == by else 0 for q in range(len(problem.heights)))
        self.people = people.table(self.levels)
        self.values = None if values is None else values.table(self.levels)

    def evaluate(
        self, levels: tuple[int, ...], loss_cap: float, *, details: bool = False
    ) -> Evaluation | None:
        """``evaluate``'s answer from the two tables (``None`` with only one: the search's)."""
        if self.values is None:
            return None
        failing = evaluate(self.problem, self.values, levels, keep_table=False, details=True).class_failed
        return evaluate(
            self.problem,
            self.people,
            levels,
            keep_table=False,
            details=details,
            loss_cap=loss_cap,
            also_failing=failing,
        )


def _rows_as_keys(matrix: npt.NDArray[np.intp]) -> npt.NDArray[np.void]:
    """Each row of a 2-D integer array as one opaque value, for set membership."""
    contiguous = np.ascontiguousarray(matrix)
    return contiguous.view(np.dtype((np.void, contiguous.dtype.itemsize * contiguous.shape[1]))).ravel()


def _class_labels(problem: Problem, table: Table, levels: tuple[int, ...]) -> npt.NDArray[np.intp]:
    """Each combination's labels at ``levels``, one column per quasi-identifier below its top."""
    columns = []
    for q, level in enumerate(levels):
        if level == problem.heights[q] - 1:
            continue
        codes = table.codes[q]
        if codes is None:  # pragma: no cover -- only the collapsed column is None, and it is at its top
            raise RuntimeError("a column below its top without labels")
        mapping = problem.up[q][0][level] if level else None
        columns.append((codes if mapping is None else mapping[codes]).astype(np.intp))
    if not columns:
        return np.zeros((table.size, 0), dtype=np.intp)
    return np.stack(columns, axis=1)


class _Partitions:
    """The partitions on disk and how to evaluate a node from them or from the collapsed tables."""

    def __init__(
        self, problem: Problem, parts: list[_Part], by: int, top: _Top, rows: int, entity_values: int
    ) -> None:
        self.problem = problem
        self.parts = parts
        self.by = by
        self.top = top
        self.rows = rows
        self.entity_values = entity_values

    def below_top(self, levels: tuple[int, ...]) -> bool:
        return levels[self.by] < self.problem.heights[self.by] - 1

    def evaluate(self, levels: tuple[int, ...], loss_cap: float) -> Evaluation | None:
        """``evaluate``'s answer for a node: partition by partition if ``by`` is below its top
        (the suppression and loss deficits summed, stopped once past the limit), else from the
        collapsed tables (``None``: from the search's)."""
        if not self.below_top(levels):
            return self.top.evaluate(levels, loss_cap)
        problem = self.problem
        baseline = [problem.bound_numerator[q][level] for q, level in enumerate(levels)]
        numerators = list(baseline)
        suppressed = classes = 0
        for part in self.parts:
            outcome = evaluate(problem, part.table(), levels, keep_table=False, loss_cap=math.inf)
            suppressed += outcome.suppressed
            classes += outcome.classes
            if suppressed > problem.max_suppressed:  # not anonymous, whatever the other partitions hold
                return Evaluation(levels, suppressed, None, classes, None)
            for q, value in enumerate(outcome.computed_numerators()):
                numerators[q] += value - baseline[q]
        wanted = not suppressed or problem.suppression_bound(levels, suppressed) <= loss_cap
        return Evaluation(levels, suppressed, tuple(numerators) if wanted else None, classes, None)

    def release(
        self, levels: tuple[int, ...]
    ) -> tuple[list[npt.NDArray[np.bool_]], npt.NDArray[np.int64], npt.NDArray[np.int64] | None, int]:
        """At the chosen node: each partition's suppressed records, the released classes' sizes and
        distinct entities, and the distinct entities among the suppressed records."""
        problem = self.problem
        suppressed_entities = np.zeros(max(self.entity_values, 1), dtype=np.bool_)
        flags: list[npt.NDArray[np.bool_]] = []
        sizes: list[npt.NDArray[np.int64]] = []
        entities: list[npt.NDArray[np.int64]] = []

        def keep(final: _Details, table: Table) -> None:
            sizes.append(final.class_sizes[~final.class_failed])
            if final.class_entities is not None:
                entities.append(final.class_entities[~final.class_failed])
            if table.entities is not None:
                suppressed_entities[table.entities[final.source_failed]] = True

        if self.below_top(levels):
            for part in self.parts:
                table = part.table()
                final = _details(problem, table, levels)
                keep(final, table)
                flags.append(final.source_failed[part.inverse()])
        else:
            collapsed = self.top.people
            final = _details(problem, collapsed, levels, self.top)
            keep(final, collapsed)
            failing = _rows_as_keys(_class_labels(problem, collapsed, levels)[final.source_failed])
            any_failed = bool(final.source_failed.any())
            for part in self.parts:
                table = part.table()
                labels = _class_labels(problem, table, levels)
                if labels.shape[1]:
                    failed = np.isin(_rows_as_keys(labels), failing)
                else:  # every record in one class
                    failed = np.full(table.size, any_failed)
                del labels, table
                flags.append(failed[part.inverse()])
        kept_sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
        kept_entities = np.concatenate(entities) if entities else None
        return flags, kept_sizes, kept_entities, int(np.count_nonzero(suppressed_entities))


@dataclass(frozen=True)
class _Details:
    source_failed: npt.NDArray[np.bool_]
    class_sizes: npt.NDArray[np.int64]
    class_failed: npt.NDArray[np.bool_]
    class_entities: npt.NDArray[np.int64] | None


def _details(problem: Problem, table: Table, levels: tuple[int, ...], top: _Top | None = None) -> _Details:
    """The evaluation's details at the chosen node, from ``table`` (or ``top``'s two tables)."""
    final = None if top is None else top.evaluate(levels, math.inf, details=True)
    if final is None:
        final = evaluate(problem, table, levels, keep_table=False, details=True)
    if final.source_failed is None or final.class_sizes is None or final.class_failed is None:
        raise RuntimeError("evaluate(details=True) returned no details")  # pragma: no cover
    return _Details(final.source_failed, final.class_sizes, final.class_failed, final.class_entities)


def plan_partitioned_release(
    parts: Iterable[EncodedTable],
    config: AnonymizationConfig,
    *,
    by: str,
    spill_dir: str | Path | None = None,
    clock: Callable[[], float] = perf_counter,
) -> ReleasePlan:
    """``plan_release`` of the records of ``parts`` together, never holding them whole (module
    docstring). ``parts`` is consumed once, one partition at a time; every partition codes the
    sensitive values and entities alike (the same ``sensitive_values`` and ``entity_values``).
    The plan's ``suppressed_rows`` are the partitions' records in the order given, partition after
    partition. Temporary files go to ``spill_dir`` (default: the system's temporary folder) and
    are deleted before this returns.

    Raises ``InvalidConfig`` if ``by`` is not a quasi-identifier, if two partitions hold records
    under one label of ``by`` below its top, or if the partitions code values differently; the
    errors of ``plan_release`` otherwise.
    """
    with tempfile.TemporaryDirectory(prefix="anonymize-", dir=spill_dir) as spill:
        partitions = spill_partitions(parts, config, by=by, folder=Path(spill))
        problem = partitions.problem
        if partitions.rows == 0:
            return ReleasePlan(config, _empty_guarantee(config, problem), np.zeros(0, dtype=np.bool_))
        # The search's own tables start from the collapsed one: it evaluates the nodes at which
        # ``by`` is at its top when there is only one collapsed table (``_Top``).
        outcome = search(problem, partitions.top.people, clock=clock, evaluator=partitions.evaluate)
        flags, kept_sizes, kept_entities, suppressed_entities = partitions.release(outcome.levels)
    suppressed_rows = np.concatenate(flags) if flags else np.zeros(0, dtype=np.bool_)
    suppressed_rows.flags.writeable = False
    guarantee = release_guarantee(
        config,
        outcome,
        partitions.rows,
        kept_sizes,
        kept_entities,
        suppressed_entities if config.entity is not None else None,
    )
    return ReleasePlan(config, guarantee, suppressed_rows, kept_sizes, kept_entities)


def spill_partitions(
    parts: Iterable[EncodedTable], config: AnonymizationConfig, *, by: str, folder: Path
) -> _Partitions:
    """Check and write each partition to ``folder``, merging the collapsed tables as they come
    (see ``plan_partitioned_release``)."""
    columns = list(config.quasi_identifiers)
    if by not in config.quasi_identifiers:
        raise InvalidConfig(f"partitions must be by a quasi-identifier, and {by!r} is not one")
    b = columns.index(by)
    by_hierarchy = config.quasi_identifiers[by]
    domains = [hierarchy.domain_size for hierarchy in config.quasi_identifiers.values()]
    # Levels nest, so labels below the top are disjoint between partitions if those of the level
    # just below the top are.
    check_level = by_hierarchy.height - 2
    seen = np.zeros(len(by_hierarchy.labels(check_level)) if check_level >= 0 else 0, dtype=np.bool_)
    stored: list[_Part] = []
    marginals = [np.zeros(domain, dtype=np.int64) for domain in domains]
    with_sensitive, with_entities = checks_diversity(config), config.entity is not None
    factored = with_sensitive and with_entities  # see _Top
    people = _Collapsed(
        len(columns), b, domains, sensitive=not factored and with_sensitive, entities=with_entities
    )
    values = _Collapsed(len(columns), b, domains, sensitive=True, entities=False) if factored else None
    coding: tuple[int, int] | None = None
    rows = 0
    for number, encoded in enumerate(parts):
        _check_encoded(encoded, config)
        leaf_codes, sensitive, sensitive_values, entities, entity_values = _search_inputs(encoded, config)
        if coding is None:
            coding = (sensitive_values, entity_values)
        elif coding != (sensitive_values, entity_values):
            raise InvalidConfig("every partition must code sensitive values and entities alike")
        base, inverse = distinct_combinations(
            leaf_codes, domains, sensitive, sensitive_values, entities, entity_values
        )
        del leaf_codes, sensitive, entities, encoded
        if check_level >= 0 and base.size:
            present = np.unique(by_hierarchy.codes(check_level)[base.codes[b]])
            if seen[present].any():
                raise InvalidConfig(f"two partitions hold records under one {by!r} label below its top level")
            seen[present] = True
        for q, domain in enumerate(domains):
            marginals[q] += leaf_counts(base, q, domain)
        people.add(base, sensitive_values, entity_values)
        if values is not None:
            values.add(base, sensitive_values, entity_values)
        stored.append(_Part.save(folder, number, base, inverse))
        rows += int(inverse.size)
        del base, inverse
    sensitive_values, entity_values = coding if coding is not None else (1, 0)
    problem = build_problem(
        config, rows=rows, sensitive_values=sensitive_values, entity_values=entity_values, marginals=marginals
    )
    return _Partitions(problem, stored, b, _Top(problem, b, people, values), rows, entity_values)
