"""The partitioned search returns what the search over all the records together returns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from time import perf_counter

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonymize import AnonymizationConfig, Hierarchy, InvalidConfig, LDiversity, NoAnonymousTransformation
from anonymize import _partitioned as partitioned_module
from anonymize._engine import (
    EncodedTable,
    ReleasePlan,
    _search_inputs,
    build_problem,
    distinct_combinations,
    encode_table,
    plan_release,
)
from anonymize._lattice import evaluate
from anonymize._partitioned import plan_partitioned_release, spill_partitions

from .test_lattice import PROPERTY_SETTINGS, entity_problems, problems


def _split(encoded: EncodedTable, part_of_row: np.ndarray) -> tuple[list[EncodedTable], np.ndarray]:
    """The rows of ``encoded`` as one table per part number (ascending), and the row order that
    puts the parts one after the other."""
    tables, order = [], []
    for part in np.unique(part_of_row).tolist():
        rows = np.flatnonzero(part_of_row == part)
        order.append(rows)
        tables.append(
            EncodedTable(
                leaves={column: values[rows] for column, values in encoded.leaves.items()},
                sensitive=None if encoded.sensitive is None else encoded.sensitive[rows],
                sensitive_values=encoded.sensitive_values,
                entities=None if encoded.entities is None else encoded.entities[rows],
                entity_values=encoded.entity_values,
            )
        )
    return tables, np.concatenate(order) if order else np.zeros(0, dtype=np.intp)


def _parts_by_label(
    encoded: EncodedTable, config: AnonymizationConfig, by: str, groups: list[int]
) -> np.ndarray:
    """Each row's part: its label of ``by`` at the level below the top, put in group
    ``groups[label % len(groups)]`` (several labels per part, never one label in two parts)."""
    hierarchy = config.quasi_identifiers[by]
    labels = hierarchy.codes(max(hierarchy.height - 2, 0))[encoded.leaves[by]]
    return np.asarray(groups, dtype=np.int64)[labels % len(groups)]


def _assert_same_plan(partitioned: ReleasePlan, whole: ReleasePlan, order: np.ndarray) -> None:
    expected, found = whole.guarantee, partitioned.guarantee
    assert found.levels == expected.levels
    assert found.suppressed == expected.suppressed
    assert found.loss == pytest.approx(expected.loss, abs=1e-12)
    assert found.loss_per_qi == pytest.approx(expected.loss_per_qi, abs=1e-12)
    for name in ("rows", "classes", "discernibility", "min_entities"):
        assert getattr(found, name) == getattr(expected, name), name
    for name in ("avg_class_size", "max_risk", "avg_risk"):
        assert getattr(found, name) == pytest.approx(getattr(expected, name), rel=1e-12), name
    assert partitioned.suppressed_rows.tolist() == whole.suppressed_rows[order].tolist()
    assert sorted(partitioned.class_sizes.tolist()) == sorted(whole.class_sizes.tolist())


def _compare(frame: pl.DataFrame, config: AnonymizationConfig, groups: list[int]) -> None:
    encoded = encode_table(frame, config)
    by = next(iter(config.quasi_identifiers))
    tables, order = _split(encoded, _parts_by_label(encoded, config, by, groups))
    try:
        whole = plan_release(encoded, config)
    except NoAnonymousTransformation:
        with pytest.raises(NoAnonymousTransformation):
            plan_partitioned_release(iter(tables), config, by=by)
        return
    _assert_same_plan(plan_partitioned_release(iter(tables), config, by=by), whole, order)


@PROPERTY_SETTINGS
@given(problems(), st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_partitioned_search_finds_the_same_release_on_random_tables(
    problem: tuple[list[dict[str, str]], AnonymizationConfig], groups: list[int]
) -> None:
    rows, config = problem
    _compare(pl.DataFrame(rows), config, groups)


@PROPERTY_SETTINGS
@given(entity_problems(), st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_partitioned_search_finds_the_same_release_with_k_in_entities(
    problem: tuple[list[dict[str, str]], AnonymizationConfig], groups: list[int]
) -> None:
    rows, config = problem
    _compare(pl.DataFrame(rows), config, groups)


def _dated_table(seed: int) -> tuple[pl.DataFrame, dict[str, Hierarchy]]:
    """3,000 records of 400 people over three years, days generalized to months, quarters, years."""
    rng = np.random.default_rng(seed)
    days = [f"{year}-{month:02d}-{day:02d}" for year in (2023, 2024, 2025) for month in range(1, 13)
            for day in (1, 15)]  # fmt: skip
    trees = {
        "day": Hierarchy((d, d[:7], f"{d[:4]}-Q{(int(d[5:7]) - 1) // 3 + 1}", d[:4], "*") for d in days),
    }
    data: dict[str, list[str]] = {"day": list(rng.choice(days, size=3000))}
    for q in range(3):
        leaves = [f"v{q}.{index}" for index in range(int(rng.integers(3, 20)))]
        trees[f"q{q}"] = Hierarchy((leaf, f"g{q}.{index // 4}", "*") for index, leaf in enumerate(leaves))
        data[f"q{q}"] = list(rng.choice(leaves, size=3000, p=rng.dirichlet(np.ones(len(leaves)) * 0.7)))
    data["s"] = list(rng.choice(["a", "b", "c"], size=3000, p=[0.7, 0.2, 0.1]))
    data["who"] = [f"p{person}" for person in rng.zipf(1.6, size=3000) % 400]
    return pl.DataFrame(data), trees


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("k", "l", "kind", "limit"),
    [
        (5, None, "distinct", 0.0),
        (3, 2, "distinct", 0.05),
        (4, None, "distinct", 0.02),
        (2, 2, "entropy", 0.03),
    ],
)
def test_partitions_by_year_release_what_the_whole_table_releases(
    seed: int,
    k: int,
    l: int | None,  # noqa: E741 -- the model's name in the literature
    kind: LDiversity,
    limit: float,
) -> None:
    frame, trees = _dated_table(seed)
    config = AnonymizationConfig(
        trees, sensitive="s", k=k, l=l, l_kind=kind, suppression_limit=limit, entity="who"
    )
    encoded = encode_table(frame, config)
    years = frame["day"].str.slice(0, 4).cast(pl.Int64).to_numpy()
    tables, order = _split(encoded, years)
    assert len(tables) == 3
    whole = plan_release(encoded, config)
    _assert_same_plan(plan_partitioned_release(tables, config, by="day"), whole, order)
    # Also by quarter, one of the levels below the year.
    without_entity = replace(config, entity=None)
    encoded = encode_table(frame, without_entity)
    tables, order = _split(encoded, _parts_by_label(encoded, without_entity, "day", [0, 1, 2, 3]))
    whole = plan_release(encoded, without_entity)
    _assert_same_plan(plan_partitioned_release(tables, without_entity, by="day"), whole, order)


@pytest.mark.parametrize("sensitive", [None, "s"])
def test_a_release_that_keeps_the_date_and_one_that_suppresses_it(sensitive: str | None) -> None:
    frame, trees = _dated_table(0)
    l = None if sensitive is None else 2  # noqa: E741 -- the model's name in the literature
    kept = AnonymizationConfig(trees, sensitive=sensitive, l=l, k=2, suppression_limit=0.05, entity="who")
    dropped = replace(kept, k=40, suppression_limit=0.01)
    years = frame["day"].str.slice(0, 4).cast(pl.Int64).to_numpy()
    for config, date_kept in ((kept, True), (dropped, False)):
        encoded = encode_table(frame, config)
        tables, order = _split(encoded, years)
        plan = plan_partitioned_release(tables, config, by="day")
        assert (plan.guarantee.levels["day"] < 4) is date_kept
        _assert_same_plan(plan, plan_release(encoded, config), order)


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed-merge", "regrouped"])
@pytest.mark.parametrize(
    ("sensitive", "entity"), [(None, None), ("s", None), (None, "who"), ("s", "who")], ids=str
)
def test_every_node_evaluates_and_releases_as_on_the_whole_table(
    sensitive: str | None, entity: str | None, keyed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the optimum: each node's suppression and loss numerators, and the records it
    suppresses, partition by partition (or from the collapsed tables) as from the whole table;
    the collapsed tables merged by their keys, or regrouped (keys too wide for 63 bits)."""
    if not keyed:
        monkeypatch.setattr(partitioned_module, "KEYED_LIMIT", 2)
    frame, trees = _dated_table(5)
    l = None if sensitive is None else 2  # noqa: E741 -- the model's name in the literature
    config = AnonymizationConfig(trees, sensitive=sensitive, l=l, k=6, suppression_limit=0.1, entity=entity)
    encoded = encode_table(frame, config)
    tables, order = _split(encoded, frame["day"].str.slice(0, 4).cast(pl.Int64).to_numpy())
    leaf_codes, sens, sensitive_values, entities, entity_values = _search_inputs(encoded, config)
    base, row_combination = distinct_combinations(
        leaf_codes, [t.domain_size for t in trees.values()], sens, sensitive_values, entities, entity_values
    )
    whole = build_problem(
        config,
        rows=encoded.rows,
        sensitive_values=sensitive_values,
        entity_values=entity_values,
        base=base,
    )
    partitions = spill_partitions(tables, config, by="day", folder=tmp_path)
    assert partitions.problem.bound_numerator == whole.bound_numerator
    suppressing = 0
    for levels in np.ndindex(*whole.heights):
        expected = evaluate(whole, base, levels, keep_table=False, details=True)
        found = partitions.evaluate(levels, np.inf)
        if found is None:  # the search's own tables: evaluated from the collapsed one
            found = evaluate(partitions.problem, partitions.top.people, levels, keep_table=False)
        if expected.suppressed > whole.max_suppressed:  # partitions stop counting past the limit
            assert found.suppressed > whole.max_suppressed, levels
        else:
            assert found.suppressed == expected.suppressed, levels
            assert found.numerators == expected.numerators, levels
        flags, sizes, _, _ = partitions.release(levels)
        assert expected.source_failed is not None and expected.class_failed is not None
        assert np.concatenate(flags).tolist() == expected.source_failed[row_combination][order].tolist()
        assert int(sizes.sum()) == encoded.rows - expected.suppressed
        suppressing += bool(expected.suppressed) and levels[0] == whole.heights[0] - 1
    assert suppressing  # nodes with the date at its top that suppress records were compared


