"""The database drops the connection in the middle of a request: a clean 503, no partial rows.

The fault is real: :class:`BackendTerminator`, a fault-injection double around the app's own
engine, asks PostgreSQL to terminate the server process of the connection that is about to run a
chosen statement (``pg_terminate_backend``), so the statement meets a dead connection exactly as it
would after a failover or a network cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import Engine, event, text

from billing import Billing

from ..conftest import PG_ADMIN_URL
from .conftest import TenantKeys, customer_payload, invoice_payload

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


class BackendTerminator:
    """Fault injection: kills the server side of the connection that is about to run ``pattern``.

    Fires once, then stays armed but inert; :meth:`remove` detaches it from the engine.
    """

    def __init__(self, engine: Engine, pattern: str) -> None:
        self.engine = engine
        self.pattern = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        self.fired = 0
        event.listen(engine, "before_cursor_execute", self._before_cursor_execute)

    def _before_cursor_execute(self, connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.fired or not self.pattern.search(statement):
            return
        self.fired += 1
        backend_pid = connection.connection.dbapi_connection.info.backend_pid
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before_cursor_execute)


@pytest.fixture
def terminate(client: TestClient[Any]) -> Iterator[Any]:
    armed: list[BackendTerminator] = []

    def arm(pattern: str) -> BackendTerminator:
        billing: Billing = client.app.state.billing
        terminator = BackendTerminator(billing.db.engine, pattern)
        armed.append(terminator)
        return terminator

    yield arm
    for terminator in armed:
        terminator.remove()


def _count(app_billing: Billing, table: str, tenant_id: str) -> int:
    with app_billing.db.engine.connect() as connection:
        query = text(f"SELECT count(*) FROM {table} WHERE tenant_id = :tenant")  # noqa: S608 -- fixed names
        return int(connection.execute(query, {"tenant": tenant_id}).scalar_one())


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["code"] == "database_unavailable"
    assert "terminat" not in response.text.lower() and "psycopg" not in response.text.lower()


def test_a_connection_dropped_mid_write_answers_503_and_leaves_no_partial_rows(
    client: TestClient[Any], tenant: TenantKeys, app_billing: Billing, fake: Faker, terminate: Any
) -> None:
    booking = tenant.headers("booking")
    customer_id = client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()["id"]
    invoices_before = _count(app_billing, "invoices", tenant.tenant_id)
    lines_before = _count(app_billing, "invoice_lines", tenant.tenant_id)
    audit_before = _count(app_billing, "audit_events", tenant.tenant_id)

    # The invoice row is already sent when its lines are; the connection dies before the lines.
    terminator = terminate(r"^INSERT INTO invoice_lines")
    response = client.post("/v1/invoices", json=invoice_payload(customer_id, fake, lines=3), headers=booking)

    assert terminator.fired == 1
    _assert_unavailable(response)
    assert _count(app_billing, "invoices", tenant.tenant_id) == invoices_before
    assert _count(app_billing, "invoice_lines", tenant.tenant_id) == lines_before
    assert _count(app_billing, "audit_events", tenant.tenant_id) == audit_before

    # The pool notices the dead connection; the next request succeeds on a fresh one.
    retried = client.post("/v1/invoices", json=invoice_payload(customer_id, fake, lines=3), headers=booking)
    assert retried.status_code == 201, retried.text
    assert _count(app_billing, "invoices", tenant.tenant_id) == invoices_before + 1
    assert _count(app_billing, "invoice_lines", tenant.tenant_id) == lines_before + 3


def test_a_connection_dropped_at_finalization_keeps_the_numbering_gapless(
    client: TestClient[Any], tenant: TenantKeys, fake: Faker, terminate: Any
) -> None:
    booking = tenant.headers("booking")
    customer_id = client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()["id"]
    drafts = [
        client.post("/v1/invoices", json=invoice_payload(customer_id, fake), headers=booking).json()["id"]
        for _ in range(2)
    ]
    terminate(r"^UPDATE invoices")  # after the sequence was advanced, inside the same transaction
    _assert_unavailable(client.post(f"/v1/invoices/{drafts[0]}/finalize", headers=booking))

    numbers = []
    for draft in drafts:
        finalized = client.post(f"/v1/invoices/{draft}/finalize", headers=booking)
        assert finalized.status_code == 200, finalized.text
        numbers.append(finalized.json()["number"])
    assert [int(number.rsplit("-", 1)[1]) for number in numbers] == [1, 2]


def test_a_connection_dropped_mid_read_answers_503(
    client: TestClient[Any], tenant: TenantKeys, fake: Faker, terminate: Any
) -> None:
    booking = tenant.headers("booking")
    customer_id = client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()["id"]
    terminator = terminate(r"^SELECT\b.*\bFROM customers\b")
    response = client.get(f"/v1/customers/{customer_id}", headers=booking)
    assert terminator.fired == 1
    _assert_unavailable(response)
    assert client.get(f"/v1/customers/{customer_id}", headers=booking).status_code == 200
