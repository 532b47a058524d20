"""The Stripe adapter: :class:`StripeGateway`, the one module of Veilbill that imports ``stripe``.

- **Injected client.** The gateway uses the ``stripe.StripeClient`` it is given; nothing touches
  the SDK's globals (``stripe.api_key``…). :func:`make_stripe_client` builds one with a pinned API
  version, a bounded timeout and no SDK retries.
- **Idempotency.** Every mutating call sends the caller's key as ``Idempotency-Key`` (per-call
  request options), so the real gateway replays instead of acting twice.
- **Errors split by cause** (:mod:`tokenization.errors`), carrying the request id and codes, never
  the SDK's message (it may echo what was sent) and never chained to the SDK's exception:

  =====================================================  ============================================
  SDK error                                              raised here
  =====================================================  ============================================
  ``CardError`` (402)                                    :class:`CardDeclined` (decline code, intent)
  ``InvalidRequestError`` on a payment-method call       :class:`PaymentMethodInvalid`
  ``InvalidRequestError`` on ``param=payment_method``    :class:`PaymentMethodInvalid`
  ``APIConnectionError`` caused by a read timeout        :class:`GatewayTimeout`
  ``APIConnectionError`` otherwise (refused, DNS,        :class:`GatewayUnavailable`
  connect timeout, reset)
  ``RateLimitError`` (429), ``APIError`` 409/5xx/none    :class:`GatewayUnavailable`
  anything else (401, 403, 400, 404, idempotency)        :class:`GatewayRejected`
  =====================================================  ============================================

  A *connect* timeout means the request never left, so it is "unavailable"; a *read* timeout
  means it was sent and its outcome is unknown, so it is "timeout". (A connection reset while
  the answer was awaited is also "unavailable" although its outcome is unknown too: callers
  reconcile after either, see :mod:`tokenization.errors`.)
- **Only what may be stored comes back**: card summaries, statuses, amounts, ids and our own
  metadata. Client secrets only when the browser needs them.

The sandbox (localstripe 1.15) differs from Stripe in ways this adapter absorbs when built with
``localstripe=True``: it refuses the ``customer`` filter when listing payment intents (they are then
listed unfiltered and filtered here, within a bounded scan), a refund ``reason`` and
``allowed_payment_method_types`` (neither is then sent; it knows only cards anyway). It also
ignores idempotency keys, which nothing here can absorb: see :meth:`StripeGateway.find_payment`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, NoReturn

import stripe

# requests is the SDK's own dependency and default HTTP library; it ships no type stubs.
from requests.exceptions import ConnectTimeout, Timeout

from tokenization._gateway import (
    REFUND_REASONS,
    CardSummary,
    PaymentResult,
    PaymentStatus,
    RefundResult,
    SetupIntentResult,
    check_amount,
    check_currency,
    check_metadata,
    check_reference,
)
from tokenization.errors import (
    CardDeclined,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentMethodInvalid,
)

__all__ = ["STRIPE_API_VERSION", "StripeGateway", "make_stripe_client"]

STRIPE_API_VERSION: Final = "2026-10-28.endive"
"""The Stripe API version every request asks for: the one stripe-python 16.1 is generated for.

