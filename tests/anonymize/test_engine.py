"""``anonymize``: the released table, the guarantee, inputs it accepts and inputs it refuses."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import polars as pl
import pytest

from anonymize import (
    AnonymizationConfig,
    ColumnNotFound,
    EncodedTable,
    InvalidConfig,
    LatticeTooLarge,
    MissingValues,
    NoAnonymousTransformation,
    ValueNotInHierarchy,
    age_bands,
    anonymize,
    date_levels,
    encode_table,
    flat_hierarchy,
    plan_release,
    postcode_prefix,
)

from .conftest import check_release


def invoices() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    rows = 400
    return pl.DataFrame(
        {
            "postcode": rng.choice(["75011", "75012", "75013", "13001", "13002", "69001"], size=rows),
            "age": rng.integers(18, 95, size=rows),
            "gender": rng.choice(["F", "M"], size=rows),
            "issued": [date(2025, 1, 1 + int(day)) for day in rng.integers(0, 31, size=rows)],
            "category": rng.choice(["rent", "food", "fuel", "care"], size=rows),
            "total": rng.integers(100, 10_000, size=rows),
        }
    )


def config_for(frame: pl.DataFrame, **overrides: object) -> AnonymizationConfig:
    parameters: dict[str, object] = {
        "quasi_identifiers": {
            "postcode": postcode_prefix(frame["postcode"].unique()),
            "age": age_bands(frame["age"].unique()),
            "gender": flat_hierarchy(frame["gender"].unique()),
            "issued": date_levels(frame["issued"].unique()),
        },
        "sensitive": "category",
        "k": 5,
        "l": 2,
        "suppression_limit": 0.05,
    }
    parameters.update(overrides)
    return AnonymizationConfig(**parameters)  # type: ignore[arg-type]


def as_text(frame: pl.DataFrame) -> list[dict[str, str]]:
    return frame.select(pl.all().cast(pl.String)).to_dicts()


def test_release_keeps_rows_and_other_columns() -> None:
    frame = invoices()
    config = config_for(frame)
    result = anonymize(frame, config)
    released = result.table
    assert released.columns == frame.columns
    assert released["total"].equals(frame["total"])
    assert released["category"].equals(frame["category"])
    assert released.schema["age"] == pl.String
    assert not result.suppressed_rows.flags.writeable
    check_release(as_text(frame), result, config)


def test_guarantee_document() -> None:
    frame = invoices()
    guarantee = anonymize(frame, config_for(frame)).guarantee
    document = guarantee.to_dict()
    assert json.loads(json.dumps(document)) == document
    assert set(document) >= {
        "levels",
        "suppressed",
        "loss",
        "loss_per_qi",
        "k",
        "l",
        "nodes_checked",
        "search_ms",
    }
    assert list(document["levels"]) == ["postcode", "age", "gender", "issued"]  # type: ignore[call-overload]
    assert document["k"] == 5
    assert document["l"] == 2
    assert 0.0 <= guarantee.loss <= 1.0
    assert guarantee.max_risk <= 1 / 5 or 0 < guarantee.suppressed < 5


def test_mapping_input_and_search_clock() -> None:
    ticks = iter([10.0, 10.25])
    result = anonymize(
        {"zip": ["75011"] * 3 + ["75012"] * 2, "amount": [1, 2, 3, 4, 5]},
        AnonymizationConfig({"zip": postcode_prefix(["75011", "75012"])}, k=2),
        clock=lambda: next(ticks),
    )
    assert result.table["zip"].to_list() == ["75011"] * 3 + ["75012"] * 2
    assert result.guarantee.search_ms == 250.0
    assert result.guarantee.loss == 0.0


def test_suppressed_rows_lose_every_quasi_identifier() -> None:
    frame = pl.DataFrame({"zip": ["75011"] * 9 + ["13001"], "sex": ["F"] * 9 + ["M"], "x": range(10)})
    config = AnonymizationConfig(
        {"zip": postcode_prefix(frame["zip"]), "sex": flat_hierarchy(frame["sex"])},
        k=3,
        suppression_limit=0.1,
    )
    result = anonymize(frame, config)
    assert result.guarantee.levels == {"zip": 0, "sex": 0}
    assert result.table.row(9) == ("*", "*", 9)
    assert result.guarantee.max_risk == 1.0  # the lone suppressed record is a class of one
    check_release(as_text(frame), result, config)


def test_empty_table() -> None:
    frame = pl.DataFrame({"zip": pl.Series([], dtype=pl.String)})
    result = anonymize(frame, AnonymizationConfig({"zip": postcode_prefix(["75011"])}, k=5))
    assert result.table.height == 0
    assert result.guarantee.suppressed == 0
    assert result.guarantee.levels == {"zip": 0}


def test_unsatisfiable_models() -> None:
    frame = pl.DataFrame({"zip": ["75011", "75012"], "s": ["a", "a"]})
    hierarchy = postcode_prefix(frame["zip"])
    with pytest.raises(NoAnonymousTransformation):
        anonymize(frame, AnonymizationConfig({"zip": hierarchy}, k=3))
    with pytest.raises(NoAnonymousTransformation):
        anonymize(frame, AnonymizationConfig({"zip": hierarchy}, k=1, sensitive="s", l=2))
    everything = anonymize(frame, AnonymizationConfig({"zip": hierarchy}, k=3, suppression_limit=1.0))
    assert everything.guarantee.suppressed == 2
    assert everything.guarantee.loss == 1.0


def test_errors_name_columns_not_values() -> None:
    frame = pl.DataFrame({"zip": ["75011", "99999", None], "s": ["a", "b", None]})
    hierarchy = postcode_prefix(["75011"])
    with pytest.raises(ColumnNotFound) as missing:
        anonymize(frame, AnonymizationConfig({"postcode": hierarchy}))
    assert missing.value.column == "postcode"
    with pytest.raises(MissingValues) as nulls:
        anonymize(frame, AnonymizationConfig({"zip": hierarchy}))
    assert nulls.value.column == "zip"
    assert nulls.value.count == 1
    with pytest.raises(ValueNotInHierarchy) as unknown:
        anonymize(frame.head(2), AnonymizationConfig({"zip": hierarchy}))
    assert unknown.value.column == "zip"
    assert unknown.value.count == 1
    assert "99999" not in str(unknown.value)
    with pytest.raises(MissingValues) as sensitive:
        anonymize(
            frame.slice(0, 1).vstack(frame.slice(2, 1).with_columns(zip=pl.lit("75011"))),
            AnonymizationConfig({"zip": hierarchy}, sensitive="s", l=2),
        )
    assert sensitive.value.column == "s"


def test_lattice_size_is_bounded() -> None:
    columns = {f"q{index}": date_levels(["2024-01-01"]) for index in range(8)}
    frame = pl.DataFrame({name: ["2024-01-01"] for name in columns})
    with pytest.raises(LatticeTooLarge):
        anonymize(frame, AnonymizationConfig(columns, k=1))


def test_plan_release_on_encoded_codes_matches_anonymize_and_checks_its_input() -> None:
    frame = pl.DataFrame(
        {
            "zip": [f"750{i % 4}" for i in range(40)],
            "who": [f"p{i % 9}" for i in range(40)],
            "s": [f"d{i % 3}" for i in range(40)],
        }
    )
    config = AnonymizationConfig(
        {"zip": postcode_prefix(frame["zip"].unique(), keep=(4, 3, 0))},
        sensitive="s",
        k=3,
        l=2,
        suppression_limit=0.1,
        entity="who",
    )
    whole = anonymize(frame, config)
    encoded = encode_table(frame, config)
    plan = plan_release(encoded, config)
    assert plan.guarantee.levels == whole.guarantee.levels
    assert plan.guarantee.entity == "who"
    first, second = slice(0, 25), slice(25, 40)
    pieces = [
        plan.generalize("zip", encoded.leaves["zip"][part], plan.suppressed_rows[part])
        for part in (first, second)
    ]
    assert pl.concat(pieces).to_list() == whole.table["zip"].to_list()

    with pytest.raises(InvalidConfig):
        plan_release(
            EncodedTable(leaves={"zip": encoded.leaves["zip"][:5]}, entities=encoded.entities), config
        )
    with pytest.raises(ColumnNotFound):
        plan_release(EncodedTable(leaves=dict(encoded.leaves)), config)
    with pytest.raises(InvalidConfig):
        AnonymizationConfig({"zip": config.quasi_identifiers["zip"]}, entity="zip")
