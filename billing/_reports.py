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
  generalization of least loss that satisfies k-anonymity and distinct l-diversity within the
  suppression limit.
* Profile decryption happens in memory, one client at a time and once per client; only postcode,
  birth date and gender are opened. Erased clients (no profile key) and clients without those fields
  have their quasi-identifiers suppressed (``*``) and count in ``suppressed``; the engine is given
  what is left of the limit.
* Amounts are exact (accounts must reconcile): an unusual amount can single a client out, which is
  why ``revenue`` aggregates are the default for sharing beyond the accountant.
* Residual risk: k counts invoices, not clients, so a client with at least k invoices alike in the
  released quasi-identifiers can form a class alone. The pseudonym column links a client's rows anyway;
  what the release protects is the link from those rows to the person.

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

Every export is audited (``report.exported``) in the transaction that read the data.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

import msgspec
import polars as pl
from sqlalchemy import ColumnElement, and_
from sqlmodel import Session, col, select

from anonymize import (
    SUPPRESSED,
    AnonymizationConfig,
    AnonymizationError,
    Cell,
    Pseudonymizer,
    age_bands,
    anonymize,
    date_levels,
    flat_hierarchy,
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
    "PROFILES",
    "REVENUE_GROUPINGS",
    "Dataset",
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


@dataclass(frozen=True)
class Dataset:
    """A released table and its guarantee (a JSON-ready ``dict``: k, l, suppression, levels, loss,
    max_risk, suppressed, rows, profile and, per report, a few more)."""

    name: str
    frame: pl.DataFrame = field(repr=False)
    guarantee: Mapping[str, object]


@dataclass(frozen=True)
class _Client:
    postcode: str | None
    birth_date: date | None
    gender: str | None


@dataclass(frozen=True)
class _InvoiceRow:
    id: str
    customer_id: str
    issue_date: date
    net: int
    tax: int
    total: int
    refunded: int
    currency: str
    status: str


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
        """The anonymized invoice dataset of the period (see the module docstring).

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
        with self._db.transaction() as session:
            invoices = _finalized_invoices(session, actor.tenant_id, date_from, date_to)
            categories = _main_categories(session, actor.tenant_id, date_from, date_to)
            brands = _card_brands(session, actor.tenant_id, date_from, date_to)
            keys = SubjectKeys(session, self._keyring, clock=self._clock)
            clients = self._clients(session, keys, actor.tenant_id, {row.customer_id for row in invoices})
            pseudonym = Pseudonymizer(
                _scope_key(keys.index_key(actor.tenant_id), actor), purpose=_PSEUDONYM_PURPOSE
            )
            raw = _raw_frame(invoices, clients, categories, brands, pseudonym)
            if profile == "hipaa-safe-harbor":
                frame, guarantee = _safe_harbor(raw)
            else:
                frame, guarantee = _engine_release(raw, k=k, l=l, suppression=suppression)
            self._audit_export(session, actor, "invoices", profile=profile, rows=frame.height, k=k, l=l)
        return Dataset("invoices", frame, {"report": "invoices", **guarantee, "profile": profile})

    # --- aggregates ---------------------------------------------------------------------------

    def revenue(
        self, actor: Actor, date_from: date, date_to: date, *, group_by: str = "month", k: int = 5
    ) -> Dataset:
        """Sums (net, tax, total, refunded) and counts per currency and group; small cells fold into
        ``other`` (per currency), so each currency's sums equal those over its invoices.

        Raises ``ValidationFailed`` (field ``from``, ``group_by`` or ``k``).
        """
        _check_period(date_from, date_to)
        if group_by not in REVENUE_GROUPINGS:
            raise ValidationFailed("unknown grouping", field="group_by")
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValidationFailed("k must be an integer of at least 2", field="k")
        columns = group_by.split(",")
        with self._db.transaction() as session:
            invoices = _finalized_invoices(session, actor.tenant_id, date_from, date_to)
            categories = _main_categories(session, actor.tenant_id, date_from, date_to)
            cells: dict[str, dict[tuple[str, ...], tuple[set[str], dict[str, int]]]] = {}
            for row in invoices:
                # Prefixed keys cannot collide with the ``other`` key (a category may be named "other").
                values = {"month": row.issue_date.strftime("%Y-%m"), "category": categories.get(row.id, "")}
                key = tuple(f"{column}:{values[column]}" for column in columns)
                customers, sums = cells.setdefault(row.currency, {}).setdefault(
                    key, (set(), dict.fromkeys(("invoices", "net", "tax", "total", "refunded"), 0))
                )
                customers.add(row.customer_id)
                sums["invoices"] += 1
                sums["net"] += row.net
                sums["tax"] += row.tax
                sums["total"] += row.total
                sums["refunded"] += row.refunded
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
            self._audit_export(session, actor, "revenue", profile=None, rows=frame.height, k=k, l=None)
        guarantee: dict[str, object] = {
            "report": "revenue",
            "k": k,
            "l": None,
            "group_by": group_by,
            "suppressed": folded,
            "withheld_currencies": withheld,
            "rows": frame.height,
            "profile": None,
        }
        return Dataset("revenue", frame, guarantee)

    def tax_summary(self, actor: Actor, date_from: date, date_to: date) -> Dataset:
        """Net and tax per currency, month and tax rate, from invoice lines (not suppressed: see the
        module docstring). Raises ``ValidationFailed`` (field ``from``)."""
        _check_period(date_from, date_to)
        with self._db.transaction() as session:
            query = (
                select(Invoice.currency, col(Invoice.issue_date), InvoiceLine)
                .join(Invoice, col(Invoice.id) == col(InvoiceLine.invoice_id))
                .where(_period_filter(actor.tenant_id, date_from, date_to))
                .where(InvoiceLine.tenant_id == actor.tenant_id)
            )
            sums: dict[tuple[str, str, int], list[int]] = {}
            for currency, issued, line in session.exec(query):
                if issued is None:  # excluded by the period filter; narrows the type
                    continue
                month = issued.strftime("%Y-%m")
                entry = sums.setdefault((currency, month, line.tax_rate_bps), [0, 0, 0])
                entry[0] += 1
                entry[1] += line.net
                entry[2] += line.tax
            frame = pl.DataFrame(
                [
                    {"currency": c, "month": m, "tax_rate_bps": r, "lines": n, "net": net, "tax": tax}
                    for (c, m, r), (n, net, tax) in sorted(sums.items())
                ],
                schema={
                    "currency": pl.String,
                    "month": pl.String,
                    "tax_rate_bps": pl.Int64,
                    "lines": pl.Int64,
                    "net": pl.Int64,
                    "tax": pl.Int64,
                },
            )
            self._audit_export(session, actor, "tax", profile=None, rows=frame.height, k=None, l=None)
        guarantee: dict[str, object] = {
            "report": "tax",
            "k": None,
            "l": None,
            "suppressed": 0,
            "rows": frame.height,
            "profile": None,
        }
        return Dataset("tax", frame, guarantee)

    # --- internals ----------------------------------------------------------------------------

    def _clients(
        self, session: Session, keys: SubjectKeys, tenant_id: str, customer_ids: Iterable[str]
    ) -> dict[str, _Client]:
        """Each client's quasi-identifiers, decrypted once; erased or unreadable profiles → all None."""
        clients: dict[str, _Client] = {}
        wanted = sorted(customer_ids)
        for start in range(0, len(wanted), 500):
            batch = wanted[start : start + 500]
            found = session.exec(
                select(Customer).where(Customer.tenant_id == tenant_id, col(Customer.id).in_(batch))
            ).all()
            for customer in found:
                clients[customer.id] = _open_client(keys, customer)
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


def _finalized_invoices(
    session: Session, tenant_id: str, date_from: date, date_to: date
) -> list[_InvoiceRow]:
    query = (
        select(Invoice)
        .where(_period_filter(tenant_id, date_from, date_to))
        .order_by(col(Invoice.issue_date), col(Invoice.number), col(Invoice.id))
    )
    rows = []
    for invoice in session.exec(query):
        if invoice.issue_date is None:  # excluded by the period filter; narrows the type
            continue
        rows.append(
            _InvoiceRow(
                id=invoice.id,
                customer_id=invoice.customer_id,
                issue_date=invoice.issue_date,
                net=invoice.subtotal,
                tax=invoice.tax,
                total=invoice.total,
                refunded=invoice.amount_refunded,
                currency=invoice.currency,
                status=invoice.status,
            )
        )
    return rows


def _main_categories(session: Session, tenant_id: str, date_from: date, date_to: date) -> dict[str, str]:
    """Invoice id → category of its line with the largest net (ties: the first position)."""
    query = (
        select(InvoiceLine.invoice_id, InvoiceLine.position, InvoiceLine.net, InvoiceLine.category)
        .join(Invoice, col(Invoice.id) == col(InvoiceLine.invoice_id))
        .where(_period_filter(tenant_id, date_from, date_to))
        .where(InvoiceLine.tenant_id == tenant_id)
    )
    best: dict[str, tuple[int, int, str]] = {}
    for invoice_id, position, net, category in session.exec(query):
        current = best.get(invoice_id)
        if current is None or net > current[0] or (net == current[0] and position < current[1]):
            best[invoice_id] = (net, position, category)
    return {invoice_id: category for invoice_id, (_, _, category) in best.items()}


def _card_brands(session: Session, tenant_id: str, date_from: date, date_to: date) -> dict[str, str]:
    """Invoice id → brand of the card of its (earliest) succeeded payment."""
    query = (
        select(Payment.invoice_id, PaymentMethod.brand)
        .join(Invoice, col(Invoice.id) == col(Payment.invoice_id))
        .join(PaymentMethod, col(PaymentMethod.id) == col(Payment.payment_method_id))
        .where(_period_filter(tenant_id, date_from, date_to))
        .where(Payment.tenant_id == tenant_id, Payment.status == "succeeded")
        .order_by(col(Payment.created_at).desc())
    )
    return dict(session.exec(query).all())  # the earliest comes last and wins


def _open_client(keys: SubjectKeys, customer: Customer) -> _Client:
    if customer.erased_at is not None:
        return _Client(None, None, None)
    try:
        profile = keys.get(customer.tenant_id, customer.id, "profile")

        def opened(column: str, sealed: bytes | None) -> str | None:
            if sealed is None:
                return None
            context = FieldContext(customer.tenant_id, "customers", column, customer.id)
            return open_sealed_text(profile, sealed, context)

        address = opened("address", customer.address_ct)
        birth = opened("birth_date", customer.birth_date_ct)
        gender = opened("gender", customer.gender_ct)
    except DecryptionError:
        return _Client(None, None, None)
    postcode = None
    if address is not None:
        raw = msgspec.json.decode(address).get("postcode")
        postcode = "".join(str(raw).split()).upper() if raw else None
    return _Client(postcode, date.fromisoformat(birth) if birth else None, gender)


def _age_at(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _raw_frame(
    invoices: Sequence[_InvoiceRow],
    clients: Mapping[str, _Client],
    categories: Mapping[str, str],
    brands: Mapping[str, str],
    pseudonym: Pseudonymizer,
) -> pl.DataFrame:
    """The table before release: exact quasi-identifiers (None when unknown), in invoice order."""
    pseudonyms: dict[str, str] = {}
    records = []
    for row in invoices:
        client = clients.get(row.customer_id, _Client(None, None, None))
        if row.customer_id not in pseudonyms:
            pseudonyms[row.customer_id] = pseudonym(row.customer_id)
        age = None if client.birth_date is None else str(_age_at(client.birth_date, row.issue_date))
        records.append(
            {
                "customer": pseudonyms[row.customer_id],
                "region": client.postcode,
                "age_band": age,
                "gender": client.gender,
                "period": row.issue_date.isoformat(),
                "category": categories.get(row.id, ""),
                "net": row.net,
                "tax": row.tax,
                "total": row.total,
                "refunded": row.refunded,
                "currency": row.currency,
                "status": row.status,
                "card_brand": brands.get(row.id, ""),
            }
        )
    schema = {
        **dict.fromkeys(("customer", *QUASI_IDENTIFIERS, SENSITIVE), pl.String),
        **dict.fromkeys(("net", "tax", "total", "refunded"), pl.Int64),
        **dict.fromkeys(("currency", "status", "card_brand"), pl.String),
    }
    return pl.DataFrame(records, schema=schema)


def _missing_mask(frame: pl.DataFrame) -> pl.Series:
    return frame.select(pl.any_horizontal(pl.col(c).is_null() for c in QUASI_IDENTIFIERS)).to_series()


def _risk(frame: pl.DataFrame, columns: Sequence[str]) -> tuple[int, float]:
    """Smallest class size over ``columns`` and its prosecutor risk (1 / size)."""
    if frame.is_empty():
        return 0, 0.0
    smallest = int(frame.group_by(list(columns)).len().get_column("len").min())  # type: ignore[arg-type]
    return smallest, 1.0 / smallest


def _engine_release(
    raw: pl.DataFrame,
    *,
    k: int,
    l: int,  # noqa: E741 -- the model's name in the literature
    suppression: float,
) -> tuple[pl.DataFrame, dict[str, object]]:
    missing = _missing_mask(raw)
    complete = raw.filter(~missing)
    incomplete = raw.filter(missing).with_columns(pl.lit(SUPPRESSED).alias(c) for c in QUASI_IDENTIFIERS)
    allowed = int(suppression * raw.height + 1e-9)  # ⌊limit·n⌋ over every row, missing ones included
    base: dict[str, object] = {"k": k, "l": l, "l_kind": "distinct", "suppression": suppression}
    if complete.is_empty():
        frame = incomplete.select(INVOICE_COLUMNS)
        return frame, {
            **base,
            "levels": {},
            "loss": None if frame.height else 0.0,
            "max_risk": (1.0 / frame.height) if frame.height else 0.0,
            "suppressed": frame.height,
            "rows": frame.height,
        }
    left = max(allowed - incomplete.height, 0)
    # The engine allows ⌊limit·n⌋ rows; half a row more makes float rounding unable to lose one.
    engine_limit = min((left + 0.5) / complete.height, 1.0) if left else 0.0
    config = AnonymizationConfig(
        quasi_identifiers={
            "region": postcode_prefix(
                complete.get_column("region"),
                keep=(max(4, int(complete.get_column("region").str.len_chars().max())), 3, 2, 0),  # type: ignore[arg-type]
            ),
            "age_band": age_bands(complete.get_column("age_band"), (5, 10, 20), 90),
            "gender": flat_hierarchy(complete.get_column("gender")),
            "period": date_levels(complete.get_column("period")),
        },
        sensitive=SENSITIVE,
        k=k,
        l=l,
        l_kind="distinct",
        suppression_limit=engine_limit,
    )
    try:
        result = anonymize(complete, config)
    except AnonymizationError as exc:
        raise ValidationFailed(
            "no release satisfies k and l for this period", field="k", reason="no_anonymous_release"
        ) from exc
    released = result.table.with_columns(pl.col(c).cast(pl.String) for c in QUASI_IDENTIFIERS)
    frame = pl.concat([released.select(INVOICE_COLUMNS), incomplete.select(INVOICE_COLUMNS)])
    g = result.guarantee
    suppressed = g.suppressed + incomplete.height
    # The suppressed rows form one class (all quasi-identifiers ``*``), as the engine counts them.
    max_risk = g.max_risk
    if incomplete.height:
        max_risk = max(max_risk, 1.0 / suppressed)
    return frame, {
        **base,
        "levels": dict(g.levels),
        "loss": g.loss,
        "max_risk": max_risk,
        "avg_risk": g.avg_risk,
        "classes": g.classes,
        "suppressed": suppressed,
        "rows": frame.height,
    }


def _zip3(postcode: str) -> str:
    prefix = postcode[:3]
    if prefix in HIPAA_RESTRICTED_ZIP3:
        prefix = "000"
    return f"{prefix}**"


def _safe_harbor(raw: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, object]]:
    frame = raw.with_columns(
        pl.col("region").map_elements(_zip3, return_dtype=pl.String).fill_null(SUPPRESSED),
        pl.when(pl.col("age_band").cast(pl.Int64) > 89)
        .then(pl.lit("90+"))
        .otherwise(pl.col("age_band"))
        .fill_null(SUPPRESSED)
        .alias("age_band"),
        pl.col("gender").fill_null(SUPPRESSED),
        pl.col("period").str.slice(0, 4),
    ).select([c for c in INVOICE_COLUMNS if c != "customer"])
    missing = int(_missing_mask(raw).sum())
    smallest, max_risk = _risk(frame, QUASI_IDENTIFIERS)
    return frame, {
        "k": None,
        "l": None,
        "suppression": None,
        "levels": {"region": "zip3", "age_band": "years, 90+", "gender": "value", "period": "year"},
        "loss": None,
        "max_risk": max_risk,
        "smallest_class": smallest,
        "suppressed": missing,
        "rows": frame.height,
    }
