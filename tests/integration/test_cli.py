"""The ``veilbill`` console script, run as an operator runs it: a real process, a real database."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]
from faker import Faker
from sqlalchemy import inspect

from billing import (
    Actor,
    Address,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    InvoiceInput,
    InvoiceLineInput,
    head_revision,
    load_keyring,
)

from .conftest import Operator, free_port

ROLES = ("admin", "booking", "accountant", "auditor")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _commands(help_text: str) -> set[str]:
    """The command names listed under ``Commands:`` in click's help."""
    _, _, listing = help_text.partition("Commands:")
    return {line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line.split()}


def test_help_lists_the_commands(tmp_path: Path) -> None:
    operator = Operator("sqlite:///unused.db", tmp_path / "unused.json", tmp_path)
    result = operator.run("--help")
    assert {"serve", "db", "keys", "tenants", "audit", "demo"} <= _commands(result.stdout)
    keys = operator.run("keys", "--help")
    expected = {"init", "status", "rotate", "retire", "rotate-subject", "migrate-to-hsm"}
    assert expected <= _commands(keys.stdout)
    assert not (tmp_path / "unused.db").exists(), "--help must not touch the database"


def test_the_schema_migrates_from_empty_and_serve_refuses_until_it_has(operator: Operator) -> None:
    assert "schema at revision None" in operator.run("db", "downgrade", "--revision", "base").stdout

    refused = operator.run("serve", "--port", str(free_port()), expect=1)
    assert "veilbill db upgrade" in refused.stderr

    assert operator.run("db", "upgrade").stdout.strip() == f"schema at revision {head_revision()}"
    db = Database(DatabaseConfig(operator.database_url))
    try:
        tables = set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    assert {"tenants", "customers", "invoices", "audit_events"} <= tables
    assert operator.run("db", "upgrade").stdout.strip() == f"schema at revision {head_revision()}"


def test_keys_init_writes_a_private_keyring_once_and_status_shows_no_material(
    database_url: str, tmp_path: Path
) -> None:
    keyring_path = tmp_path / "secrets" / "keyring.json"
    operator = Operator(database_url, keyring_path, tmp_path)

    operator.run("keys", "init")
    assert _mode(keyring_path) == 0o600
    written = keyring_path.read_bytes()

    refused = operator.run("keys", "init", expect=None)
    assert refused.returncode != 0
    assert "refusing to overwrite" in refused.stderr
    assert operator.run("keys", "init", "--if-missing").returncode == 0
    assert keyring_path.read_bytes() == written, "the keyring must never be replaced"
    assert _mode(keyring_path) == 0o600

    assert operator.sql("SELECT action FROM audit_events WHERE chain = 'system'") == [("keys.initialized",)]

    document = json.loads(written)
    entries = document["master_keys"] + document["audit_keys"]
    status = operator.run("keys", "status")
    printed = status.stdout + status.stderr
    for entry in entries:
        assert entry["id"] in printed
        material = base64.b64decode(entry["material"])
        for encoding in (
            entry["material"],
            base64.urlsafe_b64encode(material).decode(),
            base64.b32encode(material).decode(),
            material.hex(),
        ):
            assert encoding not in printed
            assert encoding.rstrip("=")[:16] not in printed
    assert f"{document['active_master_key']} (active)" in printed


def test_audit_verify_passes_then_names_the_tampered_event(operator: Operator) -> None:
    issued = operator.create_tenant("Salon X")
    assert set(issued) == {"tenant_id", "admin_key"}
    assert issued["admin_key"].startswith("vb_")
    tenant = issued["tenant_id"]

    clean = json.loads(operator.run("audit", "verify").stdout)
    assert clean["ok"] is True
    assert clean["events"] >= 1
    assert "first_break" not in clean

    [(event_id,)] = operator.sql("SELECT id FROM audit_events WHERE chain = :chain AND seq = 1", chain=tenant)
    operator.sql("UPDATE audit_events SET action = 'x' WHERE chain = :chain AND seq = 1", chain=tenant)

    tampered = operator.run("audit", "verify", expect=1)
    report = json.loads(tampered.stdout)
    assert report["ok"] is False
    assert report["first_break"]["chain"] == tenant
    assert report["first_break"]["seq"] == 1
    assert report["first_break"]["event_id"] == event_id
    assert (
        json.loads(operator.run("audit", "verify", "--tenant", tenant, expect=1).stdout)["first_break"]["seq"]
        == 1
    )


