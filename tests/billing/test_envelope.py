"""Tests for billing._envelope: known answers, the byte layout, one negative test per bad input."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billing._envelope import (
    DataKey,
    FieldContext,
    generate_key_material,
    open_sealed,
    open_sealed_text,
    seal,
    seal_text,
    sealed_key_id,
)
from billing.errors import DecryptionError

if TYPE_CHECKING:
    from collections.abc import Callable

VECTORS_PATH = Path(__file__).parent / "vectors" / "envelope_v1.json"
OPAQUE_MESSAGE = str(DecryptionError())

KEY = DataKey("dek_0001", bytes(range(32)))
OTHER_MATERIAL = DataKey("dek_0001", bytes(range(32, 64)))
OTHER_ID = DataKey("dek_0002", bytes(range(32)))
CONTEXT = FieldContext("tn_acme", "customers", "email", "cus_0001")
PLAINTEXT = b"ana@example.com"
NONCE = bytes(range(0xA0, 0xAC))


@dataclass(frozen=True)
class Vector:
    """One known-answer vector from envelope_v1.json."""

    name: str
    key: DataKey
    nonce: bytes
    context: FieldContext
    plaintext: bytes
    associated_data: bytes
    blob: bytes


def _load_vectors() -> list[Vector]:
    document: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    assert document["format_version"] == 1
    return [
        Vector(
            name=entry["name"],
            key=DataKey(entry["key_id"], bytes.fromhex(entry["key_material_hex"])),
            nonce=bytes.fromhex(entry["nonce_hex"]),
            context=FieldContext(**entry["context"]),
            plaintext=bytes.fromhex(entry["plaintext_hex"]),
            associated_data=bytes.fromhex(entry["associated_data_hex"]),
            blob=bytes.fromhex(entry["blob_hex"]),
        )
        for entry in document["vectors"]
    ]


VECTORS = _load_vectors()


def fixed_rng(value: bytes) -> Callable[[int], bytes]:
    def rng(size: int) -> bytes:
        assert size == len(value)
        return value

    return rng


def assert_opaque(call: Callable[[], object]) -> None:
    """Assert the call raises DecryptionError with the fixed message and nothing chained."""
    with pytest.raises(DecryptionError) as info:
        call()
    error = info.value
    assert str(error) == OPAQUE_MESSAGE
    assert error.args == (OPAQUE_MESSAGE,)
    assert error.__cause__ is None
    assert error.__context__ is None
    assert error.ids == {}


def sealed() -> bytes:
    return seal(KEY, PLAINTEXT, CONTEXT, rng=fixed_rng(NONCE))


def flip(blob: bytes, offset: int, bit: int = 0) -> bytes:
    mutable = bytearray(blob)
    mutable[offset] ^= 1 << bit
    return bytes(mutable)


# --- known answers --------------------------------------------------------------------------------


def test_vector_file_has_at_least_three_vectors() -> None:
    assert len(VECTORS) >= 3
    assert len({vector.blob for vector in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.name)
def test_seal_with_fixed_nonce_matches_vector(vector: Vector) -> None:
    blob = seal(vector.key, vector.plaintext, vector.context, rng=fixed_rng(vector.nonce))

    assert blob == vector.blob


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.name)
def test_open_sealed_vector_returns_plaintext(vector: Vector) -> None:
    assert open_sealed(vector.key, vector.blob, vector.context) == vector.plaintext
    assert sealed_key_id(vector.blob) == vector.key.key_id


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.name)
def test_vector_matches_layout_built_by_hand(vector: Vector) -> None:
    """Rebuild each vector from the documented layout with AESGCM directly, without billing code."""
    key_id = vector.key.key_id.encode("ascii")
    header = bytes([0x01, len(key_id)]) + key_id
    context_fields = (
        vector.context.tenant_id,
        vector.context.table,
        vector.context.column,
        vector.context.row_id,
    )
    context_part = b"veilbill-field" + b"".join(
        len(field.encode("utf-8")).to_bytes(2, "big") + field.encode("utf-8") for field in context_fields
    )
    associated_data = header + context_part
    ciphertext_and_tag = AESGCM(vector.key.material).encrypt(vector.nonce, vector.plaintext, associated_data)

    assert associated_data == vector.associated_data
    assert header + vector.nonce + ciphertext_and_tag == vector.blob
    assert len(vector.blob) == len(header) + 12 + len(vector.plaintext) + 16


def test_associated_data_literal_encoding() -> None:
    context = FieldContext("t1", "customers", "email", "c\u00e9")

    assert context.associated_data() == (
        b"veilbill-field\x00\x02t1\x00\x09customers\x00\x05email\x00\x03c\xc3\xa9"
    )


def test_associated_data_is_unambiguous() -> None:
    first = FieldContext("ab", "c", "d", "e")
    second = FieldContext("a", "bc", "d", "e")

    assert first.associated_data() != second.associated_data()


# --- round trips and nonces -----------------------------------------------------------------------


def test_round_trip_with_real_randomness() -> None:
    blob = seal(KEY, PLAINTEXT, CONTEXT)

    assert open_sealed(KEY, blob, CONTEXT) == PLAINTEXT
    assert sealed_key_id(blob) == "dek_0001"


def test_sealing_same_plaintext_twice_gives_different_blobs_and_nonces() -> None:
    first = seal(KEY, PLAINTEXT, CONTEXT)
    second = seal(KEY, PLAINTEXT, CONTEXT)
    nonce_slice = slice(10, 22)

    assert first != second
    assert first[nonce_slice] != second[nonce_slice]


NONCE_SLICE = slice(10, 22)  # after KEY's 10-byte header (version, length, "dek_0001")


def test_nonces_never_repeat_across_batches_and_threads() -> None:
    # 8 threads x 1,000 values span many 341-nonce batches, and threads race for the refills.
    def nonces() -> list[bytes]:
        return [seal(KEY, PLAINTEXT, CONTEXT)[NONCE_SLICE] for _ in range(1_000)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        drawn = [nonce for batch in pool.map(lambda _: nonces(), range(8)) for nonce in batch]

    assert len(drawn) == 8_000
    assert len(set(drawn)) == len(drawn)


def test_a_forked_child_does_not_reuse_the_parents_nonces() -> None:
    seal(KEY, PLAINTEXT, CONTEXT)  # the parent now holds a batch with nonces left in it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the next nonce it would use, then leave at once
        os.write(write_end, seal(KEY, PLAINTEXT, CONTEXT)[NONCE_SLICE])
        os._exit(0)
    os.close(write_end)
    child_nonce = os.read(read_end, 12)
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_nonces = {seal(KEY, PLAINTEXT, CONTEXT)[NONCE_SLICE] for _ in range(400)}

    assert len(child_nonce) == 12
    assert child_nonce not in parent_nonces


def test_seal_draws_exactly_one_twelve_byte_nonce() -> None:
    requests: list[int] = []

    def recording_rng(size: int) -> bytes:
        requests.append(size)
        return os.urandom(size)

    seal(KEY, PLAINTEXT, CONTEXT, rng=recording_rng)

    assert requests == [12]


def test_seal_refuses_rng_that_returns_wrong_length() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        seal(KEY, PLAINTEXT, CONTEXT, rng=lambda size: bytes(size - 1))


def test_seal_refuses_non_bytes_plaintext() -> None:
    with pytest.raises(TypeError):
        seal(KEY, "ana@example.com", CONTEXT)  # type: ignore[arg-type]


def test_text_round_trip() -> None:
    text = "Zo\u00eb M\u00fcller \u2014 \U0001f95c"
    blob = seal_text(KEY, text, CONTEXT)

    assert open_sealed_text(KEY, blob, CONTEXT) == text
    assert open_sealed(KEY, blob, CONTEXT) == text.encode("utf-8")


def test_seal_text_refuses_lone_surrogate_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not valid Unicode") as info:
        seal_text(KEY, "secret\ud800", CONTEXT)

    assert "secret" not in str(info.value)
    assert info.value.__context__ is None


def test_open_sealed_text_with_invalid_utf8_is_opaque() -> None:
    blob = seal(KEY, b"\xff\xfe", CONTEXT)

    assert_opaque(lambda: open_sealed_text(KEY, blob, CONTEXT))


def test_open_sealed_text_with_tampered_blob_is_opaque() -> None:
    blob = flip(seal_text(KEY, "ana", CONTEXT), -1)

    assert_opaque(lambda: open_sealed_text(KEY, blob, CONTEXT))


# --- negative tests: one per kind of bad input ----------------------------------------------------

# Offsets in a blob sealed under "dek_0001" (8 characters): version 0, length 1, key id 2..9,
# nonce 10..21, ciphertext 22..36 (15 bytes), tag the last 16.
REGIONS = {
    "version": 0,
    "key_id_length": 1,
    "key_id": 5,
    "nonce": 15,
    "ciphertext": 25,
    "tag": -3,
}


@pytest.mark.parametrize("offset", REGIONS.values(), ids=REGIONS.keys())
def test_flipped_bit_in_each_region_is_opaque(offset: int) -> None:
    blob = flip(sealed(), offset, bit=3)

    assert_opaque(lambda: open_sealed(KEY, blob, CONTEXT))


def test_flipped_bit_anywhere_is_opaque() -> None:
    blob = sealed()
    for offset in range(len(blob)):
        for bit in (0, 7):
            assert_opaque(partial(open_sealed, KEY, flip(blob, offset, bit), CONTEXT))


@pytest.mark.parametrize(
    "length",
    [1, 2, 9, 10, 22, 22 + 15, -8, -1],
    ids=[
        "version only",
        "no key id",
        "partial key id",
        "header only",
        "header and nonce",
        "no tag",
        "half the tag",
        "last byte missing",
    ],
)
def test_truncated_blob_is_opaque(length: int) -> None:
    blob = sealed()[:length]

    assert_opaque(lambda: open_sealed(KEY, blob, CONTEXT))


def test_every_truncation_is_opaque() -> None:
    blob = sealed()
    for length in range(len(blob)):
        assert_opaque(partial(open_sealed, KEY, blob[:length], CONTEXT))


def test_appended_byte_is_opaque() -> None:
    blob = sealed() + b"\x00"

    assert_opaque(lambda: open_sealed(KEY, blob, CONTEXT))


def test_empty_blob_is_opaque() -> None:
    assert_opaque(lambda: open_sealed(KEY, b"", CONTEXT))


def test_unknown_version_is_opaque() -> None:
    blob = bytes([0x02]) + sealed()[1:]

    assert_opaque(lambda: open_sealed(KEY, blob, CONTEXT))
    assert_opaque(lambda: sealed_key_id(blob))


def test_wrong_key_material_is_opaque() -> None:
    assert_opaque(lambda: open_sealed(OTHER_MATERIAL, sealed(), CONTEXT))


def test_key_with_other_id_is_opaque() -> None:
    assert_opaque(lambda: open_sealed(OTHER_ID, sealed(), CONTEXT))


def test_relabelled_key_id_fails_even_with_matching_key() -> None:
    """The key id is authenticated: rewriting it to another key's id does not help."""
    blob = sealed()
    relabelled = blob[:2] + b"dek_0002" + blob[10:]

    assert sealed_key_id(relabelled) == "dek_0002"
    assert_opaque(lambda: open_sealed(OTHER_ID, relabelled, CONTEXT))


