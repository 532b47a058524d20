"""``/v1/admin/webhook-endpoints`` and ``/v1/events`` through the API: roles, tenants, secrets shown
once, URL refusals, the log and redelivery; and a whole payment lifecycle whose events reach a real
receiver, verified by the reference ``standardwebhooks`` library, without any client PII."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlmodel import select
from standardwebhooks import Webhook

from api.app import create_app
from api.settings import Settings
from billing import Billing, DestinationPolicy, EventRecord, WebhookDelivery, WebhookEndpoint, WebhookSender
from tokenization import LocalStripeSandbox

from ..conftest import API_KEY, TEST_CARDS, WebhookReceiver
from .conftest import TenantKeys, customer_payload, invoice_payload, make_tenant
from .test_payments import _deliver, _event, _intent_id, _pay, _save_card, _wait_for_status

ROLES_DENIED = ("booking", "accountant", "auditor")


@pytest.fixture
def dev_client(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """The app with loopback receivers allowed (the development setting)."""
    with TestClient(
        create_app(replace(settings, webhooks_allow_private=True), configure_logs=False)
    ) as client:
        yield client


@pytest.fixture
def dev_tenant(dev_client: TestClient, app_billing: Billing) -> TenantKeys:  # type: ignore[type-arg]
    return make_tenant(dev_client, app_billing, "Salon Rivoli")


def loopback_delivery(billing: Billing) -> WebhookDelivery:
    """A deliverer on the app's database that may reach the loopback receiver."""
    return WebhookDelivery(billing.db, billing.keyring, WebhookSender(DestinationPolicy(allow_private=True)))


def register(client: TestClient, keys: TenantKeys, url: str, types: list[str] | None = None) -> Any:  # type: ignore[type-arg]
    return client.post(
        "/v1/admin/webhook-endpoints",
        json={"url": url, "event_types": types or ["invoice.finalized", "invoice.paid"]},
        headers=keys.headers("admin"),
    )


def test_only_admins_manage_endpoints_and_read_the_log(
    dev_client: TestClient,
    dev_tenant: TenantKeys,
    webhook_receiver: WebhookReceiver,  # type: ignore[type-arg]
) -> None:
    created = register(dev_client, dev_tenant, webhook_receiver.url)
    assert created.status_code == 201, created.text
    endpoint_id = created.json()["id"]
    for role in ROLES_DENIED:
        headers = dev_tenant.headers(role)
        calls = [
            dev_client.post(
                "/v1/admin/webhook-endpoints",
                json={"url": webhook_receiver.url, "event_types": ["invoice.paid"]},
                headers=headers,
            ),
            dev_client.get("/v1/admin/webhook-endpoints", headers=headers),
            dev_client.get(f"/v1/admin/webhook-endpoints/{endpoint_id}", headers=headers),
            dev_client.delete(f"/v1/admin/webhook-endpoints/{endpoint_id}", headers=headers),
            dev_client.post(
                f"/v1/admin/webhook-endpoints/{endpoint_id}/rotate-secret", json={}, headers=headers
            ),
            dev_client.get("/v1/events", headers=headers),
            dev_client.post("/v1/events/evt_x/redeliver", headers=headers),
        ]
        for response in calls:
            assert response.status_code == 403 and response.json()["code"] == "forbidden_role", role
    assert dev_client.get("/v1/admin/webhook-endpoints").status_code == 401


def test_the_secret_is_shown_once(
    dev_client: TestClient,
    dev_tenant: TenantKeys,
    app_billing: Billing,
    webhook_receiver: WebhookReceiver,  # type: ignore[type-arg]
) -> None:
    created = register(dev_client, dev_tenant, webhook_receiver.url).json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and created["status"] == "enabled"
    headers = dev_tenant.headers("admin")
    listed = dev_client.get("/v1/admin/webhook-endpoints", headers=headers)
    one = dev_client.get(f"/v1/admin/webhook-endpoints/{created['id']}", headers=headers)
    assert secret not in listed.text and secret not in one.text and "secret" not in one.json()
    with app_billing.db.read() as session:
        row = session.get(WebhookEndpoint, created["id"])
        assert row is not None and secret.encode() not in row.secret_ct
    rotated = dev_client.post(
        f"/v1/admin/webhook-endpoints/{created['id']}/rotate-secret",
        json={"overlap_hours": 2},
        headers=headers,
    )
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (secret, None)
    assert rotated.json()["previous_secret_expires_at"]
    trail = dev_client.get("/v1/audit/events", headers=dev_tenant.headers("auditor"))
    actions = [e["action"] for e in trail.json()["data"]]
    assert "webhook_endpoint.created" in actions and "webhook_endpoint.secret_rotated" in actions
    assert secret not in trail.text and rotated.json()["secret"] not in trail.text


