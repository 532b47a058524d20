"""Fixtures the billing tests borrow from the API tests: the app wired to the sandbox gateway."""

from ..api.conftest import app_billing  # noqa: F401 -- a fixture
from ..api.test_payments import gateway_settings, pay_client  # noqa: F401 -- fixtures