@pytest.mark.parametrize(
    "wrong_context",
    [
        FieldContext("tn_other", "customers", "email", "cus_0001"),
        FieldContext("tn_acme", "invoices", "email", "cus_0001"),
        FieldContext("tn_acme", "customers", "phone", "cus_0001"),
        FieldContext("tn_acme", "customers", "email", "cus_0002"),
    ],
    ids=["tenant", "table", "column", "row"],
)
def test_changed_context_field_is_opaque(wrong_context: FieldContext) -> None:
    assert_opaque(lambda: open_sealed(KEY, sealed(), wrong_context))


def test_blobs_swapped_between_two_rows_are_opaque() -> None:
    row_a = FieldContext("tn_acme", "customers", "email", "cus_a")
    row_b = FieldContext("tn_acme", "customers", "email", "cus_b")
    blob_a = seal(KEY, b"a@example.com", row_a)
    blob_b = seal(KEY, b"b@example.com", row_b)

    assert_opaque(lambda: open_sealed(KEY, blob_b, row_a))
    assert_opaque(lambda: open_sealed(KEY, blob_a, row_b))


@pytest.mark.parametrize(
    "not_bytes",
    [None, "", "01086465", 42, [1, 8], bytearray(b"\x01"), memoryview(b"\x01")],
    ids=["None", "empty str", "hex str", "int", "list", "bytearray", "memoryview"],
)
def test_non_bytes_blob_is_opaque(not_bytes: object) -> None:
    assert_opaque(lambda: open_sealed(KEY, not_bytes, CONTEXT))  # type: ignore[arg-type]
    assert_opaque(lambda: sealed_key_id(not_bytes))  # type: ignore[arg-type]


