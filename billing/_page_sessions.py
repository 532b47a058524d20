"""Browser sessions of the server-rendered pages (``/reports``, ``/pci``).

A person signs in once with their own API key (resolved by :meth:`TenantService.authenticate`, which
audits failures); :meth:`PageSessionService.start` then opens a session for that key.

Security decisions:

- **The token** is 256 random bits (URL-safe base64, 43 characters) that only the browser's cookie
  holds; the database stores its SHA-256. As for API keys, a fast hash suffices for a full-entropy
  secret. A token is always issued by the server at sign-in, never taken from the client, so a
  session cannot be fixed in advance.
- **Two limits**, from :class:`PageSessionPolicy`: idle (default 15 minutes since ``last_seen_at``,
  which every use moves forward) and lifetime (default 8 hours since ``created_at``, stored as
  ``expires_at``). Whichever comes first ends the session.
- **The key is checked on every use**: a revoked, suspended or expired key ends its sessions at
  their next request (``key_unusable``), so revoking a key signs its holder out.
- **The CSRF token** of a session is ``HMAC-SHA256(token, "veilbill page csrf v1")`` (URL-safe
  base64): derived from the secret only the cookie holds, so it is bound to the session, needs no
  storage, and cannot be computed by a page that cannot read the cookie (it is HttpOnly). An HMAC
  output says nothing about its key, so showing it in a form does not reveal the session token.
- **Audit**: ``page_session.started`` at sign-in, ``page_session.ended`` at sign-out (or when a new
  sign-in replaces the browser's session), ``page_session.expired`` when a request finds the session
  idle, past its lifetime or its key unusable. A session that is never used again after its limit
  is simply dead: no request, no event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlmodel import Session, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database
from billing._models import ApiKey, PageSession, new_id
from billing.errors import PageSessionInvalid, RoleForbidden, ValidationFailed

__all__ = ["IssuedPageSession", "PageSessionPolicy", "PageSessionService", "PageSessionView"]

_CSRF_LABEL = b"veilbill page csrf v1"
_TOKEN_BYTES = 32
_MAX_TOKEN_LENGTH = 100


@dataclass(frozen=True, slots=True)
class PageSessionPolicy:
    """How long a page session lives: ``idle`` without a request, ``lifetime`` at most."""

    idle: timedelta = timedelta(minutes=15)
    lifetime: timedelta = timedelta(hours=8)

    def __post_init__(self) -> None:
        if self.idle <= timedelta(0) or self.lifetime <= timedelta(0):
            raise ValueError("page session limits must be positive")
        if self.idle > self.lifetime:
            raise ValueError("the idle limit cannot exceed the lifetime")


@dataclass(frozen=True, slots=True)
class PageSessionView:
    """A live session: who acts through it, its CSRF token and when it ends at the latest."""

    id: str
    actor: Actor
    csrf_token: str
    created_at: datetime
    idle_expires_at: datetime
    expires_at: datetime

    def __repr__(self) -> str:
        return f"PageSessionView(id={self.id!r}, role={self.actor.role!r}, csrf_token=<redacted>)"


@dataclass(frozen=True, slots=True)
class IssuedPageSession:
    """A session just opened: ``token`` goes into the cookie and exists nowhere else."""

    token: str
    session: PageSessionView

    def __repr__(self) -> str:
        return f"IssuedPageSession(id={self.session.id!r}, token=<redacted>)"


def csrf_token_for(token: str) -> str:
    """The session's CSRF token (see the module docstring)."""
    digest = hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PageSessionService:
    def __init__(
        self,
        db: Database,
        audit: AuditTrail,
        *,
        policy: PageSessionPolicy,
        clock: Callable[[], datetime],
        token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(_TOKEN_BYTES),
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._new_token = token_factory
        self.policy = policy

    def start(self, actor: Actor, *, roles: Collection[str]) -> IssuedPageSession:
        """Open a session for the API key behind ``actor`` (just authenticated); audited.

        Raises ``RoleForbidden`` (audited ``page_session.refused``) when the key's role is not one
        of ``roles`` — the roles that have pages: a booking or admin key never gets a browser session.
        """
        if actor.key_id is None:
            raise ValidationFailed("A page session belongs to an API key.", field="api_key")
        if actor.role not in roles:
            with self._db.transaction() as session:
                self._audit.record(
                    session,
                    actor=actor,
                    action="page_session.refused",
                    resource_type="page_session",
                    outcome="denied",
                    detail={"role": actor.role},
                )
            raise RoleForbidden(required=",".join(sorted(roles)))
        token = self._new_token()
        now = self._clock()
        record = PageSession(
            id=new_id("pgs"),
            tenant_id=actor.tenant_id,
            api_key_id=actor.key_id,
            role=actor.role,
            token_hash=_hash(token),
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.policy.lifetime,
        )
        with self._db.transaction() as session:
            session.add(record)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="page_session.started",
                resource_type="page_session",
                resource_id=record.id,
                detail={"role": actor.role},
            )
        return IssuedPageSession(token=token, session=self._view(record, actor, token))

    def resolve(
        self,
        token: str | None,
        *,
        request_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> PageSessionView:
        """The live session behind ``token``; its idle clock restarts now.

        Raises:
            PageSessionInvalid: unknown or ended (not audited: nothing happened), or found idle,
                past its lifetime or with an unusable key — then it is ended and
                ``page_session.expired`` is audited.
        """
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            raise PageSessionInvalid(reason="unknown")
        now = self._clock()
        with self._db.transaction() as session:
            record = self._locked(session, token)
            if record is None:
                raise PageSessionInvalid(reason="unknown")
            if record.ended_at is not None:
                raise PageSessionInvalid(reason="ended")
            actor = Actor(
                tenant_id=record.tenant_id,
                role=record.role,
                key_id=record.api_key_id,
                request_id=request_id,
                client_ip=client_ip,
                user_agent=user_agent,
            )
            reason = self._expiry_reason(session, record, now)
            if reason is None:
                record.last_seen_at = now
                session.add(record)
                return self._view(record, actor, token)
            record.ended_at, record.end_reason = now, reason
            session.add(record)
            self._audit.record(
                session,
                actor=actor,
                action="page_session.expired",
                resource_type="page_session",
                resource_id=record.id,
                detail={"reason": reason},
            )
        raise PageSessionInvalid(reason=reason)

    def end(
        self,
        token: str | None,
        *,
        reason: str = "signout",
        request_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> bool:
        """End the session behind ``token`` (audited ``page_session.ended``); False if none was live."""
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            return False
        now = self._clock()
        with self._db.transaction() as session:
            record = self._locked(session, token)
            if record is None or record.ended_at is not None:
                return False
            record.ended_at, record.end_reason = now, reason
            session.add(record)
            self._audit.record(
                session,
                actor=Actor(
                    tenant_id=record.tenant_id,
                    role=record.role,
                    key_id=record.api_key_id,
                    request_id=request_id,
                    client_ip=client_ip,
                    user_agent=user_agent,
                ),
                action="page_session.ended",
                resource_type="page_session",
                resource_id=record.id,
                detail={"reason": reason},
            )
        return True

    def _locked(self, session: Session, token: str) -> PageSession | None:
        digest = _hash(token)
        record = session.exec(
            select(PageSession).where(PageSession.token_hash == digest).with_for_update()
        ).one_or_none()
        if record is not None and not hmac.compare_digest(record.token_hash, digest):
            return None
        return record

    def _expiry_reason(self, session: Session, record: PageSession, now: datetime) -> str | None:
        key = session.get(ApiKey, record.api_key_id)
        if (
            key is None
            or key.revoked_at is not None
            or key.suspended_at is not None
            or (key.expires_at is not None and key.expires_at <= now)
        ):
            return "key_unusable"
        if now >= record.expires_at:
            return "lifetime"
        if now - record.last_seen_at >= self.policy.idle:
            return "idle"
        return None

    def _view(self, record: PageSession, actor: Actor, token: str) -> PageSessionView:
        return PageSessionView(
            id=record.id,
            actor=replace(actor, role=record.role, key_id=record.api_key_id),
            csrf_token=csrf_token_for(token),
            created_at=record.created_at,
            idle_expires_at=min(record.last_seen_at + self.policy.idle, record.expires_at),
            expires_at=record.expires_at,
        )
