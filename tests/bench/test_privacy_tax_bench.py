"""bench.privacy_tax_bench: its baseline is the product's tables in clear, and one short run works."""

from __future__ import annotations

import json

import psycopg
import pytest
from faker import Faker
from sqlalchemy import Connection, Engine, event
from sqlmodel import SQLModel, select

from bench.privacy_tax_bench import (
    CASES,
    PLAIN_TABLES,
    PlainBilling,
    PlainCustomer,
    PlainInvoice,
    PlainInvoiceLine,
    Side,
    StatementTimes,
    ablate,
    create_plain_tables,
    parse_args,
    run_cases,
    turns,
)
from billing import Actor, Billing, CustomerInput, InvoiceInput, InvoiceLineInput, InvoiceView
from billing._models import AuditEvent, Customer, Invoice, InvoiceLine

from ..conftest import PG_ADMIN_URL, require_or_skip, statements_of


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


@pytest.mark.parametrize("case", ["sqlite-invoice", "pg-invoice"])
def test_statements_are_timed_by_side_step_and_position(restore_logging: None, case: str) -> None:
    if case.startswith("pg-"):
        try:
            psycopg.connect(PG_ADMIN_URL, connect_timeout=5).close()
        except psycopg.OperationalError:
            require_or_skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    short = ["--rounds", "2", "--ops", "2", "--warmup", "1", "--clients", "2", "--only", case]
    (result,) = run_cases(parse_args([*short, "--statements"]))
    statements = result["statements"]
    assert set(statements) == {"veilbill", "baseline"}
    for side in statements.values():
        assert set(side) == {"create_invoice", "read_invoice"}
        for timed in side.values():
            assert [s["position"] for s in timed] == list(range(len(timed)))
            assert all(s["count"] == 4 and s["us_median"] > 0 for s in timed)  # 2 rounds of 2
            assert timed[-1]["sql"] == "COMMIT"

    def writes(side: str, step: str) -> list[str]:
        return [s["sql"] for s in statements[side][step] if s["sql"].startswith(("INSERT", "UPDATE", "WITH"))]

    # Only Veilbill's read writes: its audit link (one statement on PostgreSQL, two on SQLite).
    assert writes("baseline", "read_invoice") == []
    assert writes("veilbill", "read_invoice")
    assert len(writes("veilbill", "create_invoice")) > len(writes("baseline", "create_invoice"))
    assert "statements" not in run_cases(parse_args(short))[0]


def test_statement_timing_leaves_the_dialect_as_it_was(billing: Billing) -> None:
    engine = billing.db.engine
    with StatementTimes(engine) as recorder:
        recorder.start("veilbill", "step")
        with billing.db.transaction() as session:
            session.exec(select(Customer)).all()
    assert "do_commit" not in vars(engine.dialect)
    assert not event.contains(engine, "before_cursor_execute", recorder._before)
    labels = [label for _, _, _, label in recorder.times if label != "BEGIN IMMEDIATE"]  # SQLite's
    assert len(labels) == 2 and labels[0].startswith("SELECT customers.id") and labels[1] == "COMMIT"


def test_statements_cannot_be_timed_with_unflushed_reads() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "pg-invoice", "--statements", "--ablate", "unflushed-reads"])


@pytest.mark.parametrize("ablation", ["unflushed-reads", "no-audit", "unaudited-reads"])
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


def _drafted_and_read(billing: Billing, fake: Faker) -> InvoiceView:
    issued = billing.tenants.create_tenant(fake.company())
    actor = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
    customer = billing.customers.create(actor, CustomerInput(name=fake.name()))
    line = InvoiceLineInput(description=fake.sentence(), unit_amount=1200)
    draft = billing.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line])
    )
    read = billing.invoices.read(actor, draft.id)
    assert [ln.description for ln in read.lines] == [line.description]
    return read


