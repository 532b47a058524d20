"""Moving master keys from the keyring file to an HSM (SoftHSM2), as an operator runs it.

Real processes on a real database (both kinds): ``veilbill keys migrate-to-hsm`` is killed with
SIGKILL after two batches and run again; the file's master keys are retired; then ``veilbill
serve``, configured with the token only, reads every client and invoice.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx

from billing import load_keyring

from ..conftest import SoftHsm
from .conftest import CLI_TIMEOUT, Operator, ServerPool, bearer, veilbill_argv

KILL_AFTER_BATCHES = 2


def live_versions(operator: Operator) -> dict[str, int]:
    rows = operator.sql(
        "SELECT master_key_id, count(*) FROM data_keys WHERE wrapped IS NOT NULL GROUP BY master_key_id"
    )
    return {str(key_id): int(count) for key_id, count in rows}


def run_until_batch(operator: Operator, *args: str, batch: int) -> int:
    """Start ``veilbill *args``, SIGKILL it once it reports ``batch`` on stderr; its exit status."""
    process = subprocess.Popen(
        [*veilbill_argv(), *args],
        env=operator.env(),
        cwd=operator.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while not any(line.startswith(f"batch {batch}:") for line in seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0 and process.poll() is None, f"no batch {batch} in time: {seen}"
            try:
                seen.append(lines.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                continue
    finally:
        process.kill()
        process.wait(timeout=10)
        reader.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
    return process.returncode


def read_everything(base: str, key: str) -> int:
    """Read every invoice and its client over HTTP; the number of invoices read."""
    headers = bearer(key)
    listed = httpx.get(f"{base}/v1/invoices", params={"limit": 100}, headers=headers, timeout=10)
    invoices = listed.json()["data"]
    for invoice in invoices:
        read = httpx.get(f"{base}/v1/invoices/{invoice['id']}", headers=headers, timeout=10)
        assert read.status_code == 200, read.text
        assert read.json()["lines"][0]["description"]
        client = httpx.get(f"{base}/v1/customers/{invoice['customer_id']}", headers=headers, timeout=10)
        assert client.status_code == 200 and client.json()["name"], client.text
    return len(invoices)


def test_migrate_to_hsm_online_killed_halfway_rerun_retire_file_keys_then_serve_from_the_token(
    operator: Operator, softhsm: SoftHsm, servers: ServerPool, tmp_path: Path
) -> None:
    keys_file = tmp_path / "demo-keys.json"
    operator.run("demo", "--customers", "6", "--invoices", "8", "--keys-file", str(keys_file), "--seed", "5")
    booking = json.loads(keys_file.read_text())["keys"]["booking"]
    total = sum(live_versions(operator).values())
    file_material = [key.material for key in load_keyring(operator.keyring_path).master_keys]

    hsm_env = softhsm.settings_env(softhsm.new_token())
    refused = operator.run("keys", "migrate-to-hsm", expect=1)
    assert "VEILBILL_HSM_MODULE" in refused.stderr
    on_hsm = replace(operator, extra_env=hsm_env)
    migrating = replace(operator, extra_env={**hsm_env, "VEILBILL_HSM_MIGRATION": "1"})
    (during,) = servers.start(migrating)  # the service, switched to migration mode beforehand
    assert httpx.get(f"{during.base_url}/health/ready", timeout=10).json()["checks"]["hsm"] == "ok"
    assert read_everything(during.base_url, booking) == 8

    status = run_until_batch(
        on_hsm, "keys", "migrate-to-hsm", "--batch-size", "2", "--pause", "0.3", batch=KILL_AFTER_BATCHES
    )
    assert status == -9
    halfway = live_versions(operator)
    assert set(halfway) == {"mk_0001", "mk_0002"}, "killed halfway: file and token both hold live keys"
    assert sum(halfway.values()) == total
    assert read_everything(during.base_url, booking) == 8, "online: both stores serve meanwhile"

    rerun = on_hsm.run("keys", "migrate-to-hsm", "--batch-size", "500")
    summary = json.loads(rerun.stdout)
    assert (summary["resumed"], summary["to"], summary["complete"]) == (True, "mk_0002", True)
    assert summary["rewrapped"] == halfway["mk_0001"] and summary["file_keys_retired"] == []
    assert live_versions(operator) == {"mk_0002": total}
    assert read_everything(during.base_url, booking) == 8
    servers.stop_all()

    retired = json.loads(on_hsm.run("keys", "migrate-to-hsm", "--retire-file-keys").stdout)
    assert (retired["rewrapped"], retired["file_keys_retired"]) == (0, ["mk_0001"])
    on_file = load_keyring(operator.keyring_path).master_keys
    assert [key.key_id for key in on_file] == ["mk_0000"] and on_file[0].material not in file_material

    status_doc = json.loads(on_hsm.run("keys", "status", "--json").stdout)
    versions = [(v["id"], v["active"], v["live_deks"]) for v in status_doc["versions"]]
    assert versions == [("mk_0002", True, total)]
    assert status_doc["rotation_in_progress"] is False and status_doc["orphaned_deks"] == 0

    (after,) = servers.start(on_hsm)  # the token alone
    assert httpx.get(f"{after.base_url}/health/ready", timeout=10).json()["checks"]["hsm"] == "ok"
    assert read_everything(after.base_url, booking) == 8
    created = httpx.post(
        f"{after.base_url}/v1/customers", json={"name": "Test Client"}, headers=bearer(booking), timeout=10
    )
    assert created.status_code == 201
    assert set(live_versions(operator)) == {"mk_0002"}, "new keys are wrapped in the token"
