"""The privacy tax: an invoice created and read back through the API, against a plaintext twin.

What is measured, per operation, on one app instance and one database:

* **veilbill** — ``POST /v1/invoices`` (a draft with two lines and notes: the client's name, email
  and address decrypted for the invoice's snapshot, notes, snapshot and line descriptions sealed
  under the client's ``record`` key, the subject lock, an ``invoice.created`` audit link) then
  ``GET /v1/invoices/{id}`` (the record key unwrapped, every sealed column opened, an
  ``invoice.read`` audit link and the access monitor's check of the reading key);
* **baseline** — the same two requests on ``/bench/plain/invoices``: a route registered only on
  the benchmark's instance of the real app (``create_app`` then ``app.register``), over tables
  created only by this module (``bench_plain_*``, never in the product's models or migrations)
  whose columns are the product's with every sealed column in clear and no blind index.

Both sides therefore share the whole request path — the ASGI app, request ids and the access log,
API-key authentication (a database read), the role guard, the card-data guard over the body, the
idempotency middleware (no key is sent), dependency injection, msgspec validation of the same
``InvoiceInput``, the same ``InvoiceView`` encoded to JSON, the same engine and connection pool,
the same totals and tax arithmetic, the same rows and indexes. What only Veilbill does is the
privacy machinery: data-key lookups and unwrapping, AES-GCM sealing and opening, the subject lock
(``FOR SHARE`` on the client, for key rotation), the restriction of an erased client's invoices on
read, and the audit chain (HMAC, the head's compare and swap and the insert, access monitoring).
The baseline reads in a read-only unit of work because it writes nothing when reading; Veilbill's
read writes its audit link.

Cases: ``invoice`` reuses the clients of a pool (``--clients``), as a booking app bills the same
regulars again and again; ``client-invoice`` registers a new client for every booking first
(``POST /v1/customers``: two data keys made and wrapped, eight fields sealed, two blind indexes,
an audit link; the baseline inserts the same fields in clear), then creates and reads the invoice.
Each runs on PostgreSQL (as in production) and SQLite (the embedded default).

Transport: ``httpx.ASGITransport`` in this process, with the app's lifespan. Both sides go
through the whole ASGI app, but no socket or HTTP parser: those add the same time to both sides,
which would only shrink the ratio, so leaving them out is the stricter comparison.

Each round runs ``--ops`` operations per side, after a warm-up and an ``ANALYZE`` (a database in
service has statistics), the sides taking turns operation by operation, the one going first
alternating (``turns``, decision 72). Figures are milliseconds per operation (median and minimum
over every measured operation) and the median over rounds of the per-round ratio of medians.
``cpu`` is the same for this process's CPU time (``time.process_time``: the app, its worker
threads and the client, not the database server): less disturbed by other processes on a shared
machine, it tells the Python-side part of the tax from the waiting on the database.

``--profile FILE`` skips the comparison and profiles, with pyinstrument, the part of the request
path that differs — the billing service's ``create_draft`` and ``read`` — on PostgreSQL, called
directly in this thread (the app runs handlers in worker threads, which a sampling profiler of
the main thread does not see); the framework around it is the same on both sides.

``--statements`` adds to each case's result where each request's time goes in the database: every
statement both sides send in the measured rounds (SQLAlchemy's cursor events, so the time from
sending it to its result, round trip included) and every commit (the dialect's ``do_commit``),
by side, step and position in the request, as medians in microseconds. The rest of a request's
time is Python (the framework, both sides alike, and the privacy machinery).

``--ablate`` measures what one guarantee costs, by taking it away from *this benchmark's instance*
of the service only (never the product's code or configuration): ``unflushed-reads`` commits the
invoice's read (and so its audit link) without waiting for the write-ahead log to reach the disk
(a pool of its own for the read, whose connections are set ``synchronous_commit = off`` once when
they open, so the read sends no statement more; PostgreSQL only), and ``no-audit`` appends no
audit link at all (and so runs no access monitoring), and ``unaudited-reads`` appends none for the
invoice's read only (the draft keeps its link): what a read whose audit event is written off the
request path, after the answer, would cost at best (decision 75). Results carry an ``ablation``
key; they answer "what would the ratio be without it", not what the product costs.

Usage: ``python -m bench.privacy_tax_bench [--rounds 10] [--ops 40] [--only pg-invoice,...]
[--ablate unflushed-reads|no-audit|unaudited-reads] [--statements] [--profile FILE]``; prints
one JSON line per case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import msgspec
import psycopg
from faker import Faker
from litestar import Controller, Litestar, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.app import create_app
from api.auth import requires_role
from api.deps import ActorDep
from api.settings import Settings
from billing import (
    Actor,
    Billing,
    CustomerInput,
    CustomerView,
    Database,
    DatabaseConfig,
    InvoiceInput,
    InvoiceView,
    compute_line,
    compute_totals,
    create_keyring,
    currency_exponent,
    upgrade,
    utcnow,
    write_keyring,
)
from billing._audit import Along, Link
from billing._invoices import _view as invoice_view
from billing._models import new_id
from billing.errors import CustomerErased, NotFound, ValidationFailed

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_RATIO = 1.15
CASES = ("pg-invoice", "pg-client-invoice", "sqlite-invoice", "sqlite-client-invoice")


# --- the plaintext twin: tables, service, routes (this module only) --------------------------------


class _UtcDateTime(TypeDecorator[datetime]):
    """As the product's timestamps: naive UTC in the database, aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class _PlainBase(SQLModel, registry=registry()):
    """Models of a metadata of their own: nothing here reaches the product's schema or migrations."""


