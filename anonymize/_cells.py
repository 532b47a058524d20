"""Small-cell suppression for aggregates (sums and counts per group) that keeps totals reconciling.

The rule, applied by ``suppress_small_cells``:

1. A cell with at least k distinct customers is released as it is.
2. Every other cell is folded into one ``other`` row: its sums are added, and its customers join
   the ``other`` row's set (distinct customers are counted over the union, since a customer can
   appear in several cells — which is why cells carry customer sets, not counts).
3. If ``other`` then has fewer than k distinct customers, released cells are folded into it as
   well, fewest customers first (then the latest in input order), until it reaches k. So ``other``
   never describes fewer than k customers, and no folded cell can be recovered by subtracting the
   released ones from the total.
4. If folding every cell still leaves fewer than k distinct customers (the whole population is
   smaller than k), nothing is released: ``withheld`` is true and ``cells`` is empty.

Unless withheld, each sum over the released cells and ``other`` equals the sum over the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from anonymize._errors import InvalidConfig

__all__ = ["Cell", "CellRelease", "ReleasedCell", "suppress_small_cells"]


@dataclass(frozen=True)
class Cell:
    """One group of an aggregate: its key, its distinct customers (ids or pseudonyms) and its sums."""

    key: tuple[str, ...]
    customers: frozenset[str]
    sums: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", tuple(self.key))
        object.__setattr__(self, "customers", frozenset(self.customers))  # accept any collection
        object.__setattr__(self, "sums", MappingProxyType(dict(self.sums)))


@dataclass(frozen=True)
class ReleasedCell:
    """A released row: ``customers`` is the number of distinct customers, ``cells`` how many input
    cells it merges (1 for a cell released as it is)."""

    key: tuple[str, ...]
    customers: int
    sums: Mapping[str, int]
    cells: int = 1


@dataclass(frozen=True)
class CellRelease:
    """The released rows (input order, ``other`` last), the keys folded into ``other``, and whether
    everything was withheld because the population has fewer than k customers."""

    cells: tuple[ReleasedCell, ...]
    folded_keys: tuple[tuple[str, ...], ...] = field(default=())
    withheld: bool = False


def suppress_small_cells(
    cells: Iterable[Cell], *, k: int, other_key: tuple[str, ...] = ("other",)
) -> CellRelease:
    """Apply the module's rule to ``cells`` with threshold ``k``.

    Raises ``InvalidConfig`` if k < 1, keys repeat, ``other_key`` is also a cell's key, or cells do
    not all have the same sum columns.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidConfig("k must be an integer ≥ 1")
    items = list(cells)
    keys = [cell.key for cell in items]
    if len(set(keys)) != len(keys):
        raise InvalidConfig("cell keys must be distinct")
    if tuple(other_key) in set(keys):
        raise InvalidConfig("the 'other' key is also the key of a cell")
    names = {frozenset(cell.sums) for cell in items}
    if len(names) > 1:
        raise InvalidConfig("every cell must have the same sum columns")
    sum_names = sorted(next(iter(names))) if names else []

    released = [index for index, cell in enumerate(items) if len(cell.customers) >= k]
    folded = [index for index, cell in enumerate(items) if len(cell.customers) < k]
    other_customers: set[str] = set()
    for index in folded:
        other_customers |= items[index].customers
    while folded and len(other_customers) < k and released:
        smallest = min(reversed(released), key=lambda index: len(items[index].customers))
        released.remove(smallest)
        folded.append(smallest)
        other_customers |= items[smallest].customers
    if folded and len(other_customers) < k:
        return CellRelease(cells=(), folded_keys=tuple(keys), withheld=True)

    rows = [
        ReleasedCell(items[index].key, len(items[index].customers), MappingProxyType(dict(items[index].sums)))
        for index in released
    ]
    if folded:
        totals = {name: sum(items[index].sums[name] for index in folded) for name in sum_names}
        rows.append(
            ReleasedCell(tuple(other_key), len(other_customers), MappingProxyType(totals), len(folded))
        )
    return CellRelease(cells=tuple(rows), folded_keys=tuple(items[index].key for index in sorted(folded)))
