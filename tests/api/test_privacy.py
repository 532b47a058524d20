"""Access export and erasure by crypto-shredding, through the API."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import stripe
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import text
from sqlmodel import select

from api.app import create_app
from api.settings import Settings
from billing import Billing
from billing._customers import PII_FIELDS
from billing._models import AuditEvent, Customer, DataKeyRecord

from ..conftest import API_KEY, TEST_CARDS
from .conftest import TenantKeys, customer_payload, invoice_payload, make_tenant


def _client_with_invoice(
    client: TestClient, keys: TenantKeys, fake: Faker
) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = keys.headers("booking")
    payload = customer_payload(fake)
    customer = client.post("/v1/customers", json=payload, headers=headers).json()
    draft = client.post("/v1/invoices", json=invoice_payload(customer["id"], fake), headers=headers).json()
    invoice = client.post(f"/v1/invoices/{draft['id']}/finalize", headers=headers).json()
    return customer | {"payload": payload}, invoice


def test_export_holds_everything_and_is_audited(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    customer, invoice = _client_with_invoice(client, tenant, fake)
    client.get(f"/v1/customers/{customer['id']}", headers=tenant.headers("booking"))
    response = client.get(f"/v1/customers/{customer['id']}/export", headers=tenant.headers("admin"))
    assert response.status_code == 200, response.text
    export = response.json()
    assert export["profile"]["email"] == customer["payload"]["email"]
    assert [i["number"] for i in export["invoices"]] == [invoice["number"]]
    assert export["invoices"][0]["lines"][0]["description"] == invoice["lines"][0]["description"]
    assert set(export["data_categories"]) == {"profile", "invoices", "payments", "audit"}
    assert all("lawful_basis" in c and "retention" in c for c in export["data_categories"].values())
    actions = [a["action"] for a in export["access_log"]]
    assert "customer.read" in actions and "invoice.finalized" in actions
    with app_billing.db.read() as session:
        exported = session.exec(select(AuditEvent).where(AuditEvent.action == "customer.exported")).all()
    assert [e.subject_id for e in exported] == [customer["id"]]
    assert (
        client.get(f"/v1/customers/{customer['id']}/export", headers=tenant.headers("booking")).status_code
        == 200
    )


@pytest.mark.parametrize("role", ["accountant", "auditor"])
def test_export_is_refused_to_other_roles(
    client: TestClient, tenant: TenantKeys, fake: Faker, role: str
) -> None:
    customer, _ = _client_with_invoice(client, tenant, fake)
    assert (
        client.get(f"/v1/customers/{customer['id']}/export", headers=tenant.headers(role)).status_code == 403
    )


def test_only_admins_erase(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, fake: Faker
) -> None:
    customer, _ = _client_with_invoice(client, tenant, fake)
    for role in ("booking", "accountant", "auditor"):
        assert (
            client.post(f"/v1/customers/{customer['id']}/erase", headers=tenant.headers(role)).status_code
            == 403
        )
    assert (
        client.post(
            f"/v1/customers/{customer['id']}/erase", headers=other_tenant.headers("admin")
        ).status_code
        == 404
    )


def test_erasure_shreds_the_profile_and_restricts_the_invoices(
    client: TestClient, tenant: TenantKeys, fake: Faker, app_billing: Billing, settings: Settings
) -> None:
    customer, invoice = _client_with_invoice(client, tenant, fake)
    cid = customer["id"]
    erased = client.post(f"/v1/customers/{cid}/erase", headers=tenant.headers("admin"))
    assert erased.status_code == 200, erased.text
    receipt = erased.json()
    assert receipt["profile_key_destroyed"] is True and receipt["blind_indexes_removed"] is True
    assert receipt["invoices_restricted"] == 1 and receipt["gateway_customer_deleted"] is False

    booking = tenant.headers("booking")
    gone = client.get(f"/v1/customers/{cid}", headers=booking)
    assert gone.status_code == 410 and gone.json()["code"] == "customer_erased"
    lookup = client.get("/v1/customers", params={"email": customer["payload"]["email"]}, headers=booking)
    assert lookup.json()["data"] == []
    restricted = client.get(f"/v1/invoices/{invoice['id']}", headers=booking)
    assert restricted.status_code == 403 and restricted.json()["code"] == "record_restricted"
    assert client.get(f"/v1/invoices/{invoice['id']}/pdf", headers=booking).status_code == 403
    listed = client.get("/v1/invoices", params={"customer_id": cid}, headers=booking).json()["data"]
    assert [(i["number"], i["total"]) for i in listed] == [(invoice["number"], invoice["total"])]

    path = f"/v1/invoices/{invoice['id']}/restricted-read"
    assert client.post(path, json={"reason": "tax audit 2026"}, headers=booking).status_code == 403
    assert client.post(path, json={"reason": "x"}, headers=tenant.headers("auditor")).status_code == 400
    read = client.post(path, json={"reason": "tax audit 2026"}, headers=tenant.headers("auditor"))
    assert read.status_code == 200
    assert read.json()["lines"][0]["description"] == invoice["lines"][0]["description"]

    with app_billing.db.read() as session:
        row = session.get(Customer, cid)
        keys = session.exec(select(DataKeyRecord).where(DataKeyRecord.subject_id == cid)).all()
        raw = repr(session.execute(text("SELECT * FROM customers")).all())
        reasons = session.exec(select(AuditEvent).where(AuditEvent.action == "invoice.restricted_read")).all()
    assert row is not None and row.erased_at is not None
    assert all(getattr(row, f"{c}_ct") is None for c in PII_FIELDS)  # every sealed profile column
    assert {k.purpose: k.wrapped is None for k in keys} == {"profile": True, "record": False}
    for value in (customer["payload"]["name"], customer["payload"]["email"]):
        assert value not in raw
    assert json.loads(reasons[0].detail or "{}")["reason"] == "tax audit 2026"

    journal = settings.erasure_journal_path.read_text()
    assert json.loads(journal)["customer_id"] == cid
    assert customer["payload"]["name"] not in journal and customer["payload"]["email"] not in journal
    again = client.post(f"/v1/customers/{cid}/erase", headers=tenant.headers("admin"))
    assert again.status_code == 410


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_restored_backup_gets_its_erasures_back(
    client: TestClient, tenant: TenantKeys, fake: Faker, settings: Settings, tmp_path: Path
) -> None:
    customer, _ = _client_with_invoice(client, tenant, fake)
    database_file = Path(settings.database_url.removeprefix("sqlite:///"))
    backup = tmp_path / "backup.db"
    with sqlite3.connect(database_file) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)  # an online backup, as an operator would take
    assert (
        client.post(f"/v1/customers/{customer['id']}/erase", headers=tenant.headers("admin")).status_code
        == 200
    )
    client.__exit__(None, None, None)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database_file}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, database_file)  # the restore brings the client back ...
    restored = Billing(
        db=_db(settings), keyring=_keyring(settings), erasure_journal=settings.erasure_journal_path
    )
    with restored.db.read() as session:
        row = session.get(Customer, customer["id"])
        assert row is not None and row.erased_at is None and row.name_ct is not None
    assert restored.privacy.replay_erasures() == 1  # ... and the journal erases them again
    assert restored.privacy.replay_erasures() == 0
    with restored.db.read() as session:
        row = session.get(Customer, customer["id"])
        assert row is not None and row.erased_at is not None and row.name_ct is None
    restored.db.dispose()


def test_erasure_deletes_the_gateway_customer(
    settings: Settings,
    sandbox: Any,
    fake: Faker,
    app_billing: Billing,
    card_token: Any,
    stripe_client: stripe.StripeClient,
) -> None:
    gateway_settings = replace(
        settings, stripe_api_key=API_KEY, stripe_api_base=sandbox.api_base, stripe_webhook_secret="whsec_x"
    )
    with TestClient(create_app(gateway_settings, configure_logs=False)) as client:
        keys = make_tenant(client, app_billing, "Erasing Salon")
        customer, invoice = _client_with_invoice(client, keys, fake)
        headers = keys.headers("booking")
        card = client.post(
            f"/v1/customers/{customer['id']}/payment-methods",
            json={"token": card_token(TEST_CARDS["visa"])},
            headers=headers,
        ).json()
        paid = client.post(
            f"/v1/invoices/{invoice['id']}/pay",
            json={"payment_method_id": card["id"]},
            headers=headers | {"Idempotency-Key": "p"},
        )
        assert paid.json()["status"] == "succeeded"
        gateway_customer = app_billing.payments.gateway_customer_id(customer["id"])
        receipt = client.post(f"/v1/customers/{customer['id']}/erase", headers=keys.headers("admin")).json()
        assert receipt["gateway_customer_deleted"] is True and receipt["card_summaries_removed"] == 1
        assert (
            client.get(f"/v1/customers/{customer['id']}/payment-methods", headers=headers).json()["data"]
            == []
        )
        listed = client.get("/v1/invoices", params={"customer_id": customer["id"]}, headers=headers).json()[
            "data"
        ]
        assert [(i["status"], i["total"]) for i in listed] == [("paid", invoice["total"])]
    assert gateway_customer is not None
    with pytest.raises(stripe.InvalidRequestError):  # the gateway no longer has the customer
        stripe_client.v1.customers.retrieve(gateway_customer)


def _db(settings: Settings) -> Any:
    from billing import Database, DatabaseConfig

    return Database(DatabaseConfig(settings.database_url))


def _keyring(settings: Settings) -> Any:
    from billing import load_keyring

    return load_keyring(settings.keyring_path)


def test_retention_policy_and_dry_run_through_the_api(client: TestClient, tenant: TenantKeys) -> None:
    admin = tenant.headers("admin")
    assert client.get("/v1/admin/retention", headers=admin).json()["invoice_retention_years"] is None
    saved = client.put("/v1/admin/retention", json={"country": "FR"}, headers=admin)
    assert saved.status_code == 200 and saved.json()["invoice_retention_years"] == 10
    refused = client.put("/v1/admin/retention", json={"country": "XX"}, headers=admin)
    assert refused.status_code == 422 and refused.json()["field"] == "country"
    report = client.post("/v1/admin/retention/run", json={}, headers=admin)
    assert report.status_code == 200 and report.json()["dry_run"] is True
    for role in ("booking", "accountant", "auditor"):
        refused = client.post("/v1/admin/retention/run", json={}, headers=tenant.headers(role))
        assert refused.status_code == 403


def test_an_admin_rotates_a_clients_keys_and_everything_still_reads(
    client: TestClient, tenant: TenantKeys, other_tenant: TenantKeys, fake: Faker, app_billing: Billing
) -> None:
    customer, invoice = _client_with_invoice(client, tenant, fake)
    cid, path = customer["id"], f"/v1/customers/{customer['id']}/rotate-keys"
    with app_billing.db.read() as session:
        before = {
            k.purpose: k.id
            for k in session.exec(select(DataKeyRecord).where(DataKeyRecord.subject_id == cid))
        }
        sealed_before = session.get(Customer, cid).email_ct  # type: ignore[union-attr]

    for role in ("booking", "accountant", "auditor"):
        refused = client.post(path, json={}, headers=tenant.headers(role))
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden_role"
    stranger = client.post(path, json={}, headers=other_tenant.headers("admin"))
    assert stranger.status_code == 404 and stranger.json()["code"] == "not_found"
    bad = client.post(path, json={"purpose": "index"}, headers=tenant.headers("admin"))
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_value"

    rotated = client.post(path, json={"purpose": "all"}, headers=tenant.headers("admin"))
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert set(body["rotated"]) == {"profile", "record"} and body["skipped"] == []
    assert body["values_reencrypted"] > 8 and set(body["rotated"].values()).isdisjoint(before.values())
    with app_billing.db.read() as session:
        after = {
            k.purpose: k.id
            for k in session.exec(select(DataKeyRecord).where(DataKeyRecord.subject_id == cid))
        }
        sealed_after = session.get(Customer, cid).email_ct  # type: ignore[union-attr]
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "keys.subject_rotated")).all()
    assert after == body["rotated"] and sealed_after != sealed_before
    assert [(e.subject_id, e.actor_role) for e in events] == [(cid, "admin")]

    booking = tenant.headers("booking")
    read = client.get(f"/v1/customers/{cid}", headers=booking).json()
    assert read["email"] == customer["payload"]["email"] and read["notes"] == customer["payload"]["notes"]
    lines = client.get(f"/v1/invoices/{invoice['id']}", headers=booking).json()["lines"]
    assert [line["description"] for line in lines] == [line["description"] for line in invoice["lines"]]
    profile_only = client.post(path, json={"purpose": "profile"}, headers=tenant.headers("admin"))
    assert list(profile_only.json()["rotated"]) == ["profile"]

    client.post(f"/v1/customers/{cid}/erase", headers=tenant.headers("admin"))
    erased = client.post(path, json={"purpose": "profile"}, headers=tenant.headers("admin"))
    assert erased.status_code == 410 and erased.json()["code"] == "customer_erased"
    records_only = client.post(path, json={}, headers=tenant.headers("admin")).json()
    assert list(records_only["rotated"]) == ["record"] and records_only["skipped"] == ["profile"]
