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
