"""The authorization matrix: every route x every role x own and other tenant.

The declared matrix is ``docs/authorization.md``. These tests fail when a route of the service has
no row there (or a row names no route), when a row disagrees with the API table of ``SPEC.md``,
when the guards in the code admit other roles than the row, and when a call behaves otherwise:
a key of a role the row does not name gets 403; a key of an allowed role gets 404 for another
tenant's ids, and neither 401 nor 403 for its own.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from faker import Faker
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from billing import Billing
from tokenization import LocalStripeSandbox

from ..conftest import REQUIRE_ALL
from .conftest import TenantKeys, customer_payload, invoice_payload, make_tenant

REPO_ROOT = Path(__file__).resolve().parents[2]
MATRIX_PATH = REPO_ROOT / "docs" / "authorization.md"
SPEC_PATH = REPO_ROOT.parent / "shared" / "SPEC.md"
ROLES = ("booking", "accountant", "admin", "auditor")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ACCESS_KINDS = ("public", "gateway-signature", "payer-token", "key-form")
_PARAMETER = re.compile(r"\{[^}]*\}")

Route = tuple[str, str]


def normalized(path: str) -> str:
    """``/v1/customers/{customer_id:str}`` → ``/v1/customers/{}``."""
    return _PARAMETER.sub("{}", path)


def _access(cell: str) -> str:
    """A roles cell as a canonical access string: sorted roles, or an access kind."""
    cell = cell.strip().lower()
    if cell in {"none", "public"}:
        return "public"
    if cell in {"gateway signature", "gateway-signature"}:
        return "gateway-signature"
    if cell in ACCESS_KINDS or cell.startswith("session:"):
        return cell
    roles = sorted(role.strip() for role in cell.split(","))
    unknown = set(roles) - set(ROLES)
    assert not unknown, f"unknown roles {unknown} in {cell!r}"
    return ", ".join(roles)


def declared_matrix() -> dict[Route, str]:
    matrix: dict[Route, str] = {}
    for line in MATRIX_PATH.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in METHODS:
            route = (cells[0], normalized(cells[1]))
            assert route not in matrix, f"{route} is declared twice"
            matrix[route] = _access(cells[2])
    return matrix


def served_routes(app: Litestar) -> dict[Route, tuple[list[str] | None, str]]:
    """Every (method, path) the app serves: the roles its guard admits (None: no role guard), and
    the path as the app writes it (with the names of its parameters)."""
    routes: dict[Route, tuple[list[str] | None, str]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            names = [getattr(guard, "func", guard).__name__ for guard in handler.resolve_guards()]
            role_guards = [name for name in names if name.startswith("requires_role(")]
            roles = sorted(
                {role.strip() for name in role_guards for role in name[len("requires_role(") : -1].split(",")}
            )
            for method in handler.http_methods:
                if method in METHODS:
                    routes[(method, normalized(route.path_format))] = (roles or None, route.path_format)
    return routes


def _spec_routes(cell: str) -> list[Route]:
    """The routes of one cell of the spec's API table, e.g. ``POST /v1/x/{id}/finalize · /void``.

    ``METHOD …`` names the last path that ends in a parameter (the resource), ``METHOD …/seg``
    appends to the previous path, ``/seg`` replaces its last segment, a bare ``METHOD`` keeps it.
    """
    routes: list[Route] = []
    method = path = resource = ""
    for quoted in re.findall(r"`([^`]*)`", cell):
        piece = quoted.split("?", 1)[0].strip()
        head, _, rest = piece.partition(" ")
        if head in METHODS:
            method, rest = head, rest.strip()
        else:
            rest = piece
        if rest.startswith("…/"):
            path = path + rest[1:]
        elif rest == "…":
            path = resource
        elif rest.startswith("/") and rest.count("/") == 1 and path:
            path = path.rsplit("/", 1)[0] + rest
        elif rest.startswith("/"):
            path = rest
        if path.endswith("}"):
            resource = path
        routes.append((method, normalized(path)))
    return routes


def spec_matrix() -> dict[Route, str]:
    if not SPEC_PATH.exists():
        if REQUIRE_ALL:
            pytest.fail(f"{SPEC_PATH} is missing (VEILBILL_REQUIRE_ALL=1 forbids skipping)")
        pytest.skip(f"{SPEC_PATH} is not beside the repository")
    matrix: dict[Route, str] = {}
    in_table = False
    for line in SPEC_PATH.read_text(encoding="utf-8").splitlines():
        if line.startswith("| method and path"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for route in _spec_routes(cells[0]):
                matrix[route] = _access(cells[1])
    assert len(matrix) > 30, "the spec's API table was not found or not parsed"
    return matrix


# --- the declaration ------------------------------------------------------------------------------


@pytest.fixture
def plain_app(settings: Settings) -> Litestar:
    return create_app(settings, configure_logs=False)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_served_route_is_declared_and_every_declared_route_is_served(plain_app: Litestar) -> None:
    served = set(served_routes(plain_app))
    declared = set(declared_matrix())
    assert sorted(served - declared) == [], "routes without a rule in docs/authorization.md"
    assert sorted(declared - served) == [], "rules in docs/authorization.md for routes that do not exist"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_declared_matrix_agrees_with_the_specification(plain_app: Litestar) -> None:
    declared = declared_matrix()
    spec = spec_matrix()
    missing = sorted(route for route in spec if route not in declared)
    assert missing == [], "routes of the specification that the service does not declare"
    disagreements = {
        route: (spec[route], declared[route]) for route in spec if spec[route] != declared[route]
    }
    assert disagreements == {}, "spec vs docs/authorization.md"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_guards_in_the_code_admit_exactly_the_declared_roles(plain_app: Litestar) -> None:
    declared = declared_matrix()
    for route, (roles, _) in served_routes(plain_app).items():
        access = declared[route]
        if roles is None:
            assert access in ACCESS_KINDS or access.startswith("session:"), f"{route} has no role guard"
        else:
            assert ", ".join(roles) == access, route


def test_the_spec_parser_reads_the_shorthand() -> None:
    cell = "`POST /v1/invoices` · `GET /v1/invoices/{id}` · `GET /v1/invoices?…` · `PATCH …`"
    assert _spec_routes(cell) == [
        ("POST", "/v1/invoices"),
        ("GET", "/v1/invoices/{}"),
        ("GET", "/v1/invoices"),
        ("PATCH", "/v1/invoices/{}"),
    ]
    cell = "`POST /v1/customers/{id}/payment-methods` · `GET` · `DELETE …/{pm}`"
    assert _spec_routes(cell) == [
        ("POST", "/v1/customers/{}/payment-methods"),
        ("GET", "/v1/customers/{}/payment-methods"),
        ("DELETE", "/v1/customers/{}/payment-methods/{}"),
    ]
    cell = "`POST /v1/invoices/{id}/finalize` · `/void` · `/mark-uncollectible`"
    assert [path for _, path in _spec_routes(cell)] == [
        "/v1/invoices/{}/finalize",
        "/v1/invoices/{}/void",
        "/v1/invoices/{}/mark-uncollectible",
    ]


# --- the behaviour --------------------------------------------------------------------------------


class Tenant:
    """One tenant's keys and the ids a walk needs: a client, a finalized invoice, a spare key."""

    def __init__(self, client: TestClient[Any], billing: Billing, name: str, fake: Faker) -> None:
        self.keys: TenantKeys = make_tenant(client, billing, name)
        booking = self.keys.headers("booking")
        self.customer_id = client.post("/v1/customers", json=customer_payload(fake), headers=booking).json()[
            "id"
        ]
        invoice = client.post("/v1/invoices", json=invoice_payload(self.customer_id, fake), headers=booking)
        self.invoice_id = invoice.json()["id"]
        assert client.post(f"/v1/invoices/{self.invoice_id}/finalize", headers=booking).status_code == 200
        spare = client.post(
            "/v1/admin/api-keys",
            json={"role": "booking", "name": "spare"},
            headers=self.keys.headers("admin"),
        )
        self.spare_key_id = spare.json()["id"]

    def ids(self) -> dict[str, str]:
        return {
            "customer_id": self.customer_id,
            "invoice_id": self.invoice_id,
            "key_id": self.spare_key_id,
        }


