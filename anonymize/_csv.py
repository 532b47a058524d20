"""``anonymize_csv``: the engine on a delimited file, as the ``veilbill anonymize`` command runs it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from anonymize._config import AnonymizationConfig, Guarantee, LDiversity
from anonymize._engine import anonymize
from anonymize._errors import ColumnNotFound
from anonymize._hierarchy import hierarchy_for_spec

__all__ = ["anonymize_csv"]


def anonymize_csv(
    input_path: str | Path,
    *,
    qi_specs: Mapping[str, str],
    out_path: str | Path,
    sep: str = ";",
    sensitive: str | None = None,
    k: int = 5,
    l: int | None = None,  # noqa: E741 -- the model's name in the literature
    l_kind: LDiversity = "distinct",
    suppression: float = 0.0,
    base_dir: Path | None = None,
    entity: str | None = None,
) -> Guarantee:
    """Anonymize a CSV file and write the release next to it; return the guarantee.

    Every cell is read as text, so values reach the hierarchies exactly as written (``00501`` stays
    ``00501``). ``qi_specs`` maps each quasi-identifier column to ``HIERARCHY.csv`` (an ARX hierarchy,
    read with the same separator, relative to ``base_dir``, default the working directory) or to a
    ``builtin:…`` spec (see ``hierarchy_for_spec``). The output has the input's columns and rows in
    the same order and uses the same separator. With ``entity``, k counts distinct values of that
    column per class (e.g. k distinct patients). Nothing is written if anonymization fails.

    Raises the ``AnonymizationError`` subclasses of ``anonymize`` and ``hierarchy_for_spec``, and
    ``OSError`` / Polars errors for unreadable or malformed files.
    """
    frame = pl.read_csv(input_path, separator=sep, infer_schema=False)
    hierarchies = {}
    for column, spec in qi_specs.items():
        if column not in frame.columns:
            raise ColumnNotFound(f"column {column!r} is not in the table", column=column)
        values = frame.get_column(column).drop_nulls().unique().to_list()
        hierarchies[column] = hierarchy_for_spec(column, spec, values, sep=sep, base_dir=base_dir)
    config = AnonymizationConfig(
        quasi_identifiers=hierarchies,
        sensitive=sensitive,
        k=k,
        l=l,
        l_kind=l_kind,
        suppression_limit=suppression,
        entity=entity,
    )
    result = anonymize(frame, config)
    result.table.write_csv(out_path, separator=sep)
    return result.guarantee
