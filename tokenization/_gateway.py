"""The payment gateway behind a Protocol, and the values that cross it.

Nothing here, nor anything a :class:`PaymentGateway` returns, holds card data: a card is known
by its gateway token (``pm_…``) and summarized by :class:`CardSummary` (brand, last 4, expiry,
fingerprint, funding, country), which is all Veilbill may store. Client secrets, which let a
browser finish a setup or a 3-D Secure step, are masked in ``repr``.

Idempotency: every mutating method takes an ``idempotency_key``, derived with
:func:`derive_idempotency_key` from *our* identity of the operation. The real gateway replays its
first answer to a repeated key (for 24 hours), so a retry after a timeout or a crash cannot act
twice. The sandbox ignores keys; :meth:`PaymentGateway.find_payment` lets a retry adopt an intent
that an earlier, lost request created.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, get_args

from tokenization._pan import contains_card_number

__all__ = [
    "REFUND_REASONS",
    "CardSummary",
    "GatewayEvent",
    "PaymentGateway",
    "PaymentResult",
    "PaymentStatus",
    "RefundResult",
    "SetupIntentResult",
    "derive_idempotency_key",
]

PaymentStatus = Literal["succeeded", "requires_action", "processing", "failed", "canceled"]
"""Where a payment stands, in Veilbill's terms (see :class:`PaymentResult` for the mapping)."""

PAYMENT_STATUSES: Final[frozenset[str]] = frozenset(get_args(PaymentStatus))

REFUND_REASONS: Final[frozenset[str]] = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
"""The refund reasons the gateway accepts; anything else is refused before it is sent."""

_MASK: Final = "'***'"
_KEY_SEPARATOR: Final = "\x1f"
_IDEMPOTENCY_PREFIX: Final = "vb-"

# Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
_METADATA_MAX_KEYS: Final = 50
_METADATA_MAX_KEY: Final = 40
_METADATA_MAX_VALUE: Final = 500
_REFERENCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")


