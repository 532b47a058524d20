"""``AnonymizationConfig`` validates itself; results are plain frozen data."""

from __future__ import annotations

import dataclasses

import pytest

from anonymize import AnonymizationConfig, InvalidConfig, flat_hierarchy

HIERARCHY = flat_hierarchy(["F", "M"])


def test_defaults_and_immutability() -> None:
    source = {"sex": HIERARCHY}
    config = AnonymizationConfig(source)
    assert (config.k, config.l, config.l_kind, config.suppression_limit, config.sensitive) == (
        5,
        None,
        "distinct",
        0.0,
        None,
    )
    source["other"] = HIERARCHY
    assert list(config.quasi_identifiers) == ["sex"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.quasi_identifiers["x"] = HIERARCHY  # type: ignore[index]


@pytest.mark.parametrize(
    "parameters",
    [
        {"quasi_identifiers": {}},
        {"quasi_identifiers": {"sex": "not a hierarchy"}},
        {"quasi_identifiers": {"": HIERARCHY}},
        {"k": 0},
        {"k": True},
        {"k": 2.5},
        {"l": 0, "sensitive": "s"},
        {"l": 2},
        {"l": 2, "sensitive": "s", "l_kind": "recursive"},
        {"sensitive": "sex"},
        {"suppression_limit": -0.1},
        {"suppression_limit": 1.5},
        {"suppression_limit": True},
    ],
    ids=lambda parameters: ",".join(f"{key}={value!r}" for key, value in parameters.items())[:40],
)
def test_invalid_configurations(parameters: dict[str, object]) -> None:
    arguments: dict[str, object] = {"quasi_identifiers": {"sex": HIERARCHY}, **parameters}
    with pytest.raises(InvalidConfig):
        AnonymizationConfig(**arguments)  # type: ignore[arg-type]
