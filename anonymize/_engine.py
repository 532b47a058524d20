"""``anonymize``: encode a table, search the lattice, release the generalized table.

Only the distinct combinations of quasi-identifier leaves (and sensitive values) reach the search;
rows come back in at the end, when the chosen levels are applied with one gather per column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from time import perf_counter

import numpy as np
import numpy.typing as npt
import polars as pl

from anonymize._config import AnonymizationConfig, AnonymizationResult, Guarantee
from anonymize._errors import ColumnNotFound, MissingValues, ValueNotInHierarchy
from anonymize._hierarchy import SUPPRESSED, Hierarchy
from anonymize._lattice import Problem, Table, evaluate, group_keys, search

__all__ = ["anonymize", "distinct_combinations", "encode_columns"]

TableLike = pl.DataFrame | Mapping[str, Sequence[object]]


def encode_columns(frame: pl.DataFrame, hierarchies: Mapping[str, Hierarchy]) -> list[npt.NDArray[np.int32]]:
    """Leaf number of each row's value, per column (encoded in parallel by Polars).

    Raises ``MissingValues`` for nulls and ``ValueNotInHierarchy`` for values that are not leaves.
    """
    for column in hierarchies:
        nulls = frame.get_column(column).null_count()
        if nulls:
            raise MissingValues(f"column {column!r} has {nulls} missing value(s)", column=column, count=nulls)
    encoded = frame.select(
        pl.col(column)
        .cast(pl.String)
        .replace_strict(
            hierarchy.leaves,
            np.arange(hierarchy.domain_size, dtype=np.int32),
            default=None,
            return_dtype=pl.Int32,
        )
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


def _encode_sensitive(frame: pl.DataFrame, column: str) -> tuple[npt.NDArray[np.int32], int]:
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
) -> tuple[Table, npt.NDArray[np.intp]]:
    """The level-0 table of the rows (distinct combinations with counts) and each row's combination."""
    rows = int(codes[0].size) if codes else 0
    key = np.zeros(rows, dtype=np.int64)
    bound = 1
    parts = [*zip(codes, cardinalities, strict=True)]
    if sensitive is not None:
        parts.append((sensitive, sensitive_values))
    for column, cardinality in parts:
        if bound * max(cardinality, 1) >= 1 << 62:
            inverse, unique, _ = group_keys(key, bound)
            key, bound = inverse.astype(np.int64), int(unique.size)
        key = key * cardinality + column
        bound *= max(cardinality, 1)
    inverse, _, representative = group_keys(key, bound)
    counts = np.bincount(inverse, minlength=representative.size).astype(np.int64)
    table = Table(
        levels=(0,) * len(codes),
        codes=tuple(column[representative].astype(np.intp) for column in codes),
        sensitive=None if sensitive is None else sensitive[representative].astype(np.intp),
        counts=counts,
    )
    return table, inverse


def anonymize(
    table: TableLike, config: AnonymizationConfig, *, clock: Callable[[], float] = perf_counter
) -> AnonymizationResult:
    """Release ``table`` under ``config`` with the least information loss.

    ``table`` is a Polars DataFrame, or a mapping column → values that Polars turns into one.
    Quasi-identifier values are matched against hierarchy leaves by their string form (Polars'
    cast: ``37``, ``2024-03-01``, ``1.5``). The sensitive column is compared by string form too.

    Raises ``ColumnNotFound``, ``MissingValues``, ``ValueNotInHierarchy`` before searching,
    ``LatticeTooLarge`` and ``NoAnonymousTransformation`` from the search.
    """
    frame = table if isinstance(table, pl.DataFrame) else pl.DataFrame(dict(table))
    columns = list(config.quasi_identifiers)
    for column in [*columns, *([config.sensitive] if config.sensitive else [])]:
        if column not in frame.columns:
            raise ColumnNotFound(f"column {column!r} is not in the table", column=column)
    hierarchies = [config.quasi_identifiers[column] for column in columns]
    leaf_codes = encode_columns(frame, config.quasi_identifiers)
    check_diversity = config.l is not None and config.l > 1 and config.sensitive is not None
    sensitive, sensitive_values = (None, 1)
    if check_diversity and config.sensitive is not None:
        sensitive, sensitive_values = _encode_sensitive(frame, config.sensitive)
    rows = frame.height
    limit = Fraction(repr(float(config.suppression_limit)))
    max_suppressed = int(limit * rows)

    base, row_combination = distinct_combinations(
        leaf_codes, [hierarchy.domain_size for hierarchy in hierarchies], sensitive, sensitive_values
    )
    problem = Problem.build(
        columns=columns,
        level_codes=[
            [hierarchy.codes(h).astype(np.intp) for h in range(hierarchy.height)] for hierarchy in hierarchies
        ],
        level_leaves=[
            [hierarchy.leaf_counts(h) for h in range(hierarchy.height)] for hierarchy in hierarchies
        ],
        base=base,
        sensitive_values=sensitive_values,
        k=config.k,
        l=config.l,
        l_kind=config.l_kind,
        max_suppressed=max_suppressed,
    )
    if rows == 0:
        return _empty_result(frame, config, problem)
    outcome = search(problem, base, clock=clock)
    final = evaluate(problem, base, outcome.levels, keep_table=False, details=True)
    if final.source_failed is None or final.class_sizes is None or final.class_failed is None:
        raise RuntimeError("evaluate(details=True) returned no details")  # pragma: no cover
    suppressed_rows = final.source_failed[row_combination]
    suppressed_rows.flags.writeable = False

    released = []
    for q, column in enumerate(columns):
        hierarchy, level = hierarchies[q], outcome.levels[q]
        labels = pl.Series(column, [*hierarchy.labels(level), SUPPRESSED], dtype=pl.String)
        generalized = hierarchy.codes(level)[leaf_codes[q]]
        generalized[suppressed_rows] = len(hierarchy.labels(level))
        released.append(labels.gather(generalized))
    released_frame = frame.with_columns(released)

    kept_sizes = final.class_sizes[~final.class_failed]
    suppressed = outcome.suppressed
    classes = int(kept_sizes.size) + (1 if suppressed else 0)
    smallest = min(int(kept_sizes.min()) if kept_sizes.size else rows, suppressed or rows)
    guarantee = Guarantee(
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
        max_risk=1.0 / smallest,
        avg_risk=classes / rows,
    )
    return AnonymizationResult(table=released_frame, guarantee=guarantee, suppressed_rows=suppressed_rows)


def _empty_result(frame: pl.DataFrame, config: AnonymizationConfig, problem: Problem) -> AnonymizationResult:
    columns = list(config.quasi_identifiers)
    guarantee = Guarantee(
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
    )
    released = frame.with_columns(pl.col(column).cast(pl.String) for column in columns)
    return AnonymizationResult(released, guarantee, np.zeros(0, dtype=np.bool_))
