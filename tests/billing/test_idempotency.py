"""Idempotency claims on both databases: replays, reuse, and claims left by a process that died.

Two stores on one database stand for two service processes; a claim "left by a killed process" is
one whose holder simply stops extending it, and whose request's answer is never completed (a
SIGKILL runs no code of ours); time is moved by the stores' clocks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec
import pytest
from faker import Faker
from sqlmodel import func, select

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    IdempotencyStore,
    InvoiceInput,
    InvoiceLineInput,
    Keyring,
    utcnow,
)
from billing._models import Customer, IdempotencyRecord
from billing.errors import IdempotencyInProgress, IdempotencyKeyReused, ValidationFailed

from ..conftest import FIXED_NOW

LEASE = timedelta(seconds=10)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def tenant_id(billing: Billing) -> str:
    return billing.tenants.create_tenant("Salon Rivoli").tenant_id


@pytest.fixture
def clock() -> Clock:
    return Clock(FIXED_NOW)


@pytest.fixture
def process(billing: Billing, clock: Clock) -> Callable[[], IdempotencyStore]:
    """A new service process's store on the shared database and clock."""

    def start() -> IdempotencyStore:
        return IdempotencyStore(billing.db, billing.keyring, clock=clock, lease=LEASE)

    return start


def test_a_finished_request_is_replayed_and_its_key_cannot_be_reused(
    process: Callable[[], IdempotencyStore], tenant_id: str
) -> None:
    store = process()
    assert store.begin(tenant_id, "k1", "fp-a") is None
    store.complete(tenant_id, "k1", 201, b'{"id": "cus_1"}')
    replay = process().begin(tenant_id, "k1", "fp-a")
    assert replay is not None and (replay.status, replay.body) == (201, b'{"id": "cus_1"}')
    with pytest.raises(IdempotencyKeyReused):
        process().begin(tenant_id, "k1", "fp-b")


def test_the_stored_fingerprint_is_keyed_per_tenant(
    billing: Billing, process: Callable[[], IdempotencyStore], tenant_id: str
) -> None:
    """What the table keeps of a request is an HMAC under a key derived from the tenant's
    ``idempotency`` key: not the digest the API passes (an unkeyed hash of a body with PII would
    confirm guesses of it), and not the same for the same request in another tenant."""
    other = billing.tenants.create_tenant("Salon Opéra").tenant_id
    request = hashlib.sha256(b'POST\x1f/v1/customers\x1f{"name": "A"}').hexdigest()
    for tenant in (tenant_id, other):
        assert process().begin(tenant, "k1", request) is None
    with billing.db.read() as session:
        stored = session.exec(
            select(IdempotencyRecord.tenant_id, IdempotencyRecord.request_fingerprint)
        ).all()
    fingerprints = dict(stored)
    assert set(fingerprints) == {tenant_id, other}
    assert all(len(f) == 64 and f != request for f in fingerprints.values())
    assert fingerprints[tenant_id] != fingerprints[other]
    with pytest.raises(IdempotencyInProgress):  # the same request still finds its claim
        process().begin(tenant_id, "k1", request)


def test_a_claim_left_by_a_killed_process_is_taken_over_once_its_lease_runs_out(
    process: Callable[[], IdempotencyStore], tenant_id: str, clock: Clock
) -> None:
    killed = process()
    assert killed.begin(tenant_id, "pay-1", "fp") is None  # then SIGKILL: no complete, no release
    restarted = process()
    clock.now += LEASE - timedelta(seconds=1)
    with pytest.raises(IdempotencyInProgress):
        restarted.begin(tenant_id, "pay-1", "fp")
    clock.now += timedelta(seconds=2)
    with pytest.raises(IdempotencyKeyReused):
        restarted.begin(tenant_id, "pay-1", "another request")
    assert restarted.begin(tenant_id, "pay-1", "fp") is None, "the retry takes the claim over"
    with pytest.raises(IdempotencyInProgress):
        process().begin(tenant_id, "pay-1", "fp")  # and holds it like any claim
    restarted.complete(tenant_id, "pay-1", 200, b"{}")
    clock.now += timedelta(hours=23)
    replay = process().begin(tenant_id, "pay-1", "fp")
    assert replay is not None and replay.status == 200, "a completed claim keeps the 24-hour window"


def test_a_live_request_keeps_its_claim_by_extending_it(
    process: Callable[[], IdempotencyStore], tenant_id: str, clock: Clock
) -> None:
    slow = process()
    assert slow.begin(tenant_id, "refund-1", "fp") is None
    other = process()
    for _ in range(5):  # a request running five leases long, extended as its keeper would
        clock.now += LEASE * 0.75
        assert slow.extend_claims() == 1
        with pytest.raises(IdempotencyInProgress):
            other.begin(tenant_id, "refund-1", "fp")
    slow.complete(tenant_id, "refund-1", 201, b"{}")
    assert slow.extend_claims() == 0, "a completed claim is no longer held"
    assert other.begin(tenant_id, "refund-1", "fp") is not None


