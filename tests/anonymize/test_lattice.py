"""The search against brute force: random small tables, every node of the lattice evaluated naively."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

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
from anonymize import _lattice as lattice_module
from anonymize._engine import distinct_combinations, encode_columns
from anonymize._lattice import (
    CACHE_BUDGET,
    CHUNK_SPACE,
    Layout,
    Problem,
    Table,
    _Cache,
    _group,
    _Lattice,
    _Search,
    evaluate,
    exhaustive,
    group_keys,
    search,
)

from .conftest import check_release, max_suppressed, naive_node, naive_optimum

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


@st.composite
def entity_problems(draw: st.DrawFn) -> tuple[list[dict[str, str]], AnonymizationConfig]:
    """``problems`` whose k counts distinct people: each row belongs to one of a few people, who
    often have several rows alike (the case k-on-records gets wrong)."""
    rows, config = draw(problems())
    people = [f"p{index}" for index in range(draw(st.integers(1, 8)))]
    for row in rows:
        row["who"] = draw(st.sampled_from(people))
    return rows, replace(config, entity="who")


@PROPERTY_SETTINGS
@given(entity_problems())
def test_with_an_entity_column_every_class_has_k_distinct_entities_and_the_optimum(
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
    check_release(rows, result, config)  # ≥ k distinct entities per released class, from the table


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


@pytest.mark.parametrize("with_entities", [False, True], ids=["k-records", "k-entities"])
@pytest.mark.parametrize("seed", range(6))
def test_search_matches_exhaustive_evaluation_on_larger_tables(seed: int, with_entities: bool) -> None:
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
    people = rng.zipf(1.6, size=3000) % 400  # a few people with many records, many with one
    data["who"] = [f"p{person}" for person in people]
    frame = pl.DataFrame(data)
    entities = None
    entity_values = 0
    if with_entities:
        entities = np.unique(people, return_inverse=True)[1].astype(np.int32)
        entity_values = int(entities.max()) + 1
    for k, diversity, kind, limit in [
        (5, None, "distinct", 0.0),
        (4, None, "distinct", 0.03),
        (3, 2, "distinct", 0.05),
        (2, 2, "entropy", 0.0),
        (2, 2, "entropy", 0.04),
    ]:
        config = AnonymizationConfig(
            trees,
            sensitive="s",
            k=k,
            l=diversity,
            l_kind=kind,
            suppression_limit=limit,
            entity="who" if with_entities else None,
        )
        codes = encode_columns(frame, trees)
        sensitive = None
        values = 1
        if diversity is not None:
            sensitive = frame["s"].replace_strict(["a", "b", "c"], [0, 1, 2]).to_numpy().astype(np.int32)
            values = 3
        base, _ = distinct_combinations(
            codes, [tree.domain_size for tree in trees.values()], sensitive, values, entities, entity_values
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
            entity_values=entity_values,
        )
        everything = exhaustive(problem, base)
        feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
        outcome = search(problem, base, cache_budget=2 * base.size)  # small cache: exercise eviction
        assert outcome.loss == pytest.approx(min(feasible), abs=1e-12)
        assert outcome.nodes_checked <= len(everything)
        assert anonymize(frame, config).guarantee.loss == pytest.approx(min(feasible), abs=1e-12)


def test_one_person_with_many_alike_records_is_not_a_class_of_their_own() -> None:
    # Six identical records of p0 are a class of 6 ≥ k=5 records, but of one person.
    rows = [{"q": "a", "who": "p0"}] * 6 + [{"q": f"b{index}", "who": f"p{index + 1}"} for index in range(5)]
    hierarchy = Hierarchy([("a", "*"), *((f"b{index}", "*") for index in range(5))])
    by_records = anonymize(
        pl.DataFrame(rows), AnonymizationConfig({"q": hierarchy}, k=5, suppression_limit=0.5)
    )
    assert by_records.guarantee.levels == {"q": 0}  # p0's six records released as class "a"
    config = AnonymizationConfig({"q": hierarchy}, k=5, suppression_limit=0.6, entity="who")
    by_people = anonymize(pl.DataFrame(rows), config)
    assert by_people.guarantee.levels == {"q": 1}
    assert by_people.guarantee.suppressed == 0
    assert by_people.guarantee.min_entities == 6
    assert by_people.guarantee.max_risk == pytest.approx(1 / 6)
    check_release(rows, by_people, config)


def test_distinct_entities_never_fall_as_levels_rise() -> None:
    """The monotonicity the search relies on (module docstring, rule 5), checked on every chain."""
    rng = np.random.default_rng(7)
    leaves = [f"v{index}" for index in range(16)]
    tree = Hierarchy(
        zip(
            leaves,
            [f"g{i // 2}" for i in range(16)],
            [f"h{i // 8}" for i in range(16)],
            ["*"] * 16,
            strict=True,
        )
    )
    values = rng.choice(leaves, size=400)
    people = rng.integers(0, 30, size=400)
    previous: dict[str, set[int]] | None = None
    for level in range(tree.height):
        classes: dict[str, set[int]] = {}
        for value, person in zip(values, people, strict=True):
            classes.setdefault(tree.generalize(str(value), level), set()).add(int(person))
        if previous is not None:
            for label, members in previous.items():
                parent = next(c for c, m in classes.items() if members <= m)
                assert len(classes[parent]) >= len(members), label
        previous = classes


@pytest.mark.parametrize(
    ("bound", "size"),
    [(50, 200), (1 << 20, 1000), (1 << 61, 5000)],
    ids=["dense", "radix-2-digits", "radix-4-digits"],
)
@pytest.mark.parametrize("packed", [True, False], ids=["packed-sort", "radix-sort"])
def test_group_keys_numbers_groups_in_key_order(
    bound: int, size: int, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lattice_module, "_packed_sort_wins", lambda: packed)
    rng = np.random.default_rng(bound % 1000)
    keys = rng.integers(0, min(bound, 300), size=size).astype(np.int64) * (bound // 300 or 1)
    inverse, unique, representative = group_keys(keys, bound)
    expected = np.unique(keys)
    assert np.array_equal(unique, expected)
    assert np.array_equal(unique[inverse], keys)
    assert np.array_equal(keys[representative], unique)


@pytest.mark.parametrize(
    ("bound", "size"),
    [(50, 200), (1 << 20, 1000), (1 << 61, 5000)],
    ids=["dense", "radix-2-digits", "radix-4-digits"],
)
@pytest.mark.parametrize("packed", [True, False], ids=["packed-sort", "radix-sort"])
def test_group_sums_weights_per_group(
    bound: int, size: int, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sorts (one of keys packed with their positions where NumPy sorts with SIMD, a radix
    sort elsewhere) give the same groups, in key order, each represented by its first position."""
    monkeypatch.setattr(lattice_module, "_packed_sort_wins", lambda: packed)
    rng = np.random.default_rng(size)
    keys = rng.integers(0, min(bound, 300), size=size).astype(np.int64) * (bound // 300 or 1)
    weights = rng.integers(1, 1000, size=size).astype(np.int64)
    unique, representative, totals, inverse = _group(keys.copy(), bound, weights, inverse=False)
    expected, groups = np.unique(keys, return_inverse=True)
    assert inverse is None
    assert np.array_equal(unique, expected)
    assert np.array_equal(keys[representative], unique)
    if bound > 1 << 16:  # sorted, not relabelled densely (which keeps the last position)
        assert np.array_equal(representative, np.unique(keys, return_index=True)[1])
    assert np.array_equal(totals, np.bincount(groups, weights=weights).astype(np.int64))


def test_layout_packs_columns_into_chunks_and_back() -> None:
    domains = [2, 100, 5, 7, 16, 41, 8, 14, 20_000, 3]
    layout = Layout.build(domains)
    assert sorted(q for chunk in layout.chunks for q in chunk) == list(range(len(domains)))
    for chunk in layout.chunks:
        assert len(chunk) == 1 or np.prod([domains[q] for q in chunk]) <= CHUNK_SPACE
    assert (8,) in layout.chunks  # a domain larger than the chunk space is a chunk of its own
    assert len(layout.chunks) == 4  # first fit, widest first: the nine small columns fill three chunks
    rng = np.random.default_rng(3)
    codes = [rng.integers(0, domain, size=500).astype(np.intp) for domain in domains]
    assert all(
        np.array_equal(a, b) for a, b in zip(codes, layout.unpack(layout.pack(codes, 500)), strict=True)
    )


def test_each_nodes_successor_is_its_direct_generalization_of_least_bound() -> None:
    """``settle``'s upward path: the direct generalization of least bound, ties to the smaller node
    number (two columns with the same values and hierarchy tie at every step)."""
    values = ["a", "b", "c", "a", "b", "a"] * 5
    trees = {
        "x": Hierarchy((v, "ab" if v != "c" else "c", "*") for v in "abc"),
        "y": Hierarchy((v, "ab" if v != "c" else "c", "*") for v in "abc"),
        "z": flat_hierarchy(["p", "q"]),
    }
    frame = pl.DataFrame({"x": values, "y": values, "z": ["p", "q"] * 15})
    problem, _ = _problem_for(frame, trees, AnonymizationConfig(trees, k=2))
    lattice = _Lattice(problem)
    bounds = lattice.bound.tolist()
    ties = 0
    for node in range(lattice.size):
        levels = lattice.levels_of(node)
        options = [
            node + stride
            for stride, level, height in zip(lattice.strides, levels, lattice.heights, strict=True)
            if level < height - 1
        ]
        expected = min(options, key=lambda option: (bounds[option], option)) if options else -1
        assert lattice.successor[node] == expected
        ties += len({bounds[option] for option in options}) < len(options)
    assert ties


def _problem_for(
    frame: pl.DataFrame, trees: dict[str, Hierarchy], config: AnonymizationConfig
) -> tuple[Problem, Table]:
    codes = encode_columns(frame, trees)
    sensitive = None
    values = 1
    if config.sensitive is not None and config.l is not None:
        labels = sorted(set(frame[config.sensitive].to_list()))
        sensitive = frame[config.sensitive].replace_strict(labels, list(range(len(labels)))).to_numpy()
        sensitive = sensitive.astype(np.int32)
        values = len(labels)
    base, _ = distinct_combinations(codes, [tree.domain_size for tree in trees.values()], sensitive, values)
    problem = Problem.build(
        columns=list(trees),
        level_codes=[[tree.codes(h).astype(np.intp) for h in range(tree.height)] for tree in trees.values()],
        level_leaves=[[tree.leaf_counts(h) for h in range(tree.height)] for tree in trees.values()],
        base=base,
        sensitive_values=values,
        k=config.k,
        l=config.l,
        l_kind=config.l_kind,
        max_suppressed=max_suppressed(config.suppression_limit, frame.height),
    )
    return problem, base


def test_search_with_a_column_wider_than_a_chunk_matches_exhaustive_evaluation() -> None:
    """A 5,000-leaf column is a chunk of its own, with lookup tables as long as its domain."""
    rng = np.random.default_rng(11)
    wide = [f"w{index}" for index in range(5000)]
    trees = {
        "wide": Hierarchy((leaf, f"h{i // 50}", f"t{i // 1000}", "*") for i, leaf in enumerate(wide)),
        "small": Hierarchy((f"s{i}", f"g{i // 2}", "*") for i in range(6)),
        "flag": flat_hierarchy(["yes", "no"]),
    }
    frame = pl.DataFrame(
        {
            "wide": rng.choice(wide[:3000], size=6000).tolist(),
            "small": rng.choice([f"s{i}" for i in range(6)], size=6000).tolist(),
            "flag": rng.choice(["yes", "no"], size=6000).tolist(),
            "s": rng.choice(["a", "b", "c"], size=6000, p=[0.8, 0.15, 0.05]).tolist(),
        }
    )
    for config in (
        AnonymizationConfig(trees, k=5, suppression_limit=0.02),
        AnonymizationConfig(trees, k=3, l=2, sensitive="s", suppression_limit=0.05),
    ):
        problem, base = _problem_for(frame, trees, config)
        assert (0,) in problem.layout.chunks
        everything = exhaustive(problem, base)
        feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
        assert search(problem, base).loss == pytest.approx(min(feasible), abs=1e-12)


def test_loss_numerators_are_exact_beyond_float_precision() -> None:
    """With 2^42 times the records, the numerators exceed 2^53 (beyond float precision) and stay
    exactly 2^42 times larger (the failing classes, by l-diversity, do not depend on counts)."""
    rng = np.random.default_rng(5)
    trees = {
        "a": Hierarchy((f"a{i}", f"ga{i // 3}", "*") for i in range(9)),
        "b": Hierarchy((f"b{i}", "*") for i in range(4)),
    }
    frame = pl.DataFrame(
        {
            "a": rng.choice([f"a{i}" for i in range(9)], size=400).tolist(),
            "b": rng.choice([f"b{i}" for i in range(4)], size=400).tolist(),
            "s": rng.choice(["x", "y"], size=400, p=[0.9, 0.1]).tolist(),
        }
    )
    config = AnonymizationConfig(trees, k=1, l=2, sensitive="s", suppression_limit=1.0)
    problem, base = _problem_for(frame, trees, config)
    scale = 1 << 42
    big_base = Table(base.levels, base.codes, base.sensitive, base.counts * scale)
    big_problem = Problem.build(
        columns=list(trees),
        level_codes=[[tree.codes(h).astype(np.intp) for h in range(tree.height)] for tree in trees.values()],
        level_leaves=[[tree.leaf_counts(h) for h in range(tree.height)] for tree in trees.values()],
        base=big_base,
        sensitive_values=2,
        k=1,
        l=2,
        l_kind="distinct",
        max_suppressed=int(big_base.counts.sum()),
    )
    assert big_problem.rows * 9 >= 1 << 53
    suppressing = 0
    for levels in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]:
        small = evaluate(problem, base, levels, keep_table=False, details=True)
        big = evaluate(big_problem, big_base, levels, keep_table=False, details=True)
        suppressing += small.suppressed > 0
        assert big.suppressed == small.suppressed * scale
        assert big.computed_numerators() == tuple(value * scale for value in small.computed_numerators())
    assert suppressing >= 2


