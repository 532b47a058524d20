"""Anonymized reports for accountants: an invoice-level dataset and aggregates, each with its guarantee.

``invoice_dataset``: one row per finalized invoice issued in the period (drafts never appear).

* ``customer`` is a keyed pseudonym of the internal customer id, never of PII. The key is scoped to the
  API key that asks: ``scope_key = HMAC-SHA256(index_key, b"pseudonym-scope:" ‖ api_key_id)`` where
  ``index_key`` is the tenant's ``index`` DEK (no new key purpose is stored; the scope key is
  recomputed on each export). Two API keys therefore get unrelated pseudonyms and cannot join their
  exports; the same key gets stable pseudonyms across periods. Whoever holds the tenant's index key
  can recompute them (the business itself can, by design).
* ``region`` (postcode), ``age_band`` (age at issue from the birth date), ``gender`` and ``period``
  (issue date) are quasi-identifiers, ``category`` (the category of the line with the largest net;
  ties go to the first position) the sensitive attribute. The engine (:mod:`anonymize`) chooses the
  generalization of least loss that satisfies k-anonymity (in distinct clients) and distinct
  l-diversity within the suppression limit.
* Profile decryption happens in memory, one client at a time and once per client; only postcode,
  birth date and gender are opened. Erased clients (no profile key) and clients without those fields
  have their quasi-identifiers suppressed (``*``) and count in ``suppressed``; the engine is given
  what is left of the limit.
* Amounts are exact (accounts must reconcile): an unusual amount can single a client out, which is
  why ``revenue`` aggregates are the default for sharing beyond the accountant.
* k counts clients, not invoices (``"k_counts": "customers"``): a released class holds invoices of
  at least k distinct clients, so a client with many alike invoices never forms a class alone. The
  pseudonym column links a client's rows anyway; what the release protects is the link from those
  rows to the person.
* Streamed in two passes over one database snapshot (``export_invoices``): memory grows with small
  integer codes per invoice (13 bytes) and a few values per client, never with the rows
  themselves. The search takes the invoices a year at a time (``plan_partitioned_release``: no
  label of the period below its top spans two years), each year's distinct (quasi-identifiers,
  category, client) combinations kept on disk while it runs, so its working memory is about one
  year's, plus tables per client and age and per combination of leaves and category that stop
  growing once every client has appeared (docs/benchmarks.md, "Export from the database").

Profile ``hipaa-safe-harbor`` (no engine search): dates to the year, ZIP3 (first 3 characters then
``**``) with the 17 ZIP3 areas of 20,000 people or fewer (US Census list) set to ``000**``, ages over
89 as ``90+``, and the pseudonym column dropped (it is a unique identifier). Safe Harbor is a US rule:
here it is applied to every postcode as if it were a ZIP code.

``revenue``: sums and counts per group (always per currency); a cell with fewer than k distinct
customers is folded into an ``other`` row by :func:`anonymize.suppress_small_cells`, so totals
reconcile. An invoice counts under its main category (as in the dataset), so every sum equals the sum
over whole invoices.

``tax_summary``: net and tax per currency, month and tax rate, from invoice lines. Not suppressed: these
are the figures the business declares to its tax authority, which must be exact per rate and period;
they carry no customer column and are released to the accountant only. A rate used by one client in a
month does reveal that client's spending at that rate to whoever knows who they are — a residual risk
stated in ``docs/``.

Every export is audited (``report.exported``) in a short transaction of its own once its data is read
(reads happen in a read-only snapshot, ``Database.snapshot``), before any row is handed out.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import polars as pl
from sqlalchemy import ColumnElement, Executable, Select, and_
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from anonymize import (
    SUPPRESSED,
    AnonymizationConfig,
    AnonymizationError,
    Cell,
    EncodedTable,
    Hierarchy,
    Pseudonymizer,
    ReleasePlan,
    age_bands,
    date_levels,
    flat_hierarchy,
    plan_partitioned_release,
    postcode_prefix,
    suppress_small_cells,
)
from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database
from billing._envelope import FieldContext, open_sealed_text
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import Customer, Invoice, InvoiceLine, Payment, PaymentMethod
from billing.errors import DecryptionError, ValidationFailed

__all__ = [
    "HIPAA_RESTRICTED_ZIP3",
    "INVOICE_SCHEMA",
    "PROFILES",
    "REVENUE_GROUPINGS",
    "Dataset",
    "ReportExport",
    "ReportService",
    "RevenueGrouping",
]

PROFILES = ("hipaa-safe-harbor",)
RevenueGrouping = Literal["month", "category", "month,category"]
REVENUE_GROUPINGS: tuple[str, ...] = ("month", "category", "month,category")

# ZIP3 areas with 20,000 people or fewer (2000 US Census, as listed by HHS Safe Harbor guidance).
HIPAA_RESTRICTED_ZIP3 = frozenset(
    {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878", "879",
     "884", "890", "893"}
)  # fmt: skip

QUASI_IDENTIFIERS = ("region", "age_band", "gender", "period")
SENSITIVE = "category"
INVOICE_COLUMNS = (
    "customer",
    *QUASI_IDENTIFIERS,
    SENSITIVE,
    "net",
    "tax",
    "total",
    "refunded",
    "currency",
    "status",
    "card_brand",
)
_OTHER = "other"
_SCOPE_LABEL = b"pseudonym-scope:"
_PSEUDONYM_PURPOSE = "reports/customer"


INVOICE_SCHEMA: dict[str, type[pl.DataType]] = {
    **dict.fromkeys(("customer", *QUASI_IDENTIFIERS, SENSITIVE), pl.String),
    **dict.fromkeys(("net", "tax", "total", "refunded"), pl.Int64),
    **dict.fromkeys(("currency", "status", "card_brand"), pl.String),
}
DEFAULT_CHUNK_ROWS = 20_000
_CUSTOMER_BATCH = 500
_ROW_CHUNK = 1 << 16  # rows per step when deriving per-invoice codes from per-client tables
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@dataclass(frozen=True)
class Dataset:
    """A released table and its guarantee (a JSON-ready ``dict``: k, l, suppression, levels, loss,
    max_risk, suppressed, rows, profile and, per report, a few more)."""

    name: str
    frame: pl.DataFrame = field(repr=False)
    guarantee: Mapping[str, object]


class ReportExport:
    """One export, ready to stream: ``guarantee`` is final before the first row is read again, and
    ``chunks()`` yields the released rows as DataFrames of ``schema``, a chunk at a time, from the
    same database snapshot the guarantee was computed on.

    Iterate ``chunks()`` once; exhausting it, ``close()`` or leaving a ``with`` block ends the
    snapshot (an export that is never read must still be closed).
    """

    def __init__(
        self,
        name: str,
        guarantee: Mapping[str, object],
        schema: Mapping[str, type[pl.DataType]],
        chunks: Iterator[pl.DataFrame],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.guarantee = guarantee
        self.schema = dict(schema)
        self._chunks = chunks
        self._on_close = on_close
        self._started = False

    def chunks(self) -> Iterator[pl.DataFrame]:
        """The released rows, chunk by chunk; raises ``RuntimeError`` when called a second time."""
        if self._started:
            raise RuntimeError("an export's rows can be read once")
        self._started = True
        try:
            yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        """End the snapshot (idempotent)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def to_dataset(self) -> Dataset:
        """Read every chunk into one DataFrame (for small periods and tests)."""
        frames = list(self.chunks())
        frame = pl.concat(frames) if frames else pl.DataFrame(schema=self.schema)
        return Dataset(self.name, frame, self.guarantee)

    def __enter__(self) -> ReportExport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Client:
    postcode: str | None
    birth_date: date | None
    gender: str | None


