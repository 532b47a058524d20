"""Tests for ``billing._pdf``: invoice PDFs read back as text with pypdf, no database involved."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
from faker import Faker
from pypdf import PdfReader
from reportlab.pdfbase.ttfonts import TTFError

from billing._invoices import InvoiceLineView, InvoiceView, TaxLine
from billing._money import Money, compute_line, compute_totals, currency_exponent
from billing._pdf import (
    InvoiceFont,
    SellerDetails,
    _rate,
    bundled_invoice_font,
    default_invoice_font,
    render_invoice_pdf,
)
from billing.errors import ValidationFailed

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
SELLER = SellerDetails(
    name="Ørsted Hôtels SARL",
    address_lines=("4 quai de Bourbon", "75004 Paris", "France"),
    vat_id="FR40303265045",
    email="billing@orsted-hotels.example",
)
Line = tuple[str, int, int, int]
"""``(description, quantity, unit_amount, tax_rate_bps)``."""


@pytest.fixture
def fake() -> Faker:
    faker = Faker(["fr_FR", "de_DE"])
    faker.seed_instance(20261122)
    return faker


def _customer(fake: Faker) -> dict[str, object]:
    return {
        "name": fake.name(),
        "email": fake.email(),
        "address": {
            "line1": fake.street_address(),
            "line2": None,
            "city": fake.city(),
            "postcode": fake.postcode(),
            "country": "FR",
        },
    }


def _invoice(
    lines: Sequence[Line],
    *,
    customer: Mapping[str, object] | None,
    currency: str = "EUR",
    status: str = "open",
    number: str | None = "INV-2026-000042",
    notes: str | None = None,
) -> InvoiceView:
    views = []
    for position, (description, quantity, unit_amount, tax_rate_bps) in enumerate(lines):
        amounts = compute_line(quantity, unit_amount, tax_rate_bps)
        views.append(
            InvoiceLineView(
                id=f"line_{position}",
                position=position,
                description=description,
                quantity=quantity,
                unit_amount=unit_amount,
                tax_rate_bps=tax_rate_bps,
                category="general",
                net=amounts.net,
                tax=amounts.tax,
                total=amounts.total,
            )
        )
    totals = compute_totals((q, u, r) for _, q, u, r in lines)
    finalized = status != "draft"
    return InvoiceView(
        id="inv_test",
        customer_id="cus_test",
        booking_ref="BK-2026-4417",
        status=status,
        number=number if finalized else None,
        currency=currency,
        currency_exponent=currency_exponent(currency),
        series="INV",
        subtotal=totals.subtotal,
        tax=totals.tax,
        total=totals.total,
        issue_date=date(2026, 11, 22) if finalized else None,
        due_date=date(2026, 12, 22),
        created_at=NOW,
        finalized_at=NOW if finalized else None,
        tax_breakdown=[TaxLine(tax_rate_bps=t.tax_rate_bps, net=t.net, tax=t.tax) for t in totals.breakdown],
        lines=views,
        customer=None if customer is None else dict(customer),
        notes=notes,
        updated_at=NOW,
    )


def _lines(fake: Faker, count: int) -> list[Line]:
    rates = (0, 550, 1000, 2000)
    return [
        (fake.sentence(nb_words=7), 1 + i % 4, fake.random_int(100, 250_000), rates[i % 4])
        for i in range(count)
    ]


def _reader(pdf: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(pdf))


def _text(pdf: bytes) -> str:
    """All pages' text with runs of whitespace made one space, so wrapped lines compare as written."""
    return " ".join(" ".join(page.extract_text() for page in _reader(pdf).pages).split())


def _flat(text: str) -> str:
    return " ".join(text.split())


# --- the document ------------------------------------------------------------------------------


def test_output_is_a_pdf_and_identical_for_a_fixed_now(fake: Faker) -> None:
    invoice = _invoice(_lines(fake, 5), customer=_customer(fake))
    first = render_invoice_pdf(invoice, SELLER, now=NOW)
    assert first.startswith(b"%PDF-")
    assert first.rstrip().endswith(b"%%EOF")
    assert render_invoice_pdf(invoice, SELLER, now=NOW) == first
    assert render_invoice_pdf(invoice, SELLER, now=NOW + timedelta(seconds=1)) != first