def test_other_tenants_endpoints_and_events_are_not_found(
    dev_client: TestClient,
    dev_tenant: TenantKeys,
    app_billing: Billing,
    fake: Faker,
    webhook_receiver: WebhookReceiver,  # type: ignore[type-arg]
) -> None:
    endpoint_id = register(dev_client, dev_tenant, webhook_receiver.url).json()["id"]
    booking = dev_tenant.headers("booking")
    customer = dev_client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()
    draft = dev_client.post(
        "/v1/invoices", json=invoice_payload(customer["id"], fake), headers=booking
    ).json()
    dev_client.post(f"/v1/invoices/{draft['id']}/finalize", headers=booking)
    (event,) = dev_client.get("/v1/events", headers=dev_tenant.headers("admin")).json()["data"]
    other = make_tenant(dev_client, app_billing, "Clinique du Parc").headers("admin")
    for response in (
        dev_client.get(f"/v1/admin/webhook-endpoints/{endpoint_id}", headers=other),
        dev_client.delete(f"/v1/admin/webhook-endpoints/{endpoint_id}", headers=other),
        dev_client.post(f"/v1/admin/webhook-endpoints/{endpoint_id}/enable", headers=other),
        dev_client.get(f"/v1/events/{event['id']}", headers=other),
        dev_client.post(f"/v1/events/{event['id']}/redeliver", headers=other),
    ):
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert dev_client.get("/v1/events", headers=other).json()["data"] == []
    assert dev_client.get("/v1/admin/webhook-endpoints", headers=other).json()["data"] == []


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:8000/hook", "webhook_url_refused"),
        ("http://169.254.169.254/latest/meta-data", "webhook_url_refused"),
        ("http://[::1]/hook", "webhook_url_refused"),
        ("http://10.1.2.3/hook", "webhook_url_refused"),
        ("ftp://example.org/hook", "webhook_url_invalid"),
        ("https://user:pw@example.org/hook", "webhook_url_invalid"),
    ],
)
def test_bad_urls_are_refused_with_stable_codes(
    client: TestClient,
    tenant: TenantKeys,
    app_billing: Billing,
    url: str,
    code: str,  # type: ignore[type-arg]
) -> None:
    response = register(client, tenant, url)
    assert response.status_code == 422 and response.json()["code"] == code
    assert url not in response.text
    with app_billing.db.read() as session:
        assert session.exec(select(WebhookEndpoint)).all() == []


def test_request_shapes_are_checked(client: TestClient, tenant: TenantKeys) -> None:  # type: ignore[type-arg]
    headers = tenant.headers("admin")
    unknown_type = client.post(
        "/v1/admin/webhook-endpoints",
        json={"url": "https://example.org/h", "event_types": ["invoice.created"]},
        headers=headers,
    )
    assert unknown_type.status_code == 400 and unknown_type.json()["code"] == "invalid_value"
    none = client.post(
        "/v1/admin/webhook-endpoints",
        json={"url": "https://example.org/h", "event_types": []},
        headers=headers,
    )
    assert none.status_code == 400
    extra = client.post(
        "/v1/admin/webhook-endpoints",
        json={"url": "https://example.org/h", "event_types": ["invoice.paid"], "secret": "whsec_mine"},
        headers=headers,
    )
    assert extra.status_code == 400 and extra.json()["code"] == "unknown_field"


