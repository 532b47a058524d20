"""Atheris harness: the gateway's webhook signatures (``Stripe-Signature``) and event bodies
(``tokenization``: ``parse_signature_header``, ``verify_signature``, ``sign_payload``,
``parse_event``).

``python -m tests.fuzz.fuzz_stripe_signature -runs=N`` (or ``-max_total_time=S``);
``tests/fuzz/harness.py`` describes the command line, the corpus and how a failure is reported.

The first byte of an input picks what the rest is:

- 0: a header (UTF-8 with replacement, Latin-1 for every other byte value) checked against a fixed
  body and secret.
- 1: a header, a body, a clock, a tolerance and a list of secrets, all fuzzed.
- 2: a genuine delivery (body, secret and time fuzzed, header made by ``sign_payload``), then
  fuzzer-chosen tampering: flip a character of the header, append or prepend items, change the
  body, the clock or the secret.
- 3: a body for ``parse_event``.

Oracles. ``parse_signature_header`` returns a timestamp of 0 to 12 digits and only 64-character
lower-case hex ``v1`` values, or raises ``WebhookSignatureInvalid``. ``verify_signature`` raises
only ``WebhookSignatureInvalid``, or ``ValueError`` for what its docstring names (no secret, an
empty secret, a negative tolerance); it accepts only when the header carries, as an item
``v1=<hex>``, the HMAC-SHA256 of ``"<t>." + body`` under one of the secrets, recomputed here with
``hmac`` and ``hashlib``, for a ``t=<t>`` item within the tolerance of the clock. It never rejects
a genuine, untampered delivery within the tolerance. ``parse_event`` returns an event or raises
``WebhookPayloadInvalid``, and no string it keeps holds a card number.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Iterator

import atheris

import tokenization._pan
import tokenization._webhooks
from tokenization import (
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
    contains_card_number,
    parse_event,
    parse_signature_header,
    sign_payload,
    verify_signature,
)

from .harness import harness_options, instrument_modules, run_harness

SECRET = "whsec_fuzz_endpoint_secret"
OTHER_SECRET = "whsec_fuzz_previous_secret"
PAYLOAD = b'{"id":"evt_fuzz","type":"payment_intent.succeeded","created":1700000000,"data":{"object":{}}}'
NOW = 1_700_000_000
MAX_TIMESTAMP = 10**12
_ITEM_SEPARATOR = ","


def _expected_v1(secret: str, timestamp: int, payload: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def check_header(header: str) -> tuple[int, list[str]] | None:
    """What ``parse_signature_header`` returns, checked, or ``None`` when it refuses the header."""
    try:
        timestamp, signatures = parse_signature_header(header)
    except WebhookSignatureInvalid:
        return None
    assert 0 <= timestamp < MAX_TIMESTAMP, timestamp
    for signature in signatures:
        assert len(signature) == 64 and all(char in "0123456789abcdef" for char in signature), signature
    return timestamp, signatures


def check_verification(
    payload: bytes, header: str, secrets: list[str], *, tolerance: int, now: int, genuine: bool = False
) -> None:
    """``verify_signature`` accepts exactly the deliveries the module docstring says it does."""
    refusal_by_config = not secrets or not all(secrets) or tolerance < 0
    outcome: str
    try:
        verify_signature(payload, header, secrets, tolerance=tolerance, now=now)
    except WebhookSignatureInvalid:
        outcome = "refused"
    except ValueError:
        assert refusal_by_config, "ValueError for a valid configuration"
        return
    else:
        outcome = "accepted"
    assert not refusal_by_config, "verified without a usable secret or tolerance"
    parsed = check_header(header)
    authentic = False
    if parsed is not None:
        timestamp, _ = parsed
        items = header.strip(" \t").split(_ITEM_SEPARATOR)
        in_time = abs(now - timestamp) <= tolerance and f"t={timestamp}" in items
        authentic = in_time and any(
            f"v1={_expected_v1(secret, timestamp, payload)}" in items for secret in secrets
        )
    if outcome == "accepted":
        assert authentic, f"accepted a forged or stale delivery: {header!r}"
    if genuine:
        assert outcome == "accepted", f"refused a genuine delivery: {header!r}"


def _header_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace") if raw[:1] != b"\xff" else raw[1:].decode("latin-1")


def check_arbitrary(fdp: atheris.FuzzedDataProvider) -> None:
    # Secrets are configuration, not input: any text but lone surrogates (which no encoding takes).
    secrets = [SECRET, OTHER_SECRET, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))][
        : fdp.ConsumeIntInRange(0, 3)
    ]
    tolerance = fdp.ConsumeIntInRange(-2, 10**6)
    now = fdp.ConsumeIntInRange(-(10**6), 2 * MAX_TIMESTAMP)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    header = _header_text(fdp.ConsumeBytes(fdp.remaining_bytes()))
    check_header(header)
    check_verification(payload, header, secrets, tolerance=tolerance, now=now)


def check_tampered(fdp: atheris.FuzzedDataProvider) -> None:
    secret = [SECRET, OTHER_SECRET][fdp.ConsumeIntInRange(0, 1)]
    timestamp = fdp.ConsumeIntInRange(0, MAX_TIMESTAMP - 1)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    header = sign_payload(payload, secret, timestamp=timestamp)
    tolerance = fdp.ConsumeIntInRange(0, 600)
    now = timestamp + fdp.ConsumeIntInRange(-tolerance, tolerance)
    check_verification(payload, header, [SECRET, OTHER_SECRET], tolerance=tolerance, now=now, genuine=True)
    secrets = [SECRET, OTHER_SECRET]
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        kind = fdp.ConsumeIntInRange(0, 6)
        if kind == 0 and header:
            position = fdp.ConsumeIntInRange(0, len(header) - 1)
            header = header[:position] + chr(fdp.ConsumeIntInRange(0x20, 0x7E)) + header[position + 1 :]
        elif kind == 1:
            header += _ITEM_SEPARATOR + fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 80))
        elif kind == 2:
            header = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 80)) + _ITEM_SEPARATOR + header
        elif kind == 3:
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
        elif kind == 4:
            now = fdp.ConsumeIntInRange(0, 2 * MAX_TIMESTAMP)
        elif kind == 5:
            secrets = [s for s in secrets if s != secret] + [fdp.ConsumeUnicodeNoSurrogates(24) or "x"]
        else:
            tolerance = fdp.ConsumeIntInRange(0, 10**6)
    check_verification(payload, header, secrets, tolerance=tolerance, now=now)


def check_event(payload: bytes) -> None:
    try:
        event = parse_event(payload)
    except WebhookPayloadInvalid:
        return
    pending: list[object] = [event.id, event.type, event.object_id, event.object]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            assert not contains_card_number(item), "parse_event kept a card number"
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    if mode == 0:
        header = _header_text(rest)
        if check_header(header) is not None:
            check_verification(PAYLOAD, header, [SECRET], tolerance=300, now=NOW)
    elif mode == 1:
        check_arbitrary(atheris.FuzzedDataProvider(rest))
    elif mode == 2:
        check_tampered(atheris.FuzzedDataProvider(rest))
    else:
        check_event(rest)


def seeds() -> Iterator[bytes]:
    """Signed headers (one and two ``v1``, other schemes), malformed ones, and event bodies."""
    genuine = sign_payload(PAYLOAD, SECRET, timestamp=NOW)
    rotated = f"{genuine},v1={_expected_v1(OTHER_SECRET, NOW, PAYLOAD)},v0={'0' * 64}"
    for header in [genuine, rotated, f"t={NOW}", f"v1={'a' * 64},t=0", "t=01,v1=", " t=1 , v1=x", ""]:
        yield b"\x00" + header.encode()
        yield b"\x01" + header.encode() + bytes(range(16))
    for start in range(0, 256, 64):
        yield b"\x02" + bytes((start + i) % 256 for i in range(64))
    yield b"\x03" + PAYLOAD
    yield (
        b'\x03{"id":"evt_1","type":"charge.refunded","created":1,"data":{"object":{"id":"ch_1",'
        b'"amount":500,"metadata":{"note":"4242 4242 4242 4242"},"refunds":{"data":[{"id":"re_1",'
        b'"reason":"requested_by_customer"}]},"last_payment_error":{"code":"card_declined"},'
        b'"billing_details":{"name":"x"},"customer":{"id":"cus_1"}}}}'
    )


def main() -> None:
    options = harness_options(sys.argv)
    instrument_modules(tokenization._webhooks, tokenization._pan)
    run_harness("stripe_signature", test_one_input, seeds, options)


if __name__ == "__main__":
    main()