Pinned so that an account's default version, or an SDK upgrade, cannot change response shapes
under us; bump it together with the SDK, deliberately. localstripe ignores ``Stripe-Version``.
"""

_MAX_IDEMPOTENCY_KEY: Final = 255
_FIND_SCAN_LIMIT: Final = 1000
"""At most this many intents are examined by :meth:`StripeGateway.find_payment`."""

_STATUSES: Final[Mapping[str, PaymentStatus]] = {
    "succeeded": "succeeded",
    "requires_action": "requires_action",
    "processing": "processing",
    "requires_confirmation": "processing",
    "requires_capture": "processing",
    "requires_payment_method": "failed",
    "canceled": "canceled",
}


def make_stripe_client(
    api_key: str,
    *,
    api_base: str | None = None,
    timeout: float = 10.0,
    max_network_retries: int = 0,
) -> stripe.StripeClient:
    """A ``StripeClient`` for :class:`StripeGateway`: pinned API version, bounded waits.

    ``api_base`` replaces ``https://api.stripe.com`` (the sandbox's URL, say). ``timeout``
    bounds connecting and each read, in seconds. ``max_network_retries`` lets the SDK retry
    connection errors, 409 and 5xx with the *same* idempotency key; it is 0 by default because
    the sandbox ignores keys, so an SDK retry there could act twice. Nothing is sent until the
    first call.
    """
    if not api_key:
        raise ValueError("a Stripe API key is required")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if max_network_retries < 0:
        raise ValueError("max_network_retries must be >= 0")
    return stripe.StripeClient(
        api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


class StripeGateway:
    """:class:`tokenization.PaymentGateway` on Stripe (or localstripe), through an injected client.

    ``localstripe=True`` adapts to the sandbox's gaps (see the module docstring); leave it off
    against Stripe. The instance holds no mutable state and may be shared between threads.
    """

    def __init__(self, client: stripe.StripeClient, *, localstripe: bool = False) -> None:
        self._client = client
        self._localstripe = localstripe

    def __repr__(self) -> str:
        return f"StripeGateway(localstripe={self._localstripe!r})"

    # --- customers ---------------------------------------------------------------------------

    def create_customer(self, *, reference: str, idempotency_key: str) -> str:
        params: stripe.params.CustomerCreateParams = {
            "metadata": {"veilbill_ref": check_reference(reference)}
        }
        try:
            customer = self._client.v1.customers.create(params=params, options=_options(idempotency_key))
        except stripe.StripeError as error:
            _raise(error)
        return customer.id

    def delete_customer(self, *, customer: str, idempotency_key: str) -> None:
        try:
            self._client.v1.customers.delete(customer, options=_options(idempotency_key))
        except stripe.InvalidRequestError as error:
            if error.http_status == 404:  # already deleted (a retry whose first answer was lost)
                return
            _raise(error)
        except stripe.StripeError as error:
            _raise(error)

    # --- cards -------------------------------------------------------------------------------

    def create_setup_intent(
        self, *, customer: str, idempotency_key: str, metadata: Mapping[str, str] | None = None
    ) -> SetupIntentResult:
        params: stripe.params.SetupIntentCreateParams = {"customer": customer, "usage": "off_session"}
        if metadata:
            params["metadata"] = check_metadata(metadata)
        if not self._localstripe:  # cards only (the sandbox knows no other kind, nor this parameter)
            params["allowed_payment_method_types"] = ["card"]
        try:
            intent = self._client.v1.setup_intents.create(params=params, options=_options(idempotency_key))
        except stripe.StripeError as error:
            _raise(error)
        return _setup_intent_result(intent.to_dict())

    def find_setup_intent(
        self, *, customer: str, metadata_key: str, metadata_value: str
    ) -> SetupIntentResult | None:
        """The customer's setup intent with ``metadata[metadata_key] == metadata_value``, if any.

        Lists the customer's setup intents (newest first), examining at most 1,000; with
        ``localstripe=True`` every setup intent is listed and filtered by customer here.
        """
        params: stripe.params.SetupIntentListParams = {"limit": 100}
        if not self._localstripe:
            params["customer"] = customer
        matches: list[dict[str, Any]] = []
        try:
            listing = self._client.v1.setup_intents.list(params=params)
            for intent in _bounded(listing.auto_paging_iter(), _FIND_SCAN_LIMIT):
                data = intent.to_dict()
                if (
                    _id(data.get("customer")) == customer
                    and _metadata(data).get(metadata_key) == metadata_value
                ):
                    matches.append(data)
        except stripe.StripeError as error:
            _raise(error)
        if not matches:
            return None
        return _setup_intent_result(
            min(matches, key=lambda data: (_int(data, "created"), str(data.get("id"))))
        )

    def attach_payment_method(
        self, *, customer: str, payment_method: str, idempotency_key: str
    ) -> CardSummary:
        current = self._payment_method(payment_method)
        owner = _id(current.get("customer"))
        if owner == customer:
            return _card_summary(current)
        if owner is not None:  # Stripe refuses this too; the sandbox would silently move the card
            raise PaymentMethodInvalid(None, gateway_code="attached_to_another_customer")
        try:
            attached = self._client.v1.payment_methods.attach(
                payment_method, params={"customer": customer}, options=_options(idempotency_key)
            )
        except stripe.StripeError as error:
            _raise(error, payment_method_call=True)
        return _card_summary(attached.to_dict())

    def retrieve_payment_method(self, *, payment_method: str) -> CardSummary:
        return _card_summary(self._payment_method(payment_method))

    def detach_payment_method(self, *, payment_method: str, idempotency_key: str) -> None:
        try:
            self._client.v1.payment_methods.detach(payment_method, options=_options(idempotency_key))
        except stripe.StripeError as error:
            _raise(error, payment_method_call=True)

    def _payment_method(self, payment_method: str) -> dict[str, Any]:
        if not payment_method:
            raise PaymentMethodInvalid(None, gateway_code="missing_payment_method")
        try:
            return self._client.v1.payment_methods.retrieve(payment_method).to_dict()
        except stripe.StripeError as error:
            _raise(error, payment_method_call=True)

    # --- payments ----------------------------------------------------------------------------

    def create_payment(
        self,
        *,
        customer: str,
        payment_method: str,
        amount: int,
        currency: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> PaymentResult:
        params: stripe.params.PaymentIntentCreateParams = {
            "amount": check_amount(amount),
            "currency": check_currency(currency).lower(),
            "customer": customer,
            "payment_method": payment_method,
            "confirm": True,
            "metadata": check_metadata(metadata),
        }
        if not self._localstripe:
            # Cards only: with every payment method allowed, Stripe would demand a return_url for
            # redirect-based ones. The sandbox knows cards only, and not this parameter.
            params["allowed_payment_method_types"] = ["card"]
        try:
            intent = self._client.v1.payment_intents.create(params=params, options=_options(idempotency_key))
        except stripe.StripeError as error:
            _raise(error)
        return _payment_result(intent.to_dict())

    def retrieve_payment(self, *, intent_id: str) -> PaymentResult:
        if not intent_id:
            raise ValueError("intent_id is required")
        try:
            intent = self._client.v1.payment_intents.retrieve(intent_id)
        except stripe.StripeError as error:
            _raise(error)
        return _payment_result(intent.to_dict())

    def find_payment(self, *, customer: str, metadata_key: str, metadata_value: str) -> PaymentResult | None:
        """The customer's intent with ``metadata[metadata_key] == metadata_value``, if any.

        Lists the customer's intents (newest first), examining at most 1,000; with
        ``localstripe=True`` all intents are listed and filtered by customer here. Listing is
        strongly consistent, unlike Stripe's search API, which may lag a minute behind.
        """
        params: stripe.params.PaymentIntentListParams = {"limit": 100}
        if not self._localstripe:
            params["customer"] = customer
        matches: list[dict[str, Any]] = []
        try:
            listing = self._client.v1.payment_intents.list(params=params)
            for intent in _bounded(listing.auto_paging_iter(), _FIND_SCAN_LIMIT):
                data = intent.to_dict()
                if _id(data.get("customer")) != customer:
                    continue
                found = _metadata(data).get(metadata_key)
                if found == metadata_value:
                    matches.append(data)
        except stripe.StripeError as error:
            _raise(error)
        if not matches:
            return None
        earliest = min(matches, key=lambda data: (_int(data, "created"), str(data.get("id"))))
        return _payment_result(earliest)

    def find_refund(self, *, intent_id: str, metadata_key: str, metadata_value: str) -> RefundResult | None:
        """The intent's refund with ``metadata[metadata_key] == metadata_value`` (at most 1,000 scanned)."""
        params: stripe.params.RefundListParams = {"limit": 100}
        if not self._localstripe:
            params["payment_intent"] = intent_id
        try:
            listing = self._client.v1.refunds.list(params=params)
            for refund in _bounded(listing.auto_paging_iter(), _FIND_SCAN_LIMIT):
                data = refund.to_dict()
                if _id(data.get("payment_intent")) not in (None, intent_id):
                    continue
                if _metadata(data).get(metadata_key) == metadata_value:
                    return _refund_result(data)
        except stripe.StripeError as error:
            _raise(error)
        return None

    def list_refunds(self, *, intent_id: str) -> list[RefundResult]:
        """The intent's refunds, as the gateway lists them: newest first (at most 1,000 scanned).

        With ``localstripe=True`` every refund is listed and those of the intent kept here, like
        :meth:`find_refund`; a refund made on the intent's charge rather than on the intent (which
        Stripe links to the intent, the sandbox does not) is then not seen.
        """
        if not intent_id:
            raise ValueError("intent_id is required")
        params: stripe.params.RefundListParams = {"limit": 100}
        if not self._localstripe:
            params["payment_intent"] = intent_id
        found: list[RefundResult] = []
        try:
            listing = self._client.v1.refunds.list(params=params)
            for refund in _bounded(listing.auto_paging_iter(), _FIND_SCAN_LIMIT):
                data = refund.to_dict()
                if _id(data.get("payment_intent")) == intent_id:
                    found.append(_refund_result(data))
        except stripe.StripeError as error:
            _raise(error)
        return found

    def refund(
        self,
        *,
        intent_id: str,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> RefundResult:
        if reason is not None and reason not in REFUND_REASONS:
            raise ValueError(f"refund reason must be one of {sorted(REFUND_REASONS)} or None")
        params: stripe.params.RefundCreateParams = {
            "payment_intent": intent_id,
            "amount": check_amount(amount),
            "metadata": check_metadata(metadata),
        }
        if reason is not None and not self._localstripe:
            params["reason"] = reason
        try:
            refund = self._client.v1.refunds.create(params=params, options=_options(idempotency_key))
        except stripe.StripeError as error:
            _raise(error)
        return _refund_result(refund.to_dict())


# --- mapping SDK objects to values ------------------------------------------------------------


def _refund_result(data: dict[str, Any]) -> RefundResult:
    return RefundResult(
        refund_id=_str(data, "id"),
        status=_optional_str(data, "status") or "pending",
        amount=_int(data, "amount"),
        metadata=_metadata(data),
    )


def _options(idempotency_key: str) -> stripe.RequestOptions:
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise ValueError("an idempotency key is required for every mutating call")
    if len(idempotency_key) > _MAX_IDEMPOTENCY_KEY or not idempotency_key.isascii():
        raise ValueError("idempotency keys are ASCII, at most 255 characters")
    return {"idempotency_key": idempotency_key}


def _bounded(items: Iterator[Any], limit: int) -> Iterator[Any]:
    for count, item in enumerate(items):
        if count >= limit:
            return
        yield item


def _id(value: object) -> str | None:
    """The id of an expandable field: the string itself, or the expanded object's ``id``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return None


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise GatewayRejected(None, gateway_code=f"unexpected_{key}")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayRejected(None, gateway_code=f"unexpected_{key}")
    return value


def _metadata(data: Mapping[str, Any]) -> dict[str, str]:
    metadata = data.get("metadata")
    if not isinstance(metadata, Mapping):
        return {}
    return {key: value for key, value in metadata.items() if isinstance(key, str) and isinstance(value, str)}


def _card_summary(data: Mapping[str, Any]) -> CardSummary:
    card = data.get("card")
    if data.get("type") != "card" or not isinstance(card, Mapping):
        raise PaymentMethodInvalid(None, gateway_code="not_a_card")
    return CardSummary(
        payment_method_id=_str(data, "id"),
        brand=_str(card, "brand"),
        last4=_str(card, "last4"),
        exp_month=_int(card, "exp_month"),
        exp_year=_int(card, "exp_year"),
        fingerprint=_optional_str(card, "fingerprint"),
        funding=_optional_str(card, "funding"),
        country=_optional_str(card, "country"),
    )


def _setup_intent_result(data: Mapping[str, Any]) -> SetupIntentResult:
    secret = data.get("client_secret")
    if not isinstance(secret, str) or not secret:
        raise GatewayRejected(None, gateway_code="missing_client_secret")
    return SetupIntentResult(id=_str(data, "id"), client_secret=secret)


def _payment_result(data: Mapping[str, Any]) -> PaymentResult:
    # An unknown (future) gateway status is not terminal as far as we know: processing.
    status = _STATUSES.get(str(data.get("status")), "processing")
    decline_code = None
    if status == "failed":
        error = data.get("last_payment_error")
        if isinstance(error, Mapping):
            decline_code = _optional_str(error, "decline_code") or _optional_str(error, "code")
        decline_code = decline_code or "generic_decline"
    return PaymentResult(
        intent_id=_str(data, "id"),
        status=status,
        amount=_int(data, "amount"),
        currency=_str(data, "currency").upper(),
        client_secret=_optional_str(data, "client_secret") if status == "requires_action" else None,
        decline_code=decline_code,
        payment_method_id=_id(data.get("payment_method")),
        metadata=_metadata(data),
    )


# --- mapping SDK errors to domain errors ------------------------------------------------------


def _raise(error: stripe.StripeError, *, payment_method_call: bool = False) -> NoReturn:
    """Raise the domain error for ``error`` (see the module docstring), without chaining it."""
    raise _translate(error, payment_method_call=payment_method_call) from None


def _translate(error: stripe.StripeError, *, payment_method_call: bool) -> GatewayError:
    request_id = error.request_id if isinstance(error.request_id, str) else None
    status = error.http_status if isinstance(error.http_status, int) else None
    code = error.code if isinstance(error.code, str) else None
    if isinstance(error, stripe.CardError):
        body = error.error
        decline_code = (body.decline_code if body is not None else None) or code or "card_declined"
        intent_id = _id(body.to_dict().get("payment_intent")) if body is not None else None
        return CardDeclined(decline_code, request_id, intent_id, http_status=status, gateway_code=code)
    if isinstance(error, stripe.APIConnectionError):
        if _caused_by_read_timeout(error):
            return GatewayTimeout(request_id)
        return GatewayUnavailable(request_id)
    kind: type[GatewayUnavailable | PaymentMethodInvalid | GatewayRejected] = GatewayRejected
    if isinstance(error, stripe.RateLimitError) or (status is not None and status >= 500):
        kind = GatewayUnavailable
    elif isinstance(error, stripe.InvalidRequestError):
        if payment_method_call or error.param == "payment_method":
            kind = PaymentMethodInvalid
    elif isinstance(error, stripe.APIError) and status in {None, 409}:
        kind = GatewayUnavailable
    return kind(request_id, http_status=status, gateway_code=code)


def _caused_by_read_timeout(error: BaseException) -> bool:
    """Whether the chain under ``error`` holds a timeout other than a connect timeout."""
    seen: set[int] = set()
    cause: BaseException | None = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectTimeout):
            return False
        if isinstance(cause, Timeout):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
