"""Master-key rotation and retirement: re-wrap every live data key under a new version, online.

Rotation (:meth:`KeyRotationService.rotate_master_key`)
    1. Under the key-administration lock (a PostgreSQL advisory lock; on SQLite the write
       transaction itself, which begins ``IMMEDIATE``): if live DEKs (``wrapped`` not NULL) are
       wrapped by an old version (one the provider has, other than the active one), the run
       *resumes* re-wrapping them. Otherwise the provider adds a new version, made durable first
       (the keyring file is replaced atomically, an HSM key is a token object), and
       ``keys.master_key_added`` is audited. DEKs naming a version that no longer exists cannot
       be helped by any rotation: the status reports them as orphaned.
    2. Batches, each one transaction: up to ``batch_size`` live DEKs under an old version, in id
       order after the last batch, locked ``FOR UPDATE`` (``SKIP LOCKED`` on PostgreSQL, so a
       request holding one of them is not waited for: a later pass takes it). Each is unwrapped
       with the version its blob names and wrapped under the active version; the new blob is
       stored with ``master_key_id`` read from its header. A pass that re-wrapped something is
       followed by another from the start, for rows skipped or created meanwhile under an old
       version.
    3. ``keys.rotated`` is audited with the counts.

    Over HTTP (``POST /v1/admin/keys/rotate``, keyed): the last transaction, the one that audits
    ``keys.rotated``, also stores the answer of the keyed request being served, so a retry after a
    crash that came later is replayed. The request is no single transaction (the version is made
    durable in the keyring file or the HSM before the database knows of it, and re-wrapping takes
    batches), so the answer cannot commit with the whole change; instead ``keys.master_key_added``
    records, with the new version, a key derived from the request's ``Idempotency-Key``
    (``request``, a SHA-256 of ids: :func:`~tokenization.derive_idempotency_key`). A retry that
    finds its request's version (within the 24-hour replay window) goes on with that one rather
    than adding another: it re-wraps what is left and answers what the first attempt would have.
    Only a crash between the keyring write and the commit of that record leaves a version no
    record names; the retry then resumes the re-wrapping under it, or, with no data key to
    re-wrap at all, adds one more (unused) version.

    Online: readers unwrap with whichever version a row names, and both versions exist throughout,
    so the service keeps working; processes built on the keyring file or the HSM see the new version
    without a restart. Resumable: a batch commits or rolls back whole, and nothing is removed, so a
    run killed at any point (``kill -9`` included) loses nothing, and the next run resumes without
    adding another version. A DEK that does not unwrap (it was already unreadable) is left as it is
    and counted as ``failed``; it keeps its version from being retired.

Retirement (:meth:`KeyRotationService.retire_master_key`)
    Refused for the active version and for any version that a live DEK still names (by its
    ``master_key_id`` or by its blob's header). Otherwise the version is destroyed (removed from the
    keyring file, atomically; destroyed in the HSM) and ``keys.retired`` is audited. From then on a
    copy of the database taken before can no longer unwrap the DEKs shredded since that copy: their
    wrapped bytes in the copy need the retired version.

Tenants
    Master keys serve every tenant; their status is shown per tenant (``tenant_id``) to tenant
    admins, so that no tenant learns how many data keys another holds.

DEK rotation (re-encrypting one subject's values under a new DEK) is in
:mod:`billing._subject_rotation`; moving master keys from the keyring file into an HSM runs this
rotation over :class:`billing._hsm.HsmMigrationMasterKeys`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec
from sqlalchemy import func, text
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._audit import SYSTEM_CHAIN, AuditTrail
from billing._db import Database
from billing._envelope import sealed_key_id
from billing._idempotency import IDEMPOTENCY_TTL, IdempotencyStore
from billing._keyring import MasterKeyProvider
from billing._models import AuditEvent, DataKeyRecord
from billing.errors import DecryptionError, InvalidStateTransition, NotFound
from tokenization import derive_idempotency_key

__all__ = [
    "DEFAULT_ROTATION_BATCH_SIZE",
    "KeyRotationService",
    "KeyStatus",
    "MasterKeyState",
    "RetirementReport",
    "RotationProgress",
    "RotationReport",
    "RotationStepView",
]

DEFAULT_ROTATION_BATCH_SIZE: Final = 500
MAX_BATCH_SIZE: Final = 10_000
# pg_advisory_xact_lock key of key administration (adding and retiring versions): "vbkeys".
_ADVISORY_LOCK_KEY: Final = int.from_bytes(b"vbkeys", "big")
_SCAN_PAGE: Final = 1_000


@dataclass(frozen=True, slots=True)
class RotationProgress:
    """Where a rotation run stands after a committed batch (handed to ``on_batch``)."""

    to_version: str
    batches: int
    rewrapped: int
    failed: int


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What one rotation run did.

    ``from_versions``: the versions live DEKs were wrapped by when the run started (other than the
    target). ``failed``: DEKs that did not unwrap and were left as they were. ``remaining``: live
    DEKs still not under ``to_version`` at the end (the failed ones, and any left by ``max_batches``
    or by rows locked throughout); the next run resumes them.
    """

    from_versions: tuple[str, ...]
    to_version: str
    resumed: bool
    rewrapped: int
    failed: int
    remaining: int
    batches: int

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def view(self) -> RotationStepView:
        """What ``POST /v1/admin/keys/rotate`` answers: the versions, not the counts."""
        return RotationStepView(
            to_version=self.to_version,
            from_versions=list(self.from_versions),
            resumed=self.resumed,
            complete=self.complete,
        )


