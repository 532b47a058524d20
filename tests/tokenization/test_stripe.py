"""The Stripe adapter against the sandbox: the real SDK over real HTTP, no mocks.

Failure modes use real sockets too: a closed port (refused), a port that accepts and never answers
(timeout), and a loopback server answering canned statuses (5xx, 429, not JSON).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl

import pytest
import stripe

from billing._models import new_id
from tokenization import (
    STRIPE_API_VERSION,
    CardDeclined,
    CardSummary,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    LocalStripeSandbox,
    PaymentGateway,
    PaymentMethodInvalid,
    StripeGateway,
    derive_idempotency_key,
    make_stripe_client,
)

from ..conftest import API_KEY, TEST_CARDS
from .conftest import CannedServer, Wire, new_key

VISA = TEST_CARDS["visa"]


def _reference() -> str:
    return f"cus-{uuid.uuid4().hex[:12]}"


def _pay(
    gateway: StripeGateway, customer: str, token: str, *, amount: int = 1000, payment_id: str | None = None
) -> object:
    return gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=amount,
        currency="EUR",
        metadata={"veilbill_payment_id": payment_id or new_id("pay")},
        idempotency_key=new_key("pay"),
    )


def test_the_adapter_satisfies_the_protocol(gateway: StripeGateway) -> None:
    typed: PaymentGateway = gateway
    assert typed is gateway
    assert "sk_test" not in repr(gateway)


def test_the_api_version_is_pinned_to_the_sdk_version() -> None:
    # Bump STRIPE_API_VERSION deliberately together with the SDK.
    assert stripe.api_version == STRIPE_API_VERSION


def test_make_stripe_client_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="API key"):
        make_stripe_client("")
    with pytest.raises(ValueError, match="timeout"):
        make_stripe_client(API_KEY, timeout=0)
    with pytest.raises(ValueError, match="retries"):
        make_stripe_client(API_KEY, max_network_retries=-1)


# --- customers ---------------------------------------------------------------------------------


def test_create_customer_sends_nothing_but_the_reference(
    wired_gateway: StripeGateway, wire: Wire, stripe_client: stripe.StripeClient
) -> None:
    reference = _reference()
    customer = wired_gateway.create_customer(reference=reference, idempotency_key=new_key("customer"))

    assert customer.startswith("cus_")
    [sent] = wire.mutations()
    assert sent.path == "/v1/customers"
    assert parse_qsl(sent.body.decode()) == [("metadata[veilbill_ref]", reference)]
    stored = stripe_client.v1.customers.retrieve(customer).to_dict()
    assert stored["metadata"] == {"veilbill_ref": reference}
    for personal in ("email", "name", "phone", "description", "address", "shipping"):
        assert stored.get(personal) is None


@pytest.mark.parametrize("reference", ["", "jane@example.com", "Jane Doe", "x" * 65, "ref\n", "réf"])
def test_create_customer_refuses_anything_but_an_opaque_reference(
    wired_gateway: StripeGateway, wire: Wire, reference: str
) -> None:
    with pytest.raises(ValueError, match="opaque id"):
        wired_gateway.create_customer(reference=reference, idempotency_key=new_key("customer"))
    assert wire.requests == []


def test_delete_customer_is_idempotent(gateway: StripeGateway, stripe_client: stripe.StripeClient) -> None:
    customer = gateway.create_customer(reference=_reference(), idempotency_key=new_key("customer"))
    key = new_key("delete")

    gateway.delete_customer(customer=customer, idempotency_key=key)
    gateway.delete_customer(customer=customer, idempotency_key=key)  # a retry after a lost answer

    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.customers.retrieve(customer)


# --- cards -------------------------------------------------------------------------------------


def test_setup_intent_has_a_masked_client_secret(gateway: StripeGateway, customer: str) -> None:
    intent = gateway.create_setup_intent(customer=customer, idempotency_key=new_key("setup"))

    assert intent.id.startswith("seti_")
    assert intent.client_secret.startswith(f"{intent.id}_secret_")
    assert intent.client_secret not in repr(intent)
    assert intent.client_secret not in str(intent)


def test_find_setup_intent_by_metadata(gateway: StripeGateway, customer: str) -> None:
    wanted = new_id("req")
    gateway.create_setup_intent(customer=customer, idempotency_key=new_key("setup"))
    created = gateway.create_setup_intent(
        customer=customer, idempotency_key=new_key("setup"), metadata={"veilbill_request": wanted}
    )
    other_customer = gateway.create_customer(reference=_reference(), idempotency_key=new_key("customer"))

    found = gateway.find_setup_intent(
        customer=customer, metadata_key="veilbill_request", metadata_value=wanted
    )

    assert found == created
    assert (
        gateway.find_setup_intent(customer=customer, metadata_key="veilbill_request", metadata_value="x")
        is None
    )
    assert (
        gateway.find_setup_intent(
            customer=other_customer, metadata_key="veilbill_request", metadata_value=wanted
        )
        is None
    )


def test_attach_summarizes_the_card_without_its_number(
    gateway: StripeGateway, customer: str, card_token: Callable[[str], str]
) -> None:
    token = card_token(VISA)

    card = gateway.attach_payment_method(
        customer=customer, payment_method=token, idempotency_key=new_key("a")
    )

    assert isinstance(card, CardSummary)
    assert (card.payment_method_id, card.brand, card.last4) == (token, "visa", "4242")
    assert (card.exp_month, card.exp_year) == (12, 2030)
    assert card.fingerprint
    assert card.funding == "credit"
    assert card.country is not None
    assert VISA not in repr(card)
    assert gateway.retrieve_payment_method(payment_method=token) == card


def test_attach_again_to_the_same_customer_just_summarizes(
    gateway: StripeGateway, customer: str, card_token: Callable[[str], str]
) -> None:
    token = card_token(VISA)
    first = gateway.attach_payment_method(
        customer=customer, payment_method=token, idempotency_key=new_key("a")
    )

    again = gateway.attach_payment_method(
        customer=customer, payment_method=token, idempotency_key=new_key("a")
    )

    assert again == first


def test_attach_refuses_a_card_of_another_customer(
    gateway: StripeGateway, customer: str, card_token: Callable[[str], str]
) -> None:
    token = card_token(VISA)
    gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=new_key("a"))
    other = gateway.create_customer(reference=_reference(), idempotency_key=new_key("customer"))

    with pytest.raises(PaymentMethodInvalid):
        gateway.attach_payment_method(customer=other, payment_method=token, idempotency_key=new_key("a"))

    assert gateway.retrieve_payment_method(payment_method=token).payment_method_id == token


def test_a_card_declined_at_attachment(
    gateway: StripeGateway, customer: str, card_token: Callable[[str], str]
) -> None:
    token = card_token(TEST_CARDS["declined_on_attach"])

    with pytest.raises(CardDeclined) as caught:
        gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=new_key("a"))

    assert caught.value.decline_code == "card_declined"
    assert caught.value.code == "card_declined"
    assert caught.value.http_status == 402


@pytest.mark.parametrize("token", ["pm_doesnotexist", "pm_" + "0" * 24])
def test_unknown_payment_methods_are_invalid(gateway: StripeGateway, customer: str, token: str) -> None:
    with pytest.raises(PaymentMethodInvalid):
        gateway.retrieve_payment_method(payment_method=token)
    with pytest.raises(PaymentMethodInvalid):
        gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=new_key("a"))
    with pytest.raises(PaymentMethodInvalid):
        gateway.detach_payment_method(payment_method=token, idempotency_key=new_key("d"))


def test_detach(
    gateway: StripeGateway,
    customer: str,
    card_token: Callable[[str], str],
    stripe_client: stripe.StripeClient,
) -> None:
    token = card_token(VISA)
    gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=new_key("a"))

    gateway.detach_payment_method(payment_method=token, idempotency_key=new_key("d"))

    assert stripe_client.v1.payment_methods.retrieve(token).customer is None


# --- payments ----------------------------------------------------------------------------------


@pytest.fixture
def saved_card(
    gateway: StripeGateway, customer: str, card_token: Callable[[str], str]
) -> Callable[[str], str]:
    def save(number: str) -> str:
        token = card_token(number)
        gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=new_key("a"))
        return token

    return save


def test_a_payment_that_succeeds(
    gateway: StripeGateway, customer: str, saved_card: Callable[[str], str]
) -> None:
    token = saved_card(VISA)

    result = gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=1234,
        currency="EUR",
        metadata={"veilbill_payment_id": "pay_1", "veilbill_tenant_id": "ten_1"},
        idempotency_key=new_key("pay"),
    )

    assert result.intent_id.startswith("pi_")
    assert (result.status, result.amount, result.currency) == ("succeeded", 1234, "EUR")
    assert result.payment_method_id == token
    assert dict(result.metadata) == {"veilbill_payment_id": "pay_1", "veilbill_tenant_id": "ten_1"}
    assert result.client_secret is None  # only handed out when the browser needs it
    assert result.decline_code is None
    assert gateway.retrieve_payment(intent_id=result.intent_id) == result


def test_a_card_declined_when_charged(
    gateway: StripeGateway, customer: str, saved_card: Callable[[str], str]
) -> None:
    token = saved_card(TEST_CARDS["declined_on_charge"])
    payment_id = new_id("pay")

    with pytest.raises(CardDeclined) as caught:
        _pay(gateway, customer, token, payment_id=payment_id)

    assert caught.value.decline_code == "card_declined"
    assert caught.value.__cause__ is None  # the SDK's error (and its message) is not chained
    assert str(caught.value) == "The card was declined."
    # The sandbox does not say which intent was declined; the intent is found by our payment id.
    found = gateway.find_payment(
        customer=customer, metadata_key="veilbill_payment_id", metadata_value=payment_id
    )
    assert found is not None
    assert caught.value.intent_id in {None, found.intent_id}
    assert (found.status, found.decline_code) == ("failed", "card_declined")


def test_three_d_secure_requires_action_with_a_client_secret(
    gateway: StripeGateway, customer: str, saved_card: Callable[[str], str]
) -> None:
    token = saved_card(TEST_CARDS["three_d_secure"])

    result = gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=5000,
        currency="EUR",
        metadata={"veilbill_payment_id": "pay_3ds"},
        idempotency_key=new_key("pay"),
    )

    assert result.status == "requires_action"
    assert result.client_secret is not None
    assert result.client_secret.startswith(f"{result.intent_id}_secret_")
    assert result.client_secret not in repr(result)


@pytest.mark.parametrize(
    ("amount", "currency"), [(0, "EUR"), (-5, "EUR"), (True, "EUR"), (100, "eur"), (100, "EURO"), (100, "")]
)
def test_create_payment_refuses_bad_amounts_and_currencies(
    wired_gateway: StripeGateway, wire: Wire, amount: int, currency: str
) -> None:
    with pytest.raises(ValueError, match=r"amount|currency"):
        wired_gateway.create_payment(
            customer="cus_x",
            payment_method="pm_x",
            amount=amount,
            currency=currency,
            metadata={},
            idempotency_key=new_key("pay"),
        )
    assert wire.requests == []


@pytest.mark.parametrize(
    "metadata",
    [
        {"note": "4242 4242 4242 4242"},
        {"k" * 41: "v"},
        {"": "v"},
        {"key[0]": "v"},
        {"note": "x" * 501},
        {f"k{i}": "v" for i in range(51)},
    ],
)
def test_create_payment_refuses_metadata_beyond_limits_or_with_card_numbers(
    wired_gateway: StripeGateway, wire: Wire, metadata: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="metadata"):
        wired_gateway.create_payment(
            customer="cus_x",
            payment_method="pm_x",
            amount=100,
            currency="EUR",
            metadata=metadata,
            idempotency_key=new_key("pay"),
        )
    assert wire.requests == []


def test_refund_partially_then_fully(
    gateway: StripeGateway, customer: str, saved_card: Callable[[str], str]
) -> None:
    token = saved_card(VISA)
    payment = gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=1000,
        currency="EUR",
        metadata={"veilbill_payment_id": "pay_r"},
        idempotency_key=new_key("pay"),
    )

    partial = gateway.refund(
        intent_id=payment.intent_id,
        amount=300,
        reason="requested_by_customer",
        metadata={"veilbill_refund_id": "ref_1"},
        idempotency_key=new_key("refund"),
    )
    rest = gateway.refund(
        intent_id=payment.intent_id,
        amount=700,
        reason=None,
        metadata={"veilbill_refund_id": "ref_2"},
        idempotency_key=new_key("refund"),
    )

    assert partial.refund_id.startswith("re_")
    assert (partial.status, partial.amount) == ("succeeded", 300)
    assert (rest.status, rest.amount) == ("succeeded", 700)
    assert rest.refund_id != partial.refund_id
    listed = gateway.list_refunds(intent_id=payment.intent_id)
    assert sorted((r.amount, r.refund_id, dict(r.metadata)) for r in listed) == [
        (300, partial.refund_id, {"veilbill_refund_id": "ref_1"}),
        (700, rest.refund_id, {"veilbill_refund_id": "ref_2"}),
    ]
    other = gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=500,
        currency="EUR",
        metadata={"veilbill_payment_id": "pay_other"},
        idempotency_key=new_key("pay"),
    )
    assert gateway.list_refunds(intent_id=other.intent_id) == [], "only the intent's own refunds"


def test_refund_refuses_a_reason_the_gateway_does_not_know(gateway: StripeGateway) -> None:
    with pytest.raises(ValueError, match="reason"):
        gateway.refund(
            intent_id="pi_x", amount=1, reason="the customer is Jane Doe", metadata={}, idempotency_key="k"
        )


def test_refund_of_an_unknown_intent_is_rejected(gateway: StripeGateway) -> None:
    with pytest.raises(GatewayRejected) as caught:
        gateway.refund(
            intent_id="pi_unknown", amount=1, reason=None, metadata={}, idempotency_key=new_key("r")
        )
    assert caught.value.http_status == 404


def test_find_payment_by_metadata(
    gateway: StripeGateway, customer: str, saved_card: Callable[[str], str]
) -> None:
    token = saved_card(VISA)
    wanted = new_id("pay")
    _pay(gateway, customer, token, payment_id=new_id("pay"))
    created = gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=777,
        currency="EUR",
        metadata={"veilbill_payment_id": wanted},
        idempotency_key=new_key("pay"),
    )
    other_customer = gateway.create_customer(reference=_reference(), idempotency_key=new_key("customer"))

    found = gateway.find_payment(customer=customer, metadata_key="veilbill_payment_id", metadata_value=wanted)

    assert found == created
    assert (
        gateway.find_payment(customer=customer, metadata_key="veilbill_payment_id", metadata_value="nope")
        is None
    )
    assert (
        gateway.find_payment(
            customer=other_customer, metadata_key="veilbill_payment_id", metadata_value=wanted
        )
        is None
    )


def test_find_payment_picks_one_of_duplicates_deterministically(
    gateway: StripeGateway, customer: str, saved_card: Callable[[str], str]
) -> None:
    # The sandbox ignores Idempotency-Key: the same create twice makes two intents.
    token = saved_card(VISA)
    payment_id = new_id("pay")
    first = _pay(gateway, customer, token, payment_id=payment_id)
    second = _pay(gateway, customer, token, payment_id=payment_id)

    found = gateway.find_payment(
        customer=customer, metadata_key="veilbill_payment_id", metadata_value=payment_id
    )

    assert found in (first, second)
    assert (
        gateway.find_payment(customer=customer, metadata_key="veilbill_payment_id", metadata_value=payment_id)
        == found
    )


# --- what goes over the wire -------------------------------------------------------------------


def test_every_mutating_call_carries_our_idempotency_key(
    wired_gateway: StripeGateway, wire: Wire, card_token: Callable[[str], str]
) -> None:
    keys = {
        name: derive_idempotency_key(name, "ten_1", uuid.uuid4().hex)
        for name in ("c", "s", "a", "p", "r", "d", "x")
    }
    token = card_token(VISA)
    wire.clear()

    customer = wired_gateway.create_customer(reference=_reference(), idempotency_key=keys["c"])
    wired_gateway.create_setup_intent(customer=customer, idempotency_key=keys["s"])
    wired_gateway.attach_payment_method(customer=customer, payment_method=token, idempotency_key=keys["a"])
    payment = wired_gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=500,
        currency="EUR",
        metadata={"veilbill_payment_id": "pay_wire"},
        idempotency_key=keys["p"],
    )
    wired_gateway.refund(
        intent_id=payment.intent_id, amount=500, reason=None, metadata={}, idempotency_key=keys["r"]
    )
    wired_gateway.detach_payment_method(payment_method=token, idempotency_key=keys["d"])
    wired_gateway.delete_customer(customer=customer, idempotency_key=keys["x"])

    sent = [
        (request.method, request.path, request.headers.get("idempotency-key")) for request in wire.mutations()
    ]
    assert sent == [
        ("POST", "/v1/customers", keys["c"]),
        ("POST", "/v1/setup_intents", keys["s"]),
        ("POST", f"/v1/payment_methods/{token}/attach", keys["a"]),
        ("POST", "/v1/payment_intents", keys["p"]),
        ("POST", "/v1/refunds", keys["r"]),
        ("POST", f"/v1/payment_methods/{token}/detach", keys["d"]),
        ("DELETE", f"/v1/customers/{customer}", keys["x"]),
    ]
    for request in wire.requests:
        assert request.headers["stripe-version"] == STRIPE_API_VERSION
        assert request.headers["authorization"] == f"Bearer {API_KEY}"


def test_the_payment_request_charges_the_given_card_in_lower_case_currency(
    wired_gateway: StripeGateway, wire: Wire, customer: str, saved_card: Callable[[str], str]
) -> None:
    token = saved_card(VISA)
    wire.clear()

    wired_gateway.create_payment(
        customer=customer,
        payment_method=token,
        amount=4200,
        currency="EUR",
        metadata={"veilbill_payment_id": "pay_w"},
        idempotency_key=new_key("pay"),
    )

    [sent] = wire.mutations()
    assert dict(parse_qsl(sent.body.decode())) == {
        "amount": "4200",
        "currency": "eur",
        "customer": customer,
        "payment_method": token,
        "confirm": "true",
        "metadata[veilbill_payment_id]": "pay_w",
    }


def test_a_mutating_call_without_a_key_is_refused(gateway: StripeGateway) -> None:
    for key in ("", "é", "k" * 256):
        with pytest.raises(ValueError, match="idempotency"):
            gateway.create_customer(reference=_reference(), idempotency_key=key)


# --- failures ----------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_a_refused_connection_is_unavailable(closed_port: int) -> None:
    gateway = StripeGateway(
        make_stripe_client(API_KEY, api_base=f"http://127.0.0.1:{closed_port}", timeout=2)
    )

    with pytest.raises(GatewayUnavailable) as caught:
        gateway.create_customer(reference=_reference(), idempotency_key=new_key("c"))

    assert caught.value.code == "gateway_unavailable"
    assert caught.value.__cause__ is None


def test_no_answer_in_time_is_a_timeout(silent_port: int) -> None:
    gateway = StripeGateway(
        make_stripe_client(API_KEY, api_base=f"http://127.0.0.1:{silent_port}", timeout=0.3)
    )

    with pytest.raises(GatewayTimeout) as caught:
        gateway.create_payment(
            customer="cus_x",
            payment_method="pm_x",
            amount=100,
            currency="EUR",
            metadata={},
            idempotency_key=new_key("p"),
        )

    assert caught.value.code == "gateway_timeout"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (500, b'{"error": {"type": "api_error", "message": "boom"}}', "application/json"),
        (503, b'{"error": {"type": "api_error"}}', "application/json"),
        (502, b"<html>Bad gateway</html>", "text/html"),
        (429, b'{"error": {"type": "invalid_request_error", "code": "rate_limit"}}', "application/json"),
        (409, b'{"error": {"type": "api_error", "code": "lock_timeout"}}', "application/json"),
    ],
)
def test_server_failures_and_rate_limits_are_unavailable(
    canned_server: CannedServer, status: int, body: bytes, content_type: str
) -> None:
    canned_server.answer(status, body, content_type)
    gateway = StripeGateway(make_stripe_client(API_KEY, api_base=canned_server.url))

    with pytest.raises(GatewayUnavailable) as caught:
        gateway.retrieve_payment(intent_id="pi_x")

    assert caught.value.http_status == status
    if content_type == "application/json":  # the SDK drops the headers of a body it cannot read
        assert caught.value.request_id == CannedServer.REQUEST_ID


def test_request_ids_are_carried(canned_server: CannedServer) -> None:
    canned_server.answer(
        402,
        b'{"error": {"type": "card_error", "code": "card_declined", '
        b'"decline_code": "insufficient_funds", "message": "4242424242424242 declined", '
        b'"payment_intent": {"id": "pi_declined", "object": "payment_intent"}}}',
    )
    gateway = StripeGateway(make_stripe_client(API_KEY, api_base=canned_server.url))

    with pytest.raises(CardDeclined) as caught:
        _pay(gateway, "cus_x", "pm_x")

    assert caught.value.request_id == CannedServer.REQUEST_ID
    assert caught.value.decline_code == "insufficient_funds"
    assert caught.value.intent_id == "pi_declined"
    assert VISA not in str(caught.value)
    assert VISA not in repr(caught.value)


def test_a_wrong_api_key_is_rejected(sandbox: LocalStripeSandbox) -> None:
    gateway = StripeGateway(make_stripe_client("not-a-key", api_base=sandbox.api_base), localstripe=True)

    with pytest.raises(GatewayRejected) as caught:
        gateway.create_customer(reference=_reference(), idempotency_key=new_key("c"))

    assert caught.value.http_status == 401


def test_an_unknown_intent_is_rejected(gateway: StripeGateway) -> None:
    with pytest.raises(GatewayRejected) as caught:
        gateway.retrieve_payment(intent_id="pi_doesnotexist")
    assert caught.value.code == "gateway_rejected"
    assert isinstance(caught.value, GatewayError)
