"""Page sessions in the domain, on both databases: hashed tokens, limits, key checks, CSRF, audit."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlmodel import select

from billing import Actor, Billing, Database, Keyring, PageSessionPolicy
from billing._models import PageSession
from billing._page_sessions import csrf_token_for
from billing.errors import PageSessionInvalid, RoleForbidden, ValidationFailed

from ..conftest import FIXED_NOW

PAGE_ROLES = ("accountant", "auditor")


@dataclass
class Clock:
    now: datetime = FIXED_NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked(database: Database, keyring: Keyring, clock: Clock) -> Billing:
    return Billing(db=database, keyring=keyring, clock=clock)


def accountant(billing: Billing, role: str = "accountant") -> Actor:
    admin = billing.tenants.create_tenant("Salon Test")
    operator = Actor(tenant_id=admin.tenant_id, role="admin", key_id=admin.id)
    issued = billing.tenants.issue_api_key(operator, role=role, name="person")
    return billing.tenants.authenticate(issued.key)


def actions(billing: Billing, tenant_id: str) -> list[tuple[str, dict[str, object]]]:
    found = billing.audit_events(Actor(tenant_id=tenant_id, role="auditor"), limit=500)
    return [(e.action, json.loads(e.detail or "{}")) for e in found if e.action.startswith("page_session.")]


def test_only_the_tokens_hash_is_stored_and_the_session_acts_as_its_key(clocked: Billing) -> None:
    actor = accountant(clocked)
    issued = clocked.page_sessions.start(actor, roles=PAGE_ROLES)

    with clocked.db.read() as session:
        record = session.exec(select(PageSession)).one()
    assert record.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert (record.tenant_id, record.api_key_id, record.role) == (actor.tenant_id, actor.key_id, "accountant")
    assert record.expires_at == FIXED_NOW + timedelta(hours=8)
    assert len(issued.token) >= 43
    assert issued.token not in repr(issued) and issued.session.csrf_token not in repr(issued.session)
    view = clocked.page_sessions.resolve(issued.token, request_id="req_x", client_ip="127.0.0.1")
    assert (view.actor.tenant_id, view.actor.key_id, view.actor.role) == (
        actor.tenant_id,
        actor.key_id,
        "accountant",
    )
    assert view.actor.request_id == "req_x"
    assert view.csrf_token == issued.session.csrf_token == csrf_token_for(issued.token)
    assert actions(clocked, actor.tenant_id) == [("page_session.started", {"role": "accountant"})]


def test_idle_and_lifetime_limits(clocked: Billing, clock: Clock) -> None:
    actor = accountant(clocked)
    idle = clocked.page_sessions.start(actor, roles=PAGE_ROLES)
    clock.now += timedelta(minutes=14)
    assert clocked.page_sessions.resolve(idle.token).idle_expires_at == clock.now + timedelta(minutes=15)
    clock.now += timedelta(minutes=15)
    with pytest.raises(PageSessionInvalid) as expired:
        clocked.page_sessions.resolve(idle.token)
    assert expired.value.ids["reason"] == "idle"
    with pytest.raises(PageSessionInvalid) as again:
        clocked.page_sessions.resolve(idle.token)
    assert again.value.ids["reason"] == "ended"

    busy = clocked.page_sessions.start(actor, roles=PAGE_ROLES)
    for _ in range(8 * 4 - 1):
        clock.now += timedelta(minutes=15) - timedelta(seconds=1)
        clocked.page_sessions.resolve(busy.token)
    clock.now = busy.session.expires_at
    with pytest.raises(PageSessionInvalid) as lifetime:
        clocked.page_sessions.resolve(busy.token)
    assert lifetime.value.ids["reason"] == "lifetime"
    expired_events = [
        d["reason"] for a, d in actions(clocked, actor.tenant_id) if a == "page_session.expired"
    ]
    assert expired_events == ["idle", "lifetime"]


@pytest.mark.parametrize("change", ["revoked_at", "suspended_at", "expires_at"])
def test_an_unusable_key_ends_its_sessions(clocked: Billing, change: str) -> None:
    actor = accountant(clocked)
    issued = clocked.page_sessions.start(actor, roles=PAGE_ROLES)
    from billing._models import ApiKey

    with clocked.db.transaction() as session:
        key = session.get(ApiKey, actor.key_id)
        assert key is not None
        setattr(key, change, FIXED_NOW)
        session.add(key)
    with pytest.raises(PageSessionInvalid) as refused:
        clocked.page_sessions.resolve(issued.token)
    assert refused.value.ids["reason"] == "key_unusable"


def test_end_is_audited_once_and_unknown_tokens_are_no_session(clocked: Billing) -> None:
    actor = accountant(clocked)
    issued = clocked.page_sessions.start(actor, roles=PAGE_ROLES)
    assert clocked.page_sessions.end(issued.token) is True
    assert clocked.page_sessions.end(issued.token) is False
    for token in (None, "", "x" * 43, "y" * 500, issued.token):
        with pytest.raises(PageSessionInvalid):
            clocked.page_sessions.resolve(token)
    ended = [d for a, d in actions(clocked, actor.tenant_id) if a == "page_session.ended"]
    assert ended == [{"reason": "signout"}]


def test_roles_without_pages_and_keyless_actors_get_no_session(clocked: Billing) -> None:
    booking = accountant(clocked, role="booking")
    with pytest.raises(RoleForbidden):
        clocked.page_sessions.start(booking, roles=PAGE_ROLES)
    assert actions(clocked, booking.tenant_id) == [("page_session.refused", {"role": "booking"})]
    with pytest.raises(ValidationFailed):
        clocked.page_sessions.start(Actor.operator(booking.tenant_id), roles=("operator",))
    with clocked.db.read() as session:
        assert session.exec(select(PageSession)).all() == []


def test_csrf_tokens_are_per_session_and_the_policy_validates_itself() -> None:
    assert csrf_token_for("a" * 43) == csrf_token_for("a" * 43)
    assert csrf_token_for("a" * 43) != csrf_token_for("b" * 43)
    assert "a" * 43 not in csrf_token_for("a" * 43)
    assert PageSessionPolicy() == PageSessionPolicy(idle=timedelta(minutes=15), lifetime=timedelta(hours=8))
    for idle, lifetime in ((timedelta(0), timedelta(hours=1)), (timedelta(hours=2), timedelta(hours=1))):
        with pytest.raises(ValueError, match="limit"):
            PageSessionPolicy(idle=idle, lifetime=lifetime)