# Stands for the product's ``tenants`` table so the foreign keys resolve; never created from here.
Table("tenants", _PlainBase.metadata, Column("id", String(40), primary_key=True))


def _ts(*, nullable: bool = False) -> Any:
    return Field(sa_column=Column(_UtcDateTime(), nullable=nullable))


def _money() -> Any:
    return Field(sa_column=Column(BigInteger, nullable=False))


def _tenant_fk() -> Any:
    return Field(sa_column=Column(String(40), ForeignKey("tenants.id"), nullable=False, index=True))


def _clear() -> Any:
    return Field(default=None, sa_column=Column(Text, nullable=True))


class PlainCustomer(_PlainBase, table=True):
    """``customers`` with every sealed field in clear, indexed on the clear email and reference."""

    __tablename__ = "bench_plain_customers"
    __table_args__ = (
        Index("ix_bench_plain_customers_tenant_email", "tenant_id", "email"),
        Index("ix_bench_plain_customers_tenant_external_ref", "tenant_id", "external_ref"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    name: str | None = _clear()
    email: str | None = _clear()
    phone: str | None = _clear()
    address: str | None = _clear()
    birth_date: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    gender: str | None = _clear()
    notes: str | None = _clear()
    external_ref: str | None = _clear()
    erased_at: datetime | None = _ts(nullable=True)


class PlainInvoice(_PlainBase, table=True):
    """``invoices`` with ``notes`` and ``customer_snapshot`` in clear; the same keys and indexes."""

    __tablename__ = "bench_plain_invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "series", "number_year", "number_seq"),
        Index("ix_bench_plain_invoices_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_bench_plain_invoices_tenant_booking_ref", "tenant_id", "booking_ref"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = _tenant_fk()
    customer_id: str = Field(
        sa_column=Column(String(40), ForeignKey("bench_plain_customers.id"), nullable=False, index=True)
    )
    booking_ref: str | None = Field(default=None, max_length=100)
    currency: str = Field(max_length=3)
    series: str = Field(max_length=10)
    status: str = Field(max_length=20)
    number: str | None = Field(default=None, max_length=40)
    number_year: int | None = None
    number_seq: int | None = None
    due_date: date | None = None
    issue_date: date | None = None
    subtotal: int = _money()
    tax: int = _money()
    total: int = _money()
    notes: str | None = _clear()
    customer_snapshot: str | None = _clear()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    finalized_at: datetime | None = _ts(nullable=True)
    closed_at: datetime | None = _ts(nullable=True)
    amount_paid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    amount_refunded: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    paid_at: datetime | None = _ts(nullable=True)
    version: int = 1


class PlainInvoiceLine(_PlainBase, table=True):
    """``invoice_lines`` with ``description`` in clear."""

    __tablename__ = "bench_plain_invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    invoice_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("bench_plain_invoices.id", ondelete="CASCADE"), nullable=False
        )
    )
    position: int
    description: str | None = _clear()
    quantity: int = Field(sa_column=Column(Integer, nullable=False))
    unit_amount: int = _money()
    tax_rate_bps: int
    category: str = Field(max_length=40)
    net: int = _money()
    tax: int = _money()
    total: int = _money()


PLAIN_TABLES = [PlainCustomer.__table__, PlainInvoice.__table__, PlainInvoiceLine.__table__]  # type: ignore[attr-defined]


def create_plain_tables(db: Database) -> None:
    """Create the baseline's tables next to the product's (already migrated) schema."""
    _PlainBase.metadata.create_all(db.engine, tables=PLAIN_TABLES)


class PlainBilling:
    """What the invoice and client services do, minus the privacy machinery.

    Same validation and arithmetic (currency, series, totals per line and per rate), same rows,
    same queries a plaintext service needs: the client checked in the tenant and copied onto the
    invoice, one invoice row, its lines; on read the invoice and its lines. No keys, no
    encryption, no blind index, no subject lock, no audit.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def create_customer(self, actor: Actor, data: CustomerInput) -> CustomerView:
        now = self._clock()
        customer = PlainCustomer(
            id=new_id("cus"),
            tenant_id=actor.tenant_id,
            created_at=now,
            updated_at=now,
            name=data.name,
            email=data.email,
            phone=data.phone,
            address=msgspec.json.encode(data.address).decode() if data.address else None,
            birth_date=data.birth_date,
            gender=data.gender,
            notes=data.notes,
            external_ref=data.external_ref,
        )
        with self._db.transaction() as session:
            session.add(customer)
        return msgspec.convert(
            {
                "id": customer.id,
                "name": data.name,
                "email": data.email,
                "phone": data.phone,
                "address": data.address,
                "birth_date": data.birth_date,
                "gender": data.gender,
                "external_ref": data.external_ref,
                "notes": data.notes,
                "created_at": now,
                "updated_at": now,
            },
            CustomerView,
            from_attributes=True,
        )

    def create_invoice(self, actor: Actor, data: InvoiceInput) -> InvoiceView:
        currency_exponent(data.currency)
        if data.series == "CN":
            raise ValidationFailed("The series CN is reserved for credit notes.", field="series")
        totals = compute_totals((ln.quantity, ln.unit_amount, ln.tax_rate_bps) for ln in data.lines)
        now = self._clock()
        with self._db.transaction() as session:
            customer = session.exec(
                _plain_customer_query(),
                params={"customer_id": data.customer_id, "tenant_id": actor.tenant_id},
            ).one_or_none()
            if customer is None:
                raise NotFound(resource="customer")
            if customer.erased_at is not None:
                raise CustomerErased(resource="customer")
            snapshot = {
                "name": customer.name,
                "email": customer.email,
                "address": msgspec.json.decode(customer.address) if customer.address else None,
            }
            invoice = PlainInvoice(
                id=new_id("inv"),
                tenant_id=actor.tenant_id,
                customer_id=data.customer_id,
                booking_ref=data.booking_ref,
                currency=data.currency,
                series=data.series,
                status="draft",
                due_date=data.due_date,
                subtotal=totals.subtotal,
                tax=totals.tax,
                total=totals.total,
                notes=data.notes,
                customer_snapshot=msgspec.json.encode(snapshot).decode(),
                created_at=now,
                updated_at=now,
            )
            session.add(invoice)
            session.flush()
            lines = []
            for position, line in enumerate(data.lines, start=1):
                amounts = compute_line(line.quantity, line.unit_amount, line.tax_rate_bps)
                row = PlainInvoiceLine(
                    id=new_id("il"),
                    tenant_id=actor.tenant_id,
                    invoice_id=invoice.id,
                    position=position,
                    description=line.description,
                    quantity=line.quantity,
                    unit_amount=line.unit_amount,
                    tax_rate_bps=line.tax_rate_bps,
                    category=line.category,
                    net=amounts.net,
                    tax=amounts.tax,
                    total=amounts.total,
                )
                session.add(row)
                lines.append(row)
            session.flush()
            return _plain_view(invoice, lines, snapshot)

    def read_invoice(self, actor: Actor, invoice_id: str) -> InvoiceView:
        with self._db.read() as session:
            invoice = session.exec(
                _plain_invoice_query(), params={"invoice_id": invoice_id, "tenant_id": actor.tenant_id}
            ).one_or_none()
            if invoice is None:
                raise NotFound(resource="invoice")
            lines = list(session.exec(_plain_lines_query(), params={"lines_of": invoice.id}))
            snapshot = msgspec.json.decode(invoice.customer_snapshot) if invoice.customer_snapshot else None
            return _plain_view(invoice, lines, snapshot)


# The baseline's queries are built once with bound parameters, as the service's are on this path
# (building a statement costs tens of microseconds per request): the two sides differ by the
# privacy machinery, not by how their statements are made.
@functools.cache
def _plain_customer_query() -> SelectOfScalar[PlainCustomer]:
    return select(PlainCustomer).where(
        col(PlainCustomer.id) == bindparam("customer_id"),
        col(PlainCustomer.tenant_id) == bindparam("tenant_id"),
    )


@functools.cache
def _plain_invoice_query() -> SelectOfScalar[PlainInvoice]:
    return select(PlainInvoice).where(
        col(PlainInvoice.id) == bindparam("invoice_id"), col(PlainInvoice.tenant_id) == bindparam("tenant_id")
    )


@functools.cache
def _plain_lines_query() -> SelectOfScalar[PlainInvoiceLine]:
    return (
        select(PlainInvoiceLine)
        .where(col(PlainInvoiceLine.invoice_id) == bindparam("lines_of"))
        .order_by(col(PlainInvoiceLine.position))
    )


def _plain_view(
    invoice: PlainInvoice, lines: list[PlainInvoiceLine], snapshot: dict[str, object] | None
) -> InvoiceView:
    """The product's ``InvoiceView``, built by the product's own function: the plaintext rows have
    the product's column names, with the sealed values in clear."""
    descriptions = [ln.description or "" for ln in lines]
    return invoice_view(invoice, lines, invoice.notes, snapshot, descriptions=descriptions)  # type: ignore[arg-type]


PlainDep: TypeAlias = NamedDependency[PlainBilling]


class PlainCustomerController(Controller):
    path = "/customers"
    guards = [requires_role("booking")]

    @post(sync_to_thread=True)
    def create_plain_customer(
        self, data: JSONBody[CustomerInput], plain: PlainDep, actor: ActorDep
    ) -> CustomerView:
        return plain.create_customer(actor, data)


class PlainInvoiceController(Controller):
    path = "/invoices"
    guards = [requires_role("booking")]

    @post(sync_to_thread=True)
    def create_plain_invoice(
        self, data: JSONBody[InvoiceInput], plain: PlainDep, actor: ActorDep
    ) -> InvoiceView:
        return plain.create_invoice(actor, data)

    @get("/{invoice_id:str}", sync_to_thread=True)
    def read_plain_invoice(self, invoice_id: FromPath[str], plain: PlainDep, actor: ActorDep) -> InvoiceView:
        return plain.read_invoice(actor, invoice_id)


def plain_router(plain: PlainBilling) -> Router:
    """``/bench/plain/…``: to register on the benchmark's instance of the app only."""

    def provide_plain() -> PlainBilling:
        return plain

    return Router(
        path="/bench/plain",
        route_handlers=[PlainCustomerController, PlainInvoiceController],
        dependencies={"plain": Provide(provide_plain, sync_to_thread=False)},
        include_in_schema=False,
    )


def bench_app(settings: Settings, *, configure_logs: bool = True) -> Litestar:
    """The real service for ``settings``, plus the baseline's routes and tables."""
    app = create_app(settings, configure_logs=configure_logs)
    db: Database = app.state.billing.db
    create_plain_tables(db)
    app.register(plain_router(PlainBilling(db)))
    return app


# --- the environment: a fresh database and keyring per case ----------------------------------------


@contextmanager
def fresh_settings(database: str, postgres_admin_url: str) -> Iterator[Settings]:
    """Settings for a new, migrated database (``postgresql`` or ``sqlite``) and a new keyring."""
    workdir = Path(tempfile.mkdtemp(prefix="veilbill-tax-"))
    dbname = f"veilbill_tax_{secrets.token_hex(4)}"
    try:
        if database == "postgresql":
            with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{dbname}"')
            url = f"{postgres_admin_url.rsplit('/', 1)[0]}/{dbname}"
        else:
            url = f"sqlite:///{workdir / 'veilbill.db'}"
        keyring_path = workdir / "keyring.json"
        write_keyring(keyring_path, create_keyring(now=utcnow()))
        db = Database(DatabaseConfig(url))
        upgrade(db.engine)
        db.dispose()
        yield Settings(
            database_url=url,
            keyring_path=keyring_path,
            erasure_journal_path=workdir / "erasures.jsonl",
            log_path=str(workdir / "service.log"),
            webhooks_worker=False,
        )
    finally:
        if database == "postgresql":
            with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)


