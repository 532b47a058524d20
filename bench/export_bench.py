"""Benchmark of the invoice export from the database to Parquet; prints one JSON line per case.

* ``export-seed``: a SQLite database under ``var/bench/`` with one tenant, ``--customers`` clients
  and ``--invoices`` finalized invoices spread evenly over 2022-2025 (so one year is a quarter of
  them). Everything is stored the way the service stores it — a ``profile`` and a ``record`` data
  key per client, wrapped by the keyring's master key; name, email, address (with the postcode),
  birth date and gender sealed under the profile key; each invoice's client snapshot and its line's
  description sealed under the record key, bound to their rows — but written with bulk inserts
  (executemany in batches of 20,000) instead of one API call per invoice. Values come from NumPy
  with a fixed seed (postcodes skewed over 2,000 codes, ages 18-95, 12 categories). Tables are
  found by reflection, so the bench uses only billing's public API. The database is reused while
  its parameters match (``var/bench/export-<invoices>.json``).
* ``export-<period>`` (``export-1y``, ``export-2y``, ``export-4y``): ``ReportService.export_invoices``
  (k=5, distinct l=2, 5 % suppression, k in distinct clients) written to a Parquet file, in a
  child process so ``peak_rss_mb`` (``getrusage``) is the export's own. ``rss_start_mb`` is the
  child's resident size after imports, before the export; ``wall_s`` covers both passes, the
  search and writing the file.
* ``collect-<period>``: the same export read whole into one DataFrame, then written — what the
  service did before streaming — for the memory comparison side by side.

Usage: ``python -m bench.export_bench [--only export-seed,export-1y,export-4y] [--invoices N]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
from sqlalchemy import MetaData, insert

from anonymize import encode_release
from billing import (
    Actor,
    Billing,
    Database,
    DatabaseConfig,
    DataKey,
    FieldContext,
    Keyring,
    KeyringMasterKeys,
    create_keyring,
    load_keyring,
    seal_text,
    upgrade,
    write_keyring,
)

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "var" / "bench"
PERIODS = {
    "1y": (date(2025, 1, 1), date(2025, 12, 31)),
    "2y": (date(2024, 1, 1), date(2025, 12, 31)),
    "4y": (date(2022, 1, 1), date(2025, 12, 31)),
}
CASES = ["export-seed", *(f"export-{p}" for p in PERIODS), *(f"collect-{p}" for p in PERIODS)]
DEFAULT_CASES = ["export-seed", "export-1y", "export-2y", "export-4y", "collect-1y", "collect-4y"]
CATEGORIES = [f"service-{index:02d}" for index in range(12)]
BATCH = 20_000
SEED = 20251202


def _id(prefix: str) -> str:
    """An opaque random id shaped like the service's (20 characters, here base32 of 100 random bits)."""
    return f"{prefix}_{base64.b32encode(os.urandom(15)).decode('ascii').lower()[:20]}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def paths(invoices: int) -> tuple[Path, Path, Path]:
    return (
        BENCH_DIR / f"export-{invoices}.db",
        BENCH_DIR / "keyring.json",
        BENCH_DIR / f"export-{invoices}.json",
    )


