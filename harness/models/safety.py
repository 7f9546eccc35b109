"""Start-up safety checks shared by every path that loads weights.

The harness never unpickles: weights come from safetensors only. torch >= 2.6 makes ``torch.load``
default to ``weights_only=True``, which libraries underneath us (the Trainer's checkpoint resume,
RNG state files) rely on; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` switches that guard off for the whole
process. Either condition is refused before anything is loaded (FAULTS.md 29).
"""

from __future__ import annotations

import os

from harness.errors import SafetyError

MIN_TORCH = (2, 6)

#: file suffixes of pickled weights (torch.save, PEFT's adapter_model.bin, Lightning's .ckpt): refused
#: unless --allow-pickle, wherever weights are looked for
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_torch() -> None:
    """Raise SafetyError (exit 4) when torch's pickle guard is missing or switched off."""
    import torch

    flag = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "")
    if flag.strip().lower() not in ("", "0", "false", "no"):
        raise SafetyError(
            f"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD={flag} turns off torch's guard against executing pickled code; "
            "unset it (the harness loads safetensors only and never needs it)"
        )
    parts = torch.__version__.split("+")[0].split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        return  # a development build: assume current
    if version < MIN_TORCH:
        raise SafetyError(
            f"torch {torch.__version__} is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}, whose torch.load unpickles by "
            "default; install torch>=2.6 (pip install torch==2.13.0)"
        )