def test_classes_with_entities_when_the_key_needs_renumbering() -> None:
    """Four columns of 2^15 leaves make a 60-bit key before the sensitive value and the entity are
    appended: the key is renumbered on the way, so an evaluation keeps a copy of the classes' keys
    instead of dividing them out. Every node (the wide ones and the generalized, narrow ones)
    must still suppress what the definitions say."""
    rng = np.random.default_rng(5)
    leaves = [f"v{index}" for index in range(1 << 15)]
    tree = Hierarchy(
        zip(leaves, [f"g{index >> 10}" for index in range(1 << 15)], ["*"] * (1 << 15), strict=True)
    )
    trees = {f"q{q}": tree for q in range(4)}
    common = rng.choice(1 << 15, size=6, replace=False)
    rows = [
        {
            **{
                q: leaves[int(rng.choice(common) if rng.random() < 0.8 else rng.integers(1 << 15))]
                for q in trees
            },
            "s": str(rng.choice(["a", "b", "c"])),
            "who": f"p{rng.integers(12)}",
        }
        for _ in range(80)
    ]
    config = AnonymizationConfig(trees, sensitive="s", k=2, l=2, suppression_limit=0.3, entity="who")
    assert (1 << 60) * 3 * 12 >= 1 << 62  # the widths that force renumbering
    frame = pl.DataFrame(rows)
    codes = encode_columns(frame, trees)
    sensitive = frame["s"].replace_strict(["a", "b", "c"], [0, 1, 2]).to_numpy().astype(np.int32)
    entities = np.unique(frame["who"].to_numpy(), return_inverse=True)[1].astype(np.int32)
    base, _ = distinct_combinations(codes, [1 << 15] * 4, sensitive, 3, entities, int(entities.max()) + 1)
    problem = Problem.build(
        columns=list(trees),
        level_codes=[[tree.codes(h).astype(np.intp) for h in range(tree.height)]] * 4,
        level_leaves=[[tree.leaf_counts(h) for h in range(tree.height)]] * 4,
        base=base,
        sensitive_values=3,
        k=2,
        l=2,
        l_kind="distinct",
        max_suppressed=max_suppressed(0.3, len(rows)),
        entity_values=int(entities.max()) + 1,
    )
    everything = exhaustive(problem, base)
    for levels, suppressed, loss in everything:
        if max(levels) <= 1:  # the naive model is slow on 2^15 leaves: the nodes below the tops
            naive = naive_node(rows, config, levels)
            assert suppressed == naive.suppressed, levels
            assert loss == pytest.approx(naive.loss, abs=1e-12), levels
    result = anonymize(frame, config)
    feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
    assert result.guarantee.loss == pytest.approx(min(feasible), abs=1e-12)
    check_release(rows, result, config)