def test_creation_date_is_now_in_utc(fake: Faker) -> None:
    invoice = _invoice(_lines(fake, 1), customer=_customer(fake))
    paris = datetime(2026, 11, 22, 10, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    metadata = _reader(render_invoice_pdf(invoice, SELLER, now=paris)).metadata
    assert metadata is not None
    assert str(metadata["/CreationDate"]) == "D:20261122103000+00'00'"


def test_output_is_identical_across_processes(fake: Faker) -> None:
    # Hash randomisation changes set and dict orders between processes; the bytes must not change.
    invoice = _invoice(_lines(fake, 8), customer=_customer(fake))
    expected = hashlib.sha256(render_invoice_pdf(invoice, SELLER, now=NOW)).hexdigest()
    script = f"""
import hashlib, msgspec, sys
from datetime import datetime
from billing._invoices import InvoiceView
from billing._pdf import SellerDetails, render_invoice_pdf
invoice = msgspec.json.decode({msgspec.json.encode(invoice)!r}, type=InvoiceView)
seller = SellerDetails({SELLER.name!r}, {SELLER.address_lines!r}, {SELLER.vat_id!r}, {SELLER.email!r})
pdf = render_invoice_pdf(invoice, seller, now=datetime.fromisoformat({NOW.isoformat()!r}))
sys.stdout.write(hashlib.sha256(pdf).hexdigest())
"""
    root = Path(__file__).absolute().parents[2]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, cwd=root
        )
        assert out.stdout == expected


def test_text_has_the_mandatory_contents(fake: Faker) -> None:
    customer = _customer(fake)
    lines = _lines(fake, 8)
    invoice = _invoice(lines, customer=customer, notes="Payable by bank transfer.\nThank you!")
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))

    assert text.startswith("Invoice")
    for expected in (
        "INV-2026-000042",
        "2026-11-22",
        "2026-12-22",
        "BK-2026-4417",
        SELLER.name,
        *SELLER.address_lines,
        "FR40303265045",
        SELLER.email,
        str(customer["name"]),
        str(customer["email"]),
        "Payable by bank transfer. Thank you!",
        "Page 1 of 1",
    ):
        assert _flat(str(expected)) in text
    address = customer["address"]
    assert isinstance(address, dict)
    for key in ("line1", "city", "postcode"):
        assert _flat(address[key]) in text
    for description, *_ in lines:
        assert _flat(description) in text
    for view in invoice.lines:
        row = f"{view.quantity} {Money(view.unit_amount, 'EUR').format()[:-4]} {_rate(view.tax_rate_bps)}"
        assert row in text
        assert f"{Money(view.net, 'EUR').format()[:-4]} {Money(view.total, 'EUR').format()[:-4]}" in text
    assert len(invoice.tax_breakdown) == 4
    for entry in invoice.tax_breakdown:
        net, tax = Money(entry.net, "EUR").format()[:-4], Money(entry.tax, "EUR").format()[:-4]
        assert f"{_rate(entry.tax_rate_bps)} {net} {tax}" in text
    for amount in (invoice.subtotal, invoice.tax, invoice.total):
        assert Money(amount, "EUR").format() in text
    assert f"Amount due {Money(invoice.total, 'EUR').format()}" in text


@pytest.mark.parametrize(
    ("bps", "shown"),
    [(0, "0%"), (1, "0.01%"), (550, "5.5%"), (775, "7.75%"), (2000, "20%"), (10_000, "100%")],
)
def test_tax_rates_are_shown_from_basis_points(bps: int, shown: str) -> None:
    assert _rate(bps) == shown


def test_jpy_amounts_have_no_decimals(fake: Faker) -> None:
    invoice = _invoice(
        [("Washitsu room, two nights", 2, 18_000, 1000), ("Onsen", 1, 4_500, 0)],
        customer={"name": fake.name()},
        currency="JPY",
    )
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))
    assert "2 18000 10% 36000 39600" in text
    assert "1 4500 0% 4500 4500" in text
    assert "Amount due 44100 JPY" in text
    assert not re.search(r"\d\.\d", text)


def test_kwd_amounts_have_three_decimals(fake: Faker) -> None:
    invoice = _invoice([("Suite", 3, 41_250, 500)], customer={"name": fake.name()}, currency="KWD")
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))
    assert "3 41.250 5% 123.750 129.938" in text
    assert "5% 123.750 6.188" in text
    assert "Amount due 129.938 KWD" in text


def test_draft_is_headed_as_not_a_valid_invoice(fake: Faker) -> None:
    invoice = _invoice(_lines(fake, 2), customer=_customer(fake), status="draft")
    pdf = render_invoice_pdf(invoice, SELLER, now=NOW)
    text = _text(pdf)
    assert text.startswith("Draft — not a valid invoice")
    assert "This is a draft, not a valid invoice" in text
    assert "DRAFT" in text  # the badge and the watermark
    assert "Not yet assigned" in text
    metadata = _reader(pdf).metadata
    assert metadata is not None
    assert metadata.title == "Draft"


