"""``/v1/reports`` through the API: formats, guarantees checked independently, no PII, roles, audit."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from faker import Faker
from litestar.testing import TestClient

from api.settings import Settings
from billing import (
    Actor,
    Address,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    InvoiceInput,
    InvoiceLineInput,
    load_keyring,
)

from .conftest import TenantKeys

CATEGORIES = ("hair", "nails", "skin", "massage")
QIS = ("region", "age_band", "gender", "period")
AMOUNT_COLUMNS = ("net", "tax", "total", "refunded")
PERIOD = {"from": "2026-01-01", "to": "2026-12-31"}


@dataclass
class Clock:
    now: datetime = datetime(2026, 1, 5, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Seeded:
    pii: list[str]  # names, emails, phones, birth dates
    postcodes: list[str]
    totals: dict[str, int]


@pytest.fixture
def clocked_billing(settings: Settings) -> Iterator[tuple[Billing, Clock]]:
    """The app's database and keyring, with a clock the test moves (issue dates follow it)."""
    clock = Clock()
    billing = Billing(
        db=Database(DatabaseConfig(settings.database_url)),
        keyring=load_keyring(settings.keyring_path),
        clock=clock,
    )
    yield billing, clock
    billing.db.dispose()


def seed(billing: Billing, clock: Clock, tenant: TenantKeys, fake: Faker) -> Seeded:
    """20 clients with 3 finalized invoices each over 2026 H1 (and one draft, never reported)."""
    booking = Actor(tenant_id=tenant.tenant_id, role="booking", key_id="seed")
    pii: list[str] = []
    postcodes = {"03612"}  # ZIP3 036 is on the Safe Harbor restricted list
    while len(postcodes) < 20:
        postcodes.add(fake.numerify("%####"))
    totals = dict.fromkeys(("net", "tax", "total"), 0)
    for postcode in sorted(postcodes):
        data = CustomerInput(
            name=fake.name(),
            email=fake.unique.email(),
            phone=fake.numerify("+33 6 ## ## ## ##"),
            address=Address(line1="2 rue Test", city=fake.city(), postcode=postcode, country="FR"),
            birth_date=fake.date_of_birth(minimum_age=20, maximum_age=85),
            gender=fake.random_element(["female", "male", "non_binary"]),
        )
        assert data.phone is not None
        assert data.email is not None
        assert data.birth_date is not None
        pii += [data.name, data.email, data.phone, data.birth_date.isoformat()]
        customer = billing.customers.create(booking, data)
        for _ in range(3):
            clock.now = datetime(2026, 1, 5, 10, tzinfo=UTC) + timedelta(days=fake.random_int(0, 170))
            lines = [
                InvoiceLineInput(
                    description="treatment",
                    quantity=fake.random_int(1, 3),
                    unit_amount=fake.random_int(10, 90) * 100 + 7,
                    tax_rate_bps=fake.random_element([550, 2000]),
                    category=fake.random_element(CATEGORIES),
                )
                for _ in range(2)
            ]
            draft = billing.invoices.create_draft(
                booking, InvoiceInput(customer_id=customer.id, currency="EUR", lines=lines)
            )
            final = billing.invoices.finalize(booking, draft.id)
            totals["net"] += final.subtotal
            totals["tax"] += final.tax
            totals["total"] += final.total
    billing.invoices.create_draft(
        booking,
        InvoiceInput(
            customer_id=customer.id,
            currency="EUR",
            lines=[InvoiceLineInput(description="draft", unit_amount=1, category="hair")],
        ),
    )
    return Seeded(pii=pii, postcodes=sorted(postcodes), totals=totals)


def check_k_l(rows: list[dict[str, Any]], *, k: int, l: int) -> int:  # noqa: E741
    """Independent check: every released class has ≥ k rows of ≥ k distinct customers (when the
    pseudonym is released) and ≥ l distinct categories.

    Rows whose quasi-identifiers are all ``*`` (suppressed) are left out; returns how many there are.
    """
    classes: dict[tuple[str, ...], list[str]] = defaultdict(list)
    customers: dict[tuple[str, ...], set[str]] = defaultdict(set)
    suppressed = 0
    for row in rows:
        key = tuple(str(row[q]) for q in QIS)
        if all(value == "*" for value in key):
            suppressed += 1
            continue
        classes[key].append(str(row["category"]))
        customers[key].add(str(row.get("customer")))
    assert classes, "nothing released"
    for key, categories in classes.items():
        assert len(categories) >= k, key
        assert len(set(categories)) >= l, key
        assert "customer" not in rows[0] or len(customers[key]) >= k, key
    return suppressed


