"""API-key authentication and role guards.

``Authorization: Bearer vb_…`` is resolved to an :class:`billing.Actor` by the billing domain (which
audits failures); guards are built by one small factory, :func:`requires_role`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import Guard

from billing import ROLES, Actor, Billing
from billing.errors import RoleForbidden

__all__ = ["ApiKeyAuthentication", "requires_role"]


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Resolves the bearer key on every route not marked ``exclude_from_auth``."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        billing: Billing = connection.app.state.billing
        header = connection.headers.get("authorization", "")
        scheme, _, raw = header.partition(" ")
        client = connection.client
        actor = await anyio.to_thread.run_sync(
            partial(
                billing.tenants.authenticate,
                raw.strip() if scheme.lower() == "bearer" else None,
                request_id=connection.scope.get("state", {}).get("request_id"),
                client_ip=client.host if client else None,
                user_agent=connection.headers.get("user-agent"),
            )
        )
        return AuthenticationResult(user=actor, auth=actor)


def requires_role(*roles: str) -> Guard:
    """A guard that lets through only keys whose role is one of ``roles``."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    allowed = frozenset(roles)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        actor = connection.user
        if not isinstance(actor, Actor) or actor.role not in allowed:
            raise RoleForbidden(required=",".join(sorted(allowed)))

    guard.__name__ = f"requires_role({', '.join(roles)})"
    return guard


def current_actor(request: Request[Any, Any, Any]) -> Actor:
    """Dependency: the authenticated actor of this request."""
    actor = request.user
    if not isinstance(actor, Actor):  # pragma: no cover - the middleware guarantees it
        raise RoleForbidden()
    return actor
