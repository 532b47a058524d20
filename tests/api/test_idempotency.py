"""``Idempotency-Key`` through the API: what a retry gets after the process serving it died.

A process killed with SIGKILL while serving a keyed request leaves its claim ``in_progress`` (no
code of ours runs to complete or release it). The claim is planted here as that process leaves it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import update
from sqlmodel import col, func, select

from api.app import create_app
from api.controllers.admin import ROTATION_BATCHES_PER_REQUEST
from api.settings import Settings
from billing import CLAIM_LEASE, Actor, Billing, DestinationPolicy, IdempotencyStore, RotationProgress, utcnow
from billing._event_models import WebhookEndpoint
from billing._models import ApiKey, AuditEvent, IdempotencyRecord, PaymentSession

from ..billing.test_rotation import versions_on_file
from ..conftest import WebhookReceiver
from .conftest import TenantKeys, customer_payload, invoice_payload, make_tenant
from .test_events import loopback_delivery


def _fingerprint(path: str, body: bytes) -> str:
    return hashlib.sha256(b"\x1f".join([b"POST", path.encode(), body])).hexdigest()


def _plant_claim(billing: Billing, tenant_id: str, key: str, fingerprint: str, *, age: timedelta) -> None:
    """A claim whose holder stopped extending it ``age`` ago (as a killed process would): taken by
    another process's store whose clock is ``age`` behind, which then never completes it."""
    killed = IdempotencyStore(billing.db, billing.keyring, clock=lambda: utcnow() - age, lease=CLAIM_LEASE)
    assert killed.begin(tenant_id, key, fingerprint) is None


def _post(client: TestClient[Any], tenant: TenantKeys, body: bytes, key: str) -> Any:
    headers = tenant.headers("booking") | {"Idempotency-Key": key, "Content-Type": "application/json"}
    return client.post("/v1/customers", content=body, headers=headers)


def test_a_retry_after_the_process_holding_its_key_was_killed_runs_once_the_lease_is_over(
    client: TestClient[Any], tenant: TenantKeys, app_billing: Billing, fake: Faker
) -> None:
    body = json.dumps(customer_payload(fake)).encode()
    fingerprint = _fingerprint("/v1/customers", body)
    _plant_claim(app_billing, tenant.tenant_id, "killed-mid-request", fingerprint, age=CLAIM_LEASE * 2)

    retried = _post(client, tenant, body, "killed-mid-request")
    assert retried.status_code == 201, retried.text
    replay = _post(client, tenant, body, "killed-mid-request")
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == retried.json()
    reused = _post(client, tenant, json.dumps(customer_payload(fake)).encode(), "killed-mid-request")
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"


def test_a_claim_still_within_its_lease_is_in_progress(
    client: TestClient[Any], tenant: TenantKeys, app_billing: Billing, fake: Faker
) -> None:
    body = json.dumps(customer_payload(fake)).encode()
    fingerprint = _fingerprint("/v1/customers", body)
    _plant_claim(app_billing, tenant.tenant_id, "still-running", fingerprint, age=CLAIM_LEASE / 2)

    busy = _post(client, tenant, body, "still-running")
    assert busy.status_code == 409 and busy.json()["code"] == "idempotency_in_progress"


def test_an_abandoned_claim_is_not_taken_over_by_another_request(
    client: TestClient[Any], tenant: TenantKeys, app_billing: Billing, fake: Faker
) -> None:
    body = json.dumps(customer_payload(fake)).encode()
    _plant_claim(
        app_billing, tenant.tenant_id, "abandoned", _fingerprint("/v1/customers", body), age=CLAIM_LEASE * 2
    )
    other = _post(client, tenant, json.dumps(customer_payload(fake)).encode(), "abandoned")
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


