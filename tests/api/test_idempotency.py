"""``Idempotency-Key`` through the API: what a retry gets after the process serving it died.

A process killed with SIGKILL while serving a keyed request leaves its claim ``in_progress`` (no
code of ours runs to complete or release it). The claim is planted here as that process leaves it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from faker import Faker
from litestar.testing import TestClient

from billing import CLAIM_LEASE, Billing, utcnow
from billing._models import IdempotencyRecord

from .conftest import TenantKeys, customer_payload, invoice_payload


def _fingerprint(path: str, body: bytes) -> str:
    return hashlib.sha256(b"\x1f".join([b"POST", path.encode(), body])).hexdigest()


def _plant_claim(billing: Billing, tenant_id: str, key: str, fingerprint: str, *, age: timedelta) -> None:
    """A claim whose holder stopped extending it ``age`` ago (as a killed process would)."""
    last_extended = utcnow() - age
    with billing.db.transaction() as session:
        session.add(
            IdempotencyRecord(
                tenant_id=tenant_id,
                key=key,
                request_fingerprint=fingerprint,
                state="in_progress",
                created_at=last_extended - timedelta(seconds=1),
                expires_at=last_extended + CLAIM_LEASE,
            )
        )


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
    """Create, finalize and void store their answer in their own transaction (encoded there, not
    by the framework): a replay must still be exactly what the first request was answered."""
    headers = tenant.headers("booking")

    def twice(path: str, body: Any, key: str, status: int) -> Any:
        first = client.post(path, json=body, headers=headers | {"Idempotency-Key": key})
        again = client.post(path, json=body, headers=headers | {"Idempotency-Key": key})
        assert first.status_code == again.status_code == status, first.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        assert again.headers["content-type"] == first.headers["content-type"]
        return first.json()

    customer = twice("/v1/customers", customer_payload(fake), "c", 201)
    invoice = twice("/v1/invoices", invoice_payload(customer["id"], fake), "i", 201)
    assert twice(f"/v1/invoices/{invoice['id']}/finalize", None, "f", 200)["number"]
    assert twice(f"/v1/invoices/{invoice['id']}/void", None, "v", 200)["status"] == "void"