def test_non_bytes_blob_of_valid_bytes_is_opaque() -> None:
    blob = bytearray(sealed())

    assert_opaque(lambda: open_sealed(KEY, blob, CONTEXT))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "malformed",
    [
        b"",
        b"\x01",
        b"\x01\x00" + bytes(28),
        b"\x01\x41" + bytes(100),
        b"\x01\x02\x1f\x41" + bytes(28),
    ],
    ids=[
        "empty",
        "version only",
        "empty key id",
        "key id longer than 64",
        "control char in key id",
    ],
)
def test_sealed_key_id_refuses_malformed_headers(malformed: bytes) -> None:
    assert_opaque(lambda: sealed_key_id(malformed))


def test_sealed_key_id_refuses_non_ascii_key_id() -> None:
    blob = b"\x01\x02\xc3\xa9" + bytes(28)

    assert_opaque(lambda: sealed_key_id(blob))


def test_error_names_no_key_id_or_reason() -> None:
    with pytest.raises(DecryptionError) as info:
        open_sealed(OTHER_ID, sealed(), CONTEXT)

    message = str(info.value) + repr(info.value)
    assert "dek_" not in message
    assert "tag" not in message.lower()


# --- keys and contexts ----------------------------------------------------------------------------


def test_data_key_repr_and_str_mask_material() -> None:
    key = DataKey("dek_x", bytes.fromhex("ab" * 32))

    assert repr(key) == "DataKey(key_id='dek_x', material=<redacted>)"
    assert str(key) == repr(key)
    assert "ab" * 4 not in repr(key)
    assert "\\xab" not in repr(key)
    assert f"{key}" == repr(key)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_data_key_refuses_wrong_material_length_without_echoing_it(length: int) -> None:
    material = bytes([0xAB]) * length

    with pytest.raises(ValueError, match="32 bytes") as info:
        DataKey("dek_x", material)

    assert "ab" not in str(info.value).lower().replace("bytes", "")
    assert "\\xab" not in str(info.value)


