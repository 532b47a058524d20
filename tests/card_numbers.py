"""Generated card numbers for the fuzz tests, shared by hypothesis and Atheris.

Numbers come from every IIN range the detector knows (``tokenization._pan._IIN_RANGES``), with
every length that range allows and a valid Luhn check digit; they are then written as a person or a
program might: ASCII or full-width digits, cut into groups of any size, joined by any separator the
detector accepts.

Every choice goes through one ``choose(low, high) -> int`` callable (both bounds inclusive), so the
same generator runs on hypothesis (``draw(st.integers(low, high))``: shrinking works as usual) and on
Atheris (``FuzzedDataProvider.ConsumeIntInRange``: the fuzzer steers every choice).

Text put right next to a number must not glue to it: :func:`may_touch_a_number` tells which
characters are safe there (no digit of any script, no separator, no hexadecimal letter, since a
hexadecimal neighbour could make the number part of a canonical UUID, which the detector exempts on
purpose).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from itertools import pairwise
from typing import Final

from tokenization import luhn_valid
from tokenization._pan import _IIN_RANGES, _SEPARATORS

__all__ = [
    "IIN_RANGES",
    "NOT_NEXT_TO_A_NUMBER",
    "SEPARATOR_CHARS",
    "Choose",
    "generate_card_number",
    "luhn_complete",
    "may_touch_a_number",
    "write_card_number",
]

Choose = Callable[[int, int], int]
"""``choose(low, high)``: an integer in ``[low, high]``, picked by the fuzzer."""

IIN_RANGES: Final = _IIN_RANGES
SEPARATOR_CHARS: Final = _SEPARATORS.replace("\\", "")
NOT_NEXT_TO_A_NUMBER: Final = SEPARATOR_CHARS + "0123456789abcdefABCDEF"
"""Characters (besides every Unicode decimal digit) that may not touch a generated number."""

MAX_GROUP_CUTS: Final = 6
_FULL_WIDTH_ZERO: Final = 0xFF10


def luhn_complete(body: str) -> str:
    """``body`` (ASCII digits) followed by the check digit that makes it Luhn-valid."""
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # these are doubled once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return body + str((10 - total % 10) % 10)


def generate_card_number(choose: Choose) -> str:
    """A Luhn-valid number (ASCII digits) in one IIN range, with a length that range allows."""
    low, high, lengths = IIN_RANGES[choose(0, len(IIN_RANGES) - 1)]
    prefix = str(choose(int(low), int(high))).zfill(len(low))
    allowed = sorted(lengths)
    length = allowed[choose(0, len(allowed) - 1)]
    middle = "".join(str(choose(0, 9)) for _ in range(length - len(prefix) - 1))
    number = luhn_complete(prefix + middle)
    assert luhn_valid(number) and len(number) == length, "the generator itself is broken"
    return number


def write_card_number(choose: Choose, number: str) -> str:
    """``number`` in ASCII or full-width digits, cut into up to 7 groups joined by any separators."""
    if choose(0, 1):
        number = "".join(chr(_FULL_WIDTH_ZERO + int(digit)) for digit in number)
    cuts = sorted({choose(1, len(number) - 1) for _ in range(choose(0, MAX_GROUP_CUTS))})
    bounds = [0, *cuts, len(number)]
    groups = [number[start:end] for start, end in pairwise(bounds)]
    written = groups[0]
    for group in groups[1:]:
        written += SEPARATOR_CHARS[choose(0, len(SEPARATOR_CHARS) - 1)] + group
    return written


def may_touch_a_number(char: str) -> bool:
    """Whether ``char`` can stand right before or after a number without hiding it."""
    return unicodedata.category(char) != "Nd" and char not in NOT_NEXT_TO_A_NUMBER
