"""RMSNorm as Llama computes it: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``, in float32 inside.

Each Triton program normalises a block of whole rows (a row fits one block for every Llama width); the
backward recomputes the normalised rows from ``x`` and the saved ``rstd`` (one float per row) instead of
storing them, and sums the weight gradient in per-program partials, one row of partials per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF ``LlamaRMSNorm.forward``: the fallback and the test oracle.

    Args:
        x: ``[..., H]``.
        weight: ``[H]``.
        eps: added to the mean square.

    Returns:
        ``[..., H]`` in the promoted dtype of ``x`` and ``weight``.
    """
    dtype = x.dtype
    h = x.to(torch.float32) if x.dtype != torch.float64 else x
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _acc(dtype: torch.dtype) -> tl.dtype:
    # float64 stays float64 so that gradcheck can run on the Triton path itself
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, n_rows, n_cols, eps,
                  BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x_raw = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    x = x_raw.to(ACC)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    # round the normalised row to the input dtype first, as HF does, then multiply by the weight
    n = (x * rstd[:, None]).to(x_raw.dtype).to(ACC)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(ACC)
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], (n * w[None, :]).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rows < n_rows)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW, stride_dy, stride_x, stride_dx, n_rows, n_cols, blocks_per_program,
                  BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(ACC)
    dw = tl.zeros((BLOCK,), dtype=ACC)
    for blk in range(pid * blocks_per_program, (pid + 1) * blocks_per_program):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(ACC)
        rstd = tl.load(RSTD + rows, mask=rows < n_rows, other=0.0)
        n = x * rstd[:, None]
        dw += tl.sum(dy * n, axis=0)
        dn = dy * w[None, :]
        # d/dx of x * rstd(x): rstd * (dn - n * mean(dn * n))
        dx = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / n_cols)[:, None])
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW + pid * n_cols + cols, dw, mask=cols < n_cols)


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(rows per block, columns per block): a whole row per block, and about 4K elements a block, so that
    narrow rows (a small model, or the interpreter) do not pay one launch-sized program per row."""
    block = triton.next_power_of_2(n_cols)
    return max(1, min(triton.next_power_of_2(n_rows), 4096 // block)), block


def rms_norm_forward(x2: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward on a contiguous ``[N, H]`` input; returns ``(y [N, H], rstd [N])``."""
    n_rows, n_cols = x2.shape
    out_dtype = torch.promote_types(x2.dtype, weight.dtype)
    y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x2.device)
    acc = torch.float64 if x2.dtype == torch.float64 else torch.float32
    rstd = torch.empty(n_rows, dtype=acc, device=x2.device)
    block_m, block = _blocks(n_rows, n_cols)
    _rms_norm_fwd[(triton.cdiv(n_rows, block_m),)](x2, weight, y, rstd, x2.stride(0), y.stride(0), n_rows, n_cols, eps,
                                                   BLOCK_M=block_m, BLOCK=block, ACC=_acc(x2.dtype))
    return y, rstd


def rms_norm_backward(dy: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor,
                      rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward; returns ``(dx [N, H], dweight [H])``."""
    n_rows, n_cols = x2.shape
    dy = dy.contiguous()
    dx = torch.empty_like(x2)
    block_m, block = _blocks(n_rows, n_cols)
    n_blocks = triton.cdiv(n_rows, block_m)
    # a few row blocks per program: enough programs to fill a GPU, few partial rows to sum afterwards
    sms = torch.cuda.get_device_properties(x2.device).multi_processor_count if x2.is_cuda else 1
    n_programs = max(1, min(n_blocks, 4 * sms))
    per = triton.cdiv(n_blocks, n_programs)
    n_programs = triton.cdiv(n_blocks, per)
    partial = torch.empty((n_programs, n_cols), dtype=rstd.dtype, device=x2.device)
    _rms_norm_bwd[(n_programs,)](dy, x2, weight, rstd, dx, partial, dy.stride(0), x2.stride(0), dx.stride(0),
                                 n_rows, n_cols, per, BLOCK_M=block_m, BLOCK=block, ACC=_acc(x2.dtype))
    return dx, partial.sum(0).to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm through the Triton kernels; saves ``x`` and ``rstd`` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y, rstd = rms_norm_forward(x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy.reshape(x2.shape), x2, weight, rstd)
        return dx.view(dy.shape), (dw if ctx.needs_input_grad[1] else None), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, use_triton: bool = True) -> torch.Tensor:
    """RMSNorm of ``x [..., H]`` by ``weight [H]``: the Triton kernels, or the reference when ``use_triton`` is False."""
    if not use_triton:
        return reference_rms_norm(x, weight, eps)
    return RMSNormFunction.apply(x, weight, eps)
