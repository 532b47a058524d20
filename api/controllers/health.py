"""Probes: ``/health/live`` (the process answers) and ``/health/ready`` (database and keyring)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = {"exclude_from_auth": True}

    @get("/live", sync_to_thread=False, summary="Liveness probe")
    def live(self) -> dict[str, str]:
        return {"status": "live"}

    @get("/ready", sync_to_thread=True, summary="Readiness probe: database reachable, keyring loadable")
    def ready(self, state: State) -> Response[dict[str, Any]]:
        checks: dict[str, str] = state.readiness()
        ok = all(v == "ok" for v in checks.values())
        return Response(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
        )
