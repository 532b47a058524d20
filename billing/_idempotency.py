"""Idempotency records: the first response to a keyed request, replayed for 24 hours.

``begin`` claims the key inside one transaction: a new key is inserted ``in_progress`` (``INSERT …
ON CONFLICT DO NOTHING``, so of two concurrent requests in any processes exactly one wins and the
other gets ``IdempotencyInProgress``); a finished key with the same request fingerprint returns the
stored response; a different fingerprint raises ``IdempotencyKeyReused``. ``complete`` stores the
response sealed under the tenant's ``idempotency`` key (responses can hold PII); ``release`` forgets
a claim whose request failed on our side, so the client's retry runs again.

**A claim is a lease.** A process killed in the middle of a request (``kill -9``, the OOM killer, a
lost machine) can neither complete nor release its claim. So an ``in_progress`` record's
``expires_at`` is the end of a short lease (:data:`CLAIM_LEASE`), not of the 24-hour replay
window: while the request runs, a keeper thread of the process holding the claim extends the lease
every quarter of it (:meth:`IdempotencyStore.extend_claims`, one short transaction per claim the
process holds); once the holder is dead the lease runs out, and the client's retry with the same
key and request takes the claim over and runs again. A retry with another request still gets
``IdempotencyKeyReused``. Liveness is the only thing kept in process memory; which request holds a
key is decided by the database alone. ``complete`` sets ``expires_at`` to the end of the replay
window.

**The answer is stored with the change.** A process can also die after the request's change was
committed and before ``complete`` stored its answer; the retry would then make the change again
(a second client, a second draft) or be refused (finalizing an invoice already open). So while a
keyed request runs, its claim is *bound* (:meth:`IdempotencyStore.bound`, a context variable that
follows the request into the worker thread), and an operation whose whole change is one
transaction stores its answer inside that transaction (:meth:`IdempotencyStore.record_outcome`):
the change and its answer are committed together or not at all. ``complete`` then finds the key
done and leaves it (clients, drafts, finalize, void, mark-uncollectible, API keys, payment
sessions, webhook endpoints and their secret rotation, redelivery of an event, and a tenant's
retention run do so). Operations around gateway calls rely instead on finding their own earlier
work when run again: pay and refund by the derived gateway key of their local row, a setup intent
by that key in its gateway metadata. A master key rotation does both: its last transaction
stores its answer, and the version it adds is audited with a key derived from the request's, by
which a retry finds it rather than adding another (the version is written to the keyring file or
the HSM first, outside any transaction).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from billing._db import Database, insert_ignore
from billing._envelope import DataKey, FieldContext, open_sealed, seal
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import IdempotencyRecord
from billing.errors import IdempotencyInProgress, IdempotencyKeyReused

__all__ = ["CLAIM_LEASE", "IDEMPOTENCY_TTL", "IdempotencyStore", "StoredResponse"]

IDEMPOTENCY_TTL = timedelta(hours=24)
CLAIM_LEASE = timedelta(seconds=10)
"""How long an ``in_progress`` claim outlives the last extension by the process running its request.

