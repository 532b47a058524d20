"""Invoice PDFs: a decrypted :class:`InvoiceView` rendered in memory, never written to disk.

The document carries what an EU invoice must show (Directive 2006/112/EC, art. 226): title, number,
issue and due dates, seller with address and VAT id, buyer with address, one row per line (description,
quantity, unit price, tax rate, net, total), the net and tax per rate, subtotal, tax and total, plus
the booking reference, the status and a footer with the seller's identity and page numbers. A draft is
headed "Draft — not a valid invoice" and watermarked; a void invoice is watermarked "VOID"; paid,
refunded and uncollectible invoices carry a notice under the title.

Library: ReportLab (BSD licence, a pure-Python ``py3-none-any`` wheel, maintained since 2000).
Chosen over fpdf2 (LGPL-3.0) because a BSD licence puts no conditions on a proprietary service, its
platypus layout wraps table cells and splits long tables across pages with a repeated header row, it
has an ``invariant`` mode for byte-identical output, and its wheel ships a TrueType font (below).
Typing comes from the typeshed stubs ``types-reportlab``.

Font: a TrueType font is embedded (subset), never a core PDF font, whose Latin-1 encoding cannot show
"Łukasiewicz". :func:`default_invoice_font` takes DejaVu Sans from the system when it is installed
(Debian's ``fonts-dejavu-core``, on our machines; it covers every European script) and otherwise
Bitstream Vera, which ships inside ReportLab's wheel and so is always there: it covers Windows-1252
plus a few letters (Ł, Č, Š, Ž, Ğ, …) but not, say, "ő" or "ę". Whatever the font, a character it
lacks is replaced by its unaccented base letter ("ő" → "o") or, failing that, by "?", so a name is
never dropped silently and no blank box is printed. Callers that must guarantee a font pass
``font=InvoiceFont(...)``.

Determinism: ReportLab runs in ``invariant`` mode (fixed document id, no time stamps of its own) and
the creation date is set from ``now``; fonts are subset deterministically. The same invoice, seller,
font and ``now`` give the same bytes.

Privacy and safety:

- The PDF metadata hold no personal data: the title is the invoice number ("Draft" before there is
  one), author, subject and keywords are empty, the creator is "Veilbill". The buyer appears only in
  the page content.
- Every text taken from the invoice or the seller is XML-escaped before it reaches ReportLab's
  paragraph markup, which would otherwise obey tags such as ``<img src="…">`` (reads a local file)
  or ``<a href="…">``. Control characters become spaces; other invisible ones are dropped.
- Amounts are formatted by :meth:`Money.format` (integer arithmetic, the currency's exponent); no
  float touches an amount.
"""

from __future__ import annotations

import hashlib
import io
import threading
import unicodedata
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape

import reportlab
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    KeepTogether,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from billing._invoices import InvoiceLineView, InvoiceView, TaxLine
from billing._money import Money
from billing.errors import ValidationFailed

__all__ = [
    "InvoiceFont",
    "SellerDetails",
    "bundled_invoice_font",
    "default_invoice_font",
    "render_invoice_pdf",
]


@dataclass(frozen=True, slots=True)
class SellerDetails:
    """Who issues the invoice, as printed in its header and footer.

    A sole trader's name and address are personal data, so ``repr`` masks every field.

    Raises:
        ValidationFailed: ``name`` is blank (``field="name"``).
    """

    name: str
    address_lines: tuple[str, ...] = ()
    vat_id: str | None = None
    email: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValidationFailed("The seller needs a name.", field="name")

    def __repr__(self) -> str:
        return "SellerDetails(<4 fields redacted>)"


@dataclass(frozen=True, slots=True)
class InvoiceFont:
    """A TrueType family for invoices: the regular and the bold face, as ``.ttf`` files."""

    regular: Path
    bold: Path


# Where distributions install DejaVu Sans: Debian and Ubuntu (fonts-dejavu-core), Fedora and RHEL,
# Alpine, Arch.
_DEJAVU_FOLDERS: Final = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu-sans-fonts"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
)


def bundled_invoice_font() -> InvoiceFont:
    """Bitstream Vera, from ReportLab's own wheel: always installed, narrower coverage than DejaVu."""
    folder = Path(reportlab.__file__).parent / "fonts"
    return InvoiceFont(regular=folder / "Vera.ttf", bold=folder / "VeraBd.ttf")


