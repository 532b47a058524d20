"""The PCI scope report as a PDF a reviewer can file, in the invoice PDF's typesetting.

Same library, fonts, escaping and determinism as :mod:`billing._pdf` (whose typesetter, page decor
and builder it reuses): every text is escaped before ReportLab's markup sees it, the creation date
comes from ``now``, and the same report and ``now`` give the same bytes. The report holds no card
data and no personal data (findings are locations), so neither can the PDF.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from reportlab.lib import colors
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Flowable, KeepTogether, Spacer, Table

from billing._pci import ScopeReport
from billing._pdf import (
    _FRAME_WIDTH,
    _HAIRLINE,
    _HEADER_FILL,
    _MUTED,
    _build,
    _load,
    _PageDecor,
    _Typesetter,
    default_invoice_font,
)
from billing.errors import ValidationFailed

__all__ = ["render_scope_report_pdf"]

_STATUS_COLOURS: Final = {
    "pass": colors.HexColor("#067647"),
    "met": colors.HexColor("#067647"),
    "warn": colors.HexColor("#B54708"),
    "attention": colors.HexColor("#B54708"),
    "fail": colors.HexColor("#B42318"),
    "not met": colors.HexColor("#B42318"),
    "manual": colors.HexColor("#475467"),
}
_MAX_FINDINGS: Final = 200


def _heading(ts: _Typesetter, text: str) -> list[Flowable]:
    style = ParagraphStyle("h2", parent=ts.strong, fontSize=12.5, leading=16, spaceBefore=4)
    return [Spacer(1, 5 * mm), ts.para(text, style), Spacer(1, 2 * mm)]


def _table(ts: _Typesetter, header: list[str], rows: Sequence[list[Any]], widths: list[float]) -> Table:
    data: list[list[Any]] = [[ts.para(h, ts.label) for h in header], *rows]
    table = Table(data, colWidths=widths, repeatRows=1)
    table.setStyle(
        ts.table_style(
            [
                ("BACKGROUND", (0, 0), (-1, 0), _HEADER_FILL),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.5, _HAIRLINE),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return table


def _status(ts: _Typesetter, status: str) -> Flowable:
    style = ParagraphStyle(
        f"status-{status}", parent=ts.strong, fontSize=8.5, textColor=_STATUS_COLOURS[status]
    )
    return ts.para(status.upper(), style)


def _story(ts: _Typesetter, report: ScopeReport) -> list[Flowable]:
    title = ParagraphStyle("title", parent=ts.title, fontSize=19, leading=23)
    scope = f"tenant {report.tenant_id}" if report.tenant_id else "the whole deployment"
    outcome = "No card data found; no check failed." if report.passed else "Action needed: see below."
    story: list[Flowable] = [
        ts.para("PCI DSS v4.0.1 scope report — Veilbill", title),
        Spacer(1, 2 * mm),
        ts.para(f"Generated {report.generated_at:%Y-%m-%d %H:%M UTC} for {scope}. {outcome}", ts.body),
    ]
    story += _heading(ts, "Integration type: SAQ A")
    story += [ts.para(report.integration_type, ts.body), Spacer(1, 1.5 * mm)]
    story += [ts.lines([f"• {reason}" for reason in report.saq_a_reasons], ts.body)]
    story += _heading(ts, "Data flow of a payment (browser → gateway → token → Veilbill)")
    story += [ts.lines(list(report.data_flow), ts.body)]

    story += _heading(ts, "Stored card-derived fields")
    rows = [
        [ts.para(f"{f.table}.{f.column}", ts.cell), ts.para(f.purpose, ts.cell), ts.para(f.rule, ts.cell)]
        for f in report.card_derived_fields
    ]
    story.append(
        _table(
            ts, ["FIELD", "PURPOSE", "WHY IT MAY BE STORED"], rows, [50 * mm, 45 * mm, _FRAME_WIDTH - 95 * mm]
        )
    )

    stats = report.scan.stats
    story += _heading(ts, f"Card-data scan: {len(report.scan.findings)} finding(s)")
    story.append(
        ts.para(
            f"{stats.rows} rows in {stats.tables} tables ({stats.columns} columns); "
            f"{stats.values_decrypted} encrypted values opened in memory, {stats.unreadable} unreadable "
            f"(shredded); {stats.lines} lines in {stats.files} files. Detector: 13 to 19 digits, Luhn "
            "and card IIN ranges, with and without separators, and card field names. Findings give "
            "locations only, never the number.",
            ts.body,
        )
    )
    if report.scan.findings:
        story.append(Spacer(1, 2 * mm))
        rows = [
            [
                ts.para(f.location.describe(), ts.cell),
                ts.para(f.kind + (f" ({f.field})" if f.field else ""), ts.cell),
                ts.para(f.detector + (", separators" if f.separators else ""), ts.cell),
                ts.para(str(f.count), ts.cell_right),
            ]
            for f in report.scan.findings[:_MAX_FINDINGS]
        ]
        story.append(
            _table(
                ts,
                ["LOCATION", "KIND", "DETECTOR", "COUNT"],
                rows,
                [_FRAME_WIDTH - 85 * mm, 35 * mm, 35 * mm, 15 * mm],
            )
        )

    story += _heading(ts, "Configuration checks")
    check_rows = [
        [
            _status(ts, c.status),
            ts.para(f"{c.title} ({c.requirement})", ts.cell),
            ts.lines(list(c.evidence), ts.cell),
        ]
        for c in report.checks
    ]
    story.append(
        _table(ts, ["STATUS", "CHECK", "EVIDENCE"], check_rows, [18 * mm, 48 * mm, _FRAME_WIDTH - 66 * mm])
    )

    story += _heading(ts, "Applicable PCI DSS v4.0.1 requirements")
    for req in report.requirements:
        block = [
            Table(
                [[ts.para(f"{req.id} {req.title}", ts.strong), _status(ts, req.status)]],
                colWidths=[_FRAME_WIDTH - 25 * mm, 25 * mm],
                style=ts.table_style(
                    [("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]
                ),
            ),
            ts.para(req.how, ts.body),
        ]
        if req.evidence:
            muted = ParagraphStyle("evidence", parent=ts.cell, textColor=_MUTED)
            block.append(ts.lines([f"Evidence: {line}" for line in req.evidence], muted))
        block.append(Spacer(1, 3 * mm))
        story.append(KeepTogether(block))
    signoff = Table(
        [[ts.para(label, ts.label) for label in ("REVIEWED BY", "DATE", "SIGNATURE")]],
        colWidths=[_FRAME_WIDTH * 0.4, _FRAME_WIDTH * 0.2, _FRAME_WIDTH * 0.4],
        style=ts.table_style(
            [("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black), ("TOPPADDING", (0, 0), (-1, -1), 3)]
        ),
    )
    story += [*_heading(ts, "Review"), Spacer(1, 12 * mm), signoff]
    return story


def render_scope_report_pdf(report: ScopeReport, *, now: datetime) -> bytes:
    """The report as PDF bytes, built in memory; ``now`` is the document's creation date.

    Raises:
        ValidationFailed: ``now`` has no time zone (``field="now"``).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValidationFailed("now must be timezone-aware.", field="now")
    loaded = _load(default_invoice_font())
    ts = _Typesetter(loaded)
    decor = _PageDecor(
        font=loaded,
        reference="PCI scope report",
        footer=f"Veilbill · generated {report.generated_at:%Y-%m-%d %H:%M} UTC",
        watermark=None,
        created=now.astimezone(UTC).strftime("D:%Y%m%d%H%M%S+00'00'"),
        page_count=None,
    )
    _, pages = _build(_story(ts, report), decor, "PCI DSS scope report")
    pdf, _ = _build(_story(ts, report), replace(decor, page_count=pages), "PCI DSS scope report")
    return pdf