def assert_no_pii(seeded: Seeded, rows: list[dict[str, Any]], text: str, headers: dict[str, str]) -> None:
    blob = text + json.dumps(headers)
    for value in seeded.pii:
        assert value not in blob
    # A postcode counts where it stands as a number of its own: the loss in a header
    # (0.5935299087063741) or a hex pseudonym can hold its five digits inside a longer run.
    released = [re.compile(rf"(?<!\d){re.escape(postcode)}(?!\d)") for postcode in seeded.postcodes]
    for row in rows:
        for column, value in row.items():
            if column in AMOUNT_COLUMNS:
                continue
            for postcode in released:
                assert not postcode.search(str(value)), column
    for postcode in released:
        assert not postcode.search(json.dumps(headers))


def test_accountant_exports_anonymized_invoices_in_every_format(
    client: TestClient,  # type: ignore[type-arg]
    tenant: TenantKeys,
    clocked_billing: tuple[Billing, Clock],
    fake: Faker,
) -> None:
    billing, clock = clocked_billing
    seeded = seed(billing, clock, tenant, fake)
    query = {**PERIOD, "k": "5", "l": "2"}
    releases = {}
    for report_format in ("csv", "jsonl", "parquet"):
        response = client.get(
            "/v1/reports/invoices",
            params={**query, "format": report_format},
            headers=tenant.headers("accountant"),
        )
        assert response.status_code == 200, response.text
        headers = dict(response.headers)
        if report_format == "csv":
            assert response.headers["content-type"].startswith("text/csv")
            rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(response.text)))
            text = response.text
        elif report_format == "jsonl":
            rows = [json.loads(line) for line in response.text.splitlines()]
            text = response.text
        else:
            table = pq.read_table(io.BytesIO(response.content))
            metadata = json.loads(table.schema.metadata[b"veilbill.guarantee"])
            assert metadata["k"] == 5
            assert metadata["l"] == 2
            assert metadata["suppressed"] == int(response.headers["x-veilbill-suppressed"])
            assert metadata["levels"] == json.loads(response.headers["x-veilbill-levels"])
            rows = table.to_pylist()
            text = json.dumps(rows) + json.dumps(metadata)
        assert len(rows) == 60
        assert response.headers["x-veilbill-k"] == "5"
        assert response.headers["x-veilbill-l"] == "2"
        assert set(json.loads(response.headers["x-veilbill-levels"])) == set(QIS)
        assert 0.0 <= float(response.headers["x-veilbill-loss"]) <= 1.0
        assert 0.0 < float(response.headers["x-veilbill-max-risk"]) <= 1.0
        assert response.headers["x-veilbill-profile"] == ""
        suppressed = int(response.headers["x-veilbill-suppressed"])
        assert suppressed <= 3  # ⌊0.05 · 60⌋
        assert check_k_l(rows, k=5, l=2) >= suppressed
        assert_no_pii(seeded, rows, text, headers)
        releases[report_format] = [{c: str(r[c]) for c in (*QIS, "category", "customer")} for r in rows]
    assert releases["csv"] == releases["jsonl"] == releases["parquet"]

    sidecar = client.get(
        "/v1/reports/invoices", params={**query, "format": "guarantee"}, headers=tenant.headers("accountant")
    )
    assert sidecar.status_code == 200
    assert sidecar.json()["k"] == 5
    assert sidecar.json()["k_counts"] == "customers"
    assert sidecar.json()["rows"] == 60

    # revenue reconciles with the invoices, even with small cells folded into ``other``
    for group_by in ("month", "category", "month,category"):
        response = client.get(
            "/v1/reports/revenue",
            params={**PERIOD, "group_by": group_by, "format": "jsonl"},
            headers=tenant.headers("accountant"),
        )
        assert response.status_code == 200, response.text
        cells = [json.loads(line) for line in response.text.splitlines()]
        for column, expected in seeded.totals.items():
            assert sum(cell[column] for cell in cells) == expected
        assert sum(cell["invoices"] for cell in cells) == 60
        assert all(cell["customers"] >= 5 for cell in cells)
        assert_no_pii(seeded, cells, response.text, dict(response.headers))
    assert any(cell["category"] == "other" for cell in cells)
    assert int(response.headers["x-veilbill-suppressed"]) > 0

    tax = client.get(
        "/v1/reports/tax", params={**PERIOD, "format": "csv"}, headers=tenant.headers("accountant")
    )
    assert tax.status_code == 200
    tax_rows = list(csv.DictReader(io.StringIO(tax.text)))
    assert sum(int(r["net"]) for r in tax_rows) == seeded.totals["net"]
    assert sum(int(r["tax"]) for r in tax_rows) == seeded.totals["tax"]

    # every export is audited
    events = billing.audit_events(Actor(tenant_id=tenant.tenant_id, role="auditor"), limit=10_000)
    exported = [json.loads(e.detail or "{}") for e in events if e.action == "report.exported"]
    assert all(e.actor_role == "accountant" for e in events if e.action == "report.exported")
    assert [e["report"] for e in exported] == ["invoices"] * 4 + ["revenue"] * 3 + ["tax"]
    assert exported[0] == {"report": "invoices", "profile": None, "rows": 60, "k": 5, "l": 2}

    # the Safe Harbor profile: years only, ZIP3 with the restricted areas as 000, no pseudonym
    response = client.get(
        "/v1/reports/invoices",
        params={**PERIOD, "format": "csv", "profile": "hipaa-safe-harbor"},
        headers=tenant.headers("accountant"),
    )
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert "customer" not in rows[0]
    assert {r["period"] for r in rows} == {"2026"}
    assert "000**" in {r["region"] for r in rows}
    assert "036**" not in response.text
    assert response.headers["x-veilbill-profile"] == "hipaa-safe-harbor"
    assert_no_pii(seeded, rows, response.text, dict(response.headers))