UNKNOWN_IDS = {
    "payment_method_id": "pm_doesnotexist",
    "payment_id": "pay_doesnotexist",
    "token": "nosuchtoken",
    "file_path": "nosuchfile.css",
    "path": "nosuchpage",
    "endpoint_id": "we_doesnotexist",
    "event_id": "evt_doesnotexist",
    "dataset": "invoices",
}
QUERIES: dict[Route, dict[str, str]] = {
    ("GET", "/v1/customers"): {"email": "someone@example.org"},
    ("GET", "/v1/reports/invoices"): {"from": "2026-01-01", "to": "2026-12-31"},
    ("GET", "/v1/reports/revenue"): {"from": "2026-01-01", "to": "2026-12-31"},
    ("GET", "/v1/reports/tax"): {"from": "2026-01-01", "to": "2026-12-31"},
}
# Destructive calls go last, so that the rest of the walk still has a client and a key to use.
LAST = (("POST", "/v1/customers/{}/erase"), ("DELETE", "/v1/admin/api-keys/{}"))


def _body(route: Route, tenant: Tenant, client: TestClient[Any], fake: Faker) -> dict[str, Any] | None:
    method, path = route
    bodies: dict[Route, dict[str, Any]] = {
        ("POST", "/v1/customers"): customer_payload(fake),
        ("PATCH", "/v1/customers/{}"): {"notes": "rectified"},
        ("POST", "/v1/customers/{}/payment-methods"): {"token": "pm_doesnotexist"},
        ("POST", "/v1/invoices"): invoice_payload(tenant.customer_id, fake),
        ("PATCH", "/v1/invoices/{}"): {"notes": "edited"},
        ("POST", "/v1/invoices/{}/pay"): {"payment_method_id": "pm_doesnotexist"},
        ("POST", "/v1/invoices/{}/refunds"): {"amount": 100, "reason": "requested_by_customer"},
        ("POST", "/v1/invoices/{}/restricted-read"): {"reason": "audit of a sample"},
        ("POST", "/v1/admin/api-keys"): {"role": "auditor", "name": "walk"},
        ("POST", "/v1/admin/retention/run"): {"dry_run": True},
        ("POST", "/pay/{}/confirm"): {"payment_method": "pm_doesnotexist"},
        ("POST", "/v1/customers/{}/rotate-keys"): {"purpose": "all"},
        ("POST", "/v1/admin/webhook-endpoints"): {
            "url": "https://203.0.113.10/hooks",  # TEST-NET-3: refused as not public, never contacted
            "event_types": ["invoice.paid"],
        },
        ("POST", "/v1/admin/webhook-endpoints/{}/rotate-secret"): {"overlap_hours": 24},
    }
    if route in bodies:
        return bodies[route]
    if method == "PUT":  # a settings document: put back what is there
        current = client.get(path, headers=tenant.keys.headers("admin"))
        assert current.status_code == 200, (route, current.text)
        body: dict[str, Any] = current.json()
        return body
    return None


