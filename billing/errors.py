"""Domain errors of the billing package.

Every error is named for its condition and carries ids, never PII or input values. None of them
knows about HTTP: ``api/errors.py`` is the one place that maps them to problem+json. Each class has a
stable ``code`` that the API exposes unchanged.
"""

from __future__ import annotations

__all__ = [
    "AmountOutOfRange",
    "ApiKeyInvalid",
    "BillingError",
    "ConcurrentUpdate",
    "CustomerErased",
    "DatabaseUnavailable",
    "DecryptionError",
    "GatewayNotConfigured",
    "IdempotencyInProgress",
    "IdempotencyKeyRequired",
    "IdempotencyKeyReused",
    "InvalidStateTransition",
    "KeyringError",
    "NotFound",
    "PageSessionInvalid",
    "PaymentDeclined",
    "PaymentInProgress",
    "PaymentSessionInvalid",
    "RecordExpired",
    "RecordRestricted",
    "RefundExceedsPaid",
    "RoleForbidden",
    "UnknownCurrency",
    "ValidationFailed",
    "WebhookUrlInvalid",
    "WebhookUrlRefused",
]


class BillingError(Exception):
    """Root of every error raised by :mod:`billing`."""

    code = "billing_error"

    def __init__(self, message: str = "", **ids: str | int | None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip().splitlines()[0]
        self.ids = {k: v for k, v in ids.items() if v is not None}


class DecryptionError(BillingError):
    """The value could not be decrypted.

    Deliberately opaque: it never says whether the key was missing or shredded, the ciphertext was
    tampered with, moved to another row, or malformed. It carries no input, no reason and no key id,
    so an error message or log line cannot become an oracle.
    """

    code = "decryption_failed"

    def __init__(self) -> None:
        super().__init__("The value could not be decrypted.")


class KeyringError(BillingError):
    """The keyring file is missing, unreadable, malformed or has unsafe permissions."""

    code = "keyring_unavailable"


class DatabaseUnavailable(BillingError):
    """The database could not complete the unit of work; nothing of it was kept. Try again.

    Raised for a dropped or refused connection, a server that went away mid-transaction, and the
    conflicts a database resolves by aborting one party (serialization failure, deadlock, a lock
    wait that timed out). The transaction was rolled back by the database, so no partial rows remain.
    """

    code = "database_unavailable"


class UnknownCurrency(BillingError):
    """The currency is not an active ISO 4217 code."""

    code = "unknown_currency"


class AmountOutOfRange(BillingError):
    """An amount or quantity is negative, zero where it must be positive, or too large."""

    code = "amount_out_of_range"


class ValidationFailed(BillingError):
    """The request is well-formed but breaks a business rule (see ``ids['field']``)."""

    code = "validation_failed"


class NotFound(BillingError):
    """No such resource for this tenant (another tenant's resources are reported the same way)."""

    code = "not_found"


class InvalidStateTransition(BillingError):
    """The resource is not in a state that allows this operation."""

    code = "invalid_state_transition"


class ConcurrentUpdate(BillingError):
    """Another request changed the resource at the same time; retry."""

    code = "concurrent_update"


class ApiKeyInvalid(BillingError):
    """The API key is missing, unknown, expired or revoked."""

    code = "invalid_api_key"


class RoleForbidden(BillingError):
    """The API key's role does not allow this operation."""

    code = "forbidden_role"


class PaymentDeclined(BillingError):
    """The card was declined by the issuer (``ids['decline_code']``, ``ids['payment_id']``)."""

    code = "card_declined"


class PaymentInProgress(BillingError):
    """Another payment of this invoice is still being processed."""

    code = "payment_in_progress"


class RefundExceedsPaid(BillingError):
    """The refund is larger than what was paid and not yet refunded."""

    code = "refund_exceeds_paid"


class GatewayNotConfigured(BillingError):
    """No payment gateway is configured for this service."""

    code = "gateway_not_configured"


class IdempotencyKeyRequired(BillingError):
    """This operation needs an ``Idempotency-Key`` header."""

    code = "idempotency_key_required"


class IdempotencyKeyReused(BillingError):
    """The ``Idempotency-Key`` was already used for a different request."""

    code = "idempotency_key_reused"


class IdempotencyInProgress(BillingError):
    """A request with the same ``Idempotency-Key`` is still being processed."""

    code = "idempotency_in_progress"


class PaymentSessionInvalid(BillingError):
    """The payment link is unknown or expired."""

    code = "payment_session_invalid"


class PageSessionInvalid(BillingError):
    """The page session is unknown, ended, idle too long, past its lifetime, or its key is unusable.

    ``ids['reason']`` (``unknown``, ``ended``, ``idle``, ``lifetime``, ``key_unusable``) is for the
    audit chain and tests; the pages show every case the same way (sign in again).
    """

    code = "page_session_invalid"


class CustomerErased(BillingError):
    """The client was erased: their personal data no longer exists."""

    code = "customer_erased"


class RecordRestricted(BillingError):
    """The record belongs to an erased client: only admins and auditors may read it, with a reason."""

    code = "record_restricted"


class RecordExpired(BillingError):
    """The record's retention period ended and its content was destroyed; amounts remain."""

    code = "record_retention_expired"


class WebhookUrlInvalid(BillingError):
    """The webhook URL is not an absolute http(s) URL without credentials or fragment."""

    code = "webhook_url_invalid"


class WebhookUrlRefused(BillingError):
    """The webhook URL's host does not resolve, or resolves to a non-public address."""

    code = "webhook_url_refused"
