"""Hierarchies: ARX's CSV format, the built-in builders, QI specs, and malformed input."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from anonymize import (
    Hierarchy,
    InvalidHierarchy,
    InvalidQISpec,
    UnparseableValue,
    age_bands,
    date_levels,
    flat_hierarchy,
    hierarchy_for_spec,
    numeric_intervals,
    parse_qi_option,
    postcode_prefix,
)


def chain(hierarchy: Hierarchy, value: str) -> list[str]:
    return [hierarchy.generalize(value, level) for level in range(hierarchy.height)]


def test_arx_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("Male;*\r\nFemale;*\r\n\r\n", encoding="utf-8")
    hierarchy = Hierarchy.from_arx_csv(path)
    assert hierarchy.leaves == ("Male", "Female")
    assert hierarchy.height == 2
    assert hierarchy.domain_size == 2
    assert hierarchy.rows() == (("Male", "*"), ("Female", "*"))
    assert list(hierarchy.leaf_counts(1)) == [2]
    assert repr(hierarchy) == "Hierarchy(leaves=2, levels=2)"


def test_adult_hierarchies_load(adult_dir: Path) -> None:
    age = Hierarchy.from_arx_csv(adult_dir / "adult_hierarchy_age.csv")
    assert age.domain_size == 100
    assert age.height == 5
    assert chain(age, "37") == ["37", "35-39", "30-39", "20-39", "*"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "at least one value"),
        ([("a",)], "at least two levels"),
        ([("a", "x", "*"), ("b", "*")], "row 2 has 2 levels"),
        ([("a", "*"), ("a", "*")], "more than once"),
        ([("a", "*"), ("b", "+")], "last level must hold one value"),
        ([("a", "x", "*"), ("b", "x", "*"), ("c", "y", "*"), ("d", "y", "*"), ("e", "x", "*")], None),
        ([("a", "x", "p", "*"), ("b", "x", "q", "*")], "does not nest"),
    ],
    ids=["empty", "one-level", "ragged", "duplicate-leaf", "two-tops", "valid", "not-nested"],
)
def test_hierarchy_validation(rows: list[tuple[str, ...]], message: str | None) -> None:
    if message is None:
        assert Hierarchy(rows).labels(1) == ("x", "y")
        return
    with pytest.raises(InvalidHierarchy, match=message):
        Hierarchy(rows)


def test_messages_do_not_quote_values() -> None:
    with pytest.raises(InvalidHierarchy) as caught:
        Hierarchy([("secret-value", "*"), ("secret-value", "*")])
    assert "secret" not in str(caught.value)


def test_postcode_prefix() -> None:
    hierarchy = postcode_prefix(["75011", "75012", "13001"])
    assert chain(hierarchy, "75011") == ["75011", "750**", "75***", "*"]
    assert hierarchy.leaf_counts(2)[hierarchy.labels(2).index("75***")] == 2
    assert chain(postcode_prefix(["2A004"], keep=(5, 2, 0)), "2A004") == ["2A004", "2A***", "*"]
    with pytest.raises(UnparseableValue):
        postcode_prefix(["750110"])
    with pytest.raises(InvalidHierarchy):
        postcode_prefix(["75011"], keep=(5, 3, 3, 0))


def test_age_bands_top_code_and_nesting() -> None:
    hierarchy = age_bands([17, 37, 84, 89, 90, 103])
    assert chain(hierarchy, "37") == ["37", "35-39", "30-39", "20-39", "*"]
    assert chain(hierarchy, "84") == ["84", "80-84", "80-89", "80-89", "*"]
    assert chain(hierarchy, "103") == ["103", "90+", "90+", "90+", "*"]
    assert chain(age_bands(["95"], top_code=None), "95") == ["95", "95-99", "90-99", "80-99", "*"]
    with pytest.raises(UnparseableValue):
        age_bands(["thirty"])
    with pytest.raises(UnparseableValue):
        age_bands([-1])
    with pytest.raises(InvalidHierarchy):
        age_bands([30], widths=(5, 12))


def test_numeric_intervals_are_exact() -> None:
    hierarchy = numeric_intervals(["0.3", "23", "-1", "7.5"], widths=(0.5, 1))
    assert chain(hierarchy, "0.3") == ["0.3", "[0, 0.5)", "[0, 1)", "*"]
    assert chain(hierarchy, "-1") == ["-1", "[-1, -0.5)", "[-1, 0)", "*"]
    assert chain(numeric_intervals([23]), "23") == ["23", "[20, 25)", "[20, 30)", "[20, 40)", "*"]
    with pytest.raises(UnparseableValue):
        numeric_intervals(["n/a"])
    with pytest.raises(InvalidHierarchy):
        numeric_intervals([1], widths=())
    with pytest.raises(InvalidHierarchy):
        numeric_intervals([1], widths=(10, 5))


def test_date_levels_clip_iso_weeks_to_months() -> None:
    # ISO week 9 of 2024 runs from Monday 26 February to Sunday 3 March.
    hierarchy = date_levels([date(2024, 2, 29), "2024-03-01", "2024-12-30"])
    assert chain(hierarchy, "2024-02-29") == ["2024-02-29", "2024-02-W09", "2024-02", "2024-Q1", "2024", "*"]
    assert chain(hierarchy, "2024-03-01") == ["2024-03-01", "2024-03-W09", "2024-03", "2024-Q1", "2024", "*"]
    assert chain(hierarchy, "2024-12-30")[1] == "2024-12-W01"
    with pytest.raises(UnparseableValue):
        date_levels(["29/02/2024"])


def test_flat_hierarchy() -> None:
    assert chain(flat_hierarchy(["F", "M", "F"]), "F") == ["F", "*"]
    with pytest.raises(UnparseableValue):
        flat_hierarchy(["F", None])


def test_parse_qi_option() -> None:
    assert parse_qi_option("age=builtin:age:5,10") == ("age", "builtin:age:5,10")
    assert parse_qi_option(" zip = h.csv ") == ("zip", "h.csv")
    for bad in ["age", "=builtin:age", "age="]:
        with pytest.raises(InvalidQISpec):
            parse_qi_option(bad)


def test_hierarchy_for_spec_builtins_and_files(tmp_path: Path) -> None:
    (tmp_path / "sex.csv").write_text("M|*\nF|*\n", encoding="utf-8")
    assert hierarchy_for_spec("sex", "sex.csv", [], sep="|", base_dir=tmp_path).leaves == ("M", "F")
    assert hierarchy_for_spec("zip", "builtin:postcode", ["75011"]).height == 4
    assert hierarchy_for_spec("zip", "builtin:postcode:5,2,0", ["75011"]).height == 3
    assert chain(hierarchy_for_spec("age", "builtin:age:10,20:80", ["85"]), "85") == ["85", "80+", "80+", "*"]
    assert hierarchy_for_spec("age", "builtin:age", ["85"]).height == 5
    assert hierarchy_for_spec("day", "builtin:date", ["2024-01-01"]).height == 6
    assert hierarchy_for_spec("amount", "builtin:interval:5,10", ["7"]).height == 4
    assert hierarchy_for_spec("sex", "builtin:flat", ["F"]).height == 2


@pytest.mark.parametrize(
    "spec",
    [
        "builtin:zip",
        "builtin:interval",
        "builtin:date:5",
        "builtin:age:a,b",
        "builtin:age:5,10:1,2",
        "missing.csv",
    ],
)
def test_hierarchy_for_spec_errors_name_the_column(spec: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidQISpec) as caught:
        hierarchy_for_spec("col", spec, ["1"], base_dir=tmp_path)
    assert caught.value.column == "col"


def test_builtin_parse_errors_name_the_column() -> None:
    with pytest.raises(UnparseableValue) as caught:
        hierarchy_for_spec("birth", "builtin:date", ["not-a-date"])
    assert caught.value.column == "birth"
    assert "not-a-date" not in str(caught.value)
