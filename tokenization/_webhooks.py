"""Verification of gateway webhook deliveries, and their reduction to :class:`GatewayEvent`.

Written by hand, not delegated to the SDK, so that it can be read, fuzzed and reasoned about.

Scheme (Stripe's): the ``Stripe-Signature`` header is ``t=<unix time>,v1=<hex>[,v1=<hex>…]``,
possibly with other schemes (``v0``…) which are ignored. Each ``v1`` is
HMAC-SHA256(secret, ``"<t>." + raw body``) in lower-case hex. A delivery is authentic when some
``v1`` equals the HMAC under some configured secret (several secrets during a rotation; Stripe
sends several ``v1`` while *its* secret rolls) and ``t`` is within ``tolerance`` seconds of now.

Decisions:

- **Raw bytes only.** The HMAC covers the body exactly as received; never re-serialize it.
- **No secret, no verification.** An empty list of secrets, or an empty secret, is a
  configuration error (``ValueError``), never "accept everything".
- **Strict parsing, bounded work.** The header is at most 4 KiB and 32 items; each item is
  ``scheme=value`` in printable ASCII; ``t`` is 1-12 digits without leading zeros (so the signed
  text is exactly what the header says); a ``v1`` is 64 lower-case hex digits. Anything else is
  malformed rather than guessed at.
- **Constant-time comparison** of every candidate (``hmac.compare_digest``), without early exit.
- **The timestamp bounds replays** to ``tolerance`` seconds either way (future timestamps too);
  deduplication by event id, downstream, covers replays inside that window.
- **One error type**, :class:`WebhookSignatureInvalid`; its ``reason`` is for our logs, and the
  sender should get the same answer whatever it is.

:func:`parse_event` then keeps only an allow-list of fields of ``data.object`` (ids, statuses,
amounts, currency, metadata, decline codes): customer e-mails, names, addresses, billing details
and card details never go further than this function.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tokenization._gateway import GatewayEvent
from tokenization._pan import contains_card_number
from tokenization.errors import WebhookPayloadInvalid, WebhookSignatureInvalid

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_EVENT_BYTES",
    "parse_event",
    "parse_signature_header",
    "sign_payload",
    "verify_signature",
]

DEFAULT_TOLERANCE: Final = 300
MAX_HEADER_LENGTH: Final = 4096
MAX_HEADER_ITEMS: Final = 32
MAX_EVENT_BYTES: Final = 1 << 20
"""Largest webhook body :func:`parse_event` reads (Stripe's events are a few KiB)."""

_ITEM_RE: Final = re.compile(r"([a-z][a-z0-9_]{0,15})=([\x21-\x2b\x2d-\x7e]{1,512})")
_TIMESTAMP_RE: Final = re.compile(r"0|[1-9][0-9]{0,11}")
_V1_RE: Final = re.compile(r"[0-9a-f]{64}")
_REFUSAL: Final = "refusing to verify webhooks without a secret"
_NOT_TEXT: Final = "a webhook secret is not valid Unicode text (a lone surrogate)"


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and every ``v1`` signature of a ``Stripe-Signature`` header, in order.

    Unknown schemes are skipped. The list is empty when there is no ``v1``.

    Raises:
        WebhookSignatureInvalid: ``missing_header`` (empty) or ``malformed_header`` (anything
            not matching the grammar in the module docstring, no ``t`` or several).
    """
    timestamp, _, signatures = _parse(header)
    return timestamp, signatures


def _parse(header: str) -> tuple[int, str, list[str]]:
    if not isinstance(header, str):
        raise WebhookSignatureInvalid("malformed_header")
    header = header.strip(" \t")
    if not header:
        raise WebhookSignatureInvalid("missing_header")
    if len(header) > MAX_HEADER_LENGTH:
        raise WebhookSignatureInvalid("malformed_header")
    items = header.split(",")
    if len(items) > MAX_HEADER_ITEMS:
        raise WebhookSignatureInvalid("malformed_header")
    raw_timestamp: str | None = None
    signatures: list[str] = []
    for item in items:
        match = _ITEM_RE.fullmatch(item)
        if match is None:
            raise WebhookSignatureInvalid("malformed_header")
        scheme, value = match.groups()
        if scheme == "t":
            if raw_timestamp is not None or not _TIMESTAMP_RE.fullmatch(value):
                raise WebhookSignatureInvalid("malformed_header")
            raw_timestamp = value
        elif scheme == "v1":
            if not _V1_RE.fullmatch(value):
                raise WebhookSignatureInvalid("malformed_header")
            signatures.append(value)
    if raw_timestamp is None:
        raise WebhookSignatureInvalid("malformed_header")
    return int(raw_timestamp), raw_timestamp, signatures


def _checked_secrets(secrets: Sequence[str]) -> list[str]:
    if isinstance(secrets, str | bytes):
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    checked = list(secrets)
    for secret in checked:
        if not isinstance(secret, str):
            raise TypeError("webhook secrets must be str")
    if not checked or not all(checked):
        raise ValueError(_REFUSAL)
    if not all(_is_text(secret) for secret in checked):
        raise ValueError(_NOT_TEXT)
    return checked


def _is_text(secret: str) -> bool:
    """Whether ``secret`` encodes to UTF-8: a lone surrogate (an environment variable that was not
    UTF-8 decodes to one) would otherwise fail inside the HMAC, with the secret in the error."""
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _signature(secret: str, raw_timestamp: str, payload: bytes) -> str:
    signed = raw_timestamp.encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def verify_signature(
    payload: bytes,
    header: str,
    secrets: Sequence[str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int,
) -> None:
    """Check that ``payload`` (the raw body) was signed by the gateway, recently.

    ``secrets`` are the endpoint secrets currently accepted (two during a rotation); ``now`` is
    the current Unix time, a parameter so that tests are deterministic.

    Raises:
        ValueError: ``secrets`` is empty or holds an empty secret, or ``tolerance`` < 0.
        TypeError: ``payload`` is not ``bytes``, or ``secrets`` is a single string.
        WebhookSignatureInvalid: ``missing_header``, ``malformed_header``, ``no_v1``,
            ``timestamp_out_of_tolerance`` or ``no_matching_signature``.
    """
    checked = _checked_secrets(secrets)
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    if not isinstance(payload, bytes):
        raise TypeError("verify the raw body: payload must be bytes")
    timestamp, raw_timestamp, signatures = _parse(header)
    if not signatures:
        raise WebhookSignatureInvalid("no_v1")
    if abs(now - timestamp) > tolerance:
        raise WebhookSignatureInvalid("timestamp_out_of_tolerance")
    matched = False
    for secret in checked:
        expected = _signature(secret, raw_timestamp, payload)
        for candidate in signatures:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookSignatureInvalid("no_matching_signature")


def sign_payload(payload: bytes, secret: str, *, timestamp: int) -> str:
    """The ``Stripe-Signature`` value for ``payload`` signed with ``secret`` at ``timestamp``.

    For tests and tools that deliver events the sandbox does not emit (refunds, disputes).
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError(_REFUSAL)
    if not _is_text(secret):
        raise ValueError(_NOT_TEXT)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < 10**12:
        raise ValueError("timestamp must be a Unix time (0 to 12 digits)")
    raw_timestamp = str(timestamp)
    return f"t={raw_timestamp},v1={_signature(secret, raw_timestamp, payload)}"


# --- events -----------------------------------------------------------------------------------

_EVENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,255}")
_EVENT_TYPE_RE: Final = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+){0,5}")
_MAX_EVENT_TYPE: Final = 100
_MAX_STRING: Final = 255
_MAX_LIST: Final = 100
_MAX_METADATA: Final = 50

