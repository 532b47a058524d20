"""Idempotency records: the first response to a keyed request, replayed for 24 hours.

``begin`` claims the key inside one transaction: a new key is inserted ``in_progress`` (``INSERT …
ON CONFLICT DO NOTHING``, so of two concurrent requests in any processes exactly one wins and the
other gets ``IdempotencyInProgress``); a finished key with the same request fingerprint returns the
stored response; a different fingerprint raises ``IdempotencyKeyReused``. ``complete`` stores the
response sealed under the tenant's ``idempotency`` key (responses can hold PII); ``release`` forgets
a claim whose request failed on our side, so the client's retry runs again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import col, select

from billing._db import Database, insert_ignore
from billing._envelope import FieldContext, open_sealed, seal
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import IdempotencyRecord
from billing.errors import IdempotencyInProgress, IdempotencyKeyReused

__all__ = ["IDEMPOTENCY_TTL", "IdempotencyStore", "StoredResponse"]

IDEMPOTENCY_TTL = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes

    def __repr__(self) -> str:
        return f"StoredResponse(status={self.status}, body=<{len(self.body)} bytes redacted>)"


class IdempotencyStore:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._rng = rng

    def begin(self, tenant_id: str, key: str, fingerprint: str) -> StoredResponse | None:
        """Claim ``key``; or return the response stored for it.

        Raises:
            IdempotencyKeyReused: the key was used for a request with another fingerprint.
            IdempotencyInProgress: a request with this key has not finished yet.
        """
        now = self._clock()
        with self._db.transaction() as session:
            session.execute(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.tenant_id) == tenant_id,
                    col(IdempotencyRecord.key) == key,
                    col(IdempotencyRecord.expires_at) <= now,
                )
            )
            claimed = insert_ignore(
                session,
                IdempotencyRecord,
                {
                    "tenant_id": tenant_id,
                    "key": key,
                    "request_fingerprint": fingerprint,
                    "state": "in_progress",
                    "created_at": now,
                    "expires_at": now + IDEMPOTENCY_TTL,
                },
            )
            if claimed:
                return None
            record = session.exec(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key
                )
            ).one_or_none()
            if record is None:  # claimed and released by another request in between
                raise IdempotencyInProgress()
            if record.request_fingerprint != fingerprint:
                raise IdempotencyKeyReused()
            if record.state != "done" or record.response_ct is None or record.response_status is None:
                raise IdempotencyInProgress()
            keys = SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)
            body = open_sealed(
                keys.get(tenant_id, tenant_id, "idempotency"),
                record.response_ct,
                _context(tenant_id, key),
            )
            return StoredResponse(status=record.response_status, body=body)

    def complete(self, tenant_id: str, key: str, status: int, body: bytes) -> None:
        with self._db.transaction() as session:
            record = session.exec(
                select(IdempotencyRecord)
                .where(IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key)
                .with_for_update()
            ).one_or_none()
            if record is None or record.state == "done":
                return
            keys = SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)
            dek = keys.get_or_create(tenant_id, tenant_id, "idempotency")
            record.response_ct = seal(dek, body, _context(tenant_id, key), rng=self._rng)
            record.response_status = status
            record.state = "done"
            session.add(record)

    def release(self, tenant_id: str, key: str) -> None:
        with self._db.transaction() as session:
            session.execute(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.tenant_id) == tenant_id,
                    col(IdempotencyRecord.key) == key,
                    col(IdempotencyRecord.state) == "in_progress",
                )
            )

    def purge_expired(self) -> int:
        """Delete every record past its 24 hours; returns how many."""
        with self._db.transaction() as session:
            result = session.execute(
                delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) <= self._clock())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _context(tenant_id: str, key: str) -> FieldContext:
    return FieldContext(tenant_id, "idempotency_records", "response", key)
