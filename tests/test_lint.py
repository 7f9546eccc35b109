"""ruff on harness/, train/, reports/ and benchmarks/, mypy on harness (train/ and reports/ through its links), with the configuration in
pyproject.toml: zero findings.

Both run as subprocesses from the venv that runs pytest (``Path(sys.executable).parent``), the versions
the ``test`` extra pins, so a finding fails the default run with the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# harness/train and harness/reports are links to the top-level train/ and reports/ (one package, harness):
# mypy follows them and checks those files once, as harness.train.* and harness.reports.*; ruff does not
# follow links, so it is given the real folders.
PACKAGES = ["harness"]
RUFF_PATHS = ["harness", "train", "reports", "benchmarks"]  # the benchmarks are code users run too


def _tool(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} not found; install the test extra: pip install -e '.[test]'")
    return path


def _run(cmd: list[str | Path], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_finds_nothing() -> None:
    r = _run([_tool("ruff"), "check", "--no-cache", *RUFF_PATHS], timeout=120)
    if r.returncode != 0:
        pytest.fail(f"ruff check {' '.join(RUFF_PATHS)} found problems:\n{r.stdout}{r.stderr}", pytrace=False)


def test_mypy_finds_nothing() -> None:
    # the incremental cache (.mypy_cache, git-ignored) makes a rerun take seconds instead of about a minute
    r = _run([_tool("mypy"), *PACKAGES], timeout=600)
    if r.returncode != 0:
        pytest.fail(f"mypy {' '.join(PACKAGES)} found problems:\n{r.stdout}{r.stderr}", pytrace=False)
