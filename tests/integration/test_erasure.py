"""Erasure of a client who paid, end to end, with an attacker's copy of the database.

The flow of issue 5's check: a client with paid invoices (real gateway sandbox, real database of
each kind) is erased; a copy of the database taken *before* the erasure still gives the client away
until the master key version of that time is rotated away and retired — then the profile is
unreadable with every key there is; the invoices still total correctly for accounting and are
readable only by admins and auditors who state a reason; the gateway no longer has the customer.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stripe
from faker import Faker
from litestar.testing import TestClient
from sqlmodel import select

from api.app import create_app
from api.settings import Settings
from billing import Actor, Billing, Database, DatabaseConfig, KeyringFileMasterKeys, load_keyring
from billing._models import AuditEvent, Customer, DataKeyRecord
from billing.errors import DecryptionError

from ..api.conftest import customer_payload, invoice_payload, make_tenant
from ..conftest import API_KEY, PG_ADMIN_URL, TEST_CARDS
from .conftest import require_pg_dump


@contextmanager
def copy_of(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A copy of the live database, as a backup or an attacker would take it; dropped afterwards."""
    if database_url.startswith("sqlite:///"):
        copy_path = tmp_path / "copy-before-erasure.db"
        with (
            sqlite3.connect(database_url.removeprefix("sqlite:///")) as live,
            sqlite3.connect(copy_path) as copy,
        ):
            live.backup(copy)
        yield f"sqlite:///{copy_path}"
        return
    name = f"veilbill_copy_{secrets.token_hex(6)}"
    admin = Database(DatabaseConfig(PG_ADMIN_URL))
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    copy_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    dump = subprocess.run(
        [require_pg_dump(), "--no-owner", f"--dbname={database_url}"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    subprocess.run(
        [shutil.which("psql") or "psql", "--quiet", "--set=ON_ERROR_STOP=1", f"--dbname={copy_url}"],
        input=dump.stdout,
        capture_output=True,
        check=True,
        timeout=120,
    )
    try:
        yield copy_url
    finally:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def open_profile_with_every_key(
    database_url: str, keyring_path: Path, tenant_id: str, customer_id: str
) -> str:
    """Try to read the client's name from ``database_url`` with every master key that exists."""
    db = Database(DatabaseConfig(database_url))
    try:
        billing = Billing(db=db, keyring=load_keyring(keyring_path))
        return billing.customers.read(Actor(tenant_id=tenant_id, role="booking"), customer_id).name
    finally:
        db.dispose()


def test_erasing_a_client_who_paid(
    settings: Settings,
    sandbox: Any,
    card_token: Any,
    stripe_client: stripe.StripeClient,
    fake: Faker,
    tmp_path: Path,
) -> None:
    gateway_settings = replace(
        settings, stripe_api_key=API_KEY, stripe_api_base=sandbox.api_base, stripe_webhook_secret="whsec_x"
    )
    operator = Billing(
        db=Database(DatabaseConfig(settings.database_url)), keyring=load_keyring(settings.keyring_path)
    )
    with TestClient(create_app(gateway_settings, configure_logs=False)) as client:
        keys = make_tenant(client, operator, "Cabinet Erasure")
        booking = keys.headers("booking")
        payload = customer_payload(fake)
        customer = client.post("/v1/customers", json=payload, headers=booking).json()
        cid = customer["id"]
        card = client.post(
            f"/v1/customers/{cid}/payment-methods",
            json={"token": card_token(TEST_CARDS["visa"])},
            headers=booking,
        ).json()
        invoices = []
        for number in range(2):
            draft = client.post("/v1/invoices", json=invoice_payload(cid, fake), headers=booking).json()
            invoice = client.post(f"/v1/invoices/{draft['id']}/finalize", headers=booking).json()
            paid = client.post(
                f"/v1/invoices/{invoice['id']}/pay",
                json={"payment_method_id": card["id"]},
                headers=booking | {"Idempotency-Key": f"pay-{number}"},
            )
            assert paid.json()["status"] == "succeeded", paid.text
            invoices.append(invoice)
        refund = client.post(
            f"/v1/invoices/{invoices[1]['id']}/refunds",
            json={"amount": 1000, "reason": "requested_by_customer"},
            headers=booking | {"Idempotency-Key": "refund-1"},
        )
        assert refund.status_code == 201, refund.text
        gateway_customer = operator.payments.gateway_customer_id(cid)
        assert gateway_customer is not None

        with copy_of(settings.database_url, tmp_path) as copy_url:
            receipt = client.post(f"/v1/customers/{cid}/erase", headers=keys.headers("admin")).json()
            assert receipt["profile_key_destroyed"] is True and receipt["gateway_customer_deleted"] is True

            # The copy still gives the client away while the master version of that time exists ...
            before = open_profile_with_every_key(copy_url, settings.keyring_path, keys.tenant_id, cid)
            assert before == payload["name"]
            # ... so the operator rotates it away and retires it.
            rotation = operator.rotation.rotate_master_key()
            assert rotation.complete and rotation.to_version == "mk_0002"
            operator.rotation.retire_master_key("mk_0001")

            with pytest.raises(DecryptionError):
                open_profile_with_every_key(copy_url, settings.keyring_path, keys.tenant_id, cid)
            copy_db = Database(DatabaseConfig(copy_url))
            with copy_db.read() as session:
                wrapped_then = session.exec(
                    select(DataKeyRecord).where(
                        DataKeyRecord.subject_id == cid, DataKeyRecord.purpose == "profile"
                    )
                ).one()
            copy_db.dispose()
            assert wrapped_then.wrapped is not None and wrapped_then.master_key_id == "mk_0001"
            provider = KeyringFileMasterKeys(settings.keyring_path)
            assert [v.key_id for v in provider.versions()] == ["mk_0002"]
            with pytest.raises(DecryptionError):  # every master key there is
                provider.unwrap(
                    wrapped_then.wrapped, tenant_id=keys.tenant_id, purpose="profile", dek_id=wrapped_then.id
                )

        # Live: the profile is gone, not merely hidden.
        gone = client.get(f"/v1/customers/{cid}", headers=booking)
        assert gone.status_code == 410 and gone.json()["code"] == "customer_erased"
        with operator.db.read() as session:
            row = session.get(Customer, cid)
            profile_key = session.exec(
                select(DataKeyRecord).where(
                    DataKeyRecord.subject_id == cid, DataKeyRecord.purpose == "profile"
                )
            ).one()
        assert row is not None and row.name_ct is None and row.email_ct is None
        assert profile_key.wrapped is None and profile_key.destroyed_at is not None

        # Accounting: amounts, statuses and totals are intact, in lists and in the reports.
        listed = client.get("/v1/invoices", params={"customer_id": cid}, headers=booking).json()["data"]
        assert sorted((i["status"], i["total"]) for i in listed) == sorted(
            [("paid", invoices[0]["total"]), ("partially_refunded", invoices[1]["total"])]
        )
        today = datetime.now(UTC).date()
        tax = client.get(
            "/v1/reports/tax",
            params={"from": f"{today.year}-01-01", "to": today.isoformat(), "format": "csv"},
            headers=keys.headers("accountant"),
        )
        assert tax.status_code == 200, tax.text
        rows = list(csv.DictReader(io.StringIO(tax.text)))
        assert sum(int(row["net"]) for row in rows) == sum(i["subtotal"] for i in invoices)
        assert sum(int(row["tax"]) for row in rows) == sum(i["tax"] for i in invoices)
        assert payload["name"] not in tax.text

        # The content: restricted to admins and auditors who state a reason (audited).
        invoice_id = invoices[0]["id"]
        for role in ("booking", "accountant"):
            refused = client.get(f"/v1/invoices/{invoice_id}", headers=keys.headers(role))
            assert refused.status_code == 403
        restricted = f"/v1/invoices/{invoice_id}/restricted-read"
        assert client.post(restricted, json={"reason": "VAT audit 2026"}, headers=booking).status_code == 403
        assert client.post(restricted, json={}, headers=keys.headers("auditor")).status_code == 400
        for role in ("admin", "auditor"):
            read = client.post(restricted, json={"reason": "VAT audit 2026"}, headers=keys.headers(role))
            assert read.status_code == 200, read.text
            assert read.json()["lines"][0]["description"] == invoices[0]["lines"][0]["description"]
            assert read.json()["total"] == invoices[0]["total"]
        with operator.db.read() as session:
            reads = session.exec(
                select(AuditEvent).where(AuditEvent.action == "invoice.restricted_read")
            ).all()
        assert sorted(e.actor_role or "" for e in reads) == ["admin", "auditor"]
        assert all(json.loads(e.detail or "{}")["reason"] == "VAT audit 2026" for e in reads)

    # The gateway no longer has the customer (nor their cards).
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.customers.retrieve(gateway_customer)
    operator.db.dispose()
