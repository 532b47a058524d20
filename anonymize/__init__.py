"""Anonymization engine: generalization hierarchies, privacy models and an optimal lattice search.

Generic: it knows tables, hierarchies and privacy models, nothing of invoices. ``anonymize`` finds the
full-domain generalization of least information loss (ARX's "Loss") that satisfies k-anonymity and,
optionally, distinct or entropy l-diversity within a suppression limit, and returns the released
table with its ``Guarantee``; with an ``entity`` column, k counts distinct entities (people) per class
rather than records. ``plan_release`` does the search on an ``EncodedTable`` (integer codes only)
and returns a ``ReleasePlan`` that releases any slice of rows, for callers that stream their rows;
``plan_partitioned_release`` the same for rows given as partitions of one quasi-identifier (years of
a date), kept on disk during the search, for inputs too large to hold as one table.
``anonymize_csv`` does the same for a file; ``encode_release`` writes a release arriving in chunks as
CSV, JSON Lines or Parquet. ``keyed_pseudonym``
replaces identifiers with HMAC-SHA256 pseudonyms under a purpose key; ``suppress_small_cells``
protects aggregates. Every error derives from ``AnonymizationError`` (tree in ``_errors``) and names
columns, never values. Importing this package does no work.
"""

from anonymize._cells import Cell, CellRelease, ReleasedCell, suppress_small_cells
from anonymize._config import AnonymizationConfig, AnonymizationResult, Guarantee, LDiversity
from anonymize._csv import anonymize_csv
from anonymize._engine import EncodedTable, ReleasePlan, anonymize, encode_table, plan_release
from anonymize._errors import (
    AnonymizationError,
    ColumnNotFound,
    InvalidConfig,
    InvalidHierarchy,
    InvalidKey,
    InvalidQISpec,
    LatticeTooLarge,
    MissingValues,
    NoAnonymousTransformation,
    UnparseableValue,
    ValueNotInHierarchy,
)
from anonymize._hierarchy import (
    SUPPRESSED,
    Hierarchy,
    age_bands,
    date_levels,
    flat_hierarchy,
    hierarchy_for_spec,
    numeric_intervals,
    parse_qi_option,
    postcode_prefix,
)
from anonymize._partitioned import plan_partitioned_release
from anonymize._pseudonym import Pseudonymizer, keyed_pseudonym
from anonymize._writers import RELEASE_FORMATS, ReleaseFormat, encode_release

__all__ = [
    "RELEASE_FORMATS",
    "SUPPRESSED",
    "AnonymizationConfig",
    "AnonymizationError",
    "AnonymizationResult",
    "Cell",
    "CellRelease",
    "ColumnNotFound",
    "EncodedTable",
    "Guarantee",
    "Hierarchy",
    "InvalidConfig",
    "InvalidHierarchy",
    "InvalidKey",
    "InvalidQISpec",
    "LDiversity",
    "LatticeTooLarge",
    "MissingValues",
    "NoAnonymousTransformation",
    "Pseudonymizer",
    "ReleaseFormat",
    "ReleasePlan",
    "ReleasedCell",
    "UnparseableValue",
    "ValueNotInHierarchy",
    "age_bands",
    "anonymize",
    "anonymize_csv",
    "date_levels",
    "encode_release",
    "encode_table",
    "flat_hierarchy",
    "hierarchy_for_spec",
    "keyed_pseudonym",
    "numeric_intervals",
    "parse_qi_option",
    "plan_partitioned_release",
    "plan_release",
    "postcode_prefix",
    "suppress_small_cells",
]
