"""Standard Webhooks signatures: a known-answer vector, and the ``standardwebhooks`` library as the
independent verifier of what we sign (current and rotated secrets, tampering, replays)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from billing import SigningSecret, generate_secret, sign, signature_header

# The test vector published with the Standard Webhooks reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(message_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_known_answer_vector() -> None:
    secret = SigningSecret(VECTOR_SECRET)
    assert sign(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    reference = Webhook(VECTOR_SECRET).sign(
        VECTOR_ID, datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=UTC), VECTOR_BODY.decode()
    )
    assert reference == VECTOR_SIGNATURE


def test_the_reference_library_verifies_what_we_sign() -> None:
    secret = generate_secret()
    body = b'{"data":{"invoice_id":"inv_x"},"id":"evt_x","type":"invoice.paid"}'
    now = int(time.time())
    headers = _headers("evt_abc", now, signature_header([secret], "evt_abc", now, body))
    assert Webhook(secret.value).verify(body, headers) is not None


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "other_secret", "stale", "future"])
def test_the_reference_library_refuses_tampering_and_replays(tamper: str) -> None:
    secret = generate_secret()
    body = b'{"id":"evt_1","type":"invoice.paid"}'
    now = int(time.time())
    headers = _headers("evt_1", now, sign(secret, "evt_1", now, body))
    verifier = Webhook(secret.value)
    if tamper == "body":
        body = body.replace(b"paid", b"void")
    elif tamper == "id":
        headers["webhook-id"] = "evt_2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now + 1)
    elif tamper == "other_secret":
        verifier = Webhook(generate_secret().value)
    else:  # a replay of an old delivery, or one dated ahead: correctly signed, outside the tolerance
        moment = now - 600 if tamper == "stale" else now + 600
        headers = _headers("evt_1", moment, sign(secret, "evt_1", moment, body))
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, headers)


def test_during_rotation_both_secrets_verify() -> None:
    old, new = generate_secret(), generate_secret()
    body = b'{"id":"evt_r"}'
    now = int(time.time())
    header = signature_header([new, old], "evt_r", now, body)
    assert len(header.split(" ")) == 2 and all(part.startswith("v1,") for part in header.split(" "))
    for secret in (old, new):
        assert Webhook(secret.value).verify(body, _headers("evt_r", now, header)) is not None
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret().value).verify(body, _headers("evt_r", now, header))


def test_secrets_are_random_and_masked() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second and first.value.startswith("whsec_")
    assert len(first.key) == 32
    assert first.value not in repr(first) and first.value not in str(first)
    fixed = generate_secret(lambda n: bytes(range(n)))
    assert fixed.key == bytes(range(32))


@pytest.mark.parametrize(
    "bad", ["", "s3cr3t-value", "whsec_", "whsec_not base64!", "whsec_" + "QUFB", "sk_" + "A" * 40]
)
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as raised:
        SigningSecret(bad)
    assert not bad or bad not in str(raised.value)  # the error never echoes the value