def test_data_key_refuses_non_bytes_material() -> None:
    with pytest.raises(TypeError):
        DataKey("dek_x", bytearray(32))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key_id",
    ["", "x" * 65, "d\u00e9k", "dek\n1", "dek\x7f", "dek\x00"],
    ids=["empty", "65 chars", "non-ASCII", "newline", "DEL", "NUL"],
)
def test_data_key_refuses_bad_key_ids(key_id: str) -> None:
    with pytest.raises(ValueError, match="key_id"):
        DataKey(key_id, bytes(32))


def test_data_key_accepts_64_printable_characters() -> None:
    key_id = "".join(chr(code) for code in range(0x20, 0x60))

    assert DataKey(key_id, bytes(32)).key_id == key_id


def test_data_key_and_context_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        KEY.material = bytes(32)  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        CONTEXT.row_id = "cus_other"  # type: ignore[misc]
    assert not hasattr(CONTEXT, "__dict__")


def test_field_context_refuses_non_str_fields() -> None:
    with pytest.raises(TypeError, match="row_id"):
        FieldContext("tn", "customers", "email", 42)  # type: ignore[arg-type]


def test_field_context_refuses_oversized_field() -> None:
    FieldContext("tn", "customers", "notes", "r" * 0xFFFF)
    with pytest.raises(ValueError, match="row_id"):
        FieldContext("tn", "customers", "notes", "r" * 0x10000)


