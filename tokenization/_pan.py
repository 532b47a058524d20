"""Detection and redaction of card numbers (PANs) and of card field names.

This is the detector behind the PAN guard (request bodies and query strings are refused
when it fires), the log redaction pipeline and the stored-data scope scan. It favours
recall over precision: a false positive costs one refused request or one over-redacted
log line; a false negative puts card data in our process, logs or database.

What counts as a card number
----------------------------
A *run* is a maximal sequence of digit groups joined by exactly one separator: a space,
a hyphen, or a look-alike (no-break space U+00A0, narrow no-break space U+202F, thin
space U+2009, hyphen U+2010, non-breaking hyphen U+2011, en dash U+2013). Digits are any
Unicode decimal digits, so full-width digits typed through an IME are caught too. A
window of *whole* groups of a run is a card number when:

- it holds 13 to 19 digits,
- it passes the Luhn check, and
- its prefix falls in a known IIN range that allows that length (:data:`_IIN_RANGES`).

Deliberate decisions:

- **A card number is never glued to other digits.** Windows start and end at group
  boundaries, so an unseparated run of more than 19 digits (a 25-digit database id) is
  not a card number and is not searched for embedded ones. A number next to letters or
  punctuation (``"card:4242…."``, ``"x4242…y"``) is found.
- **Windows, not whole runs.** ``"ref 2026 4242 4242 4242 4242"`` is one 20-digit run,
  yet the card in it is found, because every window of whole groups is tried.
- **Canonical UUIDs are skipped.** A window overlapping an 8-4-4-4-12 hexadecimal UUID
  is ignored: about one random UUID in 40,000 would otherwise hold a Luhn-valid 16-digit
  window, and ids are everywhere in request bodies. This guards against accidental
  leaks, not against a client hiding a number on purpose (who could as well base64 it).
- **12-digit Maestro numbers are not searched**: too many ordinary numbers look alike.
- Overlapping hits are merged, so a span never cuts a number in half.

Cost: one linear regular-expression pass (no nested quantifiers, so no catastrophic
backtracking) plus constant work per window, as Luhn sums come from prefix sums over
each run. A megabyte of prose scans in tens of milliseconds; a megabyte made only of
digit groups (the worst case) in about half a second. Nothing here does I/O; the
patterns are compiled at import.

Nothing in this module returns, logs or stores a matched number: it returns spans and
JSON paths, and a path is itself redacted when a key contains a number.
"""

from __future__ import annotations

import functools
import json
import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from decimal import Decimal
from itertools import accumulate
from typing import Final

__all__ = [
    "CARD_FIELD_NAMES",
    "PAN_REDACTION",
    "contains_card_number",
    "find_card_data",
    "find_card_numbers",
    "is_card_field_name",
    "luhn_valid",
    "normalize_field_name",
    "redact_card_numbers",
    "scan_query_params",
]

PAN_REDACTION: Final = "[REDACTED PAN]"
"""What :func:`redact_card_numbers` puts in place of a number, whatever its length."""

_MIN_LENGTH: Final = 13
_MAX_LENGTH: Final = 19

_SEPARATORS: Final = " \u00a0\u202f\u2009\\-\u2010\u2011\u2013"
_DIGIT_RUN_RE: Final = re.compile(rf"\d+(?:[{_SEPARATORS}]\d+)*")
_SEPARATOR_RE: Final = re.compile(f"[{_SEPARATORS}]")
_HEX: Final = "[0-9A-Fa-f]"
_UUID_RE: Final = re.compile(
    rf"(?<![0-9A-Za-z]){_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}(?![0-9A-Za-z])"
)

# ASCII digit -> its value, and -> the Luhn value of the doubled digit.
_VALUE: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def _lengths(low: int, high: int) -> frozenset[int]:
    return frozenset(range(low, high + 1))


