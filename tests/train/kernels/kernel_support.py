"""Shared by the tests/train/kernels/test_*.py files: Triton's CPU interpreter, per-dtype tolerances, gradients.

Triton picks interpreter or compiler when a kernel is decorated, and reads ``TRITON_INTERPRET`` again
lazily while launching, so the variable is set before ``harness.train.kernels`` is first imported and stays set
for the rest of the test process. Nothing else in this project runs Triton kernels (no torch.compile in
the suite), so no other test changes. It is only set where there is no CUDA: conftest hides the GPUs
unless HARNESS_TEST_GPU=1, and a ``-m gpu`` run then uses the compiled kernels.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if "harness.train.kernels" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from harness.train.kernels import interpreted

# |a - b| <= atol + rtol * max|b|, per dtype: fp32 is near-exact; fp16 kernels accumulate in fp32 and round
# once, the fp16 reference rounds after every op, so they differ by a few fp16 ulps
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-2, 1e-2), torch.float64: (1e-10, 1e-10),
       torch.bfloat16: (6e-2, 3e-2)}  # bf16: GPU tests only (the interpreter gets bf16 wrong)
DTYPES = [torch.float32, torch.float16]

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def require_triton() -> None:
    """Fail (not skip) when the Triton path cannot run: a CPU test run must exercise the kernels."""
    assert interpreted() or torch.cuda.is_available(), (
        "harness.train.kernels was imported without TRITON_INTERPRET=1 and there is no CUDA; import tests.train.kernels.kernel_support "
        "before anything that imports harness.train.kernels")


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Compare ``got`` with ``want`` under ``dtype``'s tolerance, naming the tensor when it fails."""
    atol, rtol = TOL[dtype]
    got, want = got.double(), want.double()
    err = (got - want).abs().max().item() if got.numel() else 0.0
    bound = atol + rtol * (want.abs().max().item() if want.numel() else 0.0)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert err <= bound, f"{what} ({dtype}): max |diff| {err:.3g} > {bound:.3g}"


def leaves(*shapes_or_tensors, dtype: torch.dtype, device: str = "cpu", scale: float = 1.0) -> list[torch.Tensor]:
    """Random leaf tensors (``requires_grad``) for shapes, seeded by the caller."""
    return [(torch.randn(*s, dtype=torch.float32) * scale).to(device, dtype).requires_grad_() for s in shapes_or_tensors]


def grads(out, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """Gradients of ``sum(out_i * g_i)`` for random fixed ``g_i``: every output's backward is used."""
    outs = out if isinstance(out, (tuple, list)) else [out]
    gen = torch.Generator().manual_seed(seed)
    gs = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    return list(torch.autograd.grad(outs, inputs, gs, allow_unused=True))


def compare(triton_fn, reference_fn, inputs: list[torch.Tensor], dtype: torch.dtype, names: list[str]) -> None:
    """Outputs and every input gradient of ``triton_fn`` against ``reference_fn`` on the same inputs."""
    out_t, out_r = triton_fn(*inputs), reference_fn(*inputs)
    outs_t = out_t if isinstance(out_t, (tuple, list)) else [out_t]
    outs_r = out_r if isinstance(out_r, (tuple, list)) else [out_r]
    for i, (a, b) in enumerate(zip(outs_t, outs_r)):
        assert a.dtype == b.dtype, f"output {i}: dtype {a.dtype} != {b.dtype}"
        assert_close(a, b, dtype, f"output {i}")
    for name, a, b in zip(names, grads(out_t, inputs), grads(out_r, inputs)):
        assert_close(a, b, dtype, f"grad of {name}")
