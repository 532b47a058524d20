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
* ``search-<period>``: the search alone, without the database: the seeded invoices of the period
  drawn again from the seed, turned into the engine input pass 1 builds (four leaf columns,
  category, client; 4 bytes each) and given to ``anonymize.plan_release`` (same k, l and
  suppression) under ``tracemalloc``. ``combinations`` counts the distinct (leaves, category,
  client) tuples, ``search_traced_peak_mb`` is the engine's own NumPy memory at its peak (base
  table and working arrays; the input excluded), and ``search_bytes_per_combination`` their ratio.
  Then, side by side in the same child, ``anonymize.plan_partitioned_release`` on the same input
  given a year at a time, as the export gives it: ``partitioned_traced_peak_mb`` (one year's
  copy of the input included), ``partitioned_s``, and ``same_release`` (levels, suppression and
  loss equal to ``plan_release``'s).

Usage: ``python -m bench.export_bench [--only export-seed,export-1y,export-4y,search-4y] [--invoices N]``.
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
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
from sqlalchemy import MetaData, insert

from anonymize import (
    AnonymizationConfig,
    EncodedTable,
    age_bands,
    date_levels,
    encode_release,
    flat_hierarchy,
    plan_partitioned_release,
    plan_release,
    postcode_prefix,
)
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
CASES = [
    "export-seed",
    *(f"export-{p}" for p in PERIODS),
    *(f"collect-{p}" for p in PERIODS),
    *(f"search-{p}" for p in PERIODS),
]
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


def draw_clients(
    rng: np.random.Generator, customers: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.datetime64], npt.NDArray[np.str_]]:
    """Each client's postcode (2,000 codes, skewed), birth date (1930-2006) and gender."""
    postcodes = np.sort(rng.choice(np.arange(1000, 96000), size=2000, replace=False))
    weight = rng.lognormal(0.0, 1.0, size=postcodes.size)
    client_postcode = rng.choice(postcodes, size=customers, p=weight / weight.sum())
    client_birth = np.datetime64("1930-01-01") + rng.integers(0, 365 * 77, size=customers).astype(
        "timedelta64[D]"
    )
    client_gender = rng.choice(
        np.array(["female", "male", "non_binary"]), size=customers, p=[0.5, 0.48, 0.02]
    )
    return client_postcode, client_birth, client_gender