def default_invoice_font(folders: Sequence[Path] = _DEJAVU_FOLDERS) -> InvoiceFont:
    """DejaVu Sans from the first of ``folders`` that has both faces, else :func:`bundled_invoice_font`.

    Looks at the file system on every call (never at import).
    """
    for folder in folders:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return InvoiceFont(regular=regular, bold=bold)
    return bundled_invoice_font()


# --- fonts: registered once per process, under a name derived from the file ----------------------


@dataclass(frozen=True, slots=True)
class _LoadedFont:
    regular: str
    bold: str
    charmap: frozenset[int]
    """Code points that both faces can show."""


_fonts_lock = threading.Lock()
_loaded_fonts: dict[InvoiceFont, _LoadedFont] = {}


def _load(font: InvoiceFont) -> _LoadedFont:
    # ReportLab's font registry is process-global; the lock keeps two first renders from parsing
    # and registering the same file at once.
    with _fonts_lock:
        loaded = _loaded_fonts.get(font)
        if loaded is None:
            faces = []
            for path in (font.regular, font.bold):
                name = "veilbill-" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
                face = TTFont(name, str(path))
                pdfmetrics.registerFont(face)
                faces.append((name, frozenset(face.face.charToGlyph)))
            (regular, regular_map), (bold, bold_map) = faces
            loaded = _LoadedFont(regular=regular, bold=bold, charmap=regular_map & bold_map)
            _loaded_fonts[font] = loaded
        return loaded


def _fit(text: str, charmap: Container[int]) -> str:
    """``text`` with what the font cannot show replaced: control characters (tabs, line breaks) by
    spaces, other invisible ones (format, private use, unassigned) dropped, a missing letter by its
    unaccented base letters, anything else by ``?``."""
    out: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc":
            out.append(" ")
        elif category.startswith("C"):
            continue
        elif ord(char) in charmap:
            out.append(char)
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            out.append(base if base and all(ord(c) in charmap for c in base) else "?")
    return "".join(out)


# --- formatting: integers only -------------------------------------------------------------------


def _amount(amount: int, currency: str) -> str:
    """``"1234.50"``: :meth:`Money.format` without the currency code (the column heading has it)."""
    return Money(amount, currency).format().rsplit(" ", 1)[0]


def _rate(tax_rate_bps: int) -> str:
    """``"20%"``, ``"5.5%"``, ``"7.75%"`` from basis points."""
    whole, hundredths = divmod(tax_rate_bps, 100)
    if hundredths == 0:
        return f"{whole}%"
    return f"{whole}.{hundredths:02d}".rstrip("0") + "%"


def _date(value: date | None) -> str:
    return value.isoformat() if value is not None else "—"


def _text(value: object) -> str | None:
    """A snapshot field as text, or ``None`` when it is missing, not a string or blank."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _buyer(customer: Mapping[str, object] | None) -> tuple[str | None, list[str]]:
    """Name and the lines under it (address, then email) from the invoice's customer snapshot."""
    if not customer:
        return None, []
    lines: list[str] = []
    address = customer.get("address")
    if isinstance(address, Mapping):
        lines += [line for key in ("line1", "line2") if (line := _text(address.get(key))) is not None]
        town = " ".join(t for t in (_text(address.get("postcode")), _text(address.get("city"))) if t)
        if town:
            lines.append(town)
        if (country := _text(address.get("country"))) is not None:
            lines.append(country)
    if (email := _text(customer.get("email"))) is not None:
        lines.append(email)
    return _text(customer.get("name")), lines


# --- status -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StatusLook:
    label: str
    notice: str | None
    color: colors.Color
    watermark: str | None = None


_INK: Final = colors.HexColor("#1D2939")
_MUTED: Final = colors.HexColor("#667085")
_RULE: Final = colors.HexColor("#D0D5DD")
_HAIRLINE: Final = colors.HexColor("#EAECF0")
_HEADER_FILL: Final = colors.HexColor("#F2F4F7")

