"""Where a run came from: git commit and dirty flag, package versions, device, Python."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("adapter-harness", "torch", "transformers", "peft", "trl", "datasets", "duckdb", "safetensors")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages whose behaviour shapes our numbers."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict[str, Any]:
    """Facts recorded with every run."""
    versions = package_versions()
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    # The store must not import torch; ask it only if the process already loaded it.
    torch = sys.modules.get("torch")
    device = f"cuda:{torch.cuda.get_device_name(0)}" if torch is not None and torch.cuda.is_available() else "cpu"
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions,
        "device": device,
        "python": platform.python_version(),
    }
