"""``/reports``: the accountant's page — revenue charts for a period, the datasets to download.

Everything shown comes from ``billing.reports``, the service behind ``/v1/reports``: revenue by
month and by category (small cells folded into ``other``), and the guarantee of the invoice dataset.
Downloads under ``/reports/download/…`` call the same service methods and the same streaming code
(:func:`api.controllers.reports.stream_export`) as the API, with the session's actor, so they are
audited (``report.exported``) and pseudonymized for the signed-in key exactly as API exports are.
Opening the page runs the two revenue reports and the invoice release (for its guarantee), so each
view is audited as those three exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import polars as pl
from litestar import Request, Response, get
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream, Template

from api.charts import BarChart, bar_chart, display_amount
from api.controllers.reports import DateFrom, DateTo, ReportFormat, stream_export
from api.deps import ActorDep, BillingDep
from api.pages import CSRF_FIELD, PageController, requires_page_role
from billing import Actor, Billing, Dataset, ReportExport, RevenueGrouping
from billing.errors import NotFound, ValidationFailed

__all__ = ["ReportsPageController"]

_OTHER = "other"
_FORMATS = (("csv", "CSV"), ("jsonl", "JSON Lines"), ("parquet", "Parquet"))


@dataclass(frozen=True, slots=True)
class SummaryRow:
    label: str
    invoices: int
    customers: int
    net: str
    tax: str
    total: str
    refunded: str
    folded: bool


@dataclass(frozen=True, slots=True)
class CurrencyOverview:
    currency: str
    invoices: int
    net: str
    tax: str
    total: str
    refunded: str
    by_month: BarChart
    by_category: BarChart
    month_rows: tuple[SummaryRow, ...]
    category_rows: tuple[SummaryRow, ...]


@dataclass(frozen=True, slots=True)
class Download:
    title: str
    description: str
    links: tuple[tuple[str, str], ...]  # (label, url)


class ReportsPageController(PageController):
    path = "/reports"
    guards = [requires_page_role("accountant")]

    @get("/", sync_to_thread=True)
    def reports_page(
        self,
        request: Request[Any, Any, Any],
        billing: BillingDep,
        actor: ActorDep,
        date_from: Annotated[date | None, QueryParameter(name="from")] = None,
        date_to: Annotated[date | None, QueryParameter(name="to")] = None,
    ) -> Template:
        today = billing.clock().date()
        start = date_from or today.replace(month=1, day=1)
        end = date_to or today
        context: dict[str, Any] = {
            "period_from": start.isoformat(),
            "period_to": end.isoformat(),
            "session": request.scope.get("auth"),
            "csrf_field": CSRF_FIELD,
            "idle_seconds": int(billing.page_sessions.policy.idle.total_seconds()),
            "next": request.scope.get("path", "/reports"),
        }
        if start > end:
            context["period_error"] = "The period starts after it ends."
            return Template("pages/reports.html", context=context, status_code=422)
        context.update(_overview(billing, actor, start, end))
        return Template("pages/reports.html", context=context)

    @get("/download/{dataset:str}", sync_to_thread=True)
    def download(
        self,
        billing: BillingDep,
        actor: ActorDep,
        dataset: FromPath[str],
        date_from: DateFrom,
        date_to: DateTo,
        report_format: Annotated[ReportFormat, QueryParameter(name="format")] = "csv",
        group_by: Annotated[RevenueGrouping, QueryParameter()] = "month",
    ) -> Response[bytes] | Stream:
        """The same files as ``/v1/reports/{dataset}`` (default k=5, l=2), for the session's key."""
        export: ReportExport
        if dataset == "invoices":
            export = billing.reports.export_invoices(actor, date_from, date_to)
        elif dataset == "revenue":
            export = billing.reports.export_revenue(actor, date_from, date_to, group_by=group_by)
        elif dataset == "tax":
            export = billing.reports.export_tax(actor, date_from, date_to)
        else:
            raise NotFound(resource="dataset")
        return stream_export(export, report_format, date_from, date_to)


def _overview(billing: Billing, actor: Actor, start: date, end: date) -> dict[str, Any]:
    by_month = billing.reports.revenue(actor, start, end, group_by="month")
    by_category = billing.reports.revenue(actor, start, end, group_by="category")
    currencies = sorted(set(by_month.frame.get_column("currency").to_list()))
    overviews = [_currency_overview(c, by_month.frame, by_category.frame) for c in currencies]
    try:
        invoices = billing.reports.invoice_dataset(actor, start, end)
    except ValidationFailed as exc:
        if exc.ids.get("reason") != "no_anonymous_release":
            raise
        guarantee = None
    else:
        guarantee = _guarantee_view(invoices)
    return {
        "business": billing.tenants.business_details(actor.tenant_id).legal_name,
        "currencies": overviews,
        "withheld": list(by_month.guarantee.get("withheld_currencies") or []),  # type: ignore[call-overload]
        "k": by_month.guarantee.get("k"),
        "guarantee": guarantee,
        "downloads": _downloads(start, end, invoices_available=guarantee is not None),
    }


