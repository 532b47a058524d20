"""Demo data: a tenant of Faker-made clients and invoices (no real person's data)."""

from __future__ import annotations

from typing import Any

from faker import Faker

from billing import (
    Actor,
    Address,
    Billing,
    CustomerInput,
    InvoiceInput,
    InvoiceLineInput,
)

_SERVICES = [
    ("Haircut and styling", "hair", 4500, 2000),
    ("Colour treatment", "hair", 7900, 2000),
    ("Physiotherapy session", "physio", 6000, 0),
    ("Deep tissue massage", "massage", 8500, 2000),
    ("Hotel night, double room", "lodging", 12900, 1000),
    ("Breakfast", "food", 1800, 550),
]


def seed_demo(billing: Billing, *, customers: int, invoices: int, seed: int | None = None) -> dict[str, Any]:
    """Create the demo tenant; returns its id and one key per role."""
    fake = Faker(["fr_FR", "de_DE", "en_GB"])
    if seed is not None:
        fake.seed_instance(seed)
    admin = billing.tenants.create_tenant(f"{fake.last_name()} Demo Salon")
    operator = Actor(tenant_id=admin.tenant_id, role="admin", key_id=admin.id)
    keys = {"admin": admin.key}
    for role in ("booking", "accountant", "auditor"):
        keys[role] = billing.tenants.issue_api_key(operator, role=role, name=f"demo {role} key").key
    booking = Actor(tenant_id=admin.tenant_id, role="booking")
    customer_ids = []
    for _ in range(customers):
        created = billing.customers.create(
            booking,
            CustomerInput(
                name=fake.name(),
                email=fake.unique.email(),
                phone=fake.numerify("+33 6 ## ## ## ##"),
                address=Address(
                    line1=fake.street_address().replace("\n", " "),
                    city=fake.city(),
                    postcode=fake.numerify("#####"),
                    country="FR",
                ),
                birth_date=fake.date_of_birth(minimum_age=18, maximum_age=90),
                gender=fake.random_element(["female", "male", "non_binary"]),
                external_ref=f"client-{fake.uuid4()[:8]}",
            ),
        )
        customer_ids.append(created.id)
    for index in range(invoices):
        picked = fake.random_elements(_SERVICES, length=fake.random_int(1, 3), unique=True)
        draft = billing.invoices.create_draft(
            booking,
            InvoiceInput(
                customer_id=fake.random_element(customer_ids),
                currency="EUR",
                booking_ref=f"bk_{fake.uuid4()[:8]}",
                lines=[
                    InvoiceLineInput(
                        description=d,
                        category=c,
                        unit_amount=a,
                        tax_rate_bps=t,
                        quantity=fake.random_int(1, 2),
                    )
                    for d, c, a, t in picked
                ],
            ),
        )
        if index % 5 != 4:  # most invoices are finalized; a few stay drafts
            billing.invoices.finalize(booking, draft.id)
    return {"tenant_id": admin.tenant_id, "keys": keys}
