"""Outbound webhooks from the real service: ``kill -9`` between a payment and its delivery.

The service pays an invoice while the booking app's receiver is down, so the events sit in the
outbox; the service is killed with SIGKILL; the receiver comes up on the same port; a restarted
service delivers every event exactly once per ``webhook-id``, in order per invoice, each verified
by the reference ``standardwebhooks`` library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
from standardwebhooks import Webhook

from tokenization import LocalStripeSandbox

from ..conftest import API_KEY, TEST_CARDS, WebhookReceiver, free_port
from .conftest import Operator, ServerPool, bearer, issue_key

DELIVERY_TIMEOUT = 90.0


def test_kill_9_between_a_payment_and_its_delivery_then_every_event_arrives_once(
    operator: Operator,
    servers: ServerPool,
    sandbox: LocalStripeSandbox,
    card_token: Callable[[str], str],
) -> None:
    env = {
        "VEILBILL_STRIPE_API_KEY": API_KEY,
        "VEILBILL_STRIPE_API_BASE": sandbox.api_base,
        "VEILBILL_STRIPE_WEBHOOK_SECRET": "whsec_integration",
        "VEILBILL_WEBHOOKS_ALLOW_PRIVATE": "1",
    }
    receiver_port = free_port()  # nothing listens there yet: the receiver is down
    receiver_url = f"http://127.0.0.1:{receiver_port}/hooks/veilbill"
    (server,) = servers.start(operator, extra_env=env)
    tenant = operator.create_tenant("Hotel du Lac")
    admin = bearer(tenant["admin_key"])
    booking = bearer(issue_key(server.base_url, tenant["admin_key"], "booking"))
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        endpoint = api.post(
            "/v1/admin/webhook-endpoints",
            json={
                "url": receiver_url,
                "event_types": ["invoice.finalized", "invoice.paid", "payment.succeeded"],
            },
            headers=admin,
        )
        assert endpoint.status_code == 201, endpoint.text
        secret = endpoint.json()["secret"]
        customer = api.post("/v1/customers", json={"name": "Test Client"}, headers=booking).json()
        draft = api.post(
            "/v1/invoices",
            json={
                "customer_id": customer["id"],
                "booking_ref": "bk_kill9",
                "currency": "EUR",
                "lines": [{"description": "Room", "quantity": 1, "unit_amount": 12000}],
            },
            headers=booking,
        ).json()
        invoice_id = draft["id"]
        assert api.post(f"/v1/invoices/{invoice_id}/finalize", headers=booking).status_code == 200
        card = api.post(
            f"/v1/customers/{customer['id']}/payment-methods",
            json={"token": card_token(TEST_CARDS["visa"])},
            headers=booking,
        ).json()
        paid = api.post(
            f"/v1/invoices/{invoice_id}/pay",
            json={"payment_method_id": card["id"]},
            headers=booking | {"Idempotency-Key": "kill9-pay"},
        )
        assert paid.status_code == 200 and paid.json()["status"] == "succeeded", paid.text

    server.process.kill()  # SIGKILL: the events are in the outbox, none delivered
    server.process.wait(timeout=10)
    outbox = operator.sql(
        "SELECT e.id, e.type, d.status FROM events e"
        " JOIN event_deliveries d ON d.event_id = e.id ORDER BY e.seq"
    )
    assert [(t, s) for _, t, s in outbox] == [
        ("invoice.finalized", "pending"),
        ("payment.succeeded", "pending"),
        ("invoice.paid", "pending"),
    ]
    event_ids = [event_id for event_id, _, _ in outbox]

    receiver = WebhookReceiver(port=receiver_port).start()
    try:
        servers.start(operator, extra_env=env)
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while len(receiver.snapshot()) < len(event_ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # anything sent twice would arrive now
        received = receiver.snapshot()
    finally:
        receiver.stop()
    assert [r.id for r in received] == event_ids, "each event once, in order for the invoice"
    verifier = Webhook(secret)
    for message in received:
        body = verifier.verify(message.body, message.headers)
        assert body["data"]["invoice_id"] == invoice_id and body["data"]["booking_ref"] == "bk_kill9"
        assert "Test Client" not in message.body.decode()
    statuses = [json.loads(line)["status"] for line in operator.run("webhooks", "--json").stdout.splitlines()]
    assert statuses == ["delivered"] * 3
