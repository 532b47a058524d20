"""Veilbill tokenization package: the boundary to the payment gateway.

Public surface:

- card-number (PAN) detection and redaction: :func:`find_card_numbers`,
  :func:`contains_card_number`, :func:`redact_card_numbers`, :func:`luhn_valid`;
- card-data scans of decoded request bodies and query strings: :func:`find_card_data`,
  :func:`scan_query_params`, :data:`CARD_FIELD_NAMES`, :func:`is_card_field_name`;
- the gateway: the :class:`PaymentGateway` protocol and its values (:class:`CardSummary`,
  :class:`SetupIntentResult`, :class:`PaymentResult`, :class:`RefundResult`,
  :class:`GatewayEvent`), :func:`derive_idempotency_key`, and the Stripe adapter
  (:class:`StripeGateway`, :func:`make_stripe_client`, :data:`STRIPE_API_VERSION`);
- webhooks: :func:`verify_signature`, :func:`parse_event`, :func:`parse_signature_header`,
  :func:`sign_payload`;
- the sandbox gateway as a child process: :class:`LocalStripeSandbox`;
- errors: :class:`GatewayError` (the root) and its subclasses, drawn in :mod:`tokenization.errors`.

Fault-injecting doubles for tests live in :mod:`tokenization.testing`.

Importing this package does no work and does not import ``stripe`` or ``httpx``: the Stripe
adapter and the sandbox are loaded on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tokenization._gateway import (
    REFUND_REASONS,
    CardSummary,
    GatewayEvent,
    PaymentGateway,
    PaymentResult,
    PaymentStatus,
    RefundResult,
    SetupIntentResult,
    derive_idempotency_key,
)
from tokenization._pan import (
    CARD_FIELD_NAMES,
    PAN_REDACTION,
    contains_card_number,
    find_card_data,
    find_card_numbers,
    is_card_field_name,
    luhn_valid,
    normalize_field_name,
    redact_card_numbers,
    scan_query_params,
)
from tokenization._webhooks import parse_event, parse_signature_header, sign_payload, verify_signature
from tokenization.errors import (
    CardDataRejected,
    CardDeclined,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentMethodInvalid,
    SandboxUnavailable,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)

if TYPE_CHECKING:
    from tokenization._sandbox import LocalStripeSandbox
    from tokenization._stripe import STRIPE_API_VERSION, StripeGateway, make_stripe_client

__all__ = [
    "CARD_FIELD_NAMES",
    "PAN_REDACTION",
    "REFUND_REASONS",
    "STRIPE_API_VERSION",
    "CardDataRejected",
    "CardDeclined",
    "CardSummary",
    "GatewayError",
    "GatewayEvent",
    "GatewayRejected",
    "GatewayTimeout",
    "GatewayUnavailable",
    "LocalStripeSandbox",
    "PaymentGateway",
    "PaymentMethodInvalid",
    "PaymentResult",
    "PaymentStatus",
    "RefundResult",
    "SandboxUnavailable",
    "SetupIntentResult",
    "StripeGateway",
    "WebhookPayloadInvalid",
    "WebhookSignatureInvalid",
    "contains_card_number",
    "derive_idempotency_key",
    "find_card_data",
    "find_card_numbers",
    "is_card_field_name",
    "luhn_valid",
    "make_stripe_client",
    "normalize_field_name",
    "parse_event",
    "parse_signature_header",
    "redact_card_numbers",
    "scan_query_params",
    "sign_payload",
    "verify_signature",
]

_LAZY = {
    "STRIPE_API_VERSION": "tokenization._stripe",
    "StripeGateway": "tokenization._stripe",
    "make_stripe_client": "tokenization._stripe",
    "LocalStripeSandbox": "tokenization._sandbox",
}


def __getattr__(name: str) -> Any:
    """Load the Stripe adapter (which imports ``stripe``) and the sandbox on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenization' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
