"""The values that cross the gateway boundary, and the derivation of idempotency keys."""

from __future__ import annotations

import dataclasses

import pytest

from tokenization import (
    REFUND_REASONS,
    CardSummary,
    GatewayEvent,
    PaymentResult,
    RefundResult,
    SetupIntentResult,
    derive_idempotency_key,
)

# "vb-" + sha256("pay\x1ften_1\x1finv_1\x1fclient-key-1").hexdigest()[:48], computed independently.
KNOWN_KEY = "vb-e507b0749bb34b48cfa60a591777d3b8ccbd6576225e2332"


def test_derive_idempotency_key_known_answer() -> None:
    assert derive_idempotency_key("pay", "ten_1", "inv_1", "client-key-1") == KNOWN_KEY


def test_derive_idempotency_key_is_deterministic_and_bounded() -> None:
    key = derive_idempotency_key("refund", "ten_1", "inv_1", "k")
    assert key == derive_idempotency_key("refund", "ten_1", "inv_1", "k")
    assert len(key) == 51
    assert key.isascii()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("pay", "ten_1", "inv_1"), ("pay", "ten_2", "inv_1")),
        (("a", "b"), ("ab",)),
        (("a", "b"), ("a", "b", "")),
        (("ab", "c"), ("a", "bc")),
        (("pay",), ("refund",)),
    ],
)
def test_different_operations_derive_different_keys(one: tuple[str, ...], other: tuple[str, ...]) -> None:
    assert derive_idempotency_key(*one) != derive_idempotency_key(*other)


def test_derive_idempotency_key_refuses_ambiguous_parts() -> None:
    with pytest.raises(ValueError, match="at least one"):
        derive_idempotency_key()
    with pytest.raises(ValueError, match="U\\+001F"):
        derive_idempotency_key("a\x1fb")
    with pytest.raises(TypeError):
        derive_idempotency_key("a", 1)  # type: ignore[arg-type]


def test_values_are_frozen() -> None:
    card = CardSummary("pm_1", "visa", "4242", 12, 2030)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.last4 = "0000"  # type: ignore[misc]
    assert RefundResult("re_1", "succeeded", 5).amount == 5


def test_client_secrets_are_masked() -> None:
    setup = SetupIntentResult(id="seti_1", client_secret="seti_1_secret_abc")
    payment = PaymentResult(
        intent_id="pi_1", status="requires_action", amount=5, currency="EUR", client_secret="pi_1_secret_xyz"
    )
    assert "secret_abc" not in repr(setup)
    assert "secret_abc" not in str(setup)
    assert "secret_xyz" not in repr(payment)
    assert "'***'" in repr(payment)
    assert "client_secret=None" in repr(
        PaymentResult(intent_id="pi_2", status="failed", amount=5, currency="EUR")
    )


def test_payment_result_refuses_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        PaymentResult(intent_id="pi_1", status="requires_payment_method", amount=5, currency="EUR")  # type: ignore[arg-type]


def test_mappings_are_copied_and_read_only() -> None:
    metadata = {"veilbill_payment_id": "pay_1"}
    result = PaymentResult(intent_id="pi_1", status="succeeded", amount=5, currency="EUR", metadata=metadata)
    metadata["veilbill_payment_id"] = "changed"
    assert result.metadata["veilbill_payment_id"] == "pay_1"
    with pytest.raises(TypeError):
        result.metadata["x"] = "y"  # type: ignore[index]
    event = GatewayEvent(id="evt_1", type="a.b", created=1, object_id=None, object={"id": "x"})
    with pytest.raises(TypeError):
        event.object["id"] = "y"  # type: ignore[index]


def test_refund_reasons_are_the_gateways() -> None:
    assert frozenset({"duplicate", "fraudulent", "requested_by_customer"}) == REFUND_REASONS
