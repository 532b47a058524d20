"""Money as integer minor units, ISO 4217 exponents, and invoice line and total arithmetic.

Invariants this module guarantees:

- No floats. Every amount is an ``int`` of minor units of its currency (cents for EUR, yen for
  JPY, fils for KWD); rounding and formatting are integer arithmetic only. ``bool`` is refused
  wherever an ``int`` is expected, although Python makes it a subclass of ``int``.
- A currency is an exact, upper-case, active ISO 4217 alphabetic code from :data:`_EXPONENTS`.
  Nothing is normalised: ``"eur"`` or ``" EUR"`` is refused rather than guessed at.
- Every amount accepted or produced stays within ``±MAX_AMOUNT``; quantities within
  ``1..MAX_QUANTITY``; tax rates within ``0..MAX_TAX_RATE_BPS`` basis points.
- Tax is rounded half-up per line (``net * bps / 10_000``), and invoice totals are sums of the
  rounded lines, so the per-rate breakdown always sums exactly to the invoice totals.

Errors are those of :mod:`billing.errors`. Their messages are fixed strings and name the offending
field in ``ids['field']``; they never contain the value that was refused, so a refusal can be logged
or returned to the client without echoing its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TypeGuard

from billing.errors import AmountOutOfRange, UnknownCurrency, ValidationFailed

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "MAX_AMOUNT",
    "MAX_QUANTITY",
    "MAX_TAX_RATE_BPS",
    "InvoiceTotals",
    "LineAmounts",
    "Money",
    "TaxBreakdownEntry",
    "compute_line",
    "compute_totals",
    "currency_exponent",
    "is_known_currency",
    "round_half_up_div",
]

MAX_AMOUNT: Final = 10**12 - 1
"""Largest absolute amount, in minor units, of a unit amount, a line total or an invoice total.

