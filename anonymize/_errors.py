"""The anonymization error tree.

Every error the package raises on purpose derives from ``AnonymizationError``::

    AnonymizationError
    ├── InvalidConfig              a parameter is out of range or inconsistent (k < 1, limit > 1, …)
    ├── InvalidHierarchy           a hierarchy is malformed (ragged rows, duplicate leaves, not nested, …)
    ├── InvalidQISpec              a ``COLUMN=SPEC`` quasi-identifier option cannot be parsed
    ├── ColumnNotFound             a configured column is not in the table
    ├── MissingValues              a quasi-identifier or sensitive column holds nulls
    ├── ValueNotInHierarchy        a quasi-identifier value has no leaf in its hierarchy
    ├── UnparseableValue           a built-in hierarchy cannot read a value (not a number, not a date)
    ├── LatticeTooLarge            the generalization lattice exceeds the search budget
    ├── NoAnonymousTransformation  no transformation satisfies the privacy models within the limit
    └── InvalidKey                 a pseudonym key is too short

Errors carry column names (``column``) and counts, never cell values: the values are the personal
data being protected, and messages end up in logs and HTTP problem documents. Nothing here knows
about HTTP; the API maps these classes to responses.
"""

from __future__ import annotations


class AnonymizationError(Exception):
    """Root of the errors raised by ``anonymize``.

    ``column`` names the column concerned, when there is one.
    """

    def __init__(self, message: str, *, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


class InvalidConfig(AnonymizationError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class InvalidHierarchy(AnonymizationError, ValueError):
    """A generalization hierarchy is malformed (the message says how, never with its values)."""


class InvalidQISpec(AnonymizationError, ValueError):
    """A quasi-identifier specification (``COLUMN=HIERARCHY.csv`` / ``COLUMN=builtin:…``) is invalid."""


class ColumnNotFound(AnonymizationError):
    """A configured column does not exist in the table."""


class MissingValues(AnonymizationError, ValueError):
    """A quasi-identifier or sensitive column contains nulls (``count`` of them)."""

    def __init__(self, message: str, *, column: str | None = None, count: int = 0) -> None:
        super().__init__(message, column=column)
        self.count = count


class ValueNotInHierarchy(AnonymizationError, ValueError):
    """Values of a quasi-identifier column (``count`` rows) are not leaves of its hierarchy."""

    def __init__(self, message: str, *, column: str | None = None, count: int = 0) -> None:
        super().__init__(message, column=column)
        self.count = count


class UnparseableValue(AnonymizationError, ValueError):
    """A built-in hierarchy builder could not interpret a value (not a number, not an ISO date…)."""


class LatticeTooLarge(AnonymizationError):
    """The lattice of generalization levels has more nodes than the search accepts."""


class NoAnonymousTransformation(AnonymizationError):
    """No full-domain generalization satisfies the privacy models within the suppression limit."""


class InvalidKey(AnonymizationError, ValueError):
    """A key for keyed pseudonyms is too short or a purpose is empty."""
