"""ANJANA on a CSV with ARX hierarchies, timed; run by ``bench.anonymize_bench`` in ANJANA's own venv.

Standalone on purpose (pandas, numpy and anjana only): ANJANA pins its dependencies, so it lives in
a virtualenv of its own and cannot import Veilbill. Prints one JSON line: the wall seconds spent in
``k_anonymity_inner`` (the timing boundary: importing and reading the CSV are outside it), the
process CPU seconds of the same span, the levels ANJANA chose and the rows it suppressed. With
``--repeat N`` the call is made N times in this process, each on a fresh copy of the table (ANJANA
generalizes it in place), and every time is reported: the first call is cold, the others warm.

Usage: ``python bench/anjana_child.py [--repeat N] DATA.csv HIERARCHY_DIR K SUPPRESSION_PERCENT QI…``.
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
    arguments = sys.argv[1:]
    repeat = 1
    if arguments and arguments[0].startswith("--repeat="):
        repeat = max(1, int(arguments.pop(0).split("=", 1)[1]))
    data_path, hierarchy_dir, k, suppression = arguments[:4]
    quasi_identifiers = arguments[4:]
    original = pd.read_csv(data_path, sep=";", dtype=str, keep_default_na=False)
    seconds, cpu_seconds = [], []
    for _ in range(repeat):
        data = original.copy()
        hierarchies = {
            qi: arx_hierarchy(Path(hierarchy_dir) / f"adult_hierarchy_{qi}.csv") for qi in quasi_identifiers
        }
        started, cpu_started = time.perf_counter(), time.process_time()
        released, suppressed, levels = k_anonymity_inner(
            data, [], quasi_identifiers, int(k), float(suppression), hierarchies
        )
        seconds.append(round(time.perf_counter() - started, 3))
        cpu_seconds.append(round(time.process_time() - cpu_started, 3))
    print(
        json.dumps(
            {
                "anjana_version": version("anjana"),
                "seconds": seconds[0],
                "cpu_seconds": cpu_seconds[0],
                "all_seconds": seconds,
                "all_cpu_seconds": cpu_seconds,
                "levels": {qi: int(levels[qi]) for qi in quasi_identifiers},
                "suppressed": int(suppressed),
                "rows_out": len(released),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
