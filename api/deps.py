"""Named dependencies that controllers declare (provided by ``create_app``)."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency

from billing import Actor, Billing

__all__ = ["ActorDep", "BillingDep"]

BillingDep: TypeAlias = NamedDependency[Billing]
ActorDep: TypeAlias = NamedDependency[Actor]