_SCALAR_FIELDS: Final = frozenset(
    {
        "id",
        "object",
        "status",
        "amount",
        "amount_capturable",
        "amount_received",
        "amount_refunded",
        "currency",
        "created",
        "livemode",
        "captured",
        "paid",
        "refunded",
        "disputed",
        "deleted",
        "reason",  # refunds and disputes: an enumerated code, never free text
        "cancellation_reason",
        "failure_code",
    }
)
"""Fields kept as they are, when they are a string (up to 255 characters), an integer, a boolean
or null. Free-text fields (``description``, ``failure_message``…) are deliberately absent."""

_ID_FIELDS: Final = frozenset(
    {"customer", "payment_intent", "payment_method", "charge", "latest_charge", "invoice", "setup_intent"}
)
"""Expandable references: kept as the id, whether the gateway sent the id or the object."""

_ERROR_FIELDS: Final = frozenset({"type", "code", "decline_code"})
"""Kept of ``last_payment_error``/``last_setup_error``: codes only, not the message, not the
payment method it embeds (which holds billing details)."""


def parse_event(payload: bytes) -> GatewayEvent:
    """The event in a (verified) webhook body, reduced to allow-listed fields.

    Kept of ``data.object``: the scalar fields of ``_SCALAR_FIELDS``; the references of
    ``_ID_FIELDS`` as ids; ``metadata`` (string to string); the codes of
    ``last_payment_error``/``last_setup_error``; and ``refunds.data`` (charges), each refund
    reduced the same way. A string holding a card number is dropped wherever it is; an
    ``id`` or ``type`` holding one, which cannot be dropped, makes the event ``not_an_event``.

    Raises:
        WebhookPayloadInvalid: ``too_large``, ``not_json`` (not UTF-8 JSON, or NaN/Infinity),
            ``not_an_event`` (not an object, or ``id``/``type``/``created``/``data.object``
            missing or of the wrong form, or ``id``/``type`` holding a card number).
    """
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    if len(payload) > MAX_EVENT_BYTES:
        raise WebhookPayloadInvalid("too_large")
    try:
        document = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WebhookPayloadInvalid("not_json") from None
    if not isinstance(document, dict):
        raise WebhookPayloadInvalid("not_an_event")
    event_id, event_type, created = document.get("id"), document.get("type"), document.get("created")
    data = document.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if (
        not isinstance(event_id, str)
        or not _EVENT_ID_RE.fullmatch(event_id)
        or not isinstance(event_type, str)
        or len(event_type) > _MAX_EVENT_TYPE
        or not _EVENT_TYPE_RE.fullmatch(event_type)
        or isinstance(created, bool)
        or not isinstance(created, int)
        or created < 0
        or not isinstance(obj, dict)
        or contains_card_number(event_id)
        or contains_card_number(event_type)
    ):
        raise WebhookPayloadInvalid("not_an_event")
    kept = _reduce(obj, nested=True)
    object_id = kept.get("id")
    return GatewayEvent(
        id=event_id,
        type=event_type,
        created=created,
        object_id=object_id if isinstance(object_id, str) else None,
        object=kept,
    )


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _clean_string(value: str) -> str | None:
    if len(value) > _MAX_STRING or contains_card_number(value):
        return None
    return value


