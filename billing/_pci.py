"""The stored-data side of the PCI DSS scope scan, the deployment checks and the scope report.

Veilbill's PCI scope rests on one claim: card numbers never enter it. This module produces the
evidence, from the data itself:

- :class:`CardDataScanner` reads **every column of every table** of ``SQLModel.metadata`` (so a
  table added later is scanned without anyone remembering to), in primary-key order, in batches.
  Encrypted columns are opened in memory with the key and associated data their :class:`Sealed`
  annotation names; a value whose key was shredded (erasure, end of retention) cannot be opened and
  is *counted* as unreadable, not reported as an error. Text, JSON, bytes and large integers are
  searched with the tokenization package's detector (13 to 19 digits, Luhn, IIN ranges, with or
  without separators) and for card field names (``card_number``, ``cvc``…, keys followed by ``:``
  or ``=``); column names are checked too. Configured files (logs, backup and export folders,
  gzip'd or not) are read line by line.
- Findings name a location (table, column, row id and tenant; file and line), the kind and the
  detector. **Nothing of a number is ever returned**: not its digits, not its length, not its last
  four. Row ids and file names are themselves passed through the redactor.
- :func:`deployment_checks` examines this deployment's configuration (the payment page's CSP and
  scripts, TLS and HSTS, the webhook secret, tokens-only storage, master-key age, unused or old API
  keys, the audit chain), each with a status and its evidence.
- :meth:`PciService.scope_report` assembles what a reviewer files: the integration type and why it
  qualifies for SAQ A, the data flow of a payment, the inventory of stored card-derived fields with
  the rule that allows each, the scan and check results, and the applicable PCI DSS v4.0.1
  requirements with their evidence. Every scan is audited (``pci.scan``) with its counts.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import Table, func, or_, select, tuple_
from sqlmodel import Session, col
from sqlmodel import select as select_rows

from billing._actor import Actor
from billing._audit import AuditTrail
from billing._db import Database
from billing._envelope import DataKey, FieldContext, open_sealed
from billing._inventory import InventoryEntry, Sealed, inventory_entries, inventory_of
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import ApiKey, PaymentMethod, metadata
from billing._rotation import KeyStatus
from billing.errors import DecryptionError
from tokenization import find_card_numbers, is_card_field_name, redact_card_numbers

__all__ = [
    "DEFAULT_SCAN_BATCH",
    "PCI_REQUIREMENTS",
    "CardDataScanner",
    "CardDerivedField",
    "ConfigCheck",
    "DeploymentFacts",
    "Finding",
    "Location",
    "PciRequirement",
    "PciService",
    "RequirementEvidence",
    "ScanResult",
    "ScanStats",
    "ScopeReport",
    "deployment_checks",
]

DEFAULT_SCAN_BATCH: Final = 500
FindingKind = Literal["pan", "card_field_name"]
CheckStatus = Literal["pass", "warn", "fail"]

# A key followed by ``:`` or ``=`` (JSON, logfmt, query strings, YAML): ``"card_number": …``, ``cvv=…``.
_KEY_RE: Final = re.compile(r"(?<![A-Za-z0-9_])([A-Za-z][A-Za-z0-9_-]{1,40})[\"']?\s*[:=]")
_MIN_INTEGER_PAN: Final = 10**12  # 13 digits: smaller integers cannot be card numbers
# A hexadecimal identifier (a MAC, a hash, ``req_9aef…``), optionally after a ``word_`` prefix.
_HEX_ID: Final = re.compile(r"(?:[A-Za-z]+_)?([0-9a-fA-F]{16,})")
_HEX_LETTERS: Final = frozenset("abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding is: a database value, a column name, or a line of a file. Never the value."""

    source: Literal["database", "schema", "file"]
    table: str | None = None
    column: str | None = None
    row_id: str | None = None
    tenant_id: str | None = None
    encrypted: bool = False
    path: str | None = None
    line: int | None = None

    def describe(self) -> str:
        if self.source == "file":
            return f"{self.path}:{self.line}"
        if self.source == "schema":
            return f"{self.table}.{self.column} (column name)"
        sealed = " (encrypted; opened in memory)" if self.encrypted else ""
        return f"{self.table}.{self.column} row {self.row_id}{sealed}"


@dataclass(frozen=True, slots=True)
class Finding:
    """Card data found at ``location``: ``count`` occurrences of one kind.

    ``detector`` is ``luhn+iin`` for numbers (``separators`` tells whether it was written with
    spaces or dashes) and ``field-name`` for card field names (``field`` is the name as written —
    a name such as ``card_number``, never a value).
    """

    location: Location
    kind: FindingKind
    detector: str
    count: int = 1
    separators: bool = False
    field: str | None = None


