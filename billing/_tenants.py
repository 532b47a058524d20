"""Tenants, API keys and authentication.

A key is ``vb_`` followed by 256 random bits (URL-safe base64). It is shown once, at creation; the
database stores only its SHA-256. A fast hash is enough because the key has full entropy: there is
no dictionary to try, unlike a password. Lookup is by the hash (unique index), then the comparison
is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from sqlalchemy import update
from sqlmodel import Session, col, select

from billing._actor import ROLES, Actor
from billing._audit import AuditTrail
from billing._db import Database, get_for_tenant
from billing._idempotency import IdempotencyStore
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import ApiKey, Tenant, new_id
from billing._monitoring import AccessPolicy, access_policy_of
from billing.errors import ApiKeyInvalid, NotFound, ValidationFailed

__all__ = [
    "ApiKeyView",
    "BusinessDetails",
    "IssuedApiKey",
    "IssuedApiKeyView",
    "TenantService",
    "hash_api_key",
]

KEY_PREFIX = "vb_"
LAST_USE_RESOLUTION = timedelta(minutes=1)


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A key just issued: the only time the secret exists outside the caller's hands."""

    id: str
    key: str
    role: str
    name: str
    tenant_id: str

    def __repr__(self) -> str:
        return f"IssuedApiKey(id={self.id!r}, role={self.role!r}, key=<redacted>)"

    def view(self) -> IssuedApiKeyView:
        """What the API answers: the key without its tenant."""
        return IssuedApiKeyView(id=self.id, key=self.key, role=self.role, name=self.name)


class IssuedApiKeyView(msgspec.Struct, kw_only=True):
    """The answer that issues a key: the key is shown here once; only its hash is kept.

    A keyed request stores this answer, sealed under the tenant's idempotency key, in the
    transaction that issues the key (see :meth:`TenantService.issue_api_key`).
    """

    id: str
    key: str
    role: str
    name: str

    def __repr__(self) -> str:
        return f"IssuedApiKeyView(id={self.id!r}, role={self.role!r}, key=<redacted>)"