# --- the measurement -------------------------------------------------------------------------------


@dataclass
class Side:
    """One contender: where its routes are, its clients, and what it measured."""

    name: str
    customers_path: str
    invoices_path: str
    clients: list[str] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    cpu: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    round_cpu_medians: list[float] = field(default_factory=list)


class StatementTimes:
    """The database's share of each request (``--statements``): statements and commits timed on
    the benchmark's engine, attributed to the side and step the client is running (requests are
    sequential, so whatever the database does in between belongs to the current one)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._started: dict[int, float] = {}
        self.current: tuple[str, str] | None = None  # (side, step) while it is measured
        self._position = 0
        self.times: dict[tuple[str, str, int, str], list[float]] = {}
        self._commit = engine.dialect.do_commit

    def __enter__(self) -> StatementTimes:
        event.listen(self._engine, "before_cursor_execute", self._before)
        event.listen(self._engine, "after_cursor_execute", self._after)
        self._engine.dialect.do_commit = self._timed_commit  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._before)
        event.remove(self._engine, "after_cursor_execute", self._after)
        del self._engine.dialect.do_commit

    def start(self, side: str, step: str) -> None:
        self.current, self._position = (side, step), 0

    def stop(self) -> None:
        self.current = None

    def _record(self, label: str, seconds: float) -> None:
        if self.current is not None:
            key = (*self.current, self._position, label)
            self.times.setdefault(key, []).append(seconds * 1e6)
            self._position += 1

    def _before(self, _conn: Any, cursor: Any, *_: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, _conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None:
            self._record(" ".join(statement.split()[:4])[:48], time.perf_counter() - started)

    def _timed_commit(self, dbapi_connection: Any) -> None:
        started = time.perf_counter()
        self._commit(dbapi_connection)
        self._record("COMMIT", time.perf_counter() - started)

    def summary(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Side → step → its statements in request order: label, median µs, how often seen."""
        result: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for (side, step, position, label), values in sorted(self.times.items()):
            result.setdefault(side, {}).setdefault(step, []).append(
                {
                    "position": position,
                    "sql": label,
                    "us_median": round(statistics.median(values), 1),
                    "count": len(values),
                }
            )
        return result