def _audited_actions(billing: Billing) -> list[str]:
    with billing.db.read() as session:
        return list(session.exec(select(AuditEvent.action)).all())


def test_without_the_audit_chain_a_draft_and_its_read_leave_no_link(billing: Billing, fake: Faker) -> None:
    ablate(billing, "no-audit")
    _drafted_and_read(billing, fake)
    assert not {"invoice.created", "invoice.read"} & set(_audited_actions(billing))


def test_with_unaudited_reads_the_draft_keeps_its_link_and_the_read_leaves_none(
    billing: Billing, fake: Faker
) -> None:
    ablate(billing, "unaudited-reads")
    _drafted_and_read(billing, fake)
    actions = _audited_actions(billing)
    assert "invoice.created" in actions and "invoice.read" not in actions
    with billing.db.read() as session:  # the links it did append still form a valid chain
        assert billing.audit.verify(session).ok


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # synchronous_commit is PostgreSQL's
def test_unflushed_reads_commit_the_invoices_read_without_waiting_for_the_log(
    billing: Billing, fake: Faker
) -> None:
    release = ablate(billing, "unflushed-reads")
    settings: list[str] = []

    def seen_at_commit(connection: Connection) -> None:
        settings.append(connection.exec_driver_sql("SHOW synchronous_commit").scalar_one())

    event.listen(Engine, "commit", seen_at_commit)
    try:
        _drafted_and_read(billing, fake)
    finally:
        event.remove(Engine, "commit", seen_at_commit)
        release()
    # the tenant, the client and the draft commit as usual; the read, with its link, does not wait
    assert settings[-1] == "off" and set(settings[:-1]) == {"on"}
    assert _audited_actions(billing)[-1] == "invoice.read"


def test_unflushed_reads_only_apply_to_postgresql_cases() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "sqlite-invoice", "--ablate", "unflushed-reads"])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_baseline_sends_the_products_statements(billing: Billing, fake: Faker) -> None:
    """The two sides differ by the privacy machinery, not by their statements (decisions 70, 71):
    a create is three statements on both, a read two."""
    create_plain_tables(billing.db)
    plain = PlainBilling(billing.db)
    issued = billing.tenants.create_tenant(fake.company())
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    customers = [
        side(actor, CustomerInput(name=fake.name())).id
        for side in (billing.customers.create, plain.create_customer)
    ]
    sides = [
        (billing.invoices.create_draft, billing.invoices.read),
        (plain.create_invoice, plain.read_invoice),
    ]
    sent: list[list[str]] = []
    for (create, read), customer_id in zip(sides, customers, strict=True):
        draft = InvoiceInput(
            customer_id=customer_id,
            currency="EUR",
            lines=[InvoiceLineInput(description="Cut", unit_amount=100)],
        )
        read(actor, create(actor, draft).id)  # the tenant's chain has its head
        with statements_of(billing.db.engine) as statements:
            assert read(actor, create(actor, draft).id).lines[0].description == "Cut"
        sent.append([s.split()[0] for s in statements if not s.startswith("BEGIN")])
    veilbill, baseline = sent
    assert veilbill == ["WITH", "INSERT", "INSERT", "SELECT", "WITH"]
    assert baseline == ["SELECT", "INSERT", "INSERT", "SELECT", "SELECT"]


def test_the_sides_take_turns_operation_by_operation_the_first_alternating() -> None:
    veilbill, baseline = Side("veilbill", "/c", "/i"), Side("baseline", "/pc", "/pi")
    order = [(index, side.name) for index, side in turns([veilbill, baseline], 4, 1)]
    assert order == [
        (0, "baseline"), (0, "veilbill"),
        (1, "veilbill"), (1, "baseline"),
        (2, "baseline"), (2, "veilbill"),
        (3, "veilbill"), (3, "baseline"),
    ]  # fmt: skip
    assert [side.name for _, side in turns([veilbill, baseline], 1, 0)] == ["veilbill", "baseline"]
