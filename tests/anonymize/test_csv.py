"""``anonymize_csv``: any delimited file, ARX hierarchy files and built-ins, same separator out."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from anonymize import ColumnNotFound, InvalidQISpec, anonymize_csv

from .conftest import ADULT_QIS


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_builtins_and_hierarchy_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["zip|age|sex|amount"] + [
        f"0750{index % 3}|{30 + index % 4}|{'FM'[index % 2]}|{index}" for index in range(24)
    ]
    source = write(tmp_path / "in.csv", "\n".join(lines) + "\n")
    write(tmp_path / "sex.csv", "F|*\nM|*\n")
    monkeypatch.chdir(tmp_path)
    guarantee = anonymize_csv(
        source,
        sep="|",
        qi_specs={"zip": "builtin:postcode", "age": "builtin:age", "sex": "sex.csv"},
        k=2,
        out_path=tmp_path / "out.csv",
    )
    released = pl.read_csv(tmp_path / "out.csv", separator="|", infer_schema=False)
    assert released.columns == ["zip", "age", "sex", "amount"]
    assert released["amount"].to_list() == [str(index) for index in range(24)]
    assert released["zip"].str.starts_with("0").all()  # read as text: the leading zero survives
    assert guarantee.k == 2
    assert guarantee.rows == 24


def test_adult_command_equivalent(adult_dir: Path, tmp_path: Path) -> None:
    for name in [*ADULT_QIS, "salary-class"]:
        shutil.copy(adult_dir / f"adult_hierarchy_{name}.csv", tmp_path)
    guarantee = anonymize_csv(
        adult_dir / "adult.csv",
        sep=";",
        qi_specs={name: f"adult_hierarchy_{name}.csv" for name in ADULT_QIS},
        sensitive="salary-class",
        k=5,
        l=2,
        suppression=0.05,
        out_path=tmp_path / "out.csv",
        base_dir=tmp_path,
    )
    assert guarantee.suppressed == 1389
    assert pl.read_csv(tmp_path / "out.csv", separator=";").height == 30162


def test_errors(tmp_path: Path) -> None:
    source = write(tmp_path / "in.csv", "zip;x\n75011;1\n")
    with pytest.raises(ColumnNotFound):
        anonymize_csv(source, qi_specs={"postcode": "builtin:postcode"}, out_path=tmp_path / "o.csv")
    with pytest.raises(InvalidQISpec):
        anonymize_csv(source, qi_specs={"zip": "builtin:nope"}, out_path=tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_entity_column_counts_people(tmp_path: Path) -> None:
    # p0 has 6 visits in 75001: by records a class of 6 ≥ 5; by people, one person.
    rows = ["postcode;patient;diagnosis"] + ["75001;p0;d1"] * 6
    rows += [f"7600{i};p{i + 1};d{i % 2}" for i in range(5)]
    table = tmp_path / "visits.csv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.csv"
    guarantee = anonymize_csv(
        table, qi_specs={"postcode": "builtin:postcode:5,2,0"}, out_path=out, k=5, suppression=0.6,
        entity="patient",
    )  # fmt: skip
    released = pl.read_csv(out, separator=";", infer_schema=False)
    assert guarantee.entity == "patient"
    assert guarantee.suppressed == 6  # p0's visits: suppressed, not released as a class of one person
    assert guarantee.min_entities == 1  # the suppressed records count as one class (of p0 alone)
    assert released.filter(pl.col("patient") == "p0")["postcode"].to_list() == ["*"] * 6
    for _, group in released.filter(pl.col("postcode") != "*").group_by("postcode"):
        assert group["patient"].n_unique() >= 5
