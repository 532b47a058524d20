"""Generalization hierarchies: ARX's CSV format and built-in builders.

A hierarchy lists, for each original value (a *leaf*), its generalization at every level: level 0 is
the value itself, each further level is coarser, and the last level has a single value (``*`` in
ARX's files and in every built-in). Full-domain generalization replaces every value of a column by
its label at one level.

Invariants checked at construction (``InvalidHierarchy`` otherwise):

* every row has the same number of levels, at least two;
* leaves are distinct;
* the last level holds exactly one label;
* levels *nest*: two leaves that share a label at level h share a label at every level above h.
  Without nesting, generalizing one more level could split an equivalence class, and neither the
  monotonicity of k-anonymity nor rolling classes up from a more specific transformation would
  hold. This is why ``date_levels`` clips ISO weeks to their month (an ISO week can straddle two
  months, so "week → month" is not a hierarchy).

The share of a label (used by the ARX "Loss" metric) is the number of leaves under it divided by the
number of leaves in the hierarchy, as ARX computes it from the hierarchy it is given: a hierarchy
read from a file counts all of its rows, a built-in counts the distinct values it was built from.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anonymize._errors import InvalidHierarchy, InvalidQISpec, UnparseableValue

__all__ = [
    "Hierarchy",
    "age_bands",
    "date_levels",
    "flat_hierarchy",
    "hierarchy_for_spec",
    "numeric_intervals",
    "parse_qi_option",
    "postcode_prefix",
]

SUPPRESSED = "*"


class Hierarchy:
    """A validated generalization hierarchy for one quasi-identifier.

    ``rows`` holds one sequence per leaf: ``(leaf, level-1 label, …, top label)``. Immutable once
    built; the integer maps the search uses are computed here, once.
    """

    __slots__ = ("_codes", "_index", "_labels", "_leaf_counts", "_leaves")

    def __init__(self, rows: Iterable[Sequence[str]]) -> None:
        table = [tuple(row) for row in rows]
        if not table:
            raise InvalidHierarchy("a hierarchy needs at least one value")
        height = len(table[0])
        if height < 2:
            raise InvalidHierarchy("a hierarchy needs at least two levels (the value and the top)")
        for number, row in enumerate(table, start=1):
            if len(row) != height:
                raise InvalidHierarchy(f"row {number} has {len(row)} levels, the first row has {height}")
            if not all(isinstance(cell, str) for cell in row):
                raise InvalidHierarchy(f"row {number} holds a value that is not a string")
        leaves = tuple(row[0] for row in table)
        index = {leaf: position for position, leaf in enumerate(leaves)}
        if len(index) != len(leaves):
            raise InvalidHierarchy(f"{len(leaves) - len(index)} leaf value(s) appear more than once")

        labels: list[tuple[str, ...]] = []
        codes: list[npt.NDArray[np.int32]] = []
        for level in range(height):
            numbering: dict[str, int] = {}
            column = np.fromiter(
                (numbering.setdefault(row[level], len(numbering)) for row in table),
                dtype=np.int32,
                count=len(table),
            )
            labels.append(tuple(numbering))
            codes.append(column)
        if len(labels[-1]) != 1:
            raise InvalidHierarchy(f"the last level must hold one value, it holds {len(labels[-1])}")
        for level in range(height - 1):
            lower, upper = codes[level], codes[level + 1]
            parent = np.full(len(labels[level]), -1, dtype=np.int64)
            parent[lower] = upper
            if not np.array_equal(parent[lower], upper):
                raise InvalidHierarchy(
                    f"level {level + 1} does not nest in level {level + 2}: a label has two parents"
                )
        self._leaves = leaves
        self._index = index
        self._labels = tuple(labels)
        self._codes = tuple(codes)
        self._leaf_counts = tuple(
            np.bincount(column, minlength=len(names)).astype(np.int64)
            for column, names in zip(codes, labels, strict=True)
        )

    @classmethod
    def from_arx_csv(cls, path: str | Path, *, sep: str = ";", encoding: str = "utf-8-sig") -> Hierarchy:
        """Read ARX's hierarchy format: one row per original value, one column per level.

        Blank lines are ignored. Raises ``InvalidHierarchy`` (or ``OSError`` if the file cannot be read).
        """
        with Path(path).open(encoding=encoding, newline="") as handle:
            rows = [row for row in csv.reader(handle, delimiter=sep) if row and any(row)]
        return cls(rows)

    @property
    def leaves(self) -> tuple[str, ...]:
        """The original values, in the order given."""
        return self._leaves

    @property
    def height(self) -> int:
        """Number of levels, the original values (level 0) and the top included."""
        return len(self._labels)

    @property
    def domain_size(self) -> int:
        """|D|: the number of leaves, the denominator of a label's share in the Loss metric."""
        return len(self._leaves)

    def labels(self, level: int) -> tuple[str, ...]:
        """The distinct labels of ``level``, in order of first appearance."""
        return self._labels[level]

    def generalize(self, value: str, level: int) -> str:
        """The label of ``value`` at ``level``; raises ``KeyError`` if ``value`` is not a leaf."""
        return self._labels[level][int(self._codes[level][self._index[value]])]

    def leaf_index(self) -> dict[str, int]:
        """A fresh map from leaf value to its position (the integer code the engine works with)."""
        return dict(self._index)

    def codes(self, level: int) -> npt.NDArray[np.int32]:
        """Leaf position → label number at ``level`` (read-only view)."""
        view = self._codes[level].view()
        view.flags.writeable = False
        return view

    def leaf_counts(self, level: int) -> npt.NDArray[np.int64]:
        """Label number at ``level`` → number of leaves under it (read-only view)."""
        view = self._leaf_counts[level].view()
        view.flags.writeable = False
        return view

    def rows(self) -> tuple[tuple[str, ...], ...]:
        """The hierarchy as ARX rows, one per leaf."""
        return tuple(
            tuple(self._labels[level][int(self._codes[level][leaf])] for level in range(self.height))
            for leaf in range(self.domain_size)
        )

    def __repr__(self) -> str:
        return f"Hierarchy(leaves={self.domain_size}, levels={self.height})"