def test_the_keeper_thread_extends_held_claims_and_stops_when_none_is_held(
    billing: Billing, tenant_id: str
) -> None:
    lease = timedelta(seconds=1)
    holder = IdempotencyStore(billing.db, billing.keyring, clock=utcnow, lease=lease)
    other = IdempotencyStore(billing.db, billing.keyring, clock=utcnow, lease=lease)
    assert holder.begin(tenant_id, "k", "fp") is None
    assert holder.keeper_running
    time.sleep(2.5 * lease.total_seconds())
    with pytest.raises(IdempotencyInProgress):
        other.begin(tenant_id, "k", "fp")
    holder.release(tenant_id, "k")
    deadline = time.monotonic() + 5
    while holder.keeper_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.keeper_running, "the keeper stops once no claim is held"


@pytest.fixture
def served(database: Database, keyring: Keyring, clock: Clock) -> Billing:
    """The billing of one service process, on the shared database and clock."""
    return Billing(db=database, keyring=keyring, clock=clock)


def _booking(billing: Billing) -> Actor:
    return Actor(tenant_id=billing.tenants.create_tenant("Salon Rivoli").tenant_id, role="booking")


def _customers(billing: Billing, tenant_id: str) -> int:
    with billing.db.read() as session:
        return session.exec(select(func.count()).where(Customer.tenant_id == tenant_id)).one()


@pytest.mark.parametrize("operation", ["create_customer", "create_invoice", "finalize", "void"])
def test_a_change_and_its_answer_are_committed_together(
    served: Billing, process: Callable[[], IdempotencyStore], clock: Clock, fake: Faker, operation: str
) -> None:
    """Found by ``tests/integration/test_kill_under_load.py``: the process died between the change
    and the storing of its answer, and the retry made a second client, or was refused finalizing
    an invoice it had finalized itself."""
    actor = _booking(served)
    customer = served.customers.create(actor, CustomerInput(name=fake.name()))
    draft = served.invoices.create_draft(
        actor,
        InvoiceInput(
            customer_id=customer.id,
            currency="EUR",
            lines=[InvoiceLineInput(description="Cut", unit_amount=4500)],
        ),
    )
    if operation == "void":
        served.invoices.finalize(actor, draft.id)
    change: Callable[[], msgspec.Struct] = {
        "create_customer": lambda: served.customers.create(actor, CustomerInput(name=fake.name())),
        "create_invoice": lambda: served.invoices.create_draft(
            actor,
            InvoiceInput(
                customer_id=customer.id,
                currency="EUR",
                lines=[InvoiceLineInput(description="Dye", unit_amount=1)],
            ),
        ),
        "finalize": lambda: served.invoices.finalize(actor, draft.id),
        "void": lambda: served.invoices.void(actor, draft.id),
    }[operation]
    status = 201 if operation.startswith("create") else 200
    assert served.idempotency.begin(actor.tenant_id, "k", "fp") is None
    with served.idempotency.bound(actor.tenant_id, "k", status):
        answer = change()
    # SIGKILL here: complete() never runs. The retry, once the lease is over, finds the answer.
    clock.now += timedelta(minutes=1)
    replay = process().begin(actor.tenant_id, "k", "fp")
    assert replay is not None, "the change was committed: its answer must be too"
    assert (replay.status, replay.body) == (status, msgspec.json.encode(answer))
    assert _customers(served, actor.tenant_id) == 1 + (operation == "create_customer")


def test_a_change_that_fails_leaves_no_answer_and_the_retry_runs_again(
    served: Billing, process: Callable[[], IdempotencyStore], clock: Clock, fake: Faker
) -> None:
    actor = _booking(served)
    customer = served.customers.create(actor, CustomerInput(name=fake.name()))
    draft = served.invoices.create_draft(
        actor, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[])
    )
    assert served.idempotency.begin(actor.tenant_id, "k", "fp") is None
    with served.idempotency.bound(actor.tenant_id, "k", 200), pytest.raises(ValidationFailed):
        served.invoices.finalize(actor, draft.id)  # no lines: refused, nothing committed
    clock.now += timedelta(minutes=1)
    assert process().begin(actor.tenant_id, "k", "fp") is None, "no answer: the retry runs"


def test_outside_a_keyed_request_or_for_another_tenant_nothing_is_stored(
    served: Billing, fake: Faker, clock: Clock, process: Callable[[], IdempotencyStore]
) -> None:
    actor, other = _booking(served), _booking(served)
    served.customers.create(actor, CustomerInput(name=fake.name()))  # no claim bound: a plain call
    assert served.idempotency.begin(other.tenant_id, "k", "fp") is None
    with served.idempotency.bound(other.tenant_id, "k", 201):
        served.customers.create(actor, CustomerInput(name=fake.name()))
    clock.now += timedelta(minutes=1)
    assert process().begin(other.tenant_id, "k", "fp") is None, "another tenant's change is not its answer"