@pytest.mark.parametrize(
    ("status", "badge", "notice"),
    [
        ("paid", "PAID", "Paid in full."),
        ("void", "VOID", "This invoice has been voided: it is cancelled and must not be paid."),
        ("uncollectible", "UNCOLLECTIBLE", "This invoice has been marked uncollectible."),
        ("refunded", "REFUNDED", "Paid, then refunded in full."),
        ("partially_refunded", "PARTIALLY REFUNDED", "Paid; part of the amount has since been refunded."),
    ],
)
def test_closed_statuses_are_shown(fake: Faker, status: str, badge: str, notice: str) -> None:
    invoice = _invoice(_lines(fake, 2), customer=_customer(fake), status=status)
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))
    assert text.startswith(f"Invoice {badge} {notice}")
    assert "Amount due" not in text
    assert f"Total {Money(invoice.total, 'EUR').format()}" in text


def test_sixty_lines_paginate_with_every_line_and_page_numbers(fake: Faker) -> None:
    lines = _lines(fake, 60)
    invoice = _invoice(lines, customer=_customer(fake))
    pdf = render_invoice_pdf(invoice, SELLER, now=NOW)
    pages = len(_reader(pdf).pages)
    assert pages > 1
    text = _text(pdf)
    for description, *_ in lines:
        assert _flat(description) in text
    assert text.count("DESCRIPTION QTY UNIT PRICE") == pages  # the heading row repeats on each page
    assert "INV-2026-000042 (continued)" in text
    for page in range(1, pages + 1):
        assert f"Page {page} of {pages}" in text
    assert f"Amount due {Money(invoice.total, 'EUR').format()}" in text


def test_long_descriptions_wrap_inside_their_cell(fake: Faker) -> None:
    words = fake.paragraph(nb_sentences=12)[:400]
    unbroken = "Zimmerreservierungsbestätigungsnummernverwaltungssystemzugangsberechtigung" * 2
    invoice = _invoice([(words, 1, 10_000, 1000), (unbroken, 1, 5_000, 1000)], customer=_customer(fake))
    pdf = render_invoice_pdf(invoice, SELLER, now=NOW)
    assert len(_reader(pdf).pages) == 1
    text = _text(pdf)
    assert _flat(words) in text
    assert unbroken not in text  # it was split over lines …
    assert unbroken in text.replace(" ", "")  # … and every letter is there


# --- text safety ---------------------------------------------------------------------------------


def test_markup_in_invoice_text_is_printed_not_obeyed(fake: Faker) -> None:
    hostile = '<img src="/etc/passwd"/> <b>bold</b> & <a href="https://evil.example">link</a>'
    customer = {"name": "<font size=40>Mallory</font>", "email": None, "address": None}
    invoice = _invoice([(hostile, 1, 100, 0)], customer=customer, notes="<br/>&amp;")
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))
    assert hostile in text
    assert "<font size=40>Mallory</font>" in text
    assert "<br/>&amp;" in text


def test_control_characters_do_not_break_the_document(fake: Faker) -> None:
    invoice = _invoice([("Night\x00one\ttwo\x1b three\u200b", 1, 100, 0)], customer=_customer(fake))
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))
    assert "Night one two three" in text


# --- buyer snapshot ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "customer",
    [
        None,
        {},
        {"name": None, "email": None, "address": None},
        {"name": "Anna Schmidt", "address": {"city": "Köln"}},
        {"name": 42, "email": ["x"], "address": "not a mapping"},
    ],
)
def test_missing_buyer_fields_render(customer: dict[str, object] | None) -> None:
    invoice = _invoice([("Night", 1, 10_000, 1000)], customer=customer)
    text = _text(render_invoice_pdf(invoice, SELLER, now=NOW))
    assert "BILL TO" in text
    if customer and customer.get("name") == "Anna Schmidt":
        assert "Anna Schmidt" in text
        assert "Köln" in text


def test_seller_without_optional_fields_renders(fake: Faker) -> None:
    invoice = _invoice(_lines(fake, 1), customer=_customer(fake))
    text = _text(render_invoice_pdf(invoice, SellerDetails(name="Pension Zoë"), now=NOW))
    assert "Pension Zoë" in text
    assert "VAT ID" not in text


# --- fonts ---------------------------------------------------------------------------------------


