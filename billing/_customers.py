"""Clients of a business: PII sealed field by field under the client's ``profile`` key.

Every field of :class:`CustomerInput` is sealed into its own column with associated data binding
tenant, table, column and row, so a ciphertext copied onto another row or column does not open.
Email and external reference are also blind-indexed under the tenant's index key for lookups.
Every read of decrypted PII is audited (``customer.read``) in the same transaction as the read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec
from sqlmodel import Session, select

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._blind_index import blind_index, normalize_email, normalize_ref
from billing._db import Database, get_for_tenant
from billing._envelope import DataKey, FieldContext, open_sealed_text, seal_text
from billing._idempotency import IdempotencyStore
from billing._keyring import Keyring
from billing._keys import SubjectKeys, keys_along, open_across_a_rotation
from billing._models import Customer, new_id
from billing.errors import CustomerErased

__all__ = [
    "PII_FIELDS",
    "Address",
    "CustomerInput",
    "CustomerPatch",
    "CustomerService",
    "CustomerView",
    "Gender",
]

Gender = Literal["female", "male", "non_binary", "other", "undisclosed"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
Phone = Annotated[str, msgspec.Meta(min_length=3, max_length=40, pattern=r"^\+?[0-9 ().-]+$")]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Notes = Annotated[str, msgspec.Meta(max_length=4000)]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
AddressLine = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Postcode = Annotated[str, msgspec.Meta(min_length=1, max_length=20)]

# Every sealed profile column (``{name}_ct``): encryption, rectification and erasure all use this list.
PII_FIELDS = ("name", "email", "phone", "address", "birth_date", "gender", "notes", "external_ref")


class _Masked(msgspec.Struct, forbid_unknown_fields=True):
    """Structs holding PII print their type and field names only."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self.__struct_fields__)} fields redacted>)"


class Address(_Masked, kw_only=True):
    line1: AddressLine
    line2: AddressLine | None = None
    city: AddressLine
    postcode: Postcode
    country: Country


class CustomerInput(_Masked, kw_only=True):
    name: Name
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = None
    birth_date: date | None = None
    gender: Gender | None = None
    external_ref: Ref | None = None
    notes: Notes | None = None


