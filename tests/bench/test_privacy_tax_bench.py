"""bench.privacy_tax_bench: its baseline is the product's tables in clear, and one short run works."""

from __future__ import annotations

import json

import psycopg
import pytest
from sqlmodel import SQLModel

from bench.privacy_tax_bench import (
    CASES,
    PLAIN_TABLES,
    PlainCustomer,
    PlainInvoice,
    PlainInvoiceLine,
    ablate,
    parse_args,
    run_cases,
)
from billing import Billing
from billing._models import Customer, Invoice, InvoiceLine

from ..conftest import PG_ADMIN_URL, require_or_skip


@pytest.mark.parametrize(
    ("plain", "product"),
    [(PlainCustomer, Customer), (PlainInvoice, Invoice), (PlainInvoiceLine, InvoiceLine)],
)
def test_the_baseline_has_the_products_columns_in_clear(
    plain: type[SQLModel], product: type[SQLModel]
) -> None:
    product_columns = product.__table__.columns  # type: ignore[attr-defined]
    expected = {c.name.removesuffix("_ct") for c in product_columns if not c.name.endswith("_bidx")}
    assert {c.name for c in plain.__table__.columns} == expected  # type: ignore[attr-defined]


def test_the_baseline_tables_are_not_in_the_products_schema() -> None:
    assert not {table.name for table in PLAIN_TABLES} & set(SQLModel.metadata.tables)


def test_one_short_round_of_every_case_compares_both_sides(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=5).close()
    except psycopg.OperationalError:
        require_or_skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    args = parse_args(
        ["--rounds", "1", "--ops", "2", "--warmup", "1", "--clients", "2", "--only", ",".join(CASES)]
    )
    results = run_cases(args)  # the service logs to a file of its temporary folder, as in the bench
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == results and [r["case"] for r in results] == list(CASES)
    for result in results:
        assert result["veilbill_ms_median"] > 0 and result["baseline_ms_median"] > 0
        assert result["ratio_median"] == pytest.approx(result["ratio_rounds_min_max"][0])  # one round
        steps = {"create_invoice", "read_invoice"} | (
            {"create_client"} if "client" in result["case"] else set()
        )
        assert set(result["steps"]) == steps


@pytest.mark.parametrize("ablation", ["unflushed-reads", "no-audit"])
def test_an_ablated_run_completes_and_labels_its_result(
    restore_logging: None, capsys: pytest.CaptureFixture[str], ablation: str
) -> None:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=5).close()
    except psycopg.OperationalError:
        require_or_skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    short = ["--rounds", "1", "--ops", "2", "--warmup", "1", "--clients", "2"]
    args = parse_args([*short, "--only", "pg-invoice", "--ablate", ablation])
    (result,) = run_cases(args)
    assert result["ablation"] == ablation and result["ratio_median"] > 0


def test_an_ablation_leaves_the_products_audit_alone(billing: Billing) -> None:
    other = Billing(db=billing.db, keyring=billing.keyring)
    ablate(other, "no-audit")
    with billing.db.transaction() as session:
        assert other.audit.record(session, action="customer.read", tenant_id="ten_a") is None
        assert billing.audit.record(session, action="customer.read", tenant_id="ten_a").seq == 1


def test_unflushed_reads_only_apply_to_postgresql_cases() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "sqlite-invoice", "--ablate", "unflushed-reads"])
