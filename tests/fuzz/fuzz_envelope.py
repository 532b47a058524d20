"""Atheris harness: the ciphertext parser (``billing._envelope``: ``open_sealed``,
``open_sealed_text``, ``sealed_key_id``).

``python -m tests.fuzz.fuzz_envelope -runs=N`` (or ``-max_total_time=S``); ``tests/fuzz/harness.py``
describes the command line, the corpus and how a failure is reported.

The harness seals a few plaintexts (empty, e-mail, accented text, invalid UTF-8, every byte value)
under one key for one context, with nonces derived from the plaintext so that the seeds are the same
on every run. The first byte of an input picks what the rest is:

- 0: the blob itself. The seeds are the sealed values, so libFuzzer's own mutations (bit flips,
  insertions, erasures, copies, crossovers between blobs) are mutations of valid blobs.
- 1: a program of one to four structured mutations of a sealed value: flip a byte, truncate,
  extend, splice, insert, erase, relabel the key id (a well-formed header for another id), or take
  the nonce or the tag of another sealed value.
- 2: another key (fuzzed id and material) and another context (fuzzed fields), plus a plaintext
  sealed and opened under them.

Oracles: a blob opens only if it is byte for byte one the harness sealed, under that key and that
context, and then to its own plaintext (``open_sealed_text``: only if that is valid UTF-8); every
other outcome is the one opaque ``DecryptionError``, with the same message and neither
``__cause__`` nor ``__context__``. Any other exception is a failure. The same blob as a
``bytearray``, a ``memoryview`` or a ``str`` never opens. ``sealed_key_id`` returns only what the
header says (1 to 64 printable ASCII characters, preceded by version 1 and its length, followed by
room for a nonce and a tag) or raises the opaque error. Building a key or a context from fuzzed
parts raises only the documented ``ValueError``; a value sealed under them opens under them alone.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator

import atheris

import billing._envelope
from billing._envelope import (
    DataKey,
    FieldContext,
    open_sealed,
    open_sealed_text,
    seal,
    sealed_key_id,
)
from billing.errors import DecryptionError

from .harness import harness_options, instrument_modules, run_harness

KEY = DataKey("dek_fuzz_0001", bytes(range(32)))
CONTEXT = FieldContext("tn_fuzz", "customers", "email", "cus_fuzz")
PLAINTEXTS = (
    b"",
    b"ana@example.org",
    "Jos\u00e9 \u00d1\u00fa\u00f1ez, 12 rue de la Paix".encode(),
    b"\xff\xfe not UTF-8",
    bytes(range(256)),
)
OPAQUE_MESSAGE = str(DecryptionError())
NONCE_SIZE = 12
TAG_SIZE = 16
_MAX_MUTATIONS = 4


def _sealed(plaintext: bytes) -> bytes:
    nonce = hashlib.sha256(plaintext).digest()[:NONCE_SIZE]
    return seal(KEY, plaintext, CONTEXT, rng=lambda size: nonce[:size])


SEALED = {_sealed(plaintext): plaintext for plaintext in PLAINTEXTS}
BLOBS = tuple(SEALED)


def _refused(call: Callable[..., object], *args: object) -> None:
    """``call(*args)`` raises the opaque ``DecryptionError`` and nothing else.

    Called outside any ``except`` block, so that a ``__context__`` on the error is the product's.
    """
    try:
        result = call(*args)
    except DecryptionError as error:
        assert str(error) == OPAQUE_MESSAGE, f"the error says more: {error}"
        assert error.__cause__ is None and error.__context__ is None, "the error chains its cause"
        return
    raise AssertionError(f"{getattr(call, '__name__', call)} accepted a value it must refuse: {result!r}")


def _utf8_or_none(plaintext: bytes) -> str | None:
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_blob(blob: bytes) -> None:
    """The oracles of the module docstring, for one blob under the harness's key and context."""
    plaintext = SEALED.get(blob)
    if plaintext is None:
        _refused(open_sealed, KEY, blob, CONTEXT)
        _refused(open_sealed_text, KEY, blob, CONTEXT)
    else:
        assert open_sealed(KEY, blob, CONTEXT) == plaintext
        text = _utf8_or_none(plaintext)  # decoded outside any except block: see _refused
        if text is None:
            _refused(open_sealed_text, KEY, blob, CONTEXT)
        else:
            assert open_sealed_text(KEY, blob, CONTEXT) == text
    for other_type in (bytearray(blob), memoryview(blob), blob.decode("latin-1")):
        _refused(open_sealed, KEY, other_type, CONTEXT)
        _refused(sealed_key_id, other_type)
    try:
        key_id = sealed_key_id(blob)
    except DecryptionError as error:
        assert str(error) == OPAQUE_MESSAGE and error.__context__ is None
        assert plaintext is None, "sealed_key_id refused a sealed value"
        return
    length = len(key_id)
    assert 1 <= length <= 64 and key_id.isascii() and key_id.isprintable(), key_id
    assert blob[0] == 1 and blob[1] == length and blob[2 : 2 + length] == key_id.encode("ascii")
    assert len(blob) >= 2 + length + NONCE_SIZE + TAG_SIZE, "a key id read from a blob too short"
    if plaintext is not None:
        assert key_id == KEY.key_id


