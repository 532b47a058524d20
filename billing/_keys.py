"""Data keys of data subjects: creation, unwrapping and shredding.

Each subject (a customer; a tenant for its blind-index key) has at most one live DEK per purpose:

- ``profile``: contact data and notes. Destroyed at erasure.
- ``record``: the invoice content the law requires to keep (client snapshot, line descriptions).
- ``index``: a tenant's blind-index key (subject = the tenant).
- ``idempotency``: a tenant's key for stored idempotent responses (subject = the tenant).
- ``webhooks``: a tenant's key for the signing secrets of its webhook endpoints (subject = the tenant).

A DEK is 32 random bytes, wrapped by the active master key version of a
:class:`~billing._keyring.MasterKeyProvider` (the keyring file's keys or an HSM's) and bound
(associated data) to tenant, purpose and DEK id, so a wrapped key copied to another row does not
unwrap. ``data_keys.master_key_id`` names the version that wrapped it (read from the blob's header,
so the two always agree); unwrapping picks the version from the blob itself. Shredding
deletes the wrapped bytes: every value sealed under that DEK becomes unreadable, in this database
and, once the master version that wrapped it is retired, in old backups too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

import sqlalchemy
from sqlalchemy import Select, bindparam
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from billing._audit import Along
from billing._db import in_constants, insert_ignore, shareable
from billing._envelope import DataKey, generate_key_material, sealed_key_id
from billing._keyring import Keyring, MasterKeyProvider, master_key_provider_of
from billing._models import Customer, DataKeyRecord, new_id
from billing.errors import DecryptionError

__all__ = [
    "PURPOSES",
    "SubjectKeys",
    "keys_along",
    "locked_subject_along",
    "open_across_a_rotation",
]

PURPOSES = ("profile", "record", "index", "idempotency", "webhooks")

T = TypeVar("T")


def open_across_a_rotation(open_values: Callable[[bool], T], reload: Callable[[], None]) -> T:
    """Open a subject's values, once more after ``reload`` if they do not open the first time.

    Readers do not take the subject lock (it would turn every read into a row-lock write on
    PostgreSQL). So under READ COMMITTED a reader can load a row sealed under the old DEK and then
    the key row after a rotation of that subject committed, or hold a row loaded earlier in its
    session: the value and the key come from two sides of the rotation and do not match.
    ``reload`` re-reads the rows from the database (``session.refresh``); ``open_values`` is told
    whether it runs after a reload (``True``), when it must look the key up afresh and not use what
    it was handed before. A value that still does not open is really unreadable (tampered,
    moved, shredded): the second ``DecryptionError`` propagates.
    """
    try:
        return open_values(False)
    except DecryptionError:
        pass
    reload()  # outside the except block: the error that follows, if any, carries no context
    return open_values(True)


def keys_along(tenant_id: str, subject_id: str, purposes: tuple[str, ...]) -> Along:
    """The subject's key rows for ``purposes``, as a read an audit link's statement can carry
    (:meth:`~billing._audit.AuditTrail.record_along`); :meth:`SubjectKeys.adopt_all` takes them."""
    return Along(_keys_of_subject(purposes), {"keys_tenant": tenant_id, "keys_subject": subject_id})


def locked_subject_along(tenant_id: str, customer_id: str, purposes: tuple[str, ...]) -> Along:
    """The client's row locked ``FOR SHARE`` (the subject lock, see ``_subject_rotation``), with its
    key rows for ``purposes``, locked too, as ``(Customer, DataKeyRecord)`` pairs: a read an
    audit link's statement carries ``first`` (the lock before the chain's head), for a unit that
    seals under the client's keys and audits it.

    The key rows are locked in the statement that takes the subject lock, not read in a later
    one: PostgreSQL re-reads the newest version of every row a statement locks once it waited for
    it, so after waiting for a rotation the keys are the rotation's; a key row joined to the
    locking read without a lock of its own would be the one of the statement's snapshot, from
    before the rotation. No pair at all: no such client in the tenant (or none of its keys).
    """
    return Along(
        _locked_subject(purposes), {"subject_tenant": tenant_id, "subject_customer": customer_id}, first=True
    )


@functools.cache
def _locked_subject(purposes: tuple[str, ...]) -> Select[Customer, DataKeyRecord]:
    """``locked_subject_along``'s query, built once per set of purposes."""
    customers, keys = Customer.__table__, DataKeyRecord.__table__  # type: ignore[attr-defined]
    # SQLAlchemy's select: a query of two models, which the append's statement composes as a Core one
    return shareable(
        sqlalchemy.select(Customer, DataKeyRecord)
        .join(
            DataKeyRecord,
            (col(DataKeyRecord.tenant_id) == col(Customer.tenant_id))
            & (col(DataKeyRecord.subject_id) == col(Customer.id))
            & in_constants(col(DataKeyRecord.purpose), purposes),
        )
        .where(
            col(Customer.id) == bindparam("subject_customer"),
            col(Customer.tenant_id) == bindparam("subject_tenant"),
        )
        .with_for_update(read=True, of=[customers, keys])
    )


