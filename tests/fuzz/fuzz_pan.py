"""Atheris harness: the card-number detector (``tokenization``'s PAN detection and redaction).

``python -m tests.fuzz.fuzz_pan -runs=N`` (or ``-max_total_time=S``); ``tests/fuzz/harness.py``
describes the command line, the corpus and how a failure is reported.

The first byte of an input picks what the rest is:

- 0, 1, 2: arbitrary text, the rest decoded as UTF-8 (with replacement: astral digits reachable),
  as Latin-1 (every byte a character, so digits and separators are dense) or as UTF-16-LE with
  lone surrogates kept (full-width digits, look-alike separators). Never raises, and: spans are
  sorted, disjoint, inside the text, made of decimal digits and separators only, start and end
  on a digit and hold at least 13 digits; ``contains`` agrees; redaction leaves no number, is a
  fixed point and changes nothing when there is none; ``find_card_data`` and
  ``scan_query_params`` report the text (as a value and as a key) exactly when it holds a number
  or is a card field name, and no path they return carries a number.
- 3: a JSON document (UTF-8): ``find_card_data`` never raises on what a JSON decoder yields, and
  no path carries a number.
- 4, 5: a generated card number (``tests/card_numbers.py``: every IIN range and length, Luhn-valid,
  ASCII or full-width digits, any grouping, any separator) between fuzzer-chosen text. That text
  is arbitrary (digits, other numbers, UUIDs) except the one character on each side touching the
  number, which cannot glue to it. No false negative: the number's exact span is among those
  found; redacting the whole text equals redacting each side around ``PAN_REDACTION`` (nothing of
  the number survives, nothing else changes); the JSON and query scans report it, as a value and
  as a key, with no number in any path.

Fault (``--fault=ascii-digits-only``): :class:`AsciiDigitsOnlyDetector`, a detector that reads only
ASCII digits, so a number typed in full-width digits slips through. The harness must fail on it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import atheris

import tokenization
import tokenization._pan

from ..card_numbers import SEPARATOR_CHARS, generate_card_number, may_touch_a_number, write_card_number
from .harness import harness_options, instrument_modules, run_harness

PAN_REDACTION = tokenization.PAN_REDACTION
_MAX_SIDE = 48
_SAFE_EDGES = ("x", ":", "(", ")", '"', "\n", "/", "=", ".", ",", "€", "é", "_", "\u0300", "\ud800")


@dataclass(frozen=True)
class Detector:
    """The detector under test: the real one, or a fault-injection double."""

    find_card_numbers: Callable[[str], list[tuple[int, int]]]
    contains_card_number: Callable[[str], bool]
    redact_card_numbers: Callable[[str], str]


REAL_DETECTOR = Detector(
    tokenization.find_card_numbers, tokenization.contains_card_number, tokenization.redact_card_numbers
)


class AsciiDigitsOnlyDetector:
    """Fault-injection double: the real detector, blind to every digit that is not ASCII.

    Each non-ASCII decimal digit is read as a letter (same length, so spans keep their positions):
    a regression any IME user would trigger with full-width digits.
    """

    @staticmethod
    def _mask(text: str) -> str:
        return "".join("x" if char.isdecimal() and not char.isascii() else char for char in text)

    @classmethod
    def detector(cls) -> Detector:
        def find(text: str) -> list[tuple[int, int]]:
            return tokenization.find_card_numbers(cls._mask(text))

        def redact(text: str) -> str:
            pieces, position = [], 0
            for start, end in find(text):
                pieces += [text[position:start], PAN_REDACTION]
                position = end
            return "".join([*pieces, text[position:]])

        return Detector(find, lambda text: bool(find(text)), redact)


FAULTS = {"ascii-digits-only": AsciiDigitsOnlyDetector.detector}
detector = REAL_DETECTOR


def _check_spans(text: str, spans: list[tuple[int, int]]) -> None:
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end <= len(text), f"span {(start, end)} out of order or bounds"
        previous_end = end
        found = text[start:end]
        assert found[0].isdecimal() and found[-1].isdecimal(), f"span {(start, end)} not on digits"
        assert all(char.isdecimal() or char in SEPARATOR_CHARS for char in found), "span holds other text"
        assert sum(char.isdecimal() for char in found) >= 13, f"span {(start, end)} under 13 digits"


def _check_paths(paths: list[str]) -> None:
    for path in paths:
        assert not detector.contains_card_number(path), f"a reported path carries a card number: {path!r}"


def check_text(text: str) -> None:
    """The invariants every text keeps (the module docstring lists them)."""
    tokenization.luhn_valid(text)
    spans = detector.find_card_numbers(text)
    _check_spans(text, spans)
    assert detector.contains_card_number(text) == bool(spans)
    redacted = detector.redact_card_numbers(text)
    assert not detector.contains_card_number(redacted), "redaction left a card number"
    assert detector.redact_card_numbers(redacted) == redacted, "redaction is not a fixed point"
    if not spans:
        assert redacted == text, "redaction changed a text without a number"
    as_value = tokenization.find_card_data({"note": text, "list": [text]})
    assert as_value == (["$.note", "$.list[0]"] if spans else []), f"find_card_data disagrees: {as_value}"
    as_key = tokenization.find_card_data({text: None})
    flagged_name = bool(spans) or tokenization.is_card_field_name(text)
    assert len(as_key) == int(flagged_name), f"find_card_data disagrees on a key: {as_key}"
    _check_paths(as_key)
    query = tokenization.scan_query_params([(text, "1"), ("q", text)])
    assert len(query) == int(flagged_name) + int(bool(spans)), f"scan_query_params disagrees: {query}"
    _check_paths(query)


def check_json(raw: bytes) -> None:
    """``find_card_data`` on whatever a JSON decoder yields: no error, no number in a path."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return
    _check_paths(tokenization.find_card_data(document))


