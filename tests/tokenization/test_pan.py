"""Known-answer and negative tests for card-number detection and card-data scans.

Every card number here is a public gateway TEST number; none is a real card.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from tokenization import (
    CARD_FIELD_NAMES,
    PAN_REDACTION,
    contains_card_number,
    find_card_data,
    find_card_numbers,
    is_card_field_name,
    luhn_valid,
    normalize_field_name,
    redact_card_numbers,
    scan_query_params,
)

TEST_CARDS = {
    "visa": "4242424242424242",
    "visa_debit": "4000056655665556",
    "mastercard": "5555555555554444",
    "mastercard_2_series": "2223003122003222",
    "amex": "378282246310005",
    "discover": "6011111111111117",
    "diners": "3056930009020004",
    "diners_14": "36227206271667",
    "jcb": "3566002020360505",
    "unionpay": "6200000000000005",
}
VISA = TEST_CARDS["visa"]
VISA_SPACED = "4242 4242 4242 4242"
FULL_WIDTH_VISA = "".join(chr(0xFF10 + int(digit)) for digit in VISA)


def with_check_digit(body: str) -> str:
    """``body`` followed by the digit that makes it Luhn-valid."""
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always works")


# --- luhn_valid -----------------------------------------------------------------------


@pytest.mark.parametrize("number", TEST_CARDS.values())
def test_luhn_accepts_test_cards(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", TEST_CARDS.values())
def test_luhn_rejects_a_changed_check_digit(number: str) -> None:
    changed = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert not luhn_valid(changed)


@pytest.mark.parametrize("text", ["", "4242 4242 4242 4242", "4242-4242", "42a2", "-42"])
def test_luhn_refuses_non_digits_without_raising(text: str) -> None:
    assert not luhn_valid(text)


def test_luhn_reads_unicode_decimal_digits() -> None:
    assert luhn_valid(FULL_WIDTH_VISA)


# --- find_card_numbers: positives -----------------------------------------------------


@pytest.mark.parametrize("number", TEST_CARDS.values(), ids=TEST_CARDS.keys())
def test_every_brand_is_found(number: str) -> None:
    assert find_card_numbers(number) == [(0, len(number))]


@pytest.mark.parametrize("number", TEST_CARDS.values(), ids=TEST_CARDS.keys())
@pytest.mark.parametrize("separator", [" ", "-"])
def test_grouped_numbers_are_found(number: str, separator: str) -> None:
    grouped = separator.join(number[i : i + 4] for i in range(0, len(number), 4))
    assert find_card_numbers(grouped) == [(0, len(grouped))]


@pytest.mark.parametrize(
    "written",
    [
        "3782 822463 10005",  # American Express 4-6-5
        "3622 720627 1667",  # Diners 4-6-4
        "4242\u00a04242\u00a04242\u00a04242",  # no-break spaces
        "4242\u202f4242\u202f4242\u202f4242",  # narrow no-break spaces (French style)
        "4242\u20134242\u20134242\u20134242",  # en dashes
        "4 2 4 2 4 2 4 2 4 2 4 2 4 2 4 2",
        FULL_WIDTH_VISA,
    ],
)
def test_other_groupings_are_found(written: str) -> None:
    assert find_card_numbers(written) == [(0, len(written))]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        (f"card:{VISA}.", VISA),
        (f"x{VISA}y", VISA),
        (f"Paid with {VISA_SPACED}, thanks!", VISA_SPACED),
        (f'{{"note":"{TEST_CARDS["amex"]}"}}', TEST_CARDS["amex"]),
        (f"(tel) {TEST_CARDS['jcb']}\n", TEST_CARDS["jcb"]),
        (f"ref 2026 {VISA_SPACED}", VISA_SPACED),  # inside a 20-digit run
        (f"{VISA_SPACED} 7", VISA_SPACED),
        (f"id 1234567890123456789012345 {VISA_SPACED}", VISA_SPACED),
    ],
)
def test_numbers_inside_text_are_found_with_exact_spans(text: str, number: str) -> None:
    start = text.index(number)
    assert find_card_numbers(text) == [(start, start + len(number))]


def test_several_numbers_give_sorted_spans() -> None:
    amex, jcb = TEST_CARDS["amex"], TEST_CARDS["jcb"]
    text = f"first {VISA} then {amex}; also {jcb}"
    spans = find_card_numbers(text)
    assert [text[start:end] for start, end in spans] == [VISA, amex, jcb]


def test_overlapping_hits_are_merged() -> None:
    text = f"{VISA_SPACED} 4242"  # two overlapping Luhn-valid 16-digit windows
    assert find_card_numbers(text) == [(0, len(text))]


def test_adjacent_numbers_stay_separate() -> None:
    text = f"{VISA} {VISA}"
    assert find_card_numbers(text) == [(0, 16), (17, 33)]


@pytest.mark.parametrize(
    "body",
    [
        "424242424242",  # Visa, 13 digits
        "424242424242424242",  # Visa, 19 digits
        "220400000000000",  # Mir, 16 digits
        "305693000902000400",  # Diners, 19 digits
        "500000000000",  # Maestro, 13 digits
        "622126000000000",  # Discover / UnionPay, 16 digits
    ],
)
def test_other_brand_lengths_are_found(body: str) -> None:
    number = with_check_digit(body)
    assert find_card_numbers(number) == [(0, len(number))]


# --- find_card_numbers: negatives -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424241",  # Luhn-invalid
        "4242 4242 4242 4241",
        with_check_digit("999999999999999"),  # unknown IIN (9)
        with_check_digit("123456789012345"),  # unknown IIN (1)
        with_check_digit("700000000000000"),  # unknown IIN (7)
        with_check_digit("80000000000000"),  # unknown IIN (8)
        with_check_digit("42424242424242"),  # Visa with 15 digits
        with_check_digit("3782822463100"),  # American Express with 14 digits
        with_check_digit("55555555555544"),  # Mastercard with 15 digits
        with_check_digit("22000000000000"),  # Mir with 15 digits
        with_check_digit("42424242424"),  # too short (12 digits)
        with_check_digit("4242424242424242424"),  # 20 digits unseparated: an id
        "1234567890123456789012345",  # 25-digit id
        f"{VISA}0000",  # a card glued to other digits is an id
        "+33 6 12 34 56 78",
        "+1 (415) 555-0100",
        "06 12 34 56 78",
        "2026-01-15",
        "2026-01-15T10:30:00Z",
        "from 2026-01-01 to 2026-12-31",
        "550e8400-e29b-41d4-a716-446655440000",
        "42424242-4242-4242-a716-446655440000",  # a UUID with a Luhn-valid Visa inside
        "INV-2026-000123",
        "CN-2026-000001",
        "1 234 567,89 €",
        "€1,234,567.89",
        "amount=123456789 currency=EUR",
        "4242  4242  4242  4242",  # double separators are not a grouping
        "4242.4242.4242.4242",
        "",
    ],
)
def test_lookalikes_are_not_card_numbers(text: str) -> None:
    assert find_card_numbers(text) == []
    assert not contains_card_number(text)
    assert redact_card_numbers(text) == text


def test_uuid_exemption_covers_only_uuids() -> None:
    assert contains_card_number("42424242-4242-4242")


# --- redact_card_numbers --------------------------------------------------------------


def test_redaction_keeps_nothing_of_the_number() -> None:
    redacted = redact_card_numbers(f"pay with {VISA_SPACED} now")
    assert redacted == f"pay with {PAN_REDACTION} now"
    assert "4242" not in redacted


def test_redaction_replaces_every_number() -> None:
    text = f"{VISA}/{TEST_CARDS['amex']}-x-{TEST_CARDS['diners_14']}"
    redacted = redact_card_numbers(text)
    assert redacted == f"{PAN_REDACTION}/{PAN_REDACTION}-x-{PAN_REDACTION}"


def test_scanning_a_megabyte_is_fast() -> None:
    chunk = (
        "Invoice INV-2026-000123 for 2 nights, 1 234,50 EUR, booked 2026-01-15; "
        "call +33 6 12 34 56 78; id 550e8400-e29b-41d4-a716-446655440000. "
    )
    text = chunk * (1_000_000 // len(chunk)) + VISA_SPACED
    digits = "1" * 1_000_000
    started = time.perf_counter()
    spans = find_card_numbers(text)
    find_card_numbers(digits)
    elapsed = time.perf_counter() - started
    assert spans == [(len(text) - len(VISA_SPACED), len(text))]
    assert elapsed < 1.0


# --- field names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "card_number",
        "cardNumber",
        "Card-Number",
        "card number",
        "CARDNUMBER",
        "card_no",
        "cc_number",
        "ccnum",
        "pan",
        "PAN",
        "cvc",
        "CVV",
        "cvv2",
        "cvc2",
        "cid",
        "security_code",
        "track1",
        "track2",
        "track_data",
        "magstripe",
    ],
)
def test_card_field_names_match_after_normalization(name: str) -> None:
    assert is_card_field_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "exp_month",
        "exp_year",
        "last4",
        "brand",
        "fingerprint",
        "payment_method",
        "panel",
    ],
)
def test_card_summary_fields_are_allowed(name: str) -> None:
    assert not is_card_field_name(name)


def test_card_field_names_are_stored_normalized() -> None:
    assert all(normalize_field_name(name) == name for name in CARD_FIELD_NAMES)


# --- find_card_data -------------------------------------------------------------------


def test_clean_invoice_payload_has_no_card_data() -> None:
    payload = {
        "customer_id": "cus_123",
        "booking_ref": "BK-2026-0042",
        "currency": "EUR",
        "lines": [
            {
                "description": "Haircut",
                "quantity": 1,
                "unit_amount": 4500,
                "tax_rate": 2000,
            },
            {"description": "Room 12, 2026-01-15", "quantity": 2, "unit_amount": 12000},
        ],
        "payment_method": {
            "brand": "visa",
            "last4": "4242",
            "exp_month": 12,
            "exp_year": 2030,
        },
        "metadata": {
            "id": "550e8400-e29b-41d4-a716-446655440000",
            "flag": True,
            "x": None,
        },
        "total": 28500.0,
        "big": 10**40,
    }
    assert find_card_data(payload) == []


def test_card_data_paths_in_document_order() -> None:
    payload = {
        "lines": [
            {"description": "Massage"},
            {"description": f"paid by card {VISA_SPACED}"},
        ],
        "address": {"line1": f"12 rue X {TEST_CARDS['amex']}"},
        "card_number": None,
        "metadata": {"CVC": "123", "nested": [[TEST_CARDS["jcb"]]]},
    }
    assert find_card_data(payload) == [
        "$.lines[1].description",
        "$.address.line1",
        "$.card_number",
        "$.metadata.CVC",
        "$.metadata.nested[0][0]",
    ]


@pytest.mark.parametrize(
    "number",
    [int(VISA), float(VISA), Decimal(VISA), -int(VISA), int(TEST_CARDS["amex"])],
)
def test_json_numbers_that_spell_cards_are_found(number: float | Decimal) -> None:
    assert find_card_data({"amount": number}) == ["$.amount"]


@pytest.mark.parametrize(
    "number",
    [
        4242424242424241,
        float("inf"),
        float("nan"),
        Decimal("NaN"),
        Decimal("1e999999"),
        4242424242424242.5,
        True,
        10**5000,
    ],
    ids=[
        "luhn-invalid",
        "inf",
        "nan",
        "decimal-nan",
        "huge-decimal",
        "fraction",
        "bool",
        "huge",
    ],
)
def test_other_numbers_are_not_cards(number: float | Decimal) -> None:
    assert find_card_data([number]) == []


def test_keys_that_are_card_numbers_are_reported_redacted() -> None:
    paths = find_card_data({VISA: {"note": "x"}, f"n {VISA_SPACED}": 1})
    assert paths == [f'$["{PAN_REDACTION}"]', f'$["n {PAN_REDACTION}"]']
    assert not any("4242" in path for path in paths)


def test_nested_paths_under_a_card_key_are_redacted_too() -> None:
    assert find_card_data({"x y": {VISA: TEST_CARDS["amex"]}}) == [f'$["x y"]["{PAN_REDACTION}"]']


@pytest.mark.parametrize(
    ("key", "path"),
    [
        (f"card{VISA}", f'$["card{PAN_REDACTION}"]'),
        (f"x_{VISA}_y", f'$["x_{PAN_REDACTION}_y"]'),
        (f"_{TEST_CARDS['amex']}", f'$["_{PAN_REDACTION}"]'),
    ],
)
def test_identifier_keys_holding_a_card_number_are_quoted_and_redacted(key: str, path: str) -> None:
    # Found by the Atheris harness (tests/fuzz/fuzz_pan.py): such keys used to be reported as
    # ``$.card4242…``, so the number reached the 422 answer and the audit chain.
    assert find_card_data({key: {"note": "x"}, "ok": 1}) == [path]
    assert find_card_data({"outer": [{key: None}]}) == [f"$.outer[0]{path[1:]}"]


def test_custom_root_path_and_tuples() -> None:
    assert find_card_data((1, VISA), path="body") == ["body[1]"]


def test_top_level_string() -> None:
    assert find_card_data(VISA_SPACED) == ["$"]


def test_deep_nesting_does_not_hit_the_recursion_limit() -> None:
    value: object = VISA
    for _ in range(10_000):
        value = [value]
    assert find_card_data(value) == ["$" + "[0]" * 10_000]


@pytest.mark.parametrize("value", [{1: "x"}, {"a": {1, 2}}, [b"4242"], object()])
def test_unknown_types_are_refused_not_skipped(value: object) -> None:
    with pytest.raises(TypeError) as caught:
        find_card_data(value)
    assert "4242" not in str(caught.value)


# --- scan_query_params ----------------------------------------------------------------


def test_query_params() -> None:
    params = [
        ("q", f"card {VISA_SPACED}"),
        ("page", "2"),
        ("cvv", ""),
        ("from", "2026-01-01"),
        ("q", VISA),
        (f"x{VISA}", "1"),
        ("cardNumber", "nope"),
    ]
    assert scan_query_params(params) == [
        "query:q",
        "query:cvv",
        f"query:x{PAN_REDACTION}",
        "query:cardNumber",
    ]


def test_clean_query_params() -> None:
    params = [
        ("from", "2026-01-01"),
        ("to", "2026-12-31"),
        ("k", "5"),
        ("format", "csv"),
    ]
    assert scan_query_params(params) == []


# --- fuzzing (hypothesis): no crash, no false negative on generated card numbers ----------------
#
# Numbers are generated from every IIN range the detector knows, with every allowed length, a
# valid Luhn check digit, any grouping, any separator and ASCII or full-width digits, then hidden
# in text that cannot glue digits to them. The generator (tests/card_numbers.py) is shared with the
# Atheris harness tests/fuzz/fuzz_pan.py. Set HYPOTHESIS_SEED (or pass --hypothesis-seed) to
# rerun with new seeds; the profile's example count is in tests/conftest.py.

from hypothesis import given  # noqa: E402  (kept beside the tests that use it)
from hypothesis import strategies as st  # noqa: E402

from ..card_numbers import NOT_NEXT_TO_A_NUMBER, generate_card_number, write_card_number  # noqa: E402

# Text around a number: no digits of any script, no hex letters (no UUID can form), no separators.
_SURROUNDING = st.text(
    alphabet=st.characters(blacklist_categories=("Nd", "Cs"), blacklist_characters=NOT_NEXT_TO_A_NUMBER),
    max_size=40,
)


@st.composite
def generated_card_numbers(draw: st.DrawFn) -> str:
    """A number from every IIN range and allowed length (the generator is in tests/card_numbers.py)."""
    return generate_card_number(lambda low, high: draw(st.integers(low, high)))


@st.composite
def written_card_numbers(draw: st.DrawFn) -> str:
    """A generated number as a person or a program might write it."""

    def choose(low: int, high: int) -> int:
        return draw(st.integers(low, high))

    return write_card_number(choose, generate_card_number(choose))


@given(before=_SURROUNDING, number=written_card_numbers(), after=_SURROUNDING)
def test_fuzz_every_generated_card_number_is_found_and_redacted(before: str, number: str, after: str) -> None:
    text = before + number + after
    assert find_card_numbers(text) == [(len(before), len(before) + len(number))]
    redacted = redact_card_numbers(text)
    assert redacted == before + PAN_REDACTION + after
    assert find_card_data({"note": text, "nested": [{"x": text}]}) == ["$.note", "$.nested[0].x"]


@given(number=generated_card_numbers(), key=st.text(max_size=20))
def test_fuzz_card_numbers_in_json_numbers_and_keys_are_found(number: str, key: str) -> None:
    assert find_card_data({key or "k": int(number)}) != []
    assert find_card_data({number: "value"}) != []
    identifier_paths = find_card_data({f"k{number}": "value"})  # $.k4242… would carry the number
    assert identifier_paths and not any(contains_card_number(path) for path in identifier_paths)


@given(text=st.text(max_size=400))
def test_fuzz_arbitrary_text_never_crashes_and_redaction_is_a_fixed_point(text: str) -> None:
    spans = find_card_numbers(text)
    assert spans == sorted(spans)
    assert all(0 <= start < end <= len(text) for start, end in spans)
    redacted = redact_card_numbers(text)
    assert not contains_card_number(redacted)
    assert redact_card_numbers(redacted) == redacted
    assert contains_card_number(text) == bool(spans)


@given(digits=st.text(alphabet="0123456789 -", max_size=200))
def test_fuzz_digit_soup_leaves_no_card_number_after_redaction(digits: str) -> None:
    assert not contains_card_number(redact_card_numbers(digits))
