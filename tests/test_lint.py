"""The code stays ruff-clean and type-checks under strict mypy (both pinned in the test extra).

A missing tool is a failure, not a skip: a skipped lint test looks green in CI.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = "pip install -e '.[test]'"


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs this interpreter's copy of the tool (the pinned one), never one found on PATH."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed for {sys.executable} ({INSTALL})")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True
    )


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    result = run_tool("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr + "\n(run: ruff format .)"


def test_mypy_is_clean() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_tool_fails_instead_of_skipping() -> None:
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        run_tool("comfyctl_no_such_linter")


def test_mypy_is_strict() -> None:
    # Strictness lives in pyproject.toml; a test keeps someone from quietly dropping it.
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["mypy"].get("strict") is True