def test_the_search_caches_only_tables_that_roll_up_to_much_fewer_combinations() -> None:
    """With an entity per record nearly every record stays a combination of its own at every
    node: such tables are not kept (a quarter of the source's size or less to spare)."""
    # 64 records, one person each except four pairs who share a level-1 group (v0/v1 → g0, …).
    people = [index // 2 * 2 if index < 8 else index for index in range(64)]
    frame = pl.DataFrame({"q": [f"v{index % 8}" for index in range(64)], "who": [f"p{p}" for p in people]})
    tree = Hierarchy([(f"v{index}", f"g{index // 2}", f"h{index // 4}", "*") for index in range(8)])
    codes = encode_columns(frame, {"q": tree})
    entities = np.unique(np.asarray(people), return_inverse=True)[1].astype(np.int32)
    base, _ = distinct_combinations(codes, [8], None, 1, entities, 60)
    problem = Problem.build(
        columns=["q"],
        level_codes=[[tree.codes(h).astype(np.intp) for h in range(tree.height)]],
        level_leaves=[[tree.leaf_counts(h) for h in range(tree.height)]],
        base=base,
        sensitive_values=1,
        k=2,
        l=None,
        l_kind="distinct",
        max_suppressed=0,
        entity_values=60,
    )
    rolled = evaluate(problem, base, (1,), keep_table=True).table
    assert rolled is not None and (base.size, rolled.size) == (64, 60)
    cache = _Cache(base, budget=1 << 20)
    cache.add(rolled, base)
    assert cache.source_for((1,)) is base  # 60 of 64 combinations: not kept

    without_entities, _ = distinct_combinations(codes, [8], None, 1)
    problem = replace(problem, entity_values=0)
    rolled = evaluate(problem, without_entities, (2,), keep_table=True).table
    assert rolled is not None and (without_entities.size, rolled.size) == (8, 2)
    cache = _Cache(without_entities, budget=1 << 20)
    cache.add(rolled, without_entities)
    assert cache.source_for((3,)) is rolled


def test_meets_that_do_not_shrink_the_input_are_dropped_and_end_the_sharing() -> None:
    """With one entity per record a meet's table keeps every combination of the input: it is not
    used as a source, not cached, and no further meet is built; the result stays the optimum."""
    rng = np.random.default_rng(7)
    trees = {
        "a": Hierarchy((f"a{i}", f"ga{i // 2}", f"ha{i // 4}", "*") for i in range(8)),
        "b": Hierarchy((f"b{i}", f"gb{i // 3}", "*") for i in range(9)),
    }
    rows = 300
    frame = pl.DataFrame(
        {
            "a": rng.choice([f"a{i}" for i in range(8)], size=rows).tolist(),
            "b": rng.choice([f"b{i}" for i in range(9)], size=rows).tolist(),
        }
    )
    codes = encode_columns(frame, trees)
    entities = np.arange(rows, dtype=np.int32)
    base, _ = distinct_combinations(codes, [8, 9], None, 1, entities, rows)
    problem = Problem.build(
        columns=list(trees),
        level_codes=[[tree.codes(h).astype(np.intp) for h in range(tree.height)] for tree in trees.values()],
        level_leaves=[[tree.leaf_counts(h) for h in range(tree.height)] for tree in trees.values()],
        base=base,
        sensitive_values=1,
        k=10,
        l=None,
        l_kind="distinct",
        max_suppressed=max_suppressed(0.05, rows),
        entity_values=rows,
    )
    state = _Search(problem, base, CACHE_BUDGET)
    assert state.share_meets
    best = state.run()
    assert not state.share_meets and len(state.meets) == 1
    assert state.cache.source_for((3, 2)) is base  # no table of a meet (or node) kept
    everything = exhaustive(problem, base)
    feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
    found = problem.total_loss(problem.loss_terms(best.computed_numerators()))
    assert found == pytest.approx(min(feasible), abs=1e-12)


def test_tables_with_4_byte_chunk_values_search_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large tables store their chunk values in 4 bytes (``chunk_dtype``): with the threshold
    lowered to every table, the base and rolled-up tables are int32 and the search still finds the
    optimum of exhaustive evaluation, with and without l-diversity."""
    rng = np.random.default_rng(13)
    trees = {
        "a": Hierarchy((f"a{i}", f"ga{i // 3}", f"ha{i // 9}", "*") for i in range(27)),
        "b": Hierarchy((f"b{i}", f"gb{i // 2}", "*") for i in range(10)),
        "c": flat_hierarchy(["x", "y", "z"]),
    }
    frame = pl.DataFrame(
        {
            "a": rng.choice([f"a{i}" for i in range(27)], size=2000).tolist(),
            "b": rng.choice([f"b{i}" for i in range(10)], size=2000).tolist(),
            "c": rng.choice(["x", "y", "z"], size=2000).tolist(),
            "s": rng.choice(["p", "q", "r"], size=2000, p=[0.85, 0.1, 0.05]).tolist(),
        }
    )
    monkeypatch.setattr(lattice_module, "NARROW_CHUNKS_FROM", 1)
    for config in (
        AnonymizationConfig(trees, k=6, suppression_limit=0.03),
        AnonymizationConfig(trees, k=3, l=2, sensitive="s", suppression_limit=0.05),
    ):
        problem, base = _problem_for(frame, trees, config)
        everything = exhaustive(problem, base)
        feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
        assert search(problem, base).loss == pytest.approx(min(feasible), abs=1e-12)
        assert all(values.dtype == np.int32 for values in base.chunks(problem))
        rolled = evaluate(problem, base, (1, 1, 0), keep_table=True).table
        assert rolled is not None and all(values.dtype == np.int32 for values in rolled.chunks(problem))


def test_roll_ups_without_a_sensitive_column_are_hashed_and_agree_with_sorting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a sensitive column or entities, ``evaluate`` groups by hashing (classes in no order)
    where the key space is too large to relabel densely; with ``details`` it sorts. Both must see
    the same classes, suppression and loss at every node, and the search the optimum."""
    rng = np.random.default_rng(29)
    trees = {
        name: Hierarchy((f"{name}{i}", f"g{name}{i // 4}", f"h{name}{i // 16}", "*") for i in range(40))
        for name in "abcd"
    }
    frame = pl.DataFrame(
        {name: rng.choice([f"{name}{i}" for i in range(40)], size=4000).tolist() for name in trees}
    )
    problem, base = _problem_for(frame, trees, AnonymizationConfig(trees, k=3, suppression_limit=0.04))
    hashed_sizes: list[int] = []
    hash_roll_up = lattice_module.hash_roll_up

    def spy(*arguments: Any) -> Any:
        hashed_sizes.append(int(arguments[3].size))
        return hash_roll_up(*arguments)

    monkeypatch.setattr(lattice_module, "hash_roll_up", spy)
    lattice = _Lattice(problem)
    for node in range(lattice.size):
        levels = lattice.levels_of(node)
        before = len(hashed_sizes)
        hashed = evaluate(problem, base, levels, keep_table=True)
        hashed_here = len(hashed_sizes) > before
        by_sorting = evaluate(problem, base, levels, keep_table=False, details=True)
        assert len(hashed_sizes) == before + hashed_here  # details never hash
        assert (hashed.suppressed, hashed.classes) == (by_sorting.suppressed, by_sorting.classes)
        if hashed.numerators is not None:
            assert hashed.numerators == by_sorting.numerators
        if hashed_here and hashed.table is not None:  # a hashed table serves as a source like any other
            above = tuple(
                min(level + 1, height - 1) for level, height in zip(levels, problem.heights, strict=True)
            )
            assert evaluate(problem, hashed.table, above, keep_table=False).suppressed == (
                evaluate(problem, base, above, keep_table=False, details=True).suppressed
            )
    assert len(hashed_sizes) > lattice.size // 4
    everything = exhaustive(problem, base)
    feasible = [loss for _, suppressed, loss in everything if suppressed <= problem.max_suppressed]
    assert search(problem, base).loss == pytest.approx(min(feasible), abs=1e-12)


def test_the_kernel_is_prepared_before_the_search_clock_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading or compiling the hash kernel (0.2 to 0.5 s in a new process) is not search time; a
    search that cannot hash (a sensitive column: classes in key order; domains so small that every
    roll-up is relabelled densely) does not load it."""
    rng = np.random.default_rng(31)
    trees = {name: Hierarchy((f"{name}{i}", f"g{name}{i // 4}", "*") for i in range(12)) for name in "abcd"}
    frame = pl.DataFrame(
        {
            **{name: rng.choice([f"{name}{i}" for i in range(12)], size=500).tolist() for name in trees},
            "s": rng.choice(["p", "q"], size=500).tolist(),
        }
    )
    events: list[object] = []
    monkeypatch.setattr(lattice_module, "prepare", lambda parts: events.append(("prepare", parts)))

    def clock() -> float:
        events.append("clock")
        return 0.0

    problem, base = _problem_for(frame, trees, AnonymizationConfig(trees, k=3))
    search(problem, base, clock=clock)
    assert events[0] == ("prepare", len(problem.layout.chunks))
    assert events[1:] == ["clock", "clock"]
    events.clear()
    diverse = AnonymizationConfig(trees, k=3, l=2, sensitive="s", suppression_limit=0.1)
    problem, base = _problem_for(frame, trees, diverse)
    search(problem, base, clock=clock)
    assert events == ["clock", "clock"]
    events.clear()
    small = {name: trees[name] for name in "abc"}  # 12^3 = 1,728 combinations at most: dense
    problem, base = _problem_for(frame.drop("d"), small, AnonymizationConfig(small, k=3))
    search(problem, base, clock=clock)
    assert events == ["clock", "clock"]