def _rows(frame: pl.DataFrame, column: str, currency: str, *, by_amount: bool) -> list[dict[str, Any]]:
    rows = frame.filter(pl.col("currency") == currency).to_dicts()
    if by_amount:
        rows.sort(key=lambda row: -int(row["net"]))
    else:
        rows.sort(key=lambda row: str(row[column]))
    return [row for row in rows if row[column] != _OTHER] + [row for row in rows if row[column] == _OTHER]


def _month_label(value: str) -> str:
    if value == _OTHER:
        return "Other"
    return datetime.strptime(value, "%Y-%m").strftime("%b %Y")  # a calendar label: no time zone


def _summary(row: dict[str, Any], label: str, currency: str) -> SummaryRow:
    return SummaryRow(
        label=label,
        invoices=int(row["invoices"]),
        customers=int(row["customers"]),
        net=display_amount(int(row["net"]), currency),
        tax=display_amount(int(row["tax"]), currency),
        total=display_amount(int(row["total"]), currency),
        refunded=display_amount(int(row["refunded"]), currency),
        folded=row["label_source"] == _OTHER,
    )


def _currency_overview(currency: str, months: pl.DataFrame, categories: pl.DataFrame) -> CurrencyOverview:
    month_rows = _rows(months, "month", currency, by_amount=False)
    category_rows = _rows(categories, "category", currency, by_amount=True)
    month_labels = [_month_label(str(row["month"])) for row in month_rows]
    category_labels = [
        str(row["category"]) if row["category"] != _OTHER else "Other" for row in category_rows
    ]
    totals = {name: sum(int(row[name]) for row in month_rows) for name in ("net", "tax", "total", "refunded")}
    return CurrencyOverview(
        currency=currency,
        invoices=sum(int(row["invoices"]) for row in month_rows),
        **{name: display_amount(value, currency) for name, value in totals.items()},
        by_month=bar_chart(
            f"Net revenue by month ({currency})",
            currency,
            [(label, int(row["net"])) for label, row in zip(month_labels, month_rows, strict=True)],
            folded_label="Other",
            min_plot_width=520,
        ),
        by_category=bar_chart(
            f"Net revenue by category ({currency})",
            currency,
            [(label, int(row["net"])) for label, row in zip(category_labels, category_rows, strict=True)],
            folded_label="Other",
            min_plot_width=300,
        ),
        month_rows=tuple(
            _summary({**row, "label_source": row["month"]}, label, currency)
            for label, row in zip(month_labels, month_rows, strict=True)
        ),
        category_rows=tuple(
            _summary({**row, "label_source": row["category"]}, label, currency)
            for label, row in zip(category_labels, category_rows, strict=True)
        ),
    )


def _guarantee_view(dataset: Dataset) -> dict[str, Any]:
    g = dataset.guarantee
    loss = g.get("loss")
    limit = g.get("suppression")
    risk = g.get("max_risk")
    levels = g.get("levels") or {}
    return {
        "k": g.get("k"),
        "l": g.get("l"),
        "l_kind": g.get("l_kind") or "distinct",
        "suppressed": g.get("suppressed"),
        "rows": g.get("rows"),
        "suppression_limit": f"{float(limit) * 100:.0f} %" if isinstance(limit, int | float) else "—",
        "loss": f"{float(loss) * 100:.1f} %" if isinstance(loss, int | float) else "—",
        "max_risk": f"{float(risk) * 100:.1f} %" if isinstance(risk, int | float) else "—",
        "levels": sorted(levels.items()) if isinstance(levels, dict) else [],
    }


def _downloads(start: date, end: date, *, invoices_available: bool) -> list[Download]:
    def url(dataset: str, **params: str) -> str:
        query = {"from": start.isoformat(), "to": end.isoformat(), **params}
        return f"/reports/download/{dataset}?{urlencode(query)}"

    invoice_links = (
        *((label, url("invoices", format=fmt)) for fmt, label in _FORMATS),
        ("Guarantee (JSON)", url("invoices", format="guarantee")),
    )
    return [
        Download(
            "Invoices (anonymized)",
            "One row per finalized invoice: pseudonymous client, generalized region, age band, "
            "gender and period; exact amounts. k-anonymous and l-diverse."
            if invoices_available
            else "No release of this period satisfies k and l: choose a longer period.",
            invoice_links if invoices_available else (),
        ),
        Download(
            "Revenue by month",
            "Sums and counts per month; groups of fewer than k clients are folded into “other”.",
            tuple((label, url("revenue", group_by="month", format=fmt)) for fmt, label in _FORMATS),
        ),
        Download(
            "Revenue by category",
            "Sums and counts per service category, small groups folded the same way.",
            tuple((label, url("revenue", group_by="category", format=fmt)) for fmt, label in _FORMATS),
        ),
        Download(
            "Tax summary",
            "Net and tax per rate and month, exact (the figures declared to the tax authority).",
            tuple((label, url("tax", format=fmt)) for fmt, label in _FORMATS),
        ),
    ]
