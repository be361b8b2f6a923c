"""What each part may import (DESIGN.md), as import-linter contracts in pyproject.toml: warehouse/
imports nothing of the others and has no cycle, tasks/ never imports flows/, model/ imports nothing
of the pipeline nor Prefect or MLflow (its remaining exceptions listed there, issue 24).

    .venv/bin/python -m pytest tests/test_import_contracts.py     # or: .venv/bin/lint-imports
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.skip(f"import-linter is not installed in {sys.prefix} (pip install -e '.[dev]')")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and result.stdout.count(" KEPT") == 4


def test_a_cycle_in_warehouse_breaks_the_build(tmp_path):
    """The same contracts on a copy of warehouse/ into which one back-import is written."""
    for part in ("crawl2model", "flows", "tasks", "model", "warehouse"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    transactions = tmp_path / "warehouse" / "transactions.py"
    transactions.write_text(transactions.read_text() + textwrap.dedent("""
        def _back():
            from warehouse.store import Warehouse  # store imports transactions: a cycle
            return Warehouse
    """))
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "no import cycles inside warehouse/ BROKEN" in result.stdout