@dataclass(frozen=True, slots=True)
class ScanStats:
    tables: int = 0
    columns: int = 0
    rows: int = 0
    values_decrypted: int = 0
    unreadable: int = 0
    """Encrypted values that could not be opened: their key was shredded (erasure, retention)."""
    files: int = 0
    lines: int = 0
    files_missing: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    """Files that exist but could not be read; the scan is then incomplete."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    findings: tuple[Finding, ...]
    stats: ScanStats
    tenant_id: str | None
    scanned_at: datetime

    @property
    def clean(self) -> bool:
        return not self.findings


# --- the detector, applied to one value -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hit:
    kind: FindingKind
    separators: bool = False
    field: str | None = None


def _in_hex_identifier(text: str, start: int, end: int) -> bool:
    """Whether the digits at ``text[start:end]`` are part of a hexadecimal identifier.

    Hex digests and MACs (64 characters) hold a Luhn-valid, IIN-matching digit run about once in a
    hundred, so every audit chain would "contain card numbers". A run counts as part of one when
    the whole word around it (letters, digits, ``_``) is hexadecimal with at least one letter a-f,
    optionally after a ``word_`` prefix. A number standing alone, or next to other letters
    (``x4242…y``), is still reported.
    """
    left, right = start, end
    while left > 0 and (text[left - 1].isalnum() or text[left - 1] == "_"):
        left -= 1
    while right < len(text) and (text[right].isalnum() or text[right] == "_"):
        right += 1
    match = _HEX_ID.fullmatch(text, left, right)
    return match is not None and not _HEX_LETTERS.isdisjoint(match.group(1))


def _hits_in_text(text: str) -> list[_Hit]:
    hits = [
        _Hit("pan", separators=not text[start:end].isdecimal())
        for start, end in find_card_numbers(text)
        if not _in_hex_identifier(text, start, end)
    ]
    hits += [
        _Hit("card_field_name", field=m.group(1))
        for m in _KEY_RE.finditer(text)
        if is_card_field_name(m.group(1))
    ]
    return hits


def _hits_in_value(value: object) -> list[_Hit]:
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        return _hits_in_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _hits_in_text(bytes(value).decode("utf-8", errors="replace"))
    if isinstance(value, int) and abs(value) >= _MIN_INTEGER_PAN:
        return _hits_in_text(str(abs(value)))
    return []


def _findings(location: Location, hits: Iterable[_Hit]) -> list[Finding]:
    counted = Counter(hits)
    return [
        Finding(
            location=location,
            kind=hit.kind,
            detector="luhn+iin" if hit.kind == "pan" else "field-name",
            count=count,
            separators=hit.separators,
            field=hit.field,
        )
        for hit, count in counted.items()
    ]


def _safe(text: object) -> str:
    """An id or a path as it may be printed: card numbers in it are redacted."""
    return redact_card_numbers(str(text))


# --- the database scan ------------------------------------------------------------------------------


_DEK_CACHE_LIMIT: Final = 50_000


@dataclass
class _Tally:
    """Counts of one scan, and the data keys it unwrapped (``None``: shredded), reused across batches."""

    tables: int = 0
    columns: int = 0
    rows: int = 0
    decrypted: int = 0
    unreadable: int = 0
    deks: dict[tuple[str, str, str], DataKey | None] = field(default_factory=dict)


class CardDataScanner:
    """Scans every table of the models' metadata and the given files for card data.

    ``batch_size`` rows are read per query (keyset pagination on the primary key, one short read
    session per batch), so memory stays bounded and no long transaction holds the database.
    """

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        *,
        clock: Callable[[], datetime],
        batch_size: int = DEFAULT_SCAN_BATCH,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._batch = batch_size

    def scan(self, *, tenant_id: str | None = None, paths: Sequence[Path] = ()) -> ScanResult:
        """Scan the database (one tenant's rows, or everything) and ``paths`` (files or folders).

        Raises:
            KeyringError: the master-key store is unavailable (nothing could be opened).
        """
        started = self._clock()
        tally = _Tally()
        findings = list(self._scan_database(tally, tenant_id=tenant_id))
        file_findings, files, lines, missing, errors = _scan_paths(paths)
        findings += file_findings
        stats = ScanStats(
            tables=tally.tables,
            columns=tally.columns,
            rows=tally.rows,
            values_decrypted=tally.decrypted,
            unreadable=tally.unreadable,
            files=files,
            lines=lines,
            files_missing=missing,
            errors=errors,
        )
        return ScanResult(findings=tuple(findings), stats=stats, tenant_id=tenant_id, scanned_at=started)

    def _scan_database(self, tally: _Tally, *, tenant_id: str | None = None) -> Iterator[Finding]:
        for table in metadata.sorted_tables:
            tenant_column = table.c.get("tenant_id")
            if tenant_id is not None and tenant_column is None:
                continue  # not tenant data: only the operator's scan covers it
            tally.tables += 1
            tally.columns += len(table.columns)
            for column in table.columns:
                name = column.name.removesuffix("_ct").removesuffix("_bidx")
                if is_card_field_name(column.name) or is_card_field_name(name):
                    yield Finding(
                        Location("schema", table=str(table.name), column=str(column.name)),
                        "card_field_name",
                        "field-name",
                        field=str(column.name),
                    )
            yield from self._scan_table(table, tally, tenant_id)

    def _scan_table(self, table: Table, tally: _Tally, tenant_id: str | None) -> Iterator[Finding]:
        key_columns = list(table.primary_key.columns) or list(table.columns)
        last: tuple[Any, ...] | None = None
        while True:
            query = select(table).order_by(*key_columns).limit(self._batch)
            if tenant_id is not None:
                query = query.where(table.c.tenant_id == tenant_id)
            if last is not None:
                query = query.where(tuple_(*key_columns) > tuple_(*last))
            with self._db.read() as session:
                rows = [dict(row) for row in session.execute(query).mappings()]
                found = self._scan_rows(session, table, rows, tally)
            yield from found
            if len(rows) < self._batch:
                return
            last = tuple(rows[-1][c.name] for c in key_columns)

    def _scan_rows(
        self, session: Session, table: Table, rows: list[dict[str, Any]], tally: _Tally
    ) -> list[Finding]:
        keys = SubjectKeys(session, self._keyring, clock=self._clock)
        sealed_columns = {c.name: s for c in table.columns if (s := _sealed(c)) is not None}
        skipped = {c.name for c in table.columns if (i := inventory_of(c)) and i.protection == "wrapped key"}
        subjects = _subjects_via(session, sealed_columns.values(), rows)
        key_names = [c.name for c in table.primary_key.columns]
        found: list[Finding] = []
        for row in rows:
            tally.rows += 1
            row_id = _safe("/".join(str(row[k]) for k in key_names)) if key_names else None
            tenant = row.get("tenant_id")
            for name, value in row.items():
                if value is None or name in skipped:
                    continue
                sealed = sealed_columns.get(name)
                content = value
                if sealed is not None:
                    content = self._open(keys, table.name, sealed, row, value, subjects, tally)
                    if content is None:
                        continue
                hits = _hits_in_value(content)
                if hits:
                    where = Location(
                        "database",
                        table=str(table.name),
                        column=str(name),
                        row_id=row_id,
                        tenant_id=None if tenant is None else str(tenant),
                        encrypted=sealed is not None,
                    )
                    found += _findings(where, hits)
        return found

    def _open(
        self,
        keys: SubjectKeys,
        table: str,
        sealed: Sealed,
        row: dict[str, Any],
        blob: object,
        subjects: dict[tuple[str, str, object], object],
        tally: _Tally,
    ) -> bytes | None:
        """The plaintext of ``blob``, or None (counted as unreadable) when it cannot be opened."""
        tenant = str(row.get("tenant_id") or "")
        if sealed.subject_via is not None:
            fk, other, other_column = sealed.subject_via
            subject = subjects.get((other, other_column, row.get(fk)))
        else:
            subject = row.get(sealed.subject)
        if subject is None or not isinstance(blob, bytes):
            tally.unreadable += 1
            return None
        context = FieldContext(tenant, table, sealed.field, str(row[sealed.row_key]))
        wanted = (tenant, str(subject), sealed.purpose)
        if wanted not in tally.deks:
            if len(tally.deks) >= _DEK_CACHE_LIMIT:
                tally.deks.clear()
            try:
                tally.deks[wanted] = keys.get(*wanted)
            except DecryptionError:
                tally.deks[wanted] = None
        dek = tally.deks[wanted]
        try:
            if dek is None:
                raise DecryptionError()
            plaintext = open_sealed(dek, blob, context)
        except DecryptionError:
            tally.unreadable += 1
            return None
        tally.decrypted += 1
        return plaintext


def _sealed(column: Any) -> Sealed | None:
    found = inventory_of(column)
    return found.sealed if found is not None else None


def _subjects_via(
    session: Session, sealed: Iterable[Sealed], rows: list[dict[str, Any]]
) -> dict[tuple[str, str, object], object]:
    """For sealed columns whose key subject lives on another table, that subject, per foreign key."""
    subjects: dict[tuple[str, str, object], object] = {}
    for item in sealed:
        if item.subject_via is None:
            continue
        fk, other_name, other_column = item.subject_via
        other = metadata.tables[other_name]
        wanted = {row[fk] for row in rows if row.get(fk) is not None}
        if not wanted:
            continue
        query = select(other.c.id, other.c[other_column]).where(other.c.id.in_(wanted))
        for row_id, subject in session.execute(query):
            subjects[(other_name, other_column, row_id)] = subject
    return subjects


# --- files ---------------------------------------------------------------------------------------------


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _scan_paths(
    paths: Sequence[Path],
) -> tuple[list[Finding], int, int, tuple[str, ...], tuple[str, ...]]:
    findings: list[Finding] = []
    files = lines = 0
    missing: list[str] = []
    errors: list[str] = []
    for root in paths:
        if not root.exists():
            missing.append(_safe(root))
            continue
        for path in _files_under(root):
            try:
                scanned = _scan_file(path, findings)
            except OSError:
                errors.append(_safe(path))
                continue
            files += 1
            lines += scanned
    return findings, files, lines, tuple(missing), tuple(errors)


def _scan_file(path: Path, findings: list[Finding]) -> int:
    """Scan ``path`` line by line (gunzipped when it ends in ``.gz``); returns the lines read."""
    count = 0
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            count = number
            hits = _hits_in_text(raw.decode("utf-8", errors="replace"))
            if hits:
                findings.extend(_findings(Location("file", path=_safe(path), line=number), hits))
    return count


# --- deployment checks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """What the composition root knows about this deployment, for :func:`deployment_checks`.

    ``payment_page_csp`` and ``hsts_header`` are the header values the service actually sends;
    ``payment_page_scripts`` maps each script the hosted payment page loads to a description (and
    the SHA-256 of our own scripts), ``gateway_origins`` are the origins allowed to serve scripts
    besides our own; ``card_guard_exemptions`` are the routes that skip the card-data guard and
    ``allowed_exemptions`` those the design allows (gateway webhook intake).
    """

    public_url: str
    hsts_header: str | None
    payment_page_csp: str
    payment_page_scripts: tuple[tuple[str, str], ...]
    gateway_origins: tuple[str, ...]
    gateway_configured: bool
    gateway_is_sandbox: bool
    webhook_secret_count: int
    card_guard_exemptions: tuple[str, ...]
    allowed_exemptions: tuple[str, ...]
    scan_paths: tuple[Path, ...] = ()
    master_key_max_age_days: int = 365
    api_key_max_age_days: int = 365
    api_key_idle_days: int = 90


@dataclass(frozen=True, slots=True)
class ConfigCheck:
    id: str
    title: str
    requirement: str
    status: CheckStatus
    evidence: tuple[str, ...]


_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_UNSAFE_SOURCES: Final = frozenset(
    {"'unsafe-inline'", "'unsafe-eval'", "*", "https:", "http:", "data:", "blob:"}
)


def _csp_directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def _origin(url: str) -> str:
    match = re.match(r"^([a-z][a-z0-9+.-]*://[^/]+)", url)
    return match.group(1) if match else "'self'"


def _check_csp(facts: DeploymentFacts) -> ConfigCheck:
    directives = _csp_directives(facts.payment_page_csp)
    scripts = directives.get("script-src", directives.get("default-src", []))
    problems = [f"script-src allows {source}" for source in scripts if source in _UNSAFE_SOURCES]
    problems += [
        f"script-src allows {source}, which is neither this origin nor the gateway's"
        for source in scripts
        if source not in _UNSAFE_SOURCES and source != "'self'" and source not in facts.gateway_origins
    ]
    if directives.get("frame-ancestors") != ["'none'"]:
        problems.append("frame-ancestors is not 'none': the page could be framed (clickjacking)")
    if directives.get("default-src") != ["'none'"]:
        problems.append("default-src is not 'none'")
    evidence = (f"Content-Security-Policy sent with /pay pages: {facts.payment_page_csp}", *problems)
    return ConfigCheck(
        "payment_page_csp",
        "Payment page runs scripts only from this origin and the gateway's",
        "6.4.3, 11.6.1",
        "fail" if problems else "pass",
        evidence,
    )


def _check_scripts(facts: DeploymentFacts) -> ConfigCheck:
    evidence = []
    unauthorised = []
    for url, description in facts.payment_page_scripts:
        origin = _origin(url)
        evidence.append(f"{url} — {description}")
        if origin != "'self'" and origin not in facts.gateway_origins:
            unauthorised.append(f"{url} is served from {origin}, which the policy does not authorise")
    return ConfigCheck(
        "payment_page_scripts",
        "Inventory of the scripts the payment page loads",
        "6.4.3",
        "fail" if unauthorised else "pass",
        (*evidence, *unauthorised),
    )


def _check_tls(facts: DeploymentFacts) -> list[ConfigCheck]:
    scheme, _, rest = facts.public_url.partition("://")
    host = rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    public = f"VEILBILL_PUBLIC_URL is {facts.public_url}"
    if scheme == "https":
        tls = ConfigCheck(
            "tls",
            "Served over TLS",
            "4.2.1",
            "pass",
            (public, "terminate TLS 1.2+ at the proxy in front of `veilbill serve`"),
        )
    elif host in _LOOPBACK:
        tls = ConfigCheck(
            "tls",
            "Served over TLS",
            "4.2.1",
            "warn",
            (public, "plain HTTP on loopback: acceptable for development only"),
        )
    else:
        tls = ConfigCheck(
            "tls",
            "Served over TLS",
            "4.2.1",
            "fail",
            (public, "plain HTTP on a network address: set an https public URL behind TLS"),
        )
    max_age = 0
    if facts.hsts_header:
        match = re.search(r"max-age=(\d+)", facts.hsts_header)
        max_age = int(match.group(1)) if match else 0
    hsts_evidence = (f"Strict-Transport-Security sent: {facts.hsts_header or 'none'}",)
    if scheme != "https":
        hsts = ConfigCheck(
            "hsts",
            "HSTS keeps browsers on HTTPS",
            "4.2.1",
            "warn",
            (*hsts_evidence, "not applicable without an https public URL"),
        )
    elif max_age >= 31_536_000:
        hsts = ConfigCheck("hsts", "HSTS keeps browsers on HTTPS", "4.2.1", "pass", hsts_evidence)
    else:
        hsts = ConfigCheck(
            "hsts",
            "HSTS keeps browsers on HTTPS",
            "4.2.1",
            "fail",
            (*hsts_evidence, "HSTS needs max-age of at least one year"),
        )
    return [tls, hsts]


def _check_webhooks(facts: DeploymentFacts) -> ConfigCheck:
    if not facts.gateway_configured:
        return ConfigCheck(
            "webhook_secret",
            "Gateway webhooks are verified",
            "12.8",
            "warn",
            ("no gateway is configured: payments and webhooks are disabled",),
        )
    if facts.webhook_secret_count < 1:
        return ConfigCheck(
            "webhook_secret",
            "Gateway webhooks are verified",
            "12.8",
            "fail",
            ("a gateway is configured without VEILBILL_STRIPE_WEBHOOK_SECRET",),
        )
    return ConfigCheck(
        "webhook_secret",
        "Gateway webhooks are verified",
        "12.8",
        "pass",
        (
            f"{facts.webhook_secret_count} signing secret(s) configured; unsigned, stale (over 300 s) "
            "or tampered webhooks are refused (webhook_signature_invalid)",
            "sandbox gateway" if facts.gateway_is_sandbox else "live gateway API",
        ),
    )


def _check_tokens(facts: DeploymentFacts, session: Session, tenant_id: str | None) -> ConfigCheck:
    total_query = select(func.count()).select_from(PaymentMethod)
    odd_query = total_query.where(
        or_(
            ~col(PaymentMethod.gateway_payment_method_id).startswith("pm_"),
            func.length(PaymentMethod.last4) != 4,
        )
    )
    if tenant_id is not None:
        total_query = total_query.where(col(PaymentMethod.tenant_id) == tenant_id)
        odd_query = odd_query.where(col(PaymentMethod.tenant_id) == tenant_id)
    total = int(session.execute(total_query).scalar_one())
    odd = int(session.execute(odd_query).scalar_one())
    extra = sorted(set(facts.card_guard_exemptions) - set(facts.allowed_exemptions))
    evidence = [
        f"{total} saved card(s) stored as gateway tokens (pm_…) with a card summary; {odd} not a token",
        "the gateway adapter's calls take tokens and ids only (tokenization.PaymentGateway)",
        "card-data guard on every route except: "
        + (", ".join(facts.card_guard_exemptions) or "none")
        + " (webhook intake is authenticated by its signature and keeps whitelisted fields only)",
    ]
    evidence += [f"route {route} skips the card-data guard without a documented reason" for route in extra]
    return ConfigCheck(
        "gateway_tokens_only",
        "The gateway is reached only through tokens",
        "3.2.1, SAQ A eligibility",
        "fail" if odd or extra else "pass",
        tuple(evidence),
    )


def _check_master_key(facts: DeploymentFacts, status: KeyStatus) -> ConfigCheck:
    active = next((v for v in status.versions if v.active), None)
    limit = facts.master_key_max_age_days
    evidence = [f"rotation policy: master key at most {limit} days old (VEILBILL_MASTER_KEY_MAX_AGE_DAYS)"]
    result: CheckStatus = "pass"
    if active is None or active.age_days is None:
        evidence.append(f"active master key {status.active_key_id}: age unknown")
        result = "warn"
    else:
        evidence.append(f"active master key {active.key_id} is {active.age_days} days old")
        if active.age_days > limit:
            result = "fail"
            evidence.append("past its cryptoperiod: run `veilbill keys rotate`")
        elif active.age_days > limit - 30:
            result = "warn"
            evidence.append("reaches its cryptoperiod within 30 days")
    if status.rotation_in_progress:
        result = "warn" if result == "pass" else result
        evidence.append("a rotation is unfinished: run `veilbill keys rotate` to resume it")
    if status.orphaned_deks:
        result = "fail"
        evidence.append(f"{status.orphaned_deks} data keys name a master key that no longer exists")
    return ConfigCheck(
        "master_key_age", "Master key within its cryptoperiod", "3.6.1, 3.7.4", result, tuple(evidence)
    )


def _check_api_keys(
    facts: DeploymentFacts, session: Session, tenant_id: str | None, now: datetime
) -> ConfigCheck:
    query = select_rows(ApiKey).where(col(ApiKey.revoked_at).is_(None))
    if tenant_id is not None:
        query = query.where(col(ApiKey.tenant_id) == tenant_id)
    idle_since = now - timedelta(days=facts.api_key_idle_days)
    too_old = now - timedelta(days=facts.api_key_max_age_days)
    live = idle = old = 0
    named: list[str] = []
    for key in session.exec(query):
        if key.expires_at is not None and key.expires_at <= now:
            continue
        live += 1
        last = key.last_used_at or key.created_at
        if last < idle_since:
            idle += 1
            used = "never used" if key.last_used_at is None else f"last used {key.last_used_at:%Y-%m-%d}"
            named.append(f"key {key.id} ({key.role}) {used}: revoke it if it is not needed (8.2.6)")
        if key.created_at < too_old:
            old += 1
            named.append(f"key {key.id} ({key.role}) issued {key.created_at:%Y-%m-%d} and never rotated")
    evidence = (
        f"{live} live API key(s); {idle} unused for {facts.api_key_idle_days}+ days; {old} older than "
        f"{facts.api_key_max_age_days} days",
        "keys are 256-bit random, stored as SHA-256 only, one role each, revocable and expirable",
        *named[:50],
    )
    return ConfigCheck(
        "api_keys",
        "API keys in use and rotated",
        "8.2.6, 8.3.1, 8.6.3",
        "warn" if idle or old else "pass",
        evidence,
    )


def _check_audit(audit: AuditTrail, session: Session, tenant_id: str | None) -> ConfigCheck:
    result = audit.verify(session, chain=tenant_id)
    evidence = [f"{result.events} events in {result.chains} chain(s) verified (HMAC-SHA256 chain)"]
    if result.first_break is not None:
        evidence.append(
            f"first broken link: chain {result.first_break.chain} seq {result.first_break.seq} "
            f"({result.first_break.reason})"
        )
    return ConfigCheck(
        "audit_chain",
        "Audit trail intact",
        "10.2.1, 10.3.4",
        "pass" if result.ok else "fail",
        tuple(evidence),
    )


def deployment_checks(
    facts: DeploymentFacts,
    *,
    session: Session,
    audit: AuditTrail,
    key_status: KeyStatus,
    now: datetime,
    tenant_id: str | None = None,
) -> list[ConfigCheck]:
    """Every configuration check of this deployment (``tenant_id`` narrows data-based checks)."""
    return [
        _check_csp(facts),
        _check_scripts(facts),
        _check_tokens(facts, session, tenant_id),
        _check_webhooks(facts),
        *_check_tls(facts),
        _check_master_key(facts, key_status),
        _check_api_keys(facts, session, tenant_id, now),
        _check_audit(audit, session, tenant_id),
    ]


# --- the scope report -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PciRequirement:
    id: str
    title: str
    how: str
    checks: tuple[str, ...] = ()
    scan: bool = False


PCI_REQUIREMENTS: Final[tuple[PciRequirement, ...]] = (
    PciRequirement(
        "3.2.1",
        "Account data storage is kept to a minimum",
        "No PAN, cardholder name, service code or sensitive authentication data is stored; only a "
        "gateway token and the card summary the gateway returns (see the inventory).",
        checks=("gateway_tokens_only",),
        scan=True,
    ),
    PciRequirement(
        "3.3.1",
        "Sensitive authentication data is not retained after authorization",
        "CVC, track and PIN data never reach Veilbill: card fields belong to the gateway's JavaScript, "
        "and requests naming cvc/cvv/track fields are refused with card_data_rejected.",
        scan=True,
    ),
    PciRequirement(
        "3.4.1",
        "PAN is masked when displayed",
        "Only the last four digits are ever stored or displayed (payment_methods.last4).",
        scan=True,
    ),
    PciRequirement(
        "3.5.1",
        "PAN is rendered unreadable wherever it is stored",
        "Not applicable by design: no PAN is stored. The scan opens every encrypted value in memory to "
        "prove it, and the guard refuses card numbers at the edge; logs mask them.",
        scan=True,
    ),
    PciRequirement(
        "4.2.1",
        "Strong cryptography protects PAN in transit over open networks",
        "Card data travels from the browser to the gateway over the gateway's TLS; Veilbill's own "
        "pages and API are served over TLS with HSTS in production.",
        checks=("tls", "hsts"),
    ),
    PciRequirement(
        "6.4.3",
        "Payment page scripts are authorized, their integrity assured, and inventoried",
        "The hosted page loads two scripts (the gateway's and our own, whose SHA-256 is recorded here); "
        "a strict CSP forbids any other origin, inline script and eval. (The January 2025 SAQ A "
        "revision replaced 6.4.3 and 11.6.1 by an eligibility criterion; this is its evidence.)",
        checks=("payment_page_csp", "payment_page_scripts"),
    ),
    PciRequirement(
        "8.3.1",
        "User and administrator access is authenticated",
        "Every API call authenticates with a 256-bit random key stored hashed, with one role; the "
        "reviewers' pages are opened with the same keys. Unused and old keys are reported.",
        checks=("api_keys",),
    ),
    PciRequirement(
        "10.2.1",
        "Audit logs capture access and security events",
        "Reads of personal data, key and role changes, refused card data, failed authentication and "
        "these scans are audited in an HMAC-chained trail that `veilbill audit verify` checks.",
        checks=("audit_chain",),
    ),
    PciRequirement(
        "11.6.1",
        "Unauthorized changes to payment pages are detected",
        "The CSP blocks scripts from any other origin; the page script's SHA-256 in each report lets a "
        "reviewer compare reports. A continuous monitor (CSP reporting or an external checker) is the "
        "operator's to add.",
        checks=("payment_page_csp",),
    ),
    PciRequirement(
        "12.8.1",
        "Third-party service providers are managed",
        "The gateway (Stripe) is a PCI DSS Level 1 service provider that stores and processes all "
        "account data; keep its Attestation of Compliance with this report and review it yearly.",
        checks=("webhook_secret",),
    ),
)


@dataclass(frozen=True, slots=True)
class RequirementEvidence:
    id: str
    title: str
    how: str
    status: Literal["met", "attention", "not met", "manual"]
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CardDerivedField:
    table: str
    column: str
    purpose: str
    rule: str


@dataclass(frozen=True, slots=True)
class ScopeReport:
    generated_at: datetime
    tenant_id: str | None
    integration_type: str
    saq_a_reasons: tuple[str, ...]
    data_flow: tuple[str, ...]
    card_derived_fields: tuple[CardDerivedField, ...]
    scan: ScanResult
    checks: tuple[ConfigCheck, ...]
    requirements: tuple[RequirementEvidence, ...]
    passed: bool
    """No card data found, the scan complete, and no check failed."""


INTEGRATION_TYPE: Final = (
    "E-commerce, card capture fully outsourced to the gateway (Stripe): card fields are the gateway's "
    "JavaScript elements on Veilbill's hosted page or the booking app's page; Veilbill receives tokens."
)
SAQ_A_REASONS: Final = (
    "Card-not-present payments only (online bookings, hosted payment links).",
    "All processing of account data is outsourced to a PCI DSS compliant service provider (Stripe).",
    "Veilbill does not electronically store, process or transmit account data: the browser sends card "
    "details straight to the gateway, and Veilbill receives only tokens (pm_…, seti_…, pi_…) and the "
    "card summary (brand, last 4, expiry, fingerprint).",
    "Every element of the payment form that collects card data comes from the gateway; the page around "
    "it runs only this origin's script and the gateway's (Content-Security-Policy below).",
    "Card data sent to the API by mistake is refused before any handler runs, never logged, and the "
    "refusal audited with field paths only; this scan shows none is stored.",
)
DATA_FLOW: Final = (
    "1. Browser → Veilbill: GET /pay/{link} (amount and business name; no card fields of ours).",
    "2. Browser → Veilbill: POST /pay/{link}/setup-intent → a SetupIntent client secret (seti_…).",
    "3. Browser → Gateway: the gateway's JavaScript posts the card number, expiry and CVC to the gateway's "
    "own origin over TLS (confirmCardSetup). Veilbill is not in this path.",
    "4. Gateway → Browser: a payment-method token (pm_…).",
    "5. Browser → Veilbill: POST /pay/{link}/confirm {payment_method: pm_…} (the card guard checks it).",
    "6. Veilbill → Gateway: PaymentIntent with the token and a derived idempotency key; the gateway "
    "returns the outcome and the card summary (brand, last 4, expiry, fingerprint).",
    "7. Gateway → Veilbill: signed webhooks (payment_intent.succeeded…), verified and deduplicated.",
)


def _requirements(scan: ScanResult, checks: Sequence[ConfigCheck]) -> tuple[RequirementEvidence, ...]:
    by_id = {check.id: check for check in checks}
    evidence_list = []
    for req in PCI_REQUIREMENTS:
        statuses: list[str] = []
        evidence: list[str] = []
        if req.scan:
            scan_ok = scan.clean and not scan.stats.errors
            statuses.append("pass" if scan_ok else "fail")
            files = (
                f" and {scan.stats.lines} lines of {scan.stats.files} files"
                if scan.tenant_id is None
                else " (log and backup files: see the operator's `veilbill pci scan`)"
            )
            evidence.append(
                f"scope scan: {len(scan.findings)} finding(s) in {scan.stats.rows} rows of "
                f"{scan.stats.tables} tables ({scan.stats.values_decrypted} encrypted values opened, "
                f"{scan.stats.unreadable} unreadable: shredded){files}"
            )
        for check_id in req.checks:
            check = by_id.get(check_id)
            if check is not None:
                statuses.append(check.status)
                evidence.append(f"check {check.id}: {check.status} — {check.evidence[0]}")
        if not statuses:
            status: Literal["met", "attention", "not met", "manual"] = "manual"
        elif "fail" in statuses:
            status = "not met"
        elif "warn" in statuses:
            status = "attention"
        else:
            status = "met"
        evidence_list.append(RequirementEvidence(req.id, req.title, req.how, status, tuple(evidence)))
    return tuple(evidence_list)


def card_derived_fields(entries: Iterable[InventoryEntry] | None = None) -> tuple[CardDerivedField, ...]:
    """Every stored column the inventory marks as card-derived, with the rule that allows it."""
    items = inventory_entries(metadata) if entries is None else entries
    return tuple(
        CardDerivedField(e.table, e.column, e.inventory.purpose, e.inventory.card)
        for e in items
        if e.inventory.card
    )


@dataclass
class PciService:
    """Scans, checks and the scope report; every scan is audited (``pci.scan``)."""

    db: Database
    keyring: Keyring
    audit: AuditTrail
    key_status: Callable[..., KeyStatus]
    clock: Callable[[], datetime]
    batch_size: int = DEFAULT_SCAN_BATCH
    _scanner: CardDataScanner = field(init=False)

    def __post_init__(self) -> None:
        self._scanner = CardDataScanner(self.db, self.keyring, clock=self.clock, batch_size=self.batch_size)

    def scan(
        self, *, actor: Actor | None = None, tenant_id: str | None = None, paths: Sequence[Path] = ()
    ) -> ScanResult:
        """Scan one tenant's rows (an actor's, or ``tenant_id``) or, with neither, everything."""
        tenant = actor.tenant_id if actor is not None else tenant_id
        result = self._scanner.scan(tenant_id=tenant, paths=paths)
        self._record(actor, tenant, result, None)
        return result

    def checks(self, facts: DeploymentFacts, *, tenant_id: str | None = None) -> list[ConfigCheck]:
        status = self.key_status(tenant_id=tenant_id)
        with self.db.read() as session:
            return deployment_checks(
                facts,
                session=session,
                audit=self.audit,
                key_status=status,
                now=self.clock(),
                tenant_id=tenant_id,
            )

    def scope_report(self, facts: DeploymentFacts, *, actor: Actor | None = None) -> ScopeReport:
        """Scan, check and assemble the report; an actor's report covers their tenant only."""
        tenant = actor.tenant_id if actor is not None else None
        # Log and backup files are shared by every tenant: only the operator's report reads them.
        scan = self._scanner.scan(tenant_id=tenant, paths=facts.scan_paths if tenant is None else ())
        checks = self.checks(facts, tenant_id=tenant)
        self._record(actor, tenant, scan, checks)
        return ScopeReport(
            generated_at=self.clock(),
            tenant_id=tenant,
            integration_type=INTEGRATION_TYPE,
            saq_a_reasons=SAQ_A_REASONS,
            data_flow=DATA_FLOW,
            card_derived_fields=card_derived_fields(),
            scan=scan,
            checks=tuple(checks),
            requirements=_requirements(scan, checks),
            passed=scan.clean and not scan.stats.errors and all(c.status != "fail" for c in checks),
        )

    def _record(
        self, actor: Actor | None, tenant: str | None, scan: ScanResult, checks: Sequence[ConfigCheck] | None
    ) -> None:
        detail: dict[str, str | int | bool | None] = {
            "findings": len(scan.findings),
            "rows": scan.stats.rows,
            "decrypted": scan.stats.values_decrypted,
            "unreadable": scan.stats.unreadable,
            "files": scan.stats.files,
            "scope": "tenant" if tenant else "all",
        }
        if checks is not None:
            detail["checks_failed"] = sum(1 for c in checks if c.status == "fail")
        with self.db.transaction() as session:
            self.audit.record(
                session,
                actor=actor,
                tenant_id=tenant,
                action="pci.scan",
                resource_type="pci",
                outcome="success" if scan.clean else "alert",
                detail=detail,
            )
