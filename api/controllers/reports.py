"""``/v1/reports``: anonymized invoice datasets and aggregates for a period (accountant role).

Each export carries its guarantee in ``X-Veilbill-*`` headers; Parquet files carry it in their
key-value metadata too (``veilbill.guarantee``), and ``format=guarantee`` returns the guarantee
document alone for the same parameters (the sidecar of a CSV or JSON Lines export).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Annotated, Literal

import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from litestar import Controller, Response, get
from litestar.params import QueryParameter
from litestar.response import Stream

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from billing import Dataset, RevenueGrouping

__all__ = ["DateFrom", "DateTo", "ReportController", "ReportFormat", "export_dataset", "guarantee_headers"]

ReportFormat = Literal["csv", "jsonl", "parquet", "guarantee"]
ReportProfile = Literal["hipaa-safe-harbor"]
DateFrom = Annotated[date, QueryParameter(name="from")]
DateTo = Annotated[date, QueryParameter(name="to")]

_ROWS_PER_CHUNK = 1000
_BYTES_PER_CHUNK = 64 * 1024
_MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
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


class ReportController(Controller):
    path = "/v1/reports"
    tags = ["reports"]
    guards = [requires_role("accountant")]

    @get("/invoices", sync_to_thread=True, summary="Anonymized invoice dataset (k-anonymous, l-diverse)")
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
        dataset = billing.reports.invoice_dataset(actor, date_from, date_to, k=k, l=l, profile=profile)
        return export_dataset(dataset, report_format, date_from, date_to)

    @get("/revenue", sync_to_thread=True, summary="Revenue per period/category, small cells folded")
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
        dataset = billing.reports.revenue(actor, date_from, date_to, group_by=group_by, k=k)
        return export_dataset(dataset, report_format, date_from, date_to)

    @get("/tax", sync_to_thread=True, summary="Net and tax per rate and month")
    def tax_report(
        self,
        billing: BillingDep,
        actor: ActorDep,
        date_from: DateFrom,
        date_to: DateTo,
        report_format: Annotated[ReportFormat, QueryParameter(name="format")] = "csv",
    ) -> Response[bytes] | Stream:
        dataset = billing.reports.tax_summary(actor, date_from, date_to)
        return export_dataset(dataset, report_format, date_from, date_to)


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


def export_dataset(
    dataset: Dataset, report_format: ReportFormat, date_from: date, date_to: date
) -> Response[bytes] | Stream:
    """``dataset`` as a streamed download (or its guarantee document), with the guarantee headers.

    Shared by the API and the ``/reports`` page, so both serve byte-identical files.
    """
    headers = {**guarantee_headers(dataset.guarantee), "Cache-Control": "no-store"}
    if report_format == "guarantee":
        body = json.dumps(dict(dataset.guarantee), sort_keys=True).encode()
        return Response(body, media_type="application/json", headers=headers)
    name = f"{dataset.name}-{date_from.isoformat()}-{date_to.isoformat()}.{report_format}"
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    chunks = {"csv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}[report_format]
    return Stream(chunks(dataset), media_type=_MEDIA_TYPES[report_format], headers=headers)


def _csv_chunks(dataset: Dataset) -> Iterator[bytes]:
    frame = dataset.frame
    yield frame.head(0).write_csv().encode()  # the header row, even for an empty release
    for chunk in frame.iter_slices(n_rows=_ROWS_PER_CHUNK):
        yield chunk.write_csv(include_header=False).encode()


def _jsonl_chunks(dataset: Dataset) -> Iterator[bytes]:
    for chunk in dataset.frame.iter_slices(n_rows=_ROWS_PER_CHUNK):
        yield chunk.write_ndjson().encode()


def _parquet_chunks(dataset: Dataset) -> Iterator[bytes]:
    # Parquet needs its footer (schema, row groups, metadata) before a reader can use any of it, so
    # the file is built whole in memory and then streamed out in chunks.
    table = _with_guarantee(dataset.frame, dataset.guarantee)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=_ROWS_PER_CHUNK * 64)
    data = buffer.getbuffer()
    for start in range(0, len(data), _BYTES_PER_CHUNK):
        yield bytes(data[start : start + _BYTES_PER_CHUNK])


def _with_guarantee(frame: pl.DataFrame, guarantee: Mapping[str, object]) -> pa.Table:
    table = frame.to_arrow()
    metadata = dict(table.schema.metadata or {})
    metadata[b"veilbill.guarantee"] = json.dumps(dict(guarantee), sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)
