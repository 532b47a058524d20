"""The Atheris harnesses run and pass for a bounded number of inputs, and can fail.

Each harness runs as the subprocess ``make fuzz`` starts (``python -m tests.fuzz.<harness>``), for a
few thousand inputs from a fixed libFuzzer seed, on a fresh corpus made of the seeds it generates.
The negative check swaps the card-number detector for the harness's named fault-injection double
(``--fault=ascii-digits-only``: a detector blind to full-width digits) and starts from an empty
corpus: the harness must report a missed number, write the input, and that input must pass against
the real detector and fail again with the double.
Longer runs: ``make fuzz`` (``docs/reliability.md``).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import require_or_skip

REPOSITORY = Path(__file__).resolve().parents[2]
HARNESSES = ["fuzz_pan", "fuzz_envelope", "fuzz_stripe_signature", "fuzz_standard_webhooks"]
RUNS = 3000
FAULT_RUNS = 20_000  # an upper bound: the miss is found in a few hundred inputs
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _atheris_installed() -> None:
    if importlib.util.find_spec("atheris") is None:
        require_or_skip("atheris is not installed (its wheels are for Linux x86_64; pip install -e '.[dev]')")


def _fuzz(harness: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"tests.fuzz.{harness}", *args],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # libFuzzer reports on stderr, Atheris prints the traceback on stdout
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_passes_a_bounded_run(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    result = _fuzz(harness, f"-runs={RUNS}", "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus))
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"Done {RUNS} runs" in result.stdout
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", result.stdout)
    assert coverage, result.stdout[-2000:]
    assert int(coverage[-1][0]) > 0, "nothing instrumented: the harness measures no coverage"
    assert any(path.name.startswith("seed-") for path in corpus.iterdir()), "no seed corpus written"
    assert not list(tmp_path.glob("crash-*"))


def test_pan_harness_fails_on_a_detector_blind_to_full_width_digits(tmp_path: Path) -> None:
    # Without seeds (one holds a full-width number): the fuzzer must reach the miss on its own.
    fault = "--fault=ascii-digits-only"
    result = _fuzz(
        "fuzz_pan", fault, "--no-seeds", f"-runs={FAULT_RUNS}", "-seed=1",
        f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus"),
    )  # fmt: skip
    assert result.returncode != 0, result.stdout[-2000:]
    assert "=== Uncaught Python exception: ===" in result.stdout
    assert "AssertionError: missed" in result.stdout, result.stdout[-2000:]
    crashes = list(tmp_path.glob("crash-*"))
    assert len(crashes) == 1, result.stdout[-2000:]

    replay_real = _fuzz("fuzz_pan", f"-artifact_prefix={tmp_path}/replay-", str(crashes[0]))
    assert replay_real.returncode == 0, replay_real.stdout[-2000:]
    replay_fault = _fuzz("fuzz_pan", fault, f"-artifact_prefix={tmp_path}/replay-", str(crashes[0]))
    assert replay_fault.returncode != 0, replay_fault.stdout[-2000:]
    assert "AssertionError: missed" in replay_fault.stdout


def test_an_unknown_fault_is_refused() -> None:
    result = _fuzz("fuzz_pan", "--fault=no-such-double", "-runs=1")
    assert result.returncode != 0
    assert "--fault takes one of ascii-digits-only" in result.stdout