_STATUSES: Final[Mapping[str, _StatusLook]] = {
    "draft": _StatusLook(
        "Draft",
        "This is a draft, not a valid invoice. It has no number yet and must not be paid.",
        colors.HexColor("#475467"),
        watermark="DRAFT",
    ),
    "open": _StatusLook("Open", None, colors.HexColor("#175CD3")),
    "paid": _StatusLook("Paid", "Paid in full. Thank you.", colors.HexColor("#067647")),
    "partially_refunded": _StatusLook(
        "Partially refunded", "Paid; part of the amount has since been refunded.", colors.HexColor("#B54708")
    ),
    "refunded": _StatusLook("Refunded", "Paid, then refunded in full.", colors.HexColor("#B54708")),
    "void": _StatusLook(
        "Void",
        "This invoice has been voided: it is cancelled and must not be paid.",
        colors.HexColor("#B42318"),
        watermark="VOID",
    ),
    "uncollectible": _StatusLook(
        "Uncollectible",
        "This invoice has been marked uncollectible.",
        colors.HexColor("#B42318"),
    ),
}


def _status_look(status: str) -> _StatusLook:
    return _STATUSES.get(status) or _StatusLook(status.replace("_", " ").capitalize(), None, _MUTED)


# --- layout -------------------------------------------------------------------------------------

_PAGE_WIDTH, _PAGE_HEIGHT = A4
_MARGIN: Final = 18 * mm
_BOTTOM_MARGIN: Final = 24 * mm
_FRAME_WIDTH: Final = _PAGE_WIDTH - 2 * _MARGIN
_CELL_PADDING: Final = 3.0
# Narrowest width of the columns "#", quantity, unit price, tax rate, net and total; each widens to
# its longest text, so a number never wraps, and the description takes what is left.
_MIN_COLUMNS: Final = (7 * mm, 11 * mm, 19 * mm, 12 * mm, 19 * mm, 19 * mm)


class _Typesetter:
    """Paragraph styles in the invoice's font, and escaping of every text it sets."""

    def __init__(self, font: _LoadedFont) -> None:
        self.font = font
        regular, bold = font.regular, font.bold
        self.body = ParagraphStyle("body", fontName=regular, fontSize=9, leading=12, textColor=_INK)
        self.body_right = ParagraphStyle("body_right", parent=self.body, alignment=TA_RIGHT)
        self.strong = ParagraphStyle("strong", parent=self.body, fontName=bold)
        self.strong_right = ParagraphStyle("strong_right", parent=self.strong, alignment=TA_RIGHT)
        self.label = ParagraphStyle(
            "label", parent=self.body, fontName=bold, fontSize=7, leading=9, textColor=_MUTED
        )
        self.label_right = ParagraphStyle("label_right", parent=self.label, alignment=TA_RIGHT)
        self.cell = ParagraphStyle("cell", parent=self.body, fontSize=8.5, leading=11)
        self.cell_right = ParagraphStyle("cell_right", parent=self.cell, alignment=TA_RIGHT)
        self.title = ParagraphStyle("title", parent=self.body, fontName=bold, fontSize=22, leading=26)
        self.party = ParagraphStyle("party", parent=self.body, fontName=bold, fontSize=10.5, leading=14)
        self.total = ParagraphStyle("total", parent=self.strong, fontSize=11, leading=14)
        self.total_right = ParagraphStyle("total_right", parent=self.total, alignment=TA_RIGHT)

    def table_style(self, commands: list[tuple[Any, ...]]) -> TableStyle:
        """``commands`` after setting the cells' own font, which ReportLab would set to Helvetica."""
        return TableStyle([("FONTNAME", (0, 0), (-1, -1), self.font.regular), *commands])

    def fit(self, text: str) -> str:
        return _fit(text, self.font.charmap)

    def para(self, text: str, style: ParagraphStyle) -> Paragraph:
        """A paragraph of plain text: fitted to the font, then escaped, so no markup is obeyed."""
        return Paragraph(escape(self.fit(text)), style)

    def lines(self, lines: Sequence[str], style: ParagraphStyle) -> Paragraph:
        """Several lines of plain text in one paragraph, each escaped, joined by line breaks."""
        return Paragraph("<br/>".join(escape(self.fit(line)) for line in lines), style)


