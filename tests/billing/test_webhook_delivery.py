"""Delivering events to a real HTTP receiver on loopback: signatures verified by the reference
``standardwebhooks`` library, retries with backoff, order per invoice, leases, disabling, no stored
responses, no redirects, timeouts, and the address check at delivery. Both databases."""

from __future__ import annotations

import itertools
import json
import random
import ssl
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faker import Faker
from sqlalchemy import text
from sqlmodel import select
from standardwebhooks import Webhook

from billing import (
    Actor,
    AttemptOutcome,
    Billing,
    Database,
    DatabaseConfig,
    DestinationPolicy,
    EndpointView,
    EventDelivery,
    EventRecord,
    Keyring,
    RetryPolicy,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookSender,
    sign,
    utcnow,
)
from billing._webhook_signing import SigningSecret

from ..conftest import WebhookReceiver
from .test_events import make_invoice

ALL_TYPES = [
    "invoice.finalized",
    "invoice.paid",
    "invoice.voided",
    "invoice.uncollectible",
    "customer.erased",
]


class Clock:
    """A clock tests move forward; it starts at the real time so receivers' replay checks pass."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class CrashingSender(WebhookSender):
    """Fault injection: the process 'dies' after the claim, before the receiver answers."""

    def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptOutcome:
        raise RuntimeError("process died mid-send")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def loopback() -> DestinationPolicy:
    return DestinationPolicy(allow_private=True)


@pytest.fixture
def events_billing(
    database: Database, keyring: Keyring, clock: Clock, loopback: DestinationPolicy
) -> Billing:
    return Billing(db=database, keyring=keyring, clock=clock, webhook_destinations=loopback)


@pytest.fixture
def admin(events_billing: Billing) -> Actor:
    issued = events_billing.tenants.create_tenant("Salon Rivoli")
    return Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)


@pytest.fixture
def deliverer(events_billing: Billing, clock: Clock, loopback: DestinationPolicy) -> WebhookDelivery:
    return WebhookDelivery(
        events_billing.db,
        events_billing.keyring,
        WebhookSender(loopback, timeout=2.0),
        clock=clock,
        jitter_rng=random.Random(7).random,
    )


def subscribe(billing: Billing, admin: Actor, receiver: WebhookReceiver) -> EndpointView:
    return billing.events.create_endpoint(admin, receiver.url, ALL_TYPES)


def drain(deliverer: WebhookDelivery) -> int:
    total = 0
    while sent := deliverer.deliver_due():
        total += sent
    return total


def deliveries(billing: Billing) -> list[EventDelivery]:
    with billing.db.read() as session:
        return list(session.exec(select(EventDelivery).order_by(EventDelivery.event_seq)))  # type: ignore[arg-type]


def endpoint_row(billing: Billing, endpoint_id: str) -> WebhookEndpoint:
    with billing.db.read() as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row


def test_every_delivery_verifies_with_the_reference_library(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    endpoint = subscribe(events_billing, admin, webhook_receiver)
    assert endpoint.secret is not None
    first, second = make_invoice(events_billing, admin, fake), make_invoice(events_billing, admin, fake)
    events_billing.invoices.finalize(admin, first)
    events_billing.invoices.finalize(admin, second)
    events_billing.invoices.void(admin, second)
    assert drain(deliverer) == 3
    received = webhook_receiver.snapshot()
    verifier = Webhook(endpoint.secret)
    for delivery in received:
        payload = verifier.verify(delivery.body, delivery.headers)
        assert payload["id"] == delivery.id
        assert delivery.headers["content-type"] == "application/json"
    assert [r.json()["type"] for r in received] == [
        "invoice.finalized",
        "invoice.finalized",
        "invoice.voided",
    ]
    rows = deliveries(events_billing)
    assert {(d.status, d.attempts, d.last_status_code) for d in rows} == {("delivered", 1, 200)}
    assert drain(deliverer) == 0  # nothing is sent twice


def test_a_failing_receiver_gets_every_event_in_order_per_invoice_once_it_recovers(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    clock: Clock,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    subscribe(events_billing, admin, webhook_receiver)
    a, b = make_invoice(events_billing, admin, fake), make_invoice(events_billing, admin, fake)
    events_billing.invoices.finalize(admin, a)
    events_billing.invoices.finalize(admin, b)
    events_billing.invoices.mark_uncollectible(admin, a)
    events_billing.invoices.void(admin, a)
    events_billing.invoices.void(admin, b)
    webhook_receiver.status = 503
    assert deliverer.deliver_due() == 2  # one head per invoice; later events of each wait
    for _ in range(6):
        clock.advance(timedelta(hours=1))
        drain(deliverer)
    assert webhook_receiver.snapshot() == []
    heads = [d for d in deliveries(events_billing) if d.attempts]
    assert len(heads) == 2 and all(d.last_status_code == 503 and d.last_error == "http_status" for d in heads)
    assert all(d.attempts == 0 for d in deliveries(events_billing) if d not in heads)
    webhook_receiver.status = 200
    for _ in range(10):
        clock.advance(timedelta(hours=13))
        drain(deliverer)
    received = webhook_receiver.snapshot()
    ids = [r.id for r in received]
    assert len(ids) == len(set(ids)) == 5
    with events_billing.db.read() as session:
        expected = {
            key: [
                e.id
                for e in session.exec(
                    select(EventRecord).where(EventRecord.ordering_key == key).order_by(EventRecord.seq)
                )
            ]  # type: ignore[arg-type]
            for key in (a, b)
        }
    for key in (a, b):
        assert [r.id for r in received if r.json()["data"]["invoice_id"] == key] == expected[key]
    assert {d.status for d in deliveries(events_billing)} == {"delivered"}


def test_backoff_grows_with_jitter_for_three_days_then_the_delivery_fails_and_the_endpoint_is_disabled(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    clock: Clock,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    endpoint = subscribe(events_billing, admin, webhook_receiver)
    webhook_receiver.status = 500
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    start = clock.now
    attempts: list[datetime] = []
    while True:
        attempts.append(clock.now)
        assert deliverer.deliver_due() == 1
        (row,) = deliveries(events_billing)
        if row.status != "pending":
            break
        clock.now = row.next_attempt_at
    assert row.status == "failed" and row.attempts == len(attempts)
    assert clock.now - start >= timedelta(days=3)
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(attempts)]
    assert 5 <= gaps[0] <= 6 and 15 <= gaps[1] <= 18 and 45 <= gaps[2] <= 54
    assert all(gap <= 12 * 3600 * 1.2 for gap in gaps)
    assert gaps[:8] == sorted(gaps[:8])
    disabled = endpoint_row(events_billing, endpoint.id)
    assert disabled.status == "disabled" and disabled.disabled_reason == "failing"
    # While disabled, new events wait; enabling resumes them.
    webhook_receiver.status = 200
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    assert drain(deliverer) == 0
    events_billing.events.enable_endpoint(admin, endpoint.id)
    assert drain(deliverer) == 1 and len(webhook_receiver.snapshot()) == 1


def test_the_retry_policy_schedule() -> None:
    policy = RetryPolicy()
    low = [policy.delay(n, lambda: 0.0).total_seconds() for n in range(1, 12)]
    high = [policy.delay(n, lambda: 0.999).total_seconds() for n in range(1, 12)]
    assert low[:5] == [5, 15, 45, 135, 405]
    assert low[-1] == 12 * 3600
    assert all(h > lo and h < lo * 1.2 + 1e-6 for lo, h in zip(low, high, strict=True))
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(first_delay=timedelta(0))


def test_redelivery_sends_the_same_id_again(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    subscribe(events_billing, admin, webhook_receiver)
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    drain(deliverer)
    (event,) = events_billing.events.list_events(admin).data
    again = events_billing.events.redeliver(admin, event.id)
    assert again.deliveries and again.deliveries[0].status == "pending"
    drain(deliverer)
    assert [r.id for r in webhook_receiver.snapshot()] == [event.id, event.id]


def test_rotation_signs_with_both_secrets_during_the_overlap(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    clock: Clock,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    created = subscribe(events_billing, admin, webhook_receiver)
    rotated = events_billing.events.rotate_secret(admin, created.id, timedelta(hours=1))
    assert created.secret and rotated.secret
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    drain(deliverer)
    (during,) = webhook_receiver.snapshot()
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (created.secret, rotated.secret):
        Webhook(secret).verify(during.body, during.headers)
    clock.advance(timedelta(hours=2))
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    drain(deliverer)
    after = webhook_receiver.snapshot()[1]
    timestamp = int(after.headers["webhook-timestamp"])
    assert after.headers["webhook-signature"] == sign(
        SigningSecret(rotated.secret), after.id, timestamp, after.body
    )


def test_response_bodies_are_not_stored_and_redirects_are_not_followed(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    elsewhere = WebhookReceiver().start()
    try:
        subscribe(events_billing, admin, webhook_receiver)
        webhook_receiver.status = 302
        webhook_receiver.location = elsewhere.url
        webhook_receiver.response_body = b"SECRET-RESPONSE-MARKER " * 10_000
        events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
        assert drain(deliverer) == 1
        assert elsewhere.snapshot() == []
    finally:
        elsewhere.stop()
    (row,) = deliveries(events_billing)
    assert (row.status, row.last_status_code, row.last_error) == ("pending", 302, "http_status")
    with events_billing.db.engine.connect() as connection:
        for table in ("event_deliveries", "events", "webhook_endpoints"):
            dump = str(connection.execute(text(f"SELECT * FROM {table}")).fetchall())  # noqa: S608 - fixed names
            assert "SECRET-RESPONSE-MARKER" not in dump


def test_a_slow_receiver_times_out(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    clock: Clock,
    loopback: DestinationPolicy,
    webhook_receiver: WebhookReceiver,
) -> None:
    subscribe(events_billing, admin, webhook_receiver)
    webhook_receiver.delay = 1.5
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    impatient = WebhookDelivery(
        events_billing.db, events_billing.keyring, WebhookSender(loopback, timeout=0.5), clock=clock
    )
    assert impatient.deliver_due() == 1
    (row,) = deliveries(events_billing)
    assert (row.status, row.last_error, row.last_status_code) == ("pending", "timeout", None)


def test_the_address_is_checked_again_at_delivery(
    events_billing: Billing, admin: Actor, fake: Faker, clock: Clock, webhook_receiver: WebhookReceiver
) -> None:
    subscribe(events_billing, admin, webhook_receiver)  # registered while loopback was allowed
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    strict = WebhookDelivery(
        events_billing.db, events_billing.keyring, WebhookSender(DestinationPolicy()), clock=clock
    )
    assert strict.deliver_due() == 1
    (row,) = deliveries(events_billing)
    assert (row.status, row.last_error) == ("pending", "address_refused")
    assert webhook_receiver.snapshot() == []


def test_a_crash_mid_send_is_retried_after_the_lease_with_the_same_id(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    clock: Clock,
    loopback: DestinationPolicy,
    deliverer: WebhookDelivery,
    webhook_receiver: WebhookReceiver,
) -> None:
    subscribe(events_billing, admin, webhook_receiver)
    events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    crashing = WebhookDelivery(
        events_billing.db, events_billing.keyring, CrashingSender(loopback), clock=clock
    )
    with pytest.raises(RuntimeError, match="died"):
        crashing.deliver_due()
    assert deliverer.deliver_due() == 0  # leased to the crashed worker
    clock.advance(RetryPolicy().lease + timedelta(seconds=1))
    assert drain(deliverer) == 1
    (received,) = webhook_receiver.snapshot()
    (event,) = events_billing.events.list_events(admin).data
    assert received.id == event.id


def test_concurrent_workers_send_each_delivery_once(
    events_billing: Billing,
    admin: Actor,
    fake: Faker,
    clock: Clock,
    database_url: str,
    loopback: DestinationPolicy,
    webhook_receiver: WebhookReceiver,
) -> None:
    subscribe(events_billing, admin, webhook_receiver)
    for _ in range(12):
        events_billing.invoices.finalize(admin, make_invoice(events_billing, admin, fake))
    workers = []
    for _ in range(3):
        db = Database(DatabaseConfig(database_url))
        workers.append(
            (db, WebhookDelivery(db, events_billing.keyring, WebhookSender(loopback), clock=clock))
        )
    barrier = threading.Barrier(len(workers))

    def work(deliverer: WebhookDelivery) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            for _ in range(20):
                deliverer.deliver_due(limit=2)

        return run

    threads = [threading.Thread(target=work(d)) for _, d in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for db, _ in workers:
        db.dispose()
    ids = [r.id for r in webhook_receiver.snapshot()]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert {(d.status, d.attempts) for d in deliveries(events_billing)} == {("delivered", 1)}
    assert json.loads(webhook_receiver.snapshot()[0].body)["type"] == "invoice.finalized"


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    """A TLS receiver named ``hooks.example.test`` on loopback: the sender connects to the address
    the policy checked, sends the name as SNI and Host, and verifies the certificate against it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    seen_sni: list[str | None] = []

    def remember_sni(sock: ssl.SSLObject, sni: str | None, context: ssl.SSLContext) -> None:
        seen_sni.append(sni)

    server_context.sni_callback = remember_sni
    webhook_receiver.wrap_tls(server_context)
    trust = ssl.create_default_context(cafile=str(cert_path))

    def pinned(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "hooks.example.test" else []

    policy = DestinationPolicy(allow_private=True, resolver=pinned)
    url = f"https://hooks.example.test:{webhook_receiver.port}/hooks"
    outcome = WebhookSender(policy, verify=trust).send(url, {"webhook-id": "evt_tls"}, b"{}")
    assert outcome.delivered, outcome
    (received,) = webhook_receiver.snapshot()
    assert received.headers["host"] == f"hooks.example.test:{webhook_receiver.port}"
    assert seen_sni == ["hooks.example.test"]
    wrong_name = WebhookSender(
        DestinationPolicy(allow_private=True, resolver=lambda host, port: ["127.0.0.1"]), verify=trust
    ).send(f"https://other.example.test:{webhook_receiver.port}/hooks", {}, b"{}")
    assert (wrong_name.delivered, wrong_name.error) == (False, "connection")