def derive_idempotency_key(*parts: str) -> str:
    """The gateway idempotency key of the operation identified by ``parts``.

    ``"vb-"`` + the first 48 hex digits (192 bits) of SHA-256 over the parts joined by U+001F.
    It is *deterministic* on purpose: a retry of the same request, a process restarted after a
    crash, and a concurrent duplicate all derive the same key, so the gateway sees one operation.
    A random key per attempt would let each of them charge.

    Put in ``parts`` everything that makes the operation unique, most general first: the kind
    of operation, the tenant, the object, the client's own ``Idempotency-Key``
    (``derive_idempotency_key("pay", tenant_id, invoice_id, client_key)``). Parts must be ids,
    never personal data: the hash is unkeyed and goes to the gateway.

    Raises:
        ValueError: no parts, or a part containing U+001F (which would make two different
            tuples derive the same key).
    """
    if not parts:
        raise ValueError("an idempotency key needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"idempotency key parts must be str, not {type(part).__name__}")
        if _KEY_SEPARATOR in part:
            raise ValueError("idempotency key parts must not contain U+001F")
    digest = hashlib.sha256(_KEY_SEPARATOR.join(parts).encode("utf-8")).hexdigest()
    return _IDEMPOTENCY_PREFIX + digest[:48]


def check_reference(reference: str) -> str:
    """``reference`` if it is an opaque id (1-64 of ``A-Za-z0-9_-``), so no PII can pass."""
    if not isinstance(reference, str) or not _REFERENCE_RE.fullmatch(reference):
        raise ValueError("a gateway customer reference must be an opaque id: 1-64 of [A-Za-z0-9_-]")
    return reference


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """A plain copy of ``metadata`` within the gateway's limits, refusing card numbers in it."""
    if len(metadata) > _METADATA_MAX_KEYS:
        raise ValueError(f"at most {_METADATA_MAX_KEYS} metadata keys")
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata keys and values must be str")
        if not key or len(key) > _METADATA_MAX_KEY or "[" in key or "]" in key:
            raise ValueError(f"metadata keys must be 1-{_METADATA_MAX_KEY} characters, without brackets")
        if len(value) > _METADATA_MAX_VALUE:
            raise ValueError(f"metadata values must be at most {_METADATA_MAX_VALUE} characters")
        if contains_card_number(key) or contains_card_number(value):
            raise ValueError("metadata must not contain card numbers")
        checked[key] = value
    return checked


def check_currency(currency: str) -> str:
    """``currency`` if it is an upper-case ISO 4217 alphabetic code."""
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise ValueError("currency must be an upper-case ISO 4217 code such as 'EUR'")
    return currency


def check_amount(amount: int) -> int:
    """``amount`` if it is a positive integer of minor units."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError("amount must be a positive integer of minor units")
    return amount


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class CardSummary:
    """What Veilbill may know of a card (PCI DSS): never the number, never the CVC.

    ``fingerprint`` identifies the card number within the gateway account (the same card saved
    twice has one fingerprint); ``funding`` is ``credit``, ``debit``, ``prepaid`` or ``unknown``.
    """

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str | None = None
    funding: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class SetupIntentResult:
    """A setup intent: the browser confirms it with the card element and ``client_secret``.

    The client secret authorizes finishing this one setup; it is masked in ``repr``.
    """

    id: str
    client_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"SetupIntentResult(id={self.id!r}, client_secret={_MASK})"


@dataclass(frozen=True)
class PaymentResult:
    """Where a payment intent stands.

    ``status`` maps the gateway's intent status:

    ============================================  ===================
    gateway                                       ``status``
    ============================================  ===================
    ``succeeded``                                 ``succeeded``
    ``requires_action`` (3-D Secure)              ``requires_action``
    ``processing``                                ``processing``
    ``requires_confirmation``, ``requires_capture`` ``processing``
    ``requires_payment_method``                   ``failed``
    ``canceled``                                  ``canceled``
    ============================================  ===================

    Veilbill always creates intents confirmed, so ``requires_payment_method`` only happens after
    a failed attempt (a decline, a failed 3-D Secure): it will not complete on its own, hence
    ``failed``. ``requires_confirmation``/``requires_capture`` are in-between states Veilbill does
    not drive: ``processing`` until an event or a refresh says more.

    ``client_secret`` is set only when ``requires_action`` (the browser needs it for 3-D Secure)
    and is masked in ``repr``; ``decline_code`` only when ``failed``. ``currency`` is upper case.
    """

    intent_id: str
    status: PaymentStatus
    amount: int
    currency: str
    client_secret: str | None = field(default=None, repr=False)
    decline_code: str | None = None
    payment_method_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in PAYMENT_STATUSES:
            raise ValueError(f"unknown payment status {self.status!r}")
        object.__setattr__(self, "metadata", _frozen(self.metadata))

    def __repr__(self) -> str:
        secret = _MASK if self.client_secret is not None else "None"
        return (
            f"PaymentResult(intent_id={self.intent_id!r}, status={self.status!r}, amount={self.amount!r}, "
            f"currency={self.currency!r}, client_secret={secret}, decline_code={self.decline_code!r}, "
            f"payment_method_id={self.payment_method_id!r}, metadata={dict(self.metadata)!r})"
        )


@dataclass(frozen=True)
class RefundResult:
    """A refund: ``status`` is the gateway's (``succeeded``, ``pending``, ``failed``, ``canceled``…).

    ``metadata`` is what the refund was created with (ours: ``veilbill_refund_id``; empty for a
    refund made elsewhere, e.g. in the gateway's dashboard).
    """

    refund_id: str
    status: str
    amount: int
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _frozen(self.metadata))


@dataclass(frozen=True)
class GatewayEvent:
    """A gateway event, reduced to what Veilbill acts on.

    ``object`` is the event's ``data.object`` keeping only allow-listed fields (ids, status,
    amounts, currency, metadata, decline codes; never names, e-mails, addresses or card
    details). Its nested values are plain ``dict``/``list``: treat them as read-only.
    ``object_id`` is ``data.object.id`` (``None`` for the rare objects without one).
    """

    id: str
    type: str
    created: int
    object_id: str | None
    object: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "object", _frozen(self.object))


class PaymentGateway(Protocol):
    """What Veilbill needs from a payment gateway. :class:`tokenization.StripeGateway` is the one.

    Every method is keyword-only. Every mutating method takes ``idempotency_key``
    (:func:`derive_idempotency_key`); calling it again with the same key and arguments is safe.

    All methods raise, besides what each lists:
        GatewayUnavailable: the gateway was not reached, refused the connection, failed (5xx) or
            rate-limited us.
        GatewayTimeout: no answer in time; a mutating call may or may not have happened.
        GatewayRejected: any other refusal (credentials, invalid parameters, wrong state).
        ValueError: arguments that are refused before anything is sent.
    """

    def create_customer(self, *, reference: str, idempotency_key: str) -> str:
        """Create a gateway customer; return its id (``cus_…``).

        Sends no personal data: only the metadata ``{"veilbill_ref": reference}``, where
        ``reference`` must be an opaque id (1-64 of ``A-Za-z0-9_-``).
        """
        ...

    def delete_customer(self, *, customer: str, idempotency_key: str) -> None:
        """Delete a gateway customer (and with it its saved cards). Already deleted is success."""
        ...

    def create_setup_intent(
        self, *, customer: str, idempotency_key: str, metadata: Mapping[str, str] | None = None
    ) -> SetupIntentResult:
        """A setup intent for ``customer``, for a card to be saved from the browser (off-session use).

        ``metadata`` may carry our request's derived key, so :meth:`find_setup_intent` can find it.
        """
        ...

    def find_setup_intent(
        self, *, customer: str, metadata_key: str, metadata_value: str
    ) -> SetupIntentResult | None:
        """The customer's setup intent whose ``metadata[metadata_key] == metadata_value``, if any.

        For a setup intent requested again after the answer of the request that created it was
        lost; like :meth:`find_payment`, the earliest created if several match.
        """
        ...

    def attach_payment_method(
        self, *, customer: str, payment_method: str, idempotency_key: str
    ) -> CardSummary:
        """Attach a card token to ``customer`` (or just summarize it if already attached to them).

        Raises:
            CardDeclined: the card was declined when checked at attachment.
            PaymentMethodInvalid: unknown token, not a card, or attached to another customer.
        """
        ...

    def retrieve_payment_method(self, *, payment_method: str) -> CardSummary:
        """The summary of a card token.

        Raises:
            PaymentMethodInvalid: unknown token, or not a card.
        """
        ...

    def detach_payment_method(self, *, payment_method: str, idempotency_key: str) -> None:
        """Detach a card from its customer; it can no longer be charged.

        Raises:
            PaymentMethodInvalid: unknown token.
        """
        ...

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
        """Charge ``amount`` minor units of ``currency`` (ISO 4217, upper case) to a saved card.

        The intent is created and confirmed at once. Returns ``succeeded``, ``processing``, or
        ``requires_action`` with the client secret for the browser's 3-D Secure step.
        ``metadata`` should carry our payment id, so :meth:`find_payment` can find the intent.

        Raises:
            CardDeclined: declined; ``intent_id`` is set when the gateway says which intent.
            PaymentMethodInvalid: the gateway refused the payment method itself.
        """
        ...

    def retrieve_payment(self, *, intent_id: str) -> PaymentResult:
        """The current state of a payment intent."""
        ...

    def find_payment(self, *, customer: str, metadata_key: str, metadata_value: str) -> PaymentResult | None:
        """The customer's payment intent whose ``metadata[metadata_key] == metadata_value``, if any.

        For adopting an intent created by a request whose answer was lost. If several match (which
        Veilbill's own idempotency prevents), the earliest created is returned (creation times
        are in seconds; ties go to the smallest id).
        """
        ...

    def find_refund(self, *, intent_id: str, metadata_key: str, metadata_value: str) -> RefundResult | None:
        """The intent's refund whose ``metadata[metadata_key] == metadata_value``, if any.

        For a refund retried after its answer was lost: like :meth:`find_payment`, it makes a retry
        safe even on a gateway that ignores idempotency keys.
        """
        ...

    def list_refunds(self, *, intent_id: str) -> list[RefundResult]:
        """Every refund of the intent, whoever made it (for reconciliation); newest first, though
        refunds made within the same second may come in any order."""
        ...

    def refund(
        self,
        *,
        intent_id: str,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> RefundResult:
        """Refund ``amount`` minor units of a succeeded payment intent.

        ``reason`` is one of :data:`REFUND_REASONS` or ``None``. The gateway's own limit on the
        refundable amount is not relied upon (the sandbox has none): the caller enforces it.
        """
        ...
