"""The stored-data card scan: every table, encrypted values opened in memory, files; never the number.

Card numbers here are the gateway sandbox's public test numbers, planted on purpose to test the
defense that must find them.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faker import Faker
from sqlalchemy import Column, String, Table, text, update
from sqlmodel import SQLModel

from billing import (
    Actor,
    Billing,
    CustomerInput,
    DeploymentFacts,
    InvoiceInput,
    InvoiceLineInput,
    ScanResult,
)
from billing._models import Invoice
from billing._pci import CardDataScanner, _hits_in_text

VISA = "4242424242424242"
VISA_SPACED = "4242 4242 4242 4242"
MASTERCARD = "5555555555554444"
MASTERCARD_DASHED = "5555-5555-5555-4444"
AMEX = "378282246310005"


def _tenant(billing: Billing, fake: Faker, name: str = "Salon Test") -> tuple[Actor, str]:
    issued = billing.tenants.create_tenant(name)
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    customer = billing.customers.create(actor, CustomerInput(name=fake.name(), email=fake.email()))
    return actor, customer.id


def _invoice(billing: Billing, actor: Actor, customer_id: str, *, notes: str | None = None) -> str:
    line = InvoiceLineInput(description="Cut and colour", unit_amount=4500, tax_rate_bps=2000)
    return billing.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer_id, currency="EUR", lines=[line], notes=notes)
    ).id


def _dump(result: ScanResult) -> str:
    """Everything the result holds, as text (dataclass reprs show every field)."""
    return repr(result)


def _assert_no_digits(output: str, *numbers: str) -> None:
    for number in numbers:
        assert number not in output
        assert number.replace(" ", "").replace("-", "") not in output
        assert number[-4:] + '"' not in output


def test_a_clean_database_has_no_findings(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _tenant(billing, fake)
    _invoice(billing, actor, customer_id, notes="Paid at the desk")

    result = billing.pci.scan()

    assert result.clean, result.findings
    assert result.stats.tables == len(SQLModel.metadata.tables)  # every table, new ones included
    assert result.stats.values_decrypted >= 4  # profile fields, notes, snapshot, line description
    assert result.stats.unreadable == 0


def test_finds_a_number_in_an_encrypted_note_a_clear_column_and_a_line_description(
    billing: Billing, fake: Faker
) -> None:
    actor, customer_id = _tenant(billing, fake)
    sealed_invoice = _invoice(billing, actor, customer_id, notes=f"client said card {VISA_SPACED} ok")
    clear_invoice = _invoice(billing, actor, customer_id)
    with billing.db.transaction() as session:
        session.execute(update(Invoice).where(Invoice.id == clear_invoice).values(booking_ref=MASTERCARD))  # type: ignore[arg-type]
    line = InvoiceLineInput(description=f"deposit {AMEX}", unit_amount=100)
    lined = billing.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer_id, currency="EUR", lines=[line])
    ).id

    result = billing.pci.scan()

    where = {
        (f.location.table, f.location.column, f.location.row_id): f
        for f in result.findings
        if f.kind == "pan"
    }
    note = where[("invoices", "notes_ct", sealed_invoice)]
    assert note.location.encrypted and note.separators and note.detector == "luhn+iin"
    assert note.location.tenant_id == actor.tenant_id
    ref = where[("invoices", "booking_ref", clear_invoice)]
    assert not ref.location.encrypted and not ref.separators
    assert [k for k in where if k[0] == "invoice_lines" and k[1] == "description_ct"]
    assert lined
    assert not result.clean
    _assert_no_digits(_dump(result), VISA_SPACED, MASTERCARD, AMEX)


def test_finds_card_field_names_in_a_stored_response(billing: Billing, fake: Faker) -> None:
    actor, _ = _tenant(billing, fake)
    store = billing.idempotency
    assert store.begin(actor.tenant_id, "retry-1", "f" * 64) is None
    store.complete(actor.tenant_id, "retry-1", 201, b'{"card_number": "[gone]", "cvc": null}')

    result = billing.pci.scan()

    names = {(f.location.table, f.field) for f in result.findings if f.kind == "card_field_name"}
    assert names == {("idempotency_records", "card_number"), ("idempotency_records", "cvc")}
    assert all(f.location.encrypted for f in result.findings)


def test_finds_a_card_field_name_in_a_stored_webhook_payload(billing: Billing) -> None:
    with billing.db.transaction() as session:
        session.execute(
            text(
                "INSERT INTO webhook_events (id, type, payload, received_at) "
                "VALUES ('evt_planted', 'payment_intent.succeeded', :payload, :now)"
            ),
            {"payload": '{"id": "pi_x", "card": {"cvc": "[gone]"}}', "now": datetime(2026, 11, 22, 9, 30)},
        )

    (finding,) = billing.pci.scan().findings

    assert (finding.location.table, finding.location.column, finding.location.row_id) == (
        "webhook_events",
        "payload",
        "evt_planted",
    )
    assert (finding.kind, finding.field, finding.location.tenant_id) == ("card_field_name", "cvc", None)
    assert billing.pci.scan(tenant_id="ten_anyone").clean  # tenantless: the operator's scan only


def test_shredded_values_are_counted_unreadable_not_errors(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _tenant(billing, fake)
    _invoice(billing, actor, customer_id, notes="fine")
    billing.privacy.erase_customer(Actor(tenant_id=actor.tenant_id, role="admin"), customer_id)
    with billing.db.transaction() as session:  # a leftover sealed value under the shredded key
        session.execute(
            text("UPDATE customers SET notes_ct = :blob WHERE id = :id"),
            {"blob": b"\x01\x04dek_" + bytes(40), "id": customer_id},
        )

    result = billing.pci.scan()

    assert result.clean
    assert result.stats.unreadable >= 1


def test_a_tenant_scan_sees_only_that_tenant(billing: Billing, fake: Faker) -> None:
    mine, my_customer = _tenant(billing, fake, "Mine")
    theirs, their_customer = _tenant(billing, fake, "Theirs")
    _invoice(billing, theirs, their_customer, notes=f"card {VISA}")
    _invoice(billing, mine, my_customer, notes="nothing")

    assert billing.pci.scan(tenant_id=mine.tenant_id).clean
    found = billing.pci.scan(tenant_id=theirs.tenant_id).findings
    assert [f.location.tenant_id for f in found] == [theirs.tenant_id]
    assert len(billing.pci.scan().findings) == 1


def test_row_ids_that_hold_a_number_are_redacted(billing: Billing, fake: Faker) -> None:
    actor, _ = _tenant(billing, fake)
    billing.idempotency.begin(actor.tenant_id, f"key-{VISA}", "f" * 64)

    result = billing.pci.scan()

    (finding,) = result.findings
    assert finding.location.column == "key"
    assert finding.location.row_id is not None and "[REDACTED PAN]" in finding.location.row_id
    _assert_no_digits(_dump(result), VISA)


def test_scans_small_batches_across_pages(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _tenant(billing, fake)
    planted = [_invoice(billing, actor, customer_id, notes=f"n {VISA}") for _ in range(5)]
    scanner = CardDataScanner(billing.db, billing.keyring, clock=billing.clock, batch_size=2)

    result = scanner.scan()

    rows = sorted(f.location.row_id or "" for f in result.findings if f.location.table == "invoices")
    assert rows == sorted(planted)


def test_files_and_folders_with_line_numbers_gzip_included(tmp_path: Path, billing: Billing) -> None:
    log = tmp_path / "veilbill.log"
    log.write_text('{"event": "request"}\n{"event": "x", "note": "' + MASTERCARD_DASHED + '"}\n')
    backups = tmp_path / "backups"
    backups.mkdir()
    with gzip.open(backups / "old.log.gz", "wt") as handle:
        handle.write("a\nb\ncvv=123\n")
    (backups / "export.csv").write_text("id;amount\n1;4500\n")

    result = billing.pci.scan(paths=[log, backups, tmp_path / "absent"])

    where = sorted((Path(f.location.path or "").name, f.location.line, f.kind) for f in result.findings)
    assert where == [("old.log.gz", 3, "card_field_name"), ("veilbill.log", 2, "pan")]
    assert result.stats.files == 3
    assert result.stats.files_missing == (str(tmp_path / "absent"),)
    _assert_no_digits(_dump(result), MASTERCARD_DASHED)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        (VISA, ["pan"]),
        (f"x{VISA_SPACED}y", ["pan"]),
        ("4242424242424241", []),  # Luhn fails
        ("1234567890123452", []),  # Luhn passes, no IIN
        ('{"cardNumber": 1}', ["card_field_name"]),
        ("CVV = 1", ["card_field_name"]),
        ('{"fields": "$.card_number"}', []),  # an audit detail naming a refused path
        ("last4=4242 brand=visa exp_month=12", []),
        # Hex digests and ids: a digit run inside them is not a card number ...
        ("d0f1" + VISA + "ab39", []),
        (f"req_9a{VISA}", []),
        # ... but a number next to other letters, or alone in a hex-looking column, is.
        (f"x{VISA}y", ["pan"]),
        (f"abc {VISA}", ["pan"]),
    ],
)
def test_what_the_value_detector_reports(text: str, kinds: list[str]) -> None:
    assert [hit.kind for hit in _hits_in_text(text)] == kinds


def test_the_scan_is_audited_with_counts_only(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _tenant(billing, fake)
    _invoice(billing, actor, customer_id, notes=f"card {VISA}")

    billing.pci.scan(actor=Actor(tenant_id=actor.tenant_id, role="auditor"))

    events = billing.audit_events(actor, limit=500)
    scan = next(e for e in events if e.action == "pci.scan")
    assert scan.outcome == "alert"
    assert json.loads(scan.detail or "{}")["findings"] == 1
    assert VISA not in (scan.detail or "")


# --- deployment checks ---------------------------------------------------------------------------------

GOOD_CSP = (
    "default-src 'none'; script-src 'self' https://js.stripe.com; frame-src https://js.stripe.com; "
    "style-src 'self'; frame-ancestors 'none'"
)


def _facts(**changes: object) -> DeploymentFacts:
    base = DeploymentFacts(
        public_url="https://billing.example.org",
        hsts_header="max-age=31536000; includeSubDomains",
        payment_page_csp=GOOD_CSP,
        payment_page_scripts=(("https://js.stripe.com/v3/", "gateway"), ("/pay/assets/pay.js", "ours")),
        gateway_origins=("https://js.stripe.com",),
        gateway_configured=True,
        gateway_is_sandbox=False,
        webhook_secret_count=1,
        card_guard_exemptions=("/v1/webhooks/stripe",),
        allowed_exemptions=("/v1/webhooks/stripe",),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _statuses(billing: Billing, facts: DeploymentFacts) -> dict[str, str]:
    return {check.id: check.status for check in billing.pci.checks(facts)}


def test_a_well_configured_deployment_passes_every_check(billing: Billing) -> None:
    assert set(_statuses(billing, _facts()).values()) == {"pass"}


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        (
            {"payment_page_csp": GOOD_CSP.replace("'self' https", "'self' 'unsafe-inline' https")},
            "payment_page_csp",
        ),
        ({"payment_page_csp": GOOD_CSP + "; script-src https://cdn.example.net"}, "payment_page_csp"),
        ({"payment_page_csp": GOOD_CSP.replace("frame-ancestors 'none'", "")}, "payment_page_csp"),
        ({"payment_page_scripts": (("https://cdn.example.net/x.js", "?"),)}, "payment_page_scripts"),
        ({"card_guard_exemptions": ("/v1/webhooks/stripe", "/v1/customers")}, "gateway_tokens_only"),
        ({"webhook_secret_count": 0}, "webhook_secret"),
        ({"public_url": "http://billing.example.org", "hsts_header": None}, "tls"),
        ({"hsts_header": "max-age=300"}, "hsts"),
        ({"master_key_max_age_days": 1}, "master_key_age"),
    ],
)
def test_each_misconfiguration_fails_its_check(
    billing: Billing, changes: dict[str, object], check: str
) -> None:
    later = Billing(
        db=billing.db, keyring=billing.keyring, clock=lambda: datetime.now(UTC) + timedelta(days=30)
    )
    statuses = _statuses(later, _facts(**changes))
    assert statuses[check] == "fail"


def test_a_stored_payment_method_that_is_not_a_token_fails(billing: Billing, fake: Faker) -> None:
    actor, customer_id = _tenant(billing, fake)
    with billing.db.transaction() as session:
        session.execute(
            text(
                "INSERT INTO payment_methods (id, tenant_id, customer_id, gateway_payment_method_id, brand, "
                "last4, exp_month, exp_year, created_at) VALUES ('pm_row', :t, :c, 'card_raw', 'visa', "
                "'4242', 12, 2030, :now)"
            ),
            {"t": actor.tenant_id, "c": customer_id, "now": datetime(2026, 11, 22, 9, 30)},
        )
    assert _statuses(billing, _facts())["gateway_tokens_only"] == "fail"


def test_idle_and_old_api_keys_are_named(billing: Billing) -> None:
    issued = billing.tenants.create_tenant("Old Salon")
    later = Billing(
        db=billing.db, keyring=billing.keyring, clock=lambda: datetime.now(UTC) + timedelta(days=400)
    )

    (check,) = [c for c in later.pci.checks(_facts(master_key_max_age_days=1000)) if c.id == "api_keys"]

    assert check.status == "warn"
    assert any(issued.id in line and "never used" in line for line in check.evidence)
    assert any(issued.id in line and "never rotated" in line for line in check.evidence)
    assert issued.key not in repr(check)


def test_a_table_added_later_is_scanned_without_registration(billing: Billing) -> None:
    """A new model's table is in the metadata, so the scan reads it (and its column names) at once."""
    table = Table(
        "pci_probe_added_later",
        SQLModel.metadata,
        Column("id", String(40), primary_key=True),
        Column("tenant_id", String(40)),
        Column("cvv", String(10)),
        Column("memo", String(200)),
    )
    try:
        table.create(billing.db.engine)
        with billing.db.transaction() as session:
            row = {"id": "row_a", "tenant_id": "ten_x", "cvv": None, "memo": f"paid {VISA}"}
            session.execute(table.insert().values(**row))

        result = billing.pci.scan()

        where = {(f.location.source, f.location.column, f.location.row_id) for f in result.findings}
        assert where == {("schema", "cvv", None), ("database", "memo", "row_a")}
    finally:
        table.drop(billing.db.engine, checkfirst=True)
        SQLModel.metadata.remove(table)
