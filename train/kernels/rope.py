"""Rotary position embedding as Llama applies it: ``x * cos + rotate_half(x) * sin`` on queries and keys.

Each Triton program rotates every head of a block of positions of one sequence, so ``cos``/``sin`` are
read once per position. The backward is the same rotation by the opposite angle (the transpose of a rotation),
so nothing but ``cos`` and ``sin`` (which the model holds anyway) is saved.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def reference_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF ``apply_rotary_pos_emb`` (``unsqueeze_dim=1``): the fallback and the test oracle.

    Args:
        q: ``[B, Hq, S, D]``.
        k: ``[B, Hk, S, D]``.
        cos: ``[B, S, D]`` (or ``[1, S, D]``).
        sin: like ``cos``.

    Returns:
        The rotated ``(q, k)``, same shapes.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


@triton.jit
def _rope_kernel(X, COS, SIN, stride_xb, stride_xh, stride_xs, stride_cb, stride_cs, n_heads, seq_len, half,
                 BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BACKWARD: tl.constexpr,
                 ACC: tl.constexpr):
    b = tl.program_id(0)
    s = (tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S))[:, None, None]
    heads = tl.arange(0, BLOCK_H)[None, :, None]
    d = tl.arange(0, BLOCK_D)[None, None, :]
    cs_mask = (s < seq_len) & (d < half)
    mask = cs_mask & (heads < n_heads)
    c_ptr = COS + b * stride_cb + s * stride_cs + d
    s_ptr = SIN + b * stride_cb + s * stride_cs + d
    c1 = tl.load(c_ptr, mask=cs_mask, other=0.0).to(ACC)
    c2 = tl.load(c_ptr + half, mask=cs_mask, other=0.0).to(ACC)
    s1 = tl.load(s_ptr, mask=cs_mask, other=0.0).to(ACC)
    s2 = tl.load(s_ptr + half, mask=cs_mask, other=0.0).to(ACC)
    x_ptr = X + b * stride_xb + s * stride_xs + heads * stride_xh + d
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(ACC)
    x2 = tl.load(x_ptr + half, mask=mask, other=0.0).to(ACC)
    if BACKWARD:
        # transpose of [[c1, -s1], [s2, c2]]
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(x_ptr, y1.to(X.dtype.element_ty), mask=mask)
    tl.store(x_ptr + half, y2.to(X.dtype.element_ty), mask=mask)


def rope_inplace(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """Rotate ``x [B, H, S, D]`` in place by ``cos``/``sin [B or 1, S, D]`` (``backward``: by the opposite angle)."""
    batch, n_heads, seq_len, dim = x.shape
    cos = cos.expand(batch, -1, -1) if cos.shape[0] == 1 else cos
    sin = sin.expand(batch, -1, -1) if sin.shape[0] == 1 else sin
    cos, sin = cos.contiguous(), sin.contiguous()
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    block_h, block_d = triton.next_power_of_2(n_heads), triton.next_power_of_2(dim // 2)
    # a block of positions per program, about 4K elements of each half: every head of those positions
    block_s = max(1, min(triton.next_power_of_2(seq_len), 4096 // (block_h * block_d)))
    grid = (batch, triton.cdiv(seq_len, block_s))
    _rope_kernel[grid](x, cos, sin, x.stride(0), x.stride(1), x.stride(2), cos.stride(0), cos.stride(1),
                       n_heads, seq_len, dim // 2, BLOCK_S=block_s, BLOCK_H=block_h, BLOCK_D=block_d,
                       BACKWARD=backward, ACC=acc)
    return x


class RoPEFunction(torch.autograd.Function):
    """RoPE on ``q`` and ``k`` through the Triton kernel; saves ``cos`` and ``sin`` only."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        # the rotation needs x's last dim contiguous; copies keep the caller's q and k untouched
        q_out = rope_inplace(q.contiguous().clone(), cos, sin)
        k_out = rope_inplace(k.contiguous().clone(), cos, sin)
        ctx.save_for_backward(cos, sin)
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
        cos, sin = ctx.saved_tensors
        dq = rope_inplace(dq.contiguous().clone(), cos, sin, backward=True)
        dk = rope_inplace(dk.contiguous().clone(), cos, sin, backward=True)
        return dq, dk, None, None


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         use_triton: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q [B, Hq, S, D]`` and ``k [B, Hk, S, D]``: Triton, or the reference when ``use_triton`` is False.

    ``cos`` and ``sin`` get no gradient on the Triton path (Llama computes them from fixed frequencies).
    """
    if not use_triton:
        return reference_rope(q, k, cos, sin)
    return RoPEFunction.apply(q, k, cos.to(q.dtype), sin.to(q.dtype))
