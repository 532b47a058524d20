"""The card-number canary, driven by the served OpenAPI document.

For every operation, every string field of its JSON body and every query parameter gets a card
number, with every role's key: the answer is never a success, a card-bearing request is refused
with ``card_data_rejected`` wherever it passes authentication, and afterwards the card number is
in no table of the database and in no log line.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient
from sqlalchemy import inspect, text

from api.logging import configure_logging
from billing import Billing

from .conftest import TenantKeys, customer_payload, planted, string_paths

CARD = "4000 0566 5566 5556"  # a gateway TEST number (Visa debit)
CARD_DIGITS = CARD.replace(" ", "")
ROLES = ("booking", "accountant", "admin", "auditor")


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _sample(schema: dict[str, Any], node: dict[str, Any], depth: int = 0) -> Any:
    """A body shaped like ``node`` whose every string is a placeholder ``"s"``."""
    node = _resolve(schema, node)
    if depth > 6:
        return None
    for key in ("oneOf", "anyOf"):
        if key in node:
            options = [o for o in node[key] if _resolve(schema, o).get("type") != "null"]
            return _sample(schema, options[0], depth + 1) if options else None
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        return {name: _sample(schema, prop, depth + 1) for name, prop in node.get("properties", {}).items()}
    if kind == "array":
        return [_sample(schema, node.get("items", {}), depth + 1)]
    if kind == "string":
        return "s"
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    return "s"


def _requests(schema: dict[str, Any], ids: dict[str, str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, request kwargs) with one card-bearing field each, for every operation."""
    for raw_path, item in schema["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x_unknown"), raw_path)
        for method, operation in item.items():
            if method not in {"get", "post", "patch", "put", "delete"}:
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query":
                    yield method, path, {"params": {parameter["name"]: CARD}}
            content = operation.get("requestBody", {}).get("content", {})
            body_schema = content.get("application/json", {}).get("schema")
            if body_schema is None:
                continue
            body = _sample(schema, body_schema)
            for string_path in string_paths(body):
                yield method, path, {"json": planted(body, string_path, f"x {CARD} y")}
            yield method, path, {"json": body | {"card_number": "1"} if isinstance(body, dict) else body}


@pytest.fixture
def log_stream(restore_logging: None) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level="DEBUG", stream=stream)
    return stream


def test_card_numbers_in_every_field_of_every_operation(
    client: TestClient,
    tenant: TenantKeys,
    fake: Faker,
    app_billing: Billing,
    log_stream: io.StringIO,
    tmp_path: Path,
) -> None:
    headers = tenant.headers("booking")
    customer = client.post("/v1/customers", json=customer_payload(fake), headers=headers).json()
    invoice = client.post(
        "/v1/invoices",
        json={
            "customer_id": customer["id"],
            "currency": "EUR",
            "lines": [{"description": "d", "unit_amount": 1}],
        },
        headers=headers,
    ).json()
    ids = {
        "customer_id": customer["id"],
        "invoice_id": invoice["id"],
        "key_id": "key_x",
        "payment_id": "pay_x",
    }
    schema = client.get("/schema/openapi.json").json()
    requests = list(_requests(schema, ids))
    assert len(requests) > 40, "the canary must reach most of the API"
    refused = 0
    for role in ROLES:
        for index, (method, path, kwargs) in enumerate(requests):
            response = client.request(
                method.upper(),
                path,
                headers=tenant.headers(role) | {"Idempotency-Key": f"canary-{role}-{index}"},
                **kwargs,
            )
            where = f"{role} {method.upper()} {path} {kwargs}"
            assert response.status_code >= 400, where
            assert response.status_code < 500, where
            assert CARD not in response.text and CARD_DIGITS not in response.text, where
            if response.status_code == 422:
                assert response.json()["code"] == "card_data_rejected", where
                refused += 1
            else:
                assert response.status_code in (401, 403, 404), where
    assert refused >= len(requests)  # every request that passed the role guard was refused
    with app_billing.db.read() as session:
        for table in inspect(session.get_bind()).get_table_names():
            dump = repr(session.execute(text(f'SELECT * FROM "{table}"')).all())  # noqa: S608 - our own table names
            assert CARD_DIGITS not in dump and CARD not in dump, table
    logged = log_stream.getvalue()
    assert logged, "nothing was logged: the log check would be empty"
    assert CARD_DIGITS not in logged and CARD not in logged

    # The PCI scan, as an assessor runs it: every table (sealed values opened) and the logs.
    log_file = tmp_path / "veilbill.log"
    log_file.write_text(logged)
    scan = app_billing.pci.scan(paths=[log_file])
    assert scan.clean, [finding.location.describe() for finding in scan.findings]
    assert scan.stats.rows > 0 and scan.stats.values_decrypted > 0  # it did read the data
    assert scan.stats.files == 1 and scan.stats.lines == len(logged.splitlines())
    # ...and the same scan does see a card number where one is: a positive control.
    log_file.write_text(logged + f"leaked {CARD}\n")
    assert not app_billing.pci.scan(paths=[log_file]).clean
