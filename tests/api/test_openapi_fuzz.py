"""Schemathesis against the served OpenAPI document: every operation, with every role's key.

For each operation Schemathesis generates requests from the schema (valid ones and, through its
negative mode, invalid ones); each is sent with the booking, accountant, admin and auditor keys of
one tenant, to the app with the sandbox gateway configured. Every answer must be free of server
errors (no 5xx) and conform to the schema the service publishes: documented status and content
type, and a body matching the documented response schema.

Examples per operation: ``VEILBILL_FUZZ_EXAMPLES`` (default 15); rerun with new seeds through
``--hypothesis-seed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.settings import Settings
from billing import Billing
from tokenization import LocalStripeSandbox

from ..conftest import serve_in_thread
from .conftest import TenantKeys, make_tenant

ROLES = ("booking", "accountant", "admin", "auditor")
EXAMPLES = int(os.environ.get("VEILBILL_FUZZ_EXAMPLES", "15"))
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


@pytest.fixture
def fuzz_server(settings: Settings, sandbox: LocalStripeSandbox) -> Iterator[str]:
    """The app with the sandbox gateway, served on a loopback port: real HTTP, real sockets."""
    gateway = replace(
        settings,
        stripe_api_key="sk_test_veilbill_fuzz",
        stripe_api_base=sandbox.api_base,
        stripe_publishable_key="pk_test_veilbill",
        stripe_webhook_secret="whsec_fuzz",
    )
    with serve_in_thread(create_app(gateway, configure_logs=False)) as base_url:
        yield base_url


@pytest.fixture
def fuzz_keys(fuzz_server: str, app_billing: Billing) -> TenantKeys:
    with httpx.Client(base_url=fuzz_server, timeout=30) as client:
        return make_tenant(client, app_billing, "Salon Fuzz")  # type: ignore[arg-type]


@pytest.fixture
def served_schema(fuzz_server: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server}/schema/openapi.json")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_operation_answers_every_role_without_5xx_and_as_documented(
    served_schema: Any, fuzz_keys: TenantKeys
) -> None:
    failures: dict[str, str] = {}
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) > 30  # the whole API, not an empty or truncated document

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call_with_every_role(case: Any) -> None:
            for role in ROLES:
                response = case.call(headers=fuzz_keys.headers(role))
                case.validate_response(response, checks=CHECKS)

        try:
            call_with_every_role()
        except (Exception, BaseExceptionGroup) as error:  # collect every operation's failure
            failures[operation.label] = str(error)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{detail}" for label, detail in failures.items())