def test_delete_cancels_pending_deliveries_and_redeliver_replays(
    dev_client: TestClient,
    dev_tenant: TenantKeys,
    app_billing: Billing,
    fake: Faker,
    webhook_receiver: WebhookReceiver,  # type: ignore[type-arg]
) -> None:
    admin = dev_tenant.headers("admin")
    doomed = register(dev_client, dev_tenant, webhook_receiver.url).json()
    booking = dev_tenant.headers("booking")
    customer = dev_client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()
    draft = dev_client.post(
        "/v1/invoices", json=invoice_payload(customer["id"], fake), headers=booking
    ).json()
    dev_client.post(f"/v1/invoices/{draft['id']}/finalize", headers=booking)
    deleted = dev_client.delete(f"/v1/admin/webhook-endpoints/{doomed['id']}", headers=admin)
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert dev_client.get(f"/v1/admin/webhook-endpoints/{doomed['id']}", headers=admin).status_code == 404
    (event,) = dev_client.get("/v1/events", headers=admin).json()["data"]
    detail = dev_client.get(f"/v1/events/{event['id']}", headers=admin).json()
    assert [d["status"] for d in detail["deliveries"]] == ["canceled"]
    fresh = register(dev_client, dev_tenant, webhook_receiver.url).json()
    replay = dev_client.post(
        f"/v1/events/{event['id']}/redeliver", json={"endpoint_id": fresh["id"]}, headers=admin
    )
    assert replay.status_code == 202, replay.text
    delivery = loopback_delivery(app_billing)
    try:
        assert delivery.deliver_due() == 1
    finally:
        delivery.close()
    (received,) = webhook_receiver.snapshot()
    assert received.id == event["id"]
    Webhook(fresh["secret"]).verify(received.body, received.headers)
    assert (
        dev_client.get("/v1/events?type=invoice.finalized", headers=admin).json()["data"][0]["id"]
        == event["id"]
    )
    assert dev_client.get("/v1/events?type=bogus", headers=admin).status_code == 400


def test_settings_read_the_webhook_variables() -> None:
    default = Settings.from_env({})
    assert default.webhooks_worker is True and default.webhooks_allow_private is False
    chosen = Settings.from_env({"VEILBILL_WEBHOOKS_WORKER": "0", "VEILBILL_WEBHOOKS_ALLOW_PRIVATE": "1"})
    assert chosen.webhooks_worker is False and chosen.webhooks_allow_private is True
    assert Settings.from_env(chosen.as_env()) == chosen


def test_the_service_delivers_in_the_background_and_stops_its_worker_on_shutdown(
    settings: Settings,
    app_billing: Billing,
    fake: Faker,
    webhook_receiver: WebhookReceiver,
) -> None:
    serving = replace(settings, webhooks_allow_private=True, webhooks_worker=True)
    with TestClient(create_app(serving, configure_logs=False)) as client:
        assert any(t.name == "veilbill-webhooks" for t in threading.enumerate())
        keys = make_tenant(client, app_billing, "Salon Rivoli")
        register(client, keys, webhook_receiver.url)
        booking = keys.headers("booking")
        customer = client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()
        draft = client.post(
            "/v1/invoices", json=invoice_payload(customer["id"], fake), headers=booking
        ).json()
        client.post(f"/v1/invoices/{draft['id']}/finalize", headers=booking)
        deadline = time.monotonic() + 20
        while not webhook_receiver.snapshot() and time.monotonic() < deadline:
            time.sleep(0.1)
        (received,) = webhook_receiver.snapshot()
        assert received.json()["data"]["invoice_id"] == draft["id"]
    assert not any(t.name == "veilbill-webhooks" for t in threading.enumerate())


# --- a whole payment lifecycle, through the gateway sandbox ------------------------------------

WEBHOOK_SECRET = "whsec_test_veilbill"


@pytest.fixture
def pay_client(settings: Settings, sandbox: LocalStripeSandbox) -> Iterator[TestClient]:  # type: ignore[type-arg]
    gateway_settings = replace(
        settings,
        stripe_api_key=API_KEY,
        stripe_api_base=sandbox.api_base,
        stripe_publishable_key="pk_test_veilbill",
        stripe_webhook_secret=WEBHOOK_SECRET,
        webhooks_allow_private=True,
    )
    with TestClient(create_app(gateway_settings, configure_logs=False)) as client:
        yield client


