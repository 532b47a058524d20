"""Field encryption at rest: AES-256-GCM with a versioned, key-identified, context-bound format.

Algorithm
    AES-256-GCM (``cryptography``'s ``AESGCM``) under a 32-byte data key (DEK), 16-byte tag.

Nonce policy
    A fresh random 96-bit nonce per sealed value, drawn from ``rng`` (``os.urandom`` unless a test
    injects a fixed one for known-answer vectors). Random nonces stay safe up to about 2**32 values
    per key; DEKs are per data subject and purpose, far below that. With the default
    ``os.urandom``, nonces are read from it in 4 KiB batches of 341, each handed out once (an
    iterator's ``next()``, atomic under the GIL), and a forked child drops the batch it inherited
    (:func:`os.register_at_fork`). A nonce is public (it is stored in the clear beside the
    ciphertext) and need only never repeat, so buffering the OS generator's output keeps its
    guarantee and saves a system call per value (``bench/crypto_bench.py`` measures it). A
    restored VM snapshot could replay a batch, as it could replay any user-space generator's
    state (BoringSSL's, which Tink uses, included).

Format, version 1 (every value is self-describing, so rotation can tell which key it needs)::

    +------+-----+----------------+------------------+------------------------------+
    | 0x01 | len | key_id (ASCII) | nonce (12 bytes) | ciphertext || tag (16 bytes) |
    +------+-----+----------------+------------------+------------------------------+
      1 B    1 B    len bytes        12 B               len(plaintext) + 16 B
    |<------- header -------->|

    len is 1..64; key_id is printable ASCII (0x20..0x7E).

Associated data
    ``header || FieldContext.associated_data()``, where the context part is ``b"veilbill-field"``
    followed by tenant id, table, column and row id, each as a 2-byte big-endian length and its
    UTF-8 bytes. So the version byte and the key id are authenticated, and a value decrypts only in
    the tenant, table, column and row it was sealed for.

Protects against
    Reading values from a stolen database or backup without the keys; undetected modification,
    truncation or bit flips; copying a value to another tenant, table, column or row (including
    swapping two rows' values); relabelling a value with another key id or format version; telling
    equal values apart from the ciphertexts (nonces are random, so equal plaintexts differ).

Does not protect against
    An attacker who holds the key (or the running process); the plaintext's length, which shows
    (GCM is a stream mode, nothing is padded); rolling a value back to an older one sealed for the
    *same* tenant, table, column and row under the same key (there is no freshness counter).

Failures
    :func:`open_sealed` and friends raise one opaque :class:`~billing.errors.DecryptionError` for
    every cause (wrong or other key, tampering, truncation, unknown version, wrong context,
    non-bytes input, invalid UTF-8). It is raised outside any ``except`` block, so it has neither
    ``__cause__`` nor ``__context__`` that could reveal the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billing.errors import DecryptionError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "FORMAT_VERSION",
    "KEY_SIZE",
    "DataKey",
    "FieldContext",
    "check_key_id",
    "generate_key_material",
    "open_sealed",
    "open_sealed_text",
    "seal",
    "seal_text",
    "sealed_key_id",
]

FORMAT_VERSION: Final = 1
KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
MAX_KEY_ID_LENGTH: Final = 64

_FIXED_HEADER_SIZE: Final = 2  # version byte + key id length byte
_CONTEXT_LABEL: Final = b"veilbill-field"
_MAX_CONTEXT_FIELD_BYTES: Final = 0xFFFF


def _is_valid_key_id(key_id: object) -> bool:
    """Whether ``key_id`` is 1..64 printable ASCII characters (0x20..0x7E)."""
    return (
        isinstance(key_id, str)
        and 1 <= len(key_id) <= MAX_KEY_ID_LENGTH
        and key_id.isascii()
        and key_id.isprintable()  # for ASCII: exactly 0x20..0x7E
    )


def check_key_id(key_id: object) -> None:
    """Raise ``ValueError`` unless ``key_id`` is 1..64 printable ASCII characters (the message
    names no value), as :class:`DataKey` does, without making a key."""
    if not _is_valid_key_id(key_id):
        raise ValueError("key_id must be 1..64 printable ASCII characters")


def _utf8(text: str) -> bytes | None:
    """Encode to UTF-8, or ``None`` for a lone surrogate (whose error would echo the text)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