def _seed_customers(
    db: Database,
    tables: MetaData,
    masters: KeyringMasterKeys,
    keyring: Keyring,
    tenant: str,
    customers: int,
    rng: np.random.Generator,
    now: datetime,
) -> tuple[list[str], list[DataKey]]:
    """Clients with their two data keys, PII sealed under the profile key."""
    postcodes = np.sort(rng.choice(np.arange(1000, 96000), size=2000, replace=False))
    weight = rng.lognormal(0.0, 1.0, size=postcodes.size)
    client_postcode = rng.choice(postcodes, size=customers, p=weight / weight.sum())
    client_birth = np.datetime64("1930-01-01") + rng.integers(0, 365 * 77, size=customers).astype(
        "timedelta64[D]"
    )
    client_gender = rng.choice(
        np.array(["female", "male", "non_binary"]), size=customers, p=[0.5, 0.48, 0.02]
    )
    customer_ids = [_id("cus") for _ in range(customers)]
    record_keys: list[DataKey] = []
    with db.engine.begin() as connection:
        keys_rows, customer_rows = [], []
        for index, customer_id in enumerate(customer_ids):
            profile = DataKey(key_id=_id("dek"), material=os.urandom(32))
            record = DataKey(key_id=_id("dek"), material=os.urandom(32))
            record_keys.append(record)
            for dek, purpose in ((profile, "profile"), (record, "record")):
                wrapped = masters.wrap(dek, tenant_id=tenant, purpose=purpose)
                keys_rows.append(
                    {
                        "id": dek.key_id,
                        "tenant_id": tenant,
                        "subject_id": customer_id,
                        "purpose": purpose,
                        "master_key_id": keyring.active_master_id,
                        "wrapped": wrapped,
                        "created_at": now,
                    }
                )

            def sealed(
                column: str, text: str, customer_id: str = customer_id, key: DataKey = profile
            ) -> bytes:
                return seal_text(key, text, FieldContext(tenant, "customers", column, customer_id))

            address = json.dumps(
                {
                    "line1": f"{index} rue Bench",
                    "city": "Lyon",
                    "postcode": f"{client_postcode[index]:05d}",
                    "country": "FR",
                }
            )
            customer_rows.append(
                {
                    "id": customer_id,
                    "tenant_id": tenant,
                    "created_at": now,
                    "updated_at": now,
                    "name_ct": sealed("name", f"Client {index}"),
                    "email_ct": sealed("email", f"client{index}@example.org"),
                    "address_ct": sealed("address", address),
                    "birth_date_ct": sealed("birth_date", str(client_birth[index])),
                    "gender_ct": sealed("gender", str(client_gender[index])),
                }
            )
            if len(customer_rows) == BATCH or index == customers - 1:
                connection.execute(insert(tables.tables["data_keys"]), keys_rows)
                connection.execute(insert(tables.tables["customers"]), customer_rows)
                keys_rows, customer_rows = [], []

    return customer_ids, record_keys


def _seed_invoices(
    db: Database,
    tables: MetaData,
    tenant: str,
    customer_ids: list[str],
    record_keys: list[DataKey],
    invoices: int,
    rng: np.random.Generator,
    now: datetime,
) -> None:
    """Finalized invoices with one line each, content sealed under the client's record key."""
    days = (np.datetime64("2022-01-01") - np.datetime64("1970-01-01")).astype(np.int64) + np.sort(
        rng.integers(0, 365 * 4 + 1, size=invoices)
    )
    owner = rng.integers(0, len(customer_ids), size=invoices)
    category = rng.choice(len(CATEGORIES), size=invoices, p=rng.dirichlet(np.full(len(CATEGORIES), 2.0)))
    amount = rng.integers(20, 400, size=invoices) * 100
    sequence: dict[int, int] = {}
    with db.engine.begin() as connection:
        invoice_rows, line_rows = [], []
        for index in range(invoices):
            invoice_id, line_id = _id("inv"), _id("lin")
            customer_id = customer_ids[int(owner[index])]
            key = record_keys[int(owner[index])]
            issued = date.fromordinal(int(days[index]) + date(1970, 1, 1).toordinal())
            number = sequence[issued.year] = sequence.get(issued.year, 0) + 1
            net = int(amount[index])
            tax = net // 5
            snapshot = json.dumps({"name": f"Client {owner[index]}", "postcode": "xxxxx"})
            invoice_rows.append(
                {
                    "id": invoice_id,
                    "tenant_id": tenant,
                    "customer_id": customer_id,
                    "currency": "EUR",
                    "series": "INV",
                    "status": "paid",
                    "number": f"INV-{issued.year}-{number:06d}",
                    "number_year": issued.year,
                    "number_seq": number,
                    "issue_date": issued,
                    "subtotal": net,
                    "tax": tax,
                    "total": net + tax,
                    "customer_snapshot_ct": seal_text(
                        key, snapshot, FieldContext(tenant, "invoices", "customer_snapshot", invoice_id)
                    ),
                    "created_at": now,
                    "updated_at": now,
                    "finalized_at": now,
                    "amount_paid": net + tax,
                    "amount_refunded": 0,
                    "version": 1,
                }
            )
            line_rows.append(
                {
                    "id": line_id,
                    "tenant_id": tenant,
                    "invoice_id": invoice_id,
                    "position": 0,
                    "description_ct": seal_text(
                        key, "consultation", FieldContext(tenant, "invoice_lines", "description", line_id)
                    ),
                    "quantity": 1,
                    "unit_amount": net,
                    "tax_rate_bps": 2000,
                    "category": CATEGORIES[int(category[index])],
                    "net": net,
                    "tax": tax,
                    "total": net + tax,
                }
            )
            if len(invoice_rows) == BATCH or index == invoices - 1:
                connection.execute(insert(tables.tables["invoices"]), invoice_rows)
                connection.execute(insert(tables.tables["invoice_lines"]), line_rows)
                invoice_rows, line_rows = [], []


