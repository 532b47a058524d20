"""Database engines and units of work.

The service is stateless: every guarantee that must hold across processes (gapless numbering, the
audit chain head, unique API-key hashes) is enforced by the database's transactions and
constraints, never by process memory.

URLs are accepted in their plain form (``sqlite:///path``, ``postgresql://user@host/db``); this
module picks the driver (psycopg 3 for PostgreSQL). SQLite runs in WAL mode with foreign keys on and
a busy timeout, and every write transaction starts with ``BEGIN IMMEDIATE`` so two writers never
deadlock upgrading a shared lock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, create_engine, event, literal_column
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import ClauseElement, SQLCoreOperations
from sqlmodel import Session, SQLModel, col, select

from billing.errors import DatabaseUnavailable, NotFound

__all__ = [
    "Database",
    "DatabaseConfig",
    "get_for_tenant",
    "in_constants",
    "insert_ignore",
    "normalize_database_url",
    "shareable",
]

_Row = TypeVar("_Row", bound=SQLModel)
_Statement = TypeVar("_Statement", bound=ClauseElement)
_SNAPSHOT = "veilbill.snapshot"  # connection.info flag: begin a deferred (read) transaction


def normalize_database_url(url: str) -> str:
    """Return ``url`` with the driver this service uses (``postgresql+psycopg``, ``sqlite``).

    Raises:
        ValueError: for a URL of any other database; the message names the scheme only, never
            credentials.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database scheme {parsed.drivername!r}; use sqlite or postgresql")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """How to reach the database.

    ``pool_size`` applies to PostgreSQL; SQLite connections are opened per unit of work.
    """

    url: str
    pool_size: int = 10
    echo: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalize_database_url(self.url))
        if self.pool_size < 1:
            raise ValueError("pool_size must be at least 1")

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def __repr__(self) -> str:
        return f"DatabaseConfig(url={make_url(self.url).render_as_string(hide_password=True)!r})"


@dataclass
class Database:
    """An engine and the units of work opened on it.

    ``transaction()`` is the only way services write: it commits on success and rolls back on any
    exception, so a failed request leaves no partial rows.
    """

    config: DatabaseConfig
    engine: Engine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.engine = _create_engine(self.config)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed at the end of the block, or rolled back on error.

        Raises:
            DatabaseUnavailable: the connection dropped or the database aborted the transaction
                (see :func:`_unavailable`); nothing of the block was committed.
        """
        with _unavailable(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only: nothing is written; loaded objects stay readable after it.

        On PostgreSQL the unit is a ``READ ONLY`` transaction (a write in it fails), ended by a
        ``COMMIT`` rather than a ``ROLLBACK``: the two are the same for a transaction that wrote
        nothing, but psycopg forgets every statement it prepared on the connection at each
        ``ROLLBACK`` it sees, and every request begins with a read (its API key), so the service's
        statements would never stay prepared and PostgreSQL would plan each of them at every
        execution (decision 60). A block that raises is rolled back.

        Raises:
            DatabaseUnavailable: as :meth:`transaction`.
        """
        with _unavailable(), self.engine.connect() as connection:
            if not self.config.is_sqlite:
                connection.execution_options(postgresql_readonly=True)
            with Session(bind=connection, expire_on_commit=False) as session:
                yield session
                session.commit()

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read-only unit of work that sees the database as it was at its first read, for as long
        as it lasts, without holding writers back — for reads that take a while and must agree with
        each other (a report export reads its rows twice).

        PostgreSQL: a ``REPEATABLE READ``, ``READ ONLY`` transaction. SQLite: a deferred ``BEGIN``
        (a WAL read transaction: one snapshot, writers carry on) instead of ``BEGIN IMMEDIATE``.
        Nothing is committed.
        """
        with self.engine.connect() as connection:
            if self.config.is_sqlite:
                connection.info[_SNAPSHOT] = True
            else:
                connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with Session(bind=connection, expire_on_commit=False) as session:
                try:
                    yield session
                finally:
                    session.rollback()

    def ping(self) -> None:
        """Run a trivial query; raises the driver's error when the database is unreachable."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn the driver's "try again" failures into :class:`DatabaseUnavailable`.

    Those are the errors of the connection itself (SQLAlchemy marks the connection invalidated,
    or the DBAPI raises ``OperationalError``/``InterfaceError``: server gone, connection refused,
    serialization failure, deadlock, lock timeout). Constraint violations and programming errors
    are not: they are bugs or domain conflicts and keep their own type. The driver's message is
    dropped — it can quote SQL parameters.
    """
    try:
        yield
    except DBAPIError as error:
        if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
            raise DatabaseUnavailable() from None
        raise


def _create_engine(config: DatabaseConfig) -> Engine:
    if config.is_sqlite:
        engine = create_engine(
            config.url,
            echo=config.echo,
            poolclass=NullPool,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(
        config.url,
        echo=config.echo,
        pool_size=config.pool_size,
        max_overflow=config.pool_size,
        pool_pre_ping=True,
    )


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling is turned off (isolation_level=None) so the
    # "begin" hook below decides how a transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN" if connection.info.get(_SNAPSHOT) else "BEGIN IMMEDIATE")


_CONSTANT = re.compile(r"[a-z][a-z_.]*")


def in_constants(column: SQLCoreOperations[str], values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN ('a', 'b', …)`` with the service's own constant names (actions, key purposes)
    written into the SQL, not bound.

    A list of bound values is an "expanding" parameter: SQLAlchemy rewrites the statement's text at
    every execution to fit the list, and the driver binds each value again; on the audit link's
    statement, whose check names the five PII-read actions three times, that was about 100 µs of
    CPU per read (measured, decision 60). Only names matching ``[a-z][a-z_.]*`` are accepted, so
    nothing that needs quoting can reach the SQL.
    """
    names = sorted(set(values))
    for name in names:
        if not _CONSTANT.fullmatch(name):
            raise ValueError(f"not a constant name: {name!r}")
    return column.in_([literal_column(f"'{name}'") for name in names])


def shareable(statement: _Statement) -> _Statement:
    """``statement``, compiled once here, so that the threads it is shared with never compile it
    for the first time together.

    For a statement built once per process and kept (the ``functools.cache`` builders of hot
    queries): the first compilation memoizes parts of the statement object itself, and for an
    entity aliased to a subquery of the statement (the audit link's statements that bring rows
    along) two threads doing it at once can leave the statement's result columns and the entity's
    columns as different objects. The request then fails (``NoSuchColumnError``, SQLAlchemy 2.1),
    or SQLAlchemy warns that the SQL it compiled joins the entity's table beside the subquery.
    Seen at a worker's first requests after a start (decision 74). Called by the builder, so that
    its cache publishes the statement compiled; the dialect does not matter for what is memoized
    (compiling with the default one prevented the failure as well as with psycopg's).
    """
    statement.compile()
    return statement


def insert_ignore(session: Session, model: type[Any], values: dict[str, Any]) -> bool:
    """``INSERT … ON CONFLICT DO NOTHING`` on either database; True when this call inserted the row.

    Of concurrent inserts of the same key, in any processes, exactly one returns True.
    """
    table = model.__table__
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    # RETURNING, not rowcount: through the ORM session rowcount is -1 on PostgreSQL.
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return session.execute(statement).first() is not None


def get_for_tenant(
    session: Session,
    model: type[_Row],
    tenant_id: str,
    row_id: str,
    *,
    resource: str,
    for_update: bool = False,
    for_share: bool = False,
) -> _Row:
    """The row of ``model`` with ``row_id`` *in this tenant*, optionally locked until commit.

    ``for_update`` locks it exclusively (``SELECT … FOR UPDATE``), ``for_share`` in share mode
    (``FOR SHARE``: other sharers go on, an exclusive locker waits). SQLite has no row locks: its
    write transactions begin ``IMMEDIATE`` and exclude each other whole.

    Raises:
        NotFound: no such row in this tenant — another tenant's row is reported the same way, so
            ids of other tenants cannot be probed.
    """
    # getattr, because the model is a parameter: every table queried this way has both columns.
    id_column = col(getattr(model, "id"))  # noqa: B009
    tenant_column = col(getattr(model, "tenant_id"))  # noqa: B009
    query = select(model).where(id_column == row_id, tenant_column == tenant_id)
    if for_update:
        query = query.with_for_update()
    elif for_share:
        query = query.with_for_update(read=True)
    row = session.exec(query).one_or_none()
    if row is None:
        raise NotFound(resource=resource)
    return row