@dataclass(frozen=True, slots=True)
class FieldContext:
    """Where a sealed value lives: it decrypts only with this exact context.

    Raises:
        TypeError: a field is not a ``str``.
        ValueError: a field is not valid Unicode or is longer than 65535 UTF-8 bytes.
    """

    tenant_id: str
    table: str
    column: str
    row_id: str
    _associated: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = [_CONTEXT_LABEL]
        for name in ("tenant_id", "table", "column", "row_id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"FieldContext.{name} must be a str")
            encoded = _utf8(value)
            if encoded is None:
                raise ValueError(f"FieldContext.{name} is not valid Unicode")
            if len(encoded) > _MAX_CONTEXT_FIELD_BYTES:
                raise ValueError(f"FieldContext.{name} is longer than 65535 UTF-8 bytes")
            parts.append(len(encoded).to_bytes(2, "big"))
            parts.append(encoded)
        object.__setattr__(self, "_associated", b"".join(parts))

    def associated_data(self) -> bytes:
        """``b"veilbill-field"`` then each field as 2-byte big-endian length + UTF-8 bytes.

        Length prefixes make the encoding injective: ``("ab", "c")`` and ``("a", "bc")`` differ.
        Computed once, when the context is built.
        """
        return self._associated


@dataclass(frozen=True)
class DataKey:
    """A 32-byte AES-256-GCM key and the id written into every value it seals.

    ``repr``/``str`` mask the material. Equality compares the material, so do not use it where
    timing matters.

    Raises:
        TypeError: ``material`` is not ``bytes``.
        ValueError: ``key_id`` is not 1..64 printable ASCII characters, or ``material`` is not
            exactly 32 bytes. Messages never contain the material.
    """

    key_id: str
    material: bytes
    _cipher: AESGCM = field(init=False, repr=False, compare=False)
    _header: bytes = field(init=False, repr=False, compare=False)
    _nonce_end: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_id(self.key_id)
        if not isinstance(self.material, bytes):
            raise TypeError("key material must be bytes")
        if len(self.material) != KEY_SIZE:
            raise ValueError("key material must be exactly 32 bytes")
        # Built once per key: the AES key schedule and the format header are the same for every
        # value, and rebuilding them per call cost more than the encryption of a short field.
        object.__setattr__(self, "_cipher", AESGCM(self.material))
        object.__setattr__(self, "_header", _header(self.key_id))
        object.__setattr__(self, "_nonce_end", len(self._header) + NONCE_SIZE)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self.key_id!r}, material=<redacted>)"

    __str__ = __repr__


