"""Errors raised at the boundary to the payment gateway.

None of them carries card data, and none repeats the gateway's own message (it may echo what
was sent): only ids (the gateway's request id, payment intent id), machine codes (decline code,
the gateway's error code) and field paths.

The tree::

    GatewayError                      root of everything raised by :mod:`tokenization`
    ├── CardDataRejected              a request to *us* carried card data
    ├── CardDeclined                  the issuer (or the gateway's risk checks) declined the card
    ├── PaymentMethodInvalid          unknown, foreign or non-card payment method token
    ├── GatewayUnavailable            not reached, refused, 5xx, rate limited: nothing to learn
    ├── GatewayTimeout                sent, but no answer in time: the outcome is UNKNOWN
    ├── GatewayRejected               any other refusal (4xx): authentication, invalid parameters
    ├── WebhookSignatureInvalid       a webhook delivery failed signature verification
    ├── WebhookPayloadInvalid         a verified delivery is not an event we can read
    └── SandboxUnavailable            the local sandbox gateway cannot be started

After :class:`GatewayTimeout` (and after :class:`GatewayUnavailable` when the connection broke
mid-response) a mutating call may or may not have happened. Retry with the *same* idempotency
key (the real gateway then replays its first answer) and, for payments, look the intent up first
(``PaymentGateway.find_payment``), since the sandbox ignores idempotency keys.
"""

from __future__ import annotations

__all__ = [
    "CardDataRejected",
    "CardDeclined",
    "GatewayError",
    "GatewayRejected",
    "GatewayTimeout",
    "GatewayUnavailable",
    "PaymentMethodInvalid",
    "SandboxUnavailable",
    "WebhookPayloadInvalid",
    "WebhookSignatureInvalid",
]


class GatewayError(Exception):
    """Root of every error raised by :mod:`tokenization`."""

    code = "gateway_error"


class CardDataRejected(GatewayError):
    """A request carried something that looks like card data; it is refused and never stored.

    ``paths`` lists where it was found (``$.notes``, ``query:q``), never the value.
    """

    code = "card_data_rejected"

    def __init__(self, paths: list[str]) -> None:
        super().__init__("The request contains card data, which this service never accepts.")
        self.paths = paths


class _GatewayCallError(GatewayError):
    """An error answered to (or instead of) one call to the gateway.

    ``request_id`` is the gateway's id for the request (``req_…``), when it sent one: quote it to
    the gateway's support. ``http_status`` and ``gateway_code`` (the gateway's machine-readable
    error code, such as ``resource_missing``) are kept for diagnosis.
    """

    _message = "The payment gateway failed."

    def __init__(
        self,
        request_id: str | None = None,
        *,
        http_status: int | None = None,
        gateway_code: str | None = None,
    ) -> None:
        super().__init__(self._message)
        self.request_id = request_id
        self.http_status = http_status
        self.gateway_code = gateway_code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(request_id={self.request_id!r}, http_status={self.http_status!r}, "
            f"gateway_code={self.gateway_code!r})"
        )


class CardDeclined(_GatewayCallError):
    """The card was declined, when attached or when charged.

    ``decline_code`` is the issuer's reason (``insufficient_funds``, ``generic_decline``…) when
    the gateway gives one, else the gateway's error code (``card_declined``). ``intent_id`` is
    the payment intent the declined charge belongs to, when the gateway says which.
    """

    code = "card_declined"
    _message = "The card was declined."

    def __init__(
        self,
        decline_code: str,
        request_id: str | None = None,
        intent_id: str | None = None,
        *,
        http_status: int | None = None,
        gateway_code: str | None = None,
    ) -> None:
        super().__init__(request_id, http_status=http_status, gateway_code=gateway_code)
        self.decline_code = decline_code
        self.intent_id = intent_id

    def __repr__(self) -> str:
        return (
            f"CardDeclined(decline_code={self.decline_code!r}, request_id={self.request_id!r}, "
            f"intent_id={self.intent_id!r})"
        )


class PaymentMethodInvalid(_GatewayCallError):
    """The payment method token is unknown, belongs to another customer, or is not a card."""

    code = "payment_method_invalid"
    _message = "The payment method is not valid for this customer."


class GatewayUnavailable(_GatewayCallError):
    """The gateway could not be reached, refused the connection, failed (5xx) or rate-limited us."""

    code = "gateway_unavailable"
    _message = "The payment gateway is unavailable."


class GatewayTimeout(_GatewayCallError):
    """The request was sent but no answer came in time: it may or may not have been applied."""

    code = "gateway_timeout"
    _message = "The payment gateway did not answer in time."


class GatewayRejected(_GatewayCallError):
    """The gateway refused the request (a 4xx other than a decline): credentials, parameters, state."""

    code = "gateway_rejected"
    _message = "The payment gateway rejected the request."


class WebhookSignatureInvalid(GatewayError):
    """A webhook delivery is not authentic: its ``Stripe-Signature`` does not verify.

    ``reason`` says which check failed (``missing_header``, ``malformed_header``, ``no_v1``,
    ``timestamp_out_of_tolerance``, ``no_matching_signature``) for logs and metrics; answer the
    sender the same way whatever it is.
    """

    code = "webhook_signature_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__("The webhook signature is not valid.")
        self.reason = reason


class WebhookPayloadInvalid(GatewayError):
    """A webhook body is not a readable gateway event (not JSON, no ``id``/``type``, too large)."""

    code = "webhook_payload_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__("The webhook payload is not a valid event.")
        self.reason = reason


class SandboxUnavailable(GatewayError):
    """The local sandbox gateway (localstripe) is not installed, did not start, or is not answering."""

    code = "sandbox_unavailable"