Its keeper extends it every quarter of this, so a live request keeps its claim unless its process
cannot reach the database for that long; a retry after a crash waits at most this long.
"""


@dataclass(frozen=True, slots=True)
class _BoundClaim:
    tenant_id: str
    key: str
    status: int


_BOUND: ContextVar[_BoundClaim | None] = ContextVar("veilbill_idempotency_claim", default=None)


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
        lease: timedelta = CLAIM_LEASE,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if lease <= timedelta(0):
            raise ValueError("the claim lease must be positive")
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._rng = rng
        self._lease = lease
        self._on_error = on_error
        self._held: set[tuple[str, str]] = set()
        self._held_lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    def begin(self, tenant_id: str, key: str, request: str) -> StoredResponse | None:
        """Claim ``key``; or return the response stored for it.

        ``request`` tells requests apart (the API passes a SHA-256 of method, path and body). It is
        stored only as a fingerprint keyed under the tenant's ``idempotency`` key: an unkeyed hash
        of a body that holds PII would let whoever reads the table confirm a guess of it.

        A claim whose lease ran out (its request's process died) is taken over by a request with
        the same fingerprint: the expired record is replaced by this request's claim, in the same
        transaction, so of several retries exactly one wins.

        Raises:
            IdempotencyKeyReused: the key was used for a request with another fingerprint.
            IdempotencyInProgress: a request with this key has not finished yet.
        """
        now = self._clock()
        with self._db.transaction() as session:
            keys = SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)
            dek = keys.get_or_create(tenant_id, tenant_id, "idempotency")
            fingerprint = _fingerprint(dek, request)
            session.execute(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.tenant_id) == tenant_id,
                    col(IdempotencyRecord.key) == key,
                    col(IdempotencyRecord.expires_at) <= now,
                    or_(
                        col(IdempotencyRecord.state) == "done",
                        col(IdempotencyRecord.request_fingerprint) == fingerprint,
                    ),
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
                    "expires_at": now + self._lease,
                },
            )
        if claimed:
            self._hold(tenant_id, key)
            return None
        with self._db.read() as session:
            record = session.exec(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key
                )
            ).one_or_none()
            if record is None:  # claimed and released by another request in between
                raise IdempotencyInProgress()
            if not hmac.compare_digest(record.request_fingerprint, fingerprint):
                raise IdempotencyKeyReused()
            if record.state != "done" or record.response_ct is None or record.response_status is None:
                raise IdempotencyInProgress()
            body = open_sealed(dek, record.response_ct, _context(tenant_id, key))
            return StoredResponse(status=record.response_status, body=body)

    def complete(self, tenant_id: str, key: str, status: int, body: bytes) -> None:
        self._let_go(tenant_id, key)
        with self._db.transaction() as session:
            self._store_answer(session, tenant_id, key, status, body)

    def release(self, tenant_id: str, key: str) -> None:
        self._let_go(tenant_id, key)
        with self._db.transaction() as session:
            session.execute(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.tenant_id) == tenant_id,
                    col(IdempotencyRecord.key) == key,
                    col(IdempotencyRecord.state) == "in_progress",
                )
            )

    @contextmanager
    def bound(self, tenant_id: str, key: str, status: int) -> Iterator[None]:
        """While the block runs, the claim on ``key`` is the current request's: an operation that
        calls :meth:`record_outcome` stores its answer, with ``status``, in its own transaction.

        A context variable: it follows the request into the thread its handler runs in.
        """
        token = _BOUND.set(_BoundClaim(tenant_id, key, status))
        try:
            yield
        finally:
            _BOUND.reset(token)

    def record_outcome(self, session: Session, tenant_id: str, answer: msgspec.Struct) -> None:
        """Store ``answer`` (JSON-encoded) as the response of the bound request, in ``session``.

        Call it at the end of the transaction that makes the request's *whole* change, with what
        the request answers; then the change and its answer are committed together. Does nothing
        outside a keyed request, for another tenant, or once the key is done.
        """
        claim = _BOUND.get()
        if claim is None or claim.tenant_id != tenant_id:
            return
        self._store_answer(session, tenant_id, claim.key, claim.status, msgspec.json.encode(answer))

    def _store_answer(self, session: Session, tenant_id: str, key: str, status: int, body: bytes) -> None:
        """Seal ``body`` as the answer of ``key`` and mark it done, unless it already is (or is gone)."""
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
        record.expires_at = record.created_at + IDEMPOTENCY_TTL
        session.add(record)

    def extend_claims(self, claims: Iterable[tuple[str, str]] | None = None) -> int:
        """Push the lease of ``claims`` (default: every claim this process holds) to now + lease.

        Only ``in_progress`` records are touched; returns how many were extended.
        """
        if claims is None:
            with self._held_lock:
                claims = list(self._held)
        claims = list(claims)
        if not claims:
            return 0
        until = self._clock() + self._lease
        extended = 0
        for tenant_id, key in claims:  # one transaction each: never holding one while waiting for another
            with self._db.transaction() as session:
                result = session.execute(
                    update(IdempotencyRecord)
                    .where(
                        col(IdempotencyRecord.tenant_id) == tenant_id,
                        col(IdempotencyRecord.key) == key,
                        col(IdempotencyRecord.state) == "in_progress",
                    )
                    .values(expires_at=until)
                )
                extended += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return extended

    def purge_expired(self) -> int:
        """Delete every record past its 24 hours; returns how many."""
        with self._db.transaction() as session:
            result = session.execute(
                delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) <= self._clock())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # --- the keeper: extends this process's claims while their requests run ----------------------

    @property
    def keeper_running(self) -> bool:
        """Whether this store's keeper thread runs (it does exactly while claims are held)."""
        with self._held_lock:
            return self._keeper is not None

    def _hold(self, tenant_id: str, key: str) -> None:
        with self._held_lock:
            self._held.add((tenant_id, key))
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep_claims, name="veilbill-idempotency-claims", daemon=True
                )
                self._keeper.start()

    def _let_go(self, tenant_id: str, key: str) -> None:
        with self._held_lock:
            self._held.discard((tenant_id, key))

    def _keep_claims(self) -> None:
        """Extend the held claims every quarter lease; stop when none is held (restarted on demand)."""
        interval = self._lease.total_seconds() / 4
        while True:
            time.sleep(interval)
            with self._held_lock:
                if not self._held:
                    self._keeper = None
                    return
            try:
                self.extend_claims()
            except Exception as error:  # a database outage must not end the keeper
                if self._on_error is not None:
                    self._on_error(error)


_FINGERPRINT_LABEL = b"veilbill/idempotency/request-fingerprint/v1"


def _fingerprint(dek: DataKey, request: str) -> str:
    """``request`` keyed under a key derived from the tenant's ``idempotency`` key (an HMAC of a
    label, so the AES key itself is never an HMAC key), as 64 hex characters."""
    derived = hmac.new(dek.material, _FINGERPRINT_LABEL, hashlib.sha256).digest()
    return hmac.new(derived, request.encode(), hashlib.sha256).hexdigest()


def _context(tenant_id: str, key: str) -> FieldContext:
    return FieldContext(tenant_id, "idempotency_records", "response", key)