# (lowest prefix, highest prefix, allowed lengths): bounds inclusive, of equal width.
_IIN_RANGES: Final[tuple[tuple[str, str, frozenset[int]], ...]] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),  # American Express
    ("6011", "6011", _lengths(16, 19)),  # Discover
    ("644", "649", _lengths(16, 19)),  # Discover
    ("65", "65", _lengths(16, 19)),  # Discover
    ("622126", "622925", _lengths(16, 19)),  # Discover (co-branded UnionPay)
    ("300", "305", _lengths(14, 19)),  # Diners Club
    ("36", "36", _lengths(14, 19)),  # Diners Club
    ("38", "39", _lengths(14, 19)),  # Diners Club
    ("3528", "3589", _lengths(16, 19)),  # JCB
    ("62", "62", _lengths(16, 19)),  # UnionPay
    ("50", "50", _lengths(_MIN_LENGTH, 19)),  # Maestro
    ("56", "69", _lengths(_MIN_LENGTH, 19)),  # Maestro
    ("2200", "2204", _lengths(16, 19)),  # Mir
)

_IIN_FIRST_DIGITS: Final = "".join(sorted({low[0] for low, _, _ in _IIN_RANGES}))
_IIN_PREFIX_WIDTH: Final = 4


@functools.cache
def _card_lengths(prefix: str) -> tuple[int, ...]:
    """Lengths, ascending, allowed for a number starting with ``prefix`` (4 digits).

    Ranges are compared on at most four digits, which bounds this cache to 10,000
    entries. The one longer range (Discover 622126-622925) is thereby widened to
    6221-6229, which changes nothing: Maestro 56-69 already allows 13 to 19 there.
    """
    allowed: set[int] = set()
    for low, high, lengths in _IIN_RANGES:
        width = min(len(low), _IIN_PREFIX_WIDTH)
        if low[:width] <= prefix[:width] <= high[:width]:
            allowed |= lengths
    return tuple(sorted(allowed))


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` passes the Luhn (mod 10) check.

    ``digits`` must be decimal digits only (any Unicode decimal digit counts as its
    value); anything else, separators and the empty string included, gives ``False``.
    """
    if not digits or not digits.isdecimal():
        return False
    if not digits.isascii():
        digits = "".join(str(int(char)) for char in digits)
    reversed_digits = digits[::-1].encode("ascii")
    plain = reversed_digits[0::2].translate(_VALUE)
    doubled = reversed_digits[1::2].translate(_DOUBLED)
    return (sum(plain) + sum(doubled)) % 10 == 0


def _to_ascii_digits(digits: str) -> str:
    if digits.isascii():
        return digits
    return "".join(str(int(char)) for char in digits)


def _uuid_spans(text: str) -> list[tuple[int, int]]:
    if "-" not in text:
        return []
    return [match.span() for match in _UUID_RE.finditer(text)]


def _overlaps(spans: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    """Whether [start, end) overlaps ``spans`` (sorted, disjoint, starts ``starts``)."""
    index = bisect_left(starts, end)
    return index > 0 and spans[index - 1][1] > start


def _windows_in_run(run: str, offset: int) -> list[tuple[int, int]]:
    """Spans of the card numbers made of whole digit groups of ``run``.

    ``run`` starts at ``offset`` in the text. Every separator is one character, so digit
    ``d`` (counted without separators) of group ``g`` sits at ``offset + d + g``.
    """
    parts = _SEPARATOR_RE.split(run)
    digits = _to_ascii_digits("".join(parts))
    digit_count = len(digits)
    if digit_count < _MIN_LENGTH:
        return []
    # group_at[d]: index of the group starting at digit offset d; -1 inside a group.
    bounds = [0, *accumulate(map(len, parts))]
    group_at = [-1] * (digit_count + 1)
    for index, bound in enumerate(bounds):
        group_at[bound] = index
    # Luhn by prefix sums. A number's last digit is plain and every second one leftwards
    # is doubled, so a window ending at an even offset doubles its odd offsets and vice
    # versa. doubled_odd[k] sums digits 0..k-1, odd offsets doubled; doubled_even alike.
    raw = digits.encode("ascii")
    plain = list(raw.translate(_VALUE))
    doubled = list(raw.translate(_DOUBLED))
    odd_doubled = plain.copy()
    odd_doubled[1::2] = doubled[1::2]
    even_doubled = doubled.copy()
    even_doubled[1::2] = plain[1::2]
    doubled_odd = [0, *accumulate(odd_doubled)]
    doubled_even = [0, *accumulate(even_doubled)]

    found: list[tuple[int, int]] = []
    for first, begin in enumerate(bounds[:-1]):
        if digit_count - begin < _MIN_LENGTH:
            break
        if digits[begin] not in _IIN_FIRST_DIGITS:
            continue
        for length in _card_lengths(digits[begin : begin + _IIN_PREFIX_WIDTH]):
            stop = begin + length
            if stop > digit_count:
                break
            after = group_at[stop]
            if after < 0:  # the window would end inside a group
                continue
            table = doubled_odd if (stop - 1) % 2 == 0 else doubled_even
            if (table[stop] - table[begin]) % 10 == 0:
                found.append((offset + begin + first, offset + stop + after - 1))
    return found


def find_card_numbers(text: str) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of the card numbers in ``text``, sorted, non-overlapping.

    The module docstring says what counts as a card number. ``text[start:end]`` is the
    number as written, separators included.
    """
    uuids = _uuid_spans(text)
    uuid_starts = [start for start, _ in uuids]
    merged: list[tuple[int, int]] = []
    for run in _DIGIT_RUN_RE.finditer(text):
        run_start, run_end = run.span()
        if run_end - run_start < _MIN_LENGTH:
            continue
        # Hits come sorted by start, then by end, so merging needs no sort.
        for start, end in _windows_in_run(run.group(), run_start):
            if uuids and _overlaps(uuids, uuid_starts, start, end):
                continue
            if merged and start < merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
    return merged


def contains_card_number(text: str) -> bool:
    """Whether :func:`find_card_numbers` finds at least one number in ``text``."""
    return bool(find_card_numbers(text))


def redact_card_numbers(text: str) -> str:
    """``text`` with every card number replaced by :data:`PAN_REDACTION`.

    Nothing of a number survives: not the last four digits, not the BIN, not its length.
    """
    spans = find_card_numbers(text)
    if not spans:
        return text
    pieces: list[str] = []
    position = 0
    for start, end in spans:
        pieces.append(text[position:start])
        pieces.append(PAN_REDACTION)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


CARD_FIELD_NAMES: Final[frozenset[str]] = frozenset(
    {
        # The number itself.
        "cardnumber",
        "cardno",
        "cardnum",
        "ccnumber",
        "ccnum",
        "creditcardnumber",
        "pan",
        "primaryaccountnumber",
        # Card verification codes, never storable after authorization (PCI DSS 3.3.1.2).
        "cvc",
        "cvv",
        "cvv2",
        "cvc2",
        "cid",
        "csc",
        "securitycode",
        "cardcvc",
        "cardcvv",
        # Magnetic stripe / chip data.
        "track1",
        "track2",
        "trackdata",
        "magstripe",
    }
)
"""Field names that announce card data, in :func:`normalize_field_name` form.

Expiry month/year, last 4 and brand are legitimate card summary fields: deliberately
absent. ``cid`` (the American Express code) also reads as "customer id" or "correlation
id" in some APIs; it is kept, so such clients must rename the field.
"""

_FIELD_NAME_NOISE: Final = str.maketrans("", "", "-_ ")


def normalize_field_name(name: str) -> str:
    """``name`` lower-cased without ``-``, ``_`` or spaces: ``Card-No`` → ``cardno``."""
    return name.lower().translate(_FIELD_NAME_NOISE)


def is_card_field_name(name: str) -> bool:
    """Whether ``name`` (``card_number``, ``cardNumber``, ``CVC``) names card data."""
    return normalize_field_name(name) in CARD_FIELD_NAMES


_MAX_CARD_INTEGER: Final = 10**_MAX_LENGTH
_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _number_is_card(value: int | float | Decimal) -> bool:
    """Whether a JSON number's integral value spells a card number.

    Floats above 2**53 lost digits in decoding; their integral value is checked anyway.
    Non-integral and non-finite numbers are not card numbers.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if isinstance(value, Decimal) and not value.is_finite():
        return False
    # Checked before converting: int(Decimal("1e999999")) or str() of a huge int (past
    # the interpreter's digit limit) never runs.
    if not -_MAX_CARD_INTEGER < value < _MAX_CARD_INTEGER:
        return False
    integral = int(value)
    if integral != value:
        return False
    return contains_card_number(str(abs(integral)))


def _key_path(parent: str, key: str, *, holds_number: bool) -> str:
    """``parent.key`` for an identifier, else ``parent["key"]``, any card number redacted.

    An identifier can hold a number too (``card4242…``): it is quoted and redacted like any other
    key, or the path would carry the number into the refusal, the audit chain and the logs.
    ``holds_number`` is what the caller's scan of ``key`` found, so the key is not scanned twice.
    """
    if not holds_number and _IDENTIFIER_RE.fullmatch(key):
        return f"{parent}.{key}"
    shown = redact_card_numbers(key) if holds_number else key
    return f"{parent}[{json.dumps(shown, ensure_ascii=False)}]"


def find_card_data(value: object, path: str = "$") -> list[str]:
    """JSON paths, in document order, where the decoded JSON ``value`` holds card data.

    Reported: a string containing a card number; an integral number (``int``,
    ``float``, ``Decimal``) whose digits are one; a key that is a card field name
    (:func:`is_card_field_name`) or contains a card number, whatever its value. Paths
    look like ``$.lines[0].description``; a key that is not an identifier, or that holds a
    card number, is quoted (``$["unit price"]``, ``$["card[REDACTED PAN]"]``) with the
    number redacted, so a path never carries a number. Values are never returned.

    The walk is iterative: nesting depth is bounded by memory, not the recursion limit.

    Raises:
        TypeError: ``value`` holds something other than dict (with str keys), list,
            tuple, str, int, float, Decimal, bool or None. An unknown type is refused
            rather than skipped, since skipping it could hide a number.
    """
    found: dict[str, None] = {}
    # (path, value, whether the key leading here is itself card data)
    stack: list[tuple[str, object, bool]] = [(path, value, False)]
    while stack:
        here, item, flagged_key = stack.pop()
        if flagged_key:
            found[here] = None
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if contains_card_number(item):
                found[here] = None
        elif isinstance(item, int | float | Decimal):
            if _number_is_card(item):
                found[here] = None
        elif isinstance(item, Mapping):
            children: list[tuple[str, object, bool]] = []
            for key, child in item.items():
                if not isinstance(key, str):
                    kind = type(key).__name__
                    raise TypeError(f"JSON object keys must be str, not {kind}")
                holds_number = contains_card_number(key)
                flagged = holds_number or is_card_field_name(key)
                children.append((_key_path(here, key, holds_number=holds_number), child, flagged))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            elements = [(f"{here}[{i}]", child, False) for i, child in enumerate(item)]
            stack.extend(reversed(elements))
        else:
            raise TypeError(f"not a decoded JSON value: {type(item).__name__}")
    return list(found)


def scan_query_params(params: Iterable[tuple[str, str]]) -> list[str]:
    """``query:<name>`` for each query parameter that names or carries card data.

    Reported: a name that is a card field name or contains a card number, and a value
    that contains a card number. Each name appears once, in first-seen order, with any
    card number in it redacted.
    """
    found: dict[str, None] = {}
    for name, value in params:
        named = is_card_field_name(name) or contains_card_number(name)
        if named or contains_card_number(value):
            found[f"query:{redact_card_numbers(name)}"] = None
    return list(found)