def seed(invoices: int, customers: int) -> dict[str, object]:
    """Create (or reuse) the seeded database; returns its parameters."""
    db_path, keyring_path, state_path = paths(invoices)
    wanted = {"invoices": invoices, "customers": customers, "seed": SEED}
    if state_path.exists() and db_path.exists() and keyring_path.exists():
        state = json.loads(state_path.read_text())
        if {key: state.get(key) for key in wanted} == wanted:
            return {**state, "reused": True}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    db_path.unlink(missing_ok=True)
    if not keyring_path.exists():
        write_keyring(keyring_path, create_keyring(now=datetime.now(UTC)))
    keyring = load_keyring(keyring_path)
    started = time.perf_counter()
    db = Database(DatabaseConfig(f"sqlite:///{db_path}"))
    upgrade(db.engine, "head")
    billing = Billing(db=db, keyring=keyring)
    tenant = billing.tenants.create_tenant("Bench Clinic").tenant_id
    tables = MetaData()
    tables.reflect(db.engine)
    masters = KeyringMasterKeys(keyring)
    rng = np.random.default_rng(SEED)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    customer_ids, record_keys = _seed_customers(db, tables, masters, keyring, tenant, customers, rng, now)
    _seed_invoices(db, tables, tenant, customer_ids, record_keys, invoices, rng, now)
    db.dispose()
    state = {
        **wanted,
        "tenant_id": tenant,
        "seed_s": round(time.perf_counter() - started, 1),
        "db_mb": round(db_path.stat().st_size / 2**20, 1),
    }
    state_path.write_text(json.dumps(state))
    return {**state, "reused": False}


def run_export(invoices: int, period: str, collect: bool) -> dict[str, object]:
    """One export in this process (called in a child)."""
    db_path, keyring_path, state_path = paths(invoices)
    state = json.loads(state_path.read_text())
    billing = Billing(db=Database(DatabaseConfig(f"sqlite:///{db_path}")), keyring=load_keyring(keyring_path))
    actor = Actor(tenant_id=state["tenant_id"], role="accountant", key_id="key_bench")
    start, end = PERIODS[period]
    out = BENCH_DIR / f"export-{period}.parquet"
    import pyarrow.parquet  # noqa: F401 -- loaded before measuring, as a running service has it

    rss_start = current_rss_mb()
    started = time.perf_counter()
    export = billing.reports.export_invoices(actor, start, end, k=5, l=2, suppression=0.05)
    pass_one = time.perf_counter() - started
    peak_after_search = peak_rss_mb()
    metadata = {"veilbill.guarantee": json.dumps(dict(export.guarantee), sort_keys=True)}
    chunks = export.chunks()
    if collect:
        frames = list(chunks)
        whole: list[pl.DataFrame] = [pl.concat(frames)] if frames else []
        del frames
        chunks = iter(whole)
    with out.open("wb") as handle:
        for block in encode_release(chunks, schema=export.schema, output_format="parquet", metadata=metadata):
            handle.write(block)
    wall = time.perf_counter() - started
    guarantee = export.guarantee
    return {
        "case": f"{'collect' if collect else 'export'}-{period}",
        "rows": guarantee["rows"],
        "customers": state["customers"],
        "wall_s": round(wall, 2),
        "pass1_and_search_s": round(pass_one, 2),
        "rows_per_s": round(int(str(guarantee["rows"])) / wall),
        "rss_start_mb": round(rss_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_minus_start_mb": round(peak_rss_mb() - rss_start, 1),
        "peak_after_pass1_and_search_mb": round(peak_after_search, 1),
        "parquet_mb": round(out.stat().st_size / 2**20, 1),
        "levels": guarantee["levels"],
        "suppressed": guarantee["suppressed"],
        "min_customers": guarantee.get("min_customers"),
        "loss": guarantee["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(DEFAULT_CASES), help=f"cases among {', '.join(CASES)}")
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=None, help="default: a tenth of the invoices")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    customers = options.customers or max(options.invoices // 10, 1)
    if options.child:
        kind, period = options.child.split("-", 1)
        print(json.dumps(run_export(options.invoices, period, kind == "collect")), flush=True)
        return 0
    names = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if "export-seed" in names or any(name != "export-seed" for name in names):
        state = seed(options.invoices, customers)
        print(json.dumps({"case": "export-seed", **state}), flush=True)
    for name in names:
        if name == "export-seed":
            continue
        command = [sys.executable, "-m", "bench.export_bench", "--invoices", str(options.invoices)]
        command += ["--customers", str(customers), "--child", name]
        subprocess.run(command, check=True, cwd=ROOT)  # noqa: S603 -- our own module, fixed arguments
    return 0


if __name__ == "__main__":
    sys.exit(main())
