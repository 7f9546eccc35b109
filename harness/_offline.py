"""The offline switches for Hugging Face libraries, set before they are imported."""

from __future__ import annotations

import os

_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def configure_network(allow_hub: bool | None = None) -> None:
    """Turn Hugging Face's offline switches on, unless hub access was asked for explicitly.

    Args:
        allow_hub: True to leave the switches as the user set them; None reads
            ``HARNESS_ALLOW_HUB`` from the environment.
    """
    # Hub kernels are code fetched from the Hub and run in-process; transformers (5.25 on) turns them on
    # for every model it loads and re-applies them at each train()/eval(), which also strips the fused
    # forwards harness.train.kernels attaches. Off always: a downloaded kernel is remote code (DESIGN, trust
    # boundaries), whatever HARNESS_ALLOW_HUB says.
    os.environ["USE_HUB_KERNELS"] = "NO"
    if allow_hub is None:
        allow_hub = os.environ.get("HARNESS_ALLOW_HUB", "") == "1"
    if allow_hub:
        return
    for name in _SWITCHES:
        # Assigned, not defaulted: an HF_HUB_OFFLINE=0 left in the environment must not turn hub access
        # back on; only HARNESS_ALLOW_HUB=1 does (README, security model).
        os.environ[name] = "1"
    # Quiet, deterministic tokenizers in our worker-free processes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
