"""DEK rotation: re-encrypt one data subject's values under fresh data keys, in one transaction.

What is re-encrypted
    Every column sealed under a subject's DEK (``tests/billing/test_subject_rotation.py`` checks
    that this list covers every ``*_ct`` column of the models):

    - ``profile``: ``customers.{name,email,phone,address,birth_date,gender,notes,external_ref}_ct``;
    - ``record``: ``invoices.notes_ct``, ``invoices.customer_snapshot_ct``,
      ``invoice_lines.description_ct`` of every invoice of the client.

    Not per subject, so not here: the tenant's ``index`` key (blind indexes) and ``idempotency``
    key (stored responses, ``idempotency_records.response_ct``). Blind indexes do not change: they
    are keyed by the tenant's index key, not by the subject's DEKs.

How, in one transaction
    1. The customer row is locked ``FOR UPDATE``: it is the **subject lock**. Every service that
       seals under a subject's DEK takes it first, before any other row lock — rectification
       ``FOR UPDATE``; invoice creation, draft edits and finalization ``FOR SHARE`` — and reads the
       DEK only after it, or locks the DEK's row in the same statement (a draft: PostgreSQL then
       re-reads the newest version of each row it locked). So a sealer either finishes before the
       rotation reads anything, or waits and then reads the new DEK: nothing is ever sealed under a
       DEK being replaced. (SQLite: every write transaction begins ``IMMEDIATE``, so writers never
       overlap at all.)
    2. The subject's ``data_keys`` rows are locked ``FOR UPDATE`` and unwrapped.
    3. For each purpose: a fresh DEK (new id, 32 new random bytes) wrapped under the active master
       version; every value is opened under the old DEK and sealed under the new one for the same
       tenant, table, column and row (a fresh nonce each).
    4. The ``data_keys`` row is rewritten in place — new id, new wrapped blob, its master version,
       creation time — so the old DEK's wrapped bytes are gone from the live database, and
       ``(tenant, subject, purpose)`` keeps exactly one key.
    5. ``keys.subject_rotated`` is audited on the tenant's chain (subject id, purposes, counts; the
       old and new DEK ids, never material).

    A value that does not open under the old DEK (tampered, moved) aborts the whole rotation with
    the opaque ``DecryptionError``; nothing changes.

What it protects against
    A DEK suspected of exposure (a memory dump, a leaked unwrapped key): from the commit on, the
    live database holds no value under it. What it does not: a copy of the database taken before
    still holds the old wrapped DEK and the old values; they stay readable with the master version
    that wrapped that DEK — rotate and retire the master version too (``docs/encryption.md``).
    Readers do not take the subject lock (on PostgreSQL it would make every read a row-lock
    write): a read whose statements straddle the rotation's commit finds rows sealed under the
    old DEK beside the new DEK, and re-reads the rows once before it gives up
    (:func:`~billing._keys.open_across_a_rotation`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from sqlalchemy import update
from sqlmodel import Session, col, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._customers import PII_FIELDS
from billing._db import Database, get_for_tenant
from billing._envelope import DataKey, FieldContext, generate_key_material, open_sealed, seal, sealed_key_id
from billing._invoices import SEALED_INVOICE_COLUMNS, SEALED_LINE_COLUMNS
from billing._keyring import Keyring, master_key_provider_of
from billing._models import Customer, DataKeyRecord, Invoice, InvoiceLine, new_id
from billing.errors import CustomerErased, RecordExpired

__all__ = ["SUBJECT_KEY_PURPOSES", "SubjectKeyRotation", "SubjectKeyRotationService", "SubjectPurpose"]

SubjectPurpose = Literal["profile", "record", "all"]
SUBJECT_KEY_PURPOSES: Final = ("profile", "record")


@dataclass(frozen=True, slots=True)
class SubjectKeyRotation:
    """What one DEK rotation did: ids and counts, never key material or values.

    ``rotated`` maps each rotated purpose to its new DEK id; ``skipped`` names the purposes whose
    key no longer exists (a profile key shredded at erasure, a record key at retention's end).
    ``values`` counts the values re-encrypted.
    """

    customer_id: str
    rotated: dict[str, str]
    skipped: tuple[str, ...]
    values: int
    rotated_at: datetime


class SubjectKeyRotationService:
    """Rotates the DEKs of one data subject (a client) and re-encrypts their values.

    Collaborators are injected: the database, the keyring (its attached master-key provider wraps
    the new DEKs), the audit trail, the clock and the randomness source.
    """

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditTrail,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._clock = clock
        self._rng = rng

    def rotate_subject_keys(
        self, actor: Actor, customer_id: str, *, purpose: SubjectPurpose = "all"
    ) -> SubjectKeyRotation:
        """Give the client fresh ``purpose`` DEKs, re-encrypt their values, destroy the old DEKs.

        With ``"all"``, a purpose whose key was already destroyed is skipped (and reported).

        Raises:
            NotFound: no such client in the actor's tenant.
            CustomerErased: ``purpose="profile"`` for an erased client (the key is gone).
            RecordExpired: ``purpose="record"`` after retention destroyed the record key.
            DecryptionError: a value or a key did not open; nothing was changed.
            KeyringError: the master-key store is unavailable.
            ValueError: ``purpose`` is not ``profile``, ``record`` or ``all``.
        """
        if purpose not in (*SUBJECT_KEY_PURPOSES, "all"):
            raise ValueError("purpose must be profile, record or all")
        wanted = SUBJECT_KEY_PURPOSES if purpose == "all" else (purpose,)
        masters = master_key_provider_of(self._keyring, rng=self._rng)
        with self._db.transaction() as session:
            customer = get_for_tenant(
                session, Customer, actor.tenant_id, customer_id, resource="customer", for_update=True
            )
            records = _lock_subject_keys(session, actor.tenant_id, customer.id)
            rotated: dict[str, str] = {}
            skipped: list[str] = []
            values = 0
            for name in wanted:
                record = records.get(name)
                if record is None or record.wrapped is None:
                    if purpose == "profile":
                        raise CustomerErased(resource="customer")
                    if purpose == "record":
                        raise RecordExpired(resource="customer")
                    skipped.append(name)
                    continue
                old = masters.unwrap(
                    record.wrapped, tenant_id=actor.tenant_id, purpose=name, dek_id=record.id
                )
                new = DataKey(key_id=new_id("dek"), material=generate_key_material(self._rng))
                if name == "profile":
                    values += self._reseal_profile(customer, old, new)
                    session.add(customer)
                else:
                    values += self._reseal_records(session, actor.tenant_id, customer.id, old, new)
                wrapped = masters.wrap(new, tenant_id=actor.tenant_id, purpose=name)
                session.execute(
                    update(DataKeyRecord)
                    .where(col(DataKeyRecord.id) == record.id)
                    .values(
                        id=new.key_id,
                        wrapped=wrapped,
                        master_key_id=sealed_key_id(wrapped),
                        created_at=self._clock(),
                    )
                    .execution_options(synchronize_session=False)
                )
                rotated[name] = new.key_id
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="keys.subject_rotated",
                resource_type="customer",
                resource_id=customer.id,
                subject_id=customer.id,
                detail={
                    "purposes": ",".join(rotated) or None,
                    "skipped": ",".join(skipped) or None,
                    "values": values,
                    **{f"old_{name}_dek": records[name].id for name in rotated},
                    **{f"new_{name}_dek": dek_id for name, dek_id in rotated.items()},
                },
            )
            return SubjectKeyRotation(
                customer_id=customer.id,
                rotated=rotated,
                skipped=tuple(skipped),
                values=values,
                rotated_at=self._clock(),
            )

    def _reseal_profile(self, customer: Customer, old: DataKey, new: DataKey) -> int:
        count = 0
        for name in PII_FIELDS:
            column = f"{name}_ct"
            sealed = getattr(customer, column)
            if sealed is None:
                continue
            context = FieldContext(customer.tenant_id, "customers", name, customer.id)
            setattr(customer, column, self._reseal(old, new, sealed, context))
            count += 1
        return count

    def _reseal_records(
        self, session: Session, tenant_id: str, customer_id: str, old: DataKey, new: DataKey
    ) -> int:
        invoices = list(
            session.exec(
                select(Invoice)
                .where(Invoice.tenant_id == tenant_id, Invoice.customer_id == customer_id)
                .order_by(col(Invoice.id))
                .with_for_update()
            )
        )
        count = self._reseal_rows(invoices, "invoices", SEALED_INVOICE_COLUMNS, old, new)
        if invoices:
            lines = list(
                session.exec(
                    select(InvoiceLine)
                    .where(
                        InvoiceLine.tenant_id == tenant_id,
                        col(InvoiceLine.invoice_id).in_([invoice.id for invoice in invoices]),
                    )
                    .order_by(col(InvoiceLine.id))
                    .with_for_update()
                )
            )
            count += self._reseal_rows(lines, "invoice_lines", SEALED_LINE_COLUMNS, old, new)
        for row in invoices:
            session.add(row)
        return count

    def _reseal_rows(
        self,
        rows: Iterable[Invoice] | Iterable[InvoiceLine],
        table: str,
        columns: tuple[str, ...],
        old: DataKey,
        new: DataKey,
    ) -> int:
        count = 0
        for row in rows:
            for name in columns:
                sealed = getattr(row, f"{name}_ct")
                if sealed is None:
                    continue
                context = FieldContext(row.tenant_id, table, name, row.id)
                setattr(row, f"{name}_ct", self._reseal(old, new, sealed, context))
                count += 1
        return count

    def _reseal(self, old: DataKey, new: DataKey, sealed: bytes, context: FieldContext) -> bytes:
        return seal(new, open_sealed(old, sealed, context), context, rng=self._rng)


def _lock_subject_keys(session: Session, tenant_id: str, subject_id: str) -> dict[str, DataKeyRecord]:
    rows = session.exec(
        select(DataKeyRecord)
        .where(
            DataKeyRecord.tenant_id == tenant_id,
            DataKeyRecord.subject_id == subject_id,
            col(DataKeyRecord.purpose).in_(SUBJECT_KEY_PURPOSES),
        )
        .order_by(col(DataKeyRecord.purpose))
        .with_for_update()
    ).all()
    return {row.purpose: row for row in rows}
