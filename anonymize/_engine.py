"""``anonymize``: encode a table, search the lattice, release the generalized table.

``plan_release`` is the search on an already encoded table (``EncodedTable``, integers only) and
returns a ``ReleasePlan`` that generalizes any slice of rows, so a caller can stream its rows twice —
once to encode them, once to release them — without ever holding them whole. Only the distinct
combinations of quasi-identifier leaves (with sensitive values and entities) reach the search; rows
come back in at the end, when the chosen levels are applied with one gather per column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from anonymize._config import AnonymizationConfig, AnonymizationResult, Guarantee
from anonymize._errors import ColumnNotFound, InvalidConfig, MissingValues, ValueNotInHierarchy
from anonymize._hierarchy import SUPPRESSED, Hierarchy
from anonymize._lattice import Problem, SearchOutcome, Table, evaluate, group_keys, search

__all__ = [
    "EncodedTable",
    "ReleasePlan",
    "anonymize",
    "build_problem",
    "combination_key",
    "distinct_combinations",
    "encode_columns",
    "encode_table",
    "plan_release",
    "release_guarantee",
]

TableLike = pl.DataFrame | Mapping[str, Sequence[object]]


def encode_columns(frame: pl.DataFrame, hierarchies: Mapping[str, Hierarchy]) -> list[npt.NDArray[np.int32]]:
    """Leaf number of each row's value, per column (encoded in parallel by Polars).

    Raises ``MissingValues`` for nulls and ``ValueNotInHierarchy`` for values that are not leaves.
    """
    for column in hierarchies:
        nulls = frame.get_column(column).null_count()
        if nulls:
            raise MissingValues(f"column {column!r} has {nulls} missing value(s)", column=column, count=nulls)
    # An Enum of the leaves, in hierarchy order, numbers each value by its leaf position; values
    # that are not leaves become null.
    encoded = frame.select(
        pl.col(column).cast(pl.String).cast(pl.Enum(hierarchy.leaves), strict=False).to_physical()
        for column, hierarchy in hierarchies.items()
    )
    codes = []
    for column in hierarchies:
        series = encoded.get_column(column)
        unknown = series.null_count()
        if unknown:
            raise ValueNotInHierarchy(
                f"{unknown} value(s) of column {column!r} are not in its hierarchy",
                column=column,
                count=unknown,
            )
        codes.append(series.to_numpy().astype(np.int32, copy=False))
    return codes


def _encode_values(frame: pl.DataFrame, column: str) -> tuple[npt.NDArray[np.int32], int]:
    series = frame.get_column(column)
    if series.null_count():
        raise MissingValues(
            f"column {column!r} has {series.null_count()} missing value(s)",
            column=column,
            count=series.null_count(),
        )
    text = series.cast(pl.String)
    values = text.unique().sort()
    codes = text.replace_strict(values, np.arange(values.len(), dtype=np.int32), return_dtype=pl.Int32)
    return codes.to_numpy().astype(np.int32, copy=False), values.len()


def distinct_combinations(
    codes: Sequence[npt.NDArray[np.int32]],
    cardinalities: Sequence[int],
    sensitive: npt.NDArray[np.int32] | None,
    sensitive_values: int,
    entities: npt.NDArray[np.int32] | None = None,
    entity_values: int = 0,
) -> tuple[Table, npt.NDArray[np.signedinteger[Any]]]:
    """The level-0 table of the rows (distinct combinations with counts) and each row's combination
    (4-byte numbers below 2^31 combinations, as are the table's codes)."""
    rows = int(codes[0].size) if codes else 0
    parts = [*zip(codes, cardinalities, strict=True)]
    if sensitive is not None:
        parts.append((sensitive, sensitive_values))
    if entities is not None:
        parts.append((entities, entity_values))
    key, bound = combination_key(parts, rows)
    inverse, _, representative = group_keys(key, bound)
    del key
    counts = np.bincount(inverse, minlength=representative.size).astype(np.int64, copy=False)
    table = Table(
        levels=(0,) * len(codes),
        codes=tuple(column[representative].astype(np.int32, copy=False) for column in codes),
        sensitive=None if sensitive is None else sensitive[representative].astype(np.int32, copy=False),
        counts=counts,
        entities=None if entities is None else entities[representative].astype(np.int32, copy=False),
    )
    if representative.size < 1 << 31:
        return table, inverse.astype(np.int32)
    return table, inverse


def combination_key(
    digits: Sequence[tuple[npt.NDArray[np.int32], int]], size: int
) -> tuple[npt.NDArray[np.signedinteger[Any]], int]:
    """One key per position from columns of codes, each below its radix (mixed radix, the first
    column most significant), and the keys' bound. The distinct keys so far are renumbered
    (in order) whenever the radices' product would pass 2^62. A key below 2^31 is built in 4
    bytes: half the memory traffic over every row."""
    narrow = math.prod(max(radix, 1) for _, radix in digits) < 1 << 31
    key: npt.NDArray[np.signedinteger[Any]] = np.zeros(size, dtype=np.int32 if narrow else np.int64)
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


@dataclass(frozen=True)
class EncodedTable:
    """A table already reduced to integers — what the search needs and nothing else.

    ``leaves[column]`` holds, per row, the position of the row's value among the leaves of the
    column's hierarchy (``Hierarchy.leaf_index``); ``sensitive`` and ``entities`` hold codes
    ``0 … sensitive_values-1`` / ``0 … entity_values-1`` (any numbering: only equality matters).
    This is the compact form a caller that streams its rows builds, a few bytes per row, instead of
    a table of strings; ``anonymize`` builds it from a DataFrame.
    """

    leaves: Mapping[str, npt.NDArray[np.int32]]
    sensitive: npt.NDArray[np.int32] | None = None
    sensitive_values: int = 1
    entities: npt.NDArray[np.int32] | None = None
    entity_values: int = 0

    @property
    def rows(self) -> int:
        first = next(iter(self.leaves.values()), None)
        return 0 if first is None else int(first.size)


@dataclass(frozen=True)
class ReleasePlan:
    """The chosen transformation: levels, which rows are suppressed, and the guarantee.

    ``generalize`` applies it to any slice of the rows (``anonymize`` to all of them at once, a
    streaming writer chunk by chunk), so the released values never need the whole table in memory.
    """

    config: AnonymizationConfig
    guarantee: Guarantee
    suppressed_rows: npt.NDArray[np.bool_] = field(repr=False)
    # The released classes (the suppressed records left out): records and distinct entities of each.
    class_sizes: npt.NDArray[np.int64] = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    class_entities: npt.NDArray[np.int64] | None = field(repr=False, default=None)

    def generalize(
        self, column: str, leaves: npt.NDArray[np.int32], suppressed: npt.NDArray[np.bool_]
    ) -> pl.Series:
        """The released labels of ``column`` for rows with these leaf positions (``*`` where
        ``suppressed``)."""
        return self._gather_labels(column, leaves, np.flatnonzero(suppressed))

    def _gather_labels(
        self, column: str, leaves: npt.NDArray[np.int32], suppressed: npt.NDArray[np.intp]
    ) -> pl.Series:
        hierarchy = self.config.quasi_identifiers[column]
        level = self.guarantee.levels[column]
        labels = pl.Series(column, [*hierarchy.labels(level), SUPPRESSED], dtype=pl.String)
        generalized = hierarchy.codes(level)[leaves]
        generalized[suppressed] = len(hierarchy.labels(level))
        return labels.gather(pl.Series(generalized))

    def release_column(
        self, values: pl.Series, leaves: npt.NDArray[np.int32], suppressed: npt.NDArray[np.intp]
    ) -> pl.Series:
        """``generalize`` for the rows of ``values`` (the column as given, ``leaves`` its encoding),
        ``suppressed`` as row positions. At level 0 the labels are the values' string forms (the
        encoding matched them to the leaves exactly), so the column is copied with ``*`` written
        over the suppressed rows instead of being gathered label by label."""
        column = values.name
        if self.guarantee.levels[column]:
            return self._gather_labels(column, leaves, suppressed)
        text = values.cast(pl.String)
        return text.scatter(suppressed, SUPPRESSED) if suppressed.size else text


def _check_encoded(encoded: EncodedTable, config: AnonymizationConfig) -> None:
    rows = encoded.rows
    for column in config.quasi_identifiers:
        if column not in encoded.leaves:
            raise ColumnNotFound(f"column {column!r} is not in the table", column=column)
    arrays = [*encoded.leaves.values(), encoded.sensitive, encoded.entities]
    if any(array is not None and array.size != rows for array in arrays):
        raise InvalidConfig("every encoded column needs one entry per row")
    if config.entity is not None and encoded.entities is None:
        raise ColumnNotFound(f"column {config.entity!r} is not in the table", column=config.entity)


def checks_diversity(config: AnonymizationConfig) -> bool:
    """Whether the search checks l-diversity (and so reads the sensitive column)."""
    return config.l is not None and config.l > 1 and config.sensitive is not None


def _search_inputs(
    encoded: EncodedTable, config: AnonymizationConfig
) -> tuple[list[npt.NDArray[np.int32]], npt.NDArray[np.int32] | None, int, npt.NDArray[np.int32] | None, int]:
    """What the search takes from ``encoded``: leaf codes in the configuration's column order, the
    sensitive column (only if l-diversity is checked) and its value count, the entity column (only
    if k counts entities) and its value count."""
    check_diversity = checks_diversity(config)
    sensitive = encoded.sensitive if check_diversity else None
    sensitive_values = encoded.sensitive_values if check_diversity else 1
    entities = encoded.entities if config.entity is not None else None
    entity_values = max(encoded.entity_values, 1) if entities is not None else 0
    leaf_codes = [encoded.leaves[column] for column in config.quasi_identifiers]
    return leaf_codes, sensitive, sensitive_values, entities, entity_values


def build_problem(
    config: AnonymizationConfig,
    *,
    rows: int,
    sensitive_values: int,
    entity_values: int,
    base: Table | None = None,
    marginals: Sequence[npt.NDArray[np.int64]] | None = None,
) -> Problem:
    """The search's ``Problem`` for ``config`` over ``rows`` records (see ``Problem.build``)."""
    hierarchies = list(config.quasi_identifiers.values())
    limit = Fraction(repr(float(config.suppression_limit)))
    return Problem.build(
        columns=list(config.quasi_identifiers),
        level_codes=[
            [hierarchy.codes(h).astype(np.intp) for h in range(hierarchy.height)] for hierarchy in hierarchies
        ],
        level_leaves=[
            [hierarchy.leaf_counts(h) for h in range(hierarchy.height)] for hierarchy in hierarchies
        ],
        base=base,
        marginals=marginals,
        sensitive_values=sensitive_values,
        k=config.k,
        l=config.l,
        l_kind=config.l_kind,
        max_suppressed=int(limit * rows),
        entity_values=entity_values,
    )


def plan_release(
    encoded: EncodedTable, config: AnonymizationConfig, *, clock: Callable[[], float] = perf_counter
) -> ReleasePlan:
    """Search the transformation of least loss for an encoded table (see ``EncodedTable``).

    Raises ``ColumnNotFound`` or ``InvalidConfig`` for an encoded table that does not fit the
    configuration, ``LatticeTooLarge`` and ``NoAnonymousTransformation`` from the search.
    """
    _check_encoded(encoded, config)
    leaf_codes, sensitive, sensitive_values, entities, entity_values = _search_inputs(encoded, config)
    rows = encoded.rows
    base, row_combination = distinct_combinations(
        leaf_codes,
        [hierarchy.domain_size for hierarchy in config.quasi_identifiers.values()],
        sensitive,
        sensitive_values,
        entities,
        entity_values,
    )
    problem = build_problem(
        config, rows=rows, sensitive_values=sensitive_values, entity_values=entity_values, base=base
    )
    if rows == 0:
        return ReleasePlan(config, _empty_guarantee(config, problem), np.zeros(0, dtype=np.bool_))
    outcome = search(problem, base, clock=clock)
    final = evaluate(problem, base, outcome.levels, keep_table=False, details=True)
    if final.source_failed is None or final.class_sizes is None or final.class_failed is None:
        raise RuntimeError("evaluate(details=True) returned no details")  # pragma: no cover
    suppressed_rows = final.source_failed[row_combination]
    suppressed_rows.flags.writeable = False
    kept = ~final.class_failed
    kept_entities = None if final.class_entities is None else final.class_entities[kept]
    suppressed_entities = None
    if entities is not None and outcome.suppressed:
        suppressed_entities = int(np.unique(entities[suppressed_rows]).size)
    guarantee = release_guarantee(
        config, outcome, rows, final.class_sizes[kept], kept_entities, suppressed_entities
    )
    return ReleasePlan(config, guarantee, suppressed_rows, final.class_sizes[kept], kept_entities)


def release_guarantee(
    config: AnonymizationConfig,
    outcome: SearchOutcome,
    rows: int,
    kept_sizes: npt.NDArray[np.int64],
    kept_entities: npt.NDArray[np.int64] | None,
    suppressed_entities: int | None,
) -> Guarantee:
    """The guarantee of the release at ``outcome``: its released classes' sizes (and distinct
    entities, with an entity column), and the distinct entities among the suppressed records."""
    columns = list(config.quasi_identifiers)
    suppressed = outcome.suppressed
    classes = int(kept_sizes.size) + (1 if suppressed else 0)
    min_entities: int | None = None
    if kept_entities is not None:
        # Risks per entity: a record's risk is 1 / (distinct entities in its class).
        per_class = list(zip(kept_sizes.tolist(), kept_entities.tolist(), strict=True))
        if suppressed:
            per_class.append((suppressed, suppressed_entities or 0))
        min_entities = min(count for _, count in per_class)
        max_risk = 1.0 / min_entities
        avg_risk = sum(size / count for size, count in per_class) / rows
    else:
        smallest = min(int(kept_sizes.min()) if kept_sizes.size else rows, suppressed or rows)
        max_risk = 1.0 / smallest
        avg_risk = classes / rows
    return Guarantee(
        levels=dict(zip(columns, outcome.levels, strict=True)),
        suppressed=suppressed,
        loss=outcome.loss,
        loss_per_qi=dict(zip(columns, outcome.loss_terms, strict=True)),
        k=config.k,
        l=config.l,
        l_kind=config.l_kind,
        suppression_limit=config.suppression_limit,
        rows=rows,
        classes=classes,
        nodes_checked=outcome.nodes_checked,
        lattice_size=outcome.lattice_size,
        search_ms=outcome.search_ms,
        discernibility=int((kept_sizes * kept_sizes).sum()) + suppressed * rows,
        avg_class_size=rows / classes,
        max_risk=max_risk,
        avg_risk=avg_risk,
        entity=config.entity,
        min_entities=min_entities,
    )


def encode_table(frame: pl.DataFrame, config: AnonymizationConfig) -> EncodedTable:
    """The ``EncodedTable`` of a DataFrame under ``config``.

    Raises ``ColumnNotFound``, ``MissingValues`` and ``ValueNotInHierarchy``.
    """
    wanted = [*config.quasi_identifiers, *(c for c in (config.sensitive, config.entity) if c)]
    for column in wanted:
        if column not in frame.columns:
            raise ColumnNotFound(f"column {column!r} is not in the table", column=column)
    leaf_codes = encode_columns(frame, config.quasi_identifiers)
    check_diversity = config.l is not None and config.l > 1 and config.sensitive is not None
    sensitive, sensitive_values = (None, 1)
    if check_diversity and config.sensitive is not None:
        sensitive, sensitive_values = _encode_values(frame, config.sensitive)
    entities, entity_values = (None, 0)
    if config.entity is not None:
        entities, entity_values = _encode_values(frame, config.entity)
    return EncodedTable(
        leaves=dict(zip(config.quasi_identifiers, leaf_codes, strict=True)),
        sensitive=sensitive,
        sensitive_values=sensitive_values,
        entities=entities,
        entity_values=entity_values,
    )


def anonymize(
    table: TableLike, config: AnonymizationConfig, *, clock: Callable[[], float] = perf_counter
) -> AnonymizationResult:
    """Release ``table`` under ``config`` with the least information loss.

    ``table`` is a Polars DataFrame, or a mapping column → values that Polars turns into one.
    Quasi-identifier values are matched against hierarchy leaves by their string form (Polars'
    cast: ``37``, ``2024-03-01``, ``1.5``). The sensitive and entity columns are compared by string
    form too.

    Raises ``ColumnNotFound``, ``MissingValues``, ``ValueNotInHierarchy`` before searching,
    ``LatticeTooLarge`` and ``NoAnonymousTransformation`` from the search.
    """
    frame = table if isinstance(table, pl.DataFrame) else pl.DataFrame(dict(table))
    encoded = encode_table(frame, config)
    plan = plan_release(encoded, config, clock=clock)
    if frame.height == 0:
        released = frame.with_columns(pl.col(column).cast(pl.String) for column in config.quasi_identifiers)
        return AnonymizationResult(released, plan.guarantee, plan.suppressed_rows)
    suppressed = np.flatnonzero(plan.suppressed_rows)
    released_frame = frame.with_columns(
        plan.release_column(frame.get_column(column), encoded.leaves[column], suppressed)
        for column in config.quasi_identifiers
    )
    return AnonymizationResult(released_frame, plan.guarantee, plan.suppressed_rows)


def _empty_guarantee(config: AnonymizationConfig, problem: Problem) -> Guarantee:
    columns = list(config.quasi_identifiers)
    return Guarantee(
        levels=dict.fromkeys(columns, 0),
        suppressed=0,
        loss=0.0,
        loss_per_qi=dict.fromkeys(columns, 0.0),
        k=config.k,
        l=config.l,
        l_kind=config.l_kind,
        suppression_limit=config.suppression_limit,
        rows=0,
        classes=0,
        nodes_checked=0,
        lattice_size=int(np.prod(problem.heights)),
        search_ms=0.0,
        discernibility=0,
        avg_class_size=0.0,
        max_risk=0.0,
        avg_risk=0.0,
        entity=config.entity,
        min_entities=0 if config.entity is not None else None,
    )
