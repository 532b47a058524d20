"""``veilbill webhooks``: list deliveries, and ``deliver --once`` as an operator runs it."""

from __future__ import annotations

import json
import subprocess

from faker import Faker
from standardwebhooks import Webhook

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    DestinationPolicy,
    InvoiceInput,
    InvoiceLineInput,
    load_keyring,
)

from ..conftest import WebhookReceiver
from .conftest import CLI_TIMEOUT, Operator, veilbill_argv


def _finalized_invoice_with_endpoint(operator: Operator, url: str, fake: Faker) -> tuple[str, str]:
    db = Database(DatabaseConfig(operator.database_url))
    try:
        billing = Billing(
            db=db,
            keyring=load_keyring(operator.keyring_path),
            webhook_destinations=DestinationPolicy(allow_private=True),
        )
        issued = billing.tenants.create_tenant(fake.company())
        actor = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
        endpoint = billing.events.create_endpoint(actor, url, ["invoice.finalized"])
        customer = billing.customers.create(actor, CustomerInput(name=fake.name()))
        draft = billing.invoices.create_draft(
            actor,
            InvoiceInput(
                customer_id=customer.id,
                currency="EUR",
                lines=[InvoiceLineInput(description="Cut", unit_amount=3000)],
            ),
        )
        billing.invoices.finalize(actor, draft.id)
        assert endpoint.secret is not None
        return endpoint.secret, issued.tenant_id
    finally:
        db.dispose()


def _veilbill(operator: Operator, *args: str, allow_private: bool) -> subprocess.CompletedProcess[str]:
    env = operator.env() | {"VEILBILL_WEBHOOKS_ALLOW_PRIVATE": "1" if allow_private else "0"}
    return subprocess.run(
        [*veilbill_argv(), *args],
        env=env,
        cwd=operator.workdir,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=True,
    )


def test_deliver_once_then_list(operator: Operator, fake: Faker, webhook_receiver: WebhookReceiver) -> None:
    secret, tenant_id = _finalized_invoice_with_endpoint(operator, webhook_receiver.url, fake)
    # Without the development setting the loopback receiver is refused at delivery time.
    refused = _veilbill(operator, "webhooks", "deliver", "--once", allow_private=False)
    assert json.loads(refused.stdout) == {"attempts": 1}
    (pending,) = [json.loads(line) for line in operator.run("webhooks", "--json").stdout.splitlines()]
    assert (pending["status"], pending["last_error"]) == ("pending", "address_refused")
    assert webhook_receiver.snapshot() == []
    operator.sql("UPDATE event_deliveries SET next_attempt_at = created_at")
    delivered = _veilbill(operator, "webhooks", "deliver", "--once", allow_private=True)
    assert json.loads(delivered.stdout) == {"attempts": 1}
    (message,) = webhook_receiver.snapshot()
    assert Webhook(secret).verify(message.body, message.headers)["type"] == "invoice.finalized"
    listing = operator.run("webhooks", "--tenant", tenant_id).stdout
    assert "invoice.finalized" in listing and "delivered" in listing and message.id in listing
    assert operator.run("webhooks", "--status", "failed").stdout == ""
