"""What the package may import, and what importing it does (nothing)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tokenization

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "billing", "tokenization", "anonymize")


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def test_only_the_stripe_adapter_imports_stripe() -> None:
    importers = {str(path.relative_to(ROOT)) for path in _sources() if "stripe" in _imported_modules(path)}
    assert importers == {"tokenization/_stripe.py"}


def test_nothing_imports_the_gpl_sandbox() -> None:
    assert [path for path in _sources() if "localstripe" in _imported_modules(path)] == []


def test_importing_the_package_loads_neither_stripe_nor_httpx() -> None:
    probe = "import sys, tokenization; print(sorted({'stripe', 'httpx', 'requests'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves() -> None:
    for name in tokenization.__all__:
        assert getattr(tokenization, name) is not None
