"""``veilbill serve`` as real processes on real ports, used the way a booking app uses it."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from faker import Faker

from ..api.conftest import customer_payload, invoice_payload
from .conftest import CLI_TIMEOUT, Operator, Server, ServerPool, bearer, issue_key, require_pg_dump

INVOICES = 50
FINALIZE_WORKERS = 16


def _post(server: Server, path: str, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=bearer(key), timeout=30)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_processes_number_concurrent_finalizations_gaplessly(
    operator: Operator, servers: ServerPool, fake: Faker
) -> None:
    first, second = servers.start(operator, count=2)
    admin_key = operator.create_tenant(fake.company())["admin_key"]
    booking_key = issue_key(first.base_url, admin_key, "booking")
    created = _post(second, "/v1/customers", booking_key, customer_payload(fake))
    assert created.status_code == 201, created.text
    customer_id = created.json()["id"]
    drafts = []
    for index in range(INVOICES):
        draft = _post(
            (first, second)[index % 2],
            "/v1/invoices",
            booking_key,
            invoice_payload(customer_id, fake, lines=1),
        )
        assert draft.status_code == 201, draft.text
        drafts.append(draft.json()["id"])

    def finalize(index: int) -> httpx.Response:
        return _post((first, second)[index % 2], f"/v1/invoices/{drafts[index]}/finalize", booking_key)

    year = datetime.now(UTC).year
    with ThreadPoolExecutor(max_workers=FINALIZE_WORKERS) as pool:
        responses = list(pool.map(finalize, range(INVOICES)))

    assert [r.status_code for r in responses] == [200] * INVOICES, [
        r.text for r in responses if r.status_code != 200
    ]
    numbers = [r.json()["number"] for r in responses]
    assert len(set(numbers)) == INVOICES
    assert sorted(numbers) == [f"INV-{year}-{n:06d}" for n in range(1, INVOICES + 1)]
    assert {r.json()["status"] for r in responses} == {"open"}
    for server in (first, second):
        assert server.output().count('/finalize", "status": 200') == INVOICES // 2, (
            "both processes must have finalized"
        )
    assert json.loads(operator.run("audit", "verify").stdout)["ok"] is True


def _pg_dump(database_url: str) -> bytes:
    dumped = subprocess.run(
        [require_pg_dump(), "--data-only", "--no-owner", f"--dbname={database_url}"],
        capture_output=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr.decode(errors="replace")
    assert b"COPY public.customers" in dumped.stdout
    return dumped.stdout


def _sqlite_bytes(database_url: str) -> bytes:
    path = Path(database_url.removeprefix("sqlite:///"))
    wal = path.with_name(f"{path.name}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _raw_storage(database_url: str) -> bytes:
    return _sqlite_bytes(database_url) if database_url.startswith("sqlite") else _pg_dump(database_url)


def _leaks(haystack: bytes, secrets: list[str]) -> list[str]:
    """The secrets found in ``haystack``, as text or as they would appear URL-encoded."""
    found = []
    for secret in secrets:
        forms = {secret, quote(secret, safe=""), quote_plus(secret)}
        if any(form.encode() in haystack for form in forms):
            found.append(secret)
    return found


def test_client_data_is_not_in_raw_storage_nor_in_logs(
    operator: Operator, servers: ServerPool, fake: Faker
) -> None:
    [server] = servers.start(operator)
    admin_key = operator.create_tenant(fake.company())["admin_key"]
    booking_key = issue_key(server.base_url, admin_key, "booking")
    pii: list[str] = []
    booking_refs: list[str] = []
    for _ in range(3):
        payload = customer_payload(fake)
        pii += [payload["name"], payload["email"], payload["phone"], payload["address"]["line1"]]
        pii += [payload["notes"], payload["external_ref"]]
        created = _post(server, "/v1/customers", booking_key, payload)
        assert created.status_code == 201, created.text
        customer_id = created.json()["id"]
        invoice = invoice_payload(customer_id, fake)
        pii += [line["description"] for line in invoice["lines"]] + [invoice["notes"]]
        booking_refs.append(invoice["booking_ref"])
        draft = _post(server, "/v1/invoices", booking_key, invoice)
        assert draft.status_code == 201, draft.text
        assert _post(server, f"/v1/invoices/{draft.json()['id']}/finalize", booking_key).status_code == 200
        read = httpx.get(
            f"{server.base_url}/v1/customers/{customer_id}", headers=bearer(booking_key), timeout=10
        )
        assert read.json()["email"] == payload["email"]
    assert _post(server, "/v1/customers", booking_key, {"name": pii[0], "unknown": pii[1]}).status_code == 400

    stored = _raw_storage(operator.database_url)
    assert _leaks(stored, booking_refs) == booking_refs, (
        "booking refs are stored in clear: the search must see them"
    )
    assert _leaks(stored, pii) == []

    server.stop()
    logs = server.output().encode()
    assert b"/v1/customers" in logs, "the request log is empty: nothing was checked"
    assert _leaks(logs, pii) == []
    assert _leaks(logs, [admin_key, booking_key, booking_key.removeprefix("vb_")]) == []
    assert b"Bearer" not in logs
    if operator.database_url.startswith("sqlite"):
        assert _leaks(_sqlite_bytes(operator.database_url), pii) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lookups_by_email_or_reference_do_not_log_them(
    operator: Operator, servers: ServerPool, fake: Faker
) -> None:
    """The query string is the one place a client's email travels outside a body (``?email=``)."""
    [server] = servers.start(operator)
    admin_key = operator.create_tenant(fake.company())["admin_key"]
    booking_key = issue_key(server.base_url, admin_key, "booking")
    payload = customer_payload(fake)
    created = _post(server, "/v1/customers", booking_key, payload)
    assert created.status_code == 201, created.text
    for query in ({"email": payload["email"]}, {"external_ref": payload["external_ref"]}):
        found = httpx.get(
            f"{server.base_url}/v1/customers", params=query, headers=bearer(booking_key), timeout=10
        )
        assert [c["id"] for c in found.json()["data"]] == [created.json()["id"]]

    server.stop()
    logs = server.output().encode()
    assert b'"path": "/v1/customers", "status": 200' in logs, "the request log is empty: nothing was checked"
    assert _leaks(logs, [payload["email"], payload["external_ref"]]) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_schema_docs_and_probes_are_served(operator: Operator, servers: ServerPool) -> None:
    [server] = servers.start(operator)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        schema = client.get("/schema/openapi.json")
        assert schema.status_code == 200
        assert schema.headers["content-type"].split(";")[0].endswith("json")
        document = schema.json()
        assert document["info"]["title"] == "Veilbill API"
        assert "/v1/invoices/{invoice_id}/finalize" in document["paths"]

        swagger = client.get("/schema/swagger")
        assert swagger.status_code == 200
        assert swagger.headers["content-type"].startswith("text/html")
        assert "swagger-ui-bundle.js" in swagger.text
        assert client.get("/schema/assets/swagger-ui-bundle.js").status_code == 200

        live = client.get("/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "live"})
        ready = client.get("/health/ready")
        assert (ready.status_code, ready.json()["checks"]) == (200, {"database": "ok", "keyring": "ok"})

        unauthenticated = client.get("/v1/invoices")
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"].startswith("application/problem+json")


def test_serve_with_two_workers_starts_both_and_answers(operator: Operator, servers: ServerPool) -> None:
    """Regression: workers slower to import than uvicorn's 5 s health check were respawned forever."""
    (server,) = servers.start(operator, workers=2)
    for _ in range(20):
        assert httpx.get(f"{server.base_url}/health/ready", timeout=10).status_code == 200
    started = {
        line["event"]
        for line in map(json.loads, server.log_path.read_text().splitlines())
        if line.get("event", "").startswith("Started server process")
    }
    assert len(started) == 2, started
