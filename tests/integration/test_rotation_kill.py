"""Master-key rotation as an operator runs it: ``kill -9`` in the middle, a rerun, a live service.

Real processes on a real database (both kinds): ``veilbill keys rotate`` is killed with SIGKILL
after a few batches, then run again, and every data key must still unwrap to what it was; a
running ``veilbill serve`` keeps serving while another process rotates and retires versions.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
from faker import Faker
from sqlmodel import col, select

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    DatabaseConfig,
    KeyringFileMasterKeys,
    load_keyring,
)
from billing._envelope import DataKey, generate_key_material, sealed_key_id
from billing._models import DataKeyRecord, new_id

from .conftest import CLI_TIMEOUT, Operator, ServerPool, bearer, issue_key, veilbill_argv

SEEDED_KEYS = 3_000
KILL_AFTER_BATCHES = 3


def seed_data_keys(operator: Operator, fake: Faker) -> tuple[dict[str, DataKey], Actor, dict[str, str]]:
    """3 000 DEKs made directly (as if for 3 000 subjects), plus two real clients."""
    db = Database(DatabaseConfig(operator.database_url))
    try:
        billing = Billing(db=db, keyring=load_keyring(operator.keyring_path))
        issued = billing.tenants.create_tenant(fake.company())
        actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
        names = {}
        for _ in range(2):
            customer = billing.customers.create(actor, CustomerInput(name=fake.name(), email=fake.email()))
            names[customer.id] = customer.name
        provider = billing.key_provider
        assert provider is not None
        seeded: dict[str, DataKey] = {}
        with db.transaction() as session:
            for index in range(SEEDED_KEYS):
                dek = DataKey(new_id("dek"), generate_key_material())
                wrapped = provider.wrap(dek, tenant_id=actor.tenant_id, purpose="record")
                session.add(
                    DataKeyRecord(
                        id=dek.key_id,
                        tenant_id=actor.tenant_id,
                        subject_id=f"sub_{index:05d}",
                        purpose="record",
                        master_key_id=sealed_key_id(wrapped),
                        wrapped=wrapped,
                        created_at=billing.clock(),
                    )
                )
                seeded[dek.key_id] = dek
        return seeded, actor, names
    finally:
        db.dispose()


def master_key_ids(operator: Operator) -> dict[str, int]:
    rows = operator.sql(
        "SELECT master_key_id, count(*) FROM data_keys WHERE wrapped IS NOT NULL GROUP BY master_key_id"
    )
    return {str(key_id): int(count) for key_id, count in rows}


def test_kill_9_in_the_middle_of_a_rotation_then_a_rerun_loses_nothing(
    operator: Operator, fake: Faker
) -> None:
    seeded, actor, names = seed_data_keys(operator, fake)
    total = sum(master_key_ids(operator).values())
    assert total >= SEEDED_KEYS

    process = subprocess.Popen(
        [*veilbill_argv(), "keys", "rotate", "--batch-size", "50", "--pause", "0.05"],
        env=operator.env(),
        cwd=operator.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while not any(line.startswith(f"batch {KILL_AFTER_BATCHES}:") for line in seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0 and process.poll() is None, f"no batch {KILL_AFTER_BATCHES} in time: {seen}"
            try:
                seen.append(lines.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                continue
    finally:
        process.kill()  # SIGKILL: no cleanup, no rollback handler, mid-batch or between batches
        process.wait(timeout=10)
        reader.join(timeout=10)
        process.stderr.close()
    assert process.returncode == -9

    after_kill = master_key_ids(operator)
    assert set(after_kill) == {"mk_0001", "mk_0002"}, "killed halfway: both versions hold live keys"
    assert after_kill["mk_0002"] >= KILL_AFTER_BATCHES * 50
    assert sum(after_kill.values()) == total, "no key lost or duplicated"

    rerun = operator.run("keys", "rotate", "--batch-size", "500")
    summary = json.loads(rerun.stdout)
    assert summary["resumed"] is True and summary["complete"] is True
    assert (summary["from"], summary["to"], summary["remaining"]) == (["mk_0001"], "mk_0002", 0)
    assert summary["rewrapped"] == after_kill["mk_0001"]
    assert "batch 1:" in rerun.stderr
    assert [key.key_id for key in load_keyring(operator.keyring_path).master_keys] == ["mk_0001", "mk_0002"]
    assert master_key_ids(operator) == {"mk_0002": total}

    db = Database(DatabaseConfig(operator.database_url))
    try:
        provider = KeyringFileMasterKeys(operator.keyring_path)
        with db.read() as session:
            rows = session.exec(select(DataKeyRecord).where(col(DataKeyRecord.id).in_(list(seeded)))).all()
        assert len(rows) == SEEDED_KEYS
        for row in rows:
            assert row.wrapped is not None
            unwrapped = provider.unwrap(row.wrapped, tenant_id=row.tenant_id, purpose="record", dek_id=row.id)
            assert unwrapped == seeded[row.id]
        billing = Billing(db=db, keyring=load_keyring(operator.keyring_path))
        for customer_id, name in names.items():
            assert billing.customers.read(actor, customer_id).name == name
    finally:
        db.dispose()


def test_the_service_keeps_serving_while_keys_are_rotated_and_retired(
    sqlite_template: Path, keyring_path: Path, tmp_path: Path, servers: ServerPool, fake: Faker
) -> None:
    # One database kind is enough here: what is tested is that another *process* follows the
    # keyring file; the database side of rotation runs on both kinds above and in tests/billing.
    database_path = tmp_path / "served.db"
    shutil.copy(sqlite_template, database_path)
    operator = Operator(
        f"sqlite:///{database_path}",
        keyring_path,
        tmp_path,
        extra_env={"VEILBILL_TENANT_ADMIN_MASTER_KEY_ROTATION": "1"},  # one business on this deployment
    )
    (server,) = servers.start(operator)
    base = server.base_url
    admin = operator.create_tenant(fake.company())["admin_key"]
    booking = issue_key(base, admin, "booking")
    name = fake.name()
    created = httpx.post(f"{base}/v1/customers", json={"name": name}, headers=bearer(booking), timeout=10)
    assert created.status_code == 201, created.text
    customer_url = f"{base}/v1/customers/{created.json()['id']}"

    rotated = json.loads(operator.run("keys", "rotate").stdout)
    assert (rotated["to"], rotated["resumed"], rotated["complete"]) == ("mk_0002", False, True)
    read = httpx.get(customer_url, headers=bearer(booking), timeout=10)
    assert read.status_code == 200 and read.json()["name"] == name

    assert httpx.get(f"{base}/v1/admin/keys", headers=bearer(booking), timeout=10).status_code == 403
    keys = httpx.get(f"{base}/v1/admin/keys", headers=bearer(admin), timeout=10).json()
    assert keys["active"] == "mk_0002" and keys["rotation_in_progress"] is False
    assert [(v["id"], v["active"]) for v in keys["versions"]] == [("mk_0001", False), ("mk_0002", True)]
    assert keys["versions"][1]["tenant_deks"] >= 3 and keys["tenant_progress"] == 1.0
    assert "material" not in json.dumps(keys)

    step = httpx.post(f"{base}/v1/admin/keys/rotate", headers=bearer(admin), timeout=CLI_TIMEOUT)
    assert step.status_code == 200, step.text
    assert step.json() == {
        "to_version": "mk_0003",
        "from_versions": ["mk_0002"],
        "resumed": False,
        "complete": True,
    }

    retired = operator.run("keys", "retire", "mk_0001", "mk_0002", "mk_0003", expect=1)
    assert [json.loads(line)["retired"] for line in retired.stdout.splitlines()] == ["mk_0001", "mk_0002"]
    assert "mk_0003 is the active master key" in retired.stderr
    status = operator.run("keys", "status").stdout
    assert "master mk_0003 (active)" in status and "mk_0001" not in status
    assert "rotation: complete" in status

    read = httpx.get(customer_url, headers=bearer(booking), timeout=10)
    assert read.status_code == 200 and read.json()["name"] == name
    again = httpx.post(
        f"{base}/v1/customers", json={"name": fake.name()}, headers=bearer(booking), timeout=10
    )
    assert again.status_code == 201
    assert set(master_key_ids(operator)) == {"mk_0003"}, "the service wraps under the newest version"
    actions = [row[0] for row in operator.sql("SELECT action FROM audit_events WHERE chain = 'system'")]
    assert actions.count("keys.rotated") == 2 and actions.count("keys.retired") == 2
    assert Path(operator.keyring_path).stat().st_mode & 0o777 == 0o600
