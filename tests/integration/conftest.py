"""Integration fixtures: the ``veilbill`` command and ``veilbill serve`` as real processes.

Every process gets a clean environment holding only its own ``VEILBILL_*`` variables, runs in the
test's temp directory, and is bounded in time: a CLI call by ``CLI_TIMEOUT``, a server's start by
``READY_TIMEOUT``; servers are terminated (then killed) at teardown, whatever the test did.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from billing import Database, DatabaseConfig

from ..conftest import REQUIRE_ALL, require_or_skip

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "veilbill"
CLI_TIMEOUT = 60.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def veilbill_argv() -> list[str]:
    """The installed console script; without it (package not installed), the same entry point."""
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT)]
    if REQUIRE_ALL:
        pytest.fail(f"the console script {CONSOLE_SCRIPT} is missing: run `pip install -e .` in the venv")
    return [sys.executable, "-c", "from api.cli import main; main()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Operator:
    """Runs ``veilbill`` commands the way an operator would, against one database and keyring."""

    database_url: str
    keyring_path: Path
    workdir: Path
    log_path: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("VEILBILL_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["VEILBILL_DATABASE_URL"] = self.database_url
        env["VEILBILL_KEYRING_PATH"] = str(self.keyring_path)
        env["VEILBILL_ERASURE_JOURNAL"] = str(self.keyring_path.with_name("erasures.jsonl"))
        if self.log_path is not None:
            env["VEILBILL_LOG_PATH"] = str(self.log_path)
        env.update(self.extra_env)
        return env

    def run(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        """Run ``veilbill *args``; check the exit status unless ``expect`` is None."""
        result = subprocess.run(
            [*veilbill_argv(), *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if expect is not None:
            assert result.returncode == expect, (
                f"veilbill {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def create_tenant(self, name: str) -> dict[str, str]:
        issued: dict[str, str] = json.loads(self.run("tenants", "create", name, "--json").stdout)
        return issued

    def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run one statement directly on the database (the way an attacker with access would)."""
        db = Database(DatabaseConfig(self.database_url))
        try:
            with db.engine.begin() as connection:
                result = connection.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            db.dispose()


@pytest.fixture
def operator(database_url: str, keyring_path: Path, tmp_path: Path) -> Operator:
    """An operator of a migrated database with a keyring already in place."""
    return Operator(database_url=database_url, keyring_path=keyring_path, workdir=tmp_path)


@dataclass
class Server:
    """One ``veilbill serve`` process."""

    port: int
    log_path: Path
    output_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote: its JSON log file, then its stdout and stderr."""
        logs = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return logs + self.output_path.read_text(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server on port {self.port} exited {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server on port {self.port} not ready within {READY_TIMEOUT} s:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the server's whole process group (the supervisor and its workers), as an OOM
        killer or a pulled plug would: no shutdown hook, no rollback, no response finished."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


class ServerPool:
    """Starts ``veilbill serve`` processes and stops every one of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._servers: list[Server] = []

    def start(
        self,
        operator: Operator,
        count: int = 1,
        extra_env: dict[str, str] | None = None,
        *,
        workers: int = 1,
        port: int | None = None,
    ) -> list[Server]:
        """Start ``count`` servers on free ports, all on ``operator``'s database; wait until ready.

        ``extra_env`` adds ``VEILBILL_*`` settings (a gateway, loopback webhook receivers…).
        ``workers`` > 1 starts each server with ``--workers``: uvicorn's supervisor and its workers.
        ``port`` (with ``count=1``) reuses a port, e.g. to restart a killed server where its clients
        look for it. Each server leads its own process group, so :meth:`Server.kill` takes its
        workers down with it.
        """
        if port is not None and count != 1:
            raise ValueError("a fixed port is for one server")
        started = []
        for _ in range(count):
            index = len(self._servers)
            server_port = port if port is not None else free_port()
            log_path = self._tmp_path / f"server-{index}.log.jsonl"
            output_path = self._tmp_path / f"server-{index}.out"
            env = replace(operator, log_path=log_path).env()
            env.update(extra_env or {})
            with output_path.open("wb") as output:
                process = subprocess.Popen(
                    [
                        *veilbill_argv(),
                        *(
                            "serve",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(server_port),
                            "--workers",
                            str(workers),
                        ),
                    ],
                    env=env,
                    cwd=operator.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            server = Server(port=server_port, log_path=log_path, output_path=output_path, process=process)
            self._servers.append(server)
            started.append(server)
        deadline = time.monotonic() + READY_TIMEOUT
        for server in started:
            server.wait_ready(deadline)
        return started

    def output(self) -> str:
        """What every server started so far wrote, each under a header naming it."""
        return "".join(f"--- server on port {s.port}\n{s.output()}" for s in self._servers)

    def stop_all(self) -> None:
        for server in self._servers:
            server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def issue_key(base_url: str, admin_key: str, role: str) -> str:
    response = httpx.post(
        f"{base_url}/v1/admin/api-keys",
        json={"role": role, "name": f"{role} app"},
        headers=bearer(admin_key),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def find_pg_dump() -> str | None:
    found = shutil.which("pg_dump")
    if found:
        return found
    candidates: Sequence[Path] = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), reverse=True)
    return str(candidates[0]) if candidates else None


def require_pg_dump() -> str:
    found = find_pg_dump()
    if found is None:
        require_or_skip("pg_dump is not installed")
    assert found is not None
    return found