def test_demo_seeds_a_tenant_and_prints_one_key_per_role(operator: Operator, tmp_path: Path) -> None:
    keys_file = tmp_path / "demo" / "keys.json"
    result = operator.run("demo", "--customers", "3", "--invoices", "5", "--keys-file", str(keys_file))

    printed = dict(
        re.findall(r"^\s+(admin|booking|accountant|auditor)\s+(vb_\S+)$", result.stdout, re.MULTILINE)
    )
    assert set(printed) == set(ROLES)
    assert len(set(printed.values())) == len(ROLES)
    assert _mode(keys_file) == 0o600
    stored = json.loads(keys_file.read_text())
    assert stored["keys"] == printed
    tenant = stored["tenant_id"]
    assert operator.sql("SELECT count(*) FROM customers WHERE tenant_id = :t", t=tenant) == [(3,)]
    assert operator.sql("SELECT count(*) FROM invoices WHERE tenant_id = :t", t=tenant) == [(5,)]

    again = operator.run("demo", "--if-empty", "--keys-file", str(keys_file))
    assert (
        dict(re.findall(r"^\s+(admin|booking|accountant|auditor)\s+(vb_\S+)$", again.stdout, re.MULTILINE))
        == printed
    )
    assert operator.sql("SELECT count(*) FROM tenants") == [(1,)]


def test_customers_erase_and_erasures_replay(operator: Operator, tmp_path: Path) -> None:
    keys_file = tmp_path / "demo-keys.json"
    operator.run("demo", "--customers", "2", "--invoices", "2", "--keys-file", str(keys_file))
    tenant = json.loads(keys_file.read_text())["tenant_id"]
    [(customer,)] = operator.sql(
        "SELECT id FROM customers WHERE tenant_id = :t ORDER BY created_at LIMIT 1", t=tenant
    )
    receipt = json.loads(operator.run("customers", "erase", tenant, customer).stdout)
    assert receipt["customer_id"] == customer and receipt["profile_key_destroyed"] is True
    assert operator.sql("SELECT name_ct FROM customers WHERE id = :c", c=customer) == [(None,)]
    again = operator.run("customers", "erase", tenant, customer, expect=None)
    assert again.returncode == 1
    assert "customer_erased" in again.stderr and "Traceback" not in again.stderr
    replay = json.loads(operator.run("erasures", "replay").stdout)
    assert replay == {"reapplied": 0}  # nothing to redo: the database already has the erasure


def test_keys_rotate_subject_gives_one_client_new_data_keys(operator: Operator, tmp_path: Path) -> None:
    keys_file = tmp_path / "demo-keys.json"
    operator.run("demo", "--customers", "2", "--invoices", "3", "--keys-file", str(keys_file))
    tenant = json.loads(keys_file.read_text())["tenant_id"]
    customer, other = (
        row[0] for row in operator.sql("SELECT id FROM customers WHERE tenant_id = :t ORDER BY id", t=tenant)
    )
    keys_sql = "SELECT purpose, id FROM data_keys WHERE subject_id = :c ORDER BY purpose"
    before, other_before = operator.sql(keys_sql, c=customer), operator.sql(keys_sql, c=other)
    name_before = operator.sql("SELECT name_ct FROM customers WHERE id = :c", c=customer)

    result = json.loads(
        operator.run("keys", "rotate-subject", tenant, customer, "--purpose", "profile").stdout
    )
    assert result["customer_id"] == customer and list(result["rotated"]) == ["profile"]
    assert result["values_reencrypted"] >= 1
    after = dict(operator.sql(keys_sql, c=customer))
    assert after["profile"] == result["rotated"]["profile"] != dict(before)["profile"]
    assert after["record"] == dict(before)["record"]
    assert operator.sql(keys_sql, c=other) == other_before
    assert operator.sql("SELECT name_ct FROM customers WHERE id = :c", c=customer) != name_before
    audited = operator.sql("SELECT subject_id FROM audit_events WHERE action = 'keys.subject_rotated'")
    assert audited == [(customer,)]

    unknown = operator.run("keys", "rotate-subject", "ten_unknown", customer, expect=1)
    assert "not_found" in unknown.stderr and "Traceback" not in unknown.stderr