def generate_key_material(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """Return 32 random bytes for a new key.

    Raises:
        ValueError: ``rng`` returned something other than 32 bytes.
    """
    material = rng(KEY_SIZE)
    if not isinstance(material, bytes) or len(material) != KEY_SIZE:
        raise ValueError("rng must return exactly 32 bytes")
    return material


_OS_RANDOM: Final = os.urandom
_NONCES_PER_BATCH: Final = 341  # 4,092 bytes: one getrandom() call per 341 nonces


# The nonces not handed out yet, pre-sliced. ``next()`` on a list iterator is one C call that
# cannot be interleaved under the GIL, so two threads never receive the same nonce. When the batch
# runs out, each thread that notices reads a batch of its own and takes its first nonce from it;
# whichever batch is published last serves the rest, and every nonce of every batch is still
# handed out once (the others' remainders are dropped, never shared).
_unused_nonces: Iterator[bytes] = iter(())


def _next_batch_nonce() -> bytes:
    global _unused_nonces  # noqa: PLW0603 - one shared batch, replaced whole when spent
    material = os.urandom(_NONCES_PER_BATCH * NONCE_SIZE)
    nonces = iter([material[start : start + NONCE_SIZE] for start in range(0, len(material), NONCE_SIZE)])
    nonce = next(nonces)
    _unused_nonces = nonces
    return nonce


def _forget_batch_after_fork() -> None:
    """A forked child must not hand out the nonces its parent will also hand out."""
    global _unused_nonces  # noqa: PLW0603 - see _next_batch_nonce
    _unused_nonces = iter(())


os.register_at_fork(after_in_child=_forget_batch_after_fork)


def _header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return bytes((FORMAT_VERSION, len(encoded))) + encoded


def seal(
    key: DataKey,
    plaintext: bytes,
    context: FieldContext,
    *,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``plaintext`` for ``context`` under ``key``, in format version 1.

    Raises:
        TypeError: ``key``, ``plaintext`` or ``context`` has the wrong type.
        ValueError: ``rng`` did not return 12 bytes.
    """
    # Checked by looking the parts up (a ``TypeError`` for anything else), not with isinstance:
    # this runs once per stored field and every check costs as much as a fifth of the crypto.
    try:
        header = key._header
        cipher = key._cipher
        associated = header + context._associated
    except AttributeError:
        raise TypeError("key must be a DataKey and context a FieldContext") from None
    if type(plaintext) is not bytes:
        raise TypeError("plaintext must be bytes")
    if rng is _OS_RANDOM:
        nonce = next(_unused_nonces, None) or _next_batch_nonce()  # a nonce is 12 bytes: truthy
    else:
        nonce = rng(NONCE_SIZE)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ValueError("rng must return exactly 12 bytes")
    return b"".join((header, nonce, cipher.encrypt(nonce, plaintext, associated)))


def _parse(blob: object) -> tuple[bytes, str, bytes, bytes] | None:
    """Split a v1 blob into ``(header, key_id, nonce, ciphertext_and_tag)``, or ``None``."""
    if not isinstance(blob, bytes) or len(blob) < _FIXED_HEADER_SIZE or blob[0] != FORMAT_VERSION:
        return None
    header_end = _FIXED_HEADER_SIZE + blob[1]
    if len(blob) < header_end + NONCE_SIZE + TAG_SIZE:
        return None
    key_id = blob[_FIXED_HEADER_SIZE:header_end].decode("latin-1")
    if not _is_valid_key_id(key_id):
        return None
    nonce_end = header_end + NONCE_SIZE
    return blob[:header_end], key_id, blob[header_end:nonce_end], blob[nonce_end:]


def sealed_key_id(blob: bytes) -> str:
    """Return the id of the key a sealed value needs, from its header alone (nothing is decrypted).

    Raises:
        DecryptionError: ``blob`` is not a well-formed version 1 value.
    """
    parsed = _parse(blob)
    if parsed is None:
        raise DecryptionError from None
    return parsed[1]


def open_sealed(key: DataKey, blob: bytes, context: FieldContext) -> bytes:
    """Decrypt a value sealed by :func:`seal` for ``context``.

    Raises:
        TypeError: ``key`` or ``context`` has the wrong type (a programming error, not bad data).
        DecryptionError: for every failure caused by the data or the key — see the module docstring.
    """
    try:  # see seal() for why not isinstance
        header = key._header
        nonce_end = key._nonce_end
        cipher = key._cipher
        associated = header + context._associated
    except AttributeError:
        raise TypeError("key must be a DataKey and context a FieldContext") from None
    # The header is this key's exactly (version, length, id), or the value is not for this key.
    # A blob too short for nonce and tag leaves the ciphertext under 16 bytes: AESGCM refuses it.
    if type(blob) is bytes and blob.startswith(header):
        try:
            return cipher.decrypt(blob[nonce_end - NONCE_SIZE : nonce_end], blob[nonce_end:], associated)
        except (InvalidTag, ValueError, OverflowError):
            pass
    # Raised outside the ``except`` block so that ``__context__`` stays ``None``.
    raise DecryptionError from None


def seal_text(
    key: DataKey,
    text: str,
    context: FieldContext,
    *,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """:func:`seal` the UTF-8 encoding of ``text``.

    Raises:
        TypeError: ``text`` is not a ``str`` (or as :func:`seal`).
        ValueError: ``text`` contains a lone surrogate (the message does not echo it).
    """
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    encoded = _utf8(text)
    if encoded is None:
        raise ValueError("text is not valid Unicode")
    return seal(key, encoded, context, rng=rng)


def open_sealed_text(key: DataKey, blob: bytes, context: FieldContext) -> str:
    """:func:`open_sealed` and decode UTF-8.

    Raises:
        DecryptionError: as :func:`open_sealed`, or the plaintext is not valid UTF-8.
    """
    plaintext = open_sealed(key, blob, context)
    try:
        text: str | None = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        raise DecryptionError from None
    return text
