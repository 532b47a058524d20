"""The fault-injection doubles, wrapped around the real adapter on the sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from billing._models import new_id
from tokenization import (
    GatewayTimeout,
    GatewayUnavailable,
    PaymentGateway,
    StripeGateway,
)
from tokenization.testing import (
    FlakyGateway,
    RecordingGateway,
    TimeoutGateway,
    UnavailableGateway,
)

from ..conftest import TEST_CARDS
from .conftest import new_key


def _every_call(gateway: PaymentGateway) -> list[Callable[[], object]]:
    return [
        lambda: gateway.create_customer(reference="c1", idempotency_key="k"),
        lambda: gateway.delete_customer(customer="cus_1", idempotency_key="k"),
        lambda: gateway.create_setup_intent(customer="cus_1", idempotency_key="k"),
        lambda: gateway.attach_payment_method(customer="cus_1", payment_method="pm_1", idempotency_key="k"),
        lambda: gateway.retrieve_payment_method(payment_method="pm_1"),
        lambda: gateway.detach_payment_method(payment_method="pm_1", idempotency_key="k"),
        lambda: gateway.create_payment(
            customer="cus_1",
            payment_method="pm_1",
            amount=1,
            currency="EUR",
            metadata={},
            idempotency_key="k",
        ),
        lambda: gateway.retrieve_payment(intent_id="pi_1"),
        lambda: gateway.find_payment(customer="cus_1", metadata_key="k", metadata_value="v"),
        lambda: gateway.find_setup_intent(customer="cus_1", metadata_key="k", metadata_value="v"),
        lambda: gateway.find_refund(intent_id="pi_1", metadata_key="k", metadata_value="v"),
        lambda: gateway.list_refunds(intent_id="pi_1"),
        lambda: gateway.refund(intent_id="pi_1", amount=1, reason=None, metadata={}, idempotency_key="k"),
    ]


@pytest.mark.parametrize(
    ("double", "error"), [(TimeoutGateway, GatewayTimeout), (UnavailableGateway, GatewayUnavailable)]
)
def test_every_call_fails(double: Callable[[], PaymentGateway], error: type[Exception]) -> None:
    gateway = double()
    calls = _every_call(gateway)
    assert len(calls) == 13
    for call in calls:
        with pytest.raises(error):
            call()


def test_flaky_fails_the_first_calls_of_each_mutating_method(gateway: StripeGateway) -> None:
    flaky = FlakyGateway(gateway, 2, lambda: GatewayUnavailable("req_injected"))
    reference = f"c-{uuid.uuid4().hex[:8]}"
    key = new_key("customer")

    for _ in range(2):
        with pytest.raises(GatewayUnavailable) as caught:
            flaky.create_customer(reference=reference, idempotency_key=key)
        assert caught.value.request_id == "req_injected"
    customer = flaky.create_customer(reference=reference, idempotency_key=key)

    assert customer.startswith("cus_")
    assert flaky.failed("create_customer") == 2
    # Another mutating method has its own count; reads are never failed.
    with pytest.raises(GatewayUnavailable):
        flaky.create_setup_intent(customer=customer, idempotency_key=new_key("s"))
    assert flaky.find_payment(customer=customer, metadata_key="k", metadata_value="v") is None


def test_flaky_with_lost_responses_acts_then_fails(
    gateway: StripeGateway, customer: str, card_token: Callable[[str], str]
) -> None:
    token = card_token(TEST_CARDS["visa"])
    gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=new_key("a"))
    flaky = FlakyGateway(gateway, 1, lambda: GatewayTimeout(None), lose_response=True)
    payment_id = new_id("pay")

    with pytest.raises(GatewayTimeout):
        flaky.create_payment(
            customer=customer,
            payment_method=token,
            amount=900,
            currency="EUR",
            metadata={"veilbill_payment_id": payment_id},
            idempotency_key=new_key("pay"),
        )

    # The charge happened: a retry adopts it instead of charging again.
    adopted = flaky.find_payment(
        customer=customer, metadata_key="veilbill_payment_id", metadata_value=payment_id
    )
    assert adopted is not None
    assert (adopted.status, adopted.amount) == ("succeeded", 900)


def test_flaky_refuses_a_negative_count(gateway: StripeGateway) -> None:
    with pytest.raises(ValueError, match="failures"):
        FlakyGateway(gateway, -1, lambda: GatewayUnavailable(None))


def test_recording_keeps_methods_and_keys(gateway: StripeGateway) -> None:
    recording = RecordingGateway(gateway)
    key = new_key("customer")

    customer = recording.create_customer(reference=f"c-{uuid.uuid4().hex[:8]}", idempotency_key=key)
    recording.find_payment(customer=customer, metadata_key="k", metadata_value="v")

    assert recording.calls == [("create_customer", key), ("find_payment", None)]
    assert recording.keys("create_customer") == [key]