def _distinct_strings(values: Iterable[object]) -> list[tuple[str, object]]:
    seen: dict[str, object] = {}
    for value in values:
        if value is None:
            raise UnparseableValue("a value is missing (null)")
        text = value.isoformat() if isinstance(value, date) else str(value)
        seen.setdefault(text, value)
    if not seen:
        raise InvalidHierarchy("a hierarchy needs at least one value")
    return list(seen.items())


def _as_fraction(value: object) -> Fraction:
    if isinstance(value, bool):
        raise UnparseableValue("a value is not a number")
    if isinstance(value, int | Fraction):
        return Fraction(value)
    try:
        number = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError) as exc:
        raise UnparseableValue("a value is not a number") from exc
    return number


def _format_number(number: Fraction) -> str:
    if number.denominator == 1:
        return str(number.numerator)
    return repr(float(number))


def _check_nested_widths(widths: Sequence[int | float | Fraction], what: str) -> list[Fraction]:
    if not widths:
        raise InvalidHierarchy(f"{what} needs at least one width")
    exact = [_as_fraction(width) for width in widths]
    if any(width <= 0 for width in exact):
        raise InvalidHierarchy(f"{what} widths must be positive")
    for lower, upper in itertools.pairwise(exact):
        ratio = upper / lower
        if ratio.denominator != 1 or ratio <= 1:
            raise InvalidHierarchy(f"{what} widths must grow, each a multiple of the previous one")
    return exact


def flat_hierarchy(values: Iterable[object]) -> Hierarchy:
    """Two levels: the value, then ``*`` (e.g. gender)."""
    return Hierarchy((text, SUPPRESSED) for text, _ in sorted(_distinct_strings(values)))


