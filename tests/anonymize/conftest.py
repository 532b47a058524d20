"""Fixtures and an independent, deliberately naive model of the anonymization semantics.

Nothing here uses the engine's internals: rows are generalized with ``Hierarchy.generalize``, classes
are built with dictionaries, and loss, suppression and risks are recomputed from their definitions
(SPEC.md "Anonymized reporting", ARX's default Loss). The tests compare the engine against it.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest

from anonymize import AnonymizationConfig, AnonymizationResult, Hierarchy

from ..conftest import require_or_skip

ADULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "adult"
ADULT_QIS = (
    "sex",
    "age",
    "race",
    "marital-status",
    "education",
    "native-country",
    "workclass",
    "occupation",
)
STAR = "*"


@pytest.fixture(scope="session")
def adult_dir() -> Path:
    if not (ADULT_DIR / "adult.csv").is_file():
        require_or_skip(f"the Adult dataset is not at {ADULT_DIR}")
    return ADULT_DIR


@pytest.fixture(scope="session")
def adult(adult_dir: Path) -> tuple[pl.DataFrame, dict[str, Hierarchy]]:
    frame = pl.read_csv(adult_dir / "adult.csv", separator=";", infer_schema=False)
    hierarchies = {
        column: Hierarchy.from_arx_csv(adult_dir / f"adult_hierarchy_{column}.csv") for column in ADULT_QIS
    }
    return frame, hierarchies


def max_suppressed(limit: float, rows: int) -> int:
    return int(Fraction(repr(float(limit))) * rows)


def leaves_under(hierarchy: Hierarchy, level: int) -> Counter[str]:
    """Number of leaves under each label of ``level``, counted from the ARX rows."""
    return Counter(row[level] for row in hierarchy.rows())


def class_fails(
    sensitive_values: Sequence[str], config: AnonymizationConfig, entities: Sequence[str] = ()
) -> bool:
    """Whether a class with these sensitive values (and, with an entity column, these entities,
    one per record) fails k or l."""
    size = len(sensitive_values)
    if size < config.k:
        return True
    if config.entity is not None and len(set(entities)) < config.k:
        return True
    if config.l is None or config.l <= 1:
        return False
    counts = Counter(sensitive_values)
    if config.l_kind == "distinct":
        return len(counts) < config.l
    entropy = -sum(count / size * math.log(count / size) for count in counts.values())
    return entropy < math.log(config.l) - 1e-9


@dataclass(frozen=True)
class NaiveNode:
    levels: tuple[int, ...]
    suppressed_rows: frozenset[int]
    loss: float
    loss_per_qi: tuple[float, ...]

    @property
    def suppressed(self) -> int:
        return len(self.suppressed_rows)


def entities_of(
    rows: Sequence[Mapping[str, str]], members: Sequence[int], config: AnonymizationConfig
) -> list[str]:
    return [rows[index][config.entity] for index in members] if config.entity else []


def naive_node(
    rows: Sequence[Mapping[str, str]], config: AnonymizationConfig, levels: Sequence[int]
) -> NaiveNode:
    """Classes, suppression and ARX Loss of one transformation, from the definitions."""
    columns = list(config.quasi_identifiers)
    classes: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        label = tuple(
            config.quasi_identifiers[column].generalize(row[column], level)
            for column, level in zip(columns, levels, strict=True)
        )
        classes[label].append(index)
    suppressed: set[int] = set()
    for members in classes.values():
        values = (
            [rows[index][config.sensitive] for index in members] if config.sensitive else [""] * len(members)
        )
        if class_fails(values, config, entities_of(rows, members, config)):
            suppressed.update(members)
    n = len(rows)
    terms = []
    for column, level in zip(columns, levels, strict=True):
        hierarchy = config.quasi_identifiers[column]
        domain = hierarchy.domain_size
        counts = leaves_under(hierarchy, level)
        score = sum(
            1.0 if index in suppressed else counts[hierarchy.generalize(row[column], level)] / domain
            for index, row in enumerate(rows)
        )
        terms.append(0.0 if domain == 1 else (score - n / domain) / (n - n / domain))
    loss = math.prod(1 + term for term in terms) ** (1 / len(terms)) - 1
    return NaiveNode(tuple(levels), frozenset(suppressed), loss, tuple(terms))


def naive_lattice(rows: Sequence[Mapping[str, str]], config: AnonymizationConfig) -> list[NaiveNode]:
    heights = [hierarchy.height for hierarchy in config.quasi_identifiers.values()]
    return [naive_node(rows, config, levels) for levels in itertools.product(*(range(h) for h in heights))]


def naive_optimum(rows: Sequence[Mapping[str, str]], config: AnonymizationConfig) -> NaiveNode | None:
    limit = max_suppressed(config.suppression_limit, len(rows))
    feasible = [node for node in naive_lattice(rows, config) if node.suppressed <= limit]
    return min(feasible, key=lambda node: node.loss) if feasible else None


def check_release(
    rows: Sequence[Mapping[str, str]], result: AnonymizationResult, config: AnonymizationConfig
) -> None:
    """Assert, from the released table alone, that it honours the models and its stated metrics."""
    columns = list(config.quasi_identifiers)
    guarantee = result.guarantee
    released = result.table.to_dicts()
    n = len(rows)
    assert len(released) == n
    assert guarantee.suppressed <= max_suppressed(config.suppression_limit, n)
    at_top = all(
        guarantee.levels[column] == config.quasi_identifiers[column].height - 1 for column in columns
    )
    starred = [index for index, row in enumerate(released) if all(row[column] == STAR for column in columns)]
    if not at_top:
        assert len(starred) == guarantee.suppressed
    assert int(result.suppressed_rows.sum()) == guarantee.suppressed

    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, (original, row) in enumerate(zip(rows, released, strict=True)):
        for name, value in original.items():
            if name not in columns:
                assert str(row[name]) == str(value)  # other columns unchanged
        if result.suppressed_rows[index]:
            assert all(row[column] == STAR for column in columns)
            continue
        for column in columns:
            hierarchy = config.quasi_identifiers[column]
            assert row[column] == hierarchy.generalize(original[column], guarantee.levels[column])
        groups[tuple(row[column] for column in columns)].append(index)
    for members in groups.values():
        values = (
            [rows[index][config.sensitive] for index in members] if config.sensitive else [""] * len(members)
        )
        assert not class_fails(values, config, entities_of(rows, members, config))
        if config.entity is not None:
            assert len(set(entities_of(rows, members, config))) >= config.k

    suppressed = guarantee.suppressed
    sizes = [len(members) for members in groups.values()]
    classes = len(sizes) + (1 if suppressed else 0)
    if config.entity is not None:
        hidden = [index for index in range(n) if result.suppressed_rows[index]]
        people = [len(set(entities_of(rows, members, config))) for members in groups.values()]
        weighted = list(zip(sizes, people, strict=True))
        if suppressed:
            weighted.append((suppressed, len(set(entities_of(rows, hidden, config)))))
        assert guarantee.entity == config.entity
        assert guarantee.min_entities == min(count for _, count in weighted)
        assert guarantee.max_risk == pytest.approx(1 / min(count for _, count in weighted))
        assert guarantee.avg_risk == pytest.approx(sum(size / count for size, count in weighted) / n)
        naive = naive_node(rows, config, [guarantee.levels[column] for column in columns])
        assert naive.suppressed == suppressed
        assert guarantee.loss == pytest.approx(naive.loss, abs=1e-12)
        return
    assert guarantee.entity is None and guarantee.min_entities is None
    assert guarantee.classes == classes
    assert guarantee.discernibility == sum(size * size for size in sizes) + suppressed * n
    assert guarantee.avg_class_size == pytest.approx(n / classes)
    assert guarantee.avg_risk == pytest.approx(
        sum(1 / size for size in sizes for _ in range(size)) / n + (1 / n if suppressed else 0)
    )
    assert guarantee.max_risk == pytest.approx(
        max([1 / size for size in sizes] + ([1 / suppressed] if suppressed else []))
    )
    naive = naive_node(rows, config, [guarantee.levels[column] for column in columns])
    assert naive.suppressed == suppressed
    assert guarantee.loss == pytest.approx(naive.loss, abs=1e-12)
    for column, term in zip(columns, naive.loss_per_qi, strict=True):
        assert guarantee.loss_per_qi[column] == pytest.approx(term, abs=1e-12)
