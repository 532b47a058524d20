"""Keyed pseudonyms: HMAC-SHA256 under a key derived for one purpose.

* Algorithm: ``purpose_key = HMAC-SHA256(key, "veilbill/anonymize/pseudonym/v1" ‖ 0x00 ‖ purpose)``,
  then ``pseudonym = HMAC-SHA256(purpose_key, UTF-8(value))``, rendered as 64 lowercase hex
  characters or 52 lowercase base32 characters (RFC 4648 alphabet, no padding). The version tag
  lets the derivation change later without colliding with these pseudonyms.
* Protects against: recomputing a pseudonym without the key (unlike an unkeyed hash of an email,
  which anyone can rebuild by hashing candidates), and linking datasets released for different
  purposes (each purpose has its own key, so the same customer gets unrelated pseudonyms).
* Does not protect against: the key holder, who can recompute and so re-identify; frequency or
  record linkage on the other columns; a key that leaks (rotate it: pseudonyms change with it).
  Pseudonyms are deterministic by design, so equal values stay joinable within one purpose.
* Keys: at least 32 bytes from a CSPRNG or HKDF, never a passphrase. Keys never appear in ``repr``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from anonymize._errors import InvalidKey

__all__ = ["Pseudonymizer", "keyed_pseudonym"]

MIN_KEY_BYTES = 32
_LABEL = b"veilbill/anonymize/pseudonym/v1\x00"

Encoding = Literal["hex", "base32"]


class Pseudonymizer:
    """Pseudonyms for one purpose, deriving the purpose key once (for whole columns)."""

    __slots__ = ("_encoding", "_key", "purpose")

    def __init__(self, key: bytes, *, purpose: str, encoding: Encoding = "hex") -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
            raise InvalidKey(f"a pseudonym key must be at least {MIN_KEY_BYTES} random bytes")
        if not purpose:
            raise InvalidKey("a pseudonym purpose must not be empty")
        if encoding not in ("hex", "base32"):
            raise InvalidKey("the encoding must be 'hex' or 'base32'")
        self.purpose = purpose
        self._encoding = encoding
        self._key = hmac.new(bytes(key), _LABEL + purpose.encode("utf-8"), hashlib.sha256).digest()

    def __call__(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).digest()
        if self._encoding == "hex":
            return digest.hex()
        return base64.b32encode(digest).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"Pseudonymizer(purpose={self.purpose!r}, key=<redacted>)"


def keyed_pseudonym(key: bytes, value: str, *, purpose: str, encoding: Encoding = "hex") -> str:
    """The pseudonym of ``value`` for ``purpose`` under ``key`` (see the module docstring).

    Raises ``InvalidKey`` for a key shorter than 32 bytes, an empty purpose or an unknown encoding.
    """
    return Pseudonymizer(key, purpose=purpose, encoding=encoding)(value)