def postcode_prefix(values: Iterable[object], keep: Sequence[int] = (5, 3, 2, 0)) -> Hierarchy:
    """Prefix generalization: 75011 → 750** → 75*** → ``*``.

    ``keep[i]`` is the number of leading characters level i keeps, the rest becoming ``*`` (so a label
    keeps its value's length); ``keep[0]`` is the length of the original values, which level 0 shows
    unchanged, and ``keep`` must decrease to 0 (the single ``*``). A value longer than ``keep[0]``
    raises ``UnparseableValue``.
    """
    if len(keep) < 2 or keep[-1] != 0 or any(a <= b for a, b in itertools.pairwise(keep)):
        raise InvalidHierarchy("postcode keep lengths must decrease strictly and end with 0")
    rows = []
    for text, _ in sorted(_distinct_strings(values)):
        if len(text) > keep[0]:
            raise UnparseableValue(f"a value is longer than the {keep[0]} characters of level 0")
        prefixes = [
            text if kept >= len(text) else text[:kept] + SUPPRESSED * (len(text) - kept)
            for kept in keep[1:-1]
        ]
        rows.append([text, *prefixes, SUPPRESSED])
    return Hierarchy(rows)


def numeric_intervals(values: Iterable[object], widths: Sequence[int | float] = (5, 10, 20)) -> Hierarchy:
    """Half-open intervals aligned on multiples of each width: 23 → ``[20, 25)`` → ``[20, 30)`` → …  → ``*``.

    Widths must grow, each a multiple of the previous one, so intervals nest. Values are read exactly
    (as decimals), so interval bounds do not drift with floating point.
    """
    exact_widths = _check_nested_widths(widths, "interval")
    parsed = sorted(((_as_fraction(value), text) for text, value in _distinct_strings(values)))
    rows = []
    for number, text in parsed:
        row = [text]
        for width in exact_widths:
            low = math.floor(number / width) * width
            row.append(f"[{_format_number(low)}, {_format_number(low + width)})")
        row.append(SUPPRESSED)
        rows.append(row)
    return Hierarchy(rows)


def age_bands(
    values: Iterable[object], widths: Sequence[int] = (5, 10, 20), top_code: int | None = 90
) -> Hierarchy:
    """Ages (whole years): 37 → ``35-39`` → ``30-39`` → ``20-39`` → ``*``, top-coded as ``90+``.

    Level 0 is the exact age; from level 1 on, ages ≥ ``top_code`` read ``{top_code}+`` and bands stop
    below it (80-99 becomes ``80-89``). Widths must grow, each a multiple of the previous one.
    """
    exact_widths = _check_nested_widths(widths, "age band")
    if any(width.denominator != 1 for width in exact_widths):
        raise InvalidHierarchy("age band widths must be whole years")
    if top_code is not None and top_code < 1:
        raise InvalidHierarchy("the top code must be a positive age")
    parsed = []
    for text, value in _distinct_strings(values):
        exact = _as_fraction(value)
        if exact.denominator != 1 or exact < 0:
            raise UnparseableValue("an age is not a whole, non-negative number of years")
        parsed.append((exact.numerator, text))
    rows = []
    for age, text in sorted(parsed):
        row = [text]
        for width in exact_widths:
            if top_code is not None and age >= top_code:
                row.append(f"{top_code}+")
                continue
            low = age // width.numerator * width.numerator
            high = low + width.numerator - 1
            if top_code is not None:
                high = min(high, top_code - 1)
            row.append(f"{low}-{high}")
        row.append(SUPPRESSED)
        rows.append(row)
    return Hierarchy(rows)


def _as_date(value: object) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise UnparseableValue("a value is not an ISO date (YYYY-MM-DD)") from exc