def test_answers_stored_with_their_change_replay_byte_for_byte(
    client: TestClient[Any], tenant: TenantKeys, fake: Faker
) -> None:
    """Create, finalize, void, issuing a key, a payment link, a redelivery and a retention run store
    their answer in their own transaction (encoded there, not by the framework): a replay must
    still be exactly what the first request was answered."""

    def twice(path: str, body: Any, key: str, status: int, role: str = "booking") -> Any:
        sent = tenant.headers(role) | {"Idempotency-Key": key}
        first = client.post(path, json=body, headers=sent)
        again = client.post(path, json=body, headers=sent)
        assert first.status_code == again.status_code == status, first.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        assert again.headers["content-type"] == first.headers["content-type"]
        return first.json()

    customer = twice("/v1/customers", customer_payload(fake), "c", 201)
    invoice = twice("/v1/invoices", invoice_payload(customer["id"], fake), "i", 201)
    assert twice(f"/v1/invoices/{invoice['id']}/finalize", None, "f", 200)["number"]
    assert twice(f"/v1/invoices/{invoice['id']}/payment-sessions", None, "p", 201)["url"]
    assert twice(f"/v1/invoices/{invoice['id']}/void", None, "v", 200)["status"] == "void"
    assert twice("/v1/admin/api-keys", {"role": "auditor", "name": "audit"}, "k", 201, "admin")["key"]
    event = client.get("/v1/events", headers=tenant.headers("admin")).json()["data"][0]
    assert twice(f"/v1/events/{event['id']}/redeliver", None, "e", 202, "admin")["id"] == event["id"]
    assert twice("/v1/admin/retention/run", {"dry_run": False}, "r", 200, "admin")["dry_run"] is False


def test_endpoint_answers_stored_with_their_change_replay_byte_for_byte(
    loopback_client: TestClient[Any], app_billing: Billing
) -> None:
    tenant = make_tenant(loopback_client, app_billing, "Salon Rivoli")
    headers = tenant.headers("admin")
    endpoint = {"url": "http://127.0.0.1:9/hook", "event_types": ["invoice.paid"]}
    for template, body, status in [
        ("/v1/admin/webhook-endpoints", endpoint, 201),
        ("/v1/admin/webhook-endpoints/{}/rotate-secret", {"overlap_hours": 1}, 200),
    ]:
        created = app_billing.events.list_endpoints(Actor(tenant_id=tenant.tenant_id, role="admin"))
        path = template.format(created[0].id if created else "")
        first = loopback_client.post(path, json=body, headers=headers | {"Idempotency-Key": path})
        again = loopback_client.post(path, json=body, headers=headers | {"Idempotency-Key": path})
        assert first.status_code == again.status_code == status, first.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content and first.json()["secret"]


# --- a change committed, then SIGKILL before the answer was stored --------------------------------


@pytest.fixture
def loopback_client(settings: Settings) -> Iterator[TestClient[Any]]:
    """The app with loopback webhook receivers allowed (the development setting)."""
    app = create_app(replace(settings, webhooks_allow_private=True), configure_logs=False)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def died(settings: Settings, app_billing: Billing) -> Billing:
    """The billing of the service process that dies: same database, keyring and destinations."""
    return Billing(
        db=app_billing.db,
        keyring=app_billing.keyring,
        webhook_destinations=DestinationPolicy(allow_private=True),
    )


def _count(billing: Billing, model: Any, *where: Any) -> int:
    with billing.db.read() as session:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def _killed_after_the_change(
    died: Billing, tenant_id: str, key: str, path: str, body: bytes, status: int, change: Callable[[], Any]
) -> Any:
    """Serve a keyed request the way the middleware does — claim, bind, run — and die before
    ``complete``: the claim is left ``in_progress`` and its lease runs out (nobody extends it).

    The claim is live while the change runs, as its process's keeper keeps it: a change that
    purges expired records (retention) must not find its own claim among them."""
    _plant_claim(died, tenant_id, key, _fingerprint(path, body), age=timedelta(0))
    with died.idempotency.bound(tenant_id, key, status):
        answer = change()
    with died.db.transaction() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(
                col(IdempotencyRecord.tenant_id) == tenant_id,
                col(IdempotencyRecord.key) == key,
                col(IdempotencyRecord.state) == "in_progress",
            )
            .values(expires_at=utcnow() - CLAIM_LEASE)
        )
    return answer


