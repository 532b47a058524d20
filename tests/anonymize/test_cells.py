"""Small-cell suppression: the folding rule and reconciliation of totals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymize import Cell, InvalidConfig, suppress_small_cells


def cell(key: str, customers: str, net: int) -> Cell:
    return Cell((key,), frozenset(customers), {"net": net, "tax": net // 5})


def test_cells_below_k_fold_into_other() -> None:
    release = suppress_small_cells(
        [cell("jan", "abcde", 100), cell("feb", "ab", 10), cell("mar", "cdefgh", 60), cell("apr", "fgh", 7)],
        k=3,
    )
    assert [(row.key, row.customers, row.sums["net"], row.cells) for row in release.cells] == [
        (("jan",), 5, 100, 1),
        (("mar",), 6, 60, 1),
        (("other",), 5, 17, 2),
    ]
    assert release.folded_keys == (("feb",), ("apr",))
    assert not release.withheld


def test_other_below_k_absorbs_the_smallest_released_cells() -> None:
    # feb and apr share customer "a": their union has 2 < 3 distinct customers, so "other" would
    # single them out; the smallest released cell (mar, 3 customers) is folded in too.
    release = suppress_small_cells(
        [cell("jan", "abcdef", 100), cell("feb", "ab", 10), cell("mar", "xyz", 60), cell("apr", "a", 7)], k=3
    )
    assert [(row.key, row.customers, row.sums["net"]) for row in release.cells] == [
        (("jan",), 6, 100),
        (("other",), 5, 77),
    ]
    assert release.folded_keys == (("feb",), ("mar",), ("apr",))


def test_population_below_k_is_withheld() -> None:
    release = suppress_small_cells([cell("jan", "ab", 100), cell("feb", "b", 10)], k=3)
    assert release.withheld
    assert release.cells == ()


def test_nothing_to_fold_releases_everything() -> None:
    release = suppress_small_cells([cell("jan", "abc", 1)], k=3)
    assert [row.key for row in release.cells] == [("jan",)]
    assert suppress_small_cells([], k=5).cells == ()


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.frozensets(st.sampled_from("abcdefghij"), max_size=6), st.integers(-500, 500)),
        max_size=8,
    ),
    st.integers(1, 6),
)
def test_totals_reconcile_and_every_released_row_has_k_customers(
    groups: list[tuple[frozenset[str], int]], k: int
) -> None:
    cells = [Cell((f"g{index}",), customers, {"net": net}) for index, (customers, net) in enumerate(groups)]
    release = suppress_small_cells(cells, k=k)
    everyone = frozenset().union(*(customers for customers, _ in groups))
    if release.withheld:
        assert len(everyone) < k
        return
    assert sum(row.sums["net"] for row in release.cells) == sum(net for _, net in groups)
    assert all(row.customers >= k for row in release.cells)


@pytest.mark.parametrize(
    ("cells", "k", "other"),
    [
        ([cell("a", "abc", 1)], 0, ("other",)),
        ([cell("a", "abc", 1), cell("a", "de", 1)], 2, ("other",)),
        ([cell("other", "abc", 1)], 2, ("other",)),
        ([cell("a", "abc", 1), Cell(("b",), {"x"}, {"gross": 1})], 2, ("other",)),
    ],
    ids=["k-zero", "duplicate-key", "other-collides", "different-sums"],
)
def test_bad_inputs_are_refused(cells: list[Cell], k: int, other: tuple[str, ...]) -> None:
    with pytest.raises(InvalidConfig):
        suppress_small_cells(cells, k=k, other_key=other)