def _customer_payload(fake: Faker) -> dict[str, Any]:
    return {
        "name": fake.name(),
        "email": fake.unique.email(),
        "phone": fake.numerify("+33 6 ## ## ## ##"),
        "address": {
            "line1": fake.street_address().replace("\n", " "),
            "line2": None,
            "city": fake.city(),
            "postcode": fake.numerify("#####"),
            "country": "FR",
        },
        "birth_date": fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
        "gender": fake.random_element(["female", "male", "non_binary"]),
        "external_ref": f"client-{fake.uuid4()}",
        "notes": fake.sentence(nb_words=8),
    }


def _invoice_payload(fake: Faker) -> dict[str, Any]:
    return {
        "booking_ref": f"bk_{fake.uuid4()[:8]}",
        "currency": "EUR",
        "due_date": "2026-12-01",
        "notes": fake.sentence(nb_words=6),
        "lines": [
            {
                "description": f"{fake.word()} {fake.word()} treatment",
                "quantity": 1,
                "unit_amount": 4500,
                "tax_rate_bps": 2000,
                "category": "hair",
            },
            {
                "description": f"{fake.word()} care",
                "quantity": 2,
                "unit_amount": 1250,
                "tax_rate_bps": 550,
                "category": "care",
            },
        ],
    }


