"""The search against brute force: random small tables, every node of the lattice evaluated naively."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonymize import (
    AnonymizationConfig,
    Hierarchy,
    NoAnonymousTransformation,
    anonymize,
    flat_hierarchy,
)
from anonymize._engine import distinct_combinations, encode_columns
from anonymize._lattice import Problem, exhaustive, group_keys, search

from .conftest import check_release, max_suppressed, naive_optimum

PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def hierarchies(draw: st.DrawFn, name: str) -> Hierarchy:
    """A random nested hierarchy: each level merges the previous level's labels into groups."""
    leaves = [f"{name}{index}" for index in range(draw(st.integers(1, 6)))]
    height = draw(st.integers(2, 4))
    columns = [leaves]
    current = leaves
    for level in range(1, height - 1):
        distinct = sorted(set(current))
        groups = {label: draw(st.integers(0, len(distinct) - 1)) for label in distinct}
        current = [f"{name}.{level}.{groups[label]}" for label in current]
        columns.append(current)
    columns.append(["*"] * len(leaves))
    return Hierarchy(zip(*columns, strict=True))


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[dict[str, str]], AnonymizationConfig]:
    count = draw(st.integers(1, 4))
    names = [f"q{index}" for index in range(count)]
    trees = {name: draw(hierarchies(name)) for name in names}
    sensitive_values = [f"s{index}" for index in range(draw(st.integers(1, 4)))]
    rows = [
        {
            **{name: draw(st.sampled_from(trees[name].leaves)) for name in names},
            "s": draw(st.sampled_from(sensitive_values)),
            "payload": str(draw(st.integers(0, 10**6))),
        }
        for _ in range(draw(st.integers(1, 40)))
    ]
    diversity = draw(st.sampled_from([None, 1, 2, 3]))
    config = AnonymizationConfig(
        quasi_identifiers=trees,
        sensitive="s" if diversity is not None or draw(st.booleans()) else None,
        k=draw(st.integers(1, 6)),
        l=diversity,
        l_kind=draw(st.sampled_from(["distinct", "entropy"])),
        suppression_limit=draw(st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.0])),
    )
    return rows, config


@PROPERTY_SETTINGS
@given(problems())
def test_release_is_optimal_and_satisfies_the_models(
    problem: tuple[list[dict[str, str]], AnonymizationConfig],
) -> None:
    rows, config = problem
    optimum = naive_optimum(rows, config)
    if optimum is None:
        with pytest.raises(NoAnonymousTransformation):
            anonymize(pl.DataFrame(rows), config)
        return
    result = anonymize(pl.DataFrame(rows), config)
    assert result.guarantee.loss == pytest.approx(optimum.loss, abs=1e-9)
    check_release(rows, result, config)


def test_entropy_with_suppression_is_searched_without_monotone_shortcuts() -> None:
    # A passing class (a: 2 values) merged with a failing one (b: 1 value) fails as a whole, so
    # generalizing can add suppression; the search must still find the optimum.
    rows = [{"q": "a", "s": "x"}, {"q": "a", "s": "y"}] + [{"q": "b", "s": "x"}] * 6
    config = AnonymizationConfig(
        quasi_identifiers={"q": flat_hierarchy(["a", "b"])},
        sensitive="s",
        k=1,
        l=2,
        l_kind="entropy",
        suppression_limit=0.75,
    )
    result = anonymize(pl.DataFrame(rows), config)
    assert result.guarantee.levels == {"q": 0}
    assert result.guarantee.suppressed == 6
    optimum = naive_optimum(rows, config)
    assert optimum is not None
    assert result.guarantee.loss == pytest.approx(optimum.loss)
    check_release(rows, result, config)


@pytest.mark.parametrize("seed", range(6))
def test_search_matches_exhaustive_evaluation_on_larger_tables(seed: int) -> None:
    """Pruning (bounds, tagging, dominance) never loses the optimum: compare with every node."""
    rng = np.random.default_rng(seed)
    trees: dict[str, Hierarchy] = {}
    data: dict[str, list[str]] = {}
    for q in range(5):
        leaves = [f"v{q}.{index}" for index in range(int(rng.integers(3, 30)))]
        columns = [leaves]
        for level in range(1, int(rng.integers(2, 5))):
            width = 2**level
            columns.append([f"g{q}.{level}.{index // width}" for index in range(len(leaves))])
        columns.append(["*"] * len(leaves))
        trees[f"q{q}"] = Hierarchy(zip(*columns, strict=True))
        weights = rng.dirichlet(np.ones(len(leaves)) * 0.7)
        data[f"q{q}"] = list(rng.choice(leaves, size=3000, p=weights))
    data["s"] = list(rng.choice(["a", "b", "c"], size=3000, p=[0.7, 0.2, 0.1]))
    frame = pl.DataFrame(data)
    for k, diversity, kind, limit in [
        (5, None, "distinct", 0.0),
        (4, None, "distinct", 0.03),
        (3, 2, "distinct", 0.05),
        (2, 2, "entropy", 0.0),
        (2, 2, "entropy", 0.04),
    ]:
        config = AnonymizationConfig(
            trees, sensitive="s", k=k, l=diversity, l_kind=kind, suppression_limit=limit
        )
        codes = encode_columns(frame, trees)
        sensitive = None
        values = 1
        if diversity is not None:
            sensitive = frame["s"].replace_strict(["a", "b", "c"], [0, 1, 2]).to_numpy().astype(np.int32)
            values = 3
        base, _ = distinct_combinations(
            codes, [tree.domain_size for tree in trees.values()], sensitive, values
        )
        problem = Problem.build(
            columns=list(trees),
            level_codes=[
                [tree.codes(h).astype(np.intp) for h in range(tree.height)] for tree in trees.values()
            ],
            level_leaves=[[tree.leaf_counts(h) for h in range(tree.height)] for tree in trees.values()],
            base=base,
            sensitive_values=values,
            k=k,
            l=diversity,
            l_kind=kind,
            max_suppressed=max_suppressed(limit, frame.height),
        )
        everything = exhaustive(problem, base)
        feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
        outcome = search(problem, base, cache_budget=2 * base.size)  # small cache: exercise eviction
        assert outcome.loss == pytest.approx(min(feasible), abs=1e-12)
        assert outcome.nodes_checked <= len(everything)
        assert anonymize(frame, config).guarantee.loss == pytest.approx(min(feasible), abs=1e-12)


@pytest.mark.parametrize(
    ("bound", "size"),
    [(50, 200), (1 << 20, 1000), (1 << 61, 5000)],
    ids=["dense", "packed-sort", "unique-fallback"],
)
def test_group_keys_numbers_groups_in_key_order(bound: int, size: int) -> None:
    rng = np.random.default_rng(bound % 1000)
    keys = rng.integers(0, min(bound, 300), size=size).astype(np.int64) * (bound // 300 or 1)
    inverse, unique, representative = group_keys(keys, bound)
    expected = np.unique(keys)
    assert np.array_equal(unique, expected)
    assert np.array_equal(unique[inverse], keys)
    assert np.array_equal(keys[representative], unique)
