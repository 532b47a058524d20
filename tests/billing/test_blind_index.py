"""Tests for billing._blind_index: normalization, determinism, separation by key and field."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from billing._blind_index import blind_index, normalize_email, normalize_ref

TENANT_KEY = bytes(range(32))
OTHER_TENANT_KEY = bytes(range(1, 33))
HEX_64 = re.compile(r"[0-9a-f]{64}")


def test_known_answer_matches_documented_construction() -> None:
    expected = hmac.new(TENANT_KEY, b"\x00\x05email" + b"ana@example.com", hashlib.sha256).hexdigest()

    assert blind_index(TENANT_KEY, "ana@example.com", field="email") == expected


def test_deterministic() -> None:
    first = blind_index(TENANT_KEY, "ana@example.com", field="email")
    second = blind_index(TENANT_KEY, "ana@example.com", field="email")

    assert first == second


@pytest.mark.parametrize(
    "variant",
    ["ana@example.com", "Ana@Example.COM", "  ana@example.com\n", "\tANA@EXAMPLE.COM "],
)
def test_email_index_ignores_case_and_surrounding_space(variant: str) -> None:
    expected = blind_index(TENANT_KEY, "ana@example.com", field="email")

    assert blind_index(TENANT_KEY, normalize_email(variant), field="email") == expected


def test_normalize_email_keeps_plus_tags_and_dots() -> None:
    assert normalize_email(" Ana.Lopez+Spa@Example.com ") == "ana.lopez+spa@example.com"
    assert normalize_email("ana+spa@example.com") != normalize_email("ana@example.com")


def test_normalize_email_casefolds_beyond_ascii() -> None:
    assert normalize_email("STRASSE@example.de") == normalize_email("stra\u00dfe@example.de")


def test_normalize_ref_strips_only() -> None:
    assert normalize_ref("  BK-00042\n") == "BK-00042"
    assert normalize_ref("bk-00042") != normalize_ref("BK-00042")


def test_differs_per_key() -> None:
    mine = blind_index(TENANT_KEY, "ana@example.com", field="email")
    theirs = blind_index(OTHER_TENANT_KEY, "ana@example.com", field="email")

    assert mine != theirs


def test_differs_per_field() -> None:
    as_email = blind_index(TENANT_KEY, "BK-1", field="email")
    as_ref = blind_index(TENANT_KEY, "BK-1", field="external_ref")

    assert as_email != as_ref


def test_field_is_length_prefixed() -> None:
    """Moving characters between field and value must not give the same index."""
    assert blind_index(TENANT_KEY, "bc", field="a") != blind_index(TENANT_KEY, "c", field="ab")


def test_different_values_differ() -> None:
    assert blind_index(TENANT_KEY, "ana@example.com", field="email") != blind_index(
        TENANT_KEY, "ben@example.com", field="email"
    )


def test_is_not_an_unkeyed_hash() -> None:
    index = blind_index(TENANT_KEY, "ana@example.com", field="email")

    assert index != hashlib.sha256(b"ana@example.com").hexdigest()
    assert index != hashlib.sha256(b"\x00\x05emailana@example.com").hexdigest()


@pytest.mark.parametrize("value", ["", "a", "ana@example.com", "x" * 10_000, "z\u00fc\U0001f95c"])
def test_constant_length_lowercase_hex(value: str) -> None:
    assert HEX_64.fullmatch(blind_index(TENANT_KEY, value, field="email"))


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33), bytearray(32)])
def test_refuses_keys_that_are_not_32_bytes(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        blind_index(key, "ana@example.com", field="email")


def test_refuses_empty_field() -> None:
    with pytest.raises(ValueError, match="field"):
        blind_index(TENANT_KEY, "ana@example.com", field="")


def test_refuses_lone_surrogate_without_echoing_value() -> None:
    with pytest.raises(ValueError, match="valid Unicode") as info:
        blind_index(TENANT_KEY, "ana\ud800@example.com", field="email")

    assert "ana" not in str(info.value)
    assert info.value.__context__ is None