class BenchFailure(RuntimeError):
    """A request of the benchmark did not answer as it should (the figures would be meaningless)."""


def _expect(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise BenchFailure(f"{response.request.method} {response.request.url.path}: {response.status_code}")
    body: dict[str, Any] = response.json()
    return body


async def _operation(
    client: httpx.AsyncClient,
    side: Side,
    payload: dict[str, Any],
    customer: dict[str, Any] | None,
    index: int,
    statements: StatementTimes | None = None,
) -> dict[str, float]:
    """One booking billed: [register the client,] create the invoice, read it back. Times in ms."""
    times: dict[str, float] = {}

    def step(name: str) -> None:
        if statements is not None:
            statements.start(side.name, name)

    if customer is not None:
        step("create_client")
        started = time.perf_counter()
        response = await client.post(side.customers_path, json=customer)
        times["create_client"] = (time.perf_counter() - started) * 1000
        customer_id = _expect(response, 201)["id"]
    else:
        customer_id = side.clients[index % len(side.clients)]
    body = {**payload, "customer_id": customer_id}
    step("create_invoice")
    started = time.perf_counter()
    response = await client.post(side.invoices_path, json=body)
    times["create_invoice"] = (time.perf_counter() - started) * 1000
    created = _expect(response, 201)
    step("read_invoice")
    started = time.perf_counter()
    response = await client.get(f"{side.invoices_path}/{created['id']}")
    times["read_invoice"] = (time.perf_counter() - started) * 1000
    if statements is not None:
        statements.stop()
    read = _expect(response, 200)
    if [ln["description"] for ln in read["lines"]] != [ln["description"] for ln in payload["lines"]] or (
        read["notes"] != payload["notes"] or read["total"] != created["total"]
    ):
        raise BenchFailure(f"{side.name}: the invoice read back is not the one created")
    return times


def turns(sides: list[Side], count: int, first: int) -> Iterator[tuple[int, Side]]:
    """The order of a pass's ``count`` operations: the sides take turns operation by operation, the
    one going first alternating (``sides[first]`` at the first operation).

    What the machine does meanwhile (other processes, the database's background writers) so falls
    on both sides alike, where blocks of one side's operations each caught their own (decision 72).
    """
    for index in range(count):
        yield from ((index, side) for side in (sides if (first + index) % 2 == 0 else sides[::-1]))


async def _run_case(app: Litestar, case: str, args: argparse.Namespace) -> dict[str, Any]:
    new_client_each_time = case.endswith("client-invoice")
    fake = Faker("fr_FR")
    fake.seed_instance(args.seed)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://veilbill.bench") as client,
    ):
        billing = app.state.billing
        issued = billing.tenants.create_tenant("Salon Privacy Tax")
        response = await client.post(
            "/v1/admin/api-keys",
            json={"role": "booking", "name": "privacy tax bench"},
            headers={"Authorization": f"Bearer {issued.key}"},
        )
        client.headers["Authorization"] = f"Bearer {_expect(response, 201)['key']}"
        sides = [
            Side("veilbill", "/v1/customers", "/v1/invoices"),
            Side("baseline", "/bench/plain/customers", "/bench/plain/invoices"),
        ]
        if not new_client_each_time:
            for _ in range(args.clients):
                customer = _customer_payload(fake)
                for side in sides:
                    side.clients.append(
                        _expect(await client.post(side.customers_path, json=customer), 201)["id"]
                    )

        recorder = StatementTimes(billing.db.engine) if args.statements else None

        async def one_pass(count: int, record: bool, first: int) -> None:
            payloads = [_invoice_payload(fake) for _ in range(count)]
            customers = [_customer_payload(fake) if new_client_each_time else None for _ in range(count)]
            totals: dict[str, list[float]] = {side.name: [] for side in sides}
            cpus: dict[str, list[float]] = {side.name: [] for side in sides}
            for index, side in turns(sides, count, first):
                cpu_started = time.process_time()
                times = await _operation(
                    client, side, payloads[index], customers[index], index, recorder if record else None
                )
                cpus[side.name].append((time.process_time() - cpu_started) * 1000)
                totals[side.name].append(sum(times.values()))
                if record:
                    for step, ms in times.items():
                        side.steps.setdefault(step, []).append(ms)
            if record:
                for side in sides:
                    side.cpu.extend(cpus[side.name])
                    side.round_medians.append(statistics.median(totals[side.name]))
                    side.round_cpu_medians.append(statistics.median(cpus[side.name]))

        await one_pass(args.warmup, record=False, first=0)
        # A database in service has statistics; these tables were just made. Without them the
        # planner picked, on both sides, a tenant's index over the primary key for the invoice's
        # read and so scanned every invoice of the tenant, more at every round.
        with billing.db.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
        with recorder or contextlib.nullcontext():
            for round_index in range(args.rounds):
                await one_pass(args.ops, record=True, first=round_index % 2)
    result = _summary(case, sides, args)
    if recorder is not None:
        result["statements"] = recorder.summary()
    return result


