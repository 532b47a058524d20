"""Keyed pseudonyms: known-answer vectors, purpose separation, and one negative test per bad input."""

from __future__ import annotations

import re

import pytest

from anonymize import InvalidKey, Pseudonymizer, keyed_pseudonym

KEY = bytes(range(32))


def test_known_answer_vectors() -> None:
    # HMAC-SHA256(HMAC-SHA256(KEY, "veilbill/anonymize/pseudonym/v1\0" + purpose), value)
    assert keyed_pseudonym(KEY, "cus_123", purpose="customers") == (
        "fbc9cab3d6127d93cbdc047bc2f2fdf2d3921cc98e3e64bf286df4d531577c17"
    )
    assert keyed_pseudonym(KEY, "cus_123", purpose="customers", encoding="base32") == (
        "7pe4vm6wcj6zhs64ar54f4x56ljzehgjry7gjpzinx2nkmkxpqlq"
    )
    assert keyed_pseudonym(KEY, "Zoë", purpose="région") == (
        "4edc7bfee688d8d9428f65d6541ed3cd621dbc0f5cfc0ac088a42d54307ce315"
    )


def test_pseudonyms_are_deterministic_and_separated_by_purpose_and_key() -> None:
    first = keyed_pseudonym(KEY, "cus_123", purpose="customers")
    assert keyed_pseudonym(KEY, "cus_123", purpose="customers") == first
    assert keyed_pseudonym(KEY, "cus_123", purpose="invoices") != first
    assert keyed_pseudonym(bytes(32), "cus_123", purpose="customers") != first
    assert keyed_pseudonym(KEY, "cus_124", purpose="customers") != first


def test_formats() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", keyed_pseudonym(KEY, "x", purpose="p"))
    assert re.fullmatch(r"[a-z2-7]{52}", keyed_pseudonym(KEY, "x", purpose="p", encoding="base32"))


def test_pseudonymizer_derives_once_and_never_shows_its_key() -> None:
    pseudonymize = Pseudonymizer(KEY, purpose="customers")
    assert pseudonymize("cus_123") == keyed_pseudonym(KEY, "cus_123", purpose="customers")
    assert KEY.hex() not in repr(pseudonymize)
    assert "redacted" in repr(pseudonymize)


@pytest.mark.parametrize(
    ("key", "purpose", "encoding"),
    [
        (b"short", "p", "hex"),
        (bytes(31), "p", "hex"),
        ("not bytes" * 8, "p", "hex"),
        (KEY, "", "hex"),
        (KEY, "p", "b64"),
    ],
    ids=["tiny-key", "31-byte-key", "str-key", "empty-purpose", "unknown-encoding"],
)
def test_bad_inputs_are_refused(key: bytes, purpose: str, encoding: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        keyed_pseudonym(key, "value", purpose=purpose, encoding=encoding)  # type: ignore[arg-type]
    assert "value" not in str(caught.value)
