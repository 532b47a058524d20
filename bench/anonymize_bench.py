"""Benchmark of the anonymization engine; prints one JSON line per case.

* ``adult-a`` / ``adult-b`` / ``adult-c``: Adult with ARX's hierarchies, the 8 attributes but
  salary-class as quasi-identifiers; (a) k=5, (b) k=5 with 5 % suppression, (c) k=5 and distinct
  l=2 on salary-class with 5 % suppression. Warm runs (after ``--warmup`` unmeasured ones):
  ``search_ms`` is the lattice search alone (what ARX reports), ``engine_ms`` the whole
  ``anonymize`` call (encoding, search, release).
* ``synthetic-1m``: 1,000,000 invoices generated with NumPy from a seed: postcode (20,000 codes,
  skewed), birth date (turned into an age in years at 2025-12-31, as the billing extract does),
  gender, issue date (one year) and a category with 12 values; built-in hierarchies, k=5, distinct
  l=2 on category, 5 % suppression. Runs in a child process so ``peak_rss_mb`` (``getrusage``) is
  its own: the table, the engine and the release. ``rss_before_mb`` is the resident size with the
  table generated, before the first ``anonymize`` call.

* ``anjana``: ANJANA (PyPI ``anjana``, k-anonymity by greedy generalization and suppression)
  side by side with this engine on the same 100,000 rows — drawn with replacement from Adult with
  a fixed seed — and the same ARX hierarchies of the 8 quasi-identifiers: k=5, at most 5 %
  suppressed. ANJANA pins its dependencies, so it runs in a virtualenv of its own
  (``--anjana-venv``, default ``var/bench-anjana-venv``, created with ``python -m venv`` and
  ``pip install anjana`` on first use) in a subprocess (``bench/anjana_child.py``); its time is its
  ``k_anonymity_inner`` call alone, ours the whole ``anonymize`` call. The two are interleaved:
  ``min(--runs, 5)`` rounds of ``--anjana-per-round`` calls of ours then one of ANJANA, so both see
  the same load; the line gives medians and minima of wall and process CPU time, the UTC start
  and end, and the 1-minute load average before and after each round.

Usage: ``python -m bench.anonymize_bench [--runs 7] [--only adult-a,synthetic-1m,anjana] [--adult DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from anonymize import (
    AnonymizationConfig,
    Guarantee,
    Hierarchy,
    age_bands,
    anonymize,
    date_levels,
    flat_hierarchy,
    postcode_prefix,
)

ROOT = Path(__file__).resolve().parents[1]
ADULT_DIR = ROOT.parent / "shared" / "data" / "adult"
ADULT_QIS = ("sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation")
ADULT_CASES: dict[str, dict[str, object]] = {
    "adult-a": {"k": 5},
    "adult-b": {"k": 5, "suppression_limit": 0.05},
    "adult-c": {"k": 5, "l": 2, "sensitive": "salary-class", "suppression_limit": 0.05},
}
ARX_MS = {"adult-a": 48.0, "adult-b": 613.0, "adult-c": 593.0}
SYNTHETIC = "synthetic-1m"
ANJANA = "anjana"
ANJANA_ROWS = 100_000
ANJANA_SEED = 20251202
ANJANA_K = 5
ANJANA_SUPPRESSION = 0.05


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def timed_runs(frame: pl.DataFrame, config: AnonymizationConfig, runs: int, warmup: int) -> dict[str, object]:
    for _ in range(warmup):
        anonymize(frame, config)
    search, engine = [], []
    guarantee = None
    for _ in range(runs):
        started = time.perf_counter()
        result = anonymize(frame, config)
        engine.append((time.perf_counter() - started) * 1000.0)
        search.append(result.guarantee.search_ms)
        guarantee = result.guarantee
    assert guarantee is not None
    return {
        "search_ms_median": round(statistics.median(search), 2),
        "search_ms_min": round(min(search), 2),
        "engine_ms_median": round(statistics.median(engine), 2),
        "engine_ms_min": round(min(engine), 2),
        "runs": runs,
        "levels": dict(guarantee.levels),
        "suppressed": guarantee.suppressed,
        "loss": guarantee.loss,
        "nodes_checked": guarantee.nodes_checked,
        "lattice_size": guarantee.lattice_size,
        "max_risk": guarantee.max_risk,
    }


def bench_adult(names: list[str], adult_dir: Path, runs: int, warmup: int) -> None:
    frame = pl.read_csv(adult_dir / "adult.csv", separator=";", infer_schema=False)
    hierarchies = {
        name: Hierarchy.from_arx_csv(adult_dir / f"adult_hierarchy_{name}.csv") for name in ADULT_QIS
    }
    for name in names:
        config = AnonymizationConfig(hierarchies, **ADULT_CASES[name])  # type: ignore[arg-type]
        line = {"case": name, "rows": frame.height, **timed_runs(frame, config, runs, warmup)}
        line["arx_3_9_2_warm_ms"] = ARX_MS[name]
        print(json.dumps(line), flush=True)


def synthetic_invoices(rows: int, seed: int) -> pl.DataFrame:
    """Invoices with realistic skew; birth dates become whole-year ages at 2025-12-31."""
    rng = np.random.default_rng(seed)
    postcodes = np.sort(rng.choice(np.arange(1000, 96000), size=20_000, replace=False))
    popularity = rng.lognormal(0.0, 1.2, size=postcodes.size)
    postcode = rng.choice(postcodes, size=rows, p=popularity / popularity.sum())
    reference = np.datetime64("2025-12-31")
    years = np.clip(rng.normal(45, 16, size=rows), 18, 99)
    birth = reference - (years * 365.25).astype("timedelta64[D]")
    born = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    month_day = (birth - birth.astype("datetime64[Y]")).astype(np.int64)
    age = 2025 - born - (month_day > (reference - reference.astype("datetime64[Y]")).astype(np.int64))
    issued = np.datetime64("2025-01-01") + rng.integers(0, 365, size=rows).astype("timedelta64[D]")
    weights = rng.dirichlet(np.full(12, 2.0))
    return pl.DataFrame(
        {
            "postcode": pl.Series(postcode).cast(pl.String).str.zfill(5),
            "age": age,
            "gender": rng.choice(np.array(["F", "M", "X"]), size=rows, p=[0.495, 0.495, 0.01]),
            "issued": pl.Series(issued).cast(pl.Date),
            "category": rng.choice(
                np.array([f"category-{index:02d}" for index in range(12)]), size=rows, p=weights
            ),
            "total": rng.integers(100, 100_000, size=rows),
        }
    )


def bench_synthetic(runs: int, warmup: int, rows: int = 1_000_000, seed: int = 20251122) -> None:
    frame = synthetic_invoices(rows, seed)
    started = time.perf_counter()
    config = AnonymizationConfig(
        {
            "postcode": postcode_prefix(frame["postcode"].unique()),
            "age": age_bands(frame["age"].unique()),
            "gender": flat_hierarchy(frame["gender"].unique()),
            "issued": date_levels(frame["issued"].unique()),
        },
        sensitive="category",
        k=5,
        l=2,
        suppression_limit=0.05,
    )
    hierarchies_ms = (time.perf_counter() - started) * 1000.0
    before = current_rss_mb()
    line = {"case": SYNTHETIC, "rows": rows, "seed": seed, "hierarchies_ms": round(hierarchies_ms, 1)}
    line.update(timed_runs(frame, config, runs, warmup))
    line.update({"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1)})
    line["targets"] = {"engine_ms": 1500, "peak_rss_mb": 1024}
    print(json.dumps(line), flush=True)


def anjana_python(venv: Path) -> Path:
    """The interpreter of ANJANA's own virtualenv, created (``pip install anjana``) when missing."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import anjana"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:  # noqa: S603
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "anjana"], check=True)  # noqa: S603
    return python