def _summary(case: str, sides: list[Side], args: argparse.Namespace) -> dict[str, Any]:
    veilbill, baseline = sides
    ratios = [v / b for v, b in zip(veilbill.round_medians, baseline.round_medians, strict=True)]

    def per_op(side: Side) -> list[float]:
        steps = list(side.steps.values())
        return [sum(parts) for parts in zip(*steps, strict=True)]

    result: dict[str, Any] = {
        "bench": "privacy-tax",
        "case": case,
        "database": "postgresql" if case.startswith("pg-") else "sqlite",
        "transport": "httpx.ASGITransport (in process)",
        "rounds": args.rounds,
        "ops_per_round": args.ops,
        "clients_reused": 0 if case.endswith("client-invoice") else args.clients,
    }
    for side in sides:
        totals = per_op(side)
        result[f"{side.name}_ms_median"] = round(statistics.median(totals), 3)
        result[f"{side.name}_ms_min"] = round(min(totals), 3)
    result["ratio_median"] = round(statistics.median(ratios), 3)
    result["ratio_rounds_min_max"] = [round(min(ratios), 3), round(max(ratios), 3)]
    result["target"] = TARGET_RATIO
    result["met"] = result["ratio_median"] <= TARGET_RATIO
    cpu_ratios = [v / b for v, b in zip(veilbill.round_cpu_medians, baseline.round_cpu_medians, strict=True)]
    result["cpu"] = {
        "veilbill_ms_median": round(statistics.median(veilbill.cpu), 3),
        "baseline_ms_median": round(statistics.median(baseline.cpu), 3),
        "ratio_median": round(statistics.median(cpu_ratios), 3),
    }
    result["steps"] = {
        step: {
            "veilbill_ms_median": round(statistics.median(veilbill.steps[step]), 3),
            "baseline_ms_median": round(statistics.median(baseline.steps[step]), 3),
            "ratio_of_medians": round(
                statistics.median(veilbill.steps[step]) / statistics.median(baseline.steps[step]), 3
            ),
        }
        for step in veilbill.steps
    }
    result["utc"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return result


def profile_service(args: argparse.Namespace, path: Path) -> None:
    """Write a pyinstrument profile of ``--ops * --rounds`` drafts created and read (PostgreSQL)."""
    from pyinstrument import Profiler  # the bench extra; only this option needs it

    fake = Faker("fr_FR")
    fake.seed_instance(args.seed)
    with fresh_settings("postgresql", args.postgres) as settings:
        app = bench_app(settings, configure_logs=False)
        billing = app.state.billing
        issued = billing.tenants.create_tenant("Salon Profile")
        admin = Actor(tenant_id=issued.tenant_id, role="admin", key_id=issued.id)
        actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id="key_profile")
        clients = [
            billing.customers.create(admin, msgspec.convert(_customer_payload(fake), CustomerInput)).id
            for _ in range(args.clients)
        ]
        count = args.ops * args.rounds
        drafts = [
            msgspec.convert(
                {**_invoice_payload(fake), "customer_id": clients[i % len(clients)]},
                InvoiceInput,
                strict=False,
            )
            for i in range(args.warmup + count)
        ]
        for draft in drafts[: args.warmup]:
            billing.invoices.read(actor, billing.invoices.create_draft(actor, draft).id)
        profiler = Profiler(interval=0.0005)
        started = time.perf_counter()
        with profiler:
            for draft in drafts[args.warmup :]:
                billing.invoices.read(actor, billing.invoices.create_draft(actor, draft).id)
        elapsed = time.perf_counter() - started
        app.state.billing.db.dispose()
    path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    print(
        json.dumps(
            {
                "bench": "privacy-tax-profile",
                "operations": count,
                "ms_per_create_and_read": round(elapsed / count * 1000, 3),
                "profile": str(path),
            }
        ),
        flush=True,
    )