_EXPORT_FOLDER_PREFIX = "veilbill-export-"


def _export_folder(stack: contextlib.ExitStack) -> Path:
    """A private (0700) temporary folder for one export's files, deleted by ``stack``.

    A process killed during an export deletes nothing, so the folder is named after the process
    (``veilbill-export-<pid namespace>.<pid>-…``), and each export first deletes the folders of
    this user whose process, in this process's PID namespace, no longer exists. A folder of
    another namespace (another container sharing the directory) is left alone: its process
    cannot be looked up from here. Without ``/proc`` (no namespace to name) nothing is swept."""
    parent = Path(tempfile.gettempdir())
    namespace = _pid_namespace()
    if namespace is not None:
        _remove_folders_of_dead_exports(parent, namespace)
    prefix = f"{_EXPORT_FOLDER_PREFIX}{namespace or 0}.{os.getpid()}-"
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))


def _pid_namespace() -> int | None:
    """The inode of ``/proc/self/ns/pid``, which names this process's PID namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _remove_folders_of_dead_exports(parent: Path, namespace: int) -> None:
    """Delete ``parent``'s export folders of this user and PID namespace whose process is gone."""
    prefix = f"{_EXPORT_FOLDER_PREFIX}{namespace}."
    for entry in parent.glob(f"{prefix}*-*"):
        pid = entry.name.removeprefix(prefix).split("-", 1)[0]
        try:
            info = entry.lstat()
        except OSError:
            continue
        ours = pid.isdigit() and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        if ours and not _process_exists(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


class _CodeColumn:
    """One int32 code per invoice, written to a file as pass 1 reads the invoices and read back a
    slice at a time (``os.pread``), so pass 1's codes never sit in memory whole: what an export
    holds does not grow with the invoices of its period (docs/benchmarks.md, "Export from the
    database"). The file is in the export's private temporary folder (mode 0700) and holds only
    numbers whose meaning — which client a code is, which category — lives in this process's
    memory; it is deleted when the export is closed."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w+b")
        self.size = 0
        self.low = 0
        self.high = 0

    def append(self, values: npt.NDArray[np.int32]) -> None:
        if values.size:
            low, high = int(values.min()), int(values.max())
            self.low, self.high = (low, high) if not self.size else (min(self.low, low), max(self.high, high))
        self._file.write(np.ascontiguousarray(values, dtype=np.int32).tobytes())
        self.size += int(values.size)

    def finish(self) -> None:
        """Flush what was appended: reads see all of it from here on."""
        self._file.flush()

    def __getitem__(self, rows: slice) -> npt.NDArray[np.int32]:
        """The codes of a slice of rows (a read-only array)."""
        start, stop, step = rows.indices(self.size)
        if step != 1:  # pragma: no cover -- the export reads consecutive rows
            raise ValueError("rows are read in consecutive slices")
        count = max(stop - start, 0)
        data = os.pread(self._file.fileno(), count * 4, start * 4) if count else b""
        if len(data) != count * 4:
            raise RuntimeError("an export's temporary file was cut short")
        return np.frombuffer(data, dtype=np.int32)

    def close(self) -> None:
        self._file.close()


@dataclass
class _Compact:
    """Pass 1: what the search needs, as small integers — an int32 per invoice for each of client,
    issue day and category (on disk, ``_CodeColumn``), plus a few values per client. Row i is the
    i-th invoice in export order (by invoice id)."""

    folder: Path  # the export's private temporary folder (``_export_folder``)
    customer: _CodeColumn
    day: _CodeColumn
    category: _CodeColumn
    categories: list[str]
    customer_index: dict[str, int]
    postcode: npt.NDArray[np.int32]  # per client: code in ``postcodes`` or -1
    postcodes: list[str]
    birth: npt.NDArray[np.int32]  # per client: date ordinal or -1
    gender: npt.NDArray[np.int32]  # per client: code in ``genders`` or -1
    genders: list[str]

    @property
    def rows(self) -> int:
        return self.customer.size

    def slices(self, chunk_rows: int = 1 << 16) -> Iterator[slice]:
        """Consecutive slices of at most ``chunk_rows`` rows covering every invoice."""
        return _row_slices(self.rows, chunk_rows)


@dataclass
class _ClientAttributes:
    """Per client (in order of first appearance), the decrypted quasi-identifiers as codes."""

    postcode: list[int] = field(default_factory=list)
    birth: list[int] = field(default_factory=list)
    gender: list[int] = field(default_factory=list)
    postcodes: dict[str, int] = field(default_factory=dict)
    genders: dict[str, int] = field(default_factory=dict)

    def add(self, client: _Client) -> None:
        postcode, birth, gender = client.postcode, client.birth_date, client.gender
        self.postcode.append(
            -1 if postcode is None else self.postcodes.setdefault(postcode, len(self.postcodes))
        )
        self.birth.append(-1 if birth is None else birth.toordinal())
        self.gender.append(-1 if gender is None else self.genders.setdefault(gender, len(self.genders)))


class ReportService:
    def __init__(
        self, db: Database, keyring: Keyring, audit: AuditTrail, *, clock: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._clock = clock

    # --- invoices ---------------------------------------------------------------------------

    def invoice_dataset(
        self,
        actor: Actor,
        date_from: date,
        date_to: date,
        *,
        k: int = 5,
        l: int = 2,  # noqa: E741 -- the model's name in the literature
        suppression: float = 0.05,
        profile: str | None = None,
    ) -> Dataset:
        """``export_invoices`` read whole into one DataFrame (small periods, tests)."""
        return self.export_invoices(
            actor, date_from, date_to, k=k, l=l, suppression=suppression, profile=profile
        ).to_dataset()

    def export_invoices(
        self,
        actor: Actor,
        date_from: date,
        date_to: date,
        *,
        k: int = 5,
        l: int = 2,  # noqa: E741 -- the model's name in the literature
        suppression: float = 0.05,
        profile: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> ReportExport:
        """The anonymized invoice dataset of the period (see the module docstring), as a stream.

        Pass 1 reads, in chunks from a database snapshot, only what the search needs — client,
        issue date and main category of each invoice as integer codes, and each client's postcode,
        birth date and gender, decrypted once per client — and finds the release. The export is
        audited, then pass 2 (``chunks()``) reads the same rows again from the same snapshot and
        releases them chunk by chunk. Memory grows with the compact pass-1 arrays (13 bytes per
        invoice: three int32 codes and a suppressed flag) and the number of clients, not with the
        rows; during the search only, with one year's engine input (24 bytes per invoice of the
        year) and what the partitioned search holds (module docstring).

        Raises ``ValidationFailed`` (field ``from``, ``k``, ``l``, ``suppression`` or ``profile``) for
        bad parameters, and for a period whose invoices admit no release under k and l (field ``k``,
        reason ``no_anonymous_release``).
        """
        _check_period(date_from, date_to)
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValidationFailed("k must be an integer of at least 2", field="k")
        if isinstance(l, bool) or not isinstance(l, int) or l < 1:
            raise ValidationFailed("l must be an integer of at least 1", field="l")
        if not 0.0 <= suppression <= 1.0:
            raise ValidationFailed("suppression must be a fraction between 0 and 1", field="suppression")
        if profile is not None and profile not in PROFILES:
            raise ValidationFailed("unknown profile", field="profile")
        stack = contextlib.ExitStack()
        try:
            session = stack.enter_context(self._db.snapshot())
            compact = self._read_compact(session, actor.tenant_id, date_from, date_to, chunk_rows, stack)
            pseudonym = Pseudonymizer(
                _scope_key(self._index_key(session, actor.tenant_id), actor), purpose=_PSEUDONYM_PURPOSE
            )
            release: _Release
            if profile == "hipaa-safe-harbor":
                release = _SafeHarborRelease(compact)
            else:
                release = _EngineRelease(compact, k=k, l=l, suppression=suppression)
            with self._db.transaction() as audit_session:
                self._audit_export(
                    audit_session, actor, "invoices", profile=profile, rows=compact.rows, k=k, l=l
                )
        except BaseException:
            stack.close()
            raise
        guarantee = {"report": "invoices", **release.guarantee, "profile": profile}
        query = _invoice_rows_query(actor.tenant_id, date_from, date_to)
        chunks = _released_chunks(session, query, compact, release, pseudonym, chunk_rows)
        schema = release.schema
        return ReportExport("invoices", guarantee, schema, chunks, on_close=stack.close)

    # --- aggregates ---------------------------------------------------------------------------

    def revenue(
        self, actor: Actor, date_from: date, date_to: date, *, group_by: str = "month", k: int = 5
    ) -> Dataset:
        """Sums (net, tax, total, refunded) and counts per currency and group; small cells fold into
        ``other`` (per currency), so each currency's sums equal those over its invoices.

        Reads the invoices in chunks (memory grows with groups and clients, not invoices). Raises
        ``ValidationFailed`` (field ``from``, ``group_by`` or ``k``).
        """
        _check_period(date_from, date_to)
        if group_by not in REVENUE_GROUPINGS:
            raise ValidationFailed("unknown grouping", field="group_by")
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValidationFailed("k must be an integer of at least 2", field="k")
        columns = group_by.split(",")
        with self._db.snapshot() as session:
            query = (
                select_columns(
                    col(Invoice.customer_id),
                    col(Invoice.issue_date),
                    _main_category(),
                    col(Invoice.currency),
                    col(Invoice.subtotal),
                    col(Invoice.tax),
                    col(Invoice.total),
                    col(Invoice.amount_refunded),
                )
                .where(_period_filter(actor.tenant_id, date_from, date_to))
                .order_by(col(Invoice.id))
            )
            cells: dict[str, dict[tuple[str, ...], tuple[set[str], dict[str, int]]]] = {}
            for rows in _partitions(session, query, DEFAULT_CHUNK_ROWS):
                for customer_id, issued, category, currency, net, tax, total, refunded in rows:
                    # Prefixed keys cannot collide with the ``other`` key (a category may be named "other").
                    values = {"month": issued.strftime("%Y-%m"), "category": category or ""}
                    key = tuple(f"{column}:{values[column]}" for column in columns)
                    customers, sums = cells.setdefault(currency, {}).setdefault(
                        key, (set(), dict.fromkeys(("invoices", "net", "tax", "total", "refunded"), 0))
                    )
                    customers.add(customer_id)
                    sums["invoices"] += 1
                    sums["net"] += net
                    sums["tax"] += tax
                    sums["total"] += total
                    sums["refunded"] += refunded
            records: list[dict[str, object]] = []
            folded = 0
            withheld: list[str] = []
            for currency in sorted(cells):
                release = suppress_small_cells(
                    (Cell(key, frozenset(c), s) for key, (c, s) in sorted(cells[currency].items())),
                    k=k,
                    other_key=(_OTHER,),
                )
                if release.withheld:
                    withheld.append(currency)
                    continue
                folded += len(release.folded_keys)
                for released in release.cells:
                    if released.key == (_OTHER,):
                        labels = dict.fromkeys(columns, _OTHER)
                    else:
                        labels = dict(part.split(":", 1) for part in released.key)
                    records.append(
                        {
                            "currency": currency,
                            **labels,
                            "invoices": released.sums["invoices"],
                            "customers": released.customers,
                            **{name: released.sums[name] for name in ("net", "tax", "total", "refunded")},
                        }
                    )
            schema = {
                "currency": pl.String,
                **dict.fromkeys(columns, pl.String),
                **dict.fromkeys(("invoices", "customers", "net", "tax", "total", "refunded"), pl.Int64),
            }
            frame = pl.DataFrame(records, schema=schema)
            with self._db.transaction() as audit_session:  # the snapshot is read-only
                self._audit_export(
                    audit_session, actor, "revenue", profile=None, rows=frame.height, k=k, l=None
                )
        guarantee: dict[str, object] = {
            "report": "revenue",
            "k": k,
            "l": None,
            "k_counts": "customers",
            "group_by": group_by,
            "suppressed": folded,
            "withheld_currencies": withheld,
            "rows": frame.height,
            "profile": None,
        }
        return Dataset("revenue", frame, guarantee)

    def export_revenue(
        self, actor: Actor, date_from: date, date_to: date, *, group_by: str = "month", k: int = 5
    ) -> ReportExport:
        """``revenue`` as an export (aggregates are small: one chunk)."""
        return _single_chunk(self.revenue(actor, date_from, date_to, group_by=group_by, k=k))

    def tax_summary(self, actor: Actor, date_from: date, date_to: date) -> Dataset:
        """Net and tax per currency, month and tax rate, from invoice lines (not suppressed: see the
        module docstring). Reads the lines in chunks. Raises ``ValidationFailed`` (field ``from``)."""
        _check_period(date_from, date_to)
        with self._db.snapshot() as session:
            query = (
                select_columns(
                    col(Invoice.currency),
                    col(Invoice.issue_date),
                    col(InvoiceLine.tax_rate_bps),
                    col(InvoiceLine.net),
                    col(InvoiceLine.tax),
                )
                .join(Invoice, col(Invoice.id) == col(InvoiceLine.invoice_id))
                .where(_period_filter(actor.tenant_id, date_from, date_to))
                .where(col(InvoiceLine.tenant_id) == actor.tenant_id)
            )
            sums: dict[tuple[str, str, int], list[int]] = {}
            for rows in _partitions(session, query, DEFAULT_CHUNK_ROWS):
                for currency, issued, rate, net, tax in rows:
                    entry = sums.setdefault((currency, issued.strftime("%Y-%m"), rate), [0, 0, 0])
                    entry[0] += 1
                    entry[1] += net
                    entry[2] += tax
            frame = pl.DataFrame(
                [
                    {"currency": c, "month": m, "tax_rate_bps": r, "lines": n, "net": net, "tax": tax}
                    for (c, m, r), (n, net, tax) in sorted(sums.items())
                ],
                schema=TAX_SCHEMA,
            )
            with self._db.transaction() as audit_session:  # the snapshot is read-only
                self._audit_export(
                    audit_session, actor, "tax", profile=None, rows=frame.height, k=None, l=None
                )
        guarantee: dict[str, object] = {
            "report": "tax",
            "k": None,
            "l": None,
            "suppressed": 0,
            "rows": frame.height,
            "profile": None,
        }
        return Dataset("tax", frame, guarantee)

    def export_tax(self, actor: Actor, date_from: date, date_to: date) -> ReportExport:
        """``tax_summary`` as an export (one chunk)."""
        return _single_chunk(self.tax_summary(actor, date_from, date_to))

    # --- internals ----------------------------------------------------------------------------

    def _index_key(self, session: Session, tenant_id: str) -> bytes:
        return SubjectKeys(session, self._keyring, clock=self._clock).index_key(tenant_id)

    def _read_compact(
        self,
        session: Session,
        tenant_id: str,
        date_from: date,
        date_to: date,
        chunk_rows: int,
        stack: contextlib.ExitStack,
    ) -> _Compact:
        """Pass 1 (see ``export_invoices``); its code columns are files in a temporary folder that
        ``stack`` deletes."""
        customer_index: dict[str, int] = {}
        categories: dict[str, int] = {}
        clients = _ClientAttributes()
        folder = _export_folder(stack)
        columns = tuple(_CodeColumn(folder / name) for name in ("customer", "day", "category"))
        for column in columns:
            stack.callback(column.close)
        query = (
            select_columns(col(Invoice.customer_id), col(Invoice.issue_date), _main_category())
            .where(_period_filter(tenant_id, date_from, date_to))
            .order_by(col(Invoice.id))
        )
        for rows in _partitions(session, query, chunk_rows):
            count = len(rows)
            customer = np.empty(count, dtype=np.int32)
            day = np.empty(count, dtype=np.int32)
            category = np.empty(count, dtype=np.int32)
            new: list[str] = []
            for position, (customer_id, issued, main) in enumerate(rows):
                code = customer_index.get(customer_id)
                if code is None:
                    code = customer_index[customer_id] = len(customer_index)
                    new.append(customer_id)
                customer[position] = code
                day[position] = issued.toordinal()
                category[position] = categories.setdefault(main or "", len(categories))
            for column, values in zip(columns, (customer, day, category), strict=True):
                column.append(values)
            for start in range(0, len(new), _CUSTOMER_BATCH):
                for client in self._clients(session, tenant_id, new[start : start + _CUSTOMER_BATCH]):
                    clients.add(client)
        for column in columns:
            column.finish()
        return _Compact(
            folder=folder,
            customer=columns[0],
            day=columns[1],
            category=columns[2],
            categories=list(categories),
            customer_index=customer_index,
            postcode=np.asarray(clients.postcode, dtype=np.int32),
            postcodes=list(clients.postcodes),
            birth=np.asarray(clients.birth, dtype=np.int32),
            gender=np.asarray(clients.gender, dtype=np.int32),
            genders=list(clients.genders),
        )

    def _clients(self, session: Session, tenant_id: str, customer_ids: Sequence[str]) -> list[_Client]:
        """The quasi-identifiers of these clients, in this order, each decrypted once; erased or
        unreadable profiles give all None. Profile keys are unwrapped with one query per batch and
        forgotten after it."""
        keys = SubjectKeys(session, self._keyring, clock=self._clock)
        found = {
            row[0]: row
            for row in session.execute(
                select_columns(
                    col(Customer.id),
                    col(Customer.erased_at),
                    col(Customer.address_ct),
                    col(Customer.birth_date_ct),
                    col(Customer.gender_ct),
                ).where(col(Customer.tenant_id) == tenant_id, col(Customer.id).in_(customer_ids))
            )
        }
        keys.preload(tenant_id, [c for c, row in found.items() if row[1] is None], "profile")
        clients = []
        for customer_id in customer_ids:
            row = found.get(customer_id)
            if row is None or row[1] is not None:
                clients.append(_Client(None, None, None))
                continue
            clients.append(_open_client(keys, tenant_id, customer_id, row[2], row[3], row[4]))
        return clients

    def _audit_export(
        self,
        session: Session,
        actor: Actor,
        report: str,
        *,
        profile: str | None,
        rows: int,
        k: int | None,
        l: int | None,  # noqa: E741 -- the model's name in the literature
    ) -> None:
        self._audit.record(
            session,
            actor=actor,
            action="report.exported",
            resource_type="report",
            resource_id=report,
            detail={"report": report, "profile": profile, "rows": rows, "k": k, "l": l},
        )


TAX_SCHEMA: dict[str, type[pl.DataType]] = {
    "currency": pl.String,
    "month": pl.String,
    "tax_rate_bps": pl.Int64,
    "lines": pl.Int64,
    "net": pl.Int64,
    "tax": pl.Int64,
}


def _single_chunk(dataset: Dataset) -> ReportExport:
    schema = {name: type(dtype) for name, dtype in dataset.frame.schema.items()}
    return ReportExport(dataset.name, dataset.guarantee, schema, iter([dataset.frame]))


def _partitions(session: Session, query: Executable, chunk_rows: int) -> Iterator[Sequence[Any]]:
    """The rows of ``query`` in lists of ``chunk_rows``, fetched as they are consumed (a server-side
    cursor on PostgreSQL; SQLite's cursor steps through the result the same way)."""
    result = session.execute(query.execution_options(yield_per=chunk_rows))
    try:
        yield from result.partitions(chunk_rows)
    finally:
        result.close()


def _check_period(date_from: date, date_to: date) -> None:
    if date_from > date_to:
        raise ValidationFailed("the period starts after it ends", field="from")


def _scope_key(index_key: bytes, actor: Actor) -> bytes:
    """The per-API-key pseudonym scope key (operators at the command line share the ``operator`` scope)."""
    scope = (actor.key_id or "operator").encode("utf-8")
    return hmac.new(index_key, _SCOPE_LABEL + scope, hashlib.sha256).digest()


def _period_filter(tenant_id: str, date_from: date, date_to: date) -> ColumnElement[bool]:
    return and_(
        col(Invoice.tenant_id) == tenant_id,
        col(Invoice.status) != "draft",
        col(Invoice.issue_date).is_not(None),
        col(Invoice.issue_date) >= date_from,
        col(Invoice.issue_date) <= date_to,
    )


def _main_category() -> Any:
    """The category of the invoice's line with the largest net (ties: the first position)."""
    return (
        select(InvoiceLine.category)
        # By invoice id alone, so the (invoice_id, position) index serves it: lines belong to their
        # invoice's tenant (foreign key), and the invoices are already filtered by tenant.
        .where(col(InvoiceLine.invoice_id) == col(Invoice.id))
        .order_by(col(InvoiceLine.net).desc(), col(InvoiceLine.position))
        .limit(1)
        .correlate(Invoice)
        .scalar_subquery()
    )


def _card_brand() -> Any:
    """The brand of the card of the invoice's earliest succeeded payment."""
    return (
        select(PaymentMethod.brand)
        .join(Payment, col(Payment.payment_method_id) == col(PaymentMethod.id))
        .where(
            col(Payment.invoice_id) == col(Invoice.id),
            col(Payment.tenant_id) == col(Invoice.tenant_id),
            Payment.status == "succeeded",
        )
        .order_by(col(Payment.created_at), col(Payment.id))
        .limit(1)
        .correlate(Invoice)
        .scalar_subquery()
    )


def _invoice_rows_query(tenant_id: str, date_from: date, date_to: date) -> Select[Any]:
    """Pass 2: the same invoices in the same order as pass 1, with what is released as is."""
    return (
        select_columns(
            col(Invoice.customer_id),
            col(Invoice.issue_date),
            _main_category(),
            col(Invoice.subtotal),
            col(Invoice.tax),
            col(Invoice.total),
            col(Invoice.amount_refunded),
            col(Invoice.currency),
            col(Invoice.status),
            _card_brand(),
        )
        .where(_period_filter(tenant_id, date_from, date_to))
        .order_by(col(Invoice.id))
    )


def _open_client(
    keys: SubjectKeys,
    tenant_id: str,
    customer_id: str,
    address_ct: bytes | None,
    birth_date_ct: bytes | None,
    gender_ct: bytes | None,
) -> _Client:
    try:
        profile = keys.get(tenant_id, customer_id, "profile")

        def opened(column: str, sealed: bytes | None) -> str | None:
            if sealed is None:
                return None
            return open_sealed_text(
                profile, sealed, FieldContext(tenant_id, "customers", column, customer_id)
            )

        address = opened("address", address_ct)
        birth = opened("birth_date", birth_date_ct)
        gender = opened("gender", gender_ct)
    except DecryptionError:
        return _Client(None, None, None)
    postcode = None
    if address is not None:
        raw = msgspec.json.decode(address).get("postcode")
        postcode = "".join(str(raw).split()).upper() if raw else None
    return _Client(postcode, date.fromisoformat(birth) if birth else None, gender)


def _calendar(ordinals: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Year and month·100 + day of date ordinals."""
    days = (ordinals.astype(np.int64) - _EPOCH_ORDINAL).astype("datetime64[D]")
    years = days.astype("datetime64[Y]").astype(np.int64) + 1970
    months = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day_of_month = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    return years, months * 100 + day_of_month


def _concatenate(parts: list[npt.NDArray[np.int32]]) -> npt.NDArray[np.int32]:
    """One array of ``parts``, emptying the list: the parts of one column are freed before the
    next column is joined, so joining costs one column's size, not all three."""
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    parts.clear()
    return joined


def _row_slices(rows: int, chunk_rows: int) -> Iterator[slice]:
    """Consecutive slices of at most ``chunk_rows`` rows covering ``range(rows)``."""
    for start in range(0, rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, rows))


def _distinct_clients(compact: _Compact, chosen: npt.NDArray[np.bool_] | None = None) -> int:
    """How many distinct clients the invoices have (only the ``chosen`` ones, if given)."""
    seen = np.zeros(max(len(compact.customer_index), 1), dtype=np.bool_)
    for rows in compact.slices():
        customer = compact.customer[rows]
        seen[customer if chosen is None else customer[chosen[rows]]] = True
    return int(np.count_nonzero(seen))


class _RowCodes:
    """Each invoice's age at issue and the position of its issue day among the distinct issue days,
    computed for a slice of rows from per-client and per-day tables, so neither is ever stored per
    invoice: pass 1 derives them a chunk at a time, pass 2 again for the chunk it releases.

    The tables take a few bytes per client and per day between the first and the last issue date.
    """

    def __init__(self, compact: _Compact) -> None:
        self.compact = compact
        known = compact.birth >= 0
        birth_year, birth_md = _calendar(np.where(known, compact.birth, _EPOCH_ORDINAL).astype(np.int32))
        self.birth_year = np.where(known, birth_year, -1).astype(np.int32)
        self.birth_md = birth_md.astype(np.int32)
        first, last = compact.day.low, compact.day.high
        present = np.zeros(last - first + 1, dtype=np.bool_)
        for rows in compact.slices():
            present[compact.day[rows] - first] = True
        self.first_day = first
        self.days = (np.flatnonzero(present) + first).astype(np.int32)  # distinct issue days, ascending
        self.position_of_day = (np.cumsum(present, dtype=np.int32) - 1).astype(np.int32)
        day_year, day_md = _calendar(self.days)
        self.day_year = day_year.astype(np.int32)
        self.day_md = day_md.astype(np.int32)

    def day_positions(self, rows: slice) -> npt.NDArray[np.int32]:
        """Each row's issue day as a position in ``days``."""
        return self.position_of_day[self.compact.day[rows] - self.first_day]

    def ages(self, rows: slice) -> npt.NDArray[np.int32]:
        """Each row's client's age in whole years at the issue date (-1 when unknown or negative)."""
        customer = self.compact.customer[rows]
        day = self.day_positions(rows)
        birth_year = self.birth_year[customer]
        ages = self.day_year[day] - birth_year - (self.day_md[day] < self.birth_md[customer])
        return np.where((birth_year >= 0) & (ages >= 0), ages, -1).astype(np.int32)


def _leaf_lookup(hierarchy: Hierarchy, codes: Mapping[int, str], size: int) -> npt.NDArray[np.int32]:
    """Code → leaf position for the codes whose value is a leaf (0 elsewhere: masked rows)."""
    index = hierarchy.leaf_index()
    lookup = np.zeros(max(size, 1), dtype=np.int32)
    for code, value in codes.items():
        lookup[code] = index[value]
    return lookup


class _Release:
    """How pass 2 turns a chunk of rows into released values; ``guarantee`` is known after pass 1."""

    guarantee: dict[str, object]
    schema: dict[str, type[pl.DataType]]

    def quasi_identifiers(self, rows: slice) -> dict[str, pl.Series]:
        raise NotImplementedError


class _EngineRelease(_Release):
    """k-anonymity in distinct clients and distinct l-diversity on the category, found by the
    engine on the pass-1 codes. Invoices of clients with a missing quasi-identifier are suppressed
    up front and count against the suppression limit.

    Memory: what it keeps for pass 2 is one flag per invoice (suppressed) beside pass 1's codes, and
    per-client and per-day leaf tables; each invoice's quasi-identifier leaves are derived from its
    client and issue day when needed (``leaves``), a chunk of ``chunk_rows`` at a time. The engine's
    input is built one year at a time (``_encoded_year``: four leaf columns, category and client of
    the year's kept invoices, 4 bytes each), and the engine keeps each year on disk once read.
    """

    schema = INVOICE_SCHEMA

    def __init__(
        self,
        compact: _Compact,
        *,
        k: int,
        l: int,  # noqa: E741 -- the model's name in the literature
        suppression: float,
        chunk_rows: int = _ROW_CHUNK,
    ) -> None:
        self.compact = compact
        self.chunk_rows = chunk_rows
        self.codes = _RowCodes(compact)
        self.plan: ReleasePlan | None = None
        rows = compact.rows
        self.suppressed, used_clients, used_days, used_ages = self._missing()
        complete = rows - int(np.count_nonzero(self.suppressed))
        base: dict[str, object] = {
            "k": k,
            "l": l,
            "l_kind": "distinct",
            "k_counts": "customers",
            "suppression": suppression,
        }
        if complete == 0:
            people = _distinct_clients(compact)
            self.guarantee = {
                **base,
                "levels": {},
                "loss": None if rows else 0.0,
                "max_risk": 1.0 / max(people, 1) if rows else 0.0,
                "min_customers": people,
                "suppressed": rows,
                "rows": rows,
            }
            return
        allowed = int(suppression * rows + 1e-9)  # ⌊limit·n⌋ over every row, missing ones included
        left = max(allowed - (rows - complete), 0)
        # The engine allows ⌊limit·n⌋ rows; half a row more makes float rounding unable to lose one.
        engine_limit = min((left + 0.5) / complete, 1.0) if left else 0.0

        used_postcodes = np.unique(compact.postcode[used_clients])
        values = [compact.postcodes[code] for code in used_postcodes.tolist()]
        region = postcode_prefix(values, keep=(max(4, *(len(v) for v in values)), 3, 2, 0))
        age_band = age_bands(used_ages.tolist(), (5, 10, 20), 90)
        used_genders = np.unique(compact.gender[used_clients])
        gender_tree = flat_hierarchy(compact.genders[code] for code in used_genders.tolist())
        period = date_levels(date.fromordinal(day) for day in self.codes.days[used_days].tolist())

        region_lookup = _leaf_lookup(
            region, {c: compact.postcodes[c] for c in used_postcodes.tolist()}, len(compact.postcodes)
        )
        gender_lookup = _leaf_lookup(
            gender_tree, {c: compact.genders[c] for c in used_genders.tolist()}, len(compact.genders)
        )
        self.region_of_client = region_lookup[np.maximum(compact.postcode, 0)]
        self.gender_of_client = gender_lookup[np.maximum(compact.gender, 0)]
        self.age_leaf = _leaf_lookup(
            age_band, {a: str(a) for a in used_ages.tolist()}, int(used_ages.max()) + 1
        )
        period_index = period.leaf_index()
        self.period_of_day = np.zeros(self.codes.days.size, dtype=np.int32)
        for position in np.flatnonzero(used_days).tolist():
            self.period_of_day[position] = period_index[
                date.fromordinal(int(self.codes.days[position])).isoformat()
            ]
        config = AnonymizationConfig(
            quasi_identifiers={
                "region": region,
                "age_band": age_band,
                "gender": gender_tree,
                "period": period,
            },
            sensitive=SENSITIVE,
            k=k,
            l=l,
            l_kind="distinct",
            suppression_limit=engine_limit,
            entity="customer",
        )
        years = np.unique(self.codes.day_year[used_days]).tolist()
        try:
            # One year of the kept invoices at a time, kept on disk by the engine during the search
            # (a period's labels below the top never span two years).
            years_encoded = (self._encoded_year(year) for year in years)
            plan = plan_partitioned_release(years_encoded, config, by="period", spill_dir=self.compact.folder)
        except AnonymizationError as exc:
            raise ValidationFailed(
                "no release satisfies k and l for this period", field="k", reason="no_anonymous_release"
            ) from exc
        self._scatter_by_year(years, plan.suppressed_rows)
        # Pass 2 reads ``self.suppressed``; the plan's copy (a byte per kept invoice) is dropped.
        self.plan = plan = replace(plan, suppressed_rows=np.zeros(0, dtype=np.bool_))
        g = plan.guarantee
        self.guarantee = {
            **base,
            "levels": dict(g.levels),
            "loss": g.loss,
            **self._class_risks(plan),
            "suppressed": int(np.count_nonzero(self.suppressed)),
            "rows": rows,
        }

    def _missing(
        self,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.int32]]:
        """Rows with a missing quasi-identifier (unknown postcode, birth date or gender, or born after
        the issue date), and what the other rows use: which clients, which issue days (as positions
        in ``codes.days``) and which ages."""
        compact, codes = self.compact, self.codes
        client_missing = (compact.postcode < 0) | (compact.birth < 0) | (compact.gender < 0)
        missing = np.zeros(compact.rows, dtype=np.bool_)
        used_clients = np.zeros(client_missing.size, dtype=np.bool_)
        used_days = np.zeros(codes.days.size, dtype=np.bool_)
        used_ages = np.zeros(0, dtype=np.int32)
        for rows in _row_slices(compact.rows, self.chunk_rows):
            ages = codes.ages(rows)
            customer = compact.customer[rows]
            chunk_missing = client_missing[customer] | (ages < 0)
            missing[rows] = chunk_missing
            kept = ~chunk_missing
            used_clients[customer[kept]] = True
            used_days[codes.day_positions(rows)[kept]] = True
            used_ages = np.union1d(used_ages, ages[kept]).astype(np.int32)
        return missing, used_clients, used_days, used_ages

    def leaves(self, rows: slice) -> dict[str, npt.NDArray[np.int32]]:
        """Each row's leaf position per quasi-identifier (meaningless for rows missing a value, which
        are suppressed)."""
        customer = self.compact.customer[rows]
        ages = self.codes.ages(rows)
        return {
            "region": self.region_of_client[customer],
            "age_band": self.age_leaf[np.clip(ages, 0, self.age_leaf.size - 1)],
            "gender": self.gender_of_client[customer],
            "period": self.period_of_day[self.codes.day_positions(rows)],
        }

    def _kept_years(self, rows: slice) -> npt.NDArray[np.int32]:
        """The issue year of each of these rows, -1 for rows suppressed up front."""
        years = self.codes.day_year[self.codes.day_positions(rows)]
        return np.where(self.suppressed[rows], -1, years).astype(np.int32)

    def _encoded_year(self, year: int) -> EncodedTable:
        """The engine's input for the kept invoices issued in ``year``, in row order: 4 bytes per
        quasi-identifier, category and client per invoice of that year."""
        compact = self.compact
        columns: dict[str, list[npt.NDArray[np.int32]]] = {
            name: [] for name in (*QUASI_IDENTIFIERS, SENSITIVE, "customer")
        }
        for rows in _row_slices(compact.rows, self.chunk_rows):
            chosen = self._kept_years(rows) == year
            for name, values in self.leaves(rows).items():
                columns[name].append(values[chosen])
            columns[SENSITIVE].append(compact.category[rows][chosen])
            columns["customer"].append(compact.customer[rows][chosen])
        return EncodedTable(
            leaves={name: _concatenate(columns[name]) for name in QUASI_IDENTIFIERS},
            sensitive=_concatenate(columns[SENSITIVE]),
            sensitive_values=max(len(compact.categories), 1),
            entities=_concatenate(columns["customer"]),
            entity_values=max(len(compact.customer_index), 1),
        )

    def _scatter_by_year(self, years: list[int], flags: npt.NDArray[np.bool_]) -> None:
        """Mark the invoices the engine suppressed: ``flags`` holds the kept invoices year after
        year (in ``years``' order), each year in row order."""
        counts = dict.fromkeys(years, 0)
        for rows in _row_slices(self.compact.rows, self.chunk_rows):
            found, number = np.unique(self._kept_years(rows), return_counts=True)
            for year, count in zip(found.tolist(), number.tolist(), strict=True):
                if year >= 0:
                    counts[year] += count
        offsets = dict(zip(years, np.cumsum([0, *counts.values()])[:-1].tolist(), strict=True))
        for rows in _row_slices(self.compact.rows, self.chunk_rows):
            issued = self._kept_years(rows)
            chunk = self.suppressed[rows]  # a view: assigning to it marks the rows
            for year in np.unique(issued[issued >= 0]).tolist():
                chosen = issued == year
                stop = offsets[year] + int(np.count_nonzero(chosen))
                chunk[chosen] = flags[offsets[year] : stop]
                offsets[year] = stop

    def _class_risks(self, plan: ReleasePlan) -> dict[str, object]:
        """Classes, fewest distinct clients in a class and the prosecutor risks per client (1 / distinct
        clients of the class), over the whole release: the engine's released classes, and the
        suppressed invoices — by the engine or for missing values — as one class (all ``*``)."""
        compact, suppressed = self.compact, self.suppressed
        if plan.class_entities is None:  # pragma: no cover -- the plan counts clients
            raise RuntimeError("the release plan has no distinct clients per class")
        weighted = list(zip(plan.class_sizes.tolist(), plan.class_entities.tolist(), strict=True))
        if suppressed.any():
            weighted.append((int(np.count_nonzero(suppressed)), _distinct_clients(compact, suppressed)))
        fewest = min(count for _, count in weighted)
        return {
            "max_risk": 1.0 / fewest,
            "avg_risk": math.fsum(size / count for size, count in weighted) / compact.rows,
            "classes": len(weighted),
            "min_customers": fewest,
        }

    def quasi_identifiers(self, rows: slice) -> dict[str, pl.Series]:
        suppressed = self.suppressed[rows]
        plan = self.plan
        if plan is None:
            count = int(suppressed.size)
            return {
                name: pl.Series(name, [SUPPRESSED] * count, dtype=pl.String) for name in QUASI_IDENTIFIERS
            }
        leaves = self.leaves(rows)
        return {name: plan.generalize(name, leaves[name], suppressed) for name in QUASI_IDENTIFIERS}


