"""``veilbill pci scan`` as an operator runs it: card data planted outside the API is found by
location, never printed, and the exit status gates a deploy (0 clean, 1 found, 2 could not scan).

The numbers are the gateway sandbox's public test cards, planted to test the defense.
"""

from __future__ import annotations

import json
from pathlib import Path

from faker import Faker

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    InvoiceInput,
    InvoiceLineInput,
    load_keyring,
)

from .conftest import Operator

SPACED = "4242 4242 4242 4242"
PLAIN = "5555555555554444"
DASHED = "3782-822463-10005"


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _assert_never_printed(output: str) -> None:
    for number in (SPACED, PLAIN, DASHED):
        assert number not in output
        assert _digits(number) not in output


def _billing(operator: Operator) -> Billing:
    return Billing(
        db=Database(DatabaseConfig(operator.database_url)), keyring=load_keyring(operator.keyring_path)
    )


def _plant(operator: Operator, fake: Faker) -> dict[str, str]:
    """A number sealed in an invoice note (through the services, past the API's guard), one in a
    clear column written by SQL, and one in the log file."""
    billing = _billing(operator)
    try:
        issued = billing.tenants.create_tenant("Clinique Test")
        actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
        customer = billing.customers.create(actor, CustomerInput(name=fake.name()))
        line = InvoiceLineInput(description="Consultation", unit_amount=6000)
        sealed = billing.invoices.create_draft(
            actor,
            InvoiceInput(
                customer_id=customer.id, currency="EUR", lines=[line], notes=f"card {SPACED} exp 12/30"
            ),
        ).id
        clear = billing.invoices.create_draft(
            actor, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line])
        ).id
    finally:
        billing.db.dispose()
    operator.sql("UPDATE invoices SET booking_ref = :ref WHERE id = :id", ref=PLAIN, id=clear)
    assert operator.log_path is not None
    operator.log_path.write_text(
        '{"event": "request", "status": 200}\n' * 3 + f'{{"event": "debug", "body": "pan {DASHED}"}}\n'
    )
    return {"sealed": sealed, "clear": clear, "tenant": issued.tenant_id}


def test_a_clean_install_finds_nothing_and_exits_zero(operator: Operator, tmp_path: Path) -> None:
    operator = Operator(operator.database_url, operator.keyring_path, tmp_path, log_path=tmp_path / "v.log")
    operator.create_tenant("Salon Clean")
    (tmp_path / "v.log").write_text('{"event": "request", "status": 200}\n')

    result = operator.run("pci", "scan")

    assert "No card data found." in result.stdout
    assert "1 lines in 1 files" in result.stdout
    report = json.loads(operator.run("pci", "scan", "--json").stdout)
    assert report["scan"]["findings"] == []
    assert report["passed"] is True


def test_planted_card_numbers_are_found_by_location_never_printed(
    operator: Operator, tmp_path: Path, fake: Faker
) -> None:
    log = tmp_path / "veilbill.log"
    operator = Operator(operator.database_url, operator.keyring_path, tmp_path, log_path=log)
    planted = _plant(operator, fake)

    result = operator.run("pci", "scan", expect=1)

    out = result.stdout
    assert f"invoices.notes_ct row {planted['sealed']} (encrypted; opened in memory): card number" in out
    assert f"invoices.booking_ref row {planted['clear']}: card number" in out
    assert f"{log}:4: card number" in out
    assert "3 finding(s)" in out
    _assert_never_printed(result.stdout + result.stderr)

    as_json = operator.run("pci", "scan", "--json", expect=1)
    _assert_never_printed(as_json.stdout + as_json.stderr)
    findings = json.loads(as_json.stdout)["scan"]["findings"]
    where = {
        (f["location"]["table"] or f["location"]["path"], f["location"]["column"], f["location"]["row_id"]): f
        for f in findings
    }
    assert where[("invoices", "notes_ct", planted["sealed"])]["separators"] is True
    assert where[("invoices", "notes_ct", planted["sealed"])]["location"]["encrypted"] is True
    assert where[("invoices", "booking_ref", planted["clear"])]["separators"] is False
    assert where[(str(log), None, None)]["location"]["line"] == 4
    assert {f["kind"] for f in findings} == {"pan"}

    # The scan itself is on the audit trail, with counts only.
    details = operator.sql("SELECT detail FROM audit_events WHERE action = 'pci.scan'")
    assert details and all('"findings": 3' in str(d) for (d,) in details)
    _assert_never_printed(json.dumps(details))


def test_a_scan_that_cannot_run_exits_two(operator: Operator, tmp_path: Path) -> None:
    broken = Operator(operator.database_url, tmp_path / "no-keyring.json", tmp_path)

    result = broken.run("pci", "scan", expect=2)

    assert "the scan did not complete" in result.stderr
    assert "keyring_unavailable" in result.stderr


def test_the_inventory_command_prints_the_committed_document(operator: Operator) -> None:
    committed = (Path(__file__).resolve().parents[2] / "docs" / "data-inventory.md").read_text()

    assert operator.run("privacy", "inventory", "--markdown").stdout == committed
    fields = json.loads(operator.run("privacy", "inventory").stdout)["fields"]
    assert {"table": "customers", "column": "email_ct"}.items() <= next(
        f for f in fields if f["column"] == "email_ct"
    ).items()