def test_field_context_refuses_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        FieldContext("tn\udc00", "customers", "email", "cus_1")


def test_open_sealed_refuses_wrong_argument_types() -> None:
    with pytest.raises(TypeError):
        open_sealed(KEY.material, sealed(), CONTEXT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        open_sealed(KEY, sealed(), ("tn_acme", "customers", "email"))  # type: ignore[arg-type]


def test_generate_key_material() -> None:
    first = generate_key_material()
    second = generate_key_material()

    assert len(first) == len(second) == 32
    assert first != second
    assert generate_key_material(lambda size: b"\x07" * size) == b"\x07" * 32


def test_generate_key_material_refuses_short_rng() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        generate_key_material(lambda size: bytes(size // 2))


# --- fuzzing (hypothesis): the ciphertext parser --------------------------------------------------
# Whatever bytes arrive where a sealed value is expected, the only outcome is the plaintext of an
# untouched value or the one opaque DecryptionError: no other exception, no partial plaintext.

from hypothesis import given  # noqa: E402  (kept beside the tests that use it)
from hypothesis import strategies as st  # noqa: E402

SEALED = seal(KEY, PLAINTEXT, CONTEXT, rng=lambda size: NONCE[:size])


@given(blob=st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_only_ever_raise_the_opaque_error(blob: bytes) -> None:
    with pytest.raises(DecryptionError) as caught:
        open_sealed(KEY, blob, CONTEXT)
    assert str(caught.value) == OPAQUE_MESSAGE
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    try:
        key_id = sealed_key_id(blob)
    except DecryptionError:
        return
    assert 1 <= len(key_id) <= 64


@given(data=st.data())
def test_fuzz_every_mutation_of_a_sealed_value_is_refused(data: st.DataObject) -> None:
    blob = bytearray(SEALED)
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if mutation == "flip":
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    elif mutation == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=32))
    else:
        start = data.draw(st.integers(0, len(blob) - 1))
        replacement = data.draw(st.binary(min_size=1, max_size=8))
        assume_changed = bytes(blob[start : start + len(replacement)]) != replacement
        if not assume_changed:
            replacement = bytes(byte ^ 0xFF for byte in replacement)
        blob[start : start + len(replacement)] = replacement
    assert bytes(blob) != SEALED
    with pytest.raises(DecryptionError):
        open_sealed(KEY, bytes(blob), CONTEXT)


@given(
    tenant=st.text(max_size=12),
    table=st.text(max_size=12),
    column=st.text(max_size=12),
    row=st.text(max_size=12),
)
def test_fuzz_any_other_context_is_refused(tenant: str, table: str, column: str, row: str) -> None:
    try:
        other = FieldContext(tenant, table, column, row)
    except ValueError:  # lone surrogates are refused when the context is built
        return
    if other == CONTEXT:
        assert open_sealed(KEY, SEALED, other) == PLAINTEXT
    else:
        with pytest.raises(DecryptionError):
            open_sealed(KEY, SEALED, other)