def _assert_replayed(retried: Any, status: int, answer: object) -> None:
    """The retry got the first attempt's answer, as stored with its change, byte for byte."""
    assert retried.status_code == status, retried.text
    assert retried.headers.get("idempotent-replayed") == "true", "the answer was stored with the key"
    assert retried.content == msgspec.json.encode(answer)


def _retried(client: TestClient[Any], path: str, body: bytes, key: str, headers: dict[str, str]) -> Any:
    sent = headers | {"Idempotency-Key": key, "Content-Type": "application/json"}
    return client.post(path, content=body, headers=sent)


def test_an_api_key_issued_just_before_a_kill_is_answered_again_not_issued_twice(
    client: TestClient[Any], tenant: TenantKeys, died: Billing
) -> None:
    """The first key's secret was never delivered; a second key would leave it valid until revoked."""
    path, body = "/v1/admin/api-keys", json.dumps({"role": "booking", "name": "front desk"}).encode()
    before = _count(died, ApiKey, ApiKey.tenant_id == tenant.tenant_id)
    admin = Actor(tenant_id=tenant.tenant_id, role="admin")
    issued = _killed_after_the_change(
        died,
        tenant.tenant_id,
        "issue-then-crash",
        path,
        body,
        201,
        lambda: died.tenants.issue_api_key(admin, role="booking", name="front desk"),
    )

    retried = _retried(client, path, body, "issue-then-crash", tenant.headers("admin"))
    _assert_replayed(retried, 201, issued.view())
    assert _count(died, ApiKey, ApiKey.tenant_id == tenant.tenant_id) == before + 1
    assert died.tenants.authenticate(retried.json()["key"]).key_id == issued.id, "the key issued"


def test_a_payment_session_created_just_before_a_kill_is_answered_again_not_created_twice(
    client: TestClient[Any], tenant: TenantKeys, died: Billing, settings: Settings, fake: Faker
) -> None:
    headers = tenant.headers("booking")
    customer = client.post("/v1/customers", json=customer_payload(fake), headers=headers).json()
    draft = client.post("/v1/invoices", json=invoice_payload(customer["id"], fake), headers=headers).json()
    assert client.post(f"/v1/invoices/{draft['id']}/finalize", headers=headers).status_code == 200
    path, body = f"/v1/invoices/{draft['id']}/payment-sessions", b""
    booking = Actor(tenant_id=tenant.tenant_id, role="booking")
    issued = _killed_after_the_change(
        died,
        tenant.tenant_id,
        "link-then-crash",
        path,
        body,
        201,
        lambda: died.sessions.create(booking, draft["id"], base_url=settings.public_url),
    )

    retried = _retried(client, path, body, "link-then-crash", headers)
    _assert_replayed(retried, 201, issued)
    assert _count(died, PaymentSession, PaymentSession.invoice_id == draft["id"]) == 1
    page = client.get(f"/pay/{retried.json()['url'].rsplit('/', 1)[1]}")
    assert page.status_code == 200, "the answered link is the one created"


def test_a_webhook_endpoint_registered_just_before_a_kill_is_answered_again_not_registered_twice(
    loopback_client: TestClient[Any], died: Billing
) -> None:
    tenant = make_tenant(loopback_client, died, "Salon Rivoli")
    path = "/v1/admin/webhook-endpoints"
    body = json.dumps({"url": "http://127.0.0.1:9/hook", "event_types": ["invoice.paid"]}).encode()
    admin = Actor(tenant_id=tenant.tenant_id, role="admin")
    registered = _killed_after_the_change(
        died,
        tenant.tenant_id,
        "register-then-crash",
        path,
        body,
        201,
        lambda: died.events.create_endpoint(admin, "http://127.0.0.1:9/hook", ["invoice.paid"]),
    )

    retried = _retried(loopback_client, path, body, "register-then-crash", tenant.headers("admin"))
    _assert_replayed(retried, 201, registered)
    assert retried.json()["secret"] == registered.secret, "the secret the endpoint signs with"
    assert _count(died, WebhookEndpoint, WebhookEndpoint.tenant_id == tenant.tenant_id) == 1


