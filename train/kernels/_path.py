"""Which path the kernels take, Triton or the PyTorch reference: decided once per ``apply_kernels`` and logged.

Triton kernels run on a CUDA GPU, or on the CPU through Triton's interpreter. The interpreter is chosen by
Triton when a kernel is *decorated* (``TRITON_INTERPRET=1`` at import time), so whether it is on is read
from the kernels themselves, not from the environment now: a test can set the variable, import the kernels
and put the variable back without changing any other module's behaviour.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

ENV = "HARNESS_KERNELS"  # triton | reference | auto (the default)
PATHS = ("triton", "reference")


class KernelPath(NamedTuple):
    """The chosen path and the one-line reason it was chosen."""

    name: str  # "triton" or "reference"
    reason: str


class KernelPathError(RuntimeError):
    """The Triton path was asked for (argument or HARNESS_KERNELS) but cannot run here."""


def interpreted() -> bool:
    """True when this process's kernels were built for Triton's CPU interpreter."""
    from harness.train.kernels.rms_norm import _rms_norm_fwd

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - triton without the interpreter
        return False
    return isinstance(_rms_norm_fwd, InterpretedFunction)


def _triton_blocker(device: str) -> str | None:
    """Why Triton cannot run on ``device`` here, or None when it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'adapter-harness[kernels]')"
    if device == "cuda" and torch.cuda.is_available():
        return "interpreter mode but the model is on CUDA" if interpreted() else None
    if device == "cpu" and interpreted():
        return None
    if device == "cpu":
        return "no CUDA device and the kernels were not built for the interpreter (TRITON_INTERPRET=1 before import)"
    return f"device {device!r} has no Triton backend here"


def choose_path(device: str, requested: str | None = None) -> KernelPath:
    """Pick the kernel path for a model on ``device``.

    Args:
        device: the model's device type ("cuda", "cpu", ...).
        requested: "triton", "reference" or "auto"; None reads ``HARNESS_KERNELS`` (default auto).

    Returns:
        The path and why. An explicit "triton" that cannot run raises ``KernelPathError``: never a silent fallback.
    """
    want = (requested or os.environ.get(ENV) or "auto").strip().lower()
    if want not in (*PATHS, "auto"):
        raise KernelPathError(f"{ENV}={want!r}: use triton, reference or auto")
    if want == "reference":
        return KernelPath("reference", "asked for (reference)")
    blocker = _triton_blocker(device)
    if want == "triton":
        if blocker:
            raise KernelPathError(f"Triton kernels asked for but cannot run: {blocker}; use {ENV}=reference or auto")
        return KernelPath("triton", "asked for (triton)" + (", interpreter" if interpreted() else ""))
    if blocker:
        return KernelPath("reference", f"auto: {blocker}")
    return KernelPath("triton", "auto: " + ("Triton interpreter on the CPU" if interpreted() else "CUDA"))