def test_breach_open_and_affected(operator: Operator) -> None:
    opened = json.loads(
        operator.run(
            "breach", "open", "--nature", "laptop stolen", "--aware-at", "2026-11-20T08:00:00+0000"
        ).stdout
    )
    assert opened["gdpr_authority_deadline"].startswith("2026-11-23T08:00:00")
    assert json.loads(operator.run("breach", "export", opened["id"]).stdout)["nature"] == "laptop stolen"
    affected = json.loads(
        operator.run("breach", "affected", "--key", "key_nobody", "--since", "2026-01-01").stdout
    )
    assert affected == {
        "key_id": "key_nobody",
        "since": "2026-01-01T00:00:00+00:00",
        "subjects": [],
        "count": 0,
    }


def test_anonymize_any_csv_prints_its_guarantee(operator: Operator, tmp_path: Path) -> None:
    table = tmp_path / "visits.csv"
    rows = ["postcode;age;gender;diagnosis"]
    rows += [f"750{i % 3}{i % 10};{20 + i % 50};{'female' if i % 2 else 'male'};d{i % 4}" for i in range(300)]
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "released.csv"
    result = operator.run(
        "anonymize",
        str(table),
        "--sep",
        ";",
        "--qi",
        "postcode=builtin:postcode",
        "--qi",
        "age=builtin:age",
        "--qi",
        "gender=builtin:flat",
        "--sensitive",
        "diagnosis",
        "--k",
        "5",
        "--l",
        "2",
        "--suppression",
        "0.05",
        "--out",
        str(out),
    )
    guarantee = json.loads(result.stdout)
    assert (
        guarantee["k"] == 5
        and guarantee["l"] == 2
        and set(guarantee["levels"]) == {"postcode", "age", "gender"}
    )
    released = [line.split(";") for line in out.read_text().splitlines()[1:]]
    classes: dict[tuple[str, ...], list[str]] = {}
    for postcode, age, gender, diagnosis in released:
        if (postcode, age, gender) != ("*", "*", "*"):
            classes.setdefault((postcode, age, gender), []).append(diagnosis)
    assert classes and all(len(c) >= 5 and len(set(c)) >= 2 for c in classes.values())
    assert sum(1 for r in released if r[0] == "*" and r[1] == "*") == guarantee["suppressed"] <= 15
    bad = operator.run("anonymize", str(table), "--qi", "nope=builtin:flat", "--out", str(out), expect=None)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


