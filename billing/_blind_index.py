"""Blind indexes: find a row by email or external reference without decrypting anything.

Algorithm
    ``HMAC-SHA256(index_key, len(field) || field || value)`` as 64 lowercase hex characters, where
    ``len(field)`` is the 2-byte big-endian length of the field name's UTF-8 bytes and ``value`` is
    the caller-normalized value's UTF-8 bytes. ``index_key`` is a random (or HKDF-derived) 32-byte
    key used for blind indexes only, one per tenant. No nonce: the index is deterministic by design.

Associated data
    The field name is inside the MAC, so the same value indexed as ``email`` and as ``external_ref``
    gives unrelated indexes, and a column's index cannot be used to probe another column.

Protects against
    Recovering the value from a stolen database: the index is keyed, so it cannot be recomputed or
    brute-forced from a list of known emails without the tenant's index key (an unkeyed SHA-256 of
    an email can be). Linking the same client across tenants: each tenant has its own key, so the
    indexes of one email in two tenants are unrelated.

Does not protect against (what it leaks)
    Within one tenant and one field it reveals equality (two rows with the same index hold the
    same normalized value) and therefore frequency (how many rows share a value). Anyone holding the
    index key can test guesses. Normalization decides what counts as "equal"; it is the caller's job
    (:func:`normalize_email`, :func:`normalize_ref`) and must not change once indexes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["INDEX_KEY_SIZE", "blind_index", "normalize_email", "normalize_ref"]

INDEX_KEY_SIZE: Final = 32
_MAX_FIELD_BYTES: Final = 0xFFFF


def normalize_email(email: str) -> str:
    """Strip surrounding whitespace and casefold: ``" Ana@Example.COM "`` → ``ana@example.com``.

    ``+tags`` and dots are kept on purpose: whether ``ana+spa@`` or ``a.na@`` reach the same mailbox
    depends on the provider, and merging them would let one client's lookup find another client's
    records. The booking app's exact address is the identity; a false miss is safer than a false
    match.
    """
    return email.strip().casefold()


def normalize_ref(ref: str) -> str:
    """Strip surrounding whitespace only: external references are opaque and case-sensitive."""
    return ref.strip()


def _utf8(text: str) -> bytes | None:
    """Encode to UTF-8, or ``None`` for a lone surrogate (whose error would echo the text)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def blind_index(index_key: bytes, value: str, *, field: str) -> str:
    """Return the 64-hex-character blind index of an already normalized ``value`` in ``field``.

    Raises:
        ValueError: ``index_key`` is not 32 bytes, ``field`` is empty or longer than 65535 UTF-8
            bytes, or ``field``/``value`` is not valid Unicode. Messages never contain the value
            or the key.
    """
    if not isinstance(index_key, bytes) or len(index_key) != INDEX_KEY_SIZE:
        raise ValueError("index_key must be exactly 32 bytes")
    encoded_field = _utf8(field) if isinstance(field, str) else None
    if not encoded_field or len(encoded_field) > _MAX_FIELD_BYTES:
        raise ValueError("field must be a non-empty str of at most 65535 UTF-8 bytes")
    encoded_value = _utf8(value) if isinstance(value, str) else None
    if encoded_value is None:
        raise ValueError("value must be a str of valid Unicode")
    message = len(encoded_field).to_bytes(2, "big") + encoded_field + encoded_value
    return hmac.new(index_key, message, hashlib.sha256).hexdigest()
