"""ANJANA on a CSV with ARX hierarchies, timed; run by ``bench.anonymize_bench`` in ANJANA's own venv.

Standalone on purpose (pandas, numpy and anjana only): ANJANA pins its dependencies, so it lives in
a virtualenv of its own and cannot import Veilbill. Prints one JSON line: the seconds spent in
``k_anonymity_inner`` (or ``l_diversity``), the levels ANJANA chose and the rows it suppressed.

Usage: ``python bench/anjana_child.py DATA.csv HIERARCHY_DIR K SUPPRESSION_PERCENT QI…``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from anjana.anonymity import k_anonymity_inner


def arx_hierarchy(path: Path) -> dict[int, np.ndarray]:
    """ANJANA's hierarchy format: level → the column of labels (level 0: the values)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter=";") if row and any(row)]
    return {level: np.array([row[level] for row in rows]) for level in range(len(rows[0]))}


def main() -> None:
    data_path, hierarchy_dir, k, suppression = sys.argv[1:5]
    quasi_identifiers = sys.argv[5:]
    data = pd.read_csv(data_path, sep=";", dtype=str, keep_default_na=False)
    hierarchies = {
        qi: arx_hierarchy(Path(hierarchy_dir) / f"adult_hierarchy_{qi}.csv") for qi in quasi_identifiers
    }
    started = time.perf_counter()
    released, suppressed, levels = k_anonymity_inner(
        data, [], quasi_identifiers, int(k), float(suppression), hierarchies
    )
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "anjana_version": version("anjana"),
                "seconds": round(seconds, 3),
                "levels": {qi: int(levels[qi]) for qi in quasi_identifiers},
                "suppressed": int(suppressed),
                "rows_out": len(released),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