@dataclass
class _Clock:
    now: datetime = datetime(2026, 2, 2, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _seed_invoices(operator: Operator, tenant: str, fake: Faker) -> list[str]:
    """25 clients with 4 finalized invoices each over 2026 H1 (through the services, like the API
    would); returns the PII written, to look for it in the exports."""
    clock = _Clock()
    billing = Billing(
        db=Database(DatabaseConfig(operator.database_url)),
        keyring=load_keyring(operator.keyring_path),
        clock=clock,
    )
    booking = Actor(tenant_id=tenant, role="booking", key_id="seed")
    pii: list[str] = []
    try:
        for index in range(25):
            postcode = f"{75001 + index % 20:05d}"
            data = CustomerInput(
                name=fake.name(),
                email=fake.unique.email(),
                address=Address(line1="3 rue Test", city="Paris", postcode=postcode, country="FR"),
                birth_date=fake.date_of_birth(minimum_age=20, maximum_age=80),
                gender=fake.random_element(["female", "male"]),
            )
            assert data.email is not None
            pii += [data.name, data.email, postcode]
            customer = billing.customers.create(booking, data)
            for _ in range(4):
                clock.now = datetime(2026, 1, 5, 10, tzinfo=UTC) + timedelta(days=fake.random_int(0, 170))
                line = InvoiceLineInput(
                    description="treatment",
                    unit_amount=fake.random_int(20, 90) * 100,
                    tax_rate_bps=2000,
                    category=fake.random_element(["hair", "nails", "skin", "massage"]),
                )
                draft = billing.invoices.create_draft(
                    booking, InvoiceInput(customer_id=customer.id, currency="EUR", lines=[line])
                )
                billing.invoices.finalize(booking, draft.id)
    finally:
        billing.db.dispose()
    return pii


def _independent_k_l(rows: list[dict[str, str]], *, k: int, l: int) -> int:  # noqa: E741
    """k in distinct customers and distinct l on the category, recomputed from the file alone;
    returns the suppressed rows (all quasi-identifiers ``*``)."""
    customers: dict[tuple[str, ...], set[str]] = {}
    categories: dict[tuple[str, ...], set[str]] = {}
    suppressed = 0
    for row in rows:
        key: tuple[str, ...] = (row["region"], row["age_band"], row["gender"], row["period"])
        if key == ("*", "*", "*", "*"):
            suppressed += 1
            continue
        customers.setdefault(key, set()).add(row["customer"])
        categories.setdefault(key, set()).add(row["category"])
    assert customers, "nothing released"
    for released, people in customers.items():
        assert len(people) >= k, released
        assert len(categories[released]) >= l, released
    return suppressed


def test_report_export_writes_private_files_checked_independently(
    operator: Operator, tmp_path: Path, fake: Faker
) -> None:
    tenant = operator.create_tenant("Salon Export")["tenant_id"]
    pii = _seed_invoices(operator, tenant, fake)
    period = ("--from", "2026-01-01", "--to", "2026-12-31")

    out = tmp_path / "exports" / "invoices.csv"
    out.parent.mkdir()
    out.write_text("stale")
    out.chmod(0o644)
    result = operator.run(
        "report", "export", "--tenant", tenant, "--dataset", "invoices", *period,
        "--format", "csv", "--k", "4", "--l", "2", "--suppression", "0.1", "--out", str(out),
    )  # fmt: skip
    guarantee = json.loads(result.stdout)
    sidecar = out.with_name("invoices.csv.guarantee.json")
    assert _mode(out) == 0o600 and _mode(sidecar) == 0o600
    assert json.loads(sidecar.read_text()) == guarantee
    assert guarantee["k"] == 4 and guarantee["l"] == 2 and guarantee["k_counts"] == "customers"
    text = out.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == guarantee["rows"] == 100
    suppressed = _independent_k_l(rows, k=4, l=2)
    assert suppressed == guarantee["suppressed"] <= 10
    # Pseudonyms are hex digests: a postcode's digits can turn up inside one by chance (about one
    # run in thirty), so they are checked for their shape and the PII against every other field.
    assert all(re.fullmatch(r"[0-9a-f]{16,64}", row["customer"]) for row in rows)
    released = "\n".join(",".join(v for c, v in row.items() if c != "customer") for row in rows)
    for value in pii:
        assert value not in released
    assert not list(out.parent.glob(".*.tmp")), "no temporary file left behind"

    parquet = tmp_path / "exports" / "invoices.parquet"
    result = operator.run(
        "report", "export", "--tenant", tenant, "--dataset", "invoices", *period,
        "--format", "parquet", "--k", "4", "--out", str(parquet),
    )  # fmt: skip
    table = pq.read_table(parquet)
    assert json.loads(table.schema.metadata[b"veilbill.guarantee"]) == json.loads(result.stdout)
    _independent_k_l([{c: str(v) for c, v in r.items()} for r in table.to_pylist()], k=4, l=2)
    assert not parquet.with_name("invoices.parquet.guarantee.json").exists()

    revenue = tmp_path / "exports" / "revenue.jsonl"
    operator.run(
        "report", "export", "--tenant", tenant, "--dataset", "revenue", *period,
        "--group-by", "month,category", "--format", "jsonl", "--out", str(revenue),
    )  # fmt: skip
    cells = [json.loads(line) for line in revenue.read_text().splitlines()]
    assert sum(cell["invoices"] for cell in cells) == 100
    assert all(cell["customers"] >= 5 for cell in cells)

    audited = operator.sql(
        "SELECT actor_role, actor_key_id, detail FROM audit_events "
        "WHERE chain = :t AND action = 'report.exported' ORDER BY seq",
        t=tenant,
    )
    assert [(role, key) for role, key, _ in audited] == [("operator", None)] * 3
    assert [json.loads(detail)["report"] for _, _, detail in audited] == ["invoices", "invoices", "revenue"]
    assert json.loads(operator.run("audit", "verify").stdout)["ok"] is True

    missing = tmp_path / "exports" / "nobody.csv"
    refused = operator.run(
        "report", "export", "--tenant", "ten_nobody", "--dataset", "tax", *period, "--out", str(missing),
        expect=1,
    )  # fmt: skip
    assert "not_found" in refused.stderr and "Traceback" not in refused.stderr
    assert not missing.exists()
    too_strict = operator.run(
        "report", "export", "--tenant", tenant, "--dataset", "invoices", *period,
        "--k", "1000", "--suppression", "0", "--out", str(missing), expect=1,
    )  # fmt: skip
    assert "validation_failed" in too_strict.stderr
    assert not missing.exists()


def test_reconcile_reports_a_refund_left_pending_past_the_threshold(
    operator: Operator, tmp_path: Path
) -> None:
    keys_file = tmp_path / "demo" / "keys.json"
    operator.run("demo", "--customers", "1", "--invoices", "1", "--keys-file", str(keys_file))
    tenant = json.loads(keys_file.read_text())["tenant_id"]
    # A paid invoice whose refund was requested and then abandoned (its request died, never retried).
    operator.sql(
        "INSERT INTO payments (id, tenant_id, invoice_id, customer_id, amount, currency, status,"
        " gateway_idempotency_key, created_at, updated_at)"
        " SELECT 'pay_abandoned', tenant_id, id, customer_id, total, currency, 'succeeded', 'vb-pay',"
        " created_at, created_at FROM invoices WHERE tenant_id = :t",
        t=tenant,
    )
    operator.sql("UPDATE invoices SET amount_paid = total, status = 'paid' WHERE tenant_id = :t", t=tenant)
    operator.sql(
        "INSERT INTO refunds (id, tenant_id, invoice_id, payment_id, amount, currency, status,"
        " gateway_idempotency_key, created_at, updated_at)"
        " SELECT 're_abandoned', tenant_id, invoice_id, id, 100, currency, 'pending', 'vb-refund',"
        " created_at, created_at FROM payments WHERE id = 'pay_abandoned'"
    )

    recent = json.loads(operator.run("reconcile", "--tenant", tenant).stdout)
    assert recent["clean"], "requested seconds ago: not stale by the default 15 minutes"
    stale = json.loads(
        operator.run("reconcile", "--tenant", tenant, "--stale-refund-minutes", "0", expect=1).stdout
    )
    assert not stale["clean"]
    assert [(d["kind"], d["payment_id"], d["gateway"]) for d in stale["discrepancies"]] == [
        ("refund_pending_stale", "pay_abandoned", None)  # no gateway configured: not asked
    ]
    assert stale["discrepancies"][0]["local"].startswith("re_abandoned:100:")
    refused = operator.run("reconcile", "--stale-refund-minutes", "-1", expect=2)
    assert "stale-refund-minutes" in refused.stderr