Just under ten billion EUR, or one trillion JPY: far above any booking, and small enough that every
amount fits a signed 64-bit database column with room to sum a period's invoices.
"""

MAX_QUANTITY: Final = 1_000_000
"""Largest quantity on one invoice line."""

MAX_TAX_RATE_BPS: Final = 100_00
"""Largest tax rate, in basis points (10 000 bps = 100 %)."""

_BPS_PER_UNIT: Final = 10_000

# ISO 4217 List One, active alphabetic codes with their minor-unit exponents, as of 2026-01.
# Left out on purpose:
# - codes whose minor unit ISO lists as "N.A.": XXX (no currency), XTS (testing), the precious
#   metals XAU, XAG, XPD, XPT, the bond-market units XBA, XBB, XBC, XBD, and XDR, XSU, XUA;
# - withdrawn codes, refused like any unknown code: ANG (replaced by XCG on 2025-03-31), BGN
#   (Bulgaria adopted the euro on 2026-01-01), HRK (euro, 2023), SLL (replaced by SLE), ZWL
#   (replaced by ZWG in 2024), MRO, STD, VEF and older.
# Funds codes with a defined exponent (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW) are kept: they
# are in List One, and refusing them would be a narrower policy than ISO's, which is the caller's.
_EXPONENT_0: Final = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_2: Final = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR "
    "KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV "
    "MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR "
    "SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH "
    "USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
_EXPONENT_3: Final = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4: Final = "CLF UYW"

_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        code: exponent
        for exponent, codes in (
            (0, _EXPONENT_0),
            (2, _EXPONENT_2),
            (3, _EXPONENT_3),
            (4, _EXPONENT_4),
        )
        for code in codes.split()
    }
)


def is_known_currency(code: object) -> bool:
    """Whether ``code`` is exactly an active ISO 4217 code; never raises, whatever its type."""
    return isinstance(code, str) and code in _EXPONENTS


def currency_exponent(code: str) -> int:
    """Return the number of decimals of the currency's minor unit (JPY 0, EUR 2, KWD 3, CLF 4).

    Raises:
        UnknownCurrency: ``code`` is not exactly an active upper-case ISO 4217 code
            (``field="currency"``).
    """
    if not is_known_currency(code):
        raise UnknownCurrency("The currency is not an active ISO 4217 code.", field="currency")
    return _EXPONENTS[code]


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True as a quantity or amount is a client bug, never a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _require_range(value: object, low: int, high: int, field: str, message: str) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise AmountOutOfRange(message, field=field)
    return value


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of minor units of one currency.

    The amount may be negative (credit notes, refunds); whether a negative amount is allowed where
    it is used is the caller's rule, not this type's. Arithmetic never mixes currencies and never
    leaves ``±MAX_AMOUNT``.

    Raises:
        AmountOutOfRange: ``amount`` is not an ``int`` (``bool`` included) or exceeds
            ``MAX_AMOUNT`` in absolute value (``field="amount"``).
        UnknownCurrency: ``currency`` is not an active ISO 4217 code (``field="currency"``).
    """

    amount: int
    currency: str

    def __post_init__(self) -> None:
        _require_range(
            self.amount,
            -MAX_AMOUNT,
            MAX_AMOUNT,
            "amount",
            "The amount is not a whole number of minor units within the allowed range.",
        )
        currency_exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Zero in ``currency``; raises :class:`UnknownCurrency` like the constructor."""
        return cls(0, currency)

    def _require_same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValidationFailed("Amounts in different currencies cannot be combined.", field="currency")

    def __add__(self, other: Money) -> Money:
        """Sum in the shared currency.

        Raises:
            ValidationFailed: the currencies differ (``field="currency"``).
            AmountOutOfRange: the sum exceeds ``MAX_AMOUNT`` in absolute value (``field="amount"``).
        """
        if not isinstance(other, Money):
            return NotImplemented
        self._require_same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        """Difference in the shared currency; raises as :meth:`__add__` does."""
        if not isinstance(other, Money):
            return NotImplemented
        self._require_same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def format(self) -> str:
        """Plain ``"<major>.<minor> <CODE>"`` text with exactly the currency's number of decimals.

        ``"45.00 EUR"``, ``"4500 JPY"``, ``"1.234 KWD"``, ``"-0.05 EUR"``. Locale-free (no grouping,
        no symbol), so it is stable in logs, exports and tests; localised display belongs to the UI.
        """
        exponent = _EXPONENTS[self.currency]
        sign = "-" if self.amount < 0 else ""
        if exponent == 0:
            return f"{sign}{abs(self.amount)} {self.currency}"
        major, minor = divmod(abs(self.amount), 10**exponent)
        return f"{sign}{major}.{minor:0{exponent}d} {self.currency}"


def round_half_up_div(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, exact halves away from zero.

    Integer arithmetic only, so it is exact for any size of operand: ``floor((2n + d) / 2d)``.

    Raises:
        AmountOutOfRange: ``numerator`` is negative or ``denominator`` is not positive, or either is
            not an ``int`` (``field="numerator"`` or ``field="denominator"``).
    """
    if not _is_int(numerator) or numerator < 0:
        raise AmountOutOfRange("The numerator must be a non-negative whole number.", field="numerator")
    if not _is_int(denominator) or denominator < 1:
        raise AmountOutOfRange("The denominator must be a positive whole number.", field="denominator")
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True, slots=True)
class LineAmounts:
    """Amounts of one invoice line, in minor units of the invoice's currency.

    As produced by :func:`compute_line`: ``0 <= net``, ``0 <= tax``, ``total == net + tax <=
    MAX_AMOUNT``, and ``tax`` is already rounded, so summing lines never rounds again.
    """

    net: int
    tax: int
    total: int