def date_levels(values: Iterable[object]) -> Hierarchy:
    """Dates: day → week → month → quarter → year → ``*``.

    2024-03-01 → ``2024-03-W09`` → ``2024-03`` → ``2024-Q1`` → ``2024`` → ``*``. The week level is the
    ISO week *clipped to its month* (a week straddling two months yields two labels), because levels
    must nest; the label is the month followed by the ISO week number.
    """
    rows = []
    for text, value in sorted(_distinct_strings(values)):
        day = _as_date(value)
        week = day.isocalendar().week
        rows.append(
            (
                text,
                f"{day.year:04d}-{day.month:02d}-W{week:02d}",
                f"{day.year:04d}-{day.month:02d}",
                f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}",
                f"{day.year:04d}",
                SUPPRESSED,
            )
        )
    return Hierarchy(rows)


def parse_qi_option(option: str) -> tuple[str, str]:
    """Split a ``--qi COLUMN=SPEC`` option into ``(column, spec)``; raises ``InvalidQISpec``."""
    column, separator, spec = option.partition("=")
    column, spec = column.strip(), spec.strip()
    if not separator or not column or not spec:
        raise InvalidQISpec("a quasi-identifier is given as COLUMN=HIERARCHY.csv or COLUMN=builtin:NAME")
    return column, spec


def _numbers(text: str, column: str) -> list[int | float]:
    try:
        return [float(part) if "." in part else int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidQISpec("built-in arguments are comma-separated numbers", column=column) from exc


def hierarchy_for_spec(
    column: str, spec: str, values: Iterable[object], *, sep: str = ";", base_dir: Path | None = None
) -> Hierarchy:
    """Build the hierarchy a ``COLUMN=SPEC`` option names.

    ``spec`` is a path to an ARX hierarchy CSV (relative to ``base_dir``, default the working
    directory; cells separated by ``sep``) or a built-in, built from ``values`` (the column's values):

    * ``builtin:postcode[:5,3,2,0]`` — ``postcode_prefix`` with those keep lengths;
    * ``builtin:age[:5,10,20[:90]]`` — ``age_bands`` with those widths and top code;
    * ``builtin:date`` — ``date_levels``;
    * ``builtin:interval:5,10,20`` — ``numeric_intervals`` with those widths;
    * ``builtin:flat`` — the value or ``*``.

    Raises ``InvalidQISpec`` for an unknown built-in or bad arguments, ``InvalidHierarchy`` /
    ``UnparseableValue`` (with ``column`` set) when the hierarchy cannot be built.
    """
    try:
        if not spec.startswith("builtin:"):
            path = Path(spec)
            if not path.is_absolute():
                path = (base_dir or Path.cwd()) / path
            if not path.is_file():
                raise InvalidQISpec("the hierarchy file does not exist", column=column)
            return Hierarchy.from_arx_csv(path, sep=sep)
        name, _, arguments = spec.removeprefix("builtin:").partition(":")
        if name == "postcode":
            keep = _numbers(arguments, column) if arguments else [5, 3, 2, 0]
            return postcode_prefix(values, keep=[int(number) for number in keep])
        if name == "age":
            widths_text, _, top_text = arguments.partition(":")
            widths = _numbers(widths_text, column) if widths_text else [5, 10, 20]
            top = _numbers(top_text, column) if top_text else [90]
            if len(top) != 1:
                raise InvalidQISpec("builtin:age takes one top code", column=column)
            return age_bands(values, widths=[int(width) for width in widths], top_code=int(top[0]))
        if name == "date" and not arguments:
            return date_levels(values)
        if name == "interval" and arguments:
            return numeric_intervals(values, widths=_numbers(arguments, column))
        if name == "flat" and not arguments:
            return flat_hierarchy(values)
    except (InvalidHierarchy, UnparseableValue) as exc:
        exc.column = column
        raise
    raise InvalidQISpec(
        "unknown built-in; use builtin:postcode, builtin:age, builtin:date, builtin:interval:W,… or "
        "builtin:flat",
        column=column,
    )
