"""Atheris harness: the signatures of our outbound webhooks (``billing._webhook_signing``: Standard
Webhooks' ``webhook-signature``, ``SigningSecret``).

``python -m tests.fuzz.fuzz_standard_webhooks -runs=N`` (or ``-max_total_time=S``);
``tests/fuzz/harness.py`` describes the command line, the corpus and how a failure is reported.

``billing`` only signs: receivers verify, so the verifier here is the ``standardwebhooks`` reference
library (as in ``tests/billing/test_webhook_signing.py``), beside an HMAC recomputed with ``hmac``
and ``hashlib``. The first byte of an input picks what the rest is:

- 0: a secret as text (UTF-8 with replacement). ``SigningSecret`` raises only ``ValueError`` (whose
  message never echoes the text), or holds ``whsec_`` + base64 of at least 24 bytes, masks itself
  in ``repr``/``str``, and the reference library, given the same text, verifies what it signs.
- 1: a delivery: one to three secrets (their bytes fuzzed), a message id (any non-empty text), a
  timestamp within four minutes of now and a body (any bytes), then tampering with the id, the
  timestamp, the body or the secrets. The header is one ``v1,<base64 HMAC-SHA256>`` per secret, in
  order, each equal to the recomputed HMAC of ``"<id>.<timestamp>." + body``; the reference library
  accepts it under every secret (for a UTF-8 body, which is all the library reads) and never once the
  signed content or the secret changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import time
from collections.abc import Iterator

import atheris
from standardwebhooks import Webhook, WebhookVerificationError

import billing._webhook_signing
from billing._webhook_signing import SECRET_PREFIX, SigningSecret, generate_secret, sign, signature_header

from .harness import harness_options, instrument_modules, run_harness

_MIN_KEY_BYTES = 24
_WINDOW = 240  # seconds either side of now: inside the reference library's five-minute tolerance
_MESSAGE_ID = "evt_fuzz_0001"


def _refusal(text: str) -> str:
    try:
        SigningSecret(text)
    except ValueError as error:
        return str(error)
    raise AssertionError(f"{text!r} was accepted")


REFUSALS = frozenset(map(_refusal, ["sk_x", "whsec_!", "whsec_QUFB"]))
"""Every message ``SigningSecret`` refuses with (wrong prefix, not base64, too short): none
depends on the text, so none can echo a secret."""


def _headers(message_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def _signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{message_id}.{timestamp}.".encode() + body


def _reference_accepts(secret: SigningSecret, body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret.value).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def check_secret(text: str) -> None:
    try:
        secret = SigningSecret(text)
    except ValueError as error:
        assert str(error) in REFUSALS, f"a refusal that depends on the text: {error}"
        return
    assert text.startswith(SECRET_PREFIX)
    key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    assert secret.key == key and len(key) >= _MIN_KEY_BYTES
    assert text not in repr(secret) and text not in str(secret)
    now = int(time.time())
    body = b'{"type":"invoice.paid"}'
    headers = _headers(_MESSAGE_ID, now, sign(secret, _MESSAGE_ID, now, body))
    assert _reference_accepts(secret, body, headers), f"the reference library reads {text!r} otherwise"


def _secret(fdp: atheris.FuzzedDataProvider) -> SigningSecret:
    material = fdp.ConsumeBytes(32).ljust(32, b"\x00")
    return generate_secret(lambda size: material[:size])


def check_delivery(fdp: atheris.FuzzedDataProvider) -> None:
    secrets = [_secret(fdp) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    message_id = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 64)) or _MESSAGE_ID
    timestamp = int(time.time()) + fdp.ConsumeIntInRange(-_WINDOW, _WINDOW)
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))

    header = signature_header(secrets, message_id, timestamp, body)
    signed = _signed_content(message_id, timestamp, body)
    expected = [
        "v1," + base64.b64encode(hmac.new(secret.key, signed, hashlib.sha256).digest()).decode("ascii")
        for secret in secrets
    ]
    assert header.split(" ") == expected, header
    readable = _is_utf8(body)
    headers = _headers(message_id, timestamp, header)
    if readable:
        for secret in secrets:
            assert _reference_accepts(secret, body, headers), "the reference library refused our signature"

    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        message_id = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 64)) or "evt_other"
    elif kind == 1:
        timestamp += fdp.ConsumeIntInRange(-_WINDOW, _WINDOW)
    elif kind == 2:
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    else:
        other = _secret(fdp)
        if all(other.key != secret.key for secret in secrets):
            if readable:
                assert not _reference_accepts(other, body, headers), "accepted under another secret"
            return
    if _signed_content(message_id, timestamp, body) == signed or not _is_utf8(body):
        return
    for secret in secrets:
        tampered = _headers(message_id, timestamp, header)
        assert not _reference_accepts(secret, body, tampered), "a signature verified for other content"


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 2, data[1:]
    if mode == 0:
        check_secret(rest.decode("utf-8", errors="replace"))
    else:
        check_delivery(atheris.FuzzedDataProvider(rest))


def seeds() -> Iterator[bytes]:
    """Generated secrets (and broken ones), and a few deliveries."""
    for start in range(0, 256, 64):
        secret = generate_secret(lambda size, start=start: bytes((start + i) % 256 for i in range(size)))
        yield b"\x00" + secret.value.encode()
        yield b"\x01" + bytes((start + i) % 256 for i in range(96))
    broken = ["whsec_", "whsec_QUFB", "whsec_not base64!", "sk_live_" + "A" * 40, "whsec_" + "QUFB" * 8 + "="]
    for text in broken:
        yield b"\x00" + text.encode()
    yield b"\x01" + b"\x07" * 64 + b"evt_1" + b'{"type":"invoice.paid","data":{"invoice_id":"inv_1"}}'


def main() -> None:
    options = harness_options(sys.argv)
    instrument_modules(billing._webhook_signing)
    run_harness("standard_webhooks", test_one_input, seeds, options)


if __name__ == "__main__":
    main()