def test_partitions_are_read_from_disk_during_the_search_and_deleted_after(tmp_path: Path) -> None:
    frame, trees = _dated_table(1)
    config = AnonymizationConfig(trees, sensitive="s", k=3, l=2, suppression_limit=0.05, entity="who")
    encoded = encode_table(frame, config)
    tables, _ = _split(encoded, frame["day"].str.slice(0, 4).cast(pl.Int64).to_numpy())
    seen: list[list[str]] = []

    def clock() -> float:  # called as the search starts and ends
        seen.append(sorted(path.name for path in tmp_path.rglob("*.npy")))
        return perf_counter()

    plan_partitioned_release(tables, config, by="day", spill_dir=tmp_path, clock=clock)
    assert seen and all("0-inverse.npy" in names and "2-codes0.npy" in names for names in seen)
    assert not list(tmp_path.iterdir())


def test_a_label_in_two_partitions_is_refused() -> None:
    frame, trees = _dated_table(2)
    config = AnonymizationConfig(trees, k=3, entity="who")
    encoded = encode_table(frame, config)
    months = frame["day"].str.slice(5, 2).cast(pl.Int64).to_numpy()  # January of every year together
    tables, _ = _split(encoded, months)
    with pytest.raises(InvalidConfig, match="two partitions"):
        plan_partitioned_release(tables, config, by="day")
    with pytest.raises(InvalidConfig, match="quasi-identifier"):
        plan_partitioned_release(tables, config, by="who")


def test_partitions_must_code_values_alike_and_may_be_empty() -> None:
    frame, trees = _dated_table(3)
    config = AnonymizationConfig(trees, k=3, entity="who")
    encoded = encode_table(frame, config)
    tables, order = _split(encoded, frame["day"].str.slice(0, 4).cast(pl.Int64).to_numpy())
    empty = EncodedTable(
        leaves={column: values[:0] for column, values in encoded.leaves.items()},
        entities=encoded.entities[:0] if encoded.entities is not None else None,
        entity_values=encoded.entity_values,
    )
    plan = plan_partitioned_release([empty, *tables, empty], config, by="day")
    _assert_same_plan(plan, plan_release(encoded, config), order)
    renumbered = replace(tables[1], entity_values=tables[1].entity_values + 1)
    with pytest.raises(InvalidConfig, match="alike"):
        plan_partitioned_release([tables[0], renumbered], config, by="day")
    nothing = plan_partitioned_release([], config, by="day")
    assert nothing.guarantee.rows == 0 and nothing.suppressed_rows.size == 0