def _mutate(fdp: atheris.FuzzedDataProvider, blob: bytearray) -> None:
    """One structured mutation of ``blob``, in place (the module docstring lists them)."""
    position = fdp.ConsumeIntInRange(0, max(len(blob) - 1, 0))
    kind = fdp.ConsumeIntInRange(0, 8)
    header_end = 2 + blob[1] if len(blob) > 1 else len(blob)
    if kind == 0 and blob:
        blob[position] ^= fdp.ConsumeIntInRange(1, 255)
    elif kind == 1:
        del blob[position:]
    elif kind == 2:
        blob += fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 32))
    elif kind == 3:
        replacement = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
        blob[position : position + len(replacement)] = replacement
    elif kind == 4:
        blob[position:position] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
    elif kind == 5:
        del blob[position : position + fdp.ConsumeIntInRange(1, 16)]
    elif kind == 6:
        key_id = bytes(0x20 + byte % 95 for byte in fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))) or b"k"
        blob[:header_end] = bytes((1, len(key_id))) + key_id
    else:  # the nonce (7) or the tag (8) of another sealed value
        donor = BLOBS[fdp.ConsumeIntInRange(0, len(BLOBS) - 1)]
        donor_header = 2 + donor[1]
        if kind == 7:
            blob[header_end : header_end + NONCE_SIZE] = donor[donor_header : donor_header + NONCE_SIZE]
        else:
            blob[-TAG_SIZE:] = donor[-TAG_SIZE:]


def check_mutations(fdp: atheris.FuzzedDataProvider) -> None:
    blob = bytearray(BLOBS[fdp.ConsumeIntInRange(0, len(BLOBS) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, _MAX_MUTATIONS)):
        _mutate(fdp, blob)
    check_blob(bytes(blob))


def check_other_key_and_context(fdp: atheris.FuzzedDataProvider) -> None:
    """Another key and context: built or refused with ``ValueError``; they open their own values only."""
    try:
        key = DataKey(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 70)), fdp.ConsumeBytes(32))
    except ValueError:
        key = KEY
    fields = [fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12)) for _ in range(4)]
    try:
        context = FieldContext(*fields)
    except ValueError:
        context = CONTEXT
    same = key.key_id == KEY.key_id and key.material == KEY.material and context == CONTEXT
    for blob, plaintext in SEALED.items():
        if same:
            assert open_sealed(key, blob, context) == plaintext
        else:
            _refused(open_sealed, key, blob, context)
    plaintext = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    blob = seal(key, plaintext, context)
    assert open_sealed(key, blob, context) == plaintext
    assert sealed_key_id(blob) == key.key_id
    if not same:
        _refused(open_sealed, KEY, blob, CONTEXT)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        check_blob(rest)
    elif mode == 1:
        check_mutations(atheris.FuzzedDataProvider(rest))
    else:
        check_other_key_and_context(atheris.FuzzedDataProvider(rest))


def seeds() -> Iterator[bytes]:
    """Every sealed value, as a blob, and a few mutation programs and other keys."""
    for blob in BLOBS:
        yield b"\x00" + blob
    yield b"\x00" + b"\x01\x05dek_1" + bytes(40)
    for start in range(0, 256, 32):
        yield b"\x01" + bytes((start + i) % 256 for i in range(48))
        yield b"\x02" + b"dek_other" + bytes((start + i) % 256 for i in range(80))


def main() -> None:
    options = harness_options(sys.argv)
    instrument_modules(billing._envelope)
    run_harness("envelope", test_one_input, seeds, options)


if __name__ == "__main__":
    main()