def test_a_secret_rotated_just_before_a_kill_is_answered_again_not_rotated_twice(
    loopback_client: TestClient[Any], died: Billing
) -> None:
    """Rotating twice would make the undelivered secret the previous one, and drop at once the
    secret the receiver still verifies with."""
    tenant = make_tenant(loopback_client, died, "Salon Rivoli")
    created = loopback_client.post(
        "/v1/admin/webhook-endpoints",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["invoice.paid"]},
        headers=tenant.headers("admin"),
    ).json()
    path = f"/v1/admin/webhook-endpoints/{created['id']}/rotate-secret"
    body = json.dumps({"overlap_hours": 24}).encode()
    admin = Actor(tenant_id=tenant.tenant_id, role="admin")
    rotated = _killed_after_the_change(
        died,
        tenant.tenant_id,
        "rotate-then-crash",
        path,
        body,
        200,
        lambda: died.events.rotate_secret(admin, created["id"], timedelta(hours=24)),
    )

    retried = _retried(loopback_client, path, body, "rotate-then-crash", tenant.headers("admin"))
    _assert_replayed(retried, 200, rotated)
    assert rotated.secret != created["secret"]
    rotations = _count(
        died,
        AuditEvent,
        AuditEvent.resource_id == created["id"],
        AuditEvent.action == "webhook_endpoint.secret_rotated",
    )
    assert rotations == 1


def test_an_event_redelivered_just_before_a_kill_is_answered_again_not_queued_twice(
    loopback_client: TestClient[Any],
    died: Billing,
    fake: Faker,
    webhook_receiver: WebhookReceiver,
) -> None:
    """A second run would queue the event once more after the worker had sent the first
    redelivery: the receiver would get it a third time."""
    tenant = make_tenant(loopback_client, died, "Salon Rivoli")
    admin_headers, booking = tenant.headers("admin"), tenant.headers("booking")
    loopback_client.post(
        "/v1/admin/webhook-endpoints",
        json={"url": webhook_receiver.url, "event_types": ["invoice.finalized"]},
        headers=admin_headers,
    )
    customer = loopback_client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()
    draft = loopback_client.post(
        "/v1/invoices", json=invoice_payload(customer["id"], fake), headers=booking
    ).json()
    assert loopback_client.post(f"/v1/invoices/{draft['id']}/finalize", headers=booking).status_code == 200
    (event,) = loopback_client.get("/v1/events", headers=admin_headers).json()["data"]
    delivery = loopback_delivery(died)
    try:
        assert delivery.deliver_due() == 1, "the event's own delivery"
        path, body = f"/v1/events/{event['id']}/redeliver", b""
        admin = Actor(tenant_id=tenant.tenant_id, role="admin")
        redelivered = _killed_after_the_change(
            died,
            tenant.tenant_id,
            "redeliver-then-crash",
            path,
            body,
            202,
            lambda: died.events.redeliver(admin, event["id"]),
        )
        assert delivery.deliver_due() == 1, "the worker sends the redelivery before the retry"

        retried = _retried(loopback_client, path, body, "redeliver-then-crash", admin_headers)
        _assert_replayed(retried, 202, redelivered)
        assert delivery.deliver_due() == 0, "nothing queued again"
    finally:
        delivery.close()
    assert [received.id for received in webhook_receiver.snapshot()] == [event["id"]] * 2
    redeliveries = _count(
        died, AuditEvent, AuditEvent.resource_id == event["id"], AuditEvent.action == "event.redelivered"
    )
    assert redeliveries == 1


