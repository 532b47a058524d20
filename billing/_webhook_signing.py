"""Signatures of outbound webhooks, in the Standard Webhooks scheme (standardwebhooks.com).

Algorithm
    HMAC-SHA256 under the endpoint's secret over ``"{webhook-id}.{webhook-timestamp}.{body}"``
    (UTF-8 id, decimal Unix seconds, the exact body bytes), base64-encoded (standard alphabet,
    padded) and sent as ``webhook-signature: v1,<signature>``. During a secret rotation the header
    carries one ``v1,…`` signature per valid secret, separated by spaces; a receiver accepts the
    delivery when any of them verifies.

Secrets
    ``whsec_`` followed by base64 of 32 random bytes; the HMAC key is the decoded bytes, as every
    Standard Webhooks library expects. Secrets are shown once at creation or rotation and stored
    only sealed (``_envelope``) under the tenant's ``webhooks`` key. :class:`SigningSecret` masks
    itself in ``repr``.

Protects against
    Forged or altered deliveries (the receiver recomputes the HMAC); replays of old deliveries
    (the timestamp is signed, receivers refuse it outside their tolerance, five minutes by default,
    and deduplicate on ``webhook-id``).

Does not protect against
    A receiver that does not verify, or that leaks its secret; reading the body in transit (use an
    ``https`` URL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["SECRET_PREFIX", "SigningSecret", "generate_secret", "sign", "signature_header"]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class SigningSecret:
    """A ``whsec_…`` secret; its text never appears in ``repr`` or ``str``.

    Raises:
        ValueError: ``value`` does not start with ``whsec_``, the rest is not base64, or it holds
            fewer than 24 bytes. The message is one of three fixed sentences: it never echoes the value.
    """

    value: str

    def __post_init__(self) -> None:
        if not self.value.startswith(SECRET_PREFIX):
            raise ValueError("a webhook secret starts with whsec_")
        try:
            key = base64.b64decode(self.value[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret is whsec_ followed by base64") from None
        if len(key) < 24:
            raise ValueError("a webhook secret holds at least 24 bytes")

    @property
    def key(self) -> bytes:
        return base64.b64decode(self.value[len(SECRET_PREFIX) :])

    def __repr__(self) -> str:
        return "SigningSecret(<redacted>)"

    __str__ = __repr__


def generate_secret(rng: Callable[[int], bytes] = os.urandom) -> SigningSecret:
    return SigningSecret(SECRET_PREFIX + base64.b64encode(rng(SECRET_BYTES)).decode("ascii"))


def sign(secret: SigningSecret, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Iterable[SigningSecret], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one space-separated ``v1,…`` per valid secret, current first."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets)
