"""What the engine is asked (``AnonymizationConfig``) and what it answers (``Guarantee``, result)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from anonymize._errors import InvalidConfig
from anonymize._hierarchy import Hierarchy

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import polars as pl

__all__ = ["AnonymizationConfig", "AnonymizationResult", "Guarantee", "LDiversity"]

LDiversity = Literal["distinct", "entropy"]


@dataclass(frozen=True)
class AnonymizationConfig:
    """The privacy models a release must satisfy.

    * ``quasi_identifiers``: column → hierarchy, in the order the levels are reported (at least one);
    * ``k``: every released equivalence class holds at least k records — or, with ``entity``, records
      of at least k distinct values of that column (k distinct people when the column identifies the
      person a record is about, so one person's many records cannot form a class alone);
    * ``l`` / ``l_kind``: on ``sensitive``, every released class holds at least l distinct values
      (``distinct``) or has an entropy of at least log(l) (``entropy``); ``None`` disables l-diversity;
    * ``suppression_limit``: the fraction of records that may be suppressed (records of failing classes
      lose all their quasi-identifiers); a transformation is acceptable iff suppressed ≤ ⌊limit·n⌋,
      the limit read as the decimal it is written as (0.29 of 100 rows allows 29).

    Raises ``InvalidConfig`` on construction if a value is out of range or inconsistent.
    """

    quasi_identifiers: Mapping[str, Hierarchy]
    sensitive: str | None = None
    k: int = 5
    l: int | None = None  # noqa: E741 -- the model's name in the literature
    l_kind: LDiversity = "distinct"
    suppression_limit: float = 0.0
    entity: str | None = None

    def __post_init__(self) -> None:
        if not self.quasi_identifiers:
            raise InvalidConfig("at least one quasi-identifier is required")
        for column, hierarchy in self.quasi_identifiers.items():
            if not isinstance(column, str) or not column:
                raise InvalidConfig("quasi-identifier names must be non-empty strings")
            if not isinstance(hierarchy, Hierarchy):
                raise InvalidConfig("each quasi-identifier needs a Hierarchy", column=column)
        object.__setattr__(self, "quasi_identifiers", MappingProxyType(dict(self.quasi_identifiers)))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidConfig("k must be an integer ≥ 1")
        if self.l is not None and (isinstance(self.l, bool) or not isinstance(self.l, int) or self.l < 1):
            raise InvalidConfig("l must be an integer ≥ 1 (or None)")
        if self.l_kind not in ("distinct", "entropy"):
            raise InvalidConfig("l_kind must be 'distinct' or 'entropy'")
        if self.l is not None and self.sensitive is None:
            raise InvalidConfig("l-diversity needs a sensitive column")
        if self.sensitive is not None and self.sensitive in self.quasi_identifiers:
            raise InvalidConfig("the sensitive column cannot be a quasi-identifier", column=self.sensitive)
        if self.entity is not None and (not isinstance(self.entity, str) or not self.entity):
            raise InvalidConfig("the entity column must be a non-empty string")
        if self.entity is not None and self.entity in self.quasi_identifiers:
            raise InvalidConfig("the entity column cannot be a quasi-identifier", column=self.entity)
        limit = self.suppression_limit
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0.0 <= limit <= 1.0:
            raise InvalidConfig("suppression_limit must be a fraction between 0 and 1")


@dataclass(frozen=True)
class Guarantee:
    """What a release satisfies and what it cost, reported with every export.

    ``loss`` is ARX's default "Loss" (0 = the original data, 1 = everything suppressed) and
    ``loss_per_qi`` its per-column terms. ``discernibility`` is Σ|E|² over released classes plus n per
    suppressed record. ``avg_class_size``, ``max_risk`` and ``avg_risk`` (prosecutor risk, 1/|E|) count
    the suppressed records as one class — they are indistinguishable in the release — so ``max_risk``
    exceeds 1/k when 0 < suppressed < k. With an ``entity`` column, k counts distinct entities and the
    risks are per entity: a record's risk is 1 / (distinct entities in its class), ``max_risk`` the
    largest and ``avg_risk`` the mean over records; ``min_entities`` is the fewest distinct entities
    in a class (the suppressed records included), ``None`` without an entity column.
    """

    levels: Mapping[str, int]
    suppressed: int
    loss: float
    loss_per_qi: Mapping[str, float]
    k: int
    l: int | None  # noqa: E741 -- the model's name in the literature
    l_kind: LDiversity
    suppression_limit: float
    rows: int
    classes: int
    nodes_checked: int
    lattice_size: int
    search_ms: float
    discernibility: int
    avg_class_size: float
    max_risk: float
    avg_risk: float
    entity: str | None = None
    min_entities: int | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON document of the guarantee (plain ``dict``/``int``/``float``/``str`` values)."""
        return {
            "levels": dict(self.levels),
            "suppressed": self.suppressed,
            "loss": self.loss,
            "loss_per_qi": dict(self.loss_per_qi),
            "k": self.k,
            "l": self.l,
            "l_kind": self.l_kind,
            "suppression_limit": self.suppression_limit,
            "rows": self.rows,
            "classes": self.classes,
            "nodes_checked": self.nodes_checked,
            "lattice_size": self.lattice_size,
            "search_ms": round(self.search_ms, 3),
            "discernibility": self.discernibility,
            "avg_class_size": self.avg_class_size,
            "max_risk": self.max_risk,
            "avg_risk": self.avg_risk,
            "entity": self.entity,
            "min_entities": self.min_entities,
        }


@dataclass(frozen=True)
class AnonymizationResult:
    """The released table and its guarantee.

    ``table`` has the input's rows in the input's order: quasi-identifiers as generalized strings
    (``*`` on suppressed rows), every other column unchanged. ``suppressed_rows`` marks the
    suppressed rows (a read-only boolean array, one entry per row).
    """

    table: pl.DataFrame
    guarantee: Guarantee
    suppressed_rows: npt.NDArray[np.bool_] = field(repr=False)