def draw_invoices(
    rng: np.random.Generator, invoices: int, customers: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each invoice's issue day (days since 1970, 2022-2025, ascending), client, category and net."""
    days = (np.datetime64("2022-01-01") - np.datetime64("1970-01-01")).astype(np.int64) + np.sort(
        rng.integers(0, 365 * 4 + 1, size=invoices)
    )
    owner = rng.integers(0, customers, size=invoices)
    category = rng.choice(len(CATEGORIES), size=invoices, p=rng.dirichlet(np.full(len(CATEGORIES), 2.0)))
    amount = rng.integers(20, 400, size=invoices) * 100
    return days, owner, category, amount


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
    client_postcode, client_birth, client_gender = draw_clients(rng, customers)
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
    days, owner, category, amount = draw_invoices(rng, invoices, len(customer_ids))
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


def _month_day(dates: npt.NDArray[np.datetime64]) -> npt.NDArray[np.int64]:
    """Month·100 + day of month."""
    months = dates.astype("datetime64[M]")
    return (months.astype(np.int64) % 12 + 1) * 100 + (dates - months).astype(np.int64) + 1


def _leaf_codes(
    values: npt.NDArray[np.int64], index: dict[str, int], label: Callable[[int], str]
) -> npt.NDArray[np.int32]:
    """Each value's leaf position, looked up once per distinct value."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.asarray([index[label(int(v))] for v in distinct.tolist()], dtype=np.int32)[inverse]


def run_search(invoices: int, customers: int, period: str) -> dict[str, object]:
    """The search alone (called in a child): the engine input the export's pass 1 would build for
    the seeded invoices of the period — drawn again from the seed, no database — and
    ``plan_release`` under ``tracemalloc``, whose peak is the search's own NumPy working memory."""
    rng = np.random.default_rng(SEED)
    client_postcode, client_birth, client_gender = draw_clients(rng, customers)
    days, owner, category, _ = draw_invoices(rng, invoices, customers)
    start, end = PERIODS[period]
    epoch = date(1970, 1, 1).toordinal()
    chosen = (days >= start.toordinal() - epoch) & (days <= end.toordinal() - epoch)
    days, owner, category = days[chosen], owner[chosen], category[chosen]
    issued = days.astype("datetime64[D]")
    born = client_birth[owner]
    ages = (  # whole years at the issue date, as the export computes them
        issued.astype("datetime64[Y]").astype(np.int64)
        - born.astype("datetime64[Y]").astype(np.int64)
        - (_month_day(issued) < _month_day(born))
    )
    postcodes = sorted({f"{code:05d}" for code in client_postcode[owner].tolist()})
    region = postcode_prefix(postcodes, keep=(5, 3, 2, 0))
    age_band = age_bands(sorted(set(ages.tolist())), (5, 10, 20), 90)
    genders = np.unique(client_gender).tolist()
    gender = flat_hierarchy(genders)
    dates = np.unique(days)
    period_tree = date_levels(date.fromordinal(epoch + int(day)) for day in dates.tolist())
    leaves = {
        "region": _leaf_codes(client_postcode[owner], region.leaf_index(), lambda v: f"{v:05d}"),
        "age_band": _leaf_codes(ages, age_band.leaf_index(), str),
        "gender": _leaf_codes(
            np.searchsorted(genders, client_gender)[owner], gender.leaf_index(), lambda v: genders[v]
        ),
        "period": _leaf_codes(
            days, period_tree.leaf_index(), lambda v: date.fromordinal(epoch + v).isoformat()
        ),
    }
    sensitive, entities = category.astype(np.int32), owner.astype(np.int32)
    encoded = EncodedTable(
        leaves=leaves,
        sensitive=sensitive,
        sensitive_values=len(CATEGORIES),
        entities=entities,
        entity_values=customers,
    )
    input_bytes = sum(a.nbytes for a in (*leaves.values(), sensitive, entities))
    trees = {"region": region, "age_band": age_band, "gender": gender, "period": period_tree}
    key = np.zeros(days.size, dtype=np.int64)
    for column, radix in (
        *((leaves[name], tree.domain_size) for name, tree in trees.items()),
        (sensitive, len(CATEGORIES)),
        (entities, customers),
    ):
        key = key * radix + column
    combinations = int(np.unique(key).size)
    del key, issued, born, ages, chosen
    config = AnonymizationConfig(
        quasi_identifiers=trees,
        sensitive="category",
        k=5,
        l=2,
        suppression_limit=0.05,
        entity="customer",
    )
    tracemalloc.start()
    started = time.perf_counter()
    plan = plan_release(encoded, config)
    search_s = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = (dict(plan.guarantee.levels), plan.guarantee.suppressed, plan.guarantee.loss)
    del plan
    # The same input a year at a time, as the export gives it (each year's copy is made, and
    # traced, while the search reads the partitions: the measure is the partitioned search's own
    # memory plus one year's input).
    years = days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64)

    def by_year() -> Iterator[EncodedTable]:
        for year in np.unique(years).tolist():
            rows = np.flatnonzero(years == year)
            yield EncodedTable(
                leaves={name: values[rows] for name, values in leaves.items()},
                sensitive=sensitive[rows],
                sensitive_values=len(CATEGORIES),
                entities=entities[rows],
                entity_values=customers,
            )

    tracemalloc.start()
    started = time.perf_counter()
    plan = plan_partitioned_release(by_year(), config, by="period")
    partitioned_s = time.perf_counter() - started
    partitioned_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "case": f"search-{period}",
        "rows": int(days.size),
        "combinations": combinations,
        "input_mb": round(input_bytes / 2**20, 1),
        "search_traced_peak_mb": round(traced_peak / 2**20, 1),
        "search_bytes_per_combination": round(traced_peak / max(combinations, 1), 1),
        "search_s": round(search_s, 2),
        "partitioned_traced_peak_mb": round(partitioned_peak / 2**20, 1),
        "partitioned_s": round(partitioned_s, 2),
        "same_release": whole
        == (dict(plan.guarantee.levels), plan.guarantee.suppressed, plan.guarantee.loss),
        "levels": dict(plan.guarantee.levels),
        "suppressed": plan.guarantee.suppressed,
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
        if kind == "search":
            print(json.dumps(run_search(options.invoices, customers, period)), flush=True)
        else:
            print(json.dumps(run_export(options.invoices, period, kind == "collect")), flush=True)
        return 0
    names = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if "export-seed" in names or any(name.startswith(("export-", "collect-")) for name in names):
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
