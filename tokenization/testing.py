"""Fault-injection doubles of :class:`tokenization.PaymentGateway`, for tests only.

They are named for the fault they inject and wrap a real gateway (a :class:`StripeGateway` on the
sandbox) wherever they let calls through, so everything that is not the fault stays real:

- :class:`TimeoutGateway`, :class:`UnavailableGateway`: every call fails, as if the gateway never
  answered (:class:`GatewayTimeout`) or could not be reached (:class:`GatewayUnavailable`).
- :class:`FlakyGateway`: the first ``failures`` calls *of each mutating method* fail, then calls go
  through. Counting per method lets a test fail "the charge" twice without also failing the customer
  creation that precedes it. With ``lose_response=True`` the call is made first and only its answer
  is lost: the side effect happened, which is what a retry must cope with.
- :class:`RecordingGateway`: lets everything through and records ``(method, idempotency_key)``
  (``None`` for reads), to assert which keys a service sent.

Counters and records are guarded by a lock, so the doubles may be shared between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from tokenization._gateway import (
    CardSummary,
    PaymentGateway,
    PaymentResult,
    RefundResult,
    SetupIntentResult,
)
from tokenization.errors import GatewayError, GatewayTimeout, GatewayUnavailable

__all__ = [
    "MUTATING_METHODS",
    "FlakyGateway",
    "RecordingGateway",
    "TimeoutGateway",
    "UnavailableGateway",
]

MUTATING_METHODS: Final[frozenset[str]] = frozenset(
    {
        "create_customer",
        "delete_customer",
        "create_setup_intent",
        "attach_payment_method",
        "detach_payment_method",
        "create_payment",
        "refund",
    }
)

_T = TypeVar("_T")


class _FaultInjectingGateway:
    """Routes every method through :meth:`_call`, which decides whether to fail."""

    def __init__(self, inner: PaymentGateway | None) -> None:
        self._inner = inner

    @property
    def inner(self) -> PaymentGateway:
        if self._inner is None:
            raise GatewayUnavailable(None)
        return self._inner

    def _call(self, method: str, idempotency_key: str | None, call: Callable[[], _T]) -> _T:
        return call()

    def create_customer(self, *, reference: str, idempotency_key: str) -> str:
        return self._call(
            "create_customer",
            idempotency_key,
            lambda: self.inner.create_customer(reference=reference, idempotency_key=idempotency_key),
        )

    def delete_customer(self, *, customer: str, idempotency_key: str) -> None:
        return self._call(
            "delete_customer",
            idempotency_key,
            lambda: self.inner.delete_customer(customer=customer, idempotency_key=idempotency_key),
        )

    def create_setup_intent(
        self, *, customer: str, idempotency_key: str, metadata: Mapping[str, str] | None = None
    ) -> SetupIntentResult:
        return self._call(
            "create_setup_intent",
            idempotency_key,
            lambda: self.inner.create_setup_intent(
                customer=customer, idempotency_key=idempotency_key, metadata=metadata
            ),
        )

    def find_setup_intent(
        self, *, customer: str, metadata_key: str, metadata_value: str
    ) -> SetupIntentResult | None:
        return self._call(
            "find_setup_intent",
            None,
            lambda: self.inner.find_setup_intent(
                customer=customer, metadata_key=metadata_key, metadata_value=metadata_value
            ),
        )

    def attach_payment_method(
        self, *, customer: str, payment_method: str, idempotency_key: str
    ) -> CardSummary:
        return self._call(
            "attach_payment_method",
            idempotency_key,
            lambda: self.inner.attach_payment_method(
                customer=customer, payment_method=payment_method, idempotency_key=idempotency_key
            ),
        )

    def retrieve_payment_method(self, *, payment_method: str) -> CardSummary:
        return self._call(
            "retrieve_payment_method",
            None,
            lambda: self.inner.retrieve_payment_method(payment_method=payment_method),
        )

    def detach_payment_method(self, *, payment_method: str, idempotency_key: str) -> None:
        return self._call(
            "detach_payment_method",
            idempotency_key,
            lambda: self.inner.detach_payment_method(
                payment_method=payment_method, idempotency_key=idempotency_key
            ),
        )

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
        return self._call(
            "create_payment",
            idempotency_key,
            lambda: self.inner.create_payment(
                customer=customer,
                payment_method=payment_method,
                amount=amount,
                currency=currency,
                metadata=metadata,
                idempotency_key=idempotency_key,
            ),
        )

    def retrieve_payment(self, *, intent_id: str) -> PaymentResult:
        return self._call("retrieve_payment", None, lambda: self.inner.retrieve_payment(intent_id=intent_id))

    def find_payment(self, *, customer: str, metadata_key: str, metadata_value: str) -> PaymentResult | None:
        return self._call(
            "find_payment",
            None,
            lambda: self.inner.find_payment(
                customer=customer, metadata_key=metadata_key, metadata_value=metadata_value
            ),
        )

    def find_refund(self, *, intent_id: str, metadata_key: str, metadata_value: str) -> RefundResult | None:
        return self._call(
            "find_refund",
            None,
            lambda: self.inner.find_refund(
                intent_id=intent_id, metadata_key=metadata_key, metadata_value=metadata_value
            ),
        )

    def list_refunds(self, *, intent_id: str) -> list[RefundResult]:
        return self._call("list_refunds", None, lambda: self.inner.list_refunds(intent_id=intent_id))

    def refund(
        self,
        *,
        intent_id: str,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> RefundResult:
        return self._call(
            "refund",
            idempotency_key,
            lambda: self.inner.refund(
                intent_id=intent_id,
                amount=amount,
                reason=reason,
                metadata=metadata,
                idempotency_key=idempotency_key,
            ),
        )


class TimeoutGateway(_FaultInjectingGateway):
    """Every call raises :class:`GatewayTimeout`: a gateway that never answers. Nothing is sent."""

    def __init__(self) -> None:
        super().__init__(None)

    def _call(self, method: str, idempotency_key: str | None, call: Callable[[], _T]) -> _T:
        raise GatewayTimeout(None)


class UnavailableGateway(_FaultInjectingGateway):
    """Every call raises :class:`GatewayUnavailable`: a gateway that cannot be reached."""

    def __init__(self) -> None:
        super().__init__(None)

    def _call(self, method: str, idempotency_key: str | None, call: Callable[[], _T]) -> _T:
        raise GatewayUnavailable(None)


class FlakyGateway(_FaultInjectingGateway):
    """The first ``failures`` calls of each mutating method raise ``error_factory()``; then ``inner``.

    Reads (retrieve, find) always go through. With ``lose_response=True`` a failing call is made
    on ``inner`` before the error is raised, as when the gateway acted but its answer was lost
    (if ``inner`` itself raises, that error propagates and still counts as a failure).
    """

    def __init__(
        self,
        inner: PaymentGateway,
        failures: int,
        error_factory: Callable[[], GatewayError],
        *,
        lose_response: bool = False,
    ) -> None:
        if failures < 0:
            raise ValueError("failures must be >= 0")
        super().__init__(inner)
        self._failures = failures
        self._error_factory = error_factory
        self._lose_response = lose_response
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def failed(self, method: str) -> int:
        """How many calls of ``method`` were failed so far."""
        with self._lock:
            return min(self._counts.get(method, 0), self._failures)

    def _call(self, method: str, idempotency_key: str | None, call: Callable[[], _T]) -> _T:
        if method not in MUTATING_METHODS:
            return call()
        with self._lock:
            seen = self._counts.get(method, 0)
            self._counts[method] = seen + 1
        if seen >= self._failures:
            return call()
        if self._lose_response:
            call()
        raise self._error_factory()


class RecordingGateway(_FaultInjectingGateway):
    """Lets every call through to ``inner`` and records ``(method, idempotency_key)`` first."""

    def __init__(self, inner: PaymentGateway) -> None:
        super().__init__(inner)
        self._calls: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> list[tuple[str, str | None]]:
        """A copy of the calls so far, in order; reads have ``None`` as key."""
        with self._lock:
            return list(self._calls)

    def keys(self, method: str) -> list[str | None]:
        """The idempotency keys sent with ``method``, in order."""
        return [key for name, key in self.calls if name == method]

    def _call(self, method: str, idempotency_key: str | None, call: Callable[[], _T]) -> _T:
        with self._lock:
            self._calls.append((method, idempotency_key))
        return call()
