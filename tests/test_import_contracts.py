"""What each part may import (DESIGN.md), as import-linter contracts in pyproject.toml: warehouse/
imports nothing of the others and has no cycle, tasks/ never imports flows/, model/ imports nothing
of the pipeline nor Prefect or MLflow, and flows/ has no cycle (its command modules share
flows/cli_app.py and never import flows/cli.py back).

    .venv/bin/python -m pytest tests/test_import_contracts.py     # or: .venv/bin/lint-imports
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
    assert "0 broken" in result.stdout and result.stdout.count(" KEPT") == 5


def lint_copy_with(tmp_path: Path, module: str, back_import: str) -> subprocess.CompletedProcess:
    """The contracts on a copy of the code in which `module` gets one more (function-local) import."""
    for part in ("crawl2model", "flows", "tasks", "model", "warehouse"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n\ndef _back():\n    {back_import}\n")
    return lint_imports(tmp_path)


def test_a_cycle_in_warehouse_breaks_the_build(tmp_path):
    result = lint_copy_with(tmp_path, "warehouse/transactions.py", "from warehouse.store import Warehouse  # store imports transactions")
    assert result.returncode == 1
    assert "no import cycles inside warehouse/ BROKEN" in result.stdout


def test_a_command_module_importing_the_cli_back_breaks_the_build(tmp_path):
    """The circle issue 24 removed (cli -> chat_cli -> cli), written back."""
    result = lint_copy_with(tmp_path, "flows/chat_cli.py", "from flows.cli import app  # cli imports chat_cli")
    assert result.returncode == 1
    assert "no import cycles inside flows/ BROKEN" in result.stdout
