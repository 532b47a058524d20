"""API fixtures: a tenant with one key per role, and Faker-made request bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from faker import Faker
from litestar.testing import TestClient

from api.settings import Settings
from billing import Billing, Database, DatabaseConfig, load_keyring


@dataclass(frozen=True)
class TenantKeys:
    tenant_id: str
    admin: str
    booking: str
    accountant: str
    auditor: str

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


def make_tenant(client: TestClient, billing: Billing, name: str) -> TenantKeys:  # type: ignore[type-arg]
    issued = billing.tenants.create_tenant(name)
    keys = {"admin": issued.key}
    for role in ("booking", "accountant", "auditor"):
        response = client.post(
            "/v1/admin/api-keys",
            json={"role": role, "name": f"{role} key"},
            headers={"Authorization": f"Bearer {issued.key}"},
        )
        assert response.status_code == 201, response.text
        keys[role] = response.json()["key"]
    return TenantKeys(tenant_id=issued.tenant_id, **keys)


@pytest.fixture
def app_billing(settings: Settings) -> Iterator[Billing]:
    """A second handle on the app's database and keyring, for seeding and for raw checks."""
    billing = Billing(
        db=Database(DatabaseConfig(settings.database_url)), keyring=load_keyring(settings.keyring_path)
    )
    yield billing
    billing.db.dispose()


@pytest.fixture
def tenant(client: TestClient, app_billing: Billing) -> TenantKeys:  # type: ignore[type-arg]
    return make_tenant(client, app_billing, "Salon Rivoli")


@pytest.fixture
def other_tenant(client: TestClient, app_billing: Billing) -> TenantKeys:  # type: ignore[type-arg]
    return make_tenant(client, app_billing, "Clinique du Parc")


def customer_payload(fake: Faker) -> dict[str, Any]:
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


def invoice_payload(customer_id: str, fake: Faker, *, lines: int = 2) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "booking_ref": f"bk_{fake.uuid4()[:8]}",
        "currency": "EUR",
        "due_date": "2026-12-01",
        "notes": fake.sentence(nb_words=6),
        "lines": [
            {
                "description": f"{fake.word()} {fake.word()} treatment",
                "quantity": 1 + i,
                "unit_amount": 4500,
                "tax_rate_bps": 2000,
                "category": "hair",
            }
            for i in range(lines)
        ],
    }


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every string in a decoded JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_paths(item, (*path, index))
    elif isinstance(value, str):
        yield path


def planted(body: Any, path: tuple[Any, ...], text: str) -> Any:
    """A deep copy of ``body`` with ``text`` at ``path``."""
    copy = json.loads(json.dumps(body))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = text
    return copy
