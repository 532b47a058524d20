"""Shared fixtures: real SQLite and real PostgreSQL databases, a real keyring, the app.

Storage and API tests take the ``database_url`` fixture, which is parametrized over both
databases. PostgreSQL is found at ``VEILBILL_TEST_POSTGRES_URL`` (default: the local server on
127.0.0.1:5432); when it is unreachable its tests are skipped, unless ``VEILBILL_REQUIRE_ALL=1``
(as in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import structlog
from faker import Faker
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from billing import (
    Billing,
    Database,
    DatabaseConfig,
    Keyring,
    create_keyring,
    upgrade,
    write_keyring,
)

REQUIRE_ALL = os.environ.get("VEILBILL_REQUIRE_ALL") == "1"
PG_ADMIN_URL = os.environ.get("VEILBILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FIXED_NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def require_or_skip(reason: str) -> None:
    """Skip — or, when every component is required (CI), fail."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (VEILBILL_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(DatabaseConfig(f"sqlite:///{path}"))
    upgrade(db.engine)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A migrated PostgreSQL database that each test clones (``CREATE DATABASE … TEMPLATE``)."""
    name = f"veilbill_tpl_{secrets.token_hex(4)}"
    try:
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        yield None
        return
    db = Database(DatabaseConfig(_pg_url(name)))
    upgrade(db.engine)
    db.dispose()
    yield name
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, pg_template: str | None
) -> Iterator[str]:
    """A fresh, migrated database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "veilbill.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    if pg_template is None:
        require_or_skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"veilbill_t_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _pg_url(name)
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def keyring() -> Keyring:
    return create_keyring(now=FIXED_NOW)


@pytest.fixture
def keyring_path(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "keyring.json"
    write_keyring(path, keyring)
    return path


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(DatabaseConfig(database_url))
    yield db
    db.dispose()


@pytest.fixture
def billing(database: Database, keyring: Keyring) -> Billing:
    return Billing(db=database, keyring=keyring)


@pytest.fixture
def settings(database_url: str, keyring_path: Path) -> Settings:
    return Settings(database_url=database_url, keyring_path=keyring_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    app = create_app(settings, configure_logs=False)
    with TestClient(app) as test_client:
        yield test_client


_FOREIGN = ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog and the standard library back as they were, whatever a test did."""
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    foreign = {
        name: (list(logger.handlers), logger.propagate, logger.disabled)
        for name in _FOREIGN
        for logger in [logging.getLogger(name)]
    }
    yield
    for handler in list(root.handlers):
        if handler not in root_handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(root_level)
    for name, (handlers, propagate, disabled) in foreign.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def fake() -> Faker:
    faker = Faker(["fr_FR", "de_DE", "en_GB"])
    faker.seed_instance(secrets.randbits(32))
    return faker