def _zip3(postcode: str) -> str:
    prefix = postcode[:3]
    if prefix in HIPAA_RESTRICTED_ZIP3:
        prefix = "000"
    return f"{prefix}**"


class _SafeHarborRelease(_Release):
    """Profile ``hipaa-safe-harbor``: fixed rules, no search (module docstring)."""

    schema = {name: dtype for name, dtype in INVOICE_SCHEMA.items() if name != "customer"}

    def __init__(self, compact: _Compact) -> None:
        self.compact = compact
        self.codes = codes = _RowCodes(compact)
        self.zip3 = [_zip3(postcode) for postcode in compact.postcodes]
        zip3_codes = {label: number for number, label in enumerate(sorted(set(self.zip3)))}
        zip3_of_postcode = np.asarray([zip3_codes[label] for label in self.zip3] or [0], dtype=np.int64)
        rows = compact.rows
        missing = 0
        class_sizes: Counter[int] = Counter()  # released class (ZIP3, age, gender, year) → invoices
        for chunk in compact.slices():
            customer = compact.customer[chunk]
            postcode, gender, ages = compact.postcode[customer], compact.gender[customer], codes.ages(chunk)
            missing += int(((postcode < 0) | (ages < 0) | (gender < 0)).sum())
            year, _ = _calendar(compact.day[chunk])
            key = np.where(postcode < 0, len(zip3_codes), zip3_of_postcode[np.maximum(postcode, 0)])
            key = key * 92 + np.where(ages < 0, 91, np.minimum(ages, 90))
            key = key * (len(compact.genders) + 1) + np.where(gender < 0, len(compact.genders), gender)
            key = key * 10_000 + year
            found, counts = np.unique(key, return_counts=True)
            class_sizes.update(dict(zip(found.tolist(), counts.tolist(), strict=True)))
        smallest = min(class_sizes.values(), default=0)
        self.guarantee = {
            "k": None,
            "l": None,
            "suppression": None,
            "levels": {"region": "zip3", "age_band": "years, 90+", "gender": "value", "period": "year"},
            "loss": None,
            "max_risk": 1.0 / smallest if smallest else 0.0,
            "smallest_class": smallest,
            "suppressed": missing,
            "rows": rows,
        }

    def quasi_identifiers(self, rows: slice) -> dict[str, pl.Series]:
        compact = self.compact
        customers = compact.customer[rows].tolist()
        ages = self.codes.ages(rows).tolist()
        years, _ = _calendar(compact.day[rows])
        postcodes = [int(compact.postcode[c]) for c in customers]
        genders = [int(compact.gender[c]) for c in customers]
        return {
            "region": pl.Series([SUPPRESSED if p < 0 else self.zip3[p] for p in postcodes], dtype=pl.String),
            "age_band": pl.Series(
                [SUPPRESSED if a < 0 else "90+" if a > 89 else str(a) for a in ages], dtype=pl.String
            ),
            "gender": pl.Series(
                [SUPPRESSED if g < 0 else compact.genders[g] for g in genders], dtype=pl.String
            ),
            "period": pl.Series([str(y) for y in years.tolist()], dtype=pl.String),
        }