def _fill(route_path: str, ids: dict[str, str]) -> tuple[str, bool]:
    """The concrete path, and whether every parameter in it is a real id of that tenant."""
    real = True

    def value(match: re.Match[str]) -> str:
        nonlocal real
        name = match.group(0)[1:-1].split(":")[0]
        if name in ids:
            return ids[name]
        real = False
        return UNKNOWN_IDS[name]

    return _PARAMETER.sub(value, route_path), real


@pytest.fixture
def walk_app(settings: Settings, sandbox: LocalStripeSandbox) -> Iterator[TestClient[Any]]:
    gateway = replace(
        settings,
        stripe_api_key="sk_test_veilbill_walk",
        stripe_api_base=sandbox.api_base,
        stripe_publishable_key="pk_test_veilbill",
        stripe_webhook_secret="whsec_walk",
        tenant_admin_master_key_rotation=True,  # else the route is reserved to the operator (403)
    )
    with TestClient(create_app(gateway, configure_logs=False)) as client:
        yield client


class Walk:
    """Calls routes on one app as the tenants' keys and collects what did not behave as declared."""

    def __init__(self, client: TestClient[Any], own: Tenant, other: Tenant, fake: Faker) -> None:
        self.client, self.own, self.other, self.fake = client, own, other, fake
        self.surprises: list[str] = []

    def call(self, route: Route, path: str, role: str, body: Any) -> int:
        method, _ = route
        headers = self.own.keys.headers(role)
        if method != "GET":
            headers["Idempotency-Key"] = secrets.token_hex(8)
        response = self.client.request(
            method, path, params=QUERIES.get(route), json=body, headers=headers, follow_redirects=False
        )
        return response.status_code

    def without_role(self, route: Route, route_path: str, access: str) -> None:
        """Routes that no API key opens: a key grants nothing there beyond what no key grants."""
        path, _ = _fill(route_path, self.own.ids())
        expected = {
            "gateway-signature": "an unsigned body: 400",
            "payer-token": "an unknown token: 404",
            "key-form": "the form 200, a post without its CSRF token 403",
        }
        for role in ROLES:
            status = self.call(route, path, role, _body(route, self.own, self.client, self.fake))
            wrong = (
                (access == "public" and status in {401, 403})
                or (access == "gateway-signature" and status != 400)
                or (access == "payer-token" and status != 404)
                or (access == "key-form" and status != (200 if route[0] == "GET" else 403))
                or (access.startswith("session:") and status not in {302, 303, 401, 403})
            )
            if wrong:
                note = expected.get(access, "")
                self.surprises.append(
                    f"{route[0]} {route_path} ({access}) with a {role} key: {status} {note}"
                )

    def with_roles(self, route: Route, route_path: str, allowed: set[str]) -> None:
        for role in ROLES:
            for tenant, label in ((self.own, "own"), (self.other, "other")):
                if label == "other" and "{" not in route_path:
                    continue  # a collection: there is no other tenant's id to try
                path, real = _fill(route_path, tenant.ids())
                body = _body(route, tenant, self.client, self.fake)
                real = real and "doesnotexist" not in repr(body)  # an unknown id in the body may 404
                status = self.call(route, path, role, body)
                if role not in allowed:
                    wrong = status != 403
                elif label == "other":
                    wrong = status != 404
                else:
                    wrong = status in {401, 403} or (status == 404 and real)
                if wrong:
                    self.surprises.append(
                        f"{route[0]} {route_path} as {role} ({label} tenant's ids): {status}"
                    )


def test_every_route_with_every_role_and_both_tenants(
    walk_app: TestClient[Any], app_billing: Billing, fake: Faker
) -> None:
    walk = Walk(
        walk_app,
        Tenant(walk_app, app_billing, "Salon Rivoli", fake),
        Tenant(walk_app, app_billing, "Clinique du Parc", fake),
        fake,
    )
    declared = declared_matrix()
    served = served_routes(walk_app.app)
    order = sorted(served, key=lambda route: (route in LAST, LAST.index(route) if route in LAST else 0))
    for route in order:
        access, route_path = declared[route], served[route][1]
        if access in ACCESS_KINDS or access.startswith("session:"):
            walk.without_role(route, route_path, access)
        else:
            walk.with_roles(route, route_path, set(access.split(", ")))
    assert walk.surprises == [], "\n".join(walk.surprises)
