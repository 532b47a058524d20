"""``/v1/reports``: anonymized invoice datasets and aggregates for a period (accountant role).

Each export carries its guarantee in ``X-Veilbill-*`` headers; Parquet files carry it in their
key-value metadata too (``veilbill.guarantee``), and ``format=guarantee`` returns the guarantee
document alone for the same parameters (the sidecar of a CSV or JSON Lines export). Rows are
streamed as the service reads them (``stream_export``): the guarantee is settled before the first
byte, and memory does not grow with the period.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.params import QueryParameter
from litestar.response import Stream

from anonymize import encode_release
from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import ReportExport, RevenueGrouping

__all__ = ["DateFrom", "DateTo", "ReportController", "ReportFormat", "guarantee_headers", "stream_export"]

ReportFormat = Literal["csv", "jsonl", "parquet", "guarantee"]
ReportProfile = Literal["hipaa-safe-harbor"]
DateFrom = Annotated[date, QueryParameter(name="from")]
DateTo = Annotated[date, QueryParameter(name="to")]

_MEDIA_TYPES = {
    "csv": "text/csv",  # Litestar adds "; charset=utf-8" to text types
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
_HEADER_FIELDS = {
    "X-Veilbill-K": "k",
    "X-Veilbill-L": "l",
    "X-Veilbill-Suppressed": "suppressed",
    "X-Veilbill-Levels": "levels",
    "X-Veilbill-Loss": "loss",
    "X-Veilbill-Max-Risk": "max_risk",
    "X-Veilbill-Profile": "profile",
}


@dataclass
class ReportOperation(Operation):
    """A report route's OpenAPI operation: its 200 is one of the file formats, or the guarantee.

    Litestar documents one media type per handler; these routes answer in the one ``format``
    asks for, so the success response lists them all.
    """

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            binary = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))
            ok.content = dict.fromkeys(_MEDIA_TYPES.values(), binary)
            ok.content["application/json"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))
            ok.description = "The file in the requested format, or (format=guarantee) its guarantee"


class ReportController(Controller):
    path = "/v1/reports"
    tags = ["reports"]
    guards = [requires_role("accountant")]

    @get(
        "/invoices",
        sync_to_thread=True,
        operation_class=ReportOperation,
        summary="Anonymized invoice dataset (k-anonymous, l-diverse)",
    )
    def invoice_report(
        self,
        billing: BillingDep,
        actor: ActorDep,
        date_from: DateFrom,
        date_to: DateTo,
        report_format: Annotated[ReportFormat, QueryParameter(name="format")] = "csv",
        k: Annotated[int, QueryParameter(ge=2, le=1000)] = 5,
        l: Annotated[int, QueryParameter(ge=1, le=1000)] = 2,  # noqa: E741 -- the model's name
        profile: Annotated[ReportProfile | None, QueryParameter()] = None,
    ) -> Response[bytes] | Stream:
        export = billing.reports.export_invoices(actor, date_from, date_to, k=k, l=l, profile=profile)
        return stream_export(export, report_format, date_from, date_to)

    @get(
        "/revenue",
        sync_to_thread=True,
        operation_class=ReportOperation,
        summary="Revenue per period/category, small cells folded",
    )
    def revenue_report(
        self,
        billing: BillingDep,
        actor: ActorDep,
        date_from: DateFrom,
        date_to: DateTo,
        group_by: Annotated[RevenueGrouping, QueryParameter()] = "month",
        report_format: Annotated[ReportFormat, QueryParameter(name="format")] = "csv",
        k: Annotated[int, QueryParameter(ge=2, le=1000)] = 5,
    ) -> Response[bytes] | Stream:
        export = billing.reports.export_revenue(actor, date_from, date_to, group_by=group_by, k=k)
        return stream_export(export, report_format, date_from, date_to)

    @get(
        "/tax", sync_to_thread=True, operation_class=ReportOperation, summary="Net and tax per rate and month"
    )
    def tax_report(
        self,
        billing: BillingDep,
        actor: ActorDep,
        date_from: DateFrom,
        date_to: DateTo,
        report_format: Annotated[ReportFormat, QueryParameter(name="format")] = "csv",
    ) -> Response[bytes] | Stream:
        export = billing.reports.export_tax(actor, date_from, date_to)
        return stream_export(export, report_format, date_from, date_to)


def guarantee_headers(guarantee: Mapping[str, object]) -> dict[str, str]:
    """The ``X-Veilbill-*`` headers of a guarantee (JSON for non-scalars, empty when absent)."""
    headers = {}
    for header, key in _HEADER_FIELDS.items():
        value = guarantee.get(key)
        if value is None:
            headers[header] = ""
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            headers[header] = str(value)
        else:
            headers[header] = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return headers


def stream_export(
    export: ReportExport, report_format: ReportFormat, date_from: date, date_to: date
) -> Response[bytes] | Stream:
    """The HTTP response of an export: its rows streamed in ``report_format`` with the guarantee in
    headers (and Parquet metadata), or the guarantee document alone for ``guarantee``.

    Takes ownership of ``export``: it is closed when the stream ends, is abandoned, or is not needed.
    Reusable by any page or route that serves reports.
    """
    headers = {**guarantee_headers(export.guarantee), "Cache-Control": "no-store"}
    if report_format == "guarantee":
        export.close()
        body = json.dumps(dict(export.guarantee), sort_keys=True).encode()
        return Response(body, media_type="application/json", headers=headers)
    name = f"{export.name}-{date_from.isoformat()}-{date_to.isoformat()}.{report_format}"
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    body_chunks = encode_release(
        export.chunks(),
        schema=export.schema,
        output_format=report_format,
        metadata={"veilbill.guarantee": json.dumps(dict(export.guarantee), sort_keys=True)},
    )
    return Stream(_closing(body_chunks, export), media_type=_MEDIA_TYPES[report_format], headers=headers)


def _closing(chunks: Iterator[bytes], export: ReportExport) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        export.close()
