"""A LoRA linear layer in one pass: ``y = x W^T + bias + scaling * (x A^T) B^T``.

The forward kernel accumulates the base projection and the rank-r product ``x A^T`` in the same loop over
the input features (``x`` is read once for both), then adds ``scaling * (x A^T) B^T`` before the single
write of ``y``. The backward kernel does the same for the input gradient: ``dy W + scaling * (dy B) A`` in
one pass. ``x A^T`` is recomputed in the backward rather than stored. The small rank-r products of the
weight gradients (``dA``, ``dB``) go through ``torch.matmul`` (cuBLAS on a GPU), as Unsloth's LoRA does.

Only the plain LoRA form is fused: dropout 0, no DoRA, LoRA bias "none". The caller checks that (see
``harness.train.kernels.apply``) and keeps PEFT's own forward otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32  # fixed tiles, no autotuning: not yet measured on a GPU


def reference_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                          lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """PEFT's ``lora.Linear.forward`` for dropout 0: the fallback and the test oracle.

    Args:
        x: ``[..., K]``.
        weight: ``[N, K]``, the frozen base weight.
        bias: ``[N]`` or None, the base layer's bias.
        lora_a: ``[r, K]``.
        lora_b: ``[N, r]``.
        scaling: PEFT's ``scaling[adapter]`` (alpha / r, alpha / sqrt(r) with rsLoRA, times a sweep's scale).

    Returns:
        ``[..., N]``.
    """
    base = torch.nn.functional.linear(x, weight, bias)
    return base + torch.nn.functional.linear(torch.nn.functional.linear(x, lora_a), lora_b) * scaling


def _acc(dtype: torch.dtype) -> tuple[tl.dtype, str]:
    # fp32 in, fp32 out, exactly ("ieee", not TF32) so the kernel matches torch's default matmul
    return (tl.float64, "ieee") if dtype == torch.float64 else (tl.float32, "ieee")


@triton.jit
def _lora_fwd(X, W, A, B, BIAS, Y, M, N, K, R, scaling,
              sxm, sxk, swn, swk, sar, sak, sbn, sbr, sym, syn,
              HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
              ACC: tl.constexpr, PREC: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BM, BN), dtype=ACC)
    xa = tl.zeros((BM, BR), dtype=ACC)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(X + rm[:, None] * sxm + rk[None, :] * sxk, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        wt = tl.load(W + rn[None, :] * swn + rk[:, None] * swk, mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)
        at = tl.load(A + rr[None, :] * sar + rk[:, None] * sak, mask=(rr[None, :] < R) & (rk[:, None] < K), other=0.0)
        acc += tl.dot(x, wt, input_precision=PREC, out_dtype=ACC)
        xa += tl.dot(x, at, input_precision=PREC, out_dtype=ACC)
    bt = tl.load(B + rn[None, :] * sbn + rr[:, None] * sbr, mask=(rn[None, :] < N) & (rr[:, None] < R), other=0.0)
    # x A^T is rounded to the input dtype before its product with B, as PEFT's two nn.Linear calls do
    acc += scaling * tl.dot(xa.to(bt.dtype), bt, input_precision=PREC, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(ACC)[None, :]
    tl.store(Y + rm[:, None] * sym + rn[None, :] * syn, acc.to(Y.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _lora_bwd_dx(DY, W, A, G, DX, M, N, K, R, scaling,
                 sdm, sdn, swn, swk, sar, sak, sgm, sgr, sxm, sxk,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BM, BK), dtype=ACC)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        dy = tl.load(DY + rm[:, None] * sdm + rn[None, :] * sdn, mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
        w = tl.load(W + rn[:, None] * swn + rk[None, :] * swk, mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc += tl.dot(dy, w, input_precision=PREC, out_dtype=ACC)
    g = tl.load(G + rm[:, None] * sgm + rr[None, :] * sgr, mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)
    a = tl.load(A + rr[:, None] * sar + rk[None, :] * sak, mask=(rr[:, None] < R) & (rk[None, :] < K), other=0.0)
    acc += scaling * tl.dot(g, a, input_precision=PREC, out_dtype=ACC)
    tl.store(DX + rm[:, None] * sxm + rk[None, :] * sxk, acc.to(DX.dtype.element_ty), mask=(rm[:, None] < M) & (rk[None, :] < K))


def _block_r(r: int) -> int:
    return max(16, triton.next_power_of_2(r))  # tl.dot needs every dimension >= 16


def lora_forward(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                 lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Launch the fused forward on ``x2 [M, K]``; all tensors of one dtype. Returns ``[M, N]``."""
    m, k = x2.shape
    n, r = weight.shape[0], lora_a.shape[0]
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    acc, prec = _acc(x2.dtype)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _lora_fwd[grid](x2, weight, lora_a, lora_b, bias if bias is not None else y, y, m, n, k, r, float(scaling),
                    x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), lora_a.stride(0), lora_a.stride(1),
                    lora_b.stride(0), lora_b.stride(1), y.stride(0), y.stride(1),
                    HAS_BIAS=bias is not None, BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, BR=_block_r(r), ACC=acc, PREC=prec)
    return y


def lora_backward_dx(dy: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, g: torch.Tensor,
                     scaling: float) -> torch.Tensor:
    """Launch the fused input gradient ``dy W + scaling * g A`` with ``g = dy B`` (``[M, r]``). Returns ``[M, K]``."""
    m, n = dy.shape
    k, r = weight.shape[1], lora_a.shape[0]
    dx = torch.empty((m, k), dtype=dy.dtype, device=dy.device)
    acc, prec = _acc(dy.dtype)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(k, BLOCK_K))
    _lora_bwd_dx[grid](dy, weight, lora_a, g, dx, m, n, k, r, float(scaling),
                       dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1), lora_a.stride(0),
                       lora_a.stride(1), g.stride(0), g.stride(1), dx.stride(0), dx.stride(1),
                       BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, BR=_block_r(r), ACC=acc, PREC=prec)
    return dx


class LoRALinearFunction(torch.autograd.Function):
    """The fused LoRA linear; saves ``x`` and the weights (references, not copies), nothing computed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = lora_forward(x2, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(x2, weight, lora_a, lora_b)
        ctx.scaling, ctx.has_bias = scaling, bias is not None
        return y.view(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1])
        g = dy2 @ lora_b  # [M, r]: needed by dx and dA
        dx = lora_backward_dx(dy2, weight, lora_a, g, s).view(*dy.shape[:-1], weight.shape[1]) \
            if ctx.needs_input_grad[0] else None
        dw = dy2.t() @ x2 if ctx.needs_input_grad[1] else None
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        da = (g.t() @ x2) * s if ctx.needs_input_grad[3] else None
        dbb = (dy2.t() @ (x2 @ lora_a.t())) * s if ctx.needs_input_grad[4] else None  # x A^T recomputed
        return dx, dw, db, da, dbb, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, use_triton: bool = True) -> torch.Tensor:
    """``x W^T + bias + scaling * (x A^T) B^T`` for ``x [..., K]``: Triton, or the reference when ``use_triton`` is False.

    The Triton path computes in ``x``'s dtype: the weights are cast to it here, inside autograd, so the
    gradients of float32 LoRA weights under float16 activations come back in float32.
    """
    if not use_triton:
        return reference_lora_linear(x, weight, bias, lora_a, lora_b, scaling)
    dt = x.dtype
    return LoRALinearFunction.apply(x, weight.to(dt), None if bias is None else bias.to(dt), lora_a.to(dt),
                                    lora_b.to(dt), float(scaling))
