"""Fused kernels for LoRA training on the Llama family, one op per file (Liger Kernel's ``ops/`` layout).

Each op file holds its Triton forward and backward kernels, plain launchers, one ``torch.autograd.Function``
and a PyTorch reference (the fallback and the test oracle). ``apply_kernels`` attaches them to one
model's module instances and returns a handle that undoes it; which path runs is decided once and logged.
"""

from harness.train.kernels._path import ENV, KernelPath, KernelPathError, choose_path, interpreted
from harness.train.kernels.apply import FusedLMOutput, KernelsHandle, apply_kernels

__all__ = ["ENV", "FusedLMOutput", "KernelPath", "KernelPathError", "KernelsHandle", "apply_kernels", "choose_path",
           "interpreted"]