class CustomerPatch(_Masked, kw_only=True):
    """Rectification: fields left out are unchanged; ``null`` clears a field (not ``name``)."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    email: Email | msgspec.UnsetType | None = msgspec.UNSET
    phone: Phone | msgspec.UnsetType | None = msgspec.UNSET
    address: Address | msgspec.UnsetType | None = msgspec.UNSET
    birth_date: date | msgspec.UnsetType | None = msgspec.UNSET
    gender: Gender | msgspec.UnsetType | None = msgspec.UNSET
    external_ref: Ref | msgspec.UnsetType | None = msgspec.UNSET
    notes: Notes | msgspec.UnsetType | None = msgspec.UNSET


class CustomerView(_Masked, kw_only=True):
    id: str
    name: str
    email: str | None
    phone: str | None
    address: Address | None
    birth_date: date | None
    gender: Gender | None
    external_ref: str | None
    notes: str | None
    created_at: datetime
    updated_at: datetime


class CustomerService:
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

    def _keys(self, session: Session) -> SubjectKeys:
        return SubjectKeys(session, self._keyring, clock=self._clock, rng=self._rng)

    def create(self, actor: Actor, data: CustomerInput) -> CustomerView:
        """A new client, its data keys, its sealed PII; in a keyed request, its answer too."""
        now = self._clock()
        customer = Customer(id=new_id("cus"), tenant_id=actor.tenant_id, created_at=now, updated_at=now)
        with self._db.transaction() as session:
            # The link comes first and brings the tenant's blind-index key in its statement (one
            # round trip on PostgreSQL); the client's rows follow it in the same transaction.
            _, index_rows = self._audit.record_along(
                session,
                keys_along(actor.tenant_id, actor.tenant_id, ("index",)),
                actor=actor,
                action="customer.created",
                resource_type="customer",
                resource_id=customer.id,
                subject_id=customer.id,
            )
            keys = self._keys(session)
            keys.adopt_all(index_rows)
            profile = keys.create(actor.tenant_id, customer.id, "profile")
            keys.create(actor.tenant_id, customer.id, "record")
            values = {name: getattr(data, name) for name in PII_FIELDS}
            self._seal_fields(customer, profile, values)
            self._index(customer, keys.index_key(actor.tenant_id), values)
            session.add(customer)
            view = _view(customer, values)
            if self._idempotency is not None:
                self._idempotency.record_outcome(session, actor.tenant_id, view)
            return view

    def read(self, actor: Actor, customer_id: str) -> CustomerView:
        """The decrypted client; the read is audited. Raises NotFound, CustomerErased, DecryptionError."""
        with self._db.transaction() as session:
            customer = _get_live(session, actor.tenant_id, customer_id)
            # The read's audit link brings the client's profile key (one round trip on PostgreSQL).
            _, key_rows = self._audit.record_along(
                session,
                keys_along(actor.tenant_id, customer.id, ("profile",)),
                actor=actor,
                action="customer.read",
                resource_type="customer",
                resource_id=customer.id,
                subject_id=customer.id,
            )
            keys = self._keys(session)
            keys.adopt_all(key_rows)
            return self._open(session, customer, keys)

    def rectify(self, actor: Actor, customer_id: str, patch: CustomerPatch) -> CustomerView:
        with self._db.transaction() as session:
            customer = _get_live(session, actor.tenant_id, customer_id, for_update=True)
            keys = self._keys(session)
            profile = keys.get(actor.tenant_id, customer.id, "profile")
            values = self._open_values(customer, profile)
            changed = {
                name: getattr(patch, name) for name in PII_FIELDS if getattr(patch, name) is not msgspec.UNSET
            }
            values.update(changed)
            self._seal_fields(customer, profile, changed)
            self._index(customer, keys.index_key(actor.tenant_id), changed)
            customer.updated_at = self._clock()
            session.add(customer)
            self._audit.record(
                session,
                actor=actor,
                action="customer.rectified",
                resource_type="customer",
                resource_id=customer.id,
                subject_id=customer.id,
                detail={"fields": ",".join(sorted(changed))},
            )
            return _view(customer, values)

    def find_by_email(self, actor: Actor, email: str) -> list[CustomerView]:
        """Clients whose email matches (blind index; case- and space-insensitive); reads audited."""
        return self._find(actor, "email", normalize_email(email))

    def find_by_external_ref(self, actor: Actor, external_ref: str) -> list[CustomerView]:
        return self._find(actor, "external_ref", normalize_ref(external_ref))

    def snapshot_for_invoice(
        self, session: Session, customer: Customer, keys: SubjectKeys | None = None
    ) -> dict[str, object]:
        """Name, email and address of ``customer`` (a row the caller loaded, and locked if it
        seals with them) to copy onto an invoice, in the caller's transaction; ``keys`` is the
        caller's unit of keys, when it has one.

        Raises:
            CustomerErased: the client was erased (there is nothing to copy any more).
            DecryptionError: the profile key is missing or does not unwrap.
        """
        if customer.erased_at is not None:
            raise CustomerErased(resource="customer")
        profile = (keys or self._keys(session)).get(customer.tenant_id, customer.id, "profile")
        values = self._open_values(customer, profile)
        return {
            "name": values["name"],
            "email": values["email"],
            "address": msgspec.to_builtins(values["address"]) if values["address"] else None,
        }

    def _find(self, actor: Actor, field: str, normalized: str) -> list[CustomerView]:
        with self._db.transaction() as session:
            digest = blind_index(self._keys(session).index_key(actor.tenant_id), normalized, field=field)
            column = Customer.email_bidx if field == "email" else Customer.external_ref_bidx
            found = session.exec(
                select(Customer)
                .where(Customer.tenant_id == actor.tenant_id, column == digest)
                .order_by(Customer.created_at)  # type: ignore[arg-type]
                .limit(100)
            ).all()
            views = [self._open(session, c) for c in found]
            for customer in found:
                self._audit_read(session, actor, customer.id)
            return views

    def profile_for_export(self, session: Session, tenant_id: str, customer_id: str) -> CustomerView | None:
        """The decrypted profile for an access request, or None once erased (not audited here)."""
        customer = _get(session, tenant_id, customer_id)
        if customer.erased_at is not None:
            return None
        return self._open(session, customer)

    def _open(self, session: Session, customer: Customer, keys: SubjectKeys | None = None) -> CustomerView:
        """The client decrypted, with ``keys`` if given (looked up afresh after a reload)."""

        def open_values(reloaded: bool) -> CustomerView:
            unit_keys = keys if keys is not None and not reloaded else self._keys(session)
            profile = unit_keys.get(customer.tenant_id, customer.id, "profile")
            return _view(customer, self._open_values(customer, profile))

        return open_across_a_rotation(open_values, lambda: session.refresh(customer))

    def _audit_read(self, session: Session, actor: Actor, customer_id: str) -> None:
        self._audit.record(
            session,
            actor=actor,
            action="customer.read",
            resource_type="customer",
            resource_id=customer_id,
            subject_id=customer_id,
        )

    def _seal_fields(self, customer: Customer, key: DataKey, values: dict[str, object]) -> None:
        for name, value in values.items():
            sealed = None
            if value is not None:
                context = FieldContext(customer.tenant_id, "customers", name, customer.id)
                sealed = seal_text(key, _encode(value), context, rng=self._rng)
            setattr(customer, f"{name}_ct", sealed)

    def _open_values(self, customer: Customer, key: DataKey) -> dict[str, object]:
        values: dict[str, object] = {}
        for name in PII_FIELDS:
            sealed = getattr(customer, f"{name}_ct")
            if sealed is None:
                values[name] = None
                continue
            text = open_sealed_text(
                key, sealed, FieldContext(customer.tenant_id, "customers", name, customer.id)
            )
            values[name] = _decode(name, text)
        return values

    def _index(self, customer: Customer, index_key: bytes, values: dict[str, object]) -> None:
        if "email" in values:
            email = values["email"]
            customer.email_bidx = (
                blind_index(index_key, normalize_email(email), field="email")
                if isinstance(email, str)
                else None
            )
        if "external_ref" in values:
            ref = values["external_ref"]
            customer.external_ref_bidx = (
                blind_index(index_key, normalize_ref(ref), field="external_ref")
                if isinstance(ref, str)
                else None
            )


def _get(session: Session, tenant_id: str, customer_id: str, *, for_update: bool = False) -> Customer:
    return get_for_tenant(
        session, Customer, tenant_id, customer_id, resource="customer", for_update=for_update
    )


def _get_live(session: Session, tenant_id: str, customer_id: str, *, for_update: bool = False) -> Customer:
    customer = _get(session, tenant_id, customer_id, for_update=for_update)
    if customer.erased_at is not None:
        raise CustomerErased(resource="customer")
    return customer


def _encode(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, date):
        return value.isoformat()
    return msgspec.json.encode(value).decode()


def _decode(name: str, text: str) -> object:
    if name == "birth_date":
        return date.fromisoformat(text)
    if name == "address":
        return msgspec.json.decode(text, type=Address)
    return text


def _view(customer: Customer, values: dict[str, object]) -> CustomerView:
    return msgspec.convert(
        {**values, "id": customer.id, "created_at": customer.created_at, "updated_at": customer.updated_at},
        CustomerView,
        from_attributes=True,
    )