def _timed_anonymize(frame: pl.DataFrame, config: AnonymizationConfig) -> tuple[float, float, Guarantee]:
    """Wall and process-CPU milliseconds of one whole ``anonymize`` call, and its guarantee."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = anonymize(frame, config)
    wall = (time.perf_counter() - started) * 1000.0
    return wall, (time.process_time() - cpu_started) * 1000.0, result.guarantee


def _spread(values: list[float], digits: int) -> dict[str, object]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": len(values),
    }


def bench_anjana(adult_dir: Path, venv: Path, rounds: int, per_round: int, workdir: Path) -> None:
    """ANJANA and this engine on the same rows, hierarchies, k and suppression limit, interleaved.

    Each round runs ``anonymize`` ``per_round`` times, then ANJANA once (a fresh process each time),
    so both sides see the same load over the run; the ratios are taken between the medians (and the
    minima) of all runs. Timing boundaries: ours is the whole ``anonymize`` call (encoding the
    strings, the search, releasing the table), warm; ANJANA's is its ``k_anonymity_inner`` call
    (the table already read). Process CPU time is reported beside wall time for both: on a shared
    machine it says how much of a wall time was waiting for a core.
    """
    adult = pl.read_csv(adult_dir / "adult.csv", separator=";", infer_schema=False)
    rng = np.random.default_rng(ANJANA_SEED)
    frame = adult[rng.integers(0, adult.height, size=ANJANA_ROWS).tolist()]
    workdir.mkdir(parents=True, exist_ok=True)
    data_path = workdir / "adult-100k.csv"
    frame.write_csv(data_path, separator=";")
    hierarchies = {
        name: Hierarchy.from_arx_csv(adult_dir / f"adult_hierarchy_{name}.csv") for name in ADULT_QIS
    }
    config = AnonymizationConfig(hierarchies, k=ANJANA_K, suppression_limit=ANJANA_SUPPRESSION)
    python = anjana_python(venv)
    command = [str(python), str(ROOT / "bench" / "anjana_child.py"), str(data_path), str(adult_dir)]
    command += [str(ANJANA_K), str(round(ANJANA_SUPPRESSION * 100)), *ADULT_QIS]
    started_utc = datetime.now(UTC)
    loads = [round(os.getloadavg()[0], 2)]
    anonymize(frame, config)  # warm-up, not measured
    ours_wall: list[float] = []
    ours_cpu: list[float] = []
    ours_search: list[float] = []
    theirs_wall: list[float] = []
    theirs_cpu: list[float] = []
    guarantees: list[Guarantee] = []
    theirs: dict[str, object] = {}
    for _ in range(rounds):
        for _ in range(per_round):
            wall, cpu, guarantee = _timed_anonymize(frame, config)
            ours_wall.append(wall)
            ours_cpu.append(cpu)
            ours_search.append(guarantee.search_ms)
            guarantees.append(guarantee)
        child = subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603
        theirs = json.loads(child.stdout.strip().splitlines()[-1])
        theirs_wall.append(float(str(theirs["seconds"])))
        theirs_cpu.append(float(str(theirs["cpu_seconds"])))
        loads.append(round(os.getloadavg()[0], 2))
    first = guarantees[0]
    outcomes = {(tuple(g.levels.items()), g.suppressed, g.loss) for g in guarantees}
    if len(outcomes) != 1:
        raise RuntimeError("anonymize returned different results for the same input")
    ours_s = statistics.median(ours_wall) / 1000.0
    line = {
        "case": ANJANA,
        "utc_start": started_utc.isoformat(timespec="seconds"),
        "utc_end": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": loads,
        "rows": ANJANA_ROWS,
        "seed": ANJANA_SEED,
        "k": ANJANA_K,
        "suppression_limit": ANJANA_SUPPRESSION,
        "quasi_identifiers": list(ADULT_QIS),
        "timing": {
            "ours": "whole anonymize() call: encoding, search, release; warm (after one unmeasured call)",
            "anjana": "its k_anonymity_inner call, in a fresh process per run; reading the CSV excluded",
        },
        "ours_ms": _spread(ours_wall, 2),
        "ours_cpu_ms": _spread(ours_cpu, 2),
        "ours_search_ms": _spread(ours_search, 2),
        "ours_levels": dict(first.levels),
        "ours_suppressed": first.suppressed,
        "ours_loss": first.loss,
        "anjana_s": _spread(theirs_wall, 3),
        "anjana_cpu_s": _spread(theirs_cpu, 3),
        "anjana_levels": theirs["levels"],
        "anjana_suppressed": theirs["suppressed"],
        "anjana_version": theirs["anjana_version"],
        "ratio_anjana_over_ours": round(statistics.median(theirs_wall) / ours_s, 1),
        "ratio_of_minima": round(min(theirs_wall) / (min(ours_wall) / 1000.0), 1),
        "ratio_of_cpu_medians": round(
            statistics.median(theirs_cpu) / (statistics.median(ours_cpu) / 1000.0), 1
        ),
        "target_ratio": 100,
    }
    print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default=",".join([*ADULT_CASES, SYNTHETIC, ANJANA]))
    parser.add_argument("--anjana-venv", type=Path, default=ROOT / "var" / "bench-anjana-venv")
    parser.add_argument("--adult", type=Path, default=ADULT_DIR)
    parser.add_argument(
        "--anjana-per-round", type=int, default=3, help="anonymize runs before each ANJANA run"
    )
    parser.add_argument("--in-process", action="store_true", help="run the synthetic case in this process")
    options = parser.parse_args(argv)
    names = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = set(names) - {*ADULT_CASES, SYNTHETIC, ANJANA}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    adult = [name for name in names if name in ADULT_CASES]
    if adult:
        if (options.adult / "adult.csv").is_file():
            bench_adult(adult, options.adult, options.runs, options.warmup)
        else:
            print(
                json.dumps({"case": "adult", "skipped": f"no Adult dataset at {options.adult}"}), flush=True
            )
    if SYNTHETIC in names:
        if options.in_process:
            bench_synthetic(max(1, min(options.runs, 3)), 1)
        else:
            command = [sys.executable, "-m", "bench.anonymize_bench", "--only", SYNTHETIC, "--in-process"]
            command += ["--runs", str(options.runs)]
            subprocess.run(command, check=True, cwd=ROOT)  # noqa: S603 -- our own module, fixed arguments
    if ANJANA in names:
        if (options.adult / "adult.csv").is_file():
            bench_anjana(
                options.adult,
                options.anjana_venv,
                max(1, min(options.runs, 5)),
                options.anjana_per_round,
                ROOT / "var" / "bench",
            )
        else:
            print(json.dumps({"case": ANJANA, "skipped": f"no Adult dataset at {options.adult}"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