def _header(ts: _Typesetter, invoice: InvoiceView, look: _StatusLook) -> list[Flowable]:
    title = "Draft — not a valid invoice" if invoice.status == "draft" else "Invoice"
    badge_style = ParagraphStyle(
        "badge", parent=ts.strong, fontSize=10, textColor=colors.white, alignment=TA_RIGHT
    )
    badge_text = ts.fit(look.label.upper())
    badge_width = pdfmetrics.stringWidth(badge_text, ts.font.bold, badge_style.fontSize) + 12.5
    badge = Table(
        [[Paragraph(escape(badge_text), badge_style)]],
        colWidths=[badge_width],
        style=ts.table_style(
            [
                ("BACKGROUND", (0, 0), (-1, -1), look.color),
                ("LEFTPADDING", (0, 0), (-1, -1), 6),
                ("RIGHTPADDING", (0, 0), (-1, -1), 6),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        ),
        hAlign="RIGHT",
    )
    row = Table(
        [[ts.para(title, ts.title), badge]],
        colWidths=[_FRAME_WIDTH - 45 * mm, 45 * mm],
        style=ts.table_style(
            [
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("ALIGN", (1, 0), (1, 0), "RIGHT"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 0),
            ]
        ),
    )
    flowables: list[Flowable] = [row]
    if look.notice is not None:
        notice_style = ParagraphStyle("notice", parent=ts.strong, textColor=look.color)
        flowables += [
            Spacer(0, 2 * mm),
            Table(
                [[ts.para(look.notice, notice_style)]],
                colWidths=[_FRAME_WIDTH],
                style=ts.table_style(
                    [
                        ("BOX", (0, 0), (-1, -1), 0.8, look.color),
                        ("LEFTPADDING", (0, 0), (-1, -1), 8),
                        ("TOPPADDING", (0, 0), (-1, -1), 5),
                        ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
                    ]
                ),
            ),
        ]
    return flowables


def _parties(ts: _Typesetter, invoice: InvoiceView, seller: SellerDetails) -> Table:
    seller_lines = list(seller.address_lines)
    if seller.vat_id:
        seller_lines.append(f"VAT ID: {seller.vat_id}")
    if seller.email:
        seller_lines.append(seller.email)
    buyer_name, buyer_lines = _buyer(invoice.customer)
    half = _FRAME_WIDTH / 2
    return Table(
        [
            [ts.para("FROM", ts.label), ts.para("BILL TO", ts.label)],
            [ts.para(seller.name, ts.party), ts.para(buyer_name or "—", ts.party)],
            [ts.lines(seller_lines, ts.body), ts.lines(buyer_lines, ts.body)],
        ],
        colWidths=[half, half],
        style=ts.table_style(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 6 * mm),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
            ]
        ),
    )


def _facts(ts: _Typesetter, invoice: InvoiceView) -> Table:
    facts = (
        ("INVOICE NUMBER", invoice.number or "Not yet assigned"),
        ("ISSUE DATE", _date(invoice.issue_date)),
        ("DUE DATE", _date(invoice.due_date)),
        ("BOOKING REFERENCE", invoice.booking_ref or "—"),
        ("CURRENCY", invoice.currency),
    )
    widths = [38 * mm, 28 * mm, 28 * mm, 0.0, 20 * mm]
    widths[3] = _FRAME_WIDTH - sum(widths)
    return Table(
        [[ts.para(label, ts.label) for label, _ in facts], [ts.para(value, ts.strong) for _, value in facts]],
        colWidths=widths,
        style=ts.table_style(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEABOVE", (0, 0), (-1, 0), 0.8, _RULE),
                ("LINEBELOW", (0, -1), (-1, -1), 0.8, _RULE),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 4),
                ("TOPPADDING", (0, 0), (-1, 0), 6),
                ("BOTTOMPADDING", (0, -1), (-1, -1), 7),
            ]
        ),
    )


def _line_rows(ts: _Typesetter, lines: Sequence[InvoiceLineView], currency: str) -> Table:
    heading = ("#", "DESCRIPTION", "QTY", "UNIT PRICE", "TAX", "NET", "TOTAL")
    cells = [
        (
            str(index),
            ts.fit(line.description),
            str(line.quantity),
            _amount(line.unit_amount, currency),
            _rate(line.tax_rate_bps),
            _amount(line.net, currency),
            _amount(line.total, currency),
        )
        for index, line in enumerate(lines, start=1)
    ]
    widths = [
        max(
            minimum,
            pdfmetrics.stringWidth(heading[column], ts.label.fontName, ts.label.fontSize) + 2 * _CELL_PADDING,
            *(
                pdfmetrics.stringWidth(row[column], ts.cell.fontName, ts.cell.fontSize)
                + 2 * _CELL_PADDING
                + 1
                for row in cells
            ),
        )
        for column, minimum in zip((0, 2, 3, 4, 5, 6), _MIN_COLUMNS, strict=True)
    ]
    widths.insert(1, _FRAME_WIDTH - sum(widths))
    rows: list[list[Any]] = [
        [ts.para(text, ts.label if i == 1 else ts.label_right) for i, text in enumerate(heading)],
        *(
            [ts.para(text, ts.cell if i == 1 else ts.cell_right) for i, text in enumerate(row)]
            for row in cells
        ),
    ]
    return Table(
        rows,
        colWidths=widths,
        repeatRows=1,
        style=ts.table_style(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("BACKGROUND", (0, 0), (-1, 0), _HEADER_FILL),
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, _RULE),
                ("LINEBELOW", (0, 1), (-1, -1), 0.4, _HAIRLINE),
                ("LEFTPADDING", (0, 0), (-1, -1), _CELL_PADDING),
                ("RIGHTPADDING", (0, 0), (-1, -1), _CELL_PADDING),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        ),
    )