ABLATIONS = ("unflushed-reads", "no-audit", "unaudited-reads")


def ablate(billing: Billing, ablation: str | None) -> Callable[[], None]:
    """Take one guarantee away from this benchmark's instance of the service (see ``--ablate``).

    Returns what releases the ablation's own resources once the instance is done with."""
    if ablation is None:
        return _nothing
    if ablation == "no-audit":
        audit = billing.audit
        audit.record = lambda session, **_: None  # type: ignore[method-assign, assignment]
        audit.record_along = _read_without_a_link  # type: ignore[method-assign, assignment]
        return _nothing
    if ablation == "unaudited-reads":
        audit = billing.audit
        record_along = audit.record_along

        def link_all_but_the_invoices_read(
            session: Session, along: Along, *, action: str, **fields: Any
        ) -> tuple[Link | None, list[Any]]:
            if action == "invoice.read":
                return _read_without_a_link(session, along)
            return record_along(session, along, action=action, **fields)

        audit.record_along = link_all_but_the_invoices_read  # type: ignore[method-assign]
        return _nothing
    if ablation == "unflushed-reads":
        # The reads get a pool of their own whose sessions commit without waiting for the WAL:
        # set once per connection, so the read sends no statement more than it does unablated.
        # (The service is built with its collaborators; the read's database is swapped under it
        # for the call — the benchmark sends one request at a time.)
        unflushed = Database(billing.db.config)
        event.listen(unflushed.engine, "connect", _commit_without_flush)
        invoices = billing.invoices
        read = invoices.read

        def read_unflushed(actor: Actor, invoice_id: str) -> InvoiceView:
            invoices._db = unflushed
            try:
                return read(actor, invoice_id)
            finally:
                invoices._db = billing.db

        invoices.read = read_unflushed  # type: ignore[method-assign]
        return unflushed.dispose
    raise ValueError(f"unknown ablation {ablation!r}")


