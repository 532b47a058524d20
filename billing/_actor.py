"""Who is acting: the principal behind a request (or an operator at the command line)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ROLES", "Actor"]

ROLES: tuple[str, ...] = ("booking", "accountant", "admin", "auditor")


@dataclass(frozen=True, slots=True)
class Actor:
    """The tenant, API key and role a request acts as, plus what the audit chain records of it.

    ``key_id`` is ``None`` and ``role`` is ``"operator"`` for commands run on the server itself.
    """

    tenant_id: str
    role: str
    key_id: str | None = None
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def operator(cls, tenant_id: str) -> Actor:
        return cls(tenant_id=tenant_id, role="operator")
