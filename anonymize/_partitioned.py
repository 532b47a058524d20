"""The search for an input that is never held whole: partitions kept on disk, evaluated in turn.

``plan_release`` holds the input's distinct combinations in memory, and with k counted in entities
nearly every record is one: memory then grows with the records. ``plan_partitioned_release`` takes
the records as *partitions* of one quasi-identifier, ``by``, such that no label of ``by`` below its
top level has records in two partitions (for dates: partitions by year, since days, weeks, months
and quarters all lie within a year). Then the classes of a node at which ``by`` is below its top
never span two partitions, and such a node is evaluated partition by partition, summing what the
search needs — suppressed records, loss numerators — and failing as soon as the suppression
limit is passed. The nodes at which ``by`` is at its top are evaluated from one table built from
every partition with ``by`` left out, the *collapsed* table, by the search's usual machinery (its
cache included). The result is the same transformation, suppression and guarantee that
``plan_release`` returns for all the partitions' records together (tested against it).

Memory: each partition's distinct combinations and its records' combination numbers are written
to a temporary folder as they are built and read back one partition at a time; what stays is the
collapsed table, the per-leaf record counts, and the suppressed flag of each record (1 byte each,
the release's answer). The collapsed table has one entry per distinct combination of the other
columns, sensitive value and entity: with a few dates per entity it is much smaller than the input,
and with ``by`` a date it stops growing with the period once every entity has appeared (the
other columns of an entity change little over time).

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
    distinct_combinations,
    release_guarantee,
)
from anonymize._errors import InvalidConfig
from anonymize._lattice import (
    Evaluation,
    Problem,
    Table,
    evaluate,
    group_keys,
    leaf_counts,
    search,
    sum_by_key,
)

__all__ = ["plan_partitioned_release"]

_ARRAYS = ("counts", "sensitive", "entities", "inverse")


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
    partition (at most the merged table and one partition's at once)."""

    def __init__(self, columns: int, by: int, domains: list[int]) -> None:
        self.by = by
        self.domains = domains
        self.codes: list[npt.NDArray[np.int32] | None] = [None] * columns
        self.sensitive: npt.NDArray[np.int32] | None = None
        self.entities: npt.NDArray[np.int32] | None = None
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, table: Table, sensitive_values: int, entity_values: int) -> None:
        def joined(
            mine: npt.NDArray[np.int32] | None, theirs: npt.NDArray[np.int32] | None
        ) -> npt.NDArray[np.int32] | None:
            if theirs is None:
                return None
            return theirs if mine is None else np.concatenate([mine, theirs])

        codes = [None if q == self.by else joined(self.codes[q], c) for q, c in enumerate(table.codes)]
        sensitive = joined(self.sensitive, table.sensitive)
        entities = joined(self.entities, table.entities)
        counts = np.concatenate([self.counts, table.counts])
        digits = [(c, self.domains[q]) for q, c in enumerate(codes) if c is not None]
        if sensitive is not None:
            digits.append((sensitive, sensitive_values))
        if entities is not None:
            digits.append((entities, entity_values))
        key, bound = combination_key(digits, int(counts.size))
        representative, totals = sum_by_key(key, bound, counts)
        del key
        self.codes = [None if c is None else c[representative] for c in codes]
        self.sensitive = None if sensitive is None else sensitive[representative]
        self.entities = None if entities is None else entities[representative]
        self.counts = totals

    def table(self, levels: tuple[int, ...]) -> Table:
        return Table(levels, tuple(self.codes), self.sensitive, self.counts, self.entities)


