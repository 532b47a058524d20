"""Every stored column is in the data inventory, and docs/data-inventory.md is generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, LargeBinary, MetaData, String, Table
from sqlmodel import SQLModel

import billing  # noqa: F401  (registers every table)
from billing import Inventory, Sealed, inventory_entries, inventory_markdown
from billing._inventory import inventory_of, note

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-inventory.md"


def _unannotated(metadata: MetaData) -> list[str]:
    return [
        f"{table.name}.{column.name}"
        for table in metadata.sorted_tables
        for column in table.columns
        if inventory_of(column) is None
    ]


def test_every_column_of_every_table_is_annotated() -> None:
    missing = _unannotated(SQLModel.metadata)
    assert not missing, f"add an Inventory(...) annotation to: {', '.join(missing)}"


def test_the_check_fails_for_a_new_column_without_annotation() -> None:
    metadata = MetaData()
    Table(
        "example",
        metadata,
        Column(
            "id", String, primary_key=True, info=note(Inventory("technical", "id", "contract", "clear", "-"))
        ),
        Column("card_hint", String),
    )
    assert _unannotated(metadata) == ["example.card_hint"]


def test_encrypted_columns_say_how_to_open_them_and_clear_personal_ones_say_why() -> None:
    for entry in inventory_entries():
        item = entry.inventory
        table = SQLModel.metadata.tables[entry.table]
        if isinstance(table.c[entry.column].type, LargeBinary):
            assert item.protection in {"encrypted", "wrapped key"}, entry
        if item.sealed is not None:
            assert entry.column == f"{item.sealed.field}_ct", entry
            assert item.sealed.row_key in table.c, entry
        if item.protection == "clear" and item.category != "technical":
            assert item.why, entry


def test_an_encrypted_annotation_needs_its_key() -> None:
    with pytest.raises(ValueError, match="Sealed"):
        Inventory("contact", "x", "contract", "encrypted", "-")
    with pytest.raises(ValueError, match="Sealed"):
        Inventory("contact", "x", "contract", "clear", "-", sealed=Sealed("profile", "x"))


def test_card_derived_fields_are_exactly_the_card_summary() -> None:
    card = {(e.table, e.column) for e in inventory_entries() if e.inventory.card}
    assert card == {
        ("payment_methods", name)
        for name in (
            "gateway_payment_method_id",
            "brand",
            "last4",
            "exp_month",
            "exp_year",
            "fingerprint",
            "funding",
            "country",
        )
    }


def test_the_committed_document_matches_the_annotations() -> None:
    expected = inventory_markdown()
    regenerate = "veilbill privacy inventory --markdown > docs/data-inventory.md"
    assert DOC.read_text() == expected, f"docs/data-inventory.md is out of date: run `{regenerate}`"