class RotationStepView(msgspec.Struct, kw_only=True):
    """The answer to one rotation request over HTTP; call again until ``complete``."""

    to_version: str
    from_versions: list[str]
    resumed: bool
    complete: bool


@dataclass(frozen=True, slots=True)
class MasterKeyState:
    """One master key version: never its material."""

    key_id: str
    created_at: datetime | None
    age_days: int | None
    active: bool
    live_deks: int


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """Master key versions and how far the re-wrapping under the active one has got.

    Counts cover every tenant, or one tenant when :meth:`KeyRotationService.key_status` was asked
    for one. ``pending_deks`` are live DEKs under another version the provider has (what a rotation
    re-wraps). ``orphaned_deks`` are live DEKs that name a version the provider no longer has: they
    cannot be unwrapped by anyone, no rotation can help them, and this should stay 0.
    ``rotation_in_progress`` is true while any live DEK of *any* tenant awaits re-wrapping (one
    bit, whatever the scope).
    """

    active_key_id: str
    versions: tuple[MasterKeyState, ...]
    live_deks: int
    pending_deks: int
    orphaned_deks: int
    rotation_in_progress: bool
    tenant_id: str | None = None

    @property
    def progress(self) -> float:
        """The share of live DEKs not awaiting re-wrapping (1.0 with none at all)."""
        if self.live_deks == 0:
            return 1.0
        return (self.live_deks - self.pending_deks) / self.live_deks


@dataclass(frozen=True, slots=True)
class RetirementReport:
    key_id: str
    retired_at: datetime


@dataclass
class _Run:
    to_version: str
    batches: int = 0
    rewrapped: int = 0
    failed_ids: set[str] = field(default_factory=set)