def combination_key(
    digits: list[tuple[npt.NDArray[np.int32], int]], size: int
) -> tuple[npt.NDArray[np.int64], int]:
    """One int64 key per position from columns of codes (each below its radix), in mixed radix,
    distinct positions renumbered whenever the radices' product would pass 2^62."""
    key = np.zeros(size, dtype=np.int64)
    bound = 1
    for values, count in digits:
        radix = max(count, 1)
        if bound * radix >= 1 << 62:
            inverse, unique, _ = group_keys(key, bound)
            key, bound = inverse.astype(np.int64), int(unique.size)
        key *= radix
        key += values
        bound *= radix
    return key, bound


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
    """The partitions on disk and how to evaluate a node from them."""

    def __init__(self, problem: Problem, parts: list[_Part], by: int) -> None:
        self.problem = problem
        self.parts = parts
        self.by = by
        self.top = problem.heights[by] - 1

    def evaluate(self, levels: tuple[int, ...], loss_cap: float) -> Evaluation | None:
        """``evaluate``'s answer for a node at which ``by`` is below its top (``None`` at the top):
        the partitions' suppression and loss deficits summed, stopped once past the limit."""
        if levels[self.by] == self.top:
            return None
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
        self, levels: tuple[int, ...], collapsed: Table, entity_values: int
    ) -> tuple[list[npt.NDArray[np.bool_]], npt.NDArray[np.int64], npt.NDArray[np.int64] | None, int]:
        """At the chosen node: each partition's suppressed records, the released classes' sizes and
        distinct entities, and the distinct entities among the suppressed records."""
        problem = self.problem
        suppressed_entities = np.zeros(max(entity_values, 1), dtype=np.bool_)
        flags: list[npt.NDArray[np.bool_]] = []
        sizes: list[npt.NDArray[np.int64]] = []
        entities: list[npt.NDArray[np.int64]] = []
        if levels[self.by] == self.top:
            final = _details(problem, collapsed, levels)
            failed_combinations = final.source_failed
            failing = _rows_as_keys(_class_labels(problem, collapsed, levels)[failed_combinations])
            sizes.append(final.class_sizes[~final.class_failed])
            if final.class_entities is not None:
                entities.append(final.class_entities[~final.class_failed])
            if collapsed.entities is not None:
                suppressed_entities[collapsed.entities[failed_combinations]] = True
            for part in self.parts:
                table = part.table()
                labels = _class_labels(problem, table, levels)
                if labels.shape[1]:
                    failed = np.isin(_rows_as_keys(labels), failing)
                else:  # every record in one class
                    failed = np.full(table.size, bool(failed_combinations.any()))
                del labels, table
                flags.append(failed[part.inverse()])
        else:
            for part in self.parts:
                table = part.table()
                final = _details(problem, table, levels)
                sizes.append(final.class_sizes[~final.class_failed])
                if final.class_entities is not None:
                    entities.append(final.class_entities[~final.class_failed])
                if table.entities is not None:
                    suppressed_entities[table.entities[final.source_failed]] = True
                flags.append(final.source_failed[part.inverse()])
        kept_sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
        kept_entities = np.concatenate(entities) if entities else None
        return flags, kept_sizes, kept_entities, int(np.count_nonzero(suppressed_entities))


@dataclass(frozen=True)
class _Details:
    source_failed: npt.NDArray[np.bool_]
    class_sizes: npt.NDArray[np.int64]
    class_failed: npt.NDArray[np.bool_]
    class_entities: npt.NDArray[np.int64] | None


def _details(problem: Problem, table: Table, levels: tuple[int, ...]) -> _Details:
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
    with tempfile.TemporaryDirectory(prefix="anonymize-", dir=spill_dir) as spill:
        folder = Path(spill)
        stored: list[_Part] = []
        marginals = [np.zeros(domain, dtype=np.int64) for domain in domains]
        collapsed = _Collapsed(len(columns), b, domains)
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
                    raise InvalidConfig(
                        f"two partitions hold records under one {by!r} label below its top level"
                    )
                seen[present] = True
            for q, domain in enumerate(domains):
                marginals[q] += leaf_counts(base, q, domain)
            collapsed.add(base, sensitive_values, entity_values)
            stored.append(_Part.save(folder, number, base, inverse))
            rows += int(inverse.size)
            del base, inverse
        sensitive_values, entity_values = coding if coding is not None else (1, 0)
        problem = build_problem(
            config,
            rows=rows,
            sensitive_values=sensitive_values,
            entity_values=entity_values,
            marginals=marginals,
        )
        if rows == 0:
            return ReleasePlan(config, _empty_guarantee(config, problem), np.zeros(0, dtype=np.bool_))
        collapsed_levels = tuple(problem.heights[q] - 1 if q == b else 0 for q in range(len(columns)))
        collapsed_table = collapsed.table(collapsed_levels)
        partitions = _Partitions(problem, stored, b)
        outcome = search(problem, collapsed_table, clock=clock, evaluator=partitions.evaluate)
        flags, kept_sizes, kept_entities, suppressed_entities = partitions.release(
            outcome.levels, collapsed.table(collapsed_levels), entity_values
        )
    suppressed_rows = np.concatenate(flags) if flags else np.zeros(0, dtype=np.bool_)
    suppressed_rows.flags.writeable = False
    guarantee = release_guarantee(
        config,
        outcome,
        rows,
        kept_sizes,
        kept_entities,
        suppressed_entities if config.entity is not None else None,
    )
    return ReleasePlan(config, guarantee, suppressed_rows, kept_sizes, kept_entities)