BAD_PARAMETERS = [
    ("/v1/reports/invoices", {"from": "2026-13-01", "to": "2026-12-31"}, 400),
    ("/v1/reports/invoices", {"to": "2026-12-31"}, 400),
    ("/v1/reports/invoices", {**PERIOD, "k": "1"}, 400),
    ("/v1/reports/invoices", {**PERIOD, "l": "0"}, 400),
    ("/v1/reports/invoices", {**PERIOD, "format": "xlsx"}, 400),
    ("/v1/reports/invoices", {**PERIOD, "profile": "gdpr"}, 400),
    ("/v1/reports/invoices", {"from": "2026-12-31", "to": "2026-01-01"}, 422),
    ("/v1/reports/revenue", {**PERIOD, "group_by": "year"}, 400),
    ("/v1/reports/tax", {**PERIOD, "format": "xml"}, 400),
]


def test_roles_bad_parameters_and_an_empty_period(client: TestClient, tenant: TenantKeys) -> None:  # type: ignore[type-arg]
    for role in ("booking", "admin", "auditor"):
        for path in ("/v1/reports/invoices", "/v1/reports/revenue", "/v1/reports/tax"):
            response = client.get(path, params=PERIOD, headers=tenant.headers(role))
            assert response.status_code == 403, (role, path)
            assert response.headers["content-type"].startswith("application/problem+json")

    for path, params, status in BAD_PARAMETERS:
        response = client.get(path, params=params, headers=tenant.headers("accountant"))
        assert response.status_code == status, (path, params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "code" in response.json()

    response = client.get(
        "/v1/reports/invoices", params={**PERIOD, "format": "csv"}, headers=tenant.headers("accountant")
    )
    assert response.status_code == 200
    assert response.text.splitlines() == [
        "customer,region,age_band,gender,period,category,net,tax,total,refunded,currency,status,card_brand"
    ]
    assert response.headers["x-veilbill-suppressed"] == "0"