class KeyRotationService:
    """Rotates and retires master key versions, and reports on them.

    Collaborators are injected: the database, the master-key provider every service wraps with,
    the audit trail (key operations go to the ``system`` chain), the clock, and the idempotency
    store that keyed requests' answers go to.
    """

    def __init__(
        self,
        db: Database,
        provider: MasterKeyProvider,
        audit: AuditTrail,
        *,
        clock: Callable[[], datetime],
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._db = db
        self._provider = provider
        self._audit = audit
        self._clock = clock
        self._idempotency = idempotency

    # --- status ---------------------------------------------------------------------------------

    def key_status(self, *, tenant_id: str | None = None) -> KeyStatus:
        """Every version (id, creation, age, active, live DEKs it wraps) and the rotation progress.

        Raises:
            KeyringError: the master-key store is unavailable.
        """
        now = self._clock()
        active = self._provider.active_key_id
        versions = self._provider.versions()
        known = {version.key_id for version in versions}
        old = sorted(known - {active})
        with self._db.read() as session:
            counts = _live_counts(session, tenant_id)
            in_progress = _count_pending(session, old) > 0
        states = tuple(
            MasterKeyState(
                key_id=version.key_id,
                created_at=version.created_at,
                age_days=(now - version.created_at).days if version.created_at else None,
                active=version.key_id == active,
                live_deks=counts.get(version.key_id, 0),
            )
            for version in versions
        )
        live = sum(counts.values())
        return KeyStatus(
            active_key_id=active,
            versions=states,
            live_deks=live,
            pending_deks=sum(counts.get(key_id, 0) for key_id in old),
            orphaned_deks=sum(n for key_id, n in counts.items() if key_id not in known),
            rotation_in_progress=in_progress,
            tenant_id=tenant_id,
        )

    # --- rotation -------------------------------------------------------------------------------

    def rotate_master_key(
        self,
        *,
        batch_size: int = DEFAULT_ROTATION_BATCH_SIZE,
        max_batches: int | None = None,
        on_batch: Callable[[RotationProgress], None] | None = None,
        actor: Actor | None = None,
        resume_only: bool = False,
        idempotency_key: str | None = None,
    ) -> RotationReport:
        """Add a master key version and re-wrap every live DEK under it — or resume doing so.

        See the module docstring. ``on_batch`` is called after each committed batch; if it raises,
        the run stops there (what was committed stays) and the exception propagates. With
        ``max_batches`` the run stops after that many batches; call again to go on. With
        ``resume_only`` no version is added: pending DEKs are re-wrapped, or nothing is done.
        With the ``actor``'s ``idempotency_key``, a version this request added before (a crash
        lost its answer) is gone on with instead of adding another, and the report is stored as
        the keyed request's answer in the run's last transaction (see the module docstring).

        Raises:
            ValueError: ``batch_size`` is not 1..10000 or ``max_batches`` is below 1.
            KeyringError: the master-key store is unavailable or cannot be written.
        """
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}")
        if max_batches is not None and max_batches < 1:
            raise ValueError("max_batches must be at least 1")
        request = (
            derive_idempotency_key("master_key_rotation", actor.tenant_id, idempotency_key)
            if actor is not None and idempotency_key is not None
            else None
        )
        from_versions, to_version, resumed = self._start(actor, resume_only=resume_only, request=request)
        run = _Run(to_version=to_version)
        while max_batches is None or run.batches < max_batches:
            rewrapped_before = run.rewrapped
            self._rewrap_pass(run, batch_size, max_batches, on_batch)
            if run.rewrapped == rewrapped_before:
                break
        with self._db.transaction() as session:
            remaining = _count_pending(session, self._old_versions()[1])
            report = RotationReport(
                from_versions=from_versions,
                to_version=run.to_version,
                resumed=resumed,
                rewrapped=run.rewrapped,
                failed=len(run.failed_ids),
                remaining=remaining,
                batches=run.batches,
            )
            self._audit.record(
                session,
                action="keys.rotated",
                resource_type="master_key",
                resource_id=report.to_version,
                outcome="success" if report.complete else "incomplete",
                detail={
                    "from": ",".join(report.from_versions) or None,
                    "to": report.to_version,
                    "resumed": report.resumed,
                    "rewrapped": report.rewrapped,
                    "failed": report.failed,
                    "remaining": report.remaining,
                    **_requested_by(actor),
                },
            )
            if actor is not None and self._idempotency is not None:
                self._idempotency.record_outcome(session, actor.tenant_id, report.view())
        return report

    def _start(
        self, actor: Actor | None, *, resume_only: bool, request: str | None
    ) -> tuple[tuple[str, ...], str, bool]:
        """Decide under the lock: go on with the version ``request`` added, resume, or add a
        version first. ``(from, to, resumed)``."""
        with self._db.transaction() as session:
            _lock_key_administration(session)
            added = self._version_added_for(session, request) if request is not None else None
            if added is not None:
                return added
            active, old = self._old_versions()
            counts = _live_counts(session, None)
            pending = tuple(key_id for key_id in old if counts.get(key_id))
            if pending:
                return pending, active, True
            if resume_only:
                return (), active, False
            from_versions = (active,) if counts.get(active) else ()
            new_version = self._provider.add_version(now=self._clock())  # durable before any use
            self._audit.record(
                session,
                action="keys.master_key_added",
                resource_type="master_key",
                resource_id=new_version,
                detail={
                    "previous": active,
                    **({"from": ",".join(from_versions), "request": request} if request else {}),
                    **_requested_by(actor),
                },
            )
        return from_versions, new_version, False

    def _version_added_for(self, session: Session, request: str) -> tuple[tuple[str, ...], str, bool] | None:
        """``(from, to, False)`` of the version that the request ``request`` added within the
        replay window, if the provider still has it."""
        added = session.exec(
            select(AuditEvent.resource_id, AuditEvent.detail).where(
                AuditEvent.chain == SYSTEM_CHAIN,
                AuditEvent.action == "keys.master_key_added",
                AuditEvent.occurred_at >= self._clock() - IDEMPOTENCY_TTL,
            )
        ).all()
        known = {version.key_id for version in self._provider.versions()}
        for version, detail in added:
            recorded = json.loads(detail or "{}")
            if recorded.get("request") == request and version in known:
                return tuple(filter(None, recorded["from"].split(","))), version, False
        return None

    def _rewrap_pass(
        self,
        run: _Run,
        batch_size: int,
        max_batches: int | None,
        on_batch: Callable[[RotationProgress], None] | None,
    ) -> None:
        after = ""
        while max_batches is None or run.batches < max_batches:
            with self._db.transaction() as session:
                active, old = self._old_versions()
                rows = _lock_pending_batch(session, old, after, batch_size)
                if not rows:
                    return
                for row in rows:
                    self._rewrap(row, run)
                    session.add(row)
                after = rows[-1].id
            run.to_version = active
            run.batches += 1
            if on_batch is not None:
                on_batch(
                    RotationProgress(
                        to_version=active,
                        batches=run.batches,
                        rewrapped=run.rewrapped,
                        failed=len(run.failed_ids),
                    )
                )

    def _old_versions(self) -> tuple[str, list[str]]:
        """The active version and every other version the provider has (read fresh each time)."""
        active = self._provider.active_key_id
        return active, sorted(v.key_id for v in self._provider.versions() if v.key_id != active)

    def _rewrap(self, row: DataKeyRecord, run: _Run) -> None:
        assert row.wrapped is not None  # selected with wrapped IS NOT NULL
        try:
            dek = self._provider.unwrap(
                row.wrapped, tenant_id=row.tenant_id, purpose=row.purpose, dek_id=row.id
            )
        except DecryptionError:
            run.failed_ids.add(row.id)
            return
        wrapped = self._provider.wrap(dek, tenant_id=row.tenant_id, purpose=row.purpose)
        row.wrapped = wrapped
        row.master_key_id = sealed_key_id(wrapped)
        run.failed_ids.discard(row.id)
        run.rewrapped += 1

    # --- retirement -----------------------------------------------------------------------------

    def retire_master_key(self, key_id: str, *, actor: Actor | None = None) -> RetirementReport:
        """Destroy master key version ``key_id`` once no live DEK needs it.

        Raises:
            NotFound: the provider has no such version (``ids['resource'] == "master_key"``).
            InvalidStateTransition: ``key_id`` is the active version, or live DEKs still need it
                (``ids['live_deks']``): run a rotation first.
            KeyringError: the master-key store is unavailable or cannot be written.
        """
        # Blob headers are checked before taking the lock (a full scan should not block writers);
        # only rotation moves DEKs between versions, and only towards the active one.
        named_by_blob = self._count_blobs_naming(key_id)
        with self._db.transaction() as session:
            _lock_key_administration(session)
            if key_id not in {version.key_id for version in self._provider.versions()}:
                raise NotFound(resource="master_key", key_id=key_id)
            if key_id == self._provider.active_key_id:
                raise InvalidStateTransition(
                    f"{key_id} is the active master key; rotate to a new version before retiring it",
                    key_id=key_id,
                )
            live = max(_live_counts(session, None).get(key_id, 0), named_by_blob)
            if live:
                raise InvalidStateTransition(
                    f"{key_id} still wraps {live} live data keys; run `veilbill keys rotate` first",
                    key_id=key_id,
                    live_deks=live,
                )
            self._provider.remove_version(key_id)
            retired_at = self._clock()
            self._audit.record(
                session,
                action="keys.retired",
                resource_type="master_key",
                resource_id=key_id,
                detail=_requested_by(actor),
            )
        return RetirementReport(key_id=key_id, retired_at=retired_at)

    def _count_blobs_naming(self, key_id: str) -> int:
        count = 0
        for wrapped in self._live_blobs():
            try:
                named = sealed_key_id(wrapped)
            except DecryptionError:
                continue  # a malformed blob needs no version at all
            count += named == key_id
        return count

    def _live_blobs(self) -> Iterator[bytes]:
        after = ""
        while True:
            with self._db.read() as session:
                page = session.exec(
                    select(DataKeyRecord.id, DataKeyRecord.wrapped)
                    .where(col(DataKeyRecord.wrapped).is_not(None), DataKeyRecord.id > after)
                    .order_by(col(DataKeyRecord.id))
                    .limit(_SCAN_PAGE)
                ).all()
            if not page:
                return
            for _, wrapped in page:
                if wrapped is not None:
                    yield wrapped
            after = page[-1][0]