def compute_line(quantity: int, unit_amount: int, tax_rate_bps: int) -> LineAmounts:
    """Net, tax and total of one line, with the tax rounded half-up on this line alone.

    ``net = quantity * unit_amount``; ``tax = round_half_up(net * tax_rate_bps / 10_000)``;
    ``total = net + tax``.

    Raises:
        AmountOutOfRange: with ``field`` set to
            ``"quantity"`` — not an ``int`` in ``1..MAX_QUANTITY`` (``bool`` refused);
            ``"unit_amount"`` — not an ``int`` in ``0..MAX_AMOUNT`` (negative lines are not
            allowed; corrections are credit notes);
            ``"tax_rate_bps"`` — not an ``int`` in ``0..MAX_TAX_RATE_BPS``;
            ``"amount"`` — the net or the total exceeds ``MAX_AMOUNT``.
    """
    quantity = _require_range(
        quantity,
        1,
        MAX_QUANTITY,
        "quantity",
        "The quantity must be a whole number within the allowed range.",
    )
    unit_amount = _require_range(
        unit_amount,
        0,
        MAX_AMOUNT,
        "unit_amount",
        "The unit amount must be a non-negative whole number of minor units within range.",
    )
    tax_rate_bps = _require_range(
        tax_rate_bps,
        0,
        MAX_TAX_RATE_BPS,
        "tax_rate_bps",
        "The tax rate must be a whole number of basis points between 0 and 10000.",
    )
    net = quantity * unit_amount
    if net > MAX_AMOUNT:
        raise AmountOutOfRange("The line amount exceeds the allowed maximum.", field="amount")
    tax = round_half_up_div(net * tax_rate_bps, _BPS_PER_UNIT)
    total = net + tax
    if total > MAX_AMOUNT:
        raise AmountOutOfRange("The line amount exceeds the allowed maximum.", field="amount")
    return LineAmounts(net=net, tax=tax, total=total)


@dataclass(frozen=True, slots=True)
class TaxBreakdownEntry:
    """Sum of the lines taxed at one rate: ``net`` and the sum of their per-line rounded ``tax``."""

    tax_rate_bps: int
    net: int
    tax: int


@dataclass(frozen=True)
class InvoiceTotals:
    """Totals of an invoice, in minor units of its currency.

    As produced by :func:`compute_totals`: ``total == subtotal + tax <= MAX_AMOUNT``; ``breakdown``
    has one entry per distinct rate used by a line, sorted by ascending rate, and its ``net`` and
    ``tax`` sum exactly to ``subtotal`` and ``tax``.
    """

    subtotal: int
    tax: int
    total: int
    breakdown: tuple[TaxBreakdownEntry, ...]


def compute_totals(lines: Iterable[tuple[int, int, int]]) -> InvoiceTotals:
    """Totals and per-rate breakdown of ``(quantity, unit_amount, tax_rate_bps)`` lines.

    Each line is computed and rounded by :func:`compute_line`; totals are exact sums of those
    rounded lines. No lines gives zero totals and an empty breakdown.

    Raises:
        AmountOutOfRange: a line is refused by :func:`compute_line` (same ``field``, plus
            ``line``, its zero-based index), or the invoice total exceeds ``MAX_AMOUNT``
            (``field="total"``).
    """
    per_rate: dict[int, tuple[int, int]] = {}
    total = 0
    for index, (quantity, unit_amount, tax_rate_bps) in enumerate(lines):
        try:
            line = compute_line(quantity, unit_amount, tax_rate_bps)
        except AmountOutOfRange as exc:
            raise AmountOutOfRange(exc.message, field=exc.ids.get("field"), line=index) from exc
        total += line.total
        # Checked on every line so a long iterable fails at the first line that overflows.
        if total > MAX_AMOUNT:
            raise AmountOutOfRange("The invoice total exceeds the allowed maximum.", field="total")
        net, tax = per_rate.get(tax_rate_bps, (0, 0))
        per_rate[tax_rate_bps] = (net + line.net, tax + line.tax)

    breakdown = tuple(
        TaxBreakdownEntry(tax_rate_bps=rate, net=net, tax=tax)
        for rate, (net, tax) in sorted(per_rate.items())
    )
    subtotal = sum(entry.net for entry in breakdown)
    tax_total = sum(entry.tax for entry in breakdown)
    return InvoiceTotals(subtotal=subtotal, tax=tax_total, total=total, breakdown=breakdown)