def _summary(ts: _Typesetter, invoice: InvoiceView) -> Flowable:
    currency = invoice.currency
    breakdown: list[list[Any]] = [
        [
            ts.para("TAX RATE", ts.label),
            ts.para(f"NET ({currency})", ts.label_right),
            ts.para(f"TAX ({currency})", ts.label_right),
        ]
    ]
    entries: Sequence[TaxLine] = invoice.tax_breakdown
    breakdown += [
        [
            ts.para(_rate(entry.tax_rate_bps), ts.cell),
            ts.para(_amount(entry.net, currency), ts.cell_right),
            ts.para(_amount(entry.tax, currency), ts.cell_right),
        ]
        for entry in entries
    ]
    left_width = 80 * mm
    right_width = _FRAME_WIDTH - left_width - 10 * mm
    breakdown_table = Table(
        breakdown,
        colWidths=[24 * mm, 28 * mm, 28 * mm],
        hAlign="LEFT",
        style=ts.table_style(
            [
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, _RULE),
                ("LINEBELOW", (0, 1), (-1, -1), 0.4, _HAIRLINE),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        ),
    )
    due = "Amount due" if invoice.status == "open" else "Total"
    totals_table = Table(
        [
            [
                ts.para("Subtotal (net)", ts.body),
                ts.para(Money(invoice.subtotal, currency).format(), ts.body_right),
            ],
            [ts.para("Tax", ts.body), ts.para(Money(invoice.tax, currency).format(), ts.body_right)],
            [ts.para(due, ts.total), ts.para(Money(invoice.total, currency).format(), ts.total_right)],
        ],
        colWidths=[right_width * 0.45, right_width * 0.55],
        hAlign="RIGHT",
        style=ts.table_style(
            [
                ("LINEABOVE", (0, -1), (-1, -1), 1.2, _INK),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
                ("TOPPADDING", (0, -1), (-1, -1), 6),
            ]
        ),
    )
    return KeepTogether(
        [
            Table(
                [[breakdown_table, totals_table]],
                colWidths=[left_width + 10 * mm, right_width],
                style=ts.table_style(
                    [
                        ("VALIGN", (0, 0), (-1, -1), "TOP"),
                        ("LEFTPADDING", (0, 0), (-1, -1), 0),
                        ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                    ]
                ),
            )
        ]
    )


def _story(ts: _Typesetter, invoice: InvoiceView, seller: SellerDetails) -> list[Flowable]:
    look = _status_look(invoice.status)
    story: list[Flowable] = [
        *_header(ts, invoice, look),
        Spacer(0, 7 * mm),
        _parties(ts, invoice, seller),
        Spacer(0, 7 * mm),
        _facts(ts, invoice),
        Spacer(0, 7 * mm),
        _line_rows(ts, invoice.lines, invoice.currency),
        Spacer(0, 6 * mm),
        _summary(ts, invoice),
    ]
    if invoice.notes and invoice.notes.strip():
        story += [
            Spacer(0, 8 * mm),
            ts.para("NOTES", ts.label),
            Spacer(0, 1 * mm),
            ts.lines(invoice.notes.strip().splitlines(), ts.body),
        ]
    return story