@functools.cache
def _keys_of_subject(purposes: tuple[str, ...]) -> SelectOfScalar[DataKeyRecord]:
    """The key rows of one subject (``keys_tenant``, ``keys_subject``) for ``purposes``, built
    once per set of purposes (few: they are the service's own)."""
    return shareable(
        select(DataKeyRecord).where(
            col(DataKeyRecord.tenant_id) == bindparam("keys_tenant"),
            col(DataKeyRecord.subject_id) == bindparam("keys_subject"),
            in_constants(col(DataKeyRecord.purpose), purposes),
        )
    )


class SubjectKeys:
    """The DEKs used within one unit of work; unwrapped keys are cached for that unit only.

    ``keys`` is the master-key provider that wraps DEKs, or a :class:`Keyring`, which stands for the
    provider attached to it (see :func:`~billing._keyring.master_key_provider_of`).
    """

    def __init__(
        self,
        session: Session,
        keys: Keyring | MasterKeyProvider,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._session = session
        self._masters = master_key_provider_of(keys, rng=rng) if isinstance(keys, Keyring) else keys
        self._clock = clock
        self._rng = rng
        self._cache: dict[tuple[str, str, str], DataKey] = {}

    def create(self, tenant_id: str, subject_id: str, purpose: str) -> DataKey:
        """Make a new DEK for ``subject_id``; the caller's transaction stores it."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown key purpose {purpose!r}")
        dek = DataKey(key_id=new_id("dek"), material=generate_key_material(self._rng))
        wrapped = self._masters.wrap(dek, tenant_id=tenant_id, purpose=purpose)
        record = DataKeyRecord(
            id=dek.key_id,
            tenant_id=tenant_id,
            subject_id=subject_id,
            purpose=purpose,
            master_key_id=sealed_key_id(wrapped),
            wrapped=wrapped,
            created_at=self._clock(),
        )
        self._session.add(record)
        self._cache[(tenant_id, subject_id, purpose)] = dek
        return dek

    def get(self, tenant_id: str, subject_id: str, purpose: str) -> DataKey:
        """The subject's live DEK for ``purpose``.

        Raises:
            DecryptionError: the key does not exist, was shredded, or fails to unwrap (one opaque
                error for all three).
            KeyringError: the master-key store is unavailable (keyring file unreadable, HSM down).
        """
        cached = self._cache.get((tenant_id, subject_id, purpose))
        if cached is not None:
            return cached
        record = self._session.exec(
            select(DataKeyRecord).where(
                DataKeyRecord.tenant_id == tenant_id,
                DataKeyRecord.subject_id == subject_id,
                DataKeyRecord.purpose == purpose,
            )
        ).one_or_none()
        if record is None or record.wrapped is None:
            raise DecryptionError()
        dek = self._masters.unwrap(record.wrapped, tenant_id=tenant_id, purpose=purpose, dek_id=record.id)
        self._cache[(tenant_id, subject_id, purpose)] = dek
        return dek

    def preload(self, tenant_id: str, subject_ids: Sequence[str], purpose: str) -> None:
        """Unwrap the live DEKs of many subjects with one query, into this unit's cache.

        Subjects without a live key are skipped (``get`` then raises ``DecryptionError`` for them);
        a key that fails to unwrap is skipped the same way. For bulk readers such as report exports.
        """
        wanted = [s for s in subject_ids if (tenant_id, s, purpose) not in self._cache]
        if not wanted:
            return
        records = self._session.exec(
            select(DataKeyRecord).where(
                DataKeyRecord.tenant_id == tenant_id,
                col(DataKeyRecord.subject_id).in_(wanted),
                DataKeyRecord.purpose == purpose,
            )
        ).all()
        for record in records:
            if record.wrapped is None:
                continue
            try:
                dek = self._masters.unwrap(
                    record.wrapped, tenant_id=tenant_id, purpose=purpose, dek_id=record.id
                )
            except DecryptionError:
                continue
            self._cache[(tenant_id, record.subject_id, purpose)] = dek

    def load(self, tenant_id: str, subject_id: str, purposes: Sequence[str]) -> None:
        """Unwrap the subject's live DEKs for several ``purposes`` with one query, into this unit's cache.

        A purpose without a live key, or whose key fails to unwrap, is skipped: ``get`` then looks
        it up again and raises ``DecryptionError``. For a unit of work that needs two keys of one
        subject (a draft invoice: the ``profile`` key for the client snapshot, the ``record`` key
        to seal it).
        """
        wanted = [p for p in purposes if (tenant_id, subject_id, p) not in self._cache]
        if not wanted:
            return
        along = keys_along(tenant_id, subject_id, tuple(wanted))
        self.adopt_all(self._session.scalars(along.query, along.parameters))

    def adopt(self, record: DataKeyRecord) -> None:
        """Unwrap a key row the caller read itself (joined to the row it protects) into this unit's cache.

        A shredded row is skipped, and so is one that fails to unwrap: ``get`` then looks the key up
        again and raises as usual. The row's tenant, purpose and id are the wrapping's associated
        data, so a row moved to another tenant or purpose does not unwrap; that it belongs to the
        subject is the caller's query to ensure, as ``get``'s query does.

        A unit that seals must have read its keys after taking the subject lock (see
        ``_subject_rotation``): in a later statement, or locked in the locking read itself
        (:func:`locked_subject_along`), never merely joined to it: a row joined to the row a
        statement waited to lock, without a lock of its own, is the one of the statement's
        snapshot, from before the rotation it waited for.
        """
        if record.wrapped is None:
            return
        try:
            dek = self._masters.unwrap(
                record.wrapped, tenant_id=record.tenant_id, purpose=record.purpose, dek_id=record.id
            )
        except DecryptionError:
            return
        self._cache[(record.tenant_id, record.subject_id, record.purpose)] = dek

    def adopt_all(self, records: Iterable[DataKeyRecord]) -> None:
        """:meth:`adopt` each of ``records``."""
        for record in records:
            self.adopt(record)

    def get_or_create(self, tenant_id: str, subject_id: str, purpose: str) -> DataKey:
        """The live DEK, made on first use (two concurrent first uses both end with one key)."""
        try:
            return self.get(tenant_id, subject_id, purpose)
        except DecryptionError:
            pass
        dek = DataKey(key_id=new_id("dek"), material=generate_key_material(self._rng))
        wrapped = self._masters.wrap(dek, tenant_id=tenant_id, purpose=purpose)
        created = insert_ignore(
            self._session,
            DataKeyRecord,
            {
                "id": dek.key_id,
                "tenant_id": tenant_id,
                "subject_id": subject_id,
                "purpose": purpose,
                "master_key_id": sealed_key_id(wrapped),
                "wrapped": wrapped,
                "created_at": self._clock(),
            },
        )
        if created:
            self._cache[(tenant_id, subject_id, purpose)] = dek
            return dek
        return self.get(tenant_id, subject_id, purpose)

    def shred(self, tenant_id: str, subject_id: str, purpose: str) -> bool:
        """Destroy the subject's DEK for ``purpose`` (crypto-shredding); True if there was one.

        The wrapped key is overwritten with NULL in the caller's transaction: from its commit on,
        every value sealed under that key is unreadable here. Copies of the database taken before
        stay readable only while the master key version that wrapped it exists — rotating and then
        retiring that version makes them unreadable too.
        """
        record = self._session.exec(
            select(DataKeyRecord)
            .where(
                DataKeyRecord.tenant_id == tenant_id,
                DataKeyRecord.subject_id == subject_id,
                DataKeyRecord.purpose == purpose,
            )
            .with_for_update()
        ).one_or_none()
        self._cache.pop((tenant_id, subject_id, purpose), None)
        if record is None or record.wrapped is None:
            return False
        record.wrapped = None
        record.destroyed_at = self._clock()
        self._session.add(record)
        return True

    def index_key(self, tenant_id: str) -> bytes:
        """The tenant's blind-index key (32 bytes)."""
        return self.get(tenant_id, tenant_id, "index").material