def _requested_by(actor: Actor | None) -> dict[str, str | None]:
    """Who asked, for the ``system`` chain event's detail (ids and role, never PII)."""
    if actor is None:
        return {"requested_by": "operator"}
    return {
        "requested_by": actor.role,
        "requested_by_tenant": actor.tenant_id,
        "requested_by_key": actor.key_id,
        "request_id": actor.request_id,
    }


def _lock_key_administration(session: Session) -> None:
    """Serialize adding and retiring versions across processes until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    # SQLite: the transaction began with BEGIN IMMEDIATE, which already excludes every other writer.


def _live_counts(session: Session, tenant_id: str | None) -> Mapping[str, int]:
    query = select(DataKeyRecord.master_key_id, func.count()).where(col(DataKeyRecord.wrapped).is_not(None))
    if tenant_id is not None:
        query = query.where(DataKeyRecord.tenant_id == tenant_id)
    query = query.group_by(col(DataKeyRecord.master_key_id))
    return dict(session.exec(query).all())


def _count_pending(session: Session, old_versions: list[str]) -> int:
    if not old_versions:
        return 0
    query = select(func.count()).where(
        col(DataKeyRecord.wrapped).is_not(None), col(DataKeyRecord.master_key_id).in_(old_versions)
    )
    return session.exec(query).one()


def _lock_pending_batch(
    session: Session, old_versions: list[str], after: str, limit: int
) -> list[DataKeyRecord]:
    if not old_versions:
        return []
    postgres = session.get_bind().dialect.name == "postgresql"
    query = (
        select(DataKeyRecord)
        .where(
            col(DataKeyRecord.wrapped).is_not(None),
            col(DataKeyRecord.master_key_id).in_(old_versions),
            DataKeyRecord.id > after,
        )
        .order_by(col(DataKeyRecord.id))
        .limit(limit)
        .with_for_update(skip_locked=postgres)
    )
    return list(session.exec(query).all())
