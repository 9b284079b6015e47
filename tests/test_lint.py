"""The code's habits, checked like behaviour: ruff's lint and format, and mypy (strict) on domain/.
Configured in pyproject.toml; `.pre-commit-config.yaml` runs the same before each commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy-domain"],
)
def test_the_code_is_clean(command: tuple[str, ...]) -> None:
    tool = BIN / command[0]
    assert tool.exists(), f"{command[0]} is not installed: pip install '.[test]'"
    result = run(str(tool), *command[1:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