def _nothing() -> None:
    pass


def _read_without_a_link(session: Session, along: Along, **_: Any) -> tuple[None, list[Any]]:
    return None, along.read(session)


def _commit_without_flush(connection: Any, _record: Any) -> None:
    connection.execute("SET synchronous_commit = off")
    connection.commit()


def run_cases(args: argparse.Namespace, *, configure_logs: bool = True) -> list[dict[str, Any]]:
    """Run the selected cases one after another; each gets a fresh database and keyring."""
    results = []
    for case in args.only:
        database = "postgresql" if case.startswith("pg-") else "sqlite"
        with fresh_settings(database, args.postgres) as settings:
            app = bench_app(settings, configure_logs=configure_logs)
            release = ablate(app.state.billing, args.ablate)
            try:
                result = asyncio.run(_run_case(app, case, args))
            finally:
                release()
            if args.ablate:
                result["ablation"] = args.ablate
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ops", type=int, default=40, help="operations per side and round")
    parser.add_argument("--warmup", type=int, default=20, help="operations per side before measuring")
    parser.add_argument("--clients", type=int, default=50, help="clients reused by the invoice case")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--postgres", default=os.environ.get("VEILBILL_TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    parser.add_argument(
        "--profile", type=Path, help="profile Veilbill's service calls into this file instead"
    )
    parser.add_argument(
        "--statements", action="store_true", help="also time every statement and commit (see above)"
    )
    parser.add_argument(
        "--ablate", choices=ABLATIONS, help="take one guarantee away from the measured instance (see above)"
    )
    args = parser.parse_args(argv)
    args.only = [case.strip() for case in args.only.split(",") if case.strip()]
    unknown = set(args.only) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.statements and args.ablate == "unflushed-reads":
        parser.error("--statements times the service's engine, which unflushed reads do not use")
    if args.ablate == "unflushed-reads" and any(not case.startswith("pg-") for case in args.only):
        parser.error("--ablate unflushed-reads is for the PostgreSQL cases (pg-...)")
    if args.rounds < 1 or args.ops < 1 or args.warmup < 1 or args.clients < 1:
        parser.error("--rounds, --ops, --warmup and --clients must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile is not None:
        profile_service(args, args.profile)
        return
    run_cases(args)


if __name__ == "__main__":
    main()