def _released_chunks(
    session: Session,
    query: Select[Any],
    compact: _Compact,
    release: _Release,
    pseudonym: Pseudonymizer,
    chunk_rows: int,
) -> Iterator[pl.DataFrame]:
    """Pass 2: the rows again, from the same snapshot and in the same order, released chunk by chunk.

    Each chunk is checked against pass 1 (same clients, same issue dates, same count), so a release
    can never pair one invoice's values with another's quasi-identifiers.
    """
    pseudonyms: dict[int, str] = {}
    position = 0
    with_customer = "customer" in release.schema
    for rows in _partitions(session, query, chunk_rows):
        stop = position + len(rows)
        codes = [compact.customer_index.get(row[0], -1) for row in rows]
        days = [row[1].toordinal() for row in rows]
        if (
            stop > compact.rows
            or codes != compact.customer[position:stop].tolist()
            or days != compact.day[position:stop].tolist()
        ):
            raise RuntimeError("the invoices changed between the two passes of an export")
        columns: dict[str, pl.Series | list[object]] = {}
        if with_customer:
            columns["customer"] = [
                pseudonyms[code] if code in pseudonyms else pseudonyms.setdefault(code, pseudonym(row[0]))
                for code, row in zip(codes, rows, strict=True)
            ]
        columns.update(release.quasi_identifiers(slice(position, stop)))
        columns["category"] = [row[2] or "" for row in rows]
        for index, name in enumerate(("net", "tax", "total", "refunded", "currency", "status"), start=3):
            columns[name] = [row[index] for row in rows]
        columns["card_brand"] = [row[9] or "" for row in rows]
        yield pl.DataFrame(columns, schema=release.schema)
        position = stop
    if position != compact.rows:
        raise RuntimeError("the invoices changed between the two passes of an export")