def _side(fdp: atheris.FuzzedDataProvider) -> tuple[str, str]:
    """Arbitrary text and the one character between it and the number (``""``: nothing there)."""
    text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, _MAX_SIDE))
    if not text and fdp.ConsumeBool():
        return "", ""
    edge = fdp.ConsumeUnicode(1)[:1]
    if not (edge and may_touch_a_number(edge)):
        edge = _SAFE_EDGES[fdp.ConsumeIntInRange(0, len(_SAFE_EDGES) - 1)]
    return text, edge


def check_generated_number(fdp: atheris.FuzzedDataProvider) -> None:
    """No false negative on a generated number hidden in text (the module docstring)."""
    choose = fdp.ConsumeIntInRange
    number = write_card_number(choose, generate_card_number(choose))
    (before_text, before_edge), (after_text, after_edge) = _side(fdp), _side(fdp)
    before, after = before_text + before_edge, after_edge + after_text
    text = before + number + after
    span = (len(before), len(before) + len(number))
    spans = detector.find_card_numbers(text)
    assert span in spans, f"missed {number!r} at {span} in {text!r}: found {spans}"
    redacted = detector.redact_card_numbers(text)
    expected = detector.redact_card_numbers(before) + PAN_REDACTION + detector.redact_card_numbers(after)
    assert redacted == expected, f"redaction of {text!r} gave {redacted!r}"
    assert tokenization.find_card_data({"note": text}) == ["$.note"]
    as_key = tokenization.find_card_data({text: "value"})
    assert len(as_key) == 1, as_key
    _check_paths(as_key)
    query = tokenization.scan_query_params([(text, "1")])
    assert len(query) == 1, query
    _check_paths(query)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 6, data[1:]
    if mode == 0:
        check_text(rest.decode("utf-8", errors="replace"))
    elif mode == 1:
        check_text(rest.decode("latin-1"))
    elif mode == 2:
        check_text(rest[: len(rest) // 2 * 2].decode("utf-16-le", errors="surrogatepass"))
    elif mode == 3:
        check_json(rest)
    else:
        check_generated_number(atheris.FuzzedDataProvider(rest))


def seeds() -> Iterator[bytes]:
    """Texts around the gateway's public test numbers, JSON bodies, and generated numbers."""
    written = [
        "4242424242424242",
        "4242 4242 4242 4242",
        "5555-5555-5555-4444",
        "3782 822463 10005",
        "6011\u00a01111\u00a01111\u00a01117",
        "".join(chr(0xFF10 + int(digit)) for digit in "3566002020360505"),
    ]
    lookalikes = ["+33 6 12 34 56 78", "2026-01-15", "550e8400-e29b-41d4-a716-446655440000", "INV-2026-1"]
    for text in [*written, *lookalikes, f"ref 2026 {written[1]}", f"card:{written[0]}."]:
        yield b"\x00" + text.encode("utf-8")
        yield b"\x01" + text.encode("latin-1", errors="replace")
        yield b"\x02" + text.encode("utf-16-le")
    yield b'\x03{"lines": [{"description": "4242 4242 4242 4242"}], "x": 4242424242424242}'
    yield b'\x03{"card_number": null, "n": 1e400, "k": {"4242424242424242": [1.5, true]}}'
    for start in range(0, 256, 16):  # choices are read from the end, text from the front
        yield bytes([4]) + b"Paid with : thanks" + bytes((start + i) % 256 for i in range(40))


def main() -> None:
    global detector  # noqa: PLW0603 - chosen once, before fuzzing starts
    options = harness_options(sys.argv, FAULTS)
    if options.fault is not None:
        detector = FAULTS[options.fault]()
    instrument_modules(tokenization._pan)
    run_harness("pan", test_one_input, seeds, options)


if __name__ == "__main__":
    main()
