"""SwiGLU, the gate of Llama's MLP: ``silu(gate) * up``, elementwise.

The backward recomputes ``sigmoid(gate)`` from the saved inputs instead of keeping ``silu(gate)``, and
writes both gradients in one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK = 1024


def reference_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF ``LlamaMLP``'s ``act_fn(gate_proj(x)) * up_proj(x)`` with ``act_fn = silu``: fallback and oracle.

    Args:
        gate: ``[..., I]``.
        up: ``[..., I]``.

    Returns:
        ``[..., I]``.
    """
    return F.silu(gate) * up


@triton.jit
def _swiglu_fwd(G, U, Y, n, BLOCK: tl.constexpr, ACC: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g_raw = tl.load(G + offs, mask=mask, other=0.0)
    g = g_raw.to(ACC)
    u = tl.load(U + offs, mask=mask, other=0.0).to(ACC)
    # silu is rounded to the input dtype before the product, as torch's F.silu(gate) * up does
    silu = (g * tl.sigmoid(g)).to(g_raw.dtype).to(ACC)
    tl.store(Y + offs, (silu * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, G, U, DG, DU, n, BLOCK: tl.constexpr, ACC: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(G + offs, mask=mask, other=0.0).to(ACC)
    u = tl.load(U + offs, mask=mask, other=0.0).to(ACC)
    s = tl.sigmoid(g)
    silu = g * s
    tl.store(DU + offs, (dy * silu).to(DU.dtype.element_ty), mask=mask)
    tl.store(DG + offs, (dy * u * (s + silu * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Launch the forward on contiguous tensors of one shape and dtype."""
    y = torch.empty_like(gate)
    n = gate.numel()
    _swiglu_fwd[(triton.cdiv(n, BLOCK),)](gate, up, y, n, BLOCK=BLOCK, ACC=_acc(gate.dtype))
    return y


def swiglu_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward; returns ``(dgate, dup)``."""
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    _swiglu_bwd[(triton.cdiv(n, BLOCK),)](dy.contiguous(), gate, up, dg, du, n, BLOCK=BLOCK, ACC=_acc(gate.dtype))
    return dg, du


class SwiGLUFunction(torch.autograd.Function):
    """SwiGLU through the Triton kernels; saves the two inputs only."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if up.dtype != gate.dtype:
            up = up.to(gate.dtype)
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        return swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        gate, up = ctx.saved_tensors
        return swiglu_backward(dy, gate, up)


def swiglu(gate: torch.Tensor, up: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """``silu(gate) * up`` for two ``[..., I]`` tensors: Triton, or the reference when ``use_triton`` is False."""
    if not use_triton:
        return reference_swiglu(gate, up)
    return SwiGLUFunction.apply(gate, up)