def test_unicode_names_render_in_the_default_font(fake: Faker) -> None:
    seller = SellerDetails(name="Ørsted Ferienwohnungen GmbH", address_lines=("Straße des 17. Juni 1",))
    customer = {"name": "Zoë Müller-Łukasiewicz", "email": "zoe@example.org", "address": None}
    lines = [("Übernachtung — Gödöllő, Wałęsa, Čapek, Ñandú, Þór, Ελλάδα, Москва", 1, 100, 0)]
    text = _text(render_invoice_pdf(_invoice(lines, customer=customer), seller, now=NOW))
    assert "Zoë Müller-Łukasiewicz" in text
    assert "Ørsted Ferienwohnungen GmbH" in text
    assert "Straße des 17. Juni 1" in text
    if default_invoice_font() != bundled_invoice_font():  # DejaVu Sans: every European script
        assert lines[0][0] in text


def test_bundled_font_keeps_what_it_can_and_transliterates_the_rest() -> None:
    customer = {"name": "Zoë Müller-Łukasiewicz", "email": None, "address": None}
    lines = [("Gödöllő, Wałęsa, Ørsted — 5 €", 1, 100, 0), ("東京", 1, 100, 0)]
    pdf = render_invoice_pdf(_invoice(lines, customer=customer), SELLER, now=NOW, font=bundled_invoice_font())
    text = _text(pdf)
    assert "Zoë Müller-Łukasiewicz" in text  # Vera has Latin-1, Ł and €
    assert "Gödöllo, Wałesa, Ørsted — 5 €" in text  # but not ő or ę
    assert "2 ?? 1 1.00" in text  # no font here has CJK


def test_default_font_files_exist() -> None:
    for font in (default_invoice_font(), bundled_invoice_font()):
        assert font.regular.is_file()
        assert font.bold.is_file()


def test_default_font_is_dejavu_when_found_else_the_bundled_one(tmp_path: Path) -> None:
    empty, dejavu = tmp_path / "empty", tmp_path / "dejavu"
    empty.mkdir()
    dejavu.mkdir()
    assert default_invoice_font([empty]) == bundled_invoice_font()
    (dejavu / "DejaVuSans.ttf").write_bytes(b"")
    assert default_invoice_font([dejavu]) == bundled_invoice_font()  # the bold face is missing
    (dejavu / "DejaVuSans-Bold.ttf").write_bytes(b"")
    found = default_invoice_font([empty, dejavu])
    assert found == InvoiceFont(regular=dejavu / "DejaVuSans.ttf", bold=dejavu / "DejaVuSans-Bold.ttf")


def test_concurrent_renders_give_the_same_bytes(fake: Faker) -> None:
    invoices = [_invoice(_lines(fake, 12), customer=_customer(fake)) for _ in range(6)]
    fonts = (None, bundled_invoice_font())
    jobs = [(invoice, font) for invoice in invoices for font in fonts]
    expected = [render_invoice_pdf(invoice, SELLER, now=NOW, font=font) for invoice, font in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: render_invoice_pdf(job[0], SELLER, now=NOW, font=job[1]), jobs))
    assert got == expected


def test_a_missing_font_file_fails_loudly(fake: Faker, tmp_path: Path) -> None:
    missing = InvoiceFont(regular=tmp_path / "nope.ttf", bold=tmp_path / "nope-bold.ttf")
    with pytest.raises(TTFError, match=r"nope\.ttf"):
        render_invoice_pdf(_invoice(_lines(fake, 1), customer=None), SELLER, now=NOW, font=missing)


# --- privacy and refusals ------------------------------------------------------------------------


def test_metadata_hold_no_personal_data(fake: Faker) -> None:
    customer = _customer(fake)
    invoice = _invoice(_lines(fake, 3), customer=customer)
    pdf = render_invoice_pdf(invoice, SELLER, now=NOW)
    metadata = _reader(pdf).metadata
    assert metadata is not None
    assert metadata.title == "INV-2026-000042"
    assert not metadata.author
    assert not metadata.subject
    assert metadata.creator == "Veilbill"
    shown = repr(dict(metadata))
    name, email = str(customer["name"]), str(customer["email"])
    for secret in (name, email, *name.split(), SELLER.name, SELLER.email or ""):
        assert secret not in shown
    # The page content is compressed; nothing outside it carries the buyer in clear text.
    assert name.encode() not in pdf
    assert email.encode() not in pdf
    assert _reader(pdf).xmp_metadata is None


def test_naive_now_is_refused(fake: Faker) -> None:
    invoice = _invoice(_lines(fake, 1), customer=None)
    with pytest.raises(ValidationFailed) as caught:
        render_invoice_pdf(invoice, SELLER, now=datetime(2026, 11, 22, 9, 30))
    assert caught.value.ids == {"field": "now"}


def test_seller_details_mask_their_repr_and_need_a_name() -> None:
    assert "Ørsted" not in repr(SELLER)
    assert "FR40303265045" not in repr(SELLER)
    with pytest.raises(ValidationFailed):
        SellerDetails(name="   ")
