"""Load: mixed booking traffic against ``veilbill serve --workers 2`` on PostgreSQL, over loopback.

What it does, all on this machine:

1. creates a fresh PostgreSQL database (``veilbill_load_<random>``) on the server at
   ``--postgres`` (default: the local one), a keyring in a temporary folder, migrates, and creates
   a tenant with a ``booking`` key — through the ``veilbill`` command, as an operator would;
2. starts ``veilbill serve --workers N`` on a free loopback port;
3. runs ``--users`` virtual users for ``--seconds`` (after a warm-up), each looping over one
   booking: create a client, draft an invoice, finalize it, read it, list the client's invoices —
   plus a read of the client every other loop. Each user waits for each answer (closed loop), so
   throughput is what the service sustains at that concurrency;
4. prints one JSON line: requests, throughput (requests/s), p50/p99/max latency overall and per
   operation, and the errors (any non-2xx answer or transport error), which must be 0;
5. stops the service and drops the database.

The generator is asyncio + httpx in this one process; it shares the 2 cores with the service,
which is part of the measurement (say so when quoting figures). Requests are bounded in count by
time: the run stops by itself.

Usage: ``python -m bench.load_bench [--seconds 60] [--users 16] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
from faker import Faker

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _veilbill() -> list[str]:
    script = Path(sys.executable).parent / "veilbill"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from api.cli import main; main()"]


class Service:
    """A database, a keyring and ``veilbill serve`` for the length of one run."""

    def __init__(self, admin_url: str, workers: int) -> None:
        self.admin_url = admin_url
        self.workers = workers
        self.dbname = f"veilbill_load_{secrets.token_hex(4)}"
        self.workdir = Path(tempfile.mkdtemp(prefix="veilbill-load-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("VEILBILL_")}
        env["PYTHONPATH"] = str(ROOT)
        env["VEILBILL_DATABASE_URL"] = f"{self.admin_url.rsplit('/', 1)[0]}/{self.dbname}"
        env["VEILBILL_KEYRING_PATH"] = str(self.workdir / "keyring.json")
        env["VEILBILL_ERASURE_JOURNAL"] = str(self.workdir / "erasures.jsonl")
        env["VEILBILL_LOG_PATH"] = str(self.workdir / "service.log")
        env["VEILBILL_LOG_LEVEL"] = "WARNING"
        env["VEILBILL_PUBLIC_URL"] = self.url
        return env

    def run(self, *args: str) -> str:
        done = subprocess.run(  # noqa: S603 -- our own command, arguments fixed by this script
            [*_veilbill(), *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"veilbill {args[0]} failed: {done.stderr[-2000:]}")
        return done.stdout

    def __enter__(self) -> Service:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.dbname}"')
        self.run("keys", "init")
        self.run("db", "upgrade")
        argv = [*_veilbill(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(  # noqa: S603 -- our own command, arguments fixed by this script
            argv, env=self.env(), cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError("the service did not become ready in 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        shutil.rmtree(self.workdir, ignore_errors=True)


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.recording = False

    async def call(
        self, client: httpx.AsyncClient, operation: str, method: str, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.HTTPError:
            if self.recording:
                self.errors[f"{operation}:transport"] += 1
            return None
        elapsed = time.perf_counter() - started
        if self.recording:
            self.latencies[operation].append(elapsed)
            if not response.is_success:
                self.errors[f"{operation}:{response.status_code}"] += 1
        if not response.is_success:
            return None
        body: dict[str, Any] = response.json()
        return body


async def _user(recorder: Recorder, client: httpx.AsyncClient, stop_at: float, seed: int) -> None:
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    loop = 0
    while time.monotonic() < stop_at:
        loop += 1
        customer = await recorder.call(
            client,
            "create_customer",
            "POST",
            "/v1/customers",
            json={
                "name": fake.name(),
                "email": fake.unique.email(),
                "phone": fake.phone_number(),
                "address": {
                    "line1": fake.street_address(),
                    "city": fake.city(),
                    "postcode": fake.postcode(),
                    "country": "FR",
                },
                "birth_date": fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
                "gender": "undisclosed",
            },
        )
        if customer is None:
            continue
        invoice = await recorder.call(
            client,
            "create_invoice",
            "POST",
            "/v1/invoices",
            json={
                "customer_id": customer["id"],
                "booking_ref": f"bk_{seed}_{loop}",
                "currency": "EUR",
                "lines": [
                    {
                        "description": "Coupe et brushing",
                        "quantity": 1,
                        "unit_amount": 4500,
                        "tax_rate_bps": 2000,
                        "category": "hair",
                    },
                    {"description": "Soin", "quantity": 2, "unit_amount": 1250, "tax_rate_bps": 2000},
                ],
            },
        )
        if invoice is None:
            continue
        await recorder.call(client, "finalize", "POST", f"/v1/invoices/{invoice['id']}/finalize")
        await recorder.call(client, "read_invoice", "GET", f"/v1/invoices/{invoice['id']}")
        await recorder.call(
            client, "list_invoices", "GET", "/v1/invoices", params={"customer_id": customer["id"]}
        )
        if loop % 2 == 0:
            await recorder.call(client, "read_customer", "GET", f"/v1/customers/{customer['id']}")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


async def _drive(base_url: str, key: str, users: int, warmup: float, seconds: float) -> dict[str, Any]:
    recorder = Recorder()
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:
        start = time.monotonic()
        tasks = [
            asyncio.create_task(_user(recorder, client, start + warmup + seconds, seed))
            for seed in range(users)
        ]
        await asyncio.sleep(warmup)
        recorder.recording = True
        measured_from = time.monotonic()
        await asyncio.gather(*tasks)
        measured = time.monotonic() - measured_from
    every = [latency for values in recorder.latencies.values() for latency in values]
    return {
        "bench": "load-mixed-booking",
        "seconds": round(measured, 1),
        "users": users,
        "requests": len(every),
        "throughput_rps": round(len(every) / measured, 1),
        **_summary(every),
        "errors": sum(recorder.errors.values()),
        "errors_by_kind": dict(recorder.errors),
        "operations": {name: _summary(values) for name, values in sorted(recorder.latencies.items())},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres", default=os.environ.get("VEILBILL_TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args(argv)
    with Service(args.postgres, args.workers) as service:
        tenant = json.loads(service.run("tenants", "create", "Load Test Salon", "--json"))
        issued = httpx.post(
            f"{service.url}/v1/admin/api-keys",
            json={"role": "booking", "name": "load generator"},
            headers={"Authorization": f"Bearer {tenant['admin_key']}"},
            timeout=30,
        )
        issued.raise_for_status()
        result = asyncio.run(_drive(service.url, issued.json()["key"], args.users, args.warmup, args.seconds))
    result["service_workers"] = args.workers
    result["database"] = "postgresql"
    print(json.dumps(result), flush=True)
    if result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