@dataclass(frozen=True, slots=True)
class _PageDecor:
    """What every page carries besides the story: watermark, running header, footer, metadata date."""

    font: _LoadedFont
    reference: str
    footer: str
    watermark: str | None
    created: str
    page_count: int | None

    def begin_page(self, canvas: Canvas, doc: Any) -> None:
        """Before the page's story, so it reads first: the running header, after the first page."""
        canvas.setDateFormatter(lambda *_: self.created)
        canvas.saveState()
        if canvas.getPageNumber() > 1:
            canvas.setFillColor(_MUTED)
            canvas.setFont(self.font.regular, 7.5)
            canvas.drawString(_MARGIN, _PAGE_HEIGHT - 11 * mm, f"{self.reference} (continued)")
        canvas.restoreState()

    def end_page(self, canvas: Canvas, doc: Any) -> None:
        """After the page's story, so it reads last: the watermark, translucent over the content
        (table fills cannot hide it), and the footer with the seller and "Page n of N"."""
        canvas.saveState()
        if self.watermark is not None:
            canvas.saveState()
            canvas.setFillColor(colors.HexColor("#98A2B3"), alpha=0.18)
            canvas.setFont(self.font.bold, 110)
            canvas.translate(_PAGE_WIDTH / 2, _PAGE_HEIGHT / 2)
            canvas.rotate(45)
            canvas.drawCentredString(0, -40, self.watermark)
            canvas.restoreState()
        canvas.setFillColor(_MUTED)
        canvas.setFont(self.font.regular, 7.5)
        canvas.setStrokeColor(_RULE)
        canvas.setLineWidth(0.6)
        canvas.line(_MARGIN, 15 * mm, _PAGE_WIDTH - _MARGIN, 15 * mm)
        page = canvas.getPageNumber()
        pages = f"{self.reference} · Page {page} of {self.page_count or page}"
        room = _FRAME_WIDTH - pdfmetrics.stringWidth(pages, self.font.regular, 7.5) - 8 * mm
        canvas.drawString(_MARGIN, 10 * mm, _truncate(self.footer, self.font.regular, 7.5, room))
        canvas.drawRightString(_PAGE_WIDTH - _MARGIN, 10 * mm, pages)
        canvas.restoreState()


def _truncate(text: str, font_name: str, size: float, width: float) -> str:
    if pdfmetrics.stringWidth(text, font_name, size) <= width:
        return text
    while text and pdfmetrics.stringWidth(text + "…", font_name, size) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _build(story: list[Flowable], decor: _PageDecor, title: str) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    frame = Frame(
        _MARGIN,
        _BOTTOM_MARGIN,
        _FRAME_WIDTH,
        _PAGE_HEIGHT - _MARGIN - _BOTTOM_MARGIN,
        leftPadding=0,
        rightPadding=0,
        topPadding=0,
        bottomPadding=0,
    )
    doc = BaseDocTemplate(
        buffer,
        pagesize=A4,
        pageTemplates=[PageTemplate(frames=[frame], onPage=decor.begin_page, onPageEnd=decor.end_page)],
        initialFontName=decor.font.regular,
        title=title,
        author="",
        subject="",
        creator="Veilbill",
        invariant=True,
        lang="en",
    )
    doc.build(story)
    return buffer.getvalue(), int(doc.page)


def render_invoice_pdf(
    invoice: InvoiceView,
    seller: SellerDetails,
    *,
    now: datetime | None = None,
    font: InvoiceFont | None = None,
) -> bytes:
    """The invoice as PDF bytes, built in memory.

    ``now`` (default: the current time) becomes the document's creation date, so a fixed ``now``
    gives identical bytes; ``font`` defaults to :func:`default_invoice_font`. The layout runs twice:
    the first pass counts the pages for "Page n of N".

    Raises:
        ValidationFailed: ``now`` has no time zone (``field="now"``).
        UnknownCurrency: the invoice's currency is not an active ISO 4217 code.
        reportlab.pdfbase.ttfonts.TTFError: a font file of ``font`` is missing or not TrueType.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValidationFailed("now must be timezone-aware.", field="now")
    loaded = _load(font or default_invoice_font())
    ts = _Typesetter(loaded)
    reference = invoice.number or "Draft"
    footer = " · ".join(
        ts.fit(part)
        for part in (seller.name, f"VAT ID {seller.vat_id}" if seller.vat_id else "", seller.email)
        if part
    )
    decor = _PageDecor(
        font=loaded,
        reference=ts.fit(reference),
        footer=footer,
        watermark=_status_look(invoice.status).watermark,
        created=now.astimezone(UTC).strftime("D:%Y%m%d%H%M%S+00'00'"),
        page_count=None,
    )
    _, pages = _build(_story(ts, invoice, seller), decor, reference)
    pdf, _ = _build(_story(ts, invoice, seller), replace(decor, page_count=pages), reference)
    return pdf
