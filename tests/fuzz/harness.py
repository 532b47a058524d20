"""What every Atheris harness in this folder shares: the command line, the seed corpus, coverage.

Each harness is a module run from the repository root::

    python -m tests.fuzz.fuzz_pan [libFuzzer flags] [CORPUS_DIR... | INPUT_FILE...] [--fault=NAME]
                                  [--no-seeds]

- libFuzzer's flags pass through unchanged: ``-runs=N`` (or Atheris' own ``-atheris_runs=N``),
  ``-max_total_time=S``, ``-seed=N``, ``-artifact_prefix=DIR/``, ``-print_final_stats=1``…
- Corpus: without a directory, ``var/fuzz/<harness>/corpus`` is used and kept, so a later run
  starts from the coverage an earlier one reached. On every start the harness writes its seeds,
  generated here and now from real values (sealed blobs, signed headers, card numbers written in
  every style), into the first corpus directory, as ``seed-<sha1>`` files (rewriting one is a
  no-op); ``--no-seeds`` leaves them out, to see what the fuzzer finds from nothing. Files
  instead of directories are run once each: that is how a crash is replayed.
- A failure is an uncaught exception (every oracle is an ``assert``, and any error other than the
  documented ones propagates): libFuzzer prints the traceback and ``=== Uncaught Python
  exception: ===``, writes the input to ``<artifact_prefix>crash-<sha1>`` (default
  ``var/fuzz/<harness>/``) and exits non-zero (77).
- ``--fault=NAME`` swaps a real component for a fault-injection double that the harness names, to
  show that the harness does fail when the component is wrong (``tests/fuzz/test_harnesses.py``).
  Only the harness reads it; libFuzzer never sees it.

Coverage: only the modules under test are instrumented (:func:`instrument_modules`), after a plain
import, so the ``cov:``/``ft:`` figures that libFuzzer prints count their branches alone and the
rest of ``billing`` (SQLAlchemy models, PDF rendering…) costs no start-up time.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import atheris

__all__ = ["HarnessOptions", "harness_options", "instrument_modules", "run_harness"]

_FAULT_FLAG = "--fault="
_NO_SEEDS_FLAG = "--no-seeds"
_REPOSITORY = Path(__file__).resolve().parents[2]


def _functions_of(module: types.ModuleType) -> Iterator[types.FunctionType]:
    """Every Python function whose code is in ``module``'s file: module functions, methods,
    properties, static and class methods, and what ``functools.cache`` wraps."""
    source = module.__file__
    seen: set[int] = set()
    pending: list[object] = list(vars(module).values())
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, staticmethod | classmethod):
            pending.append(item.__func__)
        elif isinstance(item, property):
            pending.extend(accessor for accessor in (item.fget, item.fset, item.fdel) if accessor)
        elif inspect.isclass(item) and item.__module__ == module.__name__:
            pending.extend(vars(item).values())
        elif isinstance(item, types.FunctionType):
            if item.__code__.co_filename == source:
                yield item
        elif callable(item) and hasattr(item, "__wrapped__"):
            pending.append(item.__wrapped__)


def instrument_modules(*modules: types.ModuleType) -> None:
    """Add Atheris' coverage and comparison tracing to every function of ``modules``, in place.

    Nested functions and lambdas are instrumented with their enclosing function.
    """
    for module in modules:
        for function in _functions_of(module):
            atheris.instrument_func(function)


def _seed_corpus(directory: Path, seeds: Iterable[bytes]) -> None:
    for seed in seeds:
        path = directory / f"seed-{hashlib.sha1(seed, usedforsecurity=False).hexdigest()}"
        if not path.exists():
            path.write_bytes(seed)


@dataclass(frozen=True)
class HarnessOptions:
    """The command line, split between libFuzzer's part and the harness's own flags."""

    libfuzzer_argv: list[str]
    fault: str | None
    seeded: bool


def harness_options(argv: list[str], faults: Iterable[str] = ()) -> HarnessOptions:
    """Take the harness's own flags (``--fault=NAME``, ``--no-seeds``) out of ``argv``.

    ``NAME`` must be one of ``faults``; anything else exits with a message.
    """
    names = [arg.removeprefix(_FAULT_FLAG) for arg in argv if arg.startswith(_FAULT_FLAG)]
    known = sorted(faults)
    if len(names) > 1 or (names and names[0] not in known):
        sys.exit(f"--fault takes one of {', '.join(known) or '(none)'}; got {', '.join(names)}")
    rest = [arg for arg in argv if not arg.startswith(_FAULT_FLAG) and arg != _NO_SEEDS_FLAG]
    return HarnessOptions(rest, names[0] if names else None, _NO_SEEDS_FLAG not in argv)


def run_harness(
    name: str,
    test_one_input: Callable[[bytes], None],
    seeds: Callable[[], Iterable[bytes]],
    options: HarnessOptions,
) -> None:
    """Start libFuzzer on ``test_one_input``; never returns (libFuzzer exits the process)."""
    argv = options.libfuzzer_argv
    flags = [arg for arg in argv[1:] if arg.startswith("-")]
    paths = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    home = _REPOSITORY / "var" / "fuzz" / name
    if not any(flag.startswith("-artifact_prefix=") for flag in flags):
        home.mkdir(parents=True, exist_ok=True)
        flags.append(f"-artifact_prefix={home}/")
    if not paths:
        paths = [home / "corpus"]
    if not any(path.is_file() for path in paths):  # replaying files needs no corpus
        paths[0].mkdir(parents=True, exist_ok=True)
        if options.seeded:
            _seed_corpus(paths[0], seeds())
    atheris.Setup([argv[0], *flags, *map(str, paths)], test_one_input)
    atheris.Fuzz()
