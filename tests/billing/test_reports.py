"""Anonymized reports from the billing services, on both databases, checked by plain-Python checkers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from faker import Faker
from sqlmodel import select

from anonymize import (
    AnonymizationConfig,
    Hierarchy,
    age_bands,
    anonymize,
    date_levels,
    flat_hierarchy,
    postcode_prefix,
)
from billing import (
    Actor,
    Address,
    Billing,
    CustomerInput,
    Database,
    InvoiceInput,
    InvoiceLineInput,
    Keyring,
)
from billing._models import Invoice, Payment, PaymentMethod, new_id
from billing._reports import _CodeColumn, _Compact, _EngineRelease, _pid_namespace, _RowCodes
from billing.errors import ValidationFailed

CATEGORIES = ("hair", "nails", "skin", "massage")
QIS = ("region", "age_band", "gender", "period")
START = date(2026, 1, 5)


@dataclass
class Clock:
    now: datetime = datetime(2026, 1, 5, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Seeded:
    tenant_id: str
    booking: Actor
    customers: dict[str, CustomerInput] = field(default_factory=dict)
    invoices: list[str] = field(default_factory=list)


def seed(billing: Billing, clock: Clock, fake: Faker, *, clients: int = 20, per_client: int = 3) -> Seeded:
    """``clients`` clients with ``per_client`` finalized invoices each, spread over 2026 H1, plus a draft."""
    issued = billing.tenants.create_tenant("Salon Reports")
    booking = Actor(tenant_id=issued.tenant_id, role="booking", key_id="key_booking")
    seeded = Seeded(issued.tenant_id, booking)
    postcodes = {"03612"}  # a restricted ZIP3 (036)
    while len(postcodes) < clients:
        postcodes.add(fake.numerify("%####"))
    for index, postcode in enumerate(sorted(postcodes)):
        birth = date(1931, 3, 1) if index == 1 else fake.date_of_birth(minimum_age=20, maximum_age=80)
        data = CustomerInput(
            name=fake.name(),
            email=fake.unique.email(),
            phone=fake.numerify("+33 6 ## ## ## ##"),
            address=Address(line1="1 rue Test", city=fake.city(), postcode=postcode, country="FR"),
            birth_date=birth,
            gender=fake.random_element(["female", "male", "non_binary"]),
        )  # fmt: skip
        customer = billing.customers.create(booking, data)
        seeded.customers[customer.id] = data
        for _ in range(per_client):
            clock.now = datetime.combine(START, datetime.min.time(), UTC) + timedelta(
                days=fake.random_int(0, 170), hours=10
            )
            lines = [
                InvoiceLineInput(
                    description="treatment",
                    quantity=fake.random_int(1, 3),
                    unit_amount=fake.random_int(10, 90) * 100,
                    tax_rate_bps=fake.random_element([550, 2000]),
                    category=fake.random_element(CATEGORIES),
                )
                for _ in range(2)
            ]
            draft = billing.invoices.create_draft(
                booking, InvoiceInput(customer_id=customer.id, currency="EUR", lines=lines)
            )
            billing.invoices.finalize(booking, draft.id)
            seeded.invoices.append(draft.id)
    line = InvoiceLineInput(description="draft", unit_amount=999, category="hair")
    billing.invoices.create_draft(
        booking, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line])
    )
    return seeded


def check_k_l(rows: list[dict[str, object]], *, k: int, l: int) -> int:  # noqa: E741
    """Independent check of k-anonymity in distinct customers and distinct l-diversity; returns the
    fully suppressed rows."""
    classes: dict[tuple[object, ...], list[object]] = defaultdict(list)
    customers: dict[tuple[object, ...], set[object]] = defaultdict(set)
    suppressed = 0
    for row in rows:
        key = tuple(row[q] for q in QIS)
        if all(value == "*" for value in key):
            suppressed += 1
            continue
        classes[key].append(row["category"])
        customers[key].add(row["customer"])
    for key, sensitive in classes.items():
        assert len(sensitive) >= k, key
        assert len(customers[key]) >= k, key
        assert len(set(sensitive)) >= l, key
    return suppressed


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked(database: Database, keyring: Keyring, clock: Clock) -> Billing:
    return Billing(db=database, keyring=keyring, clock=clock)


def accountant(seeded: Seeded, key_id: str = "key_accountant") -> Actor:
    return Actor(tenant_id=seeded.tenant_id, role="accountant", key_id=key_id)


def test_invoice_dataset_and_revenue_on_sixty_invoices(clocked: Billing, clock: Clock, fake: Faker) -> None:
    seeded = seed(clocked, clock, fake)
    dataset = clocked.reports.invoice_dataset(accountant(seeded), date(2026, 1, 1), date(2026, 12, 31))
    rows = dataset.frame.to_dicts()
    assert len(rows) == 60  # the draft is left out
    suppressed = check_k_l(rows, k=5, l=2)
    guarantee = dataset.guarantee
    assert guarantee["k"] == 5
    assert guarantee["l"] == 2
    assert guarantee["k_counts"] == "customers"
    assert isinstance(guarantee["min_customers"], int) and guarantee["min_customers"] >= 1
    assert guarantee["max_risk"] == pytest.approx(1 / guarantee["min_customers"])
    assert guarantee["rows"] == 60
    assert isinstance(guarantee["suppressed"], int)
    assert guarantee["suppressed"] <= 3  # ⌊0.05 · 60⌋
    assert suppressed >= guarantee["suppressed"]
    assert set(guarantee["levels"]) == set(QIS)  # type: ignore[arg-type]
    assert dataset.frame.columns[0] == "customer"
    assert {row["customer"] for row in rows}.isdisjoint(seeded.customers)  # pseudonyms, not ids
    events = [
        e for e in clocked.audit_events(accountant(seeded), limit=1000) if e.action == "report.exported"
    ]
    assert len(events) == 1
    assert json.loads(events[0].detail or "{}") == {
        "report": "invoices", "profile": None, "rows": 60, "k": 5, "l": 2
    }  # fmt: skip

    # revenue, on the same invoices: small cells fold into ``other`` and the sums still reconcile
    with clocked.db.read() as session:
        invoices = session.exec(select(Invoice).where(Invoice.status != "draft")).all()
    for group_by in ("month", "category", "month,category"):
        revenue = clocked.reports.revenue(
            accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), group_by=group_by
        )
        released = revenue.frame.to_dicts()
        for column, attribute in (("net", "subtotal"), ("tax", "tax"), ("total", "total")):
            assert sum(int(r[column]) for r in released) == sum(getattr(v, attribute) for v in invoices)
        assert sum(int(r["invoices"]) for r in released) == 60
        assert all(int(r["customers"]) >= 5 for r in released)
    assert any(r["category"] == "other" for r in released)  # month and category has small cells
    assert revenue.guarantee["suppressed"]


def test_pseudonyms_are_scoped_per_api_key(clocked: Billing, clock: Clock, fake: Faker) -> None:
    seeded = seed(clocked, clock, fake, clients=5, per_client=2)
    period = (date(2026, 1, 1), date(2026, 12, 31))
    first = clocked.reports.invoice_dataset(accountant(seeded), *period, k=2, l=1)
    again = clocked.reports.invoice_dataset(accountant(seeded), *period, k=2, l=1)
    other = clocked.reports.invoice_dataset(accountant(seeded, "key_other"), *period, k=2, l=1)
    mine = set(first.frame.get_column("customer"))
    assert len(mine) == 5
    assert mine == set(again.frame.get_column("customer"))
    assert mine.isdisjoint(set(other.frame.get_column("customer")))


def test_main_category_card_brand_and_erased_clients(clocked: Billing, clock: Clock, fake: Faker) -> None:
    seeded = seed(clocked, clock, fake, clients=6, per_client=1)
    booking = seeded.booking
    customer_id = next(iter(seeded.customers))
    clock.now = datetime(2026, 8, 3, 9, tzinfo=UTC)
    lines = [
        InvoiceLineInput(description="a", unit_amount=1000, category="nails"),
        InvoiceLineInput(description="b", unit_amount=3000, category="skin"),
        InvoiceLineInput(description="c", unit_amount=3000, category="hair"),
    ]
    draft = clocked.invoices.create_draft(
        booking, InvoiceInput(customer_id=customer_id, currency="EUR", lines=lines)
    )
    clocked.invoices.finalize(booking, draft.id)
    with clocked.db.transaction() as session:
        method = PaymentMethod(
            id=new_id("pm"),
            tenant_id=seeded.tenant_id,
            customer_id=customer_id,
            gateway_payment_method_id="pm_gateway",
            brand="visa",
            last4="4242",
            exp_month=12,
            exp_year=2030,
            created_at=clock.now,
        )
        session.add(method)
        session.flush()
        for status in ("failed", "succeeded"):
            session.add(
                Payment(
                    id=new_id("pay"),
                    tenant_id=seeded.tenant_id,
                    invoice_id=draft.id,
                    customer_id=customer_id,
                    payment_method_id=method.id,
                    amount=6000,
                    currency="EUR",
                    status=status,
                    gateway_idempotency_key=new_id("idem"),
                    created_at=clock.now,
                    updated_at=clock.now,
                )
            )
        invoice = session.exec(select(Invoice).where(Invoice.id == draft.id)).one()
        invoice.amount_refunded = 500
        session.add(invoice)
    erased = list(seeded.customers)[1]
    clocked.privacy.erase_customer(Actor(seeded.tenant_id, "admin", key_id="key_admin"), erased)

    dataset = clocked.reports.invoice_dataset(
        accountant(seeded), date(2026, 8, 1), date(2026, 8, 31), k=2, l=1, suppression=1.0
    )
    (row,) = dataset.frame.to_dicts()
    assert row["category"] == "skin"  # largest net, tie broken by position
    assert row["card_brand"] == "visa"
    assert row["refunded"] == 500
    assert row["total"] == 7000

    everything = clocked.reports.invoice_dataset(
        accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), k=2, l=1, suppression=1.0
    )
    assert everything.frame.height == 7
    assert isinstance(everything.guarantee["suppressed"], int)
    assert everything.guarantee["suppressed"] >= 1  # the erased client's invoice
    check_k_l(everything.frame.to_dicts(), k=2, l=1)


def test_hipaa_profile_keeps_years_zip3_and_top_codes_ages(
    clocked: Billing, clock: Clock, fake: Faker
) -> None:
    seeded = seed(clocked, clock, fake, clients=6, per_client=1)
    dataset = clocked.reports.invoice_dataset(
        accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), profile="hipaa-safe-harbor"
    )
    rows = dataset.frame.to_dicts()
    assert "customer" not in dataset.frame.columns
    assert {row["period"] for row in rows} == {"2026"}
    assert "000**" in {row["region"] for row in rows}
    assert all(str(row["region"]).endswith("**") and len(str(row["region"])) == 5 for row in rows)
    assert "90+" in {row["age_band"] for row in rows}
    assert all(row["age_band"] == "90+" or int(str(row["age_band"])) <= 89 for row in rows)
    assert dataset.guarantee["profile"] == "hipaa-safe-harbor"


def test_revenue_withholds_a_population_smaller_than_k(clocked: Billing, clock: Clock, fake: Faker) -> None:
    seeded = seed(clocked, clock, fake, clients=3, per_client=1)
    dataset = clocked.reports.revenue(accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), k=5)
    assert dataset.frame.is_empty()
    assert dataset.guarantee["withheld_currencies"] == ["EUR"]


def test_tax_summary_sums_lines_per_rate_and_month(clocked: Billing, clock: Clock, fake: Faker) -> None:
    seeded = seed(clocked, clock, fake, clients=4, per_client=2)
    dataset = clocked.reports.tax_summary(accountant(seeded), date(2026, 1, 1), date(2026, 12, 31))
    expected: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for invoice_id in seeded.invoices:
        view = clocked.invoices.read(seeded.booking, invoice_id)
        assert view.issue_date is not None
        for line in view.lines:
            entry = expected[(view.issue_date.strftime("%Y-%m"), line.tax_rate_bps)]
            entry[0] += line.net
            entry[1] += line.tax
    got = {(r["month"], r["tax_rate_bps"]): [r["net"], r["tax"]] for r in dataset.frame.to_dicts()}
    assert got == dict(expected)
    assert "customer" not in dataset.frame.columns


def test_reports_refuse_bad_parameters(billing: Billing) -> None:
    actor = Actor(tenant_id="ten_x", role="accountant", key_id="key_x")
    period = (date(2026, 1, 1), date(2026, 2, 1))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"k": 1}, "k"),
        ({"l": 0}, "l"),
        ({"suppression": 1.5}, "suppression"),
        ({"profile": "gdpr"}, "profile"),
    ]
    for kwargs, field_name in bad:
        with pytest.raises(ValidationFailed) as raised:
            billing.reports.invoice_dataset(actor, *period, **kwargs)
        assert raised.value.ids["field"] == field_name
    with pytest.raises(ValidationFailed):
        billing.reports.invoice_dataset(actor, date(2026, 2, 1), date(2026, 1, 1))
    with pytest.raises(ValidationFailed):
        billing.reports.tax_summary(actor, date(2026, 2, 1), date(2026, 1, 1))
    with pytest.raises(ValidationFailed) as raised:
        billing.reports.revenue(actor, *period, group_by="year")
    assert raised.value.ids["field"] == "group_by"
    with pytest.raises(ValidationFailed) as raised:
        billing.reports.revenue(actor, *period, k=1)
    assert raised.value.ids["field"] == "k"


def test_a_client_with_many_alike_invoices_is_never_a_class_of_their_own(
    clocked: Billing, clock: Clock, fake: Faker
) -> None:
    """Twelve invoices of one client on one day in one category would be a class of 12 ≥ k invoices;
    k counts customers, so that client's invoices are generalized or suppressed with others'."""
    seeded = seed(clocked, clock, fake, clients=10, per_client=1)
    regular = next(iter(seeded.customers))
    clock.now = datetime(2026, 7, 14, 9, tzinfo=UTC)
    for _ in range(12):
        line = InvoiceLineInput(description="weekly", unit_amount=4000, category="massage")
        draft = clocked.invoices.create_draft(
            seeded.booking, InvoiceInput(customer_id=regular, currency="EUR", lines=[line])
        )
        clocked.invoices.finalize(seeded.booking, draft.id)
    dataset = clocked.reports.invoice_dataset(
        accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), k=3, l=1, suppression=0.5
    )
    rows = dataset.frame.to_dicts()
    assert len(rows) == 22
    check_k_l(rows, k=3, l=1)
    released = [r for r in rows if r["period"] != "*"]
    assert released, "something is released"
    assert dataset.guarantee["k_counts"] == "customers"
    assert int(dataset.guarantee["min_customers"]) >= 1  # type: ignore[call-overload]


def test_export_streams_in_chunks_from_one_snapshot(clocked: Billing, clock: Clock, fake: Faker) -> None:
    """Chunks of 7 rows give the same release as one chunk; invoices finalized while an export is
    open neither block nor leak into it (the second pass reads the first pass's snapshot)."""
    seeded = seed(clocked, clock, fake, clients=20, per_client=3)
    period = (date(2026, 1, 1), date(2026, 12, 31))
    whole = clocked.reports.invoice_dataset(accountant(seeded), *period)

    export = clocked.reports.export_invoices(accountant(seeded), *period, chunk_rows=7)
    assert export.guarantee == whole.guarantee
    # A writer finalizes an invoice while the export is open: it is not blocked…
    clock.now = datetime(2026, 3, 2, 9, tzinfo=UTC)
    line = InvoiceLineInput(description="late", unit_amount=2500, category="hair")
    late = clocked.invoices.create_draft(
        seeded.booking, InvoiceInput(customer_id=next(iter(seeded.customers)), currency="EUR", lines=[line])
    )
    clocked.invoices.finalize(seeded.booking, late.id)
    # …and the export still releases exactly the 60 rows its guarantee was computed on.
    chunks = list(export.chunks())
    assert [chunk.height for chunk in chunks] == [7] * 8 + [4]
    streamed = pl.concat(chunks)
    assert streamed.equals(whole.frame)
    check_k_l(streamed.to_dicts(), k=5, l=2)
    with pytest.raises(RuntimeError):
        list(export.chunks())

    after = clocked.reports.invoice_dataset(accountant(seeded), *period)
    assert after.frame.height == 61


def test_an_export_closed_unread_releases_its_snapshot(clocked: Billing, clock: Clock, fake: Faker) -> None:
    seeded = seed(clocked, clock, fake, clients=6, per_client=1)
    period = (date(2026, 1, 1), date(2026, 12, 31))
    with clocked.reports.export_invoices(accountant(seeded), *period, k=2, l=1) as export:
        assert export.guarantee["rows"] == 6
    # the snapshot is gone: a write and a fresh export see the new state
    clock.now = datetime(2026, 4, 1, 9, tzinfo=UTC)
    line = InvoiceLineInput(description="x", unit_amount=1000, category="hair")
    draft = clocked.invoices.create_draft(
        seeded.booking, InvoiceInput(customer_id=next(iter(seeded.customers)), currency="EUR", lines=[line])
    )
    clocked.invoices.finalize(seeded.booking, draft.id)
    again = clocked.reports.invoice_dataset(accountant(seeded), *period, k=2, l=1, suppression=1.0)
    assert again.frame.height == 7


def test_pass_one_codes_are_private_files_deleted_with_the_export(
    clocked: Billing, clock: Clock, fake: Faker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pass 1 writes three int32 codes per invoice to a folder only this user can open, and the
    folder goes when the export is closed, read or not, and when it fails."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    seeded = seed(clocked, clock, fake, clients=6, per_client=2)
    period = (date(2026, 1, 1), date(2026, 12, 31))
    with clocked.reports.export_invoices(accountant(seeded), *period, k=2, l=1) as export:
        (folder,) = spill.iterdir()
        assert folder.name.startswith("veilbill-export-") and folder.stat().st_mode & 0o777 == 0o700
        sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
        assert sizes == dict.fromkeys(("customer", "day", "category"), 4 * 12)
        assert export.to_dataset().frame.height == 12
    assert not list(spill.iterdir())
    with clocked.reports.export_invoices(accountant(seeded), *period, k=2, l=1):
        assert len(list(spill.iterdir())) == 1
    assert not list(spill.iterdir())
    with pytest.raises(ValidationFailed):  # 12 invoices of 6 clients: no class of 7 clients
        clocked.reports.export_invoices(accountant(seeded), *period, k=7, l=1, suppression=0.0)
    assert not list(spill.iterdir())


def test_an_export_removes_the_folders_that_killed_exports_left(
    clocked: Billing, clock: Clock, fake: Faker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed during an export leaves its folder; the next export deletes it — only
    folders of this PID namespace whose process is gone, never a running export's or one of
    another namespace (a container sharing the directory)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    namespace = _pid_namespace()
    assert namespace is not None, "Linux: /proc/self/ns/pid names the PID namespace"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    dead_pid = int(gone.stdout)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        left = spill / f"veilbill-export-{namespace}.{dead_pid}-a1b2"
        live = spill / f"veilbill-export-{namespace}.{running.pid}-c3d4"
        foreign = spill / f"veilbill-export-{namespace + 1}.{dead_pid}-e5f6"
        for folder in (left, live, foreign):
            folder.mkdir(mode=0o700)
            (folder / "customer").write_bytes(bytes(8))
        seeded = seed(clocked, clock, fake, clients=6, per_client=2)
        with clocked.reports.export_invoices(
            accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), k=2, l=1
        ) as export:
            assert export.to_dataset().frame.height == 12
        assert sorted(path.name for path in spill.iterdir()) == sorted([live.name, foreign.name])
    finally:
        running.kill()
        running.wait()


# --- pass 1 and the search against a release of the plain rows --------------------------------


def plain_hierarchies(frame: pl.DataFrame) -> dict[str, Hierarchy]:
    """The export's generalizations (module docstring of ``billing._reports``), built from the
    values a plain table holds."""
    postcodes = frame.get_column("region").unique().to_list()
    return {
        "region": postcode_prefix(postcodes, keep=(max(4, *(len(p) for p in postcodes)), 3, 2, 0)),
        "age_band": age_bands(sorted(int(a) for a in frame.get_column("age_band").unique()), (5, 10, 20), 90),
        "gender": flat_hierarchy(frame.get_column("gender").unique().to_list()),
        "period": date_levels(date.fromisoformat(d) for d in frame.get_column("period").unique()),
    }


def age_at(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def released_tuples(frame: pl.DataFrame, columns: tuple[str, ...]) -> list[tuple[object, ...]]:
    return sorted(frame.select(columns).iter_rows())


def test_export_equals_the_engine_run_on_the_decrypted_rows(
    clocked: Billing, clock: Clock, fake: Faker
) -> None:
    """Pass 1 keeps only integer codes and derives each invoice's leaves from per-client and
    per-day tables; the release must be the one the engine gives for the plain, decrypted rows
    (one per invoice: postcode, age at issue, gender, issue day, main category, client)."""
    seeded = seed(clocked, clock, fake, clients=20, per_client=3)
    rows = []
    for invoice_id in seeded.invoices:
        view = clocked.invoices.read(seeded.booking, invoice_id)
        client = seeded.customers[view.customer_id]
        assert view.issue_date is not None and client.birth_date is not None
        assert client.address is not None and client.gender is not None
        main = max(view.lines, key=lambda line: (line.net, -line.position))
        rows.append(
            {
                "region": client.address.postcode,
                "age_band": str(age_at(client.birth_date, view.issue_date)),
                "gender": client.gender,
                "period": view.issue_date.isoformat(),
                "category": main.category,
                "customer": view.customer_id,
                "net": view.subtotal,
            }
        )
    frame = pl.DataFrame(rows)
    config = AnonymizationConfig(
        plain_hierarchies(frame),
        sensitive="category",
        k=5,
        l=2,
        suppression_limit=0.05,
        entity="customer",
    )
    expected = anonymize(frame, config)

    dataset = clocked.reports.export_invoices(
        accountant(seeded), date(2026, 1, 1), date(2026, 12, 31), chunk_rows=7
    ).to_dataset()
    guarantee = dataset.guarantee
    assert guarantee["levels"] == expected.guarantee.levels
    assert guarantee["suppressed"] == expected.guarantee.suppressed
    assert guarantee["loss"] == pytest.approx(expected.guarantee.loss, abs=1e-12)
    assert guarantee["min_customers"] == expected.guarantee.min_entities
    assert guarantee["max_risk"] == pytest.approx(expected.guarantee.max_risk)
    columns = (*QIS, "category", "net")
    assert released_tuples(dataset.frame, columns) == released_tuples(expected.table, columns)


def code_column(folder: Path, name: str, values: np.ndarray) -> _CodeColumn:
    """A pass-1 code column holding ``values``, appended in uneven pieces."""
    column = _CodeColumn(folder / name)
    for piece in np.array_split(values.astype(np.int32), 3):
        column.append(piece)
    column.finish()
    return column


def random_compact(rng: np.random.Generator, *, rows: int, clients: int, folder: Path) -> _Compact:
    """Pass-1 codes as ``_read_compact`` builds them, with clients missing a postcode, a birth date
    or a gender, and a few born after some of their invoices. Among the first 40 invoices, those
    whose client has a birth date are issued on the client's birthday in 2025 (the age changes
    that day)."""
    first = date(2024, 1, 1).toordinal()
    postcodes = [f"{code:05d}" for code in rng.choice(np.arange(1000, 96000), size=40, replace=False)]
    postcode = rng.integers(0, len(postcodes), size=clients).astype(np.int32)
    birth = (date(1930, 1, 1).toordinal() + rng.integers(0, 365 * 75, size=clients)).astype(np.int32)
    gender = rng.integers(0, 3, size=clients).astype(np.int32)
    postcode[0:3] = -1
    birth[3:6] = -1
    gender[6:9] = -1
    birth[9:12] = first + 200  # born in mid-2024: their invoices before that have no age
    customer = rng.integers(0, clients, size=rows).astype(np.int32)
    day = (first + rng.integers(0, 2 * 366, size=rows)).astype(np.int32)
    for row in range(40):
        born = int(birth[customer[row]])
        if born > 0 and date.fromordinal(born).timetuple()[1:3] != (2, 29):
            day[row] = date.fromordinal(born).replace(year=2025).toordinal()
    return _Compact(
        folder=folder,
        customer=code_column(folder, "customer", customer),
        day=code_column(folder, "day", day),
        category=code_column(folder, "category", rng.integers(0, 5, size=rows)),
        categories=[f"c{index}" for index in range(5)],
        customer_index={f"cus_{index}": index for index in range(clients)},
        postcode=postcode,
        postcodes=postcodes,
        birth=birth,
        gender=gender,
        genders=["female", "male", "non_binary"],
    )


def plain_rows(compact: _Compact) -> list[dict[str, str] | None]:
    """Each invoice of ``compact`` as plain values (None when a quasi-identifier is missing)."""
    rows: list[dict[str, str] | None] = []
    everything = slice(0, compact.rows)
    for client, ordinal, category in zip(
        compact.customer[everything].tolist(),
        compact.day[everything].tolist(),
        compact.category[everything].tolist(),
        strict=True,
    ):
        postcode, birth, gender = (
            int(compact.postcode[client]),
            int(compact.birth[client]),
            int(compact.gender[client]),
        )
        day = date.fromordinal(ordinal)
        age = age_at(date.fromordinal(birth), day) if birth >= 0 else -1
        if postcode < 0 or gender < 0 or age < 0:
            rows.append(None)
            continue
        rows.append(
            {
                "region": compact.postcodes[postcode],
                "age_band": str(age),
                "gender": compact.genders[gender],
                "period": day.isoformat(),
                "category": compact.categories[category],
                "customer": str(client),
            }
        )
    return rows


@pytest.mark.parametrize("seed_value", [3, 11])
def test_release_from_pass_one_codes_equals_the_release_of_the_plain_rows(
    seed_value: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No database: pass-1 codes against plain values. Rows missing a quasi-identifier are
    suppressed up front and count against the limit; the others are released as the engine
    releases the plain rows with what is left of the limit. Deriving leaves a chunk at a time
    (7 rows) or at once gives the same release."""
    rng = np.random.default_rng(seed_value)
    compact = random_compact(rng, rows=3000, clients=400, folder=tmp_path)
    for column in (compact.customer, compact.day, compact.category):
        request.addfinalizer(column.close)
    everything = slice(0, compact.rows)
    customers, days = compact.customer[everything], compact.day[everything]
    plain = plain_rows(compact)
    codes = _RowCodes(compact)
    ages = np.concatenate([codes.ages(slice(start, start + 7)) for start in range(0, compact.rows, 7)])
    expected_ages = [
        age_at(date.fromordinal(int(compact.birth[c])), date.fromordinal(d)) if compact.birth[c] >= 0 else -1
        for c, d in zip(customers.tolist(), days.tolist(), strict=True)
    ]
    assert ages.tolist() == [max(age, -1) for age in expected_ages]
    complete = [row for row in plain if row is not None]
    missing = len(plain) - len(complete)
    assert 0 < missing < len(plain) * 0.05
    left = int(0.05 * len(plain)) - missing
    frame = pl.DataFrame(complete)
    config = AnonymizationConfig(
        plain_hierarchies(frame),
        sensitive="category",
        k=4,
        l=2,
        suppression_limit=(left + 0.5) / len(complete),
        entity="customer",
    )
    expected = anonymize(frame, config)

    releases = [_EngineRelease(compact, k=4, l=2, suppression=0.05, chunk_rows=size) for size in (7, 1 << 20)]
    for release in releases:
        guarantee = release.guarantee
        assert guarantee["levels"] == expected.guarantee.levels
        assert guarantee["suppressed"] == expected.guarantee.suppressed + missing
        assert guarantee["loss"] == pytest.approx(expected.guarantee.loss, abs=1e-12)
        released = pl.DataFrame(
            release.quasi_identifiers(slice(0, compact.rows))
            | {"customer": customers, "category": compact.category[everything]}
        )
        assert released.filter(pl.Series([row is None for row in plain])).select(QIS).unique().rows() == [
            ("*",) * 4
        ]
        kept = released.filter(pl.Series([row is not None for row in plain])).select(QIS)
        assert kept.equals(expected.table.select(QIS))
        # Risks over the whole release (missing rows in the suppressed class), from the released rows.
        people: dict[tuple[object, ...], set[int]] = defaultdict(set)
        sizes: dict[tuple[object, ...], int] = defaultdict(int)
        for *labels, customer, _ in released.iter_rows():
            people[tuple(labels)].add(customer)
            sizes[tuple(labels)] += 1
        assert guarantee["classes"] == len(people)
        assert guarantee["min_customers"] == min(len(members) for members in people.values())
        assert guarantee["avg_risk"] == pytest.approx(
            sum(sizes[key] / len(people[key]) for key in people) / compact.rows
        )
    assert releases[0].suppressed.tolist() == releases[1].suppressed.tolist()