def _scalar(value: object) -> tuple[bool, object]:
    """Whether ``value`` may be kept, and the value to keep."""
    if value is None or isinstance(value, bool | int):
        return True, value
    if isinstance(value, str):
        cleaned = _clean_string(value)
        return cleaned is not None, cleaned
    return False, None


def _reference(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return _clean_string(value) if isinstance(value, str) else None


def _reduce(obj: Mapping[str, Any], *, nested: bool) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _SCALAR_FIELDS:
            keep, cleaned = _scalar(value)
            if keep:
                kept[key] = cleaned
        elif key in _ID_FIELDS:
            if value is None:
                kept[key] = None
            elif (reference := _reference(value)) is not None:
                kept[key] = reference
        elif key == "metadata" and isinstance(value, dict):
            kept[key] = _reduce_metadata(value)
        elif key in {"last_payment_error", "last_setup_error"} and isinstance(value, dict):
            kept[key] = {
                field: value[field]
                for field in _ERROR_FIELDS
                if field in value
                and isinstance(value[field], str)
                and _clean_string(value[field]) is not None
            }
        elif key == "refunds" and nested and isinstance(value, dict) and isinstance(value.get("data"), list):
            items = value["data"][:_MAX_LIST]
            kept[key] = {"data": [_reduce(item, nested=False) for item in items if isinstance(item, dict)]}
    return kept


def _reduce_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for key, value in metadata.items():
        if len(kept) >= _MAX_METADATA:
            break
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        if _clean_string(key) is None or _clean_string(value) is None:
            continue
        kept[key] = value
    return kept