def test_a_retention_run_just_before_a_kill_is_answered_again_not_run_twice(
    client: TestClient[Any], tenant: TenantKeys, died: Billing
) -> None:
    """A second run finds nothing more due and would answer that, not what the first run did."""
    for stale in ("stale-1", "stale-2"):  # past their 24 hours: due for purging
        _plant_claim(died, tenant.tenant_id, stale, _fingerprint(stale, b""), age=timedelta(days=2))
    path, body = "/v1/admin/retention/run", json.dumps({"dry_run": False}).encode()
    admin = Actor(tenant_id=tenant.tenant_id, role="admin")
    ran = _killed_after_the_change(
        died,
        tenant.tenant_id,
        "retention-then-crash",
        path,
        body,
        200,
        lambda: died.retention.run(dry_run=False, tenant_id=tenant.tenant_id, actor=admin),
    )
    assert ran.idempotency_records_purged == 2

    retried = _retried(client, path, body, "retention-then-crash", tenant.headers("admin"))
    _assert_replayed(retried, 200, ran)
    assert retried.json()["idempotency_records_purged"] == 2
    assert _count(died, IdempotencyRecord, col(IdempotencyRecord.key).in_(["stale-1", "stale-2"])) == 0


@pytest.fixture
def rotating_client(settings: Settings) -> Iterator[TestClient[Any]]:
    """The app of a deployment serving one business: its admin may rotate the master keys."""
    app = create_app(replace(settings, tenant_admin_master_key_rotation=True), configure_logs=False)
    with TestClient(app) as client:
        yield client


def test_a_master_key_rotation_finished_just_before_a_kill_is_answered_again_not_run_twice(
    rotating_client: TestClient[Any], died: Billing, keyring_path: Path
) -> None:
    """With nothing left to resume, a second run would add another master key version."""
    tenant = make_tenant(rotating_client, died, "Salon Rivoli")
    path, body, key = "/v1/admin/keys/rotate", b"", "rotate-keys-then-crash"
    admin = Actor(tenant_id=tenant.tenant_id, role="admin")
    rotated = _killed_after_the_change(
        died,
        tenant.tenant_id,
        key,
        path,
        body,
        200,
        lambda: died.rotation.rotate_master_key(
            max_batches=ROTATION_BATCHES_PER_REQUEST, actor=admin, idempotency_key=key
        ),
    )
    assert rotated.complete and rotated.to_version == "mk_0002"

    retried = _retried(rotating_client, path, body, key, tenant.headers("admin"))
    _assert_replayed(retried, 200, rotated.view())
    assert versions_on_file(keyring_path) == ["mk_0001", "mk_0002"]
    assert _count(died, AuditEvent, AuditEvent.action == "keys.master_key_added") == 1


class _Killed(Exception):
    """The process dies here: nothing after this point runs."""


def _dies(_: RotationProgress) -> None:
    raise _Killed


def test_a_master_key_rotation_killed_before_its_last_transaction_is_finished_not_started_again(
    rotating_client: TestClient[Any], died: Billing, keyring_path: Path
) -> None:
    """The version was added and every data key re-wrapped under it (one batch), then the process
    died before the rotation's last transaction, which stores the answer. Nothing is left to
    resume, so the retry used to add yet another version; it now finds the version its request
    added, by the request's key recorded with it, and answers what the first attempt would have:
    not replayed, but equal."""
    tenant = make_tenant(rotating_client, died, "Salon Rivoli")
    path, body, key = "/v1/admin/keys/rotate", b"", "rotate-keys-killed"
    admin = Actor(tenant_id=tenant.tenant_id, role="admin")

    def rotate_until_killed() -> None:
        with pytest.raises(_Killed):
            died.rotation.rotate_master_key(on_batch=_dies, actor=admin, idempotency_key=key)

    _killed_after_the_change(died, tenant.tenant_id, key, path, body, 200, rotate_until_killed)
    assert not died.rotation.key_status().rotation_in_progress, "every data key was re-wrapped"

    retried = _retried(rotating_client, path, body, key, tenant.headers("admin"))
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers, "finished by the retry, not replayed"
    first = {"to_version": "mk_0002", "from_versions": ["mk_0001"], "resumed": False, "complete": True}
    assert retried.json() == first
    assert versions_on_file(keyring_path) == ["mk_0001", "mk_0002"]
    assert _count(died, AuditEvent, AuditEvent.action == "keys.master_key_added") == 1
    another = _retried(rotating_client, path, body, "the-next-rotation", tenant.headers("admin"))
    assert another.json()["to_version"] == "mk_0003", "another key is another rotation"