def test_a_payment_lifecycle_reaches_the_receiver_signed_ordered_and_without_pii(
    pay_client: TestClient,  # type: ignore[type-arg]
    app_billing: Billing,
    fake: Faker,
    card_token: Callable[[str], str],
    webhook_receiver: WebhookReceiver,
) -> None:
    shop = make_tenant(pay_client, app_billing, "Hotel du Lac")
    every_type = [
        "invoice.finalized",
        "invoice.paid",
        "invoice.voided",
        "invoice.uncollectible",
        "payment.succeeded",
        "payment.failed",
        "payment.requires_action",
        "refund.succeeded",
        "dispute.opened",
        "customer.erased",
    ]
    endpoint = register(pay_client, shop, webhook_receiver.url, every_type).json()
    booking = shop.headers("booking")
    person = customer_payload(fake)
    customer = pay_client.post("/v1/customers", json=person, headers=booking).json()

    def open_invoice() -> tuple[str, str]:
        draft = pay_client.post(
            "/v1/invoices", json=invoice_payload(customer["id"], fake), headers=booking
        ).json()
        opened = pay_client.post(f"/v1/invoices/{draft['id']}/finalize", headers=booking).json()
        return opened["id"], draft["booking_ref"]

    # Invoice A: declined, then paid, partly refunded, disputed.
    a, a_ref = open_invoice()
    declined = _save_card(
        pay_client, shop, customer["id"], card_token(TEST_CARDS["declined_on_charge"])
    ).json()
    assert _pay(pay_client, shop, a, declined["id"], "a-1").status_code == 402
    visa = _save_card(pay_client, shop, customer["id"], card_token(TEST_CARDS["visa"])).json()
    paid = _pay(pay_client, shop, a, visa["id"], "a-2").json()
    assert paid["status"] == "succeeded"
    refund = pay_client.post(
        f"/v1/invoices/{a}/refunds", json={"amount": 500}, headers=booking | {"Idempotency-Key": "r1"}
    )
    assert refund.status_code == 201, refund.text
    disputed = _event(
        "charge.dispute.created",
        {
            "id": "dp_lifecycle",
            "object": "dispute",
            "payment_intent": _intent_id(app_billing, paid["payment_id"]),
            "amount": 500,
            "status": "needs_response",
            "reason": "fraudulent",
        },
    )
    assert _deliver(pay_client, disputed).status_code == 202
    # Invoice B: 3-D Secure, completed by the gateway's event.
    b, _ = open_invoice()
    secure = _save_card(pay_client, shop, customer["id"], card_token(TEST_CARDS["three_d_secure"])).json()
    started = _pay(pay_client, shop, b, secure["id"], "b-1").json()
    assert started["status"] == "requires_action" and started["client_secret"]
    intent_id = _intent_id(app_billing, started["payment_id"])
    succeeded = _event(
        "payment_intent.succeeded", {"id": intent_id, "object": "payment_intent", "status": "succeeded"}
    )
    assert _deliver(pay_client, succeeded).status_code == 202
    assert _wait_for_status(pay_client, shop, b, "paid")["status"] == "paid"
    erased = pay_client.post(f"/v1/customers/{customer['id']}/erase", headers=shop.headers("admin"))
    assert erased.status_code == 200, erased.text

    delivery = loopback_delivery(app_billing)
    try:
        while delivery.deliver_due():
            pass
    finally:
        delivery.close()
    received = webhook_receiver.snapshot()
    verifier = Webhook(endpoint["secret"])
    for message in received:
        assert verifier.verify(message.body, message.headers)["id"] == message.id
    assert len({m.id for m in received}) == len(received)

    def types_of(invoice_id: str) -> list[str]:
        return [m.json()["type"] for m in received if m.json()["data"].get("invoice_id") == invoice_id]

    assert types_of(a) == [
        "invoice.finalized",
        "payment.failed",
        "payment.succeeded",
        "invoice.paid",
        "refund.succeeded",
        "dispute.opened",
    ]
    assert types_of(b) == [
        "invoice.finalized",
        "payment.requires_action",
        "payment.succeeded",
        "invoice.paid",
    ]
    erasures = [m.json()["data"] for m in received if m.json()["type"] == "customer.erased"]
    assert [e["customer_id"] for e in erasures] == [customer["id"]]
    paid_data = next(m.json()["data"] for m in received if m.json()["type"] == "payment.succeeded")
    assert (paid_data["payment_id"], paid_data["invoice_id"], paid_data["booking_ref"]) == (
        paid["payment_id"],
        a,
        a_ref,
    )
    pii = [
        person["name"],
        person["email"],
        person["phone"],
        person["address"]["line1"],
        person["address"]["city"],
        person["external_ref"],
        person["notes"],
        started["client_secret"],
    ]
    with app_billing.db.read() as session:
        payloads = [e.payload for e in session.exec(select(EventRecord))]
    for body in [m.body.decode() for m in received] + payloads:
        for value in pii:
            assert value not in body


def test_the_routes_are_documented(client: TestClient) -> None:  # type: ignore[type-arg]
    paths = set(client.get("/schema/openapi.json").json()["paths"])
    assert {
        "/v1/admin/webhook-endpoints",
        "/v1/admin/webhook-endpoints/{endpoint_id}",
        "/v1/admin/webhook-endpoints/{endpoint_id}/rotate-secret",
        "/v1/admin/webhook-endpoints/{endpoint_id}/enable",
        "/v1/events",
        "/v1/events/{event_id}",
        "/v1/events/{event_id}/redeliver",
    } <= paths