class BusinessDetails(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The seller details printed on the tenant's invoices (the business's own, public data)."""

    legal_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    address_lines: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]], msgspec.Meta(max_length=5)
    ] = msgspec.field(default_factory=list)
    vat_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{4,20}$")] | None = None
    email: Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    suspended_at: datetime | None = None
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    last_used_user_agent: str | None = None


class TenantService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditTrail,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._clock = clock
        self._rng = rng
        self._idempotency = idempotency

    def create_tenant(self, name: str) -> IssuedApiKey:
        """Create a tenant with its blind-index key and a first ``admin`` key."""
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise ValidationFailed("A tenant name has 1 to 200 characters.", field="name")
        tenant_id = new_id("ten")
        with self._db.transaction() as session:
            session.add(Tenant(id=tenant_id, name=name, created_at=self._clock()))
            session.flush()
            SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng).create(
                tenant_id, tenant_id, "index"
            )
            operator = Actor.operator(tenant_id)
            issued = self._insert_key(session, operator, role="admin", name="initial admin key")
            self._audit.record(
                session,
                actor=operator,
                action="tenant.created",
                resource_type="tenant",
                resource_id=tenant_id,
            )
        return issued

    def business_details(self, tenant_id: str) -> BusinessDetails:
        """The tenant's seller details (its display name when none were set)."""
        with self._db.read() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                raise NotFound(resource="tenant")
            return BusinessDetails(
                legal_name=tenant.legal_name or tenant.name,
                address_lines=json.loads(tenant.address_lines) if tenant.address_lines else [],
                vat_id=tenant.vat_id,
                email=tenant.billing_email,
            )

    def update_business_details(self, actor: Actor, details: BusinessDetails) -> BusinessDetails:
        with self._db.transaction() as session:
            tenant = session.get(Tenant, actor.tenant_id, with_for_update=True)
            if tenant is None:
                raise NotFound(resource="tenant")
            tenant.legal_name = details.legal_name
            tenant.address_lines = json.dumps(details.address_lines)
            tenant.vat_id = details.vat_id
            tenant.billing_email = details.email
            session.add(tenant)
            self._audit.record(
                session,
                actor=actor,
                action="tenant.business_details_updated",
                resource_type="tenant",
                resource_id=actor.tenant_id,
            )
        return details

    def issue_api_key(self, actor: Actor, *, role: str, name: str) -> IssuedApiKey:
        """A new key; in a keyed request, its answer (:meth:`IssuedApiKey.view`) is stored in the
        same transaction, so a retry after a crash gets this key rather than a second one (the
        secret is sealed there, as any stored answer is, for the replay window)."""
        if role not in ROLES:
            raise ValidationFailed("Unknown role.", field="role")
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise ValidationFailed("A key name has 1 to 200 characters.", field="name")
        with self._db.transaction() as session:
            issued = self._insert_key(session, actor, role=role, name=name)
            if self._idempotency is not None:
                self._idempotency.record_outcome(session, actor.tenant_id, issued.view())
            return issued

    def revoke_api_key(self, actor: Actor, key_id: str) -> ApiKeyView:
        with self._db.transaction() as session:
            key = session.exec(
                select(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.tenant_id == actor.tenant_id)
                .with_for_update()
            ).one_or_none()
            if key is None:
                raise NotFound(resource="api_key")
            if key.revoked_at is None:
                key.revoked_at = self._clock()
                session.add(key)
                self._audit.record(
                    session,
                    actor=actor,
                    action="api_key.revoked",
                    resource_type="api_key",
                    resource_id=key.id,
                    detail={"role": key.role},
                )
            return _view(key)

    def list_api_keys(self, actor: Actor) -> list[ApiKeyView]:
        with self._db.read() as session:
            keys = session.exec(
                select(ApiKey).where(ApiKey.tenant_id == actor.tenant_id).order_by(ApiKey.created_at)  # type: ignore[arg-type]
            )
            return [_view(k) for k in keys]

    def authenticate(
        self,
        raw_key: str | None,
        *,
        request_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> Actor:
        """The actor behind ``raw_key``.

        Raises:
            ApiKeyInvalid: missing, malformed, unknown, expired or revoked key (one error for all;
                the failure is audited, on the tenant's chain when the key is known).
        """
        now = self._clock()
        key: ApiKey | None = None
        reason = "missing"
        if raw_key:
            reason = "unknown"
            if raw_key.startswith(KEY_PREFIX) and len(raw_key) <= 100:
                digest = hash_api_key(raw_key)
                with self._db.read() as session:
                    key = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
                if key is not None and not hmac.compare_digest(key.key_hash, digest):
                    key = None
                if key is not None and key.revoked_at is not None:
                    reason = "revoked"
                elif key is not None and key.suspended_at is not None:
                    reason = "suspended"
                elif key is not None and key.expires_at is not None and key.expires_at <= now:
                    reason = "expired"
                elif key is not None:
                    self._record_use(key, now, client_ip, user_agent)
                    return Actor(
                        tenant_id=key.tenant_id,
                        role=key.role,
                        key_id=key.id,
                        request_id=request_id,
                        client_ip=client_ip,
                        user_agent=user_agent,
                    )
        with self._db.transaction() as session:
            self._audit.record(
                session,
                action="auth.failed",
                tenant_id=key.tenant_id if key else None,
                actor=Actor(
                    tenant_id=key.tenant_id if key else "",
                    role="anonymous",
                    key_id=key.id if key else None,
                    request_id=request_id,
                    client_ip=client_ip,
                    user_agent=user_agent,
                ),
                outcome="denied",
                detail={"reason": reason},
            )
        raise ApiKeyInvalid(reason=reason)

    def _record_use(self, key: ApiKey, now: datetime, client_ip: str | None, user_agent: str | None) -> None:
        """Remember when and from where the key was last used (at most one write a minute per key)."""
        if key.last_used_at is not None and now - key.last_used_at < LAST_USE_RESOLUTION:
            return
        with self._db.transaction() as session:
            session.execute(
                update(ApiKey)
                .where(col(ApiKey.id) == key.id)
                .values(
                    last_used_at=now,
                    last_used_ip=client_ip,
                    last_used_user_agent=(user_agent or "")[:200] or None,
                )
            )

    def reinstate_api_key(self, actor: Actor, key_id: str) -> ApiKeyView:
        """Lift a suspension (an admin decided the alert was a false alarm)."""
        with self._db.transaction() as session:
            key = get_for_tenant(
                session, ApiKey, actor.tenant_id, key_id, resource="api_key", for_update=True
            )
            if key.suspended_at is not None:
                key.suspended_at = None
                session.add(key)
                self._audit.record(
                    session,
                    actor=actor,
                    action="api_key.reinstated",
                    resource_type="api_key",
                    resource_id=key.id,
                )
            return _view(key)

    def access_policy(self, tenant_id: str) -> AccessPolicy:
        with self._db.read() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                raise NotFound(resource="tenant")
            return access_policy_of(tenant)

    def set_access_policy(self, actor: Actor, policy: AccessPolicy) -> AccessPolicy:
        if not 1 <= policy.pii_read_threshold <= 1_000_000:
            raise ValidationFailed("The threshold is 1 to 1,000,000 clients.", field="pii_read_threshold")
        if not 1 <= policy.window_minutes <= 7 * 24 * 60:
            raise ValidationFailed("The window is 1 minute to 7 days.", field="window_minutes")
        with self._db.transaction() as session:
            tenant = session.get(Tenant, actor.tenant_id, with_for_update=True)
            if tenant is None:
                raise NotFound(resource="tenant")
            tenant.pii_read_threshold = policy.pii_read_threshold
            tenant.pii_read_window_minutes = policy.window_minutes
            tenant.suspend_on_alert = policy.suspend_on_alert
            session.add(tenant)
            self._audit.record(
                session,
                actor=actor,
                action="access.policy_set",
                resource_type="tenant",
                resource_id=actor.tenant_id,
                detail={"threshold": policy.pii_read_threshold, "suspend": policy.suspend_on_alert},
            )
            return access_policy_of(tenant)

    def _insert_key(self, session: Session, actor: Actor, *, role: str, name: str) -> IssuedApiKey:
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id("key"),
            tenant_id=actor.tenant_id,
            name=name,
            role=role,
            key_hash=hash_api_key(raw),
            key_prefix=raw[:10],
            created_at=self._clock(),
            created_by=actor.key_id,
        )
        session.add(key)
        self._audit.record(
            session,
            actor=actor,
            action="api_key.issued",
            resource_type="api_key",
            resource_id=key.id,
            detail={"role": role},
        )
        return IssuedApiKey(id=key.id, key=raw, role=role, name=name, tenant_id=actor.tenant_id)


def _view(key: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=key.id,
        name=key.name,
        role=key.role,
        prefix=key.key_prefix,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        suspended_at=key.suspended_at,
        last_used_at=key.last_used_at,
        last_used_ip=key.last_used_ip,
        last_used_user_agent=key.last_used_user_agent,
    )
