"""Shared fixtures: real SQLite and real PostgreSQL databases, a real keyring, the app.

Storage and API tests take the ``database_url`` fixture, which is parametrized over both
databases. PostgreSQL is found at ``VEILBILL_TEST_POSTGRES_URL`` (default: the local server on
127.0.0.1:5432); when it is unreachable its tests are skipped, unless ``VEILBILL_REQUIRE_ALL=1``
(as in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
import structlog
import uvicorn
from faker import Faker
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine, event

from api.app import create_app
from api.settings import Settings
from billing import (
    Billing,
    Database,
    DatabaseConfig,
    Keyring,
    Pkcs11Config,
    create_keyring,
    upgrade,
    write_keyring,
)
from billing._hsm import pkcs11_library
from tokenization import LocalStripeSandbox, SandboxUnavailable, make_stripe_client

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


@contextmanager
def statements_of(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements ``engine`` sends inside the block (for query budgets)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.lstrip())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


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
def settings(database_url: str, keyring_path: Path, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        keyring_path=keyring_path,
        erasure_journal_path=tmp_path / "erasures.jsonl",
        webhooks_worker=False,  # tests deliver webhooks explicitly (tests/billing/test_webhook_delivery.py)
    )


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


# --- the gateway sandbox (localstripe, a separate process) -------------------------------------

API_KEY = "sk_test_veilbill"
SANDBOX_START_TIMEOUT = 20.0
TEST_CARDS = {
    "visa": "4242424242424242",
    "declined_on_attach": "4000000000000002",
    "declined_on_charge": "4000000000000341",
    "three_d_secure": "4000002500003155",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripeSandbox]:
    log_path = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    box = LocalStripeSandbox(free_port(), log_path=log_path)
    try:
        box.executable()
    except SandboxUnavailable as error:
        require_or_skip(f"the sandbox gateway is not available: {error}")
    box.start(timeout=SANDBOX_START_TIMEOUT)
    yield box
    box.stop()


@pytest.fixture(scope="session")
def stripe_client(sandbox: LocalStripeSandbox) -> stripe.StripeClient:
    return make_stripe_client(API_KEY, api_base=sandbox.api_base)


@pytest.fixture
def card_token(stripe_client: stripe.StripeClient) -> Callable[[str], str]:
    """Turns a test card number into a ``pm_…`` token, as the browser's card element would."""

    def tokenize(number: str) -> str:
        method = stripe_client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        )
        return method.id

    return tokenize


@contextmanager
def serve_in_thread(app: Litestar) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start within 15 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- SoftHSM2 (a PKCS#11 token for the HSM master-key provider) ---------------------------------

PIN = "4096-user-pin"
SO_PIN = "8192-so-pin"
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHsm:
    module: str
    util: str
    conf: Path

    def new_token(self) -> Pkcs11Config:
        """Initialize a fresh token and make the (already loaded) library see it."""
        label = f"vb-{secrets.token_hex(4)}"
        subprocess.run(
            [self.util, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            check=True,
            capture_output=True,
            timeout=30,
        )
        pkcs11_library(self.module).reinitialize()  # SoftHSM lists tokens when it initializes
        return Pkcs11Config(module_path=self.module, token_label=label, user_pin=PIN)

    def delete_token(self, label: str) -> None:
        """Remove a token, as a pulled or failed HSM would vanish from under a running service."""
        subprocess.run(
            [self.util, "--delete-token", "--token", label],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            check=True,
            capture_output=True,
            timeout=30,
        )

    def settings_env(self, config: Pkcs11Config) -> dict[str, str]:
        """The ``VEILBILL_HSM_*`` variables (and SoftHSM's own) of a process using ``config``."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "VEILBILL_HSM_MODULE": config.module_path,
            "VEILBILL_HSM_TOKEN_LABEL": config.token_label,
            "VEILBILL_HSM_PIN": config.user_pin,
        }


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    if importlib.util.find_spec("pkcs11") is None:
        require_or_skip("python-pkcs11 is not installed")
    module = next((path for path in MODULE_CANDIDATES if Path(path).exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        require_or_skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    assert module is not None and util is not None
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    # SoftHSM2 reads SOFTHSM2_CONF when the library initializes; child processes inherit it.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOFTHSM2_CONF", str(conf))
        yield SoftHsm(module=module, util=util, conf=conf)


# --- a webhook receiver (a real HTTP server on loopback) -----------------------------------------


@dataclass
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A booking app's webhook endpoint: records what arrives; can be told to fail, stall or redirect.

    ``status`` is what it answers (200 by default); ``delay`` seconds it waits first; a
    ``response_body`` is sent back (so tests can check that none of it is stored).
    """

    def __init__(self, port: int = 0) -> None:
        self.received: list[ReceivedWebhook] = []
        self.status = 200
        self.delay = 0.0
        self.location: str | None = None
        self.response_body = b"ok"
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                time.sleep(receiver.delay)
                status = receiver.status
                if 200 <= status < 300:
                    with receiver._lock:
                        received = {k.lower(): v for k, v in self.headers.items()}
                        receiver.received.append(ReceivedWebhook(received, body))
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", str(len(receiver.response_body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(receiver.response_body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/veilbill"

    def wrap_tls(self, context: ssl.SSLContext) -> None:
        """Serve HTTPS with ``context`` from now on (the listening descriptor stays the same)."""
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[ReceivedWebhook]:
        with self._lock:
            return list(self.received)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()
